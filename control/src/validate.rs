//! Semantic checks of decoded tables, producing the compiled [`Snapshot`] when there
//! are none. Every problem is reported (with position, key and hint); nothing stops
//! at the first.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use regex::RegexBuilder;
use rustc_hash::FxHashMap as HashMap;

use crate::certs::{self, CertCheck};
use crate::de::Sp;
use crate::diag::{did_you_mean, Diagnostic};
use crate::schema::{self, GrpcMatch, HeaderMatch, Labels, LbPolicy, PathMatch, Protocol, Tables};
use crate::snapshot::{
    AuthzRule, BackendRt, CircuitBreakerRt, EndpointRt, FaultRt, HashKey, HeaderMatcher,
    HealthCheckRt, HealthProbe, IdSet, IdentityRt, KeepaliveRt, ListenerRt, MirrorRt, OutlierRt,
    PathMatcher, PeerRt, PoolRt, RateLimitRt, RetryBudgetRt, RetryRt, RoutePolicy, RouteRt,
    ServiceId, ServiceRt, Snapshot, Timeouts, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
};
use crate::source::{Source, Span};
use std::sync::Arc;

/// What validation needs besides the text.
#[derive(Debug, Clone)]
pub struct Context {
    /// Relative certificate paths are relative to this (the tables file's directory).
    pub base_dir: PathBuf,
    /// Certificates are checked for validity at this time.
    pub now: SystemTime,
}

impl Context {
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self {
            base_dir: base_dir.into(),
            now: SystemTime::now(),
        }
    }
}

/// Largest compiled regex we accept from a table (bytes of program), so that a
/// table cannot make the control thread allocate without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

struct V<'a> {
    src: &'a Source,
    out: Vec<Diagnostic>,
}

impl V<'_> {
    fn err(
        &mut self,
        span: &Span,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> &mut Diagnostic {
        self.out.push(Diagnostic::at(self.src, span, key, msg));
        let last = self.out.len() - 1;
        &mut self.out[last]
    }
    fn line(&self, span: &Span) -> usize {
        self.src.line(span.start)
    }
}

/// A key path for messages. Hot loops pass [`Lazy`] so that a path is formatted
/// only when an error is reported: formatting the paths of 50k endpoints up front
/// cost more than checking them.
trait KeyPath {
    fn path(&self) -> String;
}
impl KeyPath for str {
    fn path(&self) -> String {
        self.to_owned()
    }
}
impl KeyPath for String {
    fn path(&self) -> String {
        self.clone()
    }
}
struct Lazy<F>(F);
impl<F: Fn() -> String> KeyPath for Lazy<F> {
    fn path(&self) -> String {
        (self.0)()
    }
}

trait SetHint {
    fn set_hint(&mut self, h: impl Into<String>);
}
impl SetHint for Diagnostic {
    fn set_hint(&mut self, h: impl Into<String>) {
        self.hint = Some(h.into());
    }
}

