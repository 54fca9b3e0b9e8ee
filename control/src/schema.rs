//! The mesh tables as written in `tables.toml`.
//!
//! Every struct denies unknown keys: nothing is accepted that does nothing. Defaults
//! are stated on each field. Values that need parsing (addresses, CIDRs, regexes,
//! SPIFFE IDs) are kept as written here, with their spans, and checked by
//! [`crate::validate`], which can then point at them.
//!
//! ```toml
//! [[identity]]                      # a workload this gateway speaks for
//! id = "spiffe://corp.mesh/sa/checkout"
//! sources = ["10.10.1.0/24"]
//! cert = "ids/checkout/cert.pem"    # relative to the tables file
//! key = "ids/checkout/key.pem"
//!
//! [[peer]]
//! name = "gw-b"
//! address = "10.10.2.2:15443"
//! identity = "spiffe://corp.mesh/gateway/gw-b"
//!
//! [[listener]]
//! name = "apps"
//! bind = "10.10.1.1:80"
//! protocol = "http"
//!
//! [[service]]
//! name = "reviews"
//! endpoints = [ { address = "10.10.3.2:8080", via = "gw-b", labels = { version = "v1" } } ]
//! load_balancer = "p2c-ewma"
//!
//! [[route]]
//! service = "reviews"
//! match = { path = { prefix = "/api" }, headers = { city = "berlin" } }
//! backends = [ { labels = { version = "v1" }, weight = 100 } ]
//!
//! [[authorization]]
//! service = "reviews"
//! allow = ["spiffe://corp.mesh/sa/checkout"]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::de::Sp;

/// A whole tables file. Every section is optional and defaults to empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tables {
    /// The mesh's trusted roots. Required once a mesh listener or an endpoint behind a
    /// peer exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<Sp<Trust>>,
    #[serde(default, rename = "identity", skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<Sp<Identity>>,
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Sp<Peer>>,
    #[serde(default, rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Sp<Listener>>,
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Sp<Service>>,
    #[serde(default, rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Sp<Route>>,
    #[serde(
        default,
        rename = "authorization",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub authorizations: Vec<Sp<Authorization>>,
}

impl Tables {
    /// TOML in the layout of the examples: one `[[section]]` per entry, everything
    /// inside an entry written inline.
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, numbers and maps cannot fail.
        let text = toml::to_string(self).unwrap_or_default();
        let Ok(mut doc) = text.parse::<toml_edit::DocumentMut>() else {
            return text;
        };
        for (_, item) in doc.iter_mut() {
            if let Some(entries) = item.as_array_of_tables_mut() {
                for t in entries.iter_mut() {
                    for (mut k, v) in t.iter_mut() {
                        if v.is_table() || v.is_array_of_tables() {
                            k.leaf_decor_mut().set_suffix(" ");
                        }
                        inline(v);
                    }
                }
            }
        }
        doc.to_string()
    }
}

/// Turn a (sub)table or array of tables into an inline table or array of them.
fn inline(item: &mut toml_edit::Item) {
    use toml_edit::{Item, Value};
    let taken = std::mem::take(item);
    *item = match taken {
        Item::Table(t) => {
            let mut it = t.into_inline_table();
            for (_, v) in it.iter_mut() {
                inline_value(v);
            }
            Item::Value(Value::InlineTable(it))
        }
        Item::ArrayOfTables(a) => {
            let mut arr = a.into_array();
            for v in arr.iter_mut() {
                inline_value(v);
            }
            Item::Value(Value::Array(arr))
        }
        Item::Value(mut v) => {
            inline_value(&mut v);
            Item::Value(v)
        }
        Item::None => Item::None,
    };
}

fn inline_value(v: &mut toml_edit::Value) {
    match v {
        toml_edit::Value::InlineTable(t) => {
            for (_, x) in t.iter_mut() {
                inline_value(x);
            }
        }
        toml_edit::Value::Array(a) => {
            for x in a.iter_mut() {
                inline_value(x);
            }
        }
        _ => {}
    }
}

