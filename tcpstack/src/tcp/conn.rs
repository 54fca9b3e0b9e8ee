//! One TCP connection: the RFC 9293 state machine with RFC 5961 hardening, RFC 7323 window
//! scaling and PAWS, SACK (RFC 2018) both ways, RFC 6298 timers, congestion control by CUBIC
//! (RFC 9438) or NewReno (RFC 5681), and loss recovery: with SACK, a scoreboard with RFC 6675's
//! pipe and NextSeg, RACK-TLP (RFC 8985) time-based loss detection and tail loss probes;
//! without SACK, NewReno's fast retransmit and recovery (RFC 6582).
//!
//! Sans-IO: `handle_segment` takes input, `poll_segment` yields at most one segment to send per
//! call (the caller writes headers and copies the payload from the send ring), `on_timer` fires
//! deadlines. Events go to the caller's queue.

use super::assembler::Assembler;
use super::cc::Cc;
use super::config::{Keepalive, TcpConfig};
use super::ring::Ring;
use super::rtt::RttEstimator;
use super::sack::Scoreboard;
use super::seq::Seq;
use crate::stats::{Counter, DropReason, Stats};
use crate::time::Instant;
use crate::wire::tcp::{Flags, Header, Options, SackBlocks, MAX_WINDOW_SHIFT};
use std::net::SocketAddrV4;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
    Closed,
}

/// A connection as [`Conn::info`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub state: State,
    /// Smoothed round-trip time (RFC 6298), once measured.
    pub srtt: Option<Duration>,
    /// Congestion window, bytes.
    pub cwnd: usize,
    pub retransmits: u32,
}

/// Why a connection ended abnormally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The peer sent an acceptable RST.
    PeerReset,
    /// The peer answered our SYN with RST.
    Refused,
    /// Retransmissions were not acknowledged.
    TimedOut,
    /// Keepalive probes went unanswered.
    KeepaliveTimeout,
    /// Data arrived after the application closed, or the application closed with unread data.
    DataAfterClose,
    /// The peer kept a zero window while we had data (or a FIN) to send for longer than
    /// [`TcpConfig::persist_timeout`]; we sent it a RST.
    ZeroWindowTimeout,
}

/// What the connection tells its owner (the stack turns these into [`crate::Event`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    Established { passive: bool },
    Readable,
    Writable,
    PeerClosed,
    Reset(ResetReason),
}

/// A segment to send. The payload is `payload_len` bytes of the send ring starting
/// `payload_offset` bytes past its head.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    pub header: Header,
    pub payload_offset: usize,
    pub payload_len: usize,
    /// This segment is a RST: the connection is gone once it is sent.
    pub is_rst: bool,
}

impl Outgoing {
    /// A segment without payload.
    fn bare(header: Header) -> Self {
        Outgoing {
            header,
            payload_offset: 0,
            payload_len: 0,
            is_rst: false,
        }
    }
}

/// Context the stack passes into every call.
pub struct Ctx<'a> {
    pub now: Instant,
    pub cfg: &'a TcpConfig,
    pub stats: &'a mut Stats,
    pub events: &'a mut Vec<ConnEvent>,
}

#[derive(Debug)]
pub struct Conn {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: State,

    // Send sequence space (RFC 9293 §3.3.1).
    iss: Seq,
    snd_una: Seq,
    snd_nxt: Seq,
    /// Highest sequence number sent (snd_nxt can be pulled back by a timeout).
    snd_max: Seq,
    snd_wnd: u32,
    max_snd_wnd: u32,
    snd_wl1: Seq,
    snd_wl2: Seq,
    snd_shift: u8,
    send: Ring,
    /// Sequence number of the first byte in `send`.
    send_head: Seq,
    /// The application shut down its sending side: a FIN follows the last byte.
    fin_queued: bool,

    // Receive sequence space.
    irs: Seq,
    rcv_nxt: Seq,
    rcv_shift: u8,
    recv: Ring,
    asm: Assembler,
    /// A FIN seen past a hole: its sequence number.
    pending_fin: Option<Seq>,
    fin_received: bool,
    last_ack_sent: Seq,
    last_wnd_sent: u32,

    // Options.
    peer_mss: u16,
    our_mss: u16,
    sack_ok: bool,
    ts_ok: bool,
    ts_recent: u32,
    ts_offset: u32,
    offered_shift: u8,
    ws_ok: bool,

    // Congestion control.
    cwnd: usize,
    ssthresh: usize,
    dupacks: u32,
    recover: Seq,
    in_recovery: bool,
    rtt: RttEstimator,
    cc: Cc,
    /// With SACK: the segments in flight, SACKed, lost, retransmitted.
    sb: Scoreboard,
    /// RACK's reordering timer (RFC 8985 §6.3): look for overdue segments again.
    rack_at: Option<Instant>,
    /// The tail loss probe timer (RFC 8985 §7.2).
    tlp_at: Option<Instant>,
    /// The probe timer fired: send a probe.
    tlp_now: bool,
    /// A probe is outstanding (RFC 8985 TLP.end_seq): at most one until an ACK advances.
    tlp_high: Option<Seq>,
    /// Segments sent again (fast retransmit, timeouts, probes of old data): for inspection.
    retransmits: u32,
    /// Karn's algorithm: one timed segment at a time, never a retransmitted one.
    rtt_probe: Option<(Seq, Instant)>,

    // Timers.
    rto_at: Option<Instant>,
    delack_at: Option<Instant>,
    persist_at: Option<Instant>,
    persist_backoff: u32,
    /// While the peer's window is zero and we have something to send: when we give up
    /// (`TcpConfig::persist_timeout` after probing began). Cleared by any window opening.
    persist_deadline: Option<Instant>,
    orphan_probes: u32,
    keepalive_at: Option<Instant>,
    keepalive_sent: u32,
    /// This connection's keepalive settings (from `TcpConfig::keepalive`, or set per connection).
    keepalive: Option<KeepaliveMs>,
    close_at: Option<Instant>,
    /// When to give back the storage of an emptied buffer (`TcpConfig::buffer_release_delay`).
    release_at: Option<Instant>,
    /// The stack's release queue holds an entry for this connection.
    release_queued: bool,
    retries: u32,
    last_recv: Instant,

    // Pending output.
    ack_now: bool,
    unacked_segments: u32,
    rexmit_one: bool,
    probe_now: bool,
    keepalive_now: bool,
    rst_now: bool,
    rst_for_bad_ack: Option<Seq>,
    challenge_window: (Instant, u32),
    /// When we last answered a segment we dropped (`TcpConfig::invalid_ack_interval`).
    last_invalid_ack: Option<Instant>,

    nagle: bool,
    /// The application called close: it will read nothing more.
    pub user_closed: bool,
    write_blocked: bool,
    /// The stack's scheduled timer for this connection (for lazy heap deletion).
    pub scheduled: Option<Instant>,
    /// Listener this connection came from (passive opens), for backlog accounting.
    pub from_listener: Option<SocketAddrV4>,
}

/// [`Keepalive`] as a connection keeps it: every connection carries one, so milliseconds in
/// `u32`s (up to 49 days; at least 1 ms) rather than `Duration`s.
#[derive(Clone, Copy, Debug)]
struct KeepaliveMs {
    idle_ms: u32,
    interval_ms: u32,
    probes: u32,
}

impl KeepaliveMs {
    fn new(k: &Keepalive) -> Self {
        let ms = |d: Duration| d.as_millis().clamp(1, u32::MAX as u128) as u32;
        KeepaliveMs {
            idle_ms: ms(k.idle),
            interval_ms: ms(k.interval),
            probes: k.probes,
        }
    }
}

/// Fixed overhead of the timestamp option in every non-SYN segment.
const TS_OPTION_LEN: usize = 12;
/// RFC 5961 §7: at most this many challenge ACKs per second per connection.
const CHALLENGE_ACKS_PER_SEC: u32 = 10;
/// The MSS assumed when the peer's SYN carries none (RFC 9293 §3.7.1).
const DEFAULT_MSS: u16 = 536;

/// Parameters of a connection at creation.
pub struct ConnParams {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub iss: Seq,
    pub ts_offset: u32,
    /// Our MSS: the interface MTU less 40.
    pub our_mss: u16,
}

