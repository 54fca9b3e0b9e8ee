//! Gateway A's and gateway B's engines against each other over [`MemNet`] on one virtual
//! clock, mutual TLS 1.3 between them: a client's request crosses A (route, pick, mTLS as the
//! client's identity) and B (SNI, preamble, authorization) to a scripted server. Then the
//! hop's own timeout (a peer that connects and never finishes its handshake) and B's refusal
//! of an identity its tables deny.

mod common;

use common::hop::*;
use common::{status, CLIENT, LISTEN};
use mesh::engine::{Expiry, Outcome, Refusal};
use mesh::memnet::EngineClose;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

#[test]
fn a_request_crosses_both_gateways_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, b"GET /x HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    // B opened the local endpoint named in the preamble.
    let (s, to) = b.pending();
    assert_eq!(to, SERVER);
    b.net.peer_accept(s);
    hop.carry(&mut a, &mut b);
    let req = String::from_utf8(b.net.peer_take(s)).unwrap();
    assert!(req.starts_with("GET /x HTTP/1.1\r\n"), "{req}");
    assert!(
        req.to_ascii_lowercase().contains("x-request-id:"),
        "A added an id: {req}"
    );
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    hop.carry(&mut a, &mut b);
    let resp = a.take(c);
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.ends_with("hello"));
    assert_eq!(a.stats().attempts(Outcome::Complete), 1);
    assert_eq!(b.stats().attempts(Outcome::Complete), 1);
    a.balanced();
}

#[test]
fn an_identity_b_denies_gets_403_through_a() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/someone-else");
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    assert!(
        b.net.pending_connects().is_empty(),
        "B never reached the server"
    );
    assert_eq!(status(&a.take(c)), 403);
    assert_eq!(b.stats().refused(Refusal::Denied), 1);
}

#[test]
fn a_peer_that_never_finishes_its_handshake_is_closed_at_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let p = b.net.peer_connect(SocketAddrV4::new(A_IP, 40001), B_MESH);
    b.settle();
    b.send(p, &[0x16, 0x03, 0x01]); // the start of a ClientHello, and nothing more
    b.advance(Duration::from_millis(2999));
    assert_eq!(b.net.closed(p), None);
    b.advance(Duration::from_millis(1));
    assert_eq!(b.net.closed(p), Some(EngineClose::Abort));
    assert_eq!(b.stats().timeouts(Expiry::Handshake), 1);
    assert_eq!(b.engine.active(), 0);
}

#[test]
fn an_upstream_handshake_that_hangs_is_a_connect_timeout_then_503() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
    // Every attempt's TCP connect completes, but no TLS byte ever comes back.
    for _ in 0..mesh::engine::MAX_CONNECT_ATTEMPTS {
        let (u, _) = a.pending();
        a.net.peer_accept(u);
        a.settle();
        assert!(!a.net.peer_take(u).is_empty(), "a ClientHello went out");
        a.advance(control::snapshot::Timeouts::default().connect);
        assert_eq!(a.net.closed(u), Some(EngineClose::Abort));
    }
    let resp = a.take(c);
    assert_eq!(status(&resp), 503, "{resp}");
    assert_eq!(a.stats().refused(Refusal::ConnectTimeout), 1);
    a.balanced();
}

/// B denies `/admin` to the client; allows the rest.
const DENY_ADMIN: &str = r#"
[[authorization]]
service = "web"
allow = ["spiffe://t.mesh/sa/client"]
[[authorization]]
service = "web"
deny = ["spiffe://t.mesh/sa/client"]
paths = [{ prefix = "/admin" }]
"#;

#[test]
fn b_authorizes_the_normalized_path_and_forwards_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways_with(dir.path(), DENY_ADMIN);
    // A bodyless request refused at B leaves the hop open: A pools it for the next client.
    let mut pooled = None;
    for target in [
        "/admin",
        "/admin?x=1",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "//admin",
        "/%61dmin",
        "/admin;x=1",
        "/admin/x;y=/../z",
    ] {
        let before = b.stats().refused(Refusal::Denied);
        let req = format!("GET {target} HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let (server, c) = through_on(&mut a, &mut b, &mut pooled, req.as_bytes());
        assert!(server.is_none(), "{target} reached the server");
        assert_eq!(status(&a.take(c)), 403, "{target}");
        assert_eq!(b.stats().refused(Refusal::Denied), before + 1, "{target}");
    }
    let (server, c) = through_on(
        &mut a,
        &mut b,
        &mut pooled,
        b"GET /public/./x/../y?q=/admin HTTP/1.1\r\nHost: web.test\r\n\r\n",
    );
    let mut hop = pooled.expect("the hop");
    let (s, req) = server.expect("an allowed path reaches the server");
    assert!(
        req.starts_with("GET /public/y?q=/admin HTTP/1.1\r\n"),
        "{req}"
    );
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);
}

