//! One worker: a poll loop that joins a packet device (AF_XDP, TAP, ...) to a tcpstack [`Stack`]
//! and serves the built-in listener kinds `echo`, `sink` and `http-ok`.
//!
//! Per iteration: receive a batch and feed it to the stack; handle the stack's events and move
//! service bytes; transmit a batch (one wakeup per batch in copy mode). When an iteration finds
//! nothing to do for `spin` iterations in a row, the worker sleeps on the device until a frame
//! may be waiting or the stack's next timer, so an idle gateway does not burn a core.
//!
//! This is the single-queue worker; core pinning, several queues and the proxy come later.

use crate::device::Device;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as WallInstant};
use tcpstack::{ConnId, Error as TcpError, Event, Stack};

/// Test and benchmark services, configured like any listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// Sends back every byte; closes after the peer's FIN once everything is echoed.
    Echo,
    /// Reads and discards; closes after the peer's FIN.
    Sink,
    /// HTTP/1.1: answers every request with `200 OK` and the body `ok`, keeping the
    /// connection alive unless the request says `Connection: close`.
    HttpOk,
}

const HTTP_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
const HTTP_OK_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nok";
const HTTP_BAD: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// Largest request head the http-ok service buffers before answering 400.
const MAX_HEAD: usize = 16 * 1024;

struct Session {
    kind: Builtin,
    /// Bytes waiting to be written (echo data, HTTP responses). Bounded: echo reads only when
    /// this is empty; http-ok stops parsing while it holds a response.
    out: Vec<u8>,
    /// http-ok: request bytes not yet parsed.
    inbuf: Vec<u8>,
    /// Body bytes of the current request still to skip.
    skip: usize,
    eof: bool,
    close_after_out: bool,
    closed: bool,
}

/// Counters of one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub iterations: u64,
    pub sleeps: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub accepted: u64,
    pub resets: u64,
    pub sink_bytes: u64,
    pub http_requests: u64,
    pub http_bad_requests: u64,
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections that finished on their own before the deadline.
    pub finished: usize,
    /// Connections reset at the deadline.
    pub reset: usize,
}

pub struct Worker<D: Device> {
    dev: D,
    stack: Stack,
    services: HashMap<SocketAddrV4, Builtin>,
    sessions: HashMap<ConnId, Session>,
    start: WallInstant,
    /// Empty iterations before sleeping on the device.
    pub spin: u32,
    pub stats: WorkerStats,
    scratch: Vec<u8>,
}

