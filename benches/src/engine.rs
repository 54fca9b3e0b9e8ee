//! The open-loop load generator: one thread, mio, a fixed send timeline.
//!
//! Request `g` (counted over the whole run) is due at `t0 + g / rate` and belongs to connection
//! `g % N`. A connection carries one request at a time; while it waits for a response, the
//! requests that fall due on it queue up and are sent as soon as it is free, and their latency
//! is still counted from their intended send time. So a server that stalls for 300 ms is charged
//! up to 300 ms for every request scheduled during the stall, not only for the few in flight
//! (coordinated omission, as described by Gil Tene; wrk2 and HdrHistogram do the same).
//!
//! The loop sleeps in `epoll_wait` until the next send time (a timerfd gives sub-millisecond
//! wake-ups), a socket event, or a deadline: it never spins.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::error::{BenchError, ErrorKind};
use crate::http1::ResponseReader;
use crate::timer::Timer;

/// Latencies are recorded in nanoseconds, up to one hour, with 3 significant digits.
pub const HIST_HIGHEST_NS: u64 = 3_600_000_000_000;
pub const HIST_SIGFIG: u8 = 3;

const TIMER: Token = Token(usize::MAX);
const SLOT_BITS: u32 = 24;
const MAX_CONNECTIONS: usize = 1 << 20;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What one request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Send `size` bytes; the server echoes them; the response is complete after `size` bytes.
    /// With a new connection per request, `size == 0` measures the handshake alone.
    Echo { size: usize },
    /// Send these request bytes (an HTTP/1.1 request) and read one response.
    Http { request: Vec<u8> },
}

/// Where the live progress line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// Rewrite one line on stderr only if stderr is a terminal.
    Auto,
    /// Always print, one line per second (a line rewritten in place on a terminal).
    On,
}

/// One load run against one address.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The target as the user wrote it (for messages).
    pub target: String,
    pub addr: SocketAddr,
    pub workload: Workload,
    /// Open a new connection for every request (connect + exchange + close).
    pub new_conn: bool,
    pub connections: usize,
    /// Requests per second, over all connections.
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request with no complete response this long after its actual send is a timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Close with RST (SO_LINGER 0) so per-request connections leave no TIME_WAIT behind.
    pub linger0: bool,
    /// Busy-poll for this long before each send instead of sleeping through it. Waking a
    /// sleeping thread costs ~50 µs on a VM, which shows up as send delay; spinning trades CPU
    /// for accuracy. Zero (the default) never spins.
    pub spin: Duration,
    pub progress: Progress,
    /// Shown in the progress line.
    pub label: String,
    /// Processes whose CPU time the measured window is charged with (the proxies under
    /// test); empty: none.
    pub cpu_pids: Vec<u32>,
}

impl LoadSpec {
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Config(m.to_string()));
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad("--rate must be a positive number of requests per second");
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return bad("--connections must be between 1 and 1048576");
        }
        if self.duration.is_zero() {
            return bad("--duration must be longer than zero");
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("--timeout and --connect-timeout must be longer than zero");
        }
        if let Workload::Echo { size: 0 } = self.workload {
            if !self.new_conn {
                return bad("--size must be at least 1 byte (0 is only for --mode connect)");
            }
        }
        let total = (self.warmup + self.duration).as_secs_f64() * self.rate;
        if total > 1e10 {
            return bad("--rate x --duration is too large");
        }
        Ok(())
    }
}

/// What a run measured, before it is summarised. Runs of one target can be merged.
#[derive(Debug, Clone)]
pub struct RawRun {
    /// Successful requests scheduled in the measured window, ns from intended send to the end of
    /// the response.
    pub latency: Histogram<u64>,
    /// Actual send minus intended send (queueing behind a slow response, or harness lag).
    pub send_delay: Histogram<u64>,
    /// Requests scheduled in the measured window.
    pub scheduled: u64,
    /// Of those, completed successfully.
    pub ok: u64,
    /// Successful responses that completed inside the measured window (for the achieved rate).
    pub completed_in_window: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Length of the measured window(s).
    pub window: Duration,
    /// Most requests that were due but not yet sent at one time, in the measured window.
    pub max_backlog: u64,
    /// CPU time of [`LoadSpec::cpu_pids`] over the measured window(s), if any were given.
    pub cpu: Option<Duration>,
}

