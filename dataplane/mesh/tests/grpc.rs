//! gRPC calls through the engine on the virtual clock: routes by service and method, the
//! caller's `grpc-timeout` as its deadline, retries on a gRPC status, the gateway's own
//! answers as trailers-only responses, and `grpc-status` (head or trailers) in the golden
//! metrics.

mod common;

use common::{publisher, status, Gw};
use mesh::engine::{Engine, NoMeshTls, Outcome};
use mesh::golden::Golden;
use mesh::memnet::MemNet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tcpstack::Instant;

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"
timeouts = { request = "10s" }

[[service]]
name = "greeter"
hosts = ["greeter.test"]
endpoints = [{ address = "10.0.3.1:8080" }, { address = "10.0.3.2:8080" }]

[[route]]
name = "say"
service = "greeter"
match = { grpc = { service = "helloworld.Greeter", method = "SayHello" } }
retries = { attempts = 2, on = ["unavailable"], backoff = "1ms" }

[[route]]
name = "greeter-any"
service = "greeter"
match = { grpc = { service = "helloworld.Greeter" } }
"#;

/// A gRPC call's HTTP/1.1 form, as the HTTP/2 front hands it to the engine.
fn call(method: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST /helloworld.Greeter/{method} HTTP/1.1\r\nHost: greeter.test\r\n\
         content-type: application/grpc\r\nte: trailers\r\n{extra}content-length: 5\r\n\r\n\
         \0\0\0\0\0"
    )
    .into_bytes()
}

const OK_WITH_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n\
transfer-encoding: chunked\r\n\r\n5\r\n\0\0\0\0\0\r\n0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n";

const NOT_FOUND_IN_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n\
transfer-encoding: chunked\r\n\r\n0\r\ngrpc-status: 5\r\n\r\n";

const TRAILERS_ONLY_UNAVAILABLE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n\
grpc-status: 14\r\ncontent-length: 0\r\n\r\n";

fn gw_with_golden(golden: &Golden) -> Gw {
    Gw {
        engine: Engine::new(
            publisher(TABLES, Path::new(".")),
            Arc::new(NoMeshTls),
            [7; 32],
        )
        .with_golden(golden),
        net: MemNet::new(Ipv4Addr::new(10, 0, 3, 100)),
        now: Instant::from_micros(1_000_000),
    }
}

fn metrics(golden: &Golden) -> String {
    let mut out = String::new();
    golden.render(&mut out);
    out
}

