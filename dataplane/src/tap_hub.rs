//! The tap hub: `GET /tap` on the admin API, one JSON line per matching HTTP request as it
//! completes. (Not [`crate::tap`], the TAP *device* backend.)
//!
//! Workers already drain their engine's events after each round ([`drain`]); they offer
//! each [`Event::Request`] to the hub only while it has a subscriber (one atomic load per
//! round when nobody taps). Without an access log, the engine builds events only while
//! someone taps: [`TapPort`] turns them on when the first subscriber comes and off when the
//! last one goes, and the engine decides per request, so a keep-alive connection opened
//! before the tap is seen too.
//!
//! Filters are applied on the worker as the event is offered (string compares, no
//! allocation); a matching event is copied once and shared by the subscribers that want it.
//! Each subscriber has a bounded queue ([`QUEUE`]); a full queue drops the line (the worker
//! never waits) and the subscriber is told how many it lost in a `dropped` line. At most
//! [`MAX_SUBSCRIBERS`] taps run at once; one more is refused (503).
//!
//! The stream (`application/x-ndjson`, chunked), one JSON object per line, each with `type`:
//! - `"http"`: a request, exactly the access log's line (README, "Logs and access logs");
//! - `"dropped"`: `{"type":"dropped","dropped":N}`, N lines lost since the last report;
//! - `"end"`: the last line, `{"type":"end","reason":R,"lines":N,"dropped":D}`, R `limit`,
//!   `seconds` or `shutdown` (the gateway drains), N request lines sent, D lost in all.
//!
//! A stream that ends without an `end` line was cut (the client was too slow to take a
//! chunk within the admin API's `write_timeout`, or the admin API's own `max_stream`).

use crate::accesslog::{self, Sink};
use crate::clock::Clock;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use mesh::engine::{Engine, Event, RequestEvent};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Taps at once; one more gets 503.
pub const MAX_SUBSCRIBERS: usize = 4;
/// Request lines a subscriber's queue holds; more are dropped and counted.
pub const QUEUE: usize = 1024;
/// `seconds` when not given, and its largest value.
pub const DEFAULT_SECONDS: u64 = 60;
pub const MAX_SECONDS: u64 = 600;
/// The largest `limit`.
pub const MAX_LIMIT: u64 = 1_000_000;
/// The longest query string, and the longest value of one filter (after decoding).
pub const MAX_QUERY: usize = 2048;
pub const MAX_VALUE: usize = 256;
/// Bytes of lines one call of [`Subscription::next_lines`] appends at most (one chunk).
const CHUNK: usize = 64 * 1024;

/// Why a tap was refused: 400 (a bad query) or 503 ([`TapError::Full`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    #[error("query string over {MAX_QUERY} bytes")]
    QueryTooLong,
    #[error("unknown parameter {0:?} (service, route, method, path_prefix, status, identity, limit, seconds)")]
    Unknown(String),
    #[error("{0} given twice")]
    Twice(&'static str),
    #[error("{0}: over {MAX_VALUE} bytes")]
    TooLong(&'static str),
    #[error("{0}: bad %-encoding or not UTF-8")]
    Encoding(&'static str),
    #[error("{0}: {1}")]
    Bad(&'static str, &'static str),
    #[error("{MAX_SUBSCRIBERS} taps are running already; try again when one ends")]
    Full,
}

impl TapError {
    /// The admin API's status for it.
    pub fn status(&self) -> u16 {
        if *self == TapError::Full {
            503
        } else {
            400
        }
    }
}

/// Which statuses a tap wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// `503`
    Code(u16),
    /// `5xx`: 500 to 599.
    Class(u16),
    /// `cut`: the response was cut (no status).
    Cut,
}

/// What a tap wants; every given field must match (absent: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub service: Option<String>,
    pub route: Option<String>,
    pub method: Option<String>,
    /// A prefix of the target as received (`/api` also matches `/api2` and `/api?x`).
    pub path_prefix: Option<String>,
    pub status: Option<StatusMatch>,
    /// The caller's (`src_identity`) or the peer gateway's (`dst_identity`) SPIFFE ID.
    pub identity: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &RequestEvent) -> bool {
        let is = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        is(&self.service, r.service.as_deref())
            && is(&self.route, r.route.as_deref())
            && is(&self.method, Some(&r.method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| r.target.starts_with(p))
            && self.status.is_none_or(|s| match (s, r.status) {
                (StatusMatch::Code(c), Some(got)) => c == got,
                (StatusMatch::Class(c), Some(got)) => got / 100 == c / 100,
                (StatusMatch::Cut, None) => true,
                _ => false,
            })
            && self.identity.as_deref().is_none_or(|id| {
                r.identity.as_deref() == Some(id) || r.dst_identity.as_deref() == Some(id)
            })
    }
}

