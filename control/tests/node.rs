//! The node file: `[node]` is ours, `[[interface]]` is handed on unread.

use std::path::Path;

use control::{node, Source};

fn parse(text: &str) -> Result<node::NodeConfig, Vec<String>> {
    node::parse(Source::new("node.toml", text), Path::new("/etc/xdpmesh"))
        .map_err(|d| d.iter().map(ToString::to_string).collect())
}

#[test]
fn design_style_node_file_is_accepted_and_interfaces_are_handed_on() {
    let n = parse(
        "[node]\nname = \"gw-a\"\ntables = \"tables.toml\"\n\n[[interface]]\nname = \"eth1\"\nqueues = [0, 1]\n\n[[interface]]\nname = \"eth2\"\n",
    )
    .expect("valid");
    assert_eq!(n.name, "gw-a");
    assert_eq!(n.tables, Path::new("/etc/xdpmesh/tables.toml"));
    assert_eq!(n.admin.to_string(), node::DEFAULT_ADMIN);
    assert_eq!(n.interfaces.len(), 2);
    let name = n.interfaces[1].get("name").expect("name key");
    // Spans point into the node file, so hw-config can report positions.
    assert_eq!(n.source.line_col(name.key_span.start), (10, 1));
}

#[test]
fn unknown_node_keys_and_sections_are_errors() {
    assert_eq!(
        parse("[node]\nname = \"a\"\ntables = \"t.toml\"\n[nodes]\nx = 1\n").expect_err("bad"),
        vec!["node.toml:4:2: nodes: unknown key \"nodes\" (hint: did you mean \"node\"?)"]
    );
    assert_eq!(
        parse("[node]\nname = \"a\"\ntable = \"t.toml\"\n").expect_err("bad"),
        vec!["node.toml:3:1: node.table: unknown key \"table\" (hint: did you mean \"tables\"?)"]
    );
}

#[test]
fn non_loopback_admin_needs_a_token() {
    assert_eq!(
        parse("[node]\nname = \"a\"\ntables = \"t.toml\"\nadmin = \"0.0.0.0:9901\"\n").expect_err("bad"),
        vec!["node.toml:4:9: node.admin: admin API on non-loopback 0.0.0.0:9901 needs a bearer token (hint: add admin_token_file = \"PATH\", or bind 127.0.0.1)"]
    );
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("tok"), "s3cret\n").expect("write");
    let n = node::parse(
        Source::new("node.toml", "[node]\nname = \"a\"\ntables = \"t.toml\"\nadmin = \"0.0.0.0:9901\"\nadmin_token_file = \"tok\"\n"),
        dir.path(),
    )
    .expect("valid");
    assert_eq!(n.admin_token.as_deref(), Some("s3cret"));
}

/// How hw-config reads the entries handed on: its own struct, errors placed in the
/// node file.
#[test]
fn interfaces_decode_with_positions_in_the_node_file() {
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Interface {
        name: String,
        queues: Vec<u16>,
    }
    let n = parse("[node]\nname = \"a\"\ntables = \"t.toml\"\n[[interface]]\nname = \"eth1\"\nqueues = [0, 1]\nqueus = 3\n")
        .expect("node part is fine");
    let errs = control::de::decode::<Interface>(&n.source, &n.interfaces[0], "interface[0]")
        .expect_err("typo");
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(lines, vec!["node.toml:7:1: interface[0].queus: unknown key \"queus\" (hint: did you mean \"queues\"?)"]);
}

#[test]
fn access_log_is_off_by_default_and_checked_with_positions() {
    let base = "[node]\nname = \"a\"\ntables = \"t.toml\"\n";
    assert_eq!(parse(base).expect("valid").access_log, None);
    let n = parse(&format!("{base}[access_log]\npath = \"logs/access.log\"\n")).expect("valid");
    assert_eq!(
        n.access_log,
        Some(node::AccessLogConfig {
            target: node::AccessLogTarget::File("/etc/xdpmesh/logs/access.log".into()),
            sample: node::DEFAULT_ACCESS_LOG_SAMPLE,
        })
    );
    let n = parse(&format!(
        "{base}[access_log]\npath = \"stdout\"\nsample = 0.25\n"
    ))
    .expect("valid");
    assert_eq!(
        n.access_log.map(|a| (a.target, a.sample)),
        Some((node::AccessLogTarget::Stdout, 0.25))
    );
    assert_eq!(
        parse(&format!("{base}[access_log]\npath = \"\"\nsample = 1.5\n")).expect_err("bad"),
        vec![
            "node.toml:6:10: access_log.sample: 1.5 is not a ratio from 0.0 to 1.0 (hint: e.g. sample = 0.1 writes one line in ten)",
            "node.toml:5:8: access_log.path: path is empty (hint: a file, e.g. \"/var/log/xdpmesh/access.log\", or \"stdout\")",
        ]
    );
    assert_eq!(
        parse(&format!("{base}[access_log]\nfile = \"x\"\npath = \"x\"\n")).expect_err("bad"),
        vec!["node.toml:5:1: access_log.file: unknown key \"file\" (hint: allowed keys: path, sample)"]
    );
}

