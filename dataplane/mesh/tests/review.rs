//! Hostile review of the endpoint-health changes (pool, circuit breaker, outlier detection,
//! health checks, mirrors): each test proved one bug on the virtual clock, and guards its fix
//! now. (The comment above each test says what the bug was.)

mod common;

use common::{publisher, status, Gw, CLIENT, LISTEN};
use control::snapshot::IdentityRt;
use mesh::engine::{MeshTls, PoolClose, Refusal};
use mesh::memnet::{EngineClose, MemConn};
use mesh::test_support::{ca, leaf, Ca};
use mesh::tls::{client_config, server_config, MeshTrust};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }]
pool = { max_requests = 100000 }
"#;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n";

/// One request on a new client connection that then closes; the upstream it used.
fn one_request(gw: &mut Gw, req: &[u8]) -> (MemConn, bool) {
    let c = gw.client();
    gw.send(c, req);
    let (u, fresh) = gw.upstream();
    let _ = gw.take(u);
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    gw.net.peer_shutdown(c);
    gw.settle();
    (u, fresh)
}

// Was a bug: `Pool::put` pushes the new connection's deadline, then — when stale entries have piled
// up (> 2 × idle + 1024) — rebuilds the heap from `slots` *before* the new connection is
// stored in its slot. The connection parked at that moment has no timer: `idle_timeout` and
// `max_lifetime` never close it (the pool's `poll_timeout` no longer names it). With 1,024
// requests (no rebuild) this test passes.
#[test]
fn the_connection_parked_at_a_timer_rebuild_still_idles_out() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    let mut up = None;
    // Each request takes the one pooled connection and parks it again: one heap entry per
    // park, the old one stale. The 1025th park rebuilds the heap.
    for _ in 0..1025 {
        gw.send(c, GET);
        let (u, _) = gw.upstream();
        let _ = gw.take(u);
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
        up = Some(u);
    }
    let u = up.unwrap();
    assert_eq!(gw.stats().upstream_connects, 1);
    assert_eq!(gw.engine.pooled(), 1);
    // idle_timeout is 60 s.
    gw.advance(Duration::from_secs(61));
    assert_eq!(
        gw.net.closed(u),
        Some(EngineClose::Close),
        "idle for 61 s and still open"
    );
    assert_eq!(gw.stats().pool_closes[PoolClose::IdleTimeout as usize], 1);
}

// Was a bug: `end_attempt` takes "no response byte" from `s.u_in.is_empty()`, but an interim
// response (100 Continue, 103 Early Hints) is parsed, relayed to the client and drained from
// `u_in` while the attempt stays in `RespPhase::Head`. A reused connection that the server
// resets after its `100 Continue` (so after reading the request, body included) is taken for
// a stale one and the POST goes again on a fresh connection: the server may run it twice.
#[test]
fn a_post_is_not_replayed_after_an_interim_response() {
    let mut gw = Gw::new(TABLES);
    let (u, _) = one_request(&mut gw, GET);
    assert_eq!(gw.engine.pooled(), 1);
    let c = gw.client();
    gw.send(
        c,
        b"POST /pay HTTP/1.1\r\nHost: web.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    let (u2, fresh) = gw.upstream();
    assert_eq!((u2, fresh), (u, false), "the pooled connection carries it");
    assert!(gw.take(u).starts_with("POST /pay "));
    // The server asks for the body, gets it, then dies before its final response.
    gw.send(u, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(gw.take(c).starts_with("HTTP/1.1 100 Continue"));
    gw.send(c, b"hi");
    assert_eq!(gw.take(u), "hi", "the server has the whole POST");
    gw.net.peer_reset(u);
    gw.settle();
    assert!(
        gw.net.pending_connects().is_empty(),
        "the POST was sent again on a fresh connection"
    );
    assert_eq!(status(&gw.take(c)), 502);
}

// ---------------------------------------------------------------------------------------
// Gateways A and B over mutual TLS (as in tests/mesh_hop.rs).

const B_MESH: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 15443);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);

struct TablesTls {
    trust: MeshTrust,
}

