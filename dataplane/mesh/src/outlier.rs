//! Endpoint health of one service on one worker: passive outlier detection from attempt
//! outcomes (Envoy's consecutive-failure and success-rate ejection, Linkerd's failure
//! accrual) joined with the verdicts of active health checks. A sans-IO state machine: the
//! caller feeds outcomes ([`Detector::record`]) and health verdicts ([`Detector::set_healthy`]),
//! asks which endpoints a balancer may pick ([`Detector::filter`]) and calls
//! [`Detector::tick`] at [`Detector::poll_timeout`]; `now` always comes from the caller.
//!
//! The model, and the choices made where Envoy's and Linkerd's differ or are silent:
//!
//! - **Consecutive failures.** `consecutive_failures` failed attempts in a row (connect
//!   failure, reset, timeout, 5xx: the caller decides) eject the endpoint; a success resets
//!   the streak. The streak also restarts at an ejection and at a return. A refused ejection
//!   (see the cap below) is tried again at each further failure, so the endpoint goes once
//!   room frees up (Envoy tries once, at exactly N).
//! - **Ejection time** is `base_ejection × k`, `k` the endpoint's ejection multiplier after
//!   this ejection, at most [`max_ejection`]: 300 s or 10 × `base_ejection`, whichever is
//!   longer. `k` grows by one per ejection but stops where the time is capped (Envoy), so a
//!   flapping endpoint does not pile up a debt it could never work off. It decays by one at
//!   each interval boundary ending an interval the endpoint spent wholly un-ejected.
//! - **The cap.** At most `max_ejected_percent` % of the service's endpoints are ejected at
//!   once, but when none is ejected one always may be (Envoy: "if no hosts have been ejected,
//!   eject immediately"), even a service's only endpoint: the panic threshold then routes
//!   to it anyway, and the operator sees it ejected. `max_ejected_percent = 0` turns ejection
//!   off altogether (outcomes are still counted). Refusals are counted
//!   ([`Counters::overflow`], Envoy's `ejections_overflow`).
//! - **Success rate**, judged at each `interval` boundary over the interval that ends there:
//!   endpoints with at least `success_rate_min_requests` attempts in it are judged; one whose
//!   success rate is below `mean − success_rate_stdev_factor × stdev` is ejected (worst
//!   first, within the cap). `stdev` is the population standard deviation over the judged
//!   endpoints (as Envoy computes it). At least [`SUCCESS_RATE_MIN_HOSTS`] endpoints must be
//!   judged (Envoy's `success_rate_minimum_hosts`, 5). Mind the arithmetic: a single
//!   outlier among `n` judged endpoints lies at most `√(n−1)` population standard deviations
//!   from the mean (Samuelson's inequality; `(n−1)/√n` is the bound for the sample
//!   deviation), so with the default factor 1.9 four endpoints can never eject one (√3 ≈
//!   1.73), five just can (one at 0 % among four at 100 %: exactly 2.0), and several
//!   outliers shield each other. Success-rate ejection is a tool for services of many
//!   endpoints; consecutive failures catch the dead one among few.
//! - **Returns.** An ejected endpoint returns when its time is up (a `tick` at or after that
//!   instant; [`Detector::filter`] already treats it as usable from that instant). The ejection
//!   of an endpoint whose time is up at an interval boundary ends before that boundary's
//!   judgement, so it frees room under the cap for it.
//! - **Active health** ([`Detector::set_healthy`]: active health checks, or a peer gateway's
//!   `endpoint_unhealthy`) is a separate cause: an unhealthy endpoint is skipped like an
//!   ejected one but does not count against the cap. A transition from unhealthy to healthy
//!   also ends an ejection (Envoy's `successful_active_health_check_uneject_host`), counted as
//!   a return, so a restarted endpoint is back after its health check's `healthy` successes.
//!   A repeated "healthy" does not, so an endpoint that passes its probe yet fails requests
//!   stays ejected for its time.
//! - **Panic.** When the usable share of a request's candidates is below `panic_threshold` %,
//!   or none is usable, the balancer gets all of them (Envoy's panic routing).
//!
//! Endpoints are indices into the service's endpoint list, but the state is the address's:
//! [`Detector::sync`] carries it across a tables reload. Memory is O(endpoints); out-of-range
//! indices are ignored everywhere.

use std::net::SocketAddrV4;
use std::time::Duration;

use control::snapshot::OutlierRt;
use rustc_hash::FxHashMap;
use tcpstack::Instant;

/// Success-rate ejection judges a service only when at least this many of its endpoints
/// have enough requests in the interval (Envoy's `success_rate_minimum_hosts`).
pub const SUCCESS_RATE_MIN_HOSTS: usize = 5;

/// The ejection time never exceeds this floor (Envoy's `max_ejection_time` default).
const MAX_EJECTION_FLOOR: Duration = Duration::from_secs(300);

/// Success rates closer than this are equal: a service of identical rates must not eject
/// one of them over a rounding error of the mean.
const RATE_EPSILON: f64 = 1e-9;

/// Why an endpoint was ejected (the `reason` label of the ejection counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EjectReason {
    /// `consecutive_failures` failed attempts in a row.
    Consecutive,
    /// A success rate too far below the service's mean.
    SuccessRate,
}

impl EjectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive => "consecutive",
            EjectReason::SuccessRate => "success_rate",
        }
    }
}

/// Monotonic counters of one service's ejections and returns, kept across [`Detector::sync`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub ejections_consecutive: u64,
    pub ejections_success_rate: u64,
    /// Ejected endpoints back in service (time up, or healthy again).
    pub returns: u64,
    /// Ejections refused by `max_ejected_percent` (a streak of failures counts once, however
    /// long it goes on).
    pub overflow: u64,
}

/// One endpoint as an operator sees it (`GET /endpoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointView {
    pub address: SocketAddrV4,
    /// While ejected: when it returns.
    pub ejected_until: Option<Instant>,
    /// While ejected: why.
    pub ejected_for: Option<EjectReason>,
    /// The ejection multiplier: the current or last ejection lasted `base_ejection ×
    /// ejections` (capped); the next lasts one `base_ejection` longer unless it decays first.
    pub ejections: u32,
    /// The active health verdict (true until told otherwise).
    pub healthy: bool,
    pub consecutive_failures: u32,
    /// Attempts and successes in the current interval (the success-rate window).
    pub interval_requests: u32,
    pub interval_successes: u32,
}

