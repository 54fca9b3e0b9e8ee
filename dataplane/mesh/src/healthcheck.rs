//! Active health checks (`health_check` on a service, issue #16 §4), sans-IO: the gateway
//! that owns an endpoint probes it on its own timers and judges it healthy or unhealthy from
//! runs of results. The caller hands in the targets from the current tables ([`Checker::sync`]),
//! the transport events of the probes' connections ([`Checker::handle`]) and its timer
//! ([`Checker::poll_timeout`], [`Checker::handle_timeout`]); it polls health transitions
//! ([`Checker::poll_change`]) and reads state and counters.
//!
//! Schedule: a new target's first probe starts at a uniformly random offset in
//! `[0, interval)` after it appears, so targets added together (a reload, a restart) do not
//! all probe at once. Each later probe starts `interval` ± up to [`JITTER_PERCENT`] % of it
//! (uniform) after the previous one started, so probes of many targets stay spread instead
//! of falling into step. One probe per target is in flight at most: if a probe outlives its
//! successor's start (only possible with `timeout ≥ interval`), the next one starts when it
//! ends.
//!
//! A probe: TCP succeeds when the handshake completes; HTTP sends one `GET` with
//! `Connection: close` and judges the status of the response head. How a probe ends on the
//! wire: a well-formed exchange (handshake done, a parsable head whatever its status, or the
//! server's clean end of stream) ends with `close`, so the server sees an ordinary end and
//! does not log health probes as resets; a timeout, a malformed or oversized head, or a
//! failed write ends with `abort`: nothing more is wanted from that server and a reset frees
//! both sides at once instead of leaving a close pending on a peer that misbehaves. The body
//! is never read: the status is the verdict, and with unread bytes the TCP layer may turn the
//! close into a reset (RFC 2525 §2.17), which is as good.
//!
//! Once the checker closes or aborts a probe connection it forgets the handle: the `Closed`
//! (or `Reset`) the network reports afterwards is not claimed by [`Checker::handle`] (it
//! returns `false`), as the engine does for legs it dropped, so a handle the network reuses
//! later can never be mistaken for a probe.

use crate::http::{self, HttpError, Limits};
use crate::net::{Net, NetError, NetEvent};
use control::snapshot::{HealthCheckRt, HealthProbe};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddrV4;
use std::time::Duration;
use tcpstack::Instant;

/// Bytes of a response head (with any 1xx heads before it) an HTTP probe reads at most. A
/// health endpoint answering with more is unhealthy: a status line and a few fields is all a
/// health answer needs, and this bounds what one probe holds.
pub const HEAD_CAP: usize = 8 * 1024;

/// Successive probes of a target start `interval` ± up to this percentage of it apart.
pub const JITTER_PERCENT: u64 = 10;

/// Shortest interval honoured (the tables' minimum): a zero interval would probe in a loop.
const MIN_INTERVAL_US: u64 = 1_000;

/// Bytes asked of the network per read: the head buffer grows by this much at most.
const READ_CHUNK: usize = 2048;

/// What the checker knows of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not judged yet: treated as healthy (a new endpoint takes traffic from the start).
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    /// Should balancers use it? (Unknown: yes.)
    pub fn is_healthy(self) -> bool {
        self != Health::Unhealthy
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Why a probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeFailure {
    /// The connect failed at once or the handshake was refused (reset before it completed).
    Refused,
    /// The connection was reset (or could no longer send) after the handshake.
    Reset,
    /// No verdict within `timeout`.
    Timeout,
    /// HTTP: a well-formed head whose status is not in `expect`.
    Status,
    /// HTTP: the response head does not parse.
    Malformed,
    /// HTTP: no complete head within [`HEAD_CAP`] bytes.
    HeadTooLarge,
    /// HTTP: the server ended the stream before a complete head.
    Eof,
    /// HTTP: the configured path cannot be sent as a request target (the tables validate it,
    /// so only a hand-built config gets here); no connection is opened.
    InvalidRequest,
}

impl ProbeFailure {
    pub const ALL: [ProbeFailure; 8] = [
        ProbeFailure::Refused,
        ProbeFailure::Reset,
        ProbeFailure::Timeout,
        ProbeFailure::Status,
        ProbeFailure::Malformed,
        ProbeFailure::HeadTooLarge,
        ProbeFailure::Eof,
        ProbeFailure::InvalidRequest,
    ];

    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeFailure::Refused => "refused",
            ProbeFailure::Reset => "reset",
            ProbeFailure::Timeout => "timeout",
            ProbeFailure::Status => "status",
            ProbeFailure::Malformed => "malformed",
            ProbeFailure::HeadTooLarge => "head_too_large",
            ProbeFailure::Eof => "eof",
            ProbeFailure::InvalidRequest => "invalid_request",
        }
    }
}