#[test]
fn a_tcp_hop_to_a_service_with_path_rules_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways_with(dir.path(), DENY_ADMIN);
    let c = a.net.peer_connect(CLIENT, A_TCP);
    a.settle();
    a.send(c, b"GET /admin HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    assert!(b.net.pending_connects().is_empty(), "B opened nothing");
    assert_eq!(b.stats().refused(Refusal::PolicyNeedsHttp), 1);
    assert_eq!(a.take(c), "", "not a byte of the service");
    assert!(a.net.closed(c).is_some());
}

#[test]
fn a_head_a_accepts_is_not_refused_by_b_for_what_a_added() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let limits = mesh::http::Limits::default();
    // The client's head: the field limit exactly, and within a few bytes of the size limit.
    let mut req = b"GET /x HTTP/1.1\r\nHost: web.test\r\n".to_vec();
    for i in 0..limits.max_headers - 2 {
        req.extend_from_slice(format!("x-f{i:02}: v\r\n").as_bytes());
    }
    let pad = limits.max_head - req.len() - "x-pad: \r\n\r\n".len() - 8;
    req.extend_from_slice(format!("x-pad: {}\r\n\r\n", "p".repeat(pad)).as_bytes());
    assert_eq!(
        mesh::http::parse_request(&req, &limits)
            .unwrap()
            .unwrap()
            .0
            .headers
            .len(),
        limits.max_headers
    );
    let (server, c, mut hop) = through(&mut a, &mut b, &req);
    let (s, got) = server.expect("B forwarded what A accepted");
    assert!(got.contains("x-request-id:") && got.contains("traceparent:"));
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);
    // One field more is refused by A, before any hop.
    let mut more = req.clone();
    more.truncate(more.len() - 2);
    more.extend_from_slice(b"x-one: more\r\n\r\n");
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, &more);
    assert_eq!(status(&a.take(c)), 431);
}

#[test]
fn a_hop_cut_without_close_notify_is_a_cut_for_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let c = a.net.peer_connect(CLIENT, A_TCP);
    a.settle();
    a.send(c, b"ping");
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    let (s, _) = b.pending();
    b.net.peer_accept(s);
    hop.carry(&mut a, &mut b);
    assert_eq!(b.net.peer_take(s), b"ping");
    b.net.peer_send(s, b"pong");
    hop.carry(&mut a, &mut b);
    assert_eq!(a.take(c), "pong");
    // Someone on the path ends the hop's TCP connection: no close_notify came.
    a.net.peer_shutdown(hop.a);
    a.settle();
    assert_eq!(
        a.net.closed(c),
        Some(EngineClose::Abort),
        "the client sees a reset, not an end"
    );
    assert_eq!(a.stats().refused(Refusal::Truncated), 1);
    // A close_notify then FIN (the server finishing) is a clean end.
    let c = a.net.peer_connect(CLIENT, A_TCP);
    a.settle();
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    let (s, _) = b.pending();
    b.net.peer_accept(s);
    hop.carry(&mut a, &mut b);
    b.net.peer_send(s, b"bye");
    b.net.peer_shutdown(s);
    hop.carry(&mut a, &mut b);
    assert_eq!(a.take(c), "bye");
    assert!(a.net.shut(c), "a FIN for a clean end");
    assert_ne!(a.net.closed(c), Some(EngineClose::Abort));
}