/// Check `tables` (decoded from `src`) and compile them. Generation is left at 0;
/// the publisher sets it.
pub fn validate(src: &Source, tables: &Tables, ctx: &Context) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut v = V {
        src,
        out: Vec::new(),
    };
    let now_unix = match ctx.now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let cert_ctx = CertCheck {
        src,
        base_dir: &ctx.base_dir,
        now_unix,
    };

    // --- identities
    let mut identities = Vec::new();
    let mut id_index: HashMap<&str, (usize, Span)> = HashMap::default();
    let mut source_seen: HashMap<IpNet, (String, usize)> = HashMap::default();
    for (i, ident) in tables.identities.iter().enumerate() {
        let k = format!("identity[{i}]");
        let id_ok = check_spiffe_id(&mut v, &ident.id, &format!("{k}.id"));
        if let Some((_, first)) = id_index.get(ident.id.as_str()) {
            let line = v.line(first);
            v.err(
                &ident.id.span,
                format!("{k}.id"),
                format!("duplicate identity {:?}", *ident.id),
            )
            .set_hint(format!("first defined on line {line}"));
        } else {
            id_index.insert(ident.id.as_str(), (i, ident.id.span.clone()));
        }
        let mut sources = Vec::new();
        for (j, s) in ident.sources.iter().enumerate() {
            let key = format!("{k}.sources[{j}]");
            if let Some(net) = parse_cidr(&mut v, s, &key) {
                if let Some((other, line)) = source_seen.get(&net) {
                    let (other, line) = (other.clone(), *line);
                    v.err(
                        &s.span,
                        &key,
                        format!("source {net} is already claimed by identity {other:?}"),
                    )
                    .set_hint(format!("see line {line}; a source belongs to one identity"));
                } else {
                    source_seen.insert(net, (ident.id.value.clone(), v.line(&s.span)));
                }
                sources.push(net);
            }
        }
        let loaded = certs::check_identity(
            &cert_ctx,
            &ident.id,
            &ident.cert,
            &ident.key,
            &k,
            &mut v.out,
        );
        if let (true, Some(l)) = (id_ok, loaded) {
            identities.push(IdentityRt {
                id: ident.id.value.clone(),
                sources,
                cert_path: l.cert_path,
                key_path: l.key_path,
                cert_chain_der: l.cert_chain_der,
                key_der: l.key_der,
            });
        }
    }

    // --- trust
    let mut trust_roots = Vec::new();
    if let Some(t) = &tables.trust {
        for (j, r) in t.roots.iter().enumerate() {
            let key = format!("trust.roots[{j}]");
            if let Some(p) = certs::check_trust_root(&cert_ctx, r, &key, &mut v.out) {
                trust_roots.push(p);
            }
        }
    }
    let has_trust = tables.trust.as_ref().is_some_and(|t| !t.roots.is_empty());

    // --- peers
    let mut peers = Vec::new();
    let mut peer_index: HashMap<&str, (u32, Span)> = HashMap::default();
    for (i, p) in tables.peers.iter().enumerate() {
        let k = format!("peer[{i}]");
        check_name(&mut v, &p.name, &format!("{k}.name"));
        if let Some((_, first)) = peer_index.get(p.name.as_str()) {
            let line = v.line(first);
            v.err(
                &p.name.span,
                format!("{k}.name"),
                format!("duplicate peer {:?}", *p.name),
            )
            .set_hint(format!("first defined on line {line}"));
        } else {
            peer_index.insert(p.name.as_str(), (i as u32, p.name.span.clone()));
        }
        let addr = parse_socket(&mut v, &p.address, &format!("{k}.address"));
        let id_ok = check_spiffe_id(&mut v, &p.identity, &format!("{k}.identity"));
        let min_idle = match &p.min_idle {
            Some(m) => check_count(
                &mut v,
                m,
                format!("{k}.min_idle"),
                "idle hops",
                0..=MIN_IDLE_MAX,
                "each worker keeps open to this peer, mTLS handshake done (default 0)",
            ),
            None => Some(0),
        };
        let admin = match &p.admin {
            Some(a) => parse_socket(&mut v, a, &format!("{k}.admin")).map(Some),
            None => Some(None),
        };
        if let (Some(address), true, Some(min_idle), Some(admin)) = (addr, id_ok, min_idle, admin) {
            peers.push(PeerRt {
                name: p.name.value.clone(),
                address,
                identity: p.identity.value.clone(),
                min_idle,
                admin,
                hop_protocol: *p.hop_protocol,
            });
        }
    }
    let peer_names: Vec<&str> = tables.peers.iter().map(|p| p.name.as_str()).collect();

    // --- services: names and hosts first, so everything can refer to them
    // Sized up front: these grow to the table's size, and regrowing them copied
    // megabytes in a compile of 10k services.
    let n = tables.services.len();
    let mut svc_index: HashMap<&str, (ServiceId, Span)> = HashMap::default();
    svc_index.reserve(n);
    let mut host_owner: HashMap<String, (String, usize)> = HashMap::default();
    host_owner.reserve(n);
    let mut services: Vec<ServiceRt> = Vec::with_capacity(n);
    for (i, s) in tables.services.iter().enumerate() {
        let k = || format!("service[{i}]");
        check_name(&mut v, &s.name, &Lazy(|| format!("{}.name", k())));
        if let Some((_, first)) = svc_index.get(s.name.as_str()) {
            let line = v.line(first);
            v.err(
                &s.name.span,
                format!("{}.name", k()),
                format!("duplicate service {:?}", *s.name),
            )
            .set_hint(format!("first defined on line {line}"));
            continue;
        }
        svc_index.insert(
            s.name.as_str(),
            (services.len() as ServiceId, s.name.span.clone()),
        );
        let mut hosts = Vec::new();
        let names = std::iter::once((&s.name, None))
            .chain(s.hosts.iter().enumerate().map(|(j, h)| (h, Some(j))));
        for (h, j) in names {
            let key = Lazy(|| match j {
                None => format!("{}.name", k()),
                Some(j) => format!("{}.hosts[{j}]", k()),
            });
            let Some(h_norm) = check_host(&mut v, h, &key) else {
                continue;
            };
            if let Some((owner, at)) = host_owner.get(&h_norm) {
                let (owner, at) = (owner.clone(), *at);
                if owner != *s.name {
                    let line = v.src.line(at);
                    v.err(
                        &h.span,
                        key.path(),
                        format!("host {h_norm:?} already names service {owner:?}"),
                    )
                    .set_hint(format!("see line {line}; a host names one service"));
                }
                continue;
            }
            // The offset, not the line: a line is looked up only for a message.
            host_owner.insert(h_norm.clone(), (s.name.value.clone(), h.span.start));
            hosts.push(h_norm);
        }
        services.push(ServiceRt {
            name: s.name.value.clone(),
            hosts,
            endpoints: Vec::new(),
            load_balancer: *s.load_balancer,
            hash_key: None,
            default_route: RouteRt::new(None, 0, None, None, None, Vec::new(), Vec::new()),
            authz: None,
            retry_budget: RetryBudgetRt::default(),
            circuit_breaker: CircuitBreakerRt::default(),
            outlier: Some(OutlierRt::default()),
            health_check: None,
            pool: PoolRt::default(),
            upstream_protocol: *s.upstream_protocol,
        });
    }
    let svc_names: Vec<&str> = tables.services.iter().map(|s| s.name.as_str()).collect();
    // Every service is known from here on: a service's `mirror` may name any of them.
    let lookup_service =
        |v: &mut V<'_>, name: &Sp<String>, key: &dyn KeyPath| -> Option<ServiceId> {
            match svc_index.get(name.as_str()) {
                Some((sid, _)) => Some(*sid),
                None => {
                    let hint = did_you_mean(name, svc_names.iter().copied())
                        .unwrap_or_else(|| "define it in a [[service]] table".into());
                    v.err(
                        &name.span,
                        key.path(),
                        format!("unknown service {:?}", **name),
                    )
                    .set_hint(hint);
                    None
                }
            }
        };

    // --- endpoints and balancers
    let mut svc_policies = vec![RoutePolicy::default(); services.len()];
    // A local endpoint's address → the protocol it speaks, the service that said so, and
    // where: one server speaks one protocol, whichever service reaches it.
    let mut local_protocol: HashMap<SocketAddr, (schema::UpstreamProtocol, usize, usize)> =
        HashMap::default();
    for (i, s) in tables.services.iter().enumerate() {
        let k = || format!("service[{i}]");
        let Some(&(sid, ref first)) = svc_index.get(s.name.as_str()) else {
            continue;
        };
        if *first != s.name.span {
            continue; // a duplicate, reported above
        }
        let mut endpoints = Vec::with_capacity(s.endpoints.len());
        let mut seen: HashMap<SocketAddr, usize> = HashMap::default();
        seen.reserve(s.endpoints.len());
        for (j, e) in s.endpoints.iter().enumerate() {
            let ek = || format!("{}.endpoints[{j}]", k());
            let addr = parse_socket(&mut v, &e.address, &Lazy(|| format!("{}.address", ek())));
            if let Some(a) = addr {
                if let Some(at) = seen.get(&a) {
                    let line = v.src.line(*at);
                    v.err(
                        &e.address.span,
                        format!("{}.address", ek()),
                        format!("duplicate endpoint {a}"),
                    )
                    .set_hint(format!("first listed on line {line}"));
                } else {
                    seen.insert(a, e.address.span.start);
                }
            }
            let via = match &e.via {
                None => Some(None),
                Some(p) => match peer_index.get(p.as_str()) {
                    Some((pid, _)) => Some(Some(*pid)),
                    None => {
                        let hint = did_you_mean(p, peer_names.iter().copied())
                            .unwrap_or_else(|| "define it in a [[peer]] table".into());
                        v.err(
                            &p.span,
                            format!("{}.via", ek()),
                            format!("unknown peer {:?}", **p),
                        )
                        .set_hint(hint);
                        None
                    }
                },
            };
            if let (Some(a), Some(None)) = (addr, via) {
                let proto = *s.upstream_protocol;
                match local_protocol.get(&a) {
                    Some(&(other, owner, at)) if other != proto => {
                        let line = v.src.line(at);
                        v.err(
                            &e.address.span,
                            format!("{}.address", ek()),
                            format!(
                                "endpoint {a} speaks {:?} here (upstream_protocol) but {:?} in service {:?}",
                                proto.as_str(),
                                other.as_str(),
                                *tables.services[owner].name
                            ),
                        )
                        .set_hint(format!(
                            "see line {line}; one server speaks one protocol: give both services the same upstream_protocol"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        local_protocol.insert(a, (proto, i, e.address.span.start));
                    }
                }
            }
            if let (Some(address), Some(via)) = (addr, via) {
                endpoints.push(EndpointRt {
                    address,
                    via,
                    labels: e.labels.clone(),
                    weight: *e.weight,
                });
            }
        }
        if !s.endpoints.is_empty() && s.endpoints.iter().all(|e| *e.weight == 0) {
            v.err(
                &s.endpoints[0].span,
                format!("{}.endpoints", k()),
                "endpoint weights sum to zero",
            )
            .set_hint("give at least one endpoint a weight above 0");
        }
        let hash_key = match (&s.hash_key, *s.load_balancer) {
            (None, LbPolicy::RingHash) => Some(HashKey::SourceIp),
            (None, _) => None,
            (Some(h), LbPolicy::RingHash) => {
                parse_hash_key(&mut v, h, &format!("{}.hash_key", k()))
            }
            (Some(h), _) => {
                v.err(
                    &h.span,
                    format!("{}.hash_key", k()),
                    "hash_key does nothing without load_balancer = \"ring-hash\"",
                )
                .set_hint("remove it, or set load_balancer = \"ring-hash\"");
                None
            }
        };
        let svc = &mut services[sid as usize];
        svc.hash_key = hash_key;
        let all: Vec<u32> = (0..endpoints.len() as u32).collect();
        svc.endpoints = endpoints;
        svc.default_route = RouteRt::new(
            None,
            sid,
            None,
            None,
            None,
            Vec::new(),
            vec![BackendRt {
                service: sid,
                endpoints: all,
                weight: 1,
            }],
        );
        // The service's policies: the default of its routes, and its default route's own.
        let mut policy = RoutePolicy {
            id: DEFAULT_ROUTE_POLICY_ID | sid,
            ..RoutePolicy::default()
        };
        if let Some(x) = &s.retries {
            policy.retries = compile_retries(&mut v, x, &k());
        }
        if let Some(x) = &s.fault {
            policy.fault = compile_fault(&mut v, x, &k());
        }
        if let Some(x) = &s.rate_limit {
            policy.rate_limit = compile_rate_limit(&mut v, x, &k());
        }
        if let Some(x) = &s.mirror {
            let to = lookup_service(&mut v, &x.service, &format!("{}.mirror.service", k()));
            policy.mirror = compile_mirror(&mut v, x, to, &k());
        }
        if let Some(b) = &s.retry_budget {
            if let Some(b) = compile_retry_budget(&mut v, b, &k()) {
                services[sid as usize].retry_budget = b;
            }
        }
        // Endpoint health: a bad table leaves the default in place (the errors refuse the
        // tables anyway).
        let svc = &mut services[sid as usize];
        if let Some(x) = &s.circuit_breaker {
            if let Some(x) = compile_circuit_breaker(&mut v, x, &k()) {
                svc.circuit_breaker = x;
            }
        }
        if let Some(x) = &s.outlier {
            if let Some(x) = compile_outlier(&mut v, x, &k()) {
                svc.outlier = x;
            }
        }
        if let Some(x) = &s.health_check {
            svc.health_check = compile_health_check(&mut v, x, &k());
        }
        if let Some(x) = &s.pool {
            if let Some(x) = compile_pool(&mut v, x, &k()) {
                svc.pool = x;
            }
        }
        services[sid as usize].default_route.policy =
            policy.any().then(|| Arc::new(policy.clone()));
        svc_policies[sid as usize] = policy;
    }

    // --- listeners
    let mut listeners = Vec::new();
    let mut listener_names: HashMap<&str, usize> = HashMap::default();
    let mut binds: Vec<(SocketAddr, String, usize)> = Vec::new();
    for (i, l) in tables.listeners.iter().enumerate() {
        let k = format!("listener[{i}]");
        check_name(&mut v, &l.name, &format!("{k}.name"));
        if let Some(line) = listener_names.get(l.name.as_str()) {
            let line = *line;
            v.err(
                &l.name.span,
                format!("{k}.name"),
                format!("duplicate listener {:?}", *l.name),
            )
            .set_hint(format!("first defined on line {line}"));
        } else {
            listener_names.insert(l.name.as_str(), v.line(&l.name.span));
        }
        let bind = parse_socket(&mut v, &l.bind, &format!("{k}.bind"));
        if let Some(b) = bind {
            if let Some((other, _, line)) = binds.iter().find(|(o, _, _)| overlaps(*o, b)) {
                let (other, line) = (*other, *line);
                let other_name = binds
                    .iter()
                    .find(|(o, _, _)| *o == other)
                    .map(|(_, n, _)| n.clone())
                    .unwrap_or_default();
                v.err(
                    &l.bind.span,
                    format!("{k}.bind"),
                    format!("overlaps listener {other_name:?} on {other}"),
                )
                .set_hint(format!("see line {line}; use another port or address"));
            } else {
                binds.push((b, l.name.value.clone(), v.line(&l.bind.span)));
            }
        }
        let proto = *l.protocol;
        let service = match (&l.service, proto) {
            (Some(s), Protocol::Tcp) => {
                let sid = lookup_service(&mut v, s, &format!("{k}.service"));
                if let Some(sid) = sid {
                    if services[sid as usize].upstream_protocol == schema::UpstreamProtocol::H2c {
                        v.err(
                            &s.span,
                            format!("{k}.service"),
                            format!(
                                "service {:?} speaks h2c to its endpoints (upstream_protocol); a tcp listener pipes bytes to them untranslated",
                                **s
                            ),
                        )
                        .set_hint("use an http listener, or another service whose upstream_protocol is \"http1\"");
                    }
                }
                sid.map(Some)
            }
            (None, Protocol::Tcp) => {
                v.err(
                    &l.protocol.span,
                    format!("{k}.service"),
                    "a tcp listener needs a service",
                )
                .set_hint("add service = \"NAME\"");
                None
            }
            (Some(s), p) => {
                let why = if p == Protocol::Http {
                    " (http routes by Host)"
                } else {
                    ""
                };
                v.err(
                    &s.span,
                    format!("{k}.service"),
                    format!("service does nothing for protocol {:?}{why}", p.as_str()),
                )
                .set_hint("remove it");
                Some(None)
            }
            (None, _) => Some(None),
        };
        let needs_identity = matches!(proto, Protocol::Mesh | Protocol::IngressTls);
        let identity = match (&l.identity, needs_identity) {
            (Some(id), true) => match id_index.get(id.as_str()) {
                Some((idx, _)) => Some(Some(*idx as u32)),
                None => {
                    let known: Vec<&str> = id_index.keys().copied().collect();
                    let hint = did_you_mean(id, known)
                        .unwrap_or_else(|| "define it in an [[identity]] table".into());
                    v.err(
                        &id.span,
                        format!("{k}.identity"),
                        format!("unknown identity {:?}", **id),
                    )
                    .set_hint(hint);
                    None
                }
            },
            (None, true) => {
                v.err(
                    &l.protocol.span,
                    format!("{k}.identity"),
                    format!("a {} listener needs an identity", proto.as_str()),
                )
                .set_hint("add identity = \"spiffe://...\" naming an [[identity]]");
                None
            }
            (Some(id), false) => {
                v.err(
                    &id.span,
                    format!("{k}.identity"),
                    format!("identity does nothing for protocol {:?}", proto.as_str()),
                )
                .set_hint("remove it");
                Some(None)
            }
            (None, false) => Some(None),
        };
        let timeouts = match &l.timeouts {
            Some(t) => compile_timeouts(&mut v, t, &k),
            None => Some(Timeouts::default()),
        };
        let keepalive = match &l.keepalive {
            Some(ka) => compile_keepalive(&mut v, ka, &k).map(Some),
            None => Some(None),
        };
        let caps = compile_connection_caps(&mut v, l, proto, &k);
        if let (
            Some(bind),
            Some(service),
            Some(identity),
            Some(timeouts),
            Some(keepalive),
            Some((max_connections, max_connections_per_source)),
        ) = (bind, service, identity, timeouts, keepalive, caps)
        {
            listeners.push(ListenerRt {
                name: l.name.value.clone(),
                bind,
                protocol: proto,
                service,
                identity,
                timeouts,
                keepalive,
                max_connections,
                max_connections_per_source,
            });
        }
    }

    // --- routes
    let mut routes = Vec::with_capacity(tables.routes.len());
    for (i, r) in tables.routes.iter().enumerate() {
        let k = || format!("route[{i}]");
        let sid = lookup_service(&mut v, &r.service, &Lazy(|| format!("{}.service", k())));
        let mut ok = sid.is_some();
        let (mut host, mut path, mut method, mut headers) = (None, None, None, Vec::new());
        if let Some(m) = &r.matches {
            let mk = || format!("{}.match", k());
            if let Some(h) = &m.host {
                host = check_host(&mut v, h, &Lazy(|| format!("{}.host", mk())));
                ok &= host.is_some();
            }
            if let Some(p) = &m.path {
                path = compile_path(&mut v, p, &Lazy(|| format!("{}.path", mk())));
                ok &= path.is_some();
            }
            if let Some(me) = &m.method {
                method = check_method(&mut v, me, &Lazy(|| format!("{}.method", mk())));
                ok &= method.is_some();
            }
            match compile_headers(&mut v, &m.headers, &mk()) {
                Some(h) => headers = h,
                None => ok = false,
            }
            if let Some(g) = &m.grpc {
                let gk = Lazy(|| format!("{}.grpc", mk()));
                if m.path.is_some() || m.method.is_some() {
                    v.err(&g.span, gk.path(), "grpc with path or method".to_string())
                        .set_hint("grpc sets the path and the method (POST): leave both out");
                    ok = false;
                } else if headers.iter().any(|(n, _)| n == "content-type") {
                    v.err(
                        &g.span,
                        gk.path(),
                        "grpc with a content-type header match".to_string(),
                    )
                    .set_hint("grpc matches content-type application/grpc itself");
                    ok = false;
                } else {
                    match compile_grpc(&mut v, g, &gk) {
                        Some((p, ct)) => {
                            path = Some(p);
                            method = Some("POST".to_string());
                            headers.push(ct);
                        }
                        None => ok = false,
                    }
                }
            }
        }
        let mut backends = Vec::with_capacity(r.backends.len().max(1));
        if r.backends.is_empty() {
            if let Some(sid) = sid {
                let n = services[sid as usize].endpoints.len() as u32;
                backends.push(BackendRt {
                    service: sid,
                    endpoints: (0..n).collect(),
                    weight: 1,
                });
            }
        }
        for (j, b) in r.backends.iter().enumerate() {
            let bk = || format!("{}.backends[{j}]", k());
            let bsid = match &b.service {
                Some(s) => lookup_service(&mut v, s, &Lazy(|| format!("{}.service", bk()))),
                None => sid,
            };
            let Some(bsid) = bsid else {
                ok = false;
                continue;
            };
            let svc = &services[bsid as usize];
            let selected: Vec<u32> = svc
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| b.labels.iter().all(|(lk, lv)| e.labels.get(lk) == Some(lv)))
                .map(|(n, _)| n as u32)
                .collect();
            if !b.labels.is_empty() && selected.is_empty() {
                let present = label_sets(&svc.endpoints);
                v.err(
                    &b.span,
                    format!("{}.labels", bk()),
                    format!(
                        "no endpoint of service {:?} has labels {}",
                        svc.name,
                        fmt_labels(&b.labels)
                    ),
                )
                .set_hint(if present.is_empty() {
                    "the service has no labelled endpoints".into()
                } else {
                    format!("labels present: {present}")
                });
                ok = false;
                continue;
            }
            backends.push(BackendRt {
                service: bsid,
                endpoints: selected,
                weight: *b.weight,
            });
        }
        if !r.backends.is_empty() && r.backends.iter().all(|b| *b.weight == 0) {
            v.err(
                &r.backends[0].span,
                format!("{}.backends", k()),
                "backend weights sum to zero",
            )
            .set_hint("give at least one backend a weight above 0");
            ok = false;
        }
        let mut route_duration = |v: &mut V<'_>, d: Option<&Sp<String>>, key: &str| match d {
            Some(d) => {
                let x = check_duration(v, d, &Lazy(|| format!("{}.{key}", k())));
                ok &= x.is_some();
                x
            }
            None => None,
        };
        let rto = r.timeouts.as_ref();
        let mut timeout = route_duration(&mut v, r.timeout.as_ref(), "timeout");
        let request = route_duration(
            &mut v,
            rto.and_then(|t| t.request.as_ref()),
            "timeouts.request",
        );
        let connect = route_duration(
            &mut v,
            rto.and_then(|t| t.connect.as_ref()),
            "timeouts.connect",
        );
        let body_stall = route_duration(
            &mut v,
            rto.and_then(|t| t.body_stall.as_ref()),
            "timeouts.body_stall",
        );
        if let (Some(_), Some(req)) = (&r.timeout, rto.and_then(|t| t.request.as_ref())) {
            v.err(
                &req.span,
                format!("{}.timeouts.request", k()),
                "the request timeout is given twice",
            )
            .set_hint("keep either timeout = ... or timeouts.request");
            ok = false;
        }
        timeout = timeout.or(request);
        // A route's own policy table replaces its service's, table by table.
        let inherited = sid.and_then(|sid| svc_policies.get(sid as usize));
        let mut policy = RoutePolicy {
            id: i as u32,
            ..RoutePolicy::default()
        };
        match &r.retries {
            Some(x) => {
                policy.retries = compile_retries(&mut v, x, &k());
                ok &= policy.retries.is_some();
            }
            None => policy.retries = inherited.and_then(|p| p.retries.clone()),
        }
        match &r.fault {
            Some(x) => {
                policy.fault = compile_fault(&mut v, x, &k());
                ok &= policy.fault.is_some();
            }
            None => policy.fault = inherited.and_then(|p| p.fault.clone()),
        }
        match &r.rate_limit {
            Some(x) => {
                policy.rate_limit = compile_rate_limit(&mut v, x, &k());
                ok &= policy.rate_limit.is_some();
            }
            None => policy.rate_limit = inherited.and_then(|p| p.rate_limit),
        }
        match &r.mirror {
            Some(x) => {
                let to = lookup_service(&mut v, &x.service, &format!("{}.mirror.service", k()));
                policy.mirror = compile_mirror(&mut v, x, to, &k());
                ok &= policy.mirror.is_some();
            }
            None => policy.mirror = inherited.and_then(|p| p.mirror.clone()),
        }
        let policy = policy.any().then(|| Arc::new(policy));
        if let (true, Some(sid)) = (ok, sid) {
            let mut rt = RouteRt::new(
                r.name.as_ref().map(|n| n.value.clone()),
                sid,
                host,
                path,
                method,
                headers,
                backends,
            );
            rt.timeout = timeout;
            rt.connect_timeout = connect;
            rt.body_stall_timeout = body_stall;
            rt.policy = policy;
            routes.push(rt);
        }
    }

    // --- authorization
    let mut rules: BTreeMap<ServiceId, Vec<AuthzRule>> = BTreeMap::new();
    for (i, a) in tables.authorizations.iter().enumerate() {
        let k = format!("authorization[{i}]");
        let sid = lookup_service(&mut v, &a.service, &format!("{k}.service"));
        let mut ok = sid.is_some();
        if a.allow.is_empty() && a.deny.is_empty() {
            v.err(&a.service.span, k.clone(), "rule allows and denies no one")
                .set_hint("add allow = [\"spiffe://...\"] or deny = [...]");
            ok = false;
        }
        let allow = id_set(&mut v, &a.allow, &format!("{k}.allow"));
        let deny = id_set(&mut v, &a.deny, &format!("{k}.deny"));
        let mut methods = Vec::new();
        for (j, m) in a.methods.iter().enumerate() {
            match check_method(&mut v, m, &format!("{k}.methods[{j}]")) {
                Some(m) => methods.push(m),
                None => ok = false,
            }
        }
        let mut paths = Vec::new();
        for (j, p) in a.paths.iter().enumerate() {
            match compile_path(&mut v, p, &format!("{k}.paths[{j}]")) {
                Some(p) => paths.push(p),
                None => ok = false,
            }
        }
        if let (true, Some(sid), Some(allow), Some(deny)) = (ok, sid, allow, deny) {
            rules.entry(sid).or_default().push(AuthzRule {
                allow,
                deny,
                methods,
                paths,
            });
        }
    }

    // Mesh traffic without trusted roots could not verify anybody. An `ingress-tls`
    // listener verifies nobody, but its certificate is loaded and reloaded with the mesh's
    // (the data plane watches certificates only under a [trust]).
    if !has_trust {
        let needs = tables
            .listeners
            .iter()
            .enumerate()
            .find(|(_, l)| matches!(*l.protocol, Protocol::Mesh | Protocol::IngressTls))
            .map(|(i, l)| {
                let what = if *l.protocol == Protocol::Mesh {
                    "mesh traffic needs trusted roots"
                } else {
                    "an ingress-tls listener's certificate is loaded under the mesh's trust"
                };
                (
                    l.protocol.span.clone(),
                    format!("listener[{i}].protocol"),
                    what,
                )
            })
            .or_else(|| {
                tables.services.iter().enumerate().find_map(|(i, svc)| {
                    svc.endpoints.iter().enumerate().find_map(|(j, e)| {
                        e.via.as_ref().map(|via| {
                            (
                                via.span.clone(),
                                format!("service[{i}].endpoints[{j}].via"),
                                "mesh traffic needs trusted roots",
                            )
                        })
                    })
                })
            });
        if let Some((span, key, what)) = needs {
            v.err(&span, key, format!("{what}, and [trust] has none"))
                .set_hint(
                    "add [trust] roots = [\"ca/ca.pem\"] (the mesh CA from `xdpmesh ca init`)",
                );
        }
    }

    if !v.out.is_empty() {
        return Err(v.out);
    }
    for (sid, r) in rules {
        services[sid as usize].authz = Some(r);
    }
    let mut snap = Snapshot {
        generation: 0,
        trust_roots,
        identities,
        peers,
        listeners,
        services,
        routes,
        ..Snapshot::default()
    };
    snap.index();
    Ok(snap)
}