impl RawRun {
    pub fn new() -> Self {
        Self {
            latency: new_histogram(),
            send_delay: new_histogram(),
            scheduled: 0,
            ok: 0,
            completed_in_window: 0,
            errors: BTreeMap::new(),
            window: Duration::ZERO,
            max_backlog: 0,
            cpu: None,
        }
    }

    /// Add another run of the same target (a later round of `--compare`).
    pub fn merge(&mut self, other: &RawRun) {
        // Both histograms come from new_histogram(): same bounds, so add cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.send_delay.add(&other.send_delay);
        self.scheduled += other.scheduled;
        self.ok += other.ok;
        self.completed_in_window += other.completed_in_window;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_insert(0) += v;
        }
        self.window += other.window;
        self.max_backlog = self.max_backlog.max(other.max_backlog);
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

impl Default for RawRun {
    fn default() -> Self {
        Self::new()
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, HIST_HIGHEST_NS, HIST_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Run the load described by `spec` and return what it measured.
///
/// Fails with [`BenchError::Unreachable`] when the target does not accept a first connection,
/// and with [`BenchError::ConnectionsFailed`] when the persistent connections cannot be opened.
pub fn run(spec: &LoadSpec) -> Result<RawRun, BenchError> {
    spec.validate()?;
    preflight(spec)?;
    let mut engine = Engine::new(spec)?;
    if !spec.new_conn {
        engine.open_all()?;
    }
    engine.run()
}

/// One blocking connect, so an unreachable target is one clear error and not a run of errors.
fn preflight(spec: &LoadSpec) -> Result<(), BenchError> {
    std::net::TcpStream::connect_timeout(&spec.addr, spec.connect_timeout)
        .map(drop)
        .map_err(|source| BenchError::Unreachable {
            target: spec.target.clone(),
            addr: spec.addr,
            source,
        })
}

struct Inflight {
    g: u64,
    deadline: Instant,
}

enum Link {
    Down { retry_at: Instant },
    Connecting { stream: TcpStream, since: Instant },
    Up { stream: TcpStream },
}

struct Conn {
    link: Link,
    gen: usize,
    /// Requests of this connection whose intended send time has passed.
    released: u64,
    /// Requests of this connection sent (or failed before they could be sent).
    started: u64,
    inflight: Option<Inflight>,
    written: usize,
    echo_got: usize,
    http: ResponseReader,
    failures: u32,
}

struct Engine<'a> {
    spec: &'a LoadSpec,
    spin: Duration,
    poll: Poll,
    timer: Timer,
    conns: Vec<Conn>,
    request: Vec<u8>,
    scratch: Vec<u8>,
    t0: Instant,
    t_warm: Instant,
    t_end: Instant,
    ns_per_request: f64,
    total: u64,
    g_warm: u64,
    next_g: u64,
    started_total: u64,
    finished: u64,
    housekeeping: Option<Instant>,
    last_connect_error: Option<String>,
    out: RawRun,
    progress: ProgressState,
    /// The watched processes' CPU time when the measured window opened.
    cpu_open: Option<Duration>,
}

struct ProgressState {
    enabled: bool,
    tty: bool,
    next: Instant,
    ok: u64,
    errors: u64,
    hist: Histogram<u64>,
    printed: bool,
}

fn token(slot: usize, gen: usize) -> Token {
    Token(slot | (gen << SLOT_BITS))
}

impl<'a> Engine<'a> {
    fn new(spec: &'a LoadSpec) -> Result<Self, BenchError> {
        let poll = Poll::new().map_err(|e| BenchError::io("epoll_create", e))?;
        let timer = Timer::new(poll.registry(), TIMER).map_err(|e| BenchError::io("timerfd", e))?;
        let now = Instant::now();
        let conns = (0..spec.connections)
            .map(|_| Conn {
                link: Link::Down { retry_at: now },
                gen: 0,
                released: 0,
                started: 0,
                inflight: None,
                written: 0,
                echo_got: 0,
                http: ResponseReader::new(),
                failures: 0,
            })
            .collect();
        let request = match &spec.workload {
            // A recognisable pattern makes stray bytes easy to spot in a capture.
            Workload::Echo { size } => (0..*size).map(|i| b'a' + (i % 26) as u8).collect(),
            Workload::Http { request } => request.clone(),
        };
        let ns_per_request = 1e9 / spec.rate;
        let total = ((spec.warmup + spec.duration).as_secs_f64() * spec.rate).ceil() as u64;
        let g_warm = (spec.warmup.as_secs_f64() * spec.rate).ceil() as u64;
        let (enabled, tty) = match spec.progress {
            Progress::Off => (false, false),
            Progress::Auto => {
                let tty = io::stderr().is_terminal();
                (tty, tty)
            }
            Progress::On => (true, io::stderr().is_terminal()),
        };
        Ok(Self {
            spec,
            spin: spec.spin,
            poll,
            timer,
            conns,
            request,
            scratch: vec![0u8; 64 * 1024],
            t0: now,
            t_warm: now,
            t_end: now,
            ns_per_request,
            total,
            g_warm,
            next_g: 0,
            started_total: 0,
            finished: 0,
            housekeeping: None,
            last_connect_error: None,
            out: RawRun::new(),
            progress: ProgressState {
                enabled,
                tty,
                next: now,
                ok: 0,
                errors: 0,
                hist: new_histogram(),
                printed: false,
            },
            cpu_open: None,
        })
    }

