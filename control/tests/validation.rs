//! Every validation error: its exact message, key, hint and position.

mod common;

use common::{errors, errors_in, write_cert, write_good_cert};
use control::schema::HopProtocol;

#[track_caller]
fn one(text: &str, expected: &str) {
    assert_eq!(errors(text), vec![expected.to_owned()], "for:\n{text}");
}

#[test]
fn unknown_key_lists_allowed_keys_or_suggests_one() {
    one(
        "[[service]]\nname = \"a\"\nadress = 1\n",
        "t.toml:3:1: service[0].adress: unknown key \"adress\" (hint: allowed keys: name, hosts, endpoints, load_balancer, hash_key, retries, fault, rate_limit, mirror, retry_budget, circuit_breaker, outlier, health_check, pool, upstream_protocol)",
    );
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ adress = \"1.2.3.4:5\" }]\n",
        "t.toml:3:16: service[0].endpoints[0].adress: unknown key \"adress\" (hint: did you mean \"address\"?)",
    );
    one(
        "[[servce]]\nname = \"a\"\n",
        "t.toml:1:3: servce: unknown key \"servce\" (hint: did you mean \"service\"?)",
    );
}

#[test]
fn wrong_types() {
    one(
        "[[service]]\nname = 5\n",
        "t.toml:2:8: service[0].name: expected a string, found an integer (hint: quote it: \"5\")",
    );
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\", weight = \"2\" }]\n",
        "t.toml:3:48: service[0].endpoints[0].weight: expected an integer, found a string (hint: remove the quotes: 2)",
    );
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\", weight = -1 }]\n",
        "t.toml:3:48: service[0].endpoints[0].weight: expected an integer from 0 to 4294967295, found integer -1",
    );
    one(
        "[service]\nname = \"a\"\n",
        "t.toml:1:1: service: expected an array, found a table (hint: write [[service]] for each entry, or service = [ ... ])",
    );
    one(
        "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:80\"\nprotocol = \"htpp\"\n",
        "t.toml:4:12: listener[0].protocol: unknown value \"htpp\" (hint: did you mean \"http\"?)",
    );
    one(
        "[[service]]\nname = \"a\"\nload_balancer = \"rr\"\n",
        "t.toml:3:17: service[0].load_balancer: unknown value \"rr\" (hint: one of: round-robin, least-request, p2c-ewma, ring-hash)",
    );
}

#[test]
fn missing_required_key() {
    one("[[peer]]\nname = \"b\"\naddress = \"1.2.3.4:5\"\n", "t.toml:1:1: peer[0].identity: missing required key \"identity\" (hint: add identity = ...)");
}

#[test]
fn syntax_error_is_one_error() {
    one(
        "a = = 1\n",
        "t.toml:1:5: TOML syntax error: invalid string; expected `\"`, `'`",
    );
}

/// A name holding a newline is quoted with escapes: an error stays one line (found by
/// fuzzing: a multi-line string as a listener's service).
#[test]
fn quoted_names_keep_an_error_on_one_line() {
    one(
        "[[route]]\nservice = \"\"\"a\nb\"\"\"\n",
        "t.toml:2:11: route[0].service: unknown service \"a\\nb\" (hint: define it in a [[service]] table)",
    );
}

#[test]
fn references_to_unknown_names_suggest_the_closest() {
    one(
        "[[service]]\nname = \"reviews\"\n[[route]]\nservice = \"reviwes\"\n",
        "t.toml:4:11: route[0].service: unknown service \"reviwes\" (hint: did you mean \"reviews\"?)",
    );
    // A `via` also needs [trust] roots: that error comes with the unknown peer.
    const NO_TRUST: &str = "mesh traffic needs trusted roots, and [trust] has none (hint: add [trust] roots = [\"ca/ca.pem\"] (the mesh CA from `xdpmesh ca init`))";
    assert_eq!(
        errors("[[peer]]\nname = \"gw-b\"\naddress = \"10.0.0.1:1\"\nidentity = \"spiffe://m/gw\"\n[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:80\", via = \"gw-c\" }]\n"),
        vec![
            "t.toml:7:46: service[0].endpoints[0].via: unknown peer \"gw-c\" (hint: did you mean \"gw-b\"?)".to_string(),
            format!("t.toml:7:46: service[0].endpoints[0].via: {NO_TRUST}"),
        ]
    );
    assert_eq!(
        errors("[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:80\", via = \"zzz\" }]\n"),
        vec![
            "t.toml:3:46: service[0].endpoints[0].via: unknown peer \"zzz\" (hint: define it in a [[peer]] table)".to_string(),
            format!("t.toml:3:46: service[0].endpoints[0].via: {NO_TRUST}"),
        ]
    );
    one(
        "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:1\"\nprotocol = \"tcp\"\nservice = \"db\"\n",
        "t.toml:5:11: listener[0].service: unknown service \"db\" (hint: define it in a [[service]] table)",
    );
    assert_eq!(
        errors("[[listener]]\nname = \"m\"\nbind = \"0.0.0.0:1\"\nprotocol = \"mesh\"\nidentity = \"spiffe://m/gw\"\n"),
        vec![
            format!("t.toml:4:12: listener[0].protocol: {NO_TRUST}"),
            "t.toml:5:12: listener[0].identity: unknown identity \"spiffe://m/gw\" (hint: define it in an [[identity]] table)".to_string(),
        ]
    );
    // An ingress-tls listener's certificate is watched under the mesh's [trust] too.
    assert_eq!(
        errors("[[listener]]\nname = \"i\"\nbind = \"0.0.0.0:443\"\nprotocol = \"ingress-tls\"\nidentity = \"spiffe://m/gw\"\n"),
        vec![
            "t.toml:4:12: listener[0].protocol: an ingress-tls listener's certificate is loaded under the mesh's trust, and [trust] has none (hint: add [trust] roots = [\"ca/ca.pem\"] (the mesh CA from `xdpmesh ca init`))".to_string(),
            "t.toml:5:12: listener[0].identity: unknown identity \"spiffe://m/gw\" (hint: define it in an [[identity]] table)".to_string(),
        ]
    );
    one(
        "[[authorization]]\nservice = \"x\"\nallow = [\"*\"]\n",
        "t.toml:2:11: authorization[0].service: unknown service \"x\" (hint: define it in a [[service]] table)",
    );
}

