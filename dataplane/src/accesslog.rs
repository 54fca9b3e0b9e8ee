//! Access logs: one JSON line per HTTP request and per client connection, from the engine's
//! events (`mesh::engine::Event`).
//!
//! Workers drain their engine's events after each round ([`Sink::drain`]), keep the
//! sampled ones and hand them to one writer thread through a bounded channel with
//! `try_send`: a full channel drops the line and counts it
//! (`xdpmesh_access_log_dropped_total`), so a worker never waits on the disk. The writer
//! formats the lines, writes them through a buffer, flushes whenever the channel runs dry,
//! and on SIGHUP reopens the file by its path (logrotate's `create`: the old file was
//! renamed; the gateway creates the new one).

use crate::clock::Clock;
use control::node::{AccessLogConfig, AccessLogTarget};
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use mesh::engine::{ConnRecord, Engine, Event, RequestEvent};
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Lines in flight between the workers and the writer at most.
pub const QUEUE: usize = 8192;
/// Events an engine keeps for the worker between two drains.
pub const ENGINE_EVENTS: usize = 1024;
/// How often the writer looks at the SIGHUP flag while no line arrives.
const HUP_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("access log {0}: {1}")]
    Open(PathBuf, io::Error),
    #[error("access log: cannot handle SIGHUP: {0}")]
    Signal(io::Error),
    #[error("access log: cannot start its writer thread: {0}")]
    Thread(io::Error),
}

/// One event on its way to the writer, with what dates it.
pub struct Entry {
    event: Event,
    clock: Clock,
}

/// The counters both sides share.
#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
}

/// A worker's end of the engine's events: the access log's channel and the trace exporter's,
/// either or both (the events are drained once). Cloned into each worker.
#[derive(Clone)]
pub struct Sink {
    /// `None`: no access log, traces only.
    tx: Option<Sender<Entry>>,
    counters: Arc<Counters>,
    /// Lines are kept when a uniform draw in `0..2^64` is below this.
    threshold: u64,
    rng: u64,
    traces: Option<crate::traces::TraceSink>,
}

impl Sink {
    /// A sink that keeps `sample` (0.0 to 1.0) of the lines, for a channel made elsewhere
    /// (tests; [`AccessLog::start`] makes the real one).
    fn new(tx: Sender<Entry>, counters: Arc<Counters>, sample: f64) -> Sink {
        let threshold = if sample >= 1.0 {
            u64::MAX
        } else if sample > 0.0 {
            (sample * u64::MAX as f64) as u64
        } else {
            0
        };
        Sink {
            tx: Some(tx),
            traces: None,
            counters,
            threshold,
            rng: u64::from_le_bytes(
                crate::proxy::random_seed()[..8]
                    .try_into()
                    .unwrap_or_default(),
            ) | 1,
        }
    }

    /// Request spans go to `traces` too.
    pub fn with_traces(mut self, traces: crate::traces::TraceSink) -> Sink {
        self.traces = Some(traces);
        self
    }

    /// Spans only, no access log.
    pub fn traces_only(traces: crate::traces::TraceSink) -> Sink {
        Sink {
            tx: None,
            counters: Arc::default(),
            threshold: 0,
            rng: 1,
            traces: Some(traces),
        }
    }

    /// The engine's events are wanted: call once on each engine this sink drains.
    pub fn enable<C: Copy + Eq + std::hash::Hash + std::fmt::Debug>(engine: &mut Engine<C>) {
        engine.set_event_capacity(ENGINE_EVENTS);
    }

    /// Takes the engine's events: lines for requests, connections and refusals, sampled,
    /// handed to the writer without waiting (a full channel drops and counts).
    pub fn drain<C: Copy + Eq + std::hash::Hash + std::fmt::Debug>(
        &mut self,
        engine: &mut Engine<C>,
        clock: &Clock,
    ) {
        while let Some(event) = engine.poll_event() {
            self.take(event, clock);
        }
    }