    fn intended(&self, g: u64) -> Instant {
        self.t0 + Duration::from_nanos((g as f64 * self.ns_per_request) as u64)
    }

    fn n(&self) -> u64 {
        self.conns.len() as u64
    }

    /// Open every persistent connection before the timeline starts, so set-up is not measured.
    fn open_all(&mut self) -> Result<(), BenchError> {
        let now = Instant::now();
        for s in 0..self.conns.len() {
            self.open(s, now);
        }
        let deadline = now + self.spec.connect_timeout;
        let mut events = Events::with_capacity(1024);
        loop {
            let up = self
                .conns
                .iter()
                .filter(|c| matches!(c.link, Link::Up { .. }))
                .count();
            let failed = self.conns.iter().any(|c| c.failures > 0);
            let now = Instant::now();
            if failed || now >= deadline {
                return Err(BenchError::ConnectionsFailed {
                    target: self.spec.target.clone(),
                    opened: up,
                    wanted: self.conns.len(),
                    reason: self
                        .last_connect_error
                        .clone()
                        .unwrap_or_else(|| "connect timed out".into()),
                });
            }
            if up == self.conns.len() {
                return Ok(());
            }
            self.poll
                .poll(&mut events, Some(deadline - now))
                .map_err(|e| BenchError::io("epoll_wait", e))?;
            for ev in events.iter() {
                self.on_event(ev);
            }
        }
    }

