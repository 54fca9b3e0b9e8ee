//! The proxy engine: sessions that join an accepted connection to an upstream one, over any
//! [`Net`]. Sans-IO apart from the transport it is handed: the caller feeds it transport
//! events and calls [`Engine::progress`]; nothing here sleeps or reads a clock.
//!
//! Call order, per loop iteration (the crate's README says more):
//! ```text
//! while let Some(ev) = net.poll_event() { engine.handle(&mut net, now, ev) }
//! if engine.poll_timeout() <= now { engine.handle_timeout(&mut net, now) }
//! engine.progress(&mut net, now)
//! while let Some(e) = engine.poll_event() { ... }   // when set_event_capacity(n > 0)
//! ```
//!
//! Sessions:
//! - outbound `tcp` listener: route by listener to its service and pick an endpoint;
//! - outbound `http` listener: parse each request head, route it by host, path, method and
//!   headers, pick a weighted backend and an endpoint by the service's balancer, stream the
//!   body both ways; keep-alive, `Expect: 100-continue` (interim responses are relayed) and
//!   upgrades (a 101 turns the session into a tunnel); `x-request-id` is added when absent,
//!   and `traceparent` names this gateway's span ([`crate::trace`]: a client span);
//! - inbound `mesh` listener: TLS server requiring a mesh client certificate; the SNI names
//!   the service, the preamble the endpoint (which must be a local endpoint of that service)
//!   and whether the hop carries HTTP; the caller's SPIFFE ID is authorized (per request for
//!   HTTP: 403; per connection for TCP: close_notify and close), then bytes go to the
//!   endpoint over plain TCP; an HTTP request's `traceparent` names B's span (a server span).
//!
//! Outbound, an endpoint `via` a peer gateway is reached over TLS 1.3 as the identity of the
//! client's source address, SNI naming the service, the first plaintext bytes being the
//! [`preamble`]; a local endpoint gets plain TCP.

use super::admission::{Admission, Overflow, Ticket};
use super::breaker::{Breakers, Held, Limit};
use super::golden;
use super::health::{CheckReport, EndpointReport, HealthBoard};
use super::healthcheck::Checker;
use super::http::{self, BodyFramer, HttpError, RequestHead};
use super::lb::{self, Balancer};
use super::leg::{Leg, LegError};
use super::mirror::{self, Mirror, MirrorError, Pending};
use super::net::{HopPeer, HopTls, Net, NetError, NetEvent};
use super::outlier::Detector;
use super::policy::{self, Buckets, Budget, Decision, PolicyStats};
use super::pool::{HopId, Pool, PoolKey, UpMeta};
use super::trace::{self, Sampler, SpanContext, SpanKind};
use control::schema::Protocol;
use control::snapshot::{IdentityRt, RoutePolicy, ServiceRt, Timeouts};
use control::{Publisher, Snapshot};
use rand::{Rng, RngCore, SeedableRng};
use std::cmp::Reverse;
// Fx, not SipHash: the keys (connection handles, table indices and names) are ours or the
// operator's, never a client's, and these maps are read on every event.
use rustc_hash::FxHashMap;
use std::collections::{BinaryHeap, HashSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tcpstack::Instant;

/// Plaintext buffered per direction of a session.
const BUF: usize = 64 * 1024;

/// Request body kept to send a request again when a reused upstream connection turns out
/// closed before any response byte (longer bodies are not sent again).
const REPLAY_BODY_CAP: usize = 64 * 1024;

/// How long a closing client connection may take to finish its side after the gateway
/// finished its own (nginx's `lingering_timeout` is the same 5 s).
pub const LINGER: Duration = Duration::from_secs(5);

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
    /// The server side of an `ingress-tls` listener presenting `identity` to clients that
    /// show no certificate (see [`super::tls::ingress_server_config`]).
    fn ingress(&self, identity: &IdentityRt) -> Option<Arc<rustls::ServerConfig>>;
    /// Grows whenever certificates or trust change: pooled hops of an older generation are
    /// not reused (a multiplexed hop's would handshake again with old material).
    fn generation(&self) -> u64 {
        0
    }
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
    fn ingress(&self, _: &IdentityRt) -> Option<Arc<rustls::ServerConfig>> {
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
    /// The request head did not arrive whole within `timeouts.request_head` (408).
    HeadTimeout,
    /// No response head within the request timeout (504).
    RequestTimeout,
    /// No attempt connected within `timeouts.connect` (503).
    ConnectTimeout,
    /// A `tcp` preamble for a service whose authorization names methods or paths: a raw
    /// pipe would carry requests no path rule sees.
    PolicyNeedsHttp,
    /// The upstream sent more interim (1xx) responses than [`MAX_INTERIM`] (502 or a cut).
    InterimFlood,
    /// A TLS hop ended without close_notify where that end would be taken as the end of
    /// the data (a close-delimited response, a TCP hop): the client sees a cut, not an end.
    Truncated,
    /// The listener's `max_connections` were open.
    ListenerOverflow,
    /// The client's address had the listener's `max_connections_per_source` open.
    SourceOverflow,
    /// The worker had its `max_sessions` open.
    WorkerOverflow,
    /// The attempt's `retries.per_try_timeout` passed, and it was the last (504).
    PerTryTimeout,
    /// The route's `rate_limit` had no token left (429 with `Retry-After`).
    RateLimited,
    /// The route's `fault.abort` answered for the upstream (its configured status).
    FaultAbort,
    /// The service's `circuit_breaker` had a cap reached (503 at once).
    Overflow,
    /// Gateway B: this gateway's health checks find the endpoint unhealthy (503 at once;
    /// gateway A tries another endpoint).
    EndpointUnhealthy,
}

impl Refusal {
    pub const ALL: [Refusal; 31] = [
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
        Refusal::HeadTimeout,
        Refusal::RequestTimeout,
        Refusal::ConnectTimeout,
        Refusal::PolicyNeedsHttp,
        Refusal::InterimFlood,
        Refusal::Truncated,
        Refusal::ListenerOverflow,
        Refusal::SourceOverflow,
        Refusal::WorkerOverflow,
        Refusal::PerTryTimeout,
        Refusal::RateLimited,
        Refusal::FaultAbort,
        Refusal::Overflow,
        Refusal::EndpointUnhealthy,
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
            Refusal::HeadTimeout => "request_head_timeout",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::ConnectTimeout => "connect_timeout",
            Refusal::PolicyNeedsHttp => "policy_needs_http",
            Refusal::InterimFlood => "interim_flood",
            Refusal::Truncated => "truncated",
            Refusal::ListenerOverflow => "listener_overflow",
            Refusal::SourceOverflow => "source_overflow",
            Refusal::WorkerOverflow => "worker_overflow",
            Refusal::PerTryTimeout => "per_try_timeout",
            Refusal::RateLimited => "rate_limited",
            Refusal::FaultAbort => "fault_abort",
            Refusal::Overflow => "overflow",
            Refusal::EndpointUnhealthy => "endpoint_unhealthy",
        }
    }

    /// The status an HTTP client gets for it.
    fn status(self) -> u16 {
        match self {
            Refusal::Denied => 403,
            Refusal::NoRoute | Refusal::NoService | Refusal::UnknownService => 404,
            Refusal::BadRequest => 400,
            Refusal::NoEndpoint
            | Refusal::ConnectFailed
            | Refusal::ConnectTimeout
            | Refusal::ListenerOverflow
            | Refusal::SourceOverflow
            | Refusal::WorkerOverflow
            | Refusal::Overflow
            | Refusal::EndpointUnhealthy => 503,
            Refusal::HeadTimeout => 408,
            Refusal::RequestTimeout | Refusal::PerTryTimeout => 504,
            Refusal::RateLimited => 429,
            _ => 502,
        }
    }
}

/// The `grpc-status` of the gateway's own answer to a gRPC call: its deadline passing is
/// DEADLINE_EXCEEDED (the caller's `grpc-timeout`, or the route's timeout, ran out), the
/// rest as gRPC maps the HTTP status the gateway would have answered.
fn grpc_refusal_status(r: Refusal, http_status: u16) -> u8 {
    match r {
        Refusal::RequestTimeout | Refusal::PerTryTimeout => 4,
        _ => http::grpc_status_for_http(http_status),
    }
}

/// How one upstream attempt ended. Every attempt ends exactly once, in
/// [`Engine::end_attempt`]: that call feeds the balancer, counts the outcome, and decides
/// what the client sees (a retry, an error response, or nothing more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The response (HTTP) or the connection (TCP) completed.
    Complete,
    /// The upstream could not be reached: refused, unreachable, TLS handshake failed, or
    /// the connect timeout passed. Retried on another attempt while no request byte left.
    ConnectFailed,
    /// The upstream failed (reset, closed, malformed head) before the response head.
    ResetBeforeResponse,
    /// The upstream failed after the response began: the client sees a cut.
    ResetMidResponse,
    /// The request timeout passed before the response head.
    TimedOut,
    /// The client went away, or the gateway shut down, first.
    Cancelled,
    /// The upstream answered with a status its route retries on: the answer was discarded
    /// and the request tried again.
    RetryableStatus,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Complete,
        Outcome::ConnectFailed,
        Outcome::ResetBeforeResponse,
        Outcome::ResetMidResponse,
        Outcome::TimedOut,
        Outcome::Cancelled,
        Outcome::RetryableStatus,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::ResetBeforeResponse => "reset_before_response",
            Outcome::ResetMidResponse => "reset_mid_response",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::RetryableStatus => "retryable_status",
        }
    }
}

/// Which timeout of [`Timeouts`] expired; a label on `xdpmesh_proxy_timeouts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expiry {
    RequestHead,
    Idle,
    Request,
    Connect,
    Handshake,
    BodyStall,
    TcpIdle,
    /// A closing client connection did not finish within [`LINGER`] of ours.
    Linger,
    /// An attempt's `retries.per_try_timeout`.
    PerTry,
    /// A retry's backoff ended (a wake-up, not counted as a timeout).
    RetryBackoff,
    /// An injected delay ended (a wake-up, not counted as a timeout).
    FaultDelay,
}

impl Expiry {
    pub const ALL: [Expiry; 11] = [
        Expiry::RequestHead,
        Expiry::Idle,
        Expiry::Request,
        Expiry::Connect,
        Expiry::Handshake,
        Expiry::BodyStall,
        Expiry::TcpIdle,
        Expiry::Linger,
        Expiry::PerTry,
        Expiry::RetryBackoff,
        Expiry::FaultDelay,
    ];

    /// Is this a timeout (counted), or a wake-up the session asked for?
    pub fn is_timeout(self) -> bool {
        !matches!(self, Expiry::RetryBackoff | Expiry::FaultDelay)
    }

    pub fn label(self) -> &'static str {
        match self {
            Expiry::RequestHead => "request_head",
            Expiry::Idle => "idle",
            Expiry::Request => "request",
            Expiry::Connect => "connect",
            Expiry::Handshake => "handshake",
            Expiry::BodyStall => "body_stall",
            Expiry::TcpIdle => "tcp_idle",
            Expiry::Linger => "linger",
            Expiry::PerTry => "per_try",
            Expiry::RetryBackoff => "retry_backoff",
            Expiry::FaultDelay => "fault_delay",
        }
    }
}

/// Interim (1xx) responses relayed per request; one more is a flood, and the attempt ends
/// (`interim_flood`). A server sends one 100 Continue, or a few 103 Early Hints.
pub const MAX_INTERIM: u8 = 8;

/// Attempts per request (or TCP connection) when connects fail before any byte of the
/// request left: the first and up to two more, on another endpoint where there is one.
pub const MAX_CONNECT_ATTEMPTS: u8 = 3;

/// What happened, for telemetry (access logs, per-route metrics, traces), drained with
/// [`Engine::poll_event`]. Queued only while the caller asks for them
/// ([`Engine::set_event_capacity`]), so an engine nobody listens to builds none; a full queue
/// drops the oldest event and counts it in [`ProxyStats::events_dropped`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A client connection was accepted on a listener.
    Opened {
        listener: Arc<str>,
        client: SocketAddrV4,
        at: Instant,
    },
    /// A client connection ended; `clean`: both sides finished (no reset, no cut).
    Closed {
        listener: Arc<str>,
        client: SocketAddrV4,
        opened: Instant,
        at: Instant,
        clean: bool,
        /// What the connection carried and, for a TCP proxy, where it went.
        conn: Box<ConnRecord>,
    },
    /// A connection was refused at accept (no service, no endpoint, no TLS configuration...).
    Refused {
        listener: Arc<str>,
        client: SocketAddrV4,
        reason: Refusal,
        at: Instant,
    },
    /// An HTTP request ended: answered by the upstream, answered by the gateway (an error
    /// status), or cut mid-response.
    Request(Box<RequestEvent>),
}

/// One HTTP request, as [`Event::Request`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestEvent {
    pub listener: Arc<str>,
    pub client: SocketAddrV4,
    pub method: String,
    /// The request target as received.
    pub target: String,
    /// The route's name, when it has one.
    pub route: Option<String>,
    /// The service the request went to (by name).
    pub service: Option<String>,
    pub endpoint: Option<SocketAddrV4>,
    /// The status the client got; `None` when the response was cut.
    pub status: Option<u16>,
    /// Why the gateway answered itself or cut, when it did.
    pub refusal: Option<Refusal>,
    /// Upstream attempts made (0: refused before routing).
    pub attempts: u8,
    /// Body bytes from the client and to the client.
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// From the end of the request head to the end of the response (or the error).
    pub start: Instant,
    pub end: Instant,
    pub request_id: Option<String>,
    /// The caller's SPIFFE ID: the peer gateway's client identity on a mesh listener, the
    /// identity of the client's source address on an outbound one.
    pub identity: Option<String>,
    /// The authority the request is for (absolute-form target, else `Host`).
    pub authority: Option<String>,
    /// `traceparent` as forwarded (the client's, or the one gateway A made).
    pub traceparent: Option<String>,
    /// From the start of the attempt that answered (its connect, or the reuse of a kept-alive
    /// connection) to its response head.
    pub upstream: Option<Duration>,
    /// The peer gateway's SPIFFE ID when the endpoint is reached through one (`via`).
    pub dst_identity: Option<String>,
    /// This gateway's span for the request ([`crate::trace`]); `None` when the gateway
    /// answered before it could read a request head.
    pub trace: Option<SpanContext>,
}

/// One client connection, as [`Event::Closed`] reports it. Built only while events are on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnRecord {
    /// TCP proxy: the service and endpoint of the last attempt (HTTP: per request).
    pub service: Option<String>,
    pub endpoint: Option<SocketAddrV4>,
    pub attempts: u8,
    /// Bytes from the client passed upstream (HTTP: heads as forwarded, bodies) and bytes
    /// written to the client.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// TCP proxy: from the start of the last attempt to its established connection.
    pub upstream: Option<Duration>,
    pub identity: Option<String>,
    pub dst_identity: Option<String>,
    /// How the last upstream attempt ended, and why the gateway refused or cut, if it did.
    pub outcome: Option<Outcome>,
    pub reason: Option<Refusal>,
}

/// One connection as `GET /connections` shows it ([`Engine::connections`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnView {
    /// `client`, `upstream` (a session's) or `idle` (pooled upstream).
    pub role: &'static str,
    /// The listener a client connection came in on (and an upstream's session's).
    pub listener: Option<Arc<str>>,
    /// (local, remote), when the transport says.
    pub addrs: Option<(SocketAddrV4, SocketAddrV4)>,
    /// What the proxy does with it: `mesh_handshake`, `tcp_connecting`, `tcp`, `http`,
    /// `http_tunnel`, `idle`.
    pub state: &'static str,
    pub age: Duration,
    /// Bytes the proxy handed to this connection and, for its session's other leg, to the
    /// other one (a session's client and upstream report the same pair, seen each way).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// An upstream's endpoint and service.
    pub endpoint: Option<SocketAddrV4>,
    pub service: Option<Arc<str>>,
    pub tcp: Option<super::net::TcpInfo>,
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
    /// Upstream attempts by how they ended ([`Outcome`]).
    pub attempts: [u64; Outcome::ALL.len()],
    /// Attempts made again: after a connect failure, or (an idempotent request) after a
    /// kept-alive connection failed before any response byte.
    pub retries: u64,
    /// Timeouts that expired, by [`Expiry`].
    pub timeouts: [u64; Expiry::ALL.len()],
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Sessions open now (a gauge, not a counter): each holds a client connection, and an
    /// upstream one while it has it.
    pub sessions: u64,
    /// Upstream connections idle in the pool now (a gauge).
    pub pooled: u64,
    /// Upstream connections the pool let go, by why ([`PoolClose`]).
    pub pool_closes: [u64; PoolClose::ALL.len()],
}

/// Why an upstream connection that could have been reused was closed instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolClose {
    /// Idle in the pool for `pool.idle_timeout`.
    IdleTimeout,
    /// Older than `pool.max_lifetime`, or carried `pool.max_requests`.
    Retired,
    /// The server closed it (or sent something) while it was idle.
    PeerClosed,
    /// Its endpoint's `pool.max_idle_per_endpoint`, or the worker's cap, was reached.
    Full,
    /// Closed to make room under its service's `circuit_breaker.max_connections` for a
    /// request that needed a connection.
    Evicted,
}

impl PoolClose {
    pub const ALL: [PoolClose; 5] = [
        PoolClose::IdleTimeout,
        PoolClose::Retired,
        PoolClose::PeerClosed,
        PoolClose::Full,
        PoolClose::Evicted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PoolClose::IdleTimeout => "idle_timeout",
            PoolClose::Retired => "retired",
            PoolClose::PeerClosed => "peer_closed",
            PoolClose::Full => "full",
            PoolClose::Evicted => "evicted",
        }
    }
}