fn fmt_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn label_sets(eps: &[EndpointRt]) -> String {
    let mut sets: Vec<String> = eps
        .iter()
        .filter(|e| !e.labels.is_empty())
        .map(|e| fmt_labels(&e.labels))
        .collect();
    sets.sort();
    sets.dedup();
    sets.join(" ")
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Names of peers, listeners and services: also host names, so keep them plain.
fn check_name(v: &mut V<'_>, name: &Sp<String>, key: &(impl KeyPath + ?Sized)) -> bool {
    if name.is_empty() {
        v.err(&name.span, key.path(), "name is empty");
        return false;
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        v.err(
            &name.span,
            key.path(),
            format!("{:?} is not a valid name", **name),
        )
        .set_hint("use letters, digits, '.', '-' and '_'");
        return false;
    }
    true
}

/// A Host/SNI name: lower-cased, no port.
fn check_host(v: &mut V<'_>, h: &Sp<String>, key: &(impl KeyPath + ?Sized)) -> Option<String> {
    let lower = h.to_ascii_lowercase();
    if lower.is_empty() || lower.len() > 253 {
        v.err(&h.span, key.path(), "host name must be 1 to 253 characters");
        return None;
    }
    if lower.parse::<IpAddr>().is_ok() {
        return Some(lower);
    }
    if let Some((name, port)) = lower.rsplit_once(':') {
        if port.parse::<u16>().is_ok() {
            v.err(&h.span, key.path(), format!("host {:?} has a port", **h))
                .set_hint(format!("write {name:?}; ports are ignored when matching"));
            return None;
        }
    }
    if !lower
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        v.err(
            &h.span,
            key.path(),
            format!("{:?} is not a valid host name", **h),
        )
        .set_hint("use letters, digits, '.', '-' and '_'");
        return None;
    }
    Some(lower)
}