/// A workload identity this gateway holds a certificate for. Outbound connections
/// from `sources` are originated with this identity.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// SPIFFE ID, `spiffe://trust-domain/path`; must equal the certificate's URI SAN.
    pub id: Sp<String>,
    /// Source CIDRs this identity speaks for (longest prefix wins). Default: none,
    /// e.g. for the gateway's own identity on a mesh listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Sp<String>>,
    /// PEM certificate chain, leaf first; relative paths are relative to the tables file.
    pub cert: Sp<String>,
    /// PEM PKCS#8 private key matching the leaf certificate.
    pub key: Sp<String>,
}

/// Another gateway.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: Sp<String>,
    /// `IP:PORT` of its mesh listener.
    pub address: Sp<String>,
    /// The SPIFFE ID its certificate must carry.
    pub identity: Sp<String>,
    /// Idle mTLS hops to this peer that each worker keeps open, ready for requests (warm-up).
    /// 0 to 1,000; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_idle: Option<Sp<i64>>,
    /// `IP:PORT` of its admin API, where `xdpmesh check --all` checks it too. Default: none
    /// (the check proves the peer by an mTLS handshake only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Sp<String>>,
    /// How HTTP requests cross the mTLS hop to this peer: `http1` (default: a connection per
    /// request in flight, pooled after) or `h2` (ALPN `h2`: each request a stream on a few
    /// connections each worker shares per client identity and service). TCP listeners' hops
    /// and upgrades (WebSocket) always take a connection of their own.
    #[serde(default, skip_serializing_if = "is_default")]
    pub hop_protocol: Sp<HopProtocol>,
}

/// `[[peer]] hop_protocol`: how HTTP requests cross the hop to a peer gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HopProtocol {
    /// HTTP/2 streams inside the mTLS connection (ALPN `h2`).
    H2,
    /// HTTP/1.1 after the `XM/1` preamble, one request at a time per connection. The default:
    /// on the benchmark rig it carries more requests per second than the multiplexed hop
    /// (benches/README.md), whose HTTP/2 framing costs both gateways more than reusing
    /// pooled connections does.
    #[default]
    Http1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Plain TCP, forwarded to `service`.
    Tcp,
    /// HTTP/1.1, routed per request by Host and the route table.
    Http,
    /// mTLS from peer gateways; SNI names the service; serves `identity`'s certificate.
    Mesh,
    /// TLS 1.2 or 1.3 from outside the mesh (no client certificate), terminated with
    /// `identity`'s certificate; ALPN `h2` or `http/1.1` (the default), then routed as on
    /// `http`. The handshake is bounded by `timeouts.handshake`.
    IngressTls,
    /// Test kind: echoes bytes back.
    Echo,
    /// Test kind: reads and discards.
    Sink,
    /// Test kind: answers every HTTP request with 200 OK.
    HttpOk,
}

impl Protocol {
    pub const ALL: [Protocol; 7] = [
        Protocol::Tcp,
        Protocol::Http,
        Protocol::Mesh,
        Protocol::IngressTls,
        Protocol::Echo,
        Protocol::Sink,
        Protocol::HttpOk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Mesh => "mesh",
            Protocol::IngressTls => "ingress-tls",
            Protocol::Echo => "echo",
            Protocol::Sink => "sink",
            Protocol::HttpOk => "http-ok",
        }
    }
}

