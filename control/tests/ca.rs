//! The mesh CA (`control::ca`): what `init` and `issue` write, checked by parsing the
//! files, by OpenSSL's verifier, and by the tables checker that loads identities.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control::ca::{self, CaError, InitOptions, IssueOptions};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// 2026-01-01T00:00:00Z: fixed, so validity periods are exact.
const NB_UNIX: u64 = 1_767_225_600;
const DAY: u64 = 24 * 3600;
const ID: &str = "spiffe://corp.mesh/sa/checkout";

fn nb() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NB_UNIX)
}

fn init_opts() -> InitOptions {
    InitOptions {
        not_before: nb(),
        ..InitOptions::default()
    }
}

fn issue_opts() -> IssueOptions {
    IssueOptions {
        not_before: nb(),
        ..IssueOptions::default()
    }
}

fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read pem");
    x509_parser::pem::Pem::iter_from_buffer(&bytes)
        .map(|p| p.expect("pem block"))
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// Every SAN, as `uri:...` or `dns:...`.
fn sans(x: &X509Certificate<'_>) -> Vec<String> {
    x.subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::DNSName(d) => format!("dns:{d}"),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

/// The SANs, each a URI (panics on any other).
fn uri_sans(x: &X509Certificate<'_>) -> Vec<String> {
    sans(x)
        .into_iter()
        .map(|s| match s.strip_prefix("uri:") {
            Some(u) => u.to_owned(),
            None => panic!("unexpected SAN {s}"),
        })
        .collect()
}

fn ski(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn aki(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn assert_p256(x: &X509Certificate<'_>) {
    let alg = &x.public_key().algorithm;
    assert_eq!(alg.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .expect("named curve");
    assert_eq!(curve, OID_EC_P256);
    assert_eq!(x.signature_algorithm.algorithm, OID_SIG_ECDSA_WITH_SHA256);
}

#[test]
fn init_then_issue_writes_a_p256_chain_naming_the_spiffe_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_dir, out) = (dir.path().join("ca"), dir.path().join("ids/checkout"));
    let ca_files = ca::init(&ca_dir, &init_opts()).expect("init");
    assert_eq!(ca_files.cert, ca_dir.join("ca.pem"));
    assert_eq!(ca_files.key, ca_dir.join("ca-key.pem"));
    let leaf_files = ca::issue(&ca_dir, ID, &out, &issue_opts()).expect("issue");
    assert_eq!(leaf_files.cert, out.join("cert.pem"));
    assert_eq!(leaf_files.key, out.join("key.pem"));

    let ca_ders = pem_certs(&ca_files.cert);
    assert_eq!(ca_ders.len(), 1);
    let (_, root) = X509Certificate::from_der(&ca_ders[0]).expect("CA parses");
    let chain = pem_certs(&leaf_files.cert);
    assert_eq!(chain.len(), 2, "cert.pem is leaf then CA");
    assert_eq!(
        chain[1], ca_ders[0],
        "second block is the CA certificate itself"
    );
    let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf parses");

    // The root.
    assert_eq!(root.subject().to_string(), "CN=xdpmesh mesh CA");
    assert_eq!(root.subject().as_raw(), root.issuer().as_raw());
    let bc = root.basic_constraints().expect("bc").expect("bc present");
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = root.key_usage().expect("ku").expect("ku present").value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    assert!(ski(&root).is_some());
    assert_p256(&root);
    assert_eq!(root.validity().not_before.timestamp(), NB_UNIX as i64);
    assert_eq!(
        root.validity().not_after.timestamp(),
        (NB_UNIX + 365 * DAY) as i64
    );

    // The leaf.
    assert_eq!(uri_sans(&leaf), vec![ID.to_owned()]);
    assert_eq!(leaf.subject().to_string(), "CN=checkout");
    assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());
    assert_eq!(aki(&leaf), ski(&root), "AKI names the CA's key");
    let bc = leaf.basic_constraints().expect("bc").expect("bc present");
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().expect("ku").expect("ku present").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = leaf
        .extended_key_usage()
        .expect("eku")
        .expect("eku present")
        .value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    assert_p256(&leaf);
    assert_eq!(leaf.validity().not_before.timestamp(), NB_UNIX as i64);
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        (NB_UNIX + DAY) as i64
    );
    assert!(leaf.raw_serial().len() >= 8, "serial has at least 64 bits");
    assert_ne!(leaf.raw_serial(), root.raw_serial());

    // key.pem is the leaf's key; ca-key.pem the root's.
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&leaf_files.key).expect("key"))
        .expect("leaf key parses");
    assert_eq!(key.public_key_der(), leaf.public_key().raw);
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&ca_files.key).expect("key"))
        .expect("CA key parses");
    assert_eq!(ca_key.public_key_der(), root.public_key().raw);
    assert!(std::fs::read_to_string(&leaf_files.key)
        .expect("key")
        .starts_with("-----BEGIN PRIVATE KEY-----"));
}