impl<D: Device> Worker<D> {
    pub fn new(dev: D, stack: Stack) -> Self {
        Worker {
            dev,
            stack,
            services: HashMap::new(),
            sessions: HashMap::new(),
            start: WallInstant::now(),
            spin: 64,
            stats: WorkerStats::default(),
            scratch: vec![0; 64 * 1024],
        }
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Serves `kind` on `addr`.
    pub fn listen(&mut self, addr: SocketAddrV4, kind: Builtin) -> Result<(), TcpError> {
        self.stack.listen(addr)?;
        self.services.insert(addr, kind);
        Ok(())
    }

    fn now(&self) -> tcpstack::Instant {
        tcpstack::Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }

    /// One pass of the loop; returns whether anything happened.
    pub fn poll_once(&mut self) -> io::Result<bool> {
        self.stats.iterations += 1;
        let now = self.now();
        let batch = self.dev.capabilities().batch;
        let stack = &mut self.stack;
        let got = self.dev.receive(batch, |f| stack.handle_frame(now, f))?;
        self.stats.frames_in += got as u64;
        let served = self.serve(now);
        let mut sent = 0;
        loop {
            let stack = &mut self.stack;
            let n = self
                .dev
                .transmit(batch, |buf| stack.poll_transmit(now, buf))?;
            sent += n;
            // Fewer than a batch: the stack ran dry, or every TX buffer is in flight.
            if n < batch {
                break;
            }
        }
        self.stats.frames_out += sent as u64;
        Ok(got > 0 || sent > 0 || served)
    }

    /// Runs until `stop` is set: spins while busy, sleeps on the device when idle.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if self.poll_once()? {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle >= self.spin {
                let now = self.now();
                let wait = match self.stack.poll_timeout() {
                    Some(t) if t <= now => Duration::ZERO,
                    Some(t) => (t - now).min(Duration::from_millis(10)),
                    None => Duration::from_millis(10),
                };
                self.stats.sleeps += 1;
                self.dev.wait(wait)?;
                idle = 0;
            }
        }
        Ok(())
    }

    /// Graceful shutdown: stop accepting (listeners removed, so new SYNs are refused), close
    /// idle HTTP keep-alive connections, let the others finish until `timeout`, then reset what
    /// is left and flush the RSTs.
    pub fn drain(&mut self, timeout: Duration) -> io::Result<DrainReport> {
        let addrs: Vec<SocketAddrV4> = self.services.keys().copied().collect();
        for a in addrs {
            self.stack.unlisten(a);
        }
        let started = self.sessions.len();
        for s in self.sessions.values_mut() {
            if s.kind == Builtin::HttpOk && s.inbuf.is_empty() && s.out.is_empty() {
                s.close_after_out = true;
            }
        }
        let deadline = WallInstant::now() + timeout;
        while !self.sessions.is_empty() && WallInstant::now() < deadline {
            if !self.poll_once()? {
                self.dev.wait(Duration::from_millis(1))?;
            }
        }
        let left: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in &left {
            let _ = self.stack.abort(*id);
        }
        self.sessions.clear();
        // Send the RSTs (and anything else still queued) before the socket goes away.
        while self.poll_once()? {}
        Ok(DrainReport {
            finished: started - left.len(),
            reset: left.len(),
        })
    }

    fn serve(&mut self, now: tcpstack::Instant) -> bool {
        let mut did = false;
        while let Some(e) = self.stack.poll_event() {
            did = true;
            match e {
                Event::Accepted { id, local, .. } => {
                    let kind = self
                        .services
                        .get(&local)
                        .or_else(|| {
                            self.services
                                .get(&SocketAddrV4::new([0, 0, 0, 0].into(), local.port()))
                        })
                        .copied();
                    match kind {
                        Some(kind) => {
                            self.stats.accepted += 1;
                            let _ = self.stack.set_nagle(id, false);
                            self.sessions.insert(
                                id,
                                Session {
                                    kind,
                                    out: Vec::new(),
                                    inbuf: Vec::new(),
                                    skip: 0,
                                    eof: false,
                                    close_after_out: false,
                                    closed: false,
                                },
                            );
                        }
                        None => {
                            let _ = self.stack.abort(id);
                        }
                    }
                }
                Event::Reset { id, .. } => {
                    self.stats.resets += 1;
                    self.sessions.remove(&id);
                }
                Event::Closed(id) => {
                    self.sessions.remove(&id);
                }
                _ => {}
            }
        }
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            did |= self.progress(now, id);
        }
        did
    }

    /// Moves one session's bytes as far as the stack allows.
    fn progress(&mut self, now: tcpstack::Instant, id: ConnId) -> bool {
        let Some(mut s) = self.sessions.remove(&id) else {
            return false;
        };
        let mut did = false;
        loop {
            // Flush what is owed first: backpressure stops reading.
            if !s.out.is_empty() {
                match self.stack.write(id, &s.out) {
                    Ok(n) => {
                        s.out.drain(..n);
                        did = true;
                        continue;
                    }
                    Err(TcpError::WouldBlock) => break,
                    Err(_) => {
                        s.out.clear();
                        break;
                    }
                }
            }
            if s.close_after_out {
                break;
            }
            if s.kind == Builtin::HttpOk && self.answer_http(&mut s) {
                did = true;
                continue;
            }
            match self.stack.read(id, &mut self.scratch) {
                Ok(0) => {
                    s.eof = true;
                    break;
                }
                Ok(n) => {
                    did = true;
                    match s.kind {
                        Builtin::Echo => s.out.extend_from_slice(&self.scratch[..n]),
                        Builtin::Sink => self.stats.sink_bytes += n as u64,
                        Builtin::HttpOk => s.inbuf.extend_from_slice(&self.scratch[..n]),
                    }
                }
                Err(_) => break,
            }
        }
        if s.out.is_empty() && (s.eof || s.close_after_out) && !s.closed {
            let _ = self.stack.close(now, id);
            s.closed = true;
            did = true;
        }
        self.sessions.insert(id, s);
        did
    }

    /// Parses buffered requests and queues their responses; returns whether it did any.
    fn answer_http(&mut self, s: &mut Session) -> bool {
        let mut did = false;
        loop {
            if s.skip > 0 {
                let n = s.skip.min(s.inbuf.len());
                s.inbuf.drain(..n);
                s.skip -= n;
                if s.skip > 0 {
                    return did;
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&s.inbuf) {
                Ok(httparse::Status::Complete(head)) => {
                    let mut close = req.version == Some(0);
                    let mut body = 0usize;
                    let mut bad = false;
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("connection") {
                            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                            close = v.contains("close") || (close && !v.contains("keep-alive"));
                        } else if h.name.eq_ignore_ascii_case("content-length") {
                            match std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                            {
                                Some(n) if body == 0 || body == n => body = n,
                                _ => bad = true, // unparsable or conflicting Content-Length
                            }
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            bad = true; // no request bodies in chunked encoding here
                        }
                    }
                    s.inbuf.drain(..head);
                    did = true;
                    if bad {
                        self.stats.http_bad_requests += 1;
                        s.out.extend_from_slice(HTTP_BAD);
                        s.close_after_out = true;
                        return did;
                    }
                    self.stats.http_requests += 1;
                    s.skip = body;
                    if close {
                        s.out.extend_from_slice(HTTP_OK_CLOSE);
                        s.close_after_out = true;
                        return did;
                    }
                    s.out.extend_from_slice(HTTP_OK);
                }
                Ok(httparse::Status::Partial) => {
                    if s.inbuf.len() > MAX_HEAD {
                        self.stats.http_bad_requests += 1;
                        s.out.extend_from_slice(HTTP_BAD);
                        s.close_after_out = true;
                        return true;
                    }
                    return did;
                }
                Err(_) => {
                    self.stats.http_bad_requests += 1;
                    s.out.extend_from_slice(HTTP_BAD);
                    s.close_after_out = true;
                    return true;
                }
            }
        }
    }
}