#[test]
fn overlapping_listeners() {
    let t = "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\n\
             [[listener]]\nname = \"b\"\nbind = \"10.0.0.1:80\"\nprotocol = \"echo\"\n";
    one(t, "t.toml:7:8: listener[1].bind: overlaps listener \"a\" on 0.0.0.0:80 (hint: see line 3; use another port or address)");
    // Different ports, or different addresses on one port, do not overlap.
    let ok = "[[listener]]\nname = \"a\"\nbind = \"10.0.0.2:80\"\nprotocol = \"http\"\n\
              [[listener]]\nname = \"b\"\nbind = \"10.0.0.1:80\"\nprotocol = \"echo\"\n";
    assert!(common::compile_in(std::path::Path::new("."), ok).is_ok());
}

#[test]
fn listener_fields_that_do_nothing_or_are_missing() {
    one(
        "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:80\"\nprotocol = \"tcp\"\n",
        "t.toml:4:12: listener[0].service: a tcp listener needs a service (hint: add service = \"NAME\")",
    );
    one(
        "[[service]]\nname = \"s\"\n[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\nservice = \"s\"\n",
        "t.toml:7:11: listener[0].service: service does nothing for protocol \"http\" (http routes by Host) (hint: remove it)",
    );
    assert_eq!(
        errors("[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:443\"\nprotocol = \"ingress-tls\"\n"),
        vec![
            "t.toml:4:12: listener[0].identity: a ingress-tls listener needs an identity (hint: add identity = \"spiffe://...\" naming an [[identity]])".to_string(),
            "t.toml:4:12: listener[0].protocol: an ingress-tls listener's certificate is loaded under the mesh's trust, and [trust] has none (hint: add [trust] roots = [\"ca/ca.pem\"] (the mesh CA from `xdpmesh ca init`))".to_string(),
        ]
    );
}

#[test]
fn weights_summing_to_zero() {
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\", weight = 0 }]\n",
        "t.toml:3:14: service[0].endpoints: endpoint weights sum to zero (hint: give at least one endpoint a weight above 0)",
    );
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\" }]\n[[route]]\nservice = \"a\"\nbackends = [{ weight = 0 }, { weight = 0 }]\n",
        "t.toml:6:13: route[0].backends: backend weights sum to zero (hint: give at least one backend a weight above 0)",
    );
}

#[test]
fn backend_labels_must_select_something() {
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\", labels = { version = \"v1\" } }]\n[[route]]\nservice = \"a\"\nbackends = [{ labels = { version = \"v3\" } }]\n",
        "t.toml:6:13: route[0].backends[0].labels: no endpoint of service \"a\" has labels {version=v3} (hint: labels present: {version=v1})",
    );
}

#[test]
fn duplicate_names() {
    one(
        "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"\n",
        "t.toml:4:8: service[1].name: duplicate service \"a\" (hint: first defined on line 2)",
    );
    one(
        "[[peer]]\nname = \"p\"\naddress = \"1.1.1.1:1\"\nidentity = \"spiffe://m/p\"\n[[peer]]\nname = \"p\"\naddress = \"1.1.1.2:1\"\nidentity = \"spiffe://m/q\"\n",
        "t.toml:6:8: peer[1].name: duplicate peer \"p\" (hint: first defined on line 2)",
    );
    one(
        "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:1\"\nprotocol = \"echo\"\n[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:2\"\nprotocol = \"sink\"\n",
        "t.toml:6:8: listener[1].name: duplicate listener \"l\" (hint: first defined on line 2)",
    );
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\" }, { address = \"1.2.3.4:5\" }]\n",
        "t.toml:3:53: service[0].endpoints[1].address: duplicate endpoint 1.2.3.4:5 (hint: first listed on line 3)",
    );
    one(
        "[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\nhosts = [\"A\"]\n",
        "t.toml:5:10: service[1].hosts[0]: host \"a\" already names service \"a\" (hint: see line 2; a host names one service)",
    );
}

