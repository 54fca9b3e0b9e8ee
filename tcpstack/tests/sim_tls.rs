//! TLS 1.3 with client certificates (mutual TLS) over two tcpstack connections on a lossy
//! simulated link, with certificates from a CA made here.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use std::time::Duration;
use tcpstack::tls::{TlsError, TlsSession};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

fn leaf(
    ca: &Ca,
    dns: &str,
    spiffe: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![dns.to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::URI(spiffe.try_into().unwrap()));
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn configs(server_ca: &Ca, client_ca: &Ca, trusted: &Ca) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.cert.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .unwrap();
    let (scert, skey) = leaf(server_ca, "reviews.mesh", "spiffe://corp.mesh/gateway/gw-b");
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(scert, skey)
        .unwrap();
    let (ccert, ckey) = leaf(client_ca, "client.mesh", "spiffe://corp.mesh/sa/checkout");
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(ccert, ckey)
        .unwrap();
    (Arc::new(server), Arc::new(client))
}

#[test]
fn mutual_tls_handshake_and_data_over_a_lossy_link() {
    let root = ca("mesh root");
    let (server_cfg, client_cfg) = configs(&root, &root, &root);
    let mut sim = Sim::new(21, LinkConfig::lossy(0.03));
    let (a, b) = establish(&mut sim, 15443);
    let client =
        rustls::ClientConnection::new(client_cfg, ServerName::try_from("reviews.mesh").unwrap())
            .unwrap();
    let server = rustls::ServerConnection::new(server_cfg).unwrap();
    let mut tc = TlsSession::new(a, client);
    let mut ts = TlsSession::new(b, server);

    let total = 2 << 20;
    let mut tx = Pattern::new(5);
    let mut rx = Pattern::new(5);
    let (mut sent, mut got) = (0usize, 0usize);
    let mut chunk = vec![0u8; 0];
    let mut buf = vec![0u8; 32 * 1024];
    let mut expect = vec![0u8; 32 * 1024];
    sim.run(Duration::from_secs(600), |s| {
        while s.a.poll_event().is_some() {}
        while s.b.poll_event().is_some() {}
        tc.drive(&mut s.a).unwrap();
        ts.drive(&mut s.b).unwrap();
        if !tc.is_handshaking() {
            while sent < total {
                if chunk.is_empty() {
                    chunk.resize(8192.min(total - sent), 0);
                    tx.fill(&mut chunk);
                }
                match tc.write(&chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.drain(..n);
                        sent += n;
                    }
                    Err(e) => panic!("{e}"),
                }
                tc.drive(&mut s.a).unwrap();
            }
        }
        loop {
            match ts.read(&mut buf) {
                Ok(n) if n > 0 => {
                    rx.fill(&mut expect[..n]);
                    assert!(buf[..n] == expect[..n], "plaintext differs at {got}");
                    got += n;
                }
                _ => break,
            }
        }
        ts.drive(&mut s.b).unwrap();
        got == total
    });
    // The server saw the client's SPIFFE identity in its certificate.
    let peer = ts.tls.peer_certificates().expect("client certificate");
    let needle = b"spiffe://corp.mesh/sa/checkout";
    assert!(peer[0].as_ref().windows(needle.len()).any(|w| w == needle));
}

#[test]
fn a_client_from_another_ca_is_refused() {
    let root = ca("mesh root");
    let other = ca("someone else");
    let (server_cfg, client_cfg) = configs(&root, &other, &root);
    let mut sim = Sim::new(22, LinkConfig::default());
    let (a, b) = establish(&mut sim, 15443);
    let client =
        rustls::ClientConnection::new(client_cfg, ServerName::try_from("reviews.mesh").unwrap())
            .unwrap();
    let mut tc = TlsSession::new(a, client);
    let mut ts = TlsSession::new(b, rustls::ServerConnection::new(server_cfg).unwrap());
    let mut server_err = None;
    let mut client_err = None;
    sim.run(Duration::from_secs(10), |s| {
        while s.a.poll_event().is_some() {}
        while s.b.poll_event().is_some() {}
        if client_err.is_none() {
            if let Err(e) = tc.drive(&mut s.a) {
                client_err = Some(e);
            }
        }
        if server_err.is_none() {
            if let Err(e) = ts.drive(&mut s.b) {
                server_err = Some(e);
            }
        }
        server_err.is_some() && client_err.is_some()
    });
    assert!(
        matches!(
            server_err,
            Some(TlsError::Tls(rustls::Error::InvalidCertificate(_)))
        ),
        "{server_err:?}"
    );
    // The server's alert reached the client.
    assert!(
        matches!(
            client_err,
            Some(TlsError::Tls(rustls::Error::AlertReceived(_)))
        ),
        "{client_err:?}"
    );
}
