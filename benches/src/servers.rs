//! Small blocking test servers (a thread per connection): TCP echo and HTTP/1.1 "200 OK".
//!
//! They are the harness's own targets in tests and a simple backend for quick measurements
//! (`xdpmesh-bench serve`). Each can add a fixed delay before every response, and can *stall*
//! once: after its Nth request it holds every response for a while, as a GC pause or a hung
//! upstream would.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKind {
    /// Echo every byte received.
    Echo,
    /// Answer each HTTP/1.1 request with `status` and a body of `body_len` bytes.
    Http {
        status: u16,
        body_len: usize,
        chunked: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The stall starts when this many requests have been received (counting from 1).
    pub after_requests: u64,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOpts {
    pub kind: ServerKind,
    /// Added before every response.
    pub delay: Duration,
    pub stall: Option<Stall>,
}

impl ServerOpts {
    pub fn echo() -> Self {
        Self {
            kind: ServerKind::Echo,
            delay: Duration::ZERO,
            stall: None,
        }
    }

    pub fn http() -> Self {
        Self {
            kind: ServerKind::Http {
                status: 200,
                body_len: 13,
                chunked: false,
            },
            delay: Duration::ZERO,
            stall: None,
        }
    }
}

struct Shared {
    opts: ServerOpts,
    response: Vec<u8>,
    stop: AtomicBool,
    requests: AtomicU64,
    /// When connections were accepted (the first MAX_ACCEPT_LOG of them).
    accepted: Mutex<Vec<Instant>>,
    accepted_total: AtomicU64,
    stall_until: Mutex<Option<Instant>>,
    /// Open connections (clones), so Drop can shut them down; a worker removes its own.
    conns: Mutex<HashMap<u64, TcpStream>>,
    conns_changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker must not take the server down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Called once per request before answering: applies the stall and the delay.
    fn before_response(&self) {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let until = {
            let mut until = lock(&self.stall_until);
            if let Some(st) = self.opts.stall {
                if n == st.after_requests {
                    *until = Some(Instant::now() + st.duration);
                }
            }
            *until
        };
        if let Some(t) = until {
            let now = Instant::now();
            if t > now {
                // The stall being simulated: hold this response until it ends.
                thread::sleep(t - now);
            }
        }
        if !self.opts.delay.is_zero() {
            thread::sleep(self.opts.delay);
        }
    }
}

/// A running server; stops (and closes its connections) when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Listen on `listen` (port 0 picks a free one) and serve on background threads.
    pub fn start(listen: SocketAddr, opts: ServerOpts) -> io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let response = match &opts.kind {
            ServerKind::Echo => Vec::new(),
            ServerKind::Http {
                status,
                body_len,
                chunked,
            } => http_response(*status, *body_len, *chunked),
        };
        let shared = Arc::new(Shared {
            opts,
            response,
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            accepted: Mutex::new(Vec::new()),
            accepted_total: AtomicU64::new(0),
            stall_until: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            conns_changed: Condvar::new(),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name("bench-accept".into())
            .spawn(move || accept_loop(listener, sh))?;
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.accepted_total.load(Ordering::Relaxed)
    }

    /// When the connections were accepted (at most the first million).
    pub fn accept_times(&self) -> Vec<Instant> {
        lock(&self.shared.accepted).clone()
    }

    /// True once the configured stall has started.
    pub fn stalled(&self) -> bool {
        lock(&self.shared.stall_until).is_some()
    }

    /// Serve until the process ends (for `xdpmesh-bench serve`).
    pub fn wait(mut self) {
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so it sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let mut conns = lock(&self.shared.conns);
        for c in conns.values() {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Let the workers notice and leave (they may be inside a stall or a delay).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            conns = match self
                .shared
                .conns_changed
                .wait_timeout(conns, deadline - now)
            {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

const MAX_ACCEPT_LOG: usize = 1 << 20;

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            continue; // e.g. EMFILE or a connection reset before accept: keep serving
        };
        shared.accepted_total.fetch_add(1, Ordering::Relaxed);
        {
            let mut log = lock(&shared.accepted);
            if log.len() < MAX_ACCEPT_LOG {
                log.push(Instant::now());
            }
        }
        let _ = stream.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        match stream.try_clone() {
            Ok(clone) => {
                lock(&shared.conns).insert(id, clone);
            }
            Err(_) => continue,
        }
        let sh = shared.clone();
        let spawned = thread::Builder::new()
            .name("bench-conn".into())
            .spawn(move || {
                let _ = match sh.opts.kind {
                    ServerKind::Echo => serve_echo(stream, &sh),
                    ServerKind::Http { .. } => serve_http(stream, &sh),
                };
                lock(&sh.conns).remove(&id);
                sh.conns_changed.notify_all();
            });
        if spawned.is_err() {
            lock(&shared.conns).remove(&id);
        }
    }
}

fn serve_echo(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        shared.before_response();
        stream.write_all(&buf[..n])?;
    }
}

fn http_response(status: u16, body_len: usize, chunked: bool) -> Vec<u8> {
    let body = "x".repeat(body_len);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Status",
    };
    if chunked {
        let mut r = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        if body_len > 0 {
            r.push_str(&format!("{body_len:x}\r\n{body}\r\n"));
        }
        r.push_str("0\r\n\r\n");
        r.into_bytes()
    } else {
        format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n\r\n{body}")
            .into_bytes()
    }
}

const MAX_REQUEST_HEAD: usize = 64 * 1024;

fn serve_http(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Answer every complete request in the buffer, then read more.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let head_len = match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if buf.len() > MAX_REQUEST_HEAD {
                        stream.write_all(
                            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )?;
                        return Ok(());
                    }
                    break;
                }
                Err(_) => {
                    stream.write_all(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )?;
                    return Ok(());
                }
            };
            let mut body_len = 0usize;
            let mut close = req.version == Some(0);
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            if buf.len() < head_len + body_len {
                break; // the request body is still arriving
            }
            buf.drain(..head_len + body_len);
            shared.before_response();
            stream.write_all(&shared.response)?;
            if close {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
