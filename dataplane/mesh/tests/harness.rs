//! The engine on a virtual clock over [`MemNet`]: the test plays the client and the servers,
//! decides when each upstream connect completes, fails or hangs, and moves time itself. Every
//! timeout of the listener's table and every attempt outcome is checked here, with the
//! balancer's bookkeeping (nothing left outstanding) after each.

mod common;

use common::{status, Gw, CLIENT};
use control::snapshot::Timeouts;
use mesh::engine::{Expiry, Outcome, Refusal, MAX_CONNECT_ATTEMPTS};
use mesh::memnet::{EngineClose, MemConn};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const TCP_LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 5000);
const EP1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 1), 8080);
const EP2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080);

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[listener]]
name = "raw"
bind = "10.0.0.1:5000"
protocol = "tcp"
service = "web"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }, { address = "10.0.3.2:8080" }]

[[route]]
name = "fast"
service = "web"
match = { path = { prefix = "/fast" } }
timeout = "1s"

[[route]]
name = "impatient"
service = "web"
match = { path = { prefix = "/impatient" } }
timeouts = { connect = "100ms", body_stall = "1s" }

[[route]]
service = "web"
"#;

/// TABLES with EP1 only: every request goes there, so connections are kept and reused.
fn one_endpoint() -> String {
    TABLES.replace(", { address = \"10.0.3.2:8080\" }", "")
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A request answered by an accepted upstream.
fn served(gw: &mut Gw) -> (MemConn, MemConn) {
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.upstream();
    assert!(gw.take(u).starts_with("GET / HTTP/1.1\r\n"));
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    (c, u)
}

#[test]
fn a_complete_response_ends_its_attempt_once() {
    let mut gw = Gw::new(TABLES);
    served(&mut gw);
    let s = gw.stats();
    assert_eq!(s.attempts(Outcome::Complete), 1);
    assert_eq!(Outcome::ALL.iter().map(|&o| s.attempts(o)).sum::<u64>(), 1);
    gw.balanced();
}

#[test]
fn request_timeout_gives_504_at_the_deadline_and_the_route_overrides_it() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    gw.advance(t.request - Duration::from_millis(1));
    assert_eq!(gw.take(c), "", "nothing before the deadline");
    gw.advance(Duration::from_millis(1));
    let resp = gw.take(c);
    assert_eq!(status(&resp), 504, "{resp}");
    assert!(resp.contains("x-xdpmesh-error: request_timeout"));
    assert_eq!(
        gw.net.closed(u),
        Some(EngineClose::Abort),
        "the attempt is cut"
    );
    let s = gw.stats();
    assert_eq!(s.timeouts(Expiry::Request), 1);
    assert_eq!(s.attempts(Outcome::TimedOut), 1);
    assert_eq!(s.refused(Refusal::RequestTimeout), 1);
    gw.balanced();

    // A route's own timeout (1 s on /fast).
    let c = gw.client();
    gw.send(c, b"GET /fast HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.advance(Duration::from_millis(999));
    assert_eq!(gw.take(c), "");
    gw.advance(Duration::from_millis(1));
    assert_eq!(status(&gw.take(c)), 504);
    gw.balanced();
}

#[test]
fn a_connect_that_fails_is_retried_on_the_other_endpoint() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, GET);
    let (u1, first) = gw.pending();
    gw.net.peer_reset(u1);
    gw.settle();
    let (u2, second) = gw.pending();
    let mut both = [first, second];
    both.sort();
    assert_eq!(both, [EP1, EP2], "the retry picks the other endpoint");
    gw.net.peer_accept(u2);
    gw.settle();
    assert!(
        gw.take(u2).starts_with("GET / "),
        "the whole request goes to the new attempt"
    );
    gw.send(u2, OK);
    assert_eq!(status(&gw.take(c)), 200);
    let s = gw.stats();
    assert_eq!(s.retries, 1);
    assert_eq!(s.attempts(Outcome::ConnectFailed), 1);
    assert_eq!(s.attempts(Outcome::Complete), 1);
    assert_eq!(s.refused(Refusal::ConnectFailed), 0);
    gw.balanced();
}

