//! rustls configurations for the mesh hop: mutual TLS 1.3 between gateways, SPIFFE
//! identities, certificate reload and expiry.
//!
//! No I/O here: the proxy engine owns the `ClientConnection`/`ServerConnection`s and moves
//! their ciphertext over tcpstack or kernel sockets. What it needs from this module:
//! - gateway A: [`ClientConfigs::get`] (one shared config per identity and peer, so TLS
//!   sessions resume), [`sni_for_service`], and [`identity_mismatch`] to count refusals;
//! - gateway B: [`server_config`], then [`peer_identity`] for authorization and
//!   [`service_from_sni`] on `ServerConnection::server_name()`;
//! - the control thread: [`CertWatch::poll`] once a second, [`CertWatch::set_identities`]
//!   when a new snapshot is published, [`CertWatch::expiry_metrics`] and
//!   [`CertWatch::warnings`]. New connections take configurations built from
//!   [`CertWatch::current`]; existing connections keep theirs.
//!
//! Root rotation: trust the old and the new root together ([`MeshTrust`] holds several),
//! reissue every leaf from the new root, then drop the old root.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use control::snapshot::IdentityRt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use rustls::server::{ParsedCertificate, ProducesTickets, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, InconsistentKeys,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
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

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

fn unix_now(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, TlsError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))
}

fn spiffe_of(cert: &X509Certificate<'_>) -> Result<String, TlsError> {
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
fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

#[derive(Debug, Clone)]
struct RootInfo {
    subject: String,
    serial: String,
    not_before: i64,
    not_after: i64,
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

    /// Every certificate in every file is a root.
    pub fn from_pem_files(paths: &[PathBuf]) -> Result<Self, TlsError> {
        let mut certs = Vec::new();
        for path in paths {
            certs.extend(read_pem_certs(path)?);
        }
        Self::from_der(certs)
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
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn identity_material(
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
    Ok(Arc::new(cfg))
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
/// grows (certificates or trust changed: [`MeshCerts::generation`]); sessions are lost
/// then, which is what a changed identity or trust needs anyway.
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

// --- certificate reload and expiry ---------------------------------------------------

/// One identity as currently loaded (certificate and key as in the files, or as in the
/// snapshot when the files could not be used).
#[derive(Debug, Clone)]
pub struct LoadedIdentity {
    pub identity: IdentityRt,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// What new connections use, published whole by [`CertWatch`]. Build configurations from
/// it; rebuild them when [`MeshCerts::generation`] grows.
#[derive(Debug)]
pub struct MeshCerts {
    pub generation: u64,
    pub trust: MeshTrust,
    pub identities: Vec<LoadedIdentity>,
}

impl MeshCerts {
    pub fn identity(&self, spiffe_id: &str) -> Option<&IdentityRt> {
        self.identities
            .iter()
            .map(|l| &l.identity)
            .find(|i| i.id == spiffe_id)
    }
}

/// What a file looked like: a rename over it changes the inode, a rewrite in place the
/// size or the times (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn file_sig(path: &Path) -> Option<FileSig> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileSig {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Change tracking for a group of files reloaded together.
#[derive(Debug, Default)]
struct Tracked {
    paths: Vec<PathBuf>,
    loaded: Vec<Option<FileSig>>,
    /// Seen changed on the last poll; reloaded once it is seen unchanged again.
    pending: Option<Vec<Option<FileSig>>>,
    /// A reload of exactly these files failed; not retried until they change.
    failed: Option<Vec<Option<FileSig>>>,
    error: Option<String>,
}

impl Tracked {
    fn new(paths: Vec<PathBuf>) -> Self {
        let loaded = paths.iter().map(|p| file_sig(p)).collect();
        Self {
            paths,
            loaded,
            ..Self::default()
        }
    }

    fn sigs(&self) -> Vec<Option<FileSig>> {
        self.paths.iter().map(|p| file_sig(p)).collect()
    }

    /// The files' state if they should be reloaded now. Debounced: the files must look
    /// the same on two polls in a row, so a cert and key replaced one after the other
    /// are read together.
    fn due(&mut self) -> Option<Vec<Option<FileSig>>> {
        let now = self.sigs();
        if now == self.loaded {
            // Changed back to what is loaded: nothing to do, nothing wrong.
            self.pending = None;
            self.failed = None;
            self.error = None;
            return None;
        }
        if self.failed.as_ref() == Some(&now) {
            return None;
        }
        if self.pending.as_ref() != Some(&now) {
            self.pending = Some(now);
            return None;
        }
        self.pending = None;
        Some(now)
    }

    fn done(&mut self, sigs: Vec<Option<FileSig>>, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.loaded = sigs;
                self.failed = None;
                self.error = None;
            }
            Err(e) => {
                self.failed = Some(sigs);
                self.error = Some(e);
            }
        }
    }
}

/// Read an identity's files and check them as control does: the certificate parses, is
/// valid at `now`, names `template.id`, and the PKCS#8 key belongs to it.
fn load_identity(template: &IdentityRt, now: i64) -> Result<LoadedIdentity, TlsError> {
    let chain = read_pem_certs(&template.cert_path)?;
    let key_bytes = read(&template.key_path)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&key_bytes)
        .map_err(|_| TlsError::NoKey(template.key_path.clone()))?;
    let loaded = check_material(
        template,
        chain.iter().map(|c| c.to_vec()).collect(),
        key.secret_pkcs8_der().to_vec(),
        now,
    )?;
    let certified = CertifiedKey::from_der(chain, PrivateKeyDer::Pkcs8(key), &provider());
    match certified {
        Ok(_) => Ok(loaded),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch)
        }
        Err(e) => Err(e.into()),
    }
}