impl MeshTls for TablesTls {
    fn server(&self, identity: &IdentityRt) -> Option<Arc<rustls::ServerConfig>> {
        server_config(identity, &self.trust).ok()
    }
    fn ingress(&self, identity: &IdentityRt) -> Option<Arc<rustls::ServerConfig>> {
        mesh::tls::ingress_server_config(identity).ok()
    }
    fn client(&self, identity: &IdentityRt, peer: &str) -> Option<Arc<rustls::ClientConfig>> {
        client_config(identity, &self.trust, peer).ok()
    }
}

fn write_identity(dir: &Path, name: &str, ca: &Ca, id: &str) {
    let l = leaf(ca, id);
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("cert.pem"), l.cert.pem()).unwrap();
    std::fs::write(dir.join(name).join("key.pem"), l.key.serialize_pem()).unwrap();
}

fn a_tables(peer_addr: SocketAddrV4, extra_peer: &str, service: &str) -> String {
    format!(
        r#"
[trust]
roots = ["ca.pem"]
[[identity]]
id = "spiffe://t.mesh/sa/client"
sources = ["10.0.1.0/24"]
cert = "client/cert.pem"
key = "client/key.pem"
[[peer]]
name = "gw-b"
address = "{peer_addr}"
identity = "spiffe://t.mesh/gateway/gw-b"
{extra_peer}
[[listener]]
name = "web"
bind = "{LISTEN}"
protocol = "http"
{service}
"#
    )
}

fn b_tables(service: &str) -> String {
    format!(
        r#"
[trust]
roots = ["ca.pem"]
[[identity]]
id = "spiffe://t.mesh/gateway/gw-b"
cert = "gw-b/cert.pem"
key = "gw-b/key.pem"
[[listener]]
name = "mesh"
bind = "{B_MESH}"
protocol = "mesh"
identity = "spiffe://t.mesh/gateway/gw-b"
timeouts = {{ handshake = "3s" }}
{service}
[[authorization]]
service = "web"
allow = ["spiffe://t.mesh/sa/client"]
"#
    )
}

/// The certificates in `dir` and a TLS source over them.
fn mesh_tls(dir: &Path) -> impl Fn() -> Arc<TablesTls> {
    let root = ca("mesh");
    std::fs::write(dir.join("ca.pem"), root.cert.pem()).unwrap();
    write_identity(dir, "client", &root, "spiffe://t.mesh/sa/client");
    write_identity(dir, "gw-b", &root, "spiffe://t.mesh/gateway/gw-b");
    let der = root.cert.der().clone();
    move || {
        Arc::new(TablesTls {
            trust: MeshTrust::from_der(vec![der.clone()]).unwrap(),
        })
    }
}

/// A (its publisher, to reload it) and B, from the tables given.
fn gateways(dir: &Path, a: &str, b: &str) -> (Gw, Gw, Arc<control::Publisher>) {
    let tls = mesh_tls(dir);
    let pa = publisher(a, dir);
    let gw_a = Gw::with(pa.clone(), tls(), A_IP);
    let gw_b = Gw::with(publisher(b, dir), tls(), B_IP);
    (gw_a, gw_b, pa)
}

fn reload(p: &control::Publisher, tables: &str, dir: &Path) {
    let src = control::Source::new("t.toml", tables.to_string());
    let compiled =
        control::compile(&src, &control::Context::new(dir)).unwrap_or_else(|e| panic!("{e}"));
    p.publish(compiled.snapshot, Arc::from(tables), "test");
}

/// A's connection to B's mesh port and B's side of it, carried byte for byte.
struct Hop {
    a: MemConn,
    b: MemConn,
    a_shut: bool,
    b_shut: bool,
    a_reset: bool,
    b_reset: bool,
}

impl Hop {
    /// Accepts A's pending connect `ac` on B.
    fn open_conn(a: &mut Gw, b: &mut Gw, ac: MemConn) -> Hop {
        a.net.peer_accept(ac);
        let bc = b.net.peer_connect(SocketAddrV4::new(A_IP, 40000), B_MESH);
        Hop {
            a: ac,
            b: bc,
            a_shut: false,
            b_shut: false,
            a_reset: false,
            b_reset: false,
        }
    }

    fn open(a: &mut Gw, b: &mut Gw) -> Hop {
        let (ac, to) = a.pending();
        assert_eq!(to, B_MESH);
        Hop::open_conn(a, b, ac)
    }