/// `--dns` names go next to the SPIFFE ID (lowercased), for clients of an `ingress-tls`
/// listener that check the host name; a name that is no host name is refused.
#[test]
fn issue_adds_dns_names_next_to_the_spiffe_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    ca::init(&ca_dir, &init_opts()).expect("init");
    let opts = IssueOptions {
        dns: vec!["Web.Example.test".into(), "*.apps.test".into()],
        ..issue_opts()
    };
    let l = ca::issue(&ca_dir, ID, &dir.path().join("l"), &opts).expect("issue");
    let chain = pem_certs(&l.cert);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf parses");
    assert_eq!(
        sans(&leaf),
        [
            format!("uri:{ID}"),
            "dns:web.example.test".into(),
            "dns:*.apps.test".into()
        ]
    );
    for bad in ["", "a..b", "-a.test", "a_b.test", "a.*.test", "*.", "*.com"] {
        let opts = IssueOptions {
            dns: vec![bad.into()],
            ..issue_opts()
        };
        let r = ca::issue(&ca_dir, ID, &dir.path().join("bad"), &opts);
        assert!(
            matches!(r, Err(CaError::BadOptions(_))),
            "{bad:?} was taken: {r:?}"
        );
    }
}

#[test]
fn two_leaves_get_different_keys_and_serials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    ca::init(&ca_dir, &init_opts()).expect("init");
    let a = ca::issue(&ca_dir, ID, &dir.path().join("a"), &issue_opts()).expect("a");
    let b = ca::issue(&ca_dir, ID, &dir.path().join("b"), &issue_opts()).expect("b");
    let (da, db) = (pem_certs(&a.cert), pem_certs(&b.cert));
    let (_, la) = X509Certificate::from_der(&da[0]).expect("a parses");
    let (_, lb) = X509Certificate::from_der(&db[0]).expect("b parses");
    assert_ne!(la.raw_serial(), lb.raw_serial());
    assert_ne!(la.public_key().raw, lb.public_key().raw);
}

#[test]
fn validity_follows_options_and_expiry_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    // Sub-second parts are dropped: X.509 times have whole seconds.
    let start = nb() + Duration::from_millis(700);
    let ca_files = ca::init(
        &ca_dir,
        &InitOptions {
            not_before: start,
            validity: Duration::from_secs(30 * DAY),
            common_name: "test root".into(),
            force: false,
        },
    )
    .expect("init");
    let leaf = ca::issue(
        &ca_dir,
        ID,
        &dir.path().join("l"),
        &IssueOptions {
            not_before: start + Duration::from_secs(60),
            validity: Duration::from_secs(3600),
            force: false,
            dns: Vec::new(),
        },
    )
    .expect("issue");
    let ca_pem = std::fs::read(&ca_files.cert).expect("read");
    assert_eq!(
        ca::expiry(&ca_pem).expect("expiry"),
        (nb(), nb() + Duration::from_secs(30 * DAY))
    );
    let leaf_pem = std::fs::read(&leaf.cert).expect("read");
    assert_eq!(
        ca::expiry(&leaf_pem).expect("expiry"),
        (
            nb() + Duration::from_secs(60),
            nb() + Duration::from_secs(60 + 3600)
        )
    );
    let ca_ders = pem_certs(&ca_files.cert);
    let (_, root) = X509Certificate::from_der(&ca_ders[0]).expect("parse");
    assert_eq!(root.subject().to_string(), "CN=test root");

    let err = ca::expiry(b"not a certificate").expect_err("no PEM");
    assert_eq!(
        err.to_string(),
        "certificate does not parse: no PEM CERTIFICATE block"
    );
}