/// Counters since the checker was made (they survive `sync`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthStats {
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// `probes_failed` by reason, indexed like [`ProbeFailure::ALL`].
    failed_by: [u64; ProbeFailure::ALL.len()],
    /// Transitions from healthy (or not yet judged) to unhealthy.
    pub to_unhealthy: u64,
    /// Transitions from unhealthy to healthy.
    pub to_healthy: u64,
}

impl HealthStats {
    /// Failed probes for this reason.
    pub fn failed(&self, why: ProbeFailure) -> u64 {
        self.failed_by[why as usize]
    }
}

/// A health transition of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChange {
    pub service: String,
    pub addr: SocketAddrV4,
    /// The new state: `false` on becoming unhealthy, `true` on recovering.
    pub healthy: bool,
}

/// A target's state as the caller may show it (`GET /endpoints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    pub health: Health,
    /// Consecutive results against the current state (failures while healthy or unknown,
    /// successes while unhealthy).
    pub streak: u32,
    /// Why the last probe failed; `None` when it succeeded or none ended yet.
    pub last_failure: Option<ProbeFailure>,
    pub in_flight: bool,
}

/// What a probe of a target does, derived from its config once per `sync`.
#[derive(Debug)]
enum Kind {
    Tcp,
    Http {
        /// The whole request, built once.
        request: Box<[u8]>,
        expect: Vec<u16>,
    },
    /// An HTTP path that cannot be sent: every probe fails without connecting.
    Invalid,
}

impl Kind {
    fn of(cfg: &HealthCheckRt, addr: SocketAddrV4) -> Kind {
        match &cfg.probe {
            HealthProbe::Tcp => Kind::Tcp,
            HealthProbe::Http { path, expect } => {
                // A target with a space, a control byte or non-ASCII would make another
                // request (or none): refuse it rather than send it.
                let sendable = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic());
                if !sendable {
                    return Kind::Invalid;
                }
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xdpmesh-health\r\n\
                     Connection: close\r\n\r\n"
                );
                Kind::Http {
                    request: request.into_bytes().into_boxed_slice(),
                    expect: expect.clone(),
                }
            }
        }
    }
}

/// The phase of a probe in flight.
#[derive(Debug)]
enum Step {
    /// Waiting for the handshake.
    Connecting,
    /// HTTP: the request is being written; `written` bytes of it are out.
    Sending { written: usize },
    /// HTTP: reading the response head; `buf` holds what arrived (≤ [`HEAD_CAP`]).
    Reading { buf: Vec<u8> },
}

#[derive(Debug)]
struct Probe<C> {
    conn: C,
    /// Past this the probe fails (`timeout` after it started).
    deadline: Instant,
    /// When the next probe is due (`interval` ± jitter after this one started).
    next: Instant,
    step: Step,
}

#[derive(Debug)]
enum Phase<C> {
    Idle { due: Instant },
    Probing(Probe<C>),
}

#[derive(Debug)]
struct Target<C> {
    cfg: HealthCheckRt,
    kind: Kind,
    health: Health,
    streak: u32,
    last_failure: Option<ProbeFailure>,
    phase: Phase<C>,
}

impl<C: Copy> Target<C> {
    fn conn(&self) -> Option<C> {
        match &self.phase {
            Phase::Probing(p) => Some(p.conn),
            Phase::Idle { .. } => None,
        }
    }

    /// When the checker must next look at this target.
    fn wake(&self) -> Instant {
        match &self.phase {
            Phase::Idle { due } => *due,
            Phase::Probing(p) => p.deadline,
        }
    }
}

