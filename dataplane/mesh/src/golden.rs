//! Golden signals: requests by status code, latency histograms and bytes per listener,
//! route, service, endpoint and identity pair, and TCP connections likewise (issue #17).
//!
//! Counts live per worker and are written by that worker alone, so an increment is a relaxed
//! load and store, no lock and no atomic read-modify-write. A worker finds its cell through a
//! local map keyed by table indices (no string is hashed per request); a label set seen for
//! the first time is registered, under the worker's own mutex, in its [`Shard`], which a
//! scrape reads and merges across workers ([`Golden::render`]).
//!
//! Cardinality is bounded by the tables: listeners, routes, services and endpoints come from
//! them, and an identity label is one the tables name (an identity of this gateway, a peer,
//! an exact ID in an authorization rule); any other caller is `src_identity="other"`. Past
//! [`MAX_LABEL_SETS`] label sets per worker and kind, a request is counted in one cell whose
//! labels all say `overflow`, and `xdpmesh_golden_overflow_total` counts it.

use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the duration buckets, in microseconds: 50 µs to 10 s (the issue's
/// range), roughly 1-2.5-5 per decade like Prometheus's defaults.
pub const BUCKETS_US: [u64; 18] = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    u64::MAX,
];

/// Label sets per worker for each of HTTP and TCP before the overflow cell takes the rest.
pub const MAX_LABEL_SETS: usize = 4096;

/// A counter with a single writer: the worker that owns the cell.
#[derive(Default, Debug)]
pub struct Count(AtomicU64);

impl Count {
    /// Only for the worker that owns the cell (see the module doc).
    pub(crate) fn add(&self, n: u64) {
        // Only the owning worker writes, so load + store loses nothing and needs no lock.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram: per-bucket counts (not cumulative) and the sum in microseconds.
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [Count; BUCKETS_US.len()],
    sum_us: Count,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i.min(BUCKETS_US.len() - 1)].add(1);
        self.sum_us.add(us);
    }
    fn read(&self) -> ([u64; BUCKETS_US.len()], u64) {
        let mut b = [0; BUCKETS_US.len()];
        for (o, c) in b.iter_mut().zip(&self.buckets) {
            *o = c.get();
        }
        (b, self.sum_us.get())
    }
}

/// Which side of the mesh a gateway sees a request on: `outbound` on the client's gateway
/// (A), `inbound` on the server's (B, a `mesh` listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The labels shared by HTTP and TCP series. Empty strings are absent labels in PromQL
/// (`route=""` is a request no named route matched).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels {
    pub direction: Direction,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub service: Arc<str>,
    pub endpoint: Arc<str>,
    pub src_identity: Arc<str>,
    pub dst_identity: Arc<str>,
}

impl Labels {
    fn overflow() -> Self {
        let o: Arc<str> = Arc::from("overflow");
        Labels {
            direction: Direction::Outbound,
            listener: o.clone(),
            route: o.clone(),
            service: o.clone(),
            endpoint: o.clone(),
            src_identity: o.clone(),
            dst_identity: o,
        }
    }
}

/// A request's outcome as labelled: the HTTP status (0: cut) and, for a gRPC call, its
/// `grpc-status`.
pub type Code = (u16, Option<u8>);

/// One HTTP series: a label set and a status code.
#[derive(Default, Debug)]
pub struct HttpCell {
    pub requests: Count,
    pub duration: Histogram,
    pub request_bytes: Count,
    pub response_bytes: Count,
}

/// One TCP series.
#[derive(Default, Debug)]
pub struct TcpCell {
    pub opened: Count,
    pub closed_clean: Count,
    pub closed_error: Count,
    pub sent_bytes: Count,
    pub received_bytes: Count,
    pub duration: Histogram,
}

struct Registry<K, V> {
    index: FxHashMap<K, usize>,
    cells: Vec<(K, Arc<V>)>,
}