fn parse_socket(
    v: &mut V<'_>,
    s: &Sp<String>,
    key: &(impl KeyPath + ?Sized),
) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = if s.parse::<IpAddr>().is_ok() {
                format!("add a port: {:?}", format!("{}:PORT", **s))
            } else if s.contains(':') && !s.starts_with('[') && s.matches(':').count() > 1 {
                "bracket IPv6 addresses: \"[::1]:8080\"".into()
            } else {
                "write IP:PORT, e.g. \"10.10.3.2:8080\"; names are not resolved".into()
            };
            v.err(
                &s.span,
                key.path(),
                format!("{:?} is not an IP:PORT address", **s),
            )
            .set_hint(hint);
            None
        }
    }
}

fn parse_cidr(v: &mut V<'_>, s: &Sp<String>, key: &(impl KeyPath + ?Sized)) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    match IpNet::from_str(s) {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            v.err(&s.span, key.path(), format!("{:?} has host bits set", **s))
                .set_hint(format!("did you mean \"{}\"?", net.trunc()));
            None
        }
        Err(_) => {
            v.err(&s.span, key.path(), format!("{:?} is not a CIDR", **s))
                .set_hint("write ADDRESS/PREFIX, e.g. \"10.10.1.0/24\"");
            None
        }
    }
}

/// SPIFFE ID syntax (SPIFFE-ID spec §2): `spiffe://` + trust domain of
/// `[a-z0-9.-_]` + a non-empty path of segments of `[a-zA-Z0-9.-_]`, none empty,
/// `.` or `..`; no query, fragment, port or user info.
pub fn spiffe_id_error(s: &str) -> Option<&'static str> {
    let Some(rest) = s.strip_prefix("spiffe://") else {
        return Some("does not start with spiffe://");
    };
    if s.len() > 2048 {
        return Some("is longer than 2048 bytes");
    }
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    if td.is_empty() {
        return Some("has no trust domain");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Some("has a trust domain with characters other than a-z 0-9 . - _");
    }
    if path.is_empty() {
        return Some("has no path");
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Some("has an empty path segment");
        }
        if seg == "." || seg == ".." {
            return Some("has a . or .. path segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Some("has a path with characters other than a-z A-Z 0-9 . - _");
        }
    }
    None
}

fn check_spiffe_id(v: &mut V<'_>, id: &Sp<String>, key: &(impl KeyPath + ?Sized)) -> bool {
    match spiffe_id_error(id) {
        None => true,
        Some(why) => {
            v.err(
                &id.span,
                key.path(),
                format!("{:?} is not a SPIFFE ID: it {why}", **id),
            )
            .set_hint("write spiffe://TRUST-DOMAIN/PATH, e.g. spiffe://corp.mesh/sa/checkout");
            false
        }
    }
}