/// How a probe ended on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Close,
    Abort,
    /// The network already dropped the handle (`Reset`/`Closed` event).
    Gone,
}

/// A finished probe: its result and how to end its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    result: Result<(), ProbeFailure>,
    end: End,
}

impl Verdict {
    const OK: Verdict = Verdict {
        result: Ok(()),
        end: End::Close,
    };

    fn fail(why: ProbeFailure, end: End) -> Verdict {
        Verdict {
            result: Err(why),
            end,
        }
    }
}

/// Counters and the transition queue, apart from the targets so both can be borrowed.
#[derive(Debug, Default)]
struct Ledger {
    stats: HealthStats,
    /// At most one entry per target (see [`Ledger::push`]), so bounded by the targets.
    changes: VecDeque<HealthChange>,
}

impl Ledger {
    /// Counts a probe's result and applies the thresholds.
    fn record<C>(
        &mut self,
        service: &str,
        addr: SocketAddrV4,
        t: &mut Target<C>,
        result: Result<(), ProbeFailure>,
    ) {
        match result {
            Ok(()) => {
                self.stats.probes_ok += 1;
                t.last_failure = None;
                if t.health == Health::Unhealthy {
                    t.streak = t.streak.saturating_add(1);
                    // A threshold of 0 would never trip; 1 is the least that means anything.
                    if t.streak >= t.cfg.healthy.max(1) {
                        t.health = Health::Healthy;
                        t.streak = 0;
                        self.stats.to_healthy += 1;
                        self.push(service, addr, true);
                    }
                } else {
                    // Unknown was already treated as healthy: judging it so is no transition.
                    t.health = Health::Healthy;
                    t.streak = 0;
                }
            }
            Err(why) => {
                self.stats.probes_failed += 1;
                self.stats.failed_by[why as usize] += 1;
                t.last_failure = Some(why);
                if t.health == Health::Unhealthy {
                    t.streak = 0;
                } else {
                    t.streak = t.streak.saturating_add(1);
                    if t.streak >= t.cfg.unhealthy.max(1) {
                        t.health = Health::Unhealthy;
                        t.streak = 0;
                        self.stats.to_unhealthy += 1;
                        self.push(service, addr, false);
                    }
                }
            }
        }
    }

    /// Queues a transition. An older one of the same target still unpolled is dropped: the
    /// caller acts on a target's current state, and the queue stays bounded by the number of
    /// targets even if nobody polls (the counters keep every transition).
    fn push(&mut self, service: &str, addr: SocketAddrV4, healthy: bool) {
        self.forget(service, addr);
        self.changes.push_back(HealthChange {
            service: service.to_owned(),
            addr,
            healthy,
        });
    }

    fn forget(&mut self, service: &str, addr: SocketAddrV4) {
        self.changes
            .retain(|c| !(c.addr == addr && c.service == service));
    }
}

/// The active health checker of one worker.
#[derive(Debug)]
pub struct Checker<C> {
    /// By service, then address: iteration (and so which probe starts first at a shared
    /// instant) is deterministic.
    targets: BTreeMap<String, BTreeMap<SocketAddrV4, Target<C>>>,
    /// The connection of every probe in flight, and whose it is.
    by_conn: HashMap<C, (String, SocketAddrV4)>,
    ledger: Ledger,
    rng: ChaCha8Rng,
    /// The earliest `Target::wake`, kept current by every call that changes one.
    wake: Option<Instant>,
}

impl<C: Copy + Eq + Hash + Debug> Checker<C> {
    pub fn new(seed: u64) -> Self {
        Checker {
            targets: BTreeMap::new(),
            by_conn: HashMap::new(),
            ledger: Ledger::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            wake: None,
        }
    }