/// A tap's query: `service=&route=&method=&path_prefix=&status=&identity=&limit=&seconds=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    /// Request lines, then the stream ends; `None`: until `seconds`.
    pub limit: Option<u64>,
    /// The stream ends this long after it began ([`DEFAULT_SECONDS`], at most [`MAX_SECONDS`]).
    pub seconds: Duration,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            filter: Filter::default(),
            limit: None,
            seconds: Duration::from_secs(DEFAULT_SECONDS),
        }
    }
}

impl Query {
    /// Parses a query string (`None`: no filter, the defaults). Values are %-decoded (`+`
    /// stays `+`); unknown or repeated parameters are refused, so a typo never means "all".
    pub fn parse(q: Option<&str>) -> Result<Query, TapError> {
        let mut out = Query::default();
        let Some(q) = q else { return Ok(out) };
        if q.len() > MAX_QUERY {
            return Err(TapError::QueryTooLong);
        }
        let mut seen = [false; 8];
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (i, key): (usize, &'static str) = match k {
                "service" => (0, "service"),
                "route" => (1, "route"),
                "method" => (2, "method"),
                "path_prefix" => (3, "path_prefix"),
                "status" => (4, "status"),
                "identity" => (5, "identity"),
                "limit" => (6, "limit"),
                "seconds" => (7, "seconds"),
                _ => {
                    let k: String = k.chars().take(64).collect();
                    return Err(TapError::Unknown(k));
                }
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(TapError::Twice(key));
            }
            let v = decode(v).ok_or(TapError::Encoding(key))?;
            if v.len() > MAX_VALUE {
                return Err(TapError::TooLong(key));
            }
            if v.is_empty() {
                // `service=`: as if not given (forms send empty fields).
                continue;
            }
            let f = &mut out.filter;
            match i {
                0 => f.service = Some(v),
                1 => f.route = Some(v),
                2 => f.method = Some(v),
                3 => f.path_prefix = Some(v),
                4 => f.status = Some(status(&v)?),
                5 => f.identity = Some(v),
                6 => {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| TapError::Bad(key, "not a whole number"))?;
                    if n == 0 || n > MAX_LIMIT {
                        return Err(TapError::Bad(key, "from 1 to 1000000"));
                    }
                    out.limit = Some(n);
                }
                _ => {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| TapError::Bad(key, "not a whole number of seconds"))?;
                    if n == 0 || n > MAX_SECONDS {
                        return Err(TapError::Bad(key, "from 1 to 600"));
                    }
                    out.seconds = Duration::from_secs(n);
                }
            }
        }
        Ok(out)
    }
}

fn status(v: &str) -> Result<StatusMatch, TapError> {
    const WHAT: &str = "a code (503), a class (5xx) or cut";
    let b = v.as_bytes();
    if v == "cut" {
        return Ok(StatusMatch::Cut);
    }
    if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) {
        if v.ends_with("xx") || v.ends_with("XX") {
            return Ok(StatusMatch::Class(u16::from(b[0] - b'0') * 100));
        }
        if let Ok(c) = v.parse::<u16>() {
            return Ok(StatusMatch::Code(c));
        }
    }
    Err(TapError::Bad("status", WHAT))
}

/// %-decoding of one value; `None` for a bad escape or bytes that are not UTF-8.
fn decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A request on its way to the subscribers that want it (one copy for all of them).
struct Tapped {
    event: RequestEvent,
    clock: Clock,
}

struct Sub {
    id: u64,
    filter: Filter,
    tx: Sender<Arc<Tapped>>,
    /// Lines lost to a full queue.
    dropped: AtomicU64,
}

