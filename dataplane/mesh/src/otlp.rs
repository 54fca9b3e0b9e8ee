//! Request spans ([`RequestEvent::trace`]) as an OTLP/HTTP JSON body for `POST /v1/traces`
//! (OpenTelemetry Protocol, "JSON Protobuf Encoding": the proto3 JSON mapping of
//! `ExportTraceServiceRequest` with lowerCamelCase keys, trace and span ids as hex strings,
//! enums as integers, 64-bit integers as decimal strings). Pure: the exporter around it
//! (dataplane) owns the queue, the thread and the socket.
//!
//! One span per request per gateway ([`crate::trace`]): its name is the method (no
//! low-cardinality route template is known), its kind CLIENT on gateway A, SERVER on
//! gateway B; its attributes follow OpenTelemetry's HTTP semantic conventions
//! (`http.request.method`, `url.path`, `url.scheme`, `http.response.status_code`,
//! `error.type`, `server.address`/`server.port` (the endpoint) on a client span,
//! `network.peer.address`/`network.peer.port` (the peer gateway) and `client.address` on a
//! server span, body sizes), plus the mesh's own (`xdpmesh.listener`, `xdpmesh.route`,
//! `xdpmesh.service`, `xdpmesh.endpoint`, `xdpmesh.attempts`, `xdpmesh.request_id`,
//! `xdpmesh.identity`). The query is left out (it may carry credentials; semantic
//! conventions ask to scrub it).

use crate::engine::RequestEvent;
use crate::trace::{SpanContext, SpanKind};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};
use tcpstack::Instant;

/// Ties the engine's monotonic clock to the wall clock: one `(Instant, SystemTime)` pair the
/// caller reads together, once per loop clock (each worker's `tcpstack::Instant` counts from
/// its own start). A span's times are the anchor's wall time plus the monotonic difference,
/// so a wall-clock step after the anchor moves no span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    mono: Instant,
    unix_nanos: u64,
}

impl Anchor {
    /// `mono` and `wall` read at the same moment (a `wall` before 1970 counts as 1970).
    pub fn new(mono: Instant, wall: SystemTime) -> Anchor {
        let unix_nanos = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        Anchor { mono, unix_nanos }
    }

    /// `t` as nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self, t: Instant) -> u64 {
        let (t, m) = (t.as_micros(), self.mono.as_micros());
        if t >= m {
            self.unix_nanos
                .saturating_add((t - m).saturating_mul(1_000))
        } else {
            self.unix_nanos
                .saturating_sub((m - t).saturating_mul(1_000))
        }
    }
}

/// OTLP `Span.SpanKind`.
pub const SPAN_KIND_SERVER: u8 = 2;
pub const SPAN_KIND_CLIENT: u8 = 3;
/// OTLP `Status.StatusCode`.
pub const STATUS_CODE_ERROR: u8 = 2;
/// OTLP `SpanFlags`: the parent's remoteness is known, and it is remote.
const SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const SPAN_FLAGS_CONTEXT_IS_REMOTE: u32 = 0x200;

/// Who sends the spans: `service.name` is `xdpmesh`, `service.instance.id` the gateway's
/// name (the node file's `[node] name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub gateway: String,
}

/// The body of one `POST /v1/traces`: `resourceSpans → scopeSpans → spans`, one span per
/// event that has a sampled span (others are skipped). Returns the number of spans written.
pub fn encode<'a>(
    resource: &Resource,
    events: impl IntoIterator<Item = (&'a RequestEvent, &'a Anchor)>,
    out: &mut Vec<u8>,
) -> usize {
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    let mut a = Attrs::new(out);
    a.str("service.name", "xdpmesh");
    a.str("service.instance.id", &resource.gateway);
    out.extend_from_slice(b"]},\"scopeSpans\":[{\"scope\":{\"name\":\"xdpmesh\",\"version\":");
    json_str(out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"spans\":[");
    let mut n = 0;
    for (ev, anchor) in events {
        let Some(span) = ev.trace.filter(|s| s.sampled) else {
            continue;
        };
        if n > 0 {
            out.push(b',');
        }
        write_span(out, ev, &span, anchor);
        n += 1;
    }
    out.extend_from_slice(b"]}]}]}");
    n
}

