//! Traces end to end, without root: gateways A and B (their engines on one virtual clock,
//! mutual TLS between them, `dataplane/mesh/tests/common`) serve requests; each gateway's
//! request events go to its own exporter, and a collector started by the test decodes what
//! the exporters post and checks the parent/child links across both gateways.

#[path = "../mesh/tests/common/mod.rs"]
mod mesh_common;

use dataplane::traces::{Offer, TraceConfig, TraceExporter};
use mesh::engine::{Event, RequestEvent};
use mesh::otlp::{Anchor, Resource};
use mesh_common::hop::*;
use mesh_common::{status, Gw};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// A collector on 127.0.0.1 that answers every `POST` 200 and sends the test each decoded
/// body.
fn collector() -> (String, mpsc::Receiver<Value>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let Some(body) = read_post(&mut c) else {
                continue;
            };
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            if tx.send(body).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn read_post(c: &mut TcpStream) -> Option<Value> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
            assert_eq!((r.method, r.path), (Some("POST"), Some("/v1/traces")));
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())?;
            if buf.len() >= n + len {
                return serde_json::from_slice(&buf[n..n + len]).ok();
            }
        }
        let k = c.read(&mut chunk).ok()?;
        if k == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

fn requests(gw: &mut Gw) -> Vec<RequestEvent> {
    std::iter::from_fn(|| gw.engine.poll_event())
        .filter_map(|e| match e {
            Event::Request(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// A decoded span with the gateway that sent it.
struct Got {
    gateway: String,
    span: Value,
}

#[test]
fn spans_from_both_gateways_reach_the_collector_linked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    a.engine.set_event_capacity(64);
    b.engine.set_event_capacity(64);
    let (url, posts) = collector();
    let cfg = TraceConfig {
        endpoint: url,
        flush_interval: Duration::from_millis(20),
        ..TraceConfig::default()
    };
    let start = |name: &str| {
        TraceExporter::start(
            &cfg,
            Resource {
                gateway: name.into(),
            },
        )
        .unwrap()
    };
    let (xa, xb) = (start("gw-a"), start("gw-b"));
    // One anchor per engine clock (here both engines share the virtual one).
    let anchor = Anchor::new(a.now, SystemTime::now());

    // Two requests on one client connection: one that starts a trace, one that continues
    // the client's.
    let client_tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (server, c, mut hop) = through(
        &mut a,
        &mut b,
        b"GET /one HTTP/1.1\r\nHost: web.test\r\n\r\n",
    );
    let (s, _) = server.unwrap();
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);
    a.send(
        c,
        format!("GET /two HTTP/1.1\r\nHost: web.test\r\ntraceparent: {client_tp}\r\n\r\n")
            .as_bytes(),
    );
    hop.carry(&mut a, &mut b);
    b.net.peer_take(s);
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    hop.carry(&mut a, &mut b);
    assert_eq!(status(&a.take(c)), 200);

    for (gw, x) in [(&mut a, &xa), (&mut b, &xb)] {
        let sink = x.sink();
        for r in requests(gw) {
            assert_eq!(sink.offer_boxed(Box::new(r), anchor), Offer::Queued);
        }
    }

    // Four spans, from two gateways, in however many posts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let body = posts
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("4 spans by the deadline, got {}", got.len()));
        let rs = &body["resourceSpans"][0];
        let gateway = rs["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == "service.instance.id")
            .unwrap()["value"]["stringValue"]
            .as_str()
            .unwrap()
            .to_string();
        for span in rs["scopeSpans"][0]["spans"].as_array().unwrap() {
            got.push(Got {
                gateway: gateway.clone(),
                span: span.clone(),
            });
        }
    }
    let path = |g: &Got| {
        g.span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == "url.path")
            .unwrap()["value"]["stringValue"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let find = |gw: &str, p: &str| {
        got.iter()
            .find(|g| g.gateway == gw && path(g) == p)
            .unwrap_or_else(|| panic!("no span of {gw} for {p}"))
    };
    for p in ["/one", "/two"] {
        let (sa, sb) = (&find("gw-a", p).span, &find("gw-b", p).span);
        assert_eq!(sa["kind"], 3, "A's is a client span");
        assert_eq!(sb["kind"], 2, "B's is a server span");
        assert_eq!(sb["traceId"], sa["traceId"], "{p}: one trace");
        assert_eq!(
            sb["parentSpanId"], sa["spanId"],
            "{p}: B's parent is A's span"
        );
        let (t0, t1) = (
            sa["startTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
            sa["endTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        assert!(
            t0 <= t1 && t0 > 1_600_000_000_000_000_000,
            "wall-clock times"
        );
    }
    assert!(
        find("gw-a", "/one").span.get("parentSpanId").is_none(),
        "A started it"
    );
    let two = &find("gw-a", "/two").span;
    assert_eq!(two["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(two["parentSpanId"], "00f067aa0ba902b7", "the client's span");
    // The collector answered before the exporters read it: poll their counters.
    while xa.stats().exported() + xb.stats().exported() < 4 {
        assert!(Instant::now() < deadline, "4 spans counted as exported");
        std::thread::sleep(Duration::from_millis(1));
    }
    xa.shutdown();
    xb.shutdown();
}