/// Check a chain's SPIFFE ID and dates (not the key: see [`load_identity`]).
fn check_material(
    template: &IdentityRt,
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
    now: i64,
) -> Result<LoadedIdentity, TlsError> {
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(template.cert_path.clone()))?;
    let x = parse_cert(leaf)?;
    let found = spiffe_of(&x).ok();
    if found.as_deref() != Some(template.id.as_str()) {
        return Err(TlsError::SpiffeMismatch {
            expected: template.id.clone(),
            found,
        });
    }
    let (not_before, not_after) = validity(&x);
    if now < not_before || now > not_after {
        return Err(TlsError::NotValidNow {
            not_before,
            not_after,
        });
    }
    Ok(LoadedIdentity {
        identity: IdentityRt {
            cert_chain_der: chain,
            key_der,
            ..template.clone()
        },
        not_before,
        not_after,
    })
}

#[derive(Debug)]
struct WatchState {
    trust: Tracked,
    /// Same order as `MeshCerts::identities`.
    identities: Vec<Tracked>,
    /// Identities that could not be taken up at all (not in `MeshCerts`).
    rejected: Vec<String>,
}

/// Keeps the mesh certificates current: reloads changed trust and identity files, keeps
/// the previous material when a replacement is bad, and publishes [`MeshCerts`] with a
/// growing generation.
///
/// Change detection is polling: call [`CertWatch::poll`] about once a second from the
/// control thread. A stat per file per second is cheap, needs no watcher thread or
/// inotify limits, sees atomic renames (the inode changes) as well as rewrites, and the
/// two-poll debounce lets an operator replace certificate and key one after the other.
#[derive(Debug)]
pub struct CertWatch {
    current: ArcSwap<MeshCerts>,
    state: Mutex<WatchState>,
}

/// What one [`CertWatch::poll`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// `"trust"` and/or identity SPIFFE IDs now serving new material.
    pub reloaded: Vec<String>,
    /// Replacements refused this time (the old material stays).
    pub errors: Vec<String>,
}