/// A socket this gateway accepts on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Sp<String>,
    /// `IP:PORT`; `0.0.0.0:PORT` means every local address.
    pub bind: Sp<String>,
    pub protocol: Sp<Protocol>,
    /// Required for `tcp` (where the bytes go); not allowed for other protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Sp<String>>,
    /// Required for `mesh` and `ingress-tls`: the SPIFFE ID of an `[[identity]]`
    /// whose certificate is served; not allowed for other protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Sp<String>>,
    /// How long each phase of a connection on this listener may take; every key optional,
    /// unset ones keep the defaults in [`Timeouts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Sp<Timeouts>>,
    /// TCP keepalive on the connections this listener accepts (see [`Keepalive`]).
    /// Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Sp<Keepalive>>,
    /// Connections open on this listener at once, all workers together; one more is reset
    /// at accept and counted as `listener_overflow`. 1 to 1,000,000; default 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Sp<i64>>,
    /// Connections one client address may have open on this listener at once; one more is
    /// reset at accept and counted as `source_overflow`. 1 to `max_connections`; default
    /// 2,500, and `max_connections` on a `mesh` listener (a peer gateway carries many
    /// clients on one address; its handshakes are bounded by `timeouts.handshake`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_source: Option<Sp<i64>>,
}

/// `keepalive = { idle = "60s", interval = "10s", probes = 6 }` on a `[[listener]]`: once
/// an accepted connection has been silent for `idle`, probe it every `interval`; after
/// `probes` unanswered probes it is reset (and the proxy ends what it carried). Every key
/// is optional, with the defaults shown, once the table is present; without the table,
/// keepalive is off. Durations as in [`Timeouts`] (1 ms to 7 days), `probes` from 1 to 100.
/// Applies to `tcp`, `http` and `mesh` listeners; the kernel backend sets the socket's
/// `SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL` and `TCP_KEEPCNT`, in whole seconds
/// (rounded up, at most 32767 s).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Any integer decodes, so that one out of range gets the range in its error.
    pub probes: Option<Sp<i64>>,
}

/// `timeouts = { ... }` on a `[[listener]]`: durations like `"10s"`, `"500ms"`, `"1h"`
/// (from 1 ms to 7 days). The defaults, and what happens on expiry:
///
/// | key | default | covers | on expiry |
/// |---|---|---|---|
/// | `request_head` | 10 s | first byte of a request head to its end; on `ingress-tls`, also the end of the TLS handshake to the first request head or HTTP/2 preface | 408, close |
/// | `idle` | 60 s | a keep-alive client connection between requests | close |
/// | `request` | 15 s | from the end of the request (head, or body when it has one) to the response head, all attempts | 504 |
/// | `connect` | 2 s | upstream SYN to established, TLS handshake included on mesh hops | next attempt, else 503 |
/// | `handshake` | 5 s | `mesh` listener: TLS handshake and preamble; `ingress-tls`: TLS handshake | close |
/// | `body_stall` | 30 s | no byte handed on to the client or the upstream while a body is owed (a server that reads nothing stalls an upload even while the client still fills the gateway's buffers) | cut |
/// | `tcp_idle` | 1 h | `tcp` listener (and `tcp` mesh hops): no byte either way | close both sides |
///
/// A `[[route]]`'s `timeout` (or `timeouts = { request, connect, body_stall }`) overrides
/// those for the requests it routes.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_head: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_stall: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_idle: Option<Sp<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    P2cEwma,
    /// Consistent hashing on `hash_key`.
    RingHash,
}

/// `[trust]`: the CA certificates (PEM) that mesh peers' certificates must chain to, as
/// files relative to the tables file. List the old and the new root together while
/// rotating the mesh CA.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    pub roots: Vec<Sp<String>>,
}

