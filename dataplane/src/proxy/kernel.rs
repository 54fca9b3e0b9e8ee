//! The kernel backend: [`Net`] over non-blocking kernel sockets with mio, for users without
//! a spare NIC and to measure what kernel bypass buys on identical proxy logic.

use mesh::h2back::{BConn, H2Back, H2BackNet};
use mesh::h2front::{FConn, H2Front, H2Net};

/// A connection as the engine sees it: through the HTTP/2 front (client streams) and back
/// (streams to h2c servers).
pub type EConn = FConn<BConn<KConn>>;
use mesh::net::{Net, NetError, NetEvent};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tcpstack::Instant;

/// A connection handle: slot and generation, so a stale handle never reaches a newer
/// connection in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KConn {
    slot: u32,
    gen: u32,
}

struct Slot {
    gen: u32,
    stream: Option<TcpStream>,
    connecting: bool,
    /// A read came back empty and epoll has not said readable since (edge-triggered: any
    /// later data, FIN or error raises a new event), so a read now would find nothing.
    drained: bool,
}

/// Listener tokens are `0..LISTENER_TOKENS`; connections start above.
const LISTENER_TOKENS: usize = 1 << 16;

pub struct KernelNet {
    poll: Poll,
    events: Events,
    listeners: Vec<Option<(TcpListener, SocketAddrV4)>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    queue: VecDeque<NetEvent<KConn>>,
}

fn to_v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

/// Linux's bound on `TCP_KEEPIDLE` and `TCP_KEEPINTVL` (`MAX_TCP_KEEPIDLE`), in seconds.
const MAX_KEEP_SECS: u64 = 32767;

/// A keepalive duration as the kernel takes it: whole seconds, rounded up, 1 to 32767.
fn keep_secs(d: Duration) -> libc::c_int {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.clamp(1, MAX_KEEP_SECS) as libc::c_int
}

fn set_int_opt(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd and a c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn io_err(e: &io::Error) -> NetError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::NotConnected => {
            NetError::WouldBlock
        }
        io::ErrorKind::BrokenPipe => NetError::Closed,
        _ => NetError::Reset,
    }
}

impl KernelNet {
    pub fn new() -> io::Result<Self> {
        Ok(KernelNet {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            listeners: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            queue: VecDeque::new(),
        })
    }

    /// Listens on `addr` (SO_REUSEADDR, as mio sets it).
    pub fn listen(&mut self, addr: SocketAddrV4) -> io::Result<()> {
        let mut l = TcpListener::bind(addr.into())?;
        let i = self.listeners.len();
        self.poll
            .registry()
            .register(&mut l, Token(i), Interest::READABLE)?;
        let bound = to_v4(l.local_addr()?).unwrap_or(addr);
        self.listeners.push(Some((l, bound)));
        Ok(())
    }

