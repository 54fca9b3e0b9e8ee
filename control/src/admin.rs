//! The admin HTTP/1.1 API, on its own threads, never on a worker core.
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /tables` | the current tables as TOML (the text they were compiled from) |
//! | `PUT /tables` | check and swap; 400 with the same error lines as `xdpmesh check` |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once tables are loaded, else 503 |
//! | `GET /metrics` | Prometheus text: generation, reloads, failures, last reload time, the admin API's own counters |
//! | `GET /config/errors` | errors of the last failed reload, one per line (empty if none) |
//!
//! The data plane adds (through [`AdminExtension`]): `GET /endpoints`, `GET /connections`,
//! `GET /config_dump`, `GET`/`PUT /logging`, and its families on `/metrics` (OpenMetrics text
//! when `Accept` asks for it).
//!
//! One request per connection (`Connection: close`), one thread per connection, at most
//! [`AdminConfig::max_connections`] of them (the slots). Every stage has one deadline for the
//! whole of it, not per read: the head must arrive within `head_timeout` of accept and the
//! body within `request_timeout` of accept, else 408 and close; the client must take the
//! whole response within `write_timeout`, else it is cut. A head over `max_head` gets 431, a
//! body over `max_body` 413.
//!
//! Slow clients cannot starve the API: when every slot is held, a new connection takes the
//! slot of the oldest connection that is not running a handler (one lingering after its
//! response first, then one still sending its request, then one being written to), which is
//! closed without an answer. Only when every slot is running a handler does a new connection
//! get a fast 503. An ordinary client sends its head right after connecting, so it is the
//! newest connection and the last to be evicted.
//!
//! Token: when one is configured, every method but GET and HEAD needs
//! `Authorization: Bearer TOKEN`. Bound off loopback (a token is then required to start), or
//! with [`AdminConfig::token_for_reads`], every request needs it except `/healthz` and
//! `/readyz`, which stay open for probes and tell nothing but ok / ready / not ready. The
//! token is checked on the head, before any body is read, in constant time.
//!
//! Streams (`GET /tap`): an extension may answer with a body it makes while it is sent
//! ([`AdminExtension::stream`]), written with chunked transfer coding. It holds its slot (in
//! a phase evicted only after every other evictable one) until the body ends, the client
//! closes, or [`AdminConfig::max_stream`] passes (then the body is ended where it is); each
//! chunk must be taken within `write_timeout`, else the connection is cut. A client closing
//! its end is noticed within [`STREAM_POLL`] even while the body has nothing to send.
//!
//! What it refused is counted in `xdpmesh_admin_refused_total{reason}` on `/metrics`.
//! Defaults: control/README.md, "Admin API". Other crates add endpoints and metrics through
//! [`AdminExtension`].

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{PutError, TableStore};

/// After its response a connection is drained (RFC 9112 §9.6) for at most this long...
const LINGER: Duration = Duration::from_millis(500);
/// ...and at most this many bytes.
const LINGER_BYTES: usize = 256 * 1024;
/// While a streamed body has nothing to send, whether the client is still there is checked
/// this often.
pub const STREAM_POLL: Duration = Duration::from_millis(250);
/// What a streaming client may send after its request (it should send nothing) before it is
/// cut.
const STREAM_INPUT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub token: Option<String>,
    /// Every request but `/healthz` and `/readyz` needs the token, reads included. `new`
    /// sets it when `bind` is not loopback, and it cannot be off there.
    pub token_for_reads: bool,
    /// Request head (request line and header fields), bytes; over it: 431.
    pub max_head: usize,
    /// Request body, bytes; a larger `content-length`: 413.
    pub max_body: usize,
    /// Connections open at once, each on its own thread.
    pub max_connections: usize,
    /// The whole request head must have arrived this long after accept; else 408.
    pub head_timeout: Duration,
    /// The whole request, body included, must have arrived this long after accept; else 408.
    pub request_timeout: Duration,
    /// The client must have taken the whole response this long after it was ready; else cut.
    /// For a streamed body: each chunk.
    pub write_timeout: Duration,
    /// A streamed body ends at the latest this long after its head was sent.
    pub max_stream: Duration,
}

impl AdminConfig {
    pub fn new(bind: SocketAddr, token: Option<String>) -> Self {
        Self {
            bind,
            token,
            token_for_reads: !bind.ip().is_loopback(),
            max_head: 16 * 1024,
            max_body: 4 * 1024 * 1024,
            max_connections: 32,
            head_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            // Above /tap's own longest (600 s), so a tap ends itself with its last line.
            max_stream: Duration::from_secs(610),
        }
    }

    /// Whether reads need the token: asked for, or bound off loopback.
    fn reads_locked(&self) -> bool {
        self.token_for_reads || !self.bind.ip().is_loopback()
    }
}

/// A parsed request as extensions see it.
pub struct Request<'a> {
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [httparse::Header<'a>],
    pub body: &'a [u8],
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A response body made while it is sent (see [`AdminExtension::stream`]).
pub trait BodyStream: Send {
    /// Waits at most `wait` for more of the body and appends it to `out` (nothing: nothing
    /// yet). `false` once the body is complete, after appending its last piece.
    fn next(&mut self, out: &mut Vec<u8>, wait: Duration) -> bool;
}

/// A 200 whose body is a [`BodyStream`], sent with `transfer-encoding: chunked`.
pub struct Streaming {
    pub content_type: &'static str,
    pub body: Box<dyn BodyStream>,
}

/// Hooks for endpoints and metrics owned by other crates (the data plane's
/// `/dashboard`, worker counters).
pub trait AdminExtension: Send + Sync {
    /// Answer a request the control API does not know, or `None` for 404.
    fn handle(&self, _req: &Request<'_>) -> Option<Response> {
        None
    }
    /// Asked before [`AdminExtension::handle`]: `Some(Ok(_))` streams a body to the client
    /// (until it ends, the client leaves, or [`AdminConfig::max_stream`]); `Some(Err(_))`
    /// answers with a whole response instead (a refusal); `None`: not a streaming request.
    fn stream(&self, _req: &Request<'_>) -> Option<Result<Streaming, Response>> {
        None
    }
    /// Append Prometheus text to `/metrics`.
    fn metrics(&self, _out: &mut String) {}
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("admin API on {0} needs a bearer token (it is not loopback, or reads need the token)")]
    NeedsToken(SocketAddr),
    #[error("cannot bind admin API on {0}: {1}")]
    Bind(SocketAddr, io::Error),
    #[error("cannot start admin thread: {0}")]
    Thread(io::Error),
}

/// Why the API refused a request or a connection: the `reason` label of
/// `xdpmesh_admin_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The head or the body did not arrive in time: 408.
    Deadline,
    /// The client did not take the response in time: cut.
    WriteDeadline,
    /// Head over `max_head` or too many header fields (431), body over `max_body` (413).
    TooLarge,
    /// Every slot was running a handler: 503 at accept.
    Busy,
    /// Closed without an answer to give its slot to a new connection.
    Evicted,
    /// No or a wrong bearer token: 401.
    Unauthorized,
    /// Not HTTP/1.1 we take: 400, or 411 for a chunked body.
    BadRequest,
}