fn id_set(v: &mut V<'_>, ids: &[Sp<String>], key: &(impl KeyPath + ?Sized)) -> Option<IdSet> {
    let mut set = IdSet::default();
    let mut ok = true;
    for (j, id) in ids.iter().enumerate() {
        let k = format!("{}[{j}]", key.path());
        if id.as_str() == "*" {
            set.any = true;
        } else if let Some(prefix) = id.strip_suffix("/*") {
            // The prefix must itself be a trust domain or an ID.
            let probe = if prefix.matches('/').count() == 2 {
                format!("{prefix}/x")
            } else {
                prefix.to_owned()
            };
            match spiffe_id_error(&probe) {
                None => set.prefixes.push(format!("{prefix}/")),
                Some(why) => {
                    v.err(
                        &id.span,
                        k.as_str(),
                        format!("{:?} is not a SPIFFE ID pattern: it {why}", **id),
                    )
                    .set_hint(
                        "write spiffe://TRUST-DOMAIN/PATH, spiffe://TRUST-DOMAIN/PREFIX/* or *",
                    );
                    ok = false;
                }
            }
        } else if check_spiffe_id(v, id, &k) {
            set.exact.push(id.value.clone());
        } else {
            ok = false;
        }
    }
    ok.then_some(set)
}

/// RFC 9110 §5.6.2 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_method(v: &mut V<'_>, m: &Sp<String>, key: &(impl KeyPath + ?Sized)) -> Option<String> {
    if !is_token(m) {
        v.err(
            &m.span,
            key.path(),
            format!("{:?} is not an HTTP method", **m),
        )
        .set_hint("e.g. GET, POST, PUT, DELETE");
        return None;
    }
    if m.bytes().any(|b| b.is_ascii_lowercase()) {
        let upper = m.to_ascii_uppercase();
        v.err(
            &m.span,
            key.path(),
            format!("method {:?} is not upper-case", **m),
        )
        .set_hint(format!(
            "methods are case-sensitive (RFC 9110 §9.1): write {upper:?}"
        ));
        return None;
    }
    Some(m.value.clone())
}

fn compile_path(
    v: &mut V<'_>,
    p: &Sp<PathMatch>,
    key: &(impl KeyPath + ?Sized),
) -> Option<PathMatcher> {
    let check_abs = |v: &mut V<'_>, s: &str, kind: &str| -> bool {
        if !s.starts_with('/') {
            v.err(
                &p.span,
                format!("{}.{kind}", key.path()),
                format!("path {s:?} does not start with '/'"),
            )
            .set_hint(format!("write \"/{s}\""));
            return false;
        }
        if s.contains('?') {
            v.err(
                &p.span,
                format!("{}.{kind}", key.path()),
                format!("path {s:?} has a query string"),
            )
            .set_hint("paths are matched without the query string");
            return false;
        }
        true
    };
    match &p.value {
        PathMatch::Exact(s) => check_abs(v, s, "exact").then(|| PathMatcher::Exact(s.clone())),
        PathMatch::Prefix(s) => check_abs(v, s, "prefix")
            .then(|| PathMatcher::Prefix(s.trim_end_matches('/').to_owned())),
        PathMatch::Regex(s) => match RegexBuilder::new(&format!("^(?:{s})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(PathMatcher::Regex(r)),
            Err(e) => {
                let msg = regex_error_line(&e);
                v.err(
                    &p.span,
                    format!("{}.regex", key.path()),
                    format!("regex does not compile: {msg}"),
                )
                .set_hint("Rust regex syntax; the regex must match the whole path");
                None
            }
        },
    }
}