#[test]
fn bad_addresses_and_cidrs() {
    let e = errors("[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4\" }, { address = \"foo:80\" }, { address = \"::1:80\" }]\n");
    assert_eq!(
        e,
        vec![
            "t.toml:3:26: service[0].endpoints[0].address: \"1.2.3.4\" is not an IP:PORT address (hint: add a port: \"1.2.3.4:PORT\")",
            "t.toml:3:51: service[0].endpoints[1].address: \"foo:80\" is not an IP:PORT address (hint: write IP:PORT, e.g. \"10.10.3.2:8080\"; names are not resolved)",
            "t.toml:3:75: service[0].endpoints[2].address: \"::1:80\" is not an IP:PORT address (hint: add a port: \"::1:80:PORT\")",
        ]
    );
    let dir = tempfile::tempdir().expect("tmp");
    write_good_cert(dir.path(), "spiffe://m/a");
    let e = errors_in(
        dir.path(),
        "[[identity]]\nid = \"spiffe://m/a\"\nsources = [\"10.0.0.1/24\", \"10.0.0.0/33\"]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    );
    assert_eq!(
        e,
        vec![
            "t.toml:3:12: identity[0].sources[0]: \"10.0.0.1/24\" has host bits set (hint: did you mean \"10.0.0.0/24\"?)",
            "t.toml:3:27: identity[0].sources[1]: \"10.0.0.0/33\" is not a CIDR (hint: write ADDRESS/PREFIX, e.g. \"10.10.1.0/24\")",
        ]
    );
}

#[test]
fn bad_spiffe_ids() {
    one(
        "[[peer]]\nname = \"p\"\naddress = \"1.1.1.1:1\"\nidentity = \"https://m/p\"\n",
        "t.toml:4:12: peer[0].identity: \"https://m/p\" is not a SPIFFE ID: it does not start with spiffe:// (hint: write spiffe://TRUST-DOMAIN/PATH, e.g. spiffe://corp.mesh/sa/checkout)",
    );
    one(
        "[[service]]\nname = \"s\"\n[[authorization]]\nservice = \"s\"\nallow = [\"spiffe://Corp/x\"]\n",
        "t.toml:5:10: authorization[0].allow[0]: \"spiffe://Corp/x\" is not a SPIFFE ID: it has a trust domain with characters other than a-z 0-9 . - _ (hint: write spiffe://TRUST-DOMAIN/PATH, e.g. spiffe://corp.mesh/sa/checkout)",
    );
}

#[test]
fn regex_that_does_not_compile() {
    one(
        "[[service]]\nname = \"a\"\n[[route]]\nservice = \"a\"\nmatch = { path = { regex = \"(\" } }\n",
        "t.toml:5:18: route[0].match.path.regex: regex does not compile: unclosed group (hint: Rust regex syntax; the regex must match the whole path)",
    );
    one(
        "[[service]]\nname = \"a\"\n[[route]]\nservice = \"a\"\nmatch = { path = { regex = \"a\", prefix = \"/\" } }\n",
        "t.toml:5:18: route[0].match.path: expected a table with exactly one of: exact, prefix, regex (hint: e.g. { exact = ... })",
    );
    one(
        "[[service]]\nname = \"a\"\n[[route]]\nservice = \"a\"\nmatch = { path = { prefix = \"api\" } }\n",
        "t.toml:5:18: route[0].match.path.prefix: path \"api\" does not start with '/' (hint: write \"/api\")",
    );
    one(
        "[[service]]\nname = \"a\"\n[[authorization]]\nservice = \"a\"\nallow = [\"*\"]\npaths = [{ regex = \"[z-a]\" }]\n",
        "t.toml:6:10: authorization[0].paths[0].regex: regex does not compile: invalid character class range, the start must be <= the end (hint: Rust regex syntax; the regex must match the whole path)",
    );
}

#[test]
fn lower_case_method() {
    one(
        "[[service]]\nname = \"a\"\n[[route]]\nservice = \"a\"\nmatch = { method = \"get\" }\n",
        "t.toml:5:20: route[0].match.method: method \"get\" is not upper-case (hint: methods are case-sensitive (RFC 9110 §9.1): write \"GET\")",
    );
}

#[test]
fn hash_key_needs_ring_hash() {
    one(
        "[[service]]\nname = \"a\"\nhash_key = \"source-ip\"\n",
        "t.toml:3:12: service[0].hash_key: hash_key does nothing without load_balancer = \"ring-hash\" (hint: remove it, or set load_balancer = \"ring-hash\")",
    );
    one(
        "[[service]]\nname = \"a\"\nload_balancer = \"ring-hash\"\nhash_key = \"body\"\n",
        "t.toml:4:12: service[0].hash_key: \"body\" is not a hash key (hint: one of: source-ip, header:NAME, cookie:NAME)",
    );
}

#[test]
fn authorization_that_does_nothing() {
    one(
        "[[service]]\nname = \"a\"\n[[authorization]]\nservice = \"a\"\n",
        "t.toml:4:11: authorization[0]: rule allows and denies no one (hint: add allow = [\"spiffe://...\"] or deny = [...])",
    );
}

#[test]
fn all_errors_of_a_file_are_reported_in_order() {
    let t = "[[service]]\nnmae = \"a\"\nload_balancer = \"rr\"\n\n[[route]]\nservice = \"b\"\n\n[[listener]]\nname = \"x\"\nbind = \"nowhere\"\nprotocol = \"echo\"\n";
    assert_eq!(
        errors(t),
        vec![
            "t.toml:2:1: service[0].nmae: unknown key \"nmae\" (hint: did you mean \"name\"?)",
            "t.toml:3:17: service[0].load_balancer: unknown value \"rr\" (hint: one of: round-robin, least-request, p2c-ewma, ring-hash)",
            "t.toml:6:11: route[0].service: unknown service \"b\" (hint: define it in a [[service]] table)",
            "t.toml:10:8: listener[0].bind: \"nowhere\" is not an IP:PORT address (hint: write IP:PORT, e.g. \"10.10.3.2:8080\"; names are not resolved)",
        ]
    );
}

const IDENT: &str =
    "[[identity]]\nid = \"spiffe://m/a\"\ncert = \"c/cert.pem\"\nkey = \"k/key.pem\"\n";

#[test]
fn certificate_missing() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().display();
    assert_eq!(
        errors_in(dir.path(), IDENT),
        vec![
            format!("t.toml:3:8: identity[0].cert: certificate file \"{base}/c/cert.pem\" not found (hint: issue one: xdpmesh ca issue --ca CA_DIR --id spiffe://m/a --out DIR)"),
            format!("t.toml:4:7: identity[0].key: key file \"{base}/k/key.pem\" not found (hint: issue one: xdpmesh ca issue --ca CA_DIR --id spiffe://m/a --out DIR)"),
        ]
    );
}

#[test]
fn certificate_file_that_never_ends_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = "[[identity]]\nid = \"spiffe://m/a\"\ncert = \"/dev/zero\"\nkey = \"/dev/zero\"\n";
    assert_eq!(
        errors_in(dir.path(), t),
        vec![
            "t.toml:3:8: identity[0].cert: certificate file \"/dev/zero\" is larger than 1 MiB (hint: name a PEM file)".to_owned(),
            "t.toml:4:7: identity[0].key: key file \"/dev/zero\" is larger than 1 MiB (hint: name a PEM file)".to_owned(),
        ]
    );
}

#[test]
fn certificate_unreadable_or_not_pem() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().display();
    // A directory where the file should be: read fails even for root.
    std::fs::create_dir_all(dir.path().join("c/cert.pem")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("k")).expect("mkdir");
    std::fs::write(dir.path().join("k/key.pem"), "not a key").expect("write");
    assert_eq!(
        errors_in(dir.path(), IDENT),
        vec![
            format!("t.toml:3:8: identity[0].cert: cannot read certificate file \"{base}/c/cert.pem\": Is a directory (os error 21) (hint: check the file's permissions)"),
            format!("t.toml:4:7: identity[0].key: \"{base}/k/key.pem\" holds no usable PKCS#8 private key (PEM error: malformedframing) (hint: convert it: openssl pkcs8 -topk8 -nocrypt -in OLD.pem -out NEW.pem)"),
        ]
    );
    std::fs::remove_dir(dir.path().join("c/cert.pem")).expect("rmdir");
    std::fs::write(dir.path().join("c/cert.pem"), "hello").expect("write");
    let e = errors_in(dir.path(), IDENT);
    assert_eq!(
        e[0],
        format!("t.toml:3:8: identity[0].cert: \"{base}/c/cert.pem\" holds no PEM certificate (hint: expected a -----BEGIN CERTIFICATE----- block)")
    );
}

fn cert_case(
    from: (i32, u8, u8),
    until: (i32, u8, u8),
    cert_id: &str,
) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("tmp");
    write_cert(&dir.path().join("c"), cert_id, from, until);
    std::fs::create_dir_all(dir.path().join("k")).expect("mkdir");
    std::fs::copy(dir.path().join("c/key.pem"), dir.path().join("k/key.pem")).expect("copy");
    let e = errors_in(dir.path(), IDENT);
    (dir, e)
}

#[test]
fn certificate_expired_or_not_yet_valid() {
    let (_d, e) = cert_case((2000, 1, 1), (2001, 1, 1), "spiffe://m/a");
    assert_eq!(
        e,
        vec!["t.toml:3:8: identity[0].cert: certificate expired on Jan  1 00:00:00 2001 +00:00 (hint: issue a new one: xdpmesh ca issue --ca CA_DIR --id spiffe://m/a --out DIR)"]
    );
    let (_d, e) = cert_case((2990, 1, 1), (2999, 1, 1), "spiffe://m/a");
    assert_eq!(
        e,
        vec!["t.toml:3:8: identity[0].cert: certificate is not valid before Jan  1 00:00:00 2990 +00:00 (hint: check the clock, or issue a certificate valid now)"]
    );
}

