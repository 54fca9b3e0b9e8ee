//! The proxy engine: sessions that join an accepted connection to an upstream one, over any
//! [`Net`]. Sans-IO apart from the transport it is handed: the caller feeds it transport
//! events and calls [`Engine::progress`]; nothing here sleeps or reads a clock.
//!
//! Call order, per loop iteration:
//! ```text
//! while let Some(ev) = net.poll_event() { engine.handle(&mut net, now, ev) }
//! engine.progress(&mut net, now)
//! ```
//!
//! Sessions:
//! - outbound `tcp` listener: route by listener to its service and pick an endpoint;
//! - outbound `http` listener: parse each request head, route it by host, path, method and
//!   headers, pick a weighted backend and an endpoint by the service's balancer, stream the
//!   body both ways; keep-alive, `Expect: 100-continue` (interim responses are relayed) and
//!   upgrades (a 101 turns the session into a tunnel); `x-request-id` and `traceparent` are
//!   added when absent;
//! - inbound `mesh` listener: TLS server requiring a mesh client certificate; the SNI names
//!   the service, the preamble the endpoint (which must be a local endpoint of that service)
//!   and whether the hop carries HTTP; the caller's SPIFFE ID is authorized (per request for
//!   HTTP: 403; per connection for TCP: close_notify and close), then bytes go to the
//!   endpoint over plain TCP.
//!
//! Outbound, an endpoint `via` a peer gateway is reached over TLS 1.3 as the identity of the
//! client's source address, SNI naming the service, the first plaintext bytes being the
//! [`preamble`]; a local endpoint gets plain TCP.

use super::http::{self, BodyFramer, HttpError, RequestHead};
use super::lb::{self, Balancer};
use super::leg::{Leg, LegError};
use super::net::{Net, NetEvent};
use control::schema::Protocol;
use control::snapshot::{EndpointRt, IdentityRt, ServiceRt};
use control::{Publisher, Snapshot};
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tcpstack::Instant;

/// Plaintext buffered per direction of a session.
const BUF: usize = 64 * 1024;

/// The first line on a mesh hop, after the TLS handshake: `XM/1 <endpoint> <tcp|http>\n`.
pub mod preamble {
    use std::net::SocketAddrV4;

    /// Longest line accepted (bytes, newline included).
    pub const MAX: usize = 64;

    pub fn encode(endpoint: SocketAddrV4, http: bool) -> Vec<u8> {
        format!("XM/1 {endpoint} {}\n", if http { "http" } else { "tcp" }).into_bytes()
    }

    /// `Ok(None)`: incomplete; `Ok(Some((endpoint, http, len)))`; `Err(())`: malformed.
    #[allow(clippy::result_unit_err)]
    pub fn decode(buf: &[u8]) -> Result<Option<(SocketAddrV4, bool, usize)>, ()> {
        let Some(nl) = buf.iter().take(MAX).position(|&b| b == b'\n') else {
            return if buf.len() >= MAX { Err(()) } else { Ok(None) };
        };
        let line = std::str::from_utf8(&buf[..nl]).map_err(|_| ())?;
        let mut parts = line.split(' ');
        if parts.next() != Some("XM/1") {
            return Err(());
        }
        let ep: SocketAddrV4 = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let http = match parts.next() {
            Some("http") => true,
            Some("tcp") => false,
            _ => return Err(()),
        };
        if parts.next().is_some() {
            return Err(());
        }
        Ok(Some((ep, http, nl + 1)))
    }
}

/// Where the engine gets TLS configurations (built from the current identities and trust).
/// The identity comes from the tables the connection uses; an implementation may serve newer
/// material for the same SPIFFE ID (a reloaded certificate).
pub trait MeshTls: Send + Sync {
    /// The server side of a mesh listener presenting `identity`.
    fn server(&self, identity: &IdentityRt) -> Option<Arc<rustls::ServerConfig>>;
    /// The client side as `identity`, expecting the peer gateway to be `peer_identity`.
    fn client(
        &self,
        identity: &IdentityRt,
        peer_identity: &str,
    ) -> Option<Arc<rustls::ClientConfig>>;
}

/// For tables without `[trust]`: no mesh listener and no peer, so no TLS is ever asked for.
pub struct NoMeshTls;

impl MeshTls for NoMeshTls {
    fn server(&self, _: &IdentityRt) -> Option<Arc<rustls::ServerConfig>> {
        None
    }
    fn client(&self, _: &IdentityRt, _: &str) -> Option<Arc<rustls::ClientConfig>> {
        None
    }
}

/// Why a connection or request was refused or cut; a label on `xdpmesh_proxy_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    UnsupportedListener,
    NoService,
    NoRoute,
    NoEndpoint,
    UnknownPeer,
    NoIdentity,
    NoTlsConfig,
    ConnectFailed,
    UpstreamReset,
    TlsHandshake,
    PeerIdentity,
    BadPreamble,
    UnknownService,
    EndpointNotLocal,
    Denied,
    BadRequest,
    BadResponse,
}

