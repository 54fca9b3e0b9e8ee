//! One worker: a poll loop that joins packet devices (AF_XDP, in-memory, ...) to tcpstack
//! [`Stack`]s and serves the built-in listener kinds `echo`, `sink` and `http-ok` and, given an
//! [`Engine`], the proxy.
//!
//! A worker has one [`Port`] per interface it serves (one queue of each, with that
//! interface's stack), so a proxied connection in through one interface and out through
//! another stays on one core. Per iteration: receive a batch on every port and feed it to
//! its stack; handle the stacks' events and move service bytes; transmit a batch per port
//! (one wakeup per batch in copy mode). When the worker has found nothing to do for its
//! polling window (at most `spin`, adapted to the gaps in its traffic: [`crate::spin`]), it
//! sleeps on its descriptors until a frame may be waiting or the next timer, so an idle
//! gateway does not burn a core.
//!
//! On an interface with several queues each queue has its own worker and stack; a port
//! given a [`Shard`] hands TCP segments of flows it does not own to their owner through a
//! bounded queue (see [`crate::shard`]) and sleeps on its own wakeup fd as well as the device.

use crate::device::Device;
use crate::shard::{Dispatch, FlowOwner};
use crate::shutdown::Arrival;
use crate::spin::{self, SpinWindow};
use crate::wake::{self, Wake};
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use mesh::engine::Engine;
use mesh::h2back::{BConn, H2Back, H2BackNet};
use mesh::h2front::{FConn, H2Front, H2Net};

/// A connection as the engine sees it: through the HTTP/2 front (client streams) and back
/// (streams to h2c servers).
pub type EConn = FConn<BConn<PConn>>;
use mesh::net::{Net, NetError, NetEvent};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// `poll = "answers"`: short sleeps through most of an owed answer's usual wait.
    pub naps: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub accepted: u64,
    pub resets: u64,
    pub sink_bytes: u64,
    pub http_requests: u64,
    pub http_bad_requests: u64,
    /// Frames of flows owned by another worker, handed to it.
    pub handoff_out: u64,
    /// Frames handed to this worker by others.
    pub handoff_in: u64,
    /// Frames that could not be handed over: the owner's queue was full (TCP resends them).
    pub handoff_dropped: u64,
    /// The proxy engine's counters (zero without an engine).
    pub proxy: mesh::engine::ProxyStats,
    /// The TCP/IP stacks' drop reasons and event counters, summed over this worker's ports
    /// (retransmissions, checksum failures, resets, ...).
    pub tcp: tcpstack::Stats,
    /// The kernel's ring drop counters, summed over this worker's ports; read at most
    /// every [`RING_STATS_EVERY`].
    pub rings: crate::device::RingDrops,
    /// Bytes the stacks' connections hold in send and receive buffers now (a gauge).
    pub tcp_buffer_bytes: u64,
    /// Connections the stacks hold now, TIME-WAIT excluded (a gauge).
    pub tcp_connections: u64,
}

/// How often a worker asks the kernel for its rings' drop counters (a system call each).
pub const RING_STATS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Frames one worker's hand-off queue holds.
pub const HANDOFF_DEPTH: usize = 1024;

/// A worker's place among the workers of one interface: who owns which flow, and the
/// queues to hand frames to the others.
pub struct Shard {
    index: usize,
    owner: Arc<FlowOwner>,
    inbox: Receiver<Vec<u8>>,
    wake: Arc<Wake>,
    /// Indexed by worker; this worker's own entry is never used.
    peers: Vec<(Sender<Vec<u8>>, Arc<Wake>)>,
    /// Bit i: worker i was handed frames in this batch and needs a wakeup.
    to_wake: u64,
}

