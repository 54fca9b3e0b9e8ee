//! Lookups on a compiled snapshot: routes in file order, path semantics, hosts,
//! default routes, weights, authorization and source identities.

mod common;

use std::collections::HashMap;

use control::snapshot::Snapshot;

fn compile(text: &str) -> Snapshot {
    common::compile_in(std::path::Path::new("."), text)
        .unwrap_or_else(|e| panic!("{e}"))
        .snapshot
}

const NONE: &[(&str, &[u8])] = &[];

fn route_name(
    s: &Snapshot,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Option<String> {
    s.route(host, method, path, headers)
        .map(|h| h.route.name.clone().unwrap_or_else(|| "<default>".into()))
}

const ROUTES: &str = r#"
[[service]]
name = "shop"
hosts = ["shop.example.com"]
endpoints = [
  { address = "10.0.0.1:80", labels = { v = "1" } },
  { address = "10.0.0.2:80", labels = { v = "2" } },
]
[[service]]
name = "other"
endpoints = [{ address = "10.0.1.1:80" }]

[[route]]
name = "hdr"
service = "shop"
match = { headers = { x-user = { regex = "adm.*" } } }
backends = [{ labels = { v = "2" } }]
[[route]]
name = "exact"
service = "shop"
match = { path = { exact = "/api/health" } }
[[route]]
name = "api-get"
service = "shop"
match = { path = { prefix = "/api/" }, method = "GET" }
[[route]]
name = "api"
service = "shop"
match = { path = { prefix = "/api" } }
backends = [{ service = "other" }]
[[route]]
name = "re"
service = "shop"
match = { path = { regex = "/v[0-9]+/.*" } }
[[route]]
name = "root"
service = "other"
match = { path = { prefix = "/" } }
[[route]]
name = "vhost"
service = "other"
match = { host = "Static.Example.com", path = { exact = "/logo.png" } }
"#;

#[test]
fn first_match_in_file_order_across_path_kinds() {
    let s = compile(ROUTES);
    let admin: &[(&str, &[u8])] = &[("X-User", b"admin")];
    assert_eq!(
        route_name(&s, "shop", "GET", "/api/health", admin).as_deref(),
        Some("hdr")
    );
    assert_eq!(
        route_name(&s, "shop", "GET", "/api/health", NONE).as_deref(),
        Some("exact")
    );
    assert_eq!(
        route_name(&s, "shop", "GET", "/api/orders", NONE).as_deref(),
        Some("api-get")
    );
    assert_eq!(
        route_name(&s, "shop", "POST", "/api/orders", NONE).as_deref(),
        Some("api")
    );
    assert_eq!(
        route_name(&s, "shop", "POST", "/api", NONE).as_deref(),
        Some("api")
    );
    // Prefixes match whole segments.
    assert_eq!(
        route_name(&s, "shop", "GET", "/apix", NONE).as_deref(),
        Some("<default>")
    );
    assert_eq!(
        route_name(&s, "shop", "GET", "/v2/items", NONE).as_deref(),
        Some("re")
    );
    // Regexes match the whole path.
    assert_eq!(
        route_name(&s, "shop", "GET", "/x/v2/items", NONE).as_deref(),
        Some("<default>")
    );
    // Header regex must match the whole value.
    let not_admin: &[(&str, &[u8])] = &[("x-user", b"xadmin")];
    assert_eq!(
        route_name(&s, "shop", "GET", "/", not_admin).as_deref(),
        Some("<default>")
    );
}

#[test]
fn hosts_ignore_case_port_and_trailing_dot_and_vhosts_stand_alone() {
    let s = compile(ROUTES);
    assert_eq!(
        route_name(&s, "SHOP.example.com:8443", "POST", "/api", NONE).as_deref(),
        Some("api")
    );
    assert_eq!(
        route_name(&s, "shop.example.com.", "POST", "/api", NONE).as_deref(),
        Some("api")
    );
    assert_eq!(
        route_name(&s, "other", "GET", "/anything", NONE).as_deref(),
        Some("root")
    );
    assert_eq!(
        route_name(&s, "static.example.com", "GET", "/logo.png", NONE).as_deref(),
        Some("vhost")
    );
    // A host that is only a route's: no default route.
    assert_eq!(
        route_name(&s, "static.example.com", "GET", "/other.png", NONE),
        None
    );
    assert_eq!(route_name(&s, "unknown", "GET", "/", NONE), None);
    assert_eq!(s.service_for_host("Shop.Example.Com"), s.service_id("shop"));
    assert_eq!(s.service_for_host("static.example.com"), None);
}

#[test]
fn backends_select_endpoints_by_labels_and_weights_split_traffic() {
    let s = compile(
        r#"
        [[service]]
        name = "a"
        endpoints = [
          { address = "10.0.0.1:80", labels = { v = "1" } },
          { address = "10.0.0.2:80", labels = { v = "1", zone = "x" } },
          { address = "10.0.0.3:80", labels = { v = "2" } },
        ]
        [[route]]
        service = "a"
        backends = [{ labels = { v = "1" }, weight = 3 }, { labels = { v = "2" }, weight = 1 }, { labels = { zone = "x" }, weight = 0 }]
        "#,
    );
    let r = &s.routes[0];
    assert_eq!(r.backends[0].endpoints, vec![0, 1]);
    assert_eq!(r.backends[1].endpoints, vec![2]);
    assert_eq!(r.total_weight(), 4);
    let mut count: HashMap<u32, u32> = HashMap::new();
    for x in 0..4000u64 {
        let b = r.pick(x).expect("backend");
        *count.entry(b.weight).or_default() += 1;
    }
    // pick(x) is exact over a full cycle of x mod total weight.
    assert_eq!(count.get(&3), Some(&3000));
    assert_eq!(count.get(&1), Some(&1000));
    assert_eq!(count.get(&0), None);
    // The default route covers every endpoint.
    let d = &s.services[0].default_route;
    assert_eq!(d.backends[0].endpoints, vec![0, 1, 2]);
}

#[test]
fn authorization_denies_by_default_once_a_service_has_rules() {
    let s = compile(
        r#"
        [[service]]
        name = "open"
        [[service]]
        name = "api"
        [[authorization]]
        service = "api"
        allow = ["spiffe://m/sa/web", "spiffe://m/ops/*"]
        [[authorization]]
        service = "api"
        allow = ["spiffe://m/sa/prom"]
        methods = ["GET"]
        paths = [{ prefix = "/metrics" }]
        [[authorization]]
        service = "api"
        deny = ["spiffe://m/ops/intern"]
        [[authorization]]
        service = "api"
        deny = ["*"]
        methods = ["DELETE"]
        "#,
    );
    let open = s.service_id("open").expect("open");
    let api = s.service_id("api").expect("api");
    assert!(s.authorize(open, "spiffe://anyone/x", None));
    assert!(s.authorize(api, "spiffe://m/sa/web", None));
    assert!(s.authorize(api, "spiffe://m/sa/web", Some(("GET", "/x"))));
    assert!(s.authorize(api, "spiffe://m/ops/alice", Some(("PUT", "/x"))));
    assert!(
        !s.authorize(api, "spiffe://m/ops/intern", Some(("GET", "/x"))),
        "deny wins"
    );
    assert!(
        !s.authorize(api, "spiffe://m/sa/other", None),
        "deny by default"
    );
    assert!(s.authorize(api, "spiffe://m/sa/prom", Some(("GET", "/metrics/x"))));
    assert!(!s.authorize(api, "spiffe://m/sa/prom", Some(("POST", "/metrics"))));
    assert!(
        !s.authorize(api, "spiffe://m/sa/prom", None),
        "a scoped rule never allows TCP"
    );
    assert!(
        !s.authorize(api, "spiffe://m/sa/web", Some(("DELETE", "/x"))),
        "scoped deny"
    );
    assert!(
        s.authorize(api, "spiffe://m/sa/web", None),
        "scoped deny does not cover TCP"
    );
}

#[test]
fn listeners_peers_and_endpoint_vias_resolve() {
    let dir = tempfile::tempdir().expect("tmp");
    control::ca::init(&dir.path().join("ca"), &Default::default()).expect("ca");
    let s = common::compile_in(
        dir.path(),
        r#"
        [trust]
        roots = ["ca/ca.pem"]
        [[peer]]
        name = "gw-b"
        address = "10.10.2.2:15443"
        identity = "spiffe://m/gateway/gw-b"
        [[service]]
        name = "db"
        endpoints = [{ address = "10.10.3.4:5432", via = "gw-b" }]
        load_balancer = "ring-hash"
        hash_key = "header:X-Tenant"
        [[listener]]
        name = "db"
        bind = "10.10.1.1:5432"
        protocol = "tcp"
        service = "db"
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .snapshot;
    let db = s.service("db").expect("db");
    assert_eq!(db.endpoints[0].via, Some(0));
    assert_eq!(
        s.peer("gw-b").expect("peer").identity,
        "spiffe://m/gateway/gw-b"
    );
    assert_eq!(
        db.hash_key,
        Some(control::snapshot::HashKey::Header("x-tenant".into()))
    );
    assert_eq!(s.listeners[0].service, s.service_id("db"));
    assert_eq!(s.listeners[0].protocol, control::schema::Protocol::Tcp);
}

/// The answer of `Snapshot::route` by the definition: the first route in file order
/// for this host whose every condition holds, else the host's service default.
fn naive(
    s: &Snapshot,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Option<Option<u32>> {
    use control::snapshot::HeaderLookup;
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let owner = s
        .services
        .iter()
        .position(|svc| svc.hosts.iter().any(|h| h == host));
    let hit = s.routes.iter().position(|r| {
        let for_host = match &r.host {
            Some(h) => h == host,
            None => s.services[r.service as usize]
                .hosts
                .iter()
                .any(|h| h == host),
        };
        for_host
            && r.method.as_deref().is_none_or(|m| m == method)
            && r.path.as_ref().is_none_or(|p| p.matches(path))
            && r.headers
                .iter()
                .all(|(n, m)| headers.header(n).is_some_and(|v| m.matches(v)))
    });
    match (hit, owner) {
        (Some(i), _) => Some(Some(i as u32)),
        (None, Some(_)) => Some(None),
        // A host named only by routes' `host`, none matching: no answer.
        (None, None) => None,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]
    /// Hosts with few routes (scanned inline) and many (indexed) answer as the
    /// definition says, for every mix of path kinds, methods and headers.
    #[test]
    fn route_lookup_agrees_with_the_definition(
        routes in proptest::collection::vec((0usize..9, 0usize..3, 0usize..6), 1..24)
    ) {
        const PATHS: [&str; 9] = [
            "", "{ exact = \"/a\" }", "{ exact = \"/a/b\" }", "{ prefix = \"/a\" }",
            "{ prefix = \"/\" }", "{ prefix = \"/a/b/\" }", "{ regex = \"/a.*\" }",
            "{ exact = \"/a-very-long-path-that-is-not-kept-inline/x\" }",
            "{ prefix = \"/a-very-long-path-that-is-not-kept-inline\" }",
        ];
        const METHODS: [&str; 3] = ["", "GET", "PROPPATCHX"];
        // Exact single headers are kept inline while path + name + value fit in the
        // host index's route line; the long value and the pair never are.
        const HEADERS: [&str; 6] = [
            "", "x-a = \"1\"", "x-b = { regex = \"[0-9]+\" }", "x-a = \"1\", x-c = \"2\"",
            "x-long = \"a-header-value-too-long-to-keep-inline-0123456789\"", "x-e = \"\"",
        ];
        let mut t = String::from("[[service]]\nname = \"s\"\nhosts = [\"h.test\"]\nendpoints = [{ address = \"10.0.0.1:80\" }]\n");
        for (p, m, h) in &routes {
            let mut parts = Vec::new();
            if !PATHS[*p].is_empty() { parts.push(format!("path = {}", PATHS[*p])); }
            if !METHODS[*m].is_empty() { parts.push(format!("method = \"{}\"", METHODS[*m])); }
            if !HEADERS[*h].is_empty() { parts.push(format!("headers = {{ {} }}", HEADERS[*h])); }
            t.push_str(&format!("[[route]]\nservice = \"s\"\nmatch = {{ {} }}\n", parts.join(", ")));
        }
        let s = compile(&t);
        let long = "/a-very-long-path-that-is-not-kept-inline";
        let long_x = format!("{long}/x");
        let long_y = format!("{long}y");
        for path in ["/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/b", "/a?q=1", long, long_x.as_str(), long_y.as_str()] {
            for method in ["GET", "POST", "PROPPATCHX"] {
                for headers in [
                    NONE,
                    &[("X-A", b"1".as_slice())],
                    &[("x-b", b"42".as_slice()), ("x-a", b"2".as_slice())],
                    &[("x-a", b"1".as_slice()), ("X-C", b"2".as_slice()), ("x-e", b"".as_slice())],
                    &[("x-long", b"a-header-value-too-long-to-keep-inline-0123456789".as_slice()), ("x-e", b"1".as_slice())],
                ] {
                    let got = s.route("h.test", method, path, headers).map(|h| h.id);
                    proptest::prop_assert_eq!(got, naive(&s, "h.test", method, path, headers), "{} {} {:?}\n{}", method, path, headers, t);
                }
            }
        }
    }
}

#[test]
fn long_host_names_are_found_and_near_misses_are_not() {
    // Longer than the names kept inline in the host index.
    let long = "a-rather-long-service-host-name-0123456789.corp.example.com";
    let t = format!(
        "[[service]]\nname = \"s\"\nhosts = [\"{long}\", \"short.test\"]\nendpoints = [{{ address = \"10.0.0.1:80\" }}]\n\
         [[route]]\nname = \"r\"\nservice = \"s\"\nmatch = {{ path = {{ prefix = \"/x\" }} }}\n"
    );
    let s = compile(&t);
    let upper = long.to_ascii_uppercase();
    for host in [long, upper.as_str(), "short.test"] {
        assert_eq!(
            route_name(&s, host, "GET", "/x/1", NONE).as_deref(),
            Some("r"),
            "{host}"
        );
        assert_eq!(
            route_name(&s, host, "GET", "/y", NONE).as_deref(),
            Some("<default>"),
            "{host}"
        );
        assert!(s.service_for_host(host).is_some(), "{host}");
    }
    let near = format!("{}x", &long[..long.len() - 1]);
    assert_eq!(route_name(&s, &near, "GET", "/x/1", NONE), None);
    assert_eq!(s.service_for_host(&near), None);
    assert_eq!(s.service_for_host("short.tes"), None);
}

#[test]
fn timeouts_compile_over_the_defaults() {
    use control::snapshot::Timeouts;
    use std::time::Duration;
    let s = compile(
        r#"
[[service]]
name = "a"
endpoints = [{ address = "10.0.0.1:80" }]
[[listener]]
name = "plain"
bind = "10.0.0.9:80"
protocol = "http"
[[listener]]
name = "tuned"
bind = "10.0.0.9:81"
protocol = "http"
timeouts = { request_head = "2s", request = "250ms", tcp_idle = "2h" }
[[route]]
name = "slow"
service = "a"
timeout = "40s"
"#,
    );
    let d = Timeouts::default();
    assert_eq!(d.request_head, Duration::from_secs(10));
    assert_eq!(d.idle, Duration::from_secs(60));
    assert_eq!(d.request, Duration::from_secs(15));
    assert_eq!(d.connect, Duration::from_secs(2));
    assert_eq!(d.handshake, Duration::from_secs(5));
    assert_eq!(d.body_stall, Duration::from_secs(30));
    assert_eq!(d.tcp_idle, Duration::from_secs(3600));
    assert_eq!(s.listeners[0].timeouts, d);
    let t = s.listeners[1].timeouts;
    assert_eq!(t.request_head, Duration::from_secs(2));
    assert_eq!(t.request, Duration::from_millis(250));
    assert_eq!(t.tcp_idle, Duration::from_secs(7200));
    assert_eq!(t.connect, d.connect, "unset keys keep their defaults");
    let r = s.route("a", "GET", "/", NONE).unwrap().route;
    assert_eq!(r.timeout, Some(Duration::from_secs(40)));
    assert_eq!((r.connect_timeout, r.body_stall_timeout), (None, None));

    let s = compile(
        r#"
[[service]]
name = "a"
endpoints = [{ address = "10.0.0.1:80" }]
[[route]]
service = "a"
timeouts = { request = "3s", connect = "500ms", body_stall = "5s" }
"#,
    );
    let r = s.route("a", "GET", "/", NONE).unwrap().route;
    assert_eq!(r.timeout, Some(Duration::from_secs(3)));
    assert_eq!(r.connect_timeout, Some(Duration::from_millis(500)));
    assert_eq!(r.body_stall_timeout, Some(Duration::from_secs(5)));
}

#[test]
fn keepalive_compiles_over_the_defaults_and_is_off_without_the_table() {
    use control::snapshot::KeepaliveRt;
    use std::net::SocketAddr;
    use std::time::Duration;
    let s = compile(
        r#"
[[service]]
name = "a"
endpoints = [{ address = "10.0.0.1:80" }]
[[listener]]
name = "plain"
bind = "10.0.0.9:80"
protocol = "http"
[[listener]]
name = "defaults"
bind = "10.0.0.9:81"
protocol = "http"
keepalive = {}
[[listener]]
name = "tuned"
bind = "0.0.0.0:82"
protocol = "tcp"
service = "a"
keepalive = { idle = "2m", probes = 3 }
[[listener]]
name = "all"
bind = "10.0.0.9:83"
protocol = "http"
keepalive = { idle = "30s", interval = "500ms", probes = 100 }
"#,
    );
    let d = KeepaliveRt::default();
    assert_eq!(
        d,
        KeepaliveRt {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 6
        }
    );
    assert_eq!(s.listeners[0].keepalive, None, "no table: off");
    assert_eq!(
        s.listeners[1].keepalive,
        Some(d),
        "an empty table: the defaults"
    );
    assert_eq!(
        s.listeners[2].keepalive,
        Some(KeepaliveRt {
            idle: Duration::from_secs(120),
            probes: 3,
            ..d
        }),
        "unset keys keep their defaults"
    );
    assert_eq!(
        s.listeners[3].keepalive,
        Some(KeepaliveRt {
            idle: Duration::from_secs(30),
            interval: Duration::from_millis(500),
            probes: 100,
        })
    );
    // The data plane finds a connection's listener by its local address.
    let at = |a: &str| {
        s.listener_at(a.parse::<SocketAddr>().unwrap())
            .map(|l| l.name.as_str())
    };
    assert_eq!(at("10.0.0.9:81"), Some("defaults"));
    assert_eq!(
        at("10.0.0.9:82"),
        Some("tuned"),
        "0.0.0.0 binds every address"
    );
    assert_eq!(at("10.0.0.7:82"), Some("tuned"));
    assert_eq!(at("10.0.0.7:81"), None);
    assert_eq!(at("10.0.0.9:84"), None);
}

#[test]
fn connection_caps_default_per_protocol() {
    let s = compile(
        r#"
[[service]]
name = "a"
endpoints = [{ address = "10.0.0.1:80" }]
[[listener]]
name = "plain"
bind = "10.0.0.9:80"
protocol = "http"
[[listener]]
name = "small"
bind = "10.0.0.9:81"
protocol = "tcp"
service = "a"
max_connections = 100
[[listener]]
name = "set"
bind = "10.0.0.9:82"
protocol = "http"
max_connections = 50000
max_connections_per_source = 7
"#,
    );
    let caps: Vec<(u32, u32)> = s
        .listeners
        .iter()
        .map(|l| (l.max_connections, l.max_connections_per_source))
        .collect();
    assert_eq!(caps, [(10_000, 2_500), (100, 100), (50_000, 7)]);
}

#[test]
fn route_policies_compile_with_defaults_and_service_fallback() {
    use control::snapshot::{RetryBudgetRt, RetryRt};
    use std::time::Duration;
    let s = compile(
        r#"
[[service]]
name = "a"
endpoints = [{ address = "10.0.0.1:80" }]
retries = {}
rate_limit = { requests_per_second = 50 }
retry_budget = { ratio = 0.5 }
[[route]]
name = "own"
service = "a"
match = { path = { prefix = "/own" } }
retries = { attempts = 5, on = ["gateway-error", "timeout", "429"], methods = ["POST"], buffer = 100 }
fault = { abort = { percent = 10.0, status = 503 }, delay = { percent = 50.0, duration = "100ms" }, headers = { x-chaos = "on" } }
[[route]]
name = "inherits"
service = "a"
"#,
    );
    let own = s.route("a", "GET", "/own", NONE).unwrap().route;
    let p = own.policy.as_ref().unwrap();
    let r = p.retries.as_ref().unwrap();
    assert_eq!((r.attempts, r.buffer), (5, 100));
    assert!(r.retries_status(502) && r.retries_status(503) && r.retries_status(504));
    assert!(!r.retries_status(500) && r.on_timeout && !r.on_reset && !r.on_connect_failure);
    assert_eq!(r.methods, ["POST"]);
    let f = p.fault.as_ref().unwrap();
    assert_eq!(f.abort, Some((10.0, 503)));
    assert_eq!(f.delay, Some((50.0, Duration::from_millis(100))));
    assert!(f.applies(&[("X-Chaos", &b"on"[..])][..]));
    assert!(!f.applies(&[("x-chaos", &b"off"[..])][..]));
    // The route's own retries replace the service's; its rate limit is the service's.
    assert_eq!(p.rate_limit.unwrap().per_second, 50.0);
    assert_eq!(p.rate_limit.unwrap().burst, 50);
    let inh = s.route("a", "GET", "/x", NONE).unwrap().route;
    let p = inh.policy.as_ref().unwrap();
    assert_eq!(p.retries.as_ref(), Some(&RetryRt::default()));
    assert!(p.fault.is_none());
    assert_ne!(own.policy.as_ref().unwrap().id, p.id);
    let d = RetryRt::default();
    assert_eq!(
        (d.attempts, d.per_try_timeout, d.backoff, d.buffer),
        (3, Duration::from_secs(1), Duration::from_millis(25), 65536)
    );
    assert!(d.on_connect_failure && d.on_reset && d.retries_status(503) && !d.retries_status(502));
    assert!(d.retries_method("PUT") && !d.retries_method("POST"));
    assert!(!d.retries_grpc(14));
    assert_eq!(
        s.services[0].retry_budget,
        RetryBudgetRt {
            ratio: 0.5,
            ..RetryBudgetRt::default()
        }
    );
    assert_eq!(
        RetryBudgetRt::default(),
        RetryBudgetRt {
            ratio: 0.2,
            min_per_second: 10.0,
            ttl: Duration::from_secs(10)
        }
    );
    assert!(s.services[0].default_route.policy.is_some());
}

#[test]
fn mirror_compiles_with_its_default_percent_and_the_service_fallback() {
    use control::snapshot::MirrorRt;
    let text = r#"
[[service]]
name = "web"
endpoints = [{ address = "10.0.0.1:80" }]
rate_limit = { requests_per_second = 50 }
mirror = { service = "web-shadow", percent = 25 }
[[service]]
name = "web-shadow"
endpoints = [{ address = "10.0.0.2:80" }]
[[service]]
name = "canary"
[[service]]
name = "api"
endpoints = [{ address = "10.0.0.3:80" }]
[[route]]
name = "own"
service = "web"
match = { path = { prefix = "/own" } }
mirror = { service = "canary" }
[[route]]
name = "self"
service = "web"
match = { path = { prefix = "/self" } }
mirror = { service = "web", percent = 0.5 }
[[route]]
name = "fault-only"
service = "web"
match = { path = { prefix = "/fault" } }
fault = { abort = { percent = 1.0, status = 503 } }
[[route]]
name = "inherits"
service = "web"
[[route]]
name = "plain"
service = "api"
"#;
    let s = compile(text);
    let id = |name: &str| s.service_id(name).expect("service");
    let policy = |host: &str, path: &str| {
        s.route(host, "GET", path, NONE)
            .expect("route")
            .route
            .policy
            .clone()
    };
    let mirror = |host: &str, path: &str| policy(host, path).and_then(|p| p.mirror.clone());
    // The route's own, with percent defaulting to 100; its rate limit is still the service's.
    assert_eq!(
        mirror("web", "/own"),
        Some(MirrorRt {
            service: id("canary"),
            percent: 100.0
        })
    );
    assert_eq!(
        policy("web", "/own")
            .unwrap()
            .rate_limit
            .unwrap()
            .per_second,
        50.0
    );
    // The route's own service may be its mirror.
    assert_eq!(
        mirror("web", "/self"),
        Some(MirrorRt {
            service: id("web"),
            percent: 0.5
        })
    );
    // Another table of the route's own leaves the service's mirror in place.
    let shadow = Some(MirrorRt {
        service: id("web-shadow"),
        percent: 25.0,
    });
    assert_eq!(mirror("web", "/fault"), shadow);
    assert!(policy("web", "/fault").unwrap().fault.is_some());
    assert_eq!(mirror("web", "/x"), shadow);
    assert_eq!(
        s.route("web", "GET", "/x", NONE)
            .unwrap()
            .route
            .name
            .as_deref(),
        Some("inherits")
    );
    // The service's default route carries the service's mirror.
    let web = s.service("web").expect("web");
    assert_eq!(
        web.default_route
            .policy
            .as_ref()
            .and_then(|p| p.mirror.clone()),
        shadow
    );
    // No mirror anywhere: no policy at all.
    assert!(policy("api", "/").is_none());
    // Both decoders read it alike, and it is written back as it was read.
    assert_eq!(control::fastde::disagreement(text), None);
    let t = control::fastde::tables(text).expect("fast path");
    assert_eq!(control::fastde::tables(&t.to_toml()), Some(t));
}

#[test]
fn endpoint_health_compiles_over_the_defaults() {
    use control::snapshot::{CircuitBreakerRt, HealthCheckRt, HealthProbe, OutlierRt, PoolRt};
    use std::time::Duration;
    let long_path = format!("/{}", "a".repeat(1023));
    let text = format!(
        r#"
[[peer]]
name = "gw-b"
address = "10.0.0.2:15443"
identity = "spiffe://m/gw-b"
[[peer]]
name = "gw-c"
address = "10.0.0.3:15443"
identity = "spiffe://m/gw-c"
min_idle = 1
[[service]]
name = "plain"
endpoints = [{{ address = "10.0.0.1:80" }}]
[[service]]
name = "empty-tables"
circuit_breaker = {{}}
outlier = {{}}
pool = {{}}
health_check = {{ tcp = true }}
[[service]]
name = "tuned"
circuit_breaker = {{ max_pending = 10 }}
outlier = {{ consecutive_failures = 0, interval = "1s", max_ejected_percent = 100, panic_threshold = 0, success_rate_stdev_factor = 2 }}
health_check = {{ http = {{ path = "/healthz?deep=1&x=%2F" }}, interval = "2s", timeout = "1999ms", unhealthy = 1, healthy = 100 }}
pool = {{ max_idle_per_endpoint = 0, idle_timeout = "5s", max_requests = 1, max_lifetime = "1h" }}
[[service]]
name = "all"
circuit_breaker = {{ max_connections = 1, max_pending = 1000000, max_requests = 7 }}
outlier = {{ enabled = true, success_rate_min_requests = 0, base_ejection = "1m" }}
health_check = {{ http = {{ path = "{long_path}", expect = [204, 200, 204, 599, 100] }} }}
pool = {{ max_idle_per_endpoint = 10000, max_requests = 10000000 }}
[[service]]
name = "off"
outlier = {{ enabled = false }}
"#
    );
    let s = compile(&text);
    // The defaults, as the tables' reference states them.
    assert_eq!(
        CircuitBreakerRt::default(),
        CircuitBreakerRt {
            max_connections: 1024,
            max_pending: 256,
            max_requests: 1024
        }
    );
    let d = OutlierRt::default();
    assert_eq!(
        d,
        OutlierRt {
            consecutive_failures: 5,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
            panic_threshold: 50,
            success_rate_min_requests: 100,
            success_rate_stdev_factor: 1.9,
        }
    );
    assert_eq!(
        PoolRt::default(),
        PoolRt {
            max_idle_per_endpoint: 64,
            idle_timeout: Duration::from_secs(60),
            max_requests: 10_000,
            max_lifetime: Duration::from_secs(600),
        }
    );
    let peers: Vec<u32> = s.peers.iter().map(|p| p.min_idle).collect();
    assert_eq!(peers, [0, 1], "min_idle defaults to 0");

    // No tables: the defaults, outlier detection on, no health checks.
    let plain = s.service("plain").expect("plain");
    assert_eq!(plain.circuit_breaker, CircuitBreakerRt::default());
    assert_eq!(plain.outlier, Some(d.clone()));
    assert_eq!(plain.health_check, None);
    assert_eq!(plain.pool, PoolRt::default());
    // Empty tables: the same (a health check needs its probe).
    let empty = s.service("empty-tables").expect("empty-tables");
    assert_eq!(empty.circuit_breaker, CircuitBreakerRt::default());
    assert_eq!(empty.outlier, Some(d.clone()));
    assert_eq!(empty.pool, PoolRt::default());
    assert_eq!(
        empty.health_check,
        Some(HealthCheckRt {
            probe: HealthProbe::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy: 3,
            healthy: 2,
        })
    );
    // Unset keys keep their defaults.
    let tuned = s.service("tuned").expect("tuned");
    assert_eq!(
        tuned.circuit_breaker,
        CircuitBreakerRt {
            max_pending: 10,
            ..CircuitBreakerRt::default()
        }
    );
    assert_eq!(
        tuned.outlier,
        Some(OutlierRt {
            consecutive_failures: 0,
            interval: Duration::from_secs(1),
            max_ejected_percent: 100,
            panic_threshold: 0,
            success_rate_stdev_factor: 2.0,
            ..d.clone()
        })
    );
    assert_eq!(
        tuned.health_check,
        Some(HealthCheckRt {
            probe: HealthProbe::Http {
                path: "/healthz?deep=1&x=%2F".into(),
                expect: vec![200],
            },
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(1999),
            unhealthy: 1,
            healthy: 100,
        })
    );
    assert_eq!(
        tuned.pool,
        PoolRt {
            max_idle_per_endpoint: 0,
            idle_timeout: Duration::from_secs(5),
            max_requests: 1,
            max_lifetime: Duration::from_secs(3600),
        }
    );
    // The bounds themselves are accepted; duplicate statuses are dropped, in order.
    let all = s.service("all").expect("all");
    assert_eq!(
        all.circuit_breaker,
        CircuitBreakerRt {
            max_connections: 1,
            max_pending: 1_000_000,
            max_requests: 7
        }
    );
    assert_eq!(
        all.outlier,
        Some(OutlierRt {
            success_rate_min_requests: 0,
            base_ejection: Duration::from_secs(60),
            ..d
        })
    );
    assert_eq!(
        all.health_check.as_ref().map(|h| &h.probe),
        Some(&HealthProbe::Http {
            path: long_path.clone(),
            expect: vec![204, 200, 599, 100],
        })
    );
    assert_eq!(
        (all.pool.max_idle_per_endpoint, all.pool.max_requests),
        (10_000, 10_000_000)
    );
    // `enabled = false` turns outlier detection off.
    assert_eq!(s.service("off").expect("off").outlier, None);
    // Both decoders read it alike, and it is written back as it was read.
    assert_eq!(control::fastde::disagreement(&text), None);
    let t = control::fastde::tables(&text).expect("fast path");
    assert_eq!(control::fastde::tables(&t.to_toml()), Some(t));
}

#[test]
fn grpc_routes_match_service_and_method_of_grpc_calls_only() {
    let s = compile(
        r#"
[[service]]
name = "g"
endpoints = [{ address = "10.0.0.1:80" }]
[[route]]
name = "say"
service = "g"
match = { grpc = { service = "helloworld.Greeter", method = "SayHello" } }
retries = { on = ["unavailable", "resource-exhausted"] }
[[route]]
name = "greeter"
service = "g"
match = { grpc = { service = "helloworld.Greeter" } }
[[route]]
name = "rest"
service = "g"
"#,
    );
    let grpc: &[(&str, &[u8])] = &[("content-type", b"application/grpc")];
    let proto: &[(&str, &[u8])] = &[("content-type", b"application/grpc+proto")];
    let json: &[(&str, &[u8])] = &[("content-type", b"application/json")];
    let name = |m: &str, p: &str, h: &[(&str, &[u8])]| {
        s.route("g", m, p, h)
            .and_then(|hit| hit.route.name.clone())
            .unwrap_or_default()
    };
    assert_eq!(name("POST", "/helloworld.Greeter/SayHello", grpc), "say");
    assert_eq!(name("POST", "/helloworld.Greeter/SayHello", proto), "say");
    let upper: &[(&str, &[u8])] = &[("content-type", b"Application/GRPC")];
    assert_eq!(name("POST", "/helloworld.Greeter/SayHello", upper), "say");
    assert_eq!(
        name("POST", "/helloworld.Greeter/SayHelloAgain", grpc),
        "greeter"
    );
    // Not gRPC: no content-type, another content-type, another method, another service.
    assert_eq!(name("POST", "/helloworld.Greeter/SayHello", NONE), "rest");
    assert_eq!(name("POST", "/helloworld.Greeter/SayHello", json), "rest");
    assert_eq!(name("GET", "/helloworld.Greeter/SayHello", grpc), "rest");
    assert_eq!(name("POST", "/helloworld.GreeterX/SayHello", grpc), "rest");
    let r = s
        .route("g", "POST", "/helloworld.Greeter/SayHello", grpc)
        .unwrap()
        .route
        .policy
        .as_ref()
        .unwrap()
        .retries
        .clone()
        .unwrap();
    assert!(r.retries_grpc(14) && r.retries_grpc(8) && !r.retries_grpc(4));
    // `on` replaces the default conditions.
    assert!(!r.retries_status(503) && !r.on_reset && !r.on_connect_failure);
}
