//! `/metrics` in OpenMetrics 1.0 text for a scraper that asks for it with `Accept` (as
//! Prometheus does by default). The gateway renders its families once, in the text format
//! 0.0.4 (the counters are ours, read lock-free at scrape time); this module reads that text
//! back into families and has the `prometheus-client` crate encode them, so the OpenMetrics
//! rules (`_total` only on samples, `# EOF`, escaping) are the crate's, not ours.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;

/// What `/metrics` answers with when OpenMetrics was asked for.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Does `accept` ask for OpenMetrics text (any `application/openmetrics-text` range whose
/// quality is not 0)? Prometheus sends it first, with text 0.0.4 as a fallback.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        media.eq_ignore_ascii_case("application/openmetrics-text")
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            })
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
struct Sample {
    /// The sample's name (a histogram's has `_bucket`, `_sum` or `_count`).
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<Sample>,
}

/// Why the text could not be read back (a bug of the renderer, never the client's input).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("line {0}: not a sample: {1}")]
    Sample(usize, String),
    #[error("encoding failed")]
    Encode,
}

/// The families of `text` (format 0.0.4) in OpenMetrics 1.0 text.
pub fn from_text(text: &str) -> Result<String, Error> {
    let families = parse(text)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).map_err(|_| Error::Encode)?;
    Ok(out)
}

fn parse(text: &str) -> Result<Vec<Family>, Error> {
    let mut families: Vec<Family> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    fn family(
        name: &str,
        families: &mut Vec<Family>,
        by_name: &mut HashMap<String, usize>,
    ) -> usize {
        *by_name.entry(name.to_string()).or_insert_with(|| {
            families.push(Family {
                name: name.to_string(),
                help: String::new(),
                kind: Kind::Gauge,
                samples: Vec::new(),
            });
            families.len() - 1
        })
    }
    for (n, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let i = family(name, &mut families, &mut by_name);
            families[i].help = help.replace("\\n", "\n").replace("\\\\", "\\");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let i = family(name, &mut families, &mut by_name);
            families[i].kind = match kind.trim() {
                "counter" => Kind::Counter,
                "histogram" => Kind::Histogram,
                _ => Kind::Gauge,
            };
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            let s = sample(line).ok_or_else(|| Error::Sample(n + 1, line.to_string()))?;
            // A histogram's samples belong to the family without the suffix.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| {
                    s.name
                        .strip_suffix(suf)
                        .filter(|b| by_name.contains_key(*b))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| s.name.clone());
            let i = family(&base, &mut families, &mut by_name);
            families[i].samples.push(s);
        }
    }
    Ok(families)
}

