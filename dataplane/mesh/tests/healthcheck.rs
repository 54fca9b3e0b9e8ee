//! Active health checks on the virtual clock over the in-memory network: the schedule
//! (spread first probes, jitter, one probe in flight), each probe's verdicts (TCP, HTTP), the
//! thresholds, and what `sync` keeps and drops.

use control::snapshot::{HealthCheckRt, HealthProbe};
use mesh::healthcheck::{Checker, Health, HealthChange, ProbeFailure, HEAD_CAP};
use mesh::memnet::{EngineClose, MemConn, MemNet};
use mesh::net::{Net, NetEvent};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use tcpstack::Instant;

const EP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 1), 8080);
const EP2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080);
const EP3: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 3), 8080);
const INTERVAL: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(1);
const OK_200: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 10.0.3.1:8080\r\n\
User-Agent: xdpmesh-health\r\nConnection: close\r\n\r\n";

fn tcp() -> HealthCheckRt {
    HealthCheckRt {
        probe: HealthProbe::Tcp,
        interval: INTERVAL,
        timeout: TIMEOUT,
        unhealthy: 3,
        healthy: 2,
    }
}

fn http(expect: &[u16]) -> HealthCheckRt {
    HealthCheckRt {
        probe: HealthProbe::Http {
            path: "/healthz".into(),
            expect: expect.to_vec(),
        },
        ..tcp()
    }
}

fn at(us: u64) -> Instant {
    Instant::from_micros(us)
}

/// A checker, its network and the virtual clock.
struct H {
    net: MemNet,
    hc: Checker<MemConn>,
    now: Instant,
}

impl H {
    fn new(targets: &[(&str, SocketAddrV4, HealthCheckRt)]) -> H {
        let mut h = H {
            net: MemNet::new(Ipv4Addr::new(10, 0, 0, 1)),
            hc: Checker::new(7),
            now: Instant::ZERO,
        };
        h.sync(targets);
        h
    }

    fn sync(&mut self, targets: &[(&str, SocketAddrV4, HealthCheckRt)]) {
        let t: Vec<_> = targets
            .iter()
            .map(|(s, a, c)| (s.to_string(), *a, c.clone()))
            .collect();
        self.hc.sync(&mut self.net, self.now, &t);
        self.pump();
    }

    /// Hands every network event to the checker.
    fn pump(&mut self) {
        while let Some(ev) = self.net.poll_event() {
            self.hc.handle(&mut self.net, self.now, ev);
        }
    }

    /// Runs the checker's timers up to `t` (inclusive) and leaves the clock there.
    fn run_to(&mut self, t: Instant) {
        while let Some(w) = self.hc.poll_timeout().filter(|&w| w <= t) {
            assert!(
                w >= self.now,
                "a wake-up in the past: {w:?} < {:?}",
                self.now
            );
            self.now = w;
            self.hc.handle_timeout(&mut self.net, w);
            self.pump();
        }
        self.now = t;
    }

    /// Runs until the next probe connect; returns it and when it started.
    fn next_probe(&mut self) -> (MemConn, SocketAddrV4, Instant) {
        loop {
            if let Some(&(c, to)) = self.net.pending_connects().first() {
                return (c, to, self.now);
            }
            let w = self.hc.poll_timeout().expect("a timer");
            self.run_to(w);
        }
    }

    /// Runs to the next probe and lets the server at its end accept it.
    fn accept_next(&mut self) -> (MemConn, Instant) {
        let (c, _, t) = self.next_probe();
        self.net.peer_accept(c);
        self.pump();
        (c, t)
    }

    /// Next HTTP probe: accepted, the request taken (and checked), `answer` sent.
    fn http_probe(&mut self, answer: &[u8]) -> MemConn {
        let (c, _) = self.accept_next();
        assert_eq!(self.net.peer_take(c), REQUEST);
        self.net.peer_send(c, answer);
        self.pump();
        c
    }

    fn refuse_next(&mut self) -> MemConn {
        let (c, _, _) = self.next_probe();
        self.net.peer_reset(c);
        self.pump();
        c
    }

    fn changes(&mut self) -> Vec<HealthChange> {
        std::iter::from_fn(|| self.hc.poll_change()).collect()
    }
}

