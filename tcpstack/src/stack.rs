//! [`Stack`]: one Ethernet interface's addresses, neighbours, listeners and connections.

use crate::neigh::{NeighborCache, NeighborConfig};
use crate::stats::{Counter, DropReason, Stats};
use crate::tcp::conn::{Conn, ConnEvent, ConnParams, Ctx, ResetReason, State};
use crate::tcp::isn::{CookieOpts, Secrets};
use crate::tcp::seq::Seq;
use crate::tcp::{Keepalive, TcpConfig};
use crate::time::Instant;
use crate::wire::arp::{self, ArpRepr, Operation};
use crate::wire::ethernet::{self, MacAddr};
use crate::wire::icmp::{self, IcmpPacket};
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::tcp::{self as tcpw, Flags, Header, Options, Segment};
use crate::wire::WireError;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

/// How much later a connection's deadline may move before the timer heap gets a new entry
/// for it (see `Stack::schedule`).
const LATER_SLACK: Duration = Duration::from_millis(1);

/// An IPv4 address with its prefix length, e.g. `10.10.1.1/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Cidr {
            addr,
            prefix: prefix.min(32),
        }
    }
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & self.mask()) == (u32::from(self.addr) & self.mask())
    }
}

#[derive(Clone, Debug)]
pub struct StackConfig {
    pub mac: MacAddr,
    pub addresses: Vec<Ipv4Cidr>,
    /// Next hop for destinations outside every local subnet.
    pub gateway: Option<Ipv4Addr>,
    /// IP MTU (default 1500). The buffer given to `poll_transmit` must hold `mtu + 14` bytes.
    pub mtu: usize,
    /// Local ports for active opens, inclusive (default 32768..=60999, as Linux).
    pub ephemeral_ports: (u16, u16),
    /// Key for ISNs, SYN cookies, timestamp offsets and port selection. Inject a random one.
    pub secret: [u8; 16],
    pub tcp: TcpConfig,
    pub neighbor: NeighborConfig,
    /// Connections held at once, all states but TIME-WAIT (default 65536).
    pub max_connections: usize,
    /// Half-open connections per listener before SYN cookies take over (default 1024).
    pub syn_backlog: usize,
    /// TIME-WAIT entries held; the oldest is evicted beyond it (default 65536).
    pub max_time_wait: usize,
    /// Control packets (ARP and ICMP replies, RSTs, cookie SYN-ACKs) waiting to be sent
    /// (default 1024); more are dropped.
    pub max_control_queue: usize,
    /// Which ephemeral ports an active open may use (default: any). A data plane with one
    /// stack per NIC queue keeps the ports whose replies the NIC delivers to this stack's queue.
    pub port_filter: Option<PortFilter>,
}

/// A predicate over `(local, remote)` for ephemeral port selection; see
/// [`StackConfig::port_filter`].
#[derive(Clone)]
pub struct PortFilter(Arc<dyn Fn(SocketAddrV4, SocketAddrV4) -> bool + Send + Sync>);

impl PortFilter {
    pub fn new(f: impl Fn(SocketAddrV4, SocketAddrV4) -> bool + Send + Sync + 'static) -> Self {
        PortFilter(Arc::new(f))
    }

    pub fn allows(&self, local: SocketAddrV4, remote: SocketAddrV4) -> bool {
        (self.0)(local, remote)
    }
}

impl std::fmt::Debug for PortFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortFilter(..)")
    }
}

impl StackConfig {
    pub fn new(mac: MacAddr, addresses: Vec<Ipv4Cidr>, secret: [u8; 16]) -> Self {
        StackConfig {
            mac,
            addresses,
            gateway: None,
            mtu: 1500,
            ephemeral_ports: (32768, 60999),
            secret,
            tcp: TcpConfig::default(),
            neighbor: NeighborConfig::default(),
            max_connections: 65536,
            syn_backlog: 1024,
            max_time_wait: 65536,
            max_control_queue: 1024,
            port_filter: None,
        }
    }
}