impl Refusal {
    const ALL: [Self; 7] = [
        Self::Deadline,
        Self::WriteDeadline,
        Self::TooLarge,
        Self::Busy,
        Self::Evicted,
        Self::Unauthorized,
        Self::BadRequest,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::WriteDeadline => "write_deadline",
            Self::TooLarge => "too_large",
            Self::Busy => "busy",
            Self::Evicted => "evicted",
            Self::Unauthorized => "unauthorized",
            Self::BadRequest => "bad_request",
        }
    }
}

/// Counters the admin API keeps about itself.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Counters {
    fn refuse(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }
}

/// Where a connection is; decides which one gives up its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving the request (head or body).
    Reading,
    /// Its request is in a handler: never evicted (closing the socket would not stop it).
    Handling,
    /// Its response is being written.
    Writing,
    /// Its body is being streamed (bounded by `max_stream`).
    Streaming,
    /// Draining after the response.
    Closing,
}

impl Phase {
    /// Lower gives its slot up first; `None` never.
    fn eviction_rank(self) -> Option<u8> {
        match self {
            Phase::Closing => Some(0),
            Phase::Reading => Some(1),
            Phase::Writing => Some(2),
            Phase::Streaming => Some(3),
            Phase::Handling => None,
        }
    }
}

/// The connection to evict for a new one: lowest rank, then oldest.
fn victim(live: impl Iterator<Item = (Phase, Instant)>) -> Option<usize> {
    live.enumerate()
        .filter_map(|(i, (phase, accepted))| Some((phase.eviction_rank()?, accepted, i)))
        .min()
        .map(|(_, _, i)| i)
}

