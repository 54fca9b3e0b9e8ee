//! HTTP/2 clients on `http` listeners: cleartext with prior knowledge (h2c, RFC 9113 §3.3),
//! next to HTTP/1.1 on the same port, told apart by the connection preface.
//!
//! The front sits between the transport and the engine, as a [`Net`] ([`H2Net`]): a client
//! connection on an `http` listener is held back from the engine until its first bytes show
//! which protocol it speaks. HTTP/1.1 goes on to the engine untouched (the bytes read to tell
//! are replayed). An HTTP/2 connection is terminated here by the `h2` crate (framing, HPACK,
//! flow control, and its limits against the known floods), and each of its streams reaches the
//! engine as a connection of its own, [`FConn::Stream`], carrying one HTTP/1.1 request
//! (RFC 9113 §8.3.1's pseudo-headers as the request line and `Host`, `Cookie` fields joined,
//! §8.2.3). Whatever the engine does with a request — routing, policies, retries, the mTLS hop,
//! telemetry — it does for a stream too; its HTTP/1.1 response goes back as the stream's
//! HEADERS, DATA and trailers (connection-specific fields dropped, RFC 9113 §8.2.2).
//!
//! The `h2` crate is driven by polling with a no-op waker: the front polls a connection again
//! after every change that could move it (bytes in, bytes out, the engine reading or
//! writing), in [`H2Net::poll_event`] and [`H2Net::flush`]. Its I/O object is a pair of
//! bounded in-memory buffers the front fills from and drains to the transport.

use crate::admission::Ticket;
use crate::h2back::HOP_ENDPOINT;
use crate::h2io::{
    append_field, close_real, connection_specific, dechunk, read_real, trailer_map, write_out,
    BufIo, Chunk, READ_CHUNK,
};
use crate::leg::Leg;
use crate::net::{HopPeer, Net, NetError, NetEvent, TcpInfo};
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tcpstack::Instant;

/// Connections on `http` listeners that have not spoken yet, per worker. They are not the
/// engine's yet, so its connection caps do not count them: this bounds them instead (over it,
/// a new one is reset and counted).
pub const MAX_HELD: usize = 4096;
/// The header list a peer gateway's stream may carry (RFC 9113 §6.5.2 counts 32 bytes per
/// field on top of its name and value): a client's head at the engine's limit (16 KiB, 64
/// fields) plus the fields gateway A adds and the hop's own. The engine checks the head it
/// makes of it with its own limits.
pub const HOP_HEADER_LIST: u32 = 24 << 10;
/// RFC 9113 §3.4.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a client's frames buffered before they are parsed; the transport is not read
/// past it (its window closes instead).
const RX_MAX: usize = 64 << 10;
/// Frames buffered for the transport; past it the `h2` connection waits.
const TX_MAX: usize = 256 << 10;
/// Request bytes (head and body) waiting for the engine to read, per stream; past it the
/// stream's DATA stays in the `h2` crate's window.
const REQ_MAX: usize = 64 << 10;
/// Response body bytes waiting for the stream's send window, per stream; past it the engine's
/// writes are refused (`WouldBlock`) until the client opens the window.
const RESP_MAX: usize = 64 << 10;
/// A response the engine finished but the client does not take (its window stays shut) is
/// reset after this long without progress; the engine no longer bounds it.
const ORPHAN_STALL: Duration = Duration::from_secs(30);
/// A response head from the engine is at most this large (the engine's own limit is 16 KiB).
const RESP_HEAD_MAX: usize = 32 << 10;
/// The window [`H2Config::max_control_frames`] counts in.
const CONTROL_WINDOW: Duration = Duration::from_secs(10);
/// Input read and thrown away per turn from a connection the front is ending (it reads on
/// so that the kernel closes it with a FIN after the GOAWAY, not a reset that may drop it).
const DISCARD_MAX: usize = 1 << 20;

/// What the front asks about an `http` listener when it accepts a connection on it.
#[derive(Clone, Copy, Debug)]
pub struct HttpListener {
    /// Its request-head timeout: bounds the preface (see [`H2Config::preface_timeout`]).
    pub request_head: Duration,
    /// Its body-stall timeout: bounds a stalled connection (see [`H2Config::stall_timeout`]).
    pub body_stall: Duration,
}