#[derive(Debug, Clone, Copy)]
struct State {
    addr: SocketAddrV4,
    ejected: Option<(Instant, EjectReason)>,
    /// The multiplier of the ejection time; decays while the endpoint stays in service.
    ejections: u32,
    /// Ejected at any time since the last interval boundary: that interval earns no decay.
    ejected_in_interval: bool,
    healthy: bool,
    consecutive_failures: u32,
    requests: u32,
    successes: u32,
}

impl State {
    fn new(addr: SocketAddrV4) -> State {
        State {
            addr,
            ejected: None,
            ejections: 0,
            ejected_in_interval: false,
            healthy: true,
            consecutive_failures: 0,
            requests: 0,
            successes: 0,
        }
    }
}

/// Outlier detection and health of one service's endpoints, on one worker.
#[derive(Debug, Clone)]
pub struct Detector {
    eps: Vec<State>,
    /// Endpoints ejected now (the cap counts these).
    ejected: u32,
    /// The last interval boundary; the next is one `interval` later.
    boundary: Instant,
    /// The earliest ejection's end (cached: `record` must stay O(1) on the request path).
    next_return: Option<Instant>,
    /// The next boundary has something to do: outcomes to judge or clear, or a multiplier
    /// to decay. Otherwise `poll_timeout` need not wake the worker for it.
    boundary_work: bool,
    counters: Counters,
    /// Success-rate judgement's scratch (indices of endpoints below the threshold).
    scratch: Vec<u32>,
}

/// The longest ejection: 300 s, or 10 × `base` when that is longer.
pub fn max_ejection(cfg: &OutlierRt) -> Duration {
    MAX_EJECTION_FLOOR.max(cfg.base_ejection.saturating_mul(10))
}