/// A connection handle. Stale handles (of a released connection) are refused, never confused
/// with a newer connection in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    gen: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A passive open completed its handshake.
    Accepted {
        id: ConnId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// An active open completed its handshake.
    Connected(ConnId),
    /// Data arrived where there was none: read until `WouldBlock`.
    Readable(ConnId),
    /// Send space opened after a write was refused or cut short.
    Writable(ConnId),
    /// The peer's FIN arrived; reads return `Ok(0)` once the data before it is read.
    PeerClosed(ConnId),
    /// The connection is gone after the application closed it. The handle is now invalid.
    Closed(ConnId),
    /// The connection ended abnormally. The handle is now invalid; unread data is lost.
    Reset { id: ConnId, reason: ResetReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no such connection")]
    InvalidHandle,
    #[error("operation would block")]
    WouldBlock,
    #[error("the sending side is closed")]
    SendClosed,
    #[error("address already in use")]
    AddrInUse,
    #[error("address is not local")]
    AddrNotLocal,
    #[error("no ephemeral port is free")]
    NoPortsFree,
    #[error("too many connections")]
    TooManyConnections,
}

type Tuple = (SocketAddrV4, SocketAddrV4);

struct Slot {
    gen: u32,
    conn: Option<Conn>,
    dirty: bool,
    half_open_of: Option<SocketAddrV4>,
    reset_reported: bool,
    /// Opened by us (`connect`): its peer answers what we send.
    active: bool,
    /// Active, data written since the last data received: an answer is due
    /// ([`Stack::awaiting_answers`]).
    awaiting: bool,
}

#[derive(Default)]
struct Listener {
    half_open: usize,
}

struct TimeWait {
    rcv_nxt: Seq,
    snd_nxt: Seq,
    ts: Option<(u32, u32)>, // (ts_recent, ts_offset)
    deadline: Instant,
    /// When we last answered a segment without data or FIN (`TcpConfig::invalid_ack_interval`).
    last_ack: Option<Instant>,
}

enum Control {
    ArpReply {
        to_mac: MacAddr,
        to_ip: Ipv4Addr,
        from_ip: Ipv4Addr,
    },
    Tcp {
        local: SocketAddrV4,
        remote: SocketAddrV4,
        header: Header,
    },
    EchoReply {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        rest: [u8; 4],
        data: Vec<u8>,
    },
}

/// A sans-IO TCP/IPv4 stack for one Ethernet interface.
///
/// Call order, per loop iteration of the owner:
/// 1. `handle_frame(now, frame)` for every received frame;
/// 2. `poll_event()` until `None`, and `read`/`write`/`close` connections as the events say;
/// 3. `poll_transmit(now, buf)` until `None`, sending each frame it fills (it also runs due
///    timers, so call it when `poll_timeout()` passes even without input);
/// 4. `poll_event()` again (timers can reset connections), then wait for a frame or until
///    `poll_timeout()`.
///
/// Nothing inside reads a clock or the network; every input takes `now`.
pub struct Stack {
    cfg: StackConfig,
    secrets: Secrets,
    stats: Stats,
    neigh: NeighborCache,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Slots with `awaiting` set.
    awaiting: usize,
    by_tuple: HashMap<Tuple, u32>,
    /// The connection the last segment went to: bulk traffic is runs of segments for one
    /// connection, and this spares them the (keyed, DoS-resistant) hash of the tuple. Reset
    /// whenever `by_tuple` changes.
    last_tuple: Option<(Tuple, u32)>,
    listeners: HashMap<SocketAddrV4, Listener>,
    time_wait: HashMap<Tuple, TimeWait>,
    time_wait_order: VecDeque<(Instant, Tuple)>,
    control: VecDeque<Control>,
    dirty: VecDeque<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// (when, slot, generation): connections with an emptied buffer to give back, at most one
    /// entry each, in the order they asked. Times are `buffer_release_delay` after the asking
    /// (or after the last segment in), so nearly in order; one behind a later one waits for
    /// it, at most one delay more.
    release_order: VecDeque<(Instant, u32, u32)>,
    events: VecDeque<Event>,
    scratch_events: Vec<ConnEvent>,
    port_counter: u32,
    ip_ident: u16,
    last_cookie_sent: Option<Instant>,
}

impl Stack {
    pub fn new(cfg: StackConfig) -> Stack {
        Stack {
            secrets: Secrets::new(cfg.secret),
            neigh: NeighborCache::new(cfg.neighbor.clone()),
            cfg,
            stats: Stats::default(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            awaiting: 0,
            by_tuple: HashMap::new(),
            last_tuple: None,
            listeners: HashMap::new(),
            time_wait: HashMap::new(),
            time_wait_order: VecDeque::new(),
            control: VecDeque::new(),
            dirty: VecDeque::new(),
            timers: BinaryHeap::new(),
            release_order: VecDeque::new(),
            events: VecDeque::new(),
            scratch_events: Vec::new(),
            port_counter: 0,
            ip_ident: 0,
            last_cookie_sent: None,
        }
    }

    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac
    }
    /// Connections held (all states but TIME-WAIT entries).
    pub fn connection_count(&self) -> usize {
        self.live
    }
    /// Connections we opened that have sent data and received none since: their peers owe
    /// an answer (a request forwarded upstream, a TLS flight). A poll loop that keeps polling
    /// while this is above zero catches the answer without a wake-up, and one that sleeps
    /// when it is zero does not poll for traffic nobody asked for.
    pub fn awaiting_answers(&self) -> usize {
        self.awaiting
    }
    pub fn time_wait_count(&self) -> usize {
        self.time_wait.len()
    }
    pub fn neighbor_count(&self) -> usize {
        self.neigh.len()
    }

    fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.cfg.addresses.iter().any(|c| c.addr == ip)
    }

    fn our_mss(&self) -> u16 {
        (self
            .cfg
            .mtu
            .saturating_sub(ipv4::HEADER_LEN + tcpw::HEADER_LEN))
        .clamp(64, 65495) as u16
    }

    // ---- listeners and connections ----

    /// Accepts connections to `addr` (`0.0.0.0` means every local address).
    pub fn listen(&mut self, addr: SocketAddrV4) -> Result<(), Error> {
        if !addr.ip().is_unspecified() && !self.is_local(*addr.ip()) {
            return Err(Error::AddrNotLocal);
        }
        if self.listeners.contains_key(&addr) {
            return Err(Error::AddrInUse);
        }
        self.listeners.insert(addr, Listener::default());
        Ok(())
    }

    /// Stops accepting on `addr`; established connections are unaffected.
    pub fn unlisten(&mut self, addr: SocketAddrV4) -> bool {
        self.listeners.remove(&addr).is_some()
    }

    /// The addresses being listened on.
    pub fn listening(&self) -> Vec<SocketAddrV4> {
        self.listeners.keys().copied().collect()
    }

    fn listener_for(&self, local: SocketAddrV4) -> Option<SocketAddrV4> {
        if self.listeners.contains_key(&local) {
            return Some(local);
        }
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, local.port());
        self.listeners.contains_key(&any).then_some(any)
    }

    /// Opens a connection from an ephemeral port of the local address facing `remote`.
    pub fn connect(&mut self, now: Instant, remote: SocketAddrV4) -> Result<ConnId, Error> {
        let ip = self
            .cfg
            .addresses
            .iter()
            .find(|c| c.contains(*remote.ip()))
            .or(self.cfg.addresses.first())
            .map(|c| c.addr)
            .ok_or(Error::AddrNotLocal)?;
        self.connect_from(now, SocketAddrV4::new(ip, 0), remote)
    }

    /// Opens a connection from `local`; port 0 picks an ephemeral port (RFC 6056 §3.3.3).
    pub fn connect_from(
        &mut self,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<ConnId, Error> {
        if !self.is_local(*local.ip()) {
            return Err(Error::AddrNotLocal);
        }
        if self.live >= self.cfg.max_connections {
            return Err(Error::TooManyConnections);
        }
        let local = if local.port() != 0 {
            if self.by_tuple.contains_key(&(local, remote))
                || self.time_wait.contains_key(&(local, remote))
            {
                return Err(Error::AddrInUse);
            }
            local
        } else {
            self.pick_port(now, *local.ip(), remote)?
        };
        let params = self.params(now, local, remote);
        let conn = Conn::connect(&self.cfg.tcp, params, now);
        let slot = self.insert(conn, None);
        self.slots[slot as usize].active = true;
        self.mark_dirty(slot);
        Ok(self.id(slot))
    }

    /// An ephemeral port for a connection to `remote`: a free one, else one whose tuple is
    /// in TIME-WAIT and may be reused. Without the second, a gateway that closes its
    /// upstream connections first (and so keeps their TIME-WAIT) runs out of ports toward
    /// one server at 28k connections a minute, and every further connect fails.
    fn pick_port(
        &mut self,
        now: Instant,
        ip: Ipv4Addr,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, Error> {
        let (lo, hi) = self.cfg.ephemeral_ports;
        if hi < lo {
            return Err(Error::NoPortsFree);
        }
        let count = (hi - lo) as u32 + 1;
        let start = self
            .secrets
            .port_offset(ip, remote)
            .wrapping_add(self.port_counter);
        let mut reusable = None;
        for i in 0..count {
            let port = lo + ((start.wrapping_add(i)) % count) as u16;
            let local = SocketAddrV4::new(ip, port);
            let tuple = (local, remote);
            if self.by_tuple.contains_key(&tuple)
                || self.listener_for(local).is_some()
                || self
                    .cfg
                    .port_filter
                    .as_ref()
                    .is_some_and(|f| !f.allows(local, remote))
            {
                continue;
            }
            if let Some(tw) = self.time_wait.get(&tuple) {
                if reusable.is_none() && self.time_wait_reusable(now, tw) {
                    reusable = Some((i, local));
                }
                continue;
            }
            self.port_counter = self.port_counter.wrapping_add(i + 1);
            return Ok(local);
        }
        let (i, local) = reusable.ok_or(Error::NoPortsFree)?;
        self.time_wait.remove(&(local, remote));
        self.stats.inc(Counter::TimeWaitReused);
        self.port_counter = self.port_counter.wrapping_add(i + 1);
        Ok(local)
    }

    /// Whether an active open may take over a tuple we hold in TIME-WAIT, as Linux's
    /// `tcp_tw_reuse` allows: the old connection used timestamps, so the peer's PAWS check
    /// (RFC 7323 §5) tells the old incarnation's segments from the new one's, and a second
    /// has passed, so our timestamp clock (1 ms, the same offset per tuple) has moved on.
    /// Our keyed ISN (RFC 6528) also grows with time, so the new SYN lies above the old
    /// sequence space (RFC 6191).
    fn time_wait_reusable(&self, now: Instant, tw: &TimeWait) -> bool {
        // It entered TIME-WAIT at `deadline - time_wait`.
        tw.ts.is_some() && now + self.cfg.tcp.time_wait >= tw.deadline + Duration::from_secs(1)
    }

    fn params(&self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4) -> ConnParams {
        ConnParams {
            local,
            remote,
            iss: self.secrets.isn(now, local, remote),
            ts_offset: self.secrets.ts_offset(local, remote),
            our_mss: self.our_mss(),
        }
    }

    fn insert(&mut self, conn: Conn, half_open_of: Option<SocketAddrV4>) -> u32 {
        let tuple = (conn.local, conn.remote);
        let slot = match self.free.pop() {
            Some(s) => {
                let sl = &mut self.slots[s as usize];
                sl.conn = Some(conn);
                sl.half_open_of = half_open_of;
                sl.reset_reported = false;
                sl.active = false;
                sl.awaiting = false;
                s
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    conn: Some(conn),
                    dirty: false,
                    half_open_of,
                    reset_reported: false,
                    active: false,
                    awaiting: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.by_tuple.insert(tuple, slot);
        self.last_tuple = None;
        self.live += 1;
        slot
    }

    fn id(&self, slot: u32) -> ConnId {
        ConnId {
            slot,
            gen: self.slots[slot as usize].gen,
        }
    }

    fn slot_of(&self, id: ConnId) -> Result<u32, Error> {
        match self.slots.get(id.slot as usize) {
            Some(s) if s.gen == id.gen && s.conn.is_some() => Ok(id.slot),
            _ => Err(Error::InvalidHandle),
        }
    }

    fn conn(&self, id: ConnId) -> Result<&Conn, Error> {
        let slot = self.slot_of(id)?;
        self.slots[slot as usize]
            .conn
            .as_ref()
            .ok_or(Error::InvalidHandle)
    }

    fn conn_mut(&mut self, id: ConnId) -> Result<(u32, &mut Conn), Error> {
        let slot = self.slot_of(id)?;
        let c = self.slots[slot as usize]
            .conn
            .as_mut()
            .ok_or(Error::InvalidHandle)?;
        Ok((slot, c))
    }

    fn mark_dirty(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push_back(slot);
        }
    }

    pub fn local_addr(&self, id: ConnId) -> Result<SocketAddrV4, Error> {
        Ok(self.conn(id)?.local)
    }
    pub fn remote_addr(&self, id: ConnId) -> Result<SocketAddrV4, Error> {
        Ok(self.conn(id)?.remote)
    }
    pub fn state(&self, id: ConnId) -> Result<State, Error> {
        Ok(self.conn(id)?.state)
    }
    /// The connection's state, RTT, congestion window and retransmits.
    pub fn conn_info(&self, id: ConnId) -> Result<crate::tcp::ConnInfo, Error> {
        Ok(self.conn(id)?.info())
    }
    /// Bytes ready to read.
    pub fn recv_available(&self, id: ConnId) -> Result<usize, Error> {
        Ok(self.conn(id)?.recv_len())
    }
    /// Bytes `write` would accept now.
    pub fn send_free(&self, id: ConnId) -> Result<usize, Error> {
        Ok(self.conn(id)?.send_free())
    }

    /// Reads received bytes. `Ok(0)` means end of stream; `WouldBlock` means wait for `Readable`.
    pub fn read(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, Error> {
        let slot = self.slot_of(id)?;
        let Some(c) = self.slots[slot as usize].conn.as_mut() else {
            return Err(Error::InvalidHandle);
        };
        if c.recv_len() == 0 {
            return if c.at_eof() || buf.is_empty() {
                Ok(0)
            } else {
                Err(Error::WouldBlock)
            };
        }
        let n = c.read(&self.cfg.tcp, buf);
        let drained = c.recv_len() == 0;
        if c.has_output() {
            self.mark_dirty(slot);
        }
        if drained {
            // The connection may have set a time to give the storage back.
            self.queue_release(slot);
        }
        Ok(n)
    }

    /// Queues bytes to send; returns how many were taken. `WouldBlock` when the send buffer is
    /// full (wait for `Writable`); `SendClosed` after `shutdown_write`/`close` or once the
    /// connection can no longer send.
    pub fn write(&mut self, id: ConnId, data: &[u8]) -> Result<usize, Error> {
        let (slot, c) = self.conn_mut(id)?;
        if c.user_closed || c.send_closed() {
            return Err(Error::SendClosed);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let n = c.write(data);
        if n == 0 {
            return Err(Error::WouldBlock);
        }
        let s = &mut self.slots[slot as usize];
        if s.active && !s.awaiting {
            s.awaiting = true;
            self.awaiting += 1;
        }
        self.mark_dirty(slot);
        Ok(n)
    }

    /// Turns Nagle's algorithm on or off for one connection.
    pub fn set_nagle(&mut self, id: ConnId, on: bool) -> Result<(), Error> {
        self.conn_mut(id)?.1.set_nagle(on);
        Ok(())
    }

    /// Sets keepalive for one connection (`None`: off), overriding `TcpConfig::keepalive`.
    /// Turning it on starts the idle time at `now`.
    pub fn set_keepalive(
        &mut self,
        now: Instant,
        id: ConnId,
        keepalive: Option<Keepalive>,
    ) -> Result<(), Error> {
        let (slot, c) = self.conn_mut(id)?;
        c.set_keepalive(keepalive.as_ref(), now);
        self.after(slot);
        Ok(())
    }

    /// Half-close: send a FIN after the queued data; reading goes on.
    pub fn shutdown_write(&mut self, id: ConnId) -> Result<(), Error> {
        let (slot, c) = self.conn_mut(id)?;
        c.shutdown_write();
        self.mark_dirty(slot);
        self.after(slot);
        Ok(())
    }

    /// Graceful close: the application reads and writes nothing more. Queued data is still
    /// delivered, then a FIN. Unread received data makes it a reset instead (RFC 2525 §2.17).
    /// `Closed` follows once the connection is done; the handle is then released.
    pub fn close(&mut self, now: Instant, id: ConnId) -> Result<(), Error> {
        let cfg = self.cfg.tcp.clone();
        let (slot, c) = self.conn_mut(id)?;
        c.close(&cfg, now);
        self.mark_dirty(slot);
        self.after(slot);
        Ok(())
    }

    /// Sends a RST and releases the connection (`Closed` follows).
    pub fn abort(&mut self, id: ConnId) -> Result<(), Error> {
        let (slot, c) = self.conn_mut(id)?;
        c.user_closed = true;
        c.abort();
        self.mark_dirty(slot);
        self.after(slot);
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the stack next needs `poll_transmit` without new input. `Some(Instant::ZERO)`
    /// means output is pending now.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.dirty.is_empty() || !self.control.is_empty() || self.neigh.has_output() {
            return Some(Instant::ZERO);
        }
        let t = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let tw = self.time_wait_order.front().map(|(t, _)| *t);
        let release = self.release_order.front().map(|(t, _, _)| *t);
        [t, tw, release, self.neigh.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- receive path ----

    /// Processes one received Ethernet frame. Anything malformed or not ours is dropped and
    /// counted (see [`Stats`]); nothing here panics on input.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        self.stats.inc(Counter::FramesIn);
        let eth = match ethernet::Frame::new_checked(frame) {
            Ok(f) => f,
            Err(_) => return self.stats.drop(DropReason::EthTruncated),
        };
        let dst = eth.dst();
        if dst != self.cfg.mac && !dst.is_broadcast() {
            return self.stats.drop(DropReason::EthNotForUs);
        }
        match eth.ethertype() {
            ethernet::ETHERTYPE_ARP => self.handle_arp(now, eth.payload()),
            ethernet::ETHERTYPE_IPV4 if !dst.is_broadcast() => self.handle_ipv4(now, eth.payload()),
            _ => self.stats.drop(DropReason::EthUnknownType),
        }
    }

    fn handle_arp(&mut self, now: Instant, payload: &[u8]) {
        let a = match ArpRepr::parse(payload) {
            Ok(a) => a,
            Err(_) => return self.stats.drop(DropReason::ArpMalformed),
        };
        let for_us = self.is_local(a.target_ip);
        // RFC 826: merge the sender into the cache; create an entry only when addressed to us.
        self.neigh
            .learn(a.sender_ip, a.sender_mac, now, for_us, &mut self.stats);
        if !for_us {
            return self.stats.drop(DropReason::ArpNotForUs);
        }
        if a.op == Operation::Request {
            self.push_control(Control::ArpReply {
                to_mac: a.sender_mac,
                to_ip: a.sender_ip,
                from_ip: a.target_ip,
            });
        }
    }

    fn push_control(&mut self, c: Control) {
        if self.control.len() >= self.cfg.max_control_queue {
            self.stats.drop(DropReason::ControlQueueFull);
        } else {
            self.control.push_back(c);
        }
    }

    fn handle_ipv4(&mut self, now: Instant, payload: &[u8]) {
        let ip = match Ipv4Packet::parse(payload) {
            Ok(p) => p,
            Err(e) => {
                return self.stats.drop(match e {
                    WireError::Truncated => DropReason::Ipv4Truncated,
                    WireError::Checksum => DropReason::Ipv4Checksum,
                    WireError::Fragment => DropReason::Ipv4Fragment,
                    WireError::Unsupported => DropReason::Ipv4Unsupported,
                    WireError::Malformed => DropReason::Ipv4Malformed,
                })
            }
        };
        if !self.is_local(ip.dst) {
            return self.stats.drop(DropReason::Ipv4NotForUs);
        }
        match ip.protocol {
            ipv4::PROTO_TCP => self.handle_tcp(now, ip.src, ip.dst, ip.payload),
            ipv4::PROTO_ICMP => self.handle_icmp(ip.src, ip.dst, ip.payload),
            _ => self.stats.drop(DropReason::Ipv4UnknownProtocol),
        }
    }

    fn handle_icmp(&mut self, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
        let p = match IcmpPacket::parse(payload) {
            Ok(p) => p,
            Err(WireError::Checksum) => return self.stats.drop(DropReason::IcmpChecksum),
            Err(_) => return self.stats.drop(DropReason::IcmpMalformed),
        };
        if p.kind == icmp::ECHO_REQUEST && p.code == 0 {
            if ipv4::HEADER_LEN + p.len() > self.cfg.mtu {
                return self.stats.drop(DropReason::IcmpMalformed);
            }
            self.push_control(Control::EchoReply {
                src: dst,
                dst: src,
                rest: p.rest,
                data: p.data.to_vec(),
            });
        } else {
            self.stats.drop(DropReason::IcmpIgnored);
        }
    }

    fn handle_tcp(&mut self, now: Instant, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
        let seg = match Segment::parse(payload, src, dst) {
            Ok(s) => s,
            Err(WireError::Truncated) => return self.stats.drop(DropReason::TcpTruncated),
            Err(WireError::Checksum) => return self.stats.drop(DropReason::TcpChecksum),
            Err(_) => return self.stats.drop(DropReason::TcpMalformed),
        };
        let h = seg.header;
        if h.src_port == 0 || h.dst_port == 0 {
            return self.stats.drop(DropReason::TcpBadPort);
        }
        let local = SocketAddrV4::new(dst, h.dst_port);
        let remote = SocketAddrV4::new(src, h.src_port);
        let tuple = (local, remote);

        let known = match self.last_tuple {
            Some((t, slot)) if t == tuple => Some(slot),
            _ => self.by_tuple.get(&tuple).copied(),
        };
        if let Some(slot) = known {
            self.last_tuple = Some((tuple, slot));
            self.with_conn(now, slot, |c, ctx| c.handle_segment(ctx, &h, seg.payload));
            return;
        }

        if self.time_wait.contains_key(&tuple)
            && !self.handle_time_wait(now, tuple, &h, seg.payload.len())
        {
            return;
        }

        if let Some(listener) = self.listener_for(local) {
            if h.flags.rst() {
                return self.stats.drop(DropReason::TcpNoConnection);
            }
            if h.flags.syn() && !h.flags.ack() {
                return self.handle_syn(now, listener, local, remote, &h);
            }
            // Cookies are only checked while they are being sent (two cookie periods), which
            // narrows a blind attacker's window for guessing one.
            let cookies_live = self
                .last_cookie_sent
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(128));
            if h.flags.ack() && !h.flags.syn() && cookies_live {
                let peer_isn = Seq(h.seq) - 1;
                // With timestamps, the options ride in the echo of our timestamp.
                let opts = match h.options.timestamp {
                    Some((_, ecr)) if self.cfg.tcp.timestamps => {
                        Some(CookieOpts::from_bits(ecr & CookieOpts::MASK))
                    }
                    _ => None,
                };
                let opts_in = h
                    .options
                    .timestamp
                    .filter(|_| opts.is_some())
                    .map_or(0, |t| CookieOpts::hash_input(t.1 & CookieOpts::MASK));
                if let Some(mss) =
                    self.secrets
                        .check_cookie(now, local, remote, peer_isn, Seq(h.ack) - 1, opts_in)
                {
                    if self.live < self.cfg.max_connections {
                        self.stats.inc(Counter::SynCookiesAccepted);
                        let mut params = self.params(now, local, remote);
                        params.iss = Seq(h.ack) - 1;
                        let mut conn = Conn::from_cookie(&self.cfg.tcp, params, &h, mss, opts, now);
                        conn.from_listener = Some(listener);
                        let slot = self.insert(conn, None);
                        self.events.push_back(Event::Accepted {
                            id: self.id(slot),
                            local,
                            remote,
                        });
                        self.stats.inc(Counter::ConnectionsAccepted);
                        if !seg.payload.is_empty() || h.flags.fin() {
                            self.with_conn(now, slot, |c, ctx| {
                                c.handle_segment(ctx, &h, seg.payload)
                            });
                        } else {
                            self.after(slot);
                        }
                        return;
                    }
                }
                self.stats.drop(DropReason::TcpSynCookieInvalid);
            } else {
                self.stats.drop(DropReason::TcpNoConnection);
            }
        } else {
            self.stats.drop(DropReason::TcpNoConnection);
        }
        self.reply_rst(local, remote, &h, seg.payload.len());
    }

    /// RFC 9293 §3.10.7.1: a segment for no connection gets a RST, unless it is one.
    fn reply_rst(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        h: &Header,
        payload_len: usize,
    ) {
        if h.flags.rst() {
            return;
        }
        let header = if h.flags.ack() {
            Header {
                src_port: local.port(),
                dst_port: remote.port(),
                seq: h.ack,
                flags: Flags::RST,
                ..Header::default()
            }
        } else {
            let len = payload_len + h.flags.syn() as usize + h.flags.fin() as usize;
            Header {
                src_port: local.port(),
                dst_port: remote.port(),
                seq: 0,
                ack: (Seq(h.seq) + len).0,
                flags: Flags::RST | Flags::ACK,
                ..Header::default()
            }
        };
        self.stats.inc(Counter::RstsSent);
        self.push_control(Control::Tcp {
            local,
            remote,
            header,
        });
    }

    fn handle_syn(
        &mut self,
        now: Instant,
        listener: SocketAddrV4,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        h: &Header,
    ) {
        if self.live >= self.cfg.max_connections {
            return self.stats.drop(DropReason::TcpTooManyConnections);
        }
        let backlog_full = self
            .listeners
            .get(&listener)
            .is_some_and(|l| l.half_open >= self.cfg.syn_backlog);
        if backlog_full {
            // SYN cookies: answer without state. The cookie carries the MSS; when the SYN
            // offered timestamps, window scaling and SACK-permitted ride in the low 6 bits of
            // our timestamp value, which the peer echoes (as Linux does), and the cookie's hash
            // covers them. Without timestamps the connection goes without all three.
            let tcp = &self.cfg.tcp;
            let mss = h.options.mss.unwrap_or(536).min(self.our_mss());
            let mut options = Options {
                mss: Some(self.our_mss()),
                ..Options::default()
            };
            let mut opts_in = 0;
            if let (true, Some((peer_val, _))) = (tcp.timestamps, h.options.timestamp) {
                let o = CookieOpts {
                    window_scale: h.options.window_scale.filter(|_| tcp.window_scaling),
                    sack: tcp.sack && h.options.sack_permitted,
                };
                let ts_offset = self.secrets.ts_offset(local, remote);
                // Never ahead of the timestamps the connection sends later (the peer's PAWS
                // would drop those): one step of 64 back when the bits put it ahead.
                let clock = (now.as_millis() as u32).wrapping_add(ts_offset);
                let mut ts_val = (clock & !CookieOpts::MASK) | o.bits();
                if (ts_val.wrapping_sub(clock) as i32) > 0 {
                    ts_val = ts_val.wrapping_sub(CookieOpts::MASK + 1);
                }
                options.timestamp = Some((ts_val, peer_val));
                options.sack_permitted = o.sack;
                if o.window_scale.is_some() {
                    options.window_scale = Some(Conn::offered_shift(tcp));
                }
                opts_in = CookieOpts::hash_input(o.bits());
            }
            let cookie = self
                .secrets
                .cookie(now, local, remote, Seq(h.seq), mss, opts_in);
            let header = Header {
                src_port: local.port(),
                dst_port: remote.port(),
                seq: cookie.0,
                ack: (Seq(h.seq) + 1).0,
                flags: Flags::SYN | Flags::ACK,
                window: self.cfg.tcp.recv_buffer.min(65535) as u16,
                options,
            };
            self.stats.inc(Counter::SynCookiesSent);
            self.last_cookie_sent = Some(now);
            return self.push_control(Control::Tcp {
                local,
                remote,
                header,
            });
        }
        let params = self.params(now, local, remote);
        let mut conn = Conn::accept(&self.cfg.tcp, params, h, now);
        conn.from_listener = Some(listener);
        if let Some(l) = self.listeners.get_mut(&listener) {
            l.half_open += 1;
        }
        let slot = self.insert(conn, Some(listener));
        self.mark_dirty(slot);
        self.after(slot);
    }

    /// Returns true when the segment should go on to the listener (a new SYN reusing the tuple).
    fn handle_time_wait(
        &mut self,
        now: Instant,
        tuple: Tuple,
        h: &Header,
        payload_len: usize,
    ) -> bool {
        let Some(tw) = self.time_wait.get_mut(&tuple) else {
            return true;
        };
        if h.flags.rst() {
            // RFC 1337: ignore RSTs in TIME-WAIT.
            return false;
        }
        if h.flags.syn() && !h.flags.ack() {
            // RFC 6191 / RFC 1122 §4.2.2.13: a new SYN above the old sequence space (or with a
            // newer timestamp) may reopen the tuple.
            let newer_ts = matches!((tw.ts, h.options.timestamp), (Some((recent, _)), Some((val, _))) if (val.wrapping_sub(recent) as i32) > 0);
            if Seq(h.seq) > tw.rcv_nxt || newer_ts {
                self.time_wait.remove(&tuple);
                self.stats.inc(Counter::TimeWaitReused);
                return true;
            }
        }
        // Only the peer's own FIN, retransmitted, restarts the 2 MSL timer (RFC 9293 §3.10.7.4);
        // re-queue at most once a second so FINs cannot grow the order queue.
        if h.flags.fin() && Seq(h.seq) + payload_len + 1 == tw.rcv_nxt {
            let deadline = now + self.cfg.tcp.time_wait;
            if deadline.saturating_duration_since(tw.deadline) >= Duration::from_secs(1) {
                tw.deadline = deadline;
                self.time_wait_order.push_back((deadline, tuple));
            }
        }
        // Anything else is answered with an ACK (RFC 9293 §3.10.7.4), but without data or a
        // FIN at most once per `invalid_ack_interval`, as in a connection (RFC 5961 erratum 4772):
        // a retransmitted FIN needs its ACK; a flood of bare ACKs or SYNs does not.
        if h.flags.syn() || (payload_len == 0 && !h.flags.fin()) {
            let interval = self.cfg.tcp.invalid_ack_interval;
            if tw
                .last_ack
                .is_some_and(|t| now.saturating_duration_since(t) < interval)
            {
                self.stats.inc(Counter::InvalidAcksSuppressed);
                return false;
            }
            tw.last_ack = Some(now);
        }
        let mut options = Options::default();
        if let Some((recent, off)) = tw.ts {
            options.timestamp = Some(((now.as_millis() as u32).wrapping_add(off), recent));
        }
        let header = Header {
            src_port: tuple.0.port(),
            dst_port: tuple.1.port(),
            seq: tw.snd_nxt.0,
            ack: tw.rcv_nxt.0,
            flags: Flags::ACK,
            window: 0,
            options,
        };
        self.push_control(Control::Tcp {
            local: tuple.0,
            remote: tuple.1,
            header,
        });
        false
    }

    /// Runs `f` on a connection with a context, then applies what it changed.
    fn with_conn(&mut self, now: Instant, slot: u32, f: impl FnOnce(&mut Conn, &mut Ctx)) {
        let mut events = std::mem::take(&mut self.scratch_events);
        let mut data_came = false;
        if let Some(c) = self.slots[slot as usize].conn.as_mut() {
            let mut ctx = Ctx {
                now,
                cfg: &self.cfg.tcp,
                stats: &mut self.stats,
                events: &mut events,
            };
            let held = c.recv_len();
            f(c, &mut ctx);
            data_came = c.recv_len() > held;
        }
        if data_came {
            // An answer, even one queued behind unread data (no `Readable` then).
            self.stop_awaiting(slot);
        }
        self.scratch_events = events;
        self.mark_dirty(slot);
        self.after(slot);
    }

    /// The slot's peer owes it nothing (any more): out of [`Stack::awaiting_answers`].
    fn stop_awaiting(&mut self, slot: u32) {
        if std::mem::take(&mut self.slots[slot as usize].awaiting) {
            self.awaiting -= 1;
        }
    }

    /// Turns connection events into stack events, releases finished connections, reschedules timers.
    fn after(&mut self, slot: u32) {
        let id = self.id(slot);
        let mut events = std::mem::take(&mut self.scratch_events);
        for e in events.drain(..) {
            if matches!(
                e,
                ConnEvent::Readable | ConnEvent::PeerClosed | ConnEvent::Reset(_)
            ) {
                // Answered, or never will be.
                self.stop_awaiting(slot);
            }
            let s = &mut self.slots[slot as usize];
            let Some(c) = s.conn.as_ref() else { break };
            let ev = match e {
                ConnEvent::Established { passive } => {
                    if let Some(l) = s.half_open_of.take() {
                        if let Some(l) = self.listeners.get_mut(&l) {
                            l.half_open = l.half_open.saturating_sub(1);
                        }
                    }
                    if passive {
                        Event::Accepted {
                            id,
                            local: c.local,
                            remote: c.remote,
                        }
                    } else {
                        Event::Connected(id)
                    }
                }
                ConnEvent::Readable => Event::Readable(id),
                ConnEvent::Writable => Event::Writable(id),
                ConnEvent::PeerClosed => Event::PeerClosed(id),
                ConnEvent::Reset(reason) => {
                    s.reset_reported = true;
                    // A connection the application never saw (a failed passive open) is not reported.
                    if s.half_open_of.is_some() {
                        continue;
                    }
                    Event::Reset { id, reason }
                }
            };
            self.events.push_back(ev);
        }
        self.scratch_events = events;

        let s = &mut self.slots[slot as usize];
        let Some(c) = s.conn.as_mut() else { return };
        let release = (c.is_closed()
            && (c.user_closed || s.reset_reported || s.half_open_of.is_some()))
            || (c.time_wait_ready() && c.user_closed);
        if release {
            let c = s.conn.take().expect("checked above");
            let report_closed = !s.reset_reported && s.half_open_of.is_none();
            if let Some(l) = s.half_open_of.take() {
                if let Some(l) = self.listeners.get_mut(&l) {
                    l.half_open = l.half_open.saturating_sub(1);
                }
            }
            s.gen = s.gen.wrapping_add(1);
            self.stop_awaiting(slot);
            self.by_tuple.remove(&(c.local, c.remote));
            self.last_tuple = None;
            self.free.push(slot);
            self.live -= 1;
            if c.state == State::TimeWait {
                self.enter_time_wait(&c);
            }
            if report_closed {
                self.events.push_back(Event::Closed(id));
            }
            // Its timer entry, if on top, is stale now.
            self.prune_timers();
            return;
        }
        self.schedule(slot);
        self.queue_release(slot);
    }

    fn queue_release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if let Some(t) = s.conn.as_mut().and_then(|c| c.release_to_queue()) {
            self.release_order.push_back((t, slot, s.gen));
        }
    }

    /// Puts the connection's next deadline on the timer heap whenever it changed. The entry
    /// for the old one goes stale (it no longer matches `scheduled`) and is skipped: a
    /// deadline that moved later or was cancelled (an ACK stops the RTO and the tail-loss
    /// probe) must not be what [`Stack::poll_timeout`] reports, or an idle worker wakes up
    /// for nothing, a context switch each time.
    ///
    /// A deadline that moved later by less than [`LATER_SLACK`] keeps its entry: every ACK
    /// moves the RTO a little, and a push per ACK costs a bulk transfer more than the one
    /// early wake-up (at most `LATER_SLACK` early) it avoids.
    fn schedule(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let Some(c) = s.conn.as_mut() else { return };
        let d = c.next_deadline();
        let push = match (d, c.scheduled) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(d), Some(old)) => d < old || d >= old + LATER_SLACK,
        };
        let cancelled = d.is_none() && c.scheduled.is_some();
        if push || cancelled {
            c.scheduled = d;
        }
        if let (true, Some(d)) = (push, d) {
            self.timers.push(Reverse((d, slot, s.gen)));
        }
        // Only a changed entry can have made the top stale (a bulk transfer's ACKs mostly
        // change nothing here).
        if push || cancelled {
            self.prune_timers();
        }
    }

    /// Whether a timer heap entry is its connection's current deadline.
    fn timer_live(&self, t: Instant, slot: u32, gen: u32) -> bool {
        self.slots.get(slot as usize).is_some_and(|s| {
            s.gen == gen && s.conn.as_ref().is_some_and(|c| c.scheduled == Some(t))
        })
    }

    /// Drops stale entries from the top of the timer heap, so its top is a live deadline,
    /// and rebuilds the heap when stale entries below the top pile up. The rebuild walks
    /// every slot, so its trigger counts slots, not live connections: after a burst has
    /// gone, a few busy connections must not pay a walk of all its slots every 1,000 ACKs.
    fn prune_timers(&mut self) {
        if self.timers.len() > 4 * self.slots.len() + 1024 {
            self.rebuild_timers();
        }
        while let Some(&Reverse((t, slot, gen))) = self.timers.peek() {
            if self.timer_live(t, slot, gen) {
                break;
            }
            self.timers.pop();
        }
    }

    fn enter_time_wait(&mut self, c: &Conn) {
        let (rcv_nxt, snd_nxt, ts_ok, ts_recent, ts_offset) = c.time_wait_state();
        let deadline = c.next_deadline().unwrap_or(Instant::ZERO);
        while self.time_wait.len() >= self.cfg.max_time_wait {
            match self.time_wait_order.pop_front() {
                Some((t, tuple)) => {
                    if self.time_wait.get(&tuple).is_some_and(|e| e.deadline == t) {
                        self.time_wait.remove(&tuple);
                        self.stats.inc(Counter::TimeWaitEvicted);
                    }
                }
                None => break,
            }
        }
        let tuple = (c.local, c.remote);
        self.time_wait.insert(
            tuple,
            TimeWait {
                rcv_nxt,
                snd_nxt,
                ts: ts_ok.then_some((ts_recent, ts_offset)),
                deadline,
                last_ack: None,
            },
        );
        self.time_wait_order.push_back((deadline, tuple));
    }

    // ---- timers and transmit ----

    fn run_timers(&mut self, now: Instant) {
        let mut popped = false;
        while let Some(&Reverse((t, slot, gen))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            popped = true;
            if !self.timer_live(t, slot, gen) {
                continue;
            }
            if let Some(c) = self.slots[slot as usize].conn.as_mut() {
                c.scheduled = None;
            }
            self.with_conn(now, slot, |c, ctx| c.on_timer(ctx));
        }
        if popped {
            self.prune_timers();
        }
        while let Some(&(t, slot, gen)) = self.release_order.front() {
            if t > now {
                break;
            }
            self.release_order.pop_front();
            let s = &mut self.slots[slot as usize];
            if s.gen != gen {
                continue; // the connection is gone, and its buffers with it
            }
            if let Some(later) = s.conn.as_mut().and_then(|c| c.release_due(now)) {
                self.release_order.push_back((later, slot, gen));
            }
        }
        if self.neigh.next_deadline().is_some_and(|t| t <= now) {
            self.neigh.on_timer(now, &mut self.stats);
        }
        while let Some(&(t, tuple)) = self.time_wait_order.front() {
            if t > now {
                break;
            }
            self.time_wait_order.pop_front();
            if self
                .time_wait
                .get(&tuple)
                .is_some_and(|e| e.deadline <= now)
            {
                self.time_wait.remove(&tuple);
            }
        }
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(c) = s.conn.as_mut() {
                c.scheduled = c.next_deadline();
                if let Some(d) = c.scheduled {
                    self.timers.push(Reverse((d, i as u32, s.gen)));
                }
            }
        }
    }

    /// Fills `buf` with the next frame to send and returns its length, or `None` when there is
    /// nothing to send. Runs due timers first. `buf` must hold `mtu + 14` bytes.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.run_timers(now);
        if buf.len() < ethernet::HEADER_LEN + self.cfg.mtu {
            self.stats.drop(DropReason::TxBufferTooSmall);
            return None;
        }
        loop {
            if let Some(ip) = self.neigh.pop_request(&mut self.stats) {
                if let Some(n) = self.emit_arp_request(ip, buf) {
                    return self.sent(n);
                }
                continue;
            }
            if let Some((mac, packet)) = self.neigh.pop_ready() {
                let n = ethernet::HEADER_LEN + packet.len();
                if n <= buf.len() {
                    ethernet::emit(buf, mac, self.cfg.mac, ethernet::ETHERTYPE_IPV4);
                    buf[ethernet::HEADER_LEN..n].copy_from_slice(&packet);
                    return self.sent(n);
                }
                self.stats.drop(DropReason::TxBufferTooSmall);
                continue;
            }
            if let Some(c) = self.control.pop_front() {
                if let Some(n) = self.emit_control(now, c, buf) {
                    return self.sent(n);
                }
                continue;
            }
            let &slot = self.dirty.front()?;
            if let Some(n) = self.emit_conn(now, slot, buf) {
                return self.sent(n);
            }
            self.dirty.pop_front();
            self.slots[slot as usize].dirty = false;
            self.after(slot);
        }
    }

    fn sent(&mut self, n: usize) -> Option<usize> {
        self.stats.inc(Counter::FramesOut);
        Some(n)
    }

    fn emit_arp_request(&mut self, ip: Ipv4Addr, buf: &mut [u8]) -> Option<usize> {
        let from = self
            .cfg
            .addresses
            .iter()
            .find(|c| c.contains(ip))
            .or(self.cfg.addresses.first())?
            .addr;
        let a = ArpRepr {
            op: Operation::Request,
            sender_mac: self.cfg.mac,
            sender_ip: from,
            target_mac: MacAddr::ZERO,
            target_ip: ip,
        };
        ethernet::emit(
            buf,
            MacAddr::BROADCAST,
            self.cfg.mac,
            ethernet::ETHERTYPE_ARP,
        );
        a.emit(&mut buf[ethernet::HEADER_LEN..]);
        Some(ethernet::HEADER_LEN + arp::PACKET_LEN)
    }

    /// The fields that wrap a payload in IPv4 and Ethernet, borrowed apart from the
    /// connection table so a connection can fill the payload.
    fn egress(&mut self) -> Egress<'_> {
        Egress {
            cfg: &self.cfg,
            neigh: &mut self.neigh,
            stats: &mut self.stats,
            ip_ident: &mut self.ip_ident,
        }
    }

    fn emit_control(&mut self, now: Instant, c: Control, buf: &mut [u8]) -> Option<usize> {
        match c {
            Control::ArpReply {
                to_mac,
                to_ip,
                from_ip,
            } => {
                let a = ArpRepr {
                    op: Operation::Reply,
                    sender_mac: self.cfg.mac,
                    sender_ip: from_ip,
                    target_mac: to_mac,
                    target_ip: to_ip,
                };
                ethernet::emit(buf, to_mac, self.cfg.mac, ethernet::ETHERTYPE_ARP);
                a.emit(&mut buf[ethernet::HEADER_LEN..]);
                self.stats.inc(Counter::ArpRepliesSent);
                Some(ethernet::HEADER_LEN + arp::PACKET_LEN)
            }
            Control::EchoReply {
                src,
                dst,
                rest,
                data,
            } => {
                let p = IcmpPacket {
                    kind: icmp::ECHO_REPLY,
                    code: 0,
                    rest,
                    data: &data,
                };
                self.stats.inc(Counter::IcmpEchoReplies);
                self.egress()
                    .emit_ip(now, buf, (src, dst, ipv4::PROTO_ICMP), p.len(), |b| {
                        p.emit(b)
                    })
            }
            Control::Tcp {
                local,
                remote,
                header,
            } => {
                self.stats.inc(Counter::SegmentsOut);
                self.egress().emit_ip(
                    now,
                    buf,
                    (*local.ip(), *remote.ip(), ipv4::PROTO_TCP),
                    header.len(),
                    |b| {
                        header.emit(b);
                        tcpw::fill_checksum(b, *local.ip(), *remote.ip());
                    },
                )
            }
        }
    }

    /// Emits the connection's next segment, if it has one.
    fn emit_conn(&mut self, now: Instant, slot: u32, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut events = std::mem::take(&mut self.scratch_events);
            let s = &mut self.slots[slot as usize];
            let c = s.conn.as_mut()?;
            let out = {
                let mut ctx = Ctx {
                    now,
                    cfg: &self.cfg.tcp,
                    stats: &mut self.stats,
                    events: &mut events,
                };
                c.poll_segment(&mut ctx)
            };
            self.scratch_events = events;
            let out = out?;
            self.stats.inc(Counter::SegmentsOut);
            let (local, remote) = (*c.local.ip(), *c.remote.ip());
            let hl = out.header.len();
            let c = &*c;
            let mut egress = Egress {
                cfg: &self.cfg,
                neigh: &mut self.neigh,
                stats: &mut self.stats,
                ip_ident: &mut self.ip_ident,
            };
            // Unresolved next hop: the frame waits in the neighbour cache and the ARP request
            // goes out once this connection has nothing more to send.
            let sent = egress.emit_ip(
                now,
                buf,
                (local, remote, ipv4::PROTO_TCP),
                hl + out.payload_len,
                |seg| {
                    out.header.emit(seg);
                    c.copy_payload(&out, &mut seg[hl..]);
                    tcpw::fill_checksum(seg, local, remote);
                },
            );
            if sent.is_some() {
                return sent;
            }
        }
    }

    /// Bytes of send and receive buffer storage all connections hold (a walk over them).
    pub fn buffers_allocated(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.conn.as_ref())
            .map(|c| c.buffers_allocated())
            .sum()
    }

    /// Bytes of state one connection holds in the stack, not counting its buffers and the
    /// hash map entry (for the memory benchmark).
    pub fn connection_state_size() -> usize {
        core::mem::size_of::<Slot>()
    }
}

