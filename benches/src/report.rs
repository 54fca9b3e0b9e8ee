//! Results: the JSON report (serde, round-trips) and the text tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::engine::{RawRun, HIST_HIGHEST_NS, HIST_SIGFIG};
use crate::error::ErrorKind;

/// Version of the JSON layout below; bump on incompatible changes.
pub const FORMAT: u32 = 1;

/// What `--json` prints and `--save` writes: one or several runs (one per `--compare` target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub format: u32,
    pub runs: Vec<RunResult>,
}

impl Report {
    pub fn new(runs: Vec<RunResult>) -> Self {
        Self {
            tool: "xdpmesh-bench".into(),
            format: FORMAT,
            runs,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    pub fn from_json(s: &str) -> Result<Self, String> {
        let r: Report = serde_json::from_str(s).map_err(|e| e.to_string())?;
        if r.format != FORMAT {
            return Err(format!(
                "report format {} is not supported (expected {FORMAT})",
                r.format
            ));
        }
        Ok(r)
    }
}

/// One target's figures. Latencies are in nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Label (the `--compare` name, or `--name`, or the target).
    pub name: String,
    pub target: String,
    /// `tcp`, `http` or `connect`.
    pub mode: String,
    /// What one request is, e.g. `64 B echo` or `GET /`.
    pub request: String,
    /// A new connection per request.
    pub new_conn: bool,
    pub connections: usize,
    pub asked_rate: f64,
    /// Successful responses completed in the measured window, per second.
    pub achieved_rate: f64,
    pub warmup_s: f64,
    /// Measured time, summed over rounds.
    pub duration_s: f64,
    pub rounds: u32,
    /// Requests scheduled in the measured window.
    pub scheduled: u64,
    /// Of those, answered successfully (the histogram's count).
    pub ok: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// From each request's intended send time to the end of its response.
    pub latency: Percentiles,
    /// Actual send minus intended send: queueing behind a slow response, or harness lag.
    pub send_delay: Percentiles,
    pub max_backlog: u64,
    /// Set when the target did not carry the asked rate; the figures include the queueing.
    pub warning: Option<String>,
    /// The whole latency histogram, for plots and merges.
    pub histogram: HistogramData,
    /// What the watched processes (`--cpu-of`) spent over the measured window(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
}

/// CPU time of the processes under test, charged to the requests of the measured window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    pub pids: Vec<u32>,
    /// User + system seconds, all processes and threads, summed over rounds.
    pub seconds: f64,
    /// `seconds` per 1,000 requests scheduled in the window, in ms: at a fixed rate every
    /// target gets the same requests, so this compares proxies like for like.
    pub ms_per_1k_requests: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub p9999_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                count: 0,
                min_ns: 0,
                mean_ns: 0.0,
                p50_ns: 0,
                p90_ns: 0,
                p99_ns: 0,
                p999_ns: 0,
                p9999_ns: 0,
                max_ns: 0,
            };
        }
        Self {
            count: h.len(),
            min_ns: h.min(),
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            p9999_ns: h.value_at_quantile(0.9999),
            max_ns: h.max(),
        }
    }

    /// (label, value) pairs in display order.
    pub fn figures(&self) -> [(&'static str, u64); 6] {
        [
            ("p50", self.p50_ns),
            ("p90", self.p90_ns),
            ("p99", self.p99_ns),
            ("p99.9", self.p999_ns),
            ("p99.99", self.p9999_ns),
            ("max", self.max_ns),
        ]
    }
}

/// A histogram as its non-empty buckets: `[value_ns, count]`, each value the highest value
/// equivalent to its bucket, so recording it again lands in the same bucket (exact round-trip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramData {
    pub highest_ns: u64,
    pub sigfig: u8,
    pub buckets: Vec<[u64; 2]>,
}

impl HistogramData {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            highest_ns: HIST_HIGHEST_NS,
            sigfig: HIST_SIGFIG,
            buckets: h
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect(),
        }
    }

    pub fn to_histogram(&self) -> Result<Histogram<u64>, String> {
        let mut h = Histogram::new_with_bounds(1, self.highest_ns.max(2), self.sigfig)
            .map_err(|e| format!("bad histogram bounds: {e}"))?;
        for [value, count] in &self.buckets {
            h.record_n(*value, *count)
                .map_err(|e| format!("bad histogram bucket {value}: {e}"))?;
        }
        Ok(h)
    }
}

/// What the run was, for the report.
#[derive(Debug, Clone)]
pub struct RunMeta {
    pub name: String,
    pub target: String,
    pub mode: String,
    pub request: String,
    pub new_conn: bool,
    pub connections: usize,
    pub asked_rate: f64,
    pub warmup_s: f64,
    pub rounds: u32,
    /// `--cpu-of` processes of this run.
    pub cpu_pids: Vec<u32>,
}

