//! rustls configurations for the mesh hop: mutual TLS 1.3 between gateways, SPIFFE
//! identities, trust roots, and the SNI that names the service.
//!
//! No I/O here: the proxy engine owns the `ClientConnection`/`ServerConnection`s and moves
//! their ciphertext over tcpstack or kernel sockets; certificate material comes in as DER
//! from the caller (reading and reloading the files is the data plane's `certwatch`).
//! What the engine needs from this module:
//! - gateway A: [`ClientConfigs::get`] (one shared config per identity and peer, so TLS
//!   sessions resume), [`sni_for_service`], and [`identity_mismatch`] to count refusals;
//! - gateway B: [`server_config`], then [`peer_identity`] for authorization and
//!   [`service_from_sni`] on `ServerConnection::server_name()`.
//!
//! Root rotation: trust the old and the new root together ([`MeshTrust`] holds several),
//! reissue every leaf from the new root, then drop the old root.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use control::snapshot::IdentityRt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use rustls::server::{ParsedCertificate, ProducesTickets, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read \"{}\": {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("\"{}\" holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("\"{}\" holds no PKCS#8 private key (convert: openssl pkcs8 -topk8 -nocrypt -in OLD.pem -out NEW.pem)", .0.display())]
    NoKey(PathBuf),
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("no trust roots given")]
    NoTrustRoots,
    #[error("certificate's SPIFFE ID is {}, expected {expected}", found.as_deref().unwrap_or("missing"))]
    SpiffeMismatch {
        expected: String,
        found: Option<String>,
    },
    #[error("key does not match the certificate")]
    KeyMismatch,
    #[error("certificate is not valid now (valid from unix {not_before} to {not_after})")]
    NotValidNow { not_before: i64, not_after: i64 },
    #[error("service name \"{0}\" does not fit in a TLS server name (SNI)")]
    ServiceNotSni(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The crypto provider every mesh configuration uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// `now` as unix seconds (negative before 1970).
pub fn unix_now(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Parses a DER certificate.
pub fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, TlsError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))
}

/// The single SPIFFE ID (`spiffe://…` URI SAN) of a parsed certificate.
pub fn spiffe_of(cert: &X509Certificate<'_>) -> Result<String, TlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(format!("subjectAltName: {e}")))?;
    let mut ids = san.into_iter().flat_map(|s| {
        s.value.general_names.iter().filter_map(|g| match g {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        })
    });
    match (ids.next(), ids.next()) {
        (Some(one), None) => Ok(one.to_owned()),
        (None, _) => Err(TlsError::BadCertificate("no SPIFFE URI SAN".into())),
        // An X509-SVID carries exactly one SPIFFE ID (SPIFFE X509-SVID §2).
        (Some(_), Some(_)) => Err(TlsError::BadCertificate(
            "more than one SPIFFE URI SAN".into(),
        )),
    }
}

/// The SPIFFE ID (`spiffe://…` URI SAN) of a DER certificate; exactly one is required.
pub fn spiffe_id(cert_der: &[u8]) -> Result<String, TlsError> {
    spiffe_of(&parse_cert(cert_der)?)
}

/// The SPIFFE ID of the peer's end-entity certificate, once the handshake has seen it
/// (also on resumed connections: the session carries the peer's chain).
pub fn peer_identity(conn: &CommonState) -> Option<String> {
    spiffe_id(conn.peer_certificates()?.first()?).ok()
}

/// Validity period as unix seconds.
pub fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

/// A trusted root as [`MeshTrust`] describes it (for expiry metrics and warnings).
#[derive(Debug, Clone)]
pub struct RootInfo {
    pub subject: String,
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The trusted mesh roots. Several at once during a root rotation.
///
/// It also owns the server's session-ticket keys: a ticket resumes only under the trust
/// it was issued with, so changing the roots (a new `MeshTrust`) makes every client
/// verify its certificate again, while reloading a gateway's own certificate does not
/// cost resumption.
#[derive(Debug, Clone)]
pub struct MeshTrust {
    roots: Arc<RootCertStore>,
    infos: Vec<RootInfo>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl MeshTrust {
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::NoTrustRoots);
        }
        let mut roots = RootCertStore::empty();
        let mut infos = Vec::with_capacity(certs.len());
        for der in certs {
            let x = parse_cert(&der)?;
            let (not_before, not_after) = validity(&x);
            infos.push(RootInfo {
                subject: x.subject().to_string(),
                serial: x.raw_serial_as_string(),
                not_before,
                not_after,
            });
            roots.add(der)?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            infos,
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
        })
    }

    pub fn len(&self) -> usize {
        self.infos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// Subject, serial and validity of each root, in the order given.
    pub fn root_infos(&self) -> &[RootInfo] {
        &self.infos
    }
}