impl Refusal {
    pub const ALL: [Refusal; 17] = [
        Refusal::UnsupportedListener,
        Refusal::NoService,
        Refusal::NoRoute,
        Refusal::NoEndpoint,
        Refusal::UnknownPeer,
        Refusal::NoIdentity,
        Refusal::NoTlsConfig,
        Refusal::ConnectFailed,
        Refusal::UpstreamReset,
        Refusal::TlsHandshake,
        Refusal::PeerIdentity,
        Refusal::BadPreamble,
        Refusal::UnknownService,
        Refusal::EndpointNotLocal,
        Refusal::Denied,
        Refusal::BadRequest,
        Refusal::BadResponse,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnsupportedListener => "unsupported_listener",
            Refusal::NoService => "no_service",
            Refusal::NoRoute => "no_route",
            Refusal::NoEndpoint => "no_endpoint",
            Refusal::UnknownPeer => "unknown_peer",
            Refusal::NoIdentity => "no_identity",
            Refusal::NoTlsConfig => "no_tls_config",
            Refusal::ConnectFailed => "connect_failed",
            Refusal::UpstreamReset => "upstream_reset",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::PeerIdentity => "peer_identity",
            Refusal::BadPreamble => "bad_preamble",
            Refusal::UnknownService => "unknown_service",
            Refusal::EndpointNotLocal => "endpoint_not_local",
            Refusal::Denied => "denied",
            Refusal::BadRequest => "bad_request",
            Refusal::BadResponse => "bad_response",
        }
    }

    /// The status an HTTP client gets for it.
    fn status(self) -> u16 {
        match self {
            Refusal::Denied => 403,
            Refusal::NoRoute | Refusal::NoService | Refusal::UnknownService => 404,
            Refusal::BadRequest => 400,
            Refusal::NoEndpoint => 503,
            _ => 502,
        }
    }
}

/// Counters of one engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub accepted: u64,
    pub requests: u64,
    pub upstream_connects: u64,
    pub upstream_reused: u64,
    pub tls_resumed: u64,
    pub completed: u64,
    pub bytes_down_to_up: u64,
    pub bytes_up_to_down: u64,
    pub refused: [u64; Refusal::ALL.len()],
}

impl ProxyStats {
    fn refuse(&mut self, r: Refusal) {
        self.refused[r as usize] += 1;
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Down,
    Up,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    /// Inbound mesh: TLS handshake, then the preamble.
    Handshake,
    /// Outbound TCP: waiting for the upstream TCP (and TLS) handshake.
    Connecting,
    /// TCP: bytes flow both ways.
    Pipe,
    /// HTTP: request/response exchanges.
    Http,
}

/// Where an HTTP session sends its requests.
enum Target {
    /// Outbound: route each request through the tables.
    Route,
    /// Inbound mesh: every request goes to this local endpoint of the service, if `peer` may.
    /// By name: each request is checked against the tables current when it arrives.
    Fixed {
        service: String,
        endpoint: SocketAddrV4,
        peer: String,
    },
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum ReqPhase {
    Head,
    Body,
    /// Sent whole; waiting for the response before the next head.
    Sent,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum RespPhase {
    /// No request outstanding.
    Idle,
    Head,
    Body,
}

struct HttpState {
    target: Target,
    req: ReqPhase,
    resp: RespPhase,
    req_body: Option<BodyFramer>,
    resp_body: Option<BodyFramer>,
    /// The current request's method (response framing depends on it).
    method: String,
    client_keep_alive: bool,
    /// The endpoint the current upstream connection goes to, and whether it may be reused.
    up_endpoint: Option<SocketAddrV4>,
    up_reusable: bool,
    /// (service, endpoint index, start) of the request in flight, for the balancer.
    lb: Option<(u32, u32, Instant)>,
    /// After this response, close the client connection.
    close_after: bool,
    /// A 101 turned the session into a tunnel.
    tunnel: bool,
}

struct Session<C> {
    snap: Arc<Snapshot>,
    phase: Phase,
    client: SocketAddrV4,
    down: Leg<C>,
    up: Option<Leg<C>>,
    /// Plaintext read from down, not yet handled (and the reverse).
    d_in: Vec<u8>,
    u_in: Vec<u8>,
    /// Plaintext to write to up (and down), not yet taken by the leg.
    to_up: Vec<u8>,
    to_down: Vec<u8>,
    down_eof: bool,
    up_eof: bool,
    /// Outbound to a peer: the preamble to send first.
    preamble: Option<Vec<u8>>,
    http: Option<HttpState>,
    closed: bool,
}

/// The proxy of one worker.
pub struct Engine<C> {
    publisher: Arc<Publisher>,
    tls: Arc<dyn MeshTls>,
    sessions: Vec<Option<Session<C>>>,
    free: Vec<usize>,
    by_conn: HashMap<C, (usize, Side)>,
    dirty: Vec<usize>,
    /// One balancer per service of the current generation (each worker has its own).
    balancers: HashMap<u32, Balancer>,
    balancer_gen: u64,
    rng: rand_chacha::ChaCha8Rng,
    pub stats: ProxyStats,
    scratch: Vec<u8>,
    buf: Vec<u8>,
}

impl<C: Copy + Eq + std::hash::Hash + std::fmt::Debug> Engine<C> {
    /// `seed` drives weighted picks and request ids: give it from the OS's random source
    /// (they need unpredictability, not a fixed sequence), or fixed in tests.
    pub fn new(publisher: Arc<Publisher>, tls: Arc<dyn MeshTls>, seed: [u8; 32]) -> Self {
        Engine {
            publisher,
            tls,
            sessions: Vec::new(),
            free: Vec::new(),
            by_conn: HashMap::new(),
            dirty: Vec::new(),
            balancers: HashMap::new(),
            balancer_gen: 0,
            rng: rand_chacha::ChaCha8Rng::from_seed(seed),
            stats: ProxyStats::default(),
            scratch: vec![0; 64 * 1024],
            buf: vec![0; 64 * 1024],
        }
    }

    /// Sessions in progress.
    pub fn active(&self) -> usize {
        self.sessions.len() - self.free.len()
    }

    /// Start of a drain: HTTP sessions between requests close now; one in a request closes
    /// after its response. TCP sessions run on until they end or the drain's deadline.
    pub fn drain_idle(&mut self) {
        for (sid, s) in self.sessions.iter_mut().enumerate() {
            if let Some(h) = s.as_mut().and_then(|s| s.http.as_mut()) {
                h.close_after = true;
                self.dirty.push(sid);
            }
        }
    }

    /// Resets every session (the end of a drain).
    pub fn abort_all<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        for sid in 0..self.sessions.len() {
            if let Some(mut s) = self.sessions[sid].take() {
                if !s.closed {
                    self.teardown(net, now, &mut s, true);
                }
            }
        }
        self.by_conn.clear();
        self.free = (0..self.sessions.len()).collect();
    }

    /// Feeds one transport event. Returns `false` for a connection the engine does not know
    /// (the caller may own it, e.g. a built-in service).
    pub fn handle<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant, ev: NetEvent<C>) -> bool {
        match ev {
            NetEvent::Accepted {
                conn,
                local,
                remote,
            } => self.accept(net, now, conn, local, remote),
            NetEvent::Connected(c) => {
                let Some(&(sid, side)) = self.by_conn.get(&c) else {
                    return false;
                };
                if let Some(s) = self.sessions[sid].as_mut() {
                    if side == Side::Up {
                        if let Some(up) = s.up.as_mut().filter(|u| u.conn == c) {
                            up.connected = true;
                        }
                    }
                }
                self.dirty.push(sid);
                true
            }
            NetEvent::Readable(c) | NetEvent::Writable(c) => {
                let Some(&(sid, _)) = self.by_conn.get(&c) else {
                    return false;
                };
                self.dirty.push(sid);
                true
            }
            NetEvent::Closed(c) | NetEvent::Reset(c) => {
                let Some((sid, side)) = self.by_conn.remove(&c) else {
                    return false;
                };
                let reset = matches!(ev, NetEvent::Reset(_));
                if let Some(mut s) = self.sessions[sid].take() {
                    if reset && !s.closed {
                        self.on_reset(net, now, &mut s, side, c);
                    }
                    self.sessions[sid] = Some(s);
                }
                self.dirty.push(sid);
                self.maybe_release(sid);
                true
            }
        }
    }

