//! Lookup-ready tables, compiled from validated tables and published whole.
//!
//! A [`Snapshot`] is immutable. Workers hold an `Arc<Snapshot>`; a connection keeps
//! the one it started with (its [`Snapshot::generation`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;
use rustc_hash::FxHashMap;

use crate::schema::{Labels, LbPolicy, Protocol};

/// Index into [`Snapshot::services`].
pub type ServiceId = u32;
/// Index into [`Snapshot::peers`].
pub type PeerId = u32;
/// Index into [`Snapshot::identities`].
pub type IdentityId = u32;
/// Index into [`Snapshot::routes`].
pub type RouteId = u32;

#[derive(Debug, Clone)]
pub struct IdentityRt {
    pub id: String,
    pub sources: Vec<IpNet>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// DER certificates, leaf first, as read when the tables were checked.
    pub cert_chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER private key.
    pub key_der: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct PeerRt {
    pub name: String,
    pub address: SocketAddr,
    pub identity: String,
    /// Idle mTLS hops to this peer each worker keeps open (`min_idle`, default 0).
    pub min_idle: u32,
    /// Its admin API (`admin`), for `xdpmesh check --all`.
    pub admin: Option<SocketAddr>,
    /// How HTTP requests cross the hop (`hop_protocol`, default `http1`).
    pub hop_protocol: crate::schema::HopProtocol,
}

#[derive(Debug, Clone)]
pub struct ListenerRt {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub service: Option<ServiceId>,
    pub identity: Option<IdentityId>,
    pub timeouts: Timeouts,
    /// TCP keepalive for the connections this listener accepts; `None`: off.
    pub keepalive: Option<KeepaliveRt>,
    /// Connections open at once on this listener (all workers), and per client address.
    pub max_connections: u32,
    pub max_connections_per_source: u32,
}

/// A listener's `max_connections` when the tables give none.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// A `tcp` or `http` listener's `max_connections_per_source` when the tables give none
/// (a `mesh` listener's is its `max_connections`).
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: u32 = 2_500;

/// A listener's TCP keepalive, compiled; see [`crate::schema::Keepalive`]. The data plane
/// turns it into its TCP stack's settings (or the kernel socket's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveRt {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is reset.
    pub probes: u32,
}

impl Default for KeepaliveRt {
    fn default() -> Self {
        KeepaliveRt {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 6,
        }
    }
}

/// A listener's timeouts, compiled; see [`crate::schema::Timeouts`] for what each covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub request_head: Duration,
    pub idle: Duration,
    pub request: Duration,
    pub connect: Duration,
    pub handshake: Duration,
    pub body_stall: Duration,
    pub tcp_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_head: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            request: Duration::from_secs(15),
            connect: Duration::from_secs(2),
            handshake: Duration::from_secs(5),
            body_stall: Duration::from_secs(30),
            tcp_idle: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct EndpointRt {
    pub address: SocketAddr,
    pub via: Option<PeerId>,
    pub labels: Labels,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct ServiceRt {
    pub name: String,
    /// Lower-case Host/SNI names: the name first, then the `hosts` aliases.
    pub hosts: Vec<String>,
    pub endpoints: Vec<EndpointRt>,
    pub load_balancer: LbPolicy,
    /// Set for `ring-hash` only.
    pub hash_key: Option<HashKey>,
    /// Used when a request for this service matches none of its routes.
    pub default_route: RouteRt,
    /// `None`: no `[[authorization]]` names this service, everyone is allowed.
    pub authz: Option<Vec<AuthzRule>>,
    /// Caps the retries of requests to this service.
    pub retry_budget: RetryBudgetRt,
    /// Caps on connections and requests to this service, per worker (`circuit_breaker`).
    pub circuit_breaker: CircuitBreakerRt,
    /// Passive outlier detection (`outlier`); `None`: turned off (`enabled = false`).
    pub outlier: Option<OutlierRt>,
    /// Active health checks of the endpoints this gateway owns (`health_check`); `None`: off.
    pub health_check: Option<HealthCheckRt>,
    /// Idle upstream connections kept for reuse (`pool`).
    pub pool: PoolRt,
    /// What its local endpoints speak (`upstream_protocol`).
    pub upstream_protocol: crate::schema::UpstreamProtocol,
}

/// Compiled `circuit_breaker`: beyond these a request gets 503 at once (`overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerRt {
    /// Upstream connections open to the service's endpoints (in use or idle in the pool).
    pub max_connections: u32,
    /// Requests waiting for a connection (connecting, or in a retry's backoff).
    pub max_pending: u32,
    /// Requests in flight to the service.
    pub max_requests: u32,
}

impl Default for CircuitBreakerRt {
    fn default() -> Self {
        CircuitBreakerRt {
            max_connections: 1024,
            max_pending: 256,
            max_requests: 1024,
        }
    }
}