/// `[traces]`: off by default, every key optional; bad values are errors with positions.
#[test]
fn traces_are_off_by_default_and_checked_with_positions() {
    let base = "[node]\nname = \"a\"\ntables = \"t.toml\"\n";
    assert_eq!(parse(base).expect("valid").traces, None);
    let n = parse(&format!("{base}[traces]\n")).expect("valid");
    assert_eq!(n.traces, Some(node::TracesConfig::default()));
    let n = parse(&format!(
        "{base}[traces]\nsampling = 0.5\nflush_interval = \"100ms\"\nqueue = 10\nbatch = 5\n"
    ))
    .expect("valid");
    let t = n.traces.expect("on");
    assert_eq!(t.sampling, Some(0.5));
    assert_eq!(
        t.flush_interval,
        Some(std::time::Duration::from_millis(100))
    );
    let errs = parse(&format!(
        "{base}[traces]\nendpoint = \"https://x\"\nsampling = 2.0\nqueue = 4\nbatch = 8\ntimeout = \"0s\"\n"
    ))
    .expect_err("bad");
    let keys: Vec<&str> = [
        "traces.sampling",
        "traces.batch",
        "traces.timeout",
        "traces.endpoint",
    ]
    .into_iter()
    .filter(|k| !errs.iter().any(|e| e.contains(&format!(": {k}: "))))
    .collect();
    assert!(keys.is_empty(), "no error for {keys:?} in {errs:#?}");
    assert!(
        errs.iter().all(|e| e.starts_with("node.toml:")),
        "{errs:#?}"
    );
}

#[test]
fn etcd_is_off_by_default_and_the_example_parses() {
    let n = parse("[node]\nname = \"a\"\ntables = \"t.toml\"\n").expect("valid");
    assert_eq!((n.etcd, n.listeners), (None, None));

    let dir = tempfile::tempdir().expect("tmp");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/etcd/node.toml");
    std::fs::create_dir_all(dir.path().join("etcd")).expect("mkdir");
    for f in ["ca.pem", "client.pem", "client-key.pem", "user"] {
        std::fs::write(dir.path().join("etcd").join(f), "x").expect("write");
    }
    let text = std::fs::read_to_string(&example).expect("example");
    let n = node::parse(Source::new("node.toml", text), dir.path()).expect("example parses");
    let e = n.etcd.expect("[etcd]");
    assert_eq!(e.endpoints.len(), 3);
    assert_eq!(e.prefix, "/xdpmesh");
    assert_eq!(e.tables_key(), "/xdpmesh/tables");
    assert_eq!(e.ca, Some(dir.path().join("etcd/ca.pem")));
    assert_eq!(e.credentials_file, Some(dir.path().join("etcd/user")));
    assert_eq!(n.tables, Path::new("/var/lib/xdpmesh/etcd-cache.toml"));
    assert_eq!(n.listeners, Some(vec!["apps".to_string()]));

    // Defaults: prefix /xdpmesh, plain http needs no TLS files.
    let n = parse("[node]\nname = \"a\"\ntables = \"c.toml\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"mesh/\"\n")
        .expect("valid");
    assert_eq!(n.etcd.expect("etcd").prefix, "/mesh");
}

#[test]
fn etcd_errors_have_positions() {
    assert_eq!(
        parse("[node]\nname = \"a\"\ntables = \"c.toml\"\n[etcd]\nendpoints = [\"127.0.0.1:2379\", \"https://h:2379\"]\nprefix = \"/\"\ncert = \"c.pem\"\n")
            .expect_err("bad"),
        vec![
            "node.toml:5:14: etcd.endpoints: \"127.0.0.1:2379\" is not http://HOST:PORT or https://HOST:PORT (hint: etcd's client URL, e.g. \"https://10.0.0.1:2379\")",
            "node.toml:6:10: etcd.prefix: prefix is empty (hint: default \"/xdpmesh\")",
            "node.toml:4:1: etcd.ca: https endpoints need the CA of etcd's server certificate (hint: ca = \"etcd/ca.pem\")",
            "node.toml:7:8: etcd.cert: give both cert and key, or neither (hint: the client certificate etcd's --client-cert-auth checks, and its key)",
            "node.toml:7:8: etcd.cert: cannot read \"/etc/xdpmesh/c.pem\": No such file or directory (os error 2)",
        ]
    );
    assert_eq!(
        parse("[node]\nname = \"a\"\ntables = \"c.toml\"\n[etcd]\nendpoint = []\n").expect_err("bad")[0],
        "node.toml:5:1: etcd.endpoint: unknown key \"endpoint\" (hint: did you mean \"endpoints\"?)"
    );
}