struct Slot {
    id: u64,
    accepted: Instant,
    phase: Phase,
    /// A second handle on the connection, to shut it down when evicted.
    stream: TcpStream,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    live: Vec<Slot>,
}

struct Shared {
    cfg: AdminConfig,
    reads_locked: bool,
    store: Arc<TableStore>,
    ext: Option<Arc<dyn AdminExtension>>,
    counters: Counters,
    slots: Mutex<Slots>,
    stop: AtomicBool,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection, taken from the one [`victim`] names if all are held;
    /// `None` if every slot is running a handler.
    fn admit(&self, stream: &TcpStream, accepted: Instant) -> Option<u64> {
        let handle = stream.try_clone().ok()?;
        let mut s = self.slots();
        if s.live.len() >= self.cfg.max_connections {
            let i = victim(s.live.iter().map(|c| (c.phase, c.accepted)))?;
            let evicted = s.live.swap_remove(i);
            // Wakes its thread from a blocking read or write; it then finds its slot gone.
            let _ = evicted.stream.shutdown(Shutdown::Both);
            self.counters.refuse(Refusal::Evicted);
        }
        let id = s.next_id;
        s.next_id += 1;
        s.live.push(Slot {
            id,
            accepted,
            phase: Phase::Reading,
            stream: handle,
        });
        Some(id)
    }

    /// Move connection `id` on to `phase`; false if it was evicted (it must then stop).
    fn enter(&self, id: u64, phase: Phase) -> bool {
        match self.slots().live.iter_mut().find(|c| c.id == id) {
            Some(c) => {
                c.phase = phase;
                true
            }
            None => false,
        }
    }

    fn leave(&self, id: u64) {
        let mut s = self.slots();
        if let Some(i) = s.live.iter().position(|c| c.id == id) {
            s.live.swap_remove(i);
        }
    }
}