/// Compiled `outlier`: passive outlier detection from attempt outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierRt {
    /// Consecutive failures that eject an endpoint (0: this rule is off).
    pub consecutive_failures: u32,
    /// How often success rates are evaluated (and their window).
    pub interval: Duration,
    /// The first ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// At most this share of a service's endpoints is ejected at once (0 to 100).
    pub max_ejected_percent: u8,
    /// Below this share of healthy endpoints, balance over all of them (0 to 100).
    pub panic_threshold: u8,
    /// Success-rate ejection: an endpoint needs this many requests in an interval to be judged
    /// (0: this rule is off).
    pub success_rate_min_requests: u32,
    /// ... and is ejected when its rate is this many standard deviations below the mean.
    pub success_rate_stdev_factor: f64,
}

impl Default for OutlierRt {
    fn default() -> Self {
        OutlierRt {
            consecutive_failures: 5,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
            panic_threshold: 50,
            success_rate_min_requests: 100,
            success_rate_stdev_factor: 1.9,
        }
    }
}

/// How an active health check probes an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// The TCP handshake completes.
    Tcp,
    /// `GET path` answers one of `expect`.
    Http { path: String, expect: Vec<u16> },
}

/// Compiled `health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckRt {
    pub probe: HealthProbe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that make a healthy endpoint unhealthy.
    pub unhealthy: u32,
    /// Consecutive good probes that make an unhealthy endpoint healthy.
    pub healthy: u32,
}

/// Compiled `pool`: idle upstream connections kept per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRt {
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: u32,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
    /// Requests one connection carries at most, then it is closed.
    pub max_requests: u32,
    /// A connection older than this is not reused.
    pub max_lifetime: Duration,
}

impl Default for PoolRt {
    fn default() -> Self {
        PoolRt {
            max_idle_per_endpoint: 64,
            idle_timeout: Duration::from_secs(60),
            max_requests: 10_000,
            max_lifetime: Duration::from_secs(600),
        }
    }
}

/// What a route does to its requests besides routing them: retries, injected faults, a rate
/// limit, a mirror (see `schema::Retries`, `schema::Fault`, `schema::RateLimit`,
/// `schema::Mirror`).
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub retries: Option<RetryRt>,
    pub fault: Option<FaultRt>,
    pub rate_limit: Option<RateLimitRt>,
    pub mirror: Option<MirrorRt>,
    /// Tells the route's rate-limit buckets from other routes' (its place in the tables; a
    /// reload starts buckets afresh).
    pub id: u32,
}

impl RoutePolicy {
    /// Does it do anything?
    pub fn any(&self) -> bool {
        self.retries.is_some()
            || self.fault.is_some()
            || self.rate_limit.is_some()
            || self.mirror.is_some()
    }
}

/// Compiled `mirror`: a copy of `percent` % of the route's requests goes to `service` (its
/// index in the snapshot's services); the copy's response is read and discarded.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRt {
    pub service: u32,
    /// 0 < percent <= 100.
    pub percent: f64,
}

/// Compiled `retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryRt {
    /// Attempts in all, the first included (1 to 10).
    pub attempts: u8,
    pub per_try_timeout: Duration,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    /// Upstream statuses (400 to 599) that make a retry.
    pub on_status: Vec<u16>,
    /// `grpc-status` codes in a gRPC response's head that make a retry.
    pub on_grpc: Vec<u8>,
    pub backoff: Duration,
    /// Upper-case methods retried beyond connect failures.
    pub methods: Vec<String>,
    /// Bytes of request (head and body) kept for a retry.
    pub buffer: usize,
}

impl Default for RetryRt {
    fn default() -> Self {
        RetryRt {
            attempts: 3,
            per_try_timeout: Duration::from_secs(1),
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            on_status: vec![503],
            on_grpc: Vec::new(),
            backoff: Duration::from_millis(25),
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
                .map(String::from)
                .to_vec(),
            buffer: 64 * 1024,
        }
    }
}

impl RetryRt {
    pub fn retries_status(&self, status: u16) -> bool {
        self.on_status.contains(&status)
    }

    pub fn retries_grpc(&self, grpc_status: u8) -> bool {
        self.on_grpc.contains(&grpc_status)
    }

    pub fn retries_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

/// Compiled `fault`.
#[derive(Debug, Clone)]
pub struct FaultRt {
    /// (percent, status).
    pub abort: Option<(f64, u16)>,
    /// (percent, duration).
    pub delay: Option<(f64, Duration)>,
    /// Lower-case names; all must match for the fault to apply.
    pub headers: Vec<(String, HeaderMatcher)>,
}

impl FaultRt {
    pub fn applies<H: HeaderLookup + ?Sized>(&self, h: &H) -> bool {
        self.headers
            .iter()
            .all(|(n, m)| h.header(n).is_some_and(|v| m.matches(v)))
    }
}

/// Compiled `rate_limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitRt {
    pub per_second: f64,
    pub burst: u32,
    /// One bucket per caller SPIFFE ID instead of one for the route.
    pub per_identity: bool,
}

