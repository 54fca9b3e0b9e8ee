//! Certificate and key checks for `[[identity]]`: present, readable, current,
//! matching each other, and naming the identity's SPIFFE ID.

use std::path::{Path, PathBuf};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::de::Sp;
use crate::diag::Diagnostic;
use crate::source::Source;

/// What the data plane needs from a checked identity.
pub struct LoadedIdentity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_chain_der: Vec<Vec<u8>>,
    pub key_der: Vec<u8>,
}

pub struct CertCheck<'a> {
    pub src: &'a Source,
    pub base_dir: &'a Path,
    /// Unix seconds the validity period is checked against.
    pub now_unix: i64,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Largest certificate or key file we read: a table naming `/dev/zero` must not
/// make the control thread read forever.
const MAX_PEM: u64 = 1 << 20;

/// At most `MAX_PEM + 1` bytes, so that a larger file is recognised as such.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PEM + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_file(
    c: &CertCheck<'_>,
    what: &str,
    value: &Sp<String>,
    key: &str,
    hint_missing: String,
    out: &mut Vec<Diagnostic>,
) -> Option<(PathBuf, Vec<u8>)> {
    let path = resolve(c.base_dir, value);
    match read_bounded(&path) {
        Ok(bytes) if bytes.len() as u64 > MAX_PEM => {
            out.push(
                Diagnostic::at(
                    c.src,
                    &value.span,
                    key,
                    format!("{what} file {:?} is larger than 1 MiB", path),
                )
                .hint("name a PEM file"),
            );
            None
        }
        Ok(bytes) => Some((path, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(
                Diagnostic::at(
                    c.src,
                    &value.span,
                    key,
                    format!("{what} file {:?} not found", path),
                )
                .hint(hint_missing),
            );
            None
        }
        Err(e) => {
            out.push(
                Diagnostic::at(
                    c.src,
                    &value.span,
                    key,
                    format!("cannot read {what} file {:?}: {e}", path),
                )
                .hint("check the file's permissions"),
            );
            None
        }
    }
}

/// Check one identity's certificate and key; push every problem to `out`.
/// `key_prefix` is e.g. `identity[0]`.
pub fn check_identity(
    c: &CertCheck<'_>,
    id: &str,
    cert: &Sp<String>,
    key: &Sp<String>,
    key_prefix: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<LoadedIdentity> {
    let cert_key = format!("{key_prefix}.cert");
    let key_key = format!("{key_prefix}.key");
    let issue_hint = format!("issue one: xdpmesh ca issue --ca CA_DIR --id {id} --out DIR");
    let cert_file = read_file(c, "certificate", cert, &cert_key, issue_hint.clone(), out);
    let key_file = read_file(c, "key", key, &key_key, issue_hint, out);

    let chain = cert_file.as_ref().and_then(|(path, bytes)| {
        let chain = pem_blocks(bytes, "CERTIFICATE");
        if chain.is_empty() {
            out.push(
                Diagnostic::at(
                    c.src,
                    &cert.span,
                    &cert_key,
                    format!("{:?} holds no PEM certificate", path),
                )
                .hint("expected a -----BEGIN CERTIFICATE----- block"),
            );
            return None;
        }
        Some(chain)
    });
    let leaf_spki = chain
        .as_ref()
        .and_then(|chain| check_leaf(c, id, cert, &cert_key, &chain[0], out));

    let key_der = key_file.as_ref().and_then(|(path, bytes)| {
        let text = String::from_utf8_lossy(bytes);
        match rcgen::KeyPair::from_pem(&text) {
            Ok(kp) => Some((kp.serialize_der(), kp.public_key_der())),
            Err(e) => {
                out.push(
                    Diagnostic::at(
                        c.src,
                        &key.span,
                        &key_key,
                        format!("{:?} holds no usable PKCS#8 private key ({e})", path),
                    )
                    .hint("convert it: openssl pkcs8 -topk8 -nocrypt -in OLD.pem -out NEW.pem"),
                );
                None
            }
        }
    });

    if let (Some((cert_spki, _)), Some((_, key_spki))) = (&leaf_spki, &key_der) {
        if !same_public_key(cert_spki, key_spki) {
            let cert_path = cert_file
                .as_ref()
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_default();
            out.push(
                Diagnostic::at(
                    c.src,
                    &key.span,
                    &key_key,
                    format!("key does not match the certificate {cert_path:?}"),
                )
                .hint("use the key the certificate was issued for"),
            );
            return None;
        }
    }
    match (cert_file, key_file, chain, leaf_spki, key_der) {
        (
            Some((cert_path, _)),
            Some((key_path, _)),
            Some(chain),
            Some((_, true)),
            Some((key_der, _)),
        ) => Some(LoadedIdentity {
            cert_path,
            key_path,
            cert_chain_der: chain,
            key_der,
        }),
        _ => None,
    }
}

fn pem_blocks(bytes: &[u8], label: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(bytes)
        .map_while(Result::ok)
        .filter(|p| p.label == label)
        .map(|p| p.contents)
        .collect()
}

/// Checks dates and SPIFFE ID; returns the leaf's SubjectPublicKeyInfo DER (also when
/// a check failed, so the key can still be compared) and whether all checks passed.
fn check_leaf(
    c: &CertCheck<'_>,
    id: &str,
    cert: &Sp<String>,
    key: &str,
    der: &[u8],
    out: &mut Vec<Diagnostic>,
) -> Option<(Vec<u8>, bool)> {
    let at = |msg: String| Diagnostic::at(c.src, &cert.span, key, msg);
    let x509 = match X509Certificate::from_der(der) {
        Ok((_, x)) => x,
        Err(e) => {
            out.push(at(format!("certificate does not parse: {e}")));
            return None;
        }
    };
    let mut ok = true;
    let validity = x509.validity();
    if c.now_unix < validity.not_before.timestamp() {
        out.push(
            at(format!(
                "certificate is not valid before {}",
                validity.not_before
            ))
            .hint("check the clock, or issue a certificate valid now"),
        );
        ok = false;
    } else if c.now_unix > validity.not_after.timestamp() {
        out.push(
            at(format!("certificate expired on {}", validity.not_after)).hint(format!(
                "issue a new one: xdpmesh ca issue --ca CA_DIR --id {id} --out DIR"
            )),
        );
        ok = false;
    }
    let uris: Vec<String> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            out.push(at(format!(
                "certificate's subjectAltName does not parse: {e}"
            )));
            return None;
        }
    };
    match uris.as_slice() {
        [] => {
            out.push(
                at("certificate has no SPIFFE URI SAN".into())
                    .hint(format!("issue one with URI SAN {id}")),
            );
            ok = false;
        }
        [one] if one == id => {}
        [one] => {
            out.push(
                at(format!("certificate's SPIFFE ID is {one:?}, not {id:?}"))
                    .hint(format!("set id = {one:?}, or issue a certificate for {id}")),
            );
            ok = false;
        }
        many => {
            // RFC: an SVID carries exactly one SPIFFE ID (SPIFFE X509-SVID §2).
            out.push(at(format!(
                "certificate carries {} SPIFFE IDs; an SVID has exactly one",
                many.len()
            )));
            ok = false;
        }
    }
    Some((x509.public_key().raw.to_vec(), ok))
}

