//! HTTP/2 servers behind the engine: cleartext with prior knowledge (h2c, RFC 9113 §3.3) to
//! the local endpoints of services with `upstream_protocol = "h2c"`.
//!
//! The back is the mirror image of [`crate::h2front`]: a [`Net`] wrapper ([`H2BackNet`])
//! between the engine and the transport. When the engine connects to an h2c endpoint, it gets
//! a virtual connection, [`BConn::Virtual`]; the HTTP/1.1 requests it writes there (one at a
//! time, as on any upstream connection it pools) each become one stream on a real connection
//! to the endpoint that the worker's virtual connections share. A worker keeps one real
//! connection per endpoint, and opens another only while every one it has is at the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (or the back's own cap) or going away (GOAWAY).
//!
//! Translation (RFC 9113 §8.2, §8.3): the request's connection-specific fields are dropped
//! (`te: trailers` is kept), `Host` becomes `:authority`, a chunked body is undone (its
//! trailers become HTTP/2 trailers). The response comes back as an HTTP/1.1 head and a
//! chunked body with the HTTP/2 trailers as its trailer section, or `content-length: 0` when
//! the HEADERS frame ends the stream (a gRPC trailers-only response: `grpc-status` stays a
//! header); a response with `content-length` keeps it and its body as is (its trailers, if
//! any, are dropped). A `100 Continue` is passed on; other interim responses are not.
//!
//! A reset stream or a real connection that fails reach the engine as [`NetEvent::Reset`] on
//! the virtual connections they carried: before the real connection was established that is
//! a connect failure to the engine (another endpoint is tried); after, a reset before or
//! during the response, never replayed by the engine (`Net::reset_on_reuse_is_stale` is
//! `false`: a stream reset says nothing of whether the server processed the request). A
//! stream the server left unprocessed — refused (REFUSED_STREAM, RFC 9113 §8.7) or above a
//! graceful GOAWAY's last stream (§6.8) — goes again once on a new stream when what the
//! engine wrote of the request is at most 64 KiB (a gateway B that drains or idles out a hop
//! loses no request this way).
//!
//! The `h2` crate is driven as in the front: polled with a no-op waker after every change that
//! could move it, over a pair of bounded in-memory buffers ([`crate::h2io::BufIo`]).

use crate::engine::{preamble, MAX_INTERIM};
use crate::h2io::{
    append_field, close_real, connection_specific, dechunk, read_real, write_out, BufIo, Chunk,
    READ_CHUNK,
};
use crate::http;
use crate::leg::Leg;
use crate::net::{HopTls, Net, NetError, NetEvent, TcpInfo};
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

/// Bytes of a server's frames buffered before they are parsed; the transport is not read past
/// it.
const RX_MAX: usize = 64 << 10;
/// Frames buffered for the transport; past it the `h2` connection waits.
const TX_MAX: usize = 256 << 10;
/// Request body bytes from the engine waiting for the stream's send window, per stream; past
/// it the engine's writes are refused (`WouldBlock`) until the server opens the window.
const REQ_MAX: usize = 64 << 10;
/// Response bytes (head, chunk-coded body) waiting for the engine to read, per stream; past it
/// the stream's DATA stays in the `h2` crate's window.
const RESP_MAX: usize = 64 << 10;
/// A request refused by the server (REFUSED_STREAM: not processed, RFC 9113 §8.7) goes again
/// once, on a new stream, when all of it that was written so far is at most this large.
const REPLAY_MAX: usize = 64 << 10;
/// A request head from the engine is at most this large (the engine's own limit is 16 KiB,
/// plus the fields it adds).
const REQ_HEAD_MAX: usize = 32 << 10;
/// A real connection that is not ready for streams this long after it was opened (TCP, and
/// for a hop the TLS handshake) is given up: the engine's connects waiting on it have met
/// their own connect timeouts by then, and new ones must not wait on a peer that never
/// answers its handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that carries streams and has received nothing for this long gets a PING,
/// and is given up when this long again passes without an answer: a peer that vanished
/// without a FIN (a crashed host, a partition) does not hold streams, and every new one,
/// until their timeouts or the transport's.
const PING_AFTER: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// On a multiplexed hop, the field that carries what the `XM/1` preamble says on a hop
/// connection of its own: the endpoint behind the peer gateway (`IP:PORT`). Gateway B's
/// front turns it back into the preamble, and its engine checks that as it checks any.
pub const HOP_ENDPOINT: &str = "x-xdpmesh-endpoint";

/// The limits of the back's HTTP/2 connections. Defaults in brackets.
#[derive(Clone, Debug)]
pub struct H2BackConfig {
    /// Streams at once on one real connection [100], at most (the server's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` when lower).
    pub max_streams: usize,
    /// Each stream's receive window [64 KiB − 1] and the connection's [`max_streams` × that,
    /// 6.25 MiB: what h2 may hold for streams whose clients do not read].
    pub stream_window: u32,
    pub connection_window: u32,
    /// Header list size accepted from a server or peer gateway [24 KiB: the engine's head
    /// limit, 16 KiB and 64 fields, with HPACK's 32 bytes per field].
    pub max_header_list_size: u32,
    /// HPACK dynamic table [4 KiB].
    pub header_table_size: u32,
    /// A real connection without a stream is closed after this [30 s].
    pub idle_timeout: Duration,
    /// Real connections to one endpoint at most, per worker [8], going-away ones included.
    pub max_connections: usize,
}

impl Default for H2BackConfig {
    fn default() -> Self {
        H2BackConfig {
            max_streams: 100,
            stream_window: 65_535,
            // Every stream's whole window: streams whose clients do not read must not hold
            // the connection's window shut for the others (unread DATA keeps its capacity).
            connection_window: 100 * 65_535,
            // A head at the engine's limit (16 KiB, 64 fields) and HPACK's 32 bytes per field.
            max_header_list_size: crate::h2front::HOP_HEADER_LIST,
            header_table_size: 4096,
            idle_timeout: Duration::from_secs(30),
            max_connections: 8,
        }
    }
}

/// What the back counted (all workers' backs add into one, for `/metrics`).
#[derive(Debug, Default)]
pub struct H2UpstreamStats {
    /// Real connections opened to h2c servers.
    pub connections: AtomicU64,
    /// Open now (a gauge).
    pub open: AtomicU64,
    pub streams: AtomicU64,
    /// Streams that ended without their whole response: reset by the server (RST_STREAM, a
    /// second REFUSED_STREAM, or unprocessed under a GOAWAY) or lost with their connection.
    pub streams_reset: AtomicU64,
    /// GOAWAY frames received.
    pub goaways: AtomicU64,
    /// Real connections that failed: refused, reset, or ended on a protocol error.
    pub connection_errors: AtomicU64,
    /// Requests from the engine that could not become a stream (not translatable).
    pub bad_requests: AtomicU64,
    /// Real connections closed after idling without streams.
    pub idle_closed: AtomicU64,
    /// Streams the server left unprocessed (REFUSED_STREAM, or above a graceful GOAWAY's last
    /// stream) that went again on a new stream.
    pub streams_refused: AtomicU64,
    /// Streams reset for what the server sent: more than `MAX_INTERIM` interim responses.
    pub bad_responses: AtomicU64,
    /// Multiplexed hop connections (mTLS, ALPN `h2`) opened to peer gateways, and open now.
    pub hop_connections: AtomicU64,
    pub hop_open: AtomicU64,
    /// Requests that went to a peer gateway as a stream of a multiplexed hop.
    pub hop_streams: AtomicU64,
    /// Multiplexed hop connections whose TLS handshake failed, did not finish within 10 s, or
    /// chose no ALPN `h2`.
    pub hop_handshake_failures: AtomicU64,
    /// Multiplexed hop connections that resumed a TLS session.
    pub hop_tls_resumed: AtomicU64,
    /// Connections given up because a PING went unanswered while streams waited.
    pub ping_timeouts: AtomicU64,
}

impl H2UpstreamStats {
    /// Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &AtomicU64); 14] = [
            (
                "xdpmesh_h2_upstream_ping_timeouts_total",
                "HTTP/2 upstream and hop connections given up because a PING went unanswered for 3 s while streams waited (after 2 s without a byte)",
                &self.ping_timeouts,
            ),
            (
                "xdpmesh_hop_tls_resumed_total",
                "multiplexed hop connections that resumed a TLS session",
                &self.hop_tls_resumed,
            ),
            (
                "xdpmesh_hop_connections_total",
                "multiplexed hop connections (mTLS, ALPN h2) opened to peer gateways",
                &self.hop_connections,
            ),
            (
                "xdpmesh_hop_streams_total",
                "requests sent to peer gateways as streams of multiplexed hop connections",
                &self.hop_streams,
            ),
            (
                "xdpmesh_hop_handshake_failures_total",
                "multiplexed hop connections whose TLS handshake failed, did not finish within 10 s, or did not choose ALPN h2",
                &self.hop_handshake_failures,
            ),
            (
                "xdpmesh_h2_upstream_connections_total",
                "HTTP/2 (h2c) connections opened to upstream servers",
                &self.connections,
            ),
            (
                "xdpmesh_h2_upstream_streams_total",
                "HTTP/2 streams opened to upstream servers (one per request)",
                &self.streams,
            ),
            (
                "xdpmesh_h2_upstream_streams_reset_total",
                "HTTP/2 upstream streams that ended without their whole response (reset, refused, unprocessed under GOAWAY, or lost with their connection)",
                &self.streams_reset,
            ),
            (
                "xdpmesh_h2_upstream_goaway_total",
                "GOAWAY frames received from upstream servers",
                &self.goaways,
            ),
            (
                "xdpmesh_h2_upstream_connection_errors_total",
                "HTTP/2 upstream connections that failed (refused, reset, protocol error)",
                &self.connection_errors,
            ),
            (
                "xdpmesh_h2_upstream_bad_requests_total",
                "requests that could not be translated to an HTTP/2 stream",
                &self.bad_requests,
            ),
            (
                "xdpmesh_h2_upstream_streams_refused_total",
                "HTTP/2 upstream streams the server left unprocessed (REFUSED_STREAM, or above a graceful GOAWAY's last stream) and sent again on a new stream",
                &self.streams_refused,
            ),
            (
                "xdpmesh_h2_upstream_bad_responses_total",
                "HTTP/2 upstream streams reset for what the server sent (more than 8 interim responses)",
                &self.bad_responses,
            ),
            (
                "xdpmesh_h2_upstream_idle_closed_total",
                "HTTP/2 upstream connections closed after idling without streams",
                &self.idle_closed,
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP xdpmesh_h2_upstream_connections_open HTTP/2 (h2c) upstream connections open now.\n\
             # TYPE xdpmesh_h2_upstream_connections_open gauge\nxdpmesh_h2_upstream_connections_open {}",
            self.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP xdpmesh_hop_connections_open Multiplexed hop connections to peer gateways open now.\n\
             # TYPE xdpmesh_hop_connections_open gauge\nxdpmesh_hop_connections_open {}",
            self.hop_open.load(Ordering::Relaxed)
        );
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// A connection as the engine sees it through the back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BConn<C> {
    /// A transport connection: every accepted one, and upstreams that speak HTTP/1.1.
    Tcp(C),
    /// A connection to an h2c endpoint: each request on it is a stream of a shared real one.
    Virtual(u64),
}

impl<C: Copy> BConn<C> {
    /// The transport connection, when it is one.
    pub fn tcp(self) -> Option<C> {
        match self {
            BConn::Tcp(c) => Some(c),
            BConn::Virtual(_) => None,
        }
    }
}

type SendRequest = h2::client::SendRequest<Bytes>;
type Connection = h2::client::Connection<BufIo, Bytes>;

/// Real connections to the same target may carry each other's streams: an h2c endpoint, or
/// a peer gateway for one service and client identity ([`HopTls::key`]).
type Target = (SocketAddrV4, Option<Arc<str>>);