/// Compiled `retry_budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetRt {
    pub ratio: f64,
    pub min_per_second: f64,
    pub ttl: Duration,
}

impl Default for RetryBudgetRt {
    fn default() -> Self {
        RetryBudgetRt {
            ratio: 0.2,
            min_per_second: 10.0,
            ttl: Duration::from_secs(10),
        }
    }
}

impl ServiceRt {
    /// Does an authorization rule of this service name methods or paths? Then only HTTP
    /// can be checked against it: a raw TCP connection to the service is refused.
    pub fn has_request_rules(&self) -> bool {
        self.authz.as_ref().is_some_and(|rules| {
            rules
                .iter()
                .any(|r| !r.methods.is_empty() || !r.paths.is_empty())
        })
    }
}

#[derive(Debug, Clone)]
pub enum PathMatcher {
    Exact(String),
    /// Normalized without a trailing `/`; empty for `/`.
    Prefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

impl PathMatcher {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => p == path,
            PathMatcher::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug, Clone)]
pub enum HeaderMatcher {
    Exact(Vec<u8>),
    /// Anchored at both ends; header values are bytes (RFC 9110 §5.5).
    Regex(regex::bytes::Regex),
}

impl HeaderMatcher {
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            HeaderMatcher::Exact(v) => v == value,
            HeaderMatcher::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendRt {
    pub service: ServiceId,
    /// Indices into that service's endpoints selected by the labels.
    pub endpoints: Vec<u32>,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct RouteRt {
    pub name: Option<String>,
    pub service: ServiceId,
    /// Lower-case; `None`: the service's names.
    pub host: Option<String>,
    pub path: Option<PathMatcher>,
    /// Upper-case.
    pub method: Option<String>,
    /// Lower-case names.
    pub headers: Vec<(String, HeaderMatcher)>,
    pub backends: Vec<BackendRt>,
    /// The route's request timeout (`timeout` or `timeouts.request`); `None`: the
    /// listener's `timeouts.request`.
    pub timeout: Option<Duration>,
    /// The route's `timeouts.connect`; `None`: the listener's.
    pub connect_timeout: Option<Duration>,
    /// The route's `timeouts.body_stall`; `None`: the listener's.
    pub body_stall_timeout: Option<Duration>,
    /// The route's request policies (its own, else its service's); `None`: none.
    pub policy: Option<Arc<RoutePolicy>>,
    /// Running sums of backend weights, for [`RouteRt::pick`].
    cumulative: Vec<u64>,
}

impl RouteRt {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: Option<String>,
        service: ServiceId,
        host: Option<String>,
        path: Option<PathMatcher>,
        method: Option<String>,
        headers: Vec<(String, HeaderMatcher)>,
        backends: Vec<BackendRt>,
    ) -> Self {
        let mut sum = 0u64;
        let cumulative = backends
            .iter()
            .map(|b| {
                sum += u64::from(b.weight);
                sum
            })
            .collect();
        Self {
            name,
            service,
            host,
            path,
            method,
            headers,
            backends,
            timeout: None,
            connect_timeout: None,
            body_stall_timeout: None,
            policy: None,
            cumulative,
        }
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The backend for a uniformly random `r`, in proportion to the weights.
    pub fn pick(&self, r: u64) -> Option<&BackendRt> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let x = r % total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.backends.get(i)
    }

    /// `path_known`: the route came from an exact or prefix index entry for this
    /// path, so its path condition holds already.
    fn matches<H: HeaderLookup + ?Sized>(
        &self,
        method: &str,
        path: &str,
        path_known: bool,
        headers: &H,
    ) -> bool {
        if let Some(m) = &self.method {
            if m != method {
                return false;
            }
        }
        if let (false, Some(p)) = (path_known, &self.path) {
            if !p.matches(path) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(n, m)| headers.header(n).is_some_and(|got| m.matches(got)))
    }
}

/// Identity patterns: exact, `PREFIX/*`, or `*`.
#[derive(Debug, Clone, Default)]
pub struct IdSet {
    pub any: bool,
    pub exact: Vec<String>,
    /// Each ends in `/`.
    pub prefixes: Vec<String>,
}

impl IdSet {
    pub fn contains(&self, id: &str) -> bool {
        self.any
            || self.exact.iter().any(|e| e == id)
            || self.prefixes.iter().any(|p| id.starts_with(p.as_str()))
    }
    pub fn is_empty(&self) -> bool {
        !self.any && self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct AuthzRule {
    pub allow: IdSet,
    pub deny: IdSet,
    /// Upper-case; empty = any.
    pub methods: Vec<String>,
    /// Empty = any.
    pub paths: Vec<PathMatcher>,
}

impl AuthzRule {
    /// Does the rule's method/path scope cover this request? A TCP connection
    /// (`None`) is covered only by rules without methods and paths.
    fn covers(&self, req: Option<(&str, &str)>) -> bool {
        match req {
            None => self.methods.is_empty() && self.paths.is_empty(),
            Some((method, path)) => {
                (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
                    && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            }
        }
    }
}

/// Request headers as the route lookup sees them. Names are compared case-insensitively.
pub trait HeaderLookup {
    fn header(&self, lower_name: &str) -> Option<&[u8]>;
}

impl HeaderLookup for [(&str, &[u8])] {
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(lower_name))
            .map(|(_, v)| *v)
    }
}

impl HeaderLookup for [httparse::Header<'_>] {
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|h| h.name.eq_ignore_ascii_case(lower_name))
            .map(|h| h.value)
    }
}