#[test]
fn certificate_for_another_spiffe_id() {
    let (_d, e) = cert_case((2020, 1, 1), (2999, 1, 1), "spiffe://m/b");
    assert_eq!(
        e,
        vec!["t.toml:3:8: identity[0].cert: certificate's SPIFFE ID is \"spiffe://m/b\", not \"spiffe://m/a\" (hint: set id = \"spiffe://m/b\", or issue a certificate for spiffe://m/a)"]
    );
}

#[test]
fn key_not_matching_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().display();
    write_good_cert(&dir.path().join("c"), "spiffe://m/a");
    write_good_cert(&dir.path().join("k"), "spiffe://m/a"); // another key pair
    assert_eq!(
        errors_in(dir.path(), IDENT),
        vec![format!("t.toml:4:7: identity[0].key: key does not match the certificate \"{base}/c/cert.pem\" (hint: use the key the certificate was issued for)")]
    );
}

#[test]
fn good_certificate_loads_into_the_snapshot() {
    let dir = tempfile::tempdir().expect("tmp");
    write_good_cert(&dir.path().join("c"), "spiffe://m/a");
    std::fs::create_dir_all(dir.path().join("k")).expect("mkdir");
    std::fs::copy(dir.path().join("c/key.pem"), dir.path().join("k/key.pem")).expect("copy");
    let text = format!("{IDENT}sources = [\"10.1.0.0/16\", \"10.1.2.3\"]\n");
    let c = common::compile_in(dir.path(), &text).expect("valid");
    let id = c
        .snapshot
        .identity_for_source("10.1.9.9".parse().expect("ip"))
        .expect("identity for source");
    assert_eq!(id.id, "spiffe://m/a");
    assert_eq!(id.cert_chain_der.len(), 1);
    assert!(!id.key_der.is_empty());
    assert!(c
        .snapshot
        .identity_for_source("10.2.0.1".parse().expect("ip"))
        .is_none());
}

#[test]
fn trust_roots_must_be_ca_certificates_that_exist() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = control::ca::init(&dir.path().join("ca"), &Default::default()).expect("ca");
    let (leaf, _) = write_good_cert(dir.path(), "spiffe://m/gw");
    assert_eq!(ca.cert, dir.path().join("ca/ca.pem"));
    let leaf = leaf
        .strip_prefix(dir.path())
        .expect("inside")
        .display()
        .to_string();
    let ok = common::compile_in(dir.path(), "[trust]\nroots = [\"ca/ca.pem\"]\n").expect("valid");
    assert_eq!(ok.snapshot.trust_roots, vec![dir.path().join("ca/ca.pem")]);
    assert_eq!(
        errors_in(dir.path(), "[trust]\nroots = [\"ca/nope.pem\"]\n"),
        vec![format!(
            "t.toml:2:10: trust.roots[0]: trust root file \"{}\" not found (hint: make the mesh CA with: xdpmesh ca init --out DIR (its DIR/ca.pem))",
            dir.path().join("ca/nope.pem").display()
        )]
    );
    assert_eq!(
        errors_in(dir.path(), &format!("[trust]\nroots = [\"{leaf}\"]\n")),
        vec![format!(
            "t.toml:2:10: trust.roots[0]: \"{}\" is not a CA certificate (hint: name the mesh CA's certificate (ca.pem), not a gateway's)",
            dir.path().join(&leaf).display()
        )]
    );
}

#[test]
fn timeouts_are_durations_in_range() {
    one(
        "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\ntimeouts = { request = \"soon\" }\n",
        "t.toml:5:24: listener[0].timeouts.request: \"soon\" is not a duration: expected number at 0 (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\ntimeouts = { idle = \"0s\" }\n",
        "t.toml:5:21: listener[0].timeouts.idle: \"0s\" is out of range (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\ntimeouts = { reqest = \"1s\" }\n",
        "t.toml:5:14: listener[0].timeouts.reqest: unknown key \"reqest\" (hint: did you mean \"request\"?)",
    );
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\" }]\n[[route]]\nservice = \"a\"\ntimeout = \"8d\"\n",
        "t.toml:6:11: route[0].timeout: \"8d\" is out of range (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
}

#[test]
fn keepalive_durations_and_probes_are_in_range() {
    const L: &str = "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\n";
    one(
        &format!("{L}keepalive = {{ probes = 0 }}\n"),
        "t.toml:5:24: listener[0].keepalive.probes: 0 probes is out of range (hint: from 1 to 100 unanswered probes before the reset (default 6))",
    );
    one(
        &format!("{L}keepalive = {{ idle = \"1m\", probes = 101 }}\n"),
        "t.toml:5:37: listener[0].keepalive.probes: 101 probes is out of range (hint: from 1 to 100 unanswered probes before the reset (default 6))",
    );
    one(
        &format!("{L}keepalive = {{ idle = \"soon\" }}\n"),
        "t.toml:5:22: listener[0].keepalive.idle: \"soon\" is not a duration: expected number at 0 (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{L}keepalive = {{ interval = \"0s\" }}\n"),
        "t.toml:5:26: listener[0].keepalive.interval: \"0s\" is out of range (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{L}keepalive = {{ probes = -1 }}\n"),
        "t.toml:5:24: listener[0].keepalive.probes: -1 probes is out of range (hint: from 1 to 100 unanswered probes before the reset (default 6))",
    );
    one(
        &format!("{L}keepalive = {{ intervall = \"5s\" }}\n"),
        "t.toml:5:15: listener[0].keepalive.intervall: unknown key \"intervall\" (hint: did you mean \"interval\"?)",
    );
    // Every bad key is reported, and the listener is not compiled.
    assert_eq!(
        errors(&format!(
            "{L}keepalive = {{ idle = \"x\", interval = \"8d\", probes = 0 }}\n"
        ))
        .len(),
        3
    );
}

#[test]
fn route_timeouts_are_checked_and_the_request_timeout_is_given_once() {
    let svc = "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\" }]\n[[route]]\nservice = \"a\"\n";
    one(
        &format!("{svc}timeouts = {{ connect = \"never\" }}\n"),
        "t.toml:6:24: route[0].timeouts.connect: \"never\" is not a duration: expected number at 0 (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{svc}timeout = \"1s\"\ntimeouts = {{ request = \"2s\" }}\n"),
        "t.toml:7:24: route[0].timeouts.request: the request timeout is given twice (hint: keep either timeout = ... or timeouts.request)",
    );
    one(
        &format!("{svc}timeouts = {{ idle = \"2s\" }}\n"),
        "t.toml:6:14: route[0].timeouts.idle: unknown key \"idle\" (hint: allowed keys: request, connect, body_stall)",
    );
}