impl Shard {
    /// One shard per worker of `owner` (at most 64 workers per interface).
    pub fn all(owner: Arc<FlowOwner>) -> io::Result<Vec<Shard>> {
        let n = owner.workers();
        if n > 64 {
            return Err(io::Error::other("at most 64 workers per interface"));
        }
        let mut inboxes = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = channel::bounded(HANDOFF_DEPTH);
            let w = Arc::new(Wake::new()?);
            inboxes.push((rx, w.clone()));
            peers.push((tx, w));
        }
        Ok(inboxes
            .into_iter()
            .enumerate()
            .map(|(index, (inbox, wake))| Shard {
                index,
                owner: owner.clone(),
                inbox,
                wake,
                peers: peers.clone(),
                to_wake: 0,
            })
            .collect())
    }

    pub fn index(&self) -> usize {
        self.index
    }

    fn hand(&mut self, to: usize, frame: &[u8], stats: &mut WorkerStats) {
        // A copy per frame: hand-offs are the exception path (veth, or a NIC whose RSS key
        // we were not told), not the steady state.
        match self.peers[to].0.try_send(frame.to_vec()) {
            Ok(()) => {
                stats.handoff_out += 1;
                self.to_wake |= 1 << to;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                stats.handoff_dropped += 1;
            }
        }
    }

    fn wake_peers(&mut self) {
        while self.to_wake != 0 {
            let i = self.to_wake.trailing_zeros() as usize;
            self.to_wake &= !(1 << i);
            self.peers[i].1.notify();
        }
    }
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections that finished on their own before the deadline.
    pub finished: usize,
    /// Connections reset at the deadline.
    pub reset: usize,
}

/// One interface queue of a worker: its device, its stack, and its place among the
/// interface's workers.
pub struct Port<D: Device> {
    pub dev: D,
    pub stack: Stack,
    shard: Option<Shard>,
}

/// A connection on one of a worker's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PConn {
    pub port: u8,
    pub id: ConnId,
}

/// The worker's ports as one [`Net`] for the proxy: connections to a destination go out of
/// the port whose subnet holds it, else the first port with a next hop.
pub struct StackNet<'a, D: Device> {
    ports: &'a mut [Port<D>],
    now: tcpstack::Instant,
    /// Port whose events are polled next.
    next: usize,
}

impl<D: Device> StackNet<'_, D> {
    fn stack(&mut self, c: PConn) -> Option<&mut Stack> {
        self.ports.get_mut(c.port as usize).map(|p| &mut p.stack)
    }
}

fn tcp_err(e: TcpError) -> NetError {
    match e {
        TcpError::WouldBlock => NetError::WouldBlock,
        TcpError::SendClosed => NetError::Closed,
        _ => NetError::Reset,
    }
}

impl<D: Device> Net for StackNet<'_, D> {
    type Conn = PConn;

    fn connect(&mut self, now: tcpstack::Instant, remote: SocketAddrV4) -> Result<PConn, NetError> {
        let port = self
            .ports
            .iter()
            .position(|p| {
                p.stack
                    .config()
                    .addresses
                    .iter()
                    .any(|c| c.contains(*remote.ip()))
            })
            .or_else(|| {
                self.ports
                    .iter()
                    .position(|p| p.stack.config().gateway.is_some())
            })
            .unwrap_or(0);
        let stack = &mut self.ports.get_mut(port).ok_or(NetError::Reset)?.stack;
        let id = stack.connect(now, remote).map_err(|_| NetError::Reset)?;
        let _ = stack.set_nagle(id, false);
        Ok(PConn {
            port: port as u8,
            id,
        })
    }

    fn read(&mut self, c: PConn, buf: &mut [u8]) -> Result<usize, NetError> {
        self.stack(c)
            .ok_or(NetError::Closed)?
            .read(c.id, buf)
            .map_err(tcp_err)
    }

    fn write(&mut self, c: PConn, data: &[u8]) -> Result<usize, NetError> {
        self.stack(c)
            .ok_or(NetError::Closed)?
            .write(c.id, data)
            .map_err(tcp_err)
    }

    fn shutdown_write(&mut self, c: PConn) {
        if let Some(s) = self.stack(c) {
            let _ = s.shutdown_write(c.id);
        }
    }

    fn close(&mut self, now: tcpstack::Instant, c: PConn) {
        if let Some(s) = self.stack(c) {
            let _ = s.close(now, c.id);
        }
    }

    fn abort(&mut self, c: PConn) {
        if let Some(s) = self.stack(c) {
            let _ = s.abort(c.id);
        }
    }

    fn addrs(&self, c: PConn) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let st = &self.ports.get(c.port as usize)?.stack;
        Some((st.local_addr(c.id).ok()?, st.remote_addr(c.id).ok()?))
    }

    fn tcp_info(&self, c: PConn) -> Option<mesh::net::TcpInfo> {
        let i = self
            .ports
            .get(c.port as usize)?
            .stack
            .conn_info(c.id)
            .ok()?;
        Some(mesh::net::TcpInfo {
            state: format!("{:?}", i.state).to_lowercase(),
            rtt: i.srtt,
            cwnd_bytes: Some(i.cwnd as u64),
            retransmits: u64::from(i.retransmits),
        })
    }

    fn poll_event(&mut self) -> Option<NetEvent<PConn>> {
        let n = self.ports.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if let Some(e) = self.ports[i].stack.poll_event() {
                self.next = i;
                let c = |id| PConn { port: i as u8, id };
                return Some(match e {
                    Event::Accepted { id, local, remote } => NetEvent::Accepted {
                        conn: c(id),
                        local,
                        remote,
                    },
                    Event::Connected(id) => NetEvent::Connected(c(id)),
                    Event::Readable(id) | Event::PeerClosed(id) => NetEvent::Readable(c(id)),
                    Event::Writable(id) => NetEvent::Writable(c(id)),
                    Event::Closed(id) => NetEvent::Closed(c(id)),
                    Event::Reset { id, .. } => NetEvent::Reset(c(id)),
                });
            }
        }
        let _ = self.now;
        None
    }
}