/// A running admin server; stops when dropped.
pub struct AdminServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    pub fn start(
        cfg: AdminConfig,
        store: Arc<TableStore>,
        ext: Option<Arc<dyn AdminExtension>>,
    ) -> Result<Self, StartError> {
        let reads_locked = cfg.reads_locked();
        if reads_locked && cfg.token.as_deref().is_none_or(str::is_empty) {
            return Err(StartError::NeedsToken(cfg.bind));
        }
        let listener = TcpListener::bind(cfg.bind).map_err(|e| StartError::Bind(cfg.bind, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(cfg.bind, e))?;
        let shared = Arc::new(Shared {
            cfg,
            reads_locked,
            store,
            ext,
            counters: Counters::default(),
            slots: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("xdpmesh-admin".into())
            .spawn(move || accept_loop(&listener, &s))
            .map_err(StartError::Thread)?;
        Ok(Self {
            local_addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // And the connections' threads.
        for c in &self.shared.slots().live {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let accepted = Instant::now();
        let Some(id) = shared.admit(&stream, accepted) else {
            shared.counters.refuse(Refusal::Busy);
            refuse_busy(stream);
            continue;
        };
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("xdpmesh-admin-conn".into())
            .spawn(move || {
                connection(stream, id, accepted, &s);
                s.leave(id);
            });
        if spawned.is_err() {
            shared.leave(id);
        }
    }
}

/// 503 and close, without ever blocking the accept thread on the client.
fn refuse_busy(mut stream: TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let _ = stream.write(&render_head(
        &Response::text(503, "too many admin connections\n"),
        true,
    ));
    let _ = stream.shutdown(Shutdown::Write);
    // Read what already came, so that closing does not reset the connection (and the 503
    // with it) for unread input; what comes later may still be reset.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

/// What a request gets.
enum Answer {
    Whole(Response),
    Stream(Streaming),
}

/// One connection: read a request, answer it, close.
fn connection(mut stream: TcpStream, id: u64, accepted: Instant, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    // None: the client closed, or the connection was evicted: nothing to answer.
    let resp = match serve(&mut stream, id, accepted, shared) {
        None => return,
        Some(Answer::Whole(r)) => r,
        Some(Answer::Stream(s)) => {
            if stream_body(&mut stream, id, s, shared).is_ok() && shared.enter(id, Phase::Closing) {
                linger_close(&mut stream);
            }
            return;
        }
    };
    if !shared.enter(id, Phase::Writing) {
        return;
    }
    let deadline = Instant::now() + shared.cfg.write_timeout;
    if let Err(e) = write_response(&mut stream, &resp, deadline) {
        if e.kind() == io::ErrorKind::TimedOut {
            shared.counters.refuse(Refusal::WriteDeadline);
        }
        return; // cut: what was not written is never sent
    }
    if shared.enter(id, Phase::Closing) {
        linger_close(&mut stream);
    }
}

/// Sends a streamed body in chunks until it ends, the client leaves (`Err`), the slot is
/// taken (`Err`) or `max_stream` passes (the body is ended where it is).
fn stream_body(
    stream: &mut TcpStream,
    id: u64,
    mut s: Streaming,
    shared: &Shared,
) -> Result<(), ()> {
    if !shared.enter(id, Phase::Streaming) {
        return Err(());
    }
    let cfg = &shared.cfg;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        s.content_type
    );
    let cut = |e: io::Error| {
        if e.kind() == io::ErrorKind::TimedOut {
            shared.counters.refuse(Refusal::WriteDeadline);
        }
    };
    write_by(stream, head.as_bytes(), Instant::now() + cfg.write_timeout).map_err(cut)?;
    let end = Instant::now() + cfg.max_stream;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut input = 0usize;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        buf.clear();
        let more = s.body.next(&mut buf, left.min(STREAM_POLL));
        if !buf.is_empty() {
            let mut chunk = format!("{:x}\r\n", buf.len()).into_bytes();
            chunk.extend_from_slice(&buf);
            chunk.extend_from_slice(b"\r\n");
            write_by(stream, &chunk, Instant::now() + cfg.write_timeout).map_err(cut)?;
        }
        if !more {
            break;
        }
        if client_left(stream, &mut input) || !shared.enter(id, Phase::Streaming) {
            return Err(());
        }
    }
    write_by(stream, b"0\r\n\r\n", Instant::now() + cfg.write_timeout).map_err(cut)
}

/// Whether a streaming client closed its end (or sent more than [`STREAM_INPUT`] after its
/// request); what it sent is read and discarded. Never blocks.
fn client_left(stream: &mut TcpStream, input: &mut usize) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut sink = [0u8; 4096];
    let left = loop {
        match stream.read(&mut sink) {
            Ok(0) => break true,
            Ok(n) => {
                *input += n;
                if *input > STREAM_INPUT {
                    break true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).is_err() || left
}

/// What a read with a deadline gave.
enum Got {
    Data(usize),
    /// The deadline passed first.
    Late,
    /// End of stream, or an error (an evicted connection's socket is shut down).
    Closed,
}

/// Read what is there by `deadline`: the timeout of each read is what is left of it, so
/// a client trickling bytes cannot stretch it.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Got {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Got::Late;
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Got::Closed;
        }
        match stream.read(buf) {
            Ok(0) => return Got::Closed,
            Ok(n) => return Got::Data(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Got::Closed,
        }
    }
}

/// Write all of `bytes` by `deadline`, else `TimedOut`.
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Close after the response without resetting: closing a socket with unread input
/// sends RST, which can destroy the response before the client reads it (the
/// lingering close of RFC 9112 §9.6). Drain a bounded amount, briefly.
fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match read_by(stream, &mut sink, deadline) {
            Got::Data(n) => left = left.saturating_sub(n),
            Got::Late | Got::Closed => break,
        }
    }
}

/// The status line and header fields; with `body`, the body too.
fn render_head(r: &Response, body: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if body {
        out.extend_from_slice(&r.body);
    }
    out
}

fn write_response(stream: &mut TcpStream, r: &Response, deadline: Instant) -> io::Result<()> {
    write_by(stream, &render_head(r, false), deadline)?;
    write_by(stream, &r.body, deadline)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Whether a request needs the bearer token, when one is configured: the probes never
/// (they tell ok / ready / not ready and nothing else), reads when `reads_locked`, every
/// other method always.
fn needs_token(reads_locked: bool, method: &str, path: &str) -> bool {
    if matches!(path, "/healthz" | "/readyz") {
        return false;
    }
    reads_locked || !matches!(method, "GET" | "HEAD")
}

/// Compare without an early exit, so timing does not reveal how much of a guess
/// was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the first `Authorization` field is `Bearer TOKEN` (scheme in any case).
fn bearer_matches(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| {
            let (scheme, credentials) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(credentials.trim())
        })
        .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
}

fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

/// Read one request by its deadlines and answer it: `None` when there is nothing to
/// answer (the client closed, or the connection was evicted).
fn serve(stream: &mut TcpStream, id: u64, accepted: Instant, shared: &Shared) -> Option<Answer> {
    let cfg = &shared.cfg;
    let refuse = |why: Refusal, resp: Response| {
        shared.counters.refuse(why);
        Some(Answer::Whole(resp))
    };
    let head_deadline = accepted + cfg.head_timeout;
    let max_head = cfg.max_head.max(1);
    let mut buf = vec![0u8; max_head.min(4096)];
    let mut len = 0;
    let (head_len, content_length) = loop {
        if len == buf.len() {
            if buf.len() >= max_head {
                return refuse(
                    Refusal::TooLarge,
                    Response::text(431, "request head too large\n"),
                );
            }
            buf.resize((buf.len() * 2).min(max_head), 0);
        }
        match read_by(stream, &mut buf[len..], head_deadline) {
            Got::Data(n) => len += n,
            Got::Late => {
                return refuse(
                    Refusal::Deadline,
                    Response::text(408, "request head not received in time\n"),
                )
            }
            Got::Closed => return None,
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(h)) => {
                let (Some(method), Some(target)) = (req.method, req.path) else {
                    return refuse(Refusal::BadRequest, Response::text(400, "bad request\n"));
                };
                if let Some(token) = &cfg.token {
                    let (path, _) = split_target(target);
                    if needs_token(shared.reads_locked, method, path)
                        && !bearer_matches(req.headers, token)
                    {
                        return refuse(
                            Refusal::Unauthorized,
                            Response::text(401, "bearer token required\n")
                                .header("www-authenticate", "Bearer"),
                        );
                    }
                }
                if req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                {
                    return refuse(
                        Refusal::BadRequest,
                        Response::text(411, "send the body with content-length\n"),
                    );
                }
                let cl = match req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                {
                    None => 0,
                    Some(h) => match std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    {
                        Some(n) => n,
                        None => {
                            return refuse(
                                Refusal::BadRequest,
                                Response::text(400, "bad content-length\n"),
                            )
                        }
                    },
                };
                if cl > cfg.max_body {
                    return refuse(
                        Refusal::TooLarge,
                        Response::text(413, format!("body over {} bytes\n", cfg.max_body)),
                    );
                }
                break (h, cl);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return refuse(
                    Refusal::TooLarge,
                    Response::text(431, "too many header fields\n"),
                )
            }
            Err(e) => {
                return refuse(
                    Refusal::BadRequest,
                    Response::text(400, format!("bad request: {e}\n")),
                )
            }
        }
    };
    let total = head_len + content_length;
    if buf.len() < total {
        buf.resize(total, 0);
    }
    let body_deadline = accepted + cfg.request_timeout.max(cfg.head_timeout);
    while len < total {
        match read_by(stream, &mut buf[len..total], body_deadline) {
            Got::Data(n) => len += n,
            Got::Late => {
                return refuse(
                    Refusal::Deadline,
                    Response::text(408, "request body not received in time\n"),
                )
            }
            Got::Closed => return None,
        }
    }
    if !shared.enter(id, Phase::Handling) {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let (Ok(_), Some(method), Some(target)) = (req.parse(&buf[..head_len]), req.method, req.path)
    else {
        return refuse(Refusal::BadRequest, Response::text(400, "bad request\n"));
    };
    let (path, query) = split_target(target);
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let request = Request {
        method,
        path,
        query,
        headers: req.headers,
        body: &buf[head_len..total],
    };
    if let Some(ext) = &shared.ext {
        match ext.stream(&request) {
            Some(Ok(s)) => return Some(Answer::Stream(s)),
            Some(Err(r)) => return Some(Answer::Whole(r)),
            None => {}
        }
    }
    Some(Answer::Whole(route(&request, shared)))
}

fn route(req: &Request<'_>, shared: &Shared) -> Response {
    let publisher = shared.store.publisher();
    let allow =
        |methods: &str| Response::text(405, "method not allowed\n").header("allow", methods);
    match (req.path, req.method) {
        ("/healthz", "GET") => Response::text(200, "ok\n"),
        ("/readyz", "GET") => {
            if let (Some(r), true) = (shared.store.remote(), publisher.status().generation > 0) {
                // etcd mode: 200 while serving tables, "ready" or "degraded" in the body.
                return Response::text(200, r.state.describe().1);
            }
            if publisher.status().generation > 0 {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "no tables loaded\n")
            }
        }
        ("/tables", "GET") => {
            let st = publisher.status();
            if st.generation == 0 {
                return Response::text(503, "no tables loaded\n");
            }
            let mut headers = vec![("x-generation".into(), st.generation.to_string())];
            if let Some(r) = shared.store.remote() {
                let rev = r.state.applied.load(Ordering::Acquire);
                headers.push(("x-tables-revision".into(), rev.to_string()));
            }
            Response {
                status: 200,
                content_type: "application/toml",
                headers,
                body: st.source.as_bytes().to_vec(),
            }
        }
        // The token, when needed, was checked on the head.
        ("/tables", "PUT") => put_tables(req, shared),
        ("/metrics", "GET") => {
            let mut out = metrics(shared);
            if let Some(ext) = &shared.ext {
                ext.metrics(&mut out);
            }
            let accept = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("accept"))
                .filter_map(|h| std::str::from_utf8(h.value).ok());
            if accept.into_iter().any(crate::openmetrics::wanted) {
                match crate::openmetrics::from_text(&out) {
                    Ok(om) => {
                        return Response {
                            status: 200,
                            content_type: crate::openmetrics::CONTENT_TYPE,
                            headers: Vec::new(),
                            body: om.into_bytes(),
                        }
                    }
                    // Our own text that does not read back is a bug: the 0.0.4 text still
                    // serves (Prometheus takes it), and the reason is in the response.
                    Err(e) => {
                        return Response {
                            status: 200,
                            content_type: "text/plain; version=0.0.4; charset=utf-8",
                            headers: vec![("x-openmetrics-error".into(), e.to_string())],
                            body: out.into_bytes(),
                        }
                    }
                }
            }
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                headers: Vec::new(),
                body: out.into_bytes(),
            }
        }
        ("/config/errors", "GET") => Response::text(200, publisher.status().errors.to_string()),
        ("/healthz" | "/readyz" | "/metrics" | "/config/errors", _) => allow("GET"),
        ("/tables", _) => allow("GET, PUT"),
        _ => shared
            .ext
            .as_ref()
            .and_then(|e| e.handle(req))
            .unwrap_or_else(|| Response::text(404, "not found\n")),
    }
}