/// A logical service: a set of endpoints, local or behind a peer gateway.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Sp<String>,
    /// Extra HTTP Host names (and TLS SNI names) that mean this service; the name
    /// itself always does. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Sp<String>>,
    /// Default: none (a service that only routes elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Sp<Endpoint>>,
    /// Default: `round-robin`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub load_balancer: Sp<LbPolicy>,
    /// Only with `ring-hash`: `source-ip` (default), `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<Sp<String>>,
    /// The default `retries`, `fault`, `rate_limit` and `mirror` of the routes to this
    /// service (a route's own table replaces the service's whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Sp<Retries>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Sp<Fault>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Sp<RateLimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Sp<Mirror>>,
    /// Caps the retries of requests to this service (see [`RetryBudget`]); default: the
    /// defaults shown there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<Sp<RetryBudget>>,
    /// Caps on connections and requests to this service (see [`CircuitBreaker`]); default:
    /// the defaults shown there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<Sp<CircuitBreaker>>,
    /// Passive outlier detection (see [`Outlier`]); default: on, with the defaults shown there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Sp<Outlier>>,
    /// Active health checks (see [`HealthCheck`]); default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Sp<HealthCheck>>,
    /// Idle upstream connections kept for reuse (see [`Pool`]); default: the defaults shown
    /// there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Sp<Pool>>,
    /// What the endpoints this gateway reaches directly (no `via`) speak: `http1` (default)
    /// or `h2c` (HTTP/2 over cleartext with prior knowledge, RFC 9113 §3.3: the gateway's
    /// requests become streams on shared connections). Endpoints behind a peer are that
    /// peer's to speak to. Not with a `tcp` listener's service (bytes are piped, not
    /// translated), and one address speaks one protocol across all services.
    #[serde(default, skip_serializing_if = "is_default")]
    pub upstream_protocol: Sp<UpstreamProtocol>,
}