    /// Moves bytes (and ends of stream) both ways until neither side has more.
    fn carry(&mut self, a: &mut Gw, b: &mut Gw) {
        for _ in 0..200 {
            a.settle();
            b.settle();
            let ab = a.net.peer_take(self.a);
            let ba = b.net.peer_take(self.b);
            if !ab.is_empty() {
                b.net.peer_send(self.b, &ab);
            }
            if !ba.is_empty() {
                a.net.peer_send(self.a, &ba);
            }
            let mut ends = false;
            if a.net.shut(self.a) && !self.a_shut {
                self.a_shut = true;
                b.net.peer_shutdown(self.b);
                ends = true;
            }
            if b.net.shut(self.b) && !self.b_shut {
                self.b_shut = true;
                a.net.peer_shutdown(self.a);
                ends = true;
            }
            if b.net.closed(self.b) == Some(EngineClose::Abort) && !self.b_reset {
                self.b_reset = true;
                a.net.peer_reset(self.a);
                ends = true;
            }
            if a.net.closed(self.a) == Some(EngineClose::Abort) && !self.a_reset {
                self.a_reset = true;
                b.net.peer_reset(self.b);
                ends = true;
            }
            if ab.is_empty() && ba.is_empty() && !ends {
                return;
            }
        }
        panic!("the hop never went quiet");
    }
}

fn one_endpoint_via_b() -> String {
    format!(
        "[[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nendpoints = [{{ address = \"{SERVER}\", via = \"gw-b\" }}]\n"
    )
}

fn one_local_endpoint() -> String {
    format!("[[service]]\nname = \"web\"\nendpoints = [{{ address = \"{SERVER}\" }}]\n")
}

// Was a bug: `dispatch` keeps a replay copy for every request on a hop (`reuse || hop`), and
// `end_attempt` replays it on any reset before the response (`stale`), whether or not the
// hop was a reused one. A POST on a *fresh* hop that B forwarded to its server, after which
// the hop dies (B crashed, a middlebox reset), is sent again: the server may run it twice.
// Issue #15 says POST failures reach the client unretried (except connect failures), and
// issue #16 allows a replay only for a *reused* connection.
#[test]
fn a_post_on_a_fresh_hop_is_not_replayed_when_the_hop_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _) = gateways(
        dir.path(),
        &a_tables(B_MESH, "", &one_endpoint_via_b()),
        &b_tables(&one_local_endpoint()),
    );
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(
        c,
        b"POST /pay HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\n\r\nhi",
    );
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    let (s, _) = b.pending();
    b.net.peer_accept(s);
    hop.carry(&mut a, &mut b);
    let got = String::from_utf8(b.net.peer_take(s)).unwrap();
    assert!(
        got.starts_with("POST /pay ") && got.ends_with("hi"),
        "{got}"
    );
    assert_eq!(a.stats().upstream_reused, 0, "a fresh hop");
    // The hop is reset before any response byte (B went away after forwarding the POST).
    a.net.peer_reset(hop.a);
    a.settle();
    assert!(
        a.net.pending_connects().is_empty(),
        "the POST goes to B again on a new hop"
    );
    assert_eq!(status(&a.take(c)), 502);
}

const E0: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 10), 8080);
const E1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 11), 8080);
const E2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 12), 8080);

/// Carries every hop A opens and answers B's connects to the servers (`bad` ones refused),
/// the good servers answering 200, until the client `c` has its answer; returns it and how
/// many times B refused.
fn drive(a: &mut Gw, b: &mut Gw, hops: &mut Vec<Hop>, c: MemConn, bad: &[SocketAddrV4]) -> String {
    let mut resp = String::new();
    for _ in 0..20 {
        for (h, to) in a.net.pending_connects() {
            assert_eq!(to, B_MESH);
            hops.push(Hop::open_conn(a, b, h));
        }
        for hop in hops.iter_mut() {
            hop.carry(a, b);
        }
        for (s, to) in b.net.pending_connects() {
            if bad.contains(&to) {
                b.net.peer_reset(s);
            } else {
                b.net.peer_accept(s);
            }
        }
        for hop in hops.iter_mut() {
            hop.carry(a, b);
        }
        let servers: Vec<MemConn> = [E0, E1, E2]
            .iter()
            .flat_map(|e| b.net.connects_to(*e))
            .collect();
        for s in servers {
            if !b.net.peer_take(s).is_empty() {
                b.net.peer_send(s, OK);
            }
        }
        for hop in hops.iter_mut() {
            hop.carry(a, b);
        }
        resp.push_str(&a.take(c));
        if !resp.is_empty() {
            break;
        }
    }
    resp
}

