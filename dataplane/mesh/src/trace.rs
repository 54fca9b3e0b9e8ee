//! One span per request per gateway, and the W3C Trace Context that links them
//! (W3C Trace Context Level 1, <https://www.w3.org/TR/trace-context-1/>).
//!
//! The model (as Linkerd's and Istio's proxies: one span per proxy per request):
//! - on a listener that routes (`http`: gateway A, the outbound side) the span is a
//!   [`SpanKind::Client`]: the gateway calls the service for the application;
//! - on a `mesh` listener (gateway B, the inbound side) it is a [`SpanKind::Server`].
//!
//! A request that arrives with one valid `traceparent` keeps its trace id, and its
//! parent-id becomes the span's parent; otherwise the gateway starts a trace (a span
//! without parent). Either way the span gets a new span id, and the request goes on with
//! `traceparent: 00-<trace-id>-<span id>-<flags>`, so the next hop's span is a child of
//! this one (§3.2.2.4: parent-id is the id of the caller's span). `tracestate` goes on as
//! received when the traceparent was valid, and is dropped when the trace restarts (§3.3).
//!
//! Sampling (the `sampled` flag, §3.2.2.5): a continued trace keeps the caller's decision;
//! a new trace is sampled by [`Sampler`] from its trace id, as OpenTelemetry's
//! `ParentBased(TraceIdRatioBased)`.

use crate::http::{hex_into, random_nonzero, RequestHead};
use rand::RngCore;

/// What a gateway's span is to the request (OTLP `Span.SpanKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// Gateway B, a `mesh` listener: it serves the request for the service.
    Server,
    /// Gateway A, a routing listener: it calls the service for the application.
    Client,
}

/// The trace context of one gateway's span for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    /// This gateway's span: the parent-id the request is forwarded with.
    pub span_id: [u8; 8],
    /// The caller's span (the incoming parent-id); `None`: this span starts the trace.
    pub parent_id: Option<[u8; 8]>,
    pub kind: SpanKind,
    /// The `sampled` flag forwarded (and whether an exporter records the span).
    pub sampled: bool,
}

impl SpanContext {
    /// The `traceparent` value this span forwards: `00-<trace-id>-<span-id>-<flags>`.
    /// Flags other than `sampled` are zero (§3.2.2.5: reserved bits are set to zero).
    pub fn traceparent(&self) -> String {
        let mut v = Vec::with_capacity(55);
        self.write_traceparent(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    fn write_traceparent(&self, v: &mut Vec<u8>) {
        v.extend_from_slice(b"00-");
        hex_into(v, &self.trace_id);
        v.push(b'-');
        hex_into(v, &self.span_id);
        v.extend_from_slice(if self.sampled { b"-01" } else { b"-00" });
    }
}

/// A parsed incoming `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a value that [`crate::http::traceparent_is_valid`] accepts (any version but
    /// `ff`: a higher version is read as version 00, §3.2.4); `None` otherwise.
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if !crate::http::traceparent_is_valid(v) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        unhex(&v[3..35], &mut trace_id)?;
        unhex(&v[36..52], &mut parent_id)?;
        let mut flags = [0u8; 1];
        unhex(&v[53..55], &mut flags)?;
        Some(TraceParent {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The request's trace parent: its one `traceparent` field, if valid. Two or more
    /// fields are as good as none (the value cannot be told).
    pub fn of(head: &RequestHead) -> Option<TraceParent> {
        let mut found = None;
        for (n, v) in &head.headers {
            if n.eq_ignore_ascii_case("traceparent") {
                if found.is_some() {
                    return None;
                }
                found = Some(v);
            }
        }
        found.and_then(|v| TraceParent::parse(v))
    }
}

fn unhex(s: &[u8], out: &mut [u8]) -> Option<()> {
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = nib(pair[0])? << 4 | nib(pair[1])?;
    }
    Some(())
}

/// Samples new traces with a fixed probability, decided from the trace id (so every
/// gateway that had to decide for one trace decides alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// A trace is sampled when the low 63 bits of its id's last 8 bytes are below this
    /// (OpenTelemetry's TraceIdRatioBased, as its Go SDK computes it); `u64::MAX`: always.
    bound: u64,
}

impl Sampler {
    /// Every new trace is sampled.
    pub const ALWAYS: Sampler = Sampler { bound: u64::MAX };

    /// Samples a share `ratio` of new traces (clamped to 0..=1; NaN is 0).
    pub fn ratio(ratio: f64) -> Sampler {
        if ratio >= 1.0 {
            return Sampler::ALWAYS;
        }
        if ratio.is_nan() || ratio <= 0.0 {
            return Sampler { bound: 0 };
        }
        Sampler {
            bound: (ratio * (1u64 << 63) as f64) as u64,
        }
    }

