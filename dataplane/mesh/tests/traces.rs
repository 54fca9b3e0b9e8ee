//! One span per request per gateway, linked by W3C Trace Context across A and B (mutual TLS
//! between them, one virtual clock): B's span is a child of A's, the server sees B's span as
//! its parent, a caller's trace is continued, an invalid one restarted, the sampled flag
//! kept; and the spans as OTLP/JSON decode with the same links.

mod common;

use common::hop::*;
use common::{status, Gw};
use mesh::engine::{Event, RequestEvent};
use mesh::otlp::{self, Anchor, Resource};
use mesh::trace::{hex, SpanContext, SpanKind};
use std::time::{Duration, UNIX_EPOCH};
use tcpstack::Instant;

fn requests(gw: &mut Gw) -> Vec<RequestEvent> {
    std::iter::from_fn(|| gw.engine.poll_event())
        .filter_map(|e| match e {
            Event::Request(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// The `traceparent` the server got.
fn traceparent(req: &str) -> String {
    req.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("traceparent")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no traceparent in {req}"))
}

fn header<'r>(req: &'r str, name: &str) -> Option<&'r str> {
    req.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A request from a client through A and B to the server, answered 200; returns what the
/// server got, and A's and B's span of it.
fn one_request(a: &mut Gw, b: &mut Gw, extra: &str) -> (String, SpanContext, SpanContext) {
    one_request_on(a, b, &mut None, extra)
}

/// As [`one_request`], on the hop A pooled from an earlier request when it takes it.
fn one_request_on(
    a: &mut Gw,
    b: &mut Gw,
    hop: &mut Option<Hop>,
    extra: &str,
) -> (String, SpanContext, SpanContext) {
    let req = format!("GET /x HTTP/1.1\r\nHost: web.test\r\n{extra}\r\n");
    let (server, c) = through_on(a, b, hop, req.as_bytes());
    let (s, got) = server.expect("B reached the server");
    b.net
        .peer_send(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    hop.as_mut().expect("a hop").carry(a, b);
    assert_eq!(status(&a.take(c)), 200);
    let ra = requests(a);
    let rb = requests(b);
    assert_eq!((ra.len(), rb.len()), (1, 1), "{ra:?} {rb:?}");
    (
        got,
        ra[0].trace.expect("A's span"),
        rb[0].trace.expect("B's span"),
    )
}

fn with_events(dir: &std::path::Path) -> (Gw, Gw) {
    let (mut a, mut b) = gateways(dir, "spiffe://t.mesh/sa/client");
    a.engine.set_event_capacity(64);
    b.engine.set_event_capacity(64);
    (a, b)
}

#[test]
fn b_span_is_a_child_of_a_span_and_the_server_sees_b_as_parent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = with_events(dir.path());
    let (got, sa, sb) = one_request(&mut a, &mut b, "");
    assert_eq!(sa.kind, SpanKind::Client);
    assert_eq!(sb.kind, SpanKind::Server);
    assert_eq!(sa.parent_id, None, "A started the trace");
    assert_eq!(sb.trace_id, sa.trace_id);
    assert_eq!(sb.parent_id, Some(sa.span_id), "B's parent is A's span");
    assert_ne!(sb.span_id, sa.span_id);
    assert!(sa.sampled && sb.sampled);
    assert_eq!(
        traceparent(&got),
        format!("00-{}-{}-01", hex(&sa.trace_id), hex(&sb.span_id)),
        "the server's parent is B's span"
    );
    assert_eq!(traceparent(&got), sb.traceparent());

    // The same links as OTLP/JSON, both gateways' spans decoded from their bodies.
    let anchor = Anchor::new(
        Instant::ZERO,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let spans: Vec<serde_json::Value> = [("gw-a", sa), ("gw-b", sb)]
        .into_iter()
        .map(|(gw, span)| {
            let mut ev = blank_event();
            ev.trace = Some(span);
            let mut body = Vec::new();
            let n = otlp::encode(
                &Resource { gateway: gw.into() },
                [(&ev, &anchor)],
                &mut body,
            );
            assert_eq!(n, 1);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["resourceSpans"][0]["scopeSpans"][0]["spans"][0].clone()
        })
        .collect();
    assert_eq!(spans[0]["traceId"], spans[1]["traceId"]);
    assert_eq!(spans[1]["parentSpanId"], spans[0]["spanId"]);
    assert!(spans[0].get("parentSpanId").is_none());
    assert_eq!(
        (spans[0]["kind"].as_u64(), spans[1]["kind"].as_u64()),
        (Some(3), Some(2))
    );
}

fn blank_event() -> RequestEvent {
    RequestEvent {
        listener: "web".into(),
        client: common::CLIENT,
        method: "GET".into(),
        target: "/x".into(),
        route: None,
        service: Some("web".into()),
        endpoint: Some(SERVER),
        status: Some(200),
        refusal: None,
        attempts: 1,
        request_body_bytes: 0,
        response_body_bytes: 2,
        start: Instant::from_micros(1),
        end: Instant::from_micros(2),
        request_id: None,
        identity: None,
        authority: None,
        traceparent: None,
        upstream: None,
        dst_identity: None,
        trace: None,
    }
}

#[test]
fn a_caller_trace_is_continued_with_its_tracestate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = with_events(dir.path());
    let (got, sa, sb) = one_request(
        &mut a,
        &mut b,
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: vendor=x\r\n",
    );
    assert_eq!(hex(&sa.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        sa.parent_id.map(|p| hex(&p)).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(sb.parent_id, Some(sa.span_id));
    assert_eq!(sb.trace_id, sa.trace_id);
    assert_eq!(traceparent(&got), sb.traceparent());
    assert_eq!(header(&got, "tracestate"), Some("vendor=x"));
}

#[test]
fn an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = with_events(dir.path());
    let (got, sa, sb) = one_request(
        &mut a,
        &mut b,
        // Upper-case hex is not valid (§3.2.2.3).
        "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\ntracestate: vendor=x\r\n",
    );
    assert_eq!(sa.parent_id, None);
    assert_ne!(hex(&sa.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(sb.parent_id, Some(sa.span_id));
    assert_eq!(traceparent(&got), sb.traceparent());
    assert_eq!(header(&got, "tracestate"), None);
}

#[test]
fn the_unsampled_flag_is_kept_across_both_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = with_events(dir.path());
    let (got, sa, sb) = one_request(
        &mut a,
        &mut b,
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n",
    );
    assert!(!sa.sampled && !sb.sampled);
    assert!(traceparent(&got).ends_with("-00"), "{got}");
    assert_eq!(sb.parent_id, Some(sa.span_id));
}

#[test]
fn a_new_trace_follows_the_sampling_ratio_and_b_follows_a() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = with_events(dir.path());
    a.engine.set_trace_sampling(0.0);
    let mut hop = None;
    let (got, sa, sb) = one_request_on(&mut a, &mut b, &mut hop, "");
    assert!(!sa.sampled, "A samples none of the traces it starts");
    assert!(!sb.sampled, "B keeps A's decision");
    assert!(traceparent(&got).ends_with("-00"));
    // A caller's sampled trace stays sampled whatever A's ratio.
    let (got, sa, _) = one_request_on(
        &mut a,
        &mut b,
        &mut hop,
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
    );
    assert!(sa.sampled);
    assert!(traceparent(&got).ends_with("-01"));
}

#[test]
fn a_request_b_denies_has_both_spans() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/someone-else");
    a.engine.set_event_capacity(64);
    b.engine.set_event_capacity(64);
    let (server, c, _hop) = through(&mut a, &mut b, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
    assert!(server.is_none());
    assert_eq!(status(&a.take(c)), 403);
    let (ra, rb) = (requests(&mut a), requests(&mut b));
    let (sa, sb) = (ra[0].trace.unwrap(), rb[0].trace.unwrap());
    assert_eq!(rb[0].status, Some(403));
    assert_eq!(sb.parent_id, Some(sa.span_id));
    assert_eq!(sb.trace_id, sa.trace_id);
}

#[test]
fn without_events_the_server_still_gets_b_span_as_parent() {
    // Events off: nothing is recorded, the ids are still made and forwarded.
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = gateways(dir.path(), "spiffe://t.mesh/sa/client");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = format!("GET /x HTTP/1.1\r\nHost: web.test\r\ntraceparent: {tp}\r\n\r\n");
    let (server, _c, _hop) = through(&mut a, &mut b, req.as_bytes());
    let (_, got) = server.unwrap();
    let fwd = traceparent(&got);
    assert!(
        fwd.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{fwd}"
    );
    assert_ne!(fwd, tp, "the parent is B's span, not the client's");
    assert!(a.engine.poll_event().is_none() && b.engine.poll_event().is_none());
}
