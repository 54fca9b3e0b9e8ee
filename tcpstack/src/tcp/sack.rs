//! The sender's scoreboard: one record per segment in flight, marked SACKed (RFC 2018), lost
//! or retransmitted, with its send time for RACK (RFC 8985). Loss recovery (RFC 6675's pipe
//! and NextSeg, RACK-TLP) in `conn.rs` reads and marks it.
//!
//! Bounded: at most [`MAX_RECORDS`] records (the sender sends no new data while it is full),
//! each covering bytes between SND.UNA and SND.MAX of the send buffer. SACK blocks outside
//! that range, or not on record boundaries, change nothing and are counted.

use super::seq::Seq;
use crate::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// Most segments tracked in flight at once (a full 256 KiB send buffer of 1448-byte segments
/// takes 182).
pub const MAX_RECORDS: usize = 1024;

const SACKED: u8 = 1;
/// Marked lost and not retransmitted since.
const LOST: u8 = 2;
const RETRANS: u8 = 4;

#[derive(Clone, Copy, Debug)]
struct Rec {
    start: Seq,
    /// Exclusive; a FIN counts as one.
    end: Seq,
    sent: Instant,
    flags: u8,
}

impl Rec {
    fn len(&self) -> usize {
        self.end - self.start
    }
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// A block below the cumulative ACK (and not absurdly far below): a D-SACK (RFC 2883).
pub fn is_dsack(l: u32, r: u32, ack: Seq) -> bool {
    Seq(l) < Seq(r) && Seq(r) <= ack && ack.0.wrapping_sub(r) < 1 << 30
}

/// What one ACK changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Bytes newly SACKed.
    pub sacked: usize,
    /// SACK blocks that were ignored: outside SND.UNA..SND.MAX or reversed.
    pub ignored: u32,
    /// D-SACK blocks (RFC 2883): below SND.UNA, reporting a duplicate.
    pub dsack: u32,
}

#[derive(Debug, Default)]
pub struct Scoreboard {
    recs: VecDeque<Rec>,
    /// Bytes SACKed.
    sacked: usize,
    /// Bytes marked lost (not SACKed, not retransmitted since).
    lost: usize,
    /// Records SACKed.
    sacked_segs: u32,
    /// Records retransmitted and still in flight.
    retrans_segs: u32,
    /// Highest SACKed sequence number (RACK.fack).
    fack: Seq,
    // RACK (RFC 8985 §6.1): the most recently sent segment known delivered.
    rack_sent: Option<Instant>,
    rack_end: Seq,
    rack_rtt: Duration,
    min_rtt: Option<Duration>,
    /// Reordering was seen (RACK.reord).
    reordering: bool,
}

impl Scoreboard {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.recs.len() >= MAX_RECORDS
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// The sequence number after the last record.
    #[inline]
    pub fn end(&self) -> Option<Seq> {
        self.recs.back().map(|r| r.end)
    }

    #[inline]
    pub fn sacked_bytes(&self) -> usize {
        self.sacked
    }

