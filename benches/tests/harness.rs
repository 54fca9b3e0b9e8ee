//! The latency harness against its own echo and HTTP servers on 127.0.0.1 (ephemeral ports).
//!
//! Load tests run one at a time (a lock), at modest rates, so they hold on a loaded 2-core
//! machine: each asserts what the harness measured, not how fast anything is.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use benches::engine::Progress;
use benches::report::{format_compare, Report};
use benches::runner::{run_compare, run_one, Mode, Options};
use benches::servers::{ServerKind, ServerOpts, Stall, TestServer};
use benches::{BenchError, ErrorKind};

const MS: u64 = 1_000_000;
const BIN: &str = env!("CARGO_BIN_EXE_xdpmesh-bench");

static LOAD: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

fn server(opts: ServerOpts) -> TestServer {
    TestServer::start("127.0.0.1:0".parse().unwrap(), opts).expect("start test server")
}

fn opts(rate: f64, connections: usize, warmup_ms: u64, duration_ms: u64) -> Options {
    Options {
        rate,
        connections,
        warmup: Duration::from_millis(warmup_ms),
        duration: Duration::from_millis(duration_ms),
        progress: Progress::Off,
        ..Options::default()
    }
}

/// A port with nothing listening: bind an ephemeral port, then close it.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn achieved_rate_matches_the_asked_rate_tcp() {
    let _g = serial();
    let srv = server(ServerOpts::echo());
    let r = run_one(
        "echo",
        &srv.addr().to_string(),
        &opts(2000.0, 10, 500, 2000),
    )
    .unwrap();
    assert_eq!(r.mode, "tcp");
    assert!(
        (r.achieved_rate - 2000.0).abs() <= 0.05 * 2000.0,
        "achieved {} req/s for 2000 asked",
        r.achieved_rate
    );
    assert_eq!(r.scheduled, 4000);
    assert_eq!(r.ok, r.scheduled, "errors: {:?}", r.errors);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.warning, None);
    assert_eq!(r.latency.count, r.ok);
    assert!(r.latency.p50_ns > 0 && r.latency.p50_ns <= r.latency.max_ns);
    // The warm-up's 1000 requests reached the server too, but were not measured.
    assert!(srv.requests() >= 5000, "server saw {}", srv.requests());
}

#[test]
fn achieved_rate_matches_the_asked_rate_http_keepalive_chunked() {
    let _g = serial();
    let srv = server(ServerOpts {
        kind: ServerKind::Http {
            status: 200,
            body_len: 3000,
            chunked: true,
        },
        ..ServerOpts::http()
    });
    let url = format!("http://{}/hello", srv.addr());
    let r = run_one("http", &url, &opts(2000.0, 10, 300, 1500)).unwrap();
    assert_eq!(r.mode, "http");
    assert_eq!(r.request, "GET /hello");
    assert!(
        (r.achieved_rate - 2000.0).abs() <= 0.05 * 2000.0,
        "achieved {}",
        r.achieved_rate
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Keep-alive: the preflight connection plus the 10 persistent ones, nothing more.
    assert_eq!(srv.connections(), 11);
}

#[test]
fn http_content_length_and_error_statuses_are_told_apart() {
    let _g = serial();
    let srv = server(ServerOpts::http());
    let url = format!("http://{}/", srv.addr());
    let r = run_one("http", &url, &opts(500.0, 4, 100, 500)).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.ok, r.scheduled);

    // 4xx and 5xx answers are counted by kind and kept out of the latency histogram.
    for (status, kind) in [(503, ErrorKind::Http5xx), (404, ErrorKind::Http4xx)] {
        let srv = server(ServerOpts {
            kind: ServerKind::Http {
                status,
                body_len: 0,
                chunked: false,
            },
            ..ServerOpts::http()
        });
        let url = format!("http://{}/", srv.addr());
        let r = run_one("err", &url, &opts(500.0, 4, 100, 500)).unwrap();
        assert_eq!(r.ok, 0);
        assert_eq!(r.latency.count, 0);
        assert_eq!(
            r.errors.get(&kind).copied(),
            Some(r.scheduled),
            "{:?}",
            r.errors
        );
        assert!(r
            .warning
            .as_deref()
            .unwrap_or("")
            .contains("requests failed"));
    }

    // A server that answers garbage is counted as bad responses, not as latency.
    let bad = server(ServerOpts::echo()); // echoes the request back: not an HTTP response
    let url = format!("http://{}/", bad.addr());
    let r = run_one("bad", &url, &opts(200.0, 2, 0, 300)).unwrap();
    assert_eq!(r.ok, 0);
    assert!(r.errors.get(&ErrorKind::BadResponse).copied().unwrap_or(0) > 0);
}