#[test]
fn leaf_may_not_outlive_or_predate_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    ca::init(
        &ca_dir,
        &InitOptions {
            validity: Duration::from_secs(DAY),
            ..init_opts()
        },
    )
    .expect("init");
    let late = IssueOptions {
        not_before: nb() + Duration::from_secs(3600),
        ..issue_opts()
    };
    let out = dir.path().join("l");
    let err = ca::issue(&ca_dir, ID, &out, &late).expect_err("outlives the CA");
    assert_eq!(
        err.to_string(),
        "bad options: the leaf would be valid until Jan  2 01:00:00 2026 +00:00, after the CA expires (Jan  2 00:00:00 2026 +00:00): rotate the CA or shorten the validity"
    );
    let early = IssueOptions {
        not_before: nb() - Duration::from_secs(1),
        ..issue_opts()
    };
    let err = ca::issue(&ca_dir, ID, &out, &early).expect_err("before the CA");
    assert!(
        err.to_string()
            .starts_with("bad options: the CA is valid from"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written on error");
}

#[test]
fn keys_are_0600_from_the_start_and_new_dirs_0700() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_dir, out) = (dir.path().join("ca"), dir.path().join("ids/a"));
    let c = ca::init(&ca_dir, &init_opts()).expect("init");
    let l = ca::issue(&ca_dir, ID, &out, &issue_opts()).expect("issue");
    assert_eq!(mode(&c.key), 0o600);
    assert_eq!(mode(&l.key), 0o600);
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&dir.path().join("ids")), 0o700);
    // Certificates are public; the exact bits depend on the umask, never wider than 0644.
    assert_eq!(mode(&c.cert) & !0o644, 0);
    assert_eq!(mode(&l.cert) & !0o644, 0);
    // No temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cert.pem", "key.pem"]);
}

#[test]
fn refuses_to_overwrite_without_force_and_replaces_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_dir, out) = (dir.path().join("ca"), dir.path().join("l"));
    let c = ca::init(&ca_dir, &init_opts()).expect("init");
    let ca_before = std::fs::read(&c.cert).expect("read");

    let err = ca::init(&ca_dir, &init_opts()).expect_err("exists");
    assert!(matches!(err, CaError::Exists(_)));
    assert_eq!(
        err.to_string(),
        format!(
            "\"{}\" already exists (pass --force to replace it)",
            ca_dir.join("ca-key.pem").display()
        )
    );
    assert_eq!(std::fs::read(&c.cert).expect("read"), ca_before);

    // Only the certificate present: still refused, and it names that file.
    std::fs::remove_file(&c.key).expect("rm");
    let err = ca::init(&ca_dir, &init_opts()).expect_err("exists");
    assert_eq!(
        err.to_string(),
        format!(
            "\"{}\" already exists (pass --force to replace it)",
            ca_dir.join("ca.pem").display()
        )
    );

    // force replaces both, and a key made world-readable by hand comes back 0600.
    std::fs::write(&c.key, "junk").expect("write");
    std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let forced = InitOptions {
        force: true,
        ..init_opts()
    };
    ca::init(&ca_dir, &forced).expect("forced init");
    assert_ne!(std::fs::read(&c.cert).expect("read"), ca_before);
    assert_eq!(mode(&c.key), 0o600);

    let l = ca::issue(&ca_dir, ID, &out, &issue_opts()).expect("issue");
    let leaf_before = std::fs::read(&l.cert).expect("read");
    let err = ca::issue(&ca_dir, ID, &out, &issue_opts()).expect_err("exists");
    assert_eq!(
        err.to_string(),
        format!(
            "\"{}\" already exists (pass --force to replace it)",
            out.join("key.pem").display()
        )
    );
    assert_eq!(std::fs::read(&l.cert).expect("read"), leaf_before);
    let forced = IssueOptions {
        force: true,
        ..issue_opts()
    };
    ca::issue(&ca_dir, ID, &out, &forced).expect("forced issue");
    assert_ne!(std::fs::read(&l.cert).expect("read"), leaf_before);
    assert_eq!(mode(&l.key), 0o600);
}