#[test]
fn connect_timeouts_retry_then_answer_503() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, GET);
    for attempt in 1..=MAX_CONNECT_ATTEMPTS {
        let (u, _) = gw.pending();
        gw.advance(t.connect - Duration::from_millis(1));
        assert_eq!(gw.net.closed(u), None, "attempt {attempt} still connecting");
        gw.advance(Duration::from_millis(1));
        assert_eq!(gw.net.closed(u), Some(EngineClose::Abort));
    }
    let resp = gw.take(c);
    assert_eq!(status(&resp), 503, "{resp}");
    assert!(resp.contains("x-xdpmesh-error: connect_timeout"));
    assert!(gw.net.pending_connects().is_empty());
    let s = gw.stats();
    assert_eq!(s.timeouts(Expiry::Connect), u64::from(MAX_CONNECT_ATTEMPTS));
    assert_eq!(
        s.attempts(Outcome::ConnectFailed),
        u64::from(MAX_CONNECT_ATTEMPTS)
    );
    assert_eq!(s.retries, u64::from(MAX_CONNECT_ATTEMPTS) - 1);
    gw.balanced();
}

#[test]
fn resets_before_and_during_the_response() {
    let mut gw = Gw::new(TABLES);
    // Before: the client gets a 502 (the request had left: no retry).
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    gw.take(u);
    gw.net.peer_reset(u);
    gw.settle();
    let resp = gw.take(c);
    assert_eq!(status(&resp), 502, "{resp}");
    assert!(resp.contains("x-xdpmesh-error: upstream_reset"));
    assert_eq!(gw.stats().attempts(Outcome::ResetBeforeResponse), 1);
    assert_eq!(gw.stats().retries, 0);
    gw.balanced();

    // During: the client's connection is cut, not ended as if complete.
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    gw.take(u);
    gw.send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    assert!(gw.take(c).ends_with("abc"));
    gw.net.peer_reset(u);
    gw.settle();
    assert_eq!(gw.net.closed(c), Some(EngineClose::Abort));
    assert_eq!(gw.stats().attempts(Outcome::ResetMidResponse), 1);
    gw.balanced();

    // A malformed response head: 502, counted as bad_response.
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.send(u, b"NOT HTTP\r\n\r\n");
    assert_eq!(status(&gw.take(c)), 502);
    assert_eq!(gw.stats().refused(Refusal::BadResponse), 1);
    gw.balanced();
}

#[test]
fn a_client_that_goes_away_cancels_the_attempt() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, GET);
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    gw.net.peer_reset(c);
    gw.settle();
    assert_eq!(gw.net.closed(u), Some(EngineClose::Abort));
    assert_eq!(gw.stats().attempts(Outcome::Cancelled), 1);
    assert_eq!(gw.engine.active(), 0, "the session is gone");
    gw.balanced();
}

#[test]
fn a_head_that_never_ends_gets_408_at_the_head_timeout() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    // One byte every 3 s: progress does not extend the head's deadline.
    let mut sent = Duration::ZERO;
    for b in b"GET / HTTP/1.1\r\nHost" {
        if sent >= t.request_head {
            break;
        }
        gw.send(c, &[*b]);
        assert_eq!(gw.take(c), "");
        gw.advance(Duration::from_secs(3));
        sent += Duration::from_secs(3);
    }
    let resp = gw.take(c);
    assert_eq!(status(&resp), 408, "{resp}");
    assert!(gw.net.shut(c), "closed after the 408");
    assert_eq!(gw.stats().timeouts(Expiry::RequestHead), 1);
    assert!(gw.net.pending_connects().is_empty(), "nothing was routed");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    let (c, _) = served(&mut gw);
    gw.advance(t.idle - Duration::from_millis(1));
    assert!(!gw.net.shut(c));
    gw.advance(Duration::from_millis(1));
    assert!(gw.net.shut(c), "a graceful close");
    assert_eq!(gw.stats().timeouts(Expiry::Idle), 1);
}

#[test]
fn a_stalled_body_is_cut() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100\r\n\r\nhalf",
    );
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    gw.take(u);
    // Body bytes keep it alive...
    gw.advance(t.body_stall - Duration::from_secs(1));
    gw.send(c, b"more");
    gw.advance(t.body_stall - Duration::from_secs(1));
    assert_eq!(gw.net.closed(c), None);
    // ...silence does not.
    gw.advance(Duration::from_secs(1));
    assert_eq!(gw.net.closed(c), Some(EngineClose::Abort));
    assert_eq!(gw.net.closed(u), Some(EngineClose::Abort));
    assert_eq!(gw.stats().timeouts(Expiry::BodyStall), 1);
    gw.balanced();
}