fn next_hop(cfg: &StackConfig, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    if cfg.addresses.iter().any(|c| c.contains(dst)) {
        Some(dst)
    } else {
        cfg.gateway
    }
}

struct Egress<'a> {
    cfg: &'a StackConfig,
    neigh: &'a mut NeighborCache,
    stats: &'a mut Stats,
    ip_ident: &'a mut u16,
}

impl Egress<'_> {
    /// Writes Ethernet and IPv4 headers around a payload that `fill` writes, and returns the
    /// frame length. If the next hop is unresolved the packet waits in the neighbour cache
    /// and `None` is returned.
    fn emit_ip(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        (src, dst, proto): (Ipv4Addr, Ipv4Addr, u8),
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Option<usize> {
        let Some(hop) = next_hop(self.cfg, dst) else {
            self.stats.drop(DropReason::NoRoute);
            return None;
        };
        let total = ethernet::HEADER_LEN + ipv4::HEADER_LEN + len;
        if total > buf.len() || ipv4::HEADER_LEN + len > self.cfg.mtu {
            self.stats.drop(DropReason::TxBufferTooSmall);
            return None;
        }
        let l3 = ethernet::HEADER_LEN;
        fill(&mut buf[l3 + ipv4::HEADER_LEN..total]);
        *self.ip_ident = self.ip_ident.wrapping_add(1);
        ipv4::emit(&mut buf[l3..], src, dst, proto, len, *self.ip_ident);
        match self.neigh.lookup(hop, now) {
            Some(mac) => {
                ethernet::emit(buf, mac, self.cfg.mac, ethernet::ETHERTYPE_IPV4);
                Some(total)
            }
            None => {
                self.neigh
                    .enqueue(hop, buf[l3..total].to_vec(), now, self.stats);
                None
            }
        }
    }
}