/// The ejection multiplier at which the time reaches [`max_ejection`]: `k` stops there.
fn max_multiplier(cfg: &OutlierRt) -> u32 {
    let base = cfg.base_ejection.as_micros();
    if base == 0 {
        return 1;
    }
    u32::try_from(max_ejection(cfg).as_micros().div_ceil(base))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// How long the `k`-th ejection lasts (`k` ≥ 1).
pub fn ejection_time(cfg: &OutlierRt, k: u32) -> Duration {
    cfg.base_ejection
        .saturating_mul(k.max(1))
        .min(max_ejection(cfg))
}

/// A zero interval would make every instant a boundary.
fn interval(cfg: &OutlierRt) -> Duration {
    cfg.interval.max(Duration::from_millis(1))
}

/// The success rate below which an endpoint is an outlier, given the judged endpoints'
/// rates: `mean − factor × stdev` (population stdev). `None`: too few to judge, or a factor
/// that is not a finite non-negative number.
fn success_rate_threshold(rates: impl Iterator<Item = f64> + Clone, factor: f64) -> Option<f64> {
    if !factor.is_finite() || factor < 0.0 {
        return None;
    }
    let (n, sum) = rates
        .clone()
        .fold((0usize, 0.0), |(n, s), r| (n + 1, s + r));
    if n < SUCCESS_RATE_MIN_HOSTS {
        return None;
    }
    let mean = sum / n as f64;
    let var = rates.map(|r| (r - mean) * (r - mean)).sum::<f64>() / n as f64;
    Some(mean - factor * var.sqrt())
}

impl Detector {
    /// A service's endpoints, all healthy and in service; intervals start at `now`.
    pub fn new(endpoints: &[SocketAddrV4], now: Instant) -> Detector {
        Detector {
            eps: endpoints.iter().copied().map(State::new).collect(),
            ejected: 0,
            boundary: now,
            next_return: None,
            boundary_work: false,
            counters: Counters::default(),
            scratch: Vec::new(),
        }
    }

    /// The service's endpoints after a tables reload: state follows the address (an
    /// address listed twice gets the state twice), new addresses start fresh, addresses
    /// gone are forgotten. Counters and the interval grid are kept.
    pub fn sync(&mut self, endpoints: &[SocketAddrV4]) {
        let old: FxHashMap<SocketAddrV4, State> = self.eps.drain(..).map(|s| (s.addr, s)).collect();
        self.eps.extend(
            endpoints
                .iter()
                .map(|a| old.get(a).copied().unwrap_or_else(|| State::new(*a))),
        );
        self.ejected = self.eps.iter().filter(|s| s.ejected.is_some()).count() as u32;
        self.next_return = self.earliest_return();
        self.boundary_work = self
            .eps
            .iter()
            .any(|s| s.requests > 0 || (s.ejected.is_none() && s.ejections > 0));
    }

    pub fn len(&self) -> usize {
        self.eps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.eps.is_empty()
    }

    /// Endpoints ejected now.
    pub fn ejected_count(&self) -> u32 {
        self.ejected
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn ejections_total(&self, reason: EjectReason) -> u64 {
        match reason {
            EjectReason::Consecutive => self.counters.ejections_consecutive,
            EjectReason::SuccessRate => self.counters.ejections_success_rate,
        }
    }

    pub fn returns_total(&self) -> u64 {
        self.counters.returns
    }

    /// Endpoint `ep` as an operator sees it; `None` out of range.
    pub fn view(&self, ep: u32) -> Option<EndpointView> {
        let s = self.eps.get(ep as usize)?;
        Some(EndpointView {
            address: s.addr,
            ejected_until: s.ejected.map(|(t, _)| t),
            ejected_for: s.ejected.map(|(_, r)| r),
            ejections: s.ejections,
            healthy: s.healthy,
            consecutive_failures: s.consecutive_failures,
            interval_requests: s.requests,
            interval_successes: s.successes,
        })
    }

    /// Whether a balancer may pick `ep` at `now` (panic aside): neither ejected nor
    /// unhealthy. An index without state is: nothing is known against it.
    pub fn usable(&self, ep: u32, now: Instant) -> bool {
        self.eps.get(ep as usize).is_none_or(|s| {
            // An ejection whose time is up no longer counts, even before `tick` ends it.
            s.healthy && s.ejected.is_none_or(|(until, _)| until <= now)
        })
    }

    /// The candidates a balancer may choose from, into `out` (cleared first): the usable
    /// ones, or all of them when fewer than `panic_threshold` % (or none) are usable.
    /// Returns true on panic. Allocation-free when `out` holds `candidates.len()`.
    pub fn filter(
        &self,
        cfg: &OutlierRt,
        candidates: &[u32],
        now: Instant,
        out: &mut Vec<u32>,
    ) -> bool {
        out.clear();
        out.extend(candidates.iter().copied().filter(|&c| self.usable(c, now)));
        if candidates.is_empty() {
            return false;
        }
        let usable = out.len() as u64;
        let total = candidates.len() as u64;
        if usable == 0 || usable * 100 < u64::from(cfg.panic_threshold) * total {
            out.clear();
            out.extend_from_slice(candidates);
            return true;
        }
        false
    }

    /// An attempt's outcome at endpoint `ep`. May eject it (consecutive failures); first
    /// does whatever `tick` had due by `now`, so the outcome lands in the right interval.
    pub fn record(&mut self, cfg: &OutlierRt, ep: u32, ok: bool, now: Instant) {
        self.tick(cfg, now);
        let Some(s) = self.eps.get_mut(ep as usize) else {
            return;
        };
        s.requests = s.requests.saturating_add(1);
        self.boundary_work = true;
        if ok {
            s.successes = s.successes.saturating_add(1);
            s.consecutive_failures = 0;
            return;
        }
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let streak = s.consecutive_failures;
        if cfg.consecutive_failures > 0
            && streak >= cfg.consecutive_failures
            && !self.eject(cfg, ep, EjectReason::Consecutive, now)
            && streak == cfg.consecutive_failures
        {
            // Refused for the cap: counted once per streak, though tried at every failure.
            self.counters.overflow += 1;
        }
    }

    /// The active health verdict for `ep` (a health check, or a peer gateway's
    /// `endpoint_unhealthy`). Becoming healthy again also ends an ejection.
    pub fn set_healthy(&mut self, ep: u32, healthy: bool) {
        let Some(s) = self.eps.get_mut(ep as usize) else {
            return;
        };
        let recovered = healthy && !s.healthy;
        s.healthy = healthy;
        if recovered && s.ejected.is_some() {
            self.end_ejection(ep);
        }
    }

    /// The next instant `tick` has work: an ejection's end, or the next interval boundary
    /// when there is something to judge or decay there. `None`: nothing until the next
    /// outcome (`record` catches up on the intervals it missed).
    pub fn poll_timeout(&self, cfg: &OutlierRt) -> Option<Instant> {
        let boundary = self.boundary_work.then(|| self.boundary + interval(cfg));
        match (self.next_return, boundary) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Does, in time order, everything due by `now`: returns, and at each interval
    /// boundary the decay of multipliers and the success-rate judgement.
    pub fn tick(&mut self, cfg: &OutlierRt, now: Instant) {
        let step = interval(cfg);
        loop {
            let next = self.boundary + step;
            // Returns due before (or at) the boundary come first: they free room under the
            // cap, and their interval was not one wholly in service.
            if let Some(r) = self.next_return.filter(|&r| r <= now && r <= next) {
                for ep in 0..self.eps.len() {
                    if self.eps[ep].ejected.is_some_and(|(t, _)| t <= r) {
                        self.end_ejection(ep as u32);
                    }
                }
                continue;
            }
            // (`next == boundary`: the clock saturated; nothing can be due any more.)
            if next > now || next == self.boundary {
                return;
            }
            self.on_boundary(cfg, next);
            self.boundary = next;
            self.skip_empty_intervals(step, now);
        }
    }

    /// After a boundary nothing is recorded until `now`, so the boundaries that follow, up
    /// to `now` and strictly before the next return (at a return's instant the return goes
    /// first), only decay the multipliers of endpoints in service: take them at once, so a
    /// long idle stretch costs one pass however many intervals it spans.
    fn skip_empty_intervals(&mut self, step: Duration, now: Instant) {
        let step = u64::try_from(step.as_micros()).unwrap_or(u64::MAX).max(1);
        let from = self.boundary.as_micros();
        let limit = self.next_return.map_or(now, |r| r.min(now)).as_micros();
        let mut k = limit.saturating_sub(from) / step;
        let at = |k: u64| Instant::from_micros(from.saturating_add(k.saturating_mul(step)));
        if k > 0 && self.next_return.is_some_and(|r| at(k) >= r) {
            k -= 1;
        }
        if k == 0 {
            return;
        }
        let decay = u32::try_from(k).unwrap_or(u32::MAX);
        for s in &mut self.eps {
            if s.ejected.is_none() {
                s.ejections = s.ejections.saturating_sub(decay);
            }
        }
        self.boundary = at(k);
        self.boundary_work = self.decay_pending();
    }

    fn decay_pending(&self) -> bool {
        self.eps
            .iter()
            .any(|s| s.ejected.is_none() && s.ejections > 0)
    }

    fn earliest_return(&self) -> Option<Instant> {
        self.eps
            .iter()
            .filter_map(|s| s.ejected.map(|(t, _)| t))
            .min()
    }

    /// One interval boundary at `at`: decay, then the success-rate judgement of the interval
    /// that ends here, then a fresh window.
    fn on_boundary(&mut self, cfg: &OutlierRt, at: Instant) {
        for s in &mut self.eps {
            if !s.ejected_in_interval && s.ejected.is_none() {
                s.ejections = s.ejections.saturating_sub(1);
            }
            s.ejected_in_interval = s.ejected.is_some();
        }
        if cfg.success_rate_min_requests > 0 {
            let min = cfg.success_rate_min_requests;
            let rate = |s: &State| f64::from(s.successes) / f64::from(s.requests.max(1));
            let judged = self.eps.iter().filter(|s| s.requests >= min).map(rate);
            if let Some(threshold) = success_rate_threshold(judged, cfg.success_rate_stdev_factor) {
                let mut below = std::mem::take(&mut self.scratch);
                below.clear();
                below.extend((0..self.eps.len() as u32).filter(|&i| {
                    let s = &self.eps[i as usize];
                    s.requests >= min && s.ejected.is_none() && rate(s) + RATE_EPSILON < threshold
                }));
                // Worst first: when the cap stops the ejections, it stops the milder ones.
                below.sort_by(|&a, &b| {
                    rate(&self.eps[a as usize])
                        .total_cmp(&rate(&self.eps[b as usize]))
                        .then(a.cmp(&b))
                });
                for &ep in &below {
                    if !self.eject(cfg, ep, EjectReason::SuccessRate, at) {
                        self.counters.overflow += 1;
                    }
                }
                self.scratch = below;
            }
        }
        for s in &mut self.eps {
            s.requests = 0;
            s.successes = 0;
        }
        self.boundary_work = self.decay_pending();
    }

    /// Whether one more ejection fits under the cap.
    fn room(&self, cfg: &OutlierRt) -> bool {
        if cfg.max_ejected_percent == 0 || self.eps.is_empty() {
            return false;
        }
        // At least one may always go (Envoy): a small service's only bad endpoint.
        self.ejected == 0
            || (u64::from(self.ejected) + 1) * 100
                <= u64::from(cfg.max_ejected_percent.min(100)) * self.eps.len() as u64
    }

    /// Ejects `ep` from `now` unless it is already ejected or the cap leaves no room.
    fn eject(&mut self, cfg: &OutlierRt, ep: u32, reason: EjectReason, now: Instant) -> bool {
        match self.eps.get(ep as usize) {
            Some(s) if s.ejected.is_none() => {}
            _ => return false,
        }
        if !self.room(cfg) {
            return false;
        }
        let k_max = max_multiplier(cfg);
        let s = &mut self.eps[ep as usize];
        s.ejections = s.ejections.saturating_add(1).min(k_max);
        let until = now + ejection_time(cfg, s.ejections);
        s.ejected = Some((until, reason));
        s.ejected_in_interval = true;
        s.consecutive_failures = 0;
        self.ejected += 1;
        self.next_return = Some(self.next_return.map_or(until, |r| r.min(until)));
        match reason {
            EjectReason::Consecutive => self.counters.ejections_consecutive += 1,
            EjectReason::SuccessRate => self.counters.ejections_success_rate += 1,
        }
        true
    }

    fn end_ejection(&mut self, ep: u32) {
        let Some(s) = self.eps.get_mut(ep as usize) else {
            return;
        };
        if s.ejected.take().is_some() {
            // A fresh streak: the failures it had are what got it ejected.
            s.consecutive_failures = 0;
            self.boundary_work |= s.ejections > 0;
            self.ejected = self.ejected.saturating_sub(1);
            self.counters.returns += 1;
            self.next_return = self.earliest_return();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ms(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn secs(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    fn addr(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i + 1), 8080)
    }

    fn addrs(n: u32) -> Vec<SocketAddrV4> {
        (0..n).map(addr).collect()
    }

    /// The defaults: 5 consecutive failures, interval 10 s, base 30 s, at most 50 %, panic
    /// below 50 %, success rate over 100 requests at 1.9 stdev.
    fn cfg() -> OutlierRt {
        OutlierRt::default()
    }

    /// Only the consecutive-failure rule.
    fn consecutive_only() -> OutlierRt {
        OutlierRt {
            success_rate_min_requests: 0,
            ..OutlierRt::default()
        }
    }

    /// Only the success-rate rule.
    fn success_rate_only() -> OutlierRt {
        OutlierRt {
            consecutive_failures: 0,
            ..OutlierRt::default()
        }
    }

    fn fail(d: &mut Detector, cfg: &OutlierRt, ep: u32, n: u32, now: Instant) {
        for _ in 0..n {
            d.record(cfg, ep, false, now);
        }
    }

    /// `ok` successes and `bad` failures, interleaved (no streak of failures).
    fn outcomes(d: &mut Detector, cfg: &OutlierRt, ep: u32, ok: u32, bad: u32, now: Instant) {
        let n = ok + bad;
        let mut failed = 0;
        for i in 0..n {
            // The i-th outcome fails when the failures' share so far falls behind.
            let f = u64::from(failed) * u64::from(n) < u64::from(i + 1) * u64::from(bad);
            d.record(cfg, ep, !f, now);
            failed += u32::from(f);
        }
        assert_eq!(failed, bad);
    }

    fn until(d: &Detector, ep: u32) -> Option<Instant> {
        d.view(ep).unwrap().ejected_until
    }

    fn usable(d: &Detector, cfg: &OutlierRt, cands: &[u32], now: Instant) -> (Vec<u32>, bool) {
        let mut out = Vec::new();
        let panic = d.filter(cfg, cands, now, &mut out);
        (out, panic)
    }

    #[test]
    fn consecutive_failures_eject_at_exactly_n() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        fail(&mut d, &cfg, 3, 4, secs(1));
        assert_eq!(until(&d, 3), None);
        assert_eq!(d.view(3).unwrap().consecutive_failures, 4);
        fail(&mut d, &cfg, 3, 1, secs(1));
        let v = d.view(3).unwrap();
        assert_eq!(v.ejected_until, Some(secs(31)));
        assert_eq!(v.ejected_for, Some(EjectReason::Consecutive));
        assert_eq!(v.ejections, 1);
        assert_eq!(
            v.consecutive_failures, 0,
            "the streak restarts at the ejection"
        );
        assert_eq!(d.ejected_count(), 1);
        assert_eq!(d.ejections_total(EjectReason::Consecutive), 1);
        assert_eq!(d.ejections_total(EjectReason::SuccessRate), 0);
    }

    #[test]
    fn a_success_resets_the_streak() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        fail(&mut d, &cfg, 0, 4, secs(1));
        d.record(&cfg, 0, true, secs(1));
        assert_eq!(d.view(0).unwrap().consecutive_failures, 0);
        fail(&mut d, &cfg, 0, 4, secs(2));
        assert_eq!(until(&d, 0), None);
        fail(&mut d, &cfg, 0, 1, secs(3));
        assert_eq!(until(&d, 0), Some(secs(33)));
    }

    #[test]
    fn consecutive_rule_off_at_zero() {
        let cfg = OutlierRt {
            consecutive_failures: 0,
            success_rate_min_requests: 0,
            ..OutlierRt::default()
        };
        let mut d = Detector::new(&addrs(3), ms(0));
        fail(&mut d, &cfg, 0, 1000, secs(1));
        assert_eq!(until(&d, 0), None);
        assert_eq!(d.view(0).unwrap().consecutive_failures, 1000);
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let cfg = consecutive_only();
        assert_eq!(max_ejection(&cfg), Duration::from_secs(300));
        let mut d = Detector::new(&addrs(10), ms(0));
        let mut now = secs(1);
        for k in 1..=12u32 {
            fail(&mut d, &cfg, 0, 5, now);
            let want = Duration::from_secs(30 * u64::from(k.min(10)));
            assert_eq!(until(&d, 0), Some(now + want), "ejection {k}");
            // The multiplier stops where the time is capped.
            assert_eq!(d.view(0).unwrap().ejections, k.min(10));
            now += want;
            d.tick(&cfg, now);
            assert_eq!(until(&d, 0), None, "back after ejection {k}");
        }
        assert_eq!(d.ejections_total(EjectReason::Consecutive), 12);
        assert_eq!(d.returns_total(), 12);
        // A longer base raises the cap to 10 × base.
        let long = OutlierRt {
            base_ejection: Duration::from_secs(60),
            ..cfg
        };
        assert_eq!(max_ejection(&long), Duration::from_secs(600));
        assert_eq!(ejection_time(&long, 11), Duration::from_secs(600));
        assert_eq!(ejection_time(&long, 3), Duration::from_secs(180));
    }

    #[test]
    fn multiplier_decays_one_per_interval_wholly_in_service() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        fail(&mut d, &cfg, 0, 5, secs(1)); // k = 1, until 31 s
        fail(&mut d, &cfg, 0, 5, secs(31)); // back at 31 s, k = 2, until 91 s
        assert_eq!(until(&d, 0), Some(secs(91)));
        d.tick(&cfg, secs(91));
        assert_eq!(d.view(0).unwrap().ejections, 2);
        // [90 s, 100 s) was partly ejected: no decay at 100 s; [100 s, 110 s) earns one.
        d.tick(&cfg, secs(100));
        assert_eq!(d.view(0).unwrap().ejections, 2);
        d.tick(&cfg, ms(109_999));
        assert_eq!(d.view(0).unwrap().ejections, 2);
        d.tick(&cfg, secs(110));
        assert_eq!(d.view(0).unwrap().ejections, 1);
        // The next ejection is the second again: 60 s.
        fail(&mut d, &cfg, 0, 5, secs(115));
        assert_eq!(until(&d, 0), Some(secs(175)));
        assert_eq!(d.view(0).unwrap().ejections, 2);
        // Back at 175 s; 180 s no decay, 190 s and 200 s one each.
        d.tick(&cfg, secs(190));
        assert_eq!(d.view(0).unwrap().ejections, 1);
        d.tick(&cfg, secs(200));
        assert_eq!(d.view(0).unwrap().ejections, 0);
        fail(&mut d, &cfg, 0, 5, secs(205));
        assert_eq!(until(&d, 0), Some(secs(235)));
    }

    /// Drives `d` through a history of ejections; `stepwise` ticks at every `poll_timeout`,
    /// otherwise only `record` catches up.
    fn history(stepwise: bool, end: Instant) -> Detector {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        let advance = |d: &mut Detector, to: Instant| {
            while let Some(p) = d.poll_timeout(&cfg).filter(|&p| p <= to && stepwise) {
                d.tick(&cfg, p);
            }
        };
        let events = [(1, 0), (2, 1), (31, 0), (91, 0), (300, 2), (330, 2)];
        for (at, ep) in events {
            if secs(at) > end {
                break;
            }
            advance(&mut d, secs(at));
            fail(&mut d, &cfg, ep, 5, secs(at));
        }
        advance(&mut d, end);
        d.tick(&cfg, end);
        d
    }

    #[test]
    fn lazy_tick_catches_up_like_stepwise() {
        let mut checked = 0;
        for end in [
            35, 40, 45, 55, 181, 185, 195, 205, 215, 225, 299, 300, 345, 400, 10_000,
        ] {
            let (a, b) = (history(true, secs(end)), history(false, secs(end)));
            for ep in 0..10 {
                assert_eq!(a.view(ep), b.view(ep), "endpoint {ep} at {end} s");
            }
            assert_eq!(a.counters(), b.counters(), "at {end} s");
            assert_eq!(
                a.poll_timeout(&consecutive_only()),
                b.poll_timeout(&consecutive_only())
            );
            checked += 1;
        }
        assert_eq!(checked, 15);
        // And the values themselves: endpoint 0 is back at 181 s with k = 3; 190 s earns
        // nothing, 200 s, 210 s, 220 s one each.
        let k = |end| history(false, secs(end)).view(0).unwrap().ejections;
        assert_eq!([k(185), k(195), k(205), k(215), k(225)], [3, 3, 2, 1, 0]);
        let d = history(false, secs(345));
        assert_eq!(d.view(2).unwrap().ejected_until, Some(secs(390)));
        assert_eq!(d.view(2).unwrap().ejections, 2);
    }

    #[test]
    fn cap_with_three_endpoints() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(3), ms(0));
        fail(&mut d, &cfg, 0, 5, secs(1));
        fail(&mut d, &cfg, 1, 5, secs(1)); // 2 of 3 = 67 % > 50 %
        assert_eq!(until(&d, 1), None);
        assert_eq!(d.ejected_count(), 1);
        assert_eq!(d.counters().overflow, 1);
        fail(&mut d, &cfg, 1, 3, secs(2));
        assert_eq!(d.counters().overflow, 1, "one streak, one overflow");
        assert_eq!(d.view(1).unwrap().consecutive_failures, 8);
        // Endpoint 0 is back at 31 s: the next failure of the streak ejects endpoint 1.
        fail(&mut d, &cfg, 1, 1, secs(31));
        assert_eq!(until(&d, 0), None);
        assert_eq!(until(&d, 1), Some(secs(61)));
        assert_eq!(d.ejected_count(), 1);
    }

    #[test]
    fn cap_with_four_and_ten_endpoints() {
        let cfg = consecutive_only();
        for (n, fits) in [(4u32, 2u32), (10, 5)] {
            let mut d = Detector::new(&addrs(n), ms(0));
            for ep in 0..n {
                fail(&mut d, &cfg, ep, 5, secs(1));
            }
            assert_eq!(d.ejected_count(), fits, "{n} endpoints");
            for ep in 0..n {
                assert_eq!(until(&d, ep).is_some(), ep < fits, "{n} endpoints, #{ep}");
            }
            assert_eq!(d.counters().overflow, u64::from(n - fits));
        }
    }

    #[test]
    fn one_endpoint_may_always_be_ejected() {
        // 10 % of 3 is less than one endpoint: one goes all the same, a second does not.
        let cfg = OutlierRt {
            max_ejected_percent: 10,
            ..consecutive_only()
        };
        let mut d = Detector::new(&addrs(3), ms(0));
        fail(&mut d, &cfg, 2, 5, secs(1));
        fail(&mut d, &cfg, 0, 5, secs(1));
        assert_eq!((until(&d, 2), until(&d, 0)), (Some(secs(31)), None));
        // A service's only endpoint too; panic routing still sends it traffic.
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(1), ms(0));
        fail(&mut d, &cfg, 0, 5, secs(1));
        assert_eq!(until(&d, 0), Some(secs(31)));
        assert_eq!(usable(&d, &cfg, &[0], secs(2)), (vec![0], true));
        // 0 % turns ejection off.
        let cfg = OutlierRt {
            max_ejected_percent: 0,
            ..consecutive_only()
        };
        let mut d = Detector::new(&addrs(10), ms(0));
        fail(&mut d, &cfg, 0, 5, secs(1));
        assert_eq!(until(&d, 0), None);
        assert_eq!(d.counters().overflow, 1);
    }

    #[test]
    fn panic_threshold_routes_to_all_candidates() {
        let cfg = cfg();
        let mut d = Detector::new(&addrs(3), ms(0));
        let mut out = Vec::with_capacity(3);
        let ptr = out.as_ptr();
        d.set_healthy(1, false);
        assert!(!d.filter(&cfg, &[0, 1, 2], secs(1), &mut out));
        assert_eq!(out, [0, 2]);
        d.set_healthy(2, false);
        // 1 of 3 usable: below 50 %.
        assert!(d.filter(&cfg, &[0, 1, 2], secs(1), &mut out));
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(out.as_ptr(), ptr, "no allocation");
        // Exactly 50 % is not below it.
        assert_eq!(usable(&d, &cfg, &[0, 1], secs(1)), (vec![0], false));
        let strict = OutlierRt {
            panic_threshold: 51,
            ..cfg.clone()
        };
        assert_eq!(usable(&d, &strict, &[0, 1], secs(1)), (vec![0, 1], true));
        // Threshold 0: any usable endpoint will do, none usable is still panic.
        let never = OutlierRt {
            panic_threshold: 0,
            ..cfg.clone()
        };
        assert_eq!(usable(&d, &never, &[0, 1, 2], secs(1)), (vec![0], false));
        d.set_healthy(0, false);
        assert_eq!(
            usable(&d, &never, &[0, 1, 2], secs(1)),
            (vec![0, 1, 2], true)
        );
        assert_eq!(usable(&d, &cfg, &[], secs(1)), (vec![], false));
    }

    #[test]
    fn filter_skips_ejected_until_the_time_is_up() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(4), ms(0));
        fail(&mut d, &cfg, 1, 5, secs(1));
        assert_eq!(
            usable(&d, &cfg, &[0, 1, 2, 3], ms(30_999)),
            (vec![0, 2, 3], false)
        );
        // Usable from its return instant, even before `tick` ends the ejection.
        assert_eq!(
            usable(&d, &cfg, &[0, 1, 2, 3], secs(31)),
            (vec![0, 1, 2, 3], false)
        );
    }

    #[test]
    fn returns_when_the_time_is_up() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        fail(&mut d, &cfg, 4, 5, secs(1));
        d.tick(&cfg, ms(30_999));
        assert_eq!(until(&d, 4), Some(secs(31)));
        assert_eq!(d.returns_total(), 0);
        d.tick(&cfg, secs(31));
        let v = d.view(4).unwrap();
        assert_eq!((v.ejected_until, v.ejected_for), (None, None));
        assert_eq!(v.ejections, 1, "the multiplier stays until it decays");
        assert_eq!(d.returns_total(), 1);
        assert_eq!(d.ejected_count(), 0);
    }

    #[test]
    fn success_rate_ejects_the_outlier_among_ten() {
        let cfg = success_rate_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        for ep in 0..9 {
            outcomes(&mut d, &cfg, ep, 99, 1, secs(1));
        }
        outcomes(&mut d, &cfg, 9, 50, 50, secs(1));
        assert_eq!(d.view(9).unwrap().interval_requests, 100);
        assert_eq!(d.view(9).unwrap().interval_successes, 50);
        assert_eq!(d.poll_timeout(&cfg), Some(secs(10)));
        d.tick(&cfg, ms(9_999));
        assert_eq!(d.ejected_count(), 0, "judged at the boundary, not before");
        d.tick(&cfg, secs(10));
        let v = d.view(9).unwrap();
        assert_eq!(v.ejected_until, Some(secs(40)));
        assert_eq!(v.ejected_for, Some(EjectReason::SuccessRate));
        assert_eq!(v.interval_requests, 0, "a fresh window");
        assert_eq!(d.ejected_count(), 1);
        assert_eq!(d.ejections_total(EjectReason::SuccessRate), 1);
        assert_eq!(d.ejections_total(EjectReason::Consecutive), 0);
    }

    #[test]
    fn success_rate_spares_similar_endpoints() {
        let cfg = success_rate_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        // 90 % to 99 %: the lowest is 1.57 stdev below the mean.
        for ep in 0..10 {
            outcomes(&mut d, &cfg, ep, 90 + ep, 10 - ep, secs(1));
        }
        d.tick(&cfg, secs(10));
        assert_eq!(d.ejected_count(), 0);
        // All equal: no rounding error of the mean makes one an outlier.
        for ep in 0..10 {
            outcomes(&mut d, &cfg, ep, 97, 3, secs(11));
        }
        d.tick(&cfg, secs(20));
        assert_eq!(d.ejected_count(), 0);
    }

    #[test]
    fn success_rate_judges_only_endpoints_with_enough_requests() {
        let cfg = success_rate_only();
        let mut d = Detector::new(&addrs(11), ms(0));
        for ep in 0..9 {
            outcomes(&mut d, &cfg, ep, 99, 1, secs(1));
        }
        outcomes(&mut d, &cfg, 9, 49, 50, secs(1)); // 99 requests
        outcomes(&mut d, &cfg, 10, 0, 10, secs(1));
        d.tick(&cfg, secs(10));
        assert_eq!(d.ejected_count(), 0);
        // One more request makes endpoint 9 judged.
        outcomes(&mut d, &cfg, 9, 50, 50, secs(11));
        for ep in 0..9 {
            outcomes(&mut d, &cfg, ep, 99, 1, secs(11));
        }
        d.tick(&cfg, secs(20));
        assert_eq!(until(&d, 9), Some(secs(50)));
        assert_eq!(until(&d, 10), None);
    }

    #[test]
    fn success_rate_never_with_few_endpoints() {
        // Three endpoints, one failing everything, even at a low factor: too few to judge.
        let cfg = OutlierRt {
            success_rate_stdev_factor: 0.5,
            ..success_rate_only()
        };
        let mut d = Detector::new(&addrs(3), ms(0));
        outcomes(&mut d, &cfg, 0, 0, 100, secs(1));
        outcomes(&mut d, &cfg, 1, 100, 0, secs(1));
        outcomes(&mut d, &cfg, 2, 100, 0, secs(1));
        d.tick(&cfg, secs(10));
        assert_eq!(d.ejected_count(), 0);
        // The arithmetic: one outlier among n is at most √(n−1) stdev below the mean.
        let rates = |n: usize| std::iter::once(0.0).chain(std::iter::repeat_n(1.0, n - 1));
        assert_eq!(
            success_rate_threshold(rates(4), 1.9),
            None,
            "fewer than 5 hosts"
        );
        let t5 = success_rate_threshold(rates(5), 1.9).unwrap();
        assert!((t5 - 0.04).abs() < 1e-12, "{t5}"); // mean 0.8, stdev 0.4
        let t10 = success_rate_threshold(rates(10), 1.9).unwrap();
        assert!((t10 - (0.9 - 1.9 * 0.3)).abs() < 1e-12, "{t10}"); // z = 3 = √9
    }

    #[test]
    fn success_rate_with_five_endpoints_at_the_bound() {
        // One at 0 % among four at 100 %: exactly 2 stdev below the mean.
        for (factor, ejected) in [(1.9, true), (2.0, false)] {
            let cfg = OutlierRt {
                success_rate_stdev_factor: factor,
                ..success_rate_only()
            };
            let mut d = Detector::new(&addrs(5), ms(0));
            outcomes(&mut d, &cfg, 0, 0, 100, secs(1));
            for ep in 1..5 {
                outcomes(&mut d, &cfg, ep, 100, 0, secs(1));
            }
            d.tick(&cfg, secs(10));
            assert_eq!(until(&d, 0).is_some(), ejected, "factor {factor}");
        }
    }

    #[test]
    fn success_rate_cap_takes_the_worst_first() {
        // 20 endpoints, 5 %: one ejection. Two outliers; the worse has the higher index.
        let cfg = OutlierRt {
            max_ejected_percent: 5,
            ..success_rate_only()
        };
        let mut d = Detector::new(&addrs(20), ms(0));
        for ep in 0..18 {
            outcomes(&mut d, &cfg, ep, 100, 0, secs(1));
        }
        outcomes(&mut d, &cfg, 18, 50, 50, secs(1));
        outcomes(&mut d, &cfg, 19, 40, 60, secs(1));
        d.tick(&cfg, secs(10));
        assert_eq!((until(&d, 18), until(&d, 19)), (None, Some(secs(40))));
        assert_eq!(d.counters().overflow, 1);
    }

    #[test]
    fn unhealthy_is_skipped_and_not_counted_against_the_cap() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(3), ms(0));
        d.set_healthy(1, false);
        assert!(!d.view(1).unwrap().healthy);
        assert!(!d.usable(1, secs(1)));
        // The first ejection still fits: the unhealthy one is a different cause.
        fail(&mut d, &cfg, 0, 5, secs(1));
        assert_eq!(until(&d, 0), Some(secs(31)));
        assert_eq!(d.ejected_count(), 1);
        assert_eq!(usable(&d, &cfg, &[0, 1, 2], secs(2)), (vec![0, 1, 2], true));
        d.set_healthy(1, true);
        assert_eq!(usable(&d, &cfg, &[0, 1, 2], secs(2)), (vec![1, 2], false));
        // Unhealthy does not expire by itself.
        d.set_healthy(2, false);
        d.tick(&cfg, secs(10_000));
        assert!(!d.view(2).unwrap().healthy);
    }

    #[test]
    fn becoming_healthy_ends_an_ejection() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        fail(&mut d, &cfg, 0, 5, secs(1));
        // A repeated "healthy" does not: the probe passes but requests fail.
        d.set_healthy(0, true);
        assert_eq!(until(&d, 0), Some(secs(31)));
        d.set_healthy(0, false);
        assert_eq!(until(&d, 0), Some(secs(31)));
        d.set_healthy(0, true);
        assert_eq!(until(&d, 0), None);
        assert_eq!(d.returns_total(), 1);
        assert_eq!(d.ejected_count(), 0);
        assert_eq!(
            d.poll_timeout(&cfg),
            Some(secs(10)),
            "only the decay is left"
        );
        assert!(d.usable(0, secs(2)));
    }

    #[test]
    fn sync_keeps_state_by_address() {
        let cfg = consecutive_only();
        let (a, b, c, dd, e) = (addr(0), addr(1), addr(2), addr(3), addr(4));
        let mut d = Detector::new(&[a, b, c, dd], ms(0));
        fail(&mut d, &cfg, 0, 3, secs(1));
        fail(&mut d, &cfg, 1, 5, secs(1));
        d.set_healthy(2, false);
        d.record(&cfg, 3, true, secs(1));
        // Reordered, `dd` gone, `e` new.
        d.sync(&[e, c, a, b]);
        assert_eq!(d.len(), 4);
        let v: Vec<EndpointView> = (0..4).map(|i| d.view(i).unwrap()).collect();
        assert_eq!(v[0].address, e);
        assert_eq!(
            (v[0].healthy, v[0].ejections, v[0].interval_requests),
            (true, 0, 0)
        );
        assert_eq!((v[1].address, v[1].healthy), (c, false));
        assert_eq!((v[2].address, v[2].consecutive_failures), (a, 3));
        assert_eq!(v[2].interval_requests, 3);
        assert_eq!((v[3].address, v[3].ejected_until), (b, Some(secs(31))));
        assert_eq!(d.ejected_count(), 1);
        assert_eq!(d.view(4), None);
        // `a`'s streak goes on at its new index.
        fail(&mut d, &cfg, 2, 2, secs(2));
        assert_eq!(until(&d, 2), Some(secs(32)));
        // `b` gone: its ejection no longer counts, nor its return.
        d.sync(&[e, c, a]);
        assert_eq!(d.ejected_count(), 1);
        d.sync(&[e, c]);
        assert_eq!(d.ejected_count(), 0);
        // Neither `e` nor `c` has outcomes, ejections or a multiplier: nothing to wake for.
        assert_eq!(d.poll_timeout(&cfg), None);
        d.tick(&cfg, secs(40));
        assert_eq!(d.returns_total(), 0);
        assert_eq!(
            d.ejections_total(EjectReason::Consecutive),
            2,
            "counters survive"
        );
        // An address listed twice gets the state twice.
        d.sync(&[c, c]);
        assert!(!d.view(0).unwrap().healthy && !d.view(1).unwrap().healthy);
    }

    #[test]
    fn poll_timeout_points_at_the_next_event() {
        let cfg = consecutive_only();
        let mut d = Detector::new(&addrs(10), ms(0));
        assert_eq!(d.poll_timeout(&cfg), None, "idle: nothing to wake for");
        d.record(&cfg, 0, true, secs(1));
        assert_eq!(d.poll_timeout(&cfg), Some(secs(10)));
        d.tick(&cfg, secs(10));
        assert_eq!(d.poll_timeout(&cfg), None);
        fail(&mut d, &cfg, 0, 5, secs(12)); // until 42 s
        assert_eq!(d.poll_timeout(&cfg), Some(secs(20)));
        d.tick(&cfg, secs(20));
        assert_eq!(d.poll_timeout(&cfg), Some(secs(42)));
        d.tick(&cfg, secs(42));
        assert_eq!(
            d.poll_timeout(&cfg),
            Some(secs(50)),
            "the multiplier to decay"
        );
        d.tick(&cfg, secs(50)); // [40 s, 50 s) was partly ejected
        assert_eq!(d.view(0).unwrap().ejections, 1);
        assert_eq!(d.poll_timeout(&cfg), Some(secs(60)));
        d.tick(&cfg, secs(60));
        assert_eq!(d.view(0).unwrap().ejections, 0);
        assert_eq!(d.poll_timeout(&cfg), None);
        // Two ejections: the earlier return first.
        fail(&mut d, &cfg, 1, 5, secs(61)); // until 91 s
        fail(&mut d, &cfg, 2, 5, secs(65)); // until 95 s
        d.tick(&cfg, secs(90));
        assert_eq!(d.poll_timeout(&cfg), Some(secs(91)));
        d.tick(&cfg, secs(91));
        assert_eq!(d.poll_timeout(&cfg), Some(secs(95)));
    }

    #[test]
    fn a_return_at_a_boundary_comes_first() {
        // Endpoint 0's return at 40 s frees room for endpoint 2's judgement at 40 s.
        let cfg = OutlierRt {
            max_ejected_percent: 10,
            ..success_rate_only()
        };
        let mut d = Detector::new(&addrs(10), ms(0));
        for ep in 0..9 {
            outcomes(&mut d, &cfg, ep, 100, 0, secs(1));
        }
        outcomes(&mut d, &cfg, 9, 0, 100, secs(1));
        d.tick(&cfg, secs(10));
        assert_eq!(until(&d, 9), Some(secs(40)));
        for ep in 0..10 {
            let (ok, bad) = if ep == 2 { (0, 100) } else { (100, 0) };
            outcomes(&mut d, &cfg, ep, ok, bad, secs(31));
        }
        d.tick(&cfg, secs(40));
        assert_eq!((until(&d, 9), until(&d, 2)), (None, Some(secs(70))));
        assert_eq!(d.counters().overflow, 0);
    }

    #[test]
    fn any_input_is_safe() {
        let cfg = cfg();
        let mut d = Detector::new(&addrs(2), ms(0));
        d.record(&cfg, 7, false, secs(1));
        d.set_healthy(u32::MAX, false);
        assert_eq!(d.view(2), None);
        assert_eq!(usable(&d, &cfg, &[0, 9], secs(1)), (vec![0, 9], false));
        let mut empty = Detector::new(&[], ms(0));
        empty.record(&cfg, 0, false, secs(1));
        empty.tick(&cfg, secs(100));
        assert!(empty.is_empty());
        assert_eq!(usable(&empty, &cfg, &[0], secs(1)), (vec![0], false));
        // Zero interval and base, a NaN factor, the end of time.
        let odd = OutlierRt {
            consecutive_failures: 1,
            interval: Duration::ZERO,
            base_ejection: Duration::ZERO,
            max_ejected_percent: 200,
            panic_threshold: 255,
            success_rate_min_requests: 1,
            success_rate_stdev_factor: f64::NAN,
        };
        let mut d = Detector::new(&addrs(6), ms(0));
        for ep in 0..6 {
            d.record(&odd, ep, ep % 2 == 0, secs(1));
        }
        d.tick(&odd, secs(1_000_000));
        d.record(&odd, 1, false, Instant::from_micros(u64::MAX));
        d.tick(&odd, Instant::from_micros(u64::MAX));
        d.tick(&odd, Instant::from_micros(u64::MAX));
        let _ = d.poll_timeout(&odd);
        let huge = OutlierRt {
            base_ejection: Duration::MAX,
            interval: Duration::MAX,
            ..cfg.clone()
        };
        let mut d = Detector::new(&addrs(6), ms(0));
        fail(&mut d, &huge, 0, 5, secs(1));
        assert_eq!(until(&d, 0), Some(Instant::from_micros(u64::MAX)));
        d.tick(&huge, Instant::from_micros(u64::MAX));
        assert_eq!(until(&d, 0), None);
    }
}