fn change(addr: SocketAddrV4, healthy: bool) -> HealthChange {
    HealthChange {
        service: "web".into(),
        addr,
        healthy,
    }
}

#[test]
fn first_probes_spread_over_the_first_interval() {
    let addrs: Vec<_> = (1..=8)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, i), 8080))
        .collect();
    let mut h = H::new(&[]);
    h.now = at(3_000_000);
    // Probes outlive the first interval: every target's first one is still in flight at the end.
    let long = HealthCheckRt {
        timeout: Duration::from_secs(10),
        ..tcp()
    };
    let targets: Vec<_> = addrs.iter().map(|&a| ("web", a, long.clone())).collect();
    h.sync(&targets);
    assert_eq!(h.hc.probes_in_flight(), 0, "nothing starts at sync");
    let mut first = std::collections::HashMap::new();
    while first.len() < addrs.len() {
        let w = h.hc.poll_timeout().unwrap();
        h.run_to(w);
        for (_, to) in h.net.pending_connects() {
            first.entry(to).or_insert(h.now);
        }
    }
    let end = at(3_000_000) + INTERVAL;
    for t in first.values() {
        assert!(*t >= at(3_000_000) && *t < end, "{t:?}");
    }
    let mut times: Vec<_> = first.values().copied().collect();
    times.sort();
    times.dedup();
    assert_eq!(
        times.len(),
        addrs.len(),
        "every first probe at its own instant"
    );
    // Spread, not bunched: the first and last are more than half an interval apart.
    assert!(times[7] - times[0] > INTERVAL / 2, "{times:?}");
    assert_eq!(h.hc.probes_in_flight(), 8);
    assert_eq!(h.net.open_count(), 8);
}

#[test]
fn tcp_probe_ok_closes_gracefully_and_is_no_transition() {
    let mut h = H::new(&[("web", EP, tcp())]);
    assert_eq!(h.hc.health("web", EP), Some(Health::Unknown));
    assert_eq!(
        h.hc.healthy("web", EP),
        Some(true),
        "unknown counts as healthy"
    );
    let (c, _, _) = h.next_probe();
    assert_eq!(h.hc.probes_in_flight(), 1);
    h.net.peer_accept(c);
    let ev = h.net.poll_event().unwrap();
    assert!(h.hc.handle(&mut h.net, h.now, ev));
    assert_eq!(h.net.closed(c), Some(EngineClose::Close));
    // The Closed after our close is no longer a probe's.
    assert_eq!(h.net.poll_event(), Some(NetEvent::Closed(c)));
    assert!(!h.hc.handle(&mut h.net, h.now, NetEvent::Closed(c)));
    assert_eq!(h.hc.stats().probes_ok, 1);
    assert_eq!(h.hc.stats().probes_failed, 0);
    assert_eq!(h.hc.health("web", EP), Some(Health::Healthy));
    assert_eq!(h.hc.probes_in_flight(), 0);
    assert!(
        h.changes().is_empty(),
        "unknown → healthy changes nothing for the caller"
    );
    assert_eq!(h.hc.stats().to_healthy, 0);
}

#[test]
fn handle_ignores_connections_that_are_not_probes() {
    let mut h = H::new(&[("web", EP, tcp())]);
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 5555);
    let c = h
        .net
        .peer_connect(client, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80));
    let ev = h.net.poll_event().unwrap();
    assert!(!h.hc.handle(&mut h.net, h.now, ev));
    assert!(!h.hc.handle(&mut h.net, h.now, NetEvent::Readable(c)));
    assert!(!h.hc.handle(&mut h.net, h.now, NetEvent::Reset(c)));
    assert_eq!(h.hc.stats().probes_failed, 0);
    let (p, _, _) = h.next_probe();
    assert!(
        h.hc.handle(&mut h.net, h.now, NetEvent::Readable(p)),
        "a probe's"
    );
}