/// The limits an HTTP/2 client meets. Defaults in brackets.
#[derive(Clone, Debug)]
pub struct H2Config {
    /// Streams a client may have open at once [100] (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Each stream's receive window [64 KiB − 1] and the connection's [1 MiB].
    pub stream_window: u32,
    pub connection_window: u32,
    /// Header list size [16 KiB] (`SETTINGS_MAX_HEADER_LIST_SIZE`, as the HTTP/1.1 head
    /// limit); a larger block is refused (431 or a reset, by the `h2` crate).
    pub max_header_list_size: u32,
    /// HPACK dynamic table [4 KiB].
    pub header_table_size: u32,
    /// Streams a client may open and reset before the front accepts them [20]: past it the
    /// connection ends with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams reset by the front's own error handling before the connection ends [1,024].
    pub max_local_error_reset_streams: usize,
    /// Rapid reset (CVE-2023-44487) past the crate's own check, which only counts streams
    /// reset before they are accepted (the front accepts at once): once a connection has
    /// opened this many streams [100], it ends with ENHANCE_YOUR_CALM when its client reset
    /// at least half of them before their response was complete.
    pub premature_reset_min_streams: u64,
    /// How long a client may take to send the preface or its first bytes [10 s], at most; the
    /// listener's request-head timeout when shorter.
    pub preface_timeout: Duration,
    /// An HTTP/2 connection with no open stream ends after this [60 s].
    pub idle_timeout: Duration,
    /// SETTINGS frames, and apart from them PING frames (ACKs not counted), a client may send
    /// within 10 s [1,000]: past it the connection ends with ENHANCE_YOUR_CALM (SETTINGS and
    /// PING floods; the `h2` crate answers every one and only bounds what is unsent).
    pub max_control_frames: u32,
    /// How long a connection may hold response bytes without the client taking any [30 s],
    /// at most; the listener's `body_stall` timeout when shorter. A response waiting for the
    /// client's flow-control window (a zero-window stall) ends the connection with GOAWAY
    /// FLOW_CONTROL_ERROR; frames the client does not read off the socket (it never reads)
    /// end it with a reset, since a GOAWAY would not reach it either.
    pub stall_timeout: Duration,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            max_concurrent_streams: 100,
            stream_window: 65_535,
            connection_window: 1 << 20,
            max_header_list_size: 16 << 10,
            header_table_size: 4096,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            premature_reset_min_streams: 100,
            preface_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_control_frames: 1000,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// What the front counted (all workers' fronts add into one, for `/metrics`).
#[derive(Debug, Default)]
pub struct H2Stats {
    pub connections: AtomicU64,
    /// HTTP/2 client connections open now (a gauge).
    pub open: AtomicU64,
    pub streams: AtomicU64,
    /// Connections that ended on a protocol error or a limit (the `h2` crate sent GOAWAY).
    pub connection_errors: AtomicU64,
    /// Streams the client reset.
    pub streams_reset_by_client: AtomicU64,
    /// Streams the front reset: the engine cut the response, or it could not be translated.
    pub streams_reset: AtomicU64,
    /// Connections ended for resetting most of their streams early (rapid reset).
    pub rapid_resets: AtomicU64,
    /// Connections reset because too many others had not spoken yet ([`MAX_HELD`]).
    pub held_overflow: AtomicU64,
    /// Connections that did not finish their preface in time.
    pub preface_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Connections ended with ENHANCE_YOUR_CALM for a flood, by kind: a header block in
    /// endless or oversized CONTINUATION frames, SETTINGS, PING.
    pub floods_continuation: AtomicU64,
    pub floods_settings: AtomicU64,
    pub floods_ping: AtomicU64,
    /// Connections ended for holding responses without taking them ([`H2Config::stall_timeout`]):
    /// a shut flow-control window (GOAWAY FLOW_CONTROL_ERROR), or a socket never read (reset).
    pub stalls_window: AtomicU64,
    pub stalls_unread: AtomicU64,
    /// Gateway B: multiplexed hop connections from peer gateways (mTLS, ALPN `h2`), counted
    /// in `connections` too.
    pub hops: AtomicU64,
}

impl H2Stats {
    /// Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        /// A counter's `kind` label and its value.
        type Kind<'a> = (&'a str, &'a AtomicU64);
        let rows: [(&str, &str, &AtomicU64); 10] = [
            ("xdpmesh_h2_connections_total", "HTTP/2 client connections", &self.connections),
            (
                "xdpmesh_hop_connections_accepted_total",
                "multiplexed hop connections (mTLS, ALPN h2) accepted from peer gateways",
                &self.hops,
            ),
            ("xdpmesh_h2_streams_total", "HTTP/2 streams accepted from clients", &self.streams),
            (
                "xdpmesh_h2_connection_errors_total",
                "HTTP/2 connections ended on a protocol error or a limit (GOAWAY)",
                &self.connection_errors,
            ),
            (
                "xdpmesh_h2_streams_reset_by_client_total",
                "HTTP/2 streams the client reset",
                &self.streams_reset_by_client,
            ),
            (
                "xdpmesh_h2_streams_reset_total",
                "HTTP/2 streams the gateway reset (a cut response, or one it could not translate)",
                &self.streams_reset,
            ),
            (
                "xdpmesh_h2_rapid_reset_total",
                "HTTP/2 connections ended with ENHANCE_YOUR_CALM: most of their streams reset by the client before the response (CVE-2023-44487)",
                &self.rapid_resets,
            ),
            (
                "xdpmesh_h2_held_overflow_total",
                "client connections on http listeners reset because 4096 others per worker had not sent their first bytes yet",
                &self.held_overflow,
            ),
            (
                "xdpmesh_h2_preface_timeouts_total",
                "client connections on http listeners that did not show their protocol in time",
                &self.preface_timeouts,
            ),
            (
                "xdpmesh_h2_idle_timeouts_total",
                "HTTP/2 connections closed after idling without streams",
                &self.idle_timeouts,
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP xdpmesh_h2_connections_open HTTP/2 client connections open now.\n\
             # TYPE xdpmesh_h2_connections_open gauge\nxdpmesh_h2_connections_open {}",
            self.open.load(Ordering::Relaxed)
        );
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let labelled: [(&str, &str, &[Kind]); 2] = [
            (
                "xdpmesh_h2_floods_total",
                "HTTP/2 connections ended with ENHANCE_YOUR_CALM for a flood: a header block in endless or oversized CONTINUATION frames (CVE-2024-27316 class), or SETTINGS or PING frames past the limit",
                &[
                    ("continuation", &self.floods_continuation),
                    ("settings", &self.floods_settings),
                    ("ping", &self.floods_ping),
                ],
            ),
            (
                "xdpmesh_h2_stalls_total",
                "HTTP/2 connections ended for holding responses past the stall timeout: a shut flow-control window (GOAWAY FLOW_CONTROL_ERROR), or a socket the client never reads (reset)",
                &[
                    ("window", &self.stalls_window),
                    ("unread", &self.stalls_unread),
                ],
            ),
        ];
        for (name, help, kinds) in labelled {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            for (kind, v) in kinds {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{kind}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// A connection as the engine sees it through the front.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FConn<C> {
    /// A transport connection: HTTP/1.1 and TCP clients, and every upstream.
    Tcp(C),
    /// One stream of an HTTP/2 client connection.
    Stream(C, u32),
}

impl<C: Copy> FConn<C> {
    /// The transport connection under it.
    pub fn transport(self) -> C {
        match self {
            FConn::Tcp(c) | FConn::Stream(c, _) => c,
        }
    }
}

type Handshake = h2::server::Handshake<BufIo, Bytes>;
type Connection = h2::server::Connection<BufIo, Bytes>;

enum ConnState {
    Handshaking(Handshake),
    Open(Connection),
    /// Over: the last frames drain to the transport, then it closes.
    Done,
}

/// How the engine's response body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

enum Resp {
    /// Bytes of the (next) head.
    Head(Vec<u8>),
    Body(Framing),
    /// The whole response is queued for the client.
    Done,
}

struct Stream {
    recv: Option<h2::RecvStream>,
    respond: Option<h2::server::SendResponse<Bytes>>,
    send: Option<h2::SendStream<Bytes>>,
    /// Request bytes for the engine.
    req: Vec<u8>,
    req_pos: usize,
    /// The request body is chunked here (no content-length from the client).
    req_chunked: bool,
    /// Everything of the request is in `req`.
    req_done: bool,
    head_only: bool,
    resp: Resp,
    /// Response body bytes waiting for send capacity, and trailers after them.
    out: VecDeque<Bytes>,
    out_len: usize,
    trailers: Vec<u8>,
    /// The engine shut down its writing (`shutdown_write` or `close`).
    engine_wrote_all: bool,
    /// The engine closed or aborted its side; the handle is gone for it.
    engine_gone: bool,
    /// The stream is over on the h2 side (ended, reset); the engine is told once.
    h2_done: bool,
    told_reset: bool,
    /// The client reset it before its response was complete.
    client_reset: bool,
    /// Since when the engine is gone while the response still waits for the client's window.
    orphan_since: Option<Instant>,
    /// The engine was told about the bytes in `req` / the end of its writes.
    wants_readable: bool,
    blocked_write: bool,
    /// Response bytes went to the `h2` crate in this turn.
    sent: bool,
}

struct H2Conn<C> {
    /// An adopted connection's TLS, over the transport's connection: a multiplexed hop from
    /// a peer gateway, with what the handshake established in `hop` (each stream's session
    /// checks it), or an `ingress-tls` client's.
    leg: Option<Leg<C>>,
    hop: Option<Arc<HopPeer>>,
    /// An adopted hop's place under its mesh listener's connection caps.
    _ticket: Option<Ticket>,
    io: BufIo,
    state: ConnState,
    streams: FxHashMap<u32, Stream>,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    idle_since: Option<Instant>,
    inner_eof: bool,
    closed: bool,
    /// Streams opened, and reset by the client before their response was complete (both
    /// halved as they grow: a recent window, not the connection's whole life).
    opened: u64,
    premature_resets: u64,
    /// In the dirty list already.
    queued: bool,
    /// GOAWAY was asked for (idle, drain): the next deadline ends it the hard way.
    going_away: bool,
    /// The client's frames as they come in, for the floods the front refuses itself.
    scan: FrameScan,
    /// The front ended it (a flood, a stall): its input is read and thrown away.
    refused: bool,
    /// The GOAWAY that ends it, for its next turn (once the crate has the handshake).
    goaway: Option<h2::Reason>,
    /// The stall timeout of its listener (see [`H2Config::stall_timeout`]).
    stall: Duration,
    /// Since when response bytes wait for the client's window and none moved.
    window_wait: Option<Instant>,
    /// Since when frames wait for the transport and none left.
    tx_wait: Option<Instant>,
    /// An adopted `ingress-tls` client must have sent its preface by then (a sniffed h2c
    /// client's was read before the connection was made).
    preface_by: Option<Instant>,
}

impl<C> H2Conn<C> {
    /// The `h2` crate has not read the client's preface yet.
    fn awaits_preface(&self) -> bool {
        matches!(self.state, ConnState::Handshaking(_))
    }

    /// A connection whose HTTP/2 handshake has started over `io`, idle since `now`; a
    /// client's (an adopted connection's leg, peer and ticket are set by `H2Net::adopt`).
    fn new(
        io: BufIo,
        hs: Handshake,
        (local, remote): (SocketAddrV4, SocketAddrV4),
        now: Instant,
        stall: Duration,
    ) -> Self {
        H2Conn {
            leg: None,
            hop: None,
            _ticket: None,
            io,
            state: ConnState::Handshaking(hs),
            streams: FxHashMap::default(),
            local,
            remote,
            idle_since: Some(now),
            inner_eof: false,
            closed: false,
            opened: 0,
            premature_resets: 0,
            queued: false,
            going_away: false,
            scan: FrameScan::default(),
            refused: false,
            goaway: None,
            stall,
            window_wait: None,
            tx_wait: None,
            preface_by: None,
        }
    }

    /// Since when it holds response bytes the client does not take: while frames wait for
    /// the transport, the client does not read, whatever its windows.
    fn stall_since(&self) -> Option<Instant> {
        self.tx_wait.or(self.window_wait)
    }

    /// The front ends it with GOAWAY `reason` at its next turn; its input is thrown away.
    fn refuse(&mut self, reason: h2::Reason) {
        if !self.refused {
            self.refused = true;
            self.going_away = true;
            self.goaway = Some(reason);
            self.window_wait = None;
        }
    }
}

/// A flood the front saw in a client's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flood {
    Continuation,
    Settings,
    Ping,
}

/// Walks the frame headers of a client's bytes as they arrive (RFC 9113 §4.1), before the
/// `h2` crate parses them, to count what it does not bound: SETTINGS and PING frames, and a
/// header block's CONTINUATION frames (which it does bound, to the same limits: the front
/// refusing first lets it count them).
#[derive(Default)]
struct FrameScan {
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    skip: usize,
    /// A header block without END_HEADERS: its CONTINUATION frames and bytes so far.
    block: Option<(usize, usize)>,
    settings: u32,
    pings: u32,
    since: Option<Instant>,
}

impl FrameScan {
    /// Takes the next bytes of the client's frames (the preface already read).
    fn feed(&mut self, mut data: &[u8], now: Instant, cfg: &H2Config) -> Option<Flood> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
            self.head_len += n;
            data = &data[n..];
            if self.head_len < 9 {
                break;
            }
            self.head_len = 0;
            let h = self.head;
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            self.skip = len;
            if let Some(flood) = self.frame(kind, flags, len, now, cfg) {
                return Some(flood);
            }
        }
        None
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        len: usize,
        now: Instant,
        cfg: &H2Config,
    ) -> Option<Flood> {
        const END_HEADERS: u8 = 0x4;
        const ACK: u8 = 0x1;
        match (kind, self.block.as_mut()) {
            // HEADERS: a block starts, and goes on in CONTINUATION frames unless it ends here.
            (0x1, _) => self.block = (flags & END_HEADERS == 0).then_some((0, len)),
            (0x9, Some((frames, bytes))) => {
                if flags & END_HEADERS != 0 {
                    self.block = None;
                    return None;
                }
                *frames += 1;
                *bytes += len;
                // The `h2` crate's own limits: CONTINUATION frames of one block (enough for
                // the header list in full frames, and a quarter more, at least 5), and the
                // block's bytes twice the header list (past one list it only skips them).
                let list = cfg.max_header_list_size as usize;
                let max_frames = (list / 16384).max(1);
                let max_frames = (max_frames + (max_frames >> 2)).max(5);
                if *frames > max_frames || *bytes > 2 * list {
                    return Some(Flood::Continuation);
                }
            }
            // Anything else in the middle of a block is the crate's protocol error.
            (_, Some(_)) => self.block = None,
            (0x4 | 0x6, None) if flags & ACK == 0 => {
                if self.since.is_none_or(|t| t + CONTROL_WINDOW <= now) {
                    self.since = Some(now);
                    self.settings = 0;
                    self.pings = 0;
                }
                let (n, flood) = if kind == 0x4 {
                    (&mut self.settings, Flood::Settings)
                } else {
                    (&mut self.pings, Flood::Ping)
                };
                *n += 1;
                if *n > cfg.max_control_frames {
                    return Some(flood);
                }
            }
            _ => {}
        }
        None
    }
}

struct Sniff {
    buf: Vec<u8>,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    deadline: Instant,
    stall: Duration,
}

/// Per worker: the connections being told apart, the HTTP/2 connections, and the events
/// waiting for the engine.
pub struct H2Front<C> {
    cfg: H2Config,
    builder: h2::server::Builder,
    /// For peer gateways' hop connections: a larger header list ([`HOP_HEADER_LIST`]).
    hop_builder: h2::server::Builder,
    /// Whether a local address is an `http` listener, and then its timeouts (asked at accept
    /// time).
    is_http: Box<dyn Fn(SocketAddrV4) -> Option<HttpListener> + Send>,
    sniff: FxHashMap<C, Sniff>,
    replay: FxHashMap<C, Vec<u8>>,
    conns: FxHashMap<C, H2Conn<C>>,
    events: VecDeque<NetEvent<FConn<C>>>,
    dirty: Vec<C>,
    /// Every connection the transport accepted since the caller last asked, held back or not:
    /// the caller's per-connection options (Nagle, keepalive) and counts go by these.
    accepts: Vec<(C, SocketAddrV4)>,
    now: Instant,
    /// A drain began: a connection whose handshake completes from now on gets GOAWAY at once.
    draining: bool,
    stats: Arc<H2Stats>,
    /// What a pump reads the transport into: one zeroed buffer per worker, not one per pump
    /// (a 16 KiB stack array zeroed on every pump was an eighth of a gateway's instructions
    /// per request with HTTP/2 clients, counted with callgrind).
    scratch: Box<[u8]>,
}

impl<C: Copy + Eq + std::hash::Hash + std::fmt::Debug> H2Front<C> {
    pub fn new(
        cfg: H2Config,
        is_http: impl Fn(SocketAddrV4) -> Option<HttpListener> + Send + 'static,
        stats: Arc<H2Stats>,
    ) -> Self {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .initial_window_size(cfg.stream_window)
            .initial_connection_window_size(cfg.connection_window)
            .max_header_list_size(cfg.max_header_list_size)
            .header_table_size(cfg.header_table_size)
            .max_pending_accept_reset_streams(cfg.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(cfg.max_local_error_reset_streams))
            .max_send_buffer_size(RESP_MAX);
        let mut hop_builder = builder.clone();
        hop_builder.max_header_list_size(HOP_HEADER_LIST.max(cfg.max_header_list_size));
        H2Front {
            cfg,
            builder,
            hop_builder,
            is_http: Box::new(is_http),
            sniff: FxHashMap::default(),
            replay: FxHashMap::default(),
            conns: FxHashMap::default(),
            events: VecDeque::new(),
            dirty: Vec::new(),
            accepts: Vec::new(),
            now: Instant::from_micros(0),
            draining: false,
            stats,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    pub fn stats(&self) -> &Arc<H2Stats> {
        &self.stats
    }

    /// HTTP/2 client connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Queues `c` for a pump (once).
    fn mark(&mut self, c: C) {
        if let Some(h) = self.conns.get_mut(&c) {
            if !h.queued {
                h.queued = true;
                self.dirty.push(c);
            }
        }
    }

    /// The transport connections accepted since the last call, with their local address:
    /// a connection on an `http` listener reaches the engine only once its first bytes show
    /// its protocol, but its TCP options are due at once.
    pub fn take_accepts(&mut self) -> Option<std::vec::Drain<'_, (C, SocketAddrV4)>> {
        (!self.accepts.is_empty()).then(|| self.accepts.drain(..))
    }

    /// Events for the engine or connections to move are waiting: the loop must not sleep.
    pub fn has_pending(&self) -> bool {
        !self.events.is_empty() || !self.dirty.is_empty()
    }

    /// A drain: every HTTP/2 client gets GOAWAY (no new streams; open ones finish), sent
    /// at the connection's next turn.
    pub fn drain(&mut self) {
        self.draining = true;
        let now = self.now;
        let open: Vec<C> = self.conns.keys().copied().collect();
        for c in open {
            if let Some(h) = self.conns.get_mut(&c) {
                if let ConnState::Open(conn) = &mut h.state {
                    conn.graceful_shutdown();
                    h.going_away = true;
                    h.idle_since.get_or_insert(now);
                }
            }
            self.mark(c);
        }
    }

    /// The front's next deadline: a preface, an idle or a stalled connection.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.has_pending() {
            return Some(self.now);
        }
        let sniff = self.sniff.values().map(|s| s.deadline).min();
        let idle = self
            .conns
            .values()
            .filter_map(|c| {
                let orphan = c
                    .streams
                    .values()
                    .filter_map(|s| s.orphan_since)
                    .min()
                    .map(|t| t + ORPHAN_STALL);
                let idle = c.idle_since.map(|t| t + self.cfg.idle_timeout);
                let stall = c.stall_since().map(|t| t + c.stall);
                let preface = c.preface_by.filter(|_| c.awaits_preface());
                [orphan, idle, stall, preface].into_iter().flatten().min()
            })
            .min();
        match (sniff, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends connections past their deadline.
    pub fn handle_timeout<N: Net<Conn = C>>(&mut self, inner: &mut N, now: Instant) {
        self.now = now;
        let late: Vec<C> = self
            .sniff
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in late {
            self.sniff.remove(&c);
            self.stats.preface_timeouts.fetch_add(1, Ordering::Relaxed);
            inner.abort(c);
        }
        let idle = self.cfg.idle_timeout;
        let mut late: Vec<C> = self
            .conns
            .iter()
            .filter(|(_, h)| h.idle_since.is_some_and(|t| t + idle <= now))
            .map(|(c, _)| *c)
            .collect();
        for (c, h) in &self.conns {
            if h.awaits_preface() && h.preface_by.is_some_and(|t| t <= now) {
                self.stats.preface_timeouts.fetch_add(1, Ordering::Relaxed);
                if !late.contains(c) {
                    late.push(*c);
                }
            }
        }
        // Stalls: a client that reads nothing is reset (it would not read a GOAWAY either);
        // one that keeps its window shut gets GOAWAY FLOW_CONTROL_ERROR, and the reset if it
        // does not read that within another stall timeout.
        for (c, h) in self.conns.iter_mut() {
            if h.tx_wait.is_some_and(|t| t + h.stall <= now) {
                self.stats.stalls_unread.fetch_add(1, Ordering::Relaxed);
                h.going_away = true;
                h.tx_wait = None;
                if !late.contains(c) {
                    late.push(*c);
                }
            } else if h.tx_wait.is_none() && h.window_wait.is_some_and(|t| t + h.stall <= now) {
                self.stats.stalls_window.fetch_add(1, Ordering::Relaxed);
                h.refuse(h2::Reason::FLOW_CONTROL_ERROR);
                h.window_wait = None;
                if !h.queued {
                    h.queued = true;
                    self.dirty.push(*c);
                }
            }
        }
        for (c, h) in self.conns.iter_mut() {
            let mut any = false;
            for st in h.streams.values_mut() {
                if st.orphan_since.is_some_and(|t| t + ORPHAN_STALL <= now) {
                    st.orphan_since = None;
                    self.stats.streams_reset.fetch_add(1, Ordering::Relaxed);
                    reset_stream(st, h2::Reason::CANCEL);
                    any = true;
                }
            }
            if any && !h.queued {
                h.queued = true;
                self.dirty.push(*c);
            }
        }
        for c in late {
            let Some(h) = self.conns.get_mut(&c) else {
                continue;
            };
            match &mut h.state {
                ConnState::Open(conn) if !h.going_away => {
                    // GOAWAY first; a client that neither answers its PING nor reads meets
                    // the next deadline.
                    conn.graceful_shutdown();
                    h.going_away = true;
                    h.idle_since = Some(now);
                    self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    self.mark(c);
                }
                _ => {
                    // Going away or over, and still there a whole timeout later: reset it.
                    let h = self.conns.remove(&c).expect("late");
                    self.stats.open.fetch_sub(1, Ordering::Relaxed);
                    for (id, st) in h.streams {
                        if !st.engine_gone && !st.told_reset {
                            self.events.push_back(NetEvent::Reset(FConn::Stream(c, id)));
                        }
                    }
                    if !h.closed {
                        inner.abort(c);
                    }
                }
            }
        }
    }
}

/// The transport with the front in front of it, for one round of the worker's loop.
pub struct H2Net<'a, N: Net> {
    pub inner: &'a mut N,
    pub front: &'a mut H2Front<N::Conn>,
}

impl<'a, N: Net> H2Net<'a, N> {
    pub fn new(inner: &'a mut N, front: &'a mut H2Front<N::Conn>, now: Instant) -> Self {
        front.now = now;
        H2Net { inner, front }
    }

