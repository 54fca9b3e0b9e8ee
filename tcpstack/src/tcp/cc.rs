//! Congestion control: the window's growth in congestion avoidance and its reduction on a
//! congestion event. CUBIC (RFC 9438) is the default; NewReno (RFC 5681 §3.1, RFC 6582)
//! is selectable. Slow start, recovery and the retransmission timeout are in `conn.rs`.

use crate::time::Instant;
use std::time::Duration;

/// Which congestion control a connection uses ([`super::TcpConfig::congestion`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// RFC 9438, as Linux's default.
    #[default]
    Cubic,
    /// RFC 5681 / RFC 6582: one segment per round trip, halved on loss.
    NewReno,
}

/// RFC 9438 §4.1: C.
pub const CUBIC_C: f64 = 0.4;
/// RFC 9438 §4.6: β_cubic.
pub const CUBIC_BETA: f64 = 0.7;

/// CUBIC's state, windows in segments and times in seconds (RFC 9438 §4).
#[derive(Clone, Copy, Debug, Default)]
struct Cubic {
    /// W_max: the window before the last reduction.
    w_max: f64,
    /// cwnd_prior: the window when ssthresh was last set.
    cwnd_prior: f64,
    /// K: time to grow back to W_max.
    k: f64,
    /// The start of the current congestion avoidance stage.
    epoch: Option<Instant>,
    /// W_est: the Reno-friendly estimate (§4.3).
    w_est: f64,
    /// Fractional segments of growth not yet added to cwnd.
    carry: f64,
}

/// RFC 9438 §4.2 eq. 2: K = cbrt((W_max - cwnd_epoch) / C), zero if below.
pub fn cubic_k(w_max: f64, cwnd_epoch: f64) -> f64 {
    ((w_max - cwnd_epoch).max(0.0) / CUBIC_C).cbrt()
}

/// RFC 9438 §4.2 eq. 1: W_cubic(t) = C (t - K)^3 + W_max.
pub fn w_cubic(t: f64, k: f64, w_max: f64) -> f64 {
    let d = t - k;
    CUBIC_C * d * d * d + w_max
}

/// RFC 9438 §4.3: α_cubic = 3 (1 - β) / (1 + β).
pub fn cubic_alpha() -> f64 {
    3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)
}

#[derive(Clone, Copy, Debug)]
pub struct Cc {
    algo: Congestion,
    cubic: Cubic,
}

impl Cc {
    pub fn new(algo: Congestion) -> Self {
        Cc {
            algo,
            cubic: Cubic::default(),
        }
    }

    pub fn algo(&self) -> Congestion {
        self.algo
    }

    /// A congestion event (loss detected, or a retransmission timeout): returns the new
    /// ssthresh in bytes. `flight` is the data outstanding.
    pub fn on_congestion(&mut self, cwnd: usize, flight: usize, smss: usize) -> usize {
        match self.algo {
            // RFC 5681 eq. 4.
            Congestion::NewReno => (flight / 2).max(2 * smss),
            Congestion::Cubic => {
                let c = &mut self.cubic;
                let w = cwnd as f64 / smss as f64;
                // §4.7 fast convergence: release bandwidth when the window shrank since.
                c.w_max = if w < c.w_max {
                    w * (1.0 + CUBIC_BETA) / 2.0
                } else {
                    w
                };
                c.cwnd_prior = w;
                c.epoch = None;
                ((cwnd as f64 * CUBIC_BETA) as usize).max(2 * smss)
            }
        }
    }

