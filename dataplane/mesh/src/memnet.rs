//! An in-memory [`Net`] for deterministic tests: no sockets, no clock. The engine sees
//! connections; the test plays every peer (clients, servers, another gateway) through the
//! `peer_*` methods and decides when each outgoing connect completes, fails or hangs.
//! Time is whatever `now` the test passes to the engine.

use crate::net::{Net, NetError, NetEvent};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use tcpstack::Instant;

/// A connection handle.
pub type MemConn = u32;

/// How the engine ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineClose {
    /// `close`: a graceful end (FIN after what was written).
    Close,
    /// `abort`: a reset.
    Abort,
}

#[derive(Debug)]
struct Conn {
    local: SocketAddrV4,
    remote: SocketAddrV4,
    /// Still waiting for the test to establish or refuse it (outgoing only).
    connecting: bool,
    /// The peer reset it (or refused the connect): reads and writes fail.
    reset: bool,
    /// Bytes the engine has not read yet, and whether the peer's end of stream follows.
    rx: VecDeque<u8>,
    rx_eof: bool,
    /// Bytes the engine wrote that the peer has not taken yet.
    tx: Vec<u8>,
    tx_shut: bool,
    closed: Option<EngineClose>,
}

/// The in-memory network of one engine.
#[derive(Debug)]
pub struct MemNet {
    conns: HashMap<MemConn, Conn>,
    events: VecDeque<NetEvent<MemConn>>,
    next: MemConn,
    local_ip: Ipv4Addr,
    next_port: u16,
    /// Bytes written and not yet taken by the peer above which writes would block.
    pub window: usize,
}

impl MemNet {
    /// `local_ip`: the address outgoing connections come from.
    pub fn new(local_ip: Ipv4Addr) -> Self {
        MemNet {
            conns: HashMap::new(),
            events: VecDeque::new(),
            next: 1,
            local_ip,
            next_port: 40000,
            window: 256 * 1024,
        }
    }

    fn add(&mut self, local: SocketAddrV4, remote: SocketAddrV4, connecting: bool) -> MemConn {
        let id = self.next;
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                local,
                remote,
                connecting,
                reset: false,
                rx: VecDeque::new(),
                rx_eof: false,
                tx: Vec::new(),
                tx_shut: false,
                closed: None,
            },
        );
        id
    }

    /// A client at `from` connects to a listener at `to`: the engine gets `Accepted`.
    pub fn peer_connect(&mut self, from: SocketAddrV4, to: SocketAddrV4) -> MemConn {
        let conn = self.add(to, from, false);
        self.events.push_back(NetEvent::Accepted {
            conn,
            local: to,
            remote: from,
        });
        conn
    }

    /// Outgoing connections the engine opened that the test has not answered yet.
    pub fn pending_connects(&self) -> Vec<(MemConn, SocketAddrV4)> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.connecting && !c.reset && c.closed.is_none())
            .map(|(&id, c)| (id, c.remote))
            .collect();
        v.sort();
        v
    }

    /// The far end of `c`.
    pub fn remote(&self, c: MemConn) -> Option<SocketAddrV4> {
        self.conns.get(&c).map(|x| x.remote)
    }

    /// Connections the engine opened (not accepted) that carry bytes the peer has not
    /// taken, oldest first: where a request went when it reused a pooled connection.
    pub fn outgoing_with_data(&self) -> Vec<MemConn> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.local.ip() == &self.local_ip && !c.tx.is_empty())
            .map(|(&id, _)| id)
            .collect();
        v.sort();
        v
    }

    /// Every connection the engine opened to `remote`, oldest first.
    pub fn connects_to(&self, remote: SocketAddrV4) -> Vec<MemConn> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.remote == remote && c.local.ip() == &self.local_ip)
            .map(|(&id, _)| id)
            .collect();
        v.sort();
        v
    }

    /// The server side accepts an outgoing connection.
    pub fn peer_accept(&mut self, c: MemConn) {
        if let Some(x) = self.conns.get_mut(&c).filter(|x| x.connecting) {
            x.connecting = false;
            self.events.push_back(NetEvent::Connected(c));
        }
    }

    /// The peer resets the connection (or refuses the connect).
    pub fn peer_reset(&mut self, c: MemConn) {
        if let Some(x) = self
            .conns
            .get_mut(&c)
            .filter(|x| !x.reset && x.closed.is_none())
        {
            x.reset = true;
            x.connecting = false;
            self.events.push_back(NetEvent::Reset(c));
        }
    }

    /// The peer sends bytes.
    pub fn peer_send(&mut self, c: MemConn, data: &[u8]) {
        if let Some(x) = self.conns.get_mut(&c).filter(|x| !x.rx_eof && !x.reset) {
            x.rx.extend(data);
            self.events.push_back(NetEvent::Readable(c));
        }
    }

    /// Bytes the peer sent that the engine has not read.
    pub fn unread(&self, c: MemConn) -> usize {
        self.conns.get(&c).map_or(0, |x| x.rx.len())
    }

    /// The peer ends its direction (FIN).
    pub fn peer_shutdown(&mut self, c: MemConn) {
        if let Some(x) = self.conns.get_mut(&c).filter(|x| !x.reset) {
            x.rx_eof = true;
            self.events.push_back(NetEvent::Readable(c));
        }
    }

    /// Takes what the engine wrote on `c`; send space opening up is signalled.
    pub fn peer_take(&mut self, c: MemConn) -> Vec<u8> {
        let Some(x) = self.conns.get_mut(&c) else {
            return Vec::new();
        };
        let out = std::mem::take(&mut x.tx);
        if !out.is_empty() && x.closed.is_none() && !x.reset {
            self.events.push_back(NetEvent::Writable(c));
        }
        out
    }

    /// The engine's end of our direction: FIN sent (after everything written).
    pub fn shut(&self, c: MemConn) -> bool {
        self.conns.get(&c).is_some_and(|x| x.tx_shut)
    }

    /// How the engine ended the connection, if it did.
    pub fn closed(&self, c: MemConn) -> Option<EngineClose> {
        self.conns.get(&c).and_then(|x| x.closed)
    }

    /// Connections the engine has neither closed nor lost to a reset.
    pub fn open_count(&self) -> usize {
        self.conns
            .values()
            .filter(|x| x.closed.is_none() && !x.reset)
            .count()
    }

    fn live(&mut self, c: MemConn) -> Result<&mut Conn, NetError> {
        match self.conns.get_mut(&c) {
            Some(x) if x.reset => Err(NetError::Reset),
            Some(x) if x.closed.is_some() => Err(NetError::Closed),
            Some(x) => Ok(x),
            None => Err(NetError::Closed),
        }
    }
}

