//! What the proxy needs from a TCP implementation, so the same engine runs over tcpstack on
//! AF_XDP and over kernel sockets (mio). Semantics follow tcpstack's `Stack`: reads return
//! `Ok(0)` at end of stream and `WouldBlock` when nothing is buffered; events say when to try
//! again.

use crate::admission::Ticket;
use crate::leg::Leg;
use std::net::SocketAddrV4;
use std::sync::Arc;
use tcpstack::Instant;

/// Gateway A's side of a multiplexed hop (ALPN `h2` in the mTLS, issue #19): what a new hop
/// connection needs, and which connections requests may share.
#[derive(Clone, Debug)]
pub struct HopTls {
    /// The client configuration, offering ALPN `h2` (see [`crate::tls::with_alpn_h2`]).
    pub config: Arc<rustls::ClientConfig>,
    /// The SNI: the service the hop carries requests for (gateway B binds it to that).
    pub sni: rustls::pki_types::ServerName<'static>,
    /// Requests with equal keys may share a connection: the same peer, service, client
    /// identity and configuration (a new certificate or trust makes new connections).
    pub key: Arc<str>,
}

/// Gateway B's side: what the TLS handshake of a multiplexed hop connection established,
/// for each of its streams (the engine checks them as it checks a hop connection's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopPeer {
    /// The SNI the peer sent (names the service).
    pub sni: Option<String>,
    /// The SPIFFE ID of the peer's client certificate.
    pub identity: Option<String>,
}

/// Why a read or write did not move bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// Try again after a `Readable`/`Writable` event.
    WouldBlock,
    /// The connection can no longer send (after `shutdown_write`, or it is gone).
    Closed,
    /// The peer reset the connection, or it timed out.
    Reset,
}

/// Something happened on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetEvent<C> {
    /// A listener accepted a connection.
    Accepted {
        conn: C,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// An outgoing connection completed its handshake.
    Connected(C),
    /// Bytes (or the end of stream) may be readable.
    Readable(C),
    /// Send space opened up.
    Writable(C),
    /// The connection is gone after `close`; the handle is invalid.
    Closed(C),
    /// The connection was reset or could not be opened; the handle is invalid.
    Reset(C),
}

impl<C: Copy> NetEvent<C> {
    pub fn conn(&self) -> C {
        match *self {
            NetEvent::Accepted { conn, .. } => conn,
            NetEvent::Connected(c)
            | NetEvent::Readable(c)
            | NetEvent::Writable(c)
            | NetEvent::Closed(c)
            | NetEvent::Reset(c) => c,
        }
    }
}

/// A TCP implementation the engine drives.
pub trait Net {
    type Conn: Copy + Eq + std::hash::Hash + std::fmt::Debug;

    /// Opens a connection to `remote` from a local address that faces it.
    fn connect(&mut self, now: Instant, remote: SocketAddrV4) -> Result<Self::Conn, NetError>;
    fn read(&mut self, c: Self::Conn, buf: &mut [u8]) -> Result<usize, NetError>;
    fn write(&mut self, c: Self::Conn, data: &[u8]) -> Result<usize, NetError>;
    /// Sends a FIN after what is queued; reading goes on.
    fn shutdown_write(&mut self, c: Self::Conn);
    /// Graceful close; `Closed` follows.
    fn close(&mut self, now: Instant, c: Self::Conn);
    /// Reset; `Closed` or `Reset` may follow.
    fn abort(&mut self, c: Self::Conn);
    fn poll_event(&mut self) -> Option<NetEvent<Self::Conn>>;
    /// Could a read on `c` find anything (data, an end of stream, an error)? `false` only when
    /// the transport knows nothing arrived since a read last came back empty, as a
    /// readiness-driven transport does without a system call. The engine asks before handing
    /// out a pooled connection; what arrives after the transport last looked is caught by the
    /// replay of a request that fails on a reused connection. Default: `true` (read to see).
    fn may_have_input(&self, c: Self::Conn) -> bool {
        let _ = c;
        true
    }
    /// Does a reset of `c` before any response byte, on a request that followed another on
    /// it, prove the request was not processed (a kept-alive TCP connection the server closed
    /// as the request went out)? Then the engine sends the request again whatever its method.
    /// A connection that is a stream of a multiplexed one says `false`: a stream reset tells
    /// nothing of what the server did. Default: `true`.
    fn reset_on_reuse_is_stale(&self, c: Self::Conn) -> bool {
        let _ = c;
        true
    }
    /// Gateway A: a connection carrying HTTP/1.1 requests to the peer gateway at `remote`,
    /// each request a stream on a shared mTLS connection with ALPN `h2`; the engine writes
    /// the `XM/1` preamble and the requests in plaintext, as on a hop of its own. `None`:
    /// this transport has no multiplexed hop; the engine does the TLS itself.
    fn connect_hop(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        hop: &HopTls,
    ) -> Option<Result<Self::Conn, NetError>> {
        let _ = (now, remote, hop);
        None
    }
    /// Gateway B: takes over an accepted mesh connection whose TLS handshake chose ALPN
    /// `h2` (the leg with its TLS state and unsent bytes); its streams come back as accepted
    /// connections for which [`Net::hop_peer`] answers. `Err` gives the leg back when this
    /// transport cannot.
    /// `ticket` keeps the connection counted under its listener's caps while it lives.
    fn adopt_hop(
        &mut self,
        leg: Leg<Self::Conn>,
        peer: HopPeer,
        ticket: Option<Ticket>,
    ) -> Result<(), Leg<Self::Conn>> {
        let _ = (peer, ticket);
        Err(leg)
    }
    /// An `ingress-tls` connection whose TLS handshake chose ALPN `h2`: the transport's
    /// HTTP/2 front takes it over (the leg with its TLS state and unsent bytes), and its
    /// streams come back as accepted connections for which [`Net::is_stream`] answers
    /// `true`. `listener` has the listener's timeouts (they bound the preface and stalls).
    /// `Err` gives the leg back when this transport cannot.
    fn adopt_client(
        &mut self,
        leg: Leg<Self::Conn>,
        listener: crate::h2front::HttpListener,
        ticket: Option<Ticket>,
    ) -> Result<(), Leg<Self::Conn>> {
        let _ = (listener, ticket);
        Err(leg)
    }
    /// Is `c` a stream of an HTTP/2 connection the transport terminated (its bytes are one
    /// HTTP/1.1 request and its response, in plaintext)?
    fn is_stream(&self, c: Self::Conn) -> bool {
        let _ = c;
        false
    }
    /// Gateway B: for a stream of an adopted hop connection, what its handshake established.
    fn hop_peer(&self, c: Self::Conn) -> Option<Arc<HopPeer>> {
        let _ = c;
        None
    }
    /// The connection's (local, remote) addresses, for inspection; `None` when unknown.
    fn addrs(&self, c: Self::Conn) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let _ = c;
        None
    }
    /// The transport's view of the connection (RTT, congestion window, retransmits), for
    /// inspection; `None` when the transport does not say.
    fn tcp_info(&self, c: Self::Conn) -> Option<TcpInfo> {
        let _ = c;
        None
    }
}

/// A TCP connection as the transport sees it (`GET /connections`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpInfo {
    /// The TCP state's name, as the transport calls it.
    pub state: String,
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<std::time::Duration>,
    /// Congestion window in bytes (the kernel's segments times its MSS).
    pub cwnd_bytes: Option<u64>,
    pub retransmits: u64,
}