#[test]
fn a_hop_outlives_its_client_and_carries_the_next_clients_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let (server, c, mut hop) =
        through(&mut a, &mut b, b"GET /1 HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (s, _) = server.expect("B reached the server");
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);
    a.net.peer_shutdown(c);
    hop.carry(&mut a, &mut b);
    assert_eq!(a.net.closed(c), Some(EngineClose::Close));
    assert_eq!(a.engine.pooled(), 1, "the hop waits in A's pool");
    assert!(a.net.closed(hop.a).is_none());
    // The next clients take it: no new hop at A, no new connection at B.
    for i in 2..5 {
        let c = a.net.peer_connect(CLIENT, LISTEN);
        a.settle();
        a.send(
            c,
            format!("GET /{i} HTTP/1.1\r\nHost: web.test\r\n\r\n").as_bytes(),
        );
        assert!(a.net.pending_connects().is_empty(), "no new hop");
        hop.carry(&mut a, &mut b);
        assert!(
            b.net.pending_connects().is_empty(),
            "B reuses its server connection"
        );
        let got = String::from_utf8(b.net.peer_take(s)).unwrap();
        assert!(got.starts_with(&format!("GET /{i} ")), "{got}");
        b.net
            .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        hop.carry(&mut a, &mut b);
        assert_eq!(status(&a.take(c)), 200);
        a.net.peer_shutdown(c);
        hop.carry(&mut a, &mut b);
    }
    assert_eq!(a.stats().upstream_connects, 1);
    assert_eq!(b.stats().upstream_connects, 1);
    assert_eq!(a.stats().upstream_reused, 3);
    // B closing the idle hop: A drops it from its pool, and the next client gets a new one.
    b.engine.drain_idle();
    hop.carry(&mut a, &mut b);
    assert_eq!(a.engine.pooled(), 0);
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, b"GET /5 HTTP/1.1\r\nHost: web.test\r\n\r\n");
    assert_eq!(a.net.pending_connects().len(), 1, "a fresh hop");
}

#[test]
fn b_refuses_an_endpoint_its_checks_find_unhealthy_and_a_goes_to_another() {
    const OTHER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 3), 8080);
    let dir = tempfile::tempdir().unwrap();
    let two = format!("endpoints = [{{ address = \"{SERVER}\", via = \"gw-b\" }}, {{ address = \"{OTHER}\", via = \"gw-b\" }}]");
    let (mut a, mut b) = gateways_custom(
        dir.path(),
        "[[authorization]]\nservice = \"web\"\nallow = [\"spiffe://t.mesh/sa/client\"]\n",
        |at, bt| {
            let at = at.replace(
                &format!("endpoints = [{{ address = \"{SERVER}\", via = \"gw-b\" }}]"),
                &two,
            );
            let bt = bt.replace(
                &format!("endpoints = [{{ address = \"{SERVER}\" }}]"),
                &format!("endpoints = [{{ address = \"{SERVER}\" }}, {{ address = \"{OTHER}\" }}]\nhealth_check = {{ tcp = true, interval = \"1s\", timeout = \"500ms\", unhealthy = 1, healthy = 1 }}"),
            );
            (at, bt)
        },
    );
    let board = mesh::health::HealthBoard::new();
    b.engine.set_health(board.clone(), 0, true);
    // B's probes: SERVER refuses, OTHER accepts, until B's verdict is in.
    for _ in 0..20 {
        b.advance(Duration::from_millis(100));
        for (p, to) in b.net.pending_connects() {
            if to == SERVER {
                b.net.peer_reset(p);
            } else {
                b.net.peer_accept(p);
            }
        }
        b.settle();
    }
    assert!(board.unhealthy().contains(&("web".to_string(), SERVER)));
    // Requests from A: those A sends to SERVER are refused by B, and A sends them on to
    // OTHER; the client sees 200 for every one, POST included.
    let mut hops: Vec<Hop> = Vec::new();
    let mut refused_before = 0;
    for i in 0..4 {
        let c = a.net.peer_connect(CLIENT, LISTEN);
        a.settle();
        let req = format!("POST /{i} HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\n\r\nhi");
        a.send(c, req.as_bytes());
        // Carry every hop A opens (one per endpoint tried) until the client has its answer.
        for _ in 0..4 {
            for (h, to) in a.net.pending_connects() {
                assert_eq!(to, B_MESH);
                let _ = h;
                hops.push(Hop::open(&mut a, &mut b));
            }
            for hop in hops.iter_mut() {
                hop.carry(&mut a, &mut b);
            }
            for (s, to) in b.net.pending_connects() {
                assert_eq!(to, OTHER, "B never connects to the unhealthy endpoint");
                b.net.peer_accept(s);
            }
            for hop in hops.iter_mut() {
                hop.carry(&mut a, &mut b);
            }
            for s in b.net.connects_to(OTHER) {
                let got = b.net.peer_take(s);
                if !got.is_empty() {
                    assert!(got.ends_with(b"hi"), "the body came along");
                    b.net
                        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            }
            for hop in hops.iter_mut() {
                hop.carry(&mut a, &mut b);
            }
        }
        let resp = a.take(c);
        assert_eq!(status(&resp), 200, "request {i}: {resp}");
        let refused = b.stats().refused(Refusal::EndpointUnhealthy);
        assert!(refused >= refused_before);
        refused_before = refused;
    }
    assert!(
        refused_before >= 1,
        "B refused the unhealthy endpoint at least once"
    );
    assert!(a.stats().retries >= 1);
}