    fn on_reset<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        s: &mut Session<C>,
        side: Side,
        c: C,
    ) {
        let current_up = s.up.as_ref().is_some_and(|u| u.conn == c);
        if side == Side::Up && !current_up {
            return; // an upstream the session already let go of
        }
        let connecting = side == Side::Up && s.up.as_ref().is_some_and(|u| !u.connected);
        // An HTTP client whose upstream failed before the response started gets a status.
        if side == Side::Up {
            if let Some(h) = s.http.as_mut() {
                if h.resp == RespPhase::Head && !h.tunnel {
                    let r = if connecting {
                        Refusal::ConnectFailed
                    } else {
                        Refusal::UpstreamReset
                    };
                    self.stats.refuse(r);
                    s.up = None;
                    h.up_endpoint = None;
                    h.resp = RespPhase::Idle;
                    h.req = ReqPhase::Head;
                    h.close_after = true;
                    s.to_down.extend_from_slice(&http::simple_response(
                        r.status(),
                        http::reason_phrase(r.status()),
                        format!("{}\n", r.label()).as_bytes(),
                    ));
                    return;
                }
            }
        }
        self.stats.refuse(if connecting {
            Refusal::ConnectFailed
        } else if side == Side::Up {
            Refusal::UpstreamReset
        } else {
            // The client went away: not a refusal, but the session ends.
            s.closed = true;
            self.teardown(net, now, s, true);
            return;
        });
        self.teardown(net, now, s, true);
    }

    fn accept<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        conn: C,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> bool {
        let snap = self.publisher.load();
        let listener = snap
            .listeners
            .iter()
            .find(|l| l.bind == SocketAddr::V4(local))
            .or_else(|| {
                snap.listeners
                    .iter()
                    .find(|l| l.bind.ip().is_unspecified() && l.bind.port() == local.port())
            });
        let Some(listener) = listener else {
            return false;
        };
        self.stats.accepted += 1;
        let mut session = Session {
            snap: snap.clone(),
            phase: Phase::Http,
            client: remote,
            down: Leg::plain(conn, true),
            up: None,
            d_in: Vec::new(),
            u_in: Vec::new(),
            to_up: Vec::new(),
            to_down: Vec::new(),
            down_eof: false,
            up_eof: false,
            preamble: None,
            http: None,
            closed: false,
        };
        match listener.protocol {
            Protocol::Tcp => {
                let Some(svc) = listener.service else {
                    return self.refuse_accept(net, conn, Refusal::NoService);
                };
                let Some(service) = snap.services.get(svc as usize) else {
                    return self.refuse_accept(net, conn, Refusal::NoService);
                };
                let ep = match self.pick(&snap, &service.default_route, None, remote, now) {
                    Ok(ep) => ep,
                    Err(r) => return self.refuse_accept(net, conn, r),
                };
                match self.open_upstream(net, now, &snap, ep, remote, false) {
                    Ok((up, preamble)) => {
                        session.phase = Phase::Connecting;
                        session.up = Some(up);
                        session.preamble = preamble;
                    }
                    Err(r) => return self.refuse_accept(net, conn, r),
                }
            }
            Protocol::Http => {
                session.http = Some(HttpState::new(Target::Route));
            }
            Protocol::Mesh => {
                let server = listener
                    .identity
                    .and_then(|i| snap.identities.get(i as usize))
                    .and_then(|i| self.tls.server(i));
                let Some(tls) = server.and_then(|cfg| rustls::ServerConnection::new(cfg).ok())
                else {
                    return self.refuse_accept(net, conn, Refusal::NoTlsConfig);
                };
                session.down = Leg::tls(conn, tls.into(), true);
                session.phase = Phase::Handshake;
            }
            _ => return self.refuse_accept(net, conn, Refusal::UnsupportedListener),
        }
        let sid = self.insert(session);
        self.by_conn.insert(conn, (sid, Side::Down));
        if let Some(up) = self.sessions[sid].as_ref().and_then(|s| s.up.as_ref()) {
            self.by_conn.insert(up.conn, (sid, Side::Up));
        }
        self.dirty.push(sid);
        true
    }

