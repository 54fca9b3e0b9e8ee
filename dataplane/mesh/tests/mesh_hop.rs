//! Gateway A's and gateway B's engines against each other over [`MemNet`] on one virtual
//! clock, mutual TLS 1.3 between them: a client's request crosses A (route, pick, mTLS as the
//! client's identity) and B (SNI, preamble, authorization) to a scripted server. Then the
//! hop's own timeout (a peer that connects and never finishes its handshake) and B's refusal
//! of an identity its tables deny.

mod common;

use common::{publisher, status, Gw, CLIENT, LISTEN};
use control::snapshot::IdentityRt;
use mesh::engine::{Expiry, MeshTls, Outcome, Refusal};
use mesh::memnet::{EngineClose, MemConn};
use mesh::test_support::{ca, leaf, Ca};
use mesh::tls::{client_config, server_config, MeshTrust};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const B_MESH: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 15443);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);

/// TLS configurations straight from the tables' material (no certificate files polled).
struct TablesTls {
    trust: MeshTrust,
}

impl MeshTls for TablesTls {
    fn server(&self, identity: &IdentityRt) -> Option<Arc<rustls::ServerConfig>> {
        server_config(identity, &self.trust).ok()
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

/// Gateways A and B with certificates from one CA; B allows `allowed` to call `web`.
fn gateways(dir: &Path, allowed: &str) -> (Gw, Gw) {
    let root = ca("mesh");
    std::fs::write(dir.join("ca.pem"), root.cert.pem()).unwrap();
    write_identity(dir, "client", &root, "spiffe://t.mesh/sa/client");
    write_identity(dir, "gw-b", &root, "spiffe://t.mesh/gateway/gw-b");
    let trust = || {
        Arc::new(TablesTls {
            trust: MeshTrust::from_der(vec![root.cert.der().clone()]).unwrap(),
        })
    };
    let a_tables = format!(
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
address = "{B_MESH}"
identity = "spiffe://t.mesh/gateway/gw-b"
[[listener]]
name = "web"
bind = "{LISTEN}"
protocol = "http"
[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{{ address = "{SERVER}", via = "gw-b" }}]
"#
    );
    let b_tables = format!(
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
[[service]]
name = "web"
endpoints = [{{ address = "{SERVER}" }}]
[[authorization]]
service = "web"
allow = ["{allowed}"]
"#
    );
    let a = Gw::with(publisher(&a_tables, dir), trust(), A_IP);
    let b = Gw::with(publisher(&b_tables, dir), trust(), B_IP);
    (a, b)
}

/// A's connection to B's mesh port and B's side of it, carried byte for byte.
struct Hop {
    a: MemConn,
    b: MemConn,
    a_shut: bool,
    b_shut: bool,
}

impl Hop {
    /// Accepts A's pending connect to B's mesh listener on B.
    fn open(a: &mut Gw, b: &mut Gw) -> Hop {
        let (ac, to) = a.pending();
        assert_eq!(to, B_MESH);
        a.net.peer_accept(ac);
        let bc = b.net.peer_connect(SocketAddrV4::new(A_IP, 40000), B_MESH);
        Hop {
            a: ac,
            b: bc,
            a_shut: false,
            b_shut: false,
        }
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
            if ab.is_empty() && ba.is_empty() && !ends {
                return;
            }
        }
        panic!("the hop never went quiet");
    }
}

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