#[test]
fn tcp_probe_refused_is_a_failure() {
    let mut h = H::new(&[("web", EP, tcp())]);
    h.refuse_next();
    let s = h.hc.stats();
    assert_eq!((s.probes_ok, s.probes_failed), (0, 1));
    assert_eq!(s.failed(ProbeFailure::Refused), 1);
    assert_eq!(h.hc.probes_in_flight(), 0);
    let st = h.hc.status("web", EP).unwrap();
    assert_eq!(st.last_failure, Some(ProbeFailure::Refused));
    assert_eq!(st.streak, 1);
    assert_eq!(h.hc.healthy("web", EP), Some(true), "one of three failures");
}

#[test]
fn tcp_probe_times_out_exactly_at_timeout_and_aborts() {
    let mut h = H::new(&[("web", EP, tcp())]);
    let (c, _, start) = h.next_probe();
    let deadline = start + TIMEOUT;
    assert_eq!(h.hc.poll_timeout(), Some(deadline));
    h.run_to(at(deadline.as_micros() - 1));
    assert_eq!(h.hc.probes_in_flight(), 1);
    assert_eq!(h.net.closed(c), None);
    h.run_to(deadline);
    assert_eq!(h.net.closed(c), Some(EngineClose::Abort));
    assert_eq!(h.hc.stats().failed(ProbeFailure::Timeout), 1);
    assert_eq!(h.hc.probes_in_flight(), 0);
    // The next probe keeps the schedule of the one that timed out.
    let next = h.hc.poll_timeout().unwrap();
    assert!(next >= start + INTERVAL * 9 / 10 && next <= start + INTERVAL * 11 / 10);
    // A late answer changes nothing.
    h.net.peer_accept(c);
    h.pump();
    assert_eq!(h.hc.stats().probes_ok, 0);
}

#[test]
fn http_200_is_ok_with_the_exact_request() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let (c, _) = h.accept_next();
    assert_eq!(h.net.peer_take(c), REQUEST);
    assert!(
        !h.net.shut(c),
        "no half-close: some servers take it for a client gone"
    );
    h.pump();
    assert_eq!(h.hc.probes_in_flight(), 1);
    h.net.peer_send(c, OK_200);
    h.pump();
    assert_eq!(h.hc.stats().probes_ok, 1);
    assert_eq!(h.net.closed(c), Some(EngineClose::Close));
    assert_eq!(h.hc.probes_in_flight(), 0);
    assert_eq!(h.hc.health("web", EP), Some(Health::Healthy));
}

#[test]
fn http_head_in_pieces_and_after_an_interim_response() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let (c, _) = h.accept_next();
    h.net.peer_take(c);
    h.net
        .peer_send(c, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2");
    h.pump();
    assert_eq!(h.hc.probes_in_flight(), 1);
    h.net.peer_send(c, b"00 OK\r\nContent-Le");
    h.pump();
    assert_eq!(h.hc.probes_in_flight(), 1);
    h.net.peer_send(c, b"ngth: 0\r\n\r\n");
    h.pump();
    assert_eq!(h.hc.stats().probes_ok, 1);
    assert_eq!(h.net.closed(c), Some(EngineClose::Close));
}

#[test]
fn http_503_fails_and_closes() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let c = h.http_probe(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.hc.stats().failed(ProbeFailure::Status), 1);
    assert_eq!(h.hc.stats().probes_ok, 0);
    assert_eq!(
        h.net.closed(c),
        Some(EngineClose::Close),
        "well-formed: a graceful end"
    );
}