/// An identity's chain and PKCS#8 key as rustls takes them.
pub fn identity_material(
    identity: &IdentityRt,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = identity
        .cert_chain_der
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()));
    (chain, key)
}

/// Gateway B's configuration for peers connecting as `identity`'s server: TLS 1.3 only,
/// a client certificate chaining to `trust` is required.
///
/// Resumption uses stateless tickets from the provider's ticketer, held by `trust`
/// (see [`MeshTrust`]): no shared cache to lock across workers, memory independent of
/// the number of clients, and resumption survives rebuilding this config after a
/// certificate reload. The keys rotate every 6 hours (rustls `Ticketer`).
pub fn server_config(
    identity: &IdentityRt,
    trust: &MeshTrust,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
            .build()?;
    let (chain, key) = identity_material(identity);
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.ticketer = trust.ticketer.clone();
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // A peer that offers `h2` gets the multiplexed hop; one that offers nothing (an `http1`
    // hop, a TCP hop, `xdpmesh check`) gets no ALPN and the `XM/1` preamble.
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// ALPN of the multiplexed hop between gateways (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of HTTP/1.1 (RFC 7301 §6).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// An `ingress-tls` listener's configuration: `identity`'s certificate served to clients
/// from outside the mesh, who present none. TLS 1.2 and 1.3 with rustls's safe defaults (a
/// client outside the mesh may not speak 1.3). ALPN `h2` first, then `http/1.1`; a client
/// that offers neither gets HTTP/1.1 (RFC 7301 §3.2 lets the server go on without ALPN).
///
/// Resumption uses stateless tickets under keys of this configuration's own (never the
/// mesh listener's: a ticket issued here carries no client certificate), so they do not
/// survive a certificate reload.
pub fn ingress_server_config(identity: &IdentityRt) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = identity_material(identity);
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(cfg))
}

/// `cfg` offering ALPN `h2`: the client side of a multiplexed hop. Shares `cfg`'s verifier,
/// certificate and resumption store.
pub fn with_alpn_h2(cfg: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = cfg.clone();
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(c)
}

/// Why a client refused the server: its certificate chains to a trusted root but names
/// another SPIFFE ID than the table says the peer has. Find it with [`identity_mismatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentityMismatch {
    pub expected: String,
    /// `None`: no (single) SPIFFE ID in the certificate.
    pub found: Option<String>,
}

impl std::fmt::Display for PeerIdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peer identity mismatch: expected {}, certificate has {}",
            self.expected,
            self.found.as_deref().unwrap_or("no SPIFFE ID")
        )
    }
}

impl std::error::Error for PeerIdentityMismatch {}

/// The mismatch, if `err` (from `process_new_packets`) is a refused peer identity.
pub fn identity_mismatch(err: &rustls::Error) -> Option<&PeerIdentityMismatch> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
            e.downcast_ref::<PeerIdentityMismatch>()
        }
        _ => None,
    }
}