impl Conn {
    /// The window scale we offer: the least that lets the receive buffer be advertised.
    pub fn offered_shift(cfg: &TcpConfig) -> u8 {
        let mut shift = 0u8;
        if cfg.window_scaling {
            while shift < MAX_WINDOW_SHIFT && (cfg.recv_buffer >> shift) > 65535 {
                shift += 1;
            }
        }
        shift
    }

    fn new(cfg: &TcpConfig, p: ConnParams, state: State, now: Instant) -> Conn {
        let offered_shift = Self::offered_shift(cfg);
        Conn {
            local: p.local,
            remote: p.remote,
            state,
            iss: p.iss,
            snd_una: p.iss,
            snd_nxt: p.iss,
            snd_max: p.iss,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: Seq(0),
            snd_wl2: p.iss,
            snd_shift: 0,
            send: Ring::new(cfg.send_buffer),
            send_head: p.iss + 1,
            fin_queued: false,
            irs: Seq(0),
            rcv_nxt: Seq(0),
            rcv_shift: 0,
            recv: Ring::new(cfg.recv_buffer),
            asm: Assembler::default(),
            pending_fin: None,
            fin_received: false,
            last_ack_sent: Seq(0),
            last_wnd_sent: 0,
            peer_mss: DEFAULT_MSS,
            our_mss: p.our_mss,
            sack_ok: false,
            ts_ok: false,
            ts_recent: 0,
            ts_offset: p.ts_offset,
            offered_shift,
            ws_ok: false,
            cwnd: 0,
            ssthresh: usize::MAX,
            dupacks: 0,
            recover: p.iss,
            in_recovery: false,
            rtt: RttEstimator::new(cfg.min_rto),
            cc: Cc::new(cfg.congestion),
            sb: Scoreboard::default(),
            rack_at: None,
            tlp_at: None,
            tlp_now: false,
            tlp_high: None,
            retransmits: 0,
            rtt_probe: None,
            rto_at: None,
            delack_at: None,
            persist_at: None,
            persist_backoff: 0,
            persist_deadline: None,
            orphan_probes: 0,
            keepalive_at: None,
            keepalive_sent: 0,
            keepalive: cfg.keepalive.as_ref().map(KeepaliveMs::new),
            close_at: None,
            release_at: None,
            release_queued: false,
            retries: 0,
            last_recv: now,
            ack_now: false,
            unacked_segments: 0,
            rexmit_one: false,
            probe_now: false,
            keepalive_now: false,
            rst_now: false,
            rst_for_bad_ack: None,
            challenge_window: (now, 0),
            last_invalid_ack: None,
            nagle: cfg.nagle,
            user_closed: false,
            write_blocked: false,
            scheduled: None,
            from_listener: None,
        }
    }

    /// Active open: the first `poll_segment` sends the SYN.
    pub fn connect(cfg: &TcpConfig, p: ConnParams, now: Instant) -> Conn {
        Conn::new(cfg, p, State::SynSent, now)
    }

    /// Passive open from a SYN: the first `poll_segment` sends the SYN-ACK.
    pub fn accept(cfg: &TcpConfig, p: ConnParams, syn: &Header, now: Instant) -> Conn {
        let mut c = Conn::new(cfg, p, State::SynReceived, now);
        c.take_syn_options(cfg, syn);
        c.irs = Seq(syn.seq);
        c.rcv_nxt = c.irs + 1;
        c.snd_wnd = syn.window as u32; // never scaled in a SYN (RFC 7323 §2.2)
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = Seq(syn.seq);
        c
    }

    /// A connection rebuilt from a valid SYN cookie: established, with the MSS from the
    /// cookie and, when the handshake had timestamps, window scaling, SACK and timestamps
    /// from the options the ACK's timestamp echo carried back.
    pub fn from_cookie(
        cfg: &TcpConfig,
        p: ConnParams,
        ack: &Header,
        mss: u16,
        opts: Option<super::isn::CookieOpts>,
        now: Instant,
    ) -> Conn {
        let mut c = Conn::new(cfg, p, State::Established, now);
        c.irs = Seq(ack.seq) - 1;
        c.rcv_nxt = Seq(ack.seq);
        c.snd_una = c.iss + 1;
        c.snd_nxt = c.snd_una;
        c.snd_max = c.snd_una;
        c.send_head = c.snd_una;
        c.peer_mss = mss;
        match (opts, ack.options.timestamp) {
            (Some(o), Some((val, _))) => {
                c.ts_ok = true;
                c.ts_recent = val;
                c.sack_ok = o.sack && cfg.sack;
                match o.window_scale {
                    Some(s) if cfg.window_scaling => {
                        c.ws_ok = true;
                        c.snd_shift = s.min(MAX_WINDOW_SHIFT);
                        c.rcv_shift = c.offered_shift;
                    }
                    _ => c.offered_shift = 0,
                }
            }
            _ => c.offered_shift = 0,
        }
        c.snd_wnd = (ack.window as u32) << c.snd_shift;
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = Seq(ack.seq);
        c.snd_wl2 = Seq(ack.ack);
        c.last_ack_sent = c.rcv_nxt;
        c.init_cwnd(cfg);
        c.arm_keepalive(now);
        c
    }

    fn take_syn_options(&mut self, cfg: &TcpConfig, syn: &Header) {
        let o = &syn.options;
        self.peer_mss = o.mss.unwrap_or(DEFAULT_MSS).max(64);
        match o.window_scale {
            Some(s) if cfg.window_scaling => {
                self.ws_ok = true;
                self.snd_shift = s;
                self.rcv_shift = self.offered_shift;
            }
            _ => {
                self.snd_shift = 0;
                self.rcv_shift = 0;
                self.offered_shift = 0;
            }
        }
        self.sack_ok = cfg.sack && o.sack_permitted;
        if let (true, Some((val, _))) = (cfg.timestamps, o.timestamp) {
            self.ts_ok = true;
            self.ts_recent = val;
        }
    }

    fn init_cwnd(&mut self, cfg: &TcpConfig) {
        self.cwnd = cfg.initial_window.max(1) as usize * self.smss();
    }

    /// Sender MSS: payload bytes per full segment.
    pub fn smss(&self) -> usize {
        let m = self.peer_mss.min(self.our_mss) as usize;
        let opts = if self.ts_ok { TS_OPTION_LEN } else { 0 };
        m.saturating_sub(opts).max(1)
    }

    // ---- application side ----

    pub fn recv_len(&self) -> usize {
        self.recv.len()
    }

    pub fn send_free(&self) -> usize {
        if self.fin_queued || !self.can_send_state() {
            0
        } else {
            self.send.free()
        }
    }

    /// The application can no longer write: after `shutdown_write`, or past the states that send.
    pub fn send_closed(&self) -> bool {
        self.fin_queued || !self.can_send_state()
    }