fn three_endpoints(via: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nendpoints = [{{ address = \"{E0}\"{via} }}, {{ address = \"{E1}\"{via} }}, {{ address = \"{E2}\"{via} }}]\n"
    )
}

// Was a bug: a peer gateway's refusal (503 `connect_failed` / `endpoint_unhealthy`) is sent to
// another endpoint only while the attempt has a replay copy, and `retry()` builds the next
// attempt with `..Attempt::first(..)`, i.e. `replay: None`. So the *second* attempt's refusal
// goes to the client as a 503 although `MAX_CONNECT_ATTEMPTS` (3) allows a third attempt and
// E2 is healthy. (Same after a connect-failure retry: attempt 2 of a hop never has a copy.)
// Docs (control/README.md "Endpoint health"): A "sends the request to another one".
#[test]
fn a_second_peer_refusal_goes_to_a_third_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _) = gateways(
        dir.path(),
        &a_tables(B_MESH, "", &three_endpoints(", via = \"gw-b\"")),
        &b_tables(&three_endpoints("")),
    );
    let mut hops = Vec::new();
    // B cannot reach E0 and E1 (503 connect_failed after its own three connects); E2 works.
    for i in 0..4 {
        let c = a.net.peer_connect(CLIENT, LISTEN);
        a.settle();
        a.send(c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let resp = drive(&mut a, &mut b, &mut hops, c, &[E0, E1]);
        assert_eq!(status(&resp), 200, "request {i}: {resp}");
        // Past PEER_HOLD: A tries the held endpoints again.
        a.advance(Duration::from_millis(1100));
        b.advance(Duration::from_millis(1100));
    }
}

// Was a bug: a hop's `PoolKey` is (endpoint, service, client identity): it does not name the peer
// gateway (its address, its identity) the hop goes to. After a reload that puts the
// endpoint behind another gateway (or moves `gw-b` to a new address, or changes the identity
// it must present), requests keep going over pooled hops to the old gateway — for as long
// as they are reused (up to `max_lifetime`, 10 min by default, or `max_requests`).
#[test]
fn a_reload_that_moves_the_peer_does_not_reuse_hops_to_the_old_one() {
    const NEW_MESH: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 15443);
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, pa) = gateways(
        dir.path(),
        &a_tables(B_MESH, "", &one_endpoint_via_b()),
        &b_tables(&one_local_endpoint()),
    );
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, GET);
    let mut hop = Hop::open(&mut a, &mut b);
    hop.carry(&mut a, &mut b);
    let (s, _) = b.pending();
    b.net.peer_accept(s);
    hop.carry(&mut a, &mut b);
    let _ = b.net.peer_take(s);
    b.net.peer_send(s, OK);
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);
    assert_eq!(a.engine.pooled(), 1, "the hop idles in A's pool");
    // gw-b moves: the tables now say it is at NEW_MESH.
    reload(
        &pa,
        &a_tables(NEW_MESH, "", &one_endpoint_via_b()),
        dir.path(),
    );
    a.send(c, GET);
    let to_old_gateway = a.net.outgoing_with_data().contains(&hop.a);
    let connects: Vec<SocketAddrV4> = a.net.pending_connects().iter().map(|p| p.1).collect();
    assert!(
        !to_old_gateway && connects == [NEW_MESH],
        "the request went over the old hop to {B_MESH} (new connects: {connects:?})"
    );
}

/// `web` and `other` share the address 10.0.3.1:8080; `web` turns pooling off and allows
/// one connection.
const SHARED: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }]
pool = { max_idle_per_endpoint = 0 }
circuit_breaker = { max_connections = 1 }

[[service]]
name = "other"
hosts = ["other.test"]
endpoints = [{ address = "10.0.3.1:8080" }]
"#;

const GET_OTHER: &[u8] = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";

