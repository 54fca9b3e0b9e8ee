//! The mesh's own certificate authority: `xdpmesh ca init` makes a root CA, `xdpmesh
//! ca issue` makes a leaf certificate (an X509-SVID) for one SPIFFE ID.
//!
//! Everything is ECDSA P-256 with SHA-256. Files are PEM; private keys are PKCS#8 and
//! are created with mode 0600 from the start (never made wider, then narrowed). A file
//! is written to a temporary name in its directory and then linked (or, with `force`,
//! renamed) into place, so a gateway watching it never reads half a file.
//!
//! ```text
//! DIR/ca.pem       root certificate (0644)      DIR/ca-key.pem  its key (0600)
//! OUT/cert.pem     leaf, then the CA (0644)     OUT/key.pem     leaf key (0600)
//! ```

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, BmpString, Certificate, CertificateParams, DistinguishedName, DnType,
    DnValue, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber, UniversalString, PKCS_ECDSA_P256_SHA256,
};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Name;

/// Root certificate file name in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// Root key file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Leaf chain file name in an issue output directory.
pub const LEAF_CERT_FILE: &str = "cert.pem";
/// Leaf key file name in an issue output directory.
pub const LEAF_KEY_FILE: &str = "key.pem";

/// Default lifetime of a root: one year.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a leaf: 24 hours (short-lived SVIDs; rotation is routine).
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Default subject common name of a root.
pub const DEFAULT_CA_COMMON_NAME: &str = "xdpmesh mesh CA";

/// Longest CN X.509 allows (RFC 5280 Appendix A, `ub-common-name`).
const MAX_CN_LEN: usize = 64;

/// The files of a CA directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// `DIR/ca.pem`
    pub cert: PathBuf,
    /// `DIR/ca-key.pem`
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }
}

/// The files `issue` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFiles {
    /// `OUT/cert.pem`: the leaf, then the CA certificate.
    pub cert: PathBuf,
    /// `OUT/key.pem`
    pub key: PathBuf,
}

impl LeafFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(LEAF_CERT_FILE),
            key: dir.join(LEAF_KEY_FILE),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Subject CN of the root.
    pub common_name: String,
    /// Lifetime from `not_before`, whole seconds.
    pub validity: Duration,
    /// Start of validity (sub-second part dropped: X.509 times have whole seconds).
    pub not_before: SystemTime,
    /// Replace existing files instead of refusing.
    pub force: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            common_name: DEFAULT_CA_COMMON_NAME.to_owned(),
            validity: DEFAULT_CA_VALIDITY,
            not_before: SystemTime::now(),
            force: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Lifetime from `not_before`, whole seconds.
    pub validity: Duration,
    /// Start of validity (sub-second part dropped).
    pub not_before: SystemTime,
    /// Replace existing files instead of refusing.
    pub force: bool,
    /// DNS names added as SANs next to the SPIFFE ID, for clients outside the mesh that
    /// verify an `ingress-tls` listener by host name. Default: none.
    pub dns: Vec<String>,
}