#[test]
fn bad_spiffe_ids_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    ca::init(&ca_dir, &init_opts()).expect("init");
    let long = format!("spiffe://corp.mesh/{}", "a".repeat(2048));
    let cases: [(&str, &str); 10] = [
        ("http://corp.mesh/sa/a", "does not start with spiffe://"),
        ("SPIFFE://corp.mesh/sa/a", "does not start with spiffe://"),
        (
            "spiffe://Corp.mesh/sa/a",
            "has a trust domain with characters other than a-z 0-9 . - _",
        ),
        (
            "spiffe://corp.mesh:443/sa/a",
            "has a trust domain with characters other than a-z 0-9 . - _",
        ),
        ("spiffe://corp.mesh/sa//a", "has an empty path segment"),
        ("spiffe://corp.mesh/sa/a/", "has an empty path segment"),
        (
            "spiffe://corp.mesh/sa/a?x=1",
            "has a path with characters other than a-z A-Z 0-9 . - _",
        ),
        (
            "spiffe://corp.mesh/sa/a#frag",
            "has a path with characters other than a-z A-Z 0-9 . - _",
        ),
        ("spiffe://corp.mesh", "has no path"),
        (&long, "is longer than 2048 bytes"),
    ];
    for (id, why) in cases {
        let out = dir.path().join("out");
        let err = ca::issue(&ca_dir, id, &out, &issue_opts()).expect_err(id);
        assert!(matches!(err, CaError::BadId { .. }), "{id}: {err:?}");
        assert_eq!(
            err.to_string(),
            format!("\"{id}\" is not a SPIFFE ID: it {why}")
        );
        assert!(!out.exists(), "{id}: nothing written");
    }
    // The boundary: a valid ID of exactly 2048 bytes is accepted.
    let max = format!(
        "spiffe://corp.mesh/{}",
        "a".repeat(2048 - "spiffe://corp.mesh/".len())
    );
    ca::issue(&ca_dir, &max, &dir.path().join("max"), &issue_opts()).expect("2048 bytes");
}

#[test]
fn issue_checks_the_ca_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca1, ca2) = (dir.path().join("ca1"), dir.path().join("ca2"));
    let out = dir.path().join("out");
    let err = ca::issue(&ca1, ID, &out, &issue_opts()).expect_err("no CA");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read the CA certificate \"{}\": No such file or directory (os error 2)",
            ca1.join("ca.pem").display()
        )
    );

    let c1 = ca::init(&ca1, &init_opts()).expect("init 1");
    let c2 = ca::init(&ca2, &init_opts()).expect("init 2");
    std::fs::copy(&c2.key, &c1.key).expect("swap key");
    let err = ca::issue(&ca1, ID, &out, &issue_opts()).expect_err("wrong key");
    assert_eq!(
        err.to_string(),
        format!(
            "\"{}\": key does not match the CA certificate \"{}\"",
            c1.key.display(),
            c1.cert.display()
        )
    );

    // A leaf is not a CA.
    let leaf = ca::issue(&ca2, ID, &dir.path().join("leaf"), &issue_opts()).expect("issue");
    let ca3 = dir.path().join("ca3");
    std::fs::create_dir(&ca3).expect("mkdir");
    std::fs::copy(&leaf.cert, ca3.join("ca.pem")).expect("cp");
    std::fs::copy(&leaf.key, ca3.join("ca-key.pem")).expect("cp");
    let err = ca::issue(&ca3, ID, &out, &issue_opts()).expect_err("leaf as CA");
    assert_eq!(
        err.to_string(),
        format!(
            "\"{}\": is not a CA certificate",
            ca3.join("ca.pem").display()
        )
    );

    std::fs::write(
        &c1.key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let err = ca::issue(&ca1, ID, &out, &issue_opts()).expect_err("bad key");
    assert!(
        err.to_string().starts_with(&format!(
            "\"{}\": holds no usable PKCS#8 private key",
            c1.key.display()
        )),
        "{err}"
    );
    assert!(!out.exists(), "nothing written on error");
}

/// OpenSSL's verifier, or `None` (with the reason printed) when `openssl` is not
/// installed outside CI.
fn openssl() -> Option<Command> {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => Some(Command::new("openssl")),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("CI: the openssl command is required for this test (Debian package openssl)")
        }
        _ => {
            eprintln!("skipped: the openssl command is not installed");
            None
        }
    }
}

/// `openssl verify` of the leaf (first block of `leaf_chain`) against the root in
/// `ca_pem` only, as TLS server and as TLS client, at `NB_UNIX + 60`.
fn openssl_verify(ca_pem: &Path, leaf_chain: &Path, scratch: &Path) -> Vec<(bool, String)> {
    let leaf_only = scratch.join("leaf-only.pem");
    let text = std::fs::read_to_string(leaf_chain).expect("read");
    let end = text.find("-----END CERTIFICATE-----").expect("end") + 26;
    std::fs::write(&leaf_only, &text[..end]).expect("write");
    ["sslserver", "sslclient"]
        .iter()
        .map(|purpose| {
            let o = openssl()
                .expect("checked by caller")
                .args(["verify", "-x509_strict", "-purpose", purpose, "-attime"])
                .arg((NB_UNIX + 60).to_string())
                .arg("-CAfile")
                .arg(ca_pem)
                .arg(&leaf_only)
                .output()
                .expect("run openssl");
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            (o.status.success(), all)
        })
        .collect()
}