    /// Ends connections past their deadline (see [`H2Front::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.front.handle_timeout(self.inner, now);
    }

    /// Moves every HTTP/2 connection touched since the last call: call after the engine's
    /// `progress`, so its writes leave in this round.
    pub fn flush(&mut self) {
        while let Some(c) = self.front.dirty.pop() {
            self.pump(c);
        }
    }

    fn sniff(&mut self, c: N::Conn) {
        let Some(s) = self.front.sniff.get_mut(&c) else {
            return;
        };
        let mut buf = [0u8; PREFACE.len()];
        let want = PREFACE.len() - s.buf.len();
        let end = match self.inner.read(c, &mut buf[..want]) {
            Ok(0) | Err(NetError::Closed | NetError::Reset) => true,
            Ok(n) => {
                s.buf.extend_from_slice(&buf[..n]);
                false
            }
            Err(NetError::WouldBlock) => return,
        };
        let h2 = PREFACE.starts_with(&s.buf);
        if h2 && s.buf.len() < PREFACE.len() && !end {
            return; // a prefix of the preface so far: wait for more (bounded by the deadline)
        }
        let s = self.front.sniff.remove(&c).expect("sniffed");
        if h2 && s.buf.len() == PREFACE.len() {
            self.start_h2(c, s);
            return;
        }
        // HTTP/1.1 (or anything else): the engine's from here, with what was read replayed.
        if !s.buf.is_empty() {
            self.front.replay.insert(c, s.buf);
        }
        self.front.events.push_back(NetEvent::Accepted {
            conn: FConn::Tcp(c),
            local: s.local,
            remote: s.remote,
        });
        self.front
            .events
            .push_back(NetEvent::Readable(FConn::Tcp(c)));
    }