/// Shared by the workers (which offer events) and the admin API (which subscribes).
#[derive(Default)]
pub struct TapHub {
    /// Subscribers now: the workers' one check per round.
    active: AtomicUsize,
    subs: Mutex<Vec<Arc<Sub>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl TapHub {
    pub fn new() -> Arc<TapHub> {
        Arc::new(TapHub::default())
    }

    /// Whether anyone taps (workers look once per round).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// A new tap, or [`TapError::Full`].
    pub fn subscribe(self: &Arc<Self>, q: Query) -> Result<Subscription, TapError> {
        let (tx, rx) = channel::bounded(QUEUE);
        let sub = Arc::new(Sub {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            filter: q.filter,
            tx,
            dropped: AtomicU64::new(0),
        });
        {
            let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
            if subs.len() >= MAX_SUBSCRIBERS {
                return Err(TapError::Full);
            }
            subs.push(sub.clone());
            self.active.store(subs.len(), Ordering::Relaxed);
        }
        Ok(Subscription {
            hub: self.clone(),
            sub,
            rx,
            limit: q.limit,
            deadline: Instant::now() + q.seconds,
            sent: 0,
            reported: 0,
            done: false,
        })
    }

    /// Offers a completed request to every subscriber whose filter it matches; never waits.
    pub fn offer(&self, r: &RequestEvent, clock: &Clock) {
        let subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut copy: Option<Arc<Tapped>> = None;
        for s in subs.iter().filter(|s| s.filter.matches(r)) {
            let t = copy.get_or_insert_with(|| {
                Arc::new(Tapped {
                    event: r.clone(),
                    clock: *clock,
                })
            });
            match s.tx.try_send(t.clone()) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The gateway stops: every tap ends (reason `shutdown`) at its next look.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn leave(&self, id: u64) {
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| s.id != id);
        self.active.store(subs.len(), Ordering::Relaxed);
    }
}

/// One tap: its lines, until its limit or deadline; leaves the hub when dropped.
pub struct Subscription {
    hub: Arc<TapHub>,
    sub: Arc<Sub>,
    rx: Receiver<Arc<Tapped>>,
    limit: Option<u64>,
    deadline: Instant,
    sent: u64,
    reported: u64,
    done: bool,
}

impl Subscription {
    /// Waits at most `wait` for requests and appends their lines to `out` (after a
    /// `dropped` line when some were lost); `false` once the stream is over (its `end` line
    /// appended).
    pub fn next_lines(&mut self, out: &mut Vec<u8>, wait: Duration) -> bool {
        if self.done {
            return false;
        }
        let now = Instant::now();
        if self.hub.closed.load(Ordering::SeqCst) {
            return self.end(out, "shutdown");
        }
        if now >= self.deadline {
            return self.end(out, "seconds");
        }
        let first = self.rx.recv_timeout(wait.min(self.deadline - now)).ok();
        self.report_drops(out);
        let mut next = first;
        while let Some(t) = next {
            accesslog::request_json(out, &t.event, &t.clock);
            self.sent += 1;
            if self.limit.is_some_and(|l| self.sent >= l) {
                return self.end(out, "limit");
            }
            if out.len() >= CHUNK {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        true
    }

    fn report_drops(&mut self, out: &mut Vec<u8>) {
        let d = self.sub.dropped.load(Ordering::Relaxed);
        if d > self.reported {
            out.extend_from_slice(
                format!(
                    "{{\"type\":\"dropped\",\"dropped\":{}}}\n",
                    d - self.reported
                )
                .as_bytes(),
            );
            self.reported = d;
        }
    }

    fn end(&mut self, out: &mut Vec<u8>, reason: &str) -> bool {
        self.report_drops(out);
        out.extend_from_slice(
            format!(
                "{{\"type\":\"end\",\"reason\":\"{reason}\",\"lines\":{},\"dropped\":{}}}\n",
                self.sent, self.reported
            )
            .as_bytes(),
        );
        self.done = true;
        false
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.sub.id);
    }
}

impl control::admin::BodyStream for Subscription {
    fn next(&mut self, out: &mut Vec<u8>, wait: Duration) -> bool {
        self.next_lines(out, wait)
    }
}

/// A worker's view of the hub: whether its engine's events are on for the tap.
pub struct TapPort {
    hub: Arc<TapHub>,
    on: bool,
}

impl TapPort {
    pub fn new(hub: Arc<TapHub>) -> TapPort {
        TapPort { hub, on: false }
    }

    /// Whether to offer this round's requests; turns the engine's events on or off as
    /// subscribers come and go (unless `events_kept`: the access log keeps them on).
    fn sync<C: Copy + Eq + std::hash::Hash + std::fmt::Debug>(
        &mut self,
        engine: &mut Engine<C>,
        events_kept: bool,
    ) -> bool {
        let want = self.hub.active();
        if !events_kept && want != self.on {
            engine.set_event_capacity(if want { accesslog::ENGINE_EVENTS } else { 0 });
        }
        self.on = want;
        want
    }
}

/// Takes the engine's events after a round: to the access log, when there is one, and each
/// request to the tap while someone taps. With neither, it costs one atomic load.
pub fn drain<C: Copy + Eq + std::hash::Hash + std::fmt::Debug>(
    engine: &mut Engine<C>,
    mut log: Option<&mut Sink>,
    tap: Option<&mut TapPort>,
    clock: &Clock,
) {
    let tapping = match tap {
        Some(t) => t.sync(engine, log.is_some()).then_some(&t.hub),
        None => None,
    };
    if log.is_none() && tapping.is_none() {
        return;
    }
    while let Some(event) = engine.poll_event() {
        if let (Some(hub), Event::Request(r)) = (tapping, &event) {
            hub.offer(r, clock);
        }
        if let Some(l) = log.as_deref_mut() {
            l.take(event, clock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn request(service: &str, status: Option<u16>) -> RequestEvent {
        RequestEvent {
            listener: Arc::from("web"),
            client: "10.0.0.2:40000".parse::<SocketAddrV4>().unwrap(),
            method: "GET".into(),
            target: "/api/v1?x=1".into(),
            route: Some("canary".into()),
            service: Some(service.into()),
            endpoint: Some("10.0.3.2:8080".parse().unwrap()),
            status,
            refusal: None,
            attempts: 1,
            request_body_bytes: 0,
            response_body_bytes: 2,
            start: tcpstack::Instant::from_micros(1_000),
            end: tcpstack::Instant::from_micros(3_000),
            request_id: Some("rid".into()),
            identity: Some("spiffe://corp.mesh/sa/a".into()),
            authority: Some("reviews.test".into()),
            traceparent: None,
            upstream: Some(Duration::from_micros(900)),
            dst_identity: Some("spiffe://corp.mesh/gateway/gw-b".into()),
            trace: None,
        }
    }

    fn q(s: &str) -> Result<Query, TapError> {
        Query::parse(Some(s))
    }

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn queries_parse_with_defaults_and_bounds() {
        assert_eq!(Query::parse(None), Ok(Query::default()));
        assert_eq!(q("").unwrap().seconds, Duration::from_secs(60));
        let x = q("service=reviews&route=canary&method=GET&path_prefix=%2Fapi&status=5xx&identity=spiffe%3A%2F%2Fcorp.mesh%2Fsa%2Fa&limit=3&seconds=5").unwrap();
        assert_eq!(x.filter.service.as_deref(), Some("reviews"));
        assert_eq!(x.filter.path_prefix.as_deref(), Some("/api"));
        assert_eq!(x.filter.status, Some(StatusMatch::Class(500)));
        assert_eq!(
            x.filter.identity.as_deref(),
            Some("spiffe://corp.mesh/sa/a")
        );
        assert_eq!((x.limit, x.seconds), (Some(3), Duration::from_secs(5)));
        assert_eq!(
            q("status=503").unwrap().filter.status,
            Some(StatusMatch::Code(503))
        );
        assert_eq!(
            q("status=cut").unwrap().filter.status,
            Some(StatusMatch::Cut)
        );
        assert_eq!(q("service=").unwrap().filter.service, None);
        for (bad, err) in [
            ("servce=x", TapError::Unknown("servce".into())),
            ("limit=1&limit=2", TapError::Twice("limit")),
            ("limit=0", TapError::Bad("limit", "from 1 to 1000000")),
            ("limit=-1", TapError::Bad("limit", "not a whole number")),
            ("seconds=601", TapError::Bad("seconds", "from 1 to 600")),
            (
                "status=600",
                TapError::Bad("status", "a code (503), a class (5xx) or cut"),
            ),
            (
                "status=5x",
                TapError::Bad("status", "a code (503), a class (5xx) or cut"),
            ),
            ("path_prefix=%zz", TapError::Encoding("path_prefix")),
            ("path_prefix=%ff", TapError::Encoding("path_prefix")),
            ("path_prefix=%2", TapError::Encoding("path_prefix")),
        ] {
            assert_eq!(q(bad), Err(err), "{bad}");
        }
        assert_eq!(q(&"a".repeat(MAX_QUERY + 1)), Err(TapError::QueryTooLong));
        let long = format!("service={}", "s".repeat(MAX_VALUE + 1));
        assert_eq!(q(&long), Err(TapError::TooLong("service")));
        assert_eq!(TapError::Full.status(), 503);
        assert_eq!(TapError::QueryTooLong.status(), 400);
    }

    #[test]
    fn filters_match_every_given_field() {
        let r = request("reviews", Some(503));
        let m = |s: &str| q(s).unwrap().filter.matches(&r);
        assert!(m(""));
        assert!(m("service=reviews&route=canary&method=GET"));
        assert!(!m("service=ratings"));
        assert!(!m("route=other"));
        assert!(!m("method=POST"));
        assert!(m("path_prefix=/api"));
        assert!(!m("path_prefix=/web"));
        assert!(m("status=503") && m("status=5xx"));
        assert!(!m("status=200") && !m("status=2xx") && !m("status=cut"));
        assert!(m("identity=spiffe://corp.mesh/sa/a"));
        assert!(m("identity=spiffe://corp.mesh/gateway/gw-b"));
        assert!(!m("identity=spiffe://corp.mesh/sa/b"));
        assert!(q("status=cut").unwrap().filter.matches(&request("x", None)));
    }

    #[test]
    fn at_most_four_subscribers_and_leaving_frees_a_place() {
        let hub = TapHub::new();
        assert!(!hub.active());
        let mut taps: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| hub.subscribe(Query::default()).expect("a place"))
            .collect();
        assert!(hub.active());
        assert_eq!(hub.subscribe(Query::default()).err(), Some(TapError::Full));
        taps.pop();
        assert!(hub.subscribe(Query::default()).is_ok());
        taps.clear();
        assert!(!hub.active());
    }

    #[test]
    fn lines_filtered_limited_and_ended() {
        let hub = TapHub::new();
        let clock = Clock::start();
        let mut all = hub.subscribe(q("limit=2").unwrap()).unwrap();
        let mut some = hub.subscribe(q("service=ratings").unwrap()).unwrap();
        for s in ["reviews", "ratings", "reviews"] {
            hub.offer(&request(s, Some(200)), &clock);
        }
        let mut out = Vec::new();
        assert!(!all.next_lines(&mut out, Duration::ZERO));
        let l = lines(&out);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(
            (l[0]["type"].as_str(), l[0]["service"].as_str()),
            (Some("http"), Some("reviews"))
        );
        assert_eq!(l[0]["duration_us"], 2_000);
        assert_eq!(l[1]["service"], "ratings");
        assert_eq!(
            l[2],
            serde_json::json!({"type": "end", "reason": "limit", "lines": 2, "dropped": 0})
        );
        let mut out = Vec::new();
        assert!(some.next_lines(&mut out, Duration::ZERO));
        assert_eq!(lines(&out).len(), 1);
        hub.close();
        let mut out = Vec::new();
        assert!(!some.next_lines(&mut out, Duration::ZERO));
        assert_eq!(lines(&out)[0]["reason"], "shutdown");
    }

    #[test]
    fn a_slow_reader_loses_lines_and_is_told_how_many() {
        let hub = TapHub::new();
        let clock = Clock::start();
        let mut tap = hub.subscribe(q("seconds=1").unwrap()).unwrap();
        for _ in 0..QUEUE + 10 {
            hub.offer(&request("reviews", Some(200)), &clock);
        }
        let mut got = 0;
        let mut dropped = 0;
        let mut out = Vec::new();
        while tap.next_lines(&mut out, Duration::from_millis(50)) {}
        for l in lines(&out) {
            match l["type"].as_str() {
                Some("http") => got += 1,
                Some("dropped") => dropped += l["dropped"].as_u64().unwrap(),
                Some("end") => {
                    assert_eq!(l["reason"], "seconds");
                    assert_eq!(l["dropped"], 10);
                    assert_eq!(l["lines"], QUEUE);
                }
                _ => panic!("{l}"),
            }
        }
        assert_eq!((got, dropped), (QUEUE, 10));
    }

    #[test]
    fn no_subscriber_no_events_and_no_copies() {
        let hub = TapHub::new();
        let mut port = TapPort::new(hub.clone());
        let (mut engine, _net) = crate::accesslog::tests::engine_with_events(0);
        engine.set_event_capacity(0);
        assert!(!port.sync(&mut engine, false));
        assert!(!port.on);
        // Someone taps: events on; gone: off again (queued events cleared).
        let tap = hub.subscribe(Query::default()).unwrap();
        assert!(port.sync(&mut engine, false) && port.on);
        drop(tap);
        assert!(!port.sync(&mut engine, false) && !port.on);
        // An offer with nobody listening copies nothing (no subscriber to match).
        hub.offer(&request("reviews", Some(200)), &Clock::start());
        drain(&mut engine, None, Some(&mut port), &Clock::start());
        assert!(engine.poll_event().is_none());
    }
}