#[test]
fn an_injected_2ms_delay_shows_in_the_percentiles() {
    let _g = serial();
    let srv = server(ServerOpts {
        delay: Duration::from_millis(2),
        ..ServerOpts::echo()
    });
    // 10 connections at 100 req/s each: the 2 ms server keeps up.
    let r = run_one(
        "slow",
        &srv.addr().to_string(),
        &opts(1000.0, 10, 200, 1500),
    )
    .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.latency.p50_ns >= 2 * MS, "p50 {} ns", r.latency.p50_ns);
    // Every response waited at least the delay.
    assert!(r.latency.min_ns >= 2 * MS, "min {} ns", r.latency.min_ns);
}

#[test]
fn a_stall_is_charged_to_every_request_scheduled_during_it() {
    let _g = serial();
    // After 600 requests (0.6 s into a 1000 req/s run) the server holds every response 300 ms.
    let srv = server(ServerOpts {
        stall: Some(Stall {
            after_requests: 600,
            duration: Duration::from_millis(300),
        }),
        ..ServerOpts::echo()
    });
    let r = run_one(
        "stall",
        &srv.addr().to_string(),
        &opts(1000.0, 10, 200, 2000),
    )
    .unwrap();
    assert!(srv.stalled(), "the stall never started");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let h = r.histogram.to_histogram().unwrap();
    let slow = h.count_between(100 * MS, h.max());
    // ~300 requests were scheduled during the stall; measured from their intended send time
    // about two thirds of them waited 100 ms or more. Measured from the actual send, only the
    // 10 in flight when it began would have.
    assert!(slow >= 100, "only {slow} requests >= 100 ms");
    assert!(r.latency.p99_ns >= 100 * MS, "p99 {} ns", r.latency.p99_ns);
    assert!(r.latency.max_ns >= 250 * MS, "max {} ns", r.latency.max_ns);
    // Those requests queued behind the stalled ones: visible as send delay too.
    assert!(r.send_delay.max_ns >= 100 * MS);
}

#[test]
fn json_report_round_trips() {
    let _g = serial();
    let srv = server(ServerOpts::echo());
    let mut r = run_one("rt", &srv.addr().to_string(), &opts(500.0, 4, 100, 500)).unwrap();
    // Exercise every field, including the error map and the warning.
    r.errors.insert(ErrorKind::ConnectRefused, 3);
    r.errors.insert(ErrorKind::Http5xx, 1);
    r.warning = Some("achieved \"less\"".into());
    let report = Report::new(vec![r.clone(), r]);
    let text = report.to_json();
    let back = Report::from_json(&text).unwrap();
    assert_eq!(back, report);
    assert_eq!(back.to_json(), text);
    assert!(text.contains("\"connect_refused\": 3"), "{text}");
    // A report in another format is refused with a reason.
    let other = text.replace("\"format\": 1", "\"format\": 99");
    assert!(Report::from_json(&other).unwrap_err().contains("format 99"));
}