/// The `xdpmesh_requests_total` sample of `route` with `grpc_status`.
fn requests(golden: &Golden, route: &str, grpc_status: u8) -> u64 {
    metrics(golden)
        .lines()
        .filter(|l| l.starts_with("xdpmesh_requests_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")))
        .filter(|l| l.contains(&format!("grpc_status=\"{grpc_status}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn grpc_status_from_trailers_and_from_a_trailers_only_head_is_counted() {
    let golden = Golden::default();
    let mut gw = gw_with_golden(&golden);
    let c = gw.client();
    gw.send(c, &call("SayHelloAgain", ""));
    let (u, _) = gw.upstream();
    let got = gw.take(u);
    assert!(
        got.starts_with("POST /helloworld.Greeter/SayHelloAgain HTTP/1.1\r\n"),
        "{got}"
    );
    gw.send(u, OK_WITH_TRAILERS);
    let resp = gw.take(c);
    assert!(
        resp.ends_with("0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n"),
        "{resp}"
    );
    assert_eq!(requests(&golden, "greeter-any", 0), 1);

    gw.send(c, &call("SayHelloAgain", ""));
    let (u, _) = gw.upstream();
    gw.take(u);
    gw.send(u, NOT_FOUND_IN_TRAILERS);
    assert_eq!(status(&gw.take(c)), 200);
    assert_eq!(requests(&golden, "greeter-any", 5), 1);
    let m = metrics(&golden);
    let line = m
        .lines()
        .find(|l| l.starts_with("xdpmesh_requests_total{") && l.contains("grpc_status=\"5\""))
        .expect("a series for grpc-status 5");
    // HTTP says 200; gRPC says NOT_FOUND: a failure, as Linkerd classifies gRPC.
    assert!(
        line.contains("code=\"200\"") && line.contains("classification=\"failure\""),
        "{line}"
    );
}

#[test]
fn unavailable_is_retried_on_the_other_endpoint_though_grpc_uses_post() {
    let golden = Golden::default();
    let mut gw = gw_with_golden(&golden);
    let c = gw.client();
    gw.send(c, &call("SayHello", ""));
    let (u1, _) = gw.upstream();
    let ep1 = gw.net.remote(u1).unwrap();
    gw.take(u1);
    gw.send(u1, TRAILERS_ONLY_UNAVAILABLE);
    assert_eq!(gw.take(c), "", "the UNAVAILABLE is not forwarded");
    gw.advance(Duration::from_millis(1));
    let (u2, _) = gw.upstream();
    assert_ne!(gw.net.remote(u2).unwrap(), ep1, "another endpoint");
    let got = gw.take(u2);
    assert!(
        got.ends_with("\r\n\r\n\0\0\0\0\0"),
        "the body again: {got:?}"
    );
    gw.send(u2, OK_WITH_TRAILERS);
    let resp = gw.take(c);
    assert_eq!(header(&resp, "x-xdpmesh-attempts"), Some("2"), "{resp}");
    assert_eq!(gw.stats().attempts(Outcome::RetryableStatus), 1);
    assert_eq!(requests(&golden, "say", 0), 1);

    // The last attempt's UNAVAILABLE goes to the caller, counted as such.
    gw.send(c, &call("SayHello", ""));
    for _ in 0..2 {
        gw.advance(Duration::from_millis(1));
        let (u, _) = gw.upstream();
        gw.take(u);
        gw.send(u, TRAILERS_ONLY_UNAVAILABLE);
    }
    let resp = gw.take(c);
    assert_eq!(header(&resp, "grpc-status"), Some("14"), "{resp}");
    assert_eq!(requests(&golden, "say", 14), 1);
    gw.balanced();
}

#[test]
fn grpc_timeout_bounds_the_call_and_the_caller_gets_deadline_exceeded() {
    let golden = Golden::default();
    let mut gw = gw_with_golden(&golden);
    let c = gw.client();
    // 200 ms, though the listener allows 10 s.
    gw.send(c, &call("SayHelloAgain", "grpc-timeout: 200m\r\n"));
    let (u, _) = gw.upstream();
    let got = gw.take(u);
    assert!(got.contains("grpc-timeout: 200m\r\n"), "forwarded: {got}");
    gw.advance(Duration::from_millis(190));
    assert_eq!(gw.take(c), "", "not before the deadline");
    gw.advance(Duration::from_millis(20));
    let resp = gw.take(c);
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(header(&resp, "grpc-status"), Some("4"), "{resp}");
    assert_eq!(header(&resp, "grpc-message"), Some("request_timeout"));
    assert_eq!(header(&resp, "content-type"), Some("application/grpc"));
    assert_eq!(header(&resp, "content-length"), Some("0"));
    assert_eq!(requests(&golden, "greeter-any", 4), 1);

    // A malformed grpc-timeout is no deadline: the listener's 10 s hold.
    let c = gw.client();
    gw.send(c, &call("SayHelloAgain", "grpc-timeout: 123456789S\r\n"));
    let (u, _) = gw.upstream();
    gw.take(u);
    gw.advance(Duration::from_secs(5));
    assert_eq!(gw.take(c), "");
    gw.send(u, OK_WITH_TRAILERS);
    assert_eq!(header(&gw.take(c), "grpc-status"), None, "in the trailers");
}

#[test]
fn the_gateway_answers_a_call_it_cannot_route_with_a_trailers_only_response() {
    let golden = Golden::default();
    let mut gw = gw_with_golden(&golden);
    let c = gw.client();
    let call = b"POST /other.Service/Get HTTP/1.1\r\nHost: nowhere.test\r\n\
content-type: application/grpc+proto\r\ncontent-length: 0\r\n\r\n";
    gw.send(c, call);
    let resp = gw.take(c);
    assert_eq!(status(&resp), 200, "{resp}");
    // No route: UNIMPLEMENTED, as gRPC maps a 404.
    assert_eq!(header(&resp, "grpc-status"), Some("12"), "{resp}");
    assert_eq!(header(&resp, "x-xdpmesh-error"), Some("no_route"));
    assert!(resp.ends_with("\r\n\r\n"), "no body: {resp:?}");
    // The same request without the gRPC content-type gets the HTTP answer.
    let c = gw.client();
    gw.send(
        c,
        b"POST /other.Service/Get HTTP/1.1\r\nHost: nowhere.test\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(status(&gw.take(c)), 404);
}