#[test]
fn http_expect_list_is_honoured() {
    let mut h = H::new(&[("web", EP, http(&[200, 204]))]);
    h.http_probe(b"HTTP/1.1 204 No Content\r\n\r\n");
    h.http_probe(OK_200);
    h.http_probe(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    h.http_probe(b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n");
    let s = h.hc.stats();
    assert_eq!((s.probes_ok, s.probes_failed), (2, 2));
    assert_eq!(s.failed(ProbeFailure::Status), 2);
}

#[test]
fn http_malformed_head_fails_and_aborts() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let c = h.http_probe(b"HTPP/1.1 200 OK\r\n\r\n");
    assert_eq!(h.hc.stats().failed(ProbeFailure::Malformed), 1);
    assert_eq!(h.net.closed(c), Some(EngineClose::Abort));
    // Nonsense status: also malformed.
    let c = h.http_probe(b"HTTP/1.1 20 OK\r\n\r\n");
    assert_eq!(h.hc.stats().failed(ProbeFailure::Malformed), 2);
    assert_eq!(h.net.closed(c), Some(EngineClose::Abort));
}

/// A 200 head of exactly `len` bytes (one long field pads it).
fn head_of(len: usize) -> Vec<u8> {
    let pre = b"HTTP/1.1 200 OK\r\nX-Pad: ";
    let post = b"\r\nContent-Length: 0\r\n\r\n";
    let mut v = pre.to_vec();
    v.resize(len - post.len(), b'a');
    v.extend_from_slice(post);
    assert_eq!(v.len(), len);
    v
}

#[test]
fn http_head_cap_is_exact() {
    assert_eq!(HEAD_CAP, 8 * 1024);
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let c = h.http_probe(&head_of(HEAD_CAP));
    assert_eq!(
        h.hc.stats().probes_ok,
        1,
        "a head of exactly the cap is read"
    );
    assert_eq!(h.net.closed(c), Some(EngineClose::Close));
    let c = h.http_probe(&head_of(HEAD_CAP + 1));
    assert_eq!(h.hc.stats().failed(ProbeFailure::HeadTooLarge), 1);
    assert_eq!(h.net.closed(c), Some(EngineClose::Abort));
}

#[test]
fn http_flood_without_a_head_end_fails_at_the_cap() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let (c, _) = h.accept_next();
    h.net.peer_take(c);
    h.net.peer_send(c, b"HTTP/1.1 200 OK\r\nX-Flood: ");
    h.pump();
    // A field value that never ends, a megabyte of it: the probe stops at the cap.
    for _ in 0..256 {
        h.net.peer_send(c, &[b'a'; 4096]);
    }
    h.pump();
    assert_eq!(h.hc.stats().failed(ProbeFailure::HeadTooLarge), 1);
    assert_eq!(h.hc.stats().probes_failed, 1);
    assert_eq!(h.net.closed(c), Some(EngineClose::Abort));
    assert_eq!(h.hc.probes_in_flight(), 0);
}

#[test]
fn http_silent_server_hits_the_timeout() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let (c, start) = h.accept_next();
    assert_eq!(h.net.peer_take(c), REQUEST);
    h.run_to(at((start + TIMEOUT).as_micros() - 1));
    assert_eq!(h.hc.probes_in_flight(), 1);
    h.run_to(start + TIMEOUT);
    assert_eq!(h.hc.stats().failed(ProbeFailure::Timeout), 1);
    assert_eq!(h.net.closed(c), Some(EngineClose::Abort));
}

#[test]
fn http_eof_or_reset_before_a_head_fails() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let (c, _) = h.accept_next();
    h.net.peer_take(c);
    h.net.peer_send(c, b"HTTP/1.1 200 OK\r\n");
    h.net.peer_shutdown(c);
    h.pump();
    assert_eq!(h.hc.stats().failed(ProbeFailure::Eof), 1);
    assert_eq!(h.net.closed(c), Some(EngineClose::Close));
    let (c, _) = h.accept_next();
    h.net.peer_reset(c);
    h.pump();
    assert_eq!(h.hc.stats().failed(ProbeFailure::Reset), 1);
    assert_eq!(h.hc.stats().probes_failed, 2);
    assert_eq!(h.hc.probes_in_flight(), 0);
}

#[test]
fn http_answer_before_the_request_is_out_is_read() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    // A window smaller than the request: it goes out in pieces.
    h.net.window = 16;
    let (c, _) = h.accept_next();
    let mut got = h.net.peer_take(c);
    // The server answers early; the checker reads it once its request is out.
    h.net.peer_send(c, OK_200);
    h.pump();
    assert_eq!(h.hc.stats().probes_ok, 0);
    while h.hc.probes_in_flight() == 1 {
        got.extend(h.net.peer_take(c));
        h.pump();
    }
    got.extend(h.net.peer_take(c));
    assert_eq!(got, REQUEST);
    assert_eq!(h.hc.stats().probes_ok, 1);
}