    fn start_h2(&mut self, c: N::Conn, s: Sniff) {
        let io = BufIo::new(TX_MAX);
        // The preface was read to tell the protocol: the crate reads it again.
        io.lock().rx.extend_from_slice(PREFACE);
        let hs = self.front.builder.handshake(io.clone());
        self.front.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.front.stats.open.fetch_add(1, Ordering::Relaxed);
        self.front.conns.insert(
            c,
            H2Conn::new(io, hs, (s.local, s.remote), self.front.now, s.stall),
        );
        self.pump(c);
    }

    /// Takes over a TLS connection whose handshake chose ALPN `h2`: a hop from a peer gateway
    /// (`hop`) or a client of an `ingress-tls` listener. The preface is awaited until
    /// `preface_by`, else for the idle timeout.
    fn adopt(
        &mut self,
        leg: Leg<FConn<N::Conn>>,
        hop: Option<Arc<HopPeer>>,
        (stall, preface_by): (Duration, Option<Instant>),
        ticket: Option<Ticket>,
    ) -> Result<(), Leg<FConn<N::Conn>>> {
        let FConn::Tcp(c) = leg.conn else {
            return Err(leg);
        };
        let Some((local, remote)) = self.inner.addrs(c) else {
            return Err(leg);
        };
        if self.front.conns.contains_key(&c) {
            return Err(leg);
        }
        let io = BufIo::new(TX_MAX);
        let builder = if hop.is_some() {
            &self.front.hop_builder
        } else {
            &self.front.builder
        };
        let hs = builder.handshake(io.clone());
        self.front.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.front.stats.open.fetch_add(1, Ordering::Relaxed);
        if hop.is_some() {
            self.front.stats.hops.fetch_add(1, Ordering::Relaxed);
        }
        let now = self.front.now;
        self.front.conns.insert(
            c,
            H2Conn {
                leg: Some(leg.map_conn(|_| c)),
                hop,
                _ticket: ticket,
                preface_by,
                ..H2Conn::new(io, hs, (local, remote), now, stall)
            },
        );
        // rustls may hold the peer's first frames already (they can follow its Finished).
        self.front.mark(c);
        Ok(())
    }

