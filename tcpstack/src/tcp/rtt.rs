//! Retransmission timeout estimation (RFC 6298), with a 200 ms floor.

use std::time::Duration;

pub const MIN_RTO: Duration = Duration::from_millis(200);
pub const MAX_RTO: Duration = Duration::from_secs(60);
pub const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Clock granularity G in RFC 6298 §2.
const GRANULARITY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    backoff: u32,
    min_rto: Duration,
}

impl RttEstimator {
    pub fn new(min_rto: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
            backoff: 0,
            min_rto,
        }
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// RFC 6298 §2.2 and §2.3.
    pub fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + delta / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = (srtt + GRANULARITY.max(self.rttvar * 4)).clamp(self.min_rto, MAX_RTO);
        self.backoff = 0;
    }

    /// The current timeout including exponential backoff (RFC 6298 §5.5).
    pub fn rto(&self) -> Duration {
        (self.rto * (1u32 << self.backoff.min(16))).min(MAX_RTO)
    }

    pub fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(16);
    }

    pub fn backoffs(&self) -> u32 {
        self.backoff
    }

    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_and_backoff() {
        let mut e = RttEstimator::new(MIN_RTO);
        assert_eq!(e.rto(), INITIAL_RTO);
        e.sample(Duration::from_micros(50));
        assert_eq!(e.rto(), MIN_RTO);
        e.back_off();
        e.back_off();
        assert_eq!(e.rto(), MIN_RTO * 4);
        for _ in 0..40 {
            e.back_off();
        }
        assert_eq!(e.rto(), MAX_RTO);
    }

    #[test]
    fn follows_rfc6298_formula() {
        let mut e = RttEstimator::new(Duration::ZERO);
        e.sample(Duration::from_millis(100));
        // srtt 100, rttvar 50 → rto 300
        assert_eq!(e.rto(), Duration::from_millis(300));
        e.sample(Duration::from_millis(200));
        // rttvar = 37.5 + 25 = 62.5, srtt = 87.5 + 25 = 112.5, rto = 112.5 + 250 = 362.5
        assert_eq!(e.rto(), Duration::from_micros(362_500));
    }
}