/// Routes of one Host, indexed by their path condition. Lists hold route ids in
/// ascending (file) order so the first match in each list is that list's best.
#[derive(Debug, Default, Clone)]
pub(crate) struct HostTable {
    pub(crate) exact: FxHashMap<Box<str>, Vec<RouteId>>,
    pub(crate) prefix: FxHashMap<Box<str>, Vec<RouteId>>,
    /// Distinct byte lengths of the keys of `prefix`, ascending: a path is probed
    /// only at these lengths, not at every `/`.
    pub(crate) prefix_lens: Vec<u32>,
    /// Regex paths and routes without a path condition.
    pub(crate) other: Vec<RouteId>,
}

/// Hosts with at most this many routes are matched by a scan of their inline
/// [`HostRoute`]s; larger ones use a [`HostTable`] index.
const SCAN_MAX: usize = 8;
/// Room in a [`HostRoute`] for its path and one header's name and value together;
/// a route whose conditions do not fit takes the slower path.
const INLINE_TEXT: usize = 46;
const INLINE_METHOD: usize = 8;
/// Longest host name kept inline; longer ones take the slower path.
const INLINE_NAME: usize = 40;
const NONE: u32 = u32::MAX;

/// One route of one host, laid out so that the usual route (a path, maybe a method,
/// maybe one header with an exact value) is decided from this one cache line without
/// touching its [`RouteRt`] and the heap strings behind it.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct HostRoute {
    id: RouteId,
    /// `false`: the route has a regex, several headers, or conditions too long for
    /// `text`; ask the [`RouteRt`].
    inline: bool,
    path_kind: PathKind,
    /// 0: any method.
    method_len: u8,
    path_len: u8,
    /// 0: no header condition.
    header_len: u8,
    value_len: u8,
    method: [u8; INLINE_METHOD],
    /// The path, then the header's lower-case name, then the value it must equal.
    text: [u8; INLINE_TEXT],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Any,
    Exact,
    Prefix,
}

impl HostRoute {
    fn new(id: RouteId, r: &RouteRt) -> Self {
        let mut hr = HostRoute {
            id,
            inline: true,
            path_kind: PathKind::Any,
            method_len: 0,
            path_len: 0,
            header_len: 0,
            value_len: 0,
            method: [0; INLINE_METHOD],
            text: [0; INLINE_TEXT],
        };
        let p = match &r.path {
            None => "",
            Some(PathMatcher::Exact(p)) => {
                hr.path_kind = PathKind::Exact;
                p
            }
            Some(PathMatcher::Prefix(p)) => {
                hr.path_kind = PathKind::Prefix;
                p
            }
            Some(PathMatcher::Regex(_)) => {
                hr.inline = false;
                ""
            }
        };
        let (name, value): (&[u8], &[u8]) = match r.headers.as_slice() {
            [] => (b"", b""),
            [(n, HeaderMatcher::Exact(v))] if !n.is_empty() => (n.as_bytes(), v),
            _ => {
                hr.inline = false;
                (b"", b"")
            }
        };
        let text = [p.as_bytes(), name, value];
        if text.iter().map(|t| t.len()).sum::<usize>() <= INLINE_TEXT {
            let mut at = 0;
            for t in text {
                hr.text[at..at + t.len()].copy_from_slice(t);
                at += t.len();
            }
            hr.path_len = p.len() as u8;
            hr.header_len = name.len() as u8;
            hr.value_len = value.len() as u8;
        } else {
            hr.inline = false;
        }
        if let Some(m) = &r.method {
            if (1..=INLINE_METHOD).contains(&m.len()) {
                hr.method[..m.len()].copy_from_slice(m.as_bytes());
                hr.method_len = m.len() as u8;
            } else {
                hr.inline = false;
            }
        }
        hr
    }