impl ProxyStats {
    fn refuse(&mut self, r: Refusal) {
        self.refused[r as usize] += 1;
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize]
    }

    pub fn attempts(&self, o: Outcome) -> u64 {
        self.attempts[o as usize]
    }

    pub fn timeouts(&self, e: Expiry) -> u64 {
        self.timeouts[e as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Down,
    Up,
    /// Idle in the pool (the slot is in `Engine::pool`).
    Pool,
    /// A mirror's upstream (the slot is in `Engine::mirrors`, not `sessions`).
    Mirror,
}

/// What a session is, with the state of that kind. An inbound mesh session starts as
/// `MeshHandshake` and becomes `Tcp` or `Http` once the preamble says which; an
/// `ingress-tls` one starts as `IngressHandshake` and becomes `Http` (or the transport's,
/// for ALPN `h2`).
// Most sessions are HTTP: boxing its state would cost an allocation per connection for a
// smaller TCP session, and sessions live in one slab anyway.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// Inbound mesh: the peer's TLS handshake, then the preamble.
    MeshHandshake,
    /// `ingress-tls`: the client's TLS handshake.
    IngressHandshake,
    Tcp(TcpPhase),
    Http(HttpState),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum TcpPhase {
    /// Waiting for the upstream TCP (and TLS) handshake; the attempt may be retried.
    Connecting,
    /// Bytes flow both ways.
    Pipe,
}

impl Kind {
    fn http(&self) -> Option<&HttpState> {
        match self {
            Kind::Http(h) => Some(h),
            _ => None,
        }
    }

    fn http_mut(&mut self) -> Option<&mut HttpState> {
        match self {
            Kind::Http(h) => Some(h),
            _ => None,
        }
    }
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
    /// An injected delay holds the request before routing (`fault.delay`).
    Held,
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
    /// A 101 answered the client's Upgrade: opaque bytes both ways from here on.
    Tunnel,
}

/// A request's labels (as table indices) and sizes for [`golden`]: kept from its head to
/// its end.
#[derive(Clone, Copy, Debug)]
struct Tally {
    start: Instant,
    route: Option<u32>,
    service: Option<u32>,
    endpoint: Option<SocketAddrV4>,
    status: u16,
    /// A gRPC call's `grpc-status` (from the response head or its trailers).
    grpc_status: Option<u8>,
    request_bytes: u64,
    response_bytes: u64,
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
    /// What the current upstream connection is bound to and its life so far (pooling).
    up_meta: Option<UpMeta>,
    /// The request in flight's places under its service's circuit breaker: in flight until
    /// its response ends, pending until its response head (dropped by `progress`).
    inflight: Option<Held>,
    pending: Option<Held>,
    /// When the current request head's first byte arrived (request_head timeout).
    head_started: Option<Instant>,
    /// The request in flight is a gRPC call: the gateway's own answers are trailers-only
    /// responses, its `grpc-timeout` bounds the request timeout, its `grpc-status` is counted.
    grpc: bool,
    /// The request in flight, as its event will report it (only while events are on).
    record: Option<Box<RequestEvent>>,
    /// This gateway's span for the request in flight (its `traceparent` is forwarded).
    span: Option<SpanContext>,
    /// The request in flight as the golden metrics count it (always; no allocation).
    tally: Option<Tally>,
    /// The request timeout of the request in flight (the route's, else the listener's).
    request_timeout: Duration,
    /// The body stall timeout of the request in flight (the route's, else the listener's).
    body_stall: Duration,
    /// When the request in flight must have its response head: the request timeout counts
    /// from when the request was sent whole (as Envoy's route timeout does), so a slow
    /// upload is bounded by the body stall timeout instead.
    request_deadline: Option<Instant>,
    /// After this response, close the client connection.
    close_after: bool,
    /// The request in flight asked for an upgrade: only then may a 101 start a tunnel.
    upgrade_asked: bool,
    /// Interim (1xx) responses relayed for the request in flight.
    interim: u8,
    /// The request in flight is HTTP/1.0 (a kept-alive 1.0 client is told so).
    client_http10: bool,
    /// The request policy of the request in flight (its route's), if any.
    policy: Option<Arc<RoutePolicy>>,
    /// The route's name (else its service's) for the policy counters, while it has a policy.
    route_label: Option<Arc<str>>,
    /// The service the request went to (its retry budget).
    service: u32,
    /// The request as forwarded (head and body so far), kept while retries may need it and
    /// it fits `retries.buffer`.
    retry_copy: Option<Vec<u8>>,
    /// The length of the request head at the front of `retry_copy`.
    retry_head_len: usize,
    /// A retry waiting out its backoff: when, and the attempt it follows.
    pending_retry: Option<(Instant, Attempt)>,
    /// A request held by an injected delay: until when, and its head.
    held: Option<(Instant, Box<RequestHead>)>,
    /// What the gateway answers for the request itself: the status of an injected abort,
    /// the wait of a rate limit.
    answer_status: u16,
    retry_after: Duration,
    /// The copy of the request in flight for the route's mirror, sent once the request is
    /// whole.
    mirror: Option<Box<Pending>>,
}

struct Session<C> {
    snap: Arc<Snapshot>,
    kind: Kind,
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
    closed: bool,
    /// The upstream attempt in flight, if any: ended exactly once by `end_attempt`.
    attempt: Option<Attempt>,
    /// A TCP session's golden-metrics series, from its upstream's connect to its close.
    tcp_cell: Option<Arc<golden::TcpCell>>,
    /// Bytes to the upstream that are the mesh preamble, not the client's: not counted.
    tcp_preamble: u64,
    /// Bytes handed to the upstream and to the client so far (`GET /connections`).
    bytes_up: u64,
    bytes_down: u64,
    /// An inbound TCP session's caller (the peer gateway's client identity).
    tcp_caller: Option<Box<str>>,
    /// The listener's name, interned (the golden metrics' key and label).
    lname: Arc<str>,
    /// The listener's timeouts (from the tables the connection was accepted under).
    timeouts: Timeouts,
    /// The listener's name, while events are on.
    listener: Option<Arc<str>>,
    /// The connection's record for [`Event::Closed`], while events are on.
    conn: Option<Box<ConnRecord>>,
    accepted_at: Instant,
    /// The last time bytes moved either way (idle, body stall and tcp_idle timeouts).
    last_io: Instant,
    /// The last time bytes were handed on to either leg (the body stall timeout): a server
    /// that reads nothing stalls an upload even while the client still fills our buffers.
    last_delivery: Instant,
    /// The earliest timer entry queued for this session, if any (see `Engine::arm`).
    scheduled: Option<Instant>,
    /// Tells this session's timer entries from those of an earlier session in the slot.
    epoch: u64,
    /// When the gateway finished its side of a closing client connection (see [`LINGER`]).
    linger_since: Option<Instant>,
    /// The session's place under its listener's connection caps, given back on drop.
    _ticket: Option<Ticket>,
}

/// One try at an upstream: from the connect (or the reuse of a kept-alive connection) to
/// its [`Outcome`].
struct Attempt {
    /// (service, endpoint index) as the balancer knows it; `None` for gateway B's fixed
    /// local endpoint, which no balancer picked.
    lb: Option<(u32, u32)>,
    /// The balancer generation `start` was counted in: a reload in between builds new
    /// balancers, which must not see the old attempt's `finish`.
    gen: u64,
    /// The endpoints the pick chose from (a retry picks again among them).
    candidates: Vec<u32>,
    /// The service the attempt goes to (its index in the session's tables).
    svc: u32,
    endpoint: SocketAddrV4,
    started: Instant,
    /// When the transport (and TLS) completed; `None` while connecting.
    connected_at: Option<Instant>,
    /// 1 for the first attempt of a request or connection.
    number: u8,
    /// Length of the mesh preamble at the front of `to_up` (replaced on a retry).
    preamble_len: usize,

    /// How long this attempt may take to connect (the route's, else the listener's).
    connect_timeout: Duration,
    /// How long the whole attempt may take (`retries.per_try_timeout`), if bounded.
    per_try: Option<Duration>,
    /// The request as sent (head, and body up to `REPLAY_BODY_CAP`), to send again when
    /// nothing was processed: a reused connection the server had closed, or a peer gateway
    /// that could not reach the endpoint.
    replay: Option<Vec<u8>>,
    /// The final response head's status, once it came.
    status: Option<u16>,
    /// Ended by a peer gateway's verdict on the endpoint, not by the endpoint itself: not an
    /// outlier-detection failure.
    peer_verdict: bool,
    /// On a connection that carried a request before (the session's or the pool's).
    reused: bool,
    /// Some response byte came back (an interim response counts): the server had the
    /// request, so it is never sent again unasked.
    responded: bool,
}

impl Attempt {
    /// The first attempt at `endpoint`, connecting from `now`, that no balancer picked.
    fn first(now: Instant, endpoint: SocketAddrV4, connect_timeout: Duration) -> Attempt {
        Attempt {
            lb: None,
            gen: 0,
            candidates: Vec::new(),
            svc: u32::MAX,
            endpoint,
            started: now,
            connected_at: None,
            number: 1,
            preamble_len: 0,
            connect_timeout,
            per_try: None,
            replay: None,
            status: None,
            peer_verdict: false,
            reused: false,
            responded: false,
        }
    }
}

/// How long gateway A skips an endpoint a peer gateway said it cannot reach (its health
/// checks, or its connect failing): then one request tries it again.
pub const PEER_HOLD: Duration = Duration::from_secs(1);

/// Warm hops (`[[peer]] min_idle`) a worker keeps at most, all peers together.
pub const MAX_WARM: usize = 256;

/// Outlier detection and health of one service on this worker.
struct SvcHealth {
    det: Detector,
    /// The tables generation its endpoint indices follow, and the board version applied.
    gen: u64,
    board: u64,
}

/// The proxy of one worker.
pub struct Engine<C> {
    publisher: Arc<Publisher>,
    tls: Arc<dyn MeshTls>,
    /// Boxed: a session is ~1.5 KiB, and the loop takes it out of its slot and puts it
    /// back for every event; a box moves as a pointer.
    sessions: Vec<Option<Box<Session<C>>>>,
    free: Vec<usize>,
    by_conn: FxHashMap<C, (usize, Side)>,
    dirty: Vec<usize>,
    /// One balancer per service of the current generation (each worker has its own).
    balancers: FxHashMap<u32, Balancer>,
    balancer_gen: u64,
    rng: rand_chacha::ChaCha8Rng,
    pub stats: ProxyStats,
    buf: Vec<u8>,
    /// (deadline, session slot, epoch), earliest first. Entries go stale when a session
    /// ends or its deadline moves later; `handle_timeout` skips or re-queues those, so a
    /// deadline pushed back by progress costs nothing until the old entry comes up.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_epoch: u64,
    events: std::collections::VecDeque<Event>,
    event_capacity: usize,
    /// The listeners' connection caps (shared with the other workers' engines).
    admission: Arc<Admission>,
    max_sessions: usize,
    /// Rate-limit buckets and retry budgets of this worker (by service, for the tables of
    /// `budgets_gen`), and the per-route counters of policy decisions (shared).
    buckets: Buckets,
    budgets: FxHashMap<u32, Budget>,
    budgets_gen: u64,
    policy_stats: Arc<PolicyStats>,
    /// The golden metrics' recorder of this worker, and the identities the current tables
    /// name (label values; anyone else is `other`).
    golden: Option<golden::Recorder>,
    known_ids: (u64, FxHashMap<Arc<str>, golden::IdRef>, Vec<Arc<str>>),
    /// The tables generation `health` was last pruned for.
    health_gen: u64,
    /// Workers that share each rate limit and retry budget floor (this engine keeps 1/n).
    share: u32,
    /// Copies of requests in flight to mirror services (see [`mirror`]), their free slots,
    /// those with events, and their deadlines (deadline, slot, epoch).
    mirrors: Vec<Option<Mirror<C>>>,
    mirror_free: Vec<usize>,
    mirror_dirty: Vec<usize>,
    mirror_timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Idle upstream connections any session may take, and those with events.
    pool: Pool<C>,
    pool_dirty: Vec<usize>,
    /// Circuit-breaker counts per service.
    breakers: Breakers,
    /// Endpoint health per service name (it carries across reloads).
    health: FxHashMap<String, SvcHealth>,
    /// Endpoints a peer gateway could not reach, skipped until: (until, service, address).
    holds: Vec<(Instant, String, SocketAddrV4)>,
    /// Health shared by the gateway's workers, the verdicts read from it last and their
    /// version.
    board: Option<Arc<HealthBoard>>,
    board_version: u64,
    unhealthy: Arc<HashSet<(String, SocketAddrV4)>>,
    /// This worker runs the gateway's active health checks.
    checker: Option<Checker<C>>,
    checker_gen: u64,
    worker_id: usize,
    next_report: Option<Instant>,
    /// Pool key names by (kind: service, identity, peer identity; index), for the tables of
    /// `names_gen`.
    names: FxHashMap<(u8, u32), Arc<str>>,
    names_gen: u64,
    /// Client configurations offering ALPN `h2`, by the configuration they copy (kept, so
    /// that its address is not reused while it is a key): a multiplexed hop's.
    h2_configs: FxHashMap<usize, (Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>)>,
    /// Draining: no warm hops are opened any more.
    draining: bool,
    /// Which new traces are sampled (the `sampled` flag forwarded; a caller's is kept).
    sampler: Sampler,
}

/// Sessions one engine (one worker) holds at most; one more is reset at accept and counted
/// as `worker_overflow`. With the buffers' caps this bounds a worker's memory.
pub const MAX_SESSIONS: usize = 20_000;

impl<C: Copy + Eq + std::hash::Hash + std::fmt::Debug> Engine<C> {
    /// `seed` drives weighted picks and request ids: give it from the OS's random source
    /// (they need unpredictability, not a fixed sequence), or fixed in tests.
    pub fn new(publisher: Arc<Publisher>, tls: Arc<dyn MeshTls>, seed: [u8; 32]) -> Self {
        Engine {
            publisher,
            tls,
            sessions: Vec::new(),
            free: Vec::new(),
            by_conn: FxHashMap::default(),
            dirty: Vec::new(),
            balancers: FxHashMap::default(),
            balancer_gen: 0,
            rng: rand_chacha::ChaCha8Rng::from_seed(seed),
            stats: ProxyStats::default(),
            buf: vec![0; 64 * 1024],
            timers: BinaryHeap::new(),
            next_epoch: 0,
            events: std::collections::VecDeque::new(),
            event_capacity: 0,
            admission: Admission::new(),
            max_sessions: MAX_SESSIONS,
            buckets: Buckets::default(),
            budgets: FxHashMap::default(),
            budgets_gen: 0,
            policy_stats: Arc::new(PolicyStats::default()),
            golden: None,
            known_ids: (u64::MAX, FxHashMap::default(), Vec::new()),
            health_gen: u64::MAX,
            share: 1,
            mirrors: Vec::new(),
            mirror_free: Vec::new(),
            mirror_dirty: Vec::new(),
            mirror_timers: BinaryHeap::new(),
            pool: Pool::new(),
            pool_dirty: Vec::new(),
            breakers: Breakers::default(),
            health: FxHashMap::default(),
            holds: Vec::new(),
            board: None,
            board_version: 0,
            unhealthy: Arc::new(HashSet::new()),
            checker: None,
            checker_gen: 0,
            worker_id: 0,
            next_report: None,
            names: FxHashMap::default(),
            names_gen: 0,
            h2_configs: FxHashMap::default(),
            draining: false,
            sampler: Sampler::ALWAYS,
        }
    }

    /// Shares endpoint health with the gateway's other workers through `board` (this one is
    /// worker `worker`); `run_checks`: this worker runs the active health checks (one per
    /// gateway).
    pub fn with_health(mut self, board: Arc<HealthBoard>, worker: usize, run_checks: bool) -> Self {
        self.set_health(board, worker, run_checks);
        self
    }

    /// [`Engine::with_health`] on an engine in place.
    pub fn set_health(&mut self, board: Arc<HealthBoard>, worker: usize, run_checks: bool) {
        self.board = Some(board);
        self.worker_id = worker;
        self.checker = run_checks.then(|| Checker::new(self.rng.next_u64()));
        self.checker_gen = 0;
        self.next_report = None;
    }

    /// Counts policy decisions in `stats`, which the other workers' engines share.
    /// Counts golden metrics (requests, latency, bytes; TCP connections) into `g`.
    pub fn with_golden(mut self, g: &golden::Golden) -> Self {
        self.count_golden(g);
        self
    }

    /// As [`Engine::with_golden`], on an engine already made.
    pub fn count_golden(&mut self, g: &golden::Golden) {
        self.golden = Some(g.recorder());
    }

    pub fn with_policy_stats(mut self, stats: Arc<PolicyStats>) -> Self {
        self.policy_stats = stats;
        self
    }

    /// The per-route counters of policy decisions.
    pub fn policy_stats(&self) -> &Arc<PolicyStats> {
        &self.policy_stats
    }

    /// This engine is one of `n` workers: it keeps 1/n of each rate limit (and of each retry
    /// budget's floor), so that together they hold the configured rate.
    pub fn set_worker_share(&mut self, n: u32) {
        self.share = n.max(1);
    }

    /// Counts connections against the listeners' caps in `admission`, which the other
    /// workers' engines share (by default each engine counts alone).
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Sessions this engine holds at most (default [`MAX_SESSIONS`]).
    pub fn set_max_sessions(&mut self, n: usize) {
        self.max_sessions = n;
    }

    /// Sample a share `ratio` (0..=1) of the traces this gateway starts (default 1: every
    /// one, OpenTelemetry's default `ParentBased(AlwaysOn)`); a request that arrives with a
    /// valid `traceparent` keeps its caller's decision ([`crate::trace`]).
    pub fn set_trace_sampling(&mut self, ratio: f64) {
        self.sampler = Sampler::ratio(ratio);
    }

    /// As [`Engine::set_trace_sampling`], when building.
    pub fn with_trace_sampling(mut self, ratio: f64) -> Self {
        self.set_trace_sampling(ratio);
        self
    }

    /// Queue up to `n` events for [`Engine::poll_event`] (0, the default: none are built).
    pub fn set_event_capacity(&mut self, n: usize) {
        self.event_capacity = n;
        while self.events.len() > n {
            self.events.pop_front();
        }
    }

    /// The next thing that happened, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn events_on(&self) -> bool {
        self.event_capacity > 0
    }

    fn emit(&mut self, e: Event) {
        if self.event_capacity == 0 {
            return;
        }
        if self.events.len() >= self.event_capacity {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Every connection this engine holds: each session's client and upstream, and the
    /// pool's idle upstreams.
    pub fn connections<N: Net<Conn = C>>(&self, net: &N, now: Instant) -> Vec<ConnView> {
        let mut out = Vec::new();
        for s in self.sessions.iter().flatten() {
            let state = match &s.kind {
                Kind::MeshHandshake => "mesh_handshake",
                Kind::IngressHandshake => "ingress_handshake",
                Kind::Tcp(TcpPhase::Connecting) => "tcp_connecting",
                Kind::Tcp(TcpPhase::Pipe) => "tcp",
                Kind::Http(h) if h.resp == RespPhase::Tunnel => "http_tunnel",
                Kind::Http(_) => "http",
            };
            out.push(ConnView {
                role: "client",
                listener: Some(s.lname.clone()),
                addrs: net.addrs(s.down.conn),
                state,
                age: now.saturating_duration_since(s.accepted_at),
                bytes_sent: s.bytes_down,
                bytes_received: s.bytes_up,
                endpoint: None,
                service: None,
                tcp: net.tcp_info(s.down.conn),
            });
            if let Some(up) = s.up.as_ref() {
                let a = s.attempt.as_ref();
                out.push(ConnView {
                    role: "upstream",
                    listener: Some(s.lname.clone()),
                    addrs: net.addrs(up.conn),
                    state,
                    age: a.map_or(Duration::ZERO, |a| now.saturating_duration_since(a.started)),
                    bytes_sent: s.bytes_up,
                    bytes_received: s.bytes_down,
                    endpoint: a
                        .map(|a| a.endpoint)
                        .or(s.kind.http().and_then(|h| h.up_endpoint)),
                    service: a
                        .and_then(|a| s.snap.services.get(a.svc as usize))
                        .map(|svc| Arc::from(svc.name.as_str())),
                    tcp: net.tcp_info(up.conn),
                });
            }
        }
        for (leg, meta) in self.pool.idle_legs() {
            out.push(ConnView {
                role: "idle",
                listener: None,
                addrs: net.addrs(leg.conn),
                state: "idle",
                age: now.saturating_duration_since(meta.born),
                bytes_sent: 0,
                bytes_received: 0,
                endpoint: Some(meta.key.endpoint),
                service: Some(meta.key.service.clone()),
                tcp: net.tcp_info(leg.conn),
            });
        }
        out
    }

    /// Counts a request that ended in the golden metrics.
    fn count_request(&mut self, now: Instant, s: &Session<C>, t: Tally, status: Option<u16>) {
        let Some(mut rec) = self.golden.take() else {
            return;
        };
        let snap = &s.snap;
        rec.set_generation(snap.generation);
        let src = match s.kind.http().map(|h| &h.target) {
            Some(Target::Fixed { peer, .. }) => self.id_ref(snap, peer),
            _ => source_ref(snap, s.client),
        };
        let key = golden::Key {
            listener: Arc::as_ptr(&s.lname) as *const u8 as usize,
            route: t.route,
            service: t.service,
            endpoint: t.endpoint,
            src,
        };
        // A cut gRPC call has no status of its own.
        let grpc = t.grpc_status.filter(|_| status.is_some());
        let cell = rec.http(key, (status.unwrap_or(0), grpc), || {
            self.golden_labels(snap, &s.lname, (t.route, t.service, t.endpoint), src)
        });
        cell.requests.add(1);
        cell.duration
            .observe(now.saturating_duration_since(t.start));
        cell.request_bytes.add(t.request_bytes);
        cell.response_bytes.add(t.response_bytes);
        self.golden = Some(rec);
    }

    /// A TCP session whose upstream connected starts counting in its series.
    fn open_tcp_series(&mut self, s: &mut Session<C>) {
        let Some(mut rec) = self.golden.take() else {
            return;
        };
        let snap = s.snap.clone();
        rec.set_generation(snap.generation);
        let src = match s.tcp_caller.as_deref() {
            Some(peer) => self.id_ref(&snap, peer),
            None => source_ref(&snap, s.client),
        };
        let (svc, ep) = match s.attempt.as_ref() {
            Some(a) => (Some(a.svc), Some(a.endpoint)),
            None => (None, None),
        };
        let key = golden::Key {
            listener: Arc::as_ptr(&s.lname) as *const u8 as usize,
            route: None,
            service: svc,
            endpoint: ep,
            src,
        };
        let cell = rec.tcp(key, || {
            self.golden_labels(&snap, &s.lname, (None, svc, ep), src)
        });
        cell.opened.add(1);
        s.tcp_cell = Some(cell);
        self.golden = Some(rec);
    }

    /// A caller's identity as a label: one the tables name, else `other`.
    fn id_ref(&mut self, snap: &Snapshot, id: &str) -> golden::IdRef {
        if self.known_ids.0 != snap.generation {
            let (_, map, names) = &mut self.known_ids;
            map.clear();
            names.clear();
            for (i, ident) in snap.identities.iter().enumerate() {
                map.insert(Arc::from(ident.id.as_str()), golden::IdRef::Local(i as u32));
            }
            let named = snap.peers.iter().map(|p| p.identity.as_str()).chain(
                snap.services
                    .iter()
                    .filter_map(|s| s.authz.as_ref())
                    .flatten()
                    .flat_map(|r| r.allow.exact.iter().map(String::as_str)),
            );
            for id in named {
                if !map.contains_key(id) {
                    let name: Arc<str> = Arc::from(id);
                    map.insert(name.clone(), golden::IdRef::Known(names.len() as u32));
                    names.push(name);
                }
            }
            self.known_ids.0 = snap.generation;
        }
        self.known_ids
            .1
            .get(id)
            .copied()
            .unwrap_or(golden::IdRef::Other)
    }

    /// The label values of a key: names from the tables the key's indices refer to.
    fn golden_labels(
        &self,
        snap: &Snapshot,
        listener: &Arc<str>,
        (route, svc, ep): (Option<u32>, Option<u32>, Option<SocketAddrV4>),
        src: golden::IdRef,
    ) -> golden::Labels {
        let l = snap.listeners.iter().find(|l| *l.name == **listener);
        let inbound = l.is_some_and(|l| l.protocol == Protocol::Mesh);
        let service = svc.and_then(|i| snap.services.get(i as usize));
        let id_of = |i: u32| snap.identities.get(i as usize).map(|x| x.id.as_str());
        let dst = if inbound {
            l.and_then(|l| l.identity).and_then(id_of)
        } else {
            // Outbound to a peer gateway: the peer's SPIFFE ID.
            service
                .zip(ep)
                .and_then(|(s, a)| s.endpoints.iter().find(|e| e.address == SocketAddr::V4(a)))
                .and_then(|e| e.via)
                .and_then(|p| snap.peers.get(p as usize))
                .map(|p| p.identity.as_str())
        };
        let src: Arc<str> = match src {
            golden::IdRef::None => Arc::from(""),
            golden::IdRef::Local(i) => Arc::from(id_of(i).unwrap_or("")),
            golden::IdRef::Known(i) => self
                .known_ids
                .2
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| Arc::from("")),
            golden::IdRef::Other => Arc::from("other"),
        };
        golden::Labels {
            direction: if inbound {
                golden::Direction::Inbound
            } else {
                golden::Direction::Outbound
            },
            listener: listener.clone(),
            route: Arc::from(
                route
                    .and_then(|r| snap.routes.get(r as usize))
                    .and_then(|r| r.name.as_deref())
                    .unwrap_or(""),
            ),
            service: Arc::from(service.map_or("", |s| s.name.as_str())),
            endpoint: Arc::from(ep.map(|a| a.to_string()).unwrap_or_default().as_str()),
            src_identity: src,
            dst_identity: Arc::from(dst.unwrap_or("")),
        }
    }

    /// Ends the session's current request record: `status` is what the client got (`None`:
    /// cut), `refusal` why the gateway answered itself or cut.
    fn end_request(
        &mut self,
        now: Instant,
        s: &mut Session<C>,
        status: Option<u16>,
        refusal: Option<Refusal>,
    ) {
        if let Some(t) = s.kind.http_mut().and_then(|h| h.tally.take()) {
            self.count_request(now, s, t, status);
        }
        let Some(mut r) = s.kind.http_mut().and_then(|h| h.record.take()) else {
            return;
        };
        r.status = status;
        r.refusal = refusal;
        r.end = now;
        self.emit(Event::Request(r));
    }

    /// The earliest instant at which [`Engine::handle_timeout`] has work: sleep no longer
    /// than this (nor than the transport's own timers).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let first = |h: &BinaryHeap<Reverse<(Instant, usize, u64)>>| h.peek().map(|r| r.0 .0);
        [
            first(&self.timers),
            first(&self.mirror_timers),
            self.pool.poll_timeout(),
            self.checker.as_ref().and_then(Checker::poll_timeout),
            self.next_report,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expires what is due at `now`: call it when [`Engine::poll_timeout`] has passed (an
    /// early call does nothing), then `progress`.
    pub fn handle_timeout<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        self.health_work(net, now);
        while let Some(mut idle) = self.pool.expired(now) {
            let retired = !idle.meta.reusable(now);
            self.stats.pool_closes[if retired {
                PoolClose::Retired
            } else {
                PoolClose::IdleTimeout
            } as usize] += 1;
            self.by_conn.remove(&idle.leg.conn);
            let _ = idle.leg.finish(net);
            net.close(now, idle.leg.conn);
        }
        while let Some(&Reverse((t, slot, epoch))) = self.mirror_timers.peek() {
            if t > now {
                break;
            }
            self.mirror_timers.pop();
            if self.mirrors[slot]
                .as_ref()
                .is_some_and(|m| m.epoch == epoch)
            {
                self.end_mirror(net, now, slot, Err(MirrorError::TimedOut));
            }
        }
        while let Some(&Reverse((t, sid, epoch))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(mut s) = self.sessions.get_mut(sid).and_then(Option::take) else {
                continue;
            };
            let mut expired = false;
            if s.epoch == epoch && !s.closed && s.scheduled == Some(t) {
                s.scheduled = None;
                match deadline(&s) {
                    Some((due, what)) if due <= now => {
                        self.expire(net, now, sid, &mut s, what);
                        expired = true;
                    }
                    _ => self.arm(sid, &mut s),
                }
            }
            self.sessions[sid] = Some(s);
            if expired {
                // `progress` steps the session and queues its next deadline.
                self.dirty.push(sid);
                self.maybe_release(sid);
            }
        }
    }

    /// Queues the session's next deadline unless an entry at or before it is queued already.
    fn arm(&mut self, sid: usize, s: &mut Session<C>) {
        if s.closed {
            return;
        }
        if let Some((due, _)) = deadline(s) {
            if s.scheduled.is_none_or(|t| due < t) {
                s.scheduled = Some(due);
                self.timers.push(Reverse((due, sid, s.epoch)));
            }
        }
    }

    /// A timeout expired: what the client (and upstream) see, and the counter.
    fn expire<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        what: Expiry,
    ) {
        if what.is_timeout() {
            self.stats.timeouts[what as usize] += 1;
        }
        match what {
            Expiry::RequestHead => {
                // RFC 9110 §15.5.9: 408 and close.
                self.stats.refuse(Refusal::HeadTimeout);
                let response = http::error_response(408, Refusal::HeadTimeout.label());
                self.answer_without_head(now, s, &response, 408, Refusal::HeadTimeout);
            }
            Expiry::Idle => {
                // A keep-alive connection with nothing in flight: close it gracefully.
                if let Some(h) = s.kind.http_mut() {
                    h.close_after = true;
                }
            }
            Expiry::Request => {
                self.end_attempt(
                    net,
                    now,
                    sid,
                    s,
                    (Outcome::TimedOut, Refusal::RequestTimeout),
                );
            }
            Expiry::Connect => {
                self.end_attempt(
                    net,
                    now,
                    sid,
                    s,
                    (Outcome::ConnectFailed, Refusal::ConnectTimeout),
                );
            }
            Expiry::Handshake | Expiry::BodyStall => {
                // A response body that stopped coming is the upstream's failure; a client that
                // stopped reading (or sending its body) cancels the attempt.
                // (`teardown` cancels whatever attempt is left).
                let upstream_stalled = s.kind.http().is_some_and(|h| h.resp == RespPhase::Body)
                    && s.to_down.is_empty();
                if upstream_stalled {
                    self.finish_attempt(now, s, Outcome::ResetMidResponse);
                }
                self.teardown(net, now, s, true);
            }
            Expiry::TcpIdle => {
                self.finish_attempt(now, s, Outcome::Complete);
                self.teardown(net, now, s, false);
            }
            Expiry::Linger => {
                // The response went out whole; the client just never closed its side.
                self.stats.completed += 1;
                self.teardown(net, now, s, false);
            }
            Expiry::PerTry => {
                self.end_attempt(
                    net,
                    now,
                    sid,
                    s,
                    (Outcome::TimedOut, Refusal::PerTryTimeout),
                );
            }
            Expiry::RetryBackoff => self.start_pending_retry(net, now, sid, s),
            // `http_machine` routes the held request once its time has come.
            Expiry::FaultDelay => {}
        }
    }

    /// Attempts the balancer of service `svc` counts as outstanding on endpoint `ep` (`None`
    /// when no balancer of the current tables exists for it yet).
    pub fn outstanding(&self, svc: u32, ep: u32) -> Option<u32> {
        self.balancers.get(&svc).map(|b| b.outstanding(ep))
    }

    /// The tables current now (what a newly accepted connection is served under).
    /// Where the engine reads its tables.
    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    pub fn tables(&self) -> Arc<Snapshot> {
        self.publisher.load()
    }

    /// Upstream connections idle in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.idle()
    }

    /// Sessions in progress.
    pub fn active(&self) -> usize {
        self.sessions.len() - self.free.len()
    }

    /// Start of a drain: HTTP sessions between requests close now; one in a request closes
    /// after its response. TCP sessions run on until they end or the drain's deadline.
    pub fn drain_idle(&mut self) {
        self.draining = true;
        for (sid, s) in self.sessions.iter_mut().enumerate() {
            if let Some(h) = s.as_mut().and_then(|s| s.kind.http_mut()) {
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
        for slot in 0..self.mirrors.len() {
            if self.mirrors[slot].is_some() {
                self.end_mirror(net, now, slot, Err(MirrorError::Stopped));
            }
        }
        for idle in self.pool.drain() {
            net.abort(idle.leg.conn);
        }
        if let Some(c) = self.checker.as_mut() {
            // No targets: every probe in flight is aborted.
            c.sync(net, now, &[]);
        }
        self.by_conn.clear();
        self.free = (0..self.sessions.len()).collect();
        self.stats.sessions = 0;
    }

    /// Feeds one transport event. Returns `false` for a connection the engine does not know
    /// (the caller may own it, e.g. a built-in service).
    pub fn handle<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant, ev: NetEvent<C>) -> bool {
        if !matches!(ev, NetEvent::Accepted { .. }) && !self.by_conn.contains_key(&ev.conn()) {
            // A health probe's connection, or none of ours.
            let Some(checker) = self.checker.as_mut() else {
                return false;
            };
            let ours = checker.handle(net, now, ev);
            if ours {
                self.publish_checks(false);
            }
            return ours;
        }
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
                if side == Side::Mirror {
                    if let Some(m) = self.mirrors[sid].as_mut() {
                        m.up.connected = true;
                    }
                    self.mirror_dirty.push(sid);
                    return true;
                }
                if side == Side::Pool {
                    // A warm hop connected: its handshake goes on in `progress_pool`.
                    if let Some(idle) = self.pool.get_mut(sid) {
                        idle.leg.connected = true;
                    }
                    self.pool_dirty.push(sid);
                    return true;
                }
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
                let Some(&(sid, side)) = self.by_conn.get(&c) else {
                    return false;
                };
                match side {
                    Side::Mirror => self.mirror_dirty.push(sid),
                    // An idle connection matters when it has something to read (an end, or
                    // bytes unasked for), or output of its own to finish (a warm hop's
                    // handshake); the send space a request left behind does not.
                    Side::Pool => {
                        let busy = self
                            .pool
                            .get_mut(sid)
                            .is_some_and(|i| i.leg.pending_out() > 0 || i.leg.is_handshaking());
                        if matches!(ev, NetEvent::Readable(_)) || busy {
                            self.pool_dirty.push(sid);
                        }
                    }
                    Side::Up | Side::Down => self.dirty.push(sid),
                }
                true
            }
            NetEvent::Closed(c) | NetEvent::Reset(c) => {
                let Some((sid, side)) = self.by_conn.remove(&c) else {
                    return false;
                };
                if side == Side::Mirror {
                    let e = MirrorError::Leg(LegError::Reset);
                    self.end_mirror(net, now, sid, Err(e));
                    return true;
                }
                if side == Side::Pool {
                    // Gone while idle: nothing was in flight on it.
                    if self.pool.remove(sid).is_some() {
                        self.stats.pool_closes[PoolClose::PeerClosed as usize] += 1;
                    }
                    return true;
                }
                let reset = matches!(ev, NetEvent::Reset(_));
                if let Some(mut s) = self.sessions[sid].take() {
                    if reset && !s.closed {
                        self.on_reset(net, now, sid, &mut s, side, c);
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
        sid: usize,
        s: &mut Session<C>,
        side: Side,
        c: C,
    ) {
        if side == Side::Down {
            // The client went away: not a refusal, but the session ends (`teardown` cancels
            // its attempt).
            self.teardown(net, now, s, true);
            return;
        }
        if !s.up.as_ref().is_some_and(|u| u.conn == c) {
            return; // an upstream the session already let go of
        }
        let failure = self.upstream_failure(s, Refusal::UpstreamReset, true);
        self.end_attempt(net, now, sid, s, failure);
    }

    /// What an upstream failure means at this point of the session: (outcome, the reason
    /// the client is told). `transport`: the transport failed (not TLS or framing), so a
    /// connect failure may be retried.
    fn upstream_failure(
        &self,
        s: &Session<C>,
        reason: Refusal,
        transport: bool,
    ) -> (Outcome, Refusal) {
        let connecting = s.attempt.as_ref().is_some_and(|a| a.connected_at.is_none())
            || s.up.as_ref().is_some_and(|u| !u.connected);
        if connecting {
            let r = if transport {
                Refusal::ConnectFailed
            } else {
                reason
            };
            return (Outcome::ConnectFailed, r);
        }
        match s.kind.http() {
            Some(h) if h.resp == RespPhase::Head => (Outcome::ResetBeforeResponse, reason),
            _ => (Outcome::ResetMidResponse, reason),
        }
    }

    /// Starts `a`: the balancer counts it outstanding until `finish_attempt`.
    fn begin_attempt(&mut self, mut a: Attempt) -> Attempt {
        if let Some((svc, ep)) = a.lb {
            if let Some(b) = self.balancers.get_mut(&svc) {
                b.start(ep);
            }
        }
        a.gen = self.balancer_gen;
        a
    }

    /// Ends the session's attempt, if one is in flight, in `outcome`: the balancer's
    /// bookkeeping and the outcome counter. Returns the attempt for a retry decision.
    fn finish_attempt(
        &mut self,
        now: Instant,
        s: &mut Session<C>,
        outcome: Outcome,
    ) -> Option<Attempt> {
        let a = s.attempt.take()?;
        self.stats.attempts[outcome as usize] += 1;
        if let Some(c) = s.conn.as_mut() {
            c.outcome = Some(outcome);
        }
        if let Some((svc, ep)) = a.lb.filter(|_| a.gen == self.balancer_gen) {
            if let Some(b) = self.balancers.get_mut(&svc) {
                let at = now_duration(now);
                match outcome {
                    // Latency as the balancer sees it: to the response head (HTTP) or to
                    // the established connection (TCP).
                    Outcome::Complete => {
                        let end = a
                            .connected_at
                            .filter(|_| s.kind.http().is_none())
                            .unwrap_or(now);
                        b.finish(ep, end.saturating_duration_since(a.started), at)
                    }
                    Outcome::Cancelled => b.cancel(ep),
                    _ => b.fail(ep, at),
                }
            }
        }
        self.record_outcome(s, &a, outcome, now);
        Some(a)
    }

    /// The one place an upstream attempt ends. Feeds the balancer and the counters, then
    /// decides what the client sees: a new attempt (a connect that failed before any byte
    /// of the request left), an error response (HTTP, before the response began), or a
    /// cut (after it began, or TCP).
    fn end_attempt<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        (outcome, reason): (Outcome, Refusal),
    ) {
        if let Some(c) = s.conn.as_mut().filter(|_| outcome != Outcome::Complete) {
            c.reason = Some(reason);
        }
        let attempt = self.finish_attempt(now, s, outcome);
        if outcome == Outcome::Complete {
            return;
        }
        let idle = s.kind.http().is_some_and(|h| h.resp == RespPhase::Idle);
        if attempt.is_none() && idle {
            // A kept-alive upstream went away between requests: nothing was in flight.
            self.drop_upstream(net, s);
            return;
        }
        let no_response_byte = s.u_in.is_empty() && !attempt.as_ref().is_some_and(|a| a.responded);
        self.drop_upstream(net, s);
        if let Some(mut a) = attempt {
            let policy = s.kind.http().and_then(|h| h.policy.clone());
            let retries = policy.as_ref().and_then(|p| p.retries.as_ref());
            // A connect failure leaves the whole request in `to_up`: nothing is written to an
            // upstream before it connected (and finished its TLS handshake).
            let connect_failed = outcome == Outcome::ConnectFailed
                && matches!(reason, Refusal::ConnectFailed | Refusal::ConnectTimeout);
            let connect_limit = match retries {
                Some(r) if r.on_connect_failure => r.attempts,
                _ => MAX_CONNECT_ATTEMPTS,
            };
            // A reused connection the server closed as the request went out: nothing was
            // processed (a fresh one that fails may have been: the method rules apply).
            let stale = outcome == Outcome::ResetBeforeResponse && no_response_byte && a.reused;
            // A peer gateway could not reach the endpoint: nothing was processed, so the
            // request goes to another endpoint whatever its method.
            let peer_refused = reason == Refusal::EndpointUnhealthy;
            let mut keep = None;
            let again = if connect_failed && a.number < connect_limit {
                self.count_decision(s, Decision::Retry("connect_failure"));
                // (The whole request is still in `to_up`; the copy goes on for later.)
                keep = a.replay.take();
                Some(false)
            } else if let Some(head) = a
                .replay
                .take()
                .filter(|_| (stale || peer_refused) && a.number < MAX_CONNECT_ATTEMPTS)
            {
                // The copy holds the request alone: no preamble of the old hop to take off.
                s.to_up = head.clone();
                a.preamble_len = 0;
                // A peer may refuse the next endpoint too: the copy stays for that.
                keep = peer_refused.then_some(head);
                Some(!peer_refused)
            } else {
                None
            };
            if let Some(same_endpoint) = again {
                if self
                    .retry(net, now, sid, s, a, (same_endpoint, keep))
                    .is_ok()
                {
                    self.stats.retries += 1;
                    self.dirty.push(sid);
                    return;
                }
            } else if let Some(why) =
                self.policy_retry(now, s, &a, outcome, reason, no_response_byte)
            {
                // Tried again after a backoff with full jitter, on another endpoint.
                let base = retries.map_or(Duration::ZERO, |r| r.backoff);
                let at = now + policy::backoff(base, a.number, self.rng.gen::<f64>());
                self.count_decision(s, Decision::Retry(why));
                s.to_up.clear();
                let h = s.kind.http_mut().expect("policies are HTTP's");
                h.pending_retry = Some((at, a));
                self.dirty.push(sid);
                return;
            }
        }
        if outcome == Outcome::Cancelled {
            self.teardown(net, now, s, true);
            return;
        }
        self.fail_request(net, now, sid, s, reason);
    }

    /// Counts a policy decision under the route of the session's request.
    fn count_decision(&self, s: &Session<C>, d: Decision) {
        if let Some(label) = s.kind.http().and_then(|h| h.route_label.as_ref()) {
            self.policy_stats.count(label, d);
        }
    }

    /// Should the route's `retries` try the request again after `outcome`? Returns the
    /// reason (a counter label) when it should; counts why not when a retry was wanted.
    fn policy_retry(
        &mut self,
        now: Instant,
        s: &Session<C>,
        a: &Attempt,
        outcome: Outcome,
        reason: Refusal,
        no_response_byte: bool,
    ) -> Option<&'static str> {
        let r = s.kind.http()?.policy.as_ref()?.retries.as_ref()?;
        let why = match outcome {
            Outcome::ResetBeforeResponse if no_response_byte && r.on_reset => "reset",
            Outcome::TimedOut if reason == Refusal::PerTryTimeout && r.on_timeout => "timeout",
            // Approved when the response head came (`may_retry`).
            Outcome::RetryableStatus => return Some("status"),
            _ => return None,
        };
        (a.number < r.attempts && self.may_retry(now, s, false)).then_some(why)
    }

    /// May the session's request be tried again (beyond a connect failure)? Its method must
    /// be one the route retries (unless `any_method`: a gRPC status the route retries on),
    /// its bytes kept, and the service's budget must allow it (spent here). A refusal is
    /// counted with its reason.
    fn may_retry(&mut self, now: Instant, s: &Session<C>, any_method: bool) -> bool {
        let Some(h) = s.kind.http() else {
            return false;
        };
        let Some(r) = h.policy.as_ref().and_then(|p| p.retries.as_ref()) else {
            return false;
        };
        let skip = if !any_method && !r.retries_method(&h.method) {
            Some("method")
        } else if h.retry_copy.is_none() {
            Some("buffer")
        } else {
            let budget = s
                .snap
                .services
                .get(h.service as usize)
                .map(|svc| svc.retry_budget)
                .unwrap_or_default();
            let b = self.budgets.entry(h.service).or_default();
            (!b.try_retry(&budget, self.share, now)).then_some("budget")
        };
        if let Some(why) = skip {
            self.count_decision(s, Decision::RetrySkipped(why));
        }
        skip.is_none()
    }

    /// A retry's backoff has passed: the next attempt, with the request as kept.
    fn start_pending_retry<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
    ) {
        let Some(h) = s.kind.http_mut() else {
            return;
        };
        let Some((_, mut a)) = h.pending_retry.take() else {
            return;
        };
        let Some(copy) = h.retry_copy.clone() else {
            // Cannot happen while the body waits during the backoff; never send a body
            // without its head.
            self.fail_request(net, now, sid, s, Refusal::UpstreamReset);
            return;
        };
        // (The copy also goes with the attempt: a peer gateway may refuse its endpoint.)
        s.to_up = copy.clone();
        a.preamble_len = 0;
        match self.retry(net, now, sid, s, a, (false, Some(copy))) {
            Ok(()) => {
                self.stats.retries += 1;
                self.dirty.push(sid);
            }
            Err(r) => self.fail_request(net, now, sid, s, r),
        }
    }

    /// What the client sees of a request that will not be tried again: an error response
    /// while nothing of the response reached it, else a cut.
    fn fail_request<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        reason: Refusal,
    ) {
        let grpc = s.kind.http_mut().filter(|h| h.grpc);
        if let Some(h) = grpc {
            let code = grpc_refusal_status(reason, reason.status());
            if let Some(t) = h.tally.as_mut().filter(|_| h.resp == RespPhase::Head) {
                t.grpc_status = Some(code);
            }
            let response = http::grpc_error_response(code, reason.label(), true, &[]);
            self.answer_or_cut(net, now, sid, s, reason, (&response, 200));
            return;
        }
        let response = http::error_response(reason.status(), reason.label());
        self.answer_or_cut(net, now, sid, s, reason, (&response, reason.status()));
    }

    /// The gateway ends a request with `response` (its `status`) while nothing of the
    /// upstream's response reached the client, else with a cut; counted as `reason`.
    fn answer_or_cut<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        reason: Refusal,
        (response, status): (&[u8], u16),
    ) {
        self.stats.refuse(reason);
        let answerable = s.kind.http().is_some_and(|h| h.resp == RespPhase::Head);
        if !answerable {
            // The response had begun: the client sees a cut.
            self.end_request(now, s, None, Some(reason));
            self.teardown(net, now, s, true);
            return;
        }
        let h = s.kind.http_mut().expect("checked above");
        // Nothing of the response reached the client: it gets one error response, and
        // the connection closes after it (the request body, if any, is not read on).
        h.up_endpoint = None;
        h.resp = RespPhase::Idle;
        h.req = ReqPhase::Head;
        h.req_body = None;
        h.request_deadline = None;
        h.pending_retry = None;
        h.retry_copy = None;
        h.close_after = true;
        s.d_in.clear();
        s.to_up.clear();
        s.to_down.extend_from_slice(response);
        self.end_request(now, s, Some(status), Some(reason));
        self.dirty.push(sid);
    }

    /// Resets the session's upstream connection, if any.
    fn drop_upstream<N: Net<Conn = C>>(&mut self, net: &mut N, s: &mut Session<C>) {
        if let Some(up) = s.up.take() {
            if self.by_conn.remove(&up.conn).is_some() {
                net.abort(up.conn);
            }
        }
        forget_upstream(s);
    }

    /// A new attempt on a new connection: after a connect failure, to another endpoint among
    /// the same candidates where there is one (the failed one otherwise, and always for B's
    /// fixed endpoint); with `same_endpoint`, to the same one (a stale kept-alive connection).
    fn retry<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        a: Attempt,
        (same_endpoint, replay): (bool, Option<Vec<u8>>),
    ) -> Result<(), Refusal> {
        s.to_up.drain(..a.preamble_len.min(s.to_up.len()));
        let is_http = s.kind.http().is_some();
        let snap = s.snap.clone();
        let (leg, pre, lb, endpoint) = match a.lb {
            Some((svc, failed)) => {
                let ep = if same_endpoint {
                    failed
                } else {
                    // Not the one that failed, nor one a peer gateway just refused.
                    let service = &snap.services[svc as usize];
                    let held = |e: u32| {
                        let addr = service.endpoints.get(e as usize).map(|x| x.address);
                        self.holds.iter().any(|(until, sv, h)| {
                            *until > now && *sv == service.name && addr == Some(SocketAddr::V4(*h))
                        })
                    };
                    let mut others: Vec<u32> = a
                        .candidates
                        .iter()
                        .copied()
                        .filter(|&e| e != failed && !held(e))
                        .collect();
                    if others.is_empty() {
                        others = a
                            .candidates
                            .iter()
                            .copied()
                            .filter(|&e| e != failed)
                            .collect();
                    }
                    let pool = if others.is_empty() {
                        &a.candidates
                    } else {
                        &others
                    };
                    self.balancer(&snap, svc)
                        .and_then(|b| b.pick(pool, None, now_duration(now)))
                        .unwrap_or(failed)
                };
                let addr = endpoint_addr(&snap, svc, ep)?;
                let mux = s.kind.http().is_some_and(|h| !h.upgrade_asked);
                let (leg, pre) =
                    self.open_upstream(net, now, &snap, (svc, ep), s.client, is_http, mux)?;
                (leg, pre, Some((svc, ep)), addr)
            }
            None => (
                self.connect_plain(net, now, a.endpoint, snap.services.get(a.svc as usize))?,
                None,
                None,
                a.endpoint,
            ),
        };
        self.by_conn.insert(leg.conn, (sid, Side::Up));
        s.up = Some(leg);
        s.up_eof = false;
        s.u_in.clear();
        let mut preamble_len = 0;
        match s.kind.http_mut() {
            Some(h) => {
                if let Some(p) = pre {
                    preamble_len = p.len();
                    s.to_up.splice(0..0, p);
                }
                h.up_endpoint = Some(endpoint);
            }
            None => s.preamble = pre,
        }
        if let Some(h) = s.kind.http_mut() {
            let svc_rt = &snap.services[a.svc as usize];
            let ep_index = lb.map(|(_, e)| e);
            let mut key = self.pool_key(&snap, a.svc, ep_index, endpoint, s.client);
            if let Some(hop) = key.hop.as_mut().filter(|_| h.upgrade_asked) {
                hop.mux = false;
            }
            h.up_meta = Some(UpMeta {
                key,
                born: now,
                requests: 1,
                cfg: svc_rt.pool,
            });
        }
        let next = self.begin_attempt(Attempt {
            lb,
            candidates: a.candidates,
            svc: a.svc,
            number: a.number + 1,
            preamble_len,
            per_try: a.per_try,
            replay,
            ..Attempt::first(now, endpoint, a.connect_timeout)
        });
        if let Some(h) = s.kind.http_mut() {
            // Interim responses are counted per attempt.
            h.interim = 0;
        }
        s.attempt = Some(next);
        self.count_decision(s, Decision::Attempt);
        if let Some(r) = s.kind.http_mut().and_then(|h| h.record.as_mut()) {
            r.attempts = a.number + 1;
            r.endpoint = Some(endpoint);
            r.dst_identity = via_identity(&snap, a.svc, lb.map(|(_, e)| e));
        }
        if let Some(c) = s.conn.as_mut().filter(|_| !is_http) {
            c.attempts = a.number + 1;
            c.endpoint = Some(endpoint);
            c.dst_identity = via_identity(&snap, a.svc, lb.map(|(_, e)| e));
        }
        Ok(())
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
        let Some(listener) = snap.listener_at(SocketAddr::V4(local)) else {
            return false;
        };
        self.stats.accepted += 1;
        let who = (conn, remote, listener.name.as_str());
        if self.active() >= self.max_sessions {
            return self.refuse_accept(net, now, who, Refusal::WorkerOverflow);
        }
        let name: Arc<str> = Arc::from(listener.name.as_str());
        let caps = (
            listener.max_connections,
            listener.max_connections_per_source,
        );
        // A stream of an `ingress-tls` HTTP/2 connection: the connection holds its place
        // under the caps (its ticket went to the front with it), and its streams are bounded
        // by the front's concurrent-stream limit, so a stream takes no place of its own.
        let counted = !(listener.protocol == Protocol::IngressTls && net.is_stream(conn));
        let ticket = match counted.then(|| self.admission.admit(&name, *remote.ip(), caps)) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(Overflow::Listener)) => {
                return self.refuse_accept(net, now, who, Refusal::ListenerOverflow)
            }
            Some(Err(Overflow::Source)) => {
                return self.refuse_accept(net, now, who, Refusal::SourceOverflow)
            }
        };
        let mut session = Session {
            snap: snap.clone(),
            kind: Kind::MeshHandshake,
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
            closed: false,
            attempt: None,
            tcp_cell: None,
            tcp_preamble: 0,
            bytes_up: 0,
            bytes_down: 0,
            tcp_caller: None,
            timeouts: listener.timeouts,
            listener: self.events_on().then(|| name.clone()),
            lname: name.clone(),
            conn: self.events_on().then(Box::default),
            accepted_at: now,
            last_io: now,
            last_delivery: now,
            scheduled: None,
            epoch: 0,
            linger_since: None,
            _ticket: ticket,
        };
        match listener.protocol {
            Protocol::Tcp => {
                let Some(svc) = listener.service else {
                    return self.refuse_accept(
                        net,
                        now,
                        (conn, remote, &listener.name),
                        Refusal::NoService,
                    );
                };
                let Some(service) = snap.services.get(svc as usize) else {
                    return self.refuse_accept(
                        net,
                        now,
                        (conn, remote, &listener.name),
                        Refusal::NoService,
                    );
                };
                let (tsvc, ep, candidates) =
                    match self.pick(&snap, &service.default_route, None, remote, now) {
                        Ok(x) => x,
                        Err(r) => {
                            return self.refuse_accept(net, now, (conn, remote, &listener.name), r)
                        }
                    };
                let addr = match endpoint_addr(&snap, tsvc, ep) {
                    Ok(a) => a,
                    Err(r) => {
                        return self.refuse_accept(net, now, (conn, remote, &listener.name), r)
                    }
                };
                match self.open_upstream(net, now, &snap, (tsvc, ep), remote, false, false) {
                    Ok((up, preamble)) => {
                        session.kind = Kind::Tcp(TcpPhase::Connecting);
                        session.up = Some(up);
                        session.preamble = preamble;
                        session.attempt = Some(self.begin_attempt(Attempt {
                            lb: Some((tsvc, ep)),
                            svc: tsvc,
                            candidates,
                            ..Attempt::first(now, addr, session.timeouts.connect)
                        }));
                        if let Some(c) = session.conn.as_mut() {
                            c.service = Some(snap.services[tsvc as usize].name.clone());
                            c.endpoint = Some(addr);
                            c.attempts = 1;
                            c.identity = snap
                                .identity_for_source(IpAddr::V4(*remote.ip()))
                                .map(|i| i.id.clone());
                            c.dst_identity = via_identity(&snap, tsvc, Some(ep));
                        }
                    }
                    Err(r) => {
                        return self.refuse_accept(net, now, (conn, remote, &listener.name), r)
                    }
                }
            }
            Protocol::Http => {
                session.kind =
                    Kind::Http(HttpState::new(Target::Route, listener.timeouts.body_stall));
            }
            Protocol::IngressTls if net.is_stream(conn) => {
                // A stream of an HTTP/2 connection whose TLS the transport terminated
                // (`Net::adopt_client`): plaintext HTTP/1.1 from here.
                session.kind =
                    Kind::Http(HttpState::new(Target::Route, listener.timeouts.body_stall));
            }
            Protocol::Mesh if net.hop_peer(conn).is_some() => {
                // A stream of a multiplexed hop: its connection's TLS is the transport's
                // (`Net::adopt_hop`); the preamble comes from its headers, checked as below.
                session.kind = Kind::MeshHandshake;
            }
            Protocol::Mesh | Protocol::IngressTls => {
                // TLS terminated here: mutual with a peer gateway, or a client from outside
                // the mesh showing no certificate.
                let ingress = listener.protocol == Protocol::IngressTls;
                let server = listener
                    .identity
                    .and_then(|i| snap.identities.get(i as usize))
                    .and_then(|i| {
                        if ingress {
                            self.tls.ingress(i)
                        } else {
                            self.tls.server(i)
                        }
                    });
                let Some(tls) = server.and_then(|cfg| rustls::ServerConnection::new(cfg).ok())
                else {
                    return self.refuse_accept(
                        net,
                        now,
                        (conn, remote, &listener.name),
                        Refusal::NoTlsConfig,
                    );
                };
                session.down = Leg::tls(conn, tls.into(), true);
                session.kind = if ingress {
                    Kind::IngressHandshake
                } else {
                    Kind::MeshHandshake
                };
            }
            _ => {
                return self.refuse_accept(
                    net,
                    now,
                    (conn, remote, &listener.name),
                    Refusal::UnsupportedListener,
                )
            }
        }
        if let Some(l) = session.listener.clone() {
            self.emit(Event::Opened {
                listener: l,
                client: remote,
                at: now,
            });
        }
        let sid = self.insert(session);
        self.by_conn.insert(conn, (sid, Side::Down));
        if let Some(up) = self.sessions[sid].as_ref().and_then(|s| s.up.as_ref()) {
            self.by_conn.insert(up.conn, (sid, Side::Up));
        }
        self.dirty.push(sid);
        true
    }

    fn refuse_accept<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        (conn, client, listener): (C, SocketAddrV4, &str),
        r: Refusal,
    ) -> bool {
        self.stats.refuse(r);
        net.abort(conn);
        if self.events_on() {
            self.emit(Event::Refused {
                listener: Arc::from(listener),
                client,
                reason: r,
                at: now,
            });
        }
        true
    }

    fn insert(&mut self, mut s: Session<C>) -> usize {
        self.next_epoch += 1;
        s.epoch = self.next_epoch;
        self.stats.sessions += 1;
        match self.free.pop() {
            Some(i) => {
                self.sessions[i] = Some(Box::new(s));
                i
            }
            None => {
                self.sessions.push(Some(Box::new(s)));
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
    /// client's address where the service says so). Returns (service, endpoint index, the
    /// endpoints it chose from).
    fn pick(
        &mut self,
        snap: &Snapshot,
        route: &control::snapshot::RouteRt,
        head: Option<&RequestHead>,
        client: SocketAddrV4,
        now: Instant,
    ) -> Result<(u32, u32, Vec<u32>), Refusal> {
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
        let candidates = self.usable(snap, target, &backend.endpoints, now);
        let ep = self
            .balancer(snap, target)
            .and_then(|b| b.pick(&candidates, hash, now_duration(now)))
            .ok_or(Refusal::NoEndpoint)?;
        Ok((target, ep, candidates))
    }

    /// Opens the connection to an endpoint: TLS to its peer gateway, or plain when local.
    /// `http`: the preamble says `http`; `mux`: the request may be a stream of a
    /// multiplexed hop (HTTP, not an upgrade), which it is when the peer's `hop_protocol`
    /// is `h2` and the transport has one ([`Net::connect_hop`]).
    #[allow(clippy::too_many_arguments)]
    fn open_upstream<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        snap: &Snapshot,
        (svc, ep): (u32, u32),
        client: SocketAddrV4,
        http: bool,
        mux: bool,
    ) -> Result<(Leg<C>, Option<Vec<u8>>), Refusal> {
        let service = snap.services.get(svc as usize).ok_or(Refusal::NoService)?;
        let ep_addr = endpoint_addr(snap, svc, ep)?;
        match service.endpoints[ep as usize].via {
            None => Ok((self.connect_plain(net, now, ep_addr, Some(service))?, None)),
            Some(peer) => {
                let hop = match snap.peers.get(peer as usize) {
                    Some(p)
                        if http && mux && p.hop_protocol == control::schema::HopProtocol::H2 =>
                    {
                        let identity = snap
                            .identity_for_source(IpAddr::V4(*client.ip()))
                            .ok_or(Refusal::NoIdentity)?;
                        Some(self.hop_tls(snap, service, peer, identity)?)
                    }
                    _ => None,
                };
                if let Some((hop, peer_addr)) = hop {
                    let held = self.hold(
                        (&mut *net, now),
                        &service.name,
                        Limit::Connections,
                        &service.circuit_breaker,
                    )?;
                    if let Some(c) = net.connect_hop(now, peer_addr, &hop) {
                        let c = c.map_err(|_| Refusal::ConnectFailed)?;
                        self.stats.upstream_connects += 1;
                        let mut leg = Leg::plain(c, false);
                        leg.held = Some(held);
                        return Ok((leg, Some(preamble::encode(ep_addr, http))));
                    }
                    // No multiplexed hop in this transport (the in-memory one): a
                    // connection of its own, as for `hop_protocol = "http1"`.
                }
                let (tls, peer_addr) = self.client_tls(snap, service, peer, client)?;
                let held = self.hold(
                    (&mut *net, now),
                    &service.name,
                    Limit::Connections,
                    &service.circuit_breaker,
                )?;
                let c = net
                    .connect(now, peer_addr)
                    .map_err(|_| Refusal::ConnectFailed)?;
                self.stats.upstream_connects += 1;
                let mut leg = Leg::tls(c, tls.into(), false);
                leg.held = Some(held);
                Ok((leg, Some(preamble::encode(ep_addr, http))))
            }
        }
    }

    /// A plain TCP connection to a local endpoint of `service` (the transport completes
    /// it later), within the service's `circuit_breaker.max_connections`.
    fn connect_plain<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        addr: SocketAddrV4,
        service: Option<&ServiceRt>,
    ) -> Result<Leg<C>, Refusal> {
        let held = match service {
            Some(svc) => Some(self.hold(
                (net, now),
                &svc.name,
                Limit::Connections,
                &svc.circuit_breaker,
            )?),
            None => None,
        };
        let c = net.connect(now, addr).map_err(|_| Refusal::ConnectFailed)?;
        self.stats.upstream_connects += 1;
        let mut leg = Leg::plain(c, false);
        leg.held = held;
        Ok(leg)
    }

    /// Peer `peer` of the tables, its address, and the client configuration `identity`
    /// presents to it: what every hop to it starts from.
    fn peer_client_config<'s>(
        &self,
        snap: &'s Snapshot,
        peer: u32,
        identity: &IdentityRt,
    ) -> Result<
        (
            &'s control::snapshot::PeerRt,
            SocketAddrV4,
            Arc<rustls::ClientConfig>,
        ),
        Refusal,
    > {
        let peer = snap.peers.get(peer as usize).ok_or(Refusal::UnknownPeer)?;
        let SocketAddr::V4(addr) = peer.address else {
            return Err(Refusal::UnknownPeer);
        };
        let cfg = self
            .tls
            .client(identity, &peer.identity)
            .ok_or(Refusal::NoTlsConfig)?;
        Ok((peer, addr, cfg))
    }

    fn client_tls(
        &self,
        snap: &Snapshot,
        service: &ServiceRt,
        peer: u32,
        client: SocketAddrV4,
    ) -> Result<(rustls::ClientConnection, SocketAddrV4), Refusal> {
        let identity = snap
            .identity_for_source(IpAddr::V4(*client.ip()))
            .ok_or(Refusal::NoIdentity)?;
        let (_, peer_addr, cfg) = self.peer_client_config(snap, peer, identity)?;
        let sni = super::tls::sni_for_service(&service.name).map_err(|_| Refusal::NoTlsConfig)?;
        let tls = rustls::ClientConnection::new(cfg, sni).map_err(|_| Refusal::NoTlsConfig)?;
        Ok((tls, peer_addr))
    }

    /// What a multiplexed hop to `peer` for `service` needs (see [`HopTls`]), and the peer's
    /// address.
    fn hop_tls(
        &mut self,
        snap: &Snapshot,
        service: &ServiceRt,
        peer: u32,
        identity: &IdentityRt,
    ) -> Result<(HopTls, SocketAddrV4), Refusal> {
        let (peer, peer_addr, base) = self.peer_client_config(snap, peer, identity)?;
        let at = Arc::as_ptr(&base) as usize;
        let config = match self.h2_configs.get(&at) {
            Some((_, h2)) => h2.clone(),
            None => {
                // One per identity and peer; the base configurations change with
                // certificates and trust, so the old ones go now and then.
                if self.h2_configs.len() >= 4096 {
                    self.h2_configs.clear();
                }
                let h2 = super::tls::with_alpn_h2(&base);
                self.h2_configs.insert(at, (base, h2.clone()));
                h2
            }
        };
        let sni = super::tls::sni_for_service(&service.name).map_err(|_| Refusal::NoTlsConfig)?;
        let key = format!(
            "{peer_addr} {} {} {} {:p}",
            peer.identity,
            service.name,
            identity.id,
            Arc::as_ptr(&config)
        );
        Ok((
            HopTls {
                config,
                sni,
                key: key.into(),
            },
            peer_addr,
        ))
    }

    /// Moves bytes on every session that had an event.
    pub fn progress<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        while let Some(sid) = self.dirty.pop() {
            if let Some(mut s) = self.sessions.get_mut(sid).and_then(Option::take) {
                if !s.closed {
                    let before = self.io_mark(&s);
                    if let Err(e) = self.step(net, now, sid, &mut s) {
                        self.step_failed(net, now, sid, &mut s, e);
                    }
                    let after = self.io_mark(&s);
                    if after != before {
                        s.last_io = now;
                    }
                    // The engine's byte counters move exactly when a leg takes bytes.
                    if (after.0, after.1) != (before.0, before.1) {
                        s.last_delivery = now;
                    }
                    if let Some(h) = s.kind.http_mut() {
                        // A request's circuit-breaker places last as long as its state says.
                        if h.resp != RespPhase::Head {
                            h.pending = None;
                        }
                        if h.resp == RespPhase::Idle {
                            h.inflight = None;
                        }
                        let waiting = h.req == ReqPhase::Head && h.resp == RespPhase::Idle;
                        if waiting && !s.d_in.is_empty() && h.head_started.is_none() {
                            h.head_started = Some(now);
                        }
                        if waiting {
                            release_idle_buffers(&mut s);
                        }
                    }
                    self.arm(sid, &mut s);
                }
                self.sessions[sid] = Some(s);
                self.maybe_release(sid);
            }
        }
        // Copies launched just now included.
        self.progress_mirrors(net, now);
        self.progress_pool(net, now);
        // New tables give the health checks new targets; a worker's first report starts
        // its once-a-second schedule.
        let checks_stale =
            self.checker.is_some() && self.publisher.load().generation != self.checker_gen;
        if checks_stale || (self.board.is_some() && self.next_report.is_none()) {
            self.health_work(net, now);
        }
    }

    /// A step failed: an upstream failure ends the attempt (which decides between a retry,
    /// an error response and a cut); anything else ends the session.
    fn step_failed<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        e: StepError,
    ) {
        match e {
            StepError::Up(le) => {
                let transport = matches!(le, LegError::Reset);
                let failure = self.upstream_failure(s, le.refusal(), transport);
                self.end_attempt(net, now, sid, s, failure);
            }
            StepError::Upstream(r) => {
                let failure = self.upstream_failure(s, r, false);
                self.end_attempt(net, now, sid, s, failure);
            }
            StepError::Refused(r) => {
                self.stats.refuse(r);
                if let Some(c) = s.conn.as_mut() {
                    c.reason = Some(r);
                }
                self.finish_attempt(now, s, Outcome::Cancelled);
                self.teardown(net, now, s, true);
            }
            StepError::BadBody(e) => {
                // The server got part of a request that can't be finished: that attempt is
                // over (cancelled: not the upstream's fault), and the client is told why.
                self.finish_attempt(now, s, Outcome::Cancelled);
                self.drop_upstream(net, s);
                let response = e.response();
                self.answer_or_cut(
                    net,
                    now,
                    sid,
                    s,
                    Refusal::BadRequest,
                    (&response, e.status()),
                );
            }
            StepError::Leg(le) => {
                self.stats.refuse(le.refusal());
                if let Some(c) = s.conn.as_mut() {
                    c.reason = Some(le.refusal());
                }
                self.finish_attempt(now, s, Outcome::Cancelled);
                self.teardown(net, now, s, true);
            }
        }
    }

    fn step<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
    ) -> Result<(), StepError> {
        if matches!(s.kind, Kind::MeshHandshake) {
            self.inbound_handshake(net, now, sid, s)?;
            if matches!(s.kind, Kind::MeshHandshake) {
                return Ok(());
            }
        }
        if matches!(s.kind, Kind::IngressHandshake) {
            self.ingress_handshake(net, now, s)?;
            if !matches!(s.kind, Kind::Http(_)) {
                return Ok(());
            }
        }
        if matches!(s.kind, Kind::Tcp(TcpPhase::Connecting)) {
            let up = s.up.as_mut().expect("a connecting session has an upstream");
            if !up.connected {
                return Ok(());
            }
            up.handshake(net).map_err(StepError::Up)?;
            if up.is_handshaking() {
                return Ok(());
            }
            self.note_resumption(up);
            if let Some(a) = s.attempt.as_mut() {
                a.connected_at = Some(now);
            }
            if let Some(p) = s.preamble.take() {
                s.tcp_preamble = p.len() as u64;
                s.to_up.splice(0..0, p);
            }
            s.kind = Kind::Tcp(TcpPhase::Pipe);
            self.open_tcp_series(s);
        }
        match s.kind {
            Kind::Tcp(TcpPhase::Pipe) => self.pipe(net, now, s),
            Kind::Http(_) => self.http(net, now, sid, s),
            _ => Ok(()),
        }
    }

    /// Changes when bytes moved on the session (read, handled or written).
    fn io_mark(&self, s: &Session<C>) -> (u64, u64, usize, usize, usize, usize) {
        (
            self.stats.bytes_down_to_up,
            self.stats.bytes_up_to_down,
            s.d_in.len(),
            s.u_in.len(),
            s.to_up.len(),
            s.to_down.len(),
        )
    }

    fn note_resumption(&mut self, up: &Leg<C>) {
        if let Some(rustls::Connection::Client(c)) = up.tls_state() {
            if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                self.stats.tls_resumed += 1;
            }
        }
    }

    /// `ingress-tls`: finish the handshake; then HTTP/1.1 here, or, for ALPN `h2`, the
    /// connection goes to the transport's HTTP/2 front, whose streams come back as sessions
    /// of their own (see `accept`).
    fn ingress_handshake<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        s: &mut Session<C>,
    ) -> Result<(), StepError> {
        s.down.handshake(net)?;
        if s.down.is_handshaking() {
            return Ok(());
        }
        let h2 = s
            .down
            .tls_state()
            .is_some_and(|t| t.alpn_protocol() == Some(super::tls::ALPN_H2));
        if !h2 {
            let mut h = HttpState::new(Target::Route, s.timeouts.body_stall);
            // The first request head is due within `request_head` of the handshake, as an
            // `http` listener's first bytes are (not the keep-alive idle timeout).
            h.head_started = Some(now);
            h.close_after = self.draining;
            s.kind = Kind::Http(h);
            return Ok(());
        }
        let conn = s.down.conn;
        let leg = std::mem::replace(&mut s.down, Leg::plain(conn, true));
        let ticket = s._ticket.take();
        let listener = super::h2front::HttpListener {
            request_head: s.timeouts.request_head,
            body_stall: s.timeouts.body_stall,
        };
        match net.adopt_client(leg, listener, ticket) {
            Ok(()) => {
                self.by_conn.remove(&conn);
                // Not this session's to close or report any more: each stream is a session.
                s.listener = None;
                s.conn = None;
                s.closed = true;
                Ok(())
            }
            Err(leg) => {
                s.down = leg;
                Err(StepError::Refused(Refusal::UnsupportedListener))
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
        s.down.handshake(net)?;
        if s.down.is_handshaking() {
            return Ok(());
        }
        let (sni, peer, alpn_h2) = match s.down.tls_state() {
            Some(rustls::Connection::Server(t)) => (
                t.server_name().map(str::to_owned),
                super::tls::peer_identity(t),
                t.alpn_protocol() == Some(super::tls::ALPN_H2),
            ),
            _ => match net.hop_peer(s.down.conn) {
                Some(h) => (h.sni.clone(), h.identity.clone(), false),
                None => (None, None, false),
            },
        };
        let svc = sni
            .as_deref()
            .and_then(super::tls::service_from_sni)
            .and_then(|name| s.snap.service_id(&name))
            .ok_or(StepError::Refused(Refusal::UnknownService))?;
        let peer = peer.ok_or(StepError::Refused(Refusal::PeerIdentity))?;
        if alpn_h2 {
            // A multiplexed hop: the transport's HTTP/2 front takes the connection, TLS
            // and all; each stream comes back as a session that starts here again.
            let conn = s.down.conn;
            let leg = std::mem::replace(&mut s.down, Leg::plain(conn, true));
            let hp = HopPeer {
                sni,
                identity: Some(peer),
            };
            let ticket = s._ticket.take();
            return match net.adopt_hop(leg, hp, ticket) {
                Ok(()) => {
                    // Counted by the front (`xdpmesh_hop_connections_accepted_total`).
                    self.by_conn.remove(&conn);
                    // Not this session's to close or report any more.
                    s.listener = None;
                    s.conn = None;
                    s.closed = true;
                    Ok(())
                }
                Err(leg) => {
                    s.down = leg;
                    Err(StepError::Refused(Refusal::BadPreamble))
                }
            };
        }
        // The preamble (bounded).
        while !s.d_in.contains(&b'\n') && s.d_in.len() < preamble::MAX {
            let room = preamble::MAX - s.d_in.len();
            match s.down.read(net, &mut self.buf[..room])? {
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
            let mut h = HttpState::new(
                Target::Fixed {
                    service: s.snap.services[svc as usize].name.clone(),
                    endpoint: ep,
                    peer,
                },
                s.timeouts.body_stall,
            );
            h.req = ReqPhase::Head;
            s.kind = Kind::Http(h);
            return Ok(());
        }
        if s.snap.services[svc as usize].has_request_rules() {
            // A raw pipe would carry requests that no method or path rule sees.
            return Err(StepError::Refused(Refusal::PolicyNeedsHttp));
        }
        if !s.snap.authorize(svc, &peer, None) {
            // L4: the caller learns by close_notify and close, not by a byte of the service.
            self.stats.refuse(Refusal::Denied);
            s.down.finish(net)?;
            self.teardown(net, now, s, false);
            return Ok(());
        }
        let snap = s.snap.clone();
        if self.golden.is_some() {
            s.tcp_caller = Some(peer.as_str().into());
        }
        let up = self
            .connect_plain(net, now, ep, snap.services.get(svc as usize))
            .map_err(StepError::Refused)?;
        self.by_conn.insert(up.conn, (sid, Side::Up));
        s.up = Some(up);
        s.attempt = Some(self.begin_attempt(Attempt {
            svc,
            ..Attempt::first(now, ep, s.timeouts.connect)
        }));
        if let Some(c) = s.conn.as_mut() {
            c.service = Some(snap.services[svc as usize].name.clone());
            c.endpoint = Some(ep);
            c.attempts = 1;
            c.identity = Some(peer);
        }
        // Bytes after the preamble belong to the service.
        s.to_up = std::mem::take(&mut s.d_in);
        s.kind = Kind::Tcp(TcpPhase::Connecting);
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
        let before = (self.stats.bytes_down_to_up, self.stats.bytes_up_to_down);
        loop {
            let mut moved = false;
            let down_to_up = Flow {
                src: &mut s.down,
                dst: &mut *up,
                buf: &mut s.to_up,
                eof: &mut s.down_eof,
                counter: &mut self.stats.bytes_down_to_up,
            };
            moved |= pump(net, down_to_up, &mut self.buf)?;
            let up_to_down = Flow {
                src: &mut *up,
                dst: &mut s.down,
                buf: &mut s.to_down,
                eof: &mut s.up_eof,
                counter: &mut self.stats.bytes_up_to_down,
            };
            moved |= pump(net, up_to_down, &mut self.buf)?;
            if !moved {
                break;
            }
        }
        let (sent, received) = (
            self.stats.bytes_down_to_up - before.0,
            self.stats.bytes_up_to_down - before.1,
        );
        s.bytes_up += sent;
        s.bytes_down += received;
        if let Some(c) = s.tcp_cell.as_ref() {
            let preamble = sent.min(s.tcp_preamble);
            s.tcp_preamble -= preamble;
            c.sent_bytes.add(sent - preamble);
            c.received_bytes.add(received);
        }
        if let Some(c) = s.conn.as_mut() {
            c.bytes_in += sent;
            c.bytes_out += received;
            if c.upstream.is_none() {
                c.upstream = s
                    .attempt
                    .as_ref()
                    .and_then(|a| Some(a.connected_at?.saturating_duration_since(a.started)));
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
            self.finish_attempt(now, s, Outcome::Complete);
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
            )?;
            if let Some(up) = s.up.as_mut() {
                if up.connected && !up.is_handshaking() {
                    moved |= fill(net, up, &mut s.u_in, &mut s.up_eof, &mut self.buf)
                        .map_err(StepError::Up)?;
                } else if up.connected {
                    up.handshake(net).map_err(StepError::Up)?;
                    if !up.is_handshaking() {
                        self.note_resumption(up);
                        moved = true;
                    }
                }
                if up.connected && !up.is_handshaking() {
                    if let Some(a) = s.attempt.as_mut().filter(|a| a.connected_at.is_none()) {
                        a.connected_at = Some(now);
                    }
                }
            }
            moved |= self.http_machine(net, now, sid, s)?;
            if let Some(h) = s.kind.http() {
                let between = h.req == ReqPhase::Head && h.resp == RespPhase::Idle;
                // After the client's FIN only what can never become a request goes: a whole
                // head pipelined before the FIN is still served.
                let incomplete = || {
                    matches!(
                        http::parse_request(&s.d_in, &http::Limits::default().from_peer_gateway()),
                        Ok(None)
                    )
                };
                if between && !s.d_in.is_empty() && (h.close_after || (s.down_eof && incomplete()))
                {
                    // The gateway answered and closes, or the client finished: what is left
                    // (requests pipelined after a close, the body of a refused request, a
                    // partial head at the client's FIN) is read and discarded, never parsed.
                    s.d_in.clear();
                    moved = true;
                }
            }
            // Write what is owed.
            let before = (s.to_up.len(), s.to_down.len());
            if let Some(up) = s.up.as_mut() {
                if !s.to_up.is_empty() && up.connected && !up.is_handshaking() {
                    let n = up.write(net, &s.to_up).map_err(StepError::Up)?;
                    s.to_up.drain(..n);
                    self.stats.bytes_down_to_up += n as u64;
                    s.bytes_up += n as u64;
                    if let Some(c) = s.conn.as_mut() {
                        c.bytes_in += n as u64;
                    }
                } else {
                    up.flush(net).map_err(StepError::Up)?;
                }
            }
            if !s.to_down.is_empty() {
                let n = s.down.write(net, &s.to_down)?;
                s.to_down.drain(..n);
                self.stats.bytes_up_to_down += n as u64;
                s.bytes_down += n as u64;
                if let Some(c) = s.conn.as_mut() {
                    c.bytes_out += n as u64;
                }
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
        let h = s.kind.http().expect("an HTTP session");
        let idle = h.req == ReqPhase::Head && h.resp == RespPhase::Idle && s.d_in.is_empty();
        let tunnel_done = h.resp == RespPhase::Tunnel && s.down_eof && s.up_eof;
        if (h.close_after && idle && s.to_down.is_empty()) || (s.down_eof && idle) || tunnel_done {
            if !s.down.done_sending() {
                s.down.finish(net)?;
            }
            if s.down.done_sending() && s.to_down.is_empty() {
                if s.down_eof {
                    self.stats.completed += 1;
                    self.teardown(net, now, s, false);
                } else {
                    // Our FIN is out: linger until the client's, reading and discarding what
                    // it still sends, since a close with unread data resets the connection
                    // and can destroy the response in flight (RFC 9112 §9.6).
                    s.linger_since.get_or_insert(now);
                }
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
        let h = s.kind.http_mut().expect("an HTTP session");
        if h.resp == RespPhase::Tunnel {
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
        if h.req == ReqPhase::Held && h.held.as_ref().is_some_and(|(at, _)| *at <= now) {
            // An injected delay has passed: route the request now.
            let (_, mut head) = h.held.take().expect("checked above");
            h.req = ReqPhase::Head;
            if let Err(r) = self.dispatch(net, now, sid, s, &mut head, true) {
                self.refuse_request(now, s, r, keeps_alive(&head));
            }
            return Ok(true);
        }
        if h.req == ReqPhase::Head && h.resp == RespPhase::Idle && !h.close_after {
            let limits = match h.target {
                Target::Route => http::Limits::default(),
                Target::Fixed { .. } => http::Limits::default().from_peer_gateway(),
            };
            match http::parse_request(&s.d_in, &limits) {
                Err(e) => {
                    self.stats.refuse(Refusal::BadRequest);
                    self.http_error(now, s, e);
                    return Ok(true);
                }
                Ok(None) => {}
                Ok(Some((mut head, len))) => {
                    s.d_in.drain(..len);
                    self.stats.requests += 1;
                    moved = true;
                    h.head_started = None;
                    if self.golden.is_some() {
                        h.tally = Some(Tally {
                            start: now,
                            route: None,
                            service: None,
                            endpoint: None,
                            status: 0,
                            grpc_status: None,
                            request_bytes: 0,
                            response_bytes: 0,
                        });
                    }
                    h.grpc = http::is_grpc(&head);
                    let kind = match h.target {
                        Target::Route => SpanKind::Client,
                        Target::Fixed { .. } => SpanKind::Server,
                    };
                    let span = trace::start_span(&head, kind, &mut self.rng, &self.sampler);
                    h.span = Some(span);
                    // Decided per request, not per connection: a tap turned on while a
                    // keep-alive connection is open sees its next requests.
                    if self.events_on() {
                        let l = s.lname.clone();
                        h.record = Some(Box::new(RequestEvent {
                            listener: l,
                            client: s.client,
                            method: head.method.clone(),
                            target: head.target.clone(),
                            route: None,
                            service: None,
                            endpoint: None,
                            status: None,
                            refusal: None,
                            attempts: 0,
                            request_body_bytes: 0,
                            response_body_bytes: 0,
                            start: now,
                            end: now,
                            request_id: None,
                            identity: None,
                            authority: head.host().map(str::to_owned),
                            traceparent: None,
                            upstream: None,
                            dst_identity: None,
                            trace: Some(span),
                        }));
                    }
                    if let Err(r) = self.dispatch(net, now, sid, s, &mut head, false) {
                        self.refuse_request(now, s, r, keeps_alive(&head));
                        return Ok(true);
                    }
                }
            }
        }
        let h = s.kind.http_mut().expect("an HTTP session");
        // During a retry's backoff the body waits: the next attempt takes the kept copy
        // first, then what follows.
        if h.req == ReqPhase::Body && s.to_up.len() < BUF && h.pending_retry.is_none() {
            let framer = h.req_body.as_mut().expect("a body phase has a framer");
            match framer.advance(&s.d_in) {
                Ok(a) => {
                    if a.body_bytes > 0 {
                        if let Some(copy) = h.retry_copy.as_mut() {
                            let cap = h
                                .policy
                                .as_ref()
                                .and_then(|p| p.retries.as_ref())
                                .map_or(0, |r| r.buffer);
                            if copy.len() + a.body_bytes <= h.retry_head_len + cap {
                                copy.extend_from_slice(&s.d_in[..a.body_bytes]);
                            } else {
                                // Too long to keep: retried only on a connect failure.
                                h.retry_copy = None;
                            }
                        }
                        if let Some(at) = s.attempt.as_mut() {
                            if let Some(r) = at.replay.as_mut() {
                                if r.len() + a.body_bytes <= h.retry_head_len + REPLAY_BODY_CAP {
                                    r.extend_from_slice(&s.d_in[..a.body_bytes]);
                                } else {
                                    at.replay = None;
                                }
                            }
                        }
                        if let Some(m) = h.mirror.as_mut() {
                            if !m.keep(&s.d_in[..a.body_bytes]) {
                                self.policy_stats
                                    .count(&m.label, Decision::MirrorSkipped("body"));
                                h.mirror = None;
                            }
                        }
                        s.to_up.extend(s.d_in.drain(..a.body_bytes));
                        moved = true;
                        if let Some(r) = h.record.as_mut() {
                            r.request_body_bytes += a.body_bytes as u64;
                        }
                        if let Some(t) = h.tally.as_mut() {
                            t.request_bytes += a.body_bytes as u64;
                        }
                    }
                    if a.done {
                        h.req = ReqPhase::Sent;
                        h.req_body = None;
                        if h.resp == RespPhase::Head {
                            h.request_deadline = Some(now + h.request_timeout);
                        }
                        moved = true;
                        self.launch_mirror(net, now, s);
                    } else if s.down_eof && s.d_in.is_empty() {
                        // The client stopped mid-body: nothing good can follow.
                        return Err(StepError::Refused(Refusal::BadRequest));
                    }
                }
                Err(e) => return Err(StepError::BadBody(e)),
            }
        }
        // Response side.
        let h = s.kind.http_mut().expect("an HTTP session");
        // A head is parsed only while the client's buffer has room: interim responses a
        // client does not read must not grow it.
        if h.resp == RespPhase::Head && s.to_down.len() < BUF {
            match http::parse_response(&s.u_in, &http::Limits::default(), &h.method) {
                // A malformed head, or the upstream's end of stream before a whole one: the
                // client gets a 502 (the attempt ends as reset before the response).
                Err(_) => return Err(StepError::Upstream(Refusal::BadResponse)),
                Ok(None) if s.up_eof => return Err(StepError::Upstream(Refusal::BadResponse)),
                Ok(None) => {}
                Ok(Some((head, len))) => {
                    // RFC 9110 §15.2.2: a 101 answers an Upgrade the client asked for, and
                    // the tunnel starts after the whole request (body included) was sent.
                    if head.status == 101 && !(h.upgrade_asked && h.req == ReqPhase::Sent) {
                        return Err(StepError::Upstream(Refusal::BadResponse));
                    }
                    if head.is_interim() {
                        h.interim = h.interim.saturating_add(1);
                        if h.interim > MAX_INTERIM {
                            return Err(StepError::Upstream(Refusal::InterimFlood));
                        }
                    }
                    let hop = h.up_meta.as_ref().is_some_and(|m| m.key.hop.is_some());
                    if let Some(a) = s.attempt.as_mut() {
                        a.responded = true;
                        if !head.is_interim() {
                            a.status = Some(head.status);
                        }
                    }
                    // A trailers-only gRPC response carries its status in the head.
                    let grpc_head = if h.grpc && !head.is_interim() {
                        head.header("grpc-status").and_then(http::grpc_status)
                    } else {
                        None
                    };
                    // Gateway B answers 503 for an endpoint it cannot reach (its health
                    // checks, or its connect failing); only B writes that field (it drops a
                    // server's), so it is B's word, and says nothing was processed.
                    let peer_refused = hop
                        && (head.status == 503 || grpc_head == Some(14))
                        && head.header("x-xdpmesh-error").is_some_and(|v| {
                            matches!(
                                v,
                                b"endpoint_unhealthy" | b"connect_failed" | b"connect_timeout"
                            )
                        });
                    if peer_refused {
                        let snap = s.snap.clone();
                        if let Some(a) = s.attempt.as_mut() {
                            a.peer_verdict = true;
                            if let Some((svc, ep)) = a.lb {
                                self.hold_endpoint(&snap, svc, ep, now);
                            }
                        }
                        let replayable = s
                            .attempt
                            .as_ref()
                            .is_some_and(|a| a.replay.is_some() && a.number < MAX_CONNECT_ATTEMPTS);
                        if replayable {
                            self.end_attempt(
                                net,
                                now,
                                sid,
                                s,
                                (Outcome::ConnectFailed, Refusal::EndpointUnhealthy),
                            );
                            return Ok(true);
                        }
                    }
                    let h = s.kind.http_mut().expect("an HTTP session");
                    let retries = h.policy.as_ref().and_then(|p| p.retries.as_ref());
                    let retry_grpc = grpc_head.is_some_and(|g| {
                        head.status == 200 && retries.is_some_and(|r| r.retries_grpc(g))
                    });
                    let retry_status = retries
                        .filter(|r| r.retries_status(head.status) || retry_grpc)
                        .map(|r| r.attempts);
                    let number = s.attempt.as_ref().map_or(1, |a| a.number);
                    // Discarded when the request is tried again (its answer may differ).
                    if retry_status.is_some_and(|attempts| number < attempts)
                        && self.may_retry(now, s, retry_grpc)
                    {
                        self.end_attempt(
                            net,
                            now,
                            sid,
                            s,
                            (Outcome::RetryableStatus, Refusal::BadResponse),
                        );
                        return Ok(true);
                    }
                    let h = s.kind.http_mut().expect("an HTTP session");
                    s.u_in.drain(..len);
                    moved = true;
                    if !head.keep_alive && !head.is_interim() {
                        // The server closes its connection, not the client's (`Connection`
                        // is hop-by-hop): only a body that ends at that close (RFC 9112
                        // §6.3) ends the client connection too. (A pooled connection meets
                        // a server's per-connection request limit sooner or later.)
                        h.up_reusable = false;
                        if head.body == http::BodyKind::UntilClose {
                            h.close_after = true;
                        }
                    }
                    let conn = if head.status == 101 {
                        http::ClientConnection::Upgrade
                    } else if head.is_interim() {
                        http::ClientConnection::KeepAlive { http10: false }
                    } else if h.close_after || !h.client_keep_alive {
                        http::ClientConnection::Close
                    } else {
                        http::ClientConnection::KeepAlive {
                            http10: h.client_http10,
                        }
                    };
                    let attempts = h
                        .policy
                        .as_ref()
                        .filter(|p| p.retries.is_some() && !head.is_interim())
                        .map(|_| number.to_string());
                    // A peer gateway's reason goes on to the client (a server's was dropped
                    // at B).
                    let reason = head.header("x-xdpmesh-error").filter(|_| hop);
                    let mut extra: Vec<(&str, &[u8])> = Vec::with_capacity(2);
                    if let Some(n) = &attempts {
                        extra.push(("x-xdpmesh-attempts", n.as_bytes()));
                    }
                    if let Some(r) = reason {
                        extra.push(("x-xdpmesh-error", r));
                    }
                    let extra = &extra[..];
                    http::write_forwarded_response(&head, &mut s.to_down, conn, extra);
                    if head.status == 101 {
                        h.resp = RespPhase::Tunnel;
                        h.request_deadline = None;
                        self.finish_attempt(now, s, Outcome::Complete);
                        self.end_request(now, s, Some(101), None);
                        return Ok(true);
                    }
                    if head.is_interim() {
                        // 100 Continue and friends: relayed, the final response follows.
                        return Ok(true);
                    }
                    let mut framer = BodyFramer::new(head.body);
                    if h.grpc && grpc_head.is_none() {
                        framer.keep_trailers();
                    }
                    h.resp_body = Some(framer);
                    h.resp = RespPhase::Body;
                    if let Some(r) = h.record.as_mut() {
                        r.status = Some(head.status);
                        r.upstream = s
                            .attempt
                            .as_ref()
                            .map(|a| now.saturating_duration_since(a.started));
                    }
                    if let Some(t) = h.tally.as_mut() {
                        t.status = head.status;
                        t.grpc_status = grpc_head;
                    }
                }
            }
        }
        let h = s.kind.http_mut().expect("an HTTP session");
        if h.resp == RespPhase::Body && s.to_down.len() < BUF {
            let framer = h.resp_body.as_mut().expect("a body phase has a framer");
            let a = framer
                .advance(&s.u_in)
                .map_err(|_| StepError::Upstream(Refusal::BadResponse))?;
            if a.body_bytes > 0 {
                s.to_down.extend(s.u_in.drain(..a.body_bytes));
                moved = true;
                if let Some(r) = h.record.as_mut() {
                    r.response_body_bytes += a.body_bytes as u64;
                }
                if let Some(t) = h.tally.as_mut() {
                    t.response_bytes += a.body_bytes as u64;
                }
            }
            let ended_by_close = s.up_eof && s.u_in.is_empty() && framer.eof().is_ok();
            if a.done || ended_by_close {
                if ended_by_close && !a.done {
                    h.up_reusable = false;
                    h.close_after = true;
                }
                h.resp = RespPhase::Idle;
                if let (Some(t), Some(trailers)) = (
                    h.tally.as_mut(),
                    h.resp_body.as_ref().and_then(|f| f.trailers()),
                ) {
                    t.grpc_status = http::trailer_grpc_status(trailers);
                }
                h.resp_body = None;
                h.request_deadline = None;
                if !s.u_in.is_empty() {
                    // Bytes nobody asked for after a whole response: that connection is not
                    // to be trusted with another request.
                    h.up_reusable = false;
                }
                let status = h
                    .tally
                    .map(|t| t.status)
                    .filter(|&c| c != 0)
                    .or(h.record.as_ref().and_then(|r| r.status));
                self.finish_attempt(now, s, Outcome::Complete);
                self.end_request(now, s, status, None);
                let h = s.kind.http_mut().expect("an HTTP session");
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
                } else {
                    // Idle upstreams are the worker's, not the client connection's: an idle
                    // keep-alive client holds none, and the next request of any session
                    // takes one from the pool (most likely this one).
                    self.park_upstream(net, now, s);
                }
                moved = true;
            } else if s.up_eof && s.u_in.is_empty() {
                // Truncated response: the client must not take it as complete.
                return Err(StepError::Upstream(Refusal::BadResponse));
            }
        }
        Ok(moved)
    }

    /// The gateway answers a routed request itself (no route, denied, rate limited, an
    /// injected abort, ...). A request with a body closes the connection after the answer
    /// (the body is not read); a bodyless HTTP/1.1 keep-alive one (`keep_alive`) leaves it
    /// open, so a client that is refused often does not also reconnect each time.
    fn refuse_request(&mut self, now: Instant, s: &mut Session<C>, r: Refusal, keep_alive: bool) {
        self.stats.refuse(r);
        let h = s.kind.http_mut().expect("an HTTP session");
        h.close_after |= !keep_alive;
        let status = match r {
            Refusal::FaultAbort => h.answer_status,
            _ => r.status(),
        };
        // RFC 9110 §10.2.3: whole seconds, at least 1.
        let secs = h.retry_after.as_secs() + u64::from(h.retry_after.subsec_nanos() > 0);
        let retry_after = secs.max(1).to_string();
        let add: &[(&str, &[u8])] = match r {
            Refusal::RateLimited => &[("retry-after", retry_after.as_bytes())],
            _ => &[],
        };
        let (response, status) = if h.grpc {
            let code = grpc_refusal_status(r, status);
            if let Some(t) = h.tally.as_mut() {
                t.grpc_status = Some(code);
            }
            // A rate limit's `retry-after` too: gRPC clients read it as a pushback hint.
            (
                http::grpc_error_response(code, r.label(), h.close_after, add),
                200,
            )
        } else {
            let response = http::gateway_response(status, r.label(), h.close_after, add);
            (response, status)
        };
        s.to_down.extend_from_slice(&response);
        self.end_request(now, s, Some(status), Some(r));
    }

    fn http_error(&mut self, now: Instant, s: &mut Session<C>, e: HttpError) {
        self.answer_without_head(now, s, &e.response(), e.status(), Refusal::BadRequest);
    }

    /// The gateway answers a request whose head never arrived whole (400, 431, 408) with
    /// `response` and closes after it; nothing of the partial head is kept. Its event has no
    /// method or target.
    fn answer_without_head(
        &mut self,
        now: Instant,
        s: &mut Session<C>,
        response: &[u8],
        status: u16,
        refusal: Refusal,
    ) {
        if let Some(h) = s.kind.http_mut() {
            h.close_after = true;
            h.head_started = None;
        }
        s.d_in.clear();
        s.to_down.extend_from_slice(response);
        if self.golden.is_some() {
            let t = Tally {
                start: now,
                route: None,
                service: None,
                endpoint: None,
                status,
                grpc_status: None,
                request_bytes: 0,
                response_bytes: 0,
            };
            self.count_request(now, s, t, Some(status));
        }
        if !self.events_on() {
            return;
        }
        let listener = s.lname.clone();
        let identity = match s.kind.http().map(|h| &h.target) {
            Some(Target::Fixed { peer, .. }) => Some(peer.clone()),
            _ => None,
        };
        self.emit(Event::Request(Box::new(RequestEvent {
            listener,
            client: s.client,
            method: String::new(),
            target: String::new(),
            route: None,
            service: None,
            endpoint: None,
            status: Some(status),
            refusal: Some(refusal),
            attempts: 0,
            request_body_bytes: 0,
            response_body_bytes: 0,
            start: now,
            end: now,
            request_id: None,
            identity,
            authority: None,
            traceparent: None,
            upstream: None,
            dst_identity: None,
            trace: None,
        })));
    }

    /// Routes a request head and sends it upstream.
    fn dispatch<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        sid: usize,
        s: &mut Session<C>,
        head: &mut RequestHead,
        resumed: bool,
    ) -> Result<(), Refusal> {
        // A request uses the tables current when its head arrives (a TCP connection keeps
        // the ones it started with): a reload changes routing and policy on kept-alive
        // connections too, without dropping them.
        s.snap = self.publisher.load();
        let snap = s.snap.clone();
        let listener = s.timeouts;
        // CONNECT would turn the session into a tunnel that no route or policy sees.
        if head.method == "CONNECT" {
            return Err(Refusal::BadRequest);
        }
        // Routes and policies match the path the server will serve, not the raw target.
        let target = http::normalize_target(&head.target).map_err(|_| Refusal::BadRequest)?;
        let mut route_name = None;
        let mut route_id = None;
        let mut policy: Option<(Arc<RoutePolicy>, Arc<str>)> = None;
        let (svc, ep, endpoint, candidates, limits) =
            match &s.kind.http().expect("an HTTP session").target {
                Target::Fixed {
                    service,
                    endpoint,
                    peer,
                } => {
                    let svc = snap.service_id(service).ok_or(Refusal::UnknownService)?;
                    if !snap.authorize(svc, peer, Some((&head.method, &target.matched))) {
                        return Err(Refusal::Denied);
                    }
                    let local = snap.services[svc as usize]
                        .endpoints
                        .iter()
                        .any(|e| e.via.is_none() && e.address == SocketAddr::V4(*endpoint));
                    if !local {
                        return Err(Refusal::EndpointNotLocal);
                    }
                    if self.locally_unhealthy(service, *endpoint) {
                        return Err(Refusal::EndpointUnhealthy);
                    }
                    (
                        svc,
                        None,
                        *endpoint,
                        Vec::new(),
                        RequestLimits::of(&listener),
                    )
                }
                Target::Route => {
                    let host = head.host().unwrap_or("").to_string();
                    let hit = snap
                        .route(&host, &head.method, &target.matched, &*head)
                        .ok_or(Refusal::NoRoute)?;
                    let route = hit.route;
                    route_id = hit.id;
                    if self.events_on() {
                        route_name = route.name.clone();
                    }
                    let limits = RequestLimits {
                        request: route.timeout.unwrap_or(listener.request),
                        connect: route.connect_timeout.unwrap_or(listener.connect),
                        body_stall: route.body_stall_timeout.unwrap_or(listener.body_stall),
                    };
                    if let Some(p) = &route.policy {
                        let label: Arc<str> = match &route.name {
                            Some(n) => Arc::from(n.as_str()),
                            None => Arc::from(snap.services[route.service as usize].name.as_str()),
                        };
                        if !resumed {
                            if let Some(d) = self.gates(now, s, (p, &label), head)? {
                                // An injected delay: routed when it has passed.
                                let h = s.kind.http_mut().expect("an HTTP session");
                                h.held = Some((now + d, Box::new(head.clone())));
                                h.req = ReqPhase::Held;
                                return Ok(());
                            }
                        }
                        policy = Some((p.clone(), label));
                    }
                    let (tsvc, ep, candidates) =
                        self.pick(&snap, route, Some(head), s.client, now)?;
                    let addr = endpoint_addr(&snap, tsvc, ep)?;
                    (tsvc, Some(ep), addr, candidates, limits)
                }
            };
        // A gRPC call's own deadline bounds the request timeout (PROTOCOL-HTTP2.md,
        // `grpc-timeout`); the field goes on to the server unchanged.
        let limits = match s.kind.http().filter(|h| h.grpc) {
            Some(_) => match head.header("grpc-timeout").and_then(http::grpc_timeout) {
                Some(d) => RequestLimits {
                    request: limits.request.min(d),
                    ..limits
                },
                None => limits,
            },
            None => limits,
        };
        if let Some(h) = s.kind.http() {
            if matches!(h.target, Target::Route) {
                http::ensure_request_id(head, &mut self.rng);
            }
            if let Some(span) = &h.span {
                trace::forward(head, span);
            }
        }
        // The service's circuit breaker: requests in flight, then those awaiting a head.
        let svc_rt = &snap.services[svc as usize];
        let cb = svc_rt.circuit_breaker;
        let inflight = self.hold((net, now), &svc_rt.name, Limit::Requests, &cb)?;
        let pending = self.hold((net, now), &svc_rt.name, Limit::Pending, &cb)?;
        // What the connection must be bound to: gateway B binds a hop to the service its
        // SNI named and the identity it presented, for the hop's whole life.
        let mut key = self.pool_key(&snap, svc, ep, endpoint, s.client);
        if head.upgrade.is_some() {
            // A tunnel after a 101 needs a hop connection of its own.
            if let Some(h) = key.hop.as_mut() {
                h.mux = false;
            }
        }
        let hop = key.hop.is_some();
        // Reuse the session's own upstream connection when it fits and is idle, else one
        // from the worker's pool, else open one.
        let mut reuse = {
            let h = s.kind.http().expect("an HTTP session");
            h.up_reusable
                && !s.up_eof
                && s.up.is_some()
                && h.up_meta
                    .as_ref()
                    .is_some_and(|m| m.key == key && m.reusable(now))
        };
        let mut preamble_len = 0;
        if reuse {
            self.stats.upstream_reused += 1;
        } else {
            if !self.park_upstream(net, now, s) {
                self.release_upstream(net, now, s);
            }
            let (leg, meta) = match self.take_pooled(net, now, &key, svc_rt.pool) {
                Some(pooled) => {
                    self.stats.upstream_reused += 1;
                    reuse = true;
                    pooled
                }
                None => {
                    let (leg, pre) = match &s.kind.http().expect("an HTTP session").target {
                        Target::Fixed { .. } => {
                            (self.connect_plain(net, now, endpoint, Some(svc_rt))?, None)
                        }
                        Target::Route => {
                            let ep = ep.expect("routed requests have an endpoint index");
                            let mux = head.upgrade.is_none();
                            self.open_upstream(net, now, &snap, (svc, ep), s.client, true, mux)?
                        }
                    };
                    if let Some(p) = pre {
                        preamble_len = p.len();
                        s.to_up.extend_from_slice(&p);
                    }
                    let meta = UpMeta {
                        key,
                        born: now,
                        requests: 0,
                        cfg: svc_rt.pool,
                    };
                    (leg, meta)
                }
            };
            self.by_conn.insert(leg.conn, (sid, Side::Up));
            s.up = Some(leg);
            s.up_eof = false;
            s.u_in.clear();
            s.kind.http_mut().expect("an HTTP session").up_meta = Some(meta);
        }
        {
            let h = s.kind.http_mut().expect("an HTTP session");
            if let Some(m) = h.up_meta.as_mut() {
                m.requests += 1;
            }
            h.inflight = Some(inflight);
            h.pending = Some(pending);
        }
        let retries = policy.as_ref().and_then(|(p, _)| p.retries.as_ref());
        let attempt = self.begin_attempt(Attempt {
            lb: ep.map(|e| (svc, e)),
            svc,
            candidates,
            preamble_len,
            // A kept-alive connection is connected already.
            connected_at: reuse.then_some(now),
            reused: reuse
                && s.up
                    .as_ref()
                    .is_some_and(|l| net.reset_on_reuse_is_stale(l.conn)),
            per_try: retries.map(|r| r.per_try_timeout),
            ..Attempt::first(now, endpoint, limits.connect)
        });
        if retries.is_some() {
            // Retries are spent from the budget of the service the request goes to.
            if snap.generation != self.budgets_gen {
                self.budgets.clear();
                self.budgets_gen = snap.generation;
            }
            let budget = snap.services[svc as usize].retry_budget;
            self.budgets.entry(svc).or_default().request(&budget, now);
        }
        s.attempt = Some(attempt);
        let h = s.kind.http_mut().expect("an HTTP session");
        if let Some(t) = h.tally.as_mut() {
            t.route = route_id;
            t.service = Some(svc);
            t.endpoint = Some(endpoint);
        }
        if let Some(r) = h.record.as_mut() {
            r.service = Some(snap.services[svc as usize].name.clone());
            r.route = route_name;
            r.endpoint = Some(endpoint);
            r.attempts = 1;
            r.request_id = head
                .header("x-request-id")
                .map(|v| String::from_utf8_lossy(v).into_owned());
            r.traceparent = head
                .header("traceparent")
                .map(|v| String::from_utf8_lossy(v).into_owned());
            r.dst_identity = via_identity(&snap, svc, ep);
            r.identity = match &h.target {
                Target::Fixed { peer, .. } => Some(peer.clone()),
                Target::Route => snap
                    .identity_for_source(IpAddr::V4(*s.client.ip()))
                    .map(|i| i.id.clone()),
            };
        }
        h.up_endpoint = Some(endpoint);
        // The hop-by-hop `Connection` is not forwarded: an HTTP/1.1 request leaves the
        // upstream connection open whatever the client asked of its own (the response says
        // otherwise if the server closes); an HTTP/1.0 one only if it asked for keep-alive.
        h.up_reusable = head.version == 1 || head.keep_alive;
        h.client_keep_alive = head.keep_alive;
        h.method = head.method.clone();
        h.request_timeout = limits.request;
        h.body_stall = limits.body_stall;
        let head_at = s.to_up.len();
        http::write_forwarded_request(head, &target.forward, &mut s.to_up, &[]);
        h.mirror = policy
            .as_ref()
            .and_then(|(p, l)| self.plan_mirror(p, l, head, &target.forward, limits.request));
        h.service = svc;
        // The head is kept whole (it is bounded by the head limit); `buffer` bounds the body.
        h.retry_copy = match &policy {
            Some((p, _)) if p.retries.is_some() => Some(s.to_up[head_at..].to_vec()),
            _ => None,
        };
        h.retry_head_len = s.to_up.len() - head_at;
        h.pending_retry = None;
        (h.policy, h.route_label) = match policy {
            Some((p, l)) => (Some(p), Some(l)),
            None => (None, None),
        };
        if let Some(l) = &h.route_label {
            self.policy_stats.count(l, Decision::Attempt);
        }
        // A reused connection the server closed as the request went out processed nothing:
        // the request goes again on a fresh one, whatever its method (its body up to
        // REPLAY_BODY_CAP is kept for that as it passes).
        let replayable = (reuse || hop)
            && head.upgrade.is_none()
            && !matches!(head.body, http::BodyKind::Length(n) if n > REPLAY_BODY_CAP as u64);
        if replayable {
            if let Some(a) = s.attempt.as_mut() {
                a.replay = Some(s.to_up[head_at..].to_vec());
            }
        }
        // An Upgrade request's body is framed like any other (a body read as the next
        // request would reach the server unchecked); the tunnel starts only at a 101.
        h.upgrade_asked = head.upgrade.is_some();
        h.client_http10 = head.version == 0;
        h.interim = 0;
        if head.body.has_body() {
            h.req_body = Some(BodyFramer::new(head.body));
            h.req = ReqPhase::Body;
        } else {
            h.req = ReqPhase::Sent;
        }
        if h.req == ReqPhase::Sent {
            h.request_deadline = Some(now + limits.request);
        }
        h.resp = RespPhase::Head;
        if h.req == ReqPhase::Sent {
            self.launch_mirror(net, now, s);
        }
        Ok(())
    }

    /// A route's gates before routing: its rate limit (429), then its injected faults (an
    /// abort answers for the upstream; a delay returns how long to hold the request).
    fn gates(
        &mut self,
        now: Instant,
        s: &mut Session<C>,
        (p, label): (&Arc<RoutePolicy>, &Arc<str>),
        head: &RequestHead,
    ) -> Result<Option<Duration>, Refusal> {
        if let Some(rl) = &p.rate_limit {
            let who = if rl.per_identity {
                s.snap
                    .identity_for_source(IpAddr::V4(*s.client.ip()))
                    .map(|i| i.id.clone())
            } else {
                None
            };
            let gen = s.snap.generation;
            if let Err(wait) = self
                .buckets
                .take(gen, (p.id, who.as_deref()), rl, self.share, now)
            {
                self.policy_stats.count(label, Decision::RateLimited);
                if let Some(h) = s.kind.http_mut() {
                    h.retry_after = wait;
                }
                return Err(Refusal::RateLimited);
            }
        }
        let Some(f) = p.fault.as_ref().filter(|f| f.applies(head)) else {
            return Ok(None);
        };
        let roll =
            |rng: &mut rand_chacha::ChaCha8Rng, percent: f64| rng.gen::<f64>() * 100.0 < percent;
        if let Some((percent, status)) = f.abort {
            if roll(&mut self.rng, percent) {
                self.policy_stats.count(label, Decision::Fault("abort"));
                if let Some(h) = s.kind.http_mut() {
                    h.answer_status = status;
                }
                return Err(Refusal::FaultAbort);
            }
        }
        if let Some((percent, d)) = f.delay {
            if roll(&mut self.rng, percent) {
                self.policy_stats.count(label, Decision::Fault("delay"));
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// Whether the request just routed gets a copy for its route's `mirror`: the copy's head,
    /// to which the body is added as it passes (see [`mirror`]).
    fn plan_mirror(
        &mut self,
        p: &RoutePolicy,
        label: &Arc<str>,
        head: &RequestHead,
        forward: &str,
        timeout: Duration,
    ) -> Option<Box<Pending>> {
        let m = p.mirror.as_ref()?;
        if self.rng.gen::<f64>() * 100.0 >= m.percent {
            return None;
        }
        let skip = if head.upgrade.is_some() {
            Some("upgrade")
        } else if matches!(head.body, http::BodyKind::Length(n) if n > mirror::MIRROR_BODY_CAP as u64)
        {
            Some("body")
        } else {
            None
        };
        if let Some(why) = skip {
            self.policy_stats.count(label, Decision::MirrorSkipped(why));
            return None;
        }
        let mut bytes = Vec::new();
        mirror::copy_head(head, forward, &mut bytes);
        Some(Box::new(Pending {
            label: label.clone(),
            service: m.service,
            head_len: bytes.len(),
            bytes,
            timeout,
            head_request: head.method == "HEAD",
        }))
    }

    /// The request is whole: sends its copy, if it has one, to an endpoint of the mirror
    /// service picked by that service's balancer.
    fn launch_mirror<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant, s: &mut Session<C>) {
        let Some(p) = s.kind.http_mut().and_then(|h| h.mirror.take()) else {
            return;
        };
        if self.mirrors.len() - self.mirror_free.len() >= mirror::MAX_MIRRORS {
            self.policy_stats
                .count(&p.label, Decision::MirrorSkipped("overflow"));
            return;
        }
        let snap = s.snap.clone();
        let n = snap
            .services
            .get(p.service as usize)
            .map_or(0, |svc| svc.endpoints.len() as u32);
        let candidates: Vec<u32> = (0..n).collect();
        let at = now_duration(now);
        let Some(ep) = self
            .balancer(&snap, p.service)
            .and_then(|b| b.pick(&candidates, None, at))
        else {
            self.policy_stats
                .count(&p.label, Decision::MirrorSkipped("no_endpoint"));
            return;
        };
        self.policy_stats.count(&p.label, Decision::Mirrored);
        let (leg, preamble) =
            match self.open_upstream(net, now, &snap, (p.service, ep), s.client, true, true) {
                Ok(x) => x,
                Err(_) => {
                    self.policy_stats.count(&p.label, Decision::MirrorFailed);
                    return;
                }
            };
        if let Some(b) = self.balancers.get_mut(&p.service) {
            b.start(ep);
        }
        let mut out = preamble.unwrap_or_default();
        out.extend_from_slice(&p.bytes);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let m = Mirror::new(leg, out, &p, now, (p.service, ep, self.balancer_gen), epoch);
        let slot = match self.mirror_free.pop() {
            Some(i) => i,
            None => {
                self.mirrors.push(None);
                self.mirrors.len() - 1
            }
        };
        self.by_conn.insert(m.up.conn, (slot, Side::Mirror));
        self.mirror_timers.push(Reverse((m.deadline, slot, epoch)));
        self.mirrors[slot] = Some(m);
        self.mirror_dirty.push(slot);
    }

    /// Moves bytes on every mirror that had an event.
    fn progress_mirrors<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        while let Some(slot) = self.mirror_dirty.pop() {
            let Some(m) = self.mirrors.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            match m.step(net, &mut self.buf) {
                Ok(false) => {}
                Ok(true) => self.end_mirror(net, now, slot, Ok(())),
                Err(e) => self.end_mirror(net, now, slot, Err(e)),
            }
        }
    }

    /// The one place a mirror ends: its balancer's bookkeeping, the counter, the connection.
    fn end_mirror<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        slot: usize,
        result: Result<(), MirrorError>,
    ) {
        let Some(mut m) = self.mirrors.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.mirror_free.push(slot);
        let (svc, ep, gen) = m.lb;
        if gen == self.balancer_gen {
            if let Some(b) = self.balancers.get_mut(&svc) {
                let at = now_duration(now);
                match &result {
                    Ok(()) => b.finish(ep, now.saturating_duration_since(m.started), at),
                    Err(MirrorError::Stopped) => b.cancel(ep),
                    Err(_) => b.fail(ep, at),
                }
            }
        }
        if !matches!(result, Ok(()) | Err(MirrorError::Stopped)) {
            self.policy_stats.count(&m.label, Decision::MirrorFailed);
        }
        if self.by_conn.remove(&m.up.conn).is_some() {
            if result.is_ok() {
                let _ = m.up.finish(net);
                net.close(now, m.up.conn);
            } else {
                net.abort(m.up.conn);
            }
        }
    }

    /// The endpoints among `all` (indices into service `svc`'s) a balancer may pick: neither
    /// ejected by outlier detection nor found unhealthy, unless too few are left (the
    /// service's panic threshold), then all of them.
    fn usable(&mut self, snap: &Snapshot, svc: u32, all: &[u32], now: Instant) -> Vec<u32> {
        let Some(service) = snap.services.get(svc as usize) else {
            return all.to_vec();
        };
        if !self.holds.is_empty() {
            self.expire_holds(now);
        }
        let default_cfg;
        let cfg = match &service.outlier {
            Some(c) => c,
            None => {
                default_cfg = control::snapshot::OutlierRt::default();
                &default_cfg
            }
        };
        let h = self.svc_health(snap, svc, now);
        let mut out = Vec::with_capacity(all.len());
        h.det.filter(cfg, all, now, &mut out);
        // Endpoints a peer gateway could not reach a moment ago wait out their hold, unless
        // nothing else is left. (A hold is its own thing: its end must not end an ejection.)
        if self.holds.iter().any(|(_, sv, _)| *sv == service.name) {
            let held = |ep: &u32| {
                let addr = service.endpoints.get(*ep as usize).map(|e| e.address);
                self.holds
                    .iter()
                    .any(|(_, sv, a)| *sv == service.name && addr == Some(SocketAddr::V4(*a)))
            };
            if out.iter().any(|e| !held(e)) {
                out.retain(|e| !held(e));
            }
        }
        out
    }

    /// The health of service `svc` on this worker, its endpoint indices those of `snap`, the
    /// board's verdicts applied to the endpoints this gateway owns.
    fn svc_health(&mut self, snap: &Snapshot, svc: u32, now: Instant) -> &mut SvcHealth {
        self.refresh_board();
        let service = &snap.services[svc as usize];
        let addrs = || -> Vec<SocketAddrV4> {
            service
                .endpoints
                .iter()
                .map(|e| match e.address {
                    SocketAddr::V4(a) => a,
                    SocketAddr::V6(_) => SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                })
                .collect()
        };
        if self.health_gen != snap.generation {
            // Services gone from the tables take their state with them.
            self.health
                .retain(|name, _| snap.service_id(name).is_some());
            self.health_gen = snap.generation;
        }
        if !self.health.contains_key(&service.name) {
            let det = Detector::new(&addrs(), now);
            let fresh = SvcHealth {
                det,
                gen: snap.generation,
                board: u64::MAX,
            };
            self.health.insert(service.name.clone(), fresh);
        }
        let version = self.board_version;
        let unhealthy = self.unhealthy.clone();
        let h = self.health.get_mut(&service.name).expect("inserted above");
        if h.gen != snap.generation {
            h.det.sync(&addrs());
            h.gen = snap.generation;
            h.board = u64::MAX;
        }
        if h.board != version {
            for (i, e) in service.endpoints.iter().enumerate() {
                if let (None, SocketAddr::V4(a)) = (e.via, e.address) {
                    let bad = unhealthy.contains(&(service.name.clone(), a));
                    h.det.set_healthy(i as u32, !bad);
                }
            }
            h.board = version;
        }
        h
    }

    /// Reads the health checks' verdicts again when they changed.
    fn refresh_board(&mut self) {
        if let Some(b) = &self.board {
            let v = b.version();
            if v != self.board_version {
                self.unhealthy = b.unhealthy();
                self.board_version = v;
            }
        }
    }

    /// Gateway B: do this gateway's health checks find `endpoint` of `service` unhealthy?
    fn locally_unhealthy(&mut self, service: &str, endpoint: SocketAddrV4) -> bool {
        self.refresh_board();
        !self.unhealthy.is_empty()
            && self
                .unhealthy
                .iter()
                .any(|(s, a)| *a == endpoint && s == service)
    }

    /// Gateway A: a peer gateway could not reach endpoint `ep` of service `svc` (its health
    /// checks, or its connect failed): skip it for [`PEER_HOLD`].
    fn hold_endpoint(&mut self, snap: &Snapshot, svc: u32, ep: u32, now: Instant) {
        let Some(service) = snap.services.get(svc as usize) else {
            return;
        };
        let Ok(addr) = endpoint_addr(snap, svc, ep) else {
            return;
        };
        let until = now + PEER_HOLD;
        match self
            .holds
            .iter_mut()
            .find(|(_, s, a)| *a == addr && *s == service.name)
        {
            Some(h) => h.0 = until,
            None => self.holds.push((until, service.name.clone(), addr)),
        }
    }

    /// Ends the holds whose time is up: those endpoints are tried again.
    fn expire_holds(&mut self, now: Instant) {
        self.holds.retain(|(until, _, _)| *until > now);
    }

    /// An attempt's outcome, for outlier detection of the endpoint a balancer picked.
    fn record_outcome(&mut self, s: &Session<C>, a: &Attempt, outcome: Outcome, now: Instant) {
        let Some((svc, ep)) = a.lb else {
            return;
        };
        if a.peer_verdict || s.snap.generation != a.gen {
            return;
        }
        let ok = match outcome {
            Outcome::Complete => a.status.is_none_or(|st| st < 500),
            Outcome::RetryableStatus => a.status.is_some_and(|st| st < 500),
            Outcome::Cancelled => return,
            _ => false,
        };
        let snap = s.snap.clone();
        let Some(cfg) = snap
            .services
            .get(svc as usize)
            .and_then(|x| x.outlier.as_ref())
        else {
            return;
        };
        self.svc_health(&snap, svc, now)
            .det
            .record(cfg, ep, ok, now);
    }

    /// The active health checks (when this worker runs them) and the worker's report to the
    /// board, at most once a second.
    fn health_work<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        if let Some(mut checker) = self.checker.take() {
            let snap = self.publisher.load();
            // New targets, or the once-a-second report: the verdicts go out whole (a new
            // endpoint's first verdict is no transition, and a target no longer checked
            // must take its old verdict with it).
            let mut whole = self.next_report.is_none_or(|t| t <= now);
            if snap.generation != self.checker_gen {
                whole = true;
                // This gateway checks the endpoints it owns (no `via`).
                let targets: Vec<_> = snap
                    .services
                    .iter()
                    .filter_map(|svc| svc.health_check.as_ref().map(|hc| (svc, hc)))
                    .flat_map(|(svc, hc)| {
                        svc.endpoints
                            .iter()
                            .filter_map(move |e| match (e.via, e.address) {
                                (None, SocketAddr::V4(a)) => {
                                    Some((svc.name.clone(), a, hc.clone()))
                                }
                                _ => None,
                            })
                    })
                    .collect();
                checker.sync(net, now, &targets);
                self.checker_gen = snap.generation;
            }
            checker.handle_timeout(net, now);
            self.checker = Some(checker);
            self.publish_checks(whole);
        }
        let Some(board) = self.board.clone() else {
            return;
        };
        if self.next_report.is_some_and(|t| t > now) {
            return;
        }
        self.next_report = Some(now + Duration::from_secs(1));
        let snap = self.publisher.load();
        self.warm_up(net, now, &snap);
        let at = now_duration(now);
        let mut report = Vec::new();
        let idle = self.pool.idle_by_endpoint();
        for (name, h) in self.health.iter_mut() {
            let Some(svc) = snap.service_id(name) else {
                continue;
            };
            if h.gen != snap.generation {
                continue;
            }
            let service = &snap.services[svc as usize];
            if let Some(cfg) = &service.outlier {
                h.det.tick(cfg, now);
            }
            let b = self
                .balancers
                .get(&svc)
                .filter(|_| self.balancer_gen == snap.generation);
            for ep in 0..h.det.len() as u32 {
                let Some(v) = h.det.view(ep) else { continue };
                let pooled = idle.get(&v.address).copied().unwrap_or(0);
                report.push(EndpointReport {
                    service: name.clone(),
                    endpoint: Some(v.address),
                    ejected_for: v.ejected_until.map(|t| t.saturating_duration_since(now)),
                    ejections: v.ejections,
                    ejections_consecutive: 0,
                    ejections_success_rate: 0,
                    returns: 0,
                    unhealthy: !v.healthy
                        || self
                            .holds
                            .iter()
                            .any(|(until, sv, a)| *until > now && sv == name && *a == v.address),
                    consecutive_failures: v.consecutive_failures,
                    outstanding: b.map_or(0, |b| b.outstanding(ep)),
                    ewma: b
                        .and_then(|b| b.rtt_estimate(ep, at))
                        .filter(|_| service.load_balancer == control::schema::LbPolicy::P2cEwma),
                    pooled,
                });
            }
            if let Some(first) = report.iter_mut().rev().find(|r| r.service == *name) {
                // The service's counters ride on one of its rows.
                let c = h.det.counters();
                first.ejections_consecutive = c.ejections_consecutive;
                first.ejections_success_rate = c.ejections_success_rate;
                first.returns = c.returns;
            }
        }
        board.set_worker(self.worker_id, report);
    }

    /// Opens mTLS hops so that each peer's `min_idle` wait idle in the pool for each service
    /// endpoint behind it and each client identity (at most [`MAX_WARM`] per worker; once a
    /// second). A warm hop carries its preamble from the start, like any pooled hop.
    fn warm_up<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant, snap: &Snapshot) {
        if self.draining || !snap.peers.iter().any(|p| p.min_idle > 0) {
            return;
        }
        // At most MAX_WARM warm hops in all: those already idle count.
        let mut budget = MAX_WARM;
        for (pi, peer) in snap.peers.iter().enumerate() {
            if peer.min_idle == 0 {
                continue;
            }
            for (si, svc) in snap.services.iter().enumerate() {
                let want = peer.min_idle.min(svc.pool.max_idle_per_endpoint) as usize;
                for (ei, e) in svc.endpoints.iter().enumerate() {
                    let (Some(via), SocketAddr::V4(addr)) = (e.via, e.address) else {
                        continue;
                    };
                    if via as usize != pi {
                        continue;
                    }
                    for (ii, ident) in snap.identities.iter().enumerate() {
                        if ident.sources.is_empty() {
                            continue;
                        }
                        if peer.hop_protocol == control::schema::HopProtocol::H2 {
                            // The multiplexed hop's shared connection: a connect opens it (or
                            // keeps it from idling out); a transport without one gets hops
                            // of their own, as below.
                            let hop = self.hop_tls(snap, svc, pi as u32, ident);
                            if let Ok((hop, peer_addr)) = hop {
                                match net.connect_hop(now, peer_addr, &hop) {
                                    Some(Ok(c)) => {
                                        net.close(now, c);
                                        budget = budget.saturating_sub(1);
                                        continue;
                                    }
                                    Some(Err(_)) => continue,
                                    None => {}
                                }
                            }
                        }
                        let key =
                            self.key_for(snap, si as u32, Some(ei as u32), addr, Some(ii as u32));
                        let have = self.pool.idle_for(&key);
                        budget = budget.saturating_sub(have.min(want));
                        for _ in have..want {
                            if budget == 0 {
                                return;
                            }
                            budget -= 1;
                            if self
                                .open_warm_hop(net, now, snap, (si as u32, ei as u32), ident, &key)
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    fn open_warm_hop<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        snap: &Snapshot,
        (svc, ep): (u32, u32),
        ident: &IdentityRt,
        key: &PoolKey,
    ) -> Result<(), Refusal> {
        let service = &snap.services[svc as usize];
        let peer = service.endpoints[ep as usize]
            .via
            .ok_or(Refusal::UnknownPeer)?;
        let (_, peer_addr, cfg) = self.peer_client_config(snap, peer, ident)?;
        let sni = super::tls::sni_for_service(&service.name).map_err(|_| Refusal::NoTlsConfig)?;
        let mut tls = rustls::ClientConnection::new(cfg, sni).map_err(|_| Refusal::NoTlsConfig)?;
        // rustls holds plaintext written before the handshake and sends it right after.
        use std::io::Write as _;
        tls.writer()
            .write_all(&preamble::encode(key.endpoint, true))
            .map_err(|_| Refusal::NoTlsConfig)?;
        // No request waits on a warm hop: at the service's cap it is not opened, uncounted.
        let held = self
            .breakers
            .hold(&service.name, Limit::Connections, &service.circuit_breaker)
            .ok_or(Refusal::Overflow)?;
        let c = net
            .connect(now, peer_addr)
            .map_err(|_| Refusal::ConnectFailed)?;
        self.stats.upstream_connects += 1;
        let mut leg = Leg::tls(c, tls.into(), false);
        leg.held = Some(held);
        let meta = UpMeta {
            key: key.clone(),
            born: now,
            requests: 0,
            cfg: service.pool,
        };
        match self.pool.put(leg, meta, now) {
            Ok(slot) => {
                self.by_conn.insert(c, (slot, Side::Pool));
                Ok(())
            }
            Err(_) => {
                net.abort(c);
                Err(Refusal::Overflow)
            }
        }
    }

    /// The checking worker: verdicts that changed go to its own detectors at once and to
    /// the board (the other workers read them from there).
    fn publish_checks(&mut self, whole: bool) {
        let Some(checker) = self.checker.as_mut() else {
            return;
        };
        let mut changed = false;
        while checker.poll_change().is_some() {
            changed = true;
        }
        if !changed && !whole {
            return;
        }
        let checks: Vec<CheckReport> = checker
            .targets()
            .map(|(service, addr, st)| CheckReport {
                service: service.to_owned(),
                endpoint: addr,
                health: st.health.as_str(),
                last_failure: st.last_failure.map(|f| f.as_str()),
            })
            .collect();
        if let Some(b) = &self.board {
            b.set_checks(checks);
        }
    }

    /// What a connection to endpoint `ep` (index, when a balancer picked it) of service
    /// `svc` at `endpoint` is bound to: its service, and for a hop through a peer the
    /// identity of the client's source and the peer (see [`PoolKey`]). The names are shared
    /// per tables generation, so a key costs no allocation per request.
    fn pool_key(
        &mut self,
        snap: &Snapshot,
        svc: u32,
        ep: Option<u32>,
        endpoint: SocketAddrV4,
        client: SocketAddrV4,
    ) -> PoolKey {
        let ident = source_identity(snap, client);
        self.key_for(snap, svc, ep, endpoint, ident)
    }

    /// [`Engine::pool_key`] for the client identity at index `ident` of the tables.
    fn key_for(
        &mut self,
        snap: &Snapshot,
        svc: u32,
        ep: Option<u32>,
        endpoint: SocketAddrV4,
        ident: Option<u32>,
    ) -> PoolKey {
        if self.names_gen != snap.generation {
            self.names.clear();
            self.names_gen = snap.generation;
        }
        let mut name = |kind: u8, i: u32, s: &str| -> Arc<str> {
            self.names
                .entry((kind, i))
                .or_insert_with(|| Arc::from(s))
                .clone()
        };
        let Some(service) = snap.services.get(svc as usize) else {
            return PoolKey {
                endpoint,
                service: Arc::from(""),
                hop: None,
            };
        };
        let service_name = name(0, svc, &service.name);
        let tls_generation = self.tls.generation();
        let peer = ep
            .and_then(|e| service.endpoints.get(e as usize))
            .and_then(|e| e.via)
            .and_then(|p| snap.peers.get(p as usize).map(|peer| (p, peer)));
        let hop = peer.map(|(p, peer)| {
            let identity = match ident.and_then(|i| snap.identities.get(i as usize)) {
                Some(id) => name(1, ident.unwrap_or(u32::MAX), &id.id),
                None => name(1, u32::MAX, ""),
            };
            HopId {
                identity,
                mux: peer.hop_protocol == control::schema::HopProtocol::H2,
                tls_generation,
                peer: match peer.address {
                    SocketAddr::V4(a) => a,
                    SocketAddr::V6(_) => SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                },
                peer_identity: name(2, p, &peer.identity),
            }
        });
        PoolKey {
            endpoint,
            service: service_name,
            hop,
        }
    }

    /// One unit of `limit` of `service`'s circuit breaker, or `overflow` (counted).
    fn hold<N: Net<Conn = C>>(
        &mut self,
        (net, now): (&mut N, Instant),
        service: &str,
        limit: Limit,
        cfg: &control::snapshot::CircuitBreakerRt,
    ) -> Result<Held, Refusal> {
        if let Some(h) = self.breakers.hold(service, limit, cfg) {
            return Ok(h);
        }
        // Idle connections of the service count under max_connections; one waiting longest
        // (perhaps to an endpoint no longer picked) makes room for a request that needs one.
        if limit == Limit::Connections {
            if let Some(mut idle) = self.pool.oldest_of(service) {
                self.stats.pool_closes[PoolClose::Evicted as usize] += 1;
                self.by_conn.remove(&idle.leg.conn);
                let _ = idle.leg.finish(net);
                net.close(now, idle.leg.conn);
                // Its token goes back with it.
                drop(idle);
                if let Some(h) = self.breakers.hold(service, limit, cfg) {
                    return Ok(h);
                }
            }
        }
        self.policy_stats
            .count(service, Decision::Overflow(limit.label()));
        Err(Refusal::Overflow)
    }

    /// Hands the session's upstream connection to the worker's pool when it can carry
    /// another request: its last response ended whole and nothing is owed either way.
    /// Returns whether the session let go of it (pooled, or closed as retired or surplus).
    fn park_upstream<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        s: &mut Session<C>,
    ) -> bool {
        let Some(h) = s.kind.http_mut() else {
            return false;
        };
        let between = h.up_reusable
            && h.resp == RespPhase::Idle
            && h.req == ReqPhase::Head
            && s.attempt.is_none()
            && !s.up_eof
            && s.u_in.is_empty()
            && s.to_up.is_empty();
        let quiet = s.up.as_ref().is_some_and(|u| {
            u.connected && !u.is_handshaking() && !u.is_finishing() && u.pending_out() == 0
        });
        if !(between && quiet && h.up_meta.is_some()) {
            return false;
        }
        let meta = h.up_meta.take().expect("checked above");
        let leg = s.up.take().expect("checked above");
        forget_upstream(s);
        let conn = leg.conn;
        self.by_conn.remove(&conn);
        let retired = !meta.reusable(now);
        match self.pool.put(leg, meta, now) {
            Ok(slot) => {
                self.by_conn.insert(conn, (slot, Side::Pool));
            }
            Err(mut leg) => {
                let why = if retired {
                    PoolClose::Retired
                } else {
                    PoolClose::Full
                };
                self.stats.pool_closes[why as usize] += 1;
                let _ = leg.finish(net);
                net.close(now, conn);
            }
        }
        true
    }

    /// An idle connection from the pool bound to `key`, checked open; those found closed or
    /// past their lifetime are closed on the way.
    fn take_pooled<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        key: &PoolKey,
        cfg: control::snapshot::PoolRt,
    ) -> Option<(Leg<C>, UpMeta)> {
        let ready = |l: &Leg<C>| l.connected && !l.is_handshaking();
        while let Some(mut idle) = self.pool.take(key, ready) {
            self.by_conn.remove(&idle.leg.conn);
            // The service's settings as the tables say now.
            idle.meta.cfg = cfg;
            let retired = !idle.meta.reusable(now);
            if !retired && leg_still_open(net, &mut idle.leg, &mut self.buf) {
                return Some((idle.leg, idle.meta));
            }
            let why = if retired {
                PoolClose::Retired
            } else {
                PoolClose::PeerClosed
            };
            self.stats.pool_closes[why as usize] += 1;
            let _ = idle.leg.finish(net);
            net.close(now, idle.leg.conn);
        }
        None
    }

    /// Idle pooled connections that had an event: one the server closed (or sent anything
    /// on) is closed and forgotten, never handed out.
    fn progress_pool<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        while let Some(slot) = self.pool_dirty.pop() {
            let buf = &mut self.buf;
            let Some(i) = self.pool.get_mut(slot) else {
                continue;
            };
            // A warm hop still connecting waits for its `Connected`.
            if !i.leg.connected || leg_still_open(net, &mut i.leg, buf) {
                continue;
            }
            let Some(mut idle) = self.pool.remove(slot) else {
                continue;
            };
            self.stats.pool_closes[PoolClose::PeerClosed as usize] += 1;
            self.by_conn.remove(&idle.leg.conn);
            let _ = idle.leg.finish(net);
            net.close(now, idle.leg.conn);
        }
        self.stats.pooled = self.pool.idle() as u64;
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
        forget_upstream(s);
        s.to_up.clear();
    }

    fn teardown<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        s: &mut Session<C>,
        abort: bool,
    ) {
        self.finish_attempt(now, s, Outcome::Cancelled);
        // A request still in flight was cut (or its client went away).
        self.end_request(now, s, None, None);
        if let Some(c) = s.tcp_cell.take() {
            if abort {
                &c.closed_error
            } else {
                &c.closed_clean
            }
            .add(1);
            c.duration
                .observe(now.saturating_duration_since(s.accepted_at));
        }
        if !abort {
            // An idle upstream outlives its client connection in the pool.
            self.park_upstream(net, now, s);
        }
        if let Some(l) = s.listener.clone() {
            self.emit(Event::Closed {
                listener: l,
                client: s.client,
                opened: s.accepted_at,
                at: now,
                clean: !abort,
                conn: s.conn.take().unwrap_or_default(),
            });
        }
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
            self.stats.sessions -= 1;
        }
    }
}

impl HttpState {
    fn new(target: Target, body_stall: Duration) -> Self {
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
            up_meta: None,
            inflight: None,
            pending: None,
            head_started: None,
            record: None,
            span: None,
            tally: None,
            request_timeout: Duration::ZERO,
            grpc: false,
            body_stall,
            request_deadline: None,
            close_after: false,
            upgrade_asked: false,
            interim: 0,
            client_http10: false,
            policy: None,
            route_label: None,
            service: 0,
            retry_copy: None,
            mirror: None,
            retry_head_len: 0,
            pending_retry: None,
            held: None,
            answer_status: 0,
            retry_after: Duration::ZERO,
        }
    }
}

/// The timeouts of one routed request: the route's where it sets them, else the listener's.
#[derive(Clone, Copy)]
struct RequestLimits {
    request: Duration,
    connect: Duration,
    body_stall: Duration,
}

impl RequestLimits {
    fn of(t: &Timeouts) -> Self {
        RequestLimits {
            request: t.request,
            connect: t.connect,
            body_stall: t.body_stall,
        }
    }
}

/// The address of endpoint `ep` of service `svc` (IPv4 only).
/// The SPIFFE ID of the peer gateway an endpoint is reached through, if any (events only).
fn via_identity(snap: &Snapshot, svc: u32, ep: Option<u32>) -> Option<String> {
    let e = snap
        .services
        .get(svc as usize)?
        .endpoints
        .get(ep? as usize)?;
    Some(snap.peers.get(e.via? as usize)?.identity.clone())
}

fn endpoint_addr(snap: &Snapshot, svc: u32, ep: u32) -> Result<SocketAddrV4, Refusal> {
    let e = snap
        .services
        .get(svc as usize)
        .ok_or(Refusal::NoService)?
        .endpoints
        .get(ep as usize)
        .ok_or(Refusal::NoEndpoint)?;
    match e.address {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(Refusal::NoEndpoint),
    }
}

/// May the connection stay open after the gateway refused this request? Only when nothing
/// of it is left unread (no body) and the client keeps the connection (HTTP/1.1).
fn keeps_alive(head: &RequestHead) -> bool {
    // Not for HEAD: the error response's body would be read as the next response.
    head.keep_alive
        && head.version == 1
        && !head.body.has_body()
        && head.upgrade.is_none()
        && head.method != "HEAD"
}

/// Buffers up to this capacity stay with an idle session: a small request and response
/// reuse them without allocating; larger ones are given back between requests.
const IDLE_KEEP: usize = 1024;

/// Between requests: an idle keep-alive connection holds no large buffer (it may wait
/// minutes for its next request, and there may be thousands of them).
fn release_idle_buffers<C: Copy + Eq + std::hash::Hash + std::fmt::Debug>(s: &mut Session<C>) {
    for v in [&mut s.d_in, &mut s.u_in, &mut s.to_up, &mut s.to_down] {
        if v.is_empty() && v.capacity() > IDLE_KEEP {
            *v = Vec::new();
        }
    }
}

/// What the session knew of an upstream it no longer has.
/// What a connection to endpoint `ep` (index, when a balancer picked it) of service `svc`
/// at `endpoint` is bound to: a hop through a peer to the service and the identity of the
/// client's source; a local endpoint to its address alone.
fn forget_upstream<C>(s: &mut Session<C>) {
    s.up_eof = false;
    s.u_in.clear();
    if let Some(h) = s.kind.http_mut() {
        h.up_endpoint = None;
        h.up_meta = None;
    }
}

/// Is the idle connection still open with nothing unasked-for on it? When the transport
/// knows nothing arrived since its last empty read, yes, without a system call (what lands
/// after the transport last looked is the reused connection's replay's job). Otherwise a read
/// that would block says yes (TLS records without data, such as session tickets, are taken in
/// passing, and what TLS owes in return is flushed); an end of stream, data or an error says
/// it can carry no request.
fn leg_still_open<C: Copy + Eq + std::hash::Hash + std::fmt::Debug, N: Net<Conn = C>>(
    net: &mut N,
    leg: &mut Leg<C>,
    buf: &mut [u8],
) -> bool {
    if leg.known_quiet(net) {
        return leg.flush(net).is_ok();
    }
    let r = leg.read(net, buf);
    matches!(r, Ok(Err(NetError::WouldBlock))) && leg.flush(net).is_ok()
}

/// An outbound caller's identity: the one the tables give the client's address, if any.
fn source_ref(snap: &Snapshot, client: SocketAddrV4) -> golden::IdRef {
    source_identity(snap, client).map_or(golden::IdRef::None, golden::IdRef::Local)
}

/// The index in `snap.identities` of the identity the tables give the client's address.
fn source_identity(snap: &Snapshot, client: SocketAddrV4) -> Option<u32> {
    snap.identity_for_source(IpAddr::V4(*client.ip()))
        .and_then(|i| snap.identities.iter().position(|x| std::ptr::eq(x, i)))
        .map(|i| i as u32)
}

/// The session's next deadline and which timeout it is, from its state alone.
fn deadline<C>(s: &Session<C>) -> Option<(Instant, Expiry)> {
    let t = &s.timeouts;
    match &s.kind {
        Kind::MeshHandshake | Kind::IngressHandshake => {
            Some((s.accepted_at + t.handshake, Expiry::Handshake))
        }
        Kind::Tcp(TcpPhase::Connecting) => s
            .attempt
            .as_ref()
            .map(|a| (a.started + a.connect_timeout, Expiry::Connect)),
        Kind::Tcp(TcpPhase::Pipe) => Some((s.last_io + t.tcp_idle, Expiry::TcpIdle)),
        Kind::Http(h) => {
            if h.resp == RespPhase::Tunnel {
                return Some((s.last_io + t.tcp_idle, Expiry::TcpIdle));
            }
            let mut best: Option<(Instant, Expiry)> = None;
            let mut take = |due: Instant, what| {
                if best.is_none_or(|(b, _)| due < b) {
                    best = Some((due, what));
                }
            };
            if let Some(a) = s.attempt.as_ref().filter(|a| a.connected_at.is_none()) {
                take(a.started + a.connect_timeout, Expiry::Connect);
            }
            if let Some(a) = s.attempt.as_ref().filter(|_| h.resp == RespPhase::Head) {
                if let Some(pt) = a.per_try {
                    take(a.started + pt, Expiry::PerTry);
                }
            }
            if let Some((at, _)) = &h.pending_retry {
                take(*at, Expiry::RetryBackoff);
            }
            if let Some((at, _)) = &h.held {
                take(*at, Expiry::FaultDelay);
            }
            if h.resp == RespPhase::Head {
                if let Some(d) = h.request_deadline {
                    take(d, Expiry::Request);
                }
            }
            if h.req == ReqPhase::Body || h.resp == RespPhase::Body {
                take(s.last_delivery + h.body_stall, Expiry::BodyStall);
            }
            // (A request held by an injected delay waits for its own wake-up only.)
            if h.req == ReqPhase::Head && h.resp == RespPhase::Idle {
                if let Some(since) = s.linger_since {
                    take(since + LINGER, Expiry::Linger);
                } else if h.close_after {
                    // Closing: the last response must drain; a client that never reads
                    // is cut like a stalled body.
                    take(s.last_delivery + t.body_stall, Expiry::BodyStall);
                } else if let Some(st) = h.head_started {
                    take(st + t.request_head, Expiry::RequestHead);
                } else {
                    take(s.last_io + t.idle, Expiry::Idle);
                }
            }
            best
        }
    }
}

fn now_duration(now: Instant) -> Duration {
    Duration::from_micros(now.as_micros())
}

enum StepError {
    Refused(Refusal),
    /// The client's request body broke its framing (a bad chunk): 400 while nothing of the
    /// response went out, else a cut.
    BadBody(HttpError),
    /// The client's leg (or, in a TCP pipe, either leg) failed.
    Leg(LegError),
    /// The upstream leg failed.
    Up(LegError),
    /// The upstream broke the protocol (malformed or truncated response).
    Upstream(Refusal),
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
) -> Result<bool, LegError> {
    if *eof || inbuf.len() >= BUF {
        return Ok(false);
    }
    let room = (BUF - inbuf.len()).min(tmp.len());
    match leg.read(net, &mut tmp[..room])? {
        Ok(0) => *eof = true,
        Ok(n) => inbuf.extend_from_slice(&tmp[..n]),
        Err(_) => return Ok(false),
    }
    Ok(true)
}

/// One direction of a TCP pipe: bytes read from `src` wait in `buf` until `dst` takes them.
struct Flow<'a, C> {
    src: &'a mut Leg<C>,
    dst: &'a mut Leg<C>,
    buf: &'a mut Vec<u8>,
    /// `src` reached its end of stream.
    eof: &'a mut bool,
    /// Bytes handed to `dst` (a counter of the engine's).
    counter: &'a mut u64,
}

/// Reads from `src` into `buf` while it has room, writes `buf` to `dst`; finishes `dst` once
/// `src` ended and `buf` drained. Returns whether anything moved.
fn pump<C: Copy + Eq + std::hash::Hash + std::fmt::Debug, N: Net<Conn = C>>(
    net: &mut N,
    f: Flow<'_, C>,
    tmp: &mut [u8],
) -> Result<bool, LegError> {
    let Flow {
        src,
        dst,
        buf,
        eof,
        counter,
    } = f;
    let mut moved = fill(net, src, buf, eof, tmp)?;
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

    /// Per-service health state follows the tables: a service removed by a reload takes
    /// its state with it (else a worker's map grows with every service ever configured).
    #[test]
    fn health_state_of_removed_services_is_dropped_at_reload() {
        use super::{Engine, NoMeshTls};
        use std::sync::Arc;
        let tables = |names: &[&str]| {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    format!(
                        "[[service]]\nname = \"{n}\"\nendpoints = [{{ address = \"10.0.0.{}:80\" }}]\n",
                        i + 1
                    )
                })
                .collect::<String>()
        };
        let publisher = Arc::new(control::Publisher::new());
        let publish = |t: String| {
            let src = control::Source::new("t.toml", t.clone());
            let c = control::compile(&src, &control::Context::new("."))
                .unwrap_or_else(|e| panic!("{e}"));
            publisher.publish(c.snapshot, Arc::from(t.as_str()), "test");
        };
        publish(tables(&["a", "b", "c"]));
        let mut e: Engine<u32> = Engine::new(publisher.clone(), Arc::new(NoMeshTls), [7; 32]);
        let now = tcpstack::Instant::from_micros(1_000_000);
        let snap = publisher.load();
        for svc in 0..3 {
            e.svc_health(&snap, svc, now);
        }
        assert_eq!(e.health.len(), 3);
        publish(tables(&["c"]));
        let snap = publisher.load();
        e.svc_health(&snap, 0, now);
        let kept: Vec<&String> = e.health.keys().collect();
        assert_eq!(kept, ["c"]);
    }
}