    /// Stops every listener (a draining gateway refuses new connections).
    pub fn unlisten_all(&mut self) {
        for l in self.listeners.iter_mut() {
            if let Some((mut l, _)) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
    }

    pub fn listening(&self) -> Vec<SocketAddrV4> {
        self.listeners.iter().flatten().map(|(_, a)| *a).collect()
    }

    fn insert(&mut self, mut stream: TcpStream, connecting: bool) -> io::Result<KConn> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    stream: None,
                    connecting: false,
                    drained: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.poll.registry().register(
            &mut stream,
            Token(LISTENER_TOKENS + slot as usize),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let _ = stream.set_nodelay(true);
        let s = &mut self.slots[slot as usize];
        s.gen = s.gen.wrapping_add(1);
        s.stream = Some(stream);
        s.connecting = connecting;
        s.drained = false;
        Ok(KConn { slot, gen: s.gen })
    }

    fn stream(&mut self, c: KConn) -> Option<&mut Slot> {
        self.slots
            .get_mut(c.slot as usize)
            .filter(|s| s.gen == c.gen && s.stream.is_some())
    }

    /// The stream of an established connection: `Closed` for a stale handle, `WouldBlock`
    /// while the connect is still in progress.
    fn connected(&mut self, c: KConn) -> Result<&mut TcpStream, NetError> {
        let s = self.stream(c).ok_or(NetError::Closed)?;
        if s.connecting {
            return Err(NetError::WouldBlock);
        }
        Ok(s.stream.as_mut().expect("checked by stream()"))
    }

    fn release(&mut self, c: KConn, linger0: bool) -> bool {
        let Some(s) = self.stream(c) else {
            return false;
        };
        let mut stream = s.stream.take().expect("checked");
        if linger0 {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid fd and a linger struct of the size given.
            unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&l as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        let _ = self.poll.registry().deregister(&mut stream);
        drop(stream);
        self.free.push(c.slot);
        true
    }

    /// Turns TCP keepalive on (with the listener's settings) or off for one connection:
    /// `SO_KEEPALIVE`, and `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`. The kernel counts
    /// whole seconds: durations round up, to at most 32767 s.
    pub fn set_keepalive(
        &mut self,
        c: KConn,
        k: Option<&control::snapshot::KeepaliveRt>,
    ) -> io::Result<()> {
        let fd = self
            .stream(c)
            .and_then(|s| s.stream.as_ref())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
            .as_raw_fd();
        if let Some(k) = k {
            set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, keep_secs(k.idle))?;
            set_int_opt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                keep_secs(k.interval),
            )?;
            // Linux allows 1..=127 (MAX_TCP_KEEPCNT); the tables allow 1..=100.
            set_int_opt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_KEEPCNT,
                k.probes.clamp(1, 127) as libc::c_int,
            )?;
        }
        set_int_opt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            libc::c_int::from(k.is_some()),
        )
    }

    /// Waits for socket readiness up to `timeout` and turns it into events.
    pub fn poll_io(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let tokens: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable() || e.is_error(),
                )
            })
            .collect();
        for (t, readable, writable) in tokens {
            if t < LISTENER_TOKENS {
                self.accept_all(t);
                continue;
            }
            let slot = (t - LISTENER_TOKENS) as u32;
            let Some(s) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            let c = KConn { slot, gen: s.gen };
            let Some(stream) = s.stream.as_ref() else {
                continue;
            };
            if s.connecting {
                if !writable {
                    continue;
                }
                // Writable after a non-blocking connect: connected, or the error.
                match stream.take_error() {
                    Ok(None) if stream.peer_addr().is_ok() => {
                        s.connecting = false;
                        self.queue.push_back(NetEvent::Connected(c));
                    }
                    Ok(None) => {} // not yet
                    _ => {
                        self.release(c, false);
                        self.queue.push_back(NetEvent::Reset(c));
                    }
                }
                continue;
            }
            if readable {
                s.drained = false;
                self.queue.push_back(NetEvent::Readable(c));
            }
            if writable {
                self.queue.push_back(NetEvent::Writable(c));
            }
        }
        Ok(())
    }

    fn accept_all(&mut self, i: usize) {
        loop {
            let Some(Some((l, _))) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((stream, remote)) => {
                    let (Some(local), Some(remote)) =
                        (stream.local_addr().ok().and_then(to_v4), to_v4(remote))
                    else {
                        continue; // IPv6: not served; dropping closes it
                    };
                    if let Ok(conn) = self.insert(stream, false) {
                        self.queue.push_back(NetEvent::Accepted {
                            conn,
                            local,
                            remote,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // EMFILE and friends: stop for this round, the listener stays readable.
                Err(_) => return,
            }
        }
    }
}

impl Net for KernelNet {
    type Conn = KConn;

    fn connect(&mut self, _now: Instant, remote: SocketAddrV4) -> Result<KConn, NetError> {
        let stream = TcpStream::connect(remote.into()).map_err(|e| io_err(&e))?;
        self.insert(stream, true).map_err(|e| io_err(&e))
    }

    fn read(&mut self, c: KConn, buf: &mut [u8]) -> Result<usize, NetError> {
        let stream = self.connected(c)?;
        let r = loop {
            match stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| io_err(&e)),
            }
        };
        if let Some(s) = self.stream(c) {
            s.drained = matches!(r, Err(NetError::WouldBlock));
        }
        r
    }

    fn addrs(&self, c: KConn) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let s = self.slots.get(c.slot as usize).filter(|s| s.gen == c.gen)?;
        let st = s.stream.as_ref()?;
        Some((to_v4(st.local_addr().ok()?)?, to_v4(st.peer_addr().ok()?)?))
    }

    fn tcp_info(&self, c: KConn) -> Option<mesh::net::TcpInfo> {
        let s = self.slots.get(c.slot as usize).filter(|s| s.gen == c.gen)?;
        let fd = s.stream.as_ref()?.as_raw_fd();
        // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it.
        let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a valid fd, and a buffer of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut ti as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return None;
        }
        // The kernel's states (include/net/tcp_states.h).
        const STATES: [&str; 12] = [
            "?",
            "established",
            "syn_sent",
            "syn_recv",
            "fin_wait1",
            "fin_wait2",
            "time_wait",
            "close",
            "close_wait",
            "last_ack",
            "listen",
            "closing",
        ];
        Some(mesh::net::TcpInfo {
            state: STATES
                .get(ti.tcpi_state as usize)
                .unwrap_or(&"?")
                .to_string(),
            rtt: (ti.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(ti.tcpi_rtt))),
            cwnd_bytes: Some(u64::from(ti.tcpi_snd_cwnd) * u64::from(ti.tcpi_snd_mss)),
            retransmits: u64::from(ti.tcpi_total_retrans),
        })
    }

    fn may_have_input(&self, c: KConn) -> bool {
        self.slots
            .get(c.slot as usize)
            .filter(|s| s.gen == c.gen && s.stream.is_some() && !s.connecting)
            .is_none_or(|s| !s.drained)
    }

    fn write(&mut self, c: KConn, data: &[u8]) -> Result<usize, NetError> {
        let stream = self.connected(c)?;
        loop {
            match stream.write(data) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r.map_err(|e| io_err(&e)),
            }
        }
    }

    fn shutdown_write(&mut self, c: KConn) {
        if let Some(s) = self.stream(c) {
            let _ = s
                .stream
                .as_ref()
                .expect("checked")
                .shutdown(Shutdown::Write);
        }
    }

    fn close(&mut self, _now: Instant, c: KConn) {
        if self.release(c, false) {
            self.queue.push_back(NetEvent::Closed(c));
        }
    }

    fn abort(&mut self, c: KConn) {
        if self.release(c, true) {
            self.queue.push_back(NetEvent::Closed(c));
        }
    }

    fn poll_event(&mut self) -> Option<NetEvent<KConn>> {
        self.queue.pop_front()
    }
}