#[test]
fn a_client_that_never_reads_the_last_response_is_cut() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    gw.net.window = 16;
    let c = gw.client();
    gw.send(
        c,
        b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    );
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    gw.send(u, OK);
    // The client takes nothing: the response cannot drain.
    gw.advance(t.body_stall);
    assert_eq!(gw.net.closed(c), Some(EngineClose::Abort));
    assert_eq!(gw.engine.active(), 0);
}

#[test]
fn a_tcp_connection_idle_for_tcp_idle_is_closed_on_both_sides() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    let c = gw.net.peer_connect(CLIENT, TCP_LISTEN);
    gw.settle();
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.send(c, b"ping");
    assert_eq!(gw.take(u), "ping");
    gw.advance(t.tcp_idle - Duration::from_secs(1));
    assert_eq!(gw.net.closed(c), None);
    gw.advance(Duration::from_secs(1));
    assert_eq!(gw.net.closed(c), Some(EngineClose::Close));
    assert_eq!(gw.net.closed(u), Some(EngineClose::Close));
    assert_eq!(gw.stats().timeouts(Expiry::TcpIdle), 1);
    gw.balanced();
}

#[test]
fn a_tcp_connect_that_fails_is_retried_and_the_client_bytes_follow() {
    let mut gw = Gw::new(TABLES);
    let c = gw.net.peer_connect(CLIENT, TCP_LISTEN);
    gw.settle();
    gw.send(c, b"early bytes");
    let (u1, first) = gw.pending();
    gw.net.peer_reset(u1);
    gw.settle();
    let (u2, second) = gw.pending();
    assert_ne!(first, second);
    assert!([EP1, EP2].contains(&second));
    gw.net.peer_accept(u2);
    gw.settle();
    assert_eq!(gw.take(u2), "early bytes");
    assert_eq!(gw.stats().retries, 1);
    // While connected, the balancer counts the connection; its end releases it.
    gw.net.peer_shutdown(c);
    gw.net.peer_shutdown(u2);
    gw.settle();
    assert_eq!(gw.engine.active(), 0);
    assert_eq!(gw.stats().attempts(Outcome::Complete), 1);
    gw.balanced();
}

#[test]
fn a_request_timeout_on_one_client_does_not_touch_another() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    let slow = gw.client();
    gw.send(slow, GET);
    let (us, _) = gw.pending();
    gw.net.peer_accept(us);
    gw.advance(t.request / 2);
    let (fast, _) = served(&mut gw);
    gw.advance(t.request / 2);
    assert_eq!(status(&gw.take(slow)), 504);
    assert!(gw.net.shut(slow), "the gateway finished its side");
    assert_eq!(
        gw.net.closed(slow),
        None,
        "and lingers for the client's FIN"
    );
    gw.net.peer_shutdown(slow);
    gw.settle();
    assert_eq!(
        gw.net.closed(fast),
        None,
        "the other client keeps its connection"
    );
    assert_eq!(
        gw.net.closed(slow),
        Some(EngineClose::Close),
        "closed after its 504"
    );
    assert_eq!(gw.net.closed(us), Some(EngineClose::Abort));
    assert_eq!(
        gw.net.open_count(),
        2,
        "only the served client and its kept-alive upstream are open"
    );
}

#[test]
fn the_engine_sleeps_until_its_next_deadline_and_holds_none_when_idle() {
    let mut gw = Gw::new(TABLES);
    assert_eq!(gw.engine.poll_timeout(), None);
    let c = gw.client();
    let idle_at = gw.now + Timeouts::default().idle;
    assert_eq!(gw.engine.poll_timeout(), Some(idle_at));
    gw.net.peer_reset(c);
    gw.settle();
    // A stale entry may remain queued; handling it does nothing and leaves none behind.
    gw.advance(Timeouts::default().idle);
    assert_eq!(gw.engine.poll_timeout(), None);
    assert_eq!(gw.engine.active(), 0);
}

