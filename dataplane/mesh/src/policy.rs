//! The state behind a route's request policies (`control::snapshot::RoutePolicy`): token
//! buckets for rate limits, retry budgets, backoff, and the per-route counters of every
//! decision. Per worker, like the balancers; the counters are shared by every worker's
//! engine and read at scrape time.

use control::snapshot::{RateLimitRt, RetryBudgetRt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tcpstack::Instant;

/// A token bucket (`rate` tokens a second, at most `burst`), refilled lazily from `now`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(limit: &RateLimitRt, share: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: burst(limit, share),
            at: now,
        }
    }

    /// Takes a token; `Err(wait)`: none left, the next comes in `wait`.
    pub fn take(&mut self, limit: &RateLimitRt, share: u32, now: Instant) -> Result<(), Duration> {
        let rate = limit.per_second / f64::from(share.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst(limit, share));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// A worker's share of a burst: at least one token.
fn burst(limit: &RateLimitRt, share: u32) -> f64 {
    (f64::from(limit.burst) / f64::from(share.max(1))).max(1.0)
}

/// Buckets of the rate limits of one worker, by (route policy id, caller identity when the
/// limit is per identity). Bounded: past `MAX_BUCKETS` the fullest ones (idle longest) go.
#[derive(Default)]
pub struct Buckets {
    map: HashMap<(u32, Option<String>), Bucket>,
    generation: u64,
}

/// Rate-limit buckets one worker keeps at most (per-identity limits make one per caller).
pub const MAX_BUCKETS: usize = 10_000;

impl Buckets {
    /// Takes a token from the bucket of `(id, who)`; `generation` is the tables': a reload
    /// starts every bucket afresh (its limits may have changed).
    pub fn take(
        &mut self,
        generation: u64,
        (id, who): (u32, Option<&str>),
        limit: &RateLimitRt,
        share: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
        }
        let key = (id, who.map(str::to_owned));
        if !self.map.contains_key(&key) && self.map.len() >= MAX_BUCKETS {
            // A bucket refilled to full is the same as a new one: dropping those loses nothing.
            let rate = limit.per_second / f64::from(share.max(1));
            let full = burst(limit, share);
            self.map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < full
            });
            if self.map.len() >= MAX_BUCKETS {
                self.map.clear();
            }
        }
        self.map
            .entry(key)
            .or_insert_with(|| Bucket::full(limit, share, now))
            .take(limit, share, now)
    }
}

/// Linkerd's retry budget for one service on one worker: retries may add `ratio` of the
/// requests of the last `ttl`, plus `min_per_second` a second. Kept in 10 slices of `ttl`.
#[derive(Debug, Clone)]
pub struct Budget {
    slices: [(u64, u32, u32); 10],
    /// The first request seen: the floor grows with the time since, up to `ttl`.
    since: Option<Instant>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            slices: [(u64::MAX, 0, 0); 10],
            since: None,
        }
    }
}

impl Budget {
    fn slice(&mut self, b: &RetryBudgetRt, now: Instant) -> &mut (u64, u32, u32) {
        let width = (b.ttl.as_micros() as u64 / 10).max(1);
        let n = now.as_micros() / width;
        let s = &mut self.slices[(n % 10) as usize];
        if s.0 != n {
            *s = (n, 0, 0);
        }
        s
    }

    fn window(&self, b: &RetryBudgetRt, now: Instant) -> (u32, u32) {
        let width = (b.ttl.as_micros() as u64 / 10).max(1);
        let n = now.as_micros() / width;
        self.slices
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 + 10 > n && s.0 <= n)
            .fold((0, 0), |(r, x), s| (r + s.1, x + s.2))
    }

    pub fn request(&mut self, b: &RetryBudgetRt, now: Instant) {
        self.since.get_or_insert(now);
        self.slice(b, now).1 += 1;
    }

    /// Spends one retry if the budget allows it.
    pub fn try_retry(&mut self, b: &RetryBudgetRt, share: u32, now: Instant) -> bool {
        let (requests, retries) = self.window(b, now);
        // `min_per_second` a second of the window so far (at least one second, at most `ttl`):
        // a fresh gateway may retry at once, and a short burst gets no more than its time's worth.
        let span = self
            .since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(b.ttl)
            .as_secs_f64()
            .max(1.0);
        let floor = b.min_per_second * span / f64::from(share.max(1));
        // This retry included: retries never exceed the budget, even by one.
        if f64::from(retries) + 1.0 <= b.ratio * f64::from(requests) + floor {
            self.slice(b, now).2 += 1;
            true
        } else {
            false
        }
    }
}

/// The wait before retry `n` (1 for the first retry): full jitter over an exponential
/// bound, `base × 2^(n-1)`, at most 10 × `base` (Envoy's default cap). `unit` is a uniform
/// draw in [0, 1).
pub fn backoff(base: Duration, n: u8, unit: f64) -> Duration {
    let bound = base
        .saturating_mul(1u32 << u32::from(n.saturating_sub(1)).min(16))
        .min(base.saturating_mul(10));
    bound.mul_f64(unit.clamp(0.0, 1.0))
}