/// Achieved below this share of the asked rate raises the warning.
const RATE_TOLERANCE: f64 = 0.95;
/// Half the requests sent later than this behind schedule means sustained queueing: the run
/// measured a backlog, not the target at the asked rate. Wake-up lag alone is ~50-100 µs on a
/// VM, and a few ms when other processes compete for the cores; a saturated run is hundreds of
/// ms behind.
const LATE_SEND_NS: u64 = 10_000_000;

pub fn summarise(meta: RunMeta, raw: &RawRun) -> RunResult {
    let secs = raw.window.as_secs_f64();
    let achieved_rate = if secs > 0.0 {
        raw.completed_in_window as f64 / secs
    } else {
        0.0
    };
    let error_total: u64 = raw.errors.values().sum();
    let unfinished = raw.errors.get(&ErrorKind::Unfinished).copied().unwrap_or(0);
    let late_p50 = if raw.send_delay.is_empty() {
        0
    } else {
        raw.send_delay.value_at_quantile(0.5)
    };
    let short = achieved_rate < RATE_TOLERANCE * meta.asked_rate;
    let warning = if short || unfinished > 0 || late_p50 > LATE_SEND_NS {
        let why = if error_total > unfinished && unfinished == 0 && short {
            format!("{error_total} requests failed")
        } else if !short && unfinished == 0 {
            format!(
                "half the requests went out {} or more behind schedule: {} connection(s) \
                 cannot carry this rate against this target (or the harness cannot send it); \
                 the latencies include that queueing: add --connections or lower --rate",
                fmt_ns(late_p50),
                meta.connections
            )
        } else {
            format!(
                "{} connection(s) cannot carry this rate against this target \
                 (up to {} requests queued; {unfinished} never completed); \
                 the latencies include that queueing: add --connections or lower --rate",
                meta.connections, raw.max_backlog
            )
        };
        Some(format!(
            "achieved {achieved_rate:.1} req/s for the {:.1} req/s asked: {why}",
            meta.asked_rate
        ))
    } else {
        None
    };
    RunResult {
        name: meta.name,
        target: meta.target,
        mode: meta.mode,
        request: meta.request,
        new_conn: meta.new_conn,
        connections: meta.connections,
        asked_rate: meta.asked_rate,
        achieved_rate,
        warmup_s: meta.warmup_s,
        duration_s: secs,
        rounds: meta.rounds,
        scheduled: raw.scheduled,
        ok: raw.ok,
        errors: raw.errors.clone(),
        latency: Percentiles::of(&raw.latency),
        send_delay: Percentiles::of(&raw.send_delay),
        max_backlog: raw.max_backlog,
        warning,
        histogram: HistogramData::of(&raw.latency),
        cpu: raw.cpu.map(|d| CpuUse {
            pids: meta.cpu_pids.clone(),
            seconds: d.as_secs_f64(),
            ms_per_1k_requests: if raw.scheduled > 0 {
                d.as_secs_f64() * 1e6 / raw.scheduled as f64
            } else {
                0.0
            },
        }),
    }
}

/// A latency in the unit that keeps three significant figures readable.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    let (val, unit) = if v < 1e3 {
        return format!("{ns} ns");
    } else if v < 1e6 {
        (v / 1e3, "µs")
    } else if v < 1e9 {
        (v / 1e6, "ms")
    } else {
        (v / 1e9, "s")
    };
    if val < 10.0 {
        format!("{val:.2} {unit}")
    } else if val < 100.0 {
        format!("{val:.1} {unit}")
    } else {
        format!("{val:.0} {unit}")
    }
}