impl CertWatch {
    /// `trust_files`: PEM files whose certificates together are the roots (read now; an
    /// error here is fatal). `identities`: from the snapshot.
    pub fn new(trust_files: Vec<PathBuf>, identities: &[IdentityRt]) -> Result<Self, TlsError> {
        let tracked = Tracked::new(trust_files);
        let trust = MeshTrust::from_pem_files(&tracked.paths)?;
        let watch = Self {
            current: ArcSwap::from_pointee(MeshCerts {
                generation: 0,
                trust,
                identities: Vec::new(),
            }),
            state: Mutex::new(WatchState {
                trust: tracked,
                identities: Vec::new(),
                rejected: Vec::new(),
            }),
        };
        watch.set_identities(identities);
        Ok(watch)
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The material for new connections.
    pub fn current(&self) -> Arc<MeshCerts> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Take up the identities of a new snapshot. Unchanged ones (same ID and paths) keep
    /// what is loaded; new ones are read from their files (falling back to the
    /// snapshot's copy, which control checked, if the files are unusable now).
    pub fn set_identities(&self, identities: &[IdentityRt]) {
        let mut st = self.lock();
        let cur = self.current.load_full();
        let now = unix_now(SystemTime::now());
        let mut loaded = Vec::with_capacity(identities.len());
        let mut tracked = Vec::with_capacity(identities.len());
        let mut rejected = Vec::new();
        let mut changed = identities.len() != cur.identities.len();
        for want in identities {
            let same = |l: &LoadedIdentity| {
                l.identity.id == want.id
                    && l.identity.cert_path == want.cert_path
                    && l.identity.key_path == want.key_path
            };
            if let Some(i) = cur.identities.iter().position(same) {
                let mut l = cur.identities[i].clone();
                l.identity.sources = want.sources.clone();
                loaded.push(l);
                tracked.push(std::mem::take(&mut st.identities[i]));
                continue;
            }
            changed = true;
            let mut t = Tracked::new(vec![want.cert_path.clone(), want.key_path.clone()]);
            let sigs = t.loaded.clone();
            match load_identity(want, now) {
                Ok(l) => loaded.push(l),
                Err(file_err) => {
                    match check_material(
                        want,
                        want.cert_chain_der.clone(),
                        want.key_der.clone(),
                        now,
                    ) {
                        Ok(l) => loaded.push(l),
                        Err(e) => {
                            rejected.push(format!("identity {}: {e}", want.id));
                            continue;
                        }
                    }
                    t.loaded = vec![None, None];
                    t.done(sigs, Err(format!("identity {}: {file_err}", want.id)));
                }
            }
            tracked.push(t);
        }
        st.identities = tracked;
        st.rejected = rejected;
        self.publish(&cur, changed, None, loaded);
    }

    /// Take up a snapshot's `trust_roots` if they name other files than those in use.
    /// On error the current trust stays.
    pub fn set_trust_files(&self, paths: &[PathBuf]) -> Result<(), TlsError> {
        let mut st = self.lock();
        if st.trust.paths == paths {
            return Ok(());
        }
        let tracked = Tracked::new(paths.to_vec());
        let trust = MeshTrust::from_pem_files(paths)?;
        st.trust = tracked;
        let cur = self.current.load_full();
        self.publish(&cur, false, Some(trust), cur.identities.clone());
        Ok(())
    }

    fn publish(
        &self,
        cur: &MeshCerts,
        changed: bool,
        trust: Option<MeshTrust>,
        identities: Vec<LoadedIdentity>,
    ) {
        let generation = cur.generation + u64::from(changed || trust.is_some());
        self.current.store(Arc::new(MeshCerts {
            generation,
            trust: trust.unwrap_or_else(|| cur.trust.clone()),
            identities,
        }));
    }

    /// Check the files once; reload what changed and has been stable since the last poll.
    pub fn poll(&self) -> PollReport {
        self.poll_at(SystemTime::now())
    }

    fn poll_at(&self, now: SystemTime) -> PollReport {
        let now = unix_now(now);
        let mut st = self.lock();
        let cur = self.current.load_full();
        let mut report = PollReport::default();
        let mut trust = None;
        if let Some(sigs) = st.trust.due() {
            let r = MeshTrust::from_pem_files(&st.trust.paths).map_err(|e| format!("trust: {e}"));
            match r {
                Ok(t) => {
                    trust = Some(t);
                    report.reloaded.push("trust".into());
                    st.trust.done(sigs, Ok(()));
                }
                Err(e) => {
                    report.errors.push(e.clone());
                    st.trust.done(sigs, Err(e));
                }
            }
        }
        let mut identities = cur.identities.clone();
        for (t, l) in st.identities.iter_mut().zip(identities.iter_mut()) {
            let Some(sigs) = t.due() else { continue };
            match load_identity(&l.identity, now) {
                Ok(new) => {
                    report.reloaded.push(l.identity.id.clone());
                    *l = new;
                    t.done(sigs, Ok(()));
                }
                Err(e) => {
                    let e = format!(
                        "identity {}: {e}; keeping the loaded certificate",
                        l.identity.id
                    );
                    report.errors.push(e.clone());
                    t.done(sigs, Err(e));
                }
            }
        }
        let changed = report.reloaded.iter().any(|r| r != "trust");
        if changed || trust.is_some() {
            self.publish(&cur, changed, trust, identities);
        }
        report
    }

    /// Current problems: replacements refused (until the files change again) and
    /// identities that could not be taken up.
    pub fn errors(&self) -> Vec<String> {
        let st = self.lock();
        std::iter::once(&st.trust)
            .chain(&st.identities)
            .filter_map(|t| t.error.clone())
            .chain(st.rejected.iter().cloned())
            .collect()
    }

    /// Prometheus text: seconds until each identity's and each trust root's certificate
    /// expires (negative once expired).
    pub fn expiry_metrics(&self, now: SystemTime, out: &mut String) {
        let cur = self.current();
        let now = unix_now(now);
        out.push_str(
            "# HELP xdpmesh_identity_expiry_seconds Seconds until the identity's certificate expires.\n\
             # TYPE xdpmesh_identity_expiry_seconds gauge\n",
        );
        for l in &cur.identities {
            let _ = writeln!(
                out,
                "xdpmesh_identity_expiry_seconds{{id=\"{}\"}} {}",
                label_value(&l.identity.id),
                l.not_after - now
            );
        }
        out.push_str(
            "# HELP xdpmesh_trust_root_expiry_seconds Seconds until the trusted root certificate expires.\n\
             # TYPE xdpmesh_trust_root_expiry_seconds gauge\n",
        );
        for r in &cur.trust.infos {
            let _ = writeln!(
                out,
                "xdpmesh_trust_root_expiry_seconds{{subject=\"{}\",serial=\"{}\"}} {}",
                label_value(&r.subject),
                label_value(&r.serial),
                r.not_after - now
            );
        }
    }

    /// One line per identity or root with under 20 % of its lifetime left (or expired).
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        let cur = self.current();
        let now = unix_now(now);
        let ids = cur.identities.iter().map(|l| {
            (
                format!("identity {}", l.identity.id),
                l.not_before,
                l.not_after,
            )
        });
        let roots = cur.trust.infos.iter().map(|r| {
            (
                format!("trust root \"{}\" (serial {})", r.subject, r.serial),
                r.not_before,
                r.not_after,
            )
        });
        ids.chain(roots)
            .filter_map(|(what, nb, na)| {
                let left = na - now;
                let life = (na - nb).max(1);
                // left / life < 20 %, in integers.
                if left.saturating_mul(5) >= life {
                    return None;
                }
                Some(if left <= 0 {
                    format!(
                        "{what}: certificate expired {} ago",
                        humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
                    )
                } else {
                    format!(
                        "{what}: certificate expires in {} ({}% of its lifetime left)",
                        humantime::format_duration(Duration::from_secs(left as u64)),
                        left * 100 / life
                    )
                })
            })
            .collect()
    }
}