    /// Reads the transport into the connection's buffer (bounded), drives the connection and
    /// its streams, and writes its frames out.
    fn pump(&mut self, c: N::Conn) {
        let Some(h) = self.front.conns.get_mut(&c) else {
            return;
        };
        h.queued = false;
        if h.closed {
            return;
        }
        // In: while the buffer has room (or thrown away, once the front ends it).
        let mut rx_full = false;
        let mut more = false;
        let mut discarded = 0;
        let buf = &mut self.front.scratch;
        while h.refused && !h.inner_eof {
            match read_real(self.inner, h.leg.as_mut(), c, buf) {
                Ok(0) | Err(NetError::Closed | NetError::Reset) => {
                    h.inner_eof = true;
                    h.io.lock().rx_eof = true;
                }
                Ok(n) => {
                    discarded += n;
                    if discarded >= DISCARD_MAX {
                        more = true;
                        break;
                    }
                }
                Err(NetError::WouldBlock) => break,
            }
        }
        let mut flood = None;
        while !h.refused && flood.is_none() {
            let room = RX_MAX.saturating_sub(h.io.lock().rx.len());
            if room == 0 {
                rx_full = true;
                break;
            }
            if h.inner_eof {
                break;
            }
            let n = room.min(buf.len());
            match read_real(self.inner, h.leg.as_mut(), c, &mut buf[..n]) {
                Ok(0) | Err(NetError::Closed | NetError::Reset) => {
                    h.inner_eof = true;
                    h.io.lock().rx_eof = true;
                }
                Ok(n) => {
                    h.io.lock().rx.extend_from_slice(&buf[..n]);
                    flood = h.scan.feed(&buf[..n], self.front.now, &self.front.cfg);
                }
                Err(NetError::WouldBlock) => break,
            }
        }
        if let Some(flood) = flood {
            let n = match flood {
                Flood::Continuation => &self.front.stats.floods_continuation,
                Flood::Settings => &self.front.stats.floods_settings,
                Flood::Ping => &self.front.stats.floods_ping,
            };
            n.fetch_add(1, Ordering::Relaxed);
            h.refuse(h2::Reason::ENHANCE_YOUR_CALM);
            more = true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let stats = &self.front.stats;
        let now = self.front.now;
        let events = &mut self.front.events;
        let (local, remote) = (h.local, h.remote);
        let hop = h.hop.is_some();
        let draining = self.front.draining;
        // Drive: the handshake, then accept streams (which also moves the connection's I/O).
        for _ in 0..2 {
            match &mut h.state {
                ConnState::Handshaking(hs) => match Pin::new(hs).poll(&mut cx) {
                    Poll::Ready(Ok(mut conn)) => {
                        if draining && !h.going_away {
                            // Its handshake finished after the drain's GOAWAYs went out.
                            conn.graceful_shutdown();
                            h.going_away = true;
                            h.idle_since.get_or_insert(now);
                        }
                        h.state = ConnState::Open(conn);
                    }
                    Poll::Ready(Err(_)) => {
                        stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                        h.state = ConnState::Done;
                    }
                    Poll::Pending => break,
                },
                ConnState::Open(conn) => {
                    if let Some(reason) = h.goaway.take() {
                        // No frame after the flood is parsed (GOAWAY first, in the crate),
                        // and what is buffered goes.
                        conn.abrupt_shutdown(reason);
                        let mut io = h.io.lock();
                        io.rx = Vec::new();
                        io.rx_pos = 0;
                    }
                    loop {
                        match conn.poll_accept(&mut cx) {
                            Poll::Ready(Some(Ok((req, respond)))) => {
                                let id = respond.stream_id().as_u32();
                                stats.streams.fetch_add(1, Ordering::Relaxed);
                                match new_stream(req, respond, hop) {
                                    Ok(st) => {
                                        h.streams.insert(id, st);
                                        h.opened += 1;
                                        h.idle_since = None;
                                        events.push_back(NetEvent::Accepted {
                                            conn: FConn::Stream(c, id),
                                            local,
                                            remote,
                                        });
                                        events.push_back(NetEvent::Readable(FConn::Stream(c, id)));
                                    }
                                    Err(mut respond) => {
                                        // Not translatable to HTTP/1.1 (RFC 9113 §8.1.1).
                                        stats.streams_reset.fetch_add(1, Ordering::Relaxed);
                                        respond.send_reset(h2::Reason::PROTOCOL_ERROR);
                                    }
                                }
                            }
                            Poll::Ready(Some(Err(e))) => {
                                if e.is_go_away() || e.is_io() || e.reason().is_some() {
                                    stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                                }
                                if e.is_library()
                                    && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
                                    && h.scan.block.is_some()
                                {
                                    // The crate's own CONTINUATION limit, should it come first.
                                    stats.floods_continuation.fetch_add(1, Ordering::Relaxed);
                                }
                                h.state = ConnState::Done;
                                break;
                            }
                            Poll::Ready(None) => {
                                h.state = ConnState::Done;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    break;
                }
                ConnState::Done => break,
            }
        }
        // Streams: request bytes in, response bytes out, resets.
        let open = matches!(h.state, ConnState::Open(_));
        let (mut moved, mut waiting) = (false, false);
        for (&id, st) in h.streams.iter_mut() {
            let f = FConn::Stream(c, id);
            pump_stream(st, &mut cx, now);
            moved |= std::mem::take(&mut st.sent);
            waiting |= !st.h2_done && st.send.is_some() && st.out_len > 0;
            if !open && !st.h2_done {
                st.h2_done = true;
            }
            if std::mem::take(&mut st.client_reset) {
                stats
                    .streams_reset_by_client
                    .fetch_add(1, Ordering::Relaxed);
                h.premature_resets += 1;
            }
            if st.h2_done && !st.engine_gone && !st.told_reset && !st.resp_finished() {
                // The client reset it, or the connection is gone: the engine lets go, and
                // the handle is gone for it (Net: invalid after `Reset`).
                st.told_reset = true;
                st.engine_gone = true;
                st.let_go_of_request();
                events.push_back(NetEvent::Reset(f));
                continue;
            }
            if st.engine_gone {
                continue;
            }
            if st.wants_readable {
                st.wants_readable = false;
                events.push_back(NetEvent::Readable(f));
            }
            if st.blocked_write && st.out_len < RESP_MAX {
                st.blocked_write = false;
                events.push_back(NetEvent::Writable(f));
            }
        }
        // A response that waits for the client's window, and none moved: the stall clock runs.
        // Not on a peer gateway's hop: one of its clients that stops reading holds only its
        // own stream, which its session's body-stall timeout ends; the connection is shared.
        if moved || !waiting || h.refused || hop {
            h.window_wait = None;
        } else {
            h.window_wait.get_or_insert(now);
        }
        let min = self.front.cfg.premature_reset_min_streams;
        // A peer gateway cancels the streams of its clients that go away or time out: on an
        // authenticated hop those resets are its clients', not an attack on this gateway.
        if hop {
            h.opened = 0;
            h.premature_resets = 0;
        } else if h.opened >= min && h.premature_resets * 2 >= h.opened {
            if let ConnState::Open(conn) = &mut h.state {
                stats.rapid_resets.fetch_add(1, Ordering::Relaxed);
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                h.going_away = true;
                h.opened = 0;
                h.premature_resets = 0;
            }
        } else if h.opened >= 2 * min.max(1) {
            // A window of recent streams: earlier good ones do not buy a later burst.
            h.opened /= 2;
            h.premature_resets /= 2;
        }
        // Streams done on both sides go; dropping their handles queues what h2 sends for
        // them (a reset of an unfinished one), which the next turn writes.
        h.streams
            .retain(|_, st| !(st.engine_gone && (st.h2_done || st.resp_finished())));
        // Another turn of the connection writes the frames the streams queued (it accepts no
        // stream: one that arrived meanwhile waits for the next pump).
        if let ConnState::Open(conn) = &mut h.state {
            if conn.poll_closed(&mut cx).is_ready() {
                h.state = ConnState::Done;
            }
        }
        let done = matches!(h.state, ConnState::Done);
        if h.streams.is_empty() && h.idle_since.is_none() && (done || !h.going_away) {
            // Idle without a stream, or over with frames still to drain: both are bounded.
            h.idle_since = Some(self.front.now);
        }
        // Out.
        let mut io = h.io.lock();
        let tx_full = io.tx.len() >= TX_MAX;
        let before = io.tx.len();
        write_out(self.inner, h.leg.as_mut(), c, &mut io.tx);
        if let Some(leg) = h.leg.as_mut() {
            // TLS records the writes above (or rustls itself) queued.
            let _ = leg.flush(self.inner);
        }
        let drained = io.tx.is_empty();
        // Frames that wait for the transport, and none left: the client does not read.
        if drained || io.tx.len() < before {
            h.tx_wait = None;
        } else {
            h.tx_wait.get_or_insert(now);
        }
        if drained && io.tx.capacity() > 16 << 10 {
            io.tx = Vec::new();
        }
        let rx_left = io.rx.len() - io.rx_pos;
        drop(io);
        if matches!(h.state, ConnState::Done) && drained && h.streams.is_empty() {
            if let Some(leg) = h.leg.as_mut() {
                // A hop's last records (and its close_notify) leave before the close; the
                // transport's Writable brings the rest of them here.
                let _ = leg.finish(self.inner);
                if leg.pending_out() > 0 && !h.inner_eof {
                    return;
                }
            }
            h.closed = true;
            let now = self.front.now;
            close_real(self.inner, now, c, h.leg.take());
            return;
        }
        // The transport took a full buffer (h2 may hold more), or the input buffer was full
        // and has room again: neither transport says so by itself.
        if (tx_full && drained) || (rx_full && rx_left < RX_MAX && !h.inner_eof) || more {
            self.front.mark(c);
        }
    }
}

impl Stream {
    /// The request is of no more use (answered, reset, or the engine is gone).
    fn let_go_of_request(&mut self) {
        self.recv = None;
        self.req = Vec::new();
        self.req_pos = 0;
    }

    fn resp_finished(&self) -> bool {
        matches!(self.resp, Resp::Done) && self.out.is_empty() && self.send.is_none()
    }
}

/// The HTTP/1.1 request of a new stream, or the stream back when it cannot be one.
/// On a multiplexed hop (`hop`), the request starts with the `XM/1` preamble the stream's
/// `x-xdpmesh-endpoint` field stands for, which the engine checks as on a hop connection of
/// its own (a missing or repeated field makes a preamble it refuses).
fn new_stream(
    req: ::http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    hop: bool,
) -> Result<Stream, h2::server::SendResponse<Bytes>> {
    let (mut parts, recv) = req.into_parts();
    let mut head = Vec::with_capacity(256);
    if hop {
        let mut eps = parts.headers.get_all(HOP_ENDPOINT).iter();
        let ep = match (eps.next().map(|v| v.to_str()), eps.next()) {
            (Some(Ok(ep)), None) if !ep.contains(' ') => ep.to_owned(),
            _ => "-".to_owned(),
        };
        parts.headers.remove(HOP_ENDPOINT);
        head.extend_from_slice(format!("XM/1 {ep} http\n").as_bytes());
    }
    let method = parts.method.as_str();
    let target = match (&parts.method, parts.uri.path_and_query()) {
        (&::http::Method::CONNECT, _) => parts.uri.authority().map(|a| a.as_str().to_owned()),
        (_, Some(pq)) if !pq.as_str().is_empty() => Some(pq.as_str().to_owned()),
        _ => None,
    };
    let Some(target) = target else {
        return Err(respond);
    };
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // `:authority` is the Host (RFC 9113 §8.3.1); a `host` field alone stands for it.
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    if authority.as_deref().is_some_and(|a| a.contains('@')) {
        return Err(respond); // RFC 9113 §8.3.1: no userinfo in `:authority`
    }
    if let Some(a) = &authority {
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(a.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    let mut has_length = false;
    for (name, value) in &parts.headers {
        match name.as_str() {
            "host" if authority.is_some() => continue,
            // Hop-by-hop in HTTP/1.1; `te: trailers` is the only one HTTP/2 allows.
            n if connection_specific(n) => continue,
            // The front sends the whole body as it comes; the engine would wait for an
            // interim response it has no way to pass on.
            "expect" => continue,
            "cookie" => {
                cookies.push(value.as_bytes());
                continue;
            }
            "content-length" => has_length = true,
            _ => {}
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !cookies.is_empty() {
        // RFC 9113 §8.2.3: one field for HTTP/1.1.
        head.extend_from_slice(b"cookie: ");
        head.extend_from_slice(&cookies.join(&b"; "[..]));
        head.extend_from_slice(b"\r\n");
    }
    let body = !recv.is_end_stream();
    let req_chunked = body && !has_length;
    if req_chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    // One request per stream: the engine ends its session after the response.
    head.extend_from_slice(b"connection: close\r\n\r\n");
    Ok(Stream {
        recv: body.then_some(recv),
        respond: Some(respond),
        send: None,
        req: head,
        req_pos: 0,
        req_chunked,
        req_done: !body,
        head_only: parts.method == ::http::Method::HEAD,
        resp: Resp::Head(Vec::new()),
        out: VecDeque::new(),
        out_len: 0,
        trailers: Vec::new(),
        engine_wrote_all: false,
        engine_gone: false,
        h2_done: false,
        told_reset: false,
        client_reset: false,
        orphan_since: None,
        wants_readable: false,
        blocked_write: false,
        sent: false,
    })
}

/// A response head for the `h2` crate; `None` when HTTP/2 cannot carry a field of it.
/// Names in any case: `append_field` lowercases them.
fn response<'a>(
    status: u16,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Option<::http::Response<()>> {
    let mut head = ::http::Response::new(());
    *head.status_mut() = ::http::StatusCode::from_u16(status).ok()?;
    let map = head.headers_mut();
    for (name, value) in fields {
        append_field(map, name, value)?;
    }
    Some(head)
}

/// A head's fields, borrowed from where it was parsed.
type Fields<'a> = Vec<(&'a str, &'a [u8])>;

/// A final response's fields for HTTP/2 (names in any case, as the engine wrote them) and its
/// framing; `Err` for a transfer coding other than chunked alone (HTTP/2 has none, RFC 9113
/// §8.2.2) or a malformed length.
fn final_fields<'a>(headers: &[httparse::Header<'a>]) -> Result<(Fields<'a>, Framing), ()> {
    let mut fields = Vec::with_capacity(headers.len());
    let mut framing = Framing::UntilClose;
    // Fields the `Connection` field names are this hop's only.
    let listed: Vec<&[u8]> = headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| crate::http::list_of(f.value))
        .collect();
    for f in headers {
        let name = f.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
            framing = Framing::Length(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let mut codings = f.value.split(|&b| b == b',').map(|t| t.trim_ascii());
            if !(codings
                .next()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
                && codings.next().is_none())
            {
                return Err(());
            }
            framing = Framing::Chunked(Chunk::Size(0, false));
        }
        if connection_specific(name)
            || listed
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        fields.push((name, f.value));
    }
    Ok((fields, framing))
}

/// One stream's turn: request body in (while the engine keeps up), response body out (as
/// the window allows), resets noticed.
fn pump_stream(st: &mut Stream, cx: &mut Context<'_>, now: Instant) {
    pump_stream_io(st, cx);
    if st.engine_gone && st.orphan_since.is_none() && !st.resp_finished() && !st.h2_done {
        st.orphan_since = Some(now);
    }
}

fn pump_stream_io(st: &mut Stream, cx: &mut Context<'_>) {
    if st.h2_done {
        return;
    }
    // Request body.
    while let Some(recv) = st.recv.as_mut() {
        if st.req.len() - st.req_pos >= REQ_MAX {
            break;
        }
        match recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = recv.flow_control().release_capacity(data.len());
                if data.is_empty() {
                    continue;
                }
                if st.req_chunked {
                    st.req
                        .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    st.req.extend_from_slice(&data);
                    st.req.extend_from_slice(b"\r\n");
                } else {
                    st.req.extend_from_slice(&data);
                }
                st.wants_readable = true;
            }
            Poll::Ready(None) => {
                let trailers = match recv.poll_trailers(cx) {
                    Poll::Ready(Ok(t)) => t,
                    Poll::Ready(Err(_)) => {
                        st.h2_done = true;
                        st.client_reset = true;
                        return;
                    }
                    Poll::Pending => break,
                };
                if st.req_chunked {
                    st.req.extend_from_slice(b"0\r\n");
                    for (k, v) in trailers.iter().flatten() {
                        st.req.extend_from_slice(k.as_str().as_bytes());
                        st.req.extend_from_slice(b": ");
                        st.req.extend_from_slice(v.as_bytes());
                        st.req.extend_from_slice(b"\r\n");
                    }
                    st.req.extend_from_slice(b"\r\n");
                }
                st.recv = None;
                st.req_done = true;
                st.wants_readable = true;
            }
            Poll::Ready(Some(Err(_))) => {
                st.h2_done = true;
                st.client_reset = true;
                return;
            }
            Poll::Pending => break,
        }
    }
    // Response body, as the stream's window opens.
    if let Some(send) = st.send.as_mut() {
        while let Some(front) = st.out.front() {
            if send.capacity() == 0 {
                send.reserve_capacity(st.out_len.min(RESP_MAX));
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) if n > 0 => {}
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                        // Reset by the client (or the connection ended) mid-response.
                        st.h2_done = true;
                        st.client_reset = true;
                        return;
                    }
                    _ => break,
                }
            }
            let n = send.capacity().min(front.len());
            if n == 0 {
                break;
            }
            let mut chunk = st.out.pop_front().expect("a front");
            let rest = chunk.split_off(n);
            if !rest.is_empty() {
                st.out.push_front(rest);
            }
            st.out_len -= chunk.len();
            st.sent = true;
            if st.orphan_since.is_some() {
                st.orphan_since = None; // it moves: the stall clock starts again
            }
            let last = st.out.is_empty() && matches!(st.resp, Resp::Done) && st.trailers.is_empty();
            if send.send_data(chunk, last).is_err() {
                st.h2_done = true;
                st.client_reset = true;
                return;
            }
            if last {
                st.send = None;
                break;
            }
        }
        if let Some(send) = st.send.as_mut() {
            if st.out.is_empty() && matches!(st.resp, Resp::Done) {
                let r = if st.trailers.is_empty() {
                    send.send_data(Bytes::new(), true)
                } else {
                    send.send_trailers(trailer_map(&st.trailers))
                };
                if r.is_err() {
                    st.h2_done = true;
                    return;
                }
                st.send = None;
            }
        }
        if let Some(send) = st.send.as_mut() {
            if send.poll_reset(cx).is_ready() {
                st.h2_done = true;
                st.client_reset = true;
            }
        }
    } else if let Some(respond) = st.respond.as_mut() {
        if respond.poll_reset(cx).is_ready() {
            st.h2_done = true;
            st.client_reset = true;
        }
    }
}