    /// The endpoints to check now (from the current tables): (service name, endpoint
    /// address, its health check). A target still present (by service and address) keeps its
    /// health, streak and schedule; if its probe, interval or timeout changed, its probe in
    /// flight is aborted without a verdict and its next one is drawn as for a new target. A
    /// new target starts [`Health::Unknown`] with its first probe at a random offset within
    /// one interval. A target no longer listed is dropped with any unpolled transition, and
    /// its probe connection aborted. A target listed twice: the first entry counts.
    pub fn sync<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        now: Instant,
        targets: &[(String, SocketAddrV4, HealthCheckRt)],
    ) {
        let mut old = std::mem::take(&mut self.targets);
        let mut new: BTreeMap<String, BTreeMap<SocketAddrV4, Target<C>>> = BTreeMap::new();
        for (service, addr, cfg) in targets {
            let addr = *addr;
            if new.get(service).is_some_and(|m| m.contains_key(&addr)) {
                continue;
            }
            let kept = old.get_mut(service).and_then(|m| m.remove(&addr));
            let t = match kept {
                Some(mut t) => {
                    if t.cfg != *cfg {
                        let reprobe = t.cfg.probe != cfg.probe
                            || t.cfg.interval != cfg.interval
                            || t.cfg.timeout != cfg.timeout;
                        if reprobe {
                            if let Some(c) = t.conn() {
                                self.by_conn.remove(&c);
                                net.abort(c);
                            }
                            t.phase = Phase::Idle {
                                due: now + first_offset(cfg.interval, &mut self.rng),
                            };
                            t.kind = Kind::of(cfg, addr);
                        }
                        // New thresholds apply from the next result.
                        t.cfg = cfg.clone();
                    }
                    t
                }
                None => Target {
                    kind: Kind::of(cfg, addr),
                    cfg: cfg.clone(),
                    health: Health::Unknown,
                    streak: 0,
                    last_failure: None,
                    phase: Phase::Idle {
                        due: now + first_offset(cfg.interval, &mut self.rng),
                    },
                },
            };
            new.entry(service.clone()).or_default().insert(addr, t);
        }
        // What is left of the old set was removed from the tables.
        for (service, m) in old {
            for (addr, t) in m {
                if let Some(c) = t.conn() {
                    self.by_conn.remove(&c);
                    net.abort(c);
                }
                self.ledger.forget(&service, addr);
            }
        }
        self.targets = new;
        self.rewake();
    }

    /// When [`Checker::handle_timeout`] must run next: the earliest due probe or probe
    /// deadline. `None` without targets.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wake
    }

    /// Fails probes past their deadline (aborting them) and starts the probes due.
    pub fn handle_timeout<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant) {
        if self.wake.is_none_or(|w| w > now) {
            return;
        }
        for (service, m) in &mut self.targets {
            for (&addr, t) in m.iter_mut() {
                if let Phase::Probing(p) = &t.phase {
                    if p.deadline <= now {
                        let c = p.conn;
                        self.by_conn.remove(&c);
                        net.abort(c);
                        finish(t, now);
                        let v = Err(ProbeFailure::Timeout);
                        self.ledger.record(service, addr, t, v);
                    }
                }
                // Also right after a timeout: with `timeout ≥ interval` the next one is due.
                if matches!(t.phase, Phase::Idle { due } if due <= now) {
                    match start(net, now, addr, t, &mut self.rng) {
                        Ok(c) => {
                            self.by_conn.insert(c, (service.clone(), addr));
                        }
                        Err(why) => self.ledger.record(service, addr, t, Err(why)),
                    }
                }
            }
        }
        self.rewake();
    }

    /// A transport event. `false` if its connection is not one of the checker's probes (the
    /// caller's own, or a probe the checker already closed or aborted).
    pub fn handle<N: Net<Conn = C>>(&mut self, net: &mut N, now: Instant, ev: NetEvent<C>) -> bool {
        if matches!(ev, NetEvent::Accepted { .. }) {
            return false;
        }
        let c = ev.conn();
        let Some((service, addr)) = self.by_conn.get(&c).cloned() else {
            return false;
        };
        let Some(t) = self
            .targets
            .get_mut(&service)
            .and_then(|m| m.get_mut(&addr))
        else {
            // Cannot happen (sync drops both together); forget the stray handle.
            self.by_conn.remove(&c);
            return true;
        };
        let Phase::Probing(p) = &mut t.phase else {
            self.by_conn.remove(&c);
            return true;
        };
        let verdict = match ev {
            NetEvent::Accepted { .. } => None,
            NetEvent::Connected(_) => match (&t.kind, &p.step) {
                (Kind::Tcp, Step::Connecting) => Some(Verdict::OK),
                (Kind::Http { .. }, Step::Connecting) => {
                    p.step = Step::Sending { written: 0 };
                    advance(net, p, &t.kind)
                }
                _ => None,
            },
            NetEvent::Readable(_) | NetEvent::Writable(_) => match p.step {
                // Bytes before the handshake completes are read after it.
                Step::Connecting => None,
                _ => advance(net, p, &t.kind),
            },
            NetEvent::Reset(_) | NetEvent::Closed(_) => {
                let why = match p.step {
                    Step::Connecting => ProbeFailure::Refused,
                    _ => ProbeFailure::Reset,
                };
                Some(Verdict::fail(why, End::Gone))
            }
        };
        if let Some(v) = verdict {
            match v.end {
                End::Close => net.close(now, c),
                End::Abort => net.abort(c),
                End::Gone => {}
            }
            self.by_conn.remove(&c);
            finish(t, now);
            self.ledger.record(&service, addr, t, v.result);
            self.rewake();
        }
        true
    }

    /// Health transitions, oldest first (at most one pending per target: the latest).
    pub fn poll_change(&mut self) -> Option<HealthChange> {
        self.ledger.changes.pop_front()
    }

    /// Should balancers use it? `None`: not a target (not checked).
    pub fn healthy(&self, service: &str, addr: SocketAddrV4) -> Option<bool> {
        self.health(service, addr).map(Health::is_healthy)
    }

    /// The target's state, unknown included. `None`: not a target.
    pub fn health(&self, service: &str, addr: SocketAddrV4) -> Option<Health> {
        self.target(service, addr).map(|t| t.health)
    }

    pub fn status(&self, service: &str, addr: SocketAddrV4) -> Option<TargetStatus> {
        self.target(service, addr).map(status_of)
    }

    /// Every target, by service then address.
    pub fn targets(&self) -> impl Iterator<Item = (&str, SocketAddrV4, TargetStatus)> + '_ {
        self.targets.iter().flat_map(|(service, m)| {
            m.iter()
                .map(move |(&addr, t)| (service.as_str(), addr, status_of(t)))
        })
    }

    pub fn probes_in_flight(&self) -> usize {
        self.by_conn.len()
    }

    pub fn stats(&self) -> &HealthStats {
        &self.ledger.stats
    }

    fn target(&self, service: &str, addr: SocketAddrV4) -> Option<&Target<C>> {
        self.targets.get(service).and_then(|m| m.get(&addr))
    }

    fn rewake(&mut self) {
        self.wake = self
            .targets
            .values()
            .flat_map(|m| m.values())
            .map(Target::wake)
            .min();
    }
}