/// The proxy over kernel sockets on one thread: epoll-driven, so an idle gateway sleeps.
pub struct KernelWorker {
    pub net: KernelNet,
    /// HTTP/2 clients of `http` listeners, each stream a connection of the engine's.
    pub front: H2Front<BConn<KConn>>,
    /// HTTP/2 servers (h2c endpoints): the engine's connections to them are streams.
    pub back: H2Back<KConn>,
    pub engine: mesh::engine::Engine<EConn>,
    clock: crate::clock::Clock,
    /// Answers the admin API's `GET /connections` from the loop.
    pub inspect: std::sync::Arc<crate::inspect::Inspect>,
    /// The engine's events go here as access log lines, when on.
    access_log: Option<crate::accesslog::Sink>,
    /// Requests go to `GET /tap` while someone taps, when on.
    tap: Option<crate::tap_hub::TapPort>,
}

impl KernelWorker {
    /// Listens on every tcp/http/mesh listener of the current tables.
    pub fn new(
        publisher: std::sync::Arc<control::Publisher>,
        tls: std::sync::Arc<dyn mesh::engine::MeshTls>,
    ) -> io::Result<Self> {
        Self::with_listeners(publisher, tls, None)
    }

    /// [`Self::new`], listening only on `only` (the tables' listeners a node serves,
    /// `[node] listeners`) when given.
    pub fn with_listeners(
        publisher: std::sync::Arc<control::Publisher>,
        tls: std::sync::Arc<dyn mesh::engine::MeshTls>,
        only: Option<&[std::net::SocketAddrV4]>,
    ) -> io::Result<Self> {
        use control::schema::Protocol;
        let mut net = KernelNet::new()?;
        let snap = publisher.load();
        for l in &snap.listeners {
            if matches!(
                l.protocol,
                Protocol::Tcp | Protocol::Http | Protocol::Mesh | Protocol::IngressTls
            ) {
                let SocketAddr::V4(a) = l.bind else {
                    return Err(io::Error::other(format!(
                        "listener {}: IPv6 is not supported",
                        l.name
                    )));
                };
                if only.is_some_and(|o| !o.contains(&a)) {
                    continue;
                }
                net.listen(a).map_err(|e| {
                    io::Error::new(e.kind(), format!("listener {} on {a}: {e}", l.name))
                })?;
            }
        }
        Ok(KernelWorker {
            net,
            front: super::h2_front(&publisher),
            back: super::h2_back(&publisher),
            engine: mesh::engine::Engine::new(publisher, tls, super::random_seed()),
            clock: crate::clock::Clock::start(),
            inspect: Default::default(),
            access_log: None,
            tap: None,
        })
    }