impl<K, V> Default for Registry<K, V> {
    fn default() -> Self {
        Registry {
            index: FxHashMap::default(),
            cells: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash, V: Default> Registry<K, V> {
    /// The cell of `k`, made when new; `None` when the registry is full.
    fn get_or_add(&mut self, k: &K) -> Option<Arc<V>> {
        if let Some(&i) = self.index.get(k) {
            return Some(self.cells[i].1.clone());
        }
        if self.cells.len() >= MAX_LABEL_SETS {
            return None;
        }
        let c = Arc::new(V::default());
        self.index.insert(k.clone(), self.cells.len());
        self.cells.push((k.clone(), c.clone()));
        Some(c)
    }
}

/// One worker's cells, readable by the scrape.
#[derive(Default)]
pub struct Shard {
    http: Mutex<Registry<(Labels, Code), HttpCell>>,
    tcp: Mutex<Registry<Labels, TcpCell>>,
    http_overflow: Arc<HttpCell>,
    tcp_overflow: Arc<TcpCell>,
    overflowed: Count,
}

/// Every worker's shard: what `/metrics` reads.
#[derive(Default)]
pub struct Golden {
    shards: Mutex<Vec<Arc<Shard>>>,
}

impl Golden {
    /// A new worker's recorder.
    pub fn recorder(&self) -> Recorder {
        let shard = Arc::new(Shard::default());
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shard.clone());
        Recorder {
            shard,
            http: FxHashMap::default(),
            tcp: FxHashMap::default(),
            gen: 0,
        }
    }

    /// The families in Prometheus text format 0.0.4, merged over workers.
    pub fn render(&self, out: &mut String) {
        let shards: Vec<Arc<Shard>> = self
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut http: BTreeMap<(Labels, Code), HttpSum> = BTreeMap::new();
        let mut tcp: BTreeMap<Labels, TcpSum> = BTreeMap::new();
        let mut overflowed = 0;
        for sh in &shards {
            let cells: Vec<_> = sh
                .http
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cells
                .clone();
            for (k, c) in cells
                .iter()
                .map(|(k, c)| (k.clone(), c))
                .chain([((Labels::overflow(), (0, None)), &sh.http_overflow)])
            {
                if c.requests.get() > 0 {
                    http.entry(k).or_default().add(c);
                }
            }
            let cells: Vec<_> = sh
                .tcp
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cells
                .clone();
            for (k, c) in cells
                .iter()
                .map(|(k, c)| (k.clone(), c))
                .chain([(Labels::overflow(), &sh.tcp_overflow)])
            {
                if c.opened.get() > 0 {
                    tcp.entry(k).or_default().add(c);
                }
            }
            overflowed += sh.overflowed.get();
        }
        render_http(&http, out);
        render_tcp(&tcp, out);
        let _ = write!(
            out,
            "# HELP xdpmesh_golden_overflow_total Requests and connections counted under labels \
             \"overflow\" because a worker had {MAX_LABEL_SETS} label sets already.\n\
             # TYPE xdpmesh_golden_overflow_total counter\n\
             xdpmesh_golden_overflow_total {overflowed}\n"
        );
    }
}

#[derive(Default)]
struct HttpSum {
    requests: u64,
    buckets: [u64; BUCKETS_US.len()],
    sum_us: u64,
    request_bytes: u64,
    response_bytes: u64,
}

impl HttpSum {
    fn add(&mut self, c: &HttpCell) {
        self.requests += c.requests.get();
        let (b, s) = c.duration.read();
        for (o, v) in self.buckets.iter_mut().zip(b) {
            *o += v;
        }
        self.sum_us += s;
        self.request_bytes += c.request_bytes.get();
        self.response_bytes += c.response_bytes.get();
    }
}

#[derive(Default)]
struct TcpSum {
    opened: u64,
    clean: u64,
    error: u64,
    sent: u64,
    received: u64,
    buckets: [u64; BUCKETS_US.len()],
    sum_us: u64,
}

impl TcpSum {
    fn add(&mut self, c: &TcpCell) {
        self.opened += c.opened.get();
        self.clean += c.closed_clean.get();
        self.error += c.closed_error.get();
        self.sent += c.sent_bytes.get();
        self.received += c.received_bytes.get();
        let (b, s) = c.duration.read();
        for (o, v) in self.buckets.iter_mut().zip(b) {
            *o += v;
        }
        self.sum_us += s;
    }
}

/// A label value, escaped as the text format asks (backslash, quote, newline).
fn esc(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

fn labels(l: &Labels) -> String {
    format!(
        "direction=\"{}\",listener=\"{}\",route=\"{}\",service=\"{}\",endpoint=\"{}\",\
         src_identity=\"{}\",dst_identity=\"{}\"",
        l.direction.label(),
        esc(&l.listener),
        esc(&l.route),
        esc(&l.service),
        esc(&l.endpoint),
        esc(&l.src_identity),
        esc(&l.dst_identity)
    )
}

/// 5xx and gateway-made errors are failures, as Linkerd's `classification` has it.
fn class(code: u16) -> (&'static str, &'static str) {
    match code {
        0 => ("cut", "failure"),
        100..=199 => ("1xx", "success"),
        200..=299 => ("2xx", "success"),
        300..=399 => ("3xx", "success"),
        400..=499 => ("4xx", "success"),
        _ => ("5xx", "failure"),
    }
}

fn histogram(out: &mut String, name: &str, l: &str, buckets: &[u64], sum_us: u64, count: u64) {
    let mut acc = 0;
    for (i, b) in buckets.iter().enumerate() {
        acc += b;
        let le = match BUCKETS_US[i] {
            u64::MAX => "+Inf".to_string(),
            us => format!("{}", us as f64 / 1e6),
        };
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {acc}");
    }
    let _ = writeln!(out, "{name}_sum{{{l}}} {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{l}}} {count}");
}

fn render_http(http: &BTreeMap<(Labels, Code), HttpSum>, out: &mut String) {
    let fams: [(&str, &str, &str); 4] = [
        (
            "xdpmesh_requests_total",
            "counter",
            "HTTP requests by status code (code 0: the response was cut); class and \
             classification (5xx and cuts are failures) as Linkerd has them. A gRPC call \
             also has grpc_status, and is a failure unless it is 0 (OK).",
        ),
        (
            "xdpmesh_request_duration_seconds",
            "histogram",
            "From a request's head to its response's end (or its error), as the gateway saw it.",
        ),
        (
            "xdpmesh_request_bytes_total",
            "counter",
            "HTTP request body bytes from clients.",
        ),
        (
            "xdpmesh_response_bytes_total",
            "counter",
            "HTTP response body bytes to clients.",
        ),
    ];
    for (name, kind, help) in fams {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for ((l, (code, grpc)), s) in http {
            let (cls, mut outcome) = class(*code);
            let mut l = labels(l);
            if let Some(g) = grpc {
                // Linkerd's classification of gRPC: by grpc-status, whatever the HTTP status.
                if *g != 0 {
                    outcome = "failure";
                }
                let _ = write!(l, ",grpc_status=\"{g}\"");
            }
            let l = format!("{l},code=\"{code}\",class=\"{cls}\",classification=\"{outcome}\"");
            match name {
                "xdpmesh_requests_total" => {
                    let _ = writeln!(out, "{name}{{{l}}} {}", s.requests);
                }
                "xdpmesh_request_duration_seconds" => {
                    histogram(out, name, &l, &s.buckets, s.sum_us, s.requests)
                }
                "xdpmesh_request_bytes_total" => {
                    let _ = writeln!(out, "{name}{{{l}}} {}", s.request_bytes);
                }
                _ => {
                    let _ = writeln!(out, "{name}{{{l}}} {}", s.response_bytes);
                }
            }
        }
    }
}

/// A family's name, type, help and value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TcpSum) -> String,
);

fn render_tcp(tcp: &BTreeMap<Labels, TcpSum>, out: &mut String) {
    let simple: [Family; 4] = [
        (
            "xdpmesh_tcp_connections_opened_total",
            "counter",
            "Proxied TCP connections whose upstream connected.",
            |s| s.opened.to_string(),
        ),
        (
            "xdpmesh_tcp_connections_active",
            "gauge",
            "Proxied TCP connections open now.",
            |s| (s.opened.saturating_sub(s.clean + s.error)).to_string(),
        ),
        (
            "xdpmesh_tcp_sent_bytes_total",
            "counter",
            "Proxied TCP bytes sent to the upstream (client to server).",
            |s| s.sent.to_string(),
        ),
        (
            "xdpmesh_tcp_received_bytes_total",
            "counter",
            "Proxied TCP bytes received from the upstream (server to client).",
            |s| s.received.to_string(),
        ),
    ];
    for (name, kind, help, v) in simple {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (l, s) in tcp {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(l), v(s));
        }
    }
    let name = "xdpmesh_tcp_connections_closed_total";
    let _ = write!(
        out,
        "# HELP {name} Proxied TCP connections closed, by outcome (clean: both sides finished; \
         error: reset, timeout or cut).\n# TYPE {name} counter\n"
    );
    for (l, s) in tcp {
        let l = labels(l);
        let _ = writeln!(out, "{name}{{{l},outcome=\"clean\"}} {}", s.clean);
        let _ = writeln!(out, "{name}{{{l},outcome=\"error\"}} {}", s.error);
    }
    let name = "xdpmesh_tcp_connection_duration_seconds";
    let _ = write!(
        out,
        "# HELP {name} Proxied TCP connections' lifetimes, from accept to close.\n\
         # TYPE {name} histogram\n"
    );
    for (l, s) in tcp {
        histogram(
            out,
            name,
            &labels(l),
            &s.buckets,
            s.sum_us,
            s.clean + s.error,
        );
    }
}

/// How a request's or connection's labels are found, as integers (see [`Recorder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The listener's interned name (its address: the engine interns each name once).
    pub listener: usize,
    pub route: Option<u32>,
    pub service: Option<u32>,
    pub endpoint: Option<SocketAddrV4>,
    pub src: IdRef,
}