    fn can_send_state(&self) -> bool {
        matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Established | State::CloseWait
        )
    }

    /// End of stream: the peer's FIN arrived and every byte before it has been read.
    pub fn at_eof(&self) -> bool {
        self.fin_received && self.recv.is_empty()
    }

    pub fn is_established(&self) -> bool {
        !matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Closed
        )
    }

    /// Copies received bytes out. The window may open: an update is sent when it grew enough
    /// (receiver-side silly window avoidance, RFC 9293 §3.8.6.2.2).
    pub fn read(&mut self, cfg: &TcpConfig, dst: &mut [u8]) -> usize {
        let n = self.recv.pop(dst);
        if n > 0 && self.recv.is_idle() && self.recv.allocated() > 0 {
            if self.fin_received {
                self.recv.release_if_idle(); // nothing more will arrive
            } else {
                // No `now` here: the delay runs from the last segment, which brought these bytes.
                self.release_later(self.last_recv + cfg.buffer_release_delay);
            }
        }
        if n > 0 && self.is_established() && !self.fin_received {
            let wnd = self.window_to_advertise();
            let threshold = (self.recv.capacity() / 2).min(2 * self.our_mss as usize) as u32;
            if wnd.saturating_sub(self.last_wnd_sent) >= threshold {
                self.ack_now = true;
            }
        }
        n
    }

    /// Queues bytes for sending; returns how many fit.
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.fin_queued || !self.can_send_state() {
            return 0;
        }
        let n = self.send.push(data);
        if n < data.len() {
            self.write_blocked = true;
        }
        n
    }

    pub fn set_nagle(&mut self, on: bool) {
        self.nagle = on;
    }

    /// Replaces this connection's keepalive settings. Turning it on (re)starts the idle time
    /// at `now`; `None` stops the probes.
    pub fn set_keepalive(&mut self, keepalive: Option<&Keepalive>, now: Instant) {
        self.keepalive = keepalive.map(KeepaliveMs::new);
        self.keepalive_sent = 0;
        self.keepalive_at = None;
        self.arm_keepalive(now);
    }

    /// Half-close: a FIN follows the queued data.
    pub fn shutdown_write(&mut self) {
        if self.fin_queued {
            return;
        }
        match self.state {
            // RFC 9293 §3.10.4: in SYN-SENT/SYN-RECEIVED the FIN waits for ESTABLISHED.
            State::SynSent | State::SynReceived | State::Established | State::CloseWait => {
                self.fin_queued = true
            }
            _ => {}
        }
    }

    /// The application is done: graceful close, or a reset when it leaves unread data
    /// (RFC 9293 §3.10.4; RFC 2525 §2.17).
    pub fn close(&mut self, cfg: &TcpConfig, now: Instant) -> bool {
        self.user_closed = true;
        if self.state == State::SynSent {
            self.enter_closed();
            return true;
        }
        if !self.recv.is_empty() && self.is_established() {
            self.abort();
            return false;
        }
        self.shutdown_write();
        if self.state == State::FinWait2 {
            self.close_at = Some(now + cfg.fin_wait2_timeout);
        }
        true
    }

    /// Sends a RST (when synchronized) and ends the connection.
    pub fn abort(&mut self) {
        if matches!(self.state, State::SynSent | State::Closed | State::TimeWait) {
            self.enter_closed();
        } else {
            self.rst_now = true;
        }
    }

    /// Done: nothing more to send or receive; the stack may free it.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && !self.rst_now
    }

    /// In TIME-WAIT with the application done: the stack moves it to its TIME-WAIT table.
    pub fn time_wait_ready(&self) -> bool {
        self.state == State::TimeWait && self.user_closed && !self.ack_now
    }

    /// What the stack keeps in its TIME-WAIT table.
    pub fn time_wait_state(&self) -> (Seq, Seq, bool, u32, u32) {
        (
            self.rcv_nxt,
            self.snd_nxt,
            self.ts_ok,
            self.ts_recent,
            self.ts_offset,
        )
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        // Called after every event: plain comparisons, cheaper than `flatten().min()`.
        fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }
        let t = earlier(self.rto_at, self.delack_at);
        let t = earlier(t, self.rack_at);
        let t = earlier(t, self.tlp_at);
        let t = earlier(t, self.persist_at);
        let t = earlier(t, self.persist_deadline);
        let t = earlier(t, self.keepalive_at);
        earlier(t, self.close_at)
    }

    pub fn has_output(&self) -> bool {
        self.rst_now
            || self.ack_now
            || self.rexmit_one
            || self.probe_now
            || self.keepalive_now
            || self.tlp_now
    }

    // ---- input ----

    fn window_to_advertise(&self) -> u32 {
        self.recv.free() as u32
    }

    fn in_window(&self, seq: Seq, len: usize, wnd: u32) -> bool {
        // RFC 9293 §3.10.7.4, the four cases of the acceptability test.
        let rcv_end = self.rcv_nxt + wnd as usize;
        let start_ok = seq >= self.rcv_nxt && seq < rcv_end;
        match (len, wnd) {
            (0, 0) => seq == self.rcv_nxt,
            (0, _) => start_ok,
            (_, 0) => false,
            _ => {
                let last = seq + (len - 1);
                start_ok || (last >= self.rcv_nxt && last < rcv_end)
            }
        }
    }

    fn challenge_ack(&mut self, ctx: &mut Ctx) {
        // RFC 5961 §7: rate-limit challenge ACKs.
        let (start, count) = self.challenge_window;
        if ctx.now.saturating_duration_since(start) >= Duration::from_secs(1) {
            self.challenge_window = (ctx.now, 1);
        } else if count >= CHALLENGE_ACKS_PER_SEC {
            return;
        } else {
            self.challenge_window.1 += 1;
        }
        ctx.stats.inc(Counter::ChallengeAcks);
        self.ack_now = true;
    }

    /// Answers a segment we drop with an ACK (RFC 9293 §3.10.7.4, RFC 5961 §5.2), at most one
    /// per `invalid_ack_interval` (RFC 5961 §7 and erratum 4772; Linux's
    /// `tcp_invalid_ratelimit`): otherwise a flood of bad ACKs draws an equal flood back, and
    /// two peers that disagree about the sequence space ACK each other's ACKs forever.
    fn invalid_ack(&mut self, ctx: &mut Ctx) {
        if self.ack_now {
            return; // an ACK goes out anyway and answers this one too
        }
        if self
            .last_invalid_ack
            .is_some_and(|t| ctx.now.saturating_duration_since(t) < ctx.cfg.invalid_ack_interval)
        {
            ctx.stats.inc(Counter::InvalidAcksSuppressed);
            return;
        }
        self.last_invalid_ack = Some(ctx.now);
        self.ack_now = true;
    }

    /// `invalid_ack` for a segment that failed the sequence checks, except that one with data
    /// or a FIN is answered every time, as Linux's `tcp_oow_rate_limited` does: it cannot be
    /// part of an ACK loop, and a sender retransmitting because our ACKs were lost needs the
    /// answer (zero-window probes carry a byte, too).
    fn unacceptable_ack(&mut self, ctx: &mut Ctx, h: &Header, payload_len: usize) {
        if (payload_len > 0 || h.flags.fin()) && !h.flags.syn() {
            self.ack_now = true;
        } else {
            self.invalid_ack(ctx);
        }
    }

    /// Processes one segment addressed to this connection (RFC 9293 §3.10.7).
    pub fn handle_segment(&mut self, ctx: &mut Ctx, h: &Header, payload: &[u8]) {
        ctx.stats.inc(Counter::SegmentsIn);
        match self.state {
            State::Closed => {}
            State::SynSent => self.handle_syn_sent(ctx, h),
            _ => self.handle_synchronized(ctx, h, payload),
        }
    }

    fn handle_syn_sent(&mut self, ctx: &mut Ctx, h: &Header) {
        let ack = Seq(h.ack);
        if h.flags.ack() && (ack <= self.iss || ack > self.snd_max) {
            ctx.stats.drop(DropReason::TcpBadAck);
            if !h.flags.rst() {
                // RFC 9293 §3.10.7.3: answer an unacceptable ACK with <SEQ=SEG.ACK><CTL=RST>.
                self.rst_for_bad_ack = Some(ack);
            }
            return;
        }
        if h.flags.rst() {
            if h.flags.ack() {
                ctx.stats.inc(Counter::RstsReceived);
                self.reset(ctx, ResetReason::Refused);
            } else {
                ctx.stats.drop(DropReason::TcpRstOutOfWindow);
            }
            return;
        }
        if !h.flags.syn() {
            ctx.stats.drop(DropReason::TcpUnacceptable);
            return;
        }
        self.take_syn_options(ctx.cfg, h);
        self.irs = Seq(h.seq);
        self.rcv_nxt = self.irs + 1;
        self.last_recv = ctx.now;
        if h.flags.ack() {
            self.snd_una = ack;
            // The window in a SYN-ACK is not scaled (RFC 7323 §2.2).
            self.snd_wnd = h.window as u32;
            self.max_snd_wnd = self.snd_wnd;
            self.snd_wl1 = Seq(h.seq);
            self.snd_wl2 = ack;
            self.sample_rtt(ctx.now, ack);
            self.rto_at = None;
            self.retries = 0;
            self.rtt.reset_backoff();
            self.init_cwnd(ctx.cfg);
            self.state = State::Established;
            self.arm_keepalive(ctx.now);
            self.ack_now = true;
            ctx.stats.inc(Counter::ConnectionsConnected);
            ctx.events.push(ConnEvent::Established { passive: false });
        } else {
            // Simultaneous open (RFC 9293 §3.5, figure 8): send SYN-ACK with the same ISS.
            self.state = State::SynReceived;
            self.snd_wnd = h.window as u32;
            self.snd_wl1 = Seq(h.seq);
            self.snd_nxt = self.iss;
        }
    }

    fn handle_synchronized(&mut self, ctx: &mut Ctx, h: &Header, payload: &[u8]) {
        let seq = Seq(h.seq);
        let seg_len = payload.len() + h.flags.syn() as usize + h.flags.fin() as usize;

        // A retransmitted SYN while we wait for the handshake's ACK: repeat the SYN-ACK.
        if self.state == State::SynReceived && h.flags.syn() && !h.flags.ack() && seq == self.irs {
            self.snd_nxt = self.iss;
            return;
        }

        // RFC 7323 §5.3 PAWS: a timestamp older than ts_recent marks an old duplicate.
        if self.ts_ok && !h.flags.rst() {
            if let Some((val, _)) = h.options.timestamp {
                if (val.wrapping_sub(self.ts_recent) as i32) < 0 {
                    ctx.stats.drop(DropReason::TcpUnacceptable);
                    self.unacceptable_ack(ctx, h, payload.len());
                    return;
                }
            }
        }

        let wnd = self.window_to_advertise();
        // A bare FIN at the left edge takes no buffer space: accept it even on a zero window.
        let bare_fin = payload.is_empty() && h.flags.fin() && !h.flags.syn() && seq == self.rcv_nxt;
        if !bare_fin && !self.in_window(seq, seg_len, wnd) {
            if !h.flags.rst() {
                // Old duplicates and zero-window probes get an ACK (RFC 9293 §3.10.7.4).
                if seq < self.rcv_nxt {
                    ctx.stats.inc(Counter::DuplicateSegments);
                } else {
                    ctx.stats.drop(DropReason::TcpUnacceptable);
                }
                self.unacceptable_ack(ctx, h, payload.len());
            } else {
                ctx.stats.drop(DropReason::TcpRstOutOfWindow);
            }
            return;
        }

        if h.flags.rst() && self.state == State::TimeWait {
            // RFC 1337: TIME-WAIT ignores RSTs.
            return;
        }
        if h.flags.rst() {
            // RFC 5961 §3.2: reset only on an exact match, challenge otherwise.
            if seq == self.rcv_nxt {
                ctx.stats.inc(Counter::RstsReceived);
                let reason = if self.state == State::SynReceived && self.from_listener.is_none() {
                    ResetReason::Refused
                } else {
                    ResetReason::PeerReset
                };
                self.reset(ctx, reason);
            } else {
                self.challenge_ack(ctx);
            }
            return;
        }

        if h.flags.syn() {
            // RFC 5961 §4: a SYN in a synchronized state gets a challenge ACK.
            self.challenge_ack(ctx);
            return;
        }

        if !h.flags.ack() {
            ctx.stats.drop(DropReason::TcpUnacceptable);
            return;
        }

        self.last_recv = ctx.now;
        self.keepalive_sent = 0;
        self.arm_keepalive(ctx.now);

        // Timestamps: remember the peer's clock from the segment at the left window edge
        // (RFC 7323 §4.3).
        if let (true, Some((val, _))) = (self.ts_ok, h.options.timestamp) {
            if seq <= self.last_ack_sent {
                self.ts_recent = val;
            }
        }

        if !self.process_ack(ctx, h, payload.len()) {
            return;
        }
        if self.state == State::Closed {
            return;
        }

        // Segment text (RFC 9293 §3.10.7.4, seventh).
        if !payload.is_empty() {
            match self.state {
                State::Established | State::FinWait1 | State::FinWait2 => {
                    if self.user_closed {
                        // The application will never read this: tell the peer (as Linux does).
                        ctx.stats.drop(DropReason::TcpAfterClose);
                        self.rst_now = true;
                        return;
                    }
                    self.receive_data(ctx, seq, payload);
                }
                _ => {
                    // After the peer's FIN, more data is a protocol violation; ACK and ignore.
                    ctx.stats.drop(DropReason::TcpUnacceptable);
                    self.ack_now = true;
                }
            }
        }

        if h.flags.fin() {
            let fin_seq = seq + payload.len();
            if fin_seq == self.rcv_nxt {
                self.receive_fin(ctx);
            } else if fin_seq > self.rcv_nxt {
                self.pending_fin = Some(fin_seq);
                self.ack_now = true;
            } else {
                // A retransmitted FIN: ACK it, and in TIME-WAIT restart the 2 MSL timer
                // (RFC 9293 §3.10.7.4, eighth).
                self.ack_now = true;
                if self.state == State::TimeWait {
                    self.close_at = Some(ctx.now + ctx.cfg.time_wait);
                }
            }
        }
    }

    /// ACK processing (RFC 9293 §3.10.7.4 fifth, RFC 5961 §5, RFC 5681, RFC 6582).
    /// Returns false when the segment must be dropped.
    fn process_ack(&mut self, ctx: &mut Ctx, h: &Header, payload_len: usize) -> bool {
        let ack = Seq(h.ack);
        if self.state == State::SynReceived {
            if ack > self.snd_una && ack <= self.snd_max {
                self.state = State::Established;
                self.snd_wnd = (h.window as u32) << self.snd_shift;
                self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
                self.snd_wl1 = Seq(h.seq);
                self.snd_wl2 = ack;
                self.init_cwnd(ctx.cfg);
                self.arm_keepalive(ctx.now);
                ctx.stats.inc(Counter::ConnectionsAccepted);
                ctx.events.push(ConnEvent::Established {
                    passive: self.from_listener.is_some(),
                });
                if self.from_listener.is_none() {
                    ctx.stats.inc(Counter::ConnectionsConnected);
                }
            } else {
                ctx.stats.drop(DropReason::TcpBadAck);
                self.rst_for_bad_ack = Some(ack);
                return false;
            }
        }

        // RFC 5961 §5.2: acceptable ACKs lie in [snd_una - max_snd_wnd, snd_max]. The segment
        // is dropped with its data, so the answer is rate-limited whatever it carries: a
        // correct peer never sends one.
        if ack > self.snd_max || ack < self.snd_una - (self.max_snd_wnd as usize) {
            ctx.stats.drop(DropReason::TcpBadAck);
            self.invalid_ack(ctx);
            return false;
        }

        let window = (h.window as u32) << self.snd_shift;
        let window_changed = window != self.snd_wnd;

        if self.sack_ok {
            let flight_before = self.snd_max - self.snd_una;
            let acked = if ack > self.snd_una {
                ack - self.snd_una
            } else {
                0
            };
            if !self.sb.is_empty() {
                let o = self
                    .sb
                    .on_ack(ack, h.options.sack.as_slice(), self.snd_max, ctx.now);
                for _ in 0..o.ignored {
                    ctx.stats.inc(Counter::SackBlocksIgnored);
                }
                for _ in 0..o.dsack {
                    ctx.stats.inc(Counter::DsackReceived);
                }
            } else if !h.options.sack.is_empty() && self.snd_max == self.snd_una {
                // Nothing in flight: any block but a D-SACK is outside SND.UNA..SND.MAX.
                for &(l, r) in h.options.sack.as_slice() {
                    if super::sack::is_dsack(l, r, ack) {
                        ctx.stats.inc(Counter::DsackReceived);
                    } else {
                        ctx.stats.inc(Counter::SackBlocksIgnored);
                    }
                }
            }
            if acked > 0 {
                self.on_new_ack(ctx, ack);
            }
            // Nothing was or is in flight (a receiver's common case): nothing to recover.
            if flight_before > 0 && self.state != State::Closed {
                self.sack_recovery(ctx, acked, flight_before);
            }
        } else if ack > self.snd_una {
            self.on_new_ack(ctx, ack);
        } else if ack == self.snd_una
            && payload_len == 0
            && !h.flags.fin()
            && !window_changed
            && window != 0
            && self.snd_max > self.snd_una
        {
            self.on_dup_ack(ctx);
        }

        // Window update (RFC 9293 §3.10.7.4: SND.WL1/SND.WL2 guard against old segments).
        let seq = Seq(h.seq);
        if self.snd_wl1 < seq || (self.snd_wl1 == seq && self.snd_wl2 <= ack) {
            let was_zero = self.snd_wnd == 0;
            self.snd_wnd = window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = seq;
            self.snd_wl2 = ack;
            if window > 0 {
                // Any opening, even of one byte, ends the zero-window period.
                self.persist_deadline = None;
                if was_zero {
                    self.persist_at = None;
                    self.persist_backoff = 0;
                }
            } else if self.snd_nxt > self.snd_una {
                // A zero window: whatever is past snd_una was dropped by the peer (a probe byte,
                // or data sent before the window closed). The peer is alive, so this is not a
                // retransmission timeout: resend from snd_una once the persist timer probes.
                self.snd_nxt = self.snd_una;
                self.sb.clear();
                self.rack_at = None;
                self.tlp_at = None;
                self.rto_at = None;
                self.retries = 0;
                self.rtt.reset_backoff();
            }
        }

        // Our FIN acknowledged?
        let fin_acked =
            self.fin_queued && self.snd_max == self.fin_seq() + 1 && ack == self.snd_max;
        match self.state {
            State::FinWait1 if fin_acked => {
                self.state = State::FinWait2;
                if self.user_closed {
                    self.close_at = Some(ctx.now + ctx.cfg.fin_wait2_timeout);
                }
            }
            State::Closing if fin_acked => self.enter_time_wait(ctx),
            State::LastAck if fin_acked => self.enter_closed(),
            _ => {}
        }
        true
    }

    fn fin_seq(&self) -> Seq {
        self.send_head + self.send.len()
    }

    fn on_new_ack(&mut self, ctx: &mut Ctx, ack: Seq) {
        let acked = ack - self.snd_una;
        let flight_before = self.snd_max - self.snd_una;
        self.sample_rtt(ctx.now, ack);

        // Release acknowledged bytes from the send ring (the SYN and FIN take no ring space).
        let data_acked = if ack > self.send_head {
            (ack - self.send_head).min(self.send.len())
        } else {
            0
        };
        self.send.consume(data_acked);
        self.send_head = self.send_head + data_acked;
        if data_acked > 0 && self.send.is_idle() && self.send.allocated() > 0 {
            if self.fin_queued {
                self.send.release_if_idle(); // nothing more will be written
            } else {
                self.release_later(ctx.now + ctx.cfg.buffer_release_delay);
            }
        }
        self.snd_una = ack;
        if self.snd_nxt < ack {
            self.snd_nxt = ack;
        }
        self.retries = 0;
        self.rtt.reset_backoff();

        let smss = self.smss();
        if self.sack_ok {
            // Recovery and window growth in `sack_recovery`.
        } else if self.in_recovery {
            if ack >= self.recover {
                // Full ACK (RFC 6582 §3.2 step 3).
                self.cwnd = self
                    .ssthresh
                    .min(flight_before.saturating_sub(acked).max(smss) + smss);
                self.in_recovery = false;
            } else {
                // Partial ACK: retransmit the next hole, deflate by what was acked.
                self.rexmit_one = true;
                self.cwnd = self.cwnd.saturating_sub(acked) + if acked >= smss { smss } else { 0 };
                self.cwnd = self.cwnd.max(smss);
                self.rto_at = Some(ctx.now + self.rtt.rto());
            }
        } else if self.cwnd < self.ssthresh {
            // Slow start (RFC 5681 §3.1, appropriate byte counting with L = 1 SMSS).
            self.cwnd += acked.min(smss);
        } else {
            // Congestion avoidance.
            let srtt = self.rtt.srtt().unwrap_or(Duration::ZERO);
            self.cwnd = self.cc.on_ack_ca(self.cwnd, acked, smss, ctx.now, srtt);
        }
        self.dupacks = 0;

        // RFC 6298 §5.2/5.3: stop the timer when all is acked, else restart it.
        self.rto_at = if self.snd_una == self.snd_max {
            None
        } else {
            Some(ctx.now + self.rtt.rto())
        };

        if self.write_blocked && self.send_free() > 0 {
            self.write_blocked = false;
            ctx.events.push(ConnEvent::Writable);
        }
    }

    fn on_dup_ack(&mut self, ctx: &mut Ctx) {
        self.dupacks += 1;
        let smss = self.smss();
        if self.in_recovery {
            // RFC 6582 §3.2 step 4: inflate for each further duplicate.
            self.cwnd += smss;
        } else if self.dupacks == 3 && self.snd_una >= self.recover {
            // RFC 6582 §3.2 step 2: enter fast retransmit only past the last recovery point.
            let flight = self.snd_max - self.snd_una;
            self.ssthresh = self.cc.on_congestion(self.cwnd, flight, smss);
            self.recover = self.snd_max;
            self.cwnd = self.ssthresh + 3 * smss;
            self.in_recovery = true;
            self.rexmit_one = true;
            self.rtt_probe = None;
            ctx.stats.inc(Counter::FastRetransmits);
        }
    }

    fn sample_rtt(&mut self, now: Instant, ack: Seq) {
        if let Some((seq, sent)) = self.rtt_probe {
            if ack > seq {
                self.rtt.sample(now.saturating_duration_since(sent));
                self.rtt_probe = None;
            }
        }
    }

    fn receive_data(&mut self, ctx: &mut Ctx, seq: Seq, payload: &[u8]) {
        // Trim what we already have.
        let (seq, data) = if seq < self.rcv_nxt {
            let skip = self.rcv_nxt - seq;
            (self.rcv_nxt, &payload[skip.min(payload.len())..])
        } else {
            (seq, payload)
        };
        if data.is_empty() {
            self.ack_now = true;
            return;
        }
        let offset = seq - self.rcv_nxt;
        let written = self.recv.write_at(offset, data);
        if written < data.len() {
            ctx.stats.drop(DropReason::TcpBeyondWindow);
        }
        if written == 0 {
            self.ack_now = true;
            return;
        }
        let was_empty = self.recv.is_empty();
        if offset == 0 {
            let had_holes = !self.asm.is_empty();
            self.recv.commit(written);
            self.rcv_nxt = self.rcv_nxt + written;
            while let Some(end) = self.asm.pop_contiguous(self.rcv_nxt) {
                let extra = end - self.rcv_nxt;
                self.recv.commit(extra);
                self.rcv_nxt = end;
            }
            if had_holes {
                // RFC 5681 §4.2: ACK at once when a segment fills (part of) a hole.
                self.ack_now = true;
            } else {
                self.unacked_segments += 1;
                match ctx.cfg.delayed_ack {
                    Some(d) if self.unacked_segments < 2 => {
                        if self.delack_at.is_none() {
                            self.delack_at = Some(ctx.now + d);
                        }
                    }
                    _ => self.ack_now = true,
                }
            }
            if was_empty {
                ctx.events.push(ConnEvent::Readable);
            }
            if let Some(f) = self.pending_fin {
                if f == self.rcv_nxt {
                    self.pending_fin = None;
                    self.receive_fin(ctx);
                }
            }
        } else {
            ctx.stats.inc(Counter::OutOfOrderSegments);
            if !self.asm.add(seq, seq + written) {
                ctx.stats.drop(DropReason::TcpReassemblyFull);
            }
            // RFC 5681 §4.2: an out-of-order segment triggers an immediate (duplicate) ACK.
            self.ack_now = true;
        }
    }

    fn receive_fin(&mut self, ctx: &mut Ctx) {
        if self.fin_received {
            return;
        }
        self.fin_received = true;
        self.rcv_nxt = self.rcv_nxt + 1;
        self.ack_now = true;
        ctx.events.push(ConnEvent::PeerClosed);
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                let fin_acked = self.fin_queued && self.snd_una == self.fin_seq() + 1;
                if fin_acked {
                    self.enter_time_wait(ctx);
                } else {
                    // Simultaneous close (RFC 9293 §3.6, figure 13).
                    self.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(ctx),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, ctx: &mut Ctx) {
        self.state = State::TimeWait;
        // Both FINs are in: neither buffer takes more bytes. Unread data stays readable.
        self.release_buffers();
        self.rto_at = None;
        self.stop_recovery_timers();
        self.persist_at = None;
        self.persist_deadline = None;
        self.keepalive_at = None;
        self.close_at = Some(ctx.now + ctx.cfg.time_wait);
    }

    fn reset(&mut self, ctx: &mut Ctx, reason: ResetReason) {
        self.enter_closed();
        ctx.events.push(ConnEvent::Reset(reason));
    }

    /// CLOSED with every timer stopped, and the buffers freed but for unread data.
    fn enter_closed(&mut self) {
        self.state = State::Closed;
        self.send.clear(); // never to be sent
        self.release_buffers();
        self.rto_at = None;
        self.stop_recovery_timers();
        self.delack_at = None;
        self.persist_at = None;
        self.persist_deadline = None;
        self.keepalive_at = None;
        self.close_at = None;
    }

    /// Stops RACK's and the probe's timers and forgets the scoreboard.
    fn stop_recovery_timers(&mut self) {
        self.rack_at = None;
        self.tlp_at = None;
        self.tlp_now = false;
        self.sb.clear();
        self.sb.release();
    }

    /// Gives back the storage of an empty buffer at `at`, unless a release is already due.
    fn release_later(&mut self, at: Instant) {
        self.release_at = Some(self.release_at.map_or(at, |t| t.min(at)));
    }

    /// A release time for the stack's release queue, when the queue holds none for this
    /// connection. (A queue rather than the timer heap: a connection that moves data re-arms
    /// its release every time a buffer empties, and heap entries would pile up.)
    pub fn release_to_queue(&mut self) -> Option<Instant> {
        if self.release_queued {
            return None;
        }
        let t = self.release_at?;
        self.release_queued = true;
        Some(t)
    }

    /// The release queue reached this connection: gives back the storage of the empty buffers
    /// if their time has come, or returns the later time to queue again.
    pub fn release_due(&mut self, now: Instant) -> Option<Instant> {
        match self.release_at {
            Some(t) if t > now => Some(t),
            _ => {
                self.release_queued = false;
                self.release_buffers();
                None
            }
        }
    }

    /// Gives back the storage of each buffer that is empty.
    fn release_buffers(&mut self) {
        self.release_at = None;
        self.send.release_if_idle();
        self.recv.release_if_idle();
        // The scoreboard's storage goes with the send buffer's (kept while data moves).
        if self.send.allocated() == 0 {
            self.sb.release();
        }
    }

    fn arm_keepalive(&mut self, now: Instant) {
        if let Some(k) = &self.keepalive {
            if matches!(
                self.state,
                State::Established | State::CloseWait | State::FinWait1 | State::FinWait2
            ) {
                self.keepalive_at = Some(now + Duration::from_millis(k.idle_ms.into()));
            }
        }
    }

    // ---- timers ----

    pub fn on_timer(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        if self.close_at.is_some_and(|t| t <= now) {
            self.close_at = None;
            if self.state == State::TimeWait || self.state == State::FinWait2 {
                self.enter_closed();
                return;
            }
        }
        if self.delack_at.is_some_and(|t| t <= now) {
            self.delack_at = None;
            self.ack_now = true;
        }
        if self.rack_at.is_some_and(|t| t <= now) {
            self.rack_at = None;
            if self.sack_ok && self.rack_detect(ctx) {
                self.enter_sack_recovery(ctx);
            }
        }
        if self.tlp_at.is_some_and(|t| t <= now) {
            self.tlp_at = None;
            if self.snd_max > self.snd_una && self.tlp_high.is_none() && !self.in_recovery {
                ctx.stats.inc(Counter::TailLossProbes);
                self.tlp_now = true;
                self.tlp_high = Some(self.snd_max);
                self.rto_at = Some(now + self.rtt.rto());
            }
        }
        if self.rto_at.is_some_and(|t| t <= now) {
            self.rto_at = None;
            self.on_rto(ctx);
            if self.state == State::Closed {
                return;
            }
        }
        if self.persist_deadline.is_some_and(|t| t <= now) {
            self.persist_deadline = None;
            if self.snd_wnd == 0 && self.owes_data() {
                // The peer is alive (it answers probes) but never opens its window: it would
                // hold this connection and its send buffer forever. Reset it (Linux bounds
                // zero-window probing with tcp_retries2 / TCP_USER_TIMEOUT).
                ctx.stats.inc(Counter::ZeroWindowTimeouts);
                self.reset(ctx, ResetReason::ZeroWindowTimeout);
                self.rst_now = true;
                return;
            }
        }
        if self.persist_at.is_some_and(|t| t <= now) {
            self.persist_at = None;
            if self.snd_wnd == 0 && self.waits_for_window() {
                // An application that closed cannot be held open forever by a peer that never
                // opens its window (Linux bounds these with tcp_orphan_retries).
                if self.user_closed {
                    self.orphan_probes += 1;
                    if self.orphan_probes > ctx.cfg.max_retransmits {
                        ctx.stats.inc(Counter::RtoTimeouts);
                        self.reset(ctx, ResetReason::TimedOut);
                        return;
                    }
                }
                self.probe_now = true;
                self.persist_backoff = (self.persist_backoff + 1).min(10);
            } else if !self.owes_data() {
                self.persist_deadline = None;
            }
        }
        if let (Some(t), Some(k)) = (self.keepalive_at, self.keepalive) {
            if t <= now {
                if self.keepalive_sent >= k.probes {
                    ctx.stats.inc(Counter::KeepaliveTimeouts);
                    self.reset(ctx, ResetReason::KeepaliveTimeout);
                    return;
                }
                self.keepalive_sent += 1;
                self.keepalive_now = true;
                self.keepalive_at = Some(now + Duration::from_millis(k.interval_ms.into()));
            }
        }
    }

    fn on_rto(&mut self, ctx: &mut Ctx) {
        let limit = match self.state {
            State::SynSent | State::SynReceived => ctx.cfg.syn_retries,
            _ => ctx.cfg.max_retransmits,
        };
        if self.snd_una == self.snd_max
            && !matches!(self.state, State::SynSent | State::SynReceived)
        {
            return;
        }
        self.retries += 1;
        if self.retries > limit {
            ctx.stats.inc(Counter::RtoTimeouts);
            self.reset(ctx, ResetReason::TimedOut);
            return;
        }
        ctx.stats.inc(Counter::RtoTimeouts);
        self.rtt.back_off();
        self.rtt_probe = None;
        if matches!(self.state, State::SynSent | State::SynReceived) {
            self.snd_nxt = self.iss;
            return;
        }
        // RFC 5681 §3.1 eq. 4 and loss window; RFC 6582 §4: recover = highest sent.
        let smss = self.smss();
        let flight = self.snd_max - self.snd_una;
        // RFC 5681 eq. 4 for NewReno; RFC 9438 §4.8 for CUBIC. A second timeout in a row
        // (the retransmission lost too) keeps ssthresh.
        if self.rtt.backoffs() <= 1 {
            self.ssthresh = self.cc.on_congestion(self.cwnd, flight, smss);
        }
        self.cwnd = smss;
        self.recover = self.snd_max;
        self.in_recovery = false;
        self.dupacks = 0;
        self.tlp_at = None;
        self.tlp_now = false;
        self.tlp_high = None;
        if self.sack_ok && !self.sb.is_empty() {
            // Everything not SACKed is lost; NextSeg sends it again in order, skipping what
            // the peer holds (RFC 6675 §5.1, RFC 8985 §6.3).
            self.sb.on_rto();
            self.rack_at = None;
        } else {
            self.snd_nxt = self.snd_una; // go back N
        }
    }

    /// After every acceptable ACK with SACK on: leaves recovery once SND.UNA passes the
    /// recovery point, marks overdue segments lost (RACK, RFC 8985 §6.2), enters recovery at
    /// the first loss of a round, grows the window otherwise, and re-arms the probe timer.
    fn sack_recovery(&mut self, ctx: &mut Ctx, acked: usize, flight_before: usize) {
        let now = ctx.now;
        let smss = self.smss();
        if acked > 0 {
            self.tlp_high = None;
        }
        if self.in_recovery && self.snd_una >= self.recover {
            self.in_recovery = false;
        }
        if !self.in_recovery && self.snd_una > self.recover {
            self.recover = self.snd_una; // keep it near: sequence numbers wrap
        }
        let newly_lost = self.rack_detect(ctx);
        if newly_lost {
            self.enter_sack_recovery(ctx);
        } else if acked > 0 && !self.in_recovery && self.snd_una >= self.recover {
            // Grow only a window that limited the sender (RFC 7661's spirit): a window the
            // peer's receive window or the application held back says nothing of the path.
            let limited = flight_before + 3 * smss >= self.cwnd;
            if limited {
                if self.cwnd < self.ssthresh {
                    self.cwnd += acked.min(smss); // slow start, L = 1 SMSS
                } else {
                    let srtt = self.rtt.srtt().unwrap_or(Duration::ZERO);
                    self.cwnd = self.cc.on_ack_ca(self.cwnd, acked, smss, now, srtt);
                }
            }
        } else if acked > 0 && !self.in_recovery && self.cwnd < self.ssthresh {
            // After a timeout: slow start back toward ssthresh while the lost data is resent.
            self.cwnd += acked.min(smss);
        }
        self.arm_tlp(ctx);
    }

    /// RACK loss detection; re-arms the reordering timer. Returns whether anything was newly
    /// marked lost.
    fn rack_detect(&mut self, ctx: &mut Ctx) -> bool {
        let srtt = self.rtt.srtt().unwrap_or(Duration::ZERO);
        let lost_before = self.sb.lost_bytes();
        let (newly, timer) = self.sb.detect_loss(ctx.now, self.in_recovery, srtt);
        self.rack_at = timer;
        if newly {
            let n = (self.sb.lost_bytes() - lost_before).div_ceil(self.smss());
            for _ in 0..n {
                ctx.stats.inc(Counter::RackLost);
            }
        }
        newly
    }

    /// The first loss of a round: one congestion event (RFC 6675 §5, RFC 9438 §4.6).
    fn enter_sack_recovery(&mut self, ctx: &mut Ctx) {
        if self.in_recovery || self.snd_una < self.recover {
            return; // already reduced for this round, or resending after a timeout
        }
        let smss = self.smss();
        let flight = self.snd_max - self.snd_una;
        self.ssthresh = self.cc.on_congestion(self.cwnd, flight, smss);
        self.cwnd = self.ssthresh;
        self.recover = self.snd_max;
        self.in_recovery = true;
        self.tlp_at = None;
        ctx.stats.inc(Counter::FastRetransmits);
    }

    /// Arms the tail loss probe (RFC 8985 §7.2) while data is in flight and no recovery runs:
    /// PTO = 2 SRTT, plus the peer's worst delayed ACK when one segment is in flight (as
    /// Linux: then the RTO's floor), never later than the retransmission timeout.
    fn arm_tlp(&mut self, ctx: &Ctx) {
        self.tlp_at = None;
        if self.snd_max == self.snd_una
            || !ctx.cfg.tail_loss_probe
            || !self.sack_ok
            || self.in_recovery
            || self.snd_una < self.recover
            || self.tlp_high.is_some()
            || self.snd_wnd == 0
        {
            return;
        }
        let Some(srtt) = self.rtt.srtt() else { return };
        let mut pto = srtt * 2 + Duration::from_millis(2);
        if self.snd_max - self.snd_una <= self.smss() {
            pto += ctx.cfg.min_rto;
        }
        let at = ctx.now + pto;
        match self.rto_at {
            Some(rto) if rto <= at => {}
            _ => self.tlp_at = Some(at),
        }
    }

    // ---- output ----

    /// Data or a FIN not yet acknowledged (sent or not).
    fn owes_data(&self) -> bool {
        !self.send.is_empty() || (self.fin_queued && self.snd_una <= self.fin_seq())
    }

    /// Data or a FIN is waiting to be sent.
    fn waits_for_window(&self) -> bool {
        let fin_unsent = self.fin_queued && self.snd_nxt <= self.fin_seq();
        self.unsent() > 0 || fin_unsent
    }

    fn unsent(&self) -> usize {
        let end = self.send_head + self.send.len();
        if self.snd_nxt >= end {
            0
        } else {
            end - self.snd_nxt.max(self.send_head)
        }
    }

    fn ts_val(&self, now: Instant) -> u32 {
        (now.as_millis() as u32).wrapping_add(self.ts_offset)
    }

    fn base_header(&mut self, now: Instant, flags: Flags, seq: Seq) -> Header {
        let mut options = Options::default();
        if self.ts_ok {
            options.timestamp = Some((self.ts_val(now), self.ts_recent));
        }
        let wnd = self.window_to_advertise();
        let (window, wnd_sent) = if flags.syn() {
            let w = wnd.min(65535);
            (w as u16, w)
        } else {
            let w = (wnd >> self.rcv_shift).min(65535);
            (w as u16, w << self.rcv_shift)
        };
        if flags.ack() {
            self.last_ack_sent = self.rcv_nxt;
            self.last_wnd_sent = wnd_sent;
            self.ack_now = false;
            self.delack_at = None;
            self.unacked_segments = 0;
            if self.sack_ok && !self.asm.is_empty() && !flags.syn() {
                let mut s = SackBlocks::default();
                let room = if self.ts_ok { 3 } else { 4 };
                self.asm.sack_blocks(&mut s, room);
                options.sack = s;
            }
        }
        Header {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq: seq.0,
            ack: if flags.ack() { self.rcv_nxt.0 } else { 0 },
            flags,
            window,
            options,
        }
    }

    fn syn_options(&self, h: &mut Header, now: Instant, cfg: &TcpConfig, synack: bool) {
        h.options = Options {
            mss: Some(self.our_mss),
            ..Options::default()
        };
        if !synack {
            if cfg.window_scaling {
                h.options.window_scale = Some(self.offered_shift);
            }
            h.options.sack_permitted = cfg.sack;
            if cfg.timestamps {
                h.options.timestamp = Some((self.ts_val(now), 0));
            }
        } else {
            // A SYN-ACK only carries what the SYN offered (RFC 7323 §2.2, RFC 2018 §2).
            if self.ws_ok {
                h.options.window_scale = Some(self.rcv_shift);
            }
            h.options.sack_permitted = self.sack_ok;
            if self.ts_ok {
                h.options.timestamp = Some((self.ts_val(now), self.ts_recent));
            }
        }
    }

    /// The next segment to send, if any. Call until it returns `None`.
    pub fn poll_segment(&mut self, ctx: &mut Ctx) -> Option<Outgoing> {
        let now = ctx.now;
        if let Some(ack) = self.rst_for_bad_ack.take() {
            // RFC 9293 §3.10.7.4: an unacceptable ACK in SYN-RECEIVED gets <SEQ=SEG.ACK><CTL=RST>.
            let mut h = self.base_header(now, Flags::RST, ack);
            h.options = Options::default();
            h.window = 0;
            ctx.stats.inc(Counter::RstsSent);
            return Some(Outgoing::bare(h));
        }
        if self.rst_now {
            self.rst_now = false;
            // A sequence number the peer accepts (Linux's tcp_acceptable_seq): past its window
            // (a zero window after probes) the RST would be dropped as out of window.
            let seq = self.snd_max.min(self.snd_una + self.snd_wnd as usize);
            let mut h = self.base_header(now, Flags::RST | Flags::ACK, seq);
            h.options = Options::default();
            self.enter_closed();
            ctx.stats.inc(Counter::RstsSent);
            return Some(Outgoing {
                is_rst: true,
                ..Outgoing::bare(h)
            });
        }
        match self.state {
            State::Closed | State::TimeWait => {
                if self.ack_now && self.state == State::TimeWait {
                    return Some(self.pure_ack(now));
                }
                return None;
            }
            State::SynSent | State::SynReceived => {
                if self.snd_nxt == self.iss {
                    let synack = self.state == State::SynReceived;
                    let flags = if synack {
                        Flags::SYN | Flags::ACK
                    } else {
                        Flags::SYN
                    };
                    let mut h = self.base_header(now, flags, self.iss);
                    self.syn_options(&mut h, now, ctx.cfg, synack);
                    if self.retries > 0 {
                        ctx.stats.inc(Counter::Retransmits);
                    } else {
                        self.rtt_probe = Some((self.iss, now));
                    }
                    self.snd_nxt = self.iss + 1;
                    self.snd_max = self.snd_max.max(self.snd_nxt);
                    if self.rto_at.is_none() {
                        self.rto_at = Some(now + self.rtt.rto());
                    }
                    return Some(Outgoing::bare(h));
                }
                if self.state == State::SynSent || !self.ack_now {
                    return None;
                }
                return Some(self.pure_ack(now));
            }
            _ => {}
        }

        // Synchronized states: retransmission, new data, FIN, probes, ACKs.
        let smss = self.smss();
        if self.rexmit_one {
            self.rexmit_one = false;
            if let Some(out) = self.data_segment(ctx, self.snd_una, smss, true) {
                return Some(out);
            }
        }

        if self.probe_now {
            self.probe_now = false;
            ctx.stats.inc(Counter::ZeroWindowProbes);
            if let Some(out) = self.data_segment(ctx, self.snd_nxt, 1, false) {
                return Some(out);
            }
        }

        let unsent = self.unsent();
        let usable = if self.sack_ok {
            // The peer's window bounds new data; pipe against cwnd bounds all (RFC 6675 §5).
            let peer = (self.snd_wnd as usize).saturating_sub(self.snd_nxt - self.snd_una);
            if self.tlp_now {
                // RFC 8985 §7.3: probe with new data if the peer's window allows, else send
                // the last segment again.
                self.tlp_now = false;
                if unsent > 0 && peer > 0 && !self.sb.is_full() {
                    if let Some(out) = self.data_segment(ctx, self.snd_nxt, smss.min(peer), false) {
                        return Some(out);
                    }
                }
                if let Some((s, e)) = self.sb.last_unsacked() {
                    if let Some(out) = self.sack_retransmit(ctx, s, e) {
                        return Some(out);
                    }
                }
            }
            let pipe = self.sb.pipe(self.snd_una, self.snd_nxt);
            if pipe < self.cwnd {
                // NextSeg rule 1: the first segment deemed lost.
                if let Some((s, e)) = self.sb.next_lost() {
                    if let Some(out) = self.sack_retransmit(ctx, s, e) {
                        return Some(out);
                    }
                }
            }
            if self.sb.is_full() {
                0
            } else {
                peer.min(self.cwnd.saturating_sub(pipe))
            }
        } else {
            let wnd = (self.snd_wnd as usize).min(self.cwnd);
            let in_flight = self.snd_nxt - self.snd_una;
            wnd.saturating_sub(in_flight)
        };
        let fin_unsent = self.fin_queued && self.snd_nxt <= self.fin_seq();
        if unsent > 0 || fin_unsent {
            let len = unsent.min(usable).min(smss);
            let completes = len == unsent;
            // Nagle (RFC 9293 §3.7.4): hold a small segment while data is unacknowledged,
            // unless it is the last piece before our FIN.
            let nagle_hold = self.nagle
                && len < smss
                && self.snd_nxt > self.snd_una
                && !(self.fin_queued && completes);
            if len > 0 && !nagle_hold {
                return self.data_segment(ctx, self.snd_nxt, len, false);
            }
            if unsent == 0 && fin_unsent && self.snd_wnd > 0 {
                return self.data_segment(ctx, self.snd_nxt, 0, false);
            }
            if len == 0
                && self.snd_wnd == 0
                && self.snd_nxt == self.snd_una
                && self.persist_at.is_none()
            {
                // Zero window with nothing in flight: probe later (RFC 9293 §3.8.6.1), for at
                // most `persist_timeout` from the first probe timer.
                let backoff = 1u32 << self.persist_backoff.min(10);
                self.persist_at = Some(now + (self.rtt.rto() * backoff).min(super::rtt::MAX_RTO));
                if self.persist_deadline.is_none() {
                    self.persist_deadline = Some(now + ctx.cfg.persist_timeout);
                }
            }
        }

        if self.keepalive_now {
            self.keepalive_now = false;
            ctx.stats.inc(Counter::KeepalivesSent);
            // RFC 9293 §3.8.4: SEG.SEQ = SND.NXT - 1 with no data elicits an ACK.
            let h = self.base_header(now, Flags::ACK, self.snd_una - 1);
            return Some(Outgoing::bare(h));
        }

        if self.ack_now {
            return Some(self.pure_ack(now));
        }
        None
    }

    fn pure_ack(&mut self, now: Instant) -> Outgoing {
        // snd_max, not snd_nxt: after a timeout pulls snd_nxt back, the peer may already hold
        // those bytes and would discard an ACK that starts below its window.
        let h = self.base_header(now, Flags::ACK, self.snd_max);
        Outgoing::bare(h)
    }

    /// Sends the scoreboard's `[s, e)` again (or as much as fits a segment).
    fn sack_retransmit(&mut self, ctx: &mut Ctx, s: Seq, e: Seq) -> Option<Outgoing> {
        let out = self.data_segment(ctx, s, e - s, true);
        let sent_end = match &out {
            Some(o) => Seq(o.header.seq) + o.payload_len + o.header.flags.fin() as usize,
            None => e, // nothing there to send: stop counting it lost
        };
        self.sb.on_retransmit(s, sent_end, ctx.now);
        out
    }

    /// Builds a data (and possibly FIN) segment starting at `seq` with at most `max` bytes.
    fn data_segment(
        &mut self,
        ctx: &mut Ctx,
        seq: Seq,
        max: usize,
        retransmit: bool,
    ) -> Option<Outgoing> {
        let now = ctx.now;
        let end = self.send_head + self.send.len();
        let seq = seq.max(self.send_head);
        let avail = if seq < end { end - seq } else { 0 };
        if avail.min(max) == 0 && !(self.fin_queued && seq == end) {
            return None;
        }
        let mut h = self.base_header(now, Flags::ACK, seq);
        // The MSS bounds data plus options (RFC 6691): SACK blocks shrink the payload.
        let room = (self.peer_mss.min(self.our_mss) as usize)
            .saturating_sub(h.options.wire_len())
            .max(1);
        let len = avail.min(max).min(room);
        let fin = self.fin_queued && seq + len == end;
        if len > 0 && seq + len == end {
            h.flags = h.flags | Flags::PSH;
        }
        if fin {
            h.flags = h.flags | Flags::FIN;
        }
        let seg_end = seq + len + fin as usize;
        let is_rexmit = retransmit || seq < self.snd_max;
        if is_rexmit {
            ctx.stats.inc(Counter::Retransmits);
            self.retransmits = self.retransmits.saturating_add(1);
            if self.rtt_probe.is_some_and(|(s, _)| s >= seq) {
                self.rtt_probe = None; // Karn: never time a retransmitted range
            }
        } else if self.rtt_probe.is_none() {
            self.rtt_probe = Some((seg_end - 1, now));
        }
        let record = self.sack_ok && !retransmit && self.sb.end().is_none_or(|e| e == seq);
        if record {
            self.sb.on_send(seq, seg_end, now);
        }
        self.snd_nxt = self.snd_nxt.max(seg_end);
        self.snd_max = self.snd_max.max(seg_end);
        if fin {
            match self.state {
                State::Established | State::SynReceived => self.state = State::FinWait1,
                State::CloseWait => self.state = State::LastAck,
                _ => {}
            }
        }
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rtt.rto());
        }
        if record && self.tlp_at.is_none() {
            self.arm_tlp(ctx);
        }
        Some(Outgoing {
            header: h,
            payload_offset: seq - self.send_head,
            payload_len: len,
            is_rst: false,
        })
    }

    /// Copies the payload of `out` from the send ring into `dst`.
    pub fn copy_payload(&self, out: &Outgoing, dst: &mut [u8]) -> usize {
        self.send
            .read_at(out.payload_offset, &mut dst[..out.payload_len])
    }

    /// Bytes of memory this connection holds beyond its two buffers.
    pub fn state_size() -> usize {
        core::mem::size_of::<Conn>()
    }

    /// What an operator inspects: state, smoothed RTT, congestion window, retransmits.
    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            state: self.state,
            srtt: self.rtt.srtt(),
            cwnd: self.cwnd,
            retransmits: self.retransmits,
        }
    }

    pub fn buffers_allocated(&self) -> usize {
        self.send.allocated() + self.recv.allocated()
    }

    #[cfg(test)]
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }
}