impl Net for MemNet {
    type Conn = MemConn;

    fn connect(&mut self, _now: Instant, remote: SocketAddrV4) -> Result<MemConn, NetError> {
        let local = SocketAddrV4::new(self.local_ip, self.next_port);
        self.next_port = self.next_port.wrapping_add(1).max(40000);
        Ok(self.add(local, remote, true))
    }

    fn read(&mut self, c: MemConn, buf: &mut [u8]) -> Result<usize, NetError> {
        let x = self.live(c)?;
        if x.rx.is_empty() {
            return if x.rx_eof {
                Ok(0)
            } else {
                Err(NetError::WouldBlock)
            };
        }
        let n = buf.len().min(x.rx.len());
        for (d, s) in buf.iter_mut().zip(x.rx.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }

    fn write(&mut self, c: MemConn, data: &[u8]) -> Result<usize, NetError> {
        let window = self.window;
        let x = self.live(c)?;
        if x.tx_shut {
            return Err(NetError::Closed);
        }
        if x.connecting {
            return Err(NetError::WouldBlock);
        }
        let room = window.saturating_sub(x.tx.len());
        if room == 0 {
            return Err(NetError::WouldBlock);
        }
        let n = room.min(data.len());
        x.tx.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn shutdown_write(&mut self, c: MemConn) {
        if let Ok(x) = self.live(c) {
            x.tx_shut = true;
        }
    }

    fn close(&mut self, _now: Instant, c: MemConn) {
        if let Some(x) = self.conns.get_mut(&c).filter(|x| x.closed.is_none()) {
            x.closed = Some(EngineClose::Close);
            x.tx_shut = true;
            self.events.push_back(NetEvent::Closed(c));
        }
    }

    fn abort(&mut self, c: MemConn) {
        if let Some(x) = self.conns.get_mut(&c).filter(|x| x.closed.is_none()) {
            x.closed = Some(EngineClose::Abort);
            self.events.push_back(NetEvent::Closed(c));
        }
    }

    fn poll_event(&mut self) -> Option<NetEvent<MemConn>> {
        self.events.pop_front()
    }
}