    #[inline]
    pub fn lost_bytes(&self) -> usize {
        self.lost
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Forgets every record (the peer dropped what was in flight: a zero window).
    pub fn clear(&mut self) {
        self.recs.clear();
        self.sacked = 0;
        self.lost = 0;
        self.sacked_segs = 0;
        self.retrans_segs = 0;
    }

    /// Gives back the storage once nothing is in flight.
    pub fn release(&mut self) {
        if self.recs.is_empty() {
            self.recs = VecDeque::new();
        }
    }

    /// RFC 6675 §2 pipe: bytes in flight, less those SACKed or deemed lost.
    #[inline]
    pub fn pipe(&self, snd_una: Seq, snd_max: Seq) -> usize {
        if snd_max <= snd_una {
            return 0;
        }
        (snd_max - snd_una).saturating_sub(self.sacked + self.lost)
    }

    /// A new segment `[start, end)` went out at `now`. It must start where the last ended.
    pub fn on_send(&mut self, start: Seq, end: Seq, now: Instant) {
        if end <= start || self.is_full() {
            return;
        }
        if let Some(last) = self.recs.back() {
            if start != last.end {
                return;
            }
        }
        self.recs.push_back(Rec {
            start,
            end,
            sent: now,
            flags: 0,
        });
    }

    /// NextSeg (RFC 6675 §4, rule 1): the first range deemed lost and not yet retransmitted.
    #[inline]
    pub fn next_lost(&self) -> Option<(Seq, Seq)> {
        if self.lost == 0 {
            return None;
        }
        self.recs
            .iter()
            .find(|r| r.has(LOST))
            .map(|r| (r.start, r.end))
    }

    /// The last record not SACKed: what a tail loss probe sends again.
    pub fn last_unsacked(&self) -> Option<(Seq, Seq)> {
        self.recs
            .iter()
            .rev()
            .find(|r| !r.has(SACKED))
            .map(|r| (r.start, r.end))
    }

    /// `[start, sent_end)` of the record starting at `start` went out again at `now`. A record
    /// sent only in part is split; the rest keeps its marks.
    pub fn on_retransmit(&mut self, start: Seq, sent_end: Seq, now: Instant) {
        let i = self.recs.partition_point(|r| r.start < start);
        let Some(r) = self.recs.get(i).copied() else {
            return;
        };
        if r.start != start || r.has(SACKED) || sent_end <= start {
            return;
        }
        if sent_end < r.end && !self.is_full() {
            let rest = Rec {
                start: sent_end,
                ..r
            };
            self.recs[i].end = sent_end;
            self.recs.insert(i + 1, rest);
            if r.has(RETRANS) {
                self.retrans_segs += 1;
            }
        }
        let r = &mut self.recs[i];
        if r.has(LOST) {
            self.lost -= r.len();
        }
        if !r.has(RETRANS) {
            self.retrans_segs += 1;
        }
        r.flags = (r.flags & !LOST) | RETRANS;
        r.sent = now;
    }

    /// Marks every record not SACKed lost (a retransmission timeout). When the segment at
    /// SND.UNA was SACKed, the peer reneged (RFC 2018 §8): every SACK mark is dropped first.
    pub fn on_rto(&mut self) {
        if self.recs.front().is_some_and(|r| r.has(SACKED)) {
            for r in self.recs.iter_mut() {
                r.flags &= !SACKED;
            }
            self.sacked = 0;
            self.sacked_segs = 0;
        }
        let mut lost = 0;
        for r in self.recs.iter_mut() {
            if !r.has(SACKED) {
                r.flags |= LOST;
                lost += r.len();
            }
        }
        self.lost = lost;
    }

    fn delivered(&mut self, r: &Rec, now: Instant) {
        // RFC 8985 §6.2 step 2: a retransmitted segment's delivery is not an RTT sample
        // unless it cannot be the original's (no timestamps here to tell them apart).
        let rtt = now.saturating_duration_since(r.sent);
        if r.has(RETRANS) && self.min_rtt.is_some_and(|m| rtt < m) {
            return;
        }
        if !r.has(RETRANS) {
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        // Step 3: reordering when a never-retransmitted segment below the highest SACKed one
        // is delivered only now.
        if !r.has(RETRANS) && r.end < self.fack {
            self.reordering = true;
        }
        // Step 2: the most recently sent delivered segment.
        let newer = match self.rack_sent {
            None => true,
            Some(t) => r.sent > t || (r.sent == t && r.end > self.rack_end),
        };
        if newer {
            self.rack_sent = Some(r.sent);
            self.rack_end = r.end;
            self.rack_rtt = rtt;
        }
    }

    /// Processes an ACK: drops what `ack` covers, then marks what the SACK blocks cover.
    /// `snd_una` is the value before this ACK. Blocks partly covering a record leave it
    /// unmarked (a peer SACKs whole segments).
    pub fn on_ack(
        &mut self,
        ack: Seq,
        blocks: &[(u32, u32)],
        snd_max: Seq,
        now: Instant,
    ) -> AckOutcome {
        let mut out = AckOutcome::default();
        // Cumulatively acknowledged records. Of those never retransmitted, only the last one
        // not SACKed can move RACK (it was sent last), and the first one tells reordering.
        let mut first: Option<Rec> = None;
        let mut last: Option<Rec> = None;
        while let Some(r) = self.recs.front().copied() {
            if r.start >= ack {
                break;
            }
            if r.end > ack {
                // Part of a record: keep the rest.
                let cut = ack - r.start;
                let f = &mut self.recs[0];
                f.start = ack;
                if r.has(SACKED) {
                    self.sacked -= cut;
                }
                if r.has(LOST) {
                    self.lost -= cut;
                }
                self.delivered(&r, now);
                break;
            }
            self.recs.pop_front();
            if r.has(SACKED) {
                self.sacked -= r.len();
                self.sacked_segs -= 1;
            } else {
                if r.has(LOST) {
                    self.lost -= r.len();
                }
                if r.has(RETRANS) {
                    self.delivered(&r, now);
                } else {
                    if first.is_none() {
                        first = Some(r);
                    }
                    last = Some(r);
                }
            }
            if r.has(RETRANS) {
                self.retrans_segs -= 1;
            }
        }
        if let Some(f) = first {
            if f.end < self.fack {
                self.reordering = true;
            }
        }
        if let Some(l) = last {
            self.delivered(&l, now);
        }
        if self.fack < ack {
            self.fack = ack;
        }
        for &(l, r) in blocks {
            // Offsets from the cumulative ACK, unsigned: a block must lie in SND.UNA..SND.MAX.
            let span = snd_max.0.wrapping_sub(ack.0);
            let (lo, ro) = (l.wrapping_sub(ack.0), r.wrapping_sub(ack.0));
            if !(lo < ro && ro <= span) {
                if is_dsack(l, r, ack) {
                    out.dsack += 1; // RFC 2883: a duplicate reported; nothing to mark
                } else {
                    out.ignored += 1;
                }
                continue;
            }
            let (l, r) = (Seq(l), Seq(r));
            let mut i = self.recs.partition_point(|x| x.end <= l);
            while let Some(rec) = self.recs.get(i).copied() {
                if rec.start >= r {
                    break;
                }
                i += 1;
                if rec.start < l || rec.end > r || rec.has(SACKED) {
                    continue;
                }
                let len = rec.len();
                self.recs[i - 1].flags |= SACKED;
                self.sacked += len;
                self.sacked_segs += 1;
                out.sacked += len;
                if rec.has(LOST) {
                    self.recs[i - 1].flags &= !LOST;
                    self.lost -= len;
                }
                self.delivered(&rec, now);
                if rec.end > self.fack {
                    self.fack = rec.end;
                }
            }
        }
        out
    }

    /// RACK.reo_wnd (RFC 8985 §6.2 step 4).
    fn reo_wnd(&self, in_recovery: bool, srtt: Duration) -> Duration {
        if !self.reordering && (in_recovery || self.sacked_segs >= 3) {
            return Duration::ZERO;
        }
        (self.min_rtt.unwrap_or(Duration::ZERO) / 4).min(srtt)
    }

    /// RACK loss detection (RFC 8985 §6.2 step 5): marks lost each segment sent before the
    /// most recently delivered one by more than the reordering window. Returns whether any
    /// was newly marked, and when to look again for those not yet overdue.
    pub fn detect_loss(
        &mut self,
        now: Instant,
        in_recovery: bool,
        srtt: Duration,
    ) -> (bool, Option<Instant>) {
        let Some(rack_sent) = self.rack_sent else {
            return (false, None);
        };
        // Nothing can be overdue unless something after it was delivered: a SACK, or a
        // retransmission overtaken by newer segments.
        if self.sacked_segs == 0 && self.retrans_segs == 0 && self.lost == 0 {
            return (false, None);
        }
        let reo_wnd = self.reo_wnd(in_recovery, srtt);
        let wait = self.rack_rtt + reo_wnd;
        let mut newly = false;
        let mut timer: Option<Instant> = None;
        let rack_end = self.rack_end;
        for r in self.recs.iter_mut() {
            if r.flags & (SACKED | LOST) != 0 {
                continue;
            }
            let before = r.sent < rack_sent || (r.sent == rack_sent && r.end <= rack_end);
            if !before {
                continue;
            }
            let due = r.sent + wait;
            if due <= now {
                r.flags |= LOST;
                self.lost += r.end - r.start;
                newly = true;
            } else {
                timer = Some(timer.map_or(due, |t: Instant| t.max(due)));
            }
        }
        (newly, timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Ten 100-byte segments from 1000, sent 1 ms apart.
    fn board() -> Scoreboard {
        let mut s = Scoreboard::default();
        for i in 0..10u32 {
            s.on_send(Seq(1000 + i * 100), Seq(1100 + i * 100), t(i as u64));
        }
        s
    }

    #[test]
    fn sack_marks_and_pipe() {
        let mut s = board();
        let (una, max) = (Seq(1000), Seq(2000));
        assert_eq!(s.pipe(una, max), 1000);
        // Segments 0 and 5 lost; 1..5 and 6..10 SACKed.
        let o = s.on_ack(una, &[(1600, 2000), (1100, 1500)], max, t(20));
        assert_eq!(o.sacked, 800);
        assert_eq!(s.pipe(una, max), 200);
        let (lost, _) = s.detect_loss(t(20), false, Duration::from_millis(20));
        assert!(
            lost,
            "both holes are below the most recently delivered segment"
        );
        assert_eq!(s.pipe(una, max), 0);
        assert_eq!(s.next_lost(), Some((Seq(1000), Seq(1100))));
        s.on_retransmit(Seq(1000), Seq(1100), t(21));
        assert_eq!(s.next_lost(), Some((Seq(1500), Seq(1600))));
        s.on_retransmit(Seq(1500), Seq(1600), t(21));
        assert_eq!(s.next_lost(), None);
        assert_eq!(s.pipe(una, max), 200);
        // Both repaired in one round trip.
        s.on_ack(Seq(2000), &[], max, t(41));
        assert!(s.is_empty());
        assert_eq!((s.sacked_bytes(), s.lost_bytes()), (0, 0));
    }

    #[test]
    fn reordering_window_delays_marking() {
        let mut s = board();
        let max = Seq(2000);
        s.on_ack(Seq(1000), &[], max, t(10)); // nothing
        s.on_ack(Seq(1100), &[], max, t(10)); // min_rtt 10 ms
                                              // One SACK above a hole, not in recovery: reo_wnd = min_rtt / 4.
        s.on_ack(Seq(1100), &[(1200, 1300)], max, t(12));
        let (lost, timer) = s.detect_loss(t(12), false, Duration::from_millis(10));
        assert!(!lost);
        // Segment 1 sent at 1 ms; RACK.rtt = 12 - 2 = 10 ms; + 2.5 ms.
        assert_eq!(timer, Some(Instant::from_micros(13_500)));
        let (lost, _) = s.detect_loss(Instant::from_micros(13_500), false, Duration::ZERO);
        assert!(lost);
        assert_eq!(s.next_lost(), Some((Seq(1100), Seq(1200))));
    }

    #[test]
    fn lost_retransmission_is_detected() {
        let mut s = board();
        let max = Seq(2000);
        s.on_ack(Seq(1000), &[(1100, 1400)], max, t(10));
        assert!(s.detect_loss(t(10), true, Duration::from_millis(10)).0);
        s.on_retransmit(Seq(1000), Seq(1100), t(10));
        // Segments sent after the retransmission... none yet; new data goes out at 11 ms.
        s.on_send(Seq(2000), Seq(2100), t(11));
        // The new segment is SACKed but the retransmission is not: it was lost again.
        s.on_ack(Seq(1000), &[(2000, 2100), (1100, 1400)], Seq(2100), t(21));
        let (lost, _) = s.detect_loss(t(21), true, Duration::from_millis(10));
        assert!(lost);
        assert_eq!(s.next_lost(), Some((Seq(1000), Seq(1100))));
    }

    #[test]
    fn hostile_blocks_are_ignored() {
        let mut s = board();
        let (una, max) = (Seq(1000), Seq(2000));
        let o = s.on_ack(
            una,
            &[
                (500, 900),
                (1900, 2100),
                (1500, 1400),
                (0x8000_0000, 0x8000_1000),
            ],
            max,
            t(5),
        );
        assert_eq!(o.dsack, 1);
        assert_eq!(o.ignored, 3);
        assert_eq!(o.sacked, 0);
        assert_eq!(s.pipe(una, max), 1000);
        // Partly covering blocks mark nothing.
        let o = s.on_ack(una, &[(1150, 1250)], max, t(5));
        assert_eq!((o.sacked, o.ignored), (0, 0));
    }

    #[test]
    fn partial_ack_and_split_retransmission() {
        let mut s = board();
        s.on_rto();
        assert_eq!(s.lost_bytes(), 1000);
        s.on_retransmit(Seq(1000), Seq(1040), t(30));
        assert_eq!(s.lost_bytes(), 960);
        assert_eq!(s.next_lost(), Some((Seq(1040), Seq(1100))));
        s.on_ack(Seq(1050), &[], Seq(2000), t(31));
        assert_eq!(s.lost_bytes(), 950);
        assert_eq!(s.pipe(Seq(1050), Seq(2000)), 0);
    }

    #[test]
    fn reneging_clears_sack_marks_on_rto() {
        let mut s = board();
        s.on_ack(Seq(1000), &[(1000, 1200)], Seq(2000), t(5));
        assert_eq!(s.sacked_bytes(), 200);
        s.on_rto();
        assert_eq!(s.sacked_bytes(), 0);
        assert_eq!(s.lost_bytes(), 1000);
    }

    impl Scoreboard {
        /// The counters agree with the records; records are contiguous and ordered.
        fn check(&self) {
            let (mut sacked, mut lost, mut ss, mut rs) = (0, 0, 0, 0);
            for (i, r) in self.recs.iter().enumerate() {
                assert!(r.start < r.end);
                if i > 0 {
                    assert_eq!(self.recs[i - 1].end, r.start);
                }
                assert!(!(r.has(SACKED) && r.has(LOST)));
                if r.has(SACKED) {
                    sacked += r.len();
                    ss += 1;
                }
                if r.has(LOST) {
                    lost += r.len();
                }
                if r.has(RETRANS) {
                    rs += 1;
                }
            }
            assert_eq!((sacked, lost), (self.sacked, self.lost));
            assert_eq!((ss, rs), (self.sacked_segs, self.retrans_segs));
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Send(u16),
        Ack(u32, Vec<(u32, u32)>),
        Retransmit(u16, u16),
        Rto,
        Detect(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1u16..3000).prop_map(Op::Send),
            4 => (any::<u32>(), proptest::collection::vec((any::<u32>(), any::<u32>()), 0..5))
                .prop_map(|(a, b)| Op::Ack(a, b)),
            2 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Op::Retransmit(a, b)),
            1 => Just(Op::Rto),
            2 => any::<u8>().prop_map(Op::Detect),
        ]
    }

    proptest::proptest! {
        /// Whatever the peer's ACKs and SACK blocks say (near the window or anywhere in the
        /// sequence space), nothing panics and the counters stay true.
        #[test]
        fn hostile_acks_keep_the_scoreboard_consistent(
            base in proptest::prelude::any::<u32>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut s = Scoreboard::default();
            let mut una = Seq(base);
            let mut max = Seq(base);
            let mut now = Instant::from_millis(1000);
            for o in ops {
                now += Duration::from_micros(137);
                match o {
                    Op::Send(n) => {
                        if !s.is_full() {
                            let end = max + n as usize;
                            s.on_send(max, end, now);
                            max = end;
                        }
                    }
                    Op::Ack(a, blocks) => {
                        // Half the ACKs land in the window, half anywhere (the connection
                        // filters the latter before the scoreboard sees them).
                        let ack = if a & 1 == 0 && max > una {
                            una + (a as usize % ((max - una) + 1))
                        } else {
                            una
                        };
                        // Blocks near the window, made from the random words.
                        let blocks: Vec<(u32, u32)> = blocks
                            .into_iter()
                            .map(|(l, r)| {
                                if l & 3 == 0 {
                                    (l, r)
                                } else {
                                    let span = (max - una) as u32 + 4000;
                                    let l = una.0.wrapping_sub(2000).wrapping_add(l % span);
                                    (l, l.wrapping_add(r % 6000))
                                }
                            })
                            .collect();
                        s.on_ack(ack, &blocks, max, now);
                        una = ack;
                    }
                    Op::Retransmit(at, len) => {
                        if let Some((st, e)) = s.next_lost() {
                            let end = (st + (len as usize % (e - st) + 1)).min(e);
                            s.on_retransmit(st, end, now);
                        } else if max > una {
                            let st = una + (at as usize % (max - una));
                            s.on_retransmit(st, st + 1, now);
                        }
                    }
                    Op::Rto => s.on_rto(),
                    Op::Detect(r) => {
                        s.detect_loss(now, r & 1 == 0, Duration::from_micros(r as u64 * 10));
                    }
                }
                s.check();
                assert!(s.pipe(una, max) <= max - una);
                if let Some(f) = s.recs.front() {
                    assert!(f.start >= una);
                }
            }
        }
    }

    #[test]
    fn bounded() {
        let mut s = Scoreboard::default();
        for i in 0..(MAX_RECORDS as u32 + 10) {
            s.on_send(Seq(i), Seq(i + 1), t(0));
        }
        assert_eq!(s.len(), MAX_RECORDS);
        assert!(s.is_full());
    }
}