/// Why a request was tried again, or not: labels of the per-route counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Retry(&'static str),
    RetrySkipped(&'static str),
    Fault(&'static str),
    RateLimited,
    /// An upstream attempt of the route's request (the first, and each retry).
    Attempt,
    /// A copy of the request went to the route's mirror service.
    Mirrored,
    /// A copy the route's mirror wanted but did not send, by why.
    MirrorSkipped(&'static str),
    /// A copy that got no whole response (connect failure, reset, timeout, bad response).
    MirrorFailed,
    /// A request the service's circuit breaker refused, by the cap that tripped (counted
    /// under the service's name, not a route's).
    Overflow(&'static str),
}

/// Per-route counters of policy decisions, shared by every worker's engine. Touched only
/// when a policy acts (a retry, a skip, a fault, a limit), never per plain request.
#[derive(Default)]
pub struct PolicyStats {
    counts: Mutex<BTreeMap<(String, Decision), u64>>,
}

impl PolicyStats {
    pub fn count(&self, route: &str, d: Decision) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match c.get_mut(&(route.to_owned(), d)) {
            Some(n) => *n += 1,
            None => {
                c.insert((route.to_owned(), d), 1);
            }
        }
    }

    /// Every (route, decision, count) so far.
    pub fn snapshot(&self) -> Vec<(String, Decision, u64)> {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.iter().map(|((r, d), n)| (r.clone(), *d, *n)).collect()
    }

    pub fn get(&self, route: &str, d: Decision) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&(route.to_owned(), d)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(1_000_000 + ms * 1000)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimitRt {
            per_second: 10.0,
            burst: 5,
            per_identity: false,
        };
        let mut b = Bucket::full(&l, 1, t(0));
        for _ in 0..5 {
            assert!(b.take(&l, 1, t(0)).is_ok());
        }
        let wait = b.take(&l, 1, t(0)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.take(&l, 1, t(99)).is_err());
        assert!(b.take(&l, 1, t(100)).is_ok());
        // Over a long run: the rate, not more.
        let mut ok = 0;
        for ms in (200..10_200).step_by(10) {
            ok += u32::from(b.take(&l, 1, t(ms)).is_ok());
        }
        assert!((99..=101).contains(&ok), "{ok}");
        // Two workers share the rate.
        let mut b = Bucket::full(&l, 2, t(0));
        let got = (0..1000)
            .filter(|i| b.take(&l, 2, t(i * 10)).is_ok())
            .count();
        assert!((50..=53).contains(&got), "{got}");
    }

    #[test]
    fn buckets_are_bounded_and_per_identity() {
        let l = RateLimitRt {
            per_second: 1.0,
            burst: 1,
            per_identity: true,
        };
        let mut bs = Buckets::default();
        assert!(bs.take(1, (0, Some("a")), &l, 1, t(0)).is_ok());
        assert!(bs.take(1, (0, Some("a")), &l, 1, t(0)).is_err());
        assert!(bs.take(1, (0, Some("b")), &l, 1, t(0)).is_ok());
        for i in 0..MAX_BUCKETS * 2 {
            let _ = bs.take(1, (0, Some(&format!("x{i}"))), &l, 1, t(0));
            assert!(bs.map.len() <= MAX_BUCKETS);
        }
        // A reload starts afresh.
        assert!(bs.take(2, (0, Some("a")), &l, 1, t(0)).is_ok());
    }

    #[test]
    fn the_budget_caps_retries_at_the_ratio_plus_the_floor() {
        let b = RetryBudgetRt {
            ratio: 0.2,
            min_per_second: 1.0,
            ttl: Duration::from_secs(10),
        };
        let mut budget = Budget::default();
        for _ in 0..100 {
            budget.request(&b, t(0));
        }
        let allowed = (0..1000).filter(|_| budget.try_retry(&b, 1, t(0))).count();
        assert_eq!(allowed, 21, "20 % of 100 plus 1/s over the first second");
        let more = (0..1000)
            .filter(|_| budget.try_retry(&b, 1, t(5_000)))
            .count();
        assert_eq!(
            more, 4,
            "the floor grows with time: 1/s over 5 s, 25 in all"
        );
        // After the ttl the window is empty again: the floor alone, at most ttl's worth.
        let later = (0..1000)
            .filter(|_| budget.try_retry(&b, 1, t(20_000)))
            .count();
        assert_eq!(later, 10);
    }

    #[test]
    fn backoff_doubles_under_a_cap_with_full_jitter() {
        let base = Duration::from_millis(25);
        assert_eq!(backoff(base, 1, 0.999_999).as_millis(), 24);
        assert_eq!(backoff(base, 2, 0.5), Duration::from_millis(25));
        assert_eq!(backoff(base, 3, 0.5), Duration::from_millis(50));
        assert_eq!(
            backoff(base, 9, 0.5),
            Duration::from_millis(125),
            "capped at 10x"
        );
        assert_eq!(backoff(base, 255, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(base, 4, 0.0), Duration::ZERO);
    }
}