    fn refuse_accept<N: Net<Conn = C>>(&mut self, net: &mut N, conn: C, r: Refusal) -> bool {
        self.stats.refuse(r);
        net.abort(conn);
        true
    }

    fn insert(&mut self, s: Session<C>) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.sessions[i] = Some(s);
                i
            }
            None => {
                self.sessions.push(Some(s));
                self.sessions.len() - 1
            }
        }
    }

    fn balancer(&mut self, snap: &Snapshot, svc: u32) -> Option<&mut Balancer> {
        if snap.generation != self.balancer_gen {
            // New tables: new balancers (their state described the old endpoint arrays).
            self.balancers.clear();
            self.balancer_gen = snap.generation;
        }
        let service = snap.services.get(svc as usize)?;
        let seed = self.rng.next_u64();
        Some(
            self.balancers
                .entry(svc)
                .or_insert_with(|| Balancer::for_service(service, seed)),
        )
    }

    /// Picks the endpoint for a connection or request: a weighted backend of `route`, then
    /// an endpoint by the balancer of the backend's service (hashing on the request or the
    /// client's address where the service says so). Returns (service, endpoint index).
    fn pick(
        &mut self,
        snap: &Snapshot,
        route: &control::snapshot::RouteRt,
        head: Option<&RequestHead>,
        client: SocketAddrV4,
        now: Instant,
    ) -> Result<(u32, u32), Refusal> {
        let backend = route.pick(self.rng.next_u64()).ok_or(Refusal::NoEndpoint)?;
        let target = backend.service;
        let tsvc = snap
            .services
            .get(target as usize)
            .ok_or(Refusal::NoService)?;
        let hash = tsvc
            .hash_key
            .as_ref()
            .and_then(|k| lb::request_hash(k, head, IpAddr::V4(*client.ip())));
        let candidates = backend.endpoints.clone();
        let ep = self
            .balancer(snap, target)
            .and_then(|b| b.pick(&candidates, hash, now_duration(now)))
            .ok_or(Refusal::NoEndpoint)?;
        Ok((target, ep))
    }

    /// Opens the connection to an endpoint: TLS to its peer gateway, or plain when local.
    #[allow(clippy::too_many_arguments)]
    fn open_upstream<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        snap: &Snapshot,
        (svc, ep): (u32, u32),
        client: SocketAddrV4,
        http: bool,
    ) -> Result<(Leg<C>, Option<Vec<u8>>), Refusal> {
        let service = snap.services.get(svc as usize).ok_or(Refusal::NoService)?;
        let ep: &EndpointRt = service
            .endpoints
            .get(ep as usize)
            .ok_or(Refusal::NoEndpoint)?;
        let SocketAddr::V4(ep_addr) = ep.address else {
            return Err(Refusal::NoEndpoint);
        };
        match ep.via {
            None => {
                let c = net
                    .connect(now, ep_addr)
                    .map_err(|_| Refusal::ConnectFailed)?;
                self.stats.upstream_connects += 1;
                Ok((Leg::plain(c, false), None))
            }
            Some(peer) => {
                let (tls, peer_addr) = self.client_tls(snap, service, peer, client)?;
                let c = net
                    .connect(now, peer_addr)
                    .map_err(|_| Refusal::ConnectFailed)?;
                self.stats.upstream_connects += 1;
                Ok((
                    Leg::tls(c, tls.into(), false),
                    Some(preamble::encode(ep_addr, http)),
                ))
            }
        }
    }

    fn client_tls(
        &self,
        snap: &Snapshot,
        service: &ServiceRt,
        peer: u32,
        client: SocketAddrV4,
    ) -> Result<(rustls::ClientConnection, SocketAddrV4), Refusal> {
        let peer = snap.peers.get(peer as usize).ok_or(Refusal::UnknownPeer)?;
        let SocketAddr::V4(peer_addr) = peer.address else {
            return Err(Refusal::UnknownPeer);
        };
        let identity = snap
            .identity_for_source(IpAddr::V4(*client.ip()))
            .ok_or(Refusal::NoIdentity)?;
        let cfg = self
            .tls
            .client(identity, &peer.identity)
            .ok_or(Refusal::NoTlsConfig)?;
        let sni = super::tls::sni_for_service(&service.name).map_err(|_| Refusal::NoTlsConfig)?;
        let tls = rustls::ClientConnection::new(cfg, sni).map_err(|_| Refusal::NoTlsConfig)?;
        Ok((tls, peer_addr))
    }

    /// Moves bytes on every session that had an event.
    pub fn progress<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        while let Some(sid) = self.dirty.pop() {
            if let Some(mut s) = self.sessions.get_mut(sid).and_then(Option::take) {
                if !s.closed {
                    if let Err(e) = self.step(net, now, sid, &mut s) {
                        self.step_failed(net, now, sid, &mut s, e);
                    }
                }
                self.sessions[sid] = Some(s);
                self.maybe_release(sid);
            }
        }
    }

    /// A step failed: an HTTP client whose upstream failed before its response started
    /// gets a 502 and keeps nothing half-done; anything else ends the session.
    fn step_failed<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        e: StepError,
    ) {
        let classify = |e: &LegError| match e {
            LegError::Reset => Refusal::UpstreamReset,
            LegError::Tls(m) if m.contains("peer identity") => Refusal::PeerIdentity,
            LegError::Tls(_) => Refusal::TlsHandshake,
        };
        if let StepError::Up(le) = &e {
            let r = classify(le);
            if let Some(h) = s
                .http
                .as_mut()
                .filter(|h| h.resp == RespPhase::Head && !h.tunnel)
            {
                self.stats.refuse(r);
                h.up_endpoint = None;
                h.resp = RespPhase::Idle;
                h.req = ReqPhase::Head;
                h.close_after = true;
                if let Some(up) = s.up.take() {
                    if self.by_conn.remove(&up.conn).is_some() {
                        net.abort(up.conn);
                    }
                }
                s.up_eof = false;
                s.to_up.clear();
                s.to_down.extend_from_slice(&http::simple_response(
                    502,
                    http::reason_phrase(502),
                    format!("{}\n", r.label()).as_bytes(),
                ));
                self.dirty.push(sid);
                return;
            }
        }
        let r = match e {
            StepError::Refused(r) => r,
            StepError::Leg(le) | StepError::Up(le) => classify(&le),
        };
        self.stats.refuse(r);
        self.teardown(net, now, s, true);
    }

    fn step<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
    ) -> Result<(), StepError> {
        if s.phase == Phase::Handshake {
            self.inbound_handshake(net, now, sid, s)?;
            if s.phase == Phase::Handshake {
                return Ok(());
            }
        }
        if s.phase == Phase::Connecting {
            let up = s.up.as_mut().expect("a connecting session has an upstream");
            if !up.connected {
                return Ok(());
            }
            up.handshake(net, &mut self.scratch)?;
            if up.is_handshaking() {
                return Ok(());
            }
            self.note_resumption(up);
            if let Some(p) = s.preamble.take() {
                s.to_up.splice(0..0, p);
            }
            s.phase = Phase::Pipe;
        }
        match s.phase {
            Phase::Pipe => self.pipe(net, now, s),
            Phase::Http => self.http(net, now, sid, s),
            _ => Ok(()),
        }
    }

    fn note_resumption(&mut self, up: &Leg<C>) {
        if let Some(rustls::Connection::Client(c)) = up.tls_state() {
            if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                self.stats.tls_resumed += 1;
            }
        }
    }

    /// Inbound mesh: finish the handshake, then read the preamble and open the endpoint.
    fn inbound_handshake<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
    ) -> Result<(), StepError> {
        s.down.handshake(net, &mut self.scratch)?;
        if s.down.is_handshaking() {
            return Ok(());
        }
        let (sni, peer) = match s.down.tls_state() {
            Some(rustls::Connection::Server(t)) => (
                t.server_name().map(str::to_owned),
                super::tls::peer_identity(t),
            ),
            _ => (None, None),
        };
        let svc = sni
            .as_deref()
            .and_then(super::tls::service_from_sni)
            .and_then(|name| s.snap.service_id(&name))
            .ok_or(StepError::Refused(Refusal::UnknownService))?;
        let peer = peer.ok_or(StepError::Refused(Refusal::PeerIdentity))?;
        // The preamble (bounded).
        while !s.d_in.contains(&b'\n') && s.d_in.len() < preamble::MAX {
            let room = preamble::MAX - s.d_in.len();
            match s.down.read(net, &mut self.buf[..room], &mut self.scratch)? {
                Ok(0) => return Err(StepError::Refused(Refusal::BadPreamble)),
                Ok(n) => s.d_in.extend_from_slice(&self.buf[..n]),
                Err(_) => return Ok(()),
            }
        }
        let (ep, is_http, len) = match preamble::decode(&s.d_in) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(()),
            Err(()) => return Err(StepError::Refused(Refusal::BadPreamble)),
        };
        s.d_in.drain(..len);
        let local = s.snap.services[svc as usize]
            .endpoints
            .iter()
            .any(|e| e.via.is_none() && e.address == SocketAddr::V4(ep));
        if !local {
            return Err(StepError::Refused(Refusal::EndpointNotLocal));
        }
        if is_http {
            // Authorized per request (methods and paths may matter).
            let mut h = HttpState::new(Target::Fixed {
                service: s.snap.services[svc as usize].name.clone(),
                endpoint: ep,
                peer,
            });
            h.req = ReqPhase::Head;
            s.http = Some(h);
            s.phase = Phase::Http;
            return Ok(());
        }
        if !s.snap.authorize(svc, &peer, None) {
            // L4: the caller learns by close_notify and close, not by a byte of the service.
            self.stats.refuse(Refusal::Denied);
            s.down.finish(net)?;
            s.closed = true;
            if self.by_conn.contains_key(&s.down.conn) {
                net.close(now, s.down.conn);
            }
            return Ok(());
        }
        let up = net
            .connect(now, ep)
            .map_err(|_| StepError::Refused(Refusal::ConnectFailed))?;
        self.stats.upstream_connects += 1;
        self.by_conn.insert(up, (sid, Side::Up));
        s.up = Some(Leg::plain(up, false));
        // Bytes after the preamble belong to the service.
        s.to_up = std::mem::take(&mut s.d_in);
        s.phase = Phase::Connecting;
        Ok(())
    }

    /// TCP: copy both ways until both ends finished.
    fn pipe<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        s: &mut Session<C>,
    ) -> Result<(), StepError> {
        let up = s.up.as_mut().expect("a piping session has an upstream");
        loop {
            let mut moved = false;
            moved |= pump(
                net,
                &mut s.down,
                up,
                &mut s.to_up,
                &mut s.down_eof,
                &mut self.buf,
                &mut self.scratch,
                &mut self.stats.bytes_down_to_up,
            )?;
            moved |= pump(
                net,
                up,
                &mut s.down,
                &mut s.to_down,
                &mut s.up_eof,
                &mut self.buf,
                &mut self.scratch,
                &mut self.stats.bytes_up_to_down,
            )?;
            if !moved {
                break;
            }
        }
        if s.down_eof
            && s.up_eof
            && s.to_up.is_empty()
            && s.to_down.is_empty()
            && s.down.done_sending()
            && up.done_sending()
        {
            self.stats.completed += 1;
            self.teardown(net, now, s, false);
        }
        Ok(())
    }

    /// HTTP: read, frame and forward requests and responses.
    fn http<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
    ) -> Result<(), StepError> {
        loop {
            let mut moved = false;
            // Read what fits.
            moved |= fill(
                net,
                &mut s.down,
                &mut s.d_in,
                &mut s.down_eof,
                &mut self.buf,
                &mut self.scratch,
            )?;
            if let Some(up) = s.up.as_mut() {
                if up.connected && !up.is_handshaking() {
                    moved |= fill(
                        net,
                        up,
                        &mut s.u_in,
                        &mut s.up_eof,
                        &mut self.buf,
                        &mut self.scratch,
                    )
                    .map_err(StepError::Up)?;
                } else if up.connected {
                    up.handshake(net, &mut self.scratch)
                        .map_err(StepError::Up)?;
                    if !up.is_handshaking() {
                        self.note_resumption(up);
                        moved = true;
                    }
                }
            }
            moved |= self.http_machine(net, now, sid, s)?;
            // Write what is owed.
            let before = (s.to_up.len(), s.to_down.len());
            if let Some(up) = s.up.as_mut() {
                if !s.to_up.is_empty() && up.connected && !up.is_handshaking() {
                    let n = up.write(net, &s.to_up).map_err(StepError::Up)?;
                    s.to_up.drain(..n);
                    self.stats.bytes_down_to_up += n as u64;
                } else {
                    up.flush(net).map_err(StepError::Up)?;
                }
            }
            if !s.to_down.is_empty() {
                let n = s.down.write(net, &s.to_down)?;
                s.to_down.drain(..n);
                self.stats.bytes_up_to_down += n as u64;
            } else {
                s.down.flush(net)?;
            }
            moved |= before != (s.to_up.len(), s.to_down.len());
            if s.closed {
                return Ok(());
            }
            if !moved {
                break;
            }
        }
        let h = s.http.as_ref().expect("an HTTP session");
        let idle = h.req == ReqPhase::Head && h.resp == RespPhase::Idle && s.d_in.is_empty();
        let tunnel_done = h.tunnel && s.down_eof && s.up_eof;
        if (h.close_after && idle && s.to_down.is_empty()) || (s.down_eof && idle) || tunnel_done {
            if !s.down.done_sending() {
                s.down.finish(net)?;
            }
            if s.down.done_sending() && s.to_down.is_empty() {
                self.stats.completed += 1;
                self.teardown(net, now, s, false);
            }
        }
        Ok(())
    }

    /// One pass of the request and response state machines; returns whether it moved.
    fn http_machine<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
    ) -> Result<bool, StepError> {
        let mut moved = false;
        let h = s.http.as_mut().expect("an HTTP session");
        if h.tunnel {
            // After a 101: opaque bytes both ways.
            if !s.d_in.is_empty() && s.to_up.len() < BUF {
                s.to_up.append(&mut s.d_in);
                moved = true;
            }
            if !s.u_in.is_empty() && s.to_down.len() < BUF {
                s.to_down.append(&mut s.u_in);
                moved = true;
            }
            if s.down_eof && s.d_in.is_empty() && s.to_up.is_empty() {
                if let Some(up) = s.up.as_mut() {
                    if !up.done_sending() {
                        up.finish(net)?;
                    }
                }
            }
            return Ok(moved);
        }
        // Request side.
        if h.req == ReqPhase::Head && h.resp == RespPhase::Idle && !h.close_after {
            match http::parse_request(&s.d_in, &http::Limits::default()) {
                Err(e) => {
                    self.stats.refuse(Refusal::BadRequest);
                    self.http_error(s, e);
                    return Ok(true);
                }
                Ok(None) => {}
                Ok(Some((mut head, len))) => {
                    s.d_in.drain(..len);
                    self.stats.requests += 1;
                    moved = true;
                    match self.dispatch(net, now, sid, s, &mut head) {
                        Ok(()) => {}
                        Err(r) => {
                            self.stats.refuse(r);
                            let h = s.http.as_mut().expect("an HTTP session");
                            h.close_after = true;
                            s.to_down.extend_from_slice(&http::simple_response(
                                r.status(),
                                http::reason_phrase(r.status()),
                                format!("{}\n", r.label()).as_bytes(),
                            ));
                            // The request's body, if any, is not read: the connection closes.
                            return Ok(true);
                        }
                    }
                }
            }
        }
        let h = s.http.as_mut().expect("an HTTP session");
        if h.req == ReqPhase::Body && s.to_up.len() < BUF {
            let framer = h.req_body.as_mut().expect("a body phase has a framer");
            match framer.advance(&s.d_in) {
                Ok(a) => {
                    if a.body_bytes > 0 {
                        s.to_up.extend(s.d_in.drain(..a.body_bytes));
                        moved = true;
                    }
                    if a.done {
                        h.req = ReqPhase::Sent;
                        h.req_body = None;
                        moved = true;
                    } else if s.down_eof && s.d_in.is_empty() {
                        // The client stopped mid-body: nothing good can follow.
                        return Err(StepError::Refused(Refusal::BadRequest));
                    }
                }
                Err(_) => return Err(StepError::Refused(Refusal::BadRequest)),
            }
        }
        // Response side.
        if h.resp == RespPhase::Head {
            match http::parse_response(&s.u_in, &http::Limits::default(), &h.method) {
                Err(_) => {
                    self.stats.refuse(Refusal::BadResponse);
                    return Err(StepError::Refused(Refusal::BadResponse));
                }
                Ok(None) => {
                    if s.up_eof {
                        self.stats.refuse(Refusal::BadResponse);
                        h.close_after = true;
                        h.resp = RespPhase::Idle;
                        h.req = ReqPhase::Head;
                        s.to_down.extend_from_slice(&http::simple_response(
                            502,
                            "Bad Gateway",
                            b"",
                        ));
                        return Ok(true);
                    }
                }
                Ok(Some((head, len))) => {
                    s.u_in.drain(..len);
                    moved = true;
                    http::write_response_head(&head, &mut s.to_down, &[]);
                    if head.status == 101 {
                        h.tunnel = true;
                        h.resp = RespPhase::Idle;
                        return Ok(true);
                    }
                    if head.is_interim() {
                        // 100 Continue and friends: relayed, the final response follows.
                        return Ok(true);
                    }
                    if !head.keep_alive {
                        h.up_reusable = false;
                        h.close_after |= true;
                    }
                    h.resp_body = Some(BodyFramer::new(head.body));
                    h.resp = RespPhase::Body;
                }
            }
        }
        if h.resp == RespPhase::Body && s.to_down.len() < BUF {
            let framer = h.resp_body.as_mut().expect("a body phase has a framer");
            let a = framer
                .advance(&s.u_in)
                .map_err(|_| StepError::Refused(Refusal::BadResponse))?;
            if a.body_bytes > 0 {
                s.to_down.extend(s.u_in.drain(..a.body_bytes));
                moved = true;
            }
            let ended_by_close = s.up_eof && s.u_in.is_empty() && framer.eof().is_ok();
            if a.done || ended_by_close {
                if ended_by_close && !a.done {
                    h.up_reusable = false;
                    h.close_after = true;
                }
                h.resp = RespPhase::Idle;
                h.resp_body = None;
                if let Some((svc, ep, start)) = h.lb.take() {
                    let at = now_duration(now);
                    if let Some(b) = self.balancers.get_mut(&svc) {
                        b.finish(
                            ep,
                            now_duration(now).saturating_sub(now_duration(start)),
                            at,
                        );
                    }
                }
                let h = s.http.as_mut().expect("an HTTP session");
                if h.req != ReqPhase::Sent {
                    // The server answered before the body was sent: stop here.
                    h.close_after = true;
                    h.up_reusable = false;
                }
                h.req = ReqPhase::Head;
                if !h.client_keep_alive {
                    h.close_after = true;
                }
                if !h.up_reusable || s.up_eof {
                    self.release_upstream(net, now, s);
                }
                moved = true;
            } else if s.up_eof && s.u_in.is_empty() {
                // Truncated response: the client must not take it as complete.
                return Err(StepError::Refused(Refusal::BadResponse));
            }
        }
        Ok(moved)
    }

    fn http_error(&mut self, s: &mut Session<C>, e: HttpError) {
        let h = s.http.as_mut().expect("an HTTP session");
        h.close_after = true;
        s.to_down.extend_from_slice(&e.response());
        s.d_in.clear();
    }

    /// Routes a request head and sends it upstream.
    fn dispatch<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        head: &mut RequestHead,
    ) -> Result<(), Refusal> {
        // A request uses the tables current when its head arrives (a TCP connection keeps
        // the ones it started with): a reload changes routing and policy on kept-alive
        // connections too, without dropping them.
        s.snap = self.publisher.load();
        let snap = s.snap.clone();
        let (svc, ep, endpoint) = match &s.http.as_ref().expect("an HTTP session").target {
            Target::Fixed {
                service,
                endpoint,
                peer,
            } => {
                let svc = snap.service_id(service).ok_or(Refusal::UnknownService)?;
                if !snap.authorize(svc, peer, Some((&head.method, head.path()))) {
                    return Err(Refusal::Denied);
                }
                let local = snap.services[svc as usize]
                    .endpoints
                    .iter()
                    .any(|e| e.via.is_none() && e.address == SocketAddr::V4(*endpoint));
                if !local {
                    return Err(Refusal::EndpointNotLocal);
                }
                (svc, None, *endpoint)
            }
            Target::Route => {
                let host = head.host().unwrap_or("").to_string();
                let hit = snap
                    .route(&host, &head.method, head.target.as_str(), &*head)
                    .ok_or(Refusal::NoRoute)?;
                let route = hit.route;
                let (tsvc, ep) = self.pick(&snap, route, Some(head), s.client, now)?;
                let service = &snap.services[tsvc as usize];
                let SocketAddr::V4(addr) = service.endpoints[ep as usize].address else {
                    return Err(Refusal::NoEndpoint);
                };
                (tsvc, Some(ep), addr)
            }
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.rng.next_u64());
        if matches!(s.http.as_ref().map(|h| &h.target), Some(Target::Route)) {
            http::ensure_request_id(head, &mut rng);
            http::ensure_traceparent(head, &mut rng);
        }
        // Reuse the upstream connection when it goes to the same endpoint and is idle.
        let reuse = {
            let h = s.http.as_ref().expect("an HTTP session");
            h.up_endpoint == Some(endpoint) && h.up_reusable && !s.up_eof && s.up.is_some()
        };
        if reuse {
            self.stats.upstream_reused += 1;
        } else {
            self.release_upstream(net, now, s);
            let (leg, pre) = match &s.http.as_ref().expect("an HTTP session").target {
                Target::Fixed { .. } => {
                    let c = net
                        .connect(now, endpoint)
                        .map_err(|_| Refusal::ConnectFailed)?;
                    self.stats.upstream_connects += 1;
                    (Leg::plain(c, false), None)
                }
                Target::Route => {
                    let ep = ep.expect("routed requests have an endpoint index");
                    self.open_upstream(net, now, &snap, (svc, ep), s.client, true)?
                }
            };
            self.by_conn.insert(leg.conn, (sid, Side::Up));
            s.up = Some(leg);
            s.up_eof = false;
            s.u_in.clear();
            if let Some(p) = pre {
                s.to_up.extend_from_slice(&p);
            }
        }
        let h = s.http.as_mut().expect("an HTTP session");
        h.up_endpoint = Some(endpoint);
        h.up_reusable = head.keep_alive;
        h.client_keep_alive = head.keep_alive;
        h.method = head.method.clone();
        h.lb = ep.map(|e| (svc, e, now));
        if let Some((svc, ep, _)) = h.lb {
            if let Some(b) = self.balancers.get_mut(&svc) {
                b.start(ep);
            }
        }
        let h = s.http.as_mut().expect("an HTTP session");
        http::write_request_head(head, &mut s.to_up, &[]);
        if head.upgrade.is_some() {
            // The body, if any, and the tunnel follow once the 101 arrives; until then the
            // request is complete as far as framing goes.
            h.req = ReqPhase::Sent;
        } else if head.body.has_body() {
            h.req_body = Some(BodyFramer::new(head.body));
            h.req = ReqPhase::Body;
        } else {
            h.req = ReqPhase::Sent;
        }
        h.resp = RespPhase::Head;
        Ok(())
    }

    /// Lets go of the session's upstream connection (graceful close).
    fn release_upstream<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        s: &mut Session<C>,
    ) {
        if let Some(mut up) = s.up.take() {
            let _ = up.finish(net);
            if self.by_conn.remove(&up.conn).is_some() {
                net.close(now, up.conn);
            }
        }
        s.up_eof = false;
        s.u_in.clear();
        s.to_up.clear();
        if let Some(h) = s.http.as_mut() {
            h.up_endpoint = None;
        }
    }

    fn teardown<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        s: &mut Session<C>,
        abort: bool,
    ) {
        s.closed = true;
        let legs = [Some(&mut s.down), s.up.as_mut()];
        for leg in legs.into_iter().flatten() {
            if abort {
                // A TLS leg gets its alert out first where the window allows.
                let _ = leg.flush(net);
                if self.by_conn.remove(&leg.conn).is_some() {
                    net.abort(leg.conn);
                }
            } else if self.by_conn.contains_key(&leg.conn) {
                net.close(now, leg.conn);
            }
        }
    }

    fn maybe_release(&mut self, sid: usize) {
        let Some(s) = self.sessions.get(sid).and_then(Option::as_ref) else {
            return;
        };
        let live = |c: C| self.by_conn.contains_key(&c);
        if s.closed && !live(s.down.conn) && !s.up.as_ref().is_some_and(|u| live(u.conn)) {
            self.sessions[sid] = None;
            self.free.push(sid);
        }
    }
}