    fn run(mut self) -> Result<RawRun, BenchError> {
        let now = Instant::now();
        self.t0 = now;
        self.t_warm = now + self.spec.warmup;
        self.t_end = self.t_warm + self.spec.duration;
        self.progress.next = now + PROGRESS_EVERY;
        let drain_deadline = self.t_end + self.spec.timeout;
        let mut events = Events::with_capacity(1024);
        let mut cpu_done = self.spec.cpu_pids.is_empty();
        loop {
            let now = Instant::now();
            if !cpu_done {
                // Late by at most one wake-up (the gap to the next send): small against the
                // window, and alike for every target.
                if self.cpu_open.is_none() && now >= self.t_warm {
                    self.cpu_open = Some(self.watched_cpu()?);
                }
                if let Some(open) = self.cpu_open.filter(|_| now >= self.t_end) {
                    self.out.cpu = Some(self.watched_cpu()?.saturating_sub(open));
                    cpu_done = true;
                }
            }
            self.release(now);
            if self.housekeeping.is_some_and(|t| t <= now) {
                self.housekeep(now);
            }
            if self.progress.enabled && now >= self.progress.next {
                self.print_progress(now);
            }
            if self.next_g >= self.total && (self.finished >= self.total || now >= drain_deadline) {
                break;
            }
            let mut busy = false;
            let mut wake = if self.next_g < self.total {
                let send_at = self.intended(self.next_g);
                let early = send_at.checked_sub(self.spin).unwrap_or(send_at);
                busy = !self.spin.is_zero() && early <= now;
                early
            } else {
                drain_deadline
            };
            if let Some(h) = self.housekeeping {
                wake = wake.min(h);
            }
            if !cpu_done && now < self.t_end {
                // Close the CPU window on time, not at the next answer or the drain's end.
                wake = wake.min(self.t_end);
            }
            if self.progress.enabled {
                wake = wake.min(self.progress.next);
            }
            let timeout = if busy {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(now)
            };
            if !timeout.is_zero() {
                // If the timerfd cannot be armed, epoll's own (millisecond) timeout still wakes us.
                let _ = self.timer.arm(wake, now);
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BenchError::io("epoll_wait", e)),
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    self.timer.fired();
                } else {
                    self.on_event(ev);
                }
            }
        }
        if let (Some(open), false) = (self.cpu_open, cpu_done) {
            // The last answer came in before the window's end.
            self.out.cpu = Some(self.watched_cpu()?.saturating_sub(open));
        }
        self.finish_run();
        Ok(self.out)
    }

    fn watched_cpu(&self) -> Result<Duration, BenchError> {
        crate::cpu::sum_cpu(&self.spec.cpu_pids).map_err(|e| BenchError::io("/proc", e))
    }

    /// Count requests still unanswered at the end as unfinished, and close everything.
    fn finish_run(&mut self) {
        let n = self.n();
        for s in 0..self.conns.len() {
            let c = &self.conns[s];
            let mut unfinished = 0u64;
            if let Some(inf) = &c.inflight {
                if inf.g >= self.g_warm {
                    unfinished += 1;
                }
            }
            for k in c.started..c.released {
                if k * n + s as u64 >= self.g_warm {
                    unfinished += 1;
                }
            }
            if unfinished > 0 {
                *self.out.errors.entry(ErrorKind::Unfinished).or_insert(0) += unfinished;
            }
            self.close(s);
        }
        self.out.scheduled = self.total.saturating_sub(self.g_warm);
        self.out.window = self.spec.duration;
        if self.progress.printed && self.progress.tty {
            eprintln!();
        }
    }

    /// Hand every request whose time has come to its connection.
    fn release(&mut self, now: Instant) {
        while self.next_g < self.total && self.intended(self.next_g) <= now {
            let s = (self.next_g % self.n()) as usize;
            self.conns[s].released += 1;
            self.next_g += 1;
            self.try_start(s, now);
        }
        if now >= self.t_warm && now <= self.t_end {
            let backlog = self.next_g - self.started_total;
            self.out.max_backlog = self.out.max_backlog.max(backlog);
        }
    }

    fn note_timer(&mut self, at: Instant) {
        self.housekeeping = Some(self.housekeeping.map_or(at, |h| h.min(at)));
    }

