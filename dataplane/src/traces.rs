//! The trace exporter: request spans ([`mesh::trace`]) sent in batches to an OpenTelemetry
//! collector with OTLP/HTTP (`POST /v1/traces`, JSON encoding: [`mesh::otlp`]).
//!
//! Workers never wait on it: [`TraceSink::offer`] puts a sampled span on a bounded queue with
//! `try_send` and returns; a full queue drops the span and counts it. One thread (`xm-traces`)
//! takes spans off the queue, and posts a batch when it holds `batch` spans or when the oldest
//! has waited `flush_interval`. A post that fails (no connection, a timeout, or a status the
//! OTLP specification calls retryable: 429, 502, 503, 504) is tried again up to `retries`
//! times after a growing backoff, then its spans are dropped and counted; any other status
//! drops them at once (OTLP/HTTP: "the client MUST NOT retry" a non-retryable error). Spans a
//! collector rejects in a partial success are counted too. Plain HTTP/1.1 over `std::net`, one
//! connection per post (`Connection: close`): a batch goes out at most every few seconds.
//!
//! Counters for `/metrics`: [`TraceStats::render`].

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use mesh::engine::RequestEvent;
use mesh::otlp::{self, Anchor, Resource};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the exporter does; the defaults are OpenTelemetry SDKs' (the batch span processor's
/// `OTEL_BSP_*` and the OTLP exporter's `OTEL_EXPORTER_OTLP_*`).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The collector's OTLP/HTTP traces URL, used as given: `http://host[:port][/path]`
    /// (port 80 when absent; `/v1/traces` when there is no path). Default
    /// `http://127.0.0.1:4318/v1/traces` (a collector on the node). No TLS: point it at a
    /// local collector or agent.
    pub endpoint: String,
    /// The share (0..=1) of the traces this gateway starts that are sampled; a request that
    /// arrives with a `traceparent` keeps its caller's decision. Default 1 (every trace: the
    /// SDKs' `ParentBased(AlwaysOn)`); the queue bounds what that costs. Give it to each
    /// engine with `Engine::set_trace_sampling`.
    pub sampling: f64,
    /// Spans waiting to be sent at most; more are dropped (`queue_full`). Default 2,048.
    pub queue: usize,
    /// Spans per post at most. Default 512.
    pub batch: usize,
    /// A span waits at most this long for its batch to fill. Default 5 s.
    pub flush_interval: Duration,
    /// Connect, write and read of one post, each. Default 10 s.
    pub timeout: Duration,
    /// Further tries of a failed post. Default 3 (after 100 ms, 200 ms, 400 ms).
    pub retries: u32,
    /// The first retry's backoff; each next one doubles it. Default 100 ms.
    pub backoff: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            sampling: 1.0,
            queue: 2048,
            batch: 512,
            flush_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// A configuration the exporter cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceConfigError {
    #[error("endpoint {url:?}: {why}")]
    Endpoint { url: String, why: &'static str },
    #[error("sampling must be between 0 and 1, not {0}")]
    Sampling(f64),
    #[error("queue must hold at least 1 span")]
    Queue,
    #[error("batch must be between 1 and queue ({queue}), not {batch}")]
    Batch { batch: usize, queue: usize },
    #[error("flush_interval must be above zero")]
    FlushInterval,
    #[error("timeout must be above zero")]
    Timeout,
}

/// The collector's address, from [`TraceConfig::endpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IPv4 address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
    /// `Host` field value: the URL's authority.
    pub authority: String,
    pub path: String,
}

impl TraceConfig {
    /// Checks every field; returns the parsed endpoint.
    pub fn validate(&self) -> Result<Endpoint, TraceConfigError> {
        let endpoint = parse_endpoint(&self.endpoint)?;
        if !(0.0..=1.0).contains(&self.sampling) {
            return Err(TraceConfigError::Sampling(self.sampling));
        }
        if self.queue == 0 {
            return Err(TraceConfigError::Queue);
        }
        if self.batch == 0 || self.batch > self.queue {
            return Err(TraceConfigError::Batch {
                batch: self.batch,
                queue: self.queue,
            });
        }
        if self.flush_interval.is_zero() {
            return Err(TraceConfigError::FlushInterval);
        }
        if self.timeout.is_zero() {
            return Err(TraceConfigError::Timeout);
        }
        Ok(endpoint)
    }
}