    /// One event: offered to the trace exporter, sampled and handed to the access-log writer,
    /// neither waiting (a full channel drops and counts). For loops that also show the event
    /// elsewhere (`tap_hub::drain`).
    pub fn take(&mut self, event: Event, clock: &Clock) {
        if let (Some(t), Event::Request(r)) = (&self.traces, &event) {
            // The span's own sampling decides; this never waits.
            let _ = t.offer(r, clock.anchor());
        }
        if matches!(event, Event::Opened { .. }) || self.tx.is_none() || !self.sampled() {
            return;
        }
        let e = Entry {
            event,
            clock: *clock,
        };
        let Some(tx) = &self.tx else { return };
        match tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn sampled(&mut self) -> bool {
        if self.threshold == u64::MAX {
            return true;
        }
        if self.threshold == 0 {
            return false;
        }
        // xorshift64*: a draw per line, not a sequence anyone needs to predict.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) < self.threshold
    }
}

/// The writer thread and the workers' [`Sink`]s.
pub struct AccessLog {
    sink: Option<Sink>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    hup: Option<signal_hook::SigId>,
}

impl AccessLog {
    /// Opens the target and starts the writer.
    pub fn start(cfg: &AccessLogConfig) -> Result<AccessLog, AccessLogError> {
        let (tx, rx) = channel::bounded(QUEUE);
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let hup_flag = Arc::new(AtomicBool::new(false));
        let (out, hup) = match &cfg.target {
            AccessLogTarget::Stdout => (Out::Stdout, None),
            AccessLogTarget::File(p) => {
                let f = open(p).map_err(|e| AccessLogError::Open(p.clone(), e))?;
                let id = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup_flag.clone())
                    .map_err(AccessLogError::Signal)?;
                (Out::File(p.clone(), BufWriter::new(f)), Some(id))
            }
        };
        let writer = Writer {
            rx,
            out,
            counters: counters.clone(),
            hup: hup_flag,
            stop: stop.clone(),
            buf: Vec::with_capacity(1024),
        };
        let thread = std::thread::Builder::new()
            .name("xm-access-log".into())
            .spawn(move || writer.run())
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog {
            sink: Some(Sink::new(tx, counters.clone(), cfg.sample)),
            counters,
            stop,
            thread: Some(thread),
            hup,
        })
    }

    /// A worker's end of the channel.
    pub fn sink(&self) -> Option<Sink> {
        self.sink.clone()
    }

    /// Its counters, for `/metrics`.
    pub fn stats(&self) -> AccessLogStats {
        AccessLogStats(self.counters.clone())
    }
}

/// An access log's counters (lines written, dropped, failed writes).
#[derive(Clone)]
pub struct AccessLogStats(Arc<Counters>);

impl AccessLogStats {
    /// Lines dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// `xdpmesh_access_log_*` for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.0;
        let _ = write!(
            out,
            "# HELP xdpmesh_access_log_dropped_total Access log lines dropped because the writer's queue was full.\n\
             # TYPE xdpmesh_access_log_dropped_total counter\n\
             xdpmesh_access_log_dropped_total {}\n\
             # HELP xdpmesh_access_log_lines_total Access log lines written.\n\
             # TYPE xdpmesh_access_log_lines_total counter\n\
             xdpmesh_access_log_lines_total {}\n\
             # HELP xdpmesh_access_log_write_errors_total Failed writes or reopens of the access log.\n\
             # TYPE xdpmesh_access_log_write_errors_total counter\n\
             xdpmesh_access_log_write_errors_total {}\n",
            c.dropped.load(Ordering::Relaxed),
            c.written.load(Ordering::Relaxed),
            c.write_errors.load(Ordering::Relaxed),
        );
    }
}

impl Drop for AccessLog {
    /// Writes what is queued (the workers have stopped by now) and stops the writer.
    fn drop(&mut self) {
        self.sink = None;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(id) = self.hup.take() {
            signal_hook::low_level::unregister(id);
        }
    }
}