impl HttpState {
    fn new(target: Target) -> Self {
        HttpState {
            target,
            req: ReqPhase::Head,
            resp: RespPhase::Idle,
            req_body: None,
            resp_body: None,
            method: String::new(),
            client_keep_alive: true,
            up_endpoint: None,
            up_reusable: false,
            lb: None,
            close_after: false,
            tunnel: false,
        }
    }
}

fn now_duration(now: Instant) -> Duration {
    Duration::from_micros(now.as_micros())
}

enum StepError {
    Refused(Refusal),
    Leg(LegError),
    /// The upstream leg of an HTTP session failed.
    Up(LegError),
}

impl From<LegError> for StepError {
    fn from(e: LegError) -> Self {
        StepError::Leg(e)
    }
}

/// One read from `leg` into `inbuf` if it has room (up to [`BUF`]); the end of stream sets
/// `eof`. Returns whether anything happened.
fn fill<C: Copy + Eq + std::hash::Hash + std::fmt::Debug, N: Net<Conn = C>>(
    net: &mut N,
    leg: &mut Leg<C>,
    inbuf: &mut Vec<u8>,
    eof: &mut bool,
    tmp: &mut [u8],
    scratch: &mut [u8],
) -> Result<bool, LegError> {
    if *eof || inbuf.len() >= BUF {
        return Ok(false);
    }
    let room = (BUF - inbuf.len()).min(tmp.len());
    match leg.read(net, &mut tmp[..room], scratch)? {
        Ok(0) => *eof = true,
        Ok(n) => inbuf.extend_from_slice(&tmp[..n]),
        Err(_) => return Ok(false),
    }
    Ok(true)
}