fn parse_endpoint(url: &str) -> Result<Endpoint, TraceConfigError> {
    let err = |why| TraceConfigError::Endpoint {
        url: url.to_string(),
        why,
    };
    let scheme_end = url
        .find("://")
        .ok_or_else(|| err("not a URL (http://host:port/path)"))?;
    match &url[..scheme_end] {
        s if s.eq_ignore_ascii_case("http") => {}
        s if s.eq_ignore_ascii_case("https") => {
            return Err(err(
                "https is not supported: point it at a local collector's http port",
            ))
        }
        _ => return Err(err("the scheme must be http")),
    }
    let rest = &url[scheme_end + 3..];
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if path.contains(['#', ' ']) || path.starts_with('?') {
        return Err(err("the path must be a plain path"));
    }
    if authority.contains('@') {
        return Err(err("user information is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| err("unclosed '[' in the host"))?;
        (&v6[..end], &v6[end + 1..])
    } else {
        match authority.rfind(':') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        }
    };
    let port = match port {
        "" => 80,
        p => p
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| err("the port must be a number from 1 to 65535"))?,
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(err("no host"));
    }
    Ok(Endpoint {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        path: if path.is_empty() { "/v1/traces" } else { path }.to_string(),
    })
}

/// Why spans were dropped (`xdpmesh_trace_spans_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full when a worker offered the span.
    QueueFull,
    /// Its post failed after every retry, or with a status not worth retrying.
    ExportFailed,
    /// The collector took the post but rejected the span (a partial success).
    Rejected,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::Rejected => "rejected",
        }
    }
}

/// The exporter's counters, shared by its sinks and its thread.
#[derive(Debug, Default)]
pub struct TraceStats {
    exported: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl TraceStats {
    /// Spans a collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    fn drop_n(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text for `xdpmesh_trace_spans_exported_total` and
    /// `xdpmesh_trace_spans_dropped_total{reason}` (every reason, zeros included).
    pub fn render(&self, out: &mut String) {
        let _ = write!(
            out,
            "# HELP xdpmesh_trace_spans_exported_total Spans an OTLP collector accepted.\n\
             # TYPE xdpmesh_trace_spans_exported_total counter\n\
             xdpmesh_trace_spans_exported_total {}\n\
             # HELP xdpmesh_trace_spans_dropped_total Spans not exported, by reason.\n\
             # TYPE xdpmesh_trace_spans_dropped_total counter\n",
            self.exported()
        );
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "xdpmesh_trace_spans_dropped_total{{reason=\"{}\"}} {}",
                r.label(),
                self.dropped(r)
            );
        }
    }
}

/// One span waiting to be sent: the request's event and its worker's clock anchor.
struct Item {
    event: Box<RequestEvent>,
    anchor: Anchor,
}

/// What [`TraceSink::offer`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// No span to send: the event has none, or it is not sampled.
    Unsampled,
    /// The queue was full: dropped and counted.
    Dropped,
}

/// A worker's handle on the exporter's queue (clone one per worker).
#[derive(Clone, Debug)]
pub struct TraceSink {
    tx: Sender<Item>,
    stats: Arc<TraceStats>,
}

impl TraceSink {
    /// Queues `event`'s span if it has a sampled one (a copy of the event); never blocks.
    /// `anchor` ties the worker's engine clock to the wall clock (taken once per worker).
    pub fn offer(&self, event: &RequestEvent, anchor: Anchor) -> Offer {
        if !event.trace.is_some_and(|t| t.sampled) {
            return Offer::Unsampled;
        }
        self.send(Box::new(event.clone()), anchor)
    }

    /// As [`TraceSink::offer`], taking the event (no copy).
    pub fn offer_boxed(&self, event: Box<RequestEvent>, anchor: Anchor) -> Offer {
        if !event.trace.is_some_and(|t| t.sampled) {
            return Offer::Unsampled;
        }
        self.send(event, anchor)
    }

    fn send(&self, event: Box<RequestEvent>, anchor: Anchor) -> Offer {
        match self.tx.try_send(Item { event, anchor }) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.drop_n(DropReason::QueueFull, 1);
                Offer::Dropped
            }
        }
    }
}

