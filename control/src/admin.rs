//! The admin HTTP/1.1 API, on its own threads, never on a worker core.
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /tables` | the current tables as TOML (the text they were compiled from) |
//! | `PUT /tables` | check and swap; 400 with the same error lines as `xdpmesh check` |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once tables are loaded, else 503 |
//! | `GET /metrics` | Prometheus text: generation, reloads, failures, last reload time |
//! | `GET /config/errors` | errors of the last failed reload, one per line (empty if none) |
//!
//! Limits: request head 16 KiB, body 4 MiB, 32 connections, 5 s I/O timeout; one
//! request per connection (`Connection: close`). Binds 127.0.0.1 by default; on any
//! other address a bearer token is required, and when a token is configured `PUT`
//! needs `Authorization: Bearer TOKEN`. Other crates add endpoints and metrics
//! through [`AdminExtension`].

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::{PutError, TableStore};

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub token: Option<String>,
    pub max_head: usize,
    pub max_body: usize,
    pub max_connections: usize,
    pub io_timeout: Duration,
}

impl AdminConfig {
    pub fn new(bind: SocketAddr, token: Option<String>) -> Self {
        Self {
            bind,
            token,
            max_head: 16 * 1024,
            max_body: 4 * 1024 * 1024,
            max_connections: 32,
            io_timeout: Duration::from_secs(5),
        }
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

/// Hooks for endpoints and metrics owned by other crates (the data plane's
/// `/dashboard`, worker counters).
pub trait AdminExtension: Send + Sync {
    /// Answer a request the control API does not know, or `None` for 404.
    fn handle(&self, _req: &Request<'_>) -> Option<Response> {
        None
    }
    /// Append Prometheus text to `/metrics`.
    fn metrics(&self, _out: &mut String) {}
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("admin API on non-loopback {0} needs a bearer token")]
    NeedsToken(SocketAddr),
    #[error("cannot bind admin API on {0}: {1}")]
    Bind(SocketAddr, io::Error),
    #[error("cannot start admin thread: {0}")]
    Thread(io::Error),
}

/// Counters the admin API keeps about itself.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    rejected: AtomicU64,
    active: AtomicUsize,
}

struct Shared {
    cfg: AdminConfig,
    store: Arc<TableStore>,
    ext: Option<Arc<dyn AdminExtension>>,
    counters: Counters,
    stop: AtomicBool,
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
        if !cfg.bind.ip().is_loopback() && cfg.token.is_none() {
            return Err(StartError::NeedsToken(cfg.bind));
        }
        let listener = TcpListener::bind(cfg.bind).map_err(|e| StartError::Bind(cfg.bind, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(cfg.bind, e))?;
        let shared = Arc::new(Shared {
            cfg,
            store,
            ext,
            counters: Counters::default(),
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
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = conn else { continue };
        let _ = stream.set_read_timeout(Some(shared.cfg.io_timeout));
        let _ = stream.set_write_timeout(Some(shared.cfg.io_timeout));
        let c = &shared.counters;
        if c.active.fetch_add(1, Ordering::SeqCst) >= shared.cfg.max_connections {
            c.active.fetch_sub(1, Ordering::SeqCst);
            c.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = write_response(
                &mut stream,
                &Response::text(503, "too many admin connections\n"),
            );
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("xdpmesh-admin-conn".into())
            .spawn(move || {
                let _ = serve(&mut stream, &s);
                linger_close(&mut stream);
                s.counters.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            c.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Close after the response without resetting: closing a socket with unread input
/// sends RST, which can destroy the response before the client reads it (the
/// lingering close of RFC 9112 §9.6). Drain a bounded amount, briefly.
fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 256 * 1024;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn write_response(stream: &mut TcpStream, r: &Response) -> io::Result<()> {
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
    stream.write_all(head.as_bytes())?;
    stream.write_all(&r.body)?;
    stream.flush()
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Read one request, answer it, close.
fn serve(stream: &mut TcpStream, shared: &Shared) -> io::Result<()> {
    let cfg = &shared.cfg;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let (head_len, content_length) = loop {
        if len == buf.len() {
            if buf.len() >= cfg.max_head {
                return write_response(stream, &Response::text(431, "request head too large\n"));
            }
            buf.resize((buf.len() * 2).min(cfg.max_head), 0);
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(()); // closed before a whole head
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(h)) => {
                if req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                {
                    return write_response(
                        stream,
                        &Response::text(411, "send the body with content-length\n"),
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
                            return write_response(
                                stream,
                                &Response::text(400, "bad content-length\n"),
                            )
                        }
                    },
                };
                if cl > cfg.max_body {
                    return write_response(
                        stream,
                        &Response::text(413, format!("body over {} bytes\n", cfg.max_body)),
                    );
                }
                break (h, cl);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return write_response(stream, &Response::text(400, format!("bad request: {e}\n")))
            }
        }
    };
    let total = head_len + content_length;
    if buf.len() < total {
        buf.resize(total, 0);
    }
    while len < total {
        let n = stream.read(&mut buf[len..total])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(&buf[..head_len]).is_err() {
        return write_response(stream, &Response::text(400, "bad request\n"));
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return write_response(stream, &Response::text(400, "bad request\n"));
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let request = Request {
        method,
        path,
        query,
        headers: req.headers,
        body: &buf[head_len..total],
    };
    let resp = route(&request, shared);
    write_response(stream, &resp)
}

fn route(req: &Request<'_>, shared: &Shared) -> Response {
    let publisher = shared.store.publisher();
    let allow =
        |methods: &str| Response::text(405, "method not allowed\n").header("allow", methods);
    match (req.path, req.method) {
        ("/healthz", "GET") => Response::text(200, "ok\n"),
        ("/readyz", "GET") => {
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
            Response {
                status: 200,
                content_type: "application/toml",
                headers: vec![("x-generation".into(), st.generation.to_string())],
                body: st.source.as_bytes().to_vec(),
            }
        }
        ("/tables", "PUT") => put_tables(req, shared),
        ("/metrics", "GET") => {
            let mut out = metrics(shared);
            if let Some(ext) = &shared.ext {
                ext.metrics(&mut out);
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

/// Compare without an early exit, so timing does not reveal how much of a guess
/// was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn put_tables(req: &Request<'_>, shared: &Shared) -> Response {
    if let Some(token) = &shared.cfg.token {
        let given = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.trim().as_bytes(), token.as_bytes())) {
            return Response::text(401, "bearer token required\n")
                .header("www-authenticate", "Bearer");
        }
    }
    let Ok(text) = std::str::from_utf8(req.body) else {
        return Response::text(400, "body is not UTF-8\n");
    };
    match shared.store.put(text) {
        Ok(generation) => Response::text(200, format!("generation {generation}\n")),
        Err(PutError::Invalid(d)) => Response::text(400, d.to_string()),
        Err(e @ PutError::Write(_)) => Response::text(500, format!("{e}\n")),
    }
}

fn metrics(shared: &Shared) -> String {
    let publisher = shared.store.publisher();
    let st = publisher.status();
    let retained = publisher.reclaim();
    let c = &shared.counters;
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
        "xdpmesh_tables_reload_failures_total",
        "counter",
        "Reloads refused (bad file or PUT).",
        st.reload_failures.to_string(),
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
        "Admin connections refused at the limit.",
        c.rejected.load(Ordering::Relaxed).to_string(),
    );
    o
}