#[test]
fn unhealthy_after_exactly_unhealthy_failures_healthy_after_healthy_successes() {
    let mut h = H::new(&[("web", EP, tcp())]);
    h.accept_next();
    h.refuse_next();
    h.refuse_next();
    assert_eq!(h.hc.healthy("web", EP), Some(true));
    assert!(h.changes().is_empty());
    // A success resets the run of failures.
    h.accept_next();
    h.refuse_next();
    h.refuse_next();
    assert_eq!(h.hc.healthy("web", EP), Some(true), "2 < unhealthy = 3");
    h.refuse_next();
    assert_eq!(h.hc.healthy("web", EP), Some(false));
    assert_eq!(h.changes(), vec![change(EP, false)]);
    assert_eq!(h.hc.stats().to_unhealthy, 1);
    // More failures: no more transitions.
    h.refuse_next();
    assert!(h.changes().is_empty());
    // One success, then a failure: the run of successes starts over.
    h.accept_next();
    h.refuse_next();
    h.accept_next();
    assert_eq!(h.hc.healthy("web", EP), Some(false), "1 < healthy = 2");
    h.accept_next();
    assert_eq!(h.hc.healthy("web", EP), Some(true));
    assert_eq!(h.changes(), vec![change(EP, true)]);
    let s = h.hc.stats();
    assert_eq!((s.to_unhealthy, s.to_healthy), (1, 1));
    assert_eq!((s.probes_ok, s.probes_failed), (5, 7));
}

#[test]
fn a_never_judged_target_turns_unhealthy_after_unhealthy_failures() {
    let one = HealthCheckRt {
        unhealthy: 1,
        ..tcp()
    };
    let mut h = H::new(&[("web", EP, one)]);
    h.refuse_next();
    assert_eq!(h.hc.health("web", EP), Some(Health::Unhealthy));
    assert_eq!(h.changes(), vec![change(EP, false)]);
}

#[test]
fn unpolled_changes_keep_only_the_latest_per_target() {
    let quick = HealthCheckRt {
        unhealthy: 1,
        healthy: 1,
        ..tcp()
    };
    let mut h = H::new(&[("web", EP, quick.clone()), ("web", EP2, quick)]);
    // Fail both targets, then recover only EP, without polling in between.
    while h.hc.healthy("web", EP) != Some(false) || h.hc.healthy("web", EP2) != Some(false) {
        h.refuse_next();
    }
    loop {
        let (c, to, _) = h.next_probe();
        if to == EP {
            h.net.peer_accept(c);
            h.pump();
            break;
        }
        h.net.peer_reset(c);
        h.pump();
    }
    assert_eq!(h.changes(), vec![change(EP2, false), change(EP, true)]);
    assert_eq!(h.hc.stats().to_unhealthy, 2);
    assert_eq!(h.hc.stats().to_healthy, 1);
}

#[test]
fn sync_keeps_retained_targets_and_aborts_probes_of_removed_ones() {
    let one = HealthCheckRt {
        unhealthy: 1,
        ..tcp()
    };
    let mut h = H::new(&[("web", EP, one.clone()), ("web", EP2, one.clone())]);
    // EP fails until unhealthy; EP2's probes succeed, and then one is left in flight.
    let ep2_probe = loop {
        let (c, to, _) = h.next_probe();
        match (to, h.hc.health("web", EP)) {
            (EP2, Some(Health::Unhealthy)) if h.hc.health("web", EP2) == Some(Health::Healthy) => {
                break c
            }
            (EP2, _) => h.net.peer_accept(c),
            _ => h.net.peer_reset(c),
        }
        h.pump();
    };
    assert_eq!(h.hc.probes_in_flight(), 1);
    assert_eq!(h.hc.health("web", EP2), Some(Health::Healthy));
    h.sync(&[("web", EP, one.clone()), ("web", EP3, one.clone())]);
    assert_eq!(h.net.closed(ep2_probe), Some(EngineClose::Abort));
    assert_eq!(h.hc.probes_in_flight(), 0);
    assert_eq!(h.hc.healthy("web", EP2), None);
    assert_eq!(
        h.hc.health("web", EP),
        Some(Health::Unhealthy),
        "state kept"
    );
    assert_eq!(h.hc.health("web", EP3), Some(Health::Unknown));
    assert_eq!(h.changes(), vec![change(EP, false)]);
    // Aborting a removed probe is not a failed probe.
    assert_eq!(h.hc.stats().failed(ProbeFailure::Reset), 0);
    // A late event of the aborted probe is not the checker's.
    assert!(!h
        .hc
        .handle(&mut h.net, h.now, NetEvent::Connected(ep2_probe)));
    // The same address in another service is another target.
    h.sync(&[("web", EP, one.clone()), ("api", EP, one)]);
    assert_eq!(h.hc.health("web", EP), Some(Health::Unhealthy));
    assert_eq!(h.hc.health("api", EP), Some(Health::Unknown));
    assert_eq!(h.hc.healthy("web", EP3), None);
}