#[test]
fn events_report_connections_and_requests_when_asked_for() {
    use mesh::engine::Event;
    let mut gw = Gw::new(TABLES);
    gw.engine.set_event_capacity(64);
    let (c, u) = served(&mut gw);
    gw.send(c, b"GET /fast/x HTTP/1.1\r\nHost: nowhere.test\r\n\r\n");
    assert_eq!(status(&gw.take(c)), 404);
    let _ = u;
    gw.net.peer_shutdown(c);
    gw.settle();
    let events: Vec<Event> = std::iter::from_fn(|| gw.engine.poll_event()).collect();
    let Event::Opened {
        listener, client, ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((&**listener, *client), ("web", CLIENT));
    let requests: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Request(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 2, "{events:?}");
    let ok = requests[0];
    assert_eq!((ok.method.as_str(), ok.target.as_str()), ("GET", "/"));
    assert_eq!(ok.status, Some(200));
    assert_eq!(ok.service.as_deref(), Some("web"));
    assert!(matches!(ok.endpoint, Some(e) if e == EP1 || e == EP2));
    assert_eq!((ok.attempts, ok.response_body_bytes), (1, 2));
    assert!(ok.request_id.as_deref().is_some_and(|id| id.len() == 32));
    assert_eq!(ok.refusal, None);
    assert_eq!(ok.authority.as_deref(), Some("web.test"));
    assert!(ok.traceparent.as_deref().is_some_and(|t| t.len() == 55));
    assert!(ok.upstream.is_some());
    assert_eq!(
        ok.dst_identity, None,
        "a local endpoint has no peer gateway"
    );
    let miss = requests[1];
    assert_eq!(
        (miss.status, miss.refusal),
        (Some(404), Some(Refusal::NoRoute))
    );
    assert_eq!(miss.attempts, 0);
    // The 404 closes the connection: a clean close.
    assert!(
        matches!(events.last(), Some(Event::Closed { clean: true, .. })),
        "{events:?}"
    );

    // A full queue drops the oldest and counts it; no capacity, no events.
    gw.engine.set_event_capacity(1);
    served(&mut gw);
    assert!(gw.stats().events_dropped > 0);
    assert_eq!(std::iter::from_fn(|| gw.engine.poll_event()).count(), 1);
    gw.engine.set_event_capacity(0);
    served(&mut gw);
    assert!(gw.engine.poll_event().is_none());
}

#[test]
fn a_tcp_connection_closes_with_its_service_endpoint_attempts_and_bytes() {
    use mesh::engine::Event;
    let mut gw = Gw::new(TABLES);
    gw.engine.set_event_capacity(16);
    let c = gw.net.peer_connect(CLIENT, TCP_LISTEN);
    gw.settle();
    let (u1, _) = gw.pending();
    gw.net.peer_reset(u1);
    gw.settle();
    let (u2, second) = gw.pending();
    gw.net.peer_accept(u2);
    gw.send(c, b"ping");
    assert_eq!(gw.take(u2), "ping");
    gw.send(u2, b"pong!");
    assert_eq!(gw.take(c), "pong!");
    gw.net.peer_shutdown(c);
    gw.net.peer_shutdown(u2);
    gw.settle();
    let closed = std::iter::from_fn(|| gw.engine.poll_event())
        .find_map(|e| match e {
            Event::Closed { conn, clean, .. } => Some((conn, clean)),
            _ => None,
        })
        .expect("a closed event");
    let (conn, clean) = closed;
    assert!(clean);
    assert_eq!(conn.service.as_deref(), Some("web"));
    assert_eq!((conn.endpoint, conn.attempts), (Some(second), 2));
    assert_eq!((conn.bytes_in, conn.bytes_out), (4, 5));
    assert_eq!(conn.outcome, Some(Outcome::Complete));
    assert!(conn.upstream.is_some());
}

#[test]
fn a_timed_out_request_is_an_event_with_its_reason() {
    use mesh::engine::Event;
    let mut gw = Gw::new(TABLES);
    gw.engine.set_event_capacity(16);
    let c = gw.client();
    gw.send(c, b"GET /fast HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.advance(Duration::from_secs(1));
    assert_eq!(status(&gw.take(c)), 504);
    let r = std::iter::from_fn(|| gw.engine.poll_event())
        .find_map(|e| match e {
            Event::Request(r) => Some(r),
            _ => None,
        })
        .expect("a request event");
    assert_eq!(r.route.as_deref(), Some("fast"));
    assert_eq!(
        (r.status, r.refusal),
        (Some(504), Some(Refusal::RequestTimeout))
    );
    assert_eq!(
        r.end.saturating_duration_since(r.start),
        Duration::from_secs(1)
    );
}

#[test]
fn a_kept_alive_upstream_closed_as_it_is_reused_gets_the_request_again_once() {
    let mut gw = Gw::new(&one_endpoint());
    let (c, u) = served(&mut gw);
    // The next GET reuses the kept-alive connection; the server had closed it meanwhile.
    gw.send(c, GET);
    assert!(
        gw.take(u).starts_with("GET / "),
        "sent on the kept-alive connection"
    );
    gw.net.peer_reset(u);
    gw.settle();
    let (u2, to) = gw.pending();
    assert_eq!(to, EP1);
    gw.net.peer_accept(u2);
    gw.settle();
    assert!(
        gw.take(u2).starts_with("GET / "),
        "the same request on a fresh connection"
    );
    gw.send(u2, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(gw.stats().retries, 1);
    gw.balanced();

    // A POST too, body and all: the server closed the reused connection before any byte
    // of a response, so it processed nothing (issue #16).
    gw.send(
        c,
        b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 4\r\n\r\nbody",
    );
    assert!(gw.take(u2).starts_with("POST / "));
    gw.net.peer_reset(u2);
    gw.settle();
    let (u3, _) = gw.pending();
    gw.net.peer_accept(u3);
    gw.settle();
    let again = gw.take(u3);
    assert!(
        again.starts_with("POST / ") && again.ends_with("\r\n\r\nbody"),
        "{again}"
    );
    gw.send(u3, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(gw.stats().retries, 2);
    // Once: the fresh connection failing too reaches the client.
    gw.send(
        c,
        b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(gw.take(u3).starts_with("POST / "));
    gw.net.peer_reset(u3);
    gw.settle();
    let (u4, _) = gw.pending();
    gw.net.peer_accept(u4);
    gw.settle();
    let _ = gw.take(u4);
    gw.net.peer_reset(u4);
    gw.settle();
    assert!(gw.net.pending_connects().is_empty());
    assert_eq!(status(&gw.take(c)), 502);
    gw.balanced();
}

#[test]
fn an_idle_kept_alive_upstream_that_resets_costs_the_client_nothing() {
    let mut gw = Gw::new(&one_endpoint());
    let (c, u) = served(&mut gw);
    gw.net.peer_reset(u);
    gw.settle();
    assert_eq!(gw.net.closed(c), None, "the client keeps its connection");
    assert_eq!(gw.stats().refused(Refusal::UpstreamReset), 0);
    // Its next request opens a new upstream.
    gw.send(c, GET);
    let (u2, _) = gw.pending();
    gw.net.peer_accept(u2);
    gw.settle();
    gw.take(u2);
    gw.send(u2, OK);
    assert_eq!(status(&gw.take(c)), 200);
}

#[test]
fn a_route_overrides_the_connect_and_body_stall_timeouts() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"POST /impatient HTTP/1.1\r\nHost: web.test\r\nContent-Length: 9\r\n\r\n",
    );
    // Connect: 100 ms per attempt instead of 2 s.
    let (u, _) = gw.pending();
    gw.advance(Duration::from_millis(99));
    assert_eq!(gw.net.closed(u), None);
    gw.advance(Duration::from_millis(1));
    assert_eq!(
        gw.net.closed(u),
        Some(EngineClose::Abort),
        "connect timed out at 100 ms"
    );
    let (u2, _) = gw.pending();
    gw.net.peer_accept(u2);
    gw.settle();
    gw.take(u2);
    // Body stall: 1 s instead of 30 s.
    gw.advance(Duration::from_millis(999));
    assert_eq!(gw.net.closed(c), None);
    gw.advance(Duration::from_millis(1));
    assert_eq!(
        gw.net.closed(c),
        Some(EngineClose::Abort),
        "body stalled for 1 s"
    );
    assert_eq!(gw.stats().timeouts(Expiry::BodyStall), 1);
    gw.balanced();
}