    /// Growth in congestion avoidance when `acked` bytes were newly acknowledged: the new
    /// cwnd. `rtt` is the smoothed round-trip time.
    pub fn on_ack_ca(
        &mut self,
        cwnd: usize,
        acked: usize,
        smss: usize,
        now: Instant,
        rtt: Duration,
    ) -> usize {
        match self.algo {
            // About one SMSS per RTT (RFC 5681 §3.1).
            Congestion::NewReno => cwnd + (smss * smss / cwnd.max(1)).max(1),
            Congestion::Cubic => {
                let c = &mut self.cubic;
                let w = cwnd as f64 / smss as f64;
                let segs = acked as f64 / smss as f64;
                let epoch = match c.epoch {
                    Some(e) => e,
                    None => {
                        // §4.2: a new congestion avoidance stage; after slow start without a
                        // loss, W_max is the window now and K is 0 (§4.10).
                        c.epoch = Some(now);
                        if c.w_max < w {
                            c.w_max = w;
                            c.cwnd_prior = w;
                        }
                        c.k = cubic_k(c.w_max, w);
                        c.w_est = w;
                        c.carry = 0.0;
                        now
                    }
                };
                let t = now.saturating_duration_since(epoch).as_secs_f64();
                // §4.3: the Reno-friendly estimate, α_cubic until it reaches cwnd_prior.
                let alpha = if c.w_est >= c.cwnd_prior {
                    1.0
                } else {
                    cubic_alpha()
                };
                c.w_est += alpha * segs / w.max(1.0);
                let cubic_now = w_cubic(t, c.k, c.w_max);
                let grow = if cubic_now < c.w_est {
                    // §4.3: the Reno-friendly region.
                    (c.w_est - w).max(0.0)
                } else {
                    // §4.4/4.5: aim at W_cubic one RTT ahead, within [cwnd, 1.5 cwnd].
                    let target = w_cubic(t + rtt.as_secs_f64(), c.k, c.w_max).clamp(w, 1.5 * w);
                    (target - w) / w * segs
                };
                c.carry += grow;
                let whole = c.carry.floor();
                c.carry -= whole;
                cwnd + (whole * smss as f64) as usize
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMSS: usize = 1000;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn rfc9438_formulas() {
        // K = cbrt(W_max (1 - β) / C) after a reduction to β W_max (§4.2 eq. 2).
        let k = cubic_k(100.0, 70.0);
        assert!(close(k, (100.0f64 * 0.3 / 0.4).cbrt()));
        assert!(close(k, 75.0f64.cbrt()));
        // W_cubic(0) = cwnd_epoch, W_cubic(K) = W_max, symmetric around K.
        assert!(close(w_cubic(0.0, k, 100.0), 70.0));
        assert!(close(w_cubic(k, k, 100.0), 100.0));
        assert!(close(w_cubic(k + 1.0, k, 100.0), 100.4));
        assert!(close(w_cubic(k - 1.0, k, 100.0), 99.6));
        // α_cubic = 3 (1 - 0.7) / 1.7.
        assert!(close(cubic_alpha(), 0.9 / 1.7));
    }

    #[test]
    fn cubic_reduction_and_fast_convergence() {
        let mut cc = Cc::new(Congestion::Cubic);
        assert_eq!(cc.on_congestion(100 * SMSS, 100 * SMSS, SMSS), 70 * SMSS);
        assert!(close(cc.cubic.w_max, 100.0));
        // A second loss below W_max: W_max = cwnd (1 + β) / 2 (§4.7).
        assert_eq!(cc.on_congestion(80 * SMSS, 80 * SMSS, SMSS), 56 * SMSS);
        assert!(close(cc.cubic.w_max, 80.0 * 1.7 / 2.0));
        // Never below two segments.
        assert_eq!(cc.on_congestion(SMSS, SMSS, SMSS), 2 * SMSS);
    }

    /// Drives one congestion avoidance stage from cwnd 70 after W_max 100, a full window
    /// acknowledged per RTT, and checks cwnd against W_cubic one RTT ahead.
    #[test]
    fn cubic_follows_w_cubic_in_the_concave_region() {
        let mut cc = Cc::new(Congestion::Cubic);
        let mut cwnd = cc.on_congestion(100 * SMSS, 100 * SMSS, SMSS);
        // A long RTT, so the cubic function (not the Reno-friendly one) governs.
        let rtt = Duration::from_millis(100);
        let k = cubic_k(100.0, 70.0);
        let mut now = Instant::from_millis(10_000);
        for round in 0..60 {
            // One ACK per segment of the window.
            let segs = cwnd / SMSS;
            for _ in 0..segs {
                cwnd = cc.on_ack_ca(cwnd, SMSS, SMSS, now, rtt);
            }
            now += rtt;
            let t = (round + 1) as f64 * 0.1;
            let w = w_cubic(t, k, 100.0);
            let got = cwnd as f64 / SMSS as f64;
            // Within a couple of segments of the curve (per-ACK steps lag a little).
            assert!(
                (got - w).abs() <= 3.0 + 0.02 * w,
                "round {round}: cwnd {got} vs W_cubic {w}"
            );
        }
        // Past K (about 4.2 s) the window has grown back beyond W_max.
        assert!(cwnd > 100 * SMSS);
    }

    /// On a short RTT the Reno-friendly estimate governs: growth of α_cubic segments per RTT
    /// (RFC 9438 §4.3), then 1 segment per RTT once W_est passes cwnd_prior.
    #[test]
    fn cubic_reno_friendly_region() {
        let mut cc = Cc::new(Congestion::Cubic);
        let mut cwnd = cc.on_congestion(20 * SMSS, 20 * SMSS, SMSS);
        assert_eq!(cwnd, 14 * SMSS);
        let rtt = Duration::from_micros(100);
        let mut now = Instant::from_millis(1_000);
        let start = cwnd;
        for _ in 0..10 {
            for _ in 0..cwnd / SMSS {
                cwnd = cc.on_ack_ca(cwnd, SMSS, SMSS, now, rtt);
            }
            now += rtt;
        }
        // Ten RTTs at α ≈ 0.53 segments per RTT: about 5 segments (W_cubic grows far slower
        // at t ≈ 1 ms).
        let grown = (cwnd - start) as f64 / SMSS as f64;
        assert!((4.0..=6.0).contains(&grown), "grew {grown} segments");
    }

    #[test]
    fn newreno_halves_flight_and_adds_a_segment_per_window() {
        let mut cc = Cc::new(Congestion::NewReno);
        assert_eq!(cc.on_congestion(100 * SMSS, 60 * SMSS, SMSS), 30 * SMSS);
        let mut cwnd = 10 * SMSS;
        for _ in 0..10 {
            cwnd = cc.on_ack_ca(cwnd, SMSS, SMSS, Instant::ZERO, Duration::ZERO);
        }
        assert!((10 * SMSS + 900..=11 * SMSS).contains(&cwnd));
    }
}