impl Default for IssueOptions {
    fn default() -> Self {
        Self {
            validity: DEFAULT_LEAF_VALIDITY,
            not_before: SystemTime::now(),
            force: false,
            dns: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("\"{}\" already exists (pass --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("cannot {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("\"{id}\" is not a SPIFFE ID: it {why}")]
    BadId { id: String, why: &'static str },
    #[error("\"{}\": {what}", path.display())]
    BadCa { path: PathBuf, what: String },
    #[error("bad options: {0}")]
    BadOptions(String),
    #[error("certificate does not parse: {0}")]
    BadCert(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Make a root CA in `dir` (created 0700 if missing).
pub fn init(dir: &Path, opts: &InitOptions) -> Result<CaFiles, CaError> {
    let files = CaFiles::in_dir(dir);
    if opts.common_name.is_empty() || opts.common_name.len() > MAX_CN_LEN {
        return Err(CaError::BadOptions(format!(
            "the common name must be 1 to {MAX_CN_LEN} bytes, not {}",
            opts.common_name.len()
        )));
    }
    let (not_before, not_after) = validity_window(opts.not_before, opts.validity)?;
    if !opts.force {
        refuse_existing(&[&files.key, &files.cert])?;
    }
    make_dir(dir)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, opts.common_name.as_str());
    // pathlen 0: this root signs leaves only, never another CA (RFC 5280 §4.2.1.9).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before.to_datetime();
    params.not_after = not_after.to_datetime();
    let cert = params.self_signed(&key)?;

    // Key first: a cert is only useful once its key is there.
    write_file(
        &files.key,
        key.serialize_pem().as_bytes(),
        0o600,
        opts.force,
    )?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644, opts.force)?;
    Ok(files)
}

/// A host name a client can check a certificate against (RFC 1123 §2.1 labels; a leading
/// `*.` wildcard, RFC 6125 §6.4.3, over at least two labels: never `*.com`).
fn is_dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let wild = rest.len() != name.len();
    !rest.is_empty()
        && (!wild || rest.contains('.'))
        && name.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Issue a leaf certificate for SPIFFE ID `id`, signed by the CA in `ca_dir`, into
/// `out` (created 0700 if missing).
pub fn issue(
    ca_dir: &Path,
    id: &str,
    out: &Path,
    opts: &IssueOptions,
) -> Result<LeafFiles, CaError> {
    if let Some(why) = crate::validate::spiffe_id_error(id) {
        return Err(CaError::BadId {
            id: id.to_owned(),
            why,
        });
    }
    if let Some(bad) = opts.dns.iter().find(|d| !is_dns_name(d)) {
        return Err(CaError::BadOptions(format!(
            "--dns {bad:?} is not a DNS name (letters, digits, '-' in labels of 1 to 63 \
             between dots, at most 253 in all; \"*.\" may lead)"
        )));
    }
    let (not_before, not_after) = validity_window(opts.not_before, opts.validity)?;
    let ca = load_ca(&CaFiles::in_dir(ca_dir))?;
    check_within_ca(&ca, not_before.timestamp(), not_after.timestamp())?;

    let files = LeafFiles::in_dir(out);
    if !opts.force {
        refuse_existing(&[&files.key, &files.cert])?;
    }
    make_dir(out)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // Peers verify the URI SAN (SPIFFE X509-SVID §2); the CN is for people reading
    // the certificate: the ID's last path segment.
    let last = id.rsplit('/').next().unwrap_or(id);
    params
        .distinguished_name
        .push(DnType::CommonName, truncate(last, MAX_CN_LEN));
    params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    for d in &opts.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(d.to_ascii_lowercase().try_into()?));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Gateways present the same certificate as TLS server and as TLS client.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before.to_datetime();
    params.not_after = not_after.to_datetime();
    let cert = params.signed_by(&key, &ca.issuer, &ca.key)?;

    let mut chain = cert.pem();
    if !chain.ends_with('\n') {
        chain.push('\n');
    }
    chain.push_str(&ca.cert_pem);
    write_file(
        &files.key,
        key.serialize_pem().as_bytes(),
        0o600,
        opts.force,
    )?;
    write_file(&files.cert, chain.as_bytes(), 0o644, opts.force)?;
    Ok(files)
}

/// Validity period of the first certificate in `cert_pem`: (not before, not after).
pub fn expiry(cert_pem: &[u8]) -> Result<(SystemTime, SystemTime), CaError> {
    let der = first_pem_cert(cert_pem)
        .ok_or_else(|| CaError::BadCert("no PEM CERTIFICATE block".into()))?;
    let (_, x509) = X509Certificate::from_der(&der).map_err(|e| CaError::BadCert(e.to_string()))?;
    let v = x509.validity();
    Ok((
        unix_to_system(v.not_before.timestamp()),
        unix_to_system(v.not_after.timestamp()),
    ))
}

/// A CA loaded for signing.
struct LoadedCa {
    key: KeyPair,
    /// Stands in for the CA certificate when rcgen signs: same subject DER, same key
    /// identifier, same key. (Re-signed in memory; never written anywhere.)
    issuer: Certificate,
    /// The CA certificate as found in `ca.pem`, one PEM block, for the chain file.
    cert_pem: String,
    not_before: i64,
    not_after: i64,
}

fn load_ca(files: &CaFiles) -> Result<LoadedCa, CaError> {
    let bad = |path: &Path, what: String| CaError::BadCa {
        path: path.to_owned(),
        what,
    };
    let cert_text = std::fs::read_to_string(&files.cert)
        .map_err(io_err("read the CA certificate", &files.cert))?;
    let key_text =
        std::fs::read_to_string(&files.key).map_err(io_err("read the CA key", &files.key))?;

    let der = first_pem_cert(cert_text.as_bytes())
        .ok_or_else(|| bad(&files.cert, "holds no PEM certificate".into()))?;
    let cert_pem = first_pem_block_text(&cert_text)
        .ok_or_else(|| bad(&files.cert, "holds no PEM certificate".into()))?;
    let (_, x509) = X509Certificate::from_der(&der)
        .map_err(|e| bad(&files.cert, format!("certificate does not parse: {e}")))?;
    match x509.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err(bad(&files.cert, "is not a CA certificate".into())),
    }
    if let Ok(Some(ku)) = x509.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(bad(
                &files.cert,
                "CA certificate's key usage lacks keyCertSign".into(),
            ));
        }
    }

    let key = KeyPair::from_pem(&key_text).map_err(|e| {
        bad(
            &files.key,
            format!("holds no usable PKCS#8 private key ({e})"),
        )
    })?;
    if key.public_key_der() != x509.public_key().raw {
        return Err(bad(
            &files.key,
            format!(
                "key does not match the CA certificate \"{}\"",
                files.cert.display()
            ),
        ));
    }