/// One real HTTP/2 connection to an endpoint, or to a peer gateway (a multiplexed hop).
struct Real<C> {
    target: Target,
    /// A hop's TLS (the transport's connection under it); `None` for h2c.
    leg: Option<Leg<C>>,
    /// The transport completed the TCP handshake (for a hop; `connected` waits for TLS).
    tcp_up: bool,
    io: BufIo,
    send: SendRequest,
    conn: Option<Connection>,
    /// Ready for frames: the TCP handshake, and for a hop the TLS one with ALPN `h2`.
    connected: bool,
    /// No new streams: the server sent GOAWAY (or the connection is ending).
    going_away: bool,
    /// Virtual connections with a stream here, or waiting for this one to connect.
    virts: Vec<u64>,
    idle_since: Option<Instant>,
    /// Opened at: a connection not ready within [`CONNECT_TIMEOUT`] is given up.
    born: Instant,
    /// Liveness ([`PING_AFTER`]): when bytes last came in, when our PING went out (cleared
    /// by any bytes in), and whether the `h2` crate still holds it unanswered.
    last_rx: Instant,
    ping_sent: Option<Instant>,
    ping_pending: bool,
    pings: Option<h2::PingPong>,
    inner_eof: bool,
    queued: bool,
}

/// How the engine's request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqBody {
    Length(u64),
    Chunked(Chunk),
}

enum Req {
    /// Bytes of the next request head.
    Head(Vec<u8>),
    Body(ReqBody),
    /// The whole request is taken; its response is awaited.
    Sent,
}

/// How the response body goes to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespBody {
    Chunked,
    /// As is, under the server's `content-length`.
    Raw,
    /// None is owed (HEAD, 204, 304, or HEADERS ended the stream): DATA is discarded.
    Discard,
}

impl Virt {
    /// The real connections it may use.
    fn target(&self) -> Target {
        (self.endpoint, self.hop.as_ref().map(|h| h.tls.key.clone()))
    }
}

impl Stream {
    /// No response head yet (a refused stream has none).
    fn no_response_yet(&self) -> bool {
        self.response.is_some()
    }
}

/// One request's stream.
struct Stream {
    /// The head, until the connection takes a new stream.
    pending: Option<(::http::Request<()>, bool)>,
    send: Option<h2::SendStream<Bytes>>,
    response: Option<h2::client::ResponseFuture>,
    recv: Option<h2::RecvStream>,
    /// Request body waiting for the send window, and request trailers after it.
    out: VecDeque<Bytes>,
    out_len: usize,
    trailers: Vec<u8>,
    /// Everything of the request is in `out` (the stream ends after it).
    req_end: bool,
    head_only: bool,
    body: RespBody,
    /// The response is whole in the virtual connection's buffer.
    resp_done: bool,
    interim_seen: bool,
    /// Interim responses received (at most [`MAX_INTERIM`]).
    interims: u8,
}

struct Virt {
    endpoint: SocketAddrV4,
    /// A multiplexed hop's (see [`VirtHop`]); `None` for an h2c endpoint.
    hop: Option<Box<VirtHop>>,
    /// The real connection it is bound to: while it waits for the first one to connect, and
    /// while a stream of its own is open there.
    real: Option<RealKey>,
    connected: bool,
    req: Req,
    st: Option<Stream>,
    /// Response bytes for the engine.
    resp: Vec<u8>,
    resp_pos: usize,
    /// The response came before the request was whole: the rest of the request is discarded,
    /// and the connection ends after the response (the engine does not pool it).
    retire: bool,
    /// The engine shut down its writing.
    shut: bool,
    blocked_write: bool,
    /// What the engine wrote of the current request, while it is at most [`REPLAY_MAX`]
    /// (`None` past it), and whether it went again already.
    copy: Option<Vec<u8>>,
    replayed: bool,
}

/// A virtual connection's hop: what its real connections need, and the endpoint behind the
/// peer its `XM/1` preamble named (sent with each stream as [`HOP_ENDPOINT`]), once written.
struct VirtHop {
    tls: HopTls,
    endpoint: Option<SocketAddrV4>,
    /// The preamble so far, until its newline.
    preamble: Vec<u8>,
}

/// Real connections are keyed by the transport's handle.
type RealKey = u64;

/// Per worker: the real HTTP/2 connections to h2c endpoints, the engine's virtual
/// connections on them, and the events waiting for the engine.
pub struct H2Back<C> {
    cfg: H2BackConfig,
    builder: h2::client::Builder,
    /// Does the local endpoint at this address speak h2c? (Asked at connect time.)
    is_h2c: Box<dyn Fn(SocketAddrV4) -> bool + Send>,
    reals: FxHashMap<RealKey, (C, Real<C>)>,
    real_of: FxHashMap<C, RealKey>,
    by_endpoint: FxHashMap<Target, Vec<RealKey>>,
    virts: FxHashMap<u64, Virt>,
    next_id: u64,
    events: VecDeque<NetEvent<BConn<C>>>,
    dirty: Vec<RealKey>,
    now: Instant,
    stats: Arc<H2UpstreamStats>,
    /// What a pump reads the transport into (one per worker; see the front's).
    scratch: Box<[u8]>,
}

impl<C: Copy + Eq + std::hash::Hash + std::fmt::Debug> H2Back<C> {
    pub fn new(
        cfg: H2BackConfig,
        is_h2c: impl Fn(SocketAddrV4) -> bool + Send + 'static,
        stats: Arc<H2UpstreamStats>,
    ) -> Self {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(cfg.stream_window)
            .initial_connection_window_size(cfg.connection_window)
            .max_header_list_size(cfg.max_header_list_size)
            .header_table_size(cfg.header_table_size)
            .enable_push(false)
            .max_send_buffer_size(REQ_MAX);
        H2Back {
            cfg,
            builder,
            is_h2c: Box::new(is_h2c),
            reals: FxHashMap::default(),
            real_of: FxHashMap::default(),
            by_endpoint: FxHashMap::default(),
            virts: FxHashMap::default(),
            next_id: 1,
            events: VecDeque::new(),
            dirty: Vec::new(),
            now: Instant::from_micros(0),
            stats,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    pub fn stats(&self) -> &Arc<H2UpstreamStats> {
        &self.stats
    }

    /// Real HTTP/2 connections open now.
    pub fn connections(&self) -> usize {
        self.reals.len()
    }

    /// Events for the engine or connections to move are waiting: the loop must not sleep.
    pub fn has_pending(&self) -> bool {
        !self.events.is_empty() || !self.dirty.is_empty()
    }

    /// The back's next deadline: an idle real connection's close.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.has_pending() {
            return Some(self.now);
        }
        self.reals
            .values()
            .filter_map(|(_, r)| {
                if !r.connected {
                    return Some(r.born + CONNECT_TIMEOUT);
                }
                if !r.virts.is_empty() {
                    return match r.ping_sent {
                        Some(t) => Some(t + PING_TIMEOUT),
                        None if !r.ping_pending => Some(r.last_rx + PING_AFTER),
                        None => None,
                    };
                }
                r.idle_since.map(|t| t + self.cfg.idle_timeout)
            })
            .min()
    }

    /// Closes real connections idle past their deadline, and gives up those not ready in
    /// time ([`CONNECT_TIMEOUT`]).
    pub fn handle_timeout<N: Net<Conn = C>>(&mut self, inner: &mut N, now: Instant) {
        self.now = now;
        let idle = self.cfg.idle_timeout;
        let late: Vec<RealKey> = self
            .reals
            .iter()
            .filter(|(_, (_, r))| {
                r.virts.is_empty() && r.idle_since.is_some_and(|t| t + idle <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            if let Some((c, r)) = self.drop_real(k) {
                close_gracefully(inner, now, c, r);
            }
        }
        let stuck: Vec<RealKey> = self
            .reals
            .iter()
            .filter(|(_, (_, r))| !r.connected && r.born + CONNECT_TIMEOUT <= now)
            .map(|(k, _)| *k)
            .collect();
        // Liveness of connections with streams: a PING after PING_AFTER of silence, and the
        // end of the connection when it goes unanswered.
        let mut dead = Vec::new();
        let mut ping = Vec::new();
        for (k, (_, r)) in self.reals.iter_mut() {
            if !r.connected || r.virts.is_empty() {
                continue;
            }
            match r.ping_sent {
                Some(t) if t + PING_TIMEOUT <= now => dead.push(*k),
                None if !r.ping_pending && r.last_rx + PING_AFTER <= now => {
                    if let Some(p) = r.pings.as_mut() {
                        if p.send_ping(h2::Ping::opaque()).is_ok() {
                            r.ping_sent = Some(now);
                            r.ping_pending = true;
                            ping.push(*k);
                        }
                    }
                }
                _ => {}
            }
        }
        for k in ping {
            self.mark(k);
        }
        for k in dead {
            self.stats.ping_timeouts.fetch_add(1, Ordering::Relaxed);
            if let Some((c, _)) = self.drop_real(k) {
                inner.abort(c);
            }
        }
        for k in stuck {
            // What still waits on it fails as a connect.
            if let Some((c, r)) = self.drop_real(k) {
                match r.leg {
                    Some(_) => &self.stats.hop_handshake_failures,
                    None => &self.stats.connection_errors,
                }
                .fetch_add(1, Ordering::Relaxed);
                inner.abort(c);
            }
        }
    }

    fn mark(&mut self, k: RealKey) {
        if let Some((_, r)) = self.reals.get_mut(&k) {
            if !r.queued {
                r.queued = true;
                self.dirty.push(k);
            }
        }
    }

    /// Forgets a real connection; the virtual connections bound to it are reset. Returns the
    /// transport's handle and the connection (for the caller to close, gracefully or not, or
    /// abort).
    fn drop_real(&mut self, k: RealKey) -> Option<(C, Real<C>)> {
        let (c, mut r) = self.reals.remove(&k)?;
        self.real_of.remove(&c);
        if r.leg.is_some() {
            self.stats.hop_open.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(v) = self.by_endpoint.get_mut(&r.target) {
            v.retain(|x| *x != k);
            if v.is_empty() {
                self.by_endpoint.remove(&r.target);
            }
        }
        for id in std::mem::take(&mut r.virts) {
            self.fail_virt(id);
        }
        Some((c, r))
    }

    /// The virtual connection is gone for the engine: `Reset`, and the handle is invalid.
    fn fail_virt(&mut self, id: u64) {
        if let Some(v) = self.virts.remove(&id) {
            if v.st.as_ref().is_some_and(|s| !s.resp_done) {
                self.stats.streams_reset.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(k) = v.real {
                if let Some((_, r)) = self.reals.get_mut(&k) {
                    r.virts.retain(|x| *x != id);
                }
            }
            self.events.push_back(NetEvent::Reset(BConn::Virtual(id)));
        }
    }

    /// A real connection to `ep` with room for one more stream, opening one if none has.
    fn real_for<N: Net<Conn = C>>(
        &mut self,
        inner: &mut N,
        ep: SocketAddrV4,
        hop: Option<&HopTls>,
    ) -> Result<RealKey, NetError> {
        let mut cx = Context::from_waker(Waker::noop());
        // The least loaded open one, should every one be full and no other may open.
        let mut least: Option<(usize, RealKey)> = None;
        let mut count = 0;
        let target: Target = (ep, hop.map(|h| h.key.clone()));
        if let Some(list) = self.by_endpoint.get(&target) {
            for &k in list {
                let Some((_, r)) = self.reals.get_mut(&k) else {
                    continue;
                };
                count += 1;
                if r.going_away {
                    continue;
                }
                if least.is_none_or(|(n, _)| r.virts.len() < n) {
                    least = Some((r.virts.len(), k));
                }
                let max = self.cfg.max_streams.min(r.send.current_max_send_streams());
                if r.virts.len() >= max {
                    continue;
                }
                match r.send.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => return Ok(k),
                    Poll::Ready(Err(_)) => r.going_away = true,
                    Poll::Pending => {}
                }
            }
        }
        if count >= self.cfg.max_connections {
            // A server that allows few streams (or none: SETTINGS_MAX_CONCURRENT_STREAMS 0)
            // or keeps sending GOAWAY must not make a connection per request: the stream
            // waits on the least loaded connection (h2 opens it when a slot frees, bounded by
            // the request timeout), or fails like a connect when all are going away.
            return least.map(|(_, k)| k).ok_or(NetError::Reset);
        }
        // None fits: another real connection.
        let leg = match hop {
            Some(h) => {
                let tls = rustls::ClientConnection::new(h.config.clone(), h.sni.clone())
                    .map_err(|_| NetError::Reset)?;
                Some(tls)
            }
            None => None,
        };
        let c = inner.connect(self.now, ep)?;
        let leg = leg.map(|tls| Leg::tls(c, tls.into(), false));
        let io = BufIo::new(TX_MAX);
        let mut hs = std::pin::pin!(self.builder.handshake::<BufIo, Bytes>(io.clone()));
        let (send, mut conn) = match hs.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(pair)) => pair,
            // The preface goes into an empty buffer: it cannot wait or fail.
            _ => {
                inner.abort(c);
                return Err(NetError::Reset);
            }
        };
        let pings = conn.ping_pong();
        let k = self.next_id;
        self.next_id += 1;
        if leg.is_some() {
            self.stats.hop_connections.fetch_add(1, Ordering::Relaxed);
            self.stats.hop_open.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            self.stats.open.fetch_add(1, Ordering::Relaxed);
        }
        self.real_of.insert(c, k);
        self.by_endpoint.entry(target.clone()).or_default().push(k);
        self.reals.insert(
            k,
            (
                c,
                Real {
                    target,
                    leg,
                    tcp_up: false,
                    io,
                    send,
                    conn: Some(conn),
                    connected: false,
                    going_away: false,
                    virts: Vec::new(),
                    idle_since: None,
                    born: self.now,
                    last_rx: self.now,
                    ping_sent: None,
                    ping_pending: false,
                    pings,
                    inner_eof: false,
                    queued: false,
                },
            ),
        );
        Ok(k)
    }

    /// The real connection takes streams: the engine's connects waiting for it complete;
    /// those without a request of their own yet are not bound any more.
    fn ready(&mut self, k: RealKey) {
        let Some((_, r)) = self.reals.get_mut(&k) else {
            return;
        };
        r.connected = true;
        r.last_rx = self.now;
        let waiting: Vec<u64> = r.virts.clone();
        for id in waiting {
            if let Some(v) = self.virts.get_mut(&id) {
                if !v.connected {
                    v.connected = true;
                    self.events
                        .push_back(NetEvent::Connected(BConn::Virtual(id)));
                }
                if v.st.is_none() {
                    v.real = None;
                    if let Some((_, r)) = self.reals.get_mut(&k) {
                        r.virts.retain(|x| *x != id);
                    }
                }
            }
        }
    }

    fn bind(&mut self, id: u64, k: RealKey) {
        if let Some((_, r)) = self.reals.get_mut(&k) {
            r.virts.push(id);
            r.idle_since = None;
        }
        if let Some(v) = self.virts.get_mut(&id) {
            v.real = Some(k);
        }
    }
}

/// The transport with the back in front of it, for one round of the worker's loop.
pub struct H2BackNet<'a, N: Net> {
    pub inner: &'a mut N,
    pub back: &'a mut H2Back<N::Conn>,
}