/// The regex crate's message is a multi-line picture; keep the last line, the reason.
fn regex_error_line(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid")
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

fn parse_hash_key(v: &mut V<'_>, h: &Sp<String>, key: &(impl KeyPath + ?Sized)) -> Option<HashKey> {
    let r = match h.split_once(':') {
        None if h.as_str() == "source-ip" => Some(HashKey::SourceIp),
        Some(("header", n)) if is_token(n) => Some(HashKey::Header(n.to_ascii_lowercase())),
        Some(("cookie", n)) if is_token(n) => Some(HashKey::Cookie(n.to_owned())),
        _ => None,
    };
    if r.is_none() {
        v.err(&h.span, key.path(), format!("{:?} is not a hash key", **h))
            .set_hint("one of: source-ip, header:NAME, cookie:NAME");
    }
    r
}

/// Shortest and longest duration a timeout key takes.
const TIMEOUT_MIN: Duration = Duration::from_millis(1);
const TIMEOUT_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// A listener's `keepalive.probes` bounds.
const KEEPALIVE_PROBES_MIN: u32 = 1;
const KEEPALIVE_PROBES_MAX: u32 = 100;

/// A timeout like `"10s"`, `"250ms"` or `"1h"`, within [`TIMEOUT_MIN`]..=[`TIMEOUT_MAX`].
fn check_duration(
    v: &mut V<'_>,
    d: &Sp<String>,
    key: &(impl KeyPath + ?Sized),
) -> Option<Duration> {
    let hint = "a duration like \"10s\", \"250ms\" or \"1h\", from 1ms to 7 days";
    match humantime::parse_duration(d.value.trim()) {
        Ok(x) if (TIMEOUT_MIN..=TIMEOUT_MAX).contains(&x) => Some(x),
        Ok(_) => {
            v.err(
                &d.span,
                key.path(),
                format!("{:?} is out of range", d.value),
            )
            .set_hint(hint);
            None
        }
        Err(e) => {
            v.err(
                &d.span,
                key.path(),
                format!("{:?} is not a duration: {e}", d.value),
            )
            .set_hint(hint);
            None
        }
    }
}

/// Header conditions (`match.headers`, `fault.headers`): names checked, exact values or
/// anchored regexes compiled; `None` when any is bad (each reported under `prefix`).
/// `grpc = { service, method }` as the route conditions it stands for: the path, and a
/// `content-type` of `application/grpc` with an optional `+codec` or parameters.
fn compile_grpc(
    v: &mut V<'_>,
    g: &Sp<GrpcMatch>,
    key: &(impl KeyPath + ?Sized),
) -> Option<(PathMatcher, (String, HeaderMatcher))> {
    // Protobuf's full names: dot-separated identifiers; method names are identifiers.
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if !g.service.split('.').all(ident) {
        v.err(
            &g.service.span,
            format!("{}.service", key.path()),
            format!("{:?} is not a gRPC service name", *g.service),
        )
        .set_hint("the fully qualified name, e.g. \"helloworld.Greeter\"");
        return None;
    }
    let path = match &g.method {
        Some(m) if !ident(m) => {
            v.err(
                &m.span,
                format!("{}.method", key.path()),
                format!("{:?} is not a gRPC method name", **m),
            )
            .set_hint("the method's name as the .proto file gives it, e.g. \"SayHello\"");
            return None;
        }
        Some(m) => PathMatcher::Exact(format!("/{}/{}", *g.service, **m)),
        None => PathMatcher::Prefix(format!("/{}", *g.service)),
    };
    // Media types are case-insensitive (RFC 9110 §8.3.1), as the engine reads them.
    let ct =
        regex::bytes::Regex::new("^(?i:application/grpc(?:[+;].*)?)$").expect("a constant regex");
    Some((path, ("content-type".to_string(), HeaderMatcher::Regex(ct))))
}

fn compile_headers(
    v: &mut V<'_>,
    map: &BTreeMap<String, Sp<HeaderMatch>>,
    prefix: &str,
) -> Option<Vec<(String, HeaderMatcher)>> {
    let mut ok = true;
    let mut headers = Vec::with_capacity(map.len());
    for (name, value) in map {
        if !is_token(name) {
            v.err(
                &value.span,
                format!("{prefix}.headers.{name}"),
                format!("{name:?} is not a valid header name"),
            )
            .set_hint("header names are letters, digits and !#$%&'*+-.^_`|~ (RFC 9110 §5.1)");
            ok = false;
        } else {
            match &value.value {
                HeaderMatch::Exact(x) => headers.push((
                    name.to_ascii_lowercase(),
                    HeaderMatcher::Exact(x.clone().into_bytes()),
                )),
                HeaderMatch::Regex(r) => {
                    match regex::bytes::RegexBuilder::new(&format!("^(?:{r})$"))
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                    {
                        Ok(re) => {
                            headers.push((name.to_ascii_lowercase(), HeaderMatcher::Regex(re)))
                        }
                        Err(e) => {
                            let msg = regex_error_line(&e);
                            v.err(
                                &value.span,
                                format!("{prefix}.headers.{name}.regex"),
                                format!("regex does not compile: {msg}"),
                            )
                            .set_hint("Rust regex syntax; the regex must match the whole value");
                            ok = false;
                        }
                    }
                }
            }
        }
    }
    ok.then_some(headers)
}

/// Policy ids of services' default routes (routes take their index in the tables).
const DEFAULT_ROUTE_POLICY_ID: u32 = 1 << 31;

/// Upper bound of `retries.attempts`.
const RETRY_ATTEMPTS_MAX: u8 = 10;
/// Upper bound of `retries.buffer`.
const RETRY_BUFFER_MAX: usize = 16 << 20;
/// Upper bound of `rate_limit.requests_per_second` and `burst`.
const RATE_MAX: f64 = 1_000_000.0;

fn out_of_range(v: &mut V<'_>, span: &Span, key: String, what: String, hint: String) {
    v.err(span, key, format!("{what} is out of range"))
        .set_hint(hint);
}

fn compile_retries(v: &mut V<'_>, r: &Sp<schema::Retries>, k: &str) -> Option<RetryRt> {
    let mut out = RetryRt::default();
    let mut ok = true;
    if let Some(a) = &r.attempts {
        match u8::try_from(a.value) {
            Ok(n) if (1..=RETRY_ATTEMPTS_MAX).contains(&n) => out.attempts = n,
            _ => {
                out_of_range(
                    v,
                    &a.span,
                    format!("{k}.retries.attempts"),
                    format!("{} attempts", a.value),
                    format!("from 1 to {RETRY_ATTEMPTS_MAX} attempts in all, the first included (default 3)"),
                );
                ok = false;
            }
        }
    }
    for (val, name, slot) in [
        (
            &r.per_try_timeout,
            "per_try_timeout",
            &mut out.per_try_timeout,
        ),
        (&r.backoff, "backoff", &mut out.backoff),
    ] {
        if let Some(d) = val {
            match check_duration(v, d, &format!("{k}.retries.{name}")) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    if let Some(on) = &r.on {
        out.on_connect_failure = false;
        out.on_reset = false;
        out.on_status.clear();
        out.on_grpc.clear();
        for (j, cond) in on.iter().enumerate() {
            match cond.as_str() {
                "connect-failure" => out.on_connect_failure = true,
                "reset" => out.on_reset = true,
                "timeout" => out.on_timeout = true,
                "gateway-error" => out.on_status.extend([502, 503, 504]),
                // gRPC status codes (grpc/doc/statuscodes.md).
                "cancelled" => out.on_grpc.push(1),
                "deadline-exceeded" => out.on_grpc.push(4),
                "resource-exhausted" => out.on_grpc.push(8),
                "internal" => out.on_grpc.push(13),
                "unavailable" => out.on_grpc.push(14),
                code => match code.parse::<u16>() {
                    Ok(c) if (400..600).contains(&c) => out.on_status.push(c),
                    _ => {
                        v.err(
                            &cond.span,
                            format!("{k}.retries.on[{j}]"),
                            format!("{code:?} is not a retry condition"),
                        )
                        .set_hint(
                            "connect-failure, reset, timeout, gateway-error, a status from \"400\" to \"599\", \
                             or a gRPC status: cancelled, deadline-exceeded, internal, resource-exhausted, unavailable",
                        );
                        ok = false;
                    }
                },
            }
        }
    }
    if let Some(ms) = &r.methods {
        out.methods.clear();
        for (j, m) in ms.iter().enumerate() {
            match check_method(v, m, &format!("{k}.retries.methods[{j}]")) {
                Some(m) => out.methods.push(m),
                None => ok = false,
            }
        }
    }
    if let Some(b) = &r.buffer {
        match usize::try_from(b.value) {
            Ok(n) if n <= RETRY_BUFFER_MAX => out.buffer = n,
            _ => {
                out_of_range(
                    v,
                    &b.span,
                    format!("{k}.retries.buffer"),
                    format!("{} bytes", b.value),
                    format!("from 0 to {RETRY_BUFFER_MAX} bytes of request kept for a retry (default 65536)"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn check_percent(v: &mut V<'_>, p: &Sp<f64>, key: String) -> Option<f64> {
    if (0.0..=100.0).contains(&p.value) {
        Some(p.value)
    } else {
        out_of_range(
            v,
            &p.span,
            key,
            format!("{} %", p.value),
            "from 0.0 to 100.0".into(),
        );
        None
    }
}

fn compile_fault(v: &mut V<'_>, f: &Sp<schema::Fault>, k: &str) -> Option<FaultRt> {
    let mut ok = true;
    let mut out = FaultRt {
        abort: None,
        delay: None,
        headers: Vec::new(),
    };
    if let Some(a) = &f.abort {
        let p = check_percent(v, &a.percent, format!("{k}.fault.abort.percent"));
        let status = match u16::try_from(a.status.value) {
            Ok(s) if (200..600).contains(&s) => Some(s),
            _ => {
                out_of_range(
                    v,
                    &a.status.span,
                    format!("{k}.fault.abort.status"),
                    format!("status {}", a.status.value),
                    "a status from 200 to 599".into(),
                );
                None
            }
        };
        match (p, status) {
            (Some(p), Some(s)) => out.abort = Some((p, s)),
            _ => ok = false,
        }
    }
    if let Some(d) = &f.delay {
        let p = check_percent(v, &d.percent, format!("{k}.fault.delay.percent"));
        let dur = check_duration(v, &d.duration, &format!("{k}.fault.delay.duration"));
        match (p, dur) {
            (Some(p), Some(d)) => out.delay = Some((p, d)),
            _ => ok = false,
        }
    }
    if f.abort.is_none() && f.delay.is_none() {
        v.err(&f.span, format!("{k}.fault"), "the fault injects nothing")
            .set_hint("add abort = { percent, status } or delay = { percent, duration }");
        ok = false;
    }
    match compile_headers(v, &f.headers, &format!("{k}.fault")) {
        Some(h) => out.headers = h,
        None => ok = false,
    }
    ok.then_some(out)
}

fn compile_rate_limit(v: &mut V<'_>, r: &Sp<schema::RateLimit>, k: &str) -> Option<RateLimitRt> {
    let mut ok = true;
    let rate = match &r.requests_per_second {
        None => {
            v.err(
                &r.span,
                format!("{k}.rate_limit.requests_per_second"),
                "missing",
            )
            .set_hint("the sustained rate, e.g. requests_per_second = 500");
            ok = false;
            1.0
        }
        Some(x) if x.value >= 1.0 && x.value <= RATE_MAX => x.value,
        Some(x) => {
            out_of_range(
                v,
                &x.span,
                format!("{k}.rate_limit.requests_per_second"),
                format!("{} requests a second", x.value),
                "from 1 to 1000000".into(),
            );
            ok = false;
            1.0
        }
    };
    let burst = match &r.burst {
        None => rate.ceil() as u32,
        Some(b) if b.value >= 1 && (b.value as f64) <= RATE_MAX => b.value as u32,
        Some(b) => {
            out_of_range(
                v,
                &b.span,
                format!("{k}.rate_limit.burst"),
                format!("a burst of {}", b.value),
                "from 1 to 1000000 requests (default: requests_per_second)".into(),
            );
            ok = false;
            1
        }
    };
    let per_identity = match r.per.as_ref().map(|p| p.as_str()) {
        None | Some("route") => false,
        Some("source-identity") => true,
        Some(other) => {
            let p = r.per.as_ref().expect("matched Some");
            v.err(
                &p.span,
                format!("{k}.rate_limit.per"),
                format!("{other:?} is not a bucket key"),
            )
            .set_hint("route (one bucket) or source-identity (one per caller)");
            ok = false;
            false
        }
    };
    ok.then_some(RateLimitRt {
        per_second: rate,
        burst,
        per_identity,
    })
}

/// `mirror`, its `service` looked up already as `to` (any service, the route's own included,
/// with or without endpoints); `percent` above 0 and at most 100 (default 100).
fn compile_mirror(
    v: &mut V<'_>,
    m: &Sp<schema::Mirror>,
    to: Option<ServiceId>,
    k: &str,
) -> Option<MirrorRt> {
    let percent = match &m.percent {
        None => Some(100.0),
        Some(p) if p.value > 0.0 && p.value <= 100.0 => Some(p.value),
        Some(p) => {
            out_of_range(
                v,
                &p.span,
                format!("{k}.mirror.percent"),
                format!("{} %", p.value),
                "above 0.0, at most 100.0 (default 100.0)".into(),
            );
            None
        }
    };
    Some(MirrorRt {
        service: to?,
        percent: percent?,
    })
}

fn compile_retry_budget(
    v: &mut V<'_>,
    b: &Sp<schema::RetryBudget>,
    k: &str,
) -> Option<RetryBudgetRt> {
    let mut out = RetryBudgetRt::default();
    let mut ok = true;
    if let Some(r) = &b.ratio {
        if (0.0..=10.0).contains(&r.value) {
            out.ratio = r.value;
        } else {
            out_of_range(
                v,
                &r.span,
                format!("{k}.retry_budget.ratio"),
                format!("a ratio of {}", r.value),
                "from 0.0 to 10.0 retries per request (default 0.2)".into(),
            );
            ok = false;
        }
    }
    if let Some(m) = &b.min_per_second {
        if (0.0..=RATE_MAX).contains(&m.value) {
            out.min_per_second = m.value;
        } else {
            out_of_range(
                v,
                &m.span,
                format!("{k}.retry_budget.min_per_second"),
                format!("{} retries a second", m.value),
                "from 0 to 1000000 (default 10)".into(),
            );
            ok = false;
        }
    }
    if let Some(t) = &b.ttl {
        match check_duration(v, t, &format!("{k}.retry_budget.ttl")) {
            Some(d) => out.ttl = d,
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Upper bound of a peer's `min_idle`.
const MIN_IDLE_MAX: u32 = 1_000;
/// Upper bound of the `circuit_breaker` caps.
const CIRCUIT_BREAKER_MAX: u32 = 1_000_000;
/// Upper bound of `outlier.consecutive_failures` and `outlier.success_rate_min_requests`.
const OUTLIER_COUNT_MAX: u32 = 1_000_000;
/// A health check's defaults (its probe has none: `http` or `tcp` is required).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const HEALTH_UNHEALTHY: u32 = 3;
const HEALTH_HEALTHY: u32 = 2;
/// Upper bound of `health_check.unhealthy` and `healthy`.
const HEALTH_THRESHOLD_MAX: u32 = 100;
/// Longest `health_check.http.path`, in bytes.
const HEALTH_PATH_MAX: usize = 1024;
/// Upper bound of `pool.max_idle_per_endpoint`.
const POOL_IDLE_MAX: u32 = 10_000;
/// Upper bound of `pool.max_requests`.
const POOL_REQUESTS_MAX: u32 = 10_000_000;

/// An integer key within `range`, else `N {unit} is out of range (hint: from A to B {what})`.
fn check_count(
    v: &mut V<'_>,
    n: &Sp<i64>,
    key: String,
    unit: &str,
    range: std::ops::RangeInclusive<u32>,
    what: &str,
) -> Option<u32> {
    match u32::try_from(n.value) {
        Ok(x) if range.contains(&x) => Some(x),
        _ => {
            v.err(&n.span, key, format!("{} {unit} is out of range", n.value))
                .set_hint(format!(
                    "from {} to {} {unit} {what}",
                    range.start(),
                    range.end()
                ));
            None
        }
    }
}

/// Compiles an optional integer key over `slot` with [`check_count`]; false when it is bad.
fn count_into(
    v: &mut V<'_>,
    n: &Option<Sp<i64>>,
    slot: &mut u32,
    key: String,
    unit: &str,
    range: std::ops::RangeInclusive<u32>,
    what: &str,
) -> bool {
    let Some(n) = n else {
        return true;
    };
    match check_count(v, n, key, unit, range, what) {
        Some(x) => {
            *slot = x;
            true
        }
        None => false,
    }
}

/// Compiles an optional duration key over `slot`; false when it is bad.
fn duration_into(v: &mut V<'_>, d: &Option<Sp<String>>, slot: &mut Duration, key: String) -> bool {
    let Some(d) = d else {
        return true;
    };
    match check_duration(v, d, &key) {
        Some(x) => {
            *slot = x;
            true
        }
        None => false,
    }
}

fn compile_circuit_breaker(
    v: &mut V<'_>,
    c: &Sp<schema::CircuitBreaker>,
    k: &str,
) -> Option<CircuitBreakerRt> {
    let mut out = CircuitBreakerRt::default();
    let d = CircuitBreakerRt::default();
    let keys = [
        (
            &c.max_connections,
            "max_connections",
            &mut out.max_connections,
            "connections",
            format!(
                "open to the service's endpoints, per worker (default {})",
                d.max_connections
            ),
        ),
        (
            &c.max_pending,
            "max_pending",
            &mut out.max_pending,
            "requests",
            format!(
                "waiting for a connection, per worker (default {})",
                d.max_pending
            ),
        ),
        (
            &c.max_requests,
            "max_requests",
            &mut out.max_requests,
            "requests",
            format!("in flight, per worker (default {})", d.max_requests),
        ),
    ];
    let mut ok = true;
    for (val, name, slot, unit, what) in keys {
        ok &= count_into(
            v,
            val,
            slot,
            format!("{k}.circuit_breaker.{name}"),
            unit,
            1..=CIRCUIT_BREAKER_MAX,
            &what,
        );
    }
    ok.then_some(out)
}

/// `outlier`: `Some(None)` for `enabled = false`, `None` when a key is bad (each reported).
fn compile_outlier(v: &mut V<'_>, o: &Sp<schema::Outlier>, k: &str) -> Option<Option<OutlierRt>> {
    let key = |name: &str| format!("{k}.outlier.{name}");
    if o.enabled.as_ref().is_some_and(|e| !e.value) {
        // Off: every other key would do nothing.
        let spans = [
            (
                "consecutive_failures",
                o.consecutive_failures.as_ref().map(|x| &x.span),
            ),
            ("interval", o.interval.as_ref().map(|x| &x.span)),
            ("base_ejection", o.base_ejection.as_ref().map(|x| &x.span)),
            (
                "max_ejected_percent",
                o.max_ejected_percent.as_ref().map(|x| &x.span),
            ),
            (
                "panic_threshold",
                o.panic_threshold.as_ref().map(|x| &x.span),
            ),
            (
                "success_rate_min_requests",
                o.success_rate_min_requests.as_ref().map(|x| &x.span),
            ),
            (
                "success_rate_stdev_factor",
                o.success_rate_stdev_factor.as_ref().map(|x| &x.span),
            ),
        ];
        let mut ok = true;
        for (name, span) in spans {
            if let Some(span) = span {
                v.err(
                    span,
                    key(name),
                    format!("{name} does nothing with enabled = false"),
                )
                .set_hint("remove it, or remove enabled = false");
                ok = false;
            }
        }
        return ok.then_some(None);
    }
    let mut out = OutlierRt::default();
    let d = OutlierRt::default();
    let mut ok = true;
    ok &= count_into(
        v,
        &o.consecutive_failures,
        &mut out.consecutive_failures,
        key("consecutive_failures"),
        "failures",
        0..=OUTLIER_COUNT_MAX,
        &format!(
            "in a row that eject an endpoint; 0: this rule is off (default {})",
            d.consecutive_failures
        ),
    );
    ok &= duration_into(v, &o.interval, &mut out.interval, key("interval"));
    ok &= duration_into(
        v,
        &o.base_ejection,
        &mut out.base_ejection,
        key("base_ejection"),
    );
    for (val, name, slot, what) in [
        (
            &o.max_ejected_percent,
            "max_ejected_percent",
            &mut out.max_ejected_percent,
            "of the service's endpoints ejected at once",
        ),
        (
            &o.panic_threshold,
            "panic_threshold",
            &mut out.panic_threshold,
            "of healthy endpoints, below which all of them are balanced over",
        ),
    ] {
        let Some(val) = val else {
            continue;
        };
        let what = format!("{what} (default {})", *slot);
        match check_count(v, val, key(name), "%", 0..=100, &what) {
            // Within 0..=100.
            Some(x) => *slot = x as u8,
            None => ok = false,
        }
    }
    ok &= count_into(
        v,
        &o.success_rate_min_requests,
        &mut out.success_rate_min_requests,
        key("success_rate_min_requests"),
        "requests",
        0..=OUTLIER_COUNT_MAX,
        &format!(
            "in an interval for an endpoint's success rate to be judged; 0: success-rate \
             ejection is off (default {})",
            d.success_rate_min_requests
        ),
    );
    if let Some(f) = &o.success_rate_stdev_factor {
        if f.value.is_finite() && f.value > 0.0 {
            out.success_rate_stdev_factor = f.value;
        } else {
            out_of_range(
                v,
                &f.span,
                key("success_rate_stdev_factor"),
                format!("a factor of {}", f.value),
                format!(
                    "a finite number above 0.0: standard deviations below the mean success \
                     rate (default {})",
                    d.success_rate_stdev_factor
                ),
            );
            ok = false;
        }
    }
    ok.then_some(Some(out))
}

/// `health_check`: exactly one probe (`http` or `tcp = true`), the rest over the defaults;
/// `None` when anything is bad (each reported).
fn compile_health_check(
    v: &mut V<'_>,
    h: &Sp<schema::HealthCheck>,
    k: &str,
) -> Option<HealthCheckRt> {
    let key = |name: &str| format!("{k}.health_check.{name}");
    let mut ok = true;
    let http = h.http.as_ref().map(|x| compile_http_probe(v, x, k));
    let probe = match (http, &h.tcp) {
        (http, Some(t)) if !t.value => {
            let hint = if http.is_some() {
                "remove it"
            } else {
                "write tcp = true for a TCP probe, or http = { path = \"/healthz\" } for an HTTP one"
            };
            v.err(&t.span, key("tcp"), "tcp = false does nothing")
                .set_hint(hint);
            None
        }
        (Some(_), Some(t)) => {
            v.err(
                &t.span,
                key("tcp"),
                "a health check probes with http or tcp, not both",
            )
            .set_hint("remove one of them");
            None
        }
        (Some(p), None) => p,
        (None, Some(_)) => Some(HealthProbe::Tcp),
        (None, None) => {
            v.err(
                &h.span,
                format!("{k}.health_check"),
                "the health check has no probe",
            )
            .set_hint("add http = { path = \"/healthz\" } or tcp = true");
            None
        }
    };
    let mut interval = HEALTH_INTERVAL;
    let mut timeout = HEALTH_TIMEOUT;
    let intervals_ok = duration_into(v, &h.interval, &mut interval, key("interval"))
        & duration_into(v, &h.timeout, &mut timeout, key("timeout"));
    if intervals_ok && timeout >= interval {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        // At the key written: the timeout if it is, else the interval that undercuts the
        // default timeout (the defaults themselves are in order).
        let (span, name) = match (&h.timeout, &h.interval) {
            (Some(t), _) => (&t.span, "timeout"),
            (None, Some(i)) => (&i.span, "interval"),
            (None, None) => (&h.span, "timeout"),
        };
        v.err(
            span,
            key(name),
            format!(
                "the timeout ({}) is not shorter than the interval ({})",
                show(timeout),
                show(interval)
            ),
        )
        .set_hint(format!(
            "a probe must end before the next starts: timeout below interval (defaults {} and {})",
            show(HEALTH_TIMEOUT),
            show(HEALTH_INTERVAL)
        ));
        ok = false;
    }
    ok &= intervals_ok;
    let mut unhealthy = HEALTH_UNHEALTHY;
    let mut healthy = HEALTH_HEALTHY;
    ok &= count_into(
        v,
        &h.unhealthy,
        &mut unhealthy,
        key("unhealthy"),
        "probes",
        1..=HEALTH_THRESHOLD_MAX,
        &format!("failed in a row that make an endpoint unhealthy (default {HEALTH_UNHEALTHY})"),
    );
    ok &= count_into(
        v,
        &h.healthy,
        &mut healthy,
        key("healthy"),
        "probes",
        1..=HEALTH_THRESHOLD_MAX,
        &format!("passed in a row that make an endpoint healthy again (default {HEALTH_HEALTHY})"),
    );
    let probe = probe?;
    ok.then_some(HealthCheckRt {
        probe,
        interval,
        timeout,
        unhealthy,
        healthy,
    })
}

/// `health_check.http`: its path checked, its statuses in range (default `[200]`, duplicates
/// dropped).
fn compile_http_probe(v: &mut V<'_>, h: &Sp<schema::HttpCheck>, k: &str) -> Option<HealthProbe> {
    let key = format!("{k}.health_check.http.path");
    let mut ok = match &h.path {
        Some(p) => check_probe_path(v, p, key),
        None => {
            v.err(&h.span, key, "missing")
                .set_hint("the request target probed, e.g. path = \"/healthz\"");
            false
        }
    };
    let mut expect = Vec::new();
    match &h.expect {
        None => expect.push(200),
        Some(list) if list.is_empty() => {
            v.err(
                &h.span,
                format!("{k}.health_check.http.expect"),
                "expect lists no status",
            )
            .set_hint("list the statuses that mean healthy, e.g. expect = [200] (the default)");
            ok = false;
        }
        Some(list) => {
            for (j, st) in list.iter().enumerate() {
                match u16::try_from(st.value) {
                    Ok(c) if (100..600).contains(&c) => {
                        if !expect.contains(&c) {
                            expect.push(c);
                        }
                    }
                    _ => {
                        out_of_range(
                            v,
                            &st.span,
                            format!("{k}.health_check.http.expect[{j}]"),
                            format!("status {}", st.value),
                            "a status from 100 to 599".into(),
                        );
                        ok = false;
                    }
                }
            }
        }
    }
    let path = h.path.as_ref().map(|p| p.value.clone());
    path.filter(|_| ok)
        .map(|path| HealthProbe::Http { path, expect })
}

/// RFC 3986 characters of a request target besides letters and digits: unreserved,
/// sub-delims, `:`, `@`, `/`, `?` and `%` (which must start an escape).
const TARGET_PUNCT: &[u8] = b"-._~!$&'()*+,;=:@/?%";

/// A health check's request target: origin-form (`/path`, optionally `?query`), characters a
/// request line can carry as they are, at most [`HEALTH_PATH_MAX`] bytes.
fn check_probe_path(v: &mut V<'_>, p: &Sp<String>, key: String) -> bool {
    let s = p.as_str();
    let bytes = s.as_bytes();
    let bad_escape = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !s.starts_with('/') {
        v.err(&p.span, key, format!("path {s:?} does not start with '/'"))
            .set_hint(format!("write \"/{s}\""));
    } else if s.len() > HEALTH_PATH_MAX {
        v.err(
            &p.span,
            key,
            format!("path is longer than {HEALTH_PATH_MAX} bytes"),
        )
        .set_hint(format!(
            "at most {HEALTH_PATH_MAX} bytes, the query included"
        ));
    } else if let Some(c) = s.chars().find(|&c| {
        !(c.is_ascii_alphanumeric() || (c.is_ascii() && TARGET_PUNCT.contains(&(c as u8))))
    }) {
        v.err(
            &p.span,
            key,
            format!("path {s:?} has a character a request target cannot carry: {c:?}"),
        )
        .set_hint("percent-encode it (RFC 3986), e.g. a space as %20");
    } else if bad_escape {
        v.err(&p.span, key, format!("path {s:?} has a malformed %-escape"))
            .set_hint("'%' starts an escape of two hex digits; write '%' itself as %25");
    } else {
        return true;
    }
    false
}

fn compile_pool(v: &mut V<'_>, p: &Sp<schema::Pool>, k: &str) -> Option<PoolRt> {
    let mut out = PoolRt::default();
    let d = PoolRt::default();
    let key = |name: &str| format!("{k}.pool.{name}");
    let mut ok = count_into(
        v,
        &p.max_idle_per_endpoint,
        &mut out.max_idle_per_endpoint,
        key("max_idle_per_endpoint"),
        "connections",
        0..=POOL_IDLE_MAX,
        &format!(
            "kept idle per endpoint, per worker; 0: no pooling (default {})",
            d.max_idle_per_endpoint
        ),
    );
    ok &= duration_into(
        v,
        &p.idle_timeout,
        &mut out.idle_timeout,
        key("idle_timeout"),
    );
    ok &= count_into(
        v,
        &p.max_requests,
        &mut out.max_requests,
        key("max_requests"),
        "requests",
        1..=POOL_REQUESTS_MAX,
        &format!("carried by one connection (default {})", d.max_requests),
    );
    ok &= duration_into(
        v,
        &p.max_lifetime,
        &mut out.max_lifetime,
        key("max_lifetime"),
    );
    ok.then_some(out)
}

/// Upper bound of a listener's `max_connections`.
const MAX_CONNECTIONS_MAX: u32 = 1_000_000;

/// A listener's `max_connections` and `max_connections_per_source` over the defaults;
/// `None` when either is bad (each reported).
fn compile_connection_caps(
    v: &mut V<'_>,
    l: &schema::Listener,
    proto: Protocol,
    k: &str,
) -> Option<(u32, u32)> {
    let mut ok = true;
    let mut check =
        |v: &mut V<'_>, val: &Sp<i64>, name: &str, max: u32, default: u32| match u32::try_from(
            val.value,
        ) {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                v.err(
                    &val.span,
                    format!("{k}.{name}"),
                    format!("{} connections is out of range", val.value),
                )
                .set_hint(format!("from 1 to {max} (default {default})"));
                ok = false;
                default
            }
        };
    let max = match &l.max_connections {
        Some(m) => check(
            v,
            m,
            "max_connections",
            MAX_CONNECTIONS_MAX,
            DEFAULT_MAX_CONNECTIONS,
        ),
        None => DEFAULT_MAX_CONNECTIONS,
    };
    let default_per_source = if proto == Protocol::Mesh {
        max
    } else {
        DEFAULT_MAX_CONNECTIONS_PER_SOURCE.min(max)
    };
    let per_source = match &l.max_connections_per_source {
        Some(m) => check(v, m, "max_connections_per_source", max, default_per_source),
        None => default_per_source,
    };
    ok.then_some((max, per_source))
}

/// A listener's `keepalive` table over the defaults; `None` when any key is bad (each reported).
fn compile_keepalive(v: &mut V<'_>, ka: &Sp<schema::Keepalive>, k: &str) -> Option<KeepaliveRt> {
    let mut out = KeepaliveRt::default();
    let mut ok = true;
    for (val, name, slot) in [
        (&ka.idle, "idle", &mut out.idle),
        (&ka.interval, "interval", &mut out.interval),
    ] {
        if let Some(val) = val {
            match check_duration(v, val, &format!("{k}.keepalive.{name}")) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    if let Some(p) = &ka.probes {
        match u32::try_from(p.value) {
            Ok(n) if (KEEPALIVE_PROBES_MIN..=KEEPALIVE_PROBES_MAX).contains(&n) => out.probes = n,
            _ => {
                let hint = format!(
                    "from {KEEPALIVE_PROBES_MIN} to {KEEPALIVE_PROBES_MAX} unanswered probes \
                     before the reset (default {})",
                    KeepaliveRt::default().probes
                );
                v.err(
                    &p.span,
                    format!("{k}.keepalive.probes"),
                    format!("{} probes is out of range", p.value),
                )
                .set_hint(hint);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A listener's `timeouts` table over the defaults; `None` when any key is bad (each reported).
fn compile_timeouts(v: &mut V<'_>, t: &Sp<schema::Timeouts>, k: &str) -> Option<Timeouts> {
    let mut out = Timeouts::default();
    let mut ok = true;
    let keys: [(&Option<Sp<String>>, &str, &mut Duration); 7] = [
        (&t.request_head, "request_head", &mut out.request_head),
        (&t.idle, "idle", &mut out.idle),
        (&t.request, "request", &mut out.request),
        (&t.connect, "connect", &mut out.connect),
        (&t.handshake, "handshake", &mut out.handshake),
        (&t.body_stall, "body_stall", &mut out.body_stall),
        (&t.tcp_idle, "tcp_idle", &mut out.tcp_idle),
    ];
    for (val, name, slot) in keys {
        if let Some(val) = val {
            match check_duration(v, val, &format!("{k}.timeouts.{name}")) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    ok.then_some(out)
}