#[test]
fn a_peers_min_idle_hops_are_open_before_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways_custom(
        dir.path(),
        "[[authorization]]\nservice = \"web\"\nallow = [\"spiffe://t.mesh/sa/client\"]\n",
        |at, bt| {
            let at = at.replace(
                "identity = \"spiffe://t.mesh/gateway/gw-b\"\n[[listener]]",
                "identity = \"spiffe://t.mesh/gateway/gw-b\"\nmin_idle = 1\n[[listener]]",
            );
            assert!(at.contains("min_idle = 1"));
            (at, bt)
        },
    );
    a.engine
        .set_health(mesh::health::HealthBoard::new(), 0, false);
    a.settle();
    // The warm hop: connected, handshaken, its preamble sent, idle in A's pool.
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    assert_eq!(a.engine.pooled(), 1);
    assert_eq!(
        b.engine.active(),
        1,
        "B holds the hop, waiting for a request"
    );
    assert!(b.net.pending_connects().is_empty());
    // A second round of the warm-up adds none: the one there is enough.
    a.advance(Duration::from_secs(2));
    assert!(a.net.pending_connects().is_empty());
    // The first request takes it: no connect, no handshake on its way.
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, b"GET /warm HTTP/1.1\r\nHost: web.test\r\n\r\n");
    assert!(
        a.net.pending_connects().is_empty(),
        "the warm hop carried it"
    );
    hop.carry(&mut a, &mut b);
    let (s, to) = b.pending();
    assert_eq!(to, SERVER);
    b.net.peer_accept(s);
    hop.carry(&mut a, &mut b);
    assert!(String::from_utf8(b.net.peer_take(s))
        .unwrap()
        .starts_with("GET /warm "));
    // While it is in use, the warm-up opens another one for the pool.
    a.advance(Duration::from_secs(1));
    assert_eq!(a.net.pending_connects().len(), 1);
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);
    assert!(a.engine.pooled() >= 1, "the used hop is back in the pool");
}

#[test]
fn an_interim_flood_behind_b_ends_the_clients_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let (server, c, mut hop) =
        through(&mut a, &mut b, b"GET /f HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (s, _) = server.expect("B reached the server");
    for _ in 0..20 {
        b.net.peer_send(s, b"HTTP/1.1 100 Continue\r\n\r\n");
        hop.carry(&mut a, &mut b);
    }
    // B relays 8 and answers 502 interim_flood; A relays all of it and keeps the client.
    let got = a.take(c);
    assert_eq!(got.matches("100 Continue").count(), 8, "{got}");
    assert!(
        got.contains(" 502 ") && got.contains("x-xdpmesh-error: interim_flood"),
        "{got}"
    );
    assert_eq!(b.stats().refused(Refusal::InterimFlood), 1);
    assert!(a.net.closed(c).is_none());
}