/// `[[service]] upstream_protocol`: how the gateway talks to the service's local endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (and whatever bytes a `tcp` listener pipes).
    #[default]
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:PORT`.
    pub address: Sp<String>,
    /// Name of the `[[peer]]` gateway in front of this endpoint; absent = reached directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Sp<String>>,
    /// Default: none.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Relative share for weighted load balancers. Default: 1; 0 = drained.
    #[serde(default = "one")]
    pub weight: Sp<u32>,
}

/// `labels = { key = "value", ... }`, kept sorted by key. A few pairs in one
/// vector: a `BTreeMap` node is ~550 bytes however few keys it holds, which made
/// labels most of the memory of a big table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Every pair, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `key` set to `value`, as a map insert does.
    pub fn insert(&mut self, key: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(it: I) -> Self {
        let mut l = Labels::default();
        for (k, v) in it {
            l.insert(k.into(), v.into());
        }
        l
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Labels, A::Error> {
                let mut l = Labels(Vec::with_capacity(m.size_hint().unwrap_or(0).min(16)));
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    l.insert(k, v);
                }
                Ok(l)
            }
        }
        d.deserialize_map(V)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn one() -> Sp<u32> {
    Sp::new(1)
}

/// An HTTP route. Routes of a service are tried in file order; the first match wins.
/// A request whose Host names a service and that matches no route goes to all the
/// service's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional name, for metrics and messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Sp<String>>,
    /// The service whose requests this route applies to (by Host), and whose
    /// endpoints `labels` backends select from.
    pub service: Sp<String>,
    /// Default: match everything.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Sp<RouteMatch>>,
    /// Default: all endpoints of `service`, weight 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Sp<Backend>>,
    /// The request timeout (`"3s"`): from the end of the request to the response head, all
    /// attempts included; overrides the listener's `timeouts.request` (default 15 s). Expiry:
    /// 504. The same as `timeouts.request`; give one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Sp<String>>,
    /// The timeouts of a routed request that a route may override: `request`, `connect`,
    /// `body_stall` (see [`Timeouts`]; the connection-level ones stay the listener's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Sp<RouteTimeouts>>,
    /// Retries of the requests this route carries (see [`Retries`]); default: the service's
    /// `retries`, else none beyond the core's connect retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Sp<Retries>>,
    /// Injected aborts and delays (see [`Fault`]); default: the service's `fault`, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Sp<Fault>>,
    /// A request rate limit (see [`RateLimit`]); default: the service's `rate_limit`, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Sp<RateLimit>>,
    /// Copies of requests sent to another service (see [`Mirror`]); default: the service's
    /// `mirror`, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Sp<Mirror>>,
}

/// `retries = { ... }` on a `[[route]]` or a `[[service]]`: when a request is tried again.
/// Every key optional once the table is present, with the defaults shown:
/// `attempts = 3` (attempts in all, the first included; 1 to 10), `per_try_timeout = "1s"`
/// (each attempt, connect included), `on = ["connect-failure", "reset", "503"]` (also
/// `timeout` — the per-try timeout —, `gateway-error` — 502, 503 or 504 from the upstream —,
/// status codes 400 to 599 as strings, and for gRPC calls the `grpc-status` of a response
/// that carries it in its head (a trailers-only response): `cancelled`, `deadline-exceeded`,
/// `internal`, `resource-exhausted`, `unavailable`; these retry a gRPC call whatever
/// `methods` says, as gRPC's own retry policy does), `backoff = "25ms"` (full jitter, doubling per
/// retry, at most 10× this), `methods = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]` (others
/// are retried only on `connect-failure`, when nothing was sent), `buffer = 65536` (bytes of
/// request body kept for a retry; a longer body is not retried but on connect failure).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<Sp<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<Sp<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<Sp<i64>>,
}

/// `fault = { abort = { percent, status }, delay = { percent, duration }, headers = {...} }`
/// on a `[[route]]` or a `[[service]]`: for chaos tests. `abort` answers `status` (200 to
/// 599) to `percent` % of the requests without contacting an upstream; `delay` holds
/// `percent` % for `duration` before routing them. With `headers` (as in `match.headers`),
/// only requests carrying them are touched. Give `abort`, `delay` or both.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Sp<FaultAbort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Sp<FaultDelay>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Sp<HeaderMatch>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// 0.0 to 100.0.
    pub percent: Sp<f64>,
    pub status: Sp<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// 0.0 to 100.0.
    pub percent: Sp<f64>,
    /// A duration like `"100ms"` (1 ms to 7 days).
    pub duration: Sp<String>,
}

/// `rate_limit = { requests_per_second = 500, burst = 100, per = "route" }` on a `[[route]]`
/// or a `[[service]]`: a token bucket; a request over it gets 429 with `Retry-After`.
/// `requests_per_second` is required (1 to 1,000,000); `burst` defaults to it (1 to
/// 1,000,000); `per` is `route` (default: one bucket for the route) or `source-identity`
/// (one per caller SPIFFE ID). Each worker keeps its own buckets at the rate divided by the
/// number of workers.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<Sp<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Sp<String>>,
}

/// `mirror = { service = "web-shadow", percent = 100.0 }` on a `[[route]]` or a `[[service]]`:
/// a copy of `percent` % of the requests (drawn per request) goes to `service`, the name of a
/// `[[service]]` (the route's own allowed; one with no endpoints too, its copies are counted
/// as skipped), once the original request was received whole; the copy's response is read
/// and discarded, never reaching the client. `service` is required; `percent` is above 0.0
/// and at most 100.0, default 100.0.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The `[[service]]` the copies go to, to an endpoint its balancer picks. Required.
    pub service: Sp<String>,
    /// Above 0.0, at most 100.0. Default: 100.0 (every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Sp<f64>>,
}

/// `retry_budget = { ratio = 0.2, min_per_second = 10, ttl = "10s" }` on a `[[service]]`
/// (Linkerd's model, defaults shown, every key optional): retries to the service may add at
/// most `ratio` of its requests over the last `ttl`, plus `min_per_second` retries a second.
/// Kept per worker.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Sp<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<Sp<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Sp<String>>,
}

/// `circuit_breaker = { max_connections = 1024, max_pending = 256, max_requests = 1024 }` on a
/// `[[service]]` (defaults shown, every key optional, each 1 to 1,000,000): upstream
/// connections open to the service's endpoints (in use or idle in the pool), requests waiting
/// for a connection, and requests in flight. Beyond any of them a request gets 503 at once.
/// Counted per worker, like the rate limit.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Any integer decodes, so that one out of range gets the range in its error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<Sp<i64>>,
}

/// `outlier = { ... }` on a `[[service]]`: passive outlier detection from the outcomes of
/// requests' attempts, kept per worker. On by default with these values (every key optional):
///
/// | key | default | range | |
/// |---|---|---|---|
/// | `enabled` | `true` | | `false` turns outlier detection off (then no other key) |
/// | `consecutive_failures` | 5 | 0 to 1,000,000 | failures in a row that eject an endpoint; 0: this rule is off |
/// | `interval` | `"10s"` | 1 ms to 7 days | how often success rates are judged, over what window |
/// | `base_ejection` | `"30s"` | 1 ms to 7 days | the first ejection's length; the n-th lasts n times as long |
/// | `max_ejected_percent` | 50 | 0 to 100 | at most this share of the service's endpoints ejected at once |
/// | `panic_threshold` | 50 | 0 to 100 | below this share of healthy endpoints, balance over all |
/// | `success_rate_min_requests` | 100 | 0 to 1,000,000 | requests in an interval for an endpoint's success rate to be judged; 0: success-rate ejection is off |
/// | `success_rate_stdev_factor` | 1.9 | above 0, finite | eject an endpoint whose rate is this many standard deviations below the mean |
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<Sp<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_min_requests: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_stdev_factor: Option<Sp<f64>>,
}

/// `health_check = { http = { path = "/healthz", expect = [200] }, interval = "5s",
/// timeout = "1s", unhealthy = 3, healthy = 2 }` on a `[[service]]`, or `tcp = true` in place
/// of `http`: active probes of the service's endpoints, run by the gateway that owns them (for
/// endpoints without `via`). Off without the table. Exactly one of `http` (a `GET path`
/// answered with a status in `expect`; `path` required, an origin-form target of at most
/// 1024 bytes; `expect` default `[200]`, statuses 100 to 599) and `tcp = true` (the handshake
/// completes). The rest optional with the defaults shown: `interval` and `timeout` durations
/// (1 ms to 7 days, `timeout` shorter than `interval`); `unhealthy` failed probes in a row make
/// an endpoint unhealthy, `healthy` good ones make it healthy again (each 1 to 100).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Sp<HttpCheck>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Sp<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<Sp<i64>>,
}