impl Stream {
    /// The engine writes its HTTP/1.1 response: the head becomes HEADERS, the body DATA.
    /// Returns how much of `data` was taken, or `Err` when the response cannot be translated.
    fn take_response(&mut self, mut data: &[u8]) -> Result<usize, ()> {
        let total = data.len();
        while !data.is_empty() {
            match &mut self.resp {
                Resp::Head(buf) => {
                    let take = data.len().min(RESP_HEAD_MAX + 1 - buf.len());
                    let before = buf.len();
                    buf.extend_from_slice(&data[..take]);
                    let mut fields = [httparse::EMPTY_HEADER; 128];
                    let mut r = httparse::Response::new(&mut fields);
                    match r.parse(buf) {
                        Ok(httparse::Status::Complete(len)) => {
                            let status = r.code.ok_or(())?;
                            let used = len - before;
                            data = &data[used..];
                            if (100..200).contains(&status) {
                                // Interim responses (103 Early Hints, a server's own 100) go
                                // on as HEADERS without END_STREAM (RFC 9113 §8.1); 101 has no
                                // meaning in HTTP/2 (§8.6) and the engine never lets one
                                // through to a request that did not ask to upgrade.
                                if status != 101 {
                                    let head = response(
                                        status,
                                        r.headers
                                            .iter()
                                            .filter(|f| !connection_specific(f.name))
                                            .map(|f| (f.name, f.value)),
                                    );
                                    if let (Some(head), Some(respond)) =
                                        (head, self.respond.as_mut())
                                    {
                                        // A stream already reset refuses it: nothing to do.
                                        let _ = respond.send_informational(head);
                                    }
                                }
                                buf.clear();
                                continue;
                            }
                            let (fields, mut framing) = final_fields(r.headers)?;
                            if self.head_only || status == 204 || status == 304 {
                                framing = Framing::Length(0);
                            }
                            let head = response(status, fields.into_iter()).ok_or(())?;
                            let respond = self.respond.as_mut().ok_or(())?;
                            let end = framing == Framing::Length(0);
                            let send = respond.send_response(head, end).map_err(|_| ())?;
                            self.respond = None;
                            if end {
                                self.resp = Resp::Done;
                            } else {
                                self.send = Some(send);
                                self.resp = Resp::Body(framing);
                            }
                        }
                        Ok(httparse::Status::Partial) => {
                            if buf.len() > RESP_HEAD_MAX {
                                return Err(());
                            }
                            data = &data[take..];
                        }
                        Err(_) => return Err(()),
                    }
                }
                Resp::Body(framing) => {
                    let n = match framing {
                        Framing::Length(left) => {
                            let n = (*left).min(data.len() as u64) as usize;
                            self.out.push_back(Bytes::copy_from_slice(&data[..n]));
                            self.out_len += n;
                            *left -= n as u64;
                            if *left == 0 {
                                self.resp = Resp::Done;
                            }
                            n
                        }
                        Framing::UntilClose => {
                            self.out.push_back(Bytes::copy_from_slice(data));
                            self.out_len += data.len();
                            data.len()
                        }
                        Framing::Chunked(chunk) => {
                            let (n, body, done) = dechunk(chunk, data, &mut self.trailers)?;
                            if !body.is_empty() {
                                self.out_len += body.len();
                                self.out.push_back(Bytes::from(body));
                            }
                            if done {
                                self.resp = Resp::Done;
                            }
                            n
                        }
                    };
                    data = &data[n..];
                }
                // Bytes after a complete response: the engine sends no second one on a
                // stream (each request says `connection: close`).
                Resp::Done => return Err(()),
            }
        }
        Ok(total)
    }
}