#[test]
fn sync_drops_unpolled_changes_of_removed_targets() {
    let one = HealthCheckRt {
        unhealthy: 1,
        ..tcp()
    };
    let mut h = H::new(&[("web", EP, one.clone())]);
    h.refuse_next();
    h.sync(&[("web", EP2, one)]);
    assert!(h.changes().is_empty());
    assert_eq!(h.hc.stats().to_unhealthy, 1, "counted all the same");
}

#[test]
fn sync_with_the_same_targets_keeps_the_probe_and_schedule() {
    let mut h = H::new(&[("web", EP, tcp())]);
    let (c, _, start) = h.next_probe();
    let wake = h.hc.poll_timeout();
    h.sync(&[("web", EP, tcp())]);
    assert_eq!(h.hc.poll_timeout(), wake);
    assert_eq!(h.net.closed(c), None);
    h.net.peer_accept(c);
    h.pump();
    assert_eq!(h.hc.stats().probes_ok, 1);
    // Thresholds alone change without touching the schedule.
    let next = h.hc.poll_timeout().unwrap();
    h.sync(&[(
        "web",
        EP,
        HealthCheckRt {
            healthy: 5,
            ..tcp()
        },
    )]);
    assert_eq!(h.hc.poll_timeout(), Some(next));
    assert!(next >= start + INTERVAL * 9 / 10);
}

#[test]
fn sync_with_a_new_probe_kind_aborts_the_old_probe_and_keeps_health() {
    let one = HealthCheckRt {
        unhealthy: 1,
        ..tcp()
    };
    let mut h = H::new(&[("web", EP, one.clone())]);
    h.refuse_next();
    let (c, _, _) = h.next_probe();
    let failed = h.hc.stats().probes_failed;
    h.sync(&[(
        "web",
        EP,
        HealthCheckRt {
            unhealthy: 1,
            ..http(&[200])
        },
    )]);
    assert_eq!(h.net.closed(c), Some(EngineClose::Abort));
    assert_eq!(
        h.hc.stats().probes_failed,
        failed,
        "no verdict on an aborted probe"
    );
    assert_eq!(h.hc.health("web", EP), Some(Health::Unhealthy));
    let next = h.hc.poll_timeout().unwrap();
    assert!(next >= h.now && next < h.now + INTERVAL);
    // The next probe is HTTP.
    h.http_probe(OK_200);
    assert_eq!(h.hc.stats().probes_ok, 1);
}