/// The exporter: its queue, its counters and its thread.
pub struct TraceExporter {
    sink: TraceSink,
    stats: Arc<TraceStats>,
    /// Dropped to stop the thread (a closed channel wakes it at once, and stays closed).
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TraceExporter {
    /// Validates `cfg` and starts the thread; spans go out under `resource`.
    pub fn start(cfg: &TraceConfig, resource: Resource) -> Result<TraceExporter, TraceError> {
        let endpoint = cfg.validate()?;
        let (tx, rx) = channel::bounded(cfg.queue);
        let (stop, stopped) = channel::bounded(0);
        let stats = Arc::new(TraceStats::default());
        let run = Run {
            cfg: cfg.clone(),
            endpoint,
            resource,
            stats: stats.clone(),
            rx,
            stopped,
        };
        let thread = std::thread::Builder::new()
            .name("xm-traces".into())
            .spawn(move || run.run())
            .map_err(TraceError::Spawn)?;
        Ok(TraceExporter {
            sink: TraceSink {
                tx,
                stats: stats.clone(),
            },
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// A handle for a worker.
    pub fn sink(&self) -> TraceSink {
        self.sink.clone()
    }

    pub fn stats(&self) -> &Arc<TraceStats> {
        &self.stats
    }

    /// Sends what is queued (one try per batch, each bounded by `timeout`) and stops the
    /// thread. Spans offered afterwards are dropped as `queue_full` once the queue is full.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TraceExporter {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("traces: {0}")]
    Config(#[from] TraceConfigError),
    #[error("traces: cannot start the exporter thread: {0}")]
    Spawn(io::Error),
}

/// Why one post did not go through.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no address for the collector's host")]
    NoAddress,
    #[error("malformed response")]
    BadResponse,
    #[error("status {0}")]
    Status(u16),
}

impl PostError {
    /// OTLP/HTTP: 429, 502, 503 and 504 are retryable, as is a failed connection; other
    /// statuses are not.
    fn retryable(&self) -> bool {
        match self {
            PostError::Status(s) => matches!(s, 429 | 502 | 503 | 504),
            _ => true,
        }
    }
}

/// The exporter thread's state.
struct Run {
    cfg: TraceConfig,
    endpoint: Endpoint,
    resource: Resource,
    stats: Arc<TraceStats>,
    rx: Receiver<Item>,
    stopped: Receiver<()>,
}

impl Run {
    fn run(self) {
        let mut batch: Vec<Item> = Vec::with_capacity(self.cfg.batch);
        let mut due: Option<Instant> = None;
        loop {
            let wait = due.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            channel::select! {
                recv(self.rx) -> item => {
                    let Ok(item) = item else { break };
                    if batch.is_empty() {
                        due = Some(Instant::now() + self.cfg.flush_interval);
                    }
                    batch.push(item);
                    if batch.len() >= self.cfg.batch {
                        self.export(&mut batch, true);
                        due = None;
                    }
                }
                recv(self.stopped) -> _ => break,
                default(wait) => {
                    if !batch.is_empty() {
                        self.export(&mut batch, true);
                    }
                    due = None;
                }
            }
        }
        // Stopping: what is queued goes out, one try per batch.
        while let Ok(item) = self.rx.try_recv() {
            batch.push(item);
            if batch.len() >= self.cfg.batch {
                self.export(&mut batch, false);
            }
        }
        if !batch.is_empty() {
            self.export(&mut batch, false);
        }
    }

    /// Posts `batch` (emptied), with retries unless stopping; counts the outcome.
    fn export(&self, batch: &mut Vec<Item>, retry: bool) {
        let mut body = Vec::with_capacity(512 * batch.len());
        let n = otlp::encode(
            &self.resource,
            batch.iter().map(|i| (&*i.event, &i.anchor)),
            &mut body,
        ) as u64;
        batch.clear();
        if n == 0 {
            return;
        }
        let mut tries = 0;
        loop {
            match post(&self.endpoint, &body, self.cfg.timeout) {
                Ok(rejected) => {
                    let rejected = rejected.min(n);
                    self.stats
                        .exported
                        .fetch_add(n - rejected, Ordering::Relaxed);
                    self.stats.drop_n(DropReason::Rejected, rejected);
                    return;
                }
                Err(e) if retry && e.retryable() && tries < self.cfg.retries => {
                    let backoff = self
                        .cfg
                        .backoff
                        .saturating_mul(1 << tries.min(16))
                        .min(self.cfg.flush_interval.max(self.cfg.backoff));
                    tries += 1;
                    // A stop ends the wait, and the retries.
                    if self
                        .stopped
                        .recv_timeout(backoff)
                        .is_err_and(|e| e.is_disconnected())
                    {
                        self.stats.drop_n(DropReason::ExportFailed, n);
                        return;
                    }
                }
                Err(_) => {
                    self.stats.drop_n(DropReason::ExportFailed, n);
                    return;
                }
            }
        }
    }
}

/// Bytes of a collector's response read at most.
const RESPONSE_CAP: usize = 64 * 1024;

/// One `POST` of an OTLP/JSON body; returns the spans the collector rejected (a partial
/// success), 0 when it took them all.
fn post(ep: &Endpoint, body: &[u8], timeout: Duration) -> Result<u64, PostError> {
    let mut last = None;
    let mut stream = None;
    for addr in (ep.host.as_str(), ep.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut s = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => return Err(PostError::NoAddress),
    };
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let _ = s.set_nodelay(true);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: xdpmesh/{}\r\n\r\n",
        ep.path,
        ep.authority,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    // The response: its head, then a Content-Length body, or up to the close.
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut parsed: Option<(u16, usize, Option<usize>)> = None;
    loop {
        if let Some((_, head_len, Some(len))) = parsed {
            if buf.len() >= head_len + len {
                break;
            }
        }
        if buf.len() >= RESPONSE_CAP || Instant::now() >= deadline {
            break;
        }
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if parsed.is_some() && e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if parsed.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let code = r.code.ok_or(PostError::BadResponse)?;
                    if (100..200).contains(&code) {
                        // An interim response (100 Continue): the final one follows.
                        buf.drain(..head_len);
                        continue;
                    }
                    let len = r
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    parsed = Some((code, head_len, len));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(PostError::BadResponse),
            }
        }
    }
    let (code, head_len, _) = parsed.ok_or(PostError::BadResponse)?;
    if !(200..300).contains(&code) {
        return Err(PostError::Status(code));
    }
    Ok(rejected_spans(&buf[head_len.min(buf.len())..]))
}

/// `partialSuccess.rejectedSpans` of an `ExportTraceServiceResponse` in JSON (an int64: a
/// string or a number); 0 when absent or unreadable (a protobuf or empty body).
fn rejected_spans(body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    match &v["partialSuccess"]["rejectedSpans"] {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::trace::{SpanContext, SpanKind};
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
    use std::sync::mpsc;
    use std::time::UNIX_EPOCH;

    /// What the test's collector got: one post.
    #[derive(Debug)]
    struct Post {
        path: String,
        content_type: String,
        spans: Vec<serde_json::Value>,
    }

    /// A collector on 127.0.0.1: parses each POST and its JSON body and sends it to the test;
    /// answers `reply(n)` to the n-th post (from 0), after `gate` lets it when given.
    struct Collector {
        url: String,
        posts: mpsc::Receiver<Post>,
    }

    impl Collector {
        fn start(
            reply: impl Fn(usize) -> &'static str + Send + 'static,
            gate: Option<mpsc::Receiver<()>>,
        ) -> Collector {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/v1/traces", l.local_addr().unwrap());
            let (tx, posts) = mpsc::channel();
            std::thread::spawn(move || {
                for (i, conn) in l.incoming().enumerate() {
                    let Ok(mut c) = conn else { return };
                    let Some(post) = read_post(&mut c) else {
                        continue;
                    };
                    if tx.send(post).is_err() {
                        return;
                    }
                    if i == 0 {
                        if let Some(g) = &gate {
                            let _ = g.recv();
                        }
                    }
                    let body = reply(i);
                    let status = if body.starts_with('{') {
                        "200 OK"
                    } else {
                        body
                    };
                    let body = if body.starts_with('{') { body } else { "{}" };
                    let _ = write!(
                        c,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            Collector { url, posts }
        }
    }

    fn read_post(c: &mut TcpStream) -> Option<Post> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                assert_eq!(r.method, Some("POST"));
                let h = |name: &str| {
                    r.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let len: usize = h("content-length")?.parse().ok()?;
                if buf.len() >= n + len {
                    let v: serde_json::Value = serde_json::from_slice(&buf[n..n + len]).unwrap();
                    let spans = v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                        .as_array()
                        .unwrap()
                        .clone();
                    assert_eq!(
                        v["resourceSpans"][0]["resource"]["attributes"][1]["value"]["stringValue"],
                        "gw-test"
                    );
                    return Some(Post {
                        path: r.path?.to_string(),
                        content_type: h("content-type")?,
                        spans,
                    });
                }
            }
            let k = c.read(&mut chunk).ok()?;
            if k == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    }

    fn event(i: u8, sampled: bool) -> RequestEvent {
        RequestEvent {
            listener: Arc::from("web"),
            client: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 50000),
            method: "GET".into(),
            target: "/".into(),
            route: None,
            service: Some("web".into()),
            endpoint: None,
            status: Some(200),
            refusal: None,
            attempts: 1,
            request_body_bytes: 0,
            response_body_bytes: 0,
            start: tcpstack::Instant::from_micros(10),
            end: tcpstack::Instant::from_micros(20),
            request_id: None,
            identity: None,
            authority: None,
            traceparent: None,
            upstream: None,
            dst_identity: None,
            trace: Some(SpanContext {
                trace_id: [1; 16],
                span_id: [i.max(1); 8],
                parent_id: None,
                kind: SpanKind::Client,
                sampled,
            }),
        }
    }

    fn anchor() -> Anchor {
        Anchor::new(tcpstack::Instant::ZERO, UNIX_EPOCH + Duration::from_secs(1))
    }

    fn cfg(url: &str) -> TraceConfig {
        TraceConfig {
            endpoint: url.into(),
            batch: 10,
            flush_interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(5),
            ..TraceConfig::default()
        }
    }

    fn resource() -> Resource {
        Resource {
            gateway: "gw-test".into(),
        }
    }

    /// Polls `cond` until it holds or 10 s pass.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn batches_arrive_whole_and_are_counted() {
        let col = Collector::start(|_| "{}", None);
        let ex = TraceExporter::start(&cfg(&col.url), resource()).unwrap();
        let sink = ex.sink();
        for i in 0..25 {
            assert_eq!(sink.offer(&event(i, true), anchor()), Offer::Queued);
        }
        assert_eq!(sink.offer(&event(99, false), anchor()), Offer::Unsampled);
        let stats = ex.stats().clone();
        eventually("25 spans exported", || stats.exported() == 25);
        let posts: Vec<Post> = col.posts.try_iter().collect();
        assert!(posts.len() >= 3, "batches of at most 10: {}", posts.len());
        assert!(posts.iter().all(|p| p.spans.len() <= 10));
        assert_eq!(posts.iter().map(|p| p.spans.len()).sum::<usize>(), 25);
        assert_eq!(posts[0].path, "/v1/traces");
        assert_eq!(posts[0].content_type, "application/json");
        assert_eq!(posts[0].spans[0]["spanId"], "0101010101010101");
        assert_eq!(posts[0].spans[0]["startTimeUnixNano"], "1000010000");
        let mut out = String::new();
        stats.render(&mut out);
        assert!(
            out.contains("xdpmesh_trace_spans_exported_total 25\n"),
            "{out}"
        );
        assert!(out.contains("xdpmesh_trace_spans_dropped_total{reason=\"queue_full\"} 0\n"));
        ex.shutdown();
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (open, gate) = mpsc::channel();
        let col = Collector::start(|_| "{}", Some(gate));
        let c = TraceConfig {
            queue: 4,
            batch: 1,
            ..cfg(&col.url)
        };
        let ex = TraceExporter::start(&c, resource()).unwrap();
        let sink = ex.sink();
        // The first span's post waits at the collector: the thread takes no more.
        assert_eq!(sink.offer(&event(1, true), anchor()), Offer::Queued);
        let first = col.posts.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first.spans.len(), 1);
        let t = Instant::now();
        let offers: Vec<Offer> = (0..10)
            .map(|i| sink.offer(&event(i, true), anchor()))
            .collect();
        assert!(t.elapsed() < Duration::from_secs(1), "offer never waits");
        assert_eq!(offers.iter().filter(|&&o| o == Offer::Queued).count(), 4);
        assert_eq!(offers.iter().filter(|&&o| o == Offer::Dropped).count(), 6);
        assert_eq!(ex.stats().dropped(DropReason::QueueFull), 6);
        open.send(()).unwrap();
        let stats = ex.stats().clone();
        eventually("the queued spans exported", || stats.exported() == 5);
        ex.shutdown();
    }

    #[test]
    fn a_collector_that_is_down_costs_counted_drops_and_no_wait() {
        // A port nobody listens on: connections are refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = TraceConfig {
            retries: 2,
            ..cfg(&format!("http://127.0.0.1:{port}/v1/traces"))
        };
        let ex = TraceExporter::start(&c, resource()).unwrap();
        let sink = ex.sink();
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(sink.offer(&event(i, true), anchor()), Offer::Queued);
        }
        assert!(t.elapsed() < Duration::from_secs(1));
        let stats = ex.stats().clone();
        eventually("3 spans dropped as failed", || {
            stats.dropped(DropReason::ExportFailed) == 3
        });
        assert_eq!(stats.exported(), 0);
        ex.shutdown();
    }

    #[test]
    fn statuses_decide_retries_and_partial_success_counts_rejections() {
        // 503 then 400: the first post is retried and refused for good; the second post
        // succeeds with 2 of its spans rejected.
        let col = Collector::start(
            |i| match i {
                0 => "503 Service Unavailable",
                1 => "400 Bad Request",
                _ => r#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"x"}}"#,
            },
            None,
        );
        let c = TraceConfig {
            batch: 3,
            ..cfg(&col.url)
        };
        let ex = TraceExporter::start(&c, resource()).unwrap();
        let sink = ex.sink();
        for i in 0..3 {
            sink.offer(&event(i, true), anchor());
        }
        let stats = ex.stats().clone();
        eventually("the first batch dropped", || {
            stats.dropped(DropReason::ExportFailed) == 3
        });
        assert_eq!(
            col.posts.try_iter().count(),
            2,
            "one retry after the 503, none after the 400"
        );
        for i in 0..3 {
            sink.offer_boxed(Box::new(event(i, true)), anchor());
        }
        eventually("the second batch", || stats.exported() == 1);
        assert_eq!(stats.dropped(DropReason::Rejected), 2);
        ex.shutdown();
    }

    #[test]
    fn shutdown_sends_what_is_queued() {
        let col = Collector::start(|_| "{}", None);
        let c = TraceConfig {
            flush_interval: Duration::from_secs(3600),
            ..cfg(&col.url)
        };
        let ex = TraceExporter::start(&c, resource()).unwrap();
        for i in 0..3 {
            ex.sink().offer(&event(i, true), anchor());
        }
        let stats = ex.stats().clone();
        ex.shutdown();
        assert_eq!(stats.exported(), 3);
    }

    #[test]
    fn configurations_are_validated() {
        let ok = TraceConfig::default().validate().unwrap();
        assert_eq!(
            ok,
            Endpoint {
                host: "127.0.0.1".into(),
                port: 4318,
                authority: "127.0.0.1:4318".into(),
                path: "/v1/traces".into()
            }
        );
        let ep = |u: &str| {
            TraceConfig {
                endpoint: u.into(),
                ..TraceConfig::default()
            }
            .validate()
        };
        let e = ep("http://collector").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 80, "/v1/traces")
        );
        let e = ep("HTTP://[::1]:4318/otlp/v1/traces").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 4318, "/otlp/v1/traces")
        );
        for bad in [
            "https://c:4318/v1/traces",
            "c:4318",
            "ftp://c/",
            "http://:4318/",
            "http://c:0/",
            "http://c:99999/",
            "http://u@c/",
            "http://c/p#f",
            "http://[::1/",
        ] {
            assert!(
                matches!(ep(bad), Err(TraceConfigError::Endpoint { .. })),
                "{bad}: {:?}",
                ep(bad)
            );
        }
        let with = |f: fn(&mut TraceConfig)| {
            let mut c = TraceConfig::default();
            f(&mut c);
            c.validate()
        };
        assert_eq!(
            with(|c| c.sampling = 1.5),
            Err(TraceConfigError::Sampling(1.5))
        );
        assert!(with(|c| c.sampling = f64::NAN).is_err());
        assert_eq!(with(|c| c.queue = 0), Err(TraceConfigError::Queue));
        assert!(matches!(
            with(|c| c.batch = 4096),
            Err(TraceConfigError::Batch { .. })
        ));
        assert_eq!(
            with(|c| c.flush_interval = Duration::ZERO),
            Err(TraceConfigError::FlushInterval)
        );
        assert_eq!(
            with(|c| c.timeout = Duration::ZERO),
            Err(TraceConfigError::Timeout)
        );
        assert!(TraceExporter::start(
            &TraceConfig {
                queue: 0,
                ..TraceConfig::default()
            },
            resource()
        )
        .is_err());
    }

    #[test]
    fn partial_success_bodies() {
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":3}}"#),
            3
        );
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":"4"}}"#),
            4
        );
        assert_eq!(rejected_spans(b"{}"), 0);
        assert_eq!(rejected_spans(b"\x0a\x00"), 0);
    }
}