    /// Send the connection's next due request if it is free.
    fn try_start(&mut self, s: usize, now: Instant) {
        let c = &self.conns[s];
        if c.inflight.is_some() || c.started >= c.released {
            return;
        }
        match c.link {
            Link::Up { .. } => self.begin_request(s, now),
            Link::Connecting { .. } => {}
            Link::Down { retry_at } => {
                if self.spec.new_conn {
                    self.open(s, now);
                    if matches!(self.conns[s].link, Link::Connecting { .. }) {
                        // The request's clock runs from here: the handshake is part of it.
                        self.begin_request(s, now);
                    }
                } else if retry_at <= now {
                    self.open(s, now);
                } else {
                    self.note_timer(retry_at);
                }
            }
        }
    }

    fn begin_request(&mut self, s: usize, now: Instant) {
        let n = self.n();
        let c = &mut self.conns[s];
        let g = c.started * n + s as u64;
        c.started += 1;
        c.written = 0;
        c.echo_got = 0;
        let deadline = now + self.spec.timeout;
        c.inflight = Some(Inflight { g, deadline });
        self.started_total += 1;
        if g >= self.g_warm {
            let delay = now.saturating_duration_since(self.intended(g));
            self.out
                .send_delay
                .saturating_record(delay.as_nanos() as u64);
        }
        self.note_timer(deadline);
        if matches!(self.conns[s].link, Link::Up { .. }) {
            self.write_some(s);
        }
    }

    fn open(&mut self, s: usize, now: Instant) {
        let c = &mut self.conns[s];
        c.gen = c.gen.wrapping_add(1) & (usize::MAX >> SLOT_BITS);
        let tok = token(s, c.gen);
        let result = TcpStream::connect(self.spec.addr).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                tok,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match result {
            Ok(stream) => {
                let c = &mut self.conns[s];
                c.link = Link::Connecting { stream, since: now };
                c.http.reset();
                self.note_timer(now + self.spec.connect_timeout);
            }
            Err(e) => self.connect_failed(s, ErrorKind::from_io(&e, true), &e.to_string(), now),
        }
    }

    fn connect_failed(&mut self, s: usize, kind: ErrorKind, why: &str, now: Instant) {
        self.close(s);
        self.last_connect_error = Some(why.to_string());
        let n = self.n();
        let c = &mut self.conns[s];
        let backoff = if self.spec.new_conn {
            Duration::ZERO
        } else {
            // 1 ms doubling to 128 ms, so a dead target is not hammered in a loop.
            Duration::from_millis(1 << c.failures.min(7))
        };
        c.failures = c.failures.saturating_add(1);
        let retry_at = now + backoff;
        c.link = Link::Down { retry_at };
        if let Some(inf) = c.inflight.take() {
            self.record(inf.g, Err(kind), now);
        } else if c.started < c.released {
            // The request that would have used this connection fails in its place.
            let g = c.started * n + s as u64;
            c.started += 1;
            self.started_total += 1;
            self.record(g, Err(kind), now);
        } else {
            self.count_error_at(kind, now);
        }
        self.note_timer(retry_at);
    }

    /// Drop the connection's socket, if any.
    fn close(&mut self, s: usize) {
        let now = Instant::now();
        let link = std::mem::replace(&mut self.conns[s].link, Link::Down { retry_at: now });
        let mut stream = match link {
            Link::Up { stream } | Link::Connecting { stream, .. } => stream,
            Link::Down { .. } => return,
        };
        let _ = self.poll.registry().deregister(&mut stream);
        if self.spec.linger0 {
            let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
        }
        self.conns[s].http.reset();
    }

    /// The connection broke: fail its request, and reconnect.
    fn fail_conn(&mut self, s: usize, kind: ErrorKind, now: Instant) {
        self.close(s);
        // A connection that breaks while idle (a server closing a keep-alive connection) costs
        // no request; if reconnecting fails, that is counted.
        if let Some(inf) = self.conns[s].inflight.take() {
            self.record(inf.g, Err(kind), now);
        }
        if self.spec.new_conn {
            self.try_start(s, now);
        } else {
            self.open(s, now);
        }
    }

    fn count_error_at(&mut self, kind: ErrorKind, now: Instant) {
        if now >= self.t_warm {
            *self.out.errors.entry(kind).or_insert(0) += 1;
            self.progress.errors += 1;
        }
    }

