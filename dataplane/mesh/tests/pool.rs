//! The worker's upstream connection pool and the services' circuit breakers on the virtual
//! clock: connections outlive the client connection that opened them and serve any session,
//! one bound to another endpoint (or service) is never handed out, one the server closed
//! while idle is dropped unseen, the pool's bounds (idle timeout, lifetime, requests per
//! connection, idle per endpoint) close what they must, and a cap of the circuit breaker
//! answers 503 at once, counted.

mod common;

use common::{status, Gw};
use mesh::engine::{PoolClose, Refusal};
use mesh::memnet::{EngineClose, MemConn};
use mesh::policy::Decision;
use std::time::Duration;

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }, { address = "10.0.3.2:8080" }]
pool = { max_idle_per_endpoint = 2, idle_timeout = "60s", max_requests = 5, max_lifetime = "10m" }
circuit_breaker = { max_pending = 3, max_requests = 5, max_connections = 4 }

[[service]]
name = "other"
hosts = ["other.test"]
endpoints = [{ address = "10.0.3.1:8080" }]
"#;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n";

/// One request on a new client connection that then closes; the upstream it used.
fn one_request(gw: &mut Gw, req: &[u8]) -> (MemConn, bool) {
    let c = gw.client();
    gw.send(c, req);
    let (u, fresh) = gw.upstream();
    assert!(gw.take(u).starts_with("GET / "));
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    gw.net.peer_shutdown(c);
    gw.settle();
    assert_eq!(gw.net.closed(c), Some(EngineClose::Close));
    (u, fresh)
}

#[test]
fn connections_outlive_their_client_and_serve_the_next_one() {
    let mut gw = Gw::new(TABLES);
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(one_request(&mut gw, GET));
    }
    let fresh = seen.iter().filter(|(_, f)| *f).count();
    assert_eq!(fresh, 2, "one connection per endpoint: {seen:?}");
    assert_eq!(gw.stats().upstream_connects, 2);
    assert_eq!(gw.stats().upstream_reused, 6);
    assert_eq!(gw.engine.pooled(), 2);
    assert_eq!(gw.engine.active(), 0, "no session left");
    gw.balanced();
}

#[test]
fn a_keep_alive_client_switching_endpoints_takes_pooled_connections() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    let mut fresh = 0;
    for _ in 0..8 {
        gw.send(c, GET);
        let (u, f) = gw.upstream();
        fresh += usize::from(f);
        assert!(gw.take(u).starts_with("GET / "));
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
    }
    assert_eq!(fresh, 2, "round robin over two endpoints, two connections");
    assert_eq!(gw.stats().upstream_connects, 2);
}

