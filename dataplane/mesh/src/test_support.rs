//! Test helpers for mesh TLS (this crate's tests and, with the `test-support` feature, the
//! data plane's): a CA and SPIFFE leaves made with rcgen, identities from them, and an
//! in-memory handshake between a client and a server configuration.

use crate::tls::{sni_for_service, MeshTrust};
use control::snapshot::IdentityRt;
use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::ServerConnection;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, Error, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;

pub const GW_A: &str = "spiffe://corp.mesh/gateway/gw-a";
pub const GW_B: &str = "spiffe://corp.mesh/gateway/gw-b";

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A self-signed CA valid 2020-01-01 to 2120-01-01.
pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2120, 1, 1);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

pub struct Leaf {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A leaf signed by `ca` with `spiffe` as its URI SAN, valid `from` to `to` (y, m, d).
pub fn leaf_dated(ca: &Ca, spiffe: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names
        .push(SanType::URI(spiffe.try_into().unwrap()));
    p.not_before = date_time_ymd(from.0, from.1, from.2);
    p.not_after = date_time_ymd(to.0, to.1, to.2);
    Leaf {
        cert: p.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        key,
    }
}

/// A leaf valid 2020-01-01 to 2100-01-01.
pub fn leaf(ca: &Ca, spiffe: &str) -> Leaf {
    leaf_dated(ca, spiffe, (2020, 1, 1), (2100, 1, 1))
}

/// An identity carrying `l` as its material; its file paths do not exist.
pub fn identity(id: &str, l: &Leaf) -> IdentityRt {
    IdentityRt {
        id: id.into(),
        sources: Vec::new(),
        cert_path: PathBuf::from("/nonexistent/cert.pem"),
        key_path: PathBuf::from("/nonexistent/key.pem"),
        cert_chain_der: vec![l.cert.der().to_vec()],
        key_der: l.key.serialize_der(),
    }
}

pub fn trust(cas: &[&Ca]) -> MeshTrust {
    MeshTrust::from_der(cas.iter().map(|c| c.cert.der().clone()).collect()).unwrap()
}

/// Move one side's pending TLS bytes to the other; record the receiver's first error.
pub fn transfer<A, B>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
    to_err: &mut Option<Error>,
) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if buf.is_empty() || to_err.is_some() {
        return false;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        if to.read_tls(&mut rd).is_err() {
            break;
        }
        if let Err(e) = to.process_new_packets() {
            *to_err = Some(e);
            break;
        }
    }
    true
}

pub struct Run {
    pub c: ClientConnection,
    pub s: ServerConnection,
    pub client_err: Option<Error>,
    pub server_err: Option<Error>,
}

impl Run {
    pub fn pump(&mut self) {
        for _ in 0..32 {
            let a = transfer(&mut self.c, &mut self.s, &mut self.server_err);
            let b = transfer(&mut self.s, &mut self.c, &mut self.client_err);
            if !a && !b {
                return;
            }
        }
        panic!("handshake did not settle");
    }

    pub fn ok(&self) -> bool {
        self.client_err.is_none()
            && self.server_err.is_none()
            && !self.c.is_handshaking()
            && !self.s.is_handshaking()
    }
}

/// A client and a server connection for `service`, handshaken in memory.
pub fn run(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, service: &str) -> Run {
    let c = ClientConnection::new(client.clone(), sni_for_service(service).unwrap()).unwrap();
    let s = ServerConnection::new(server.clone()).unwrap();
    let mut r = Run {
        c,
        s,
        client_err: None,
        server_err: None,
    };
    r.pump();
    r
}