/// Compare the public keys themselves, so algorithm-parameter encodings that
/// differ byte-wise but mean the same do not matter.
fn same_public_key(a: &[u8], b: &[u8]) -> bool {
    match (
        SubjectPublicKeyInfo::from_der(a),
        SubjectPublicKeyInfo::from_der(b),
    ) {
        (Ok((_, a)), Ok((_, b))) => a.subject_public_key.data == b.subject_public_key.data,
        _ => a == b,
    }
}

/// Check one `[trust]` root file: readable, PEM certificates that are CAs and current.
/// Returns its path.
pub fn check_trust_root(
    c: &CertCheck<'_>,
    value: &Sp<String>,
    key: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let hint = "make the mesh CA with: xdpmesh ca init --out DIR (its DIR/ca.pem)".to_string();
    let (path, bytes) = read_file(c, "trust root", value, key, hint, out)?;
    let at = |msg: String| Diagnostic::at(c.src, &value.span, key, msg);
    let blocks = pem_blocks(&bytes, "CERTIFICATE");
    if blocks.is_empty() {
        out.push(
            at(format!("{:?} holds no PEM certificate", path))
                .hint("expected a -----BEGIN CERTIFICATE----- block"),
        );
        return None;
    }
    let before = out.len();
    for der in &blocks {
        let x509 = match X509Certificate::from_der(der) {
            Ok((_, x)) => x,
            Err(e) => {
                out.push(at(format!("{:?}: certificate does not parse: {e}", path)));
                continue;
            }
        };
        if !x509.is_ca() {
            out.push(
                at(format!("{:?} is not a CA certificate", path))
                    .hint("name the mesh CA's certificate (ca.pem), not a gateway's"),
            );
        }
        let validity = x509.validity();
        if c.now_unix > validity.not_after.timestamp() {
            out.push(
                at(format!(
                    "trust root {:?} expired on {}",
                    path,
                    validity.not_after
                ))
                .hint("rotate the mesh CA: trust old and new roots together, reissue, then drop the old"),
            );
        }
    }
    (out.len() == before).then_some(path)
}
