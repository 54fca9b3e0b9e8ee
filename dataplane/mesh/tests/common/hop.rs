//! Gateways A and B on one virtual clock, mutual TLS 1.3 between them (certificates from
//! one CA written to a directory), and the hop between them carried byte for byte.

use super::{publisher, Gw, CLIENT, LISTEN};
use control::snapshot::IdentityRt;
use mesh::engine::MeshTls;
use mesh::memnet::{EngineClose, MemConn};
use mesh::test_support::{ca, leaf, Ca};
use mesh::tls::{client_config, server_config, MeshTrust};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;

pub const B_MESH: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 15443);
pub const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080);
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);

/// TLS configurations straight from the tables' material (no certificate files polled).
pub struct TablesTls {
    pub trust: MeshTrust,
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

pub fn write_identity(dir: &Path, name: &str, ca: &Ca, id: &str) {
    let l = leaf(ca, id);
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("cert.pem"), l.cert.pem()).unwrap();
    std::fs::write(dir.join(name).join("key.pem"), l.key.serialize_pem()).unwrap();
}

/// Gateways A and B with certificates from one CA; B allows `allowed` to call `web`.
pub fn gateways(dir: &Path, allowed: &str) -> (Gw, Gw) {
    gateways_with(
        dir,
        &format!("[[authorization]]\nservice = \"web\"\nallow = [\"{allowed}\"]\n"),
    )
}

/// A's TCP listener for `web` (besides its HTTP one).
pub const A_TCP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 5000);

/// Gateways A and B with certificates from one CA and `authz` in B's tables.
pub fn gateways_with(dir: &Path, authz: &str) -> (Gw, Gw) {
    gateways_custom(dir, authz, |a, b| (a, b))
}

/// As [`gateways_with`], with A's and B's tables changed by `fix` first.
pub fn gateways_custom(
    dir: &Path,
    authz: &str,
    fix: impl Fn(String, String) -> (String, String),
) -> (Gw, Gw) {
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
[[listener]]
name = "web-tcp"
bind = "{A_TCP}"
protocol = "tcp"
service = "web"
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
{authz}
"#
    );
    let (a_tables, b_tables) = fix(a_tables, b_tables);
    let a = Gw::with(publisher(&a_tables, dir), trust(), A_IP);
    let b = Gw::seeded(publisher(&b_tables, dir), trust(), B_IP, [8; 32]);
    (a, b)
}

/// A's connection to B's mesh port and B's side of it, carried byte for byte.
pub struct Hop {
    pub a: MemConn,
    pub b: MemConn,
    pub a_shut: bool,
    pub b_shut: bool,
    pub a_reset: bool,
    pub b_reset: bool,
}

impl Hop {
    /// Accepts A's pending connect to B's mesh listener on B.
    pub fn open(a: &mut Gw, b: &mut Gw) -> Hop {
        let (ac, to) = a.pending();
        assert_eq!(to, B_MESH);
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

    /// Moves bytes (and ends of stream) both ways until neither side has more.
    pub fn carry(&mut self, a: &mut Gw, b: &mut Gw) {
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
            // A reset on one side reaches the other.
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

/// One request from a new client through A and B; returns B's connection to the server if
/// B opened one (accepted, the request taken) and what the client got when it did not.
pub fn through(a: &mut Gw, b: &mut Gw, req: &[u8]) -> (Option<(MemConn, String)>, MemConn, Hop) {
    let mut hop = None;
    let (server, c) = through_on(a, b, &mut hop, req);
    (server, c, hop.expect("a hop"))
}

/// As [`through`], on the hop A keeps in its pool from an earlier call when it takes it
/// (`hop`), else on the one it opens.
pub fn through_on(
    a: &mut Gw,
    b: &mut Gw,
    hop: &mut Option<Hop>,
    req: &[u8],
) -> (Option<(MemConn, String)>, MemConn) {
    let c = a.net.peer_connect(CLIENT, LISTEN);
    a.settle();
    a.send(c, req);
    if !a.net.pending_connects().is_empty() {
        *hop = Some(Hop::open(a, b));
    }
    let hop = hop.as_mut().expect("a pooled hop, or a new one");
    hop.carry(a, b);
    let server = b
        .net
        .outgoing_with_data()
        .first()
        .map(|&s| (s, String::from_utf8(b.net.peer_take(s)).unwrap()))
        .or_else(|| {
            b.net.pending_connects().first().map(|&(s, _)| {
                b.net.peer_accept(s);
                hop.carry(a, b);
                (s, String::from_utf8(b.net.peer_take(s)).unwrap())
            })
        });
    (server, c)
}