/// The HTTP methods semantic conventions call known (RFC 9110 and PATCH); others are
/// `_OTHER`, with the method in `http.request.method_original`.
const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

fn write_span(out: &mut Vec<u8>, ev: &RequestEvent, span: &SpanContext, anchor: &Anchor) {
    let known = KNOWN_METHODS.contains(&ev.method.as_str());
    let client = span.kind == SpanKind::Client;
    out.extend_from_slice(b"{\"traceId\":\"");
    hex(out, &span.trace_id);
    out.extend_from_slice(b"\",\"spanId\":\"");
    hex(out, &span.span_id);
    out.push(b'"');
    let mut flags = u32::from(span.sampled) | SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE;
    if let Some(p) = &span.parent_id {
        // The parent is always another process's span (the caller's, or gateway A's).
        flags |= SPAN_FLAGS_CONTEXT_IS_REMOTE;
        out.extend_from_slice(b",\"parentSpanId\":\"");
        hex(out, p);
        out.push(b'"');
    }
    let _ = write!(out, ",\"flags\":{flags},\"name\":");
    json_str(out, if known { &ev.method } else { "HTTP" });
    let kind = if client {
        SPAN_KIND_CLIENT
    } else {
        SPAN_KIND_SERVER
    };
    let _ = write!(
        out,
        ",\"kind\":{kind},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
        anchor.unix_nanos(ev.start),
        anchor.unix_nanos(ev.end.max(ev.start)),
    );
    let mut a = Attrs::new(out);
    if known {
        a.str("http.request.method", &ev.method);
    } else {
        a.str("http.request.method", "_OTHER");
        a.str("http.request.method_original", &ev.method);
    }
    if !ev.target.is_empty() {
        a.str("url.path", url_path(&ev.target));
    }
    a.str("url.scheme", "http");
    if let Some(s) = ev.status {
        a.int("http.response.status_code", u64::from(s));
    }
    // Semantic conventions: a 5xx is an error on both kinds, a 4xx on a client span; a
    // response that never completed (a cut) is one too.
    let error_status = ev.status.is_some_and(|s| s >= 500 || (client && s >= 400));
    let error = error_status || ev.status.is_none();
    if error {
        let mut code = String::new();
        let ty = match (ev.refusal, ev.status) {
            (Some(r), _) => r.label(),
            (None, Some(s)) => {
                let _ = write!(code, "{s}");
                &code
            }
            (None, None) => "_OTHER",
        };
        a.str("error.type", ty);
    }
    if client {
        if let Some(e) = ev.endpoint {
            a.ip("server.address", e.ip());
            a.int("server.port", u64::from(e.port()));
        }
        a.ip("client.address", ev.client.ip());
        a.int("client.port", u64::from(ev.client.port()));
    } else {
        a.ip("network.peer.address", ev.client.ip());
        a.int("network.peer.port", u64::from(ev.client.port()));
        a.ip("client.address", ev.client.ip());
    }
    a.int("http.request.body.size", ev.request_body_bytes);
    a.int("http.response.body.size", ev.response_body_bytes);
    a.str("xdpmesh.listener", &ev.listener);
    if let Some(r) = &ev.route {
        a.str("xdpmesh.route", r);
    }
    if let Some(s) = &ev.service {
        a.str("xdpmesh.service", s);
    }
    if let Some(e) = ev.endpoint {
        let mut v = String::new();
        let _ = write!(v, "{e}");
        a.str("xdpmesh.endpoint", &v);
    }
    a.int("xdpmesh.attempts", u64::from(ev.attempts));
    if let Some(id) = &ev.request_id {
        a.str("xdpmesh.request_id", id);
    }
    if let Some(id) = &ev.identity {
        a.str("xdpmesh.identity", id);
    }
    out.push(b']');
    if error {
        let _ = write!(out, ",\"status\":{{\"code\":{STATUS_CODE_ERROR}}}");
    }
    out.push(b'}');
}