impl<N: Net> Net for H2Net<'_, N> {
    type Conn = FConn<N::Conn>;

    fn connect(&mut self, now: Instant, remote: SocketAddrV4) -> Result<Self::Conn, NetError> {
        self.inner.connect(now, remote).map(FConn::Tcp)
    }

    fn connect_hop(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        hop: &crate::net::HopTls,
    ) -> Option<Result<Self::Conn, NetError>> {
        self.inner
            .connect_hop(now, remote, hop)
            .map(|r| r.map(FConn::Tcp))
    }

    fn adopt_hop(
        &mut self,
        leg: Leg<Self::Conn>,
        peer: HopPeer,
        ticket: Option<Ticket>,
    ) -> Result<(), Leg<Self::Conn>> {
        let stall = self.front.cfg.stall_timeout;
        self.adopt(leg, Some(Arc::new(peer)), (stall, None), ticket)
    }

    fn adopt_client(
        &mut self,
        leg: Leg<Self::Conn>,
        listener: HttpListener,
        ticket: Option<Ticket>,
    ) -> Result<(), Leg<Self::Conn>> {
        // As for a sniffed h2c client: the listener's request-head timeout bounds the
        // preface, its body-stall timeout a stalled connection.
        let stall = listener.body_stall.min(self.front.cfg.stall_timeout);
        let by = self.front.now + listener.request_head.min(self.front.cfg.preface_timeout);
        self.adopt(leg, None, (stall, Some(by)), ticket)
    }

    fn is_stream(&self, c: Self::Conn) -> bool {
        matches!(c, FConn::Stream(..))
    }

    fn hop_peer(&self, c: Self::Conn) -> Option<Arc<HopPeer>> {
        match c {
            FConn::Tcp(t) => self.inner.hop_peer(t),
            FConn::Stream(t, _) => self.front.conns.get(&t)?.hop.clone(),
        }
    }

    fn read(&mut self, c: Self::Conn, buf: &mut [u8]) -> Result<usize, NetError> {
        match c {
            FConn::Tcp(t) => {
                if self.front.replay.is_empty() {
                    return self.inner.read(t, buf);
                }
                if let Some(r) = self.front.replay.get_mut(&t) {
                    let n = r.len().min(buf.len());
                    buf[..n].copy_from_slice(&r[..n]);
                    r.drain(..n);
                    if r.is_empty() {
                        self.front.replay.remove(&t);
                    }
                    return Ok(n);
                }
                self.inner.read(t, buf)
            }
            FConn::Stream(t, id) => {
                let h = self.front.conns.get_mut(&t).ok_or(NetError::Reset)?;
                let st = h.streams.get_mut(&id).ok_or(NetError::Reset)?;
                if st.engine_wrote_all {
                    // Answered: the rest of the request does not matter, and the session
                    // ends at once (a stream has no half-close to linger for).
                    return Ok(0);
                }
                let avail = st.req.len() - st.req_pos;
                if avail > 0 {
                    let n = avail.min(buf.len());
                    buf[..n].copy_from_slice(&st.req[st.req_pos..st.req_pos + n]);
                    st.req_pos += n;
                    if st.req_pos == st.req.len() {
                        st.req.clear();
                        st.req_pos = 0;
                    } else if st.req_pos >= st.req.len() / 2 {
                        // Keep the buffer near what is unread (a slow reader never empties it).
                        st.req.drain(..st.req_pos);
                        st.req_pos = 0;
                    }
                    if st.recv.is_some() && st.req.len() - st.req_pos < REQ_MAX && !h.queued {
                        // Room again: take more of the body.
                        h.queued = true;
                        self.front.dirty.push(t);
                    }
                    return Ok(n);
                }
                if st.h2_done && !st.resp_finished() {
                    return Err(NetError::Reset);
                }
                Err(NetError::WouldBlock)
            }
        }
    }

    fn write(&mut self, c: Self::Conn, data: &[u8]) -> Result<usize, NetError> {
        match c {
            FConn::Tcp(t) => self.inner.write(t, data),
            FConn::Stream(t, id) => {
                let h = self.front.conns.get_mut(&t).ok_or(NetError::Reset)?;
                let st = h.streams.get_mut(&id).ok_or(NetError::Reset)?;
                if st.h2_done || st.engine_wrote_all {
                    return Err(NetError::Closed);
                }
                if st.out_len >= RESP_MAX {
                    st.blocked_write = true;
                    return Err(NetError::WouldBlock);
                }
                let room = RESP_MAX - st.out_len;
                let data = &data[..data.len().min(room.max(1))];
                let r = st.take_response(data);
                if !h.queued {
                    h.queued = true;
                    self.front.dirty.push(t);
                }
                match r {
                    Ok(n) => Ok(n),
                    Err(()) => {
                        self.front
                            .stats
                            .streams_reset
                            .fetch_add(1, Ordering::Relaxed);
                        reset_stream(st, h2::Reason::INTERNAL_ERROR);
                        Err(NetError::Reset)
                    }
                }
            }
        }
    }

    fn shutdown_write(&mut self, c: Self::Conn) {
        match c {
            FConn::Tcp(t) => self.inner.shutdown_write(t),
            FConn::Stream(t, id) => {
                if let Some(st) = self
                    .front
                    .conns
                    .get_mut(&t)
                    .and_then(|h| h.streams.get_mut(&id))
                {
                    end_engine_writes(st, &self.front.stats);
                    st.let_go_of_request();
                    // It reads the end of the request next (see `read`).
                    self.front.events.push_back(NetEvent::Readable(c));
                    self.front.mark(t);
                }
            }
        }
    }

    fn close(&mut self, now: Instant, c: Self::Conn) {
        match c {
            FConn::Tcp(t) => {
                self.front.replay.remove(&t);
                self.inner.close(now, t)
            }
            FConn::Stream(t, id) => {
                if let Some(st) = self
                    .front
                    .conns
                    .get_mut(&t)
                    .and_then(|h| h.streams.get_mut(&id))
                {
                    end_engine_writes(st, &self.front.stats);
                    st.engine_gone = true;
                    st.let_go_of_request();
                    if !st.resp_finished() && !st.h2_done {
                        st.orphan_since = Some(now);
                    }
                    self.front.mark(t);
                }
                self.front.events.push_back(NetEvent::Closed(c));
            }
        }
    }

    fn abort(&mut self, c: Self::Conn) {
        match c {
            FConn::Tcp(t) => {
                self.front.replay.remove(&t);
                self.front.sniff.remove(&t);
                self.inner.abort(t)
            }
            FConn::Stream(t, id) => {
                if let Some(st) = self
                    .front
                    .conns
                    .get_mut(&t)
                    .and_then(|h| h.streams.get_mut(&id))
                {
                    if !st.h2_done && !st.resp_finished() {
                        self.front
                            .stats
                            .streams_reset
                            .fetch_add(1, Ordering::Relaxed);
                        reset_stream(st, h2::Reason::INTERNAL_ERROR);
                    }
                    st.engine_gone = true;
                    st.let_go_of_request();
                    self.front.mark(t);
                }
            }
        }
    }

    fn poll_event(&mut self) -> Option<NetEvent<Self::Conn>> {
        loop {
            if let Some(e) = self.front.events.pop_front() {
                return Some(e);
            }
            if let Some(c) = self.front.dirty.pop() {
                self.pump(c);
                continue;
            }
            let e = self.inner.poll_event()?;
            match e {
                NetEvent::Accepted {
                    conn,
                    local,
                    remote,
                } => {
                    let http = (self.front.is_http)(local);
                    if http.is_some() && self.front.sniff.len() >= MAX_HELD {
                        self.front
                            .stats
                            .held_overflow
                            .fetch_add(1, Ordering::Relaxed);
                        self.inner.abort(conn);
                        continue;
                    }
                    self.front.accepts.push((conn, local));
                    if let Some(l) = http {
                        // The listener's request-head timeout bounds a client that has not
                        // spoken yet, as the engine would.
                        let deadline =
                            self.front.now + l.request_head.min(self.front.cfg.preface_timeout);
                        self.front.sniff.insert(
                            conn,
                            Sniff {
                                buf: Vec::new(),
                                local,
                                remote,
                                deadline,
                                stall: l.body_stall.min(self.front.cfg.stall_timeout),
                            },
                        );
                        self.sniff(conn);
                        continue;
                    }
                    return Some(NetEvent::Accepted {
                        conn: FConn::Tcp(conn),
                        local,
                        remote,
                    });
                }
                NetEvent::Readable(c) => {
                    if !self.front.sniff.is_empty() && self.front.sniff.contains_key(&c) {
                        self.sniff(c);
                        continue;
                    }
                    if !self.front.conns.is_empty() && self.front.conns.contains_key(&c) {
                        self.pump(c);
                        continue;
                    }
                    return Some(NetEvent::Readable(FConn::Tcp(c)));
                }
                NetEvent::Writable(c) => {
                    if !self.front.conns.is_empty() && self.front.conns.contains_key(&c) {
                        self.pump(c);
                        continue;
                    }
                    if self.front.sniff.contains_key(&c) {
                        continue;
                    }
                    return Some(NetEvent::Writable(FConn::Tcp(c)));
                }
                NetEvent::Closed(c) | NetEvent::Reset(c) => {
                    if self.front.sniff.remove(&c).is_some() {
                        continue;
                    }
                    if let Some(h) = self.front.conns.remove(&c) {
                        self.front.stats.open.fetch_sub(1, Ordering::Relaxed);
                        for (id, st) in h.streams {
                            if !st.engine_gone && !st.told_reset {
                                self.front
                                    .events
                                    .push_back(NetEvent::Reset(FConn::Stream(c, id)));
                            }
                        }
                        continue;
                    }
                    self.front.replay.remove(&c);
                    return Some(match e {
                        NetEvent::Closed(_) => NetEvent::Closed(FConn::Tcp(c)),
                        _ => NetEvent::Reset(FConn::Tcp(c)),
                    });
                }
                NetEvent::Connected(c) => return Some(NetEvent::Connected(FConn::Tcp(c))),
            }
        }
    }

    fn may_have_input(&self, c: Self::Conn) -> bool {
        match c {
            FConn::Tcp(t) => self.front.replay.contains_key(&t) || self.inner.may_have_input(t),
            FConn::Stream(..) => true,
        }
    }

    fn reset_on_reuse_is_stale(&self, c: Self::Conn) -> bool {
        match c {
            FConn::Tcp(t) => self.inner.reset_on_reuse_is_stale(t),
            FConn::Stream(..) => false,
        }
    }

    fn addrs(&self, c: Self::Conn) -> Option<(SocketAddrV4, SocketAddrV4)> {
        self.inner.addrs(c.transport())
    }

    fn tcp_info(&self, c: Self::Conn) -> Option<TcpInfo> {
        self.inner.tcp_info(c.transport())
    }
}