// Was a bug: a plain connection's `PoolKey` is its address alone, and `take_pooled` judges it by
// the pool settings of the service that *opened* it (`meta.cfg`). `web` says
// `max_idle_per_endpoint = 0` ("0: no pooling", control/README.md), yet its requests ride
// connections `other` parked. (See the next test for the circuit breaker.)
#[test]
fn a_service_with_pooling_off_never_reuses_a_connection() {
    let mut gw = Gw::new(SHARED);
    let (u, fresh) = one_request(&mut gw, GET_OTHER);
    assert!(fresh);
    assert_eq!(gw.engine.pooled(), 1, "other pools its connection");
    let (u2, fresh) = one_request(&mut gw, GET);
    assert!(
        fresh && u2 != u,
        "web reused {u}, a connection other parked"
    );
}

// Was a bug: the same sharing breaks `circuit_breaker.max_connections`: the token a connection
// holds stays with the service that opened it, so `web` (max_connections = 1) runs two
// requests at once over two connections `other` opened, and its own count stays 0.
#[test]
fn max_connections_caps_a_service_using_another_services_connections() {
    let mut gw = Gw::new(&SHARED.replace("pool = { max_idle_per_endpoint = 0 }\n", ""));
    // Two `other` requests at once: two connections, both parked afterwards.
    let cs: Vec<MemConn> = (0..2).map(|_| gw.client()).collect();
    let mut ups = Vec::new();
    for &c in &cs {
        gw.send(c, GET_OTHER);
        let (u, _) = gw.upstream();
        let _ = gw.take(u);
        ups.push(u);
    }
    for (&c, &u) in cs.iter().zip(&ups) {
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
        gw.net.peer_shutdown(c);
        gw.settle();
    }
    assert_eq!(gw.engine.pooled(), 2);
    // Two `web` requests at once: the second must be over web's cap of one connection.
    let w1 = gw.client();
    gw.send(w1, GET);
    assert!(gw.sent_upstream());
    let (u1, _) = gw.upstream();
    let _ = gw.take(u1);
    let w2 = gw.client();
    gw.send(w2, GET);
    let resp = gw.take(w2);
    assert_eq!(
        status(&resp),
        503,
        "web's second request went out on a second connection (max_connections = 1)"
    );
}

const TWO: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }, { address = "10.0.3.2:8080" }]
circuit_breaker = { max_connections = 2 }
outlier = { consecutive_failures = 1 }
"#;

// Was a bug: idle pooled connections hold `max_connections` tokens, and nothing evicts them when a
// request needs a connection to another endpoint. Once an endpoint is ejected, its idle
// connections are never taken again, yet for `idle_timeout` (60 s) they keep the service
// under its cap: requests to the healthy endpoint get 503 `overflow` while nothing but one
// request is in flight. (Same after a reload adds an endpoint, or with many endpoints ×
// `max_idle_per_endpoint` above `max_connections`.)
#[test]
fn idle_connections_to_an_ejected_endpoint_do_not_starve_the_others() {
    const BAD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080);
    let mut gw = Gw::new(TWO);
    // Two requests at once: one connection per endpoint; BAD answers 500 and is ejected.
    let cs: Vec<MemConn> = (0..2).map(|_| gw.client()).collect();
    let mut ups = Vec::new();
    for &c in &cs {
        gw.send(c, GET);
        let (u, fresh) = gw.upstream();
        assert!(fresh);
        let _ = gw.take(u);
        ups.push(u);
    }
    for (&c, &u) in cs.iter().zip(&ups) {
        let bad = gw.net.remote(u) == Some(BAD);
        gw.send(
            u,
            if bad {
                b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
            } else {
                OK
            },
        );
        let _ = gw.take(c);
        gw.net.peer_shutdown(c);
        gw.settle();
    }
    assert_eq!(gw.engine.pooled(), 2, "both connections idle in the pool");
    // Two requests at once to the good endpoint (BAD is ejected): one takes its pooled
    // connection, the other needs a new one.
    let c3 = gw.client();
    gw.send(c3, GET);
    let (u3, fresh) = gw.upstream();
    assert!(!fresh && gw.net.remote(u3) != Some(BAD));
    let c4 = gw.client();
    gw.send(c4, GET);
    let resp = gw.take(c4);
    assert!(
        resp.is_empty() && gw.sent_upstream(),
        "the second request was refused while one request was in flight: {resp}"
    );
}