pub struct Worker<D: Device> {
    ports: Vec<Port<D>>,
    services: HashMap<SocketAddrV4, Builtin>,
    sessions: HashMap<PConn, Session>,
    engine: Option<Engine<EConn>>,
    /// HTTP/2 clients of the engine's `http` listeners, each stream a connection of its own.
    front: H2Front<BConn<PConn>>,
    /// HTTP/2 servers (h2c endpoints): the engine's connections to them are streams.
    back: H2Back<PConn>,
    /// The engine's events go here as access log lines, when on.
    access_log: Option<crate::accesslog::Sink>,
    /// Requests go to `GET /tap` while someone taps, when on.
    tap: Option<crate::tap_hub::TapPort>,
    clock: crate::clock::Clock,
    /// The longest the worker keeps polling after its last work before sleeping on the
    /// devices; the window adapts below it ([`SpinWindow`]). [`hw_config::DEFAULT_SPIN`] by
    /// default; `Duration::MAX`: never sleep.
    pub spin: Duration,
    /// `poll = "answers"`: poll only while one of the stacks is owed an answer
    /// ([`tcpstack::Stack::awaiting_answers`]), at most `spin` after the last work; sleep
    /// as soon as nothing is owed.
    pub answers_only: bool,
    pub stats: WorkerStats,
    /// Where the worker copies its counters now and then, for readers on other threads.
    pub stats_out: Option<Arc<Mutex<WorkerStats>>>,
    /// Answers the admin API's `GET /connections` from the loop.
    pub inspect: Option<Arc<crate::inspect::Inspect>>,
    /// When `stats.rings` was last read from the kernel.
    rings_read_at: Option<WallInstant>,
    /// When the allocator was last trimmed, and the most memory held since (see
    /// `trim_if_shrunk`).
    trim_mark: (WallInstant, u64),
    scratch: Vec<u8>,
    ids: Vec<PConn>,
}

impl<D: Device> Worker<D> {
    /// A worker with one port.
    pub fn new(dev: D, stack: Stack) -> Self {
        Worker {
            ports: vec![Port {
                dev,
                stack,
                shard: None,
            }],
            services: HashMap::new(),
            sessions: HashMap::new(),
            engine: None,
            // No `http` listener without an engine: everything passes through.
            front: H2Front::new(
                Default::default(),
                |_| None,
                crate::proxy::h2_stats().clone(),
            ),
            back: H2Back::new(
                Default::default(),
                |_| false,
                crate::proxy::h2_upstream_stats().clone(),
            ),
            access_log: None,
            tap: None,
            clock: crate::clock::Clock::start(),
            spin: hw_config::DEFAULT_SPIN,
            answers_only: false,
            stats: WorkerStats::default(),
            stats_out: None,
            inspect: None,
            rings_read_at: None,
            trim_mark: (WallInstant::now(), 0),
            scratch: vec![0; 64 * 1024],
            ids: Vec::new(),
        }
    }