#[test]
fn openssl_verifies_the_leaf_under_its_ca_and_not_under_another() {
    if openssl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca1, ca2) = (dir.path().join("ca1"), dir.path().join("ca2"));
    let c1 = ca::init(&ca1, &init_opts()).expect("init 1");
    // Same subject name as CA 1: only the signature tells them apart.
    let c2 = ca::init(&ca2, &init_opts()).expect("init 2");
    let leaf = ca::issue(&ca1, ID, &dir.path().join("l"), &issue_opts()).expect("issue");

    for (ok, out) in openssl_verify(&c1.cert, &leaf.cert, dir.path()) {
        assert!(ok, "leaf must verify under its CA: {out}");
    }
    for (ok, out) in openssl_verify(&c2.cert, &leaf.cert, dir.path()) {
        assert!(!ok, "leaf must not verify under another CA: {out}");
        assert!(
            out.contains("unable to get local issuer certificate"),
            "{out}"
        );
    }

    // A forged root: CA 1's name, validity and key identifier, another key. Chain
    // building picks it, so only the signature check can refuse the leaf.
    let ders = pem_certs(&c1.cert);
    let (_, root1) = X509Certificate::from_der(&ders[0]).expect("parse");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "xdpmesh mesh CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ski(&root1).expect("ski"));
    params.not_before = root1.validity().not_before.to_datetime();
    params.not_after = root1.validity().not_after.to_datetime();
    let forged_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let forged = params.self_signed(&forged_key).expect("forge");
    let forged_pem = dir.path().join("forged.pem");
    std::fs::write(&forged_pem, forged.pem()).expect("write");
    let (_, f) = X509Certificate::from_der(forged.der()).expect("parse");
    assert_eq!(f.subject().as_raw(), root1.subject().as_raw());
    assert_eq!(ski(&f), ski(&root1));
    for (ok, out) in openssl_verify(&forged_pem, &leaf.cert, dir.path()) {
        assert!(!ok, "leaf must not verify under a forged CA: {out}");
        assert!(out.contains("certificate signature failure"), "{out}");
    }
}

#[test]
fn the_tables_checker_accepts_an_issued_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    ca::init(&ca_dir, &init_opts()).expect("init");
    let leaf =
        ca::issue(&ca_dir, ID, &dir.path().join("ids/checkout"), &issue_opts()).expect("issue");
    let tables = dir.path().join("tables.toml");
    std::fs::write(
        &tables,
        format!(
            "[[identity]]\nid = \"{ID}\"\nsources = [\"10.10.1.0/24\"]\ncert = \"ids/checkout/cert.pem\"\nkey = \"ids/checkout/key.pem\"\n"
        ),
    )
    .expect("write tables");

    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let compiled = control::compile_file(&tables, at(NB_UNIX + 3600)).expect("compiles");
    let ident = compiled
        .snapshot
        .identity(ID)
        .expect("identity in snapshot");
    assert_eq!(ident.cert_chain_der, pem_certs(&leaf.cert));
    assert_eq!(ident.cert_path, leaf.cert);

    // After 24 h the same files are refused as expired.
    let errors = match control::compile_file(&tables, at(NB_UNIX + DAY + 1)) {
        Ok(_) => panic!("an expired certificate must not compile"),
        Err(d) => d.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("certificate expired on"), "{errors:?}");

    // A leaf for another ID is refused for this identity.
    ca::issue(
        &ca_dir,
        "spiffe://corp.mesh/sa/other",
        &dir.path().join("ids/checkout"),
        &IssueOptions {
            force: true,
            ..issue_opts()
        },
    )
    .expect("reissue");
    let errors = match control::compile_file(&tables, at(NB_UNIX + 3600)) {
        Ok(_) => panic!("a certificate for another ID must not compile"),
        Err(d) => d.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert!(
        errors
            .iter()
            .any(|e| e.contains("certificate's SPIFFE ID is \"spiffe://corp.mesh/sa/other\"")),
        "{errors:?}"
    );
}