    /// Same answer as [`RouteRt::matches`], for an inline route.
    #[inline]
    fn matches_inline<H: HeaderLookup + ?Sized>(
        &self,
        method: &[u8],
        path: &[u8],
        headers: &H,
    ) -> bool {
        let m = usize::from(self.method_len);
        if m != 0 && self.method[..m] != *method {
            return false;
        }
        let (p, rest) = self.text.split_at(usize::from(self.path_len));
        let path_ok = match self.path_kind {
            PathKind::Any => true,
            PathKind::Exact => p == path,
            PathKind::Prefix => {
                path.starts_with(p) && matches!(path.get(p.len()), None | Some(b'/'))
            }
        };
        if !path_ok || self.header_len == 0 {
            return path_ok;
        }
        let (name, rest) = rest.split_at(usize::from(self.header_len));
        let value = &rest[..usize::from(self.value_len)];
        // Copied from a `String` whole, so it is UTF-8.
        std::str::from_utf8(name)
            .ok()
            .and_then(|n| headers.header(n))
            .is_some_and(|got| got == value)
    }
}

/// One Host: where its routes are, and the service it names. One cache line.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct HostEntry {
    /// The name if it fits, else `long_name` indexes [`HostIndex::long_names`].
    name: [u8; INLINE_NAME],
    name_len: u32,
    long_name: u32,
    service: u32,
    /// An index into [`HostIndex::tables`] for a host with many routes; else `NONE` and
    /// the routes are inline (where: in the host's [`Slot`]).
    table: u32,
}

/// Host name → [`HostEntry`]: open addressing (linear probing) over 16-byte slots
/// holding a hash tag, the entry, where the host's routes are and its first route's id.
/// Everything a lookup reads next is addressed from the slot, so those reads overlap:
/// entry, routes and the first route's [`RouteRt`] (prefetched) are one round of cache
/// misses after the slot's, not a chain of three.
#[derive(Debug, Default, Clone)]
pub(crate) struct HostIndex {
    /// Length a power of two, at most half full.
    slots: Vec<Slot>,
    entries: Vec<HostEntry>,
    routes: Vec<HostRoute>,
    tables: Vec<HostTable>,
    long_names: Vec<Box<str>>,
}

#[derive(Debug, Default, Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    /// The hash's low 32 bits with the low 4 replaced by the number of inline routes
    /// (at most [`SCAN_MAX`]).
    tag_len: u32,
    /// Entry index + 1; 0: empty.
    entry: u32,
    /// Inline [`HostRoute`]s from here, ascending ids (none when the entry has a table).
    /// Kept here, not in the entry: see [`HostIndex`].
    routes_start: u32,
    /// The id of the first inline route, or `NONE`.
    first_route: u32,
}

const LEN_BITS: u32 = 0xF;
const _: () = assert!(SCAN_MAX as u32 <= LEN_BITS);

/// A host name, its route ids in ascending order, and the service it names.
type HostRoutes<'a> = (&'a str, (Vec<RouteId>, Option<ServiceId>));

/// Asks the CPU to start loading `r`'s cache line without waiting for it.
#[inline(always)]
fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and changes no state the
    // program can observe, and the pointer comes from a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