    /// Adds a port (another interface's queue); returns its index.
    pub fn add_port(&mut self, dev: D, stack: Stack, shard: Option<Shard>) -> usize {
        self.ports.push(Port { dev, stack, shard });
        self.ports.len() - 1
    }

    /// Makes port 0 one of several workers' on its interface (see [`Shard`]).
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.ports[0].shard = Some(shard);
        self
    }

    /// Serves the proxy listeners of the engine's tables; each accepted connection gets its
    /// listener's TCP options (`keepalive`) from them.
    pub fn with_engine(mut self, engine: Engine<EConn>) -> Self {
        self.front = crate::proxy::h2_front(engine.publisher());
        self.back = crate::proxy::h2_back(engine.publisher());
        self.engine = Some(engine);
        self
    }

    /// Sends the engine's events to the access log (call after `with_engine`).
    pub fn with_access_log(mut self, sink: crate::accesslog::Sink) -> Self {
        if let Some(e) = self.engine.as_mut() {
            crate::accesslog::Sink::enable(e);
        }
        self.access_log = Some(sink);
        self
    }

    /// Offers the engine's requests to `GET /tap` while someone taps (events are built
    /// only then, unless the access log keeps them on).
    pub fn with_tap(mut self, hub: Arc<crate::tap_hub::TapHub>) -> Self {
        self.tap = Some(crate::tap_hub::TapPort::new(hub));
        self
    }

    pub fn engine(&self) -> Option<&Engine<EConn>> {
        self.engine.as_ref()
    }

    /// Port 0's stack.
    pub fn stack(&self) -> &Stack {
        &self.ports[0].stack
    }

    /// Port 0's device.
    pub fn device(&self) -> &D {
        &self.ports[0].dev
    }

    pub fn ports(&self) -> &[Port<D>] {
        &self.ports
    }

    fn publish_stats(&mut self) {
        if let Some(e) = &self.engine {
            self.stats.proxy = e.stats;
        }
        let mut tcp = tcpstack::Stats::default();
        let (mut bufs, mut conns) = (0, 0);
        for p in &self.ports {
            tcp.add(p.stack.stats());
            bufs += p.stack.buffers_allocated() as u64;
            conns += p.stack.connection_count() as u64;
        }
        self.stats.tcp = tcp;
        self.stats.tcp_buffer_bytes = bufs;
        self.stats.tcp_connections = conns;
        let now = WallInstant::now();
        if self
            .rings_read_at
            .is_none_or(|t| now.saturating_duration_since(t) >= RING_STATS_EVERY)
        {
            self.rings_read_at = Some(now);
            let mut rings = crate::device::RingDrops::default();
            for p in &self.ports {
                rings.add(&p.dev.ring_drops());
            }
            self.stats.rings = rings;
        }
        if let Some(out) = &self.stats_out {
            *out.lock().unwrap_or_else(|e| e.into_inner()) = self.stats;
        }
        if let (Some(i), Some(engine), front, back) = (
            &self.inspect,
            self.engine.as_ref(),
            &mut self.front,
            &mut self.back,
        ) {
            let now = self.clock.now();
            i.serve(|| {
                let mut stack = StackNet {
                    ports: &mut self.ports,
                    now,
                    next: 0,
                };
                let mut back = H2BackNet::new(&mut stack, back, now);
                let net = H2Net::new(&mut back, front, now);
                engine.connections(&net, now)
            });
        }
    }

    /// Listens on `addr` on every port that has that address (`0.0.0.0`: every port).
    fn listen_ports(&mut self, addr: SocketAddrV4) -> Result<(), TcpError> {
        let mut any = false;
        for p in &mut self.ports {
            let has = addr.ip().is_unspecified()
                || p.stack
                    .config()
                    .addresses
                    .iter()
                    .any(|c| c.addr == *addr.ip());
            if has {
                p.stack.listen(addr)?;
                any = true;
            }
        }
        if any {
            Ok(())
        } else {
            Err(TcpError::AddrNotLocal)
        }
    }

    /// Serves `kind` on `addr`.
    pub fn listen(&mut self, addr: SocketAddrV4, kind: Builtin) -> Result<(), TcpError> {
        self.listen_ports(addr)?;
        self.services.insert(addr, kind);
        Ok(())
    }

    /// Accepts connections on `addr` for the proxy engine.
    pub fn listen_proxy(&mut self, addr: SocketAddrV4) -> Result<(), TcpError> {
        self.listen_ports(addr)
    }

    fn now(&self) -> tcpstack::Instant {
        self.clock.now()
    }

    /// One pass of the loop; returns whether anything happened.
    pub fn poll_once(&mut self) -> io::Result<bool> {
        self.stats.iterations += 1;
        let now = self.now();
        let mut got = 0;
        for port in &mut self.ports {
            got += port.receive(now, &mut self.stats)?;
        }
        self.stats.frames_in += got as u64;
        let served = self.serve(now);
        let mut sent = 0;
        for port in &mut self.ports {
            sent += port.transmit(now)?;
        }
        self.stats.frames_out += sent as u64;
        Ok(got > 0 || sent > 0 || served)
    }

    /// Runs until `stop` is set: spins while busy, sleeps on the devices when idle.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut window = if self.answers_only {
            SpinWindow::answers(self.spin)
        } else {
            SpinWindow::new(self.spin)
        };
        let polite = self.spin != Duration::MAX;
        if self.answers_only {
            // Naps are tens of µs: the default 50 µs timer slack would make them late by
            // that much. SAFETY: prctl on the calling thread with plain integers.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
        }
        // When the first poll that found nothing began, i.e. when the last work ended, and
        // whether an answer was owed then.
        let mut idle_since: Option<(WallInstant, bool)> = None;
        // This idle stretch already napped (`poll = "answers"`): poll for the rest of it.
        let mut napped = false;
        while !stop.load(Ordering::Relaxed) {
            // Read before the poll: the gap ends when the work is found, not when it is done
            // (a TLS handshake's processing is not idle time).
            let polled_at = WallInstant::now();
            if self.poll_once()? {
                if let Some((since, owed_idle)) = idle_since.take() {
                    let gap = polled_at.saturating_duration_since(since);
                    window.work_after(gap);
                    if owed_idle {
                        window.owed_work_after(gap);
                    }
                }
                napped = false;
                continue;
            }
            let owed =
                self.answers_only && self.ports.iter().any(|p| p.stack.awaiting_answers() > 0);
            let (since, _) = *idle_since.get_or_insert((polled_at, owed));
            // Measured from the last work, not from the last wake-up: a wake-up that finds
            // nothing (a timer, a spurious poll) goes back to sleep instead of polling again.
            let idle = polled_at.saturating_duration_since(since);
            if idle >= window.poll_for(owed) {
                let wait = self.until_next_timer();
                self.stats.sleeps += 1;
                self.publish_stats();
                self.trim_if_shrunk(polled_at);
                self.sleep(wait)?;
            } else if owed && !napped && idle + spin::MIN_NAP <= window.nap() {
                // Sleep through most of the answer's usual wait (a packet ends it early),
                // but not past a timer (or pending output: zero).
                napped = true;
                let asked = (window.nap() - idle).min(self.until_next_timer());
                if asked >= spin::MIN_NAP {
                    let started = WallInstant::now();
                    self.stats.naps += 1;
                    if !self.sleep(asked)? {
                        window.napped(asked, started.elapsed());
                    }
                }
            } else {
                if self.stats.iterations.is_multiple_of(4096) {
                    self.publish_stats();
                }
                // Adaptive polling uses a core that would otherwise idle: a thread that is
                // runnable on this core (the client or a server, on a small machine) goes
                // first. `poll = "busy"` does not yield.
                if polite {
                    std::thread::yield_now();
                }
            }
        }
        self.publish_stats();
        Ok(())
    }

    /// How long the worker may sleep before a TCP or engine timer is due (zero: output is
    /// pending now); at most 10 ms.
    fn until_next_timer(&self) -> Duration {
        let now = self.now();
        let next = self
            .ports
            .iter()
            .filter_map(|p| p.stack.poll_timeout())
            .chain(self.engine.as_ref().and_then(|e| e.poll_timeout()))
            .chain(self.front.poll_timeout())
            .chain(self.back.poll_timeout())
            .min();
        match next {
            Some(t) if t <= now => Duration::ZERO,
            Some(t) => (t - now).min(Duration::from_millis(10)),
            None => Duration::from_millis(10),
        }
    }

    /// About to sleep: if the connections' memory shrank a lot since the last look (closed
    /// sessions, buffers given back), hand the freed pages back to the kernel. The allocator
    /// keeps freed memory otherwise, and a burst of connections would pin its peak for good.
    /// At most once a second, and only while idle, so no request waits on it.
    fn trim_if_shrunk(&mut self, now: WallInstant) {
        let held = self.stats.tcp_buffer_bytes + self.stats.proxy.sessions * 16 * 1024;
        let (at, peak) = self.trim_mark;
        if held > peak {
            self.trim_mark.1 = held;
            return;
        }
        if now.saturating_duration_since(at) < Duration::from_secs(1) || peak - held < 1 << 20 {
            return;
        }
        // SAFETY: malloc_trim only returns free memory of the allocator's arenas.
        unsafe { libc::malloc_trim(0) };
        self.trim_mark = (now, held);
    }

    /// Sleeps on every port's device and hand-off wakeup; whether one of them woke it.
    fn sleep(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.ports.len() == 1 && self.ports[0].shard.is_none() {
            return self.ports[0].dev.wait(timeout);
        }
        let mut fds = Vec::with_capacity(self.ports.len() * 2);
        for p in &self.ports {
            fds.push(p.dev.ready_fd());
            if let Some(s) = &p.shard {
                fds.push(s.wake.fd());
            }
        }
        let woke = wake::poll_readable(&fds, timeout)?;
        for p in &self.ports {
            if let Some(s) = &p.shard {
                // Frames handed over from here on notify again; those before are drained
                // by the next iteration.
                s.wake.clear();
            }
        }
        Ok(woke)
    }

    /// Removes every listener: from now on a SYN to them gets a RST.
    pub fn stop_accepting(&mut self) {
        for p in &mut self.ports {
            for a in p.stack.listening() {
                p.stack.unlisten(a);
            }
        }
    }

    /// Graceful shutdown: stop accepting (listeners removed, so new SYNs are refused), close
    /// idle HTTP keep-alive connections, let the others finish until `timeout`, then reset what
    /// is left and flush the RSTs.
    pub fn drain(&mut self, timeout: Duration) -> io::Result<DrainReport> {
        self.drain_among(timeout, None)
    }

    /// [`Worker::drain`] for one of several workers: once its own connections are done it
    /// keeps serving its queues (refusing SYNs, handing segments over) until the others are.
    pub fn drain_among(
        &mut self,
        timeout: Duration,
        mut peers: Option<&mut Arrival>,
    ) -> io::Result<DrainReport> {
        self.stop_accepting();
        let engine_started = self.engine.as_ref().map_or(0, |e| e.active());
        if let Some(e) = self.engine.as_mut() {
            e.drain_idle();
            self.front.drain();
        }
        let started = self.sessions.len() + engine_started;
        for s in self.sessions.values_mut() {
            if s.kind == Builtin::HttpOk && s.inbuf.is_empty() && s.out.is_empty() {
                s.close_after_out = true;
            }
        }
        let deadline = WallInstant::now() + timeout;
        let busy =
            |w: &Self| !w.sessions.is_empty() || w.engine.as_ref().is_some_and(|e| e.active() > 0);
        while WallInstant::now() < deadline {
            if !busy(self) {
                match peers.as_mut() {
                    Some(p) => p.finished(),
                    None => break,
                }
                if !peers.as_ref().is_some_and(|p| p.others_busy()) {
                    break;
                }
            }
            if !self.poll_once()? {
                self.sleep(Duration::from_millis(1))?;
            }
        }
        let left: Vec<PConn> = self.sessions.keys().copied().collect();
        let mut reset = left.len();
        for c in &left {
            let _ = self.ports[c.port as usize].stack.abort(c.id);
        }
        self.sessions.clear();
        if let (Some(e), front, back) = (self.engine.as_mut(), &mut self.front, &mut self.back) {
            reset += e.active();
            let now = self.clock.now();
            let mut stack = StackNet {
                ports: &mut self.ports,
                now,
                next: 0,
            };
            let mut back = H2BackNet::new(&mut stack, back, now);
            let mut net = H2Net::new(&mut back, front, now);
            e.abort_all(&mut net, now);
            net.flush();
            net.inner.flush();
            // Upstream HTTP/2 connections (h2c servers, shared hops to peers) end with GOAWAY and
            // a FIN rather than silence: the process is about to stop answering on them.
            net.inner.close_all();
        }
        // Send the RSTs (and anything else still queued) before the socket goes away; bounded,
        // as a peer that keeps sending would keep this busy.
        for _ in 0..64 {
            if !self.poll_once()? {
                break;
            }
        }
        self.publish_stats();
        Ok(DrainReport {
            finished: started.saturating_sub(reset),
            reset,
        })
    }

    fn serve(&mut self, now: tcpstack::Instant) -> bool {
        let mut did = false;
        let mut stack = StackNet {
            ports: &mut self.ports,
            now,
            next: 0,
        };
        let mut back = H2BackNet::new(&mut stack, &mut self.back, now);
        if back.back.poll_timeout().is_some_and(|t| t <= now) {
            back.handle_timeout(now);
            did = true;
        }
        let mut net = H2Net::new(&mut back, &mut self.front, now);
        if net.front.poll_timeout().is_some_and(|t| t <= now) {
            net.handle_timeout(now);
            did = true;
        }
        while let Some(e) = net.poll_event() {
            did = true;
            accepted(&mut net, self.engine.as_ref(), &mut self.stats, now);
            if let NetEvent::Accepted {
                conn: FConn::Tcp(BConn::Tcp(conn)),
                local,
                ..
            } = e
            {
                let kind = self
                    .services
                    .get(&local)
                    .or_else(|| {
                        self.services
                            .get(&SocketAddrV4::new([0, 0, 0, 0].into(), local.port()))
                    })
                    .copied();
                if let Some(kind) = kind {
                    self.sessions.insert(
                        conn,
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
                    continue;
                }
            }
            if let FConn::Tcp(BConn::Tcp(c)) = e.conn() {
                if self.sessions.contains_key(&c) {
                    match e {
                        NetEvent::Reset(_) => {
                            self.stats.resets += 1;
                            self.sessions.remove(&c);
                        }
                        NetEvent::Closed(_) => {
                            self.sessions.remove(&c);
                        }
                        _ => {}
                    }
                    continue;
                }
            }
            let handled = match self.engine.as_mut() {
                Some(engine) => engine.handle(&mut net, now, e),
                None => false,
            };
            if !handled {
                if let NetEvent::Accepted { conn, .. } = e {
                    // Nobody serves this listener (any more): refuse.
                    net.abort(conn);
                }
            }
        }
        // Connections held back by the HTTP/2 front (not spoken yet) get theirs too.
        accepted(&mut net, self.engine.as_ref(), &mut self.stats, now);
        if let Some(engine) = self.engine.as_mut() {
            if engine.poll_timeout().is_some_and(|t| t <= now) {
                engine.handle_timeout(&mut net, now);
                did = true;
            }
            engine.progress(&mut net, now);
            net.flush();
            net.inner.flush();
            // Events the engine's writes queued (a stream's end, room again) are this
            // round's work: no sleeping on them.
            did |= net.front.has_pending() || net.inner.back.has_pending();
            crate::tap_hub::drain(
                engine,
                self.access_log.as_mut(),
                self.tap.as_mut(),
                &self.clock,
            );
        }
        // A reused list: no allocation per loop iteration.
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        ids.extend(self.sessions.keys().copied());
        for &id in &ids {
            did |= self.progress(now, id);
        }
        self.ids = ids;
        did
    }

    /// Moves one built-in session's bytes as far as the stack allows.
    fn progress(&mut self, now: tcpstack::Instant, c: PConn) -> bool {
        let Some(mut s) = self.sessions.remove(&c) else {
            return false;
        };
        let stack = &mut self.ports[c.port as usize].stack;
        let id = c.id;
        let mut did = false;
        loop {
            // Flush what is owed first: backpressure stops reading.
            if !s.out.is_empty() {
                match stack.write(id, &s.out) {
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
            if s.kind == Builtin::HttpOk && answer_http(&mut s, &mut self.stats) {
                did = true;
                continue;
            }
            match stack.read(id, &mut self.scratch) {
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
            let _ = stack.close(now, id);
            s.closed = true;
            did = true;
        }
        self.sessions.insert(c, s);
        did
    }
}

impl<D: Device> Port<D> {
    /// Receives a batch and feeds it to the stack, handing other workers' frames over.
    fn receive(&mut self, now: tcpstack::Instant, stats: &mut WorkerStats) -> io::Result<usize> {
        let batch = self.dev.capabilities().batch;
        let stack = &mut self.stack;
        let Some(shard) = self.shard.as_mut() else {
            return self.dev.receive(batch, |f| stack.handle_frame(now, f));
        };
        let got = self
            .dev
            .receive(batch, |f| match shard.owner.dispatch(shard.index, f) {
                Dispatch::Local => stack.handle_frame(now, f),
                Dispatch::Worker(o) => shard.hand(o, f, stats),
                Dispatch::Everyone => {
                    stack.handle_frame(now, f);
                    let me = shard.index;
                    for o in (0..shard.peers.len()).filter(|&o| o != me) {
                        shard.hand(o, f, stats);
                    }
                }
            })?;
        shard.wake_peers();
        let mut handed = 0;
        while let Ok(f) = shard.inbox.try_recv() {
            stack.handle_frame(now, &f);
            handed += 1;
        }
        stats.handoff_in += handed;
        Ok(got + handed as usize)
    }

    /// Transmits until the stack runs dry or every TX buffer is in flight.
    fn transmit(&mut self, now: tcpstack::Instant) -> io::Result<usize> {
        let batch = self.dev.capabilities().batch;
        let mut sent = 0;
        loop {
            let stack = &mut self.stack;
            let n = self
                .dev
                .transmit(batch, |buf| stack.poll_transmit(now, buf))?;
            sent += n;
            if n < batch {
                return Ok(sent);
            }
        }
    }
}

/// Parses buffered requests and queues their responses; returns whether it did any.
fn answer_http(s: &mut Session, stats: &mut WorkerStats) -> bool {
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
                    stats.http_bad_requests += 1;
                    s.out.extend_from_slice(HTTP_BAD);
                    s.close_after_out = true;
                    return did;
                }
                stats.http_requests += 1;
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
                    stats.http_bad_requests += 1;
                    s.out.extend_from_slice(HTTP_BAD);
                    s.close_after_out = true;
                    return true;
                }
                return did;
            }
            Err(_) => {
                stats.http_bad_requests += 1;
                s.out.extend_from_slice(HTTP_BAD);
                s.close_after_out = true;
                return true;
            }
        }
    }
}