/// A caller's identity, as the key holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdRef {
    None,
    /// An identity of this gateway's tables (`identities`), by index.
    Local(u32),
    /// An identity the tables name elsewhere (a peer, an authorization rule), interned by
    /// the recorder for the current tables.
    Known(u32),
    /// Anyone else: `other`.
    Other,
}

/// A worker's side: finds cells by [`Key`] without building strings.
pub struct Recorder {
    shard: Arc<Shard>,
    http: FxHashMap<(Key, Code), Arc<HttpCell>>,
    tcp: FxHashMap<Key, Arc<TcpCell>>,
    /// The tables generation the keys' indices refer to.
    gen: u64,
}

impl Recorder {
    /// Forgets keys of older tables (their cells stay registered, and a label set that
    /// comes back finds its old cell).
    pub fn set_generation(&mut self, gen: u64) {
        if gen != self.gen {
            self.http.clear();
            self.tcp.clear();
            self.gen = gen;
        }
    }

    /// The cell of an HTTP request; `labels` runs only on a key not seen under these tables.
    pub fn http(&mut self, key: Key, code: Code, labels: impl FnOnce() -> Labels) -> &HttpCell {
        if !self.http.contains_key(&(key, code)) {
            let l = labels();
            let got = self
                .shard
                .http
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_add(&(l, code));
            let Some(c) = got else {
                self.shard.overflowed.add(1);
                return &self.shard.http_overflow;
            };
            if self.http.len() >= MAX_LABEL_SETS * 2 {
                // Keys of one label set may be many (reloads); start over rather than grow.
                self.http.clear();
            }
            self.http.insert((key, code), c);
        }
        &self.http[&(key, code)]
    }