/// `name{a="b",c="d"} value` (labels optional; values escaped as the 0.0.4 format says).
fn sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.push((key.to_string(), value));
            r = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            match f.kind {
                Kind::Counter => {
                    // OpenMetrics names the family without `_total`; the crate adds it back
                    // to the samples.
                    let name = f.name.strip_suffix("_total").unwrap_or(&f.name);
                    let mut m =
                        encoder.encode_descriptor(name, &f.help, None, MetricType::Counter)?;
                    for s in &f.samples {
                        let labels = escaped(&s.labels);
                        let mut m = m.encode_family(&labels)?;
                        match whole(s.value) {
                            Some(v) => m.encode_counter::<NoLabelSet, u64, u64>(&v, None)?,
                            None => m.encode_counter::<NoLabelSet, f64, f64>(&s.value, None)?,
                        }
                    }
                }
                Kind::Gauge => {
                    let mut m =
                        encoder.encode_descriptor(&f.name, &f.help, None, MetricType::Gauge)?;
                    for s in &f.samples {
                        let labels = escaped(&s.labels);
                        let mut m = m.encode_family(&labels)?;
                        match whole(s.value) {
                            Some(v) => m.encode_gauge(&v)?,
                            None => m.encode_gauge(&s.value)?,
                        }
                    }
                }
                Kind::Histogram => {
                    let mut m =
                        encoder.encode_descriptor(&f.name, &f.help, None, MetricType::Histogram)?;
                    for (labels, h) in histograms(f) {
                        let labels = escaped(&labels);
                        let none: Option<&HashMap<usize, Exemplar<NoLabelSet, f64>>> = None;
                        m.encode_family(&labels)?
                            .encode_histogram(h.sum, h.count, &h.buckets, none)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A whole, exactly representable value, written without a fraction.
fn whole(v: f64) -> Option<u64> {
    (v.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&v)).then_some(v as u64)
}

/// Label values escaped for the text (the crate writes them as given).
fn escaped(labels: &[(String, String)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            (k.clone(), v)
        })
        .collect()
}

#[derive(Default)]
struct Hist {
    /// (upper bound, count in this bucket alone): the crate sums them up again.
    buckets: Vec<(f64, u64)>,
    cumulative: u64,
    sum: f64,
    count: u64,
}

/// A histogram family's series, by their labels without `le`, in the order they came.
fn histograms(f: &Family) -> Vec<(Vec<(String, String)>, Hist)> {
    let mut out: Vec<(Vec<(String, String)>, Hist)> = Vec::new();
    for s in &f.samples {
        let mut le = None;
        let labels: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, v)| {
                if k == "le" {
                    le = Some(v.clone());
                    false
                } else {
                    true
                }
            })
            .cloned()
            .collect();
        let i = match out.iter().position(|(l, _)| *l == labels) {
            Some(i) => i,
            None => {
                out.push((labels, Hist::default()));
                out.len() - 1
            }
        };
        let h = &mut out[i].1;
        let suffix = &s.name[f.name.len().min(s.name.len())..];
        match suffix {
            "_bucket" => {
                // The crate writes `+Inf` for f64::MAX (and `inf` for infinity).
                let bound = match le.as_deref() {
                    Some("+Inf") | None => f64::MAX,
                    Some(v) => v
                        .parse::<f64>()
                        .ok()
                        .filter(|b| b.is_finite())
                        .unwrap_or(f64::MAX),
                };
                let total = s.value as u64;
                h.buckets.push((bound, total.saturating_sub(h.cumulative)));
                h.cumulative = total;
            }
            "_sum" => h.sum = s.value,
            "_count" => h.count = s.value as u64,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP xdpmesh_requests_total Requests.
# TYPE xdpmesh_requests_total counter
xdpmesh_requests_total{route=\"a\\\"b\",code=\"200\"} 7
xdpmesh_requests_total{route=\"c\",code=\"503\"} 1
# HELP process_open_fds Fds.
# TYPE process_open_fds gauge
process_open_fds 12
# HELP xdpmesh_request_duration_seconds Latency.
# TYPE xdpmesh_request_duration_seconds histogram
xdpmesh_request_duration_seconds_bucket{route=\"c\",le=\"0.001\"} 2
xdpmesh_request_duration_seconds_bucket{route=\"c\",le=\"0.01\"} 5
xdpmesh_request_duration_seconds_bucket{route=\"c\",le=\"+Inf\"} 6
xdpmesh_request_duration_seconds_sum{route=\"c\"} 0.5
xdpmesh_request_duration_seconds_count{route=\"c\"} 6
";

    #[test]
    fn families_come_out_as_openmetrics() {
        let out = from_text(TEXT).unwrap();
        assert!(out.contains("# TYPE xdpmesh_requests counter\n"), "{out}");
        assert!(
            out.contains("xdpmesh_requests_total{route=\"a\\\"b\",code=\"200\"} 7"),
            "{out}"
        );
        // No labels: `{}`, which the OpenMetrics ABNF allows.
        assert!(
            out.contains("# TYPE process_open_fds gauge\nprocess_open_fds{} 12"),
            "{out}"
        );
        // Buckets cumulative again, as they came in.
        assert!(
            out.contains("xdpmesh_request_duration_seconds_bucket{le=\"0.001\",route=\"c\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("xdpmesh_request_duration_seconds_bucket{le=\"0.01\",route=\"c\"} 5"),
            "{out}"
        );
        assert!(
            out.contains("xdpmesh_request_duration_seconds_bucket{le=\"+Inf\",route=\"c\"} 6"),
            "{out}"
        );
        assert!(
            out.contains("xdpmesh_request_duration_seconds_count{route=\"c\"} 6"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn accept_asks_for_openmetrics_unless_refused() {
        assert!(wanted(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wanted("text/plain;version=0.0.4"));
        assert!(!wanted("application/openmetrics-text; q=0"));
        assert!(!wanted(""));
    }

    #[test]
    fn a_line_that_is_no_sample_is_an_error_not_a_panic() {
        for bad in ["x{a=\"b\" 1", "x{a=b} 1", "x", "x{a=\"b\"} notanumber"] {
            assert!(matches!(from_text(bad), Err(Error::Sample(1, _))), "{bad}");
        }
    }
}