/// Every connection the transport accepted, as it is accepted (one on an `http` listener
/// reaches the engine later, once its first bytes show its protocol): counted, Nagle off, and
/// its listener's keepalive from the tables current at accept time.
fn accepted<D: Device>(
    net: &mut H2Net<'_, H2BackNet<'_, StackNet<'_, D>>>,
    engine: Option<&Engine<EConn>>,
    stats: &mut WorkerStats,
    now: tcpstack::Instant,
) {
    let Some(accepts) = net.front.take_accepts() else {
        return;
    };
    let tables = engine.map(|e| e.tables());
    for (conn, local) in accepts {
        let Some(conn) = conn.tcp() else {
            continue;
        };
        stats.accepted += 1;
        let stack = &mut net.inner.inner.ports[conn.port as usize].stack;
        // Latency over coalescing for every service: the proxy writes TLS records and HTTP
        // heads in pieces, and Nagle waiting on the peer's delayed ACK would stall each
        // handshake by tens of milliseconds.
        let _ = stack.set_nagle(conn.id, false);
        if let Some(k) = tables
            .as_ref()
            .and_then(|t| t.listener_at(local.into()))
            .and_then(|l| l.keepalive)
        {
            let _ = stack.set_keepalive(now, conn.id, Some(crate::proxy::tcp_keepalive(&k)));
        }
    }
}
