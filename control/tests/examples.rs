//! Every example file under control/examples parses and validates.

mod common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use control::schema::Tables;
use control::{de, tree, Source};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// Issue the certificates a tables file names (the repo ships no keys).
fn issue_certs_for(tables_path: &Path) {
    let text = std::fs::read_to_string(tables_path).expect("read");
    let src = Source::new(tables_path.display().to_string(), text);
    let root = tree::parse(&src).expect("parses");
    let tables: Tables = de::decode(&src, &root, "").expect("decodes");
    let base = tables_path.parent().expect("dir");
    for root in tables.trust.iter().flat_map(|t| t.roots.iter()) {
        let tmp = tempfile::tempdir().expect("tmp");
        let ca = control::ca::init(tmp.path(), &Default::default()).expect("ca init");
        let to = base.join(&**root);
        std::fs::create_dir_all(to.parent().expect("dir")).expect("mkdir");
        std::fs::copy(ca.cert, to).expect("copy");
    }
    for id in &tables.identities {
        let tmp = tempfile::tempdir().expect("tmp");
        let (c, k) = common::write_good_cert(tmp.path(), &id.id);
        for (from, to) in [(c, base.join(&*id.cert)), (k, base.join(&*id.key))] {
            std::fs::create_dir_all(to.parent().expect("dir")).expect("mkdir");
            std::fs::copy(from, to).expect("copy");
        }
    }
}

fn is_node_file(p: &Path) -> bool {
    std::fs::read_to_string(p)
        .expect("read")
        .lines()
        .any(|l| l.trim() == "[node]")
}

#[test]
fn every_example_parses_and_validates() {
    check_examples(&examples_dir(), 4);
}

/// The rig's gateways (scripts/rig.sh mesh runs them).
#[test]
fn the_rig_examples_parse_and_validate() {
    check_examples(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rig"),
        4,
    );
}

fn check_examples(dir: &Path, at_least: usize) {
    let work = tempfile::tempdir().expect("tmp");
    let files = toml_files(dir);
    assert!(files.len() >= at_least, "examples: {files:?}");
    for f in &files {
        std::fs::copy(f, work.path().join(f.file_name().expect("name"))).expect("copy");
    }
    let copies = toml_files(work.path());
    for f in copies.iter().filter(|f| !is_node_file(f)) {
        issue_certs_for(f);
    }
    let mut checked = 0;
    for f in &copies {
        if is_node_file(f) {
            let (node, compiled) = control::check::check_node(f, SystemTime::now())
                .unwrap_or_else(|e| panic!("{}:\n{e}", f.display()));
            assert!(!node.name.is_empty());
            assert!(compiled.snapshot.listeners.len() + compiled.snapshot.services.len() > 0);
        } else {
            control::compile_file(f, SystemTime::now())
                .unwrap_or_else(|e| panic!("{}:\n{e}", f.display()));
            // Written in the layout the fast decoder takes, and decoded as the tree path does.
            let text = std::fs::read_to_string(f).expect("read");
            assert!(
                control::fastde::tables(&text).is_some(),
                "{} is not on the fast path",
                f.display()
            );
            assert_eq!(
                control::fastde::disagreement(&text),
                None,
                "{}",
                f.display()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, files.len());
}

#[test]
fn canary_example_needs_no_certificates_and_routes_as_written() {
    let c = control::compile_file(&examples_dir().join("canary.toml"), SystemTime::now())
        .expect("valid");
    let s = &c.snapshot;
    let no: &[(&str, &[u8])] = &[];
    let insider: &[(&str, &[u8])] = &[("X-Insider", b"1")];
    let hit = s.route("website:8080", "GET", "/", insider).expect("route");
    assert_eq!(hit.route.name.as_deref(), Some("insiders"));
    let hit = s
        .route("WebSite", "GET", "/static/app.js?v=3", no)
        .expect("route");
    assert_eq!(hit.route.name.as_deref(), Some("static"));
    let hit = s
        .route("website", "GET", "/static/app.png", no)
        .expect("route");
    assert_eq!(hit.route.name.as_deref(), Some("rollout"));
    assert_eq!(hit.route.total_weight(), 100);
    assert!(s.route("other", "GET", "/", no).is_none());
}