fn host_hash(name: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(name);
    // FxHash's low bits are weak for similar strings; mix before taking bits.
    (h.finish() ^ (name.len() as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl HostIndex {
    fn build(hosts: &[HostRoutes<'_>], all_routes: &[RouteRt]) -> Self {
        let mut ix = HostIndex {
            slots: vec![Slot::default(); (hosts.len() * 2).next_power_of_two().max(8)],
            ..Default::default()
        };
        let mask = ix.slots.len() - 1;
        for (name, (ids, service)) in hosts {
            let mut e = HostEntry {
                name: [0; INLINE_NAME],
                name_len: name.len() as u32,
                long_name: NONE,
                service: service.unwrap_or(NONE),
                table: NONE,
            };
            let routes_start = ix.routes.len() as u32;
            if name.len() <= INLINE_NAME {
                e.name[..name.len()].copy_from_slice(name.as_bytes());
            } else {
                e.long_name = ix.long_names.len() as u32;
                ix.long_names.push((*name).into());
            }
            if ids.len() <= SCAN_MAX {
                ix.routes.extend(
                    ids.iter()
                        .map(|&id| HostRoute::new(id, &all_routes[id as usize])),
                );
            } else {
                e.table = ix.tables.len() as u32;
                ix.tables.push(HostTable::new(ids, all_routes));
            }
            let h = host_hash(name.as_bytes());
            let mut i = (h >> 32) as usize & mask;
            while ix.slots[i].entry != 0 {
                i = (i + 1) & mask;
            }
            let inline = &ix.routes[routes_start as usize..];
            ix.slots[i] = Slot {
                tag_len: (h as u32 & !LEN_BITS) | inline.len() as u32,
                entry: ix.entries.len() as u32 + 1,
                routes_start,
                first_route: inline.first().map_or(NONE, |r| r.id),
            };
            ix.entries.push(e);
        }
        ix
    }

    /// The host's entry and its inline routes (empty when it has a table). `all_routes`
    /// are the snapshot's routes, for the prefetch.
    #[inline]
    fn get(&self, name: &[u8], all_routes: &[RouteRt]) -> Option<(&HostEntry, &[HostRoute])> {
        if self.entries.is_empty() {
            return None;
        }
        let h = host_hash(name);
        let mask = self.slots.len() - 1;
        let mut i = (h >> 32) as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot.entry == 0 {
                return None;
            }
            if slot.tag_len & !LEN_BITS == h as u32 & !LEN_BITS {
                let start = slot.routes_start as usize;
                let routes = self
                    .routes
                    .get(start..start + (slot.tag_len & LEN_BITS) as usize)
                    .unwrap_or_default();
                // Start the loads the caller makes next before waiting on the entry's:
                // otherwise the name compare holds them back and they add up.
                if let Some(first) = routes.first() {
                    prefetch(first);
                }
                if let Some(r) = all_routes.get(slot.first_route as usize) {
                    prefetch(&r.backends);
                }
                let entry = &self.entries[slot.entry as usize - 1];
                if self.name_of(entry) == name {
                    return Some((entry, routes));
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn name_of<'a>(&'a self, e: &'a HostEntry) -> &'a [u8] {
        if e.long_name == NONE {
            &e.name[..e.name_len as usize]
        } else {
            self.long_names[e.long_name as usize].as_bytes()
        }
    }
}

impl HostTable {
    /// Index `ids` (ascending) by their path condition.
    fn new(ids: &[RouteId], all_routes: &[RouteRt]) -> Self {
        let mut t = HostTable::default();
        for &id in ids {
            match &all_routes[id as usize].path {
                Some(PathMatcher::Exact(p)) => {
                    t.exact.entry(p.as_str().into()).or_default().push(id)
                }
                Some(PathMatcher::Prefix(p)) => {
                    t.prefix.entry(p.as_str().into()).or_default().push(id)
                }
                Some(PathMatcher::Regex(_)) | None => t.other.push(id),
            }
        }
        let mut lens: Vec<u32> = t.prefix.keys().map(|k| k.len() as u32).collect();
        lens.sort_unstable();
        lens.dedup();
        t.prefix_lens = lens;
        t
    }
}

/// Everything the workers look up, compiled together so that it agrees.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// 0 for the empty snapshot before the first load; +1 per publish.
    pub generation: u64,
    /// `[trust]` root files (PEM), resolved; loaded by the data plane.
    pub trust_roots: Vec<PathBuf>,
    pub identities: Vec<IdentityRt>,
    pub peers: Vec<PeerRt>,
    pub listeners: Vec<ListenerRt>,
    pub services: Vec<ServiceRt>,
    pub routes: Vec<RouteRt>,
    pub(crate) service_by_name: FxHashMap<Box<str>, ServiceId>,
    pub(crate) peer_by_name: FxHashMap<Box<str>, PeerId>,
    pub(crate) hosts: HostIndex,
    /// (prefix, identity) by descending prefix length.
    pub(crate) sources: Vec<(IpNet, IdentityId)>,
    /// The endpoints reached directly (no `via`) of services with `upstream_protocol =
    /// "h2c"` (validation made sure no other service lists one of them as `http1`).
    pub(crate) h2c_endpoints: rustc_hash::FxHashSet<SocketAddr>,
}

/// What a route lookup found.
#[derive(Debug, Clone, Copy)]
pub struct RouteHit<'a> {
    /// `None` for a service's default route.
    pub id: Option<RouteId>,
    pub route: &'a RouteRt,
}

/// Host header value → lower-case name without port, in `buf` if it must change.
/// Calls `f` with the host name as the indexes hold it: trimmed, port and trailing dot
/// removed, lower case. Lower-casing copies into a stack buffer only when needed.
/// Byte loops, not `str` searches: this runs on every request, and `rsplit_once`'s
/// char searcher was a fifth of a hot lookup.
#[inline]
fn with_normalized_host<R>(host: &str, f: impl FnOnce(&[u8]) -> Option<R>) -> Option<R> {
    let mut b = host.as_bytes();
    // `str::trim` (Unicode whitespace) only when an end is not a visible ASCII byte.
    let visible = |c: Option<&u8>| c.is_some_and(u8::is_ascii_graphic);
    if !visible(b.first()) || !visible(b.last()) {
        b = host.trim().as_bytes();
    }
    // Strip a port; an IPv6 literal is bracketed ("[::1]:80").
    let name = if let Some(rest) = b.strip_prefix(b"[") {
        &rest[..rest.iter().position(|&c| c == b']')?]
    } else {
        b.iter().rposition(|&c| c == b':').map_or(b, |i| &b[..i])
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if !name.iter().any(u8::is_ascii_uppercase) {
        return f(name);
    }
    let mut buf = [0u8; 256];
    let lower = buf.get_mut(..name.len())?;
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    f(lower)
}

/// `path` without its query string.
#[inline]
fn without_query(path: &str) -> &str {
    match path.bytes().position(|c| c == b'?') {
        Some(i) => &path[..i],
        None => path,
    }
}

impl Snapshot {
    /// Build the lookup indexes from the entity lists (called once by compile).
    pub(crate) fn index(&mut self) {
        self.service_by_name = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str().into(), i as ServiceId))
            .collect();
        self.peer_by_name = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str().into(), i as PeerId))
            .collect();
        let mut sources: Vec<(IpNet, IdentityId)> = self
            .identities
            .iter()
            .enumerate()
            .flat_map(|(i, id)| id.sources.iter().map(move |n| (*n, i as IdentityId)))
            .collect();
        sources.sort_by_key(|s| std::cmp::Reverse(s.0.prefix_len()));
        self.sources = sources;
        self.h2c_endpoints = self
            .services
            .iter()
            .filter(|s| s.upstream_protocol == crate::schema::UpstreamProtocol::H2c)
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.via.is_none())
            .map(|e| e.address)
            .collect();

        // Host → its route ids (ascending: routes are visited in file order) and
        // the service it names.
        let mut hosts: FxHashMap<&str, (Vec<RouteId>, Option<ServiceId>)> = FxHashMap::default();
        for (i, r) in self.routes.iter().enumerate() {
            let id = i as RouteId;
            match &r.host {
                Some(h) => hosts.entry(h.as_str()).or_default().0.push(id),
                None => {
                    for h in &self.services[r.service as usize].hosts {
                        hosts.entry(h.as_str()).or_default().0.push(id);
                    }
                }
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            for h in &s.hosts {
                hosts.entry(h.as_str()).or_default().1 = Some(i as ServiceId);
            }
        }
        let hosts: Vec<_> = hosts.into_iter().collect();
        self.hosts = HostIndex::build(&hosts, &self.routes);
    }

    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        self.service_by_name.get(name).copied()
    }

    pub fn service(&self, name: &str) -> Option<&ServiceRt> {
        self.service_id(name)
            .and_then(|id| self.services.get(id as usize))
    }

    pub fn peer(&self, name: &str) -> Option<&PeerRt> {
        self.peer_by_name
            .get(name)
            .and_then(|&id| self.peers.get(id as usize))
    }

    /// The listener a connection accepted on `local` came through: the one bound to exactly
    /// that address, else one bound to the unspecified address on its port.
    pub fn listener_at(&self, local: SocketAddr) -> Option<&ListenerRt> {
        self.listeners.iter().find(|l| l.bind == local).or_else(|| {
            self.listeners
                .iter()
                .find(|l| l.bind.ip().is_unspecified() && l.bind.port() == local.port())
        })
    }

    /// Does the local endpoint at `addr` (one this gateway connects to directly) speak h2c?
    /// A hash lookup, and none at all while no service says `upstream_protocol = "h2c"`.
    #[inline]
    pub fn upstream_h2c(&self, addr: SocketAddr) -> bool {
        !self.h2c_endpoints.is_empty() && self.h2c_endpoints.contains(&addr)
    }

    /// The service a Host header or TLS SNI names (port and case ignored).
    pub fn service_for_host(&self, host: &str) -> Option<ServiceId> {
        let s = with_normalized_host(host, |h| self.hosts.get(h, &[]))?
            .0
            .service;
        (s != NONE).then_some(s)
    }

    /// The identity whose sources hold `ip`, longest prefix first.
    pub fn identity_for_source(&self, ip: IpAddr) -> Option<&IdentityRt> {
        self.sources
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .and_then(|&(_, id)| self.identities.get(id as usize))
    }

    pub fn identity(&self, spiffe_id: &str) -> Option<&IdentityRt> {
        self.identities.iter().find(|i| i.id == spiffe_id)
    }

    /// The route for an HTTP request: routes of the Host in file order, first match
    /// wins; if none matches and the Host names a service, that service's default
    /// route. `path` may carry a query string; it is ignored.
    pub fn route<H: HeaderLookup + ?Sized>(
        &self,
        host: &str,
        method: &str,
        path: &str,
        headers: &H,
    ) -> Option<RouteHit<'_>> {
        let (entry, routes) = with_normalized_host(host, |h| self.hosts.get(h, &self.routes))?;
        let path = without_query(path);
        let best = if entry.table == NONE {
            routes
                .iter()
                .find(|hr| {
                    if hr.inline {
                        hr.matches_inline(method.as_bytes(), path.as_bytes(), headers)
                    } else {
                        self.routes[hr.id as usize].matches(method, path, false, headers)
                    }
                })
                .map(|hr| hr.id)
        } else {
            self.route_indexed(
                &self.hosts.tables[entry.table as usize],
                method,
                path,
                headers,
            )
        };
        if let Some(best) = best {
            return Some(RouteHit {
                id: Some(best),
                route: &self.routes[best as usize],
            });
        }
        if entry.service == NONE {
            return None;
        }
        let svc = self.services.get(entry.service as usize)?;
        Some(RouteHit {
            id: None,
            route: &svc.default_route,
        })
    }

    /// The first matching route of a host with many routes, through its indexes.
    fn route_indexed<H: HeaderLookup + ?Sized>(
        &self,
        table: &HostTable,
        method: &str,
        path: &str,
        headers: &H,
    ) -> Option<RouteId> {
        let mut best = RouteId::MAX;
        let mut consider = |ids: &[RouteId], path_known: bool| {
            for &id in ids {
                if id >= best {
                    break;
                }
                if self.routes[id as usize].matches(method, path, path_known, headers) {
                    best = id;
                    break;
                }
            }
        };
        if !table.exact.is_empty() {
            if let Some(ids) = table.exact.get(path) {
                consider(ids, true);
            }
        }
        // A prefix of length n applies if the path is that long and the prefix
        // ends at a segment boundary.
        let bytes = path.as_bytes();
        for &n in &table.prefix_lens {
            let n = n as usize;
            if n > bytes.len() {
                break;
            }
            if n == bytes.len() || bytes[n] == b'/' {
                if let Some(ids) = table.prefix.get(&path[..n]) {
                    consider(ids, true);
                }
            }
        }
        consider(&table.other, false);
        (best != RouteId::MAX).then_some(best)
    }

    /// May `peer_id` call `service`? `req` is `(method, path)` for HTTP, `None` for a
    /// TCP connection. Deny rules win; once a service has rules, an unmatched caller
    /// is denied; a service without rules allows everyone.
    pub fn authorize(&self, service: ServiceId, peer_id: &str, req: Option<(&str, &str)>) -> bool {
        let Some(svc) = self.services.get(service as usize) else {
            return false;
        };
        let Some(rules) = &svc.authz else {
            return true;
        };
        let scoped = |r: &&AuthzRule| r.covers(req);
        if rules
            .iter()
            .filter(scoped)
            .any(|r| r.deny.contains(peer_id))
        {
            return false;
        }
        rules
            .iter()
            .filter(scoped)
            .any(|r| r.allow.contains(peer_id))
    }
}