    /// A request ended, well or not.
    fn record(&mut self, g: u64, result: Result<(), ErrorKind>, now: Instant) {
        self.finished += 1;
        let measured = g >= self.g_warm;
        match result {
            Ok(()) => {
                if measured {
                    let lat = now.saturating_duration_since(self.intended(g)).as_nanos() as u64;
                    self.out.latency.saturating_record(lat);
                    self.out.ok += 1;
                    if self.progress.enabled {
                        self.progress.hist.saturating_record(lat);
                    }
                }
                if now >= self.t_warm && now <= self.t_end {
                    self.out.completed_in_window += 1;
                    self.progress.ok += 1;
                }
            }
            Err(kind) => {
                if measured {
                    *self.out.errors.entry(kind).or_insert(0) += 1;
                    self.progress.errors += 1;
                }
            }
        }
    }

    /// The in-flight request got its whole response.
    fn complete(&mut self, s: usize, result: Result<(), ErrorKind>, close: bool, now: Instant) {
        if let Some(inf) = self.conns[s].inflight.take() {
            self.record(inf.g, result, now);
        }
        if self.spec.new_conn {
            self.close(s);
            self.try_start(s, now);
        } else if close {
            self.close(s);
            self.open(s, now);
        } else {
            self.try_start(s, now);
        }
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        let raw = ev.token().0;
        let s = raw & ((1 << SLOT_BITS) - 1);
        let gen = raw >> SLOT_BITS;
        if s >= self.conns.len() || self.conns[s].gen != gen {
            return; // an event for a socket we already replaced
        }
        let now = Instant::now();
        if let Link::Connecting { stream, .. } = &self.conns[s].link {
            // mio: a writable (or error) event on a connecting socket means the handshake
            // ended; take_error/peer_addr say how.
            let outcome = match stream.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Err(e),
                },
            };
            match outcome {
                Err(e) => {
                    self.connect_failed(s, ErrorKind::from_io(&e, true), &e.to_string(), now);
                    return;
                }
                Ok(()) => self.connected(s, now),
            }
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read_some(s);
        }
        if ev.is_writable() && self.conns[s].gen == gen {
            self.write_some(s);
        }
    }

    fn connected(&mut self, s: usize, now: Instant) {
        let c = &mut self.conns[s];
        let link = std::mem::replace(&mut c.link, Link::Down { retry_at: now });
        if let Link::Connecting { stream, .. } = link {
            // Requests are small and answered one at a time: Nagle would only add delay.
            let _ = stream.set_nodelay(true);
            c.link = Link::Up { stream };
        }
        c.failures = 0;
        if c.inflight.is_some() {
            if self.request.is_empty() {
                // --mode connect --size 0: the handshake is the whole request.
                self.complete(s, Ok(()), true, now);
            } else {
                self.write_some(s);
            }
        } else {
            self.try_start(s, now);
        }
    }

    fn write_some(&mut self, s: usize) {
        let c = &mut self.conns[s];
        if c.inflight.is_none() {
            return;
        }
        let Link::Up { stream } = &mut c.link else {
            return;
        };
        while c.written < self.request.len() {
            match stream.write(&self.request[c.written..]) {
                Ok(0) => {
                    self.fail_conn(s, ErrorKind::Closed, Instant::now());
                    return;
                }
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_conn(s, ErrorKind::from_io(&e, false), Instant::now());
                    return;
                }
            }
        }
    }

    fn read_some(&mut self, s: usize) {
        loop {
            let gen = self.conns[s].gen;
            let res = match &mut self.conns[s].link {
                Link::Up { stream } => stream.read(&mut self.scratch),
                _ => return,
            };
            let now = Instant::now();
            match res {
                Ok(0) => {
                    self.on_eof(s, now);
                    return;
                }
                Ok(n) => {
                    self.on_data(s, n, now);
                    // The connection was closed or replaced while handling the data.
                    if self.conns[s].gen != gen || !matches!(self.conns[s].link, Link::Up { .. }) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_conn(s, ErrorKind::from_io(&e, false), now);
                    return;
                }
            }
        }
    }

    fn on_eof(&mut self, s: usize, now: Instant) {
        if self.conns[s].inflight.is_some() {
            if let Workload::Http { .. } = &self.spec.workload {
                if let Ok(Some(done)) = self.conns[s].http.eof() {
                    let result = status_result(done.status);
                    self.complete(s, result, true, now);
                    return;
                }
            }
        }
        self.fail_conn(s, ErrorKind::Closed, now);
    }

    fn on_data(&mut self, s: usize, n: usize, now: Instant) {
        if self.conns[s].inflight.is_none() {
            // We never pipeline: bytes with no request outstanding are not a valid response.
            self.fail_conn(s, ErrorKind::BadResponse, now);
            return;
        }
        let spec = self.spec;
        match &spec.workload {
            Workload::Echo { size } => {
                let c = &mut self.conns[s];
                c.echo_got += n;
                if c.echo_got > *size {
                    self.fail_conn(s, ErrorKind::BadResponse, now);
                } else if c.echo_got == *size {
                    self.complete(s, Ok(()), false, now);
                }
            }
            Workload::Http { .. } => match self.conns[s].http.push(&self.scratch[..n]) {
                Ok(None) => {}
                Ok(Some(done)) if done.leftover > 0 => {
                    self.fail_conn(s, ErrorKind::BadResponse, now);
                }
                Ok(Some(done)) => {
                    let result = status_result(done.status);
                    self.complete(s, result, done.close, now);
                }
                Err(_) => self.fail_conn(s, ErrorKind::BadResponse, now),
            },
        }
    }

    /// Fail timed-out requests and handshakes, retry dropped connections; find the next deadline.
    fn housekeep(&mut self, now: Instant) {
        self.housekeeping = None;
        for s in 0..self.conns.len() {
            if let Some(inf) = &self.conns[s].inflight {
                if inf.deadline <= now {
                    self.fail_conn(s, ErrorKind::Timeout, now);
                } else {
                    let d = inf.deadline;
                    self.note_timer(d);
                }
            }
            match &self.conns[s].link {
                Link::Connecting { since, .. } => {
                    let d = *since + self.spec.connect_timeout;
                    if d <= now {
                        self.connect_failed(s, ErrorKind::ConnectTimeout, "connect timed out", now);
                    } else {
                        self.note_timer(d);
                    }
                }
                Link::Down { .. } => self.try_start(s, now),
                Link::Up { .. } => {}
            }
        }
    }

    fn print_progress(&mut self, now: Instant) {
        let p = &mut self.progress;
        let elapsed = now.saturating_duration_since(self.t0).as_secs_f64();
        let total = (self.spec.warmup + self.spec.duration).as_secs_f64();
        let phase = if now < self.t_warm {
            "warm-up"
        } else if now <= self.t_end {
            "measure"
        } else {
            "drain"
        };
        let p99 = if p.hist.is_empty() {
            "-".to_string()
        } else {
            crate::report::fmt_ns(p.hist.value_at_quantile(0.99))
        };
        let line = format!(
            "[{}] {phase} {elapsed:5.1}s/{total:.1}s  ok {}  p99(1s) {p99}  errors {}  backlog {}",
            self.spec.label,
            p.ok,
            p.errors,
            self.next_g - self.started_total,
        );
        if p.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        p.printed = true;
        p.hist.reset();
        while p.next <= now {
            p.next += PROGRESS_EVERY;
        }
    }
}

/// RFC 9110 §15: 2xx and 3xx are answers; 4xx and 5xx are counted as errors.
fn status_result(status: u16) -> Result<(), ErrorKind> {
    match status {
        200..=399 => Ok(()),
        400..=499 => Err(ErrorKind::Http4xx),
        _ => Err(ErrorKind::Http5xx),
    }
}
