//! A route's `mirror` on the virtual clock: the copy goes to the mirror service once the
//! request is whole, its answer never reaches the client, a silent or failing shadow costs
//! the client nothing and is bounded by the route's timeout, bodies over the cap and copies
//! over the per-worker cap are skipped, and every decision is counted.

mod common;

use common::{status, Gw};
use mesh::memnet::{EngineClose, MemConn};
use mesh::mirror::{MAX_MIRRORS, MIRROR_BODY_CAP};
use mesh::policy::Decision;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
# One endpoint: a kept-alive client's requests share one upstream connection.
endpoints = [{ address = "10.0.3.1:8080" }]

[[service]]
name = "shadow"
endpoints = [{ address = "10.0.4.1:8080" }]

[[route]]
name = "copied"
service = "web"
timeout = "2s"
match = { path = { prefix = "/m" } }
mirror = { service = "shadow" }

[[route]]
name = "half"
service = "web"
match = { path = { prefix = "/half" } }
mirror = { service = "shadow", percent = 50.0 }

[[route]]
service = "web"
"#;

const SHADOW: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 4, 1), 8080);
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const SHADOW_ERROR: &[u8] = b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\noops!";

fn counted(gw: &Gw, route: &str, d: Decision) -> u64 {
    gw.engine.policy_stats().get(route, d)
}

/// The pending connects: (the one to the original service, the one to the shadow).
fn split_pending(gw: &Gw) -> (Option<MemConn>, Option<MemConn>) {
    let mut primary = None;
    let mut shadow = None;
    for (c, to) in gw.net.pending_connects() {
        if to == SHADOW {
            assert!(shadow.replace(c).is_none(), "one copy");
        } else {
            assert!(primary.replace(c).is_none(), "one attempt");
        }
    }
    (primary, shadow)
}

fn accept(gw: &mut Gw, c: MemConn) -> String {
    gw.net.peer_accept(c);
    gw.settle();
    gw.take(c)
}

/// Nothing outstanding on the shadow's endpoint.
fn shadow_balanced(gw: &Gw) {
    assert_eq!(gw.engine.outstanding(1, 0).unwrap_or(0), 0);
}

#[test]
fn a_copy_goes_to_the_shadow_and_its_answer_is_discarded() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"GET /m/a?q=1 HTTP/1.1\r\nHost: web.test\r\nx-a: 1\r\n\r\n",
    );
    let (Some(u), Some(m)) = split_pending(&gw) else {
        panic!("an attempt and a copy: {:?}", gw.net.pending_connects());
    };
    let got = accept(&mut gw, u);
    assert!(got.contains("Host: web.test\r\n"), "{got}");
    let copy = accept(&mut gw, m);
    assert!(copy.starts_with("GET /m/a?q=1 HTTP/1.1\r\n"), "{copy}");
    assert!(copy.contains("host: web.test-shadow\r\n"), "{copy}");
    assert!(copy.contains("connection: close\r\n"), "{copy}");
    assert!(copy.contains("x-a: 1\r\n"), "{copy}");
    let id = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("x-request-id:"))
            .map(str::to_owned)
    };
    assert!(id(&got).is_some());
    assert_eq!(id(&got), id(&copy), "the copy carries the request's id");

    // The shadow answers first, with an error: the client never sees it.
    gw.send(m, SHADOW_ERROR);
    assert_eq!(gw.net.closed(m), Some(EngineClose::Close));
    assert_eq!(gw.take(c), "");
    gw.send(u, OK);
    let resp = gw.take(c);
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
    assert_eq!(counted(&gw, "copied", Decision::Mirrored), 1);
    assert_eq!(counted(&gw, "copied", Decision::MirrorFailed), 0);
    gw.balanced();
    shadow_balanced(&gw);

    // A route without a mirror sends no copy.
    gw.send(c, b"GET /plain HTTP/1.1\r\nHost: web.test\r\n\r\n");
    assert_eq!(split_pending(&gw).1, None);
}

