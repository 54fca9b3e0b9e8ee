//! Load balancers over a service's endpoints, sans-IO.
//!
//! Each worker owns one [`Balancer`] per service: no shared state, no locks, so
//! least-request and EWMA see only this worker's requests (a choice every
//! per-core proxy makes; with RSS spreading clients the views converge).
//! Routes choose a backend subset first, so [`Balancer::pick`] takes the candidate
//! endpoint indices per call; state that depends on the set (round-robin
//! position, hash rings) is kept per distinct candidate set.
//!
//! Time comes from the caller (`now` since an arbitrary epoch) and randomness from
//! a seeded ChaCha, so every decision is reproducible in tests.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use control::schema::LbPolicy;
use control::snapshot::{HashKey, ServiceRt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use siphasher::sip::SipHasher13;

use super::http::RequestHead;

/// Fixed SipHash keys: hashes must agree across processes and restarts (every
/// gateway maps a key to the same endpoint), which std's `RandomState` does not.
const HASH_K0: u64 = 0x786d_6d65_7368_6b30; // "xmmeshk0"
const HASH_K1: u64 = 0x786d_6d65_7368_6b31;

/// A stable 64-bit hash of a ring-hash key (source address, header or cookie value).
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(HASH_K0, HASH_K1);
    h.write(bytes);
    h.finish()
}

/// The ring-hash key of a request per the service's `hash_key`; `None` when the
/// request lacks it (the balancer then picks at random).
pub fn request_hash(key: &HashKey, head: Option<&RequestHead>, source: IpAddr) -> Option<u64> {
    match key {
        HashKey::SourceIp => Some(match source {
            IpAddr::V4(a) => hash_key(&a.octets()),
            IpAddr::V6(a) => hash_key(&a.octets()),
        }),
        HashKey::Header(name) => head?.header(name).map(hash_key),
        HashKey::Cookie(name) => cookie(head?, name).map(hash_key),
    }
}

/// A cookie's value from the request's Cookie fields (`a=1; b=2`, RFC 6265 §4.2.1).
pub fn cookie<'a>(head: &'a RequestHead, name: &str) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// 0: never picked, unless every candidate has weight 0 (then all count equal).
    pub weight: u32,
    /// Stable identity for ring-hash points (e.g. [`hash_key`] of the address), so
    /// an endpoint keeps its place on the ring when others come and go.
    pub id: u64,
}

/// Peak-EWMA parameters (p2c-ewma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EwmaConfig {
    /// Time constant of the decay.
    pub tau: Duration,
    /// The estimate of an endpoint that has not answered yet.
    pub default_rtt: Duration,
    /// The latency a failed attempt counts as (peak-sensitive, so it counts at once and
    /// steers p2c away from an endpoint that fails fast).
    pub failure_penalty: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            tau: Duration::from_secs(10),
            default_rtt: Duration::from_millis(5),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Ewma {
    /// Nanoseconds, as of `stamp`.
    rtt: f64,
    /// `None`: no sample yet.
    stamp: Option<Duration>,
}

/// Points on the ring of the heaviest endpoint; lighter ones get proportionally
/// fewer (at least one). Enough that shares stay within a few percent of weights.
const RING_POINTS_MAX_WEIGHT: u64 = 1024;
/// Bound on the points of one ring (memory ~16 bytes each).
const RING_POINTS_TOTAL: u64 = 1 << 17;
/// Candidate sets with cached state; a route table has few, this only bounds
/// memory if something feeds many.
const MAX_SETS: usize = 256;

/// Per-worker, per-service load balancer.
///
/// Call order per request: [`pick`](Self::pick) → [`start`](Self::start) when the
/// request is sent → [`finish`](Self::finish) when its response is complete (or it
/// failed). Build a new balancer when the service's endpoint list changes.
#[derive(Debug, Clone)]
pub struct Balancer {
    policy: LbPolicy,
    endpoints: Vec<Endpoint>,
    outstanding: Vec<u32>,
    ewma: Vec<Ewma>,
    ewma_cfg: EwmaConfig,
    /// Smooth weighted round-robin state per candidate set, one value per position.
    rr: FxHashMap<Vec<u32>, Vec<i64>>,
    /// Sorted `(point, endpoint)` per candidate set.
    rings: FxHashMap<Vec<u32>, Vec<(u64, u32)>>,
    rng: ChaCha8Rng,
}