    /// The cell of a TCP connection (kept by the session until it closes).
    pub fn tcp(&mut self, key: Key, labels: impl FnOnce() -> Labels) -> Arc<TcpCell> {
        if let Some(c) = self.tcp.get(&key) {
            return c.clone();
        }
        let l = labels();
        let got = self
            .shard
            .tcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_add(&l);
        let Some(c) = got else {
            self.shard.overflowed.add(1);
            return self.shard.tcp_overflow.clone();
        };
        if self.tcp.len() >= MAX_LABEL_SETS * 2 {
            self.tcp.clear();
        }
        self.tcp.insert(key, c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(route: &str) -> Labels {
        Labels {
            direction: Direction::Outbound,
            listener: "l".into(),
            route: route.into(),
            service: "web".into(),
            endpoint: "10.0.0.1:80".into(),
            src_identity: "spiffe://m/a".into(),
            dst_identity: "".into(),
        }
    }

    fn key(route: u32) -> Key {
        Key {
            listener: 1,
            route: Some(route),
            service: Some(0),
            endpoint: None,
            src: IdRef::None,
        }
    }

    #[test]
    fn buckets_take_the_first_bound_at_or_above() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(11));
        let (b, sum) = h.read();
        assert_eq!((b[0], b[1], b[BUCKETS_US.len() - 1]), (1, 1, 1));
        assert_eq!(sum, 50 + 51 + 11_000_000);
    }