/// The path of a request target: origin-form up to `?`; absolute-form after its authority.
fn url_path(target: &str) -> &str {
    let rest = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = &target[i + 3..];
            match after.find('/') {
                Some(j) => &after[j..],
                None => "/",
            }
        }
        _ => target,
    };
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// Writes `KeyValue`s, comma-separated.
struct Attrs<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Attrs<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        Attrs { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(b"{\"key\":");
        json_str(self.out, key);
        self.out.extend_from_slice(b",\"value\":{");
    }

    fn str(&mut self, key: &str, v: &str) {
        self.key(key);
        self.out.extend_from_slice(b"\"stringValue\":");
        json_str(self.out, v);
        self.out.extend_from_slice(b"}}");
    }

    fn ip(&mut self, key: &str, v: &std::net::Ipv4Addr) {
        self.key(key);
        let _ = write!(self.out, "\"stringValue\":\"{v}\"}}}}");
    }

    /// An int64 attribute: a decimal string in proto3 JSON.
    fn int(&mut self, key: &str, v: u64) {
        self.key(key);
        let _ = write!(self.out, "\"intValue\":\"{v}\"}}}}");
    }
}

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    crate::http::hex_into(out, bytes);
}

/// A JSON string literal (RFC 8259 §7).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Refusal;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Arc;
    use std::time::Duration;

    fn event(kind: SpanKind, parent: Option<[u8; 8]>) -> RequestEvent {
        RequestEvent {
            listener: Arc::from("web"),
            client: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 50000),
            method: "GET".into(),
            target: "/x/y?secret=1".into(),
            route: Some("canary".into()),
            service: Some("web".into()),
            endpoint: Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080)),
            status: Some(200),
            refusal: None,
            attempts: 2,
            request_body_bytes: 3,
            response_body_bytes: 5,
            start: Instant::from_micros(2_000_000),
            end: Instant::from_micros(2_001_500),
            request_id: Some("abc".into()),
            identity: Some("spiffe://t.mesh/sa/client".into()),
            authority: None,
            traceparent: None,
            upstream: None,
            dst_identity: None,
            trace: Some(SpanContext {
                trace_id: [0x4b; 16],
                span_id: [1, 2, 3, 4, 5, 6, 7, 8],
                parent_id: parent,
                kind,
                sampled: true,
            }),
        }
    }

    fn anchor() -> Anchor {
        // Monotonic 1 s is 1,700,000,000 s of wall time.
        Anchor::new(
            Instant::from_micros(1_000_000),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    fn decode(events: &[RequestEvent]) -> (usize, serde_json::Value) {
        let a = anchor();
        let mut out = Vec::new();
        let n = encode(
            &Resource {
                gateway: "gw-\"a\"".into(),
            },
            events.iter().map(|e| (e, &a)),
            &mut out,
        );
        let v = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        (n, v)
    }

    fn attr<'v>(span: &'v serde_json::Value, key: &str) -> Option<&'v serde_json::Value> {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == key)
            .map(|kv| &kv["value"])
    }

    #[test]
    fn a_client_span_decodes_with_its_ids_times_and_attributes() {
        let (n, v) = decode(&[event(SpanKind::Client, None)]);
        assert_eq!(n, 1);
        let rs = &v["resourceSpans"][0];
        let res = &rs["resource"]["attributes"];
        assert_eq!(res[0]["key"], "service.name");
        assert_eq!(res[0]["value"]["stringValue"], "xdpmesh");
        assert_eq!(res[1]["key"], "service.instance.id");
        assert_eq!(res[1]["value"]["stringValue"], "gw-\"a\"");
        let ss = &rs["scopeSpans"][0];
        assert_eq!(ss["scope"]["name"], "xdpmesh");
        let span = &ss["spans"][0];
        assert_eq!(span["traceId"], "4b".repeat(16));
        assert_eq!(span["spanId"], "0102030405060708");
        assert!(span.get("parentSpanId").is_none(), "a root span");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["name"], "GET");
        assert_eq!(span["flags"], 0x101);
        assert_eq!(span["startTimeUnixNano"], "1700000001000000000");
        assert_eq!(span["endTimeUnixNano"], "1700000001001500000");
        assert!(
            span.get("status").is_none(),
            "a 200 leaves the status unset"
        );
        let s = |k| attr(span, k).unwrap()["stringValue"].as_str().unwrap();
        let i = |k| attr(span, k).unwrap()["intValue"].as_str().unwrap();
        assert_eq!(s("http.request.method"), "GET");
        assert_eq!(s("url.path"), "/x/y");
        assert_eq!(i("http.response.status_code"), "200");
        assert_eq!(s("server.address"), "10.0.3.2");
        assert_eq!(i("server.port"), "8080");
        assert_eq!(s("client.address"), "10.0.1.2");
        assert_eq!(s("xdpmesh.route"), "canary");
        assert_eq!(s("xdpmesh.service"), "web");
        assert_eq!(s("xdpmesh.endpoint"), "10.0.3.2:8080");
        assert_eq!(i("xdpmesh.attempts"), "2");
        assert_eq!(s("xdpmesh.request_id"), "abc");
        assert_eq!(s("xdpmesh.identity"), "spiffe://t.mesh/sa/client");
        assert_eq!(i("http.response.body.size"), "5");
        assert!(attr(span, "error.type").is_none());
        assert!(attr(span, "network.peer.address").is_none());
    }

    #[test]
    fn a_server_span_has_its_parent_and_the_peer() {
        let mut e = event(SpanKind::Server, Some([9; 8]));
        e.route = None;
        let (_, v) = decode(&[e]);
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["parentSpanId"], "09".repeat(8));
        assert_eq!(span["kind"], 2);
        assert_eq!(span["flags"], 0x301);
        assert_eq!(
            attr(span, "network.peer.address").unwrap()["stringValue"],
            "10.0.1.2"
        );
        assert!(attr(span, "server.address").is_none());
        assert!(attr(span, "xdpmesh.route").is_none());
    }

    #[test]
    fn errors_set_the_status_and_error_type() {
        let mut refused = event(SpanKind::Client, None);
        (refused.status, refused.refusal) = (Some(503), Some(Refusal::ConnectFailed));
        let mut cut = event(SpanKind::Server, None);
        cut.status = None;
        let mut not_found = event(SpanKind::Client, None);
        not_found.status = Some(404);
        let mut not_found_server = event(SpanKind::Server, None);
        not_found_server.status = Some(404);
        let mut odd = event(SpanKind::Server, None);
        odd.method = "PURGE\u{1}".into();
        odd.target = "http://h:1".into();
        let (n, v) = decode(&[refused, cut, not_found, not_found_server, odd]);
        assert_eq!(n, 5);
        let spans = v["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap();
        let err = |i: usize| attr(&spans[i], "error.type").map(|v| v["stringValue"].clone());
        assert_eq!(spans[0]["status"]["code"], 2);
        assert_eq!(err(0).unwrap(), "connect_failed");
        assert_eq!(spans[1]["status"]["code"], 2);
        assert_eq!(err(1).unwrap(), "_OTHER");
        assert!(attr(&spans[1], "http.response.status_code").is_none());
        assert_eq!(
            spans[2]["status"]["code"], 2,
            "a 4xx is an error on a client"
        );
        assert_eq!(err(2).unwrap(), "404");
        assert!(spans[3].get("status").is_none(), "not on a server");
        assert_eq!(spans[4]["name"], "HTTP");
        assert_eq!(
            attr(&spans[4], "http.request.method").unwrap()["stringValue"],
            "_OTHER"
        );
        assert_eq!(
            attr(&spans[4], "http.request.method_original").unwrap()["stringValue"],
            "PURGE\u{1}"
        );
        assert_eq!(attr(&spans[4], "url.path").unwrap()["stringValue"], "/");
    }

    #[test]
    fn unsampled_and_traceless_events_are_skipped() {
        let mut unsampled = event(SpanKind::Client, None);
        unsampled.trace.as_mut().unwrap().sampled = false;
        let mut none = event(SpanKind::Client, None);
        none.trace = None;
        let (n, v) = decode(&[unsampled, none]);
        assert_eq!(n, 0);
        assert_eq!(
            v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn the_anchor_maps_both_ways_and_saturates() {
        let a = anchor();
        assert_eq!(
            a.unix_nanos(Instant::from_micros(0)),
            1_699_999_999_000_000_000
        );
        assert_eq!(
            Anchor::new(Instant::from_micros(5), UNIX_EPOCH).unix_nanos(Instant::ZERO),
            0
        );
        assert_eq!(url_path("/a?b#c"), "/a");
        assert_eq!(url_path("http://h/p/q?x"), "/p/q");
        assert_eq!(url_path("*"), "*");
    }
}