// The index's records are one cache line each; a field added past that costs a miss.
const _: () = assert!(std::mem::size_of::<HostRoute>() == 64);
const _: () = assert!(std::mem::size_of::<HostEntry>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    /// The normalization written with `str` methods, as it was before the byte loops.
    fn reference(host: &str) -> Option<String> {
        let host = host.trim();
        let name = if let Some(rest) = host.strip_prefix('[') {
            &rest[..rest.find(']')?]
        } else {
            host.rsplit_once(':').map_or(host, |(h, _)| h)
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        (name.len() <= 256 || !name.bytes().any(|b| b.is_ascii_uppercase()))
            .then(|| name.to_ascii_lowercase())
    }

    #[test]
    fn host_normalization_matches_the_str_definition() {
        let long_upper = "A".repeat(300);
        let long_lower = "a".repeat(300);
        let cases = [
            "",
            " ",
            ":",
            ".",
            "[",
            "]",
            "[]",
            "[::1]:80",
            "[::1",
            "[FE80::1]",
            "h",
            "h.",
            "h.:80",
            "H.Test",
            " h.test\t",
            "\u{a0}h.test\u{3000}",
            "h.test:",
            "a:b:c",
            "ü.Test.",
            "Ü.test",
            "h\u{a0}",
            "\tX:1 ",
            &long_upper,
            &long_lower,
        ];
        for host in cases {
            let got = with_normalized_host(host, |n| Some(n.to_vec()));
            let want = reference(host).map(String::into_bytes);
            assert_eq!(got, want, "{host:?}");
        }
    }

    #[test]
    fn query_strings_are_cut_at_the_first_question_mark() {
        for (path, want) in [
            ("/a", "/a"),
            ("/a?b?c", "/a"),
            ("?", ""),
            ("", ""),
            ("/ü?x", "/ü"),
        ] {
            assert_eq!(without_query(path), want);
        }
    }
}