fn put_tables(req: &Request<'_>, shared: &Shared) -> Response {
    let Ok(text) = std::str::from_utf8(req.body) else {
        return Response::text(400, "body is not UTF-8\n");
    };
    // etcd mode: the revision the writer read, for the compare-and-swap.
    let read = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-tables-revision"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    match shared.store.put_at(text, read) {
        Ok(generation) => Response::text(200, format!("generation {generation}\n")),
        Err(PutError::Invalid(d)) => Response::text(400, d.to_string()),
        Err(e @ PutError::Conflict(_)) => Response::text(409, format!("{e}\n")),
        Err(e @ PutError::Etcd(_)) => Response::text(503, format!("{e}\n")),
        Err(e @ PutError::Write(_)) => Response::text(500, format!("{e}\n")),
    }
}

fn metrics(shared: &Shared) -> String {
    let publisher = shared.store.publisher();
    let st = publisher.status();
    let retained = publisher.reclaim();
    let c = &shared.counters;
    let open = shared.slots().live.len();
    let mut o = String::new();
    let mut m = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            o,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    m(
        "xdpmesh_tables_generation",
        "gauge",
        "Generation of the published tables.",
        st.generation.to_string(),
    );
    m(
        "xdpmesh_tables_reloads_total",
        "counter",
        "Tables published.",
        st.reloads.to_string(),
    );
    m(
        "xdpmesh_tables_last_reload_timestamp_seconds",
        "gauge",
        "Unix time of the last publish.",
        st.last_reload_unix
            .map_or("0".into(), |t| format!("{t:.3}")),
    );
    m(
        "xdpmesh_tables_last_reload_success",
        "gauge",
        "1 if the last reload attempt succeeded.",
        u8::from(st.last_ok).to_string(),
    );
    m(
        "xdpmesh_tables_retired_snapshots",
        "gauge",
        "Old snapshots still held by readers.",
        retained.to_string(),
    );
    m(
        "xdpmesh_admin_requests_total",
        "counter",
        "Admin requests answered.",
        c.requests.load(Ordering::Relaxed).to_string(),
    );
    m(
        "xdpmesh_admin_rejected_total",
        "counter",
        "Admin connections refused at the limit (the same as xdpmesh_admin_refused_total{reason=\"busy\"}).",
        c.refused(Refusal::Busy).to_string(),
    );
    m(
        "xdpmesh_admin_connections",
        "gauge",
        "Admin connections open, this one included.",
        open.to_string(),
    );
    let name = "xdpmesh_admin_refused_total";
    let _ = writeln!(
        o,
        "# HELP {name} Admin requests and connections refused, by reason.\n# TYPE {name} counter"
    );
    for r in Refusal::ALL {
        let _ = writeln!(o, "{name}{{reason=\"{}\"}} {}", r.label(), c.refused(r));
    }
    let name = "xdpmesh_tables_reload_failures_total";
    let _ = writeln!(
        o,
        "# HELP {name} Table changes refused, by source (file, PUT, etcd).\n# TYPE {name} counter"
    );
    for s in crate::publish::ChangeSource::ALL {
        let _ = writeln!(
            o,
            "{name}{{source=\"{}\"}} {}",
            s.label(),
            st.failures_by_source[s as usize]
        );
    }
    if let Some(r) = shared.store.remote() {
        let e = &r.state;
        let mut m = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        m(
            "xdpmesh_tables_source_revision",
            "gauge",
            "etcd revision of the tables being served.",
            e.applied.load(Ordering::Acquire).to_string(),
        );
        m(
            "xdpmesh_tables_source_connected",
            "gauge",
            "1 while etcd answers and is watched; 0: serving the last good tables (degraded).",
            u8::from(e.connected.load(Ordering::Relaxed)).to_string(),
        );
        m(
            "xdpmesh_tables_source_errors_total",
            "counter",
            "etcd reads and watches that failed (unreachable or erroring).",
            e.errors.load(Ordering::Relaxed).to_string(),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_need_the_token() {
        // (reads locked, method, path, needs it)
        for (locked, method, path, needed) in [
            (false, "GET", "/metrics", false),
            (false, "GET", "/tables", false),
            (false, "PUT", "/tables", true),
            (false, "POST", "/anything", true),
            (true, "GET", "/metrics", true),
            (true, "GET", "/tables", true),
            (true, "GET", "/config/errors", true),
            (true, "GET", "/nope", true),
            (true, "HEAD", "/metrics", true),
            (true, "GET", "/healthz", false),
            (true, "GET", "/readyz", false),
            (true, "GET", "/healthz/", true),
            (true, "PUT", "/tables", true),
        ] {
            assert_eq!(
                needs_token(locked, method, path),
                needed,
                "{locked} {method} {path}"
            );
        }
    }

    #[test]
    fn reads_are_locked_off_loopback_whatever_the_flag() {
        for (bind, locked) in [
            ("127.0.0.1:9901", false),
            ("[::1]:9901", false),
            ("0.0.0.0:9901", true),
            ("10.1.2.3:9901", true),
            ("[::]:9901", true),
        ] {
            let mut cfg = AdminConfig::new(bind.parse().expect("addr"), Some("t".into()));
            assert_eq!(cfg.reads_locked(), locked, "{bind}");
            cfg.token_for_reads = false;
            assert_eq!(cfg.reads_locked(), locked, "{bind}, flag cleared");
            cfg.token_for_reads = true;
            assert!(cfg.reads_locked(), "{bind}, flag set");
        }
    }

    #[test]
    fn bearer_is_compared_whole() {
        let h = |v: &'static str| {
            [httparse::Header {
                name: "Authorization",
                value: v.as_bytes(),
            }]
        };
        assert!(bearer_matches(&h("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(&h("bearer  s3cret "), "s3cret"));
        assert!(!bearer_matches(&h("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&h("Bearer s3cretx"), "s3cret"));
        assert!(!bearer_matches(&h("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&h("s3cret"), "s3cret"));
        assert!(!bearer_matches(&[], "s3cret"));
    }

    #[test]
    fn eviction_takes_closing_then_reading_then_writing_oldest_first_never_handling() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let live = [
            (Phase::Handling, at(0)),
            (Phase::Writing, at(1)),
            (Phase::Reading, at(3)),
            (Phase::Reading, at(2)),
            (Phase::Closing, at(9)),
        ];
        assert_eq!(victim(live.into_iter()), Some(4));
        assert_eq!(victim(live[..4].iter().copied()), Some(3));
        assert_eq!(victim(live[..2].iter().copied()), Some(1));
        assert_eq!(victim(live[..1].iter().copied()), None);
    }
}
