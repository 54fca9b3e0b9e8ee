//! The SMI spec's own examples convert to the tables we expect, and the output
//! passes `check`.

use std::path::Path;

use control::schema::Tables;
use control::smi::{self, Options};
use control::{de, tree, Context, Source};

fn fixture(name: &str) -> (String, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smi")
        .join(name);
    (
        name.to_owned(),
        std::fs::read_to_string(&p).expect("fixture"),
    )
}

fn tables(text: &str) -> Tables {
    let src = Source::new("expected.toml", text);
    let root = tree::parse(&src).expect("parses");
    de::decode(&src, &root, "").unwrap_or_else(|e| panic!("{e:?}"))
}

/// Import, compare with `expected`, and check that the emitted TOML compiles.
fn import(files: &[&str], expected: &str) -> Vec<String> {
    let inputs: Vec<_> = files.iter().map(|f| fixture(f)).collect();
    let out = smi::import(&inputs, &Options::default()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(out.tables, tables(expected), "\n{}", out.to_toml());
    let text = out.to_toml();
    let src = Source::new("imported.toml", text.clone());
    if let Err(e) = control::compile(&src, &Context::new(".")) {
        panic!("imported tables do not check:\n{e}\n{text}");
    }
    out.notes
}

#[test]
fn traffic_split_v1alpha1_quantities_become_whole_weights() {
    let notes = import(
        &["split-v1alpha1.yaml"],
        r#"
        [[service]]
        name = "reviews"
        [[service]]
        name = "reviews-v1"
        [[service]]
        name = "reviews-v2"
        [[route]]
        name = "reviews-split"
        service = "reviews"
        backends = [{ service = "reviews-v1", weight = 1 }, { service = "reviews-v2", weight = 1 }]
        "#,
    );
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn traffic_split_v1alpha2_and_v1alpha4_canary() {
    import(
        &["split-v1alpha2.yaml"],
        r#"
        [[service]]
        name = "my-website"
        [[service]]
        name = "my-website-v1"
        [[service]]
        name = "my-website-v2"
        [[route]]
        name = "my-trafficsplit"
        service = "my-website"
        backends = [{ service = "my-website-v1", weight = 1 }, { service = "my-website-v2", weight = 1 }]
        "#,
    );
    import(
        &["split-v1alpha4-canary.yaml"],
        r#"
        [[service]]
        name = "website"
        [[service]]
        name = "website-v1"
        [[service]]
        name = "website-v2"
        [[route]]
        name = "canary"
        service = "website"
        backends = [{ service = "website-v1", weight = 9 }, { service = "website-v2", weight = 1 }]
        "#,
    );
}

#[test]
fn traffic_split_with_route_group_header_match() {
    import(
        &["split-v1alpha4-ab.yaml"],
        r#"
        [[service]]
        name = "website"
        [[service]]
        name = "website-v1"
        [[service]]
        name = "website-v2"
        [[route]]
        name = "ab-test-firefox-users"
        service = "website"
        match = { headers = { user-agent = { regex = ".*Firefox.*" } } }
        backends = [{ service = "website-v1", weight = 0 }, { service = "website-v2", weight = 1 }]
        "#,
    );
}

#[test]
fn traffic_target_v1alpha2_becomes_authorization_rules() {
    let notes = import(
        &["access-v1alpha2.yaml"],
        r#"
        [[service]]
        name = "api-service"
        [[authorization]]
        service = "api-service"
        allow = ["spiffe://cluster.local/ns/default/sa/prometheus"]
        methods = ["GET"]
        paths = [{ regex = "/metrics.*" }]
        [[authorization]]
        service = "api-service"
        allow = ["spiffe://cluster.local/ns/default/sa/website-service", "spiffe://cluster.local/ns/default/sa/payments-service"]
        paths = [{ regex = "/api.*" }]
        "#,
    );
    assert_eq!(
        notes,
        vec!["access-v1alpha2.yaml: TrafficTarget \"api-service-api\": destination port is not expressible; the rule covers every port"]
    );
}

#[test]
fn traffic_target_v1alpha1_specs() {
    import(
        &["access-v1alpha1.yaml"],
        r#"
        [[service]]
        name = "service-a"
        [[authorization]]
        service = "service-a"
        allow = ["spiffe://cluster.local/ns/default/sa/prometheus"]
        methods = ["GET"]
        paths = [{ regex = "/metrics.*" }]
        "#,
    );
}

#[test]
fn tcp_route_allows_the_service_and_names_the_ports_it_cannot_express() {
    let notes = import(
        &["tcp-v1alpha4.yaml"],
        r#"
        [[service]]
        name = "mysql"
        [[authorization]]
        service = "mysql"
        allow = ["spiffe://cluster.local/ns/shop/sa/checkout"]
        "#,
    );
    assert_eq!(
        notes,
        vec!["tcp-v1alpha4.yaml: TrafficTarget \"db-access\": TCPRoute \"the-routes\" ports [3306, 6446] are not expressible; the rule covers every port"]
    );
}

#[test]
fn missing_route_group_and_bad_yaml_are_errors() {
    let split = "kind: TrafficSplit\nmetadata:\n  name: s\nspec:\n  service: a\n  matches:\n  - kind: HTTPRouteGroup\n    name: nope\n  backends:\n  - service: b\n    weight: 1\n";
    let err = smi::import(&[("x.yaml".into(), split.into())], &Options::default())
        .expect_err("missing group");
    assert_eq!(err, vec!["x.yaml: TrafficSplit \"s\": refers to HTTPRouteGroup \"nope\", which is not in the input"]);
    let err = smi::import(
        &[("y.yaml".into(), "kind: [\n".into())],
        &Options::default(),
    )
    .expect_err("bad yaml");
    assert_eq!(err.len(), 1);
    assert!(err[0].starts_with("y.yaml:2:1: YAML error:"), "{err:?}");
}

#[test]
fn other_kinds_are_named_not_dropped_silently() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: birds\n";
    let out = smi::import(&[("k.yaml".into(), svc.into())], &Options::default()).expect("imports");
    assert_eq!(
        out.notes,
        vec!["k.yaml: Service \"birds\": apiVersion v1 is not SMI; skipped"]
    );
    assert_eq!(out.tables, Tables::default());
}