    // rcgen 0.13 takes the issuer as a Certificate; rebuild one from the parsed
    // subject and key identifier (rcgen's own from_ca_cert_der needs its
    // `x509-parser` feature, which this workspace does not enable).
    let mut params = CertificateParams::default();
    params.distinguished_name = dn_from_name(x509.subject()).ok_or_else(|| {
        bad(
            &files.cert,
            "CA subject uses an unsupported name form".into(),
        )
    })?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_identifier_method = x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ki) => {
                Some(KeyIdMethod::PreSpecified(ki.0.to_vec()))
            }
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256);
    let issuer = params.self_signed(&key)?;
    // Name chaining compares the issuer DN with the CA subject byte for byte in
    // practice (RFC 5280 §7.1 allows more, webpki does not): insist on it.
    let (_, again) =
        X509Certificate::from_der(issuer.der()).map_err(|e| CaError::BadCert(e.to_string()))?;
    if again.subject().as_raw() != x509.subject().as_raw() {
        return Err(bad(
            &files.cert,
            "CA subject cannot be reproduced byte for byte".into(),
        ));
    }
    Ok(LoadedCa {
        key,
        issuer,
        cert_pem,
        not_before: x509.validity().not_before.timestamp(),
        not_after: x509.validity().not_after.timestamp(),
    })
}

fn check_within_ca(ca: &LoadedCa, not_before: i64, not_after: i64) -> Result<(), CaError> {
    let show = |t: i64| {
        ASN1Time::from_timestamp(t)
            .map(|a| a.to_string())
            .unwrap_or_else(|_| t.to_string())
    };
    if not_before < ca.not_before || not_before > ca.not_after {
        return Err(CaError::BadOptions(format!(
            "the CA is valid from {} to {}, not at the leaf's start {}",
            show(ca.not_before),
            show(ca.not_after),
            show(not_before)
        )));
    }
    if not_after > ca.not_after {
        return Err(CaError::BadOptions(format!(
            "the leaf would be valid until {}, after the CA expires ({}): rotate the CA or shorten the validity",
            show(not_after),
            show(ca.not_after)
        )));
    }
    Ok(())
}

/// Rebuild an rcgen name from a parsed one, keeping each value's string type so the
/// encoding comes out the same. `None` for forms rcgen cannot write (multi-valued
/// RDNs, a type twice, unknown string types).
fn dn_from_name(name: &X509Name<'_>) -> Option<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let attr = attrs.next()?;
        if attrs.next().is_some() {
            return None;
        }
        let oid: Vec<u64> = attr.attr_type().iter()?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return None;
        }
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).ok();
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().ok()?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().ok()?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().ok()?),
            Tag::BmpString => DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).ok()?),
            Tag::UniversalString => {
                DnValue::UniversalString(UniversalString::from_utf32be(data.to_vec()).ok()?)
            }
            _ => return None,
        };
        dn.push(ty, value);
    }
    Some(dn)
}

/// `not_before` to whole seconds, and `not_before + validity`.
fn validity_window(
    not_before: SystemTime,
    validity: Duration,
) -> Result<(ASN1Time, ASN1Time), CaError> {
    let secs = validity.as_secs();
    if secs == 0 {
        return Err(CaError::BadOptions(
            "the validity must be at least one second".into(),
        ));
    }
    let start = not_before
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::BadOptions("not_before is before 1970".into()))?
        .as_secs();
    let to_time = |t: u64| {
        i64::try_from(t)
            .ok()
            .and_then(|t| ASN1Time::from_timestamp(t).ok())
            .ok_or_else(|| CaError::BadOptions(format!("time {t} s after 1970 is out of range")))
    };
    let end = start
        .checked_add(secs)
        .ok_or_else(|| CaError::BadOptions("the validity is too long".into()))?;
    Ok((to_time(start)?, to_time(end)?))
}

fn unix_to_system(t: i64) -> SystemTime {
    if t >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
    }
}

/// 127 random bits, positive and without a leading zero octet (RFC 5280 §4.1.2.2:
/// at most 20 octets, positive; CAs should use unpredictable serials).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("read", path))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn first_pem_cert(bytes: &[u8]) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(bytes)
        .map_while(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
}

/// The text of the first CERTIFICATE block, through its END line and a newline.
fn first_pem_block_text(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)?;
    let end = start + text[start..].find(END)? + END.len();
    Some(format!("{}\n", &text[start..end]))
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CaError> {
    for p in paths {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(CaError::Exists(p.to_path_buf()));
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<(), CaError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// Write `bytes` to `path` with `mode` from creation on, atomically: a temporary file
/// in the same directory, then hard-linked into place (fails if `path` exists) or,
/// with `replace`, renamed over it.
fn write_file(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so concurrent writers never share a temporary.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("write", &tmp))?;
        if replace {
            std::fs::rename(&tmp, path).map_err(io_err("write", path))
        } else {
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(CaError::Exists(path.to_owned()))
                }
                Err(e) => Err(io_err("write", path)(e)),
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}