    /// Sends the engine's events to the access log.
    pub fn set_access_log(&mut self, sink: crate::accesslog::Sink) {
        crate::accesslog::Sink::enable(&mut self.engine);
        self.access_log = Some(sink);
    }

    /// Offers the engine's requests to `GET /tap` while someone taps.
    pub fn set_tap(&mut self, hub: std::sync::Arc<crate::tap_hub::TapHub>) {
        self.tap = Some(crate::tap_hub::TapPort::new(hub));
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// One round: wait for readiness (up to `timeout`), handle events, move bytes.
    pub fn poll_once(&mut self, timeout: Duration) -> io::Result<()> {
        // Sleep no longer than the engine's or the HTTP/2 front's next deadline.
        let now = self.now();
        let due = [
            self.engine.poll_timeout(),
            self.front.poll_timeout(),
            self.back.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match due {
            Some(t) => timeout.min(t.saturating_duration_since(now)),
            None => timeout,
        };
        self.net.poll_io(Some(timeout))?;
        let now = self.now();
        let mut back = H2BackNet::new(&mut self.net, &mut self.back, now);
        if back.back.poll_timeout().is_some_and(|t| t <= now) {
            back.handle_timeout(now);
        }
        let mut net = H2Net::new(&mut back, &mut self.front, now);
        if net.front.poll_timeout().is_some_and(|t| t <= now) {
            net.handle_timeout(now);
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(&mut net, now);
        }
        while let Some(ev) = net.poll_event() {
            keepalives(&mut net, &self.engine);
            if !self.engine.handle(&mut net, now, ev) {
                // Not the engine's (a listener kind it does not serve): refuse.
                if let NetEvent::Accepted { conn, .. } = ev {
                    net.abort(conn);
                }
            }
        }
        keepalives(&mut net, &self.engine);
        self.engine.progress(&mut net, now);
        net.flush();
        net.inner.flush();
        crate::tap_hub::drain(
            &mut self.engine,
            self.access_log.as_mut(),
            self.tap.as_mut(),
            &self.clock,
        );
        Ok(())
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &std::sync::atomic::AtomicBool) -> io::Result<()> {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            self.poll_once(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Like [`run`](Self::run), copying the engine's counters to `out` every round.
    pub fn run_publishing(
        &mut self,
        stop: &std::sync::atomic::AtomicBool,
        out: &std::sync::Mutex<mesh::engine::ProxyStats>,
    ) -> io::Result<()> {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            self.poll_once(Duration::from_millis(50))?;
            *out.lock().unwrap_or_else(|e| e.into_inner()) = self.engine.stats;
            let now = self.now();
            self.inspect.serve(|| {
                let mut back = H2BackNet::new(&mut self.net, &mut self.back, now);
                let net = H2Net::new(&mut back, &mut self.front, now);
                self.engine.connections(&net, now)
            });
        }
        Ok(())
    }

    /// Closes the listening sockets: the kernel refuses new connections from now on.
    pub fn stop_accepting(&mut self) {
        self.net.unlisten_all();
    }

    /// Stops accepting and lets sessions finish until `timeout`; returns how many were left
    /// (and reset).
    pub fn drain(&mut self, timeout: Duration) -> io::Result<usize> {
        self.stop_accepting();
        self.engine.drain_idle();
        self.front.drain();
        let deadline = std::time::Instant::now() + timeout;
        while self.engine.active() > 0 && std::time::Instant::now() < deadline {
            self.poll_once(Duration::from_millis(10))?;
        }
        let left = self.engine.active();
        let now = self.now();
        let mut back = H2BackNet::new(&mut self.net, &mut self.back, now);
        let mut net = H2Net::new(&mut back, &mut self.front, now);
        self.engine.abort_all(&mut net, now);
        net.flush();
        net.inner.flush();
        // Upstream HTTP/2 connections (h2c servers, shared hops to peers) end with GOAWAY and
        // a FIN rather than silence: the process is about to stop answering on them.
        net.inner.close_all();
        // The connections just reset get their lines too.
        crate::tap_hub::drain(
            &mut self.engine,
            self.access_log.as_mut(),
            self.tap.as_mut(),
            &self.clock,
        );
        Ok(left)
    }
}

/// The listener's keepalive, from the tables current at accept time, as the kernel accepts
/// (a connection on an `http` listener reaches the engine once it has spoken).
fn keepalives(net: &mut H2Net<'_, H2BackNet<'_, KernelNet>>, engine: &mesh::engine::Engine<EConn>) {
    let Some(accepts) = net.front.take_accepts() else {
        return;
    };
    let snap = engine.tables();
    for (conn, local) in accepts {
        let Some(conn) = conn.tcp() else {
            continue;
        };
        if let Some(k) = snap.listener_at(local.into()).and_then(|l| l.keepalive) {
            let _ = net.inner.inner.set_keepalive(conn, Some(&k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn get_int_opt(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int) -> i32 {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid fd, and a c_int with its size in len.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "getsockopt: {}", io::Error::last_os_error());
        v
    }

    /// (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of a connection's socket.
    fn keepalive_of(net: &KernelNet, c: KConn) -> (i32, i32, i32, i32) {
        let s = &net.slots[c.slot as usize];
        assert_eq!(s.gen, c.gen);
        let fd = s.stream.as_ref().expect("open").as_raw_fd();
        (
            get_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            get_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            get_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            get_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        )
    }

    #[test]
    fn keepalive_durations_become_whole_seconds_within_linux_bounds() {
        assert_eq!(keep_secs(Duration::from_millis(1)), 1);
        assert_eq!(keep_secs(Duration::from_millis(2500)), 3);
        assert_eq!(keep_secs(Duration::from_secs(60)), 60);
        assert_eq!(keep_secs(Duration::from_secs(7 * 24 * 3600)), 32767);
    }

    /// A kernel worker over the tables: each accepted connection gets its listener's
    /// keepalive, and one on a listener without it stays without.
    #[test]
    fn accepted_sockets_get_their_listeners_keepalive() {
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let tables = format!(
            r#"
[[service]]
name = "s"
endpoints = [{{ address = "127.0.0.1:9" }}]
[[listener]]
name = "with"
bind = "0.0.0.0:{}"
protocol = "tcp"
service = "s"
keepalive = {{ idle = "2500ms", interval = "7s", probes = 4 }}
[[listener]]
name = "without"
bind = "127.0.0.1:{}"
protocol = "tcp"
service = "s"
"#,
            ports[0], ports[1]
        );
        let src = control::Source::new("t.toml", tables.clone());
        let compiled =
            control::compile(&src, &control::Context::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let publisher = Arc::new(control::Publisher::new());
        publisher.publish(compiled.snapshot, Arc::from(tables.as_str()), "test");
        let mut w = KernelWorker::new(publisher, Arc::new(mesh::engine::NoMeshTls)).unwrap();
        let mut kinds = Vec::new();
        for port in &ports {
            let _client = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
            let mut accepted = None;
            for _ in 0..200 {
                w.net.poll_io(Some(Duration::from_millis(10))).unwrap();
                let evs: Vec<_> = std::iter::from_fn(|| w.net.poll_event()).collect();
                accepted = evs.iter().find_map(|ev| match ev {
                    NetEvent::Accepted { conn, .. } => Some(*conn),
                    _ => None,
                });
                // Back in the queue: the worker's own accept path (`poll_once`) takes them.
                w.net.queue.extend(evs);
                if accepted.is_some() {
                    break;
                }
            }
            let conn = accepted.expect("accepted within 2 s");
            w.poll_once(Duration::ZERO).unwrap();
            kinds.push(keepalive_of(&w.net, conn));
        }
        assert_eq!(kinds[0], (1, 3, 7, 4), "2.5 s rounds up to 3 s");
        assert_eq!(kinds[1].0, 0, "no keepalive table: off");
    }

    #[test]
    fn keepalive_can_be_turned_off_again() {
        let mut net = KernelNet::new().unwrap();
        net.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = net.listening()[0];
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let mut conn = None;
        for _ in 0..200 {
            net.poll_io(Some(Duration::from_millis(10))).unwrap();
            if let Some(NetEvent::Accepted { conn: c, .. }) = net.poll_event() {
                conn = Some(c);
                break;
            }
        }
        let c = conn.expect("accepted within 2 s");
        let k = control::snapshot::KeepaliveRt::default();
        net.set_keepalive(c, Some(&k)).unwrap();
        assert_eq!(keepalive_of(&net, c), (1, 60, 10, 6));
        net.set_keepalive(c, None).unwrap();
        assert_eq!(keepalive_of(&net, c).0, 0);
        net.abort(c);
        assert!(net.set_keepalive(c, Some(&k)).is_err(), "a stale handle");
    }

    /// Polls until `want` shows up for `c` (other events are dropped), at most 2 s.
    fn await_event(net: &mut KernelNet, want: fn(&NetEvent<KConn>, KConn) -> bool, c: KConn) {
        for _ in 0..200 {
            net.poll_io(Some(Duration::from_millis(10))).unwrap();
            while let Some(ev) = net.poll_event() {
                if want(&ev, c) {
                    return;
                }
            }
        }
        panic!("no such event for {c:?}");
    }

    /// What a pooled connection's check relies on: after an empty read the socket is known
    /// quiet until epoll reports it readable, for data and for the peer's FIN alike.
    #[test]
    fn a_drained_socket_is_known_quiet_until_epoll_says_readable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let mut net = KernelNet::new().unwrap();
        let c = net.connect(Instant::ZERO, addr).unwrap();
        assert!(net.may_have_input(c), "connecting: unknown");
        await_event(&mut net, |e, c| *e == NetEvent::Connected(c), c);
        let (mut peer, _) = listener.accept().unwrap();
        assert!(net.may_have_input(c), "never read: unknown");
        let mut buf = [0u8; 64];
        assert_eq!(net.read(c, &mut buf), Err(NetError::WouldBlock));
        assert!(!net.may_have_input(c), "drained, no event since");

        peer.write_all(b"hi").unwrap();
        await_event(&mut net, |e, c| *e == NetEvent::Readable(c), c);
        assert!(net.may_have_input(c), "readable after data");
        assert_eq!(net.read(c, &mut buf), Ok(2));
        assert!(
            net.may_have_input(c),
            "a read that found data proves nothing"
        );
        assert_eq!(net.read(c, &mut buf), Err(NetError::WouldBlock));
        assert!(!net.may_have_input(c));

        drop(peer);
        await_event(&mut net, |e, c| *e == NetEvent::Readable(c), c);
        assert!(net.may_have_input(c), "the FIN is input");
        assert_eq!(net.read(c, &mut buf), Ok(0));
        net.abort(c);
        assert!(net.may_have_input(c), "a stale handle: unknown");
    }

    /// `GET /connections` on the kernel backend: the worker answers from its loop with the
    /// client connection, its upstream (both with the kernel's TCP_INFO) and their bytes.
    #[test]
    fn the_worker_shows_its_connections_when_asked() {
        use std::io::Read as _;
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(up) = server.local_addr().unwrap() else {
            unreachable!()
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tables = format!(
            "[[service]]\nname = \"s\"\nendpoints = [{{ address = \"{up}\" }}]\n\
             [[listener]]\nname = \"t\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"tcp\"\n\
             service = \"s\"\n"
        );
        let src = control::Source::new("t.toml", tables.clone());
        let compiled =
            control::compile(&src, &control::Context::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let publisher = Arc::new(control::Publisher::new());
        publisher.publish(compiled.snapshot, Arc::from(tables.as_str()), "test");
        let mut w = KernelWorker::new(publisher, Arc::new(mesh::engine::NoMeshTls)).unwrap();
        let inspect = w.inspect.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let out = std::sync::Mutex::new(Default::default());
                w.run_publishing(&stop, &out).unwrap();
            })
        };
        struct Stop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Stop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(stop.clone());
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut upstream, _) = server.accept().unwrap();
        client.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        upstream.read_exact(&mut got).unwrap();
        let conns = inspect
            .ask(Duration::from_secs(5))
            .expect("the worker answers");
        let c = conns.iter().find(|c| c.role == "client").expect("a client");
        assert_eq!(c.addrs.map(|a| a.1), to_v4(client.local_addr().unwrap()));
        assert_eq!(c.state, "tcp");
        assert_eq!(
            c.bytes_received, 5,
            "bytes from the client, handed upstream"
        );
        let t = c.tcp.as_ref().expect("TCP_INFO");
        assert_eq!(t.state, "established");
        assert!(t.cwnd_bytes.is_some_and(|b| b > 0));
        let u = conns
            .iter()
            .find(|c| c.role == "upstream")
            .expect("an upstream");
        assert_eq!(u.endpoint, Some(up));
        assert_eq!(u.addrs.map(|a| a.1), Some(up));
        assert_eq!(u.service.as_deref(), Some("s"));
        let json = crate::inspect::json(&[("kernel".into(), Some(conns))]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["workers"][0]["connections"].as_array().unwrap().len(), 2);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        thread.join().unwrap();
    }
}