/// `http = { path = "/healthz", expect = [200] }` in a `health_check`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// The request target: starts with `/`; letters, digits and the other characters of RFC
    /// 3986 (`%` only as an escape); at most 1024 bytes. Required (checked by validation, so
    /// that a missing path is one error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Sp<String>>,
    /// The statuses that mean healthy, 100 to 599. Default: `[200]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<Sp<i64>>>,
}

/// `pool = { max_idle_per_endpoint = 64, idle_timeout = "60s", max_requests = 10000,
/// max_lifetime = "10m" }` on a `[[service]]` (defaults shown, every key optional): idle
/// upstream connections kept per worker, per endpoint and identity, and shared by the
/// worker's client connections. `max_idle_per_endpoint` 0 to 10,000 (0: no pooling);
/// `idle_timeout`: an idle connection unused this long is closed; `max_requests` (1 to
/// 10,000,000) per connection, then it is closed; `max_lifetime`: an older connection is not
/// reused. Durations from 1 ms to 7 days.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<Sp<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Sp<String>>,
}

/// `timeouts = { ... }` on a `[[route]]`: the listener's values for the requests it routes.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_stall: Option<Sp<String>>,
}

/// Every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Host header (port ignored, case-insensitive). Default: the service's names.
    /// A host that is no service's name is served by this route alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Sp<PathMatch>>,
    /// e.g. `GET`; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Sp<String>>,
    /// Header name (case-insensitive) → `"exact value"` or `{ regex = "..." }`
    /// (must match the whole value). Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Sp<HeaderMatch>>,
    /// A gRPC call (see [`GrpcMatch`]); instead of `path` and `method`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Sp<GrpcMatch>>,
}