    #[test]
    fn workers_merge_by_labels_and_reloads_keep_counts() {
        let g = Golden::default();
        let mut w1 = g.recorder();
        let mut w2 = g.recorder();
        let c = w1.http(key(0), (200, None), || labels("canary"));
        c.requests.add(2);
        c.duration.observe(Duration::from_millis(3));
        w2.http(key(0), (200, None), || labels("canary"))
            .requests
            .add(1);
        // New tables: another index, the same name: the same series.
        w1.set_generation(7);
        w1.http(key(5), (200, None), || labels("canary"))
            .requests
            .add(1);
        w1.http(key(0), (503, None), || labels("canary"))
            .requests
            .add(1);
        let mut out = String::new();
        g.render(&mut out);
        let line = |code: &str| {
            out.lines()
                .find(|l| {
                    l.starts_with("xdpmesh_requests_total{")
                        && l.contains("route=\"canary\"")
                        && l.contains(&format!("code=\"{code}\""))
                })
                .unwrap_or_else(|| panic!("no {code} line in\n{out}"))
                .to_string()
        };
        assert!(line("200").ends_with(" 4"), "{}", line("200"));
        assert!(line("200").contains("classification=\"success\""));
        assert!(line("503").ends_with(" 1"));
        assert!(line("503").contains("class=\"5xx\",classification=\"failure\""));
        assert!(out.contains(
            "xdpmesh_request_duration_seconds_bucket{direction=\"outbound\",listener=\"l\",\
             route=\"canary\",service=\"web\",endpoint=\"10.0.0.1:80\",src_identity=\
             \"spiffe://m/a\",dst_identity=\"\",code=\"200\",class=\"2xx\",classification=\
             \"success\",le=\"0.005\"} 1"
        ));
        assert!(out.contains("xdpmesh_golden_overflow_total 0"));
    }

    #[test]
    fn label_sets_past_the_cap_go_to_the_overflow_series() {
        let g = Golden::default();
        let mut w = g.recorder();
        for i in 0..(MAX_LABEL_SETS as u32 + 10) {
            w.http(key(i), (200, None), || labels(&format!("r{i}")))
                .requests
                .add(1);
        }
        let mut out = String::new();
        g.render(&mut out);
        assert!(
            out.contains("xdpmesh_golden_overflow_total 10"),
            "{out:.300}"
        );
        assert!(out.contains("route=\"overflow\""));
        let series = out
            .lines()
            .filter(|l| l.starts_with("xdpmesh_requests_total{"))
            .count();
        assert_eq!(series, MAX_LABEL_SETS + 1);
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let g = Golden::default();
        let mut w = g.recorder();
        let mut l = labels("r");
        l.src_identity = "a\"b\\c\nd".into();
        w.http(key(0), (200, None), || l).requests.add(1);
        let mut out = String::new();
        g.render(&mut out);
        assert!(out.contains("src_identity=\"a\\\"b\\\\c\\nd\""), "{out}");
    }

    #[test]
    fn tcp_active_is_opened_less_closed() {
        let g = Golden::default();
        let mut w = g.recorder();
        let c = w.tcp(key(0), || labels(""));
        c.opened.add(3);
        c.closed_clean.add(1);
        c.closed_error.add(1);
        c.duration.observe(Duration::from_secs(1));
        c.duration.observe(Duration::from_secs(2));
        let mut out = String::new();
        g.render(&mut out);
        let active = out
            .lines()
            .find(|l| l.starts_with("xdpmesh_tcp_connections_active{"))
            .unwrap();
        assert!(active.ends_with(" 1"), "{active}");
        assert!(out.contains("outcome=\"error\"} 1"));
        assert!(out.contains("xdpmesh_tcp_connection_duration_seconds_count{"));
    }
}