// Docs vs code: control/README.md says `[[peer]] min_idle` hops are "at most 256 per worker";
// `warm_up` spends `MAX_WARM` (256) per once-a-second round, so with more service endpoints
// behind a peer (× client identities) the worker opens 256 more every second, up to all of
// them (here 300; the pool's own cap is 4,096).
#[test]
fn warm_hops_stay_within_256_per_worker() {
    let dir = tempfile::tempdir().unwrap();
    let eps: Vec<String> = (0..300)
        .map(|i| format!("{{ address = \"10.0.3.2:{}\", via = \"gw-b\" }}", 9000 + i))
        .collect();
    let service = format!(
        "[[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nendpoints = [{}]\n",
        eps.join(", ")
    );
    let tls = mesh_tls(dir.path());
    let pa = publisher(&a_tables(B_MESH, "min_idle = 1", &service), dir.path());
    let mut a = Gw::with(pa, tls(), A_IP);
    a.engine
        .set_health(mesh::health::HealthBoard::new(), 0, false);
    a.settle();
    assert_eq!(a.net.pending_connects().len(), mesh::engine::MAX_WARM);
    // B is slow to accept; a second later the warm-up runs again.
    a.advance(Duration::from_secs(1));
    let open = a.net.pending_connects().len();
    assert!(
        open <= mesh::engine::MAX_WARM,
        "{open} warm hops on one worker"
    );
}

/// One round of traffic between A and B: opens what A connects, carries every hop, lets
/// `connects` decide each of B's pending server connects (`Some(true)` accept, `Some(false)`
/// refuse, `None` leave it pending) and `answer` what each server that got a request says.
/// Returns the servers that got a request this round.
fn round(
    a: &mut Gw,
    b: &mut Gw,
    hops: &mut Vec<Hop>,
    connects: &mut dyn FnMut(MemConn, SocketAddrV4) -> Option<bool>,
    answer: &mut dyn FnMut(SocketAddrV4) -> Option<&'static [u8]>,
) -> Vec<SocketAddrV4> {
    let mut got = Vec::new();
    for _ in 0..10 {
        for (h, to) in a.net.pending_connects() {
            assert_eq!(to, B_MESH);
            hops.push(Hop::open_conn(a, b, h));
        }
        for hop in hops.iter_mut() {
            hop.carry(a, b);
        }
        let mut moved = false;
        for (s, to) in b.net.pending_connects() {
            match connects(s, to) {
                Some(true) => b.net.peer_accept(s),
                Some(false) => b.net.peer_reset(s),
                None => continue,
            }
            moved = true;
        }
        for hop in hops.iter_mut() {
            hop.carry(a, b);
        }
        for s in b.net.outgoing_with_data() {
            let to = b.net.remote(s).unwrap();
            if let Some(resp) = answer(to) {
                let _ = b.net.peer_take(s);
                b.net.peer_send(s, resp);
                got.push(to);
                moved = true;
            }
        }
        for hop in hops.iter_mut() {
            hop.carry(a, b);
        }
        if !moved {
            break;
        }
    }
    got
}

fn get(a: &mut Gw) -> MemConn {
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, GET);
    c
}