/// The golden metrics on both gateways (issue #17): one request answered 200 after 30 ms and
/// one answered 503, labelled by route, service, endpoint and both identities; A counts them
/// outbound, B inbound; a TCP connection through A's TCP listener has its own series.
#[test]
fn golden_metrics_label_requests_and_connections_on_both_gateways() {
    use mesh::golden::Golden;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways_custom(
        dir.path(),
        "[[authorization]]\nservice = \"web\"\nallow = [\"spiffe://t.mesh/sa/client\"]\n",
        |a, b| {
            (
                a.replace(
                    "[[service]]\nname = \"web\"",
                    "[[route]]\nname = \"canary\"\nservice = \"web\"\n\
                     [[service]]\nname = \"web\"",
                ),
                b,
            )
        },
    );
    let (ga, gb) = (Golden::default(), Golden::default());
    a.engine.count_golden(&ga);
    b.engine.count_golden(&gb);
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, b"GET /x HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    let (s, _) = b.pending();
    b.net.peer_accept(s);
    hop.carry(&mut a, &mut b);
    b.net.peer_take(s);
    a.advance(Duration::from_millis(30));
    b.advance(Duration::from_millis(30));
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);
    a.send(c, b"GET /y HTTP/1.1\r\nHost: web.test\r\n\r\n");
    hop.carry(&mut a, &mut b);
    b.net.peer_take(s);
    b.net
        .peer_send(s, b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 503);

    let render = |g: &Golden| {
        let mut out = String::new();
        g.render(&mut out);
        out
    };
    let (ma, mb) = (render(&ga), render(&gb));
    let a_labels = format!(
        "direction=\"outbound\",listener=\"web\",route=\"canary\",service=\"web\",\
         endpoint=\"{SERVER}\",src_identity=\"spiffe://t.mesh/sa/client\",\
         dst_identity=\"spiffe://t.mesh/gateway/gw-b\""
    );
    for (code, class) in [("200", "success"), ("503", "failure")] {
        let line = format!(
            "xdpmesh_requests_total{{{a_labels},code=\"{code}\",class=\"{}xx\",\
             classification=\"{class}\"}} 1",
            &code[..1]
        );
        assert!(ma.contains(&line), "{line} not in\n{ma}");
    }
    // 30 ms: above the 25 ms bound, within 50 ms.
    let bucket = |le: &str| {
        format!(
            "xdpmesh_request_duration_seconds_bucket{{{a_labels},code=\"200\",class=\"2xx\",\
             classification=\"success\",le=\"{le}\"}}"
        )
    };
    assert!(ma.contains(&format!("{} 0", bucket("0.025"))), "{ma}");
    assert!(ma.contains(&format!("{} 1", bucket("0.05"))), "{ma}");
    assert!(ma.contains(&format!(
        "xdpmesh_response_bytes_total{{{a_labels},code=\"200\",class=\"2xx\",\
         classification=\"success\"}} 5"
    )));
    // The same families read back and encoded as OpenMetrics (what Prometheus asks for).
    let om = control::openmetrics::from_text(&ma).unwrap();
    assert!(om.contains("# TYPE xdpmesh_requests counter\n"), "{om}");
    assert!(
        om.contains("xdpmesh_request_duration_seconds_bucket{le=\"+Inf\","),
        "{om}"
    );
    assert!(om.ends_with("# EOF\n"));
    let b_labels = format!(
        "direction=\"inbound\",listener=\"mesh\",route=\"\",service=\"web\",\
         endpoint=\"{SERVER}\",src_identity=\"spiffe://t.mesh/sa/client\",\
         dst_identity=\"spiffe://t.mesh/gateway/gw-b\""
    );
    assert!(
        mb.contains(&format!(
            "xdpmesh_requests_total{{{b_labels},code=\"503\",class=\"5xx\",\
             classification=\"failure\"}} 1"
        )),
        "{mb}"
    );

    // TCP through A's TCP listener: opened when the upstream connects, closed at the end.
    let t = a.net.peer_connect(CLIENT, A_TCP);
    a.settle();
    let mut hop2 = Hop::open(&mut a, &mut b);
    hop2.carry(&mut a, &mut b);
    let (s2, _) = b.pending();
    b.net.peer_accept(s2);
    hop2.carry(&mut a, &mut b);
    a.send(t, b"ping");
    hop2.carry(&mut a, &mut b);
    assert_eq!(b.net.peer_take(s2), b"ping");
    let m = render(&ga);
    let tcp_labels = format!(
        "direction=\"outbound\",listener=\"web-tcp\",route=\"\",service=\"web\",\
         endpoint=\"{SERVER}\",src_identity=\"spiffe://t.mesh/sa/client\",\
         dst_identity=\"spiffe://t.mesh/gateway/gw-b\""
    );
    assert!(
        m.contains(&format!("xdpmesh_tcp_connections_active{{{tcp_labels}}} 1")),
        "{m}"
    );
    assert!(
        m.contains(&format!("xdpmesh_tcp_sent_bytes_total{{{tcp_labels}}} 4")),
        "{m}"
    );
    a.net.peer_shutdown(t);
    hop2.carry(&mut a, &mut b);
    b.net.peer_shutdown(s2);
    hop2.carry(&mut a, &mut b);
    let m = render(&ga);
    assert!(
        m.contains(&format!("xdpmesh_tcp_connections_active{{{tcp_labels}}} 0")),
        "{m}"
    );
    assert!(m.contains(&format!(
        "xdpmesh_tcp_connections_closed_total{{{tcp_labels},outcome=\"clean\"}} 1"
    )));
}
