//! A route's request policies on the virtual clock: retries (on status, reset, per-try
//! timeout; methods, body buffer, budget, backoff, another endpoint), injected aborts and
//! delays, rate limits; each decision counted under the route's name.

mod common;

use common::{status, Gw};
use mesh::engine::{Outcome, Refusal};
use mesh::memnet::{EngineClose, MemConn};
use mesh::policy::Decision;
use std::net::SocketAddrV4;
use std::time::Duration;

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }, { address = "10.0.3.2:8080" }]

[[route]]
name = "retry"
service = "web"
match = { path = { prefix = "/r" } }
retries = { attempts = 3, per_try_timeout = "1s", on = ["reset", "503", "timeout"], backoff = "20ms", buffer = 8 }

[[route]]
name = "abort"
service = "web"
match = { path = { prefix = "/abort" } }
fault = { abort = { percent = 100.0, status = 418 } }

[[route]]
name = "delay"
service = "web"
match = { path = { prefix = "/delay" } }
fault = { delay = { percent = 100.0, duration = "100ms" }, headers = { x-chaos = "on" } }

[[route]]
name = "limited"
service = "web"
match = { path = { prefix = "/limited" } }
rate_limit = { requests_per_second = 2, burst = 2 }

[[route]]
service = "web"
"#;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";

/// The connect the engine waits on, accepted; what it received.
/// Where the request just sent went (a new connection, accepted, or a pooled one); what
/// it received.
fn next_upstream(gw: &mut Gw) -> (MemConn, SocketAddrV4, String) {
    let (u, _) = gw.upstream();
    let to = gw.net.remote(u).expect("an upstream");
    let got = gw.take(u);
    (u, to, got)
}

fn counted(gw: &Gw, route: &str, d: Decision) -> u64 {
    gw.engine.policy_stats().get(route, d)
}

#[test]
fn a_503_is_retried_on_the_other_endpoint_after_a_backoff() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"GET /r HTTP/1.1\r\nHost: web.test\r\nx-xdpmesh-attempts: 99\r\n\r\n",
    );
    let (u1, ep1, got) = next_upstream(&mut gw);
    assert!(
        !got.to_ascii_lowercase().contains("x-xdpmesh-attempts"),
        "{got}"
    );
    gw.send(u1, UNAVAILABLE);
    assert_eq!(gw.take(c), "", "the 503 is not forwarded");
    assert_eq!(gw.net.closed(u1), Some(EngineClose::Abort));
    // The backoff (at most 20 ms for the first retry) passes on the engine's timers.
    gw.advance(Duration::from_millis(20));
    let (u2, ep2, got) = next_upstream(&mut gw);
    assert_ne!(ep1, ep2, "another endpoint");
    assert!(got.starts_with("GET /r HTTP/1.1\r\n"), "{got}");
    gw.send(u2, OK);
    let resp = gw.take(c);
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.contains("x-xdpmesh-attempts: 2\r\n"), "{resp}");
    assert_eq!(counted(&gw, "retry", Decision::Retry("status")), 1);
    assert_eq!(counted(&gw, "retry", Decision::Attempt), 2, "two attempts");
    let s = gw.stats();
    assert_eq!(s.attempts(Outcome::RetryableStatus), 1);
    assert_eq!(s.attempts(Outcome::Complete), 1);
    assert_eq!(s.retries, 1);
    gw.balanced();
}

#[test]
fn attempts_run_out_and_the_last_answer_goes_to_the_client() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, b"GET /r HTTP/1.1\r\nHost: web.test\r\n\r\n");
    for n in 1..=3 {
        gw.advance(Duration::from_millis(100));
        let (u, _, _) = next_upstream(&mut gw);
        gw.send(u, UNAVAILABLE);
        if n < 3 {
            assert_eq!(gw.take(c), "");
        }
    }
    let resp = gw.take(c);
    assert_eq!(status(&resp), 503);
    assert!(resp.contains("x-xdpmesh-attempts: 3\r\n"), "{resp}");
    assert_eq!(counted(&gw, "retry", Decision::Retry("status")), 2);
    gw.balanced();
}