#[test]
fn cli_json_output_parses_and_save_matches() {
    let _g = serial();
    let srv = server(ServerOpts::echo());
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("run.json");
    let out = Command::new(BIN)
        .args([
            "run",
            &srv.addr().to_string(),
            "--json",
            "-r",
            "400",
            "-c",
            "4",
        ])
        .args([
            "-d", "500ms", "--warmup", "100ms", "--name", "cli", "--save",
        ])
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = Report::from_json(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(report.runs.len(), 1);
    assert_eq!(report.runs[0].name, "cli");
    assert_eq!(report.runs[0].ok, 200);
    let file = Report::from_json(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(file, report);
}

#[test]
fn an_unreachable_target_is_one_clear_error() {
    let port = dead_port();
    let target = format!("127.0.0.1:{port}");
    match run_one("x", &target, &opts(100.0, 1, 0, 100)) {
        Err(BenchError::Unreachable { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let out = Command::new(BIN)
        .args(["run", &target, "-d", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to"), "{err}");
    assert!(err.contains("refused"), "{err}");

    let out = Command::new(BIN)
        .args(["run", "http://127.0.0.1:1:2/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
}

#[test]
fn a_rate_the_connections_cannot_carry_is_reported_loudly() {
    let _g = serial();
    // 2 connections to a 5 ms server carry at most ~400 req/s; ask for 1000.
    let srv = server(ServerOpts {
        delay: Duration::from_millis(5),
        ..ServerOpts::echo()
    });
    let mut o = opts(1000.0, 2, 0, 1000);
    o.timeout = Duration::from_millis(500);
    let r = run_one("over", &srv.addr().to_string(), &o).unwrap();
    assert!(r.achieved_rate < 600.0, "achieved {}", r.achieved_rate);
    let w = r.warning.as_deref().expect("a warning");
    assert!(w.contains("cannot carry this rate"), "{w}");
    assert!(r.errors.get(&ErrorKind::Unfinished).copied().unwrap_or(0) > 0);
    // The queueing is in the latencies: the last requests waited most of a second.
    assert!(r.latency.max_ns >= 300 * MS, "max {}", r.latency.max_ns);

    let out = Command::new(BIN)
        .args(["run", &srv.addr().to_string(), "-r", "1000", "-c", "1"])
        .args(["-d", "500ms", "--warmup", "0s", "--timeout", "300ms"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("WARNING") && err.contains("req/s for the 1000.0 req/s asked"),
        "{err}"
    );
}

#[test]
fn connect_mode_opens_a_connection_per_request() {
    let _g = serial();
    let srv = server(ServerOpts::echo());
    let mut o = opts(300.0, 4, 100, 500);
    o.mode = Some(Mode::Connect);
    o.linger0 = true;
    let r = run_one("conn", &srv.addr().to_string(), &o).unwrap();
    assert_eq!(r.mode, "connect");
    assert!(r.new_conn);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.ok, r.scheduled);
    // Warm-up 30 + measured 150 requests, each on its own connection, plus the preflight.
    assert!(
        srv.connections() >= 181,
        "{} connections",
        srv.connections()
    );

    // Size 0: the handshake alone.
    o.size = 0;
    let r = run_one("syn", &srv.addr().to_string(), &o).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.ok, r.scheduled);
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    benches::cpu::stat_cpu("/proc/thread-self/stat").unwrap()
}

#[test]
fn a_light_load_does_not_spin_a_core() {
    let _g = serial();
    let srv = server(ServerOpts::echo());
    let before = thread_cpu();
    let t = std::time::Instant::now();
    let r = run_one("idle", &srv.addr().to_string(), &opts(50.0, 2, 0, 1500)).unwrap();
    let wall = t.elapsed().as_secs_f64();
    let cpu = (thread_cpu() - before).as_secs_f64();
    assert_eq!(r.ok, 75);
    // A loop that polled without sleeping would burn the whole wall time.
    assert!(
        cpu < 0.25 * wall,
        "harness used {cpu:.2} s CPU in {wall:.2} s"
    );
}

#[test]
fn compare_interleaves_targets_in_rounds() {
    let _g = serial();
    let fast = server(ServerOpts::echo());
    let slow = server(ServerOpts {
        delay: Duration::from_millis(2),
        ..ServerOpts::echo()
    });
    let targets = vec![
        ("fast".to_string(), fast.addr().to_string()),
        ("slow".to_string(), slow.addr().to_string()),
    ];
    let runs = run_compare(&targets, 2, &opts(500.0, 5, 100, 1000)).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].name.as_str(), runs[1].name.as_str()),
        ("fast", "slow")
    );
    for r in &runs {
        assert_eq!(r.rounds, 2);
        assert_eq!(r.scheduled, 500, "two rounds of 0.5 s at 500 req/s");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    assert!(runs[1].latency.p50_ns >= 2 * MS);
    assert!(runs[1].latency.p50_ns > runs[0].latency.p50_ns);
    // Order of the rounds: fast, slow, fast, slow. Each run opens its connections at its start.
    let f = fast.accept_times();
    let s = slow.accept_times();
    let first_slow = *s.iter().min().unwrap();
    let second_fast = *f
        .iter()
        .filter(|&&t| t > first_slow)
        .min()
        .expect("fast ran again");
    assert!(
        s.iter().any(|&t| t > second_fast),
        "slow did not run a second round"
    );
    let table = format_compare(&runs);
    assert!(table.contains("slow") && table.contains(" x"), "{table}");
}

#[test]
fn plots_one_or_several_runs_as_svg_and_png() {
    let _g = serial();
    let fast = server(ServerOpts::echo());
    let slow = server(ServerOpts {
        delay: Duration::from_millis(1),
        ..ServerOpts::echo()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    for (srv, name, path) in [(&fast, "direct", &a), (&slow, "via-mesh", &b)] {
        let out = Command::new(BIN)
            .args(["run", &srv.addr().to_string(), "-r", "500", "-c", "4"])
            .args(["-d", "600ms", "--warmup", "100ms", "--name", name, "--save"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let svg = dir.path().join("p.svg");
    let png = dir.path().join("p.png");
    for out_path in [&svg, &png] {
        let out = Command::new(BIN)
            .args(["plot", "--title", "two runs", "-o"])
            .arg(out_path)
            .arg(&a)
            .arg(&b)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
    for needle in [
        "direct",
        "via-mesh",
        "two runs",
        "99.9%",
        "percentile",
        "polyline",
    ] {
        assert!(text.contains(needle), "SVG lacks {needle:?}");
    }
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height as asked.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1100);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 650);

    // --plot on a run, and a bad extension is a clear error.
    let out = Command::new(BIN)
        .args(["run", &fast.addr().to_string(), "-r", "200", "-d", "300ms"])
        .args(["--warmup", "0s", "--plot"])
        .arg(dir.path().join("run.txt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains(".svg or .png"));
}

/// A child process killed on drop, also when an assertion fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cpu_of_charges_each_target_with_its_own_processes() {
    let _g = serial();
    let a = server(ServerOpts::echo());
    let b = server(ServerOpts::echo());
    // Stand-ins for the proxies: one that burns a core, one that sleeps.
    let spinner = Child(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap(),
    );
    let sleeper = Child(Command::new("sleep").arg("60").spawn().unwrap());
    let targets = vec![
        ("busy".to_string(), a.addr().to_string()),
        ("idle".to_string(), b.addr().to_string()),
    ];
    let mut o = opts(500.0, 4, 100, 2000);
    o.cpu_of = vec![
        ("busy".into(), vec![spinner.0.id()]),
        ("idle".into(), vec![sleeper.0.id()]),
    ];
    let runs = run_compare(&targets, 2, &o).unwrap();
    let busy = runs[0].cpu.as_ref().expect("busy measured");
    let idle = runs[1].cpu.as_ref().expect("idle measured");
    assert_eq!(busy.pids, [spinner.0.id()]);
    // Two 1 s windows; the spinner shares two cores with the servers and the harness.
    assert!(busy.seconds >= 0.5, "spinner charged {} s", busy.seconds);
    assert!(
        busy.seconds <= 2.2,
        "charged beyond its windows: {} s",
        busy.seconds
    );
    assert!(idle.seconds <= 0.05, "sleeper charged {} s", idle.seconds);
    let per_1k = busy.seconds * 1e6 / runs[0].scheduled as f64;
    assert!((busy.ms_per_1k_requests - per_1k).abs() < 1e-6);
    assert!(format_compare(&runs).contains("busy"));
    // A run without --cpu-of has no CPU figure.
    let plain = run_one("plain", &a.addr().to_string(), &opts(200.0, 2, 0, 200)).unwrap();
    assert!(plain.cpu.is_none());
}

#[test]
fn cpu_of_names_a_run_and_a_live_process() {
    let srv = server(ServerOpts::echo());
    let mut o = opts(100.0, 1, 0, 100);
    o.cpu_of = vec![("typo".into(), vec![std::process::id()])];
    match run_one("real", &srv.addr().to_string(), &o) {
        Err(BenchError::Config(m)) => assert!(m.contains("typo") && m.contains("real"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    o.cpu_of = vec![("real".into(), vec![9_999_999])];
    let e = run_one("real", &srv.addr().to_string(), &o).unwrap_err();
    assert!(e.to_string().contains("9999999"), "{e}");
    let bad = Command::new(BIN)
        .args(["run", &srv.addr().to_string(), "--cpu-of", "x=12,abc"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NAME=PID"));
}