/// Verifies a peer gateway: chain to a mesh root, then its SPIFFE ID, not the DNS name.
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        // The SNI names the destination service, which the certificate does not carry;
        // the peer is identified by its SPIFFE ID (SPIFFE X509-SVID §5.2).
        match spiffe_id(end_entity) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            found => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PeerIdentityMismatch {
                    expected: self.expected.clone(),
                    found: found.ok(),
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn peer_verifier(trust: &MeshTrust, expected_peer: &str) -> Arc<PeerVerifier> {
    Arc::new(PeerVerifier {
        roots: trust.roots.clone(),
        expected: expected_peer.to_owned(),
        algs: provider().signature_verification_algorithms,
    })
}

/// Gateway A's configuration for connecting as `identity` to the peer gateway whose
/// SPIFFE ID is `expected_peer`: TLS 1.3 only, presents `identity`'s certificate, checks
/// the server's chain against `trust` and its SPIFFE ID (not the SNI host name).
///
/// Sessions are kept in rustls's in-memory store *inside this config*: a connection
/// resumes only if it is made with the same `Arc<ClientConfig>` as an earlier one, so
/// get configs from a [`ClientConfigs`] rather than building one per connection.
pub fn client_config(
    identity: &IdentityRt,
    trust: &MeshTrust,
    expected_peer: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let (chain, key) = identity_material(identity);
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(peer_verifier(trust, expected_peer))
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// Client configs built once per (identity SPIFFE ID, peer SPIFFE ID) and shared, so
/// that repeat connections resume. Entries are dropped when the generation passed in
/// grows (certificates or trust changed: the data plane's `MeshCerts::generation`);
/// sessions are lost then, which is what a changed identity or trust needs anyway.
///
/// Share one across workers (it locks briefly per new connection) or keep one per
/// worker (then each worker's first connection to a peer is a full handshake).
#[derive(Debug, Default)]
pub struct ClientConfigs {
    inner: Mutex<ConfigMap>,
}

#[derive(Debug, Default)]
struct ConfigMap {
    generation: u64,
    map: HashMap<(String, String), Arc<ClientConfig>>,
}

impl ClientConfigs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, ConfigMap> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(
        &self,
        generation: u64,
        identity: &IdentityRt,
        trust: &MeshTrust,
        expected_peer: &str,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let mut m = self.lock();
        if generation < m.generation {
            // A caller still on older certificates: serve it without caching.
            drop(m);
            return client_config(identity, trust, expected_peer);
        }
        if generation > m.generation {
            m.map.clear();
            m.generation = generation;
        }
        let key = (identity.id.clone(), expected_peer.to_owned());
        if let Some(c) = m.map.get(&key) {
            return Ok(c.clone());
        }
        let c = client_config(identity, trust, expected_peer)?;
        m.map.insert(key, c.clone());
        Ok(c)
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Suffix of every mesh SNI: the hop's server name is `<service>.svc.mesh`, never a real
/// DNS name, and a name like `8080` (all-numeric last label, refused by rustls as a DNS
/// name because it reads as an IPv4 address) becomes valid.
pub const SNI_SUFFIX: &str = "svc.mesh";
/// Marks a base32-encoded service name: `<base32 labels>.b32.svc.mesh`.
const ENCODED_LABEL: &str = "b32";
const MAX_LABEL: usize = 63;

/// The TLS server name carrying `service` to the peer gateway.
///
/// Service names are `[A-Za-z0-9._-]`, 1 to 253 characters, unique ignoring case.
/// Lower-cased (TLS servers lower-case the SNI anyway), a name that forms a valid DNS name
/// is sent as `<name>.svc.mesh`. Others (empty labels as in `a..b`, labels over 63
/// characters or starting/ending with `-`, or a last label `b32`) are sent base32-encoded
/// (RFC 4648 §7 alphabet, lower case). Either form must fit in 253 characters: every
/// name up to 244 characters that is a DNS name fits, and any name up to 148 characters.
pub fn sni_for_service(service: &str) -> Result<ServerName<'static>, TlsError> {
    let lower = service.to_ascii_lowercase();
    let last_label = lower.rsplit('.').next().unwrap_or("");
    if !lower.is_empty() && last_label != ENCODED_LABEL {
        if let Ok(dns) = DnsName::try_from(format!("{lower}.{SNI_SUFFIX}")) {
            return Ok(ServerName::DnsName(dns));
        }
    }
    if lower.is_empty() {
        return Err(TlsError::ServiceNotSni(service.to_owned()));
    }
    let encoded = data_encoding::BASE32_DNSSEC.encode(lower.as_bytes());
    let mut sni = String::with_capacity(encoded.len() + encoded.len() / MAX_LABEL + 16);
    for chunk in encoded.as_bytes().chunks(MAX_LABEL) {
        // The base32 alphabet is ASCII.
        sni.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        sni.push('.');
    }
    sni.push_str(ENCODED_LABEL);
    sni.push('.');
    sni.push_str(SNI_SUFFIX);
    DnsName::try_from(sni)
        .map(ServerName::DnsName)
        .map_err(|_| TlsError::ServiceNotSni(service.to_owned()))
}

/// The service named by a server name from [`sni_for_service`]; `None` for a server name
/// that is not a mesh SNI. Servers see the SNI lower-cased, so look the result up
/// case-insensitively, e.g. with `Snapshot::service_for_host`.
pub fn service_from_sni(sni: &str) -> Option<Cow<'_, str>> {
    let n = sni.len().checked_sub(SNI_SUFFIX.len() + 1)?;
    let (rest, suffix) = (sni.get(..n)?, sni.get(n..)?);
    if !suffix.starts_with('.') || !suffix[1..].eq_ignore_ascii_case(SNI_SUFFIX) {
        return None;
    }
    let Some(encoded) = rest
        .strip_suffix(ENCODED_LABEL)
        .and_then(|e| e.strip_suffix('.'))
    else {
        return (!rest.is_empty()).then_some(Cow::Borrowed(rest));
    };
    let joined: String = encoded
        .chars()
        .filter(|&c| c != '.')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let bytes = data_encoding::BASE32_DNSSEC
        .decode(joined.as_bytes())
        .ok()?;
    let name = String::from_utf8(bytes).ok()?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    valid.then_some(Cow::Owned(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use rustls::{AlertDescription, Error, HandshakeKind};
    use std::io::{Read, Write};

    #[test]
    fn mutual_handshake_carries_data_and_identities() {
        let root = ca("mesh root");
        let t = trust(&[&root]);
        let (a, b) = (leaf(&root, GW_A), leaf(&root, GW_B));
        let cc = client_config(&identity(GW_A, &a), &t, GW_B).unwrap();
        let sc = server_config(&identity(GW_B, &b), &t).unwrap();
        let mut r = run(&cc, &sc, "reviews");
        assert!(
            r.ok(),
            "client {:?} server {:?}",
            r.client_err,
            r.server_err
        );
        assert_eq!(
            r.c.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(peer_identity(&r.s).as_deref(), Some(GW_A));
        assert_eq!(peer_identity(&r.c).as_deref(), Some(GW_B));
        assert_eq!(
            r.s.server_name().and_then(service_from_sni).as_deref(),
            Some("reviews")
        );
        r.c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        r.pump();
        let mut got = [0u8; 64];
        let n = r.s.reader().read(&mut got).unwrap();
        assert_eq!(&got[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn server_with_another_spiffe_id_is_refused_as_identity_mismatch() {
        let root = ca("mesh root");
        let t = trust(&[&root]);
        let other = "spiffe://corp.mesh/gateway/gw-evil";
        let cc = client_config(&identity(GW_A, &leaf(&root, GW_A)), &t, GW_B).unwrap();
        let sc = server_config(&identity(other, &leaf(&root, other)), &t).unwrap();
        let r = run(&cc, &sc, "reviews");
        let err = r.client_err.expect("client must refuse");
        let m = identity_mismatch(&err).expect("an identity mismatch");
        assert_eq!(m.expected, GW_B);
        assert_eq!(m.found.as_deref(), Some(other));
        assert_eq!(
            r.server_err,
            Some(Error::AlertReceived(AlertDescription::CertificateUnknown))
        );
        assert!(peer_identity(&r.s).is_none());
    }

    #[test]
    fn server_from_another_ca_is_refused_but_not_as_mismatch() {
        let (root, rogue) = (ca("mesh root"), ca("rogue"));
        let cc =
            client_config(&identity(GW_A, &leaf(&root, GW_A)), &trust(&[&root]), GW_B).unwrap();
        let sc = server_config(&identity(GW_B, &leaf(&rogue, GW_B)), &trust(&[&rogue])).unwrap();
        let r = run(&cc, &sc, "reviews");
        let err = r.client_err.expect("client must refuse");
        assert_eq!(
            err,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        assert!(identity_mismatch(&err).is_none());
    }

    #[test]
    fn client_from_another_ca_is_refused_and_sees_an_alert() {
        let (root, rogue) = (ca("mesh root"), ca("rogue"));
        // The client trusts the server, but its own certificate comes from elsewhere.
        let cc =
            client_config(&identity(GW_A, &leaf(&rogue, GW_A)), &trust(&[&root]), GW_B).unwrap();
        let sc = server_config(&identity(GW_B, &leaf(&root, GW_B)), &trust(&[&root])).unwrap();
        let r = run(&cc, &sc, "reviews");
        assert_eq!(
            r.server_err,
            Some(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        );
        assert_eq!(
            r.client_err,
            Some(Error::AlertReceived(AlertDescription::UnknownCA))
        );
        assert!(peer_identity(&r.s).is_none());
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let root = ca("mesh root");
        let t = trust(&[&root]);
        let cc = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(peer_verifier(&t, GW_B))
                .with_no_client_auth(),
        );
        let sc = server_config(&identity(GW_B, &leaf(&root, GW_B)), &t).unwrap();
        let r = run(&cc, &sc, "reviews");
        assert_eq!(r.server_err, Some(Error::NoCertificatesPresented));
        assert_eq!(
            r.client_err,
            Some(Error::AlertReceived(AlertDescription::CertificateRequired))
        );
    }

    #[test]
    fn same_client_config_resumes_and_keeps_the_peer_identity() {
        let root = ca("mesh root");
        let t = trust(&[&root]);
        let a = identity(GW_A, &leaf(&root, GW_A));
        let sc = server_config(&identity(GW_B, &leaf(&root, GW_B)), &t).unwrap();
        let configs = ClientConfigs::new();
        let cc = configs.get(1, &a, &t, GW_B).unwrap();
        let first = run(&cc, &sc, "reviews");
        assert!(first.ok());
        assert_eq!(first.c.handshake_kind(), Some(HandshakeKind::Full));

        let cc2 = configs.get(1, &a, &t, GW_B).unwrap();
        assert!(Arc::ptr_eq(&cc, &cc2));
        let second = run(&cc2, &sc, "reviews");
        assert!(second.ok());
        assert_eq!(second.c.handshake_kind(), Some(HandshakeKind::Resumed));
        assert_eq!(second.s.handshake_kind(), Some(HandshakeKind::Resumed));
        // Authorization on gateway B still sees who the client is.
        assert_eq!(peer_identity(&second.s).as_deref(), Some(GW_A));

        // A server rebuilt from the same trust (own certificate reloaded) still resumes.
        let sc2 = server_config(&identity(GW_B, &leaf(&root, GW_B)), &t).unwrap();
        let third = run(&cc, &sc2, "reviews");
        assert_eq!(third.c.handshake_kind(), Some(HandshakeKind::Resumed));

        // New trust: tickets from before are not accepted; a full handshake re-verifies.
        let t2 = trust(&[&root]);
        let sc3 = server_config(&identity(GW_B, &leaf(&root, GW_B)), &t2).unwrap();
        let fourth = run(&cc, &sc3, "reviews");
        assert!(fourth.ok());
        assert_eq!(fourth.s.handshake_kind(), Some(HandshakeKind::Full));

        // A freshly built config has no sessions: full handshake.
        let fresh = client_config(&a, &t, GW_B).unwrap();
        let fifth = run(&fresh, &sc, "reviews");
        assert_eq!(fifth.c.handshake_kind(), Some(HandshakeKind::Full));
    }

    #[test]
    fn client_configs_are_cached_per_pair_and_dropped_on_a_new_generation() {
        let root = ca("mesh root");
        let t = trust(&[&root]);
        let a = identity(GW_A, &leaf(&root, GW_A));
        let configs = ClientConfigs::new();
        let x = configs.get(3, &a, &t, GW_B).unwrap();
        let y = configs
            .get(3, &a, &t, "spiffe://corp.mesh/gateway/gw-c")
            .unwrap();
        assert!(!Arc::ptr_eq(&x, &y));
        assert_eq!(configs.len(), 2);
        assert!(Arc::ptr_eq(&x, &configs.get(3, &a, &t, GW_B).unwrap()));
        // An older generation is served but not cached.
        let old = configs.get(2, &a, &t, GW_B).unwrap();
        assert!(!Arc::ptr_eq(&x, &old));
        assert_eq!(configs.len(), 2);
        let z = configs.get(4, &a, &t, GW_B).unwrap();
        assert!(!Arc::ptr_eq(&x, &z));
        assert_eq!(configs.len(), 1);
    }

    #[test]
    fn two_trusted_roots_accept_leaves_from_either() {
        let (old, new) = (ca("mesh root 2025"), ca("mesh root 2026"));
        let t = trust(&[&old, &new]);
        assert_eq!(t.len(), 2);
        for (ca_a, ca_b) in [(&old, &new), (&new, &old), (&new, &new)] {
            let cc = client_config(&identity(GW_A, &leaf(ca_a, GW_A)), &t, GW_B).unwrap();
            let sc = server_config(&identity(GW_B, &leaf(ca_b, GW_B)), &t).unwrap();
            let r = run(&cc, &sc, "reviews");
            assert!(r.ok(), "{:?} {:?}", r.client_err, r.server_err);
            assert_eq!(peer_identity(&r.s).as_deref(), Some(GW_A));
        }
        // Once the old root is dropped, its leaves are refused.
        let only_new = trust(&[&new]);
        let cc = client_config(&identity(GW_A, &leaf(&old, GW_A)), &only_new, GW_B).unwrap();
        let sc = server_config(&identity(GW_B, &leaf(&new, GW_B)), &only_new).unwrap();
        let r = run(&cc, &sc, "reviews");
        assert_eq!(
            r.server_err,
            Some(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        );
    }

    #[test]
    fn expired_leaves_are_refused_on_both_sides() {
        let root = ca("mesh root");
        let t = trust(&[&root]);
        let expired = |id| leaf_dated(&root, id, (2021, 1, 1), (2021, 1, 2));
        let cc = client_config(&identity(GW_A, &leaf(&root, GW_A)), &t, GW_B).unwrap();
        let sc = server_config(&identity(GW_B, &expired(GW_B)), &t).unwrap();
        let r = run(&cc, &sc, "reviews");
        assert!(matches!(
            r.client_err,
            Some(Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));

        let cc = client_config(&identity(GW_A, &expired(GW_A)), &t, GW_B).unwrap();
        let sc = server_config(&identity(GW_B, &leaf(&root, GW_B)), &t).unwrap();
        let r = run(&cc, &sc, "reviews");
        assert!(matches!(
            r.server_err,
            Some(Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn every_schema_service_name_maps_to_an_sni_and_back() {
        let long_label = "a".repeat(64);
        let long_valid = ["abcdefghij"; 22].join("."); // 241 characters, a DNS name
        let named = [
            "web",
            "Web.Internal",
            "8080",
            "1.2.3.4",
            "app-1.0",
            "0x1f",
            "a..b",
            ".x",
            "x.",
            "-x",
            "x-",
            "_x_",
            "foo.b32",
            "b32",
            "a.svc.mesh",
            long_label.as_str(),
            long_valid.as_str(),
        ];
        for name in named {
            let sni = sni_for_service(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let ServerName::DnsName(dns) = &sni else {
                panic!("{name}: not a DNS name")
            };
            assert!(dns.as_ref().ends_with(".svc.mesh"), "{name}: {dns:?}");
            let back = service_from_sni(dns.as_ref()).map(Cow::into_owned);
            assert_eq!(back, Some(name.to_ascii_lowercase()), "{name} via {dns:?}");
        }

        // Any name of the schema's alphabet up to 148 characters, seeded random.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let alphabet = b"abcXYZ0189.-_";
        for _ in 0..3000 {
            let len = rng.gen_range(1..=148);
            let name: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
                .collect();
            let sni = sni_for_service(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let ServerName::DnsName(dns) = &sni else {
                panic!("{name}")
            };
            assert_eq!(
                service_from_sni(dns.as_ref()).as_deref(),
                Some(name.to_ascii_lowercase().as_str())
            );
        }

        // Too long for any form: a clear error, not a panic.
        let err = sni_for_service(&"a.".repeat(126)).unwrap_err();
        assert!(matches!(err, TlsError::ServiceNotSni(_)));
        assert!(sni_for_service("").is_err());

        for foreign in [
            "example.com",
            "svc.mesh",
            ".svc.mesh",
            "x.svc.meshy",
            "zz!.b32.svc.mesh",
        ] {
            assert_eq!(service_from_sni(foreign), None, "{foreign}");
        }
        assert_eq!(service_from_sni("WEB.SVC.MESH").as_deref(), Some("WEB"));
    }
}