#[test]
fn jitter_keeps_successive_probes_within_ten_percent() {
    let mut h = H::new(&[("web", EP, tcp())]);
    let mut starts = Vec::new();
    for _ in 0..200 {
        let (_, t) = h.accept_next();
        starts.push(t);
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let lo = INTERVAL * 9 / 10;
    let hi = INTERVAL * 11 / 10;
    for g in &gaps {
        assert!(*g >= lo && *g <= hi, "{g:?}");
    }
    // Jitter there is, and over most of its range.
    let min = *gaps.iter().min().unwrap();
    let max = *gaps.iter().max().unwrap();
    assert!(min < INTERVAL * 92 / 100, "{min:?}");
    assert!(max > INTERVAL * 108 / 100, "{max:?}");
    assert_eq!(h.hc.stats().probes_ok, 200);
}

#[test]
fn one_probe_in_flight_per_target_even_with_timeout_over_interval() {
    let slow = HealthCheckRt {
        timeout: Duration::from_secs(12),
        ..tcp()
    };
    let mut h = H::new(&[("web", EP, slow.clone()), ("web", EP2, slow)]);
    let mut starts = Vec::new();
    let end = at(60_000_000);
    while let Some(w) = h.hc.poll_timeout().filter(|&w| w <= end) {
        h.run_to(w);
        assert!(h.hc.probes_in_flight() <= 2);
        for a in [EP, EP2] {
            let open = h
                .net
                .pending_connects()
                .iter()
                .filter(|(_, to)| *to == a)
                .count();
            assert!(open <= 1, "two probes of {a} at once");
        }
        for (c, to) in h.net.pending_connects() {
            if to == EP && starts.last().map(|&(s, _)| s) != Some(c) {
                starts.push((c, h.now));
            }
        }
    }
    // Never answered: each probe times out after 12 s and the next starts at once.
    let gaps: Vec<_> = starts.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert_eq!(gaps.len(), 4, "{starts:?}");
    for g in gaps {
        assert_eq!(g, Duration::from_secs(12));
    }
    assert_eq!(h.hc.stats().failed(ProbeFailure::Timeout), 8);
    assert_eq!(h.hc.stats().probes_ok, 0);
}

#[test]
fn hostile_configs_do_not_panic_or_spin() {
    let weird = [
        HealthCheckRt {
            interval: Duration::ZERO,
            timeout: Duration::from_micros(500),
            unhealthy: 0,
            healthy: 0,
            ..tcp()
        },
        HealthCheckRt {
            interval: Duration::MAX,
            timeout: Duration::MAX,
            ..http(&[])
        },
        HealthCheckRt {
            probe: HealthProbe::Http {
                path: "/x HTTP/1.1\r\nEvil: 1".into(),
                expect: vec![200],
            },
            interval: Duration::from_millis(1),
            ..tcp()
        },
        HealthCheckRt {
            probe: HealthProbe::Http {
                path: String::new(),
                expect: vec![200],
            },
            ..tcp()
        },
        HealthCheckRt {
            interval: Duration::from_millis(1),
            timeout: Duration::ZERO,
            ..tcp()
        },
    ];
    let targets: Vec<_> = weird
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                "web",
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, i as u8 + 1), 80),
                c.clone(),
            )
        })
        .collect();
    let mut h = H::new(&targets);
    let mut wakes = 0;
    while let Some(w) = h.hc.poll_timeout().filter(|&w| w <= at(1_000_000)) {
        h.run_to(w);
        wakes += 1;
        assert!(wakes < 10_000, "spinning");
        for (c, _) in h.net.pending_connects() {
            h.net.peer_accept(c);
        }
        h.pump();
    }
    // The zero interval is held to 1 ms: about a thousand probes in a second, not a loop.
    let ok = h.hc.stats().probes_ok;
    assert!((900..=1100).contains(&ok), "{ok}");
    // A zero timeout fails every probe at its start's next wake-up, without looping.
    assert!(h.hc.stats().failed(ProbeFailure::Timeout) >= 900);
    // The unsendable paths never connected and failed as such.
    assert!(h.hc.stats().failed(ProbeFailure::InvalidRequest) > 0);
    let bad = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 3), 80);
    assert!(h.net.connects_to(bad).is_empty());
    assert_eq!(h.hc.health("web", bad), Some(Health::Unhealthy));
    // Thresholds of 0 act as 1.
    let zero = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 1), 80);
    assert_eq!(h.hc.health("web", zero), Some(Health::Healthy));
}

#[test]
fn events_after_removal_or_with_no_targets_are_harmless() {
    let mut h = H::new(&[("web", EP, http(&[200]))]);
    let (c, _) = h.accept_next();
    h.sync(&[]);
    assert_eq!(h.hc.poll_timeout(), None);
    h.net.peer_send(c, OK_200);
    assert!(!h.hc.handle(&mut h.net, h.now, NetEvent::Readable(c)));
    h.hc.handle_timeout(&mut h.net, at(u64::MAX));
    assert_eq!(h.hc.probes_in_flight(), 0);
    assert_eq!(h.hc.targets().count(), 0);
}