#[test]
fn connection_caps_are_in_range_with_their_defaults() {
    const L: &str = "[[listener]]\nname = \"l\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\n";
    one(
        &format!("{L}max_connections = 0\n"),
        "t.toml:5:19: listener[0].max_connections: 0 connections is out of range (hint: from 1 to 1000000 (default 10000))",
    );
    one(
        &format!("{L}max_connections = 100\nmax_connections_per_source = 101\n"),
        "t.toml:6:30: listener[0].max_connections_per_source: 101 connections is out of range (hint: from 1 to 100 (default 100))",
    );
    one(
        &format!("{L}max_connections_per_source = -5\n"),
        "t.toml:5:30: listener[0].max_connections_per_source: -5 connections is out of range (hint: from 1 to 10000 (default 2500))",
    );
}

#[test]
fn route_policies_are_checked_with_hints() {
    const S: &str = "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\" }]\n[[route]]\nservice = \"a\"\n";
    one(
        &format!("{S}retries = {{ attempts = 11 }}\n"),
        "t.toml:6:24: route[0].retries.attempts: 11 attempts is out of range (hint: from 1 to 10 attempts in all, the first included (default 3))",
    );
    one(
        &format!("{S}retries = {{ on = [\"reset\", \"302\"] }}\n"),
        "t.toml:6:28: route[0].retries.on[1]: \"302\" is not a retry condition (hint: connect-failure, reset, timeout, gateway-error, a status from \"400\" to \"599\", or a gRPC status: cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)",
    );
    one(
        &format!("{S}match = {{ grpc = {{ service = \"a.B\" }}, method = \"GET\" }}\n"),
        "t.toml:6:18: route[0].match.grpc: grpc with path or method (hint: grpc sets the path and the method (POST): leave both out)",
    );
    one(
        &format!("{S}match = {{ grpc = {{ service = \"a..B\" }} }}\n"),
        "t.toml:6:30: route[0].match.grpc.service: \"a..B\" is not a gRPC service name (hint: the fully qualified name, e.g. \"helloworld.Greeter\")",
    );
    one(
        &format!("{S}match = {{ grpc = {{ service = \"a.B\", method = \"Say/Hi\" }} }}\n"),
        "t.toml:6:46: route[0].match.grpc.method: \"Say/Hi\" is not a gRPC method name (hint: the method's name as the .proto file gives it, e.g. \"SayHello\")",
    );
    one(
        &format!("{S}fault = {{ abort = {{ percent = 101.0, status = 503 }} }}\n"),
        "t.toml:6:31: route[0].fault.abort.percent: 101 % is out of range (hint: from 0.0 to 100.0)",
    );
    one(
        &format!("{S}fault = {{ headers = {{ x = \"1\" }} }}\n"),
        "t.toml:6:9: route[0].fault: the fault injects nothing (hint: add abort = { percent, status } or delay = { percent, duration })",
    );
    one(
        &format!("{S}rate_limit = {{ burst = 5 }}\n"),
        "t.toml:6:14: route[0].rate_limit.requests_per_second: missing (hint: the sustained rate, e.g. requests_per_second = 500)",
    );
    one(
        &format!("{S}rate_limit = {{ requests_per_second = 5.0, per = \"ip\" }}\n"),
        "t.toml:6:49: route[0].rate_limit.per: \"ip\" is not a bucket key (hint: route (one bucket) or source-identity (one per caller))",
    );
    one(
        "[[service]]\nname = \"a\"\nretry_budget = { ttl = \"0s\" }\n",
        "t.toml:3:24: service[0].retry_budget.ttl: \"0s\" is out of range (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
}

#[test]
fn mirror_is_checked_with_hints() {
    const S: &str = "[[service]]\nname = \"web\"\nendpoints = [{ address = \"1.2.3.4:5\" }]\n[[service]]\nname = \"web-shadow\"\n[[route]]\nservice = \"web\"\n";
    one(
        &format!("{S}mirror = {{ service = \"web-shadw\" }}\n"),
        "t.toml:8:22: route[0].mirror.service: unknown service \"web-shadw\" (hint: did you mean \"web-shadow\"?)",
    );
    one(
        &format!("{S}mirror = {{ service = \"zzz\", percent = 50.0 }}\n"),
        "t.toml:8:22: route[0].mirror.service: unknown service \"zzz\" (hint: define it in a [[service]] table)",
    );
    for (p, shown) in [
        ("0.0", "0"),
        ("-5", "-5"),
        ("100.5", "100.5"),
        ("nan", "NaN"),
        ("inf", "inf"),
    ] {
        one(
            &format!("{S}mirror = {{ service = \"web-shadow\", percent = {p} }}\n"),
            &format!("t.toml:8:46: route[0].mirror.percent: {shown} % is out of range (hint: above 0.0, at most 100.0 (default 100.0))"),
        );
    }
    one(
        &format!("{S}mirror = {{ percent = 50.0 }}\n"),
        "t.toml:8:10: route[0].mirror.service: missing required key \"service\" (hint: add service = ...)",
    );
    one(
        &format!("{S}mirror = {{ service = \"web-shadow\", precent = 50.0 }}\n"),
        "t.toml:8:36: route[0].mirror.precent: unknown key \"precent\" (hint: did you mean \"percent\"?)",
    );
    one(
        &format!("{S}mirror = {{ service = \"web-shadow\", percent = \"50\" }}\n"),
        "t.toml:8:46: route[0].mirror.percent: expected a number, found a string",
    );
    one(
        &format!("{S}mirror = \"web-shadow\"\n"),
        "t.toml:8:10: route[0].mirror: expected a table, found a string",
    );
    // On a service, as its routes' default: the same checks, under the service's key.
    one(
        "[[service]]\nname = \"web\"\nmirror = { service = \"web-shadw\", percent = 50 }\n[[service]]\nname = \"web-shadow\"\n",
        "t.toml:3:22: service[0].mirror.service: unknown service \"web-shadw\" (hint: did you mean \"web-shadow\"?)",
    );
    assert_eq!(
        errors("[[service]]\nname = \"web\"\nmirror = { service = \"nope\", percent = 200 }\n"),
        [
            "t.toml:3:22: service[0].mirror.service: unknown service \"nope\" (hint: define it in a [[service]] table)",
            "t.toml:3:40: service[0].mirror.percent: 200 % is out of range (hint: above 0.0, at most 100.0 (default 100.0))",
        ]
    );
}

/// What `mirror` allows: the route's own service, a service with no endpoints (the engine
/// counts its copies as skipped), a service whose endpoints are all behind peers, and an
/// integer percent.
#[test]
fn mirror_allows_its_own_service_an_empty_one_and_one_behind_peers() {
    let dir = tempfile::tempdir().expect("tmp");
    control::ca::init(&dir.path().join("ca"), &Default::default()).expect("ca");
    let text = r#"
[trust]
roots = ["ca/ca.pem"]
[[peer]]
name = "gw-b"
address = "10.10.2.2:15443"
identity = "spiffe://m/gateway/gw-b"
[[service]]
name = "web"
endpoints = [{ address = "10.0.0.1:80" }]
mirror = { service = "web" }
[[service]]
name = "empty"
[[service]]
name = "remote"
endpoints = [{ address = "10.10.3.2:80", via = "gw-b" }, { address = "10.10.3.3:80", via = "gw-b" }]
[[route]]
service = "web"
mirror = { service = "empty", percent = 1 }
[[route]]
service = "web"
mirror = { service = "remote", percent = 100 }
[[route]]
service = "empty"
mirror = { service = "empty" }
"#;
    if let Err(e) = common::compile_in(dir.path(), text) {
        panic!("{e}");
    }
}

#[test]
fn peer_min_idle_is_in_range() {
    const P: &str =
        "[[peer]]\nname = \"gw-b\"\naddress = \"10.0.0.2:15443\"\nidentity = \"spiffe://m/gw-b\"\n";
    one(
        &format!("{P}min_idle = 1001\n"),
        "t.toml:5:12: peer[0].min_idle: 1001 idle hops is out of range (hint: from 0 to 1000 idle hops each worker keeps open to this peer, mTLS handshake done (default 0))",
    );
    one(
        &format!("{P}min_idle = -1\n"),
        "t.toml:5:12: peer[0].min_idle: -1 idle hops is out of range (hint: from 0 to 1000 idle hops each worker keeps open to this peer, mTLS handshake done (default 0))",
    );
    one(
        &format!("{P}min_idel = 1\n"),
        "t.toml:5:1: peer[0].min_idel: unknown key \"min_idel\" (hint: did you mean \"min_idle\"?)",
    );
    one(
        "[[peer]]\nname = \"gw-b\"\nadress = \"10.0.0.2:15443\"\nidentity = \"spiffe://m/gw-b\"\n",
        "t.toml:3:1: peer[0].adress: unknown key \"adress\" (hint: did you mean \"address\"?)",
    );
    one(
        "[[peer]]\nname = \"gw-b\"\naddress = \"10.0.0.2:15443\"\nidentity = \"spiffe://m/gw-b\"\nwarm = 1\n",
        "t.toml:5:1: peer[0].warm: unknown key \"warm\" (hint: allowed keys: name, address, identity, min_idle, admin, hop_protocol)",
    );
}

#[test]
fn peer_hop_protocol_is_h2_or_http1() {
    const P: &str =
        "[[peer]]\nname = \"gw-b\"\naddress = \"10.0.0.2:15443\"\nidentity = \"spiffe://m/gw-b\"\n";
    one(
        &format!("{P}hop_protocol = \"h3\"\n"),
        "t.toml:5:16: peer[0].hop_protocol: unknown value \"h3\" (hint: one of: h2, http1)",
    );
    let dir = tempfile::tempdir().unwrap();
    let hop = |extra: &str| {
        let c = common::compile_in(dir.path(), &format!("{P}{extra}"))
            .unwrap_or_else(|e| panic!("{e}"));
        c.snapshot.peers[0].hop_protocol
    };
    assert_eq!(hop(""), HopProtocol::Http1, "the default");
    assert_eq!(hop("hop_protocol = \"http1\"\n"), HopProtocol::Http1);
    assert_eq!(hop("hop_protocol = \"h2\"\n"), HopProtocol::H2);
}

#[test]
fn peer_admin_is_an_address() {
    const P: &str =
        "[[peer]]\nname = \"gw-b\"\naddress = \"10.0.0.2:15443\"\nidentity = \"spiffe://m/gw-b\"\n";
    one(
        &format!("{P}admin = \"10.0.0.2\"\n"),
        "t.toml:5:9: peer[0].admin: \"10.0.0.2\" is not an IP:PORT address (hint: add a port: \"10.0.0.2:PORT\")",
    );
}

#[test]
fn circuit_breaker_caps_are_in_range() {
    const S: &str = "[[service]]\nname = \"a\"\n";
    one(
        &format!("{S}circuit_breaker = {{ max_connections = 0 }}\n"),
        "t.toml:3:39: service[0].circuit_breaker.max_connections: 0 connections is out of range (hint: from 1 to 1000000 connections open to the service's endpoints, per worker (default 1024))",
    );
    one(
        &format!("{S}circuit_breaker = {{ max_pending = 1000001 }}\n"),
        "t.toml:3:35: service[0].circuit_breaker.max_pending: 1000001 requests is out of range (hint: from 1 to 1000000 requests waiting for a connection, per worker (default 256))",
    );
    one(
        &format!("{S}circuit_breaker = {{ max_requests = -3 }}\n"),
        "t.toml:3:36: service[0].circuit_breaker.max_requests: -3 requests is out of range (hint: from 1 to 1000000 requests in flight, per worker (default 1024))",
    );
    one(
        &format!("{S}circuit_breaker = {{ max_retries = 3 }}\n"),
        "t.toml:3:21: service[0].circuit_breaker.max_retries: unknown key \"max_retries\" (hint: did you mean \"max_requests\"?)",
    );
    one(
        &format!("{S}circuit_breaker = {{ max_pending = \"10\" }}\n"),
        "t.toml:3:35: service[0].circuit_breaker.max_pending: expected an integer, found a string (hint: remove the quotes: 10)",
    );
    one(
        &format!("{S}circuit_breaker = 10\n"),
        "t.toml:3:19: service[0].circuit_breaker: expected a table, found an integer",
    );
    // Every bad key is reported.
    assert_eq!(
        errors(&format!(
            "{S}circuit_breaker = {{ max_connections = 0, max_pending = 0, max_requests = 0 }}\n"
        ))
        .len(),
        3
    );
}

#[test]
fn outlier_keys_are_in_range_and_nothing_goes_with_enabled_false() {
    const S: &str = "[[service]]\nname = \"a\"\n";
    one(
        &format!("{S}outlier = {{ consecutive_failures = 1000001 }}\n"),
        "t.toml:3:36: service[0].outlier.consecutive_failures: 1000001 failures is out of range (hint: from 0 to 1000000 failures in a row that eject an endpoint; 0: this rule is off (default 5))",
    );
    one(
        &format!("{S}outlier = {{ interval = \"0s\" }}\n"),
        "t.toml:3:24: service[0].outlier.interval: \"0s\" is out of range (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{S}outlier = {{ base_ejection = \"forever\" }}\n"),
        "t.toml:3:29: service[0].outlier.base_ejection: \"forever\" is not a duration: expected number at 0 (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{S}outlier = {{ max_ejected_percent = 101 }}\n"),
        "t.toml:3:35: service[0].outlier.max_ejected_percent: 101 % is out of range (hint: from 0 to 100 % of the service's endpoints ejected at once (default 50))",
    );
    one(
        &format!("{S}outlier = {{ panic_threshold = -1 }}\n"),
        "t.toml:3:31: service[0].outlier.panic_threshold: -1 % is out of range (hint: from 0 to 100 % of healthy endpoints, below which all of them are balanced over (default 50))",
    );
    one(
        &format!("{S}outlier = {{ max_ejected_percent = 50.0 }}\n"),
        "t.toml:3:35: service[0].outlier.max_ejected_percent: expected an integer, found a float",
    );
    one(
        &format!("{S}outlier = {{ success_rate_min_requests = 2000000 }}\n"),
        "t.toml:3:41: service[0].outlier.success_rate_min_requests: 2000000 requests is out of range (hint: from 0 to 1000000 requests in an interval for an endpoint's success rate to be judged; 0: success-rate ejection is off (default 100))",
    );
    for (f, shown) in [
        ("0.0", "0"),
        ("-1.5", "-1.5"),
        ("nan", "NaN"),
        ("inf", "inf"),
    ] {
        one(
            &format!("{S}outlier = {{ success_rate_stdev_factor = {f} }}\n"),
            &format!("t.toml:3:41: service[0].outlier.success_rate_stdev_factor: a factor of {shown} is out of range (hint: a finite number above 0.0: standard deviations below the mean success rate (default 1.9))"),
        );
    }
    one(
        &format!("{S}outlier = {{ enabled = \"no\" }}\n"),
        "t.toml:3:23: service[0].outlier.enabled: expected a boolean, found a string",
    );
    one(
        &format!("{S}outlier = {{ enable = false }}\n"),
        "t.toml:3:13: service[0].outlier.enable: unknown key \"enable\" (hint: did you mean \"enabled\"?)",
    );
    // Off: any other key would do nothing, and each is reported where it is written.
    assert_eq!(
        errors(&format!(
            "{S}outlier = {{ enabled = false, consecutive_failures = 3, interval = \"5s\" }}\n"
        )),
        [
            "t.toml:3:53: service[0].outlier.consecutive_failures: consecutive_failures does nothing with enabled = false (hint: remove it, or remove enabled = false)",
            "t.toml:3:67: service[0].outlier.interval: interval does nothing with enabled = false (hint: remove it, or remove enabled = false)",
        ]
    );
    assert_eq!(
        errors(&format!(
            "{S}outlier = {{ consecutive_failures = -1, max_ejected_percent = 200, success_rate_stdev_factor = 0 }}\n"
        ))
        .len(),
        3
    );
}