#[test]
fn a_post_is_not_retried_on_a_status_or_a_reset_but_is_on_a_connect_failure() {
    let mut gw = Gw::new(TABLES);
    let post = b"POST /r HTTP/1.1\r\nHost: web.test\r\nContent-Length: 4\r\n\r\nbody";
    let c = gw.client();
    gw.send(c, post);
    let (u, _, _) = next_upstream(&mut gw);
    gw.send(u, UNAVAILABLE);
    assert_eq!(status(&gw.take(c)), 503, "forwarded, not retried");
    assert_eq!(counted(&gw, "retry", Decision::RetrySkipped("method")), 1);
    // The server closes that connection: the next POST goes on a fresh one (a reused one
    // that fails before any response byte is sent again whatever the method; pool.rs).
    gw.net.peer_shutdown(u);
    gw.settle();

    let c = gw.client();
    gw.send(c, post);
    let (u, _, _) = next_upstream(&mut gw);
    gw.net.peer_reset(u);
    gw.settle();
    assert_eq!(status(&gw.take(c)), 502);
    assert_eq!(counted(&gw, "retry", Decision::RetrySkipped("method")), 2);

    // Nothing was sent before the connect failed: always safe to try again.
    let c = gw.client();
    gw.send(c, post);
    let (u, _) = gw.pending();
    gw.net.peer_reset(u);
    gw.settle();
    let (u, _, got) = next_upstream(&mut gw);
    assert!(got.ends_with("\r\n\r\nbody"), "{got}");
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(counted(&gw, "retry", Decision::Retry("connect_failure")), 1);
}

#[test]
fn a_reset_before_the_response_is_retried_with_the_body_kept() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"PUT /r HTTP/1.1\r\nHost: web.test\r\nContent-Length: 6\r\n\r\nabc",
    );
    let (u1, _, got) = next_upstream(&mut gw);
    assert!(got.ends_with("abc"));
    gw.net.peer_reset(u1);
    gw.settle();
    gw.send(c, b"def");
    gw.advance(Duration::from_millis(20));
    let (u2, _, got) = next_upstream(&mut gw);
    assert!(
        got.ends_with("\r\n\r\nabcdef"),
        "the whole body again: {got}"
    );
    gw.send(u2, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(counted(&gw, "retry", Decision::Retry("reset")), 1);
    // (On a fresh connection: a reused one would send the request again anyway.)
    gw.net.peer_shutdown(u2);
    gw.settle();

    // A body longer than `buffer` (8 bytes) is not kept: no retry.
    let c = gw.client();
    let body = "x".repeat(100);
    gw.send(
        c,
        format!("PUT /r HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100\r\n\r\n{body}")
            .as_bytes(),
    );
    let (u, _, _) = next_upstream(&mut gw);
    gw.net.peer_reset(u);
    gw.settle();
    assert_eq!(status(&gw.take(c)), 502);
    assert_eq!(counted(&gw, "retry", Decision::RetrySkipped("buffer")), 1);
}

#[test]
fn the_per_try_timeout_ends_an_attempt_and_the_next_one_answers() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, b"GET /r HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (u1, _, _) = next_upstream(&mut gw);
    gw.advance(Duration::from_millis(999));
    assert_eq!(gw.net.closed(u1), None);
    gw.advance(Duration::from_millis(1));
    assert_eq!(gw.net.closed(u1), Some(EngineClose::Abort));
    gw.advance(Duration::from_millis(20));
    let (u2, _, _) = next_upstream(&mut gw);
    gw.send(u2, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(counted(&gw, "retry", Decision::Retry("timeout")), 1);
    assert_eq!(gw.stats().attempts(Outcome::TimedOut), 1);
    gw.balanced();
}

#[test]
fn the_budget_stops_retries_when_everything_fails() {
    let tables = TABLES.replace(
        "hosts = [\"web.test\"]\n",
        "hosts = [\"web.test\"]\nretry_budget = { ratio = 0.5, min_per_second = 0.0 }\n",
    );
    let mut gw = Gw::new(&tables);
    let (mut upstream, mut clients) = (0, 0);
    for _ in 0..20 {
        let c = gw.client();
        clients += 1;
        gw.send(c, b"GET /r HTTP/1.1\r\nHost: web.test\r\n\r\n");
        loop {
            gw.advance(Duration::from_millis(100));
            if !gw.sent_upstream() {
                break;
            }
            let (u, _, _) = next_upstream(&mut gw);
            upstream += 1;
            gw.send(u, UNAVAILABLE);
        }
        assert_eq!(status(&gw.take(c)), 503);
    }
    // Retries add at most half the requests of the window.
    assert_eq!(clients, 20);
    assert!(
        upstream <= 30,
        "{upstream} upstream requests for 20 client ones"
    );
    assert!(upstream >= 25, "the budget allows some: {upstream}");
    assert!(counted(&gw, "retry", Decision::RetrySkipped("budget")) > 0);
}