#[test]
fn a_body_is_copied_once_whole_and_a_long_one_is_not() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"POST /m HTTP/1.1\r\nHost: web.test\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    );
    let (Some(u), None) = split_pending(&gw) else {
        panic!("no copy before the body is whole");
    };
    gw.send(c, b"0\r\n\r\n");
    let (_, Some(m)) = split_pending(&gw) else {
        panic!("the copy once the body is whole");
    };
    let copy = accept(&mut gw, m);
    assert!(copy.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{copy}");
    assert!(!copy.to_ascii_lowercase().contains("expect"), "{copy}");
    gw.send(
        m,
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    assert_eq!(gw.net.closed(m), Some(EngineClose::Close), "read whole");
    let got = accept(&mut gw, u);
    assert!(
        got.contains("Expect: 100-continue"),
        "the original is untouched: {got}"
    );
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);

    // Declared too long: skipped at once.
    let mut gw = Gw::new(TABLES);
    let big = MIRROR_BODY_CAP + 1;
    let c = gw.client();
    gw.send(
        c,
        format!("PUT /m HTTP/1.1\r\nHost: web.test\r\nContent-Length: {big}\r\n\r\n").as_bytes(),
    );
    gw.send(c, &vec![b'x'; big]);
    assert_eq!(split_pending(&gw).1, None);
    assert_eq!(counted(&gw, "copied", Decision::MirrorSkipped("body")), 1);
    // Chunked and growing past the cap: dropped when it no longer fits.
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"PUT /m HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let chunk = format!("{:x}\r\n{}\r\n", 40_000, "y".repeat(40_000));
    gw.send(c, chunk.as_bytes());
    // The original's upstream must read for the body to flow on.
    let pending = gw.net.pending_connects();
    let u = pending.iter().find(|(_, to)| *to != SHADOW).unwrap().0;
    gw.net.peer_accept(u);
    gw.settle();
    let _ = gw.take(u);
    gw.send(c, chunk.as_bytes());
    let _ = gw.take(u);
    gw.send(c, b"0\r\n\r\n");
    let _ = gw.take(u);
    assert_eq!(split_pending(&gw).1, None);
    assert_eq!(counted(&gw, "copied", Decision::MirrorSkipped("body")), 1);
    assert_eq!(counted(&gw, "copied", Decision::Mirrored), 0);
}

#[test]
fn a_silent_shadow_costs_the_client_nothing_and_ends_at_the_route_timeout() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, b"GET /m HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (Some(u), Some(m)) = split_pending(&gw) else {
        panic!("an attempt and a copy");
    };
    gw.net.peer_accept(m);
    gw.settle();
    let _ = accept(&mut gw, u);
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    // Keep-alive goes on while the copy waits.
    gw.send(c, b"GET /plain HTTP/1.1\r\nHost: web.test\r\n\r\n");
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    gw.advance(Duration::from_millis(1_999));
    assert_eq!(gw.net.closed(m), None);
    gw.advance(Duration::from_millis(1));
    assert_eq!(
        gw.net.closed(m),
        Some(EngineClose::Abort),
        "the route's 2 s"
    );
    assert_eq!(counted(&gw, "copied", Decision::MirrorFailed), 1);
    shadow_balanced(&gw);

    // A shadow that resets, and one that never completes the connect.
    gw.send(c, b"GET /m HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (_, Some(m)) = split_pending(&gw) else {
        panic!("a copy");
    };
    gw.net.peer_reset(m);
    gw.settle();
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(counted(&gw, "copied", Decision::MirrorFailed), 2);
    gw.send(c, b"GET /m HTTP/1.1\r\nHost: web.test\r\n\r\n");
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    gw.advance(Duration::from_secs(2));
    assert_eq!(counted(&gw, "copied", Decision::MirrorFailed), 3);
    assert!(gw.net.pending_connects().is_empty());
    shadow_balanced(&gw);
    gw.balanced();
}

#[test]
fn percent_copies_about_that_share() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    let mut u = None;
    for _ in 0..400 {
        gw.send(c, b"GET /half HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let (p, m) = split_pending(&gw);
        if let Some(p) = p {
            gw.net.peer_accept(p);
            u = Some(p);
        }
        if let Some(m) = m {
            gw.net.peer_reset(m);
        }
        gw.settle();
        let u = u.expect("connected");
        let _ = gw.take(u);
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
    }
    let n = counted(&gw, "half", Decision::Mirrored);
    // Binomial(400, 0.5): 200 ± 10; ± 50 is five standard deviations.
    assert!((150..=250).contains(&n), "{n}");
}

#[test]
fn copies_in_flight_are_capped_per_worker() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    let mut u = None;
    for _ in 0..MAX_MIRRORS + 3 {
        gw.send(c, b"GET /m HTTP/1.1\r\nHost: web.test\r\n\r\n");
        // The copies are never accepted: they stay connecting.
        let primary = gw
            .net
            .pending_connects()
            .into_iter()
            .find(|(_, to)| *to != SHADOW);
        if let Some((p, _)) = primary {
            gw.net.peer_accept(p);
            u = Some(p);
        }
        gw.settle();
        let u = u.expect("connected");
        let _ = gw.take(u);
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
    }
    assert_eq!(
        counted(&gw, "copied", Decision::Mirrored),
        MAX_MIRRORS as u64
    );
    assert_eq!(
        counted(&gw, "copied", Decision::MirrorSkipped("overflow")),
        3
    );
    // The hung copies end at the route's timeout; then copies flow again.
    gw.advance(Duration::from_secs(2));
    assert_eq!(
        counted(&gw, "copied", Decision::MirrorFailed),
        MAX_MIRRORS as u64
    );
    gw.send(c, b"GET /m HTTP/1.1\r\nHost: web.test\r\n\r\n");
    assert_eq!(gw.net.connects_to(SHADOW).len(), MAX_MIRRORS + 1);
    assert_eq!(
        counted(&gw, "copied", Decision::Mirrored),
        MAX_MIRRORS as u64 + 1
    );
}