impl Balancer {
    pub fn new(policy: LbPolicy, endpoints: &[Endpoint], seed: u64) -> Self {
        Self {
            policy,
            endpoints: endpoints.to_vec(),
            outstanding: vec![0; endpoints.len()],
            ewma: vec![Ewma::default(); endpoints.len()],
            ewma_cfg: EwmaConfig::default(),
            rr: FxHashMap::default(),
            rings: FxHashMap::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The service's policy and endpoints; ring identities from the addresses.
    pub fn for_service(svc: &ServiceRt, seed: u64) -> Self {
        let eps: Vec<Endpoint> = svc
            .endpoints
            .iter()
            .map(|e| Endpoint {
                weight: e.weight,
                id: hash_key(e.address.to_string().as_bytes()),
            })
            .collect();
        Self::new(svc.load_balancer, &eps, seed)
    }

    pub fn with_ewma(mut self, cfg: EwmaConfig) -> Self {
        self.ewma_cfg = cfg;
        self
    }

    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Requests started and not finished on `ep`.
    pub fn outstanding(&self, ep: u32) -> u32 {
        self.outstanding.get(ep as usize).copied().unwrap_or(0)
    }

    /// The endpoint among `candidates` (indices into the service's endpoints) for
    /// the next request. `hash` is used by ring-hash only; without it ring-hash
    /// picks at random by weight. `None` when no candidate is a known endpoint.
    pub fn pick(&mut self, candidates: &[u32], hash: Option<u64>, now: Duration) -> Option<u32> {
        let all_zero = self.all_zero(candidates)?;
        match self.policy {
            LbPolicy::RoundRobin => self.pick_rr(candidates, all_zero),
            LbPolicy::LeastRequest => self.pick_least(candidates, all_zero),
            LbPolicy::P2cEwma => self.pick_p2c(candidates, all_zero, now),
            LbPolicy::RingHash => match hash {
                Some(h) => self.pick_ring(candidates, all_zero, h),
                None => self.pick_random(candidates, all_zero),
            },
        }
    }

    /// A request to `ep` begins.
    pub fn start(&mut self, ep: u32) {
        if let Some(o) = self.outstanding.get_mut(ep as usize) {
            *o = o.saturating_add(1);
        }
    }

    /// A request to `ep` ended after `latency`; `now` is the time it ended.
    pub fn finish(&mut self, ep: u32, latency: Duration, now: Duration) {
        let i = ep as usize;
        if let Some(o) = self.outstanding.get_mut(i) {
            *o = o.saturating_sub(1);
        }
        let tau = self.tau_ns();
        if let Some(e) = self.ewma.get_mut(i) {
            let sample = latency.as_nanos() as f64;
            e.rtt = match e.stamp {
                // Peak-sensitive (Finagle PeakEwma): a slower sample counts at once,
                // a faster one is blended in by the time since the last update.
                Some(stamp) if sample <= e.rtt => {
                    let w = (-(now.saturating_sub(stamp).as_nanos() as f64) / tau).exp();
                    e.rtt * w + sample * (1.0 - w)
                }
                _ => sample,
            };
            e.stamp = Some(now);
        }
    }

    /// An attempt on `ep` failed (no response): no longer outstanding, and counted as a
    /// [`EwmaConfig::failure_penalty`] latency.
    pub fn fail(&mut self, ep: u32, now: Duration) {
        self.finish(ep, self.ewma_cfg.failure_penalty, now);
    }

    /// An attempt on `ep` was given up by the client: no longer outstanding, no sample.
    pub fn cancel(&mut self, ep: u32) {
        if let Some(o) = self.outstanding.get_mut(ep as usize) {
            *o = o.saturating_sub(1);
        }
    }

    /// The current latency estimate of `ep` (p2c-ewma's view), if it is known.
    pub fn rtt_estimate(&self, ep: u32, now: Duration) -> Option<Duration> {
        if (ep as usize) >= self.endpoints.len() {
            return None;
        }
        Some(Duration::from_nanos(self.estimate(ep as usize, now) as u64))
    }

    fn tau_ns(&self) -> f64 {
        (self.ewma_cfg.tau.as_nanos() as f64).max(1.0)
    }

    /// Estimate at `now`: the stored value decayed toward zero since its last
    /// sample, so an endpoint that stopped being picked (because it was slow) is
    /// tried again after a while instead of never (how Finagle's PeakEwma recovers).
    fn estimate(&self, i: usize, now: Duration) -> f64 {
        match self.ewma.get(i) {
            Some(Ewma {
                rtt,
                stamp: Some(stamp),
            }) => {
                let elapsed = now.saturating_sub(*stamp).as_nanos() as f64;
                rtt * (-elapsed / self.tau_ns()).exp()
            }
            _ => self.ewma_cfg.default_rtt.as_nanos() as f64,
        }
    }

    /// `Some(all weights zero)`, or `None` when no candidate is a known endpoint.
    fn all_zero(&self, candidates: &[u32]) -> Option<bool> {
        let mut any = false;
        for &c in candidates {
            if let Some(e) = self.endpoints.get(c as usize) {
                if e.weight > 0 {
                    return Some(false);
                }
                any = true;
            }
        }
        any.then_some(true)
    }

    /// The weight used for picking: unknown indices 0, and 1 for all when all are 0.
    fn weight(&self, ep: u32, all_zero: bool) -> u64 {
        match self.endpoints.get(ep as usize) {
            Some(_) if all_zero => 1,
            Some(e) => u64::from(e.weight),
            None => 0,
        }
    }

    fn evict_if_full<V>(map: &mut FxHashMap<Vec<u32>, V>, key: &[u32]) {
        if map.len() >= MAX_SETS && !map.contains_key(key) {
            map.clear();
        }
    }

    /// Smooth weighted round-robin (as nginx): every pick adds each weight to its
    /// running value, takes the largest and subtracts the total from it. Over one
    /// cycle of `sum(weights)` picks each endpoint gets exactly its weight, spread
    /// out rather than in runs.
    fn pick_rr(&mut self, candidates: &[u32], all_zero: bool) -> Option<u32> {
        let weights: Vec<u64> = candidates
            .iter()
            .map(|&c| self.weight(c, all_zero))
            .collect();
        Self::evict_if_full(&mut self.rr, candidates);
        if !self.rr.contains_key(candidates) {
            self.rr
                .insert(candidates.to_vec(), vec![0; candidates.len()]);
        }
        let state = self.rr.get_mut(candidates)?;
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let w = w as i64;
            state[i] = state[i].saturating_add(w);
            total = total.saturating_add(w);
            if best.is_none_or(|b| state[i] > state[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        state[b] = state[b].saturating_sub(total);
        Some(candidates[b])
    }

    /// Fewest outstanding requests per unit of weight, counting the one about to be
    /// sent: `(outstanding + 1) / weight`. Ties are broken at random, so idle
    /// endpoints share the load instead of the first one taking it all.
    fn pick_least(&mut self, candidates: &[u32], all_zero: bool) -> Option<u32> {
        let mut best: Option<(u32, u64, u64)> = None; // (ep, load numerator, weight)
        let mut ties = 0u32;
        for &c in candidates {
            let w = self.weight(c, all_zero);
            if w == 0 {
                continue;
            }
            let load = u64::from(self.outstanding(c)) + 1;
            match best {
                // Compare load/w by cross-multiplying (no overflow: both < 2^33 · 2^32).
                Some((_, bl, bw))
                    if u128::from(load) * u128::from(bw) > u128::from(bl) * u128::from(w) => {}
                Some((_, bl, bw))
                    if u128::from(load) * u128::from(bw) == u128::from(bl) * u128::from(w) =>
                {
                    ties += 1;
                    if self.rng.gen_range(0..ties) == 0 {
                        best = Some((c, load, w));
                    }
                }
                _ => {
                    best = Some((c, load, w));
                    ties = 1;
                }
            }
        }
        best.map(|(c, _, _)| c)
    }

    /// The `k`-th candidate with non-zero weight.
    fn nth_eligible(&self, candidates: &[u32], all_zero: bool, k: usize) -> Option<u32> {
        candidates
            .iter()
            .copied()
            .filter(|&c| self.weight(c, all_zero) > 0)
            .nth(k)
    }

    /// Power of two choices over peak-EWMA cost (Finagle/linkerd): two distinct
    /// candidates at random, the cheaper wins, cost = estimate × (outstanding + 1)
    /// / weight. Two random choices avoid the herd a strict minimum causes when every
    /// worker sees the same cheapest endpoint.
    fn pick_p2c(&mut self, candidates: &[u32], all_zero: bool, now: Duration) -> Option<u32> {
        let n = candidates
            .iter()
            .filter(|&&c| self.weight(c, all_zero) > 0)
            .count();
        match n {
            0 => return None,
            1 => return self.nth_eligible(candidates, all_zero, 0),
            _ => {}
        }
        let i = self.rng.gen_range(0..n);
        let mut j = self.rng.gen_range(0..n - 1);
        if j >= i {
            j += 1;
        }
        let a = self.nth_eligible(candidates, all_zero, i)?;
        let b = self.nth_eligible(candidates, all_zero, j)?;
        let cost = |ep: u32| {
            self.estimate(ep as usize, now) * (f64::from(self.outstanding(ep)) + 1.0)
                / self.weight(ep, all_zero) as f64
        };
        Some(if cost(b) < cost(a) { b } else { a })
    }

    /// Random by weight (ring-hash without a key).
    fn pick_random(&mut self, candidates: &[u32], all_zero: bool) -> Option<u32> {
        let total: u64 = candidates.iter().map(|&c| self.weight(c, all_zero)).sum();
        if total == 0 {
            return None;
        }
        let mut x = self.rng.gen_range(0..total);
        for &c in candidates {
            let w = self.weight(c, all_zero);
            if x < w {
                return Some(c);
            }
            x -= w;
        }
        None
    }

    /// Consistent hashing on a Ketama-style ring: each endpoint owns points placed
    /// by hashing its stable id, as many as its weight warrants; a key goes to the
    /// first point at or after its hash. The points of an endpoint do not depend on
    /// the others, so removing one endpoint moves only the keys it owned (~1/N).
    fn pick_ring(&mut self, candidates: &[u32], all_zero: bool, hash: u64) -> Option<u32> {
        Self::evict_if_full(&mut self.rings, candidates);
        if !self.rings.contains_key(candidates) {
            let ring = self.build_ring(candidates, all_zero);
            self.rings.insert(candidates.to_vec(), ring);
        }
        let ring = self.rings.get(candidates)?;
        let i = ring.partition_point(|&(p, _)| p < hash);
        ring.get(i).or_else(|| ring.first()).map(|&(_, ep)| ep)
    }

    fn build_ring(&self, candidates: &[u32], all_zero: bool) -> Vec<(u64, u32)> {
        let mut eps: Vec<u32> = candidates
            .iter()
            .copied()
            .filter(|&c| self.weight(c, all_zero) > 0)
            .collect();
        eps.sort_unstable();
        eps.dedup();
        let max_w = eps
            .iter()
            .map(|&c| self.weight(c, all_zero))
            .max()
            .unwrap_or(1);
        let points = |c: u32| {
            (RING_POINTS_MAX_WEIGHT * self.weight(c, all_zero))
                .div_ceil(max_w)
                .max(1)
        };
        let wanted: u64 = eps.iter().map(|&c| points(c)).sum();
        // Shrink every endpoint's share alike if the ring would be too large.
        let scale = (RING_POINTS_TOTAL as f64 / wanted.max(1) as f64).min(1.0);
        let mut ring = Vec::new();
        for &c in &eps {
            let id = self
                .endpoints
                .get(c as usize)
                .map_or(u64::from(c), |e| e.id);
            let k = ((points(c) as f64 * scale) as u64).max(1);
            for r in 0..k {
                let mut h = SipHasher13::new_with_keys(HASH_K0, HASH_K1);
                h.write(&id.to_le_bytes());
                h.write(&r.to_le_bytes());
                ring.push((h.finish(), c));
            }
        }
        ring.sort_unstable();
        ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    fn eps(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint {
                weight: w,
                id: hash_key(format!("10.0.0.{i}:80").as_bytes()),
            })
            .collect()
    }

    fn counts(b: &mut Balancer, cands: &[u32], n: usize, len: usize) -> Vec<usize> {
        let mut c = vec![0; len];
        for _ in 0..n {
            c[b.pick(cands, None, Duration::ZERO).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn hash_key_is_fixed() {
        // Pinned: every gateway and every restart must map a key to the same point.
        assert_eq!(hash_key(b"10.10.1.2"), hash_key(b"10.10.1.2"));
        assert_ne!(hash_key(b"10.10.1.2"), hash_key(b"10.10.1.3"));
        assert_eq!(hash_key(b""), PINNED_EMPTY);
    }
    const PINNED_EMPTY: u64 = 8_987_408_473_307_104_269;

    #[test]
    fn round_robin_weighted_exact_per_cycle() {
        let mut b = Balancer::new(LbPolicy::RoundRobin, &eps(&[5, 1, 1]), 0);
        let seq: Vec<u32> = (0..7)
            .map(|_| b.pick(&[0, 1, 2], None, Duration::ZERO).unwrap())
            .collect();
        // nginx's smooth sequence for 5/1/1: the light ones are spread out.
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        for _ in 0..10 {
            assert_eq!(counts(&mut b, &[0, 1, 2], 7, 3), [5, 1, 1]);
        }
        let mut b = Balancer::new(LbPolicy::RoundRobin, &eps(&[3, 0, 2, 4]), 0);
        for _ in 0..5 {
            assert_eq!(counts(&mut b, &[0, 1, 2, 3], 9, 4), [3, 0, 2, 4]);
        }
    }

    #[test]
    fn round_robin_per_candidate_set() {
        // Two routes with different subsets, interleaved: each stays exact.
        let mut b = Balancer::new(LbPolicy::RoundRobin, &eps(&[2, 1, 1, 3]), 0);
        let (mut x, mut y) = (vec![0; 4], vec![0; 4]);
        for _ in 0..15 {
            x[b.pick(&[0, 1], None, Duration::ZERO).unwrap() as usize] += 1;
            y[b.pick(&[1, 2, 3], None, Duration::ZERO).unwrap() as usize] += 1;
            y[b.pick(&[1, 2, 3], None, Duration::ZERO).unwrap() as usize] += 1;
        }
        assert_eq!(x, [10, 5, 0, 0]);
        assert_eq!(y, [0, 6, 6, 18]);
    }

    #[test]
    fn zero_weights_and_empty() {
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::P2cEwma,
            LbPolicy::RingHash,
        ] {
            let mut b = Balancer::new(policy, &eps(&[0, 3, 0, 1]), 1);
            assert_eq!(b.pick(&[], None, Duration::ZERO), None, "{policy:?}");
            assert_eq!(
                b.pick(&[9, 17], Some(5), Duration::ZERO),
                None,
                "{policy:?}: unknown indices"
            );
            for k in 0..500u64 {
                let h = (policy == LbPolicy::RingHash).then(|| hash_key(&k.to_le_bytes()));
                let ep = b.pick(&[0, 1, 2, 3, 42], h, Duration::ZERO).unwrap();
                assert!(ep == 1 || ep == 3, "{policy:?} picked {ep}");
            }
            // All candidates weigh 0: they count as equal, and every one is used.
            let mut seen = [false; 4];
            for k in 0..500u64 {
                let h = (policy == LbPolicy::RingHash).then(|| hash_key(&k.to_le_bytes()));
                seen[b.pick(&[0, 2], h, Duration::ZERO).unwrap() as usize] = true;
            }
            assert_eq!(seen, [true, false, true, false], "{policy:?}");
        }
    }

    #[test]
    fn least_request_prefers_idle() {
        let mut b = Balancer::new(LbPolicy::LeastRequest, &eps(&[1, 1, 1]), 3);
        b.start(0);
        b.start(0);
        b.start(2);
        assert_eq!(b.pick(&[0, 1, 2], None, Duration::ZERO), Some(1));
        b.start(1);
        b.start(1);
        assert_eq!(b.pick(&[0, 1, 2], None, Duration::ZERO), Some(2));
        b.finish(0, Duration::from_millis(1), Duration::ZERO);
        b.finish(0, Duration::from_millis(1), Duration::ZERO);
        assert_eq!(b.outstanding(0), 0);
        assert_eq!(b.pick(&[0, 1, 2], None, Duration::ZERO), Some(0));
        // Unbalanced finishes never underflow.
        b.finish(0, Duration::ZERO, Duration::ZERO);
        assert_eq!(b.outstanding(0), 0);
    }

    #[test]
    fn least_request_ties_are_shared() {
        let mut b = Balancer::new(LbPolicy::LeastRequest, &eps(&[1, 1, 1, 1]), 3);
        let c = counts(&mut b, &[0, 1, 2, 3], 4000, 4);
        for n in c {
            assert!((800..1200).contains(&n), "{n}");
        }
        // Closed loop: each pick starts a request; they spread evenly.
        let mut b = Balancer::new(LbPolicy::LeastRequest, &eps(&[1, 1, 1, 1]), 3);
        for _ in 0..40 {
            let ep = b.pick(&[0, 1, 2, 3], None, Duration::ZERO).unwrap();
            b.start(ep);
        }
        assert_eq!(
            (0..4).map(|e| b.outstanding(e)).collect::<Vec<_>>(),
            [10, 10, 10, 10]
        );
    }

    #[test]
    fn failed_and_cancelled_attempts_are_no_longer_outstanding() {
        let eps = [Endpoint { weight: 1, id: 1 }, Endpoint { weight: 1, id: 2 }];
        let mut b = Balancer::new(LbPolicy::P2cEwma, &eps, 7);
        let now = Duration::from_secs(1);
        b.start(0);
        b.start(0);
        b.start(1);
        b.fail(0, now);
        b.cancel(0);
        b.finish(1, Duration::from_millis(2), now);
        assert_eq!((b.outstanding(0), b.outstanding(1)), (0, 0));
        // A failure counts as the penalty latency: p2c now prefers the endpoint that answered.
        let slow = b.rtt_estimate(0, now).unwrap();
        assert_eq!(slow, EwmaConfig::default().failure_penalty);
        assert!(b.rtt_estimate(1, now).unwrap() < slow);
        let picks = (0..100)
            .filter(|_| b.pick(&[0, 1], None, now) == Some(1))
            .count();
        assert_eq!(picks, 100, "p2c with two candidates picks the cheaper one");
    }

    #[test]
    fn least_request_weighs_outstanding() {
        // (outstanding + 1) / weight: weight 3 with 1 in flight (2/3) beats weight 1 idle (1).
        let mut b = Balancer::new(LbPolicy::LeastRequest, &eps(&[3, 1]), 0);
        b.start(0);
        assert_eq!(b.pick(&[0, 1], None, Duration::ZERO), Some(0));
        b.start(0);
        b.start(0);
        // 4/3 > 1.
        assert_eq!(b.pick(&[0, 1], None, Duration::ZERO), Some(1));
        // Closed loop: in-flight requests settle in proportion to the weights.
        let mut b = Balancer::new(LbPolicy::LeastRequest, &eps(&[3, 1]), 0);
        for _ in 0..40 {
            let ep = b.pick(&[0, 1], None, Duration::ZERO).unwrap();
            b.start(ep);
        }
        let (a, c) = (b.outstanding(0), b.outstanding(1));
        assert_eq!(a + c, 40);
        assert!((29..=31).contains(&a), "{a}/{c}");
    }

    /// A virtual-time simulation: one request per millisecond, each finishing after
    /// its endpoint's latency at the time it was sent.
    struct Sim {
        b: Balancer,
        now: Duration,
        pending: BinaryHeap<Reverse<(Duration, u32, Duration)>>,
    }

    impl Sim {
        fn run(
            &mut self,
            until: Duration,
            latency: &[Duration],
            count_from: Duration,
        ) -> Vec<usize> {
            let cands: Vec<u32> = (0..latency.len() as u32).collect();
            let mut picks = vec![0; latency.len()];
            while self.now < until {
                while let Some(Reverse((at, ep, lat))) = self.pending.peek().copied() {
                    if at > self.now {
                        break;
                    }
                    self.pending.pop();
                    self.b.finish(ep, lat, at);
                }
                let ep = self.b.pick(&cands, None, self.now).unwrap();
                self.b.start(ep);
                let lat = latency[ep as usize];
                self.pending.push(Reverse((self.now + lat, ep, lat)));
                if self.now >= count_from {
                    picks[ep as usize] += 1;
                }
                self.now += Duration::from_millis(1);
            }
            picks
        }
    }

    #[test]
    fn p2c_ewma_avoids_slow_and_recovers() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let mut sim = Sim {
            b: Balancer::new(LbPolicy::P2cEwma, &eps(&[1, 1, 1]), 42),
            now: Duration::ZERO,
            pending: BinaryHeap::new(),
        };
        let slow = [ms(80), ms(2), ms(2)];
        let picks = sim.run(s(20), &slow, s(10));
        let total: usize = picks.iter().sum();
        assert!(picks[0] * 100 < total * 3, "slow endpoint got {picks:?}");
        let (e0, e1) = (
            sim.b.rtt_estimate(0, sim.now).unwrap(),
            sim.b.rtt_estimate(1, sim.now).unwrap(),
        );
        assert!(e0 > 2 * e1, "{e0:?} vs {e1:?}");
        // It gets fast again: the decayed estimate makes it worth trying, and once
        // tried its real latency brings it back to a fair share.
        let fast = [ms(2), ms(2), ms(2)];
        let start = sim.now;
        let picks = sim.run(start + s(120), &fast, start + s(100));
        let total: usize = picks.iter().sum();
        assert!(
            picks[0] * 100 > total * 25,
            "recovered endpoint got {picks:?}"
        );
        assert!(sim.b.rtt_estimate(0, sim.now).unwrap() < ms(5));
    }

    #[test]
    fn p2c_ewma_peak_and_decay() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let mut b = Balancer::new(LbPolicy::P2cEwma, &eps(&[1, 1]), 0);
        let def = EwmaConfig::default().default_rtt;
        assert_eq!(
            b.rtt_estimate(0, s(100)),
            Some(def),
            "neutral before any sample"
        );
        b.finish(0, ms(10), s(1));
        assert_eq!(b.rtt_estimate(0, s(1)), Some(ms(10)));
        // A peak replaces the average at once.
        b.finish(0, ms(100), s(1));
        assert_eq!(b.rtt_estimate(0, s(1)), Some(ms(100)));
        // A fast sample right after hardly moves it; after tau it counts for 1 - 1/e.
        b.finish(0, ms(10), s(1));
        assert!(b.rtt_estimate(0, s(1)).unwrap() > ms(99));
        b.finish(0, ms(10), s(11));
        let e = b.rtt_estimate(0, s(11)).unwrap().as_secs_f64() * 1e3;
        let expect = 100.0 / std::f64::consts::E + 10.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((e - expect).abs() < 0.5, "{e} vs {expect}");
        // Without samples the estimate decays: e^-1 per tau.
        let later = b.rtt_estimate(0, s(21)).unwrap().as_secs_f64() * 1e3;
        assert!((later - e / std::f64::consts::E).abs() < 0.5);
        // Time going backwards is no decay, not a panic.
        assert!(b.rtt_estimate(0, Duration::ZERO).is_some());
        // With equal estimates, outstanding requests decide.
        let mut b = Balancer::new(LbPolicy::P2cEwma, &eps(&[1, 1]), 0);
        b.start(0);
        for _ in 0..20 {
            assert_eq!(b.pick(&[0, 1], None, s(1)), Some(1));
        }
    }

    fn ring_owner(b: &mut Balancer, cands: &[u32], keys: u64) -> Vec<u32> {
        (0..keys)
            .map(|k| {
                b.pick(cands, Some(hash_key(&k.to_le_bytes())), Duration::ZERO)
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn ring_hash_stable_and_minimal_movement() {
        let e = eps(&[1; 10]);
        let all: Vec<u32> = (0..10).collect();
        let mut b = Balancer::new(LbPolicy::RingHash, &e, 1);
        let before = ring_owner(&mut b, &all, 10_000);
        // Same set, same mapping: on this balancer again and on another one (another
        // worker, another seed).
        assert_eq!(ring_owner(&mut b, &all, 10_000), before);
        let mut other = Balancer::new(LbPolicy::RingHash, &e, 99);
        assert_eq!(ring_owner(&mut other, &all, 10_000), before);
        // The order of the candidates does not matter.
        let rev: Vec<u32> = all.iter().rev().copied().collect();
        assert_eq!(ring_owner(&mut b, &rev, 10_000), before);
        // Remove endpoint 3: only its keys move.
        let without: Vec<u32> = all.iter().copied().filter(|&c| c != 3).collect();
        let after = ring_owner(&mut b, &without, 10_000);
        let mut moved = 0;
        for (k, (x, y)) in before.iter().zip(&after).enumerate() {
            if x != y {
                assert_eq!(*x, 3, "key {k} moved from {x} to {y}");
                moved += 1;
            }
        }
        assert!(
            (500..1600).contains(&moved),
            "moved {moved} of 10000, expected ~1/10"
        );
        assert!(after.iter().all(|&x| x != 3));
        // Add it back: the original mapping returns.
        assert_eq!(ring_owner(&mut b, &all, 10_000), before);
    }

    #[test]
    fn ring_hash_follows_weights() {
        let mut b = Balancer::new(LbPolicy::RingHash, &eps(&[1, 2, 3, 4]), 1);
        let owners = ring_owner(&mut b, &[0, 1, 2, 3], 10_000);
        let mut c = [0usize; 4];
        for o in owners {
            c[o as usize] += 1;
        }
        for (i, n) in c.iter().enumerate() {
            let want = 1000 * (i + 1);
            assert!(
                n.abs_diff(want) < 300,
                "endpoint {i}: {n} of 10000, want ~{want} ({c:?})"
            );
        }
        // Without a key: random by weight.
        let c = counts(&mut b, &[0, 1, 2, 3], 10_000, 4);
        for (i, n) in c.iter().enumerate() {
            let want = 1000 * (i + 1);
            assert!(n.abs_diff(want) < 300, "endpoint {i}: {n}, want ~{want}");
        }
    }

    #[test]
    fn request_hash_keys() {
        use super::super::http::{parse_request, Limits};
        let (h, _) = parse_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-User: alice\r\nCookie: theme=dark; sid=abc123\r\nCookie: lang=de\r\n\r\n",
            &Limits::default(),
        )
        .unwrap()
        .unwrap();
        let ip: IpAddr = "10.10.1.2".parse().unwrap();
        assert_eq!(
            request_hash(&HashKey::SourceIp, None, ip),
            Some(hash_key(&[10, 10, 1, 2]))
        );
        assert_eq!(
            request_hash(&HashKey::Header("x-user".into()), Some(&h), ip),
            Some(hash_key(b"alice"))
        );
        assert_eq!(
            request_hash(&HashKey::Header("x-none".into()), Some(&h), ip),
            None
        );
        assert_eq!(
            request_hash(&HashKey::Header("x-user".into()), None, ip),
            None
        );
        assert_eq!(
            request_hash(&HashKey::Cookie("sid".into()), Some(&h), ip),
            Some(hash_key(b"abc123"))
        );
        assert_eq!(cookie(&h, "lang"), Some(&b"de"[..]));
        assert_eq!(cookie(&h, "SID"), None, "cookie names are case-sensitive");
        assert_eq!(cookie(&h, "the"), None);
    }

    proptest! {
        #[test]
        fn any_input_picks_a_weighted_candidate(
            weights in proptest::collection::vec(0u32..5, 0..8),
            calls in proptest::collection::vec(
                (proptest::collection::vec(0u32..10, 0..8), any::<Option<u64>>(), 0u8..4, any::<u16>()),
                1..30,
            ),
            policy in 0u8..4,
        ) {
            let policy = [LbPolicy::RoundRobin, LbPolicy::LeastRequest, LbPolicy::P2cEwma, LbPolicy::RingHash][policy as usize];
            let mut b = Balancer::new(policy, &eps(&weights), 5);
            for (i, (cands, hash, action, t)) in calls.into_iter().enumerate() {
                let now = Duration::from_millis(u64::from(t));
                let known: Vec<u32> = cands.iter().copied().filter(|&c| (c as usize) < weights.len()).collect();
                let any_weight = known.iter().any(|&c| weights[c as usize] > 0);
                match b.pick(&cands, hash, now) {
                    None => prop_assert!(known.is_empty()),
                    Some(ep) => {
                        prop_assert!(known.contains(&ep));
                        prop_assert!(!any_weight || weights[ep as usize] > 0);
                        match action {
                            0 => b.start(ep),
                            1 => b.finish(ep, Duration::from_micros(i as u64 * 37), now),
                            _ => {}
                        }
                    }
                }
                b.finish(u32::MAX, Duration::MAX, now);
                b.start(u32::MAX);
            }
        }
    }
}