/// `grpc = { service = "pkg.Service", method = "Method" }`: a `POST` whose `content-type`
/// is `application/grpc` (or `application/grpc+…`, `application/grpc;…`) to the path
/// `/pkg.Service/Method`, or to any method of the service when `method` is left out
/// (gRPC over HTTP/2, PROTOCOL-HTTP2.md: `:path` is `/` Service-Name `/` Method-Name).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatch {
    /// The fully qualified service name, e.g. `helloworld.Greeter`.
    pub service: Sp<String>,
    /// Default: any method of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Sp<String>>,
}

/// A header condition: a plain string is an exact match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    Exact(String),
    Regex(String),
}

impl Serialize for HeaderMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            HeaderMatch::Exact(v) => s.serialize_str(v),
            HeaderMatch::Regex(r) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("regex", r)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for HeaderMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderMatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or { regex = \"...\" }")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<HeaderMatch, E> {
                Ok(HeaderMatch::Exact(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<HeaderMatch, A::Error> {
                const KEYS: &[&str] = &["exact", "regex"];
                let mut out = None;
                while let Some(k) = m.next_key::<String>()? {
                    let v: String = m.next_value()?;
                    let hm = match k.as_str() {
                        "exact" => HeaderMatch::Exact(v),
                        "regex" => HeaderMatch::Regex(v),
                        other => return Err(A::Error::unknown_field(other, KEYS)),
                    };
                    if out.replace(hm).is_some() {
                        return Err(A::Error::custom("expected exactly one of: exact, regex"));
                    }
                }
                out.ok_or_else(|| A::Error::custom("expected exactly one of: exact, regex"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `{ exact = "/a" }`, `{ prefix = "/api" }` (whole path segments: `/api` matches
/// `/api` and `/api/x`, not `/apix`) or `{ regex = "/v[0-9]+/.*" }` (must match the
/// whole path). The query string is never part of the path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A weighted destination: endpoints of `service` (default: the route's service)
/// whose labels include all of `labels` (default: all endpoints).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Default: 1. The weights of a route must not all be 0.
    #[serde(default = "one")]
    pub weight: Sp<u32>,
}

/// Who may call a service, checked by the gateway in front of it. Once a service
/// has any rule, a caller no `allow` matches is denied. `deny` wins over `allow`.
/// Identities are exact SPIFFE IDs, `PREFIX/*`, or `*` (any authenticated peer).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    pub service: Sp<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Sp<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Sp<String>>,
    /// Limit the rule to these methods. Default: any. A TCP connection has no
    /// method, so a rule with methods or paths never allows one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Sp<String>>,
    /// Limit the rule to these paths. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<Sp<PathMatch>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_found_and_written_back() {
        let text = "[[service]]\nname = \"a\"\nendpoints = [{ address = \"10.0.0.1:80\", labels = { zone = \"b\", app = \"x\", \"ver\" = \"2\" } }]\n";
        let t: Tables = crate::fastde::decode(text).expect("decodes");
        let l = &t.services[0].endpoints[0].labels;
        let pairs: Vec<(&str, &str)> = l.iter().collect();
        assert_eq!(pairs, [("app", "x"), ("ver", "2"), ("zone", "b")]);
        assert_eq!(l.get("zone"), Some("b"));
        assert_eq!(l.get("nope"), None);
        let again: Tables = crate::fastde::decode(&t.to_toml()).expect("round trip");
        assert_eq!(again, t);
        let mut m = Labels::default();
        m.insert("k".into(), "1".into());
        m.insert("k".into(), "2".into());
        assert_eq!(m.iter().collect::<Vec<_>>(), [("k", "2")]);
    }
}