fn fmt_errors(errors: &BTreeMap<ErrorKind, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text report of one run.
pub fn format_run(r: &RunResult) -> String {
    let mut o = String::new();
    let conn = if r.new_conn {
        "new connection per request"
    } else {
        "persistent connections"
    };
    let _ = writeln!(
        o,
        "{}: {} {} -> {}, {} {conn}",
        r.name, r.mode, r.request, r.target, r.connections
    );
    let rounds = if r.rounds > 1 {
        format!(" in {} rounds", r.rounds)
    } else {
        String::new()
    };
    let _ = writeln!(
        o,
        "  asked {:.1} req/s for {:.1} s{rounds} (after {:.1} s warm-up); achieved {:.1} req/s",
        r.asked_rate, r.duration_s, r.warmup_s, r.achieved_rate
    );
    let errors: u64 = r.errors.values().sum();
    let _ = writeln!(
        o,
        "  requests: {} scheduled, {} ok, {errors} failed",
        r.scheduled, r.ok
    );
    let _ = writeln!(
        o,
        "  latency from intended send time (coordinated omission corrected):"
    );
    for (label, v) in r.latency.figures() {
        let _ = writeln!(o, "    {label:<7}{:>12}", fmt_ns(v));
    }
    let _ = writeln!(
        o,
        "  send delay (queueing + harness lag): p50 {}  p99 {}  max {}",
        fmt_ns(r.send_delay.p50_ns),
        fmt_ns(r.send_delay.p99_ns),
        fmt_ns(r.send_delay.max_ns)
    );
    let _ = writeln!(o, "  errors: {}", fmt_errors(&r.errors));
    if let Some(c) = &r.cpu {
        let pids: Vec<String> = c.pids.iter().map(u32::to_string).collect();
        let _ = writeln!(
            o,
            "  CPU of processes {}: {:.2} s, {:.1} ms per 1,000 requests",
            pids.join(","),
            c.seconds,
            c.ms_per_1k_requests
        );
    }
    o
}

/// The `--compare` table: each target's figures and their ratio to the first target's.
pub fn format_compare(runs: &[RunResult]) -> String {
    let mut o = String::new();
    let Some(base) = runs.first() else {
        return o;
    };
    let name_w = runs.iter().map(|r| r.name.len()).max().unwrap_or(4).max(6);
    let _ = write!(o, "{:<name_w$}", "target");
    for (label, _) in base.latency.figures() {
        let _ = write!(o, "  {label:>18}");
    }
    let _ = writeln!(o, "  {:>18}  errors", "rate/s");
    for r in runs {
        let _ = write!(o, "{:<name_w$}", r.name);
        for ((_, v), (_, b)) in r.latency.figures().iter().zip(base.latency.figures()) {
            let cell = if std::ptr::eq(r, base) {
                fmt_ns(*v)
            } else {
                format!("{} {}", fmt_ns(*v), ratio(*v as f64, b as f64))
            };
            let _ = write!(o, "  {cell:>18}");
        }
        let rate = if std::ptr::eq(r, base) {
            format!("{:.1}", r.achieved_rate)
        } else {
            format!(
                "{:.1} {}",
                r.achieved_rate,
                ratio(r.achieved_rate, base.achieved_rate)
            )
        };
        let errors: u64 = r.errors.values().sum();
        let _ = writeln!(o, "  {rate:>18}  {errors}");
    }
    let _ = writeln!(
        o,
        "(latency from intended send time; ratios are to {})",
        base.name
    );
    o
}

fn ratio(v: f64, base: f64) -> String {
    if base > 0.0 {
        format!("x{:.2}", v / base)
    } else {
        "x-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::new_histogram;

    #[test]
    fn fmt_ns_picks_units() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(85_200), "85.2 µs");
        assert_eq!(fmt_ns(2_050_000), "2.05 ms");
        assert_eq!(fmt_ns(300_000_000), "300 ms");
        assert_eq!(fmt_ns(1_500_000_000), "1.50 s");
    }

    fn meta() -> RunMeta {
        RunMeta {
            name: "t".into(),
            target: "127.0.0.1:1".into(),
            mode: "tcp".into(),
            request: "64 B echo".into(),
            new_conn: false,
            connections: 4,
            asked_rate: 1000.0,
            warmup_s: 0.0,
            rounds: 1,
            cpu_pids: vec![],
        }
    }

    fn raw(completed: u64, send_delay_ns: u64, errors: &[(ErrorKind, u64)]) -> RawRun {
        let mut r = RawRun::new();
        r.window = std::time::Duration::from_secs(1);
        r.scheduled = 1000;
        r.completed_in_window = completed;
        r.ok = completed;
        for _ in 0..100 {
            r.send_delay.record(send_delay_ns).unwrap();
            r.latency.record(send_delay_ns + 50_000).unwrap();
        }
        r.errors = errors.iter().copied().collect();
        r
    }

    #[test]
    fn warning_rules() {
        let ok = summarise(meta(), &raw(1000, 60_000, &[]));
        assert_eq!(ok.warning, None);
        assert_eq!(ok.achieved_rate, 1000.0);

        let late = summarise(meta(), &raw(1000, 50_000_000, &[]));
        assert!(late.warning.unwrap().contains("behind schedule"));

        let short = summarise(meta(), &raw(500, 60_000, &[]));
        assert!(short.warning.unwrap().contains("cannot carry this rate"));

        let failing = summarise(meta(), &raw(500, 60_000, &[(ErrorKind::Http5xx, 500)]));
        assert!(failing.warning.unwrap().contains("500 requests failed"));

        let unfinished = summarise(meta(), &raw(990, 60_000, &[(ErrorKind::Unfinished, 10)]));
        assert!(unfinished.warning.unwrap().contains("10 never completed"));
    }

    #[test]
    fn histogram_data_round_trips_exactly() {
        let mut h = new_histogram();
        for v in [
            1u64,
            999,
            1_000,
            12_345,
            2_000_000,
            300_000_000,
            7_000_000_000,
        ] {
            h.record_n(v, v % 7 + 1).unwrap();
        }
        let back = HistogramData::of(&h).to_histogram().unwrap();
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q={q}");
        }
        assert_eq!(HistogramData::of(&back), HistogramData::of(&h));
    }
}
