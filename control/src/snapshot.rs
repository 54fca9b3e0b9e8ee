//! Lookup-ready tables, compiled from validated tables and published whole.
//!
//! A [`Snapshot`] is immutable. Workers hold an `Arc<Snapshot>`; a connection keeps
//! the one it started with (its [`Snapshot::generation`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use regex::Regex;
use rustc_hash::FxHashMap;

use crate::schema::{LbPolicy, Protocol};

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
}

#[derive(Debug, Clone)]
pub struct ListenerRt {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub service: Option<ServiceId>,
    pub identity: Option<IdentityId>,
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
    pub labels: BTreeMap<String, String>,
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
    pub(crate) service: Option<ServiceId>,
    pub(crate) exact: FxHashMap<Box<str>, Vec<RouteId>>,
    pub(crate) prefix: FxHashMap<Box<str>, Vec<RouteId>>,
    /// Distinct byte lengths of the keys of `prefix`, ascending: a path is probed
    /// only at these lengths, not at every `/`.
    pub(crate) prefix_lens: Vec<u32>,
    /// Regex paths and routes without a path condition.
    pub(crate) other: Vec<RouteId>,
}

/// Everything the workers look up, compiled together so that it agrees.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// 0 for the empty snapshot before the first load; +1 per publish.
    pub generation: u64,
    pub identities: Vec<IdentityRt>,
    pub peers: Vec<PeerRt>,
    pub listeners: Vec<ListenerRt>,
    pub services: Vec<ServiceRt>,
    pub routes: Vec<RouteRt>,
    pub(crate) service_by_name: FxHashMap<Box<str>, ServiceId>,
    pub(crate) peer_by_name: FxHashMap<Box<str>, PeerId>,
    pub(crate) hosts: FxHashMap<Box<str>, HostTable>,
    /// (prefix, identity) by descending prefix length.
    pub(crate) sources: Vec<(IpNet, IdentityId)>,
}

/// What a route lookup found.
#[derive(Debug, Clone, Copy)]
pub struct RouteHit<'a> {
    /// `None` for a service's default route.
    pub id: Option<RouteId>,
    pub route: &'a RouteRt,
}

/// Host header value → lower-case name without port, in `buf` if it must change.
fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    let host = host.trim();
    // Strip a port; an IPv6 literal is bracketed ("[::1]:80").
    let name = if let Some(rest) = host.strip_prefix('[') {
        &rest[..rest.find(']')?]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(name);
    }
    let n = name.len();
    if n > buf.len() {
        return None;
    }
    buf[..n].copy_from_slice(name.as_bytes());
    buf[..n].make_ascii_lowercase();
    std::str::from_utf8(&buf[..n]).ok()
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

        let mut hosts: FxHashMap<Box<str>, HostTable> = FxHashMap::default();
        for (i, r) in self.routes.iter().enumerate() {
            let id = i as RouteId;
            let names: Vec<&str> = match &r.host {
                Some(h) => vec![h.as_str()],
                None => self.services[r.service as usize]
                    .hosts
                    .iter()
                    .map(String::as_str)
                    .collect(),
            };
            for name in names {
                let t = hosts.entry(name.into()).or_default();
                match &r.path {
                    Some(PathMatcher::Exact(p)) => {
                        t.exact.entry(p.as_str().into()).or_default().push(id)
                    }
                    Some(PathMatcher::Prefix(p)) => {
                        t.prefix.entry(p.as_str().into()).or_default().push(id)
                    }
                    Some(PathMatcher::Regex(_)) | None => t.other.push(id),
                }
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            for h in &s.hosts {
                hosts.entry(h.as_str().into()).or_default().service = Some(i as ServiceId);
            }
        }
        for t in hosts.values_mut() {
            let mut lens: Vec<u32> = t.prefix.keys().map(|k| k.len() as u32).collect();
            lens.sort_unstable();
            lens.dedup();
            t.prefix_lens = lens;
        }
        self.hosts = hosts;
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

    /// The service a Host header or TLS SNI names (port and case ignored).
    pub fn service_for_host(&self, host: &str) -> Option<ServiceId> {
        let mut buf = [0u8; 256];
        let h = normalize_host(host, &mut buf)?;
        self.hosts.get(h)?.service
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
        let mut buf = [0u8; 256];
        let h = normalize_host(host, &mut buf)?;
        let table = self.hosts.get(h)?;
        let path = path.split_once('?').map_or(path, |(p, _)| p);
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
        if best != RouteId::MAX {
            return Some(RouteHit {
                id: Some(best),
                route: &self.routes[best as usize],
            });
        }
        let svc = self.services.get(table.service? as usize)?;
        Some(RouteHit {
            id: None,
            route: &svc.default_route,
        })
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