impl<'a, N: Net> H2BackNet<'a, N> {
    pub fn new(inner: &'a mut N, back: &'a mut H2Back<N::Conn>, now: Instant) -> Self {
        back.now = now;
        H2BackNet { inner, back }
    }

    /// Closes real connections past their idle deadline (see [`H2Back::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.back.handle_timeout(self.inner, now);
    }

    /// The end of a drain: every real connection closes, each with a GOAWAY first (see
    /// [`close_gracefully`]). Call after the engine has let go of its virtual connections;
    /// streams still open are cancelled.
    pub fn close_all(&mut self) {
        self.flush();
        let now = self.back.now;
        let keys: Vec<RealKey> = self.back.reals.keys().copied().collect();
        for k in keys {
            if let Some((c, r)) = self.back.drop_real(k) {
                close_gracefully(self.inner, now, c, r);
            }
        }
    }

    /// Moves every real connection touched since the last call: call after the engine's
    /// `progress`, so its writes leave in this round.
    pub fn flush(&mut self) {
        while let Some(k) = self.back.dirty.pop() {
            self.pump(k);
        }
    }

    /// Reads the transport into the connection's buffer (bounded), drives the connection and
    /// its streams, and writes its frames out.
    fn pump(&mut self, k: RealKey) {
        let back = &mut *self.back;
        let Some((c, r)) = back.reals.get_mut(&k) else {
            return;
        };
        let c = *c;
        let mut r = r;
        r.queued = false;
        let mut rx_full = false;
        if r.tcp_up && !r.connected {
            // A hop's TLS handshake, then ALPN `h2` or nothing.
            let leg = r.leg.as_mut().expect("only a hop waits for TLS");
            let ok = match leg.handshake(self.inner) {
                Ok(()) if leg.is_handshaking() => return,
                Ok(()) => {
                    if let Some(rustls::Connection::Client(t)) = leg.tls_state() {
                        if t.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                            back.stats.hop_tls_resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    leg.tls_state().and_then(|t| t.alpn_protocol()) == Some(crate::tls::ALPN_H2)
                }
                Err(_) => false,
            };
            if !ok {
                // A refused certificate, or a peer without the multiplexed hop
                // (`hop_protocol = "http1"` is for those): the connects waiting fail.
                back.stats
                    .hop_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Some((c, r)) = back.drop_real(k) {
                    if let Some(mut leg) = r.leg {
                        let _ = leg.flush(self.inner);
                    }
                    self.inner.abort(c);
                }
                return;
            }
            back.ready(k);
            let Some((_, r2)) = back.reals.get_mut(&k) else {
                return;
            };
            r = r2;
        }
        if r.connected {
            loop {
                let room = RX_MAX.saturating_sub(r.io.lock().rx.len());
                if room == 0 {
                    rx_full = true;
                    break;
                }
                if r.inner_eof {
                    break;
                }
                let buf = &mut back.scratch;
                let n = room.min(buf.len());
                match read_real(self.inner, r.leg.as_mut(), c, &mut buf[..n]) {
                    Ok(0) | Err(NetError::Closed | NetError::Reset) => {
                        r.inner_eof = true;
                        r.io.lock().rx_eof = true;
                    }
                    Ok(n) => {
                        r.io.lock().rx.extend_from_slice(&buf[..n]);
                        r.last_rx = back.now;
                        r.ping_sent = None;
                    }
                    Err(NetError::WouldBlock) => break,
                }
            }
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut over = drive(r, &mut cx, &back.stats);
        if r.ping_pending {
            if let Some(Poll::Ready(_)) = r.pings.as_mut().map(|p| p.poll_pong(&mut cx)) {
                r.ping_pending = false;
            }
        }
        // Streams: request out, response in.
        let mut failed: Vec<u64> = Vec::new();
        let mut finished: Vec<u64> = Vec::new();
        let mut rebind: Vec<u64> = Vec::new();
        let mut replay: Vec<u64> = Vec::new();
        // A stream opened in this turn gets its send window only once the connection has
        // sent its HEADERS: a second round moves its body without waiting for an event.
        for _round in 0..2 {
            let mut waiting = false;
            for &id in &r.virts {
                if failed.contains(&id)
                    || rebind.contains(&id)
                    || finished.contains(&id)
                    || replay.contains(&id)
                {
                    continue;
                }
                let Some(v) = back.virts.get_mut(&id) else {
                    continue;
                };
                let before = v.resp.len() - v.resp_pos;
                let blocked = v.blocked_write;
                match pump_virt(v, &mut r.send, &mut cx, &back.stats) {
                    Ok(()) => {}
                    Err(Fail::GoingAway) => {
                        r.going_away = true;
                        rebind.push(id);
                        continue;
                    }
                    Err(Fail::Refused) if v.copy.is_some() && !v.replayed => {
                        back.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                        replay.push(id);
                        continue;
                    }
                    Err(Fail::Reset | Fail::Refused) => {
                        failed.push(id);
                        continue;
                    }
                }
                let f = BConn::Virtual(id);
                let done = v.st.as_ref().is_some_and(|s| s.resp_done);
                if v.resp.len() - v.resp_pos != before || done {
                    back.events.push_back(NetEvent::Readable(f));
                }
                if blocked && !v.blocked_write {
                    back.events.push_back(NetEvent::Writable(f));
                }
                if v.st
                    .as_ref()
                    .is_some_and(|s| s.resp_done && s.send.is_none())
                {
                    finished.push(id);
                }
                waiting |= v.st.as_ref().is_some_and(|s| {
                    s.pending.is_some() || (s.send.is_some() && (s.out_len > 0 || s.req_end))
                });
            }
            // Frames the streams queued go out in another turn of the connection.
            if !over {
                over = drive(r, &mut cx, &back.stats);
            }
            if over || !waiting {
                break;
            }
        }
        for id in finished.iter().chain(&rebind).chain(&replay) {
            r.virts.retain(|x| x != id);
        }
        for id in &finished {
            if let Some(v) = back.virts.get_mut(id) {
                v.real = None;
                v.st = None;
                v.copy = Some(Vec::new());
                v.replayed = false;
                if !v.retire {
                    v.req = Req::Head(Vec::new());
                }
                if v.blocked_write {
                    v.blocked_write = false;
                    back.events
                        .push_back(NetEvent::Writable(BConn::Virtual(*id)));
                }
            }
        }
        if r.virts.is_empty() && r.idle_since.is_none() && failed.is_empty() {
            r.idle_since = Some(back.now);
        }
        // Out.
        let mut io = r.io.lock();
        let tx_full = io.tx.len() >= TX_MAX;
        if r.connected {
            write_out(self.inner, r.leg.as_mut(), c, &mut io.tx);
            if let Some(leg) = r.leg.as_mut() {
                // TLS records the writes above (or rustls itself) queued.
                let _ = leg.flush(self.inner);
            }
        }
        let drained = io.tx.is_empty();
        if drained && io.tx.capacity() > 16 << 10 {
            io.tx = Vec::new();
        }
        let rx_left = io.rx.len() - io.rx_pos;
        drop(io);
        let again = (tx_full && drained) || (rx_full && rx_left < RX_MAX && !r.inner_eof);
        let eof = r.inner_eof;
        let any_failed = !failed.is_empty();
        for id in failed {
            back.fail_virt(id);
        }
        if any_failed {
            // Its last streams may have just failed: then its idle clock starts now, or an
            // unused connection would stay open until something else touched it.
            let now = back.now;
            if let Some((_, r)) = back.reals.get_mut(&k) {
                if r.virts.is_empty() && r.idle_since.is_none() {
                    r.idle_since = Some(now);
                }
            }
        }
        for id in rebind {
            let Some((ep, hop)) = back.virts.get_mut(&id).map(|v| {
                v.real = None;
                (v.endpoint, v.hop.as_ref().map(|h| h.tls.clone()))
            }) else {
                continue;
            };
            match back.real_for(self.inner, ep, hop.as_ref()) {
                Ok(k2) if k2 != k => {
                    back.bind(id, k2);
                    back.mark(k2);
                }
                _ => back.fail_virt(id),
            }
        }
        if over || eof {
            // The connection ended (GOAWAY with nothing left, an error, the server's close):
            // what it still carried is lost.
            let now = back.now;
            if let Some((c, r)) = back.drop_real(k) {
                if over && !eof {
                    close_real(self.inner, now, c, r.leg);
                } else {
                    self.inner.abort(c);
                }
            }
            self.replay(replay);
            return;
        }
        if again {
            back.mark(k);
        }
        self.replay(replay);
    }

    /// Requests the server refused go again, each on a new stream (on a connection with room,
    /// which may be the same one); the engine sees nothing of it.
    fn replay(&mut self, ids: Vec<u64>) {
        for id in ids {
            let Some(v) = self.back.virts.get_mut(&id) else {
                continue;
            };
            let copy = v.copy.clone().unwrap_or_default();
            v.real = None;
            v.st = None;
            v.req = Req::Head(Vec::new());
            v.replayed = true;
            let mut at = 0;
            while at < copy.len() {
                match self.take_request(id, &copy[at..]) {
                    Ok(n) if n > 0 => at += n,
                    _ => break,
                }
            }
            if at < copy.len() {
                self.back.fail_virt(id);
            }
        }
    }

    /// The engine wrote on a virtual connection: its request head, then its body.
    fn take_request(&mut self, id: u64, data: &[u8]) -> Result<usize, NetError> {
        let back = &mut *self.back;
        let v = back.virts.get_mut(&id).ok_or(NetError::Reset)?;
        let mut used = 0;
        while used < data.len() {
            let rest = &data[used..];
            match &mut v.req {
                Req::Head(buf) => {
                    let take = rest.len().min(REQ_HEAD_MAX + 1 - buf.len());
                    let before = buf.len();
                    buf.extend_from_slice(&rest[..take]);
                    let limits = http::Limits {
                        max_head: REQ_HEAD_MAX,
                        max_headers: 256,
                        ..http::Limits::default()
                    };
                    match http::parse_request(buf, &limits) {
                        Ok(None) => {
                            used += take;
                        }
                        Ok(Some((head, n))) => {
                            used += n - before;
                            let hop_ep = v.hop.as_ref().and_then(|h| h.endpoint);
                            let Some((st, body)) = new_stream(&head, v.endpoint, hop_ep) else {
                                back.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                                back.fail_virt(id);
                                return Err(NetError::Reset);
                            };
                            v.st = Some(st);
                            v.req = match body {
                                Some(b) => Req::Body(b),
                                None => Req::Sent,
                            };
                            if hop_ep.is_some() {
                                back.stats.hop_streams.fetch_add(1, Ordering::Relaxed);
                            } else {
                                back.stats.streams.fetch_add(1, Ordering::Relaxed);
                            }
                            // A stream of its own: on a real connection with room.
                            let ep = v.endpoint;
                            let hop = v.hop.as_ref().map(|h| h.tls.clone());
                            let k = match v.real {
                                Some(k) => k,
                                None => match back.real_for(self.inner, ep, hop.as_ref()) {
                                    Ok(k) => {
                                        back.bind(id, k);
                                        k
                                    }
                                    Err(_) => {
                                        back.fail_virt(id);
                                        return Err(NetError::Reset);
                                    }
                                },
                            };
                            back.mark(k);
                            return Ok(used);
                        }
                        Err(_) => {
                            back.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                            back.fail_virt(id);
                            return Err(NetError::Reset);
                        }
                    }
                }
                Req::Body(framing) => {
                    let st = v.st.as_mut().ok_or(NetError::Reset)?;
                    if st.out_len >= REQ_MAX {
                        v.blocked_write = true;
                        break;
                    }
                    let room = REQ_MAX - st.out_len;
                    let rest = &rest[..rest.len().min(room)];
                    let (n, body, done) = match framing {
                        ReqBody::Length(left) => {
                            let n = (*left).min(rest.len() as u64) as usize;
                            *left -= n as u64;
                            (n, rest[..n].to_vec(), *left == 0)
                        }
                        ReqBody::Chunked(chunk) => match dechunk(chunk, rest, &mut st.trailers) {
                            Ok(r) => r,
                            Err(()) => {
                                back.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                                back.fail_virt(id);
                                return Err(NetError::Reset);
                            }
                        },
                    };
                    used += n;
                    if !body.is_empty() && !v.retire {
                        st.out_len += body.len();
                        st.out.push_back(Bytes::from(body));
                    }
                    if done {
                        st.req_end = true;
                        v.req = Req::Sent;
                        break;
                    }
                }
                Req::Sent => {
                    if v.retire {
                        // Answered early: what the engine still sends goes nowhere.
                        return Ok(data.len());
                    }
                    // The next request before this one's response: the engine does not
                    // pipeline, so it waits.
                    v.blocked_write = true;
                    break;
                }
            }
        }
        if let Some(k) = v.real {
            back.mark(k);
        }
        if used == 0 {
            return Err(NetError::WouldBlock);
        }
        Ok(used)
    }
}

enum Fail {
    /// The stream could not be opened on this connection (GOAWAY): it waits for another.
    GoingAway,
    /// The stream failed: the engine's connection is reset.
    Reset,
    /// The server refused the stream (REFUSED_STREAM): it was not processed.
    Refused,
}

/// Did the server leave the stream unprocessed? It refused it (REFUSED_STREAM, RFC 9113
/// §8.7), or a graceful GOAWAY named a lower last stream (§6.8): the `h2` crate fails exactly
/// those streams with the GOAWAY's error at once, while streams the server kept and that
/// the connection's end cuts later fail with an I/O error. A GOAWAY for an error is not
/// taken as proof: the crate may hand its error to processed streams too.
fn refused(e: &h2::Error) -> bool {
    e.is_remote()
        && (e.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)))
}