fn open(p: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
}

enum Out {
    Stdout,
    File(PathBuf, BufWriter<File>),
}

struct Writer {
    rx: Receiver<Entry>,
    out: Out,
    counters: Arc<Counters>,
    hup: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        loop {
            match self.rx.recv_timeout(HUP_POLL) {
                Ok(e) => {
                    self.line(&e);
                    // Everything queued, then one write and flush.
                    while let Ok(e) = self.rx.try_recv() {
                        self.line(&e);
                    }
                    self.flush();
                }
                Err(channel::RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                Err(channel::RecvTimeoutError::Disconnected) => break,
            }
            if self.hup.swap(false, Ordering::SeqCst) {
                self.reopen();
            }
        }
        while let Ok(e) = self.rx.try_recv() {
            self.line(&e);
        }
        self.flush();
    }

    fn line(&mut self, e: &Entry) {
        if write_line(&mut self.buf, e).is_ok() {
            self.counters.written.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let r = match &mut self.out {
            Out::Stdout => {
                let mut o = io::stdout().lock();
                o.write_all(&self.buf).and_then(|()| o.flush())
            }
            Out::File(_, w) => w.write_all(&self.buf).and_then(|()| w.flush()),
        };
        self.buf.clear();
        if let Err(e) = r {
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "access log: write failed; lines lost");
        }
    }

    fn reopen(&mut self) {
        self.flush();
        let Out::File(path, w) = &mut self.out else {
            return;
        };
        match open(path) {
            Ok(f) => {
                *w = BufWriter::new(f);
                tracing::info!(path = %path.display(), "access log reopened (SIGHUP)");
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), error = %e,
                    "access log: reopen failed; writing on to the old file");
            }
        }
    }
}

/// One access log line. Every key is always there (`null` when unknown), in this order.
#[derive(Serialize)]
struct Line<'a> {
    /// When it ended (RFC 3339, UTC, microseconds).
    time: String,
    /// `http`: a request; `tcp`: a client connection (any listener), ended or refused.
    #[serde(rename = "type")]
    kind: &'static str,
    listener: &'a str,
    route: Option<&'a str>,
    service: Option<&'a str>,
    endpoint: Option<SocketAddrV4>,
    method: Option<&'a str>,
    authority: Option<&'a str>,
    path: Option<&'a str>,
    status: Option<u16>,
    attempts: u8,
    /// HTTP: body bytes from and to the client; TCP: bytes from and to the client.
    bytes_in: u64,
    bytes_out: u64,
    duration_us: u64,
    upstream_us: Option<u64>,
    client: SocketAddrV4,
    src_identity: Option<&'a str>,
    dst_identity: Option<&'a str>,
    request_id: Option<&'a str>,
    traceparent: Option<&'a str>,
    /// `ok`, `error` (the gateway answered itself), `cut` (HTTP); `ok`, `reset`, `refused` (TCP).
    outcome: &'static str,
    /// Why: a refusal reason (`x-xdpmesh-error`'s values) or the last attempt's outcome.
    reason: Option<&'static str>,
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A refused connection carried nothing.
static NO_CONN: ConnRecord = ConnRecord {
    service: None,
    endpoint: None,
    attempts: 0,
    bytes_in: 0,
    bytes_out: 0,
    upstream: None,
    identity: None,
    dst_identity: None,
    outcome: None,
    reason: None,
};