/// Reads from `src` into `buf` while it has room, writes `buf` to `dst`; finishes `dst` once
/// `src` ended and `buf` drained. Returns whether anything moved.
#[allow(clippy::too_many_arguments)]
fn pump<C: Copy + Eq + std::hash::Hash + std::fmt::Debug, N: Net<Conn = C>>(
    net: &mut N,
    src: &mut Leg<C>,
    dst: &mut Leg<C>,
    buf: &mut Vec<u8>,
    eof: &mut bool,
    tmp: &mut [u8],
    scratch: &mut [u8],
    counter: &mut u64,
) -> Result<bool, LegError> {
    let mut moved = fill(net, src, buf, eof, tmp, scratch)?;
    if !buf.is_empty() {
        let n = dst.write(net, buf)?;
        if n > 0 {
            buf.drain(..n);
            *counter += n as u64;
            moved = true;
        }
    } else {
        dst.flush(net)?;
    }
    if *eof && buf.is_empty() && !dst.done_sending() {
        dst.finish(net)?;
        moved |= dst.done_sending();
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::preamble;

    #[test]
    fn preamble_round_trips_and_rejects_junk() {
        let ep = "10.10.3.2:8080".parse().unwrap();
        let p = preamble::encode(ep, true);
        for cut in 0..p.len() {
            assert_eq!(preamble::decode(&p[..cut]), Ok(None), "prefix {cut}");
        }
        let mut more = p.clone();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(preamble::decode(&more), Ok(Some((ep, true, p.len()))));
        for bad in [
            &b"XM/2 10.10.3.2:8080 tcp\n"[..],
            b"XM/1 10.10.3.2 tcp\n",
            b"XM/1 10.10.3.2:8080 udp\n",
            b"XM/1 10.10.3.2:8080 tcp extra\n",
            &[b'x'; preamble::MAX][..],
        ] {
            assert_eq!(preamble::decode(bad), Err(()), "{bad:?}");
        }
    }
}