/// Closes a real connection that ends on our side (idle, or the end of a drain) the way
/// RFC 9113 §6.8 asks ("SHOULD always send a GOAWAY frame before closing"): the server then
/// knows no stream of ours is in flight, instead of seeing a bare FIN. The `h2` client sends
/// GOAWAY(NO_ERROR) by itself once nothing refers to the connection any more, so the request
/// handle goes first; a few polls let it also send the RST_STREAMs of streams just
/// cancelled.
fn close_gracefully<N: Net>(inner: &mut N, now: Instant, c: N::Conn, r: Real<N::Conn>) {
    let Real {
        send,
        conn,
        io,
        mut leg,
        connected,
        pings,
        ..
    } = r;
    drop(send);
    drop(pings);
    // What the server sent meanwhile (a PING, its own GOAWAY) is dropped: a close with
    // input unread is a reset (RFC 2525 §2.17), which would lose the GOAWAY. Bounded: a
    // server that keeps sending gets that reset.
    let mut scratch = [0u8; 4096];
    for _ in 0..64 {
        match read_real(inner, leg.as_mut(), c, &mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let mut whole = true;
    if let (true, Some(mut conn)) = (connected, conn) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..4 {
            let over = Pin::new(&mut conn).poll(&mut cx).is_ready();
            let mut io = io.lock();
            write_out(inner, leg.as_mut(), c, &mut io.tx);
            whole = io.tx.is_empty();
            if over || !whole {
                break;
            }
        }
    }
    if whole {
        close_real(inner, now, c, leg);
    } else {
        // The transport took part of a frame (an upload stalled it): a cut frame and a FIN
        // would be a protocol error at the server, so it is a reset.
        inner.abort(c);
    }
}

/// One turn of the connection: its I/O and its frames. `true` when it is over.
fn drive<C>(r: &mut Real<C>, cx: &mut Context<'_>, stats: &H2UpstreamStats) -> bool {
    let Some(conn) = r.conn.as_mut() else {
        return true;
    };
    match Pin::new(conn).poll(cx) {
        Poll::Ready(Ok(())) => {
            r.conn = None;
            true
        }
        Poll::Ready(Err(e)) => {
            if e.is_go_away() && e.is_remote() {
                stats.goaways.fetch_add(1, Ordering::Relaxed);
            }
            if e.reason() != Some(h2::Reason::NO_ERROR) {
                stats.connection_errors.fetch_add(1, Ordering::Relaxed);
            }
            r.conn = None;
            true
        }
        Poll::Pending => false,
    }
}

/// The HTTP/2 request for an HTTP/1.1 head the engine wrote, and how its body is framed
/// (`None`: the HEADERS frame ends the stream).
fn new_stream(
    head: &http::RequestHead,
    ep: SocketAddrV4,
    hop_ep: Option<SocketAddrV4>,
) -> Option<(Stream, Option<ReqBody>)> {
    if head.method == "CONNECT" || head.upgrade.is_some() {
        return None; // a tunnel: not a request HTTP/2 carries this way (RFC 9113 §8.5)
    }
    let authority = head
        .host()
        .map(str::to_owned)
        .unwrap_or_else(|| ep.to_string());
    let uri = ::http::Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(head.path())
        .build()
        .ok()?;
    let mut req = ::http::Request::new(());
    *req.method_mut() = ::http::Method::from_bytes(head.method.as_bytes()).ok()?;
    *req.uri_mut() = uri;
    *req.version_mut() = ::http::Version::HTTP_2;
    let map = req.headers_mut();
    map.try_reserve(head.headers.len() + 2).ok()?;
    // Fields the `Connection` field names are this hop's only.
    let listed: Vec<&[u8]> = http::list_elements(&head.headers, "connection").collect();
    let mut te_trailers = false;
    // Names in any case (compared so, and lowercased by `append_field`): no string per field.
    for (name, value) in &head.headers {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("te") {
            // The one connection-specific field HTTP/2 allows, with this value only.
            if value.eq_ignore_ascii_case(b"trailers") && !te_trailers {
                te_trailers = true;
                append_field(map, "te", b"trailers")?;
            }
            continue;
        }
        if connection_specific(name)
            || listed
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
            || is("host")
        {
            continue;
        }
        if is("http2-settings") || is("trailer") || is(HOP_ENDPOINT) {
            continue;
        }
        append_field(map, name, value)?;
    }
    if let Some(ep) = hop_ep {
        // The preamble's job on a multiplexed hop: gateway B checks it per stream.
        append_field(map, HOP_ENDPOINT, ep.to_string().as_bytes())?;
    }
    // The engine drops `TE` as hop-by-hop; gRPC needs `te: trailers` on HTTP/2 (its servers
    // refuse calls without it, to detect proxies that would lose trailers): this hop keeps
    // trailers, so it says so for gRPC requests.
    if http::is_grpc(head) && !te_trailers {
        append_field(map, "te", b"trailers")?;
    }
    let body = match head.body {
        http::BodyKind::Length(0) | http::BodyKind::None => None,
        http::BodyKind::Length(n) => Some(ReqBody::Length(n)),
        http::BodyKind::Chunked => Some(ReqBody::Chunked(Chunk::Size(0, false))),
        http::BodyKind::UntilClose | http::BodyKind::Tunnel => return None,
    };
    Some((
        Stream {
            pending: Some((req, body.is_none())),
            send: None,
            response: None,
            recv: None,
            out: VecDeque::new(),
            out_len: 0,
            trailers: Vec::new(),
            req_end: body.is_none(),
            head_only: head.method == "HEAD",
            body: RespBody::Discard,
            resp_done: false,
            interim_seen: false,
            interims: 0,
        },
        body,
    ))
}

/// One virtual connection's turn on its real connection: the stream opened, the request body
/// out (as the window allows), the response in (while the engine keeps up).
fn pump_virt(
    v: &mut Virt,
    send_req: &mut SendRequest,
    cx: &mut Context<'_>,
    stats: &H2UpstreamStats,
) -> Result<(), Fail> {
    let Some(st) = v.st.as_mut() else {
        return Ok(());
    };
    // Open.
    if let Some((req, end)) = st.pending.take() {
        match send_req.poll_ready(cx) {
            Poll::Ready(Ok(())) => match send_req.send_request(req, end) {
                Ok((resp, send)) => {
                    st.response = Some(resp);
                    if !end {
                        st.send = Some(send);
                    }
                }
                Err(e) => {
                    if e.is_go_away() || e.is_io() {
                        return Err(Fail::Reset);
                    }
                    stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                    return Err(Fail::Reset);
                }
            },
            Poll::Ready(Err(_)) => {
                // GOAWAY (or the connection's end) before the stream was opened: nothing of
                // it was sent, so it goes on another connection.
                st.pending = Some((req, end));
                return Err(Fail::GoingAway);
            }
            Poll::Pending => {
                st.pending = Some((req, end));
                return Ok(());
            }
        }
    }
    // Request body, as the stream's window opens. A send that fails may be a server that
    // answered early and reset its side (RST_STREAM NO_ERROR, RFC 9113 §8.1): the response
    // is read below first, and only a stream without one is a reset.
    let mut send_failed = false;
    if let Some(send) = st.send.as_mut() {
        while let Some(front) = st.out.front() {
            if send.capacity() == 0 {
                send.reserve_capacity(st.out_len.min(REQ_MAX));
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) if n > 0 => {}
                    Poll::Ready(Some(Err(e))) if refused(&e) && !st.resp_done => {
                        return Err(Fail::Refused);
                    }
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                        send_failed = true;
                        break;
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
            let last = st.out.is_empty() && st.req_end && st.trailers.is_empty();
            if send.send_data(chunk, last).is_err() {
                send_failed = true;
                break;
            }
            if last {
                st.send = None;
                break;
            }
        }
        if st.out_len < REQ_MAX {
            v.blocked_write = false;
        }
        if let Some(send) = st.send.as_mut().filter(|_| !send_failed) {
            if st.out.is_empty() && st.req_end {
                let r = if st.trailers.is_empty() {
                    send.send_data(Bytes::new(), true)
                } else {
                    send.send_trailers(crate::h2io::trailer_map(&st.trailers))
                };
                send_failed = r.is_err();
                st.send = None;
            }
        }
    } else if st.out_len < REQ_MAX {
        v.blocked_write = false;
    }
    // Response head.
    if let Some(resp) = st.response.as_mut() {
        if !st.interim_seen {
            while let Poll::Ready(Some(r)) = resp.poll_informational(cx) {
                // A server that sends interim responses without end grows this buffer
                // whether or not the client reads: as many as the engine allows, then reset.
                st.interims = st.interims.saturating_add(1);
                if st.interims > MAX_INTERIM {
                    stats.bad_responses.fetch_add(1, Ordering::Relaxed);
                    return Err(Fail::Reset);
                }
                match r {
                    Ok(i) if i.status() == ::http::StatusCode::CONTINUE => {
                        v.resp.extend_from_slice(http::CONTINUE);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        match Pin::new(resp).poll(cx) {
            Poll::Ready(Ok(r)) => {
                st.interim_seen = true;
                st.response = None;
                let (parts, recv) = r.into_parts();
                let end = recv.is_end_stream();
                st.body = response_head(&parts, end, st.head_only, &mut v.resp);
                if end {
                    st.resp_done = true;
                } else {
                    st.recv = Some(recv);
                }
            }
            Poll::Ready(Err(e)) => {
                if e.is_go_away() && e.is_remote() {
                    stats.goaways.fetch_add(1, Ordering::Relaxed);
                }
                return Err(if refused(&e) {
                    Fail::Refused
                } else {
                    Fail::Reset
                });
            }
            Poll::Pending => {}
        }
    }
    // Response body, while the engine's buffer has room.
    while let Some(recv) = st.recv.as_mut() {
        if v.resp.len() - v.resp_pos >= RESP_MAX {
            break;
        }
        match recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = recv.flow_control().release_capacity(data.len());
                if data.is_empty() {
                    continue;
                }
                match st.body {
                    RespBody::Chunked => {
                        v.resp
                            .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        v.resp.extend_from_slice(&data);
                        v.resp.extend_from_slice(b"\r\n");
                    }
                    RespBody::Raw => v.resp.extend_from_slice(&data),
                    RespBody::Discard => {}
                }
            }
            Poll::Ready(None) => {
                let trailers = match recv.poll_trailers(cx) {
                    Poll::Ready(Ok(t)) => t,
                    Poll::Ready(Err(_)) => return Err(Fail::Reset),
                    Poll::Pending => break,
                };
                if st.body == RespBody::Chunked {
                    v.resp.extend_from_slice(b"0\r\n");
                    for (k, val) in trailers.iter().flatten() {
                        if connection_specific(k.as_str()) {
                            continue;
                        }
                        v.resp.extend_from_slice(k.as_str().as_bytes());
                        v.resp.extend_from_slice(b": ");
                        v.resp.extend_from_slice(val.as_bytes());
                        v.resp.extend_from_slice(b"\r\n");
                    }
                    v.resp.extend_from_slice(b"\r\n");
                }
                st.recv = None;
                st.resp_done = true;
            }
            Poll::Ready(Some(Err(_))) => return Err(Fail::Reset),
            Poll::Pending => break,
        }
    }
    if send_failed && !st.resp_done {
        return Err(Fail::Reset);
    }
    if st.resp_done && (!st.req_end || st.send.is_some()) {
        // Answered before the request was whole (or before its end went out): the rest of
        // it is not sent, the stream ends, and the engine's connection is not reused.
        v.retire = true;
        st.out.clear();
        st.out_len = 0;
        if let Some(mut s) = st.send.take() {
            s.send_reset(h2::Reason::NO_ERROR);
        }
        v.blocked_write = false;
    }
    if !st.resp_done {
        if let Some(send) = st.send.as_mut() {
            if let Poll::Ready(r) = send.poll_reset(cx) {
                let unprocessed =
                    matches!(r, Ok(h2::Reason::REFUSED_STREAM)) && st.no_response_yet();
                return Err(if unprocessed {
                    Fail::Refused
                } else {
                    Fail::Reset
                });
            }
        }
    }
    Ok(())
}

/// Writes the HTTP/1.1 head of a response; says how its body goes on.
fn response_head(
    parts: &::http::response::Parts,
    end: bool,
    head_only: bool,
    out: &mut Vec<u8>,
) -> RespBody {
    let status = parts.status.as_u16();
    out.extend_from_slice(format!("HTTP/1.1 {status:03} ").as_bytes());
    out.extend_from_slice(http::reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_body = head_only || status == 204 || status == 304;
    // A gRPC response's status comes in its trailers: it is always chunked here, whatever
    // length the server gave, or the trailers (and `grpc-status`) would be lost.
    let grpc = parts
        .headers
        .get(::http::header::CONTENT_TYPE)
        .is_some_and(|v| http::is_grpc_content_type(v.as_bytes()));
    let has_length = parts.headers.contains_key(::http::header::CONTENT_LENGTH) && !grpc;
    let body = if no_body || end {
        RespBody::Discard
    } else if has_length {
        RespBody::Raw
    } else {
        RespBody::Chunked
    };
    for (k, val) in &parts.headers {
        let name = k.as_str();
        if connection_specific(name) {
            continue;
        }
        if name == "content-length" && (end || grpc) && !no_body {
            continue; // replaced below: an empty body, or chunked for the trailers
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(val.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if end && !no_body {
        out.extend_from_slice(b"content-length: 0\r\n");
    } else if body == RespBody::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    body
}

impl<N: Net> Net for H2BackNet<'_, N> {
    type Conn = BConn<N::Conn>;

    fn connect(&mut self, now: Instant, remote: SocketAddrV4) -> Result<Self::Conn, NetError> {
        self.back.now = now;
        if !(self.back.is_h2c)(remote) {
            return self.inner.connect(now, remote).map(BConn::Tcp);
        }
        self.new_virt(remote, None)
    }

    fn connect_hop(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        hop: &HopTls,
    ) -> Option<Result<Self::Conn, NetError>> {
        self.back.now = now;
        Some(self.new_virt(remote, Some(hop)))
    }

    fn read(&mut self, c: Self::Conn, buf: &mut [u8]) -> Result<usize, NetError> {
        let id = match c {
            BConn::Tcp(t) => return self.inner.read(t, buf),
            BConn::Virtual(id) => id,
        };
        self.read_virt(id, buf)
    }

    fn write(&mut self, c: Self::Conn, data: &[u8]) -> Result<usize, NetError> {
        match c {
            BConn::Tcp(t) => self.inner.write(t, data),
            BConn::Virtual(id) => {
                let v = self.back.virts.get(&id).ok_or(NetError::Reset)?;
                if v.shut {
                    return Err(NetError::Closed);
                }
                if !v.connected {
                    return Err(NetError::WouldBlock);
                }
                if v.hop.as_ref().is_some_and(|h| h.endpoint.is_none()) {
                    return self.take_preamble(id, data);
                }
                let r = self.take_request(id, data);
                if let (Ok(n), Some(v)) = (r, self.back.virts.get_mut(&id)) {
                    // A copy for a replay, while the request is small enough.
                    if v.copy.as_ref().is_some_and(|c| c.len() + n > REPLAY_MAX) {
                        v.copy = None;
                    } else if let Some(c) = v.copy.as_mut() {
                        c.extend_from_slice(&data[..n]);
                    }
                }
                r
            }
        }
    }

    fn shutdown_write(&mut self, c: Self::Conn) {
        match c {
            BConn::Tcp(t) => self.inner.shutdown_write(t),
            BConn::Virtual(id) => {
                if let Some(v) = self.back.virts.get_mut(&id) {
                    v.shut = true;
                    self.back.events.push_back(NetEvent::Readable(c));
                }
            }
        }
    }

    fn close(&mut self, now: Instant, c: Self::Conn) {
        match c {
            BConn::Tcp(t) => self.inner.close(now, t),
            BConn::Virtual(id) => {
                self.end_virt(id);
                self.back.events.push_back(NetEvent::Closed(c));
            }
        }
    }

    fn abort(&mut self, c: Self::Conn) {
        match c {
            BConn::Tcp(t) => self.inner.abort(t),
            BConn::Virtual(id) => {
                self.end_virt(id);
                self.back.events.push_back(NetEvent::Closed(c));
            }
        }
    }

    fn poll_event(&mut self) -> Option<NetEvent<Self::Conn>> {
        loop {
            if let Some(e) = self.back.events.pop_front() {
                return Some(e);
            }
            if let Some(k) = self.back.dirty.pop() {
                self.pump(k);
                continue;
            }
            let e = self.inner.poll_event()?;
            let c = e.conn();
            let k = if self.back.real_of.is_empty() {
                None
            } else {
                self.back.real_of.get(&c).copied()
            };
            let Some(k) = k else {
                return Some(match e {
                    NetEvent::Accepted {
                        conn,
                        local,
                        remote,
                    } => NetEvent::Accepted {
                        conn: BConn::Tcp(conn),
                        local,
                        remote,
                    },
                    NetEvent::Connected(c) => NetEvent::Connected(BConn::Tcp(c)),
                    NetEvent::Readable(c) => NetEvent::Readable(BConn::Tcp(c)),
                    NetEvent::Writable(c) => NetEvent::Writable(BConn::Tcp(c)),
                    NetEvent::Closed(c) => NetEvent::Closed(BConn::Tcp(c)),
                    NetEvent::Reset(c) => NetEvent::Reset(BConn::Tcp(c)),
                });
            };
            match e {
                NetEvent::Connected(_) => {
                    let back = &mut *self.back;
                    let Some((_, r)) = back.reals.get_mut(&k) else {
                        continue;
                    };
                    r.tcp_up = true;
                    match r.leg.as_mut() {
                        // A hop is ready once its TLS handshake is done (in `pump`).
                        Some(leg) => leg.connected = true,
                        None => back.ready(k),
                    }
                    self.pump(k);
                }
                NetEvent::Readable(_) | NetEvent::Writable(_) => self.pump(k),
                NetEvent::Closed(_) | NetEvent::Reset(_) => {
                    let failed = self
                        .back
                        .reals
                        .get(&k)
                        .is_some_and(|(_, r)| !r.connected || !r.virts.is_empty());
                    if failed || matches!(e, NetEvent::Reset(_)) {
                        self.back
                            .stats
                            .connection_errors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.back.drop_real(k);
                }
                NetEvent::Accepted { .. } => {}
            }
        }
    }

    fn may_have_input(&self, c: Self::Conn) -> bool {
        match c {
            BConn::Tcp(t) => self.inner.may_have_input(t),
            BConn::Virtual(id) => self
                .back
                .virts
                .get(&id)
                .is_none_or(|v| v.resp.len() > v.resp_pos || v.retire || v.shut),
        }
    }

    fn reset_on_reuse_is_stale(&self, c: Self::Conn) -> bool {
        match c {
            BConn::Tcp(t) => self.inner.reset_on_reuse_is_stale(t),
            // A stream reset says nothing of what the server did; the back itself sends
            // again what the server refused unprocessed (REFUSED_STREAM).
            BConn::Virtual(_) => false,
        }
    }

    fn addrs(&self, c: Self::Conn) -> Option<(SocketAddrV4, SocketAddrV4)> {
        match c {
            BConn::Tcp(t) => self.inner.addrs(t),
            BConn::Virtual(id) => {
                let v = self.back.virts.get(&id)?;
                let real = v
                    .real
                    .or_else(|| self.back.by_endpoint.get(&v.target())?.first().copied())?;
                self.inner.addrs(self.back.reals.get(&real)?.0)
            }
        }
    }

    fn tcp_info(&self, c: Self::Conn) -> Option<TcpInfo> {
        match c {
            BConn::Tcp(t) => self.inner.tcp_info(t),
            BConn::Virtual(id) => {
                let v = self.back.virts.get(&id)?;
                let real = v
                    .real
                    .or_else(|| self.back.by_endpoint.get(&v.target())?.first().copied())?;
                self.inner.tcp_info(self.back.reals.get(&real)?.0)
            }
        }
    }
}

impl<N: Net> H2BackNet<'_, N> {
    /// A virtual connection to an h2c endpoint, or to a peer gateway (`hop`).
    fn new_virt(
        &mut self,
        remote: SocketAddrV4,
        hop: Option<&HopTls>,
    ) -> Result<BConn<N::Conn>, NetError> {
        let k = self.back.real_for(self.inner, remote, hop)?;
        if let Some((_, r)) = self.back.reals.get_mut(&k) {
            // A connect is a use: an idle connection's clock starts again (a peer's
            // `min_idle` warm-up keeps the shared hop open this way).
            if r.idle_since.is_some() {
                r.idle_since = Some(self.back.now);
            }
        }
        let id = self.back.next_id;
        self.back.next_id += 1;
        self.back.virts.insert(
            id,
            Virt {
                endpoint: remote,
                hop: hop.map(|h| {
                    Box::new(VirtHop {
                        tls: h.clone(),
                        endpoint: None,
                        preamble: Vec::new(),
                    })
                }),
                real: None,
                connected: false,
                req: Req::Head(Vec::new()),
                st: None,
                resp: Vec::new(),
                resp_pos: 0,
                retire: false,
                shut: false,
                blocked_write: false,
                copy: Some(Vec::new()),
                replayed: false,
            },
        );
        let connected = self.back.reals.get(&k).is_some_and(|(_, r)| r.connected);
        if connected {
            // Established already: the engine's connect completes at once.
            if let Some(v) = self.back.virts.get_mut(&id) {
                v.connected = true;
            }
            self.back
                .events
                .push_back(NetEvent::Connected(BConn::Virtual(id)));
        } else {
            // Bound until the real connection completes (or fails: then this connect did).
            self.back.bind(id, k);
        }
        Ok(BConn::Virtual(id))
    }

    fn read_virt(&mut self, id: u64, buf: &mut [u8]) -> Result<usize, NetError> {
        let v = self.back.virts.get_mut(&id).ok_or(NetError::Reset)?;
        let avail = v.resp.len() - v.resp_pos;
        if avail > 0 {
            let n = avail.min(buf.len());
            buf[..n].copy_from_slice(&v.resp[v.resp_pos..v.resp_pos + n]);
            v.resp_pos += n;
            if v.resp_pos == v.resp.len() {
                if v.resp.capacity() > 16 << 10 {
                    v.resp = Vec::new();
                } else {
                    v.resp.clear();
                }
                v.resp_pos = 0;
            } else if v.resp_pos >= v.resp.len() / 2 {
                v.resp.drain(..v.resp_pos);
                v.resp_pos = 0;
            }
            if let Some(k) = v.real {
                if v.st.as_ref().is_some_and(|s| s.recv.is_some()) {
                    // Room again: take more of the body.
                    self.back.mark(k);
                }
            }
            return Ok(n);
        }
        let idle = v.st.is_none();
        if idle && (v.retire || v.shut) {
            return Ok(0);
        }
        Err(NetError::WouldBlock)
    }

    /// A hop's `XM/1` preamble, written once before its first request: the endpoint it names
    /// goes with each stream (`HOP_ENDPOINT`), where gateway B checks it.
    fn take_preamble(&mut self, id: u64, data: &[u8]) -> Result<usize, NetError> {
        let v = self.back.virts.get_mut(&id).ok_or(NetError::Reset)?;
        let h = v.hop.as_mut().ok_or(NetError::Reset)?;
        let room = preamble::MAX.saturating_sub(h.preamble.len()).max(1);
        let take = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1).min(room),
            None => data.len().min(room),
        };
        h.preamble.extend_from_slice(&data[..take]);
        match preamble::decode(&h.preamble) {
            Ok(None) => Ok(take),
            Ok(Some((ep, true, _))) => {
                h.endpoint = Some(ep);
                h.preamble = Vec::new();
                Ok(take)
            }
            // The engine writes a good `http` one; anything else is not for this hop.
            _ => {
                self.back.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                self.back.fail_virt(id);
                Err(NetError::Reset)
            }
        }
    }

    /// The engine let go of a virtual connection: its unfinished stream is cancelled.
    fn end_virt(&mut self, id: u64) {
        let Some(mut v) = self.back.virts.remove(&id) else {
            return;
        };
        if let Some(st) = v.st.as_mut() {
            if !st.resp_done {
                if let Some(s) = st.send.as_mut() {
                    s.send_reset(h2::Reason::CANCEL);
                }
            }
        }
        if let Some(k) = v.real {
            if let Some((_, r)) = self.back.reals.get_mut(&k) {
                r.virts.retain(|x| *x != id);
            }
            self.back.mark(k);
        }
        // Dropping the stream's handles lets the `h2` crate reset what is unfinished.
        drop(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memnet::{EngineClose, MemConn, MemNet};

    const EP: &str = "10.0.0.9:50051";

    fn ep() -> SocketAddrV4 {
        EP.parse().unwrap()
    }

    fn back() -> H2Back<MemConn> {
        H2Back::new(
            H2BackConfig::default(),
            |a| a.port() == 50051,
            Arc::default(),
        )
    }

    type Respond = h2::server::SendResponse<Bytes>;

    /// The server: the `h2` crate's server side over the far end of a `MemNet` connection.
    struct Server {
        c: MemConn,
        io: BufIo,
        hs: Option<h2::server::Handshake<BufIo, Bytes>>,
        conn: Option<h2::server::Connection<BufIo, Bytes>>,
        /// Requests accepted: head, body so far, whether it ended, trailers, the responder.
        reqs: Vec<ServerReq>,
        /// Reads no request body (its window stays shut once used).
        hold_bodies: bool,
        /// Every byte the back sent it.
        raw: Vec<u8>,
    }

    struct ServerReq {
        head: ::http::request::Parts,
        recv: Option<h2::RecvStream>,
        body: Vec<u8>,
        trailers: Option<::http::HeaderMap>,
        ended: bool,
        respond: Option<Respond>,
    }

    impl Server {
        fn new(c: MemConn, max_streams: u32) -> Self {
            let io = BufIo::new(1 << 20);
            let hs = h2::server::Builder::new()
                .max_concurrent_streams(max_streams)
                .handshake(io.clone());
            Server {
                c,
                io,
                hs: Some(hs),
                conn: None,
                reqs: Vec::new(),
                hold_bodies: false,
                raw: Vec::new(),
            }
        }

        /// One turn; `true` when bytes moved either way.
        fn turn(&mut self, mem: &mut MemNet) -> bool {
            let mut cx = Context::from_waker(Waker::noop());
            let bytes = mem.peer_take(self.c);
            let took = !bytes.is_empty();
            self.raw.extend_from_slice(&bytes);
            self.io.lock().rx.extend_from_slice(&bytes);
            if let Some(hs) = self.hs.as_mut() {
                if let Poll::Ready(r) = Pin::new(hs).poll(&mut cx) {
                    self.conn = Some(r.expect("server handshake"));
                    self.hs = None;
                }
            }
            if let Some(conn) = self.conn.as_mut() {
                while let Poll::Ready(Some(Ok((req, respond)))) = conn.poll_accept(&mut cx) {
                    let (head, recv) = req.into_parts();
                    self.reqs.push(ServerReq {
                        head,
                        recv: Some(recv),
                        body: Vec::new(),
                        trailers: None,
                        ended: false,
                        respond: Some(respond),
                    });
                }
            }
            for r in self.reqs.iter_mut().filter(|_| !self.hold_bodies) {
                while let Some(recv) = r.recv.as_mut() {
                    match recv.poll_data(&mut cx) {
                        Poll::Ready(Some(Ok(d))) => {
                            let _ = recv.flow_control().release_capacity(d.len());
                            r.body.extend_from_slice(&d);
                        }
                        Poll::Ready(None) => {
                            if let Poll::Ready(Ok(t)) = recv.poll_trailers(&mut cx) {
                                r.trailers = t;
                                r.ended = true;
                                r.recv = None;
                            }
                            break;
                        }
                        _ => break,
                    }
                }
            }
            if let Some(conn) = self.conn.as_mut() {
                let _ = conn.poll_accept(&mut cx);
            }
            let tx = std::mem::take(&mut self.io.lock().tx);
            if !tx.is_empty() {
                mem.peer_send(self.c, &tx);
            }
            took || !tx.is_empty()
        }
    }

    struct Rig {
        mem: MemNet,
        back: H2Back<MemConn>,
        now: Instant,
        servers: Vec<Server>,
        /// Bytes each virtual connection read, and the events it got.
        got: FxHashMap<BConn<MemConn>, Vec<u8>>,
        events: Vec<NetEvent<BConn<MemConn>>>,
        /// The engine reads what is readable (else it leaves it, as a slow client would).
        reading: bool,
    }

    impl Rig {
        fn new() -> Self {
            Rig {
                mem: MemNet::new([10, 0, 0, 1].into()),
                back: back(),
                now: Instant::from_micros(0),
                servers: Vec::new(),
                got: FxHashMap::default(),
                events: Vec::new(),
                reading: true,
            }
        }

        fn net(&mut self) -> H2BackNet<'_, MemNet> {
            H2BackNet::new(&mut self.mem, &mut self.back, self.now)
        }

        fn connect(&mut self) -> BConn<MemConn> {
            let now = self.now;
            self.net().connect(now, ep()).expect("connect")
        }

        /// A virtual connection on a real one the server (of 100 streams) accepted, with
        /// `GET /` written on it.
        fn get(&mut self) -> BConn<MemConn> {
            let v = self.connect();
            self.accept(100);
            self.settle();
            self.write(v, b"GET / HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
            v
        }

        /// Accepts the pending real connections (servers of `max_streams`).
        fn accept(&mut self, max_streams: u32) {
            for (c, _) in self.mem.pending_connects() {
                self.mem.peer_accept(c);
                self.servers.push(Server::new(c, max_streams));
            }
        }

        /// Rounds of events, reads, flushes and server turns until nothing moves.
        fn settle(&mut self) {
            for _ in 0..64 {
                let mut any = false;
                let mut net = H2BackNet::new(&mut self.mem, &mut self.back, self.now);
                while let Some(e) = net.poll_event() {
                    any = true;
                    if let (NetEvent::Readable(c), true) = (e, self.reading) {
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = net.read(c, &mut buf) {
                            self.got.entry(c).or_default().extend_from_slice(&buf[..n]);
                        }
                    }
                    self.events.push(e);
                }
                net.flush();
                for s in &mut self.servers {
                    any |= s.turn(&mut self.mem);
                }
                if !any && !self.back.has_pending() {
                    break;
                }
            }
        }

        /// Writes all of `data` on `v` in pieces of at most `piece` bytes.
        fn write(&mut self, v: BConn<MemConn>, data: &[u8], piece: usize) {
            let mut at = 0;
            let mut stuck = 0;
            while at < data.len() {
                let end = (at + piece).min(data.len());
                let r = self.net().write(v, &data[at..end]);
                match r {
                    Ok(n) => at += n,
                    Err(NetError::WouldBlock) => {
                        stuck += 1;
                        assert!(stuck < 1000, "stuck at {at}");
                    }
                    Err(e) => panic!("write: {e:?}"),
                }
                self.settle();
            }
            self.settle();
        }

        /// Reads everything `v` has now.
        fn read_all(&mut self, v: BConn<MemConn>) {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = self.net().read(v, &mut buf) {
                self.got.entry(v).or_default().extend_from_slice(&buf[..n]);
            }
        }

        fn text(&self, v: BConn<MemConn>) -> String {
            String::from_utf8_lossy(self.got.get(&v).map_or(&[][..], |b| b)).into_owned()
        }

        fn respond(
            &mut self,
            i: usize,
            resp: ::http::Response<()>,
            end: bool,
        ) -> Option<h2::SendStream<Bytes>> {
            let r = self.servers[0].reqs[i].respond.as_mut().expect("respond");
            let s = r.send_response(resp, end).expect("send_response");
            (!end).then_some(s)
        }
    }

    fn ok() -> ::http::Response<()> {
        ::http::Response::builder().status(200).body(()).unwrap()
    }

    #[test]
    fn a_request_with_a_body_and_its_response_with_trailers_across_every_split() {
        let req = b"POST /svc/M?x=1 HTTP/1.1\r\nHost: api.mesh\r\nConnection: keep-alive, X-Hop\r\nx-hop: 1\r\nte: trailers\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n";
        for piece in 1..=req.len() {
            let mut rig = Rig::new();
            let v = rig.connect();
            rig.accept(100);
            rig.settle();
            assert!(
                rig.events.contains(&NetEvent::Connected(v)),
                "{:?}",
                rig.events
            );
            rig.write(v, req, piece);
            let s = &rig.servers[0].reqs[0];
            assert!(s.ended, "piece {piece}");
            assert_eq!(s.head.method, "POST");
            assert_eq!(s.head.uri.to_string(), "http://api.mesh/svc/M?x=1");
            assert!(s.head.headers.get("connection").is_none());
            assert!(s.head.headers.get("x-hop").is_none(), "named by Connection");
            assert!(s.head.headers.get("transfer-encoding").is_none());
            assert!(s.head.headers.get("host").is_none(), "became :authority");
            assert_eq!(s.head.headers["te"], "trailers");
            assert_eq!(s.head.headers["content-type"], "text/plain");
            assert_eq!(s.body, b"hello world");
            assert_eq!(s.trailers.as_ref().unwrap()["x-sum"], "11");
            if piece > 40 {
                continue; // the response side once per few splits is enough
            }
            let mut send = rig
                .respond(
                    0,
                    ::http::Response::builder()
                        .status(200)
                        .header("x-a", "b")
                        .body(())
                        .unwrap(),
                    false,
                )
                .unwrap();
            send.send_data(Bytes::from_static(b"abc"), false).unwrap();
            let mut t = ::http::HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            send.send_trailers(t).unwrap();
            rig.settle();
            assert_eq!(
                rig.text(v),
                "HTTP/1.1 200 OK\r\nx-a: b\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
            );
        }
    }

    #[test]
    fn trailers_only_and_content_length_responses() {
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(
            v,
            b"POST /p.S/M HTTP/1.1\r\nhost: g\r\ncontent-length: 2\r\n\r\nhi",
            1000,
        );
        assert_eq!(rig.servers[0].reqs[0].body, b"hi");
        // gRPC's trailers-only: HEADERS that end the stream.
        let resp = ::http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        rig.respond(0, resp, true);
        rig.settle();
        assert_eq!(
            rig.text(v),
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ncontent-length: 0\r\n\r\n"
        );
        // The next request on the same virtual connection is a new stream, on the same real
        // connection.
        rig.got.clear();
        rig.write(v, b"GET /f HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        assert_eq!(rig.servers[0].reqs.len(), 2);
        assert!(rig.servers[0].reqs[1].ended);
        let mut send = rig
            .respond(
                1,
                ::http::Response::builder()
                    .status(200)
                    .header("content-length", "4")
                    .body(())
                    .unwrap(),
                false,
            )
            .unwrap();
        send.send_data(Bytes::from_static(b"data"), true).unwrap();
        rig.settle();
        assert_eq!(
            rig.text(v),
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndata"
        );
        assert_eq!(rig.mem.connects_to(ep()).len(), 1);
        assert_eq!(rig.back.stats.streams.load(Ordering::Relaxed), 2);
        assert_eq!(rig.back.stats.connections.load(Ordering::Relaxed), 1);
        // A gRPC response with a content-length still has its status in the trailers: it
        // comes out chunked, trailers included.
        rig.got.clear();
        rig.write(v, b"GET /g HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        let mut send = rig
            .respond(
                2,
                ::http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("content-length", "5")
                    .body(())
                    .unwrap(),
                false,
            )
            .unwrap();
        send.send_data(Bytes::from_static(b"\0\0\0\0\0"), false)
            .unwrap();
        let mut trailers = ::http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        send.send_trailers(trailers).unwrap();
        rig.settle();
        assert_eq!(
            rig.text(v),
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\n\0\0\0\0\0\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );
    }

    #[test]
    fn two_virtual_connections_share_one_real_connection() {
        let mut rig = Rig::new();
        let a = rig.connect();
        let b = rig.connect();
        rig.accept(100);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Connected(a)));
        assert!(rig.events.contains(&NetEvent::Connected(b)));
        // A third connect to an established one completes at once.
        let c = rig.connect();
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Connected(c)));
        rig.write(a, b"GET /a HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        rig.write(b, b"GET /b HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        assert_eq!(rig.mem.connects_to(ep()).len(), 1, "one real connection");
        assert_eq!(rig.servers[0].reqs.len(), 2);
        // Answered in the other order.
        for (i, body) in [(1, "B"), (0, "A")] {
            let resp = ::http::Response::builder()
                .status(200)
                .header("content-length", "1")
                .body(())
                .unwrap();
            let mut s = rig.respond(i, resp, false).unwrap();
            s.send_data(Bytes::from(body), true).unwrap();
        }
        rig.settle();
        assert!(rig.text(a).ends_with("\r\n\r\nA"), "{}", rig.text(a));
        assert!(rig.text(b).ends_with("\r\n\r\nB"), "{}", rig.text(b));
    }

    /// The kind of each field representation in an HPACK block (RFC 7541 §6).
    fn representations(mut b: &[u8]) -> Vec<&'static str> {
        fn int(b: &mut &[u8], prefix: u32) -> usize {
            let mask = (1usize << prefix) - 1;
            let mut n = b[0] as usize & mask;
            *b = &b[1..];
            if n == mask {
                let mut shift = 0;
                loop {
                    let x = b[0];
                    *b = &b[1..];
                    n += ((x & 0x7f) as usize) << shift;
                    shift += 7;
                    if x & 0x80 == 0 {
                        break;
                    }
                }
            }
            n
        }
        fn literal(b: &mut &[u8], prefix: u32) {
            if int(b, prefix) == 0 {
                let len = int(b, 7);
                *b = &b[len..]; // the name
            }
            let len = int(b, 7);
            *b = &b[len..]; // the value
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let first = b[0];
            out.push(if first & 0x80 != 0 {
                int(&mut b, 7);
                "indexed"
            } else if first & 0x40 != 0 {
                literal(&mut b, 6);
                "incremental"
            } else if first & 0x20 != 0 {
                int(&mut b, 5);
                "size update"
            } else if first & 0x10 != 0 {
                literal(&mut b, 4);
                "never indexed"
            } else {
                literal(&mut b, 4);
                "not indexed"
            });
        }
        out
    }

    #[test]
    fn fields_unique_to_a_request_are_never_indexed_and_others_are() {
        let mut rig = Rig::new();
        let ids = [
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210",
        ];
        for id in ids {
            let v = rig.connect();
            rig.accept(100);
            rig.settle();
            let head = format!(
                "GET / HTTP/1.1\r\nhost: g\r\nx-a: b\r\nX-Request-Id: {id}\r\n\
                 Traceparent: 00-{id}-0123456789abcdef-01\r\n\r\n"
            );
            rig.write(v, head.as_bytes(), 1000);
        }
        let s = &rig.servers[0];
        assert_eq!(s.reqs.len(), 2, "both on one connection");
        for (r, id) in s.reqs.iter().zip(ids) {
            assert_eq!(r.head.headers["x-request-id"], id);
            let tp = format!("00-{id}-0123456789abcdef-01");
            assert_eq!(r.head.headers["traceparent"], tp.as_str());
        }
        // After the preface: the frames; the HEADERS frames' blocks, in order.
        let blocks: Vec<Vec<&str>> = frames(&s.raw[24..])
            .into_iter()
            .filter(|(kind, _, _)| *kind == 1)
            .map(|(_, _, block)| representations(block))
            .collect();
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        for b in &blocks {
            // The pseudo-fields, then the fields in order: x-a, x-request-id, traceparent.
            let never = b.iter().filter(|k| **k == "never indexed").count();
            assert_eq!(never, 2, "{b:?}");
            assert_eq!(b[b.len() - 2..], ["never indexed"; 2], "{b:?}");
        }
        // The rest still goes through the table: the second request refers to the entries
        // the first one made (`:authority`, `x-a`).
        let made = blocks[0].iter().filter(|k| **k == "incremental").count();
        assert!(made >= 2, "{:?}", blocks[0]);
        assert!(!blocks[1].contains(&"incremental"), "{:?}", blocks[1]);
    }

    #[test]
    fn a_full_connection_makes_another() {
        let mut rig = Rig::new();
        let a = rig.connect();
        rig.accept(1); // the server takes one stream at a time
        rig.settle();
        rig.write(a, b"GET /a HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        let b = rig.connect();
        rig.accept(1);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Connected(b)));
        rig.write(b, b"GET /b HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        assert_eq!(rig.mem.connects_to(ep()).len(), 2);
        assert_eq!(rig.servers[1].reqs.len(), 1);
    }

    #[test]
    fn connections_to_an_endpoint_are_capped_and_the_rest_wait_for_a_slot() {
        let mut rig = Rig::new();
        let max = rig.back.cfg.max_connections;
        let mut vs = Vec::new();
        for i in 0..max + 2 {
            let v = rig.connect();
            rig.accept(1); // one stream at a time per connection
            rig.settle();
            rig.write(
                v,
                format!("GET /{i} HTTP/1.1\r\nhost: g\r\n\r\n").as_bytes(),
                1000,
            );
            vs.push(v);
        }
        assert_eq!(
            rig.mem.connects_to(ep()).len(),
            max,
            "no connection past the cap"
        );
        let served: usize = rig.servers.iter().map(|s| s.reqs.len()).sum();
        assert_eq!(served, max, "one stream per connection; two wait");
        // The first answer frees its connection's slot: a waiting stream opens there.
        rig.respond(0, ok(), true);
        rig.settle();
        assert!(rig.text(vs[0]).starts_with("HTTP/1.1 200 OK\r\n"));
        assert_eq!(
            rig.servers[0].reqs.len(),
            2,
            "a waiting stream took the slot"
        );
        assert!(!rig.events.iter().any(|e| matches!(e, NetEvent::Reset(_))));
    }

    #[test]
    fn a_flood_of_interim_responses_resets_the_stream() {
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(v, b"GET /i HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        let r = rig.servers[0].reqs[0].respond.as_mut().unwrap();
        for _ in 0..50 {
            let cont = ::http::Response::builder().status(100).body(()).unwrap();
            let _ = r.send_informational(cont);
        }
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(v)), "{:?}", rig.events);
        assert_eq!(rig.back.stats.bad_responses.load(Ordering::Relaxed), 1);
        // What reached the engine is bounded: at most MAX_INTERIM interim heads.
        assert!(rig.text(v).matches("HTTP/1.1 100").count() <= usize::from(MAX_INTERIM));
    }

    #[test]
    fn a_reset_stream_resets_its_virtual_connection_only() {
        let mut rig = Rig::new();
        let a = rig.connect();
        let b = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(a, b"GET /a HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        rig.write(b, b"GET /b HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        rig.servers[0].reqs[0]
            .respond
            .as_mut()
            .unwrap()
            .send_reset(h2::Reason::INTERNAL_ERROR);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(a)), "{:?}", rig.events);
        assert!(!rig.events.contains(&NetEvent::Reset(b)));
        assert_eq!(rig.net().write(a, b"x"), Err(NetError::Reset));
        assert_eq!(rig.back.stats.streams_reset.load(Ordering::Relaxed), 1);
        // The other stream goes on.
        rig.respond(1, ok(), true);
        rig.settle();
        assert!(
            rig.text(b).starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            rig.text(b)
        );
    }

    #[test]
    fn a_failed_connect_and_a_lost_connection_reset_their_virtual_connections() {
        let mut rig = Rig::new();
        let a = rig.connect();
        let (c, _) = rig.mem.pending_connects()[0];
        rig.mem.peer_reset(c);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(a)));
        assert!(!rig.events.contains(&NetEvent::Connected(a)));
        // A new connect makes a new real connection; the server then goes away mid-stream.
        let b = rig.get();
        let c = rig.servers[0].c;
        rig.mem.peer_reset(c);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(b)));
        assert_eq!(rig.back.connections(), 0);
    }

    #[test]
    fn a_connection_not_ready_in_time_is_given_up_and_its_connects_fail() {
        let mut rig = Rig::new();
        let a = rig.connect();
        let (c, _) = rig.mem.pending_connects()[0];
        rig.settle();
        // The server never completes the handshake.
        let due = rig.back.poll_timeout().expect("a connect deadline");
        assert_eq!(due, rig.now + CONNECT_TIMEOUT);
        rig.now = due;
        let now = rig.now;
        rig.net().handle_timeout(now);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(a)));
        assert_eq!(rig.back.connections(), 0);
        assert!(rig.mem.closed(c).is_some());
        assert_eq!(rig.back.stats.connection_errors.load(Ordering::Relaxed), 1);
        assert_eq!(rig.back.stats.open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_silent_connection_gets_a_ping_and_is_given_up_when_it_goes_unanswered() {
        let mut rig = Rig::new();
        let a = rig.get();
        rig.settle();
        // The server takes its time over the response but answers the PING.
        let due = rig.back.poll_timeout().expect("a ping deadline");
        assert_eq!(due, rig.now + PING_AFTER);
        rig.now = due;
        let now = rig.now;
        rig.net().handle_timeout(now);
        rig.settle();
        assert_eq!(rig.back.connections(), 1);
        let due = rig.back.poll_timeout().expect("the next ping deadline");
        assert_eq!(due, rig.now + PING_AFTER, "the answer counts as life");
        // Then it falls silent (no longer driven): the next PING goes unanswered.
        rig.now = due;
        let now = rig.now;
        rig.net().handle_timeout(now);
        rig.net().flush();
        assert_eq!(rig.back.poll_timeout(), Some(now + PING_TIMEOUT));
        rig.now = now + PING_TIMEOUT;
        let now = rig.now;
        rig.net().handle_timeout(now);
        let mut net = rig.net();
        let mut events = Vec::new();
        while let Some(e) = net.poll_event() {
            events.push(e);
        }
        assert!(events.contains(&NetEvent::Reset(a)), "{events:?}");
        assert_eq!(rig.back.connections(), 0);
        assert_eq!(rig.back.stats.ping_timeouts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn idle_real_connections_close_after_the_idle_timeout() {
        let mut rig = Rig::new();
        rig.get();
        rig.respond(0, ok(), true);
        rig.settle();
        let due = rig.back.poll_timeout().expect("idle deadline");
        assert_eq!(due, rig.now + Duration::from_secs(30));
        rig.now = due;
        let now = rig.now;
        // The server's PING arrives in the same round, not read yet: a close with unread
        // input would be a reset on a real transport, so it is read and dropped first.
        let c = rig.servers[0].c;
        rig.mem
            .peer_send(c, &[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        rig.net().handle_timeout(now);
        assert_eq!(rig.back.connections(), 0);
        assert_eq!(rig.mem.unread(c), 0);
        assert_eq!(rig.mem.closed(c), Some(EngineClose::Close));
        // RFC 9113 §6.8: GOAWAY(NO_ERROR) before the FIN, and nothing else.
        assert_eq!(frames(&rig.mem.peer_take(c)), [GOAWAY_NO_ERROR]);
        assert_eq!(rig.back.stats.idle_closed.load(Ordering::Relaxed), 1);
    }

    /// GOAWAY on stream 0, last stream 0 (a client has no streams of the server's), NO_ERROR.
    const GOAWAY_NO_ERROR: (u8, u32, &[u8]) = (7, 0, &[0; 8]);

    /// The HTTP/2 frames in `bytes`: type, stream, payload (RFC 9113 §4.1).
    fn frames(bytes: &[u8]) -> Vec<(u8, u32, &[u8])> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            assert!(rest.len() >= 9 + len, "a cut frame in {bytes:?}");
            out.push((rest[3], stream, &rest[9..9 + len]));
            rest = &rest[9 + len..];
        }
        assert!(rest.is_empty(), "a cut frame header in {bytes:?}");
        out
    }

    #[test]
    fn a_goodbye_the_transport_cannot_take_whole_is_a_reset_not_a_cut_frame() {
        let mut rig = Rig::new();
        rig.get();
        rig.settle();
        let c = rig.servers[0].c;
        // Room for 5 bytes: part of the RST_STREAM's 13.
        rig.mem.window = 5;
        rig.net().close_all();
        assert_eq!(rig.back.connections(), 0);
        assert_eq!(rig.mem.closed(c), Some(EngineClose::Abort));
    }

    #[test]
    fn the_end_of_a_drain_cancels_open_streams_and_closes_every_connection_with_goaway() {
        let mut rig = Rig::new();
        // One stream waits for its answer.
        let a = rig.get();
        rig.settle();
        assert_eq!(rig.servers[0].reqs.len(), 1);
        let c = rig.servers[0].c;
        rig.net().close_all();
        assert_eq!(rig.back.connections(), 0);
        assert_eq!(rig.mem.closed(c), Some(EngineClose::Close));
        // Its stream is cancelled, then the connection says goodbye (RFC 9113 §6.8).
        let bytes = rig.mem.peer_take(c);
        let frames = frames(&bytes);
        let cancel: (u8, u32, &[u8]) = (3, 1, &[0, 0, 0, 8]);
        assert_eq!(frames, [cancel, GOAWAY_NO_ERROR]);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(a)), "{:?}", rig.events);
        assert_eq!(rig.net().write(a, b"x"), Err(NetError::Reset));
    }

    #[test]
    fn a_large_upload_and_a_large_download_are_bounded_and_whole() {
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.settle();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut req = format!(
            "PUT /up HTTP/1.1\r\nhost: g\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        rig.write(v, &req, 16 << 10);
        assert!(rig.servers[0].reqs[0].ended);
        assert!(
            rig.servers[0].reqs[0].body == body,
            "the upload arrived whole"
        );
        // 300 kB back to an engine that does not read: the stream's buffer stays bounded.
        rig.reading = false;
        let resp = ::http::Response::builder().status(200).body(()).unwrap();
        let mut send = rig.respond(0, resp, false).unwrap();
        send.send_data(Bytes::from(body.clone()), true).unwrap();
        rig.settle();
        let held = {
            let (_, virt) = rig
                .back
                .virts
                .iter()
                .next()
                .expect("the virtual connection");
            virt.resp.len() - virt.resp_pos
        };
        assert!(held <= RESP_MAX + (16 << 10) + 64, "{held} bytes held");
        // Reading lets the rest come.
        for _ in 0..100 {
            rig.read_all(v);
            rig.settle();
        }
        let text = rig.got.remove(&v).unwrap_or_default();
        let head_end = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut st = Chunk::Size(0, false);
        let (n, got, done) = dechunk(&mut st, &text[head_end..], &mut Vec::new()).unwrap();
        assert!(done && n == text.len() - head_end);
        assert!(
            got == body,
            "the download arrived whole ({} bytes)",
            got.len()
        );
    }

    #[test]
    fn a_goaway_replays_the_unprocessed_stream_and_the_next_connect_opens_another_connection() {
        let mut rig = Rig::new();
        let a = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(a, b"GET /a HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        // A graceful GOAWAY, last stream 0: stream 1 was not processed, and goes again on a
        // new connection; the engine sees nothing of it.
        let c = rig.servers[0].c;
        rig.mem
            .peer_send(c, &[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rig.settle();
        rig.accept(100);
        rig.settle();
        assert!(
            !rig.events.contains(&NetEvent::Reset(a)),
            "{:?}",
            rig.events
        );
        assert_eq!(rig.mem.connects_to(ep()).len(), 2, "a new real connection");
        assert_eq!(rig.servers[1].reqs.len(), 1, "the request went again");
        assert_eq!(rig.back.stats.streams_refused.load(Ordering::Relaxed), 1);
        let r = rig.servers[1].reqs[0].respond.as_mut().expect("respond");
        r.send_response(ok(), true).expect("send_response");
        rig.settle();
        rig.read_all(a);
        assert!(rig.text(a).starts_with("HTTP/1.1 200"), "{}", rig.text(a));
        // A GOAWAY for an error is no proof: the stream is reset, not replayed.
        let b = rig.connect();
        rig.settle();
        rig.write(
            b,
            b"POST /b HTTP/1.1\r\nhost: g\r\ncontent-length: 0\r\n\r\n",
            1000,
        );
        rig.settle();
        let c = rig.servers[1].c;
        rig.mem
            .peer_send(c, &[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(b)), "{:?}", rig.events);
        assert_eq!(rig.back.stats.streams_refused.load(Ordering::Relaxed), 1);
        let b = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(b, b"GET /b HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        assert_eq!(rig.mem.connects_to(ep()).len(), 3, "a new real connection");
        assert_eq!(rig.servers[2].reqs.len(), 1);
    }

    #[test]
    fn a_virtual_connection_the_engine_closes_mid_response_cancels_its_stream() {
        let mut rig = Rig::new();
        let a = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(a, b"GET /a HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        let now = rig.now;
        rig.net().abort(a);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Closed(a)));
        let mut cx = Context::from_waker(Waker::noop());
        let r = rig.servers[0].reqs[0].respond.as_mut().unwrap();
        assert!(
            r.poll_reset(&mut cx).is_ready(),
            "the server saw the stream reset"
        );
        let _ = now;
        // The real connection stays for the next one.
        assert_eq!(rig.back.connections(), 1);
    }

    #[test]
    fn other_endpoints_pass_through() {
        let mut rig = Rig::new();
        let now = rig.now;
        let c = rig
            .net()
            .connect(now, "10.0.0.9:80".parse().unwrap())
            .unwrap();
        assert!(matches!(c, BConn::Tcp(_)));
        assert_eq!(rig.back.connections(), 0);
    }

    #[test]
    fn an_empty_post_gets_a_trailers_only_response() {
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(
            v,
            b"POST /grpc HTTP/1.1\r\nhost: py.test\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n",
            1000,
        );
        assert!(rig.servers[0].reqs[0].ended);
        let resp = ::http::Response::builder()
            .status(200)
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        rig.respond(0, resp, true);
        rig.settle();
        assert_eq!(
            rig.text(v),
            "HTTP/1.1 200 OK\r\ngrpc-status: 14\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_100_continue_is_passed_on_and_other_interim_responses_are_not() {
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(
            v,
            b"POST /u HTTP/1.1\r\nhost: g\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
            1000,
        );
        assert_eq!(
            rig.servers[0].reqs[0].head.headers["expect"],
            "100-continue"
        );
        let r = rig.servers[0].reqs[0].respond.as_mut().unwrap();
        for status in [100, 103] {
            let interim = ::http::Response::builder().status(status).body(()).unwrap();
            r.send_informational(interim).unwrap();
        }
        rig.settle();
        assert_eq!(rig.text(v), "HTTP/1.1 100 Continue\r\n\r\n");
        rig.write(v, b"hi", 1000);
        assert_eq!(rig.servers[0].reqs[0].body, b"hi");
        rig.respond(0, ok(), true);
        rig.settle();
        assert_eq!(
            rig.text(v),
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_refused_stream_goes_again_once_and_the_engine_sees_only_the_response() {
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(
            v,
            b"POST /a HTTP/1.1\r\nhost: g\r\ncontent-length: 3\r\n\r\nabc",
            7,
        );
        rig.servers[0].reqs[0]
            .respond
            .as_mut()
            .unwrap()
            .send_reset(h2::Reason::REFUSED_STREAM);
        rig.settle();
        assert!(
            !rig.events.contains(&NetEvent::Reset(v)),
            "{:?}",
            rig.events
        );
        assert_eq!(rig.servers[0].reqs.len(), 2, "sent again");
        assert_eq!(rig.servers[0].reqs[1].body, b"abc");
        assert_eq!(rig.back.stats.streams_refused.load(Ordering::Relaxed), 1);
        // Refused again: once is enough, the engine hears of it.
        rig.servers[0].reqs[1]
            .respond
            .as_mut()
            .unwrap()
            .send_reset(h2::Reason::REFUSED_STREAM);
        rig.settle();
        assert!(rig.events.contains(&NetEvent::Reset(v)));
        assert_eq!(rig.servers[0].reqs.len(), 2);
    }

    #[test]
    fn a_refused_stream_after_a_replay_of_a_previous_request_still_goes_again() {
        // The copy starts again with each request on a pooled virtual connection.
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.settle();
        rig.write(v, b"GET /1 HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        rig.respond(0, ok(), true);
        rig.settle();
        rig.got.clear();
        rig.write(v, b"GET /2 HTTP/1.1\r\nhost: g\r\n\r\n", 1000);
        rig.servers[0].reqs[1]
            .respond
            .as_mut()
            .unwrap()
            .send_reset(h2::Reason::REFUSED_STREAM);
        rig.settle();
        assert_eq!(rig.servers[0].reqs.len(), 3);
        assert_eq!(rig.servers[0].reqs[2].head.uri.path(), "/2");
        rig.respond(2, ok(), true);
        rig.settle();
        assert!(
            rig.text(v).starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            rig.text(v)
        );
    }

    #[test]
    fn an_answer_while_the_last_of_the_upload_waits_for_window_ends_the_stream() {
        // The engine wrote the whole request, part of it still waits for the server's
        // window, and the server answers: the stream ends (the rest is not sent) instead of
        // holding its place and buffers with a send half that never finishes.
        let mut rig = Rig::new();
        let v = rig.connect();
        rig.accept(100);
        rig.servers[0].hold_bodies = true;
        rig.settle();
        let mut req = b"POST /up HTTP/1.1\r\nhost: g\r\ncontent-length: 102400\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', 100 << 10));
        rig.write(v, &req, 16 << 10);
        let too_big = ::http::Response::builder().status(413).body(()).unwrap();
        rig.respond(0, too_big, true);
        rig.settle();
        rig.read_all(v);
        assert!(rig.text(v).starts_with("HTTP/1.1 413"), "{:?}", rig.text(v));
        assert!(
            !rig.events.contains(&NetEvent::Reset(v)),
            "{:?}",
            rig.events
        );
        let vid = match v {
            BConn::Virtual(id) => id,
            BConn::Tcp(_) => unreachable!("a virtual connection"),
        };
        let virt = rig.back.virts.get(&vid).expect("still the engine's");
        assert!(virt.retire, "not reused after an early answer");
        assert!(virt
            .st
            .as_ref()
            .is_none_or(|st| st.send.is_none() && st.out.is_empty()));
    }
}