#[test]
fn an_injected_abort_never_reaches_the_upstream() {
    let mut gw = Gw::new(TABLES);
    for _ in 0..5 {
        let c = gw.client();
        gw.send(c, b"GET /abort HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let resp = gw.take(c);
        assert_eq!(status(&resp), 418, "{resp}");
        assert!(resp.contains("x-xdpmesh-error: fault_abort"));
    }
    assert!(!gw.sent_upstream());
    assert_eq!(counted(&gw, "abort", Decision::Fault("abort")), 5);
    assert_eq!(gw.stats().refused(Refusal::FaultAbort), 5);
}

#[test]
fn an_injected_delay_holds_only_matching_requests_for_its_duration() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"POST /delay HTTP/1.1\r\nHost: web.test\r\nx-chaos: on\r\nContent-Length: 2\r\n\r\nhi",
    );
    gw.advance(Duration::from_millis(99));
    assert!(!gw.sent_upstream(), "held");
    gw.advance(Duration::from_millis(1));
    let (u, _, got) = next_upstream(&mut gw);
    assert!(got.ends_with("\r\n\r\nhi"), "its body follows: {got}");
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(counted(&gw, "delay", Decision::Fault("delay")), 1);
    // Without the header: not touched.
    let c = gw.client();
    gw.send(c, b"GET /delay HTTP/1.1\r\nHost: web.test\r\n\r\n");
    assert!(gw.sent_upstream(), "routed at once");
    assert_eq!(counted(&gw, "delay", Decision::Fault("delay")), 1);
}

#[test]
fn a_rate_limit_answers_429_with_retry_after_and_refills() {
    let mut gw = Gw::new(TABLES);
    let ask = |gw: &mut Gw| {
        let c = gw.client();
        gw.send(c, b"GET /limited HTTP/1.1\r\nHost: web.test\r\n\r\n");
        if !gw.sent_upstream() {
            return gw.take(c);
        }
        let (u, _, _) = next_upstream(gw);
        gw.send(u, OK);
        gw.take(c)
    };
    assert_eq!(status(&ask(&mut gw)), 200);
    assert_eq!(status(&ask(&mut gw)), 200);
    let resp = ask(&mut gw);
    assert_eq!(status(&resp), 429, "{resp}");
    assert!(resp.contains("retry-after: 1\r\n"), "{resp}");
    gw.advance(Duration::from_millis(500));
    assert_eq!(
        status(&ask(&mut gw)),
        200,
        "one token back after 500 ms at 2/s"
    );
    assert_eq!(status(&ask(&mut gw)), 429);
    assert_eq!(counted(&gw, "limited", Decision::RateLimited), 2);
    // A reload starts the buckets afresh, and a route without a limit has none.
    for _ in 0..5 {
        let c = gw.client();
        gw.send(c, b"GET /other HTTP/1.1\r\nHost: web.test\r\n\r\n");
        assert!(gw.sent_upstream());
        let (u, _, _) = next_upstream(&mut gw);
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
    }
}

#[test]
fn every_attempt_has_its_per_try_timeout_and_a_body_waits_out_the_backoff() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(c, b"GET /r HTTP/1.1\r\nHost: web.test\r\n\r\n");
    for _ in 0..3 {
        let (u, _, _) = next_upstream(&mut gw);
        gw.advance(Duration::from_secs(1));
        assert_eq!(
            gw.net.closed(u),
            Some(EngineClose::Abort),
            "each attempt is cut at 1 s"
        );
        gw.advance(Duration::from_millis(100));
    }
    assert_eq!(status(&gw.take(c)), 504);
    assert_eq!(gw.stats().attempts(Outcome::TimedOut), 3);

    // A PUT whose body keeps coming while its retry waits: the next attempt gets the head
    // and the whole body, in order.
    let c = gw.client();
    gw.send(
        c,
        b"PUT /r HTTP/1.1\r\nHost: web.test\r\nContent-Length: 6\r\n\r\nab",
    );
    let (u, _, _) = next_upstream(&mut gw);
    gw.send(u, UNAVAILABLE);
    gw.send(c, b"cd");
    assert!(!gw.sent_upstream(), "backing off");
    gw.send(c, b"ef");
    gw.advance(Duration::from_millis(20));
    let (u, _, got) = next_upstream(&mut gw);
    assert!(got.starts_with("PUT /r HTTP/1.1\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nabcdef"), "{got}");
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
}

#[test]
fn a_delay_longer_than_the_idle_timeout_still_ends_in_the_request() {
    let tables = TABLES.replace("duration = \"100ms\"", "duration = \"90s\"");
    let mut gw = Gw::new(&tables);
    let c = gw.client();
    gw.send(
        c,
        b"GET /delay HTTP/1.1\r\nHost: web.test\r\nx-chaos: on\r\n\r\n",
    );
    gw.advance(Duration::from_secs(90));
    assert_eq!(gw.net.closed(c), None, "held, not closed as idle");
    let (u, _, _) = next_upstream(&mut gw);
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
}