// Was a bug: a peer gateway's refusal holds the endpoint out with `det.set_healthy(ep, false)` and
// the hold's end calls `set_healthy(ep, true)`, which the detector takes for a health-check
// recovery — and "a recovery ends an ejection". An endpoint ejected by outlier detection for
// 30 s that also gets one peer refusal (a request in flight to it when B found it down) is
// back after 1 s.
#[test]
fn a_peer_hold_does_not_end_an_outlier_ejection() {
    let dir = tempfile::tempdir().unwrap();
    let two = |via: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nendpoints = [{{ address = \"{E0}\"{via} }}, {{ address = \"{E1}\"{via} }}]\n{extra}"
        )
    };
    let (mut a, mut b, _) = gateways(
        dir.path(),
        &a_tables(
            B_MESH,
            "",
            &two(
                ", via = \"gw-b\"",
                "outlier = { consecutive_failures = 1 }\n",
            ),
        ),
        &b_tables(&two("", "")),
    );
    let mut hops = Vec::new();
    let ok: &'static [u8] = OK;
    let err: &'static [u8] = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
    // c1 goes to X; B's connect to X hangs for now.
    let c1 = get(&mut a);
    let mut first = None;
    round(
        &mut a,
        &mut b,
        &mut hops,
        &mut |s, to| {
            first = Some((s, to));
            None
        },
        &mut |_| None,
    );
    let (s1, x) = first.expect("B connects for c1");
    let y = if x == E0 { E1 } else { E0 };
    // c2 goes to Y (round robin) and completes; c3 goes to X and gets a 500: X is ejected.
    for (want, resp, st) in [(y, ok, 200), (x, err, 500)] {
        let c = get(&mut a);
        let got = round(
            &mut a,
            &mut b,
            &mut hops,
            &mut |s, _| (s != s1).then_some(true),
            &mut |_| Some(resp),
        );
        assert_eq!(got, [want]);
        assert_eq!(status(&a.take(c)), st);
    }
    // B cannot reach X for c1: 503 connect_failed; A holds X for 1 s and sends c1 to Y.
    let mut refused = 0;
    round(
        &mut a,
        &mut b,
        &mut hops,
        &mut |_, to| {
            if to == x {
                refused += 1;
                Some(false)
            } else {
                Some(true)
            }
        },
        &mut |to| (to == y).then_some(ok),
    );
    assert!(refused >= 1);
    assert_eq!(status(&a.take(c1)), 200);
    assert_eq!(b.stats().refused(Refusal::ConnectFailed), 1);
    // The hold is over after 1 s; the ejection (30 s) is not.
    a.advance(Duration::from_millis(1500));
    b.advance(Duration::from_millis(1500));
    for i in 0..4 {
        let c = get(&mut a);
        let got = round(
            &mut a,
            &mut b,
            &mut hops,
            &mut |_, _| Some(true),
            &mut |_| Some(ok),
        );
        assert_eq!(status(&a.take(c)), 200);
        assert_eq!(got, [y], "request {i} went to the ejected endpoint {x}");
    }
}

// Bug (low): at the end of a response, `park_upstream` refuses a connection with unread
// bytes (`u_in` not empty) — but then the session keeps it (`up_reusable` stays true) and
// `dispatch` reuses it for the client's next request without the pool's check. A server that
// sends a second, unasked-for response after the first has it served as the answer to the
// client's next request (response desync), while the pool's rule is that anything unasked
// for closes the connection.
#[test]
fn bytes_after_a_whole_response_end_that_connection() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.upstream();
    let _ = gw.take(u);
    gw.send(
        u,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    );
    assert!(gw.take(c).ends_with("ok"));
    gw.send(c, b"GET /second HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let resp = gw.take(c);
    assert!(
        !resp.ends_with("EVIL"),
        "the second request got the server's unasked-for response"
    );
    assert!(gw.net.closed(u).is_some(), "the desynced connection goes");
}

// Bug (low): the warm-up takes its connections' tokens through `Engine::hold`, which counts
// an overflow (`xdpmesh_service_overflow_total{limit="max_connections"}`, documented as
// requests refused with 503) whenever the cap is reached. A service at its cap counts one
// more "refused request" per warm key every second with no request at all.
#[test]
fn the_warm_up_counts_no_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let service = format!(
        "{}circuit_breaker = {{ max_connections = 1 }}\n",
        one_endpoint_via_b()
    );
    let tls = mesh_tls(dir.path());
    let pa = publisher(&a_tables(B_MESH, "min_idle = 2", &service), dir.path());
    let mut a = Gw::with(pa, tls(), A_IP);
    a.engine
        .set_health(mesh::health::HealthBoard::new(), 0, false);
    a.settle();
    assert_eq!(
        a.net.pending_connects().len(),
        1,
        "one warm hop within the cap"
    );
    a.advance(Duration::from_secs(5));
    let overflows = a
        .engine
        .policy_stats()
        .get("web", mesh::policy::Decision::Overflow("max_connections"));
    assert_eq!(overflows, 0, "no request was refused");
    assert_eq!(a.stats().refused(Refusal::Overflow), 0);
}