#[test]
fn health_check_takes_one_probe_a_plain_path_and_a_timeout_below_the_interval() {
    const S: &str = "[[service]]\nname = \"a\"\n";
    one(
        &format!("{S}health_check = {{}}\n"),
        "t.toml:3:16: service[0].health_check: the health check has no probe (hint: add http = { path = \"/healthz\" } or tcp = true)",
    );
    one(
        &format!("{S}health_check = {{ interval = \"2s\" }}\n"),
        "t.toml:3:16: service[0].health_check: the health check has no probe (hint: add http = { path = \"/healthz\" } or tcp = true)",
    );
    one(
        &format!("{S}health_check = {{ http = {{ path = \"/healthz\" }}, tcp = true }}\n"),
        "t.toml:3:54: service[0].health_check.tcp: a health check probes with http or tcp, not both (hint: remove one of them)",
    );
    one(
        &format!("{S}health_check = {{ tcp = false }}\n"),
        "t.toml:3:24: service[0].health_check.tcp: tcp = false does nothing (hint: write tcp = true for a TCP probe, or http = { path = \"/healthz\" } for an HTTP one)",
    );
    one(
        &format!("{S}health_check = {{ http = {{ path = \"/healthz\" }}, tcp = false }}\n"),
        "t.toml:3:54: service[0].health_check.tcp: tcp = false does nothing (hint: remove it)",
    );
    one(
        &format!("{S}health_check = {{ http = {{ expect = [200] }} }}\n"),
        "t.toml:3:25: service[0].health_check.http.path: missing (hint: the request target probed, e.g. path = \"/healthz\")",
    );
    one(
        &format!("{S}health_check = {{ http = {{ path = \"healthz\" }} }}\n"),
        "t.toml:3:34: service[0].health_check.http.path: path \"healthz\" does not start with '/' (hint: write \"/healthz\")",
    );
    // A character that could split the request line, or that a target carries only escaped:
    // (as written in TOML, as decoded, the character named).
    for (toml, value, c) in [
        ("/a b", "/a b", "' '"),
        (r"/a\r\nHost: x", "/a\r\nHost: x", r"'\r'"),
        (r"/a\u0000", "/a\0", r"'\0'"),
        ("/ü", "/ü", "'ü'"),
        ("/a#top", "/a#top", "'#'"),
        (r#"/a\""#, "/a\"", "'\"'"),
    ] {
        one(
            &format!("{S}health_check = {{ http = {{ path = \"{toml}\" }} }}\n"),
            &format!("t.toml:3:34: service[0].health_check.http.path: path {value:?} has a character a request target cannot carry: {c} (hint: percent-encode it (RFC 3986), e.g. a space as %20)"),
        );
    }
    one(
        &format!("{S}health_check = {{ http = {{ path = \"/a%2\" }} }}\n"),
        "t.toml:3:34: service[0].health_check.http.path: path \"/a%2\" has a malformed %-escape (hint: '%' starts an escape of two hex digits; write '%' itself as %25)",
    );
    let long = format!("/{}", "a".repeat(1024));
    one(
        &format!("{S}health_check = {{ http = {{ path = \"{long}\" }} }}\n"),
        "t.toml:3:34: service[0].health_check.http.path: path is longer than 1024 bytes (hint: at most 1024 bytes, the query included)",
    );
    one(
        &format!("{S}health_check = {{ http = {{ path = \"/healthz\", expect = [200, 600] }} }}\n"),
        "t.toml:3:61: service[0].health_check.http.expect[1]: status 600 is out of range (hint: a status from 100 to 599)",
    );
    one(
        &format!("{S}health_check = {{ http = {{ path = \"/healthz\", expect = [99] }} }}\n"),
        "t.toml:3:56: service[0].health_check.http.expect[0]: status 99 is out of range (hint: a status from 100 to 599)",
    );
    one(
        &format!("{S}health_check = {{ http = {{ path = \"/healthz\", expect = [] }} }}\n"),
        "t.toml:3:25: service[0].health_check.http.expect: expect lists no status (hint: list the statuses that mean healthy, e.g. expect = [200] (the default))",
    );
    one(
        &format!("{S}health_check = {{ http = {{ path = \"/healthz\", status = [200] }} }}\n"),
        "t.toml:3:46: service[0].health_check.http.status: unknown key \"status\" (hint: allowed keys: path, expect)",
    );
    one(
        &format!("{S}health_check = {{ tcp = true, timeout = \"5s\" }}\n"),
        "t.toml:3:40: service[0].health_check.timeout: the timeout (5s) is not shorter than the interval (5s) (hint: a probe must end before the next starts: timeout below interval (defaults 1s and 5s))",
    );
    one(
        &format!("{S}health_check = {{ tcp = true, interval = \"500ms\" }}\n"),
        "t.toml:3:41: service[0].health_check.interval: the timeout (1s) is not shorter than the interval (500ms) (hint: a probe must end before the next starts: timeout below interval (defaults 1s and 5s))",
    );
    one(
        &format!("{S}health_check = {{ tcp = true, interval = \"8d\" }}\n"),
        "t.toml:3:41: service[0].health_check.interval: \"8d\" is out of range (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{S}health_check = {{ tcp = true, unhealthy = 0 }}\n"),
        "t.toml:3:42: service[0].health_check.unhealthy: 0 probes is out of range (hint: from 1 to 100 probes failed in a row that make an endpoint unhealthy (default 3))",
    );
    one(
        &format!("{S}health_check = {{ tcp = true, healthy = 101 }}\n"),
        "t.toml:3:40: service[0].health_check.healthy: 101 probes is out of range (hint: from 1 to 100 probes passed in a row that make an endpoint healthy again (default 2))",
    );
    one(
        &format!("{S}health_check = {{ tcp = true, intervall = \"1s\" }}\n"),
        "t.toml:3:30: service[0].health_check.intervall: unknown key \"intervall\" (hint: did you mean \"interval\"?)",
    );
    one(
        &format!("{S}health_check = {{ tcp = true, grpc = true }}\n"),
        "t.toml:3:30: service[0].health_check.grpc: unknown key \"grpc\" (hint: allowed keys: http, tcp, interval, timeout, unhealthy, healthy)",
    );
    // Every bad key is reported, the probe's included.
    assert_eq!(
        errors(&format!(
            "{S}health_check = {{ http = {{ path = \"x\", expect = [0] }}, timeout = \"0s\", healthy = 0 }}\n"
        ))
        .len(),
        4
    );
}