    pub fn sample(&self, trace_id: &[u8; 16]) -> bool {
        if self.bound == u64::MAX {
            return true;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.bound
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::ALWAYS
    }
}

/// This gateway's span for a request whose head is `head`: a child of its valid
/// `traceparent`, else the root of a new trace (sampled by `sampler`).
pub fn start_span(
    head: &RequestHead,
    kind: SpanKind,
    rng: &mut impl RngCore,
    sampler: &Sampler,
) -> SpanContext {
    let span_id = random_nonzero::<8>(rng);
    match TraceParent::of(head) {
        Some(tp) => SpanContext {
            trace_id: tp.trace_id,
            span_id,
            parent_id: Some(tp.parent_id),
            kind,
            sampled: tp.sampled,
        },
        None => {
            let trace_id = random_nonzero::<16>(rng);
            SpanContext {
                trace_id,
                span_id,
                parent_id: None,
                kind,
                sampled: sampler.sample(&trace_id),
            }
        }
    }
}

/// Sets the request's `traceparent` to `span`'s (its span id as parent-id). A span that
/// continued the request's trace leaves `tracestate` as received; one that started a trace
/// drops it (§3.3: it belongs to a trace that could not be parsed). A single field is
/// rewritten in place (no allocation).
pub fn forward(head: &mut RequestHead, span: &SpanContext) {
    let mut n = 0;
    for (name, _) in &head.headers {
        if name.eq_ignore_ascii_case("traceparent") {
            n += 1;
        }
    }
    if span.parent_id.is_none() {
        head.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("tracestate"));
    }
    if n == 1 {
        if let Some((_, v)) = head
            .headers
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
        {
            v.clear();
            span.write_traceparent(v);
            return;
        }
    }
    if n > 1 {
        head.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("traceparent"));
    }
    let mut v = Vec::with_capacity(55);
    span.write_traceparent(&mut v);
    head.headers.push(("traceparent".to_owned(), v));
}

/// Lower-case hex of `bytes` (ids in logs and in OTLP/JSON).
pub fn hex(bytes: &[u8]) -> String {
    let mut v = Vec::with_capacity(bytes.len() * 2);
    hex_into(&mut v, bytes);
    String::from_utf8(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, traceparent_is_valid, Limits};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn req(extra: &str) -> RequestHead {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
        parse_request(raw.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn tps(h: &RequestHead) -> Vec<&[u8]> {
        h.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| &v[..])
            .collect()
    }

    #[test]
    fn parse_reads_ids_and_the_sampled_flag() {
        let tp = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled);
        let tp =
            TraceParent::parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-08-future")
                .unwrap();
        assert!(!tp.sampled);
        assert_eq!(TraceParent::parse(b"00-zz"), None);
    }

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span_id() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut h = req(&format!("Traceparent: {GOOD}\r\ntracestate: v=1\r\n"));
        let s = start_span(&h, SpanKind::Client, &mut rng, &Sampler::ratio(0.0));
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_ne!(hex(&s.span_id), "00f067aa0ba902b7");
        assert!(s.sampled, "the caller's decision wins over the ratio");
        forward(&mut h, &s);
        let want = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", hex(&s.span_id));
        assert_eq!(tps(&h), vec![want.as_bytes()]);
        assert_eq!(s.traceparent(), want);
        assert_eq!(h.header("tracestate"), Some(&b"v=1"[..]));
    }

    #[test]
    fn the_unsampled_flag_is_kept() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut h = req("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n");
        let s = start_span(&h, SpanKind::Server, &mut rng, &Sampler::ALWAYS);
        assert!(!s.sampled);
        forward(&mut h, &s);
        assert!(tps(&h)[0].ends_with(b"-00"));
    }

    #[test]
    fn a_missing_invalid_or_repeated_parent_starts_a_trace() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for extra in [
            String::new(),
            "traceparent: 00-zz\r\ntracestate: v=1\r\n".to_owned(),
            format!("traceparent: {GOOD}\r\ntraceparent: {GOOD}\r\ntracestate: v=1\r\n"),
        ] {
            let mut h = req(&extra);
            let s = start_span(&h, SpanKind::Client, &mut rng, &Sampler::ALWAYS);
            assert_eq!(s.parent_id, None, "{extra}");
            assert_ne!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(s.sampled);
            forward(&mut h, &s);
            let t = tps(&h);
            assert_eq!(t.len(), 1, "{extra}");
            assert!(traceparent_is_valid(t[0]));
            assert_eq!(t[0], s.traceparent().as_bytes());
            assert_eq!(h.header("tracestate"), None, "{extra}");
        }
    }

    #[test]
    fn the_sampler_keeps_about_its_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let s = Sampler::ratio(0.25);
        let n = (0..10_000)
            .filter(|_| s.sample(&random_nonzero::<16>(&mut rng)))
            .count();
        assert!((2_200..2_800).contains(&n), "{n}");
        let id = random_nonzero::<16>(&mut rng);
        assert!(Sampler::ratio(1.0).sample(&id));
        assert!(!Sampler::ratio(0.0).sample(&id));
        assert!(!Sampler::ratio(f64::NAN).sample(&id));
        assert!(Sampler::ratio(7.0).sample(&id));
    }
}