/// Appends the entry's line (and a newline) to `out`; `Err` for an event that has none.
fn write_line(out: &mut Vec<u8>, e: &Entry) -> Result<(), ()> {
    let line = match &e.event {
        Event::Request(r) => request_line(r, &e.clock),
        Event::Closed {
            listener,
            client,
            opened,
            at,
            clean,
            conn,
        } => conn_line(
            listener,
            *client,
            (e.clock.wall(*at), at.saturating_duration_since(*opened)),
            *clean,
            conn,
        ),
        Event::Refused {
            listener,
            client,
            reason,
            at,
        } => {
            let mut l = conn_line(
                listener,
                *client,
                (e.clock.wall(*at), Duration::ZERO),
                false,
                &NO_CONN,
            );
            l.outcome = "refused";
            l.reason = Some(reason.label());
            l
        }
        Event::Opened { .. } => return Err(()),
    };
    serde_json::to_writer(&mut *out, &line).map_err(drop)?;
    out.push(b'\n');
    Ok(())
}

/// Appends a request's access log line (`"type":"http"`, and a newline) to `out`: the tap's
/// lines are these (`tap_hub`).
pub fn request_json(out: &mut Vec<u8>, r: &RequestEvent, clock: &Clock) {
    if serde_json::to_writer(&mut *out, &request_line(r, clock)).is_ok() {
        out.push(b'\n');
    }
}

fn request_line<'a>(r: &'a RequestEvent, clock: &Clock) -> Line<'a> {
    let outcome = match (r.status, r.refusal) {
        (None, _) => "cut",
        (Some(_), Some(_)) => "error",
        (Some(_), None) => "ok",
    };
    let some = |s: &'a str| (!s.is_empty()).then_some(s);
    Line {
        time: time(clock.wall(r.end)),
        kind: "http",
        listener: &r.listener,
        route: r.route.as_deref(),
        service: r.service.as_deref(),
        endpoint: r.endpoint,
        method: some(&r.method),
        authority: r.authority.as_deref(),
        path: some(&r.target),
        status: r.status,
        attempts: r.attempts,
        bytes_in: r.request_body_bytes,
        bytes_out: r.response_body_bytes,
        duration_us: micros(r.end.saturating_duration_since(r.start)),
        upstream_us: r.upstream.map(micros),
        client: r.client,
        src_identity: r.identity.as_deref(),
        dst_identity: r.dst_identity.as_deref(),
        request_id: r.request_id.as_deref(),
        traceparent: r.traceparent.as_deref(),
        outcome,
        reason: r.refusal.map(|x| x.label()),
    }
}

