//! Named counters. Every dropped input has a reason; the data plane exports them as metric labels.

macro_rules! counters {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $label:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The metric label.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

counters! {
    /// Why an input frame or segment was dropped.
    DropReason {
        EthTruncated => "eth_truncated",
        EthNotForUs => "eth_not_for_us",
        EthUnknownType => "eth_unknown_ethertype",
        ArpMalformed => "arp_malformed",
        ArpNotForUs => "arp_not_for_us",
        Ipv4Truncated => "ipv4_truncated",
        Ipv4Malformed => "ipv4_malformed",
        Ipv4Checksum => "ipv4_checksum",
        Ipv4Fragment => "ipv4_fragment",
        Ipv4NotForUs => "ipv4_not_for_us",
        Ipv4Unsupported => "ipv4_unsupported",
        Ipv4UnknownProtocol => "ipv4_unknown_protocol",
        IcmpMalformed => "icmp_malformed",
        IcmpChecksum => "icmp_checksum",
        IcmpIgnored => "icmp_ignored",
        TcpTruncated => "tcp_truncated",
        TcpMalformed => "tcp_malformed",
        TcpChecksum => "tcp_checksum",
        TcpBadPort => "tcp_bad_port",
        TcpNoConnection => "tcp_no_connection",
        TcpUnacceptable => "tcp_unacceptable",
        TcpBadAck => "tcp_bad_ack",
        TcpRstOutOfWindow => "tcp_rst_out_of_window",
        TcpSynCookieInvalid => "tcp_syncookie_invalid",
        TcpReassemblyFull => "tcp_reassembly_full",
        TcpBeyondWindow => "tcp_beyond_window",
        TcpTooManyConnections => "tcp_too_many_connections",
        TcpAfterClose => "tcp_data_after_close",
        NeighQueueFull => "neigh_queue_full",
        NeighUnresolved => "neigh_unresolved",
        NeighCacheFull => "neigh_cache_full",
        NoRoute => "no_route",
        TxBufferTooSmall => "tx_buffer_too_small",
        ControlQueueFull => "control_queue_full",
    }
}

counters! {
    /// Things that happened, for metrics and tests.
    Counter {
        FramesIn => "frames_in",
        FramesOut => "frames_out",
        SegmentsIn => "segments_in",
        SegmentsOut => "segments_out",
        Retransmits => "retransmits",
        FastRetransmits => "fast_retransmits",
        RtoTimeouts => "rto_timeouts",
        TailLossProbes => "tail_loss_probes",
        RackLost => "rack_marked_lost",
        SackBlocksIgnored => "sack_blocks_ignored",
        DsackReceived => "dsack_received",
        SynCookiesSent => "syncookies_sent",
        SynCookiesAccepted => "syncookies_accepted",
        ChallengeAcks => "challenge_acks",
        InvalidAcksSuppressed => "invalid_acks_suppressed",
        RstsSent => "rsts_sent",
        RstsReceived => "rsts_received",
        ZeroWindowProbes => "zero_window_probes",
        KeepalivesSent => "keepalives_sent",
        KeepaliveTimeouts => "keepalive_timeouts",
        ZeroWindowTimeouts => "zero_window_timeouts",
        TimeWaitEvicted => "time_wait_evicted",
        TimeWaitReused => "time_wait_reused",
        ArpRequestsSent => "arp_requests_sent",
        ArpRepliesSent => "arp_replies_sent",
        IcmpEchoReplies => "icmp_echo_replies",
        ConnectionsAccepted => "connections_accepted",
        ConnectionsConnected => "connections_connected",
        OutOfOrderSegments => "out_of_order_segments",
        DuplicateSegments => "duplicate_segments",
    }
}

/// Counter storage: one `u64` per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    drops: [u64; 64],
    counters: [u64; 64],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            drops: [0; 64],
            counters: [0; 64],
        }
    }
}

impl Stats {
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
    #[inline]
    pub fn inc(&mut self, c: Counter) {
        self.counters[c as usize] += 1;
    }
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Adds `other`'s counts to these (a worker's stacks, one per port, summed).
    pub fn add(&mut self, other: &Stats) {
        for (a, b) in self.drops.iter_mut().zip(&other.drops) {
            *a += b;
        }
        for (a, b) in self.counters.iter_mut().zip(&other.counters) {
            *a += b;
        }
    }
    /// Non-zero drop counters with their labels.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (r.label(), self.drops(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_fit_and_labels_are_unique() {
        assert!(DropReason::ALL.len() <= 64 && Counter::ALL.len() <= 64);
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
        let mut labels: Vec<_> = Counter::ALL.iter().map(|c| c.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Counter::ALL.len());
        // Metric labels: snake_case.
        for l in DropReason::ALL
            .iter()
            .map(|r| r.label())
            .chain(Counter::ALL.iter().map(|c| c.label()))
        {
            assert!(
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{l}"
            );
        }
        assert!(Counter::ALL.contains(&Counter::InvalidAcksSuppressed));
    }

    #[test]
    fn add_sums_every_counter() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.drop(DropReason::TcpChecksum);
        b.drop(DropReason::TcpChecksum);
        b.drop(DropReason::NoRoute);
        b.inc(Counter::Retransmits);
        a.add(&b);
        assert_eq!(a.drops(DropReason::TcpChecksum), 2);
        assert_eq!(a.drops(DropReason::NoRoute), 1);
        assert_eq!(a.get(Counter::Retransmits), 1);
        assert_eq!(a.total_drops(), 3);
    }
}
