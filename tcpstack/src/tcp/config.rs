//! Per-connection TCP settings, with the defaults a gateway wants.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    pub interval: Duration,
    /// Unanswered probes before the connection is reset.
    pub probes: u32,
}

#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Send buffer cap in bytes (default 256 KiB). Writes beyond it are refused: backpressure.
    /// Storage grows to it as data needs room (see `buffer_release_delay`).
    pub send_buffer: usize,
    /// Receive buffer cap in bytes (default 256 KiB); also bounds the advertised window.
    /// Storage grows to it as data needs room (see `buffer_release_delay`).
    pub recv_buffer: usize,
    /// How long a connection keeps the storage of a send or receive buffer that has emptied
    /// (storage starts at 4 KiB and doubles as data needs room, up to the caps above): it goes
    /// this long after the buffer emptied, if the buffer is empty then. A connection that
    /// moves data empties its buffers many times a second; giving them back each time would
    /// cost an allocation (and a regrowth) each time. A receive buffer is freed as soon as the
    /// peer's FIN is in and the data before it read, a send buffer as soon as the application
    /// has shut down its side and everything is acknowledged; a connection that closes or
    /// resets frees both. Default 1 s.
    pub buffer_release_delay: Duration,
    /// Offer window scaling (RFC 7323 §2). Default on.
    pub window_scaling: bool,
    /// Offer SACK-permitted and report SACK blocks (RFC 2018). Default on.
    pub sack: bool,
    /// Congestion control (RFC 9438 CUBIC by default; NewReno selectable).
    pub congestion: super::cc::Congestion,
    /// Tail loss probes (RFC 8985 §7): a probe after about two round trips without an ACK,
    /// so a lost tail of data does not wait for the retransmission timeout. Only with SACK.
    /// Default on.
    pub tail_loss_probe: bool,
    /// Offer timestamps (RFC 7323 §3), used for PAWS. Default on.
    pub timestamps: bool,
    /// Nagle's algorithm (RFC 9293 §3.8.6.2.1). Default on.
    pub nagle: bool,
    /// Delayed-ACK timeout (RFC 9293 §3.8.6.3 allows up to 500 ms); `None` acks every segment.
    /// Default 40 ms.
    pub delayed_ack: Option<Duration>,
    /// Lower bound of the retransmission timeout. Default 200 ms.
    pub min_rto: Duration,
    /// Initial congestion window in segments (RFC 6928). Default 10.
    pub initial_window: u32,
    /// SYN (or SYN-ACK) retransmissions before giving up. Default 6.
    pub syn_retries: u32,
    /// Data retransmissions of one segment before the connection is reset. Default 15.
    pub max_retransmits: u32,
    /// How long the peer may keep its window at zero while we have data (or a FIN) to send.
    /// The clock starts when zero-window probing begins and restarts at any window opening,
    /// even of one byte; past it the connection is reset (a RST to the peer,
    /// `ResetReason::ZeroWindowTimeout`), as Linux bounds probing with `tcp_retries2` or
    /// `TCP_USER_TIMEOUT`. A peer that answers probes but never reads otherwise holds the
    /// connection and its send buffer forever. Default 60 s; `Duration::MAX` never resets.
    pub persist_timeout: Duration,
    /// Least time between two ACKs a connection sends in answer to segments it drops: out of
    /// the receive window or failing PAWS (RFC 9293 §3.10.7.4, RFC 7323 §5.3), or
    /// acknowledging what we never sent or long ago acknowledged (RFC 5961 §5.2). Each would
    /// otherwise draw one ACK, so a flood of them draws a flood, and two peers that disagree
    /// about the sequence space answer each other's ACKs forever: the ACK throttling that
    /// RFC 9293 §3.10.7.4 points to (RFC 5961 §7 and its erratum 4772). Answers in between are
    /// not sent but counted (`Counter::InvalidAcksSuppressed`). Old or out-of-window segments
    /// with data or a FIN are still answered every time: they cannot loop, and a sender whose
    /// ACKs were lost needs the answer (as Linux's `tcp_oow_rate_limited`). Linux's
    /// `net.ipv4.tcp_invalid_ratelimit`; default 500 ms, as there. `Duration::ZERO` answers
    /// every one.
    pub invalid_ack_interval: Duration,
    /// Keepalive probes for every connection; default off. `Stack::set_keepalive` changes it
    /// for one connection.
    pub keepalive: Option<Keepalive>,
    /// How long a closed connection stays in TIME-WAIT (2 MSL). Default 60 s.
    pub time_wait: Duration,
    /// How long a connection closed by the application waits in FIN-WAIT-2 for the peer's FIN.
    /// Default 60 s.
    pub fin_wait2_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            send_buffer: 256 * 1024,
            recv_buffer: 256 * 1024,
            buffer_release_delay: Duration::from_secs(1),
            window_scaling: true,
            sack: true,
            timestamps: true,
            congestion: super::cc::Congestion::Cubic,
            tail_loss_probe: true,
            nagle: true,
            delayed_ack: Some(Duration::from_millis(40)),
            min_rto: super::rtt::MIN_RTO,
            initial_window: 10,
            syn_retries: 6,
            max_retransmits: 15,
            persist_timeout: Duration::from_secs(60),
            invalid_ack_interval: Duration::from_millis(500),
            keepalive: None,
            time_wait: Duration::from_secs(60),
            fin_wait2_timeout: Duration::from_secs(60),
        }
    }
}