fn end_engine_writes(st: &mut Stream, stats: &H2Stats) {
    if st.engine_wrote_all {
        return;
    }
    st.engine_wrote_all = true;
    match st.resp {
        Resp::Body(Framing::UntilClose) => st.resp = Resp::Done,
        Resp::Done => {}
        // Ended before its response did: a cut, which HTTP/2 says with a reset.
        _ => {
            if !st.h2_done {
                stats.streams_reset.fetch_add(1, Ordering::Relaxed);
                reset_stream(st, h2::Reason::INTERNAL_ERROR);
            }
        }
    }
}

fn reset_stream(st: &mut Stream, reason: h2::Reason) {
    if let Some(s) = st.send.as_mut() {
        s.send_reset(reason);
    } else if let Some(r) = st.respond.as_mut() {
        r.send_reset(reason);
    }
    st.send = None;
    st.respond = None;
    st.out.clear();
    st.out_len = 0;
    st.h2_done = true;
    st.resp = Resp::Done;
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::memnet::{EngineClose, MemNet};

    fn front() -> H2Front<crate::memnet::MemConn> {
        H2Front::new(
            H2Config::default(),
            |_| {
                Some(HttpListener {
                    request_head: Duration::from_secs(10),
                    body_stall: Duration::from_secs(30),
                })
            },
            Arc::default(),
        )
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    /// Every event the front passes on now, and what a reader of `c` gets.
    fn drain(
        mem: &mut MemNet,
        f: &mut H2Front<crate::memnet::MemConn>,
        now: Instant,
    ) -> (Vec<NetEvent<FConn<crate::memnet::MemConn>>>, Vec<u8>) {
        let mut net = H2Net::new(mem, f, now);
        let mut events = Vec::new();
        let mut bytes = Vec::new();
        while let Some(e) = net.poll_event() {
            if let NetEvent::Readable(c @ FConn::Tcp(_)) = e {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = net.read(c, &mut buf) {
                    bytes.extend_from_slice(&buf[..n]);
                }
            }
            events.push(e);
        }
        (events, bytes)
    }

    #[test]
    fn http1_is_told_at_its_first_byte_and_replayed_whole_across_every_split() {
        let req = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        // And one that starts like the preface and leaves it late.
        let near = b"PRI * HTTP/1.1\r\nhost: a\r\n\r\n";
        for text in [&req[..], &near[..]] {
            for split in 1..text.len() {
                let (mut mem, mut f) = (MemNet::new([10, 0, 0, 1].into()), front());
                let now = Instant::from_micros(0);
                let c = mem.peer_connect(addr("10.0.0.2:40000"), addr("10.0.0.1:80"));
                mem.peer_send(c, &text[..split]);
                let (ev1, mut got) = drain(&mut mem, &mut f, now);
                let told = ev1.iter().any(|e| matches!(e, NetEvent::Accepted { .. }));
                // Told at the first byte that is not the preface's.
                let diverges = text.iter().zip(PREFACE).position(|(a, b)| a != b).unwrap();
                assert_eq!(told, split > diverges, "{text:?} split at {split}");
                mem.peer_send(c, &text[split..]);
                let (_, more) = drain(&mut mem, &mut f, now);
                got.extend(more);
                assert_eq!(got, text, "{text:?} split at {split}");
            }
        }
    }

    /// The frame types in `bytes` (whole frames only).
    fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len = (bytes[0] as usize) << 16 | (bytes[1] as usize) << 8 | bytes[2] as usize;
            out.push(bytes[3]);
            bytes = &bytes[(9 + len).min(bytes.len())..];
        }
        out
    }

    /// The engine's response head goes on whatever the case of its names: hop-by-hop fields
    /// (and those `Connection` names) dropped, the framing read, the rest lowercased.
    #[test]
    fn a_final_response_keeps_its_end_to_end_fields_in_any_case() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCONNECTION: close, X-Hop\r\n\
                     x-hop: 1\r\nKeep-Alive: timeout=5\r\nX-Request-Id: abc\r\n\
                     Transfer-Encoding: Chunked\r\n\r\n";
        let mut buf = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut buf);
        assert!(r.parse(head).unwrap().is_complete());
        let (fields, framing) = final_fields(r.headers).unwrap();
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["Content-Type", "X-Request-Id"]);
        assert_eq!(framing, Framing::Chunked(Chunk::Size(0, false)));
        let resp = response(200, fields.into_iter()).unwrap();
        let names: Vec<&str> = resp.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-id"]);
        assert!(resp.headers()["x-request-id"].is_sensitive());

        // Codings are trimmed of spaces and tabs (as `http::list_elements` trims); a no-break
        // space is not whitespace here.
        for (te, ok) in [
            ("chunked", true),
            (" Chunked\t", true),
            ("gzip, chunked", false),
            ("chunked, ", false),
            ("chunked\u{a0}", false),
        ] {
            let h = [httparse::Header {
                name: "transfer-encoding",
                value: te.as_bytes(),
            }];
            assert_eq!(final_fields(&h).is_ok(), ok, "{te}");
        }
        let h = [httparse::Header {
            name: "Content-Length",
            value: b" 12 ",
        }];
        assert_eq!(final_fields(&h).unwrap().1, Framing::Length(12));
    }

    /// A connection whose handshake completes after a drain began gets GOAWAY at once: the
    /// drain's own GOAWAYs went only to connections open then.
    #[test]
    fn a_connection_that_opens_during_a_drain_gets_goaway() {
        let (mut mem, mut f) = (MemNet::new([10, 0, 0, 1].into()), front());
        let t0 = Instant::from_micros(0);
        let c = mem.peer_connect(addr("10.0.0.2:40000"), addr("10.0.0.1:80"));
        mem.peer_send(c, &PREFACE[..10]);
        drain(&mut mem, &mut f, t0);
        f.drain();
        mem.peer_send(c, &PREFACE[10..]);
        mem.peer_send(c, &[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
        drain(&mut mem, &mut f, t0);
        let types = frame_types(&mem.peer_take(c));
        assert!(types.contains(&0x7), "no GOAWAY among {types:?}");
    }

    #[test]
    fn a_preface_that_stalls_is_aborted_at_its_deadline() {
        let (mut mem, mut f) = (MemNet::new([10, 0, 0, 1].into()), front());
        let t0 = Instant::from_micros(0);
        let c = mem.peer_connect(addr("10.0.0.2:40000"), addr("10.0.0.1:80"));
        mem.peer_send(c, &PREFACE[..10]);
        let (ev, _) = drain(&mut mem, &mut f, t0);
        assert!(ev.is_empty(), "nothing for the engine yet: {ev:?}");
        let due = f.poll_timeout().expect("a deadline");
        assert_eq!(due, t0 + Duration::from_secs(10));
        let mut net = H2Net::new(&mut mem, &mut f, due);
        net.handle_timeout(due);
        assert_eq!(mem.closed(c), Some(EngineClose::Abort));
        assert_eq!(f.stats.preface_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(f.poll_timeout(), None);
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    /// What a scan of `bytes` finds, fed in pieces of `split` bytes.
    fn scan(bytes: &[u8], split: usize, now: Instant) -> Option<Flood> {
        let (mut s, cfg) = (FrameScan::default(), H2Config::default());
        bytes.chunks(split).find_map(|b| s.feed(b, now, &cfg))
    }

    #[test]
    fn the_frame_scan_finds_each_flood_across_every_split_and_no_other() {
        let t0 = Instant::from_micros(0);
        let cont = |n: usize, size: usize| {
            let mut b = frame(1, 0, b"abc");
            for _ in 0..n {
                b.extend(frame(9, 0, &vec![0; size]));
            }
            b
        };
        let control = |kind: u8, flags: u8, n: usize| {
            (0..n)
                .flat_map(|_| frame(kind, flags, &[0; 8]))
                .collect::<Vec<_>>()
        };
        let cases: [(Vec<u8>, Option<Flood>); 9] = [
            // The crate's limits: 5 CONTINUATION frames of a block, 32 KiB of it.
            (cont(5, 100), None),
            (cont(6, 0), Some(Flood::Continuation)),
            (cont(2, 16000), None),
            (cont(3, 16000), Some(Flood::Continuation)),
            // A block that ends starts the count again.
            (
                [cont(4, 10), frame(9, 0x4, b""), cont(4, 10)].concat(),
                None,
            ),
            (control(4, 0, 1000), None),
            (control(4, 0, 1001), Some(Flood::Settings)),
            (control(6, 0, 1001), Some(Flood::Ping)),
            // ACKs do not count.
            (control(6, 1, 5000), None),
        ];
        for (i, (bytes, want)) in cases.iter().enumerate() {
            for split in [1, 7, 9, 10, 4096, bytes.len()] {
                assert_eq!(scan(bytes, split, t0), *want, "case {i}, split {split}");
            }
        }
        // 1,000 in one window and 1,000 in the next are not a flood.
        let (mut s, cfg) = (FrameScan::default(), H2Config::default());
        let pings = control(6, 0, 1000);
        assert_eq!(s.feed(&pings, t0, &cfg), None);
        assert_eq!(s.feed(&pings, t0 + CONTROL_WINDOW, &cfg), None);
        assert_eq!(
            s.feed(&pings[..17], t0 + CONTROL_WINDOW, &cfg),
            Some(Flood::Ping)
        );
    }
}