fn conn_line<'a>(
    listener: &'a str,
    client: SocketAddrV4,
    (at, duration): (SystemTime, Duration),
    clean: bool,
    c: &'a ConnRecord,
) -> Line<'a> {
    Line {
        time: time(at),
        kind: "tcp",
        listener,
        route: None,
        service: c.service.as_deref(),
        endpoint: c.endpoint,
        method: None,
        authority: None,
        path: None,
        status: None,
        attempts: c.attempts,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        duration_us: micros(duration),
        upstream_us: c.upstream.map(micros),
        client,
        src_identity: c.identity.as_deref(),
        dst_identity: c.dst_identity.as_deref(),
        request_id: None,
        traceparent: None,
        outcome: if clean { "ok" } else { "reset" },
        reason: c
            .reason
            .map(|r| r.label())
            .or(c.outcome.filter(|_| !clean).map(|o| o.label())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh::engine::{Outcome, Refusal};
    use tcpstack::Instant;

    fn client() -> SocketAddrV4 {
        "10.0.0.2:40000".parse().unwrap()
    }

    fn request() -> RequestEvent {
        RequestEvent {
            listener: Arc::from("web"),
            client: client(),
            method: "GET".into(),
            target: "/a?b=c".into(),
            route: Some("canary".into()),
            service: Some("reviews".into()),
            endpoint: Some("10.0.3.2:8080".parse().unwrap()),
            status: Some(200),
            refusal: None,
            attempts: 2,
            request_body_bytes: 5,
            response_body_bytes: 7,
            start: Instant::from_micros(1_000),
            end: Instant::from_micros(3_500),
            request_id: Some("rid".into()),
            identity: Some("spiffe://corp.mesh/sa/a".into()),
            authority: Some("reviews.test".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            upstream: Some(Duration::from_micros(1_200)),
            dst_identity: Some("spiffe://corp.mesh/gateway/gw-b".into()),
            trace: None,
        }
    }

    fn line(event: Event) -> serde_json::Value {
        let mut out = Vec::new();
        let clock = Clock::start();
        write_line(&mut out, &Entry { event, clock }).expect("a line");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).expect("JSON")
    }

    #[test]
    fn a_request_line_has_every_field() {
        let v = line(Event::Request(Box::new(request())));
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want = vec![
            "time",
            "type",
            "listener",
            "route",
            "service",
            "endpoint",
            "method",
            "authority",
            "path",
            "status",
            "attempts",
            "bytes_in",
            "bytes_out",
            "duration_us",
            "upstream_us",
            "client",
            "src_identity",
            "dst_identity",
            "request_id",
            "traceparent",
            "outcome",
            "reason",
        ];
        let mut got = keys.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        let t = v["time"].as_str().unwrap();
        assert!(t.ends_with('Z') && t.len() == 27, "{t}");
        assert!(humantime::parse_rfc3339(t).is_ok(), "{t}");
        assert_eq!(v["type"], "http");
        assert_eq!(v["listener"], "web");
        assert_eq!(v["route"], "canary");
        assert_eq!(v["service"], "reviews");
        assert_eq!(v["endpoint"], "10.0.3.2:8080");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["authority"], "reviews.test");
        assert_eq!(v["path"], "/a?b=c");
        assert_eq!(v["status"], 200);
        assert_eq!(v["attempts"], 2);
        assert_eq!(
            (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
            (Some(5), Some(7))
        );
        assert_eq!(v["duration_us"], 2_500);
        assert_eq!(v["upstream_us"], 1_200);
        assert_eq!(v["client"], "10.0.0.2:40000");
        assert_eq!(v["src_identity"], "spiffe://corp.mesh/sa/a");
        assert_eq!(v["dst_identity"], "spiffe://corp.mesh/gateway/gw-b");
        assert_eq!(v["request_id"], "rid");
        assert_eq!(
            v["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(
            (v["outcome"].as_str(), v["reason"].as_str()),
            (Some("ok"), None)
        );
    }

    #[test]
    fn hostile_bytes_stay_inside_their_string() {
        let mut r = request();
        r.method = "G\"E\nT".into();
        r.target = "/\u{1b}[31m\"},\"status\":1\r\n{\"x\u{0}".into();
        r.authority = Some("h\\\"".into());
        let v = line(Event::Request(Box::new(r.clone())));
        assert_eq!(v["method"], r.method.as_str());
        assert_eq!(v["path"], r.target.as_str());
        assert_eq!(v["authority"], "h\\\"");
        assert_eq!(v["status"], 200);
    }

    #[test]
    fn gateway_answers_and_cuts_say_why() {
        let mut r = request();
        (r.status, r.refusal) = (Some(504), Some(Refusal::RequestTimeout));
        let v = line(Event::Request(Box::new(r.clone())));
        assert_eq!(
            (v["outcome"].as_str(), v["reason"].as_str()),
            (Some("error"), Some("request_timeout"))
        );
        r.status = None;
        r.refusal = None;
        let v = line(Event::Request(Box::new(r)));
        assert_eq!(
            (v["outcome"].as_str(), v["status"].is_null()),
            (Some("cut"), true)
        );
    }

    #[test]
    fn connection_and_refusal_lines() {
        let conn = ConnRecord {
            service: Some("db".into()),
            endpoint: Some("10.0.3.1:5432".parse().unwrap()),
            attempts: 1,
            bytes_in: 10,
            bytes_out: 20,
            upstream: Some(Duration::from_micros(300)),
            identity: None,
            dst_identity: None,
            outcome: Some(Outcome::ResetMidResponse),
            reason: None,
        };
        let v = line(Event::Closed {
            listener: Arc::from("raw"),
            client: client(),
            opened: Instant::from_micros(0),
            at: Instant::from_micros(2_000_000),
            clean: false,
            conn: Box::new(conn),
        });
        assert_eq!(v["type"], "tcp");
        assert_eq!(v["service"], "db");
        assert_eq!(
            (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
            (Some(10), Some(20))
        );
        assert_eq!(v["duration_us"], 2_000_000);
        assert_eq!(v["upstream_us"], 300);
        assert_eq!(
            (v["outcome"].as_str(), v["reason"].as_str()),
            (Some("reset"), Some("reset_mid_response"))
        );
        assert!(v["method"].is_null() && v["path"].is_null());
        let v = line(Event::Refused {
            listener: Arc::from("raw"),
            client: client(),
            reason: Refusal::ListenerOverflow,
            at: Instant::from_micros(5),
        });
        assert_eq!(
            (v["outcome"].as_str(), v["reason"].as_str()),
            (Some("refused"), Some("listener_overflow"))
        );
    }

    /// An engine with events on, over an in-memory net, for the sink's tests.
    pub(crate) fn engine_with_events(
        n: usize,
    ) -> (Engine<mesh::memnet::MemConn>, mesh::memnet::MemNet) {
        let tables = "[[listener]]\nname = \"raw\"\nbind = \"10.0.0.1:5000\"\nprotocol = \"tcp\"\nservice = \"s\"\n\n[[service]]\nname = \"s\"\nendpoints = [{ address = \"10.0.3.1:8080\" }]\n";
        let compiled = control::compile(
            &control::Source::new("t.toml", tables),
            &control::Context::new("."),
        )
        .expect("tables");
        let publisher = Arc::new(control::Publisher::new());
        publisher.publish(compiled.snapshot, Arc::from(tables), "test");
        let mut engine = Engine::new(publisher, Arc::new(mesh::engine::NoMeshTls), [7; 32]);
        Sink::enable(&mut engine);
        let mut net = mesh::memnet::MemNet::new([10, 0, 0, 1].into());
        let now = Instant::from_micros(0);
        for i in 0..n {
            let c = net.peer_connect(
                SocketAddrV4::new([10, 0, 0, 2].into(), 40000 + i as u16),
                "10.0.0.1:5000".parse().unwrap(),
            );
            net.peer_reset(c);
        }
        for _ in 0..4 {
            while let Some(ev) = mesh::net::Net::poll_event(&mut net) {
                engine.handle(&mut net, now, ev);
            }
            engine.progress(&mut net, now);
        }
        (engine, net)
    }

    #[test]
    fn a_full_channel_drops_and_counts_without_waiting() {
        let (tx, rx) = channel::bounded(2);
        let counters = Arc::new(Counters::default());
        let mut sink = Sink::new(tx, counters.clone(), 1.0);
        let (mut engine, _net) = engine_with_events(5);
        sink.drain(&mut engine, &Clock::start());
        assert_eq!(rx.len(), 2);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 3);
        // Nothing left in the engine: the drain took every event.
        assert!(engine.poll_event().is_none());
    }

    #[test]
    fn sampling_keeps_about_its_share() {
        let (tx, _rx) = channel::bounded(1);
        let counters = Arc::new(Counters::default());
        let mut all = Sink::new(tx.clone(), counters.clone(), 1.0);
        let mut none = Sink::new(tx.clone(), counters.clone(), 0.0);
        let mut tenth = Sink::new(tx, counters, 0.1);
        let n = 100_000;
        assert_eq!((0..n).filter(|_| all.sampled()).count(), n);
        assert_eq!((0..n).filter(|_| none.sampled()).count(), 0);
        let kept = (0..n).filter(|_| tenth.sampled()).count();
        assert!((9_000..11_000).contains(&kept), "{kept}");
    }
}