#[test]
fn pool_keys_are_in_range() {
    const S: &str = "[[service]]\nname = \"a\"\n";
    one(
        &format!("{S}pool = {{ max_idle_per_endpoint = 10001 }}\n"),
        "t.toml:3:34: service[0].pool.max_idle_per_endpoint: 10001 connections is out of range (hint: from 0 to 10000 connections kept idle per endpoint, per worker; 0: no pooling (default 64))",
    );
    one(
        &format!("{S}pool = {{ max_requests = 0 }}\n"),
        "t.toml:3:25: service[0].pool.max_requests: 0 requests is out of range (hint: from 1 to 10000000 requests carried by one connection (default 10000))",
    );
    one(
        &format!("{S}pool = {{ idle_timeout = \"-1s\" }}\n"),
        "t.toml:3:25: service[0].pool.idle_timeout: \"-1s\" is not a duration: expected number at 0 (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{S}pool = {{ max_lifetime = \"30d\" }}\n"),
        "t.toml:3:25: service[0].pool.max_lifetime: \"30d\" is out of range (hint: a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days)",
    );
    one(
        &format!("{S}pool = {{ max_idle = 4 }}\n"),
        "t.toml:3:10: service[0].pool.max_idle: unknown key \"max_idle\" (hint: did you mean \"max_idle_per_endpoint\"?)",
    );
}