/// Escape a Prometheus label value (text format: `\\`, `\"`, `\n`).
fn label_value(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType,
    };
    use rustls::{AlertDescription, ClientConnection, ConnectionCommon, HandshakeKind};
    use rustls::{Error, ServerConnection};
    use std::io::{Read, Write};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
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

    struct Leaf {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn leaf_dated(ca: &Ca, spiffe: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> Leaf {
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

    fn leaf(ca: &Ca, spiffe: &str) -> Leaf {
        leaf_dated(ca, spiffe, (2020, 1, 1), (2100, 1, 1))
    }

    fn identity(id: &str, l: &Leaf) -> IdentityRt {
        IdentityRt {
            id: id.into(),
            sources: Vec::new(),
            cert_path: PathBuf::from("/nonexistent/cert.pem"),
            key_path: PathBuf::from("/nonexistent/key.pem"),
            cert_chain_der: vec![l.cert.der().to_vec()],
            key_der: l.key.serialize_der(),
        }
    }

    fn trust(cas: &[&Ca]) -> MeshTrust {
        MeshTrust::from_der(cas.iter().map(|c| c.cert.der().clone()).collect()).unwrap()
    }

    const GW_A: &str = "spiffe://corp.mesh/gateway/gw-a";
    const GW_B: &str = "spiffe://corp.mesh/gateway/gw-b";

    /// Move one side's pending TLS bytes to the other; record the receiver's first error.
    fn transfer<A, B>(
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

    struct Run {
        c: ClientConnection,
        s: ServerConnection,
        client_err: Option<Error>,
        server_err: Option<Error>,
    }

    impl Run {
        fn pump(&mut self) {
            for _ in 0..32 {
                let a = transfer(&mut self.c, &mut self.s, &mut self.server_err);
                let b = transfer(&mut self.s, &mut self.c, &mut self.client_err);
                if !a && !b {
                    return;
                }
            }
            panic!("handshake did not settle");
        }

        fn ok(&self) -> bool {
            self.client_err.is_none()
                && self.server_err.is_none()
                && !self.c.is_handshaking()
                && !self.s.is_handshaking()
        }
    }

    fn run(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, service: &str) -> Run {
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

    // --- files: reload and expiry ---

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Write via a temporary file and rename, as operators and `xdpmesh ca` do.
        fn put(&self, name: &str, contents: &str) {
            let tmp = self.path(&format!(".{name}.tmp"));
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, self.path(name)).unwrap();
        }

        fn put_leaf(&self, l: &Leaf) {
            self.put("cert.pem", &l.cert.pem());
            self.put("key.pem", &l.key.serialize_pem());
        }

        fn identity(&self, id: &str, l: &Leaf) -> IdentityRt {
            IdentityRt {
                cert_path: self.path("cert.pem"),
                key_path: self.path("key.pem"),
                ..identity(id, l)
            }
        }
    }

    /// Poll until a reload or an error is reported (the debounce needs two polls).
    fn poll_settled(w: &CertWatch) -> PollReport {
        for _ in 0..4 {
            let r = w.poll();
            if r != PollReport::default() {
                return r;
            }
        }
        PollReport::default()
    }

    fn presented_leaf(w: &CertWatch, root: &Ca) -> Vec<u8> {
        let cur = w.current();
        let sc = server_config(cur.identity(GW_B).unwrap(), &cur.trust).unwrap();
        let cc = client_config(&identity(GW_A, &leaf(root, GW_A)), &cur.trust, GW_B).unwrap();
        let r = run(&cc, &sc, "reviews");
        assert!(r.ok(), "{:?} {:?}", r.client_err, r.server_err);
        r.c.peer_certificates().unwrap()[0].to_vec()
    }

    #[test]
    fn renamed_cert_and_key_are_reloaded_for_new_configs() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        let first = leaf(&root, GW_B);
        f.put_leaf(&first);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &first)]).unwrap();
        let g0 = w.generation();
        assert!(w.errors().is_empty(), "{:?}", w.errors());
        assert_eq!(presented_leaf(&w, &root), first.cert.der().to_vec());
        assert_eq!(w.poll(), PollReport::default());

        let second = leaf(&root, GW_B);
        f.put_leaf(&second);
        // Debounce: the first poll only notes the change.
        assert_eq!(w.poll(), PollReport::default());
        assert_eq!(w.generation(), g0);
        let r = w.poll();
        assert_eq!(r.reloaded, vec![GW_B.to_string()]);
        assert!(r.errors.is_empty());
        assert_eq!(w.generation(), g0 + 1);
        assert_eq!(presented_leaf(&w, &root), second.cert.der().to_vec());
        assert_eq!(w.poll(), PollReport::default());
    }

    #[test]
    fn bad_replacements_keep_the_old_certificate_and_report() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        let good = leaf(&root, GW_B);
        f.put_leaf(&good);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &good)]).unwrap();
        let g0 = w.generation();

        // A new certificate with someone else's key.
        let new = leaf(&root, GW_B);
        f.put("cert.pem", &new.cert.pem());
        f.put("key.pem", &leaf(&root, GW_B).key.serialize_pem());
        let r = poll_settled(&w);
        assert!(r.reloaded.is_empty());
        assert!(r.errors[0].contains("key does not match"), "{r:?}");
        assert_eq!(w.generation(), g0);
        assert_eq!(presented_leaf(&w, &root), good.cert.der().to_vec());
        assert!(w.errors()[0].contains("key does not match"));
        // Reported once, not on every poll.
        assert_eq!(w.poll(), PollReport::default());

        // A certificate for another identity.
        let other = leaf(&root, "spiffe://corp.mesh/gateway/gw-c");
        f.put_leaf(&other);
        let r = poll_settled(&w);
        assert!(r.errors[0].contains("gw-c"), "{r:?}");
        assert_eq!(w.generation(), g0);

        // An expired one.
        f.put_leaf(&leaf_dated(&root, GW_B, (2021, 1, 1), (2021, 1, 2)));
        let r = poll_settled(&w);
        assert!(r.errors[0].contains("not valid now"), "{r:?}");

        // Fixed: taken up, error gone.
        f.put_leaf(&new);
        let r = poll_settled(&w);
        assert_eq!(r.reloaded, vec![GW_B.to_string()]);
        assert_eq!(w.generation(), g0 + 1);
        assert!(w.errors().is_empty());
        assert_eq!(presented_leaf(&w, &root), new.cert.der().to_vec());
    }

    #[test]
    fn trust_files_reload_for_root_rotation() {
        let (old, new) = (ca("mesh root 2025"), ca("mesh root 2026"));
        let f = Files::new();
        f.put("roots.pem", &old.cert.pem());
        let gw_b = leaf(&old, GW_B);
        f.put_leaf(&gw_b);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &gw_b)]).unwrap();
        let g0 = w.generation();
        assert_eq!(w.current().trust.len(), 1);

        // The snapshot names other files: taken up at once; a bad list keeps the trust.
        f.put("new.pem", &new.cert.pem());
        assert!(w.set_trust_files(&[f.path("missing.pem")]).is_err());
        assert_eq!(w.generation(), g0);
        w.set_trust_files(&[f.path("roots.pem"), f.path("new.pem")])
            .unwrap();
        assert_eq!((w.generation(), w.current().trust.len()), (g0 + 1, 2));
        w.set_trust_files(&[f.path("roots.pem")]).unwrap();
        assert_eq!((w.generation(), w.current().trust.len()), (g0 + 2, 1));
        let g0 = w.generation();

        f.put("roots.pem", "not a certificate\n");
        let r = poll_settled(&w);
        assert!(r.errors[0].starts_with("trust:"), "{r:?}");
        assert_eq!(w.current().trust.len(), 1);

        f.put(
            "roots.pem",
            &format!("{}{}", old.cert.pem(), new.cert.pem()),
        );
        let r = poll_settled(&w);
        assert_eq!(r.reloaded, vec!["trust".to_string()]);
        assert_eq!(w.generation(), g0 + 1);
        assert_eq!(w.current().trust.len(), 2);
        // A client with a leaf from the new root is now accepted.
        let cur = w.current();
        let sc = server_config(cur.identity(GW_B).unwrap(), &cur.trust).unwrap();
        let cc = client_config(&identity(GW_A, &leaf(&new, GW_A)), &cur.trust, GW_B).unwrap();
        assert!(run(&cc, &sc, "reviews").ok());
    }

    #[test]
    fn set_identities_adds_keeps_and_drops() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        let b = leaf(&root, GW_B);
        f.put_leaf(&b);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[]).unwrap();
        let g0 = w.generation();
        assert!(w.current().identities.is_empty());

        let id_b = f.identity(GW_B, &b);
        w.set_identities(std::slice::from_ref(&id_b));
        assert_eq!(w.generation(), g0 + 1);
        w.set_identities(std::slice::from_ref(&id_b));
        assert_eq!(
            w.generation(),
            g0 + 1,
            "unchanged identities keep the generation"
        );

        // Files unreadable: the snapshot's checked copy is used, the problem reported.
        let a = leaf(&root, GW_A);
        let id_a = identity(GW_A, &a);
        w.set_identities(&[id_b.clone(), id_a]);
        assert_eq!(w.generation(), g0 + 2);
        assert_eq!(
            w.current().identity(GW_A).unwrap().cert_chain_der[0],
            a.cert.der().to_vec()
        );
        assert!(w.errors().iter().any(|e| e.contains(GW_A)));

        w.set_identities(&[]);
        assert_eq!(w.generation(), g0 + 3);
        assert!(w.current().identity(GW_B).is_none());
        assert!(w.errors().is_empty());
    }

    #[test]
    fn expiry_metrics_and_warnings_at_a_fixed_time() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        // Valid 2020-01-01 to 2100-01-01: 80 years; 20 % is 16 years.
        let b = leaf(&root, GW_B);
        f.put_leaf(&b);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &b)]).unwrap();
        let at = |y, m, d| {
            UNIX_EPOCH + Duration::from_secs(date_time_ymd(y, m, d).unix_timestamp() as u64)
        };
        let not_after = date_time_ymd(2100, 1, 1).unix_timestamp();
        let root_after = date_time_ymd(2120, 1, 1).unix_timestamp();

        let now = at(2030, 6, 1);
        let mut out = String::new();
        w.expiry_metrics(now, &mut out);
        let now_s = date_time_ymd(2030, 6, 1).unix_timestamp();
        assert!(
            out.contains(&format!(
                "xdpmesh_identity_expiry_seconds{{id=\"{GW_B}\"}} {}\n",
                not_after - now_s
            )),
            "{out}"
        );
        assert!(out.contains("# TYPE xdpmesh_identity_expiry_seconds gauge\n"));
        assert!(
            out.contains("xdpmesh_trust_root_expiry_seconds{subject=\"CN=mesh root\",serial=\"")
                && out.contains(&format!("\"}} {}\n", root_after - now_s)),
            "{out}"
        );
        assert!(w.warnings(now).is_empty());

        // 2085: 15 of 80 years left (18.75 %) for the leaf; the root has 35 of 100.
        let warn = w.warnings(at(2085, 1, 1));
        assert_eq!(warn.len(), 1, "{warn:?}");
        assert!(warn[0].contains(GW_B) && warn[0].contains("18% of its lifetime"));
        // Just above 20 %: no warning.
        assert!(w.warnings(at(2083, 12, 1)).is_empty());

        // Expired (leaf) and root under 20 % (2110: 10 of 100 years).
        let warn = w.warnings(at(2110, 1, 1));
        assert_eq!(warn.len(), 2, "{warn:?}");
        assert!(warn[0].contains("expired"));
        assert!(warn[1].contains("trust root \"CN=mesh root\""));
        let mut out = String::new();
        w.expiry_metrics(at(2110, 1, 1), &mut out);
        assert!(out.contains(&format!("{GW_B}\"}} -")), "{out}");
    }

    #[test]
    fn trust_from_pem_files_reads_every_certificate_and_refuses_empty() {
        let (r1, r2, r3) = (ca("one"), ca("two"), ca("three"));
        let f = Files::new();
        f.put("a.pem", &format!("{}{}", r1.cert.pem(), r2.cert.pem()));
        f.put("b.pem", &r3.cert.pem());
        f.put("empty.pem", "");
        let t = MeshTrust::from_pem_files(&[f.path("a.pem"), f.path("b.pem")]).unwrap();
        assert_eq!(t.len(), 3);
        assert!(matches!(
            MeshTrust::from_pem_files(&[f.path("empty.pem")]),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(matches!(
            MeshTrust::from_pem_files(&[f.path("missing.pem")]),
            Err(TlsError::Io { .. })
        ));
        assert!(matches!(
            MeshTrust::from_der(Vec::new()),
            Err(TlsError::NoTrustRoots)
        ));
    }
}