fn status_of<C>(t: &Target<C>) -> TargetStatus {
    TargetStatus {
        health: t.health,
        streak: t.streak,
        last_failure: t.last_failure,
        in_flight: matches!(t.phase, Phase::Probing(_)),
    }
}

/// Clamped to what a schedule can use: at least [`MIN_INTERVAL_US`], and small enough that
/// adding the jitter cannot overflow.
fn interval_us(interval: Duration) -> u64 {
    u64::try_from(interval.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(MIN_INTERVAL_US, u64::MAX / 4)
}

/// A new target's first probe: uniform in `[0, interval)`.
fn first_offset(interval: Duration, rng: &mut ChaCha8Rng) -> Duration {
    Duration::from_micros(rng.gen_range(0..interval_us(interval)))
}

/// From one probe's start to the next: `interval` ± up to [`JITTER_PERCENT`] %, uniform.
fn jittered(interval: Duration, rng: &mut ChaCha8Rng) -> Duration {
    let i = interval_us(interval);
    let j = i / 100 * JITTER_PERCENT;
    Duration::from_micros(i - j + rng.gen_range(0..=2 * j))
}

/// Starts a probe of an idle target: `Ok` with its connection, or `Err` when it failed at
/// once (then the target is idle until its next probe).
fn start<N: Net>(
    net: &mut N,
    now: Instant,
    addr: SocketAddrV4,
    t: &mut Target<N::Conn>,
    rng: &mut ChaCha8Rng,
) -> Result<N::Conn, ProbeFailure> {
    let next = now + jittered(t.cfg.interval, rng);
    if matches!(t.kind, Kind::Invalid) {
        t.phase = Phase::Idle { due: next };
        return Err(ProbeFailure::InvalidRequest);
    }
    match net.connect(now, addr) {
        Ok(conn) => {
            t.phase = Phase::Probing(Probe {
                conn,
                deadline: now + t.cfg.timeout,
                next,
                step: Step::Connecting,
            });
            Ok(conn)
        }
        Err(_) => {
            t.phase = Phase::Idle { due: next };
            Err(ProbeFailure::Refused)
        }
    }
}

/// The probe ended: idle until the next one, which is not earlier than now.
fn finish<C>(t: &mut Target<C>, now: Instant) {
    if let Phase::Probing(p) = &t.phase {
        t.phase = Phase::Idle {
            due: p.next.max(now),
        };
    }
}

/// Moves an HTTP probe's bytes: the rest of the request, then as much of the response head
/// as has arrived. `Some` once it has a verdict.
fn advance<N: Net>(net: &mut N, p: &mut Probe<N::Conn>, kind: &Kind) -> Option<Verdict> {
    let Kind::Http { request, expect } = kind else {
        return None;
    };
    let c = p.conn;
    if let Step::Sending { written } = &mut p.step {
        while *written < request.len() {
            match net.write(c, &request[*written..]) {
                Ok(0) | Err(NetError::WouldBlock) => return None,
                Ok(n) => *written = (*written + n).min(request.len()),
                Err(NetError::Closed | NetError::Reset) => {
                    return Some(Verdict::fail(ProbeFailure::Reset, End::Abort))
                }
            }
        }
        // A response that arrived while the request was going out is read now: its
        // `Readable` came during `Sending`.
        p.step = Step::Reading { buf: Vec::new() };
    }
    let Step::Reading { buf } = &mut p.step else {
        return None;
    };
    loop {
        let old = buf.len();
        let want = (old + READ_CHUNK).min(HEAD_CAP);
        if want == old {
            // Unreachable: a full buffer without a head already failed below.
            return Some(Verdict::fail(ProbeFailure::HeadTooLarge, End::Abort));
        }
        buf.reserve_exact(want - old);
        buf.resize(want, 0);
        let r = net.read(c, &mut buf[old..]);
        let n = match r {
            Ok(n) => n.min(want - old),
            Err(_) => 0,
        };
        buf.truncate(old + n);
        match r {
            Ok(0) => return Some(Verdict::fail(ProbeFailure::Eof, End::Close)),
            Ok(_) => {
                if let Some(v) = judge_head(buf, expect) {
                    return Some(v);
                }
            }
            Err(NetError::WouldBlock) => return None,
            Err(NetError::Closed | NetError::Reset) => {
                return Some(Verdict::fail(ProbeFailure::Reset, End::Abort))
            }
        }
    }
}

/// The verdict on what arrived of the response, if there is one yet. 1xx heads are skipped
/// (their bytes count toward the cap while buffered, not after).
fn judge_head(buf: &mut Vec<u8>, expect: &[u16]) -> Option<Verdict> {
    let limits = Limits {
        max_head: HEAD_CAP,
        ..Limits::default()
    };
    loop {
        match http::parse_response(buf, &limits, "GET") {
            Ok(None) => return None,
            Ok(Some((head, n))) if head.is_interim() && n > 0 => {
                buf.drain(..n.min(buf.len()));
            }
            Ok(Some((head, _))) if expect.contains(&head.status) => return Some(Verdict::OK),
            Ok(Some(_)) => return Some(Verdict::fail(ProbeFailure::Status, End::Close)),
            Err(HttpError::HeadTooLarge) => {
                return Some(Verdict::fail(ProbeFailure::HeadTooLarge, End::Abort))
            }
            Err(_) => return Some(Verdict::fail(ProbeFailure::Malformed, End::Abort)),
        }
    }
}