#[test]
fn upstream_protocol() {
    // Unknown values say which exist.
    let e = errors("[[service]]\nname = \"a\"\nupstream_protocol = \"h3\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:3:21: service[0].upstream_protocol:"),
        "{e:?}"
    );
    assert!(e[0].contains("http1") && e[0].contains("h2c"), "{e:?}");
    // One address, two protocols: refused where the second service lists it.
    one(
        "[[service]]\nname = \"a\"\nendpoints = [{ address = \"10.0.0.5:80\" }]\n[[service]]\nname = \"b\"\nupstream_protocol = \"h2c\"\nendpoints = [{ address = \"10.0.0.5:80\" }]\n",
        "t.toml:7:26: service[1].endpoints[0].address: endpoint 10.0.0.5:80 speaks \"h2c\" here (upstream_protocol) but \"http1\" in service \"a\" (hint: see line 3; one server speaks one protocol: give both services the same upstream_protocol)",
    );
    // A tcp listener pipes bytes: not to an h2c service.
    one(
        "[[listener]]\nname = \"t\"\nbind = \"0.0.0.0:9000\"\nprotocol = \"tcp\"\nservice = \"a\"\n[[service]]\nname = \"a\"\nupstream_protocol = \"h2c\"\n",
        "t.toml:5:11: listener[0].service: service \"a\" speaks h2c to its endpoints (upstream_protocol); a tcp listener pipes bytes to them untranslated (hint: use an http listener, or another service whose upstream_protocol is \"http1\")",
    );
}

#[test]
fn h2c_endpoints_are_known_by_address() {
    let c = common::compile_in(
        std::path::Path::new("."),
        "[[service]]\nname = \"g\"\nupstream_protocol = \"h2c\"\nendpoints = [{ address = \"10.0.0.5:50051\" }]\n\
         [[service]]\nname = \"g2\"\nupstream_protocol = \"h2c\"\nendpoints = [{ address = \"10.0.0.5:50051\" }]\n\
         [[service]]\nname = \"w\"\nendpoints = [{ address = \"10.0.0.7:80\" }]\n",
    );
    let snap = match c {
        Ok(c) => c.snapshot,
        Err(d) => panic!("{d}"),
    };
    assert!(snap.upstream_h2c("10.0.0.5:50051".parse().unwrap()));
    assert!(!snap.upstream_h2c("10.0.0.7:80".parse().unwrap()));
    assert_eq!(
        snap.service("w").unwrap().upstream_protocol,
        control::schema::UpstreamProtocol::Http1,
        "the default"
    );
}