#[test]
fn a_connection_is_bound_to_its_service_and_endpoint() {
    let mut gw = Gw::new(TABLES);
    // web's endpoint 10.0.3.1 is other's too: a connection web opened is web's (its circuit
    // breaker counts it, its pool settings apply), so other opens its own.
    let (u1, _) = one_request(&mut gw, GET);
    let (u2, _) = one_request(&mut gw, GET);
    assert_ne!(u1, u2);
    let c = gw.client();
    gw.send(c, b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n");
    let (u, fresh) = gw.upstream();
    assert!(fresh, "not web's pooled connection");
    assert!(u != u1 && u != u2);
    assert_eq!(gw.engine.pooled(), 2);
}

#[test]
fn a_connection_the_server_closed_while_idle_is_never_handed_out() {
    let mut gw = Gw::new(TABLES);
    let (u1, _) = one_request(&mut gw, GET);
    let (u2, _) = one_request(&mut gw, GET);
    gw.net.peer_shutdown(u1);
    gw.settle();
    assert_eq!(gw.net.closed(u1), Some(EngineClose::Close));
    assert_eq!(gw.stats().pool_closes[PoolClose::PeerClosed as usize], 1);
    // A server that sends anything unasked on an idle connection loses it too.
    gw.net
        .peer_send(u2, b"HTTP/1.1 408 Request Timeout\r\n\r\n");
    gw.settle();
    assert!(gw.net.closed(u2).is_some());
    assert_eq!(gw.engine.pooled(), 0);
    let (_, fresh) = one_request(&mut gw, GET);
    assert!(fresh);
    assert_eq!(gw.stats().refused(Refusal::UpstreamReset), 0);
}

#[test]
fn the_pool_closes_what_idles_too_long_or_served_its_requests() {
    let mut gw = Gw::new(TABLES);
    let (u1, _) = one_request(&mut gw, GET);
    gw.advance(Duration::from_secs(59));
    assert_eq!(gw.net.closed(u1), None);
    gw.advance(Duration::from_secs(1));
    assert_eq!(gw.net.closed(u1), Some(EngineClose::Close), "idle 60 s");
    assert_eq!(gw.stats().pool_closes[PoolClose::IdleTimeout as usize], 1);

    // max_requests = 5: the fifth request's connection is not pooled again.
    let mut gw = Gw::new(&TABLES.replace(
        "endpoints = [{ address = \"10.0.3.1:8080\" }, { address = \"10.0.3.2:8080\" }]",
        "endpoints = [{ address = \"10.0.3.1:8080\" }]",
    ));
    let (first, _) = one_request(&mut gw, GET);
    for _ in 0..4 {
        let (u, fresh) = one_request(&mut gw, GET);
        assert_eq!((u, fresh), (first, false));
    }
    assert_eq!(gw.net.closed(first), Some(EngineClose::Close));
    assert_eq!(gw.stats().pool_closes[PoolClose::Retired as usize], 1);
    let (_, fresh) = one_request(&mut gw, GET);
    assert!(fresh);
}

#[test]
fn idle_connections_per_endpoint_are_capped() {
    let mut gw = Gw::new(&TABLES.replace(
        "endpoints = [{ address = \"10.0.3.1:8080\" }, { address = \"10.0.3.2:8080\" }]",
        "endpoints = [{ address = \"10.0.3.1:8080\" }]",
    ));
    // Three clients in flight at once: three connections; two may idle afterwards.
    let clients: Vec<MemConn> = (0..3).map(|_| gw.client()).collect();
    let mut ups = Vec::new();
    for &c in &clients {
        gw.send(c, GET);
        let (u, fresh) = gw.upstream();
        assert!(fresh);
        let _ = gw.take(u);
        ups.push(u);
    }
    for (&c, &u) in clients.iter().zip(&ups) {
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
        gw.net.peer_shutdown(c);
        gw.settle();
    }
    assert_eq!(gw.engine.pooled(), 2);
    assert_eq!(gw.stats().pool_closes[PoolClose::Full as usize], 1);
    assert_eq!(gw.net.closed(ups[2]), Some(EngineClose::Close));
}

#[test]
fn the_circuit_breaker_answers_503_at_once_beyond_its_caps() {
    let mut gw = Gw::new(TABLES);
    // A slow server: three requests wait for their heads (max_pending = 3).
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let c = gw.client();
        gw.send(c, GET);
        let (u, _) = gw.upstream();
        let _ = gw.take(u);
        waiting.push((c, u));
    }
    let c = gw.client();
    gw.send(c, GET);
    let resp = gw.take(c);
    assert_eq!(status(&resp), 503, "{resp}");
    assert!(resp.contains("x-xdpmesh-error: overflow"), "{resp}");
    assert!(gw.net.pending_connects().is_empty(), "no upstream tried");
    let counted = |gw: &Gw, l| gw.engine.policy_stats().get("web", Decision::Overflow(l));
    assert_eq!(counted(&gw, "max_pending"), 1);
    assert_eq!(gw.stats().refused(Refusal::Overflow), 1);
    // A head back frees its place at once.
    let (c0, u0) = waiting.remove(0);
    gw.send(u0, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok");
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.upstream();
    assert!(gw.take(u).starts_with("GET / "));
    // In flight: the first response still streams, three await heads: 4 of 5.
    let c5 = gw.client();
    gw.send(c5, GET);
    let resp = gw.take(c5);
    assert_eq!(status(&resp), 503, "max_pending again: {resp}");
    assert_eq!(counted(&gw, "max_pending"), 2);
    // Everything answered: all places given back.
    gw.send(u0, b"!!!");
    assert_eq!(status(&gw.take(c0)), 200);
    gw.net.peer_shutdown(c0);
    for (c, u) in waiting.into_iter().chain([(c, u)]) {
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
        gw.net.peer_shutdown(c);
    }
    gw.settle();
    for _ in 0..3 {
        one_request(&mut gw, GET);
    }
    assert_eq!(counted(&gw, "max_pending"), 2);
    gw.balanced();
}

#[test]
fn max_connections_caps_open_upstream_connections() {
    let tables = TABLES.replace("max_connections = 4", "max_connections = 2");
    let mut gw = Gw::new(&tables);
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = gw.client();
        gw.send(c, GET);
        let (u, _) = gw.upstream();
        let _ = gw.take(u);
        held.push((c, u));
    }
    let c = gw.client();
    gw.send(c, GET);
    assert_eq!(status(&gw.take(c)), 503);
    assert_eq!(
        gw.engine
            .policy_stats()
            .get("web", Decision::Overflow("max_connections")),
        1
    );
    // Idle in the pool still counts, and serves.
    for (c, u) in held {
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
        gw.net.peer_shutdown(c);
        gw.settle();
    }
    let (_, fresh) = one_request(&mut gw, GET);
    assert!(!fresh);
}

#[test]
fn a_server_closing_its_connection_does_not_close_the_clients() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.upstream();
    let _ = gw.take(u);
    // nginx after its keepalive_requests: a framed response, then its close.
    gw.send(
        u,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
    let resp = gw.take(c);
    assert_eq!(status(&resp), 200);
    assert!(!resp.contains("connection: close"), "{resp}");
    assert!(gw.net.closed(c).is_none(), "the client connection goes on");
    assert!(gw.net.closed(u).is_some(), "that upstream is not reused");
    gw.send(c, GET);
    let (u2, fresh) = gw.upstream();
    assert!(fresh && u2 != u);
    let _ = gw.take(u2);
    // A body that ends at the server's close ends the client connection too.
    gw.send(
        u2,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    );
    gw.net.peer_shutdown(u2);
    gw.settle();
    let resp = gw.take(c);
    assert!(
        resp.contains("connection: close") && resp.ends_with("until the end"),
        "{resp}"
    );
    assert!(gw.net.shut(c), "the gateway finished the client connection");
}
