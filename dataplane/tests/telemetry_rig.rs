//! The golden metrics through a real Prometheus (issue #17, "Real parts"), on the four-namespace
//! rig, kernel backend then AF_XDP: client in xm-cli → gateway A ══ mTLS ══ gateway B →
//! endpoints in xm-srv served by this test.
//!
//! Prometheus (the Debian package) runs in the root namespace on a free loopback port with its
//! own configuration and temporary storage, scraping both gateways every second. A gateway's
//! admin API listens on 127.0.0.1:9901 inside its namespace, which the root namespace cannot
//! reach, so the test forwards a root-namespace loopback port to each (a byte pipe whose
//! upstream socket is made inside the gateway's namespace): the gateways run with the rig's
//! node files unchanged, and their admin API stays on loopback.
//!
//! The operator tools (issue #18) on both backends: `xdpmesh check --admin` in each gateway's
//! namespace, `check --all` on A (gw-b's admin API reached through a port in A's namespace
//! forwarded into B's, the address A's tables give `[[peer]] admin`), `xdpmesh tap --json`
//! and `xdpmesh top` while the canary carries traffic, and A's `GET /connections`.
//!
//! Traffic: a canary split (route `canary` of service `tele`, 75 % to v1, 25 % to v2, whose
//! server answers after 20 ms) and service `pay`, whose two endpoints are balanced round-robin
//! and one of which answers 503 to everything (outlier detection off, so it stays in). Then
//! PromQL, evaluated by Prometheus over a window that covers the measured load:
//! - `sum by (route) (rate(xdpmesh_requests_total[..]))`: non-zero for both routes, and rate ×
//!   window within the extrapolation of what the clients sent;
//! - the canary's share per endpoint equals the share the two servers counted (± 0.05);
//! - `pay`'s success ratio (classification="success" over all) equals the clients' (± 0.05), on
//!   A (outbound) and on B (inbound), and the failing endpoint's series say 503;
//! - `histogram_quantile(0.99, ...)` of the canary is finite, at least 10 ms (v2's 20 ms is a
//!   quarter of the requests) and at most the bucket bound above the slowest answer a client
//!   saw; v2's p50 is at least 10 ms and above v1's;
//! - Prometheus's sum of `xdpmesh_requests_total` equals the gateway's own `/metrics`.
//!
//! And the dashboard `scripts/grafana/xdpmesh.json`: every metric name in its PromQL has
//! samples on a live gateway's `/metrics` (the AF_XDP-only drop families on the AF_XDP
//! backend), every query parses in Prometheus, and every query without a `> 0` filter
//! returns series. Needs root; under CI=true it must run. The rig's namespaces are fixed: one
//! test, one backend after the other.

mod common;

use common::{admin_get, metric_in, put_tables, rig, RigGuard};
use dataplane::netns::{skip_unless_root, NetNs};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Canary v1 and v2 (v2 answers after [`V2_DELAY`]).
const V1: u16 = 8301;
const V2: u16 = 8302;
/// Service `pay`: one endpoint answers 200, the other 503.
const PAY_OK: u16 = 8303;
const PAY_FAIL: u16 = 8304;
/// The rig's echo service (A's TCP listener 10.10.1.1:5001).
const ECHO: u16 = 5001;
const PORTS: [u16; 5] = [V1, V2, PAY_OK, PAY_FAIL, ECHO];
const V2_DELAY: Duration = Duration::from_millis(20);

/// The histogram's bucket bounds in seconds (mesh::golden::BUCKETS_US).
const BOUNDS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Families only the AF_XDP backend exports (its stacks, rings and steering program).
const AFXDP_ONLY: [&str; 4] = [
    "xdpmesh_tcp_drops_total",
    "xdpmesh_ring_drops_total",
    "xdpmesh_steer_frames_total",
    "xdpmesh_worker_handoff_dropped_total",
];

const DASHBOARD: &str = include_str!("../../scripts/grafana/xdpmesh.json");

// ---------------------------------------------------------------------------------------
// Servers in xm-srv.

/// The endpoints: HTTP/1.1 keep-alive servers (and the echo service), each counting its
/// requests. Stopped and joined on drop.
struct Servers {
    counts: Arc<[AtomicU64; 5]>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(srv: &NetNs) -> Servers {
        let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, port) in PORTS.into_iter().enumerate() {
            let l = srv.run(|| TcpListener::bind(("10.10.3.2", port)).expect("bind"));
            l.set_nonblocking(true).unwrap();
            let (counts, stop) = (counts.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((c, _)) => {
                            c.set_nonblocking(false).unwrap();
                            let (counts, stop) = (counts.clone(), stop.clone());
                            conns.push(std::thread::spawn(move || {
                                if port == ECHO {
                                    echo(c, &stop)
                                } else {
                                    serve(c, port, &counts[i], &stop)
                                }
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        Servers {
            counts,
            stop,
            threads,
        }
    }

    fn count(&self, port: u16) -> u64 {
        let i = PORTS.iter().position(|p| *p == port).unwrap();
        self.counts[i].load(Ordering::SeqCst)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn serve(c: TcpStream, port: u16, count: &AtomicU64, stop: &AtomicBool) {
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => continue,
            Err(_) => return,
        }
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let resp: &[u8] = match port {
            PAY_FAIL => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nfail",
            V2 => {
                std::thread::sleep(V2_DELAY);
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv2"
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        if w.write_all(resp).is_err() {
            return;
        }
    }
}

fn echo(mut c: TcpStream, stop: &AtomicBool) {
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if is_timeout(&e) => continue,
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The bridge to the admin APIs and Prometheus.

/// A root-namespace loopback port forwarded to 127.0.0.1:9901 inside a gateway's namespace:
/// each accepted connection gets an upstream connection made inside that namespace, and bytes
/// are copied both ways. Stopped on drop: its sockets are shut down and its threads joined.
struct Forward {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    fn start(ns: &'static str) -> Forward {
        Forward::from(
            TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"),
            ns,
        )
    }

    /// A loopback port inside namespace `from` forwarded to `ns`'s admin API: what an
    /// operator's management network gives `xdpmesh check --all` between gateways.
    fn between(from: &'static str, ns: &'static str) -> Forward {
        let l = NetNs::existing(from)
            .unwrap()
            .try_run(|| TcpListener::bind("127.0.0.1:0"))
            .expect("enter the namespace")
            .expect("bind a loopback port in it");
        Forward::from(l, ns)
    }

    fn from(l: TcpListener, ns: &'static str) -> Forward {
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let ns = NetNs::existing(ns).expect("gateway namespace");
            let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
            let (mut socks, mut pipes) = (Vec::new(), Vec::new());
            while !stop2.load(Ordering::SeqCst) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let up = ns.try_run(|| TcpStream::connect_timeout(&admin, Duration::from_secs(2)));
                // No gateway yet: closing the connection makes Prometheus see the target down.
                let Ok(Ok(up)) = up else { continue };
                let _ = down.set_nonblocking(false);
                for s in [&down, &up] {
                    if let Ok(s) = s.try_clone() {
                        socks.push(s);
                    }
                }
                let (d2, u2) = (down.try_clone(), up.try_clone());
                pipes.push(std::thread::spawn(move || pipe(down, up)));
                if let (Ok(d2), Ok(u2)) = (d2, u2) {
                    pipes.push(std::thread::spawn(move || pipe(u2, d2)));
                }
            }
            for s in &socks {
                let _ = s.shutdown(Shutdown::Both);
            }
            for p in pipes {
                let _ = p.join();
            }
        });
        Forward {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process killed and reaped on drop, unless its output was taken.
struct Reaped(Option<Child>);

impl Reaped {
    /// Waits for it (tap and top end by themselves: a limit, `--seconds`, `--iterations`).
    fn output(mut self) -> std::process::Output {
        let child = self.0.take().expect("a child");
        child.wait_with_output().expect("wait for the child")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An instant vector: each series' labels and value.
type Series = Vec<(BTreeMap<String, String>, f64)>;

/// A Prometheus server with its own configuration and storage in a temporary directory,
/// scraping every second; killed and reaped on drop (the directory goes with it).
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes each `(gateway label, local port)`.
    fn start(targets: &[(&str, u16)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut conf = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: xdpmesh\n    static_configs:\n",
        );
        for (label, port) in targets {
            conf.push_str(&format!(
                "      - targets: [\"127.0.0.1:{port}\"]\n        labels: {{ gateway: \"{label}\" }}\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), conf).unwrap();
        for _ in 0..3 {
            // A free port now; another process may take it before Prometheus does: try again.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus (Debian package prometheus; scripts/lib/deps.sh)");
            let url = format!("http://127.0.0.1:{port}");
            let ready = poll(Duration::from_secs(30), Duration::from_millis(100), || {
                if child.try_wait().ok().flatten().is_some() {
                    return Some(false);
                }
                curl(&[&format!("{url}/-/ready")])
                    .ok()
                    .map(|_| true)
                    .filter(|r| *r)
            });
            if ready == Some(true) {
                return Prometheus { child, url, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "prometheus did not become ready: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
    }

    /// An instant query at `at` (Unix seconds): each series' labels and value, or
    /// Prometheus's error (a query that does not parse, ...).
    fn query(&self, q: &str, at: f64) -> Result<Series, String> {
        let body = curl(&[
            "-G",
            "--data-urlencode",
            &format!("query={q}"),
            "--data-urlencode",
            &format!("time={at:.3}"),
            &format!("{}/api/v1/query", self.url),
        ])?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        let data = &v["data"];
        let one = |value: &Value| -> f64 {
            match value[1].as_str().unwrap_or("NaN") {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                s => s.parse().unwrap_or(f64::NAN),
            }
        };
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let labels = r["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect();
                    (labels, one(&r["value"]))
                })
                .collect()),
            Some("scalar") => Ok(vec![(BTreeMap::new(), one(&data["result"]))]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    /// The value of a query that yields one series (`None` when it yields none).
    fn value(&self, q: &str, at: f64) -> Option<f64> {
        let r = self.query(q, at).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(r.len() <= 1, "{q}: more than one series: {r:?}");
        r.first().map(|(_, v)| *v)
    }

    /// The values of a query, by the value of `label`.
    fn by(&self, q: &str, label: &str, at: f64) -> BTreeMap<String, f64> {
        self.query(q, at)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .into_iter()
            .map(|(l, v)| (l.get(label).cloned().unwrap_or_default(), v))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "prometheus log ({}):\n{}",
                self.dir.path().display(),
                std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
            );
        }
    }
}

/// `curl -sS --max-time 5 ARGS` in the root namespace: its stdout, or why it failed.
fn curl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes (then `None`).
fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// Clients in xm-cli.

/// A keep-alive client connection to gateway A's HTTP listener.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect() -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from(([10, 10, 1, 1], 80)),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// One request; its status and whether the connection is closing.
    fn ask(&mut self, req: &[u8]) -> std::io::Result<(u16, bool)> {
        self.w.write_all(req)?;
        let (mut status, mut len, mut close) = (0u16, 0usize, false);
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if status == 0 {
                status = l
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if l.is_empty() {
                break;
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok((status, close))
    }
}

const TELE: &[u8] = b"GET /canary HTTP/1.1\r\nHost: tele.rig.mesh\r\n\r\n";
const PAY: &[u8] = b"GET /pay HTTP/1.1\r\nHost: pay.rig.mesh\r\n\r\n";

/// `rate` requests a second for `secs` over `conns` keep-alive connections from xm-cli, each
/// on its own schedule; every answer's status (0: failed at the transport) and latency.
fn load(rate: u32, secs: f64, conns: usize, req: &'static [u8]) -> Vec<(u16, Duration)> {
    let cli = NetNs::existing("xm-cli").unwrap();
    let per_conn = Duration::from_secs_f64(conns as f64 / f64::from(rate));
    let count = (f64::from(rate) * secs / conns as f64).round() as usize;
    cli.run(move || {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..conns)
                .map(|k| {
                    sc.spawn(move || {
                        let start = Instant::now() + per_conn.mul_f64(k as f64 / conns as f64);
                        let mut c = Client::connect().ok();
                        let mut seen = Vec::with_capacity(count);
                        for i in 0..count {
                            let at = start + per_conn * i as u32;
                            if let Some(d) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(d);
                            }
                            let t = Instant::now();
                            if c.is_none() {
                                c = Client::connect().ok();
                            }
                            let status = match c.as_mut().map(|c| c.ask(req)) {
                                Some(Ok((s, close))) => {
                                    if close {
                                        c = None;
                                    }
                                    s
                                }
                                _ => {
                                    c = None;
                                    0
                                }
                            };
                            seen.push((status, t.elapsed()));
                        }
                        seen
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("load thread"))
                .collect()
        })
    })
}

/// One echo round trip through A's TCP listener, then a clean close.
fn echo_once(cli: &NetNs) -> bool {
    cli.run(|| {
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from(([10, 10, 1, 1], ECHO)),
            Duration::from_secs(5),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut got = [0u8; 9];
        let ok = s.write_all(b"telemetry").is_ok()
            && s.read_exact(&mut got).is_ok()
            && &got == b"telemetry";
        let _ = s.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        ok
    })
}

// ---------------------------------------------------------------------------------------
// Tables.

fn a_tables() -> String {
    format!(
        r#"{base}
[[service]]
name = "tele"
hosts = ["tele.rig.mesh"]
endpoints = [
  {{ address = "10.10.3.2:{V1}", via = "gw-b", labels = {{ version = "v1" }} }},
  {{ address = "10.10.3.2:{V2}", via = "gw-b", labels = {{ version = "v2" }} }},
]

[[service]]
name = "pay"
hosts = ["pay.rig.mesh"]
endpoints = [
  {{ address = "10.10.3.2:{PAY_OK}", via = "gw-b" }},
  {{ address = "10.10.3.2:{PAY_FAIL}", via = "gw-b" }},
]
outlier = {{ enabled = false }}

[[route]]
name = "canary"
service = "tele"
backends = [{{ labels = {{ version = "v1" }}, weight = 75 }}, {{ labels = {{ version = "v2" }}, weight = 25 }}]

[[route]]
name = "pay"
service = "pay"
"#,
        base = include_str!("../../scripts/rig/gwa-tables.toml"),
    )
}

fn b_tables() -> String {
    format!(
        r#"{base}
[[service]]
name = "tele"
endpoints = [{{ address = "10.10.3.2:{V1}" }}, {{ address = "10.10.3.2:{V2}" }}]

[[service]]
name = "pay"
endpoints = [{{ address = "10.10.3.2:{PAY_OK}" }}, {{ address = "10.10.3.2:{PAY_FAIL}" }}]
outlier = {{ enabled = false }}

[[authorization]]
service = "tele"
allow = ["spiffe://rig.mesh/sa/client"]

[[authorization]]
service = "pay"
allow = ["spiffe://rig.mesh/sa/client"]
"#,
        base = include_str!("../../scripts/rig/gwb-tables.toml"),
    )
}

// ---------------------------------------------------------------------------------------
// The checks.

/// Failed checks, collected so that one run reports all of them.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, backend: &str, ok: bool, what: String) {
        println!("[{backend}] {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.0.push(format!("[{backend}] {what}"));
        }
    }
}

/// Waits until Prometheus's sum of `xdpmesh_requests_total` from `gateway` equals what the
/// gateway's own `/metrics` says (the scrape has caught up); returns when, in Unix seconds.
fn caught_up(p: &Prometheus, ns: &NetNs, gateway: &str) -> f64 {
    let q = format!("sum(xdpmesh_requests_total{{gateway=\"{gateway}\"}})");
    let mut last = (0, None);
    poll(Duration::from_secs(15), Duration::from_millis(200), || {
        let own = metric_in(&admin_get(ns, "/metrics"), "xdpmesh_requests_total", "");
        let at = unix_now();
        let seen = p.query(&q, at).ok()?.first().map(|(_, v)| *v);
        last = (own, seen);
        (seen == Some(own as f64)).then_some(at)
    })
    .unwrap_or_else(|| {
        panic!(
            "Prometheus never caught up with {gateway}: /metrics says {}, Prometheus {:?}",
            last.0, last.1
        )
    })
}

/// The smallest bucket bound at or above `s` seconds (+Inf above 10 s).
fn bound_above(s: f64) -> f64 {
    BOUNDS
        .iter()
        .copied()
        .find(|b| *b >= s)
        .unwrap_or(f64::INFINITY)
}

fn endpoint(port: u16) -> String {
    format!("10.10.3.2:{port}")
}

fn run_backend(backend: &str, work: &Path, findings: &mut Findings) {
    println!("==== backend {backend}");
    let t = Instant::now();
    let state = work.join(format!("state-{backend}"));
    let (cli, gwa, gwb) = (
        NetNs::existing("xm-cli").unwrap(),
        NetNs::existing("xm-gwa").unwrap(),
        NetNs::existing("xm-gwb").unwrap(),
    );
    let servers = Servers::start(&NetNs::existing("xm-srv").unwrap());
    let (fa, fb) = (Forward::start("xm-gwa"), Forward::start("xm-gwb"));
    let ab = Forward::between("xm-gwa", "xm-gwb");
    let prom = Prometheus::start(&[("gw-a", fa.port), ("gw-b", fb.port)]);
    rig(&["mesh", "--backend", backend], &state);
    put_tables(&gwb, &b_tables(), &state, "telemetry-gwb-tables.toml");
    // gw-b's admin API, for `check --all` on A.
    let a_text = a_tables().replacen(
        "name = \"gw-b\"\n",
        &format!("name = \"gw-b\"\nadmin = \"127.0.0.1:{}\"\n", ab.port),
        1,
    );
    assert!(
        a_text.contains("admin = "),
        "A's tables name gw-b's admin API"
    );
    put_tables(&gwa, &a_text, &state, "telemetry-gwa-tables.toml");

    // Warm-up: every series exists before the measured load (a rate needs a sample before).
    let up = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let tele = load(50, 0.2, 1, TELE);
        (tele.iter().all(|(s, _)| *s == 200) && servers.count(V1) > 0 && servers.count(V2) > 0)
            .then_some(())
    });
    assert!(up.is_some(), "tele is not served through the mesh");
    let pay = load(20, 0.2, 1, PAY);
    assert!(
        pay.iter().any(|(s, _)| *s == 200) && pay.iter().any(|(s, _)| *s == 503),
        "pay warm-up: {pay:?}"
    );
    assert!(echo_once(&cli), "echo through A's TCP listener");
    // `xdpmesh check --admin` (issue #18) from inside each gateway's namespace: all well,
    // and A proves B by an mTLS handshake.
    for (ns, name) in [(&gwa, "gw-a"), (&gwb, "gw-b")] {
        let out = ns
            .command(env!("CARGO_BIN_EXE_xdpmesh"))
            .args(["check", "--admin", "127.0.0.1:9901"])
            .output()
            .expect("xdpmesh check");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        println!("[{backend}] xdpmesh check --admin on {name}:\n{text}");
        findings.check(
            backend,
            out.status.success() && text.contains("0 errors"),
            format!("xdpmesh check --admin on {name} finds no error"),
        );
        if name == "gw-a" {
            findings.check(
                backend,
                text.contains("peer gw-b at 10.10.2.2:15443 proves spiffe://"),
                "check proves gw-b's SPIFFE ID by an mTLS handshake".into(),
            );
        }
    }
    // `xdpmesh check --all` on A: A, then gw-b through the admin address A's tables give it.
    let out = gwa
        .command(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["check", "--admin", "127.0.0.1:9901", "--all"])
        .output()
        .expect("xdpmesh check --all");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("[{backend}] xdpmesh check --all on gw-a:\n{text}");
    let headings: Vec<&str> = text.lines().filter(|l| l.starts_with("== ")).collect();
    findings.check(
        backend,
        out.status.success()
            && text.contains("0 errors")
            && headings
                == [
                    "== gateway at 127.0.0.1:9901",
                    &format!("== peer gw-b, admin API at 127.0.0.1:{}", ab.port),
                ]
            && text.matches("ok    ready").count() == 2,
        "xdpmesh check --all checks A and then gw-b, both ready, no error".into(),
    );
    drop(ab);
    // `xdpmesh tap` and `top` (issue #18) in A's namespace while the canary carries traffic.
    let spawn = |args: &[&str]| {
        Reaped(Some(
            gwa.command(env!("CARGO_BIN_EXE_xdpmesh"))
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn xdpmesh tap/top"),
        ))
    };
    let tap = spawn(&[
        "tap",
        "--json",
        "--limit",
        "5",
        "--route",
        "canary",
        "--seconds",
        "20",
    ]);
    let top = spawn(&["top", "--iterations", "2", "--interval", "1s"]);
    let t_load = Instant::now();
    let mut tele_sent = 0;
    while t_load.elapsed() < Duration::from_secs(3) {
        tele_sent += load(50, 0.2, 1, TELE).len();
    }
    let (tap, top) = (tap.output(), top.output());
    let tapped: Vec<Value> = String::from_utf8_lossy(&tap.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let top_text = String::from_utf8_lossy(&top.stdout).to_string();
    println!(
        "[{backend}] xdpmesh tap --json --limit 5 --route canary ({tele_sent} sent): {:?}\n\
         xdpmesh top, 2 frames:\n{top_text}",
        tapped
            .iter()
            .map(|l| format!(
                "{} {} {} {}",
                l["type"], l["route"], l["status"], l["endpoint"]
            ))
            .collect::<Vec<_>>()
    );
    findings.check(
        backend,
        tap.status.success()
            && tapped.len() == 6
            && tapped[..5]
                .iter()
                .all(|l| l["route"] == "canary" && l["status"] == 200 && l["service"] == "tele")
            && tapped[5]["reason"] == "limit",
        "xdpmesh tap streams 5 canary requests with status 200, then its end (limit)".into(),
    );
    findings.check(
        backend,
        top.status.success()
            && top_text.matches("SERVICE").count() == 2
            && top_text.lines().any(|l| l.starts_with("tele ")),
        "xdpmesh top draws two frames with the tele service's row".into(),
    );
    // HTTP/2 clients (issue #19) on A's `web` listener, next to HTTP/1.1: curl with prior
    // knowledge, and h2load's 2 connections × 16 streams through the pair.
    let h2_before = metric_in(&admin_get(&gwa, "/metrics"), "xdpmesh_h2_streams_total", "");
    let out = cli
        .command("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "--resolve",
            "tele.rig.mesh:80:10.10.1.1",
            "-w",
            " %{http_code} %{http_version}",
            "http://tele.rig.mesh/canary",
        ])
        .output()
        .expect("curl");
    let curl_h2 = String::from_utf8_lossy(&out.stdout).to_string();
    let out = cli
        .command("h2load")
        .args([
            "-n",
            "320",
            "-c",
            "2",
            "-m",
            "16",
            "-H",
            ":authority: tele.rig.mesh",
        ])
        .arg("http://10.10.1.1/canary")
        .output()
        .expect("h2load (Debian nghttp2-client)");
    let h2load = String::from_utf8_lossy(&out.stdout).to_string();
    let h2_streams =
        metric_in(&admin_get(&gwa, "/metrics"), "xdpmesh_h2_streams_total", "") - h2_before;
    println!(
        "[{backend}] curl --http2-prior-knowledge: {curl_h2:?}; h2load: {:?}; {h2_streams} streams on A",
        h2load
            .lines()
            .filter(|l| l.starts_with("requests:") || l.starts_with("status codes:"))
            .collect::<Vec<_>>()
    );
    findings.check(
        backend,
        curl_h2.ends_with(" 200 2")
            && h2load.contains("requests: 320 total, 320 started, 320 done, 320 succeeded")
            && h2load.contains("status codes: 320 2xx")
            && h2_streams >= 321,
        "HTTP/2 with prior knowledge through the pair: curl gets 200 over h2, h2load's 320 \
         multiplexed requests all 2xx"
            .into(),
    );
    // `GET /connections` (issue #18): A's pooled hops to B, with the transport's view.
    let conns = gwa
        .exec_ok(["curl", "-s", "http://127.0.0.1:9901/connections"])
        .unwrap_or_default();
    let conns: Value = serde_json::from_str(&conns).unwrap_or(Value::Null);
    let hops: Vec<&Value> = conns["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["connections"].as_array().into_iter().flatten())
        .filter(|c| c["remote"] == "10.10.2.2:15443")
        .collect();
    findings.check(
        backend,
        // Some hop is established and has an RTT sample (one closing or just opened may
        // have neither at the moment of the request).
        hops.iter()
            .any(|c| c["tcp_state"] == "established" && c["rtt_us"].as_u64().is_some()),
        format!(
            "/connections on gw-a lists its hops to gw-b with state and RTT ({} hops: {:?})",
            hops.len(),
            hops.iter()
                .map(|c| (c["tcp_state"].clone(), c["rtt_us"].clone()))
                .collect::<Vec<_>>()
        ),
    );
    caught_up(&prom, &gwa, "gw-a");
    let base = caught_up(&prom, &gwb, "gw-b");
    let before = (servers.count(V1), servers.count(V2));

    // The measured load: the canary at 120/s and pay at 60/s for 5 s, at the same time.
    let secs = 5.0;
    let (tele, pay) = std::thread::scope(|s| {
        let tele = s.spawn(|| load(120, secs, 4, TELE));
        let pay = s.spawn(|| load(60, secs, 2, PAY));
        (tele.join().unwrap(), pay.join().unwrap())
    });
    caught_up(&prom, &gwb, "gw-b");
    let end = caught_up(&prom, &gwa, "gw-a");
    let w = (end - base).ceil() as u64 + 2;
    let (v1, v2) = (servers.count(V1) - before.0, servers.count(V2) - before.1);
    let tele_ok = tele.iter().filter(|(s, _)| *s == 200).count();
    let pay_ok = pay.iter().filter(|(s, _)| *s == 200).count();
    let pay_503 = pay.iter().filter(|(s, _)| *s == 503).count();
    let slowest = tele.iter().map(|(_, l)| *l).max().unwrap_or_default();
    println!(
        "[{backend}] load: tele {} requests ({tele_ok} ok; servers v1 {v1}, v2 {v2}, slowest \
         {slowest:?}), pay {} ({pay_ok} ok, {pay_503} 503); window {w} s",
        tele.len(),
        pay.len()
    );
    findings.check(
        backend,
        tele_ok == tele.len(),
        format!(
            "every canary request answered 200 ({tele_ok} of {})",
            tele.len()
        ),
    );

    // 1. The per-route request rate.
    let routes = prom.by(
        &format!(
            "sum by (route) (rate(xdpmesh_requests_total{{gateway=\"gw-a\",direction=\"outbound\"}}[{w}s]))"
        ),
        "route",
        end,
    );
    for (route, sent) in [("canary", tele.len()), ("pay", pay.len())] {
        let rate = routes.get(route).copied().unwrap_or(0.0);
        let est = rate * w as f64;
        findings.check(
            backend,
            rate > 0.0 && est > 0.7 * sent as f64 && est < 1.5 * sent as f64,
            format!(
                "route {route}: rate {rate:.2}/s over {w} s ≈ {est:.0} requests; clients sent {sent}"
            ),
        );
    }
    let inbound = prom.by(
        &format!(
            "sum by (service) (rate(xdpmesh_requests_total{{gateway=\"gw-b\",direction=\"inbound\"}}[{w}s]))"
        ),
        "service",
        end,
    );
    findings.check(
        backend,
        inbound.get("tele").is_some_and(|r| *r > 0.0)
            && inbound.get("pay").is_some_and(|r| *r > 0.0),
        format!("B's inbound rate by service: {inbound:?}"),
    );

    // 2. The canary's split per endpoint, against what the servers counted.
    let split = prom.by(
        &format!(
            "sum by (endpoint) (rate(xdpmesh_requests_total{{gateway=\"gw-a\",route=\"canary\"}}[{w}s]))"
        ),
        "endpoint",
        end,
    );
    let (r1, r2) = (
        split.get(&endpoint(V1)).copied().unwrap_or(0.0),
        split.get(&endpoint(V2)).copied().unwrap_or(0.0),
    );
    let prom_share = r2 / (r1 + r2);
    let server_share = v2 as f64 / (v1 + v2).max(1) as f64;
    findings.check(
        backend,
        (prom_share - server_share).abs() <= 0.05,
        format!(
            "canary v2 share: Prometheus {prom_share:.3} (v1 {r1:.1}/s, v2 {r2:.1}/s), servers \
             {server_share:.3} ({v1} / {v2})"
        ),
    );

    // 3. The success ratio of pay, on both gateways.
    let client_ratio = pay_ok as f64 / pay.len().max(1) as f64;
    for (gw, dir) in [("gw-a", "outbound"), ("gw-b", "inbound")] {
        let sel = format!("gateway=\"{gw}\",direction=\"{dir}\",service=\"pay\"");
        let q = format!(
            "sum(rate(xdpmesh_requests_total{{{sel},classification=\"success\"}}[{w}s])) / \
             sum(rate(xdpmesh_requests_total{{{sel}}}[{w}s]))"
        );
        let ratio = prom.value(&q, end).unwrap_or(f64::NAN);
        findings.check(
            backend,
            (ratio - client_ratio).abs() <= 0.05,
            format!("pay success ratio on {gw}: Prometheus {ratio:.3}, clients {client_ratio:.3}"),
        );
    }
    let failing = prom.query(
        &format!(
            "sum by (endpoint, code) (rate(xdpmesh_requests_total{{gateway=\"gw-a\",service=\"pay\"}}[{w}s]))"
        ),
        end,
    );
    let failing = failing.unwrap_or_default();
    let codes = |port: u16| -> BTreeSet<String> {
        failing
            .iter()
            .filter(|(l, v)| l.get("endpoint") == Some(&endpoint(port)) && *v > 0.0)
            .map(|(l, _)| l.get("code").cloned().unwrap_or_default())
            .collect()
    };
    findings.check(
        backend,
        codes(PAY_FAIL) == BTreeSet::from(["503".to_owned()])
            && codes(PAY_OK) == BTreeSet::from(["200".to_owned()]),
        format!(
            "pay's codes by endpoint: failing {:?}, healthy {:?}",
            codes(PAY_FAIL),
            codes(PAY_OK)
        ),
    );

    // 4. Latency from the histogram.
    let p99 = prom
        .value(
            &format!(
                "histogram_quantile(0.99, sum by (le) (rate(xdpmesh_request_duration_seconds_bucket{{gateway=\"gw-a\",route=\"canary\"}}[{w}s])))"
            ),
            end,
        )
        .unwrap_or(f64::NAN);
    let ceiling = bound_above(slowest.as_secs_f64());
    findings.check(
        backend,
        p99.is_finite() && p99 >= 0.01 && p99 <= ceiling,
        format!(
            "canary p99 {:.2} ms: finite, ≥ 10 ms (v2 waits {V2_DELAY:?}), ≤ {:.0} ms (the bound \
             above the slowest answer, {:.2} ms)",
            p99 * 1e3,
            ceiling * 1e3,
            slowest.as_secs_f64() * 1e3
        ),
    );
    let p50 = prom.by(
        &format!(
            "histogram_quantile(0.5, sum by (endpoint, le) (rate(xdpmesh_request_duration_seconds_bucket{{gateway=\"gw-a\",route=\"canary\"}}[{w}s])))"
        ),
        "endpoint",
        end,
    );
    let (p50_v1, p50_v2) = (
        p50.get(&endpoint(V1)).copied().unwrap_or(f64::NAN),
        p50.get(&endpoint(V2)).copied().unwrap_or(f64::NAN),
    );
    findings.check(
        backend,
        p50_v2 >= 0.01 && p50_v1 < p50_v2,
        format!(
            "canary p50: v1 {:.2} ms < v2 {:.2} ms (≥ 10 ms)",
            p50_v1 * 1e3,
            p50_v2 * 1e3
        ),
    );

    // 5. The dashboard.
    dashboard(backend, &prom, &[&gwa, &gwb], end, w, findings);

    drop(prom);
    drop((fa, fb));
    drop(servers);
    rig(&["stop"], &state);
    println!(
        "==== backend {backend} done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Every PromQL expression of the dashboard (panels, rows' panels) and its variables' queries.
fn dashboard_queries() -> (Vec<String>, Vec<String>) {
    let d: Value = serde_json::from_str(DASHBOARD).expect("scripts/grafana/xdpmesh.json is JSON");
    let mut exprs = Vec::new();
    fn walk(panels: &Value, exprs: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    exprs.push(e.to_owned());
                }
            }
            walk(&p["panels"], exprs);
        }
    }
    walk(&d["panels"], &mut exprs);
    let vars = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();
    (exprs, vars)
}

/// The metric names in a PromQL expression: identifiers starting `xdpmesh_` or `process_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(off) = expr[i..].find(ident) {
        let start = i + off;
        let end = expr[start..]
            .find(|c: char| !ident(c))
            .map_or(expr.len(), |n| start + n);
        let word = &expr[start..end];
        // Not inside a label value ("...") and not a variable ($...).
        let quoted = expr[..start].matches('"').count() % 2 == 1;
        let variable = expr[..start].ends_with('$');
        if !quoted && !variable && (word.starts_with("xdpmesh_") || word.starts_with("process_")) {
            out.insert(word.to_owned());
        }
        i = end;
    }
    out
}

#[test]
fn metric_names_are_found_in_promql() {
    let got = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(xdpmesh_request_duration_seconds_bucket{service=~\"$service\",x=\"xdpmesh_no\"}[$__rate_interval]))) / process_open_fds",
    );
    assert_eq!(
        got,
        BTreeSet::from([
            "xdpmesh_request_duration_seconds_bucket".to_owned(),
            "process_open_fds".to_owned()
        ])
    );
    let (exprs, vars) = dashboard_queries();
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    assert!(!vars.is_empty());
}

/// Checks the dashboard against the live gateways and Prometheus (see the module doc).
fn dashboard(
    backend: &str,
    prom: &Prometheus,
    gws: &[&NetNs],
    at: f64,
    w: u64,
    findings: &mut Findings,
) {
    let (exprs, vars) = dashboard_queries();
    let texts: Vec<String> = gws.iter().map(|g| admin_get(g, "/metrics")).collect();
    let has_samples = |name: &str| {
        texts.iter().any(|t| {
            t.lines().any(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
        })
    };
    let afxdp_only = |e: &str| AFXDP_ONLY.iter().any(|n| e.contains(n));
    let names: BTreeSet<String> = exprs
        .iter()
        .chain(&vars)
        .flat_map(|e| metric_names(e))
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !has_samples(n) && (backend != "kernel" || !afxdp_only(n)))
        .collect();
    findings.check(
        backend,
        missing.is_empty() && !names.is_empty(),
        format!(
            "dashboard: {} metric names, all with samples on the gateways' /metrics; missing: {missing:?}",
            names.len()
        ),
    );
    let mut bad = Vec::new();
    let mut empty = Vec::new();
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", &format!("{w}s"))
            .replace("$__interval", "1s")
            .replace("$instance", ".*")
            .replace("$direction", ".*")
            .replace("$service", ".*");
        match prom.query(&q, at) {
            Err(err) => bad.push(format!("{q}: {err}")),
            Ok(r)
                if r.is_empty()
                    && !q.contains("> 0")
                    && !(backend == "kernel" && afxdp_only(&q)) =>
            {
                empty.push(q)
            }
            Ok(_) => {}
        }
    }
    for v in &vars {
        // label_values(metric, label): the label's values among the metric's series.
        let inner = v
            .trim()
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.rsplit_once(','));
        match inner {
            Some((m, label)) => match prom.query(&format!("count by ({}) ({m})", label.trim()), at)
            {
                Err(err) => bad.push(format!("{v}: {err}")),
                Ok(r) if r.is_empty() => empty.push(v.clone()),
                Ok(_) => {}
            },
            None => bad.push(format!("{v}: not label_values(metric, label)")),
        }
    }
    findings.check(
        backend,
        bad.is_empty(),
        format!(
            "dashboard: {} queries parse in Prometheus; bad: {bad:#?}",
            exprs.len() + vars.len()
        ),
    );
    findings.check(
        backend,
        empty.is_empty(),
        format!("dashboard: queries without `> 0` return series; empty: {empty:#?}"),
    );
}

#[test]
fn golden_metrics_through_prometheus_on_the_rig_with_both_backends() {
    if skip_unless_root("golden_metrics_through_prometheus_on_the_rig_with_both_backends") {
        return;
    }
    let work = std::env::temp_dir().join(format!("xdpmesh-telemetry-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let _rig = RigGuard {
        work: work.to_owned(),
    };
    rig(&["up"], &work);
    let t = Instant::now();
    let mut findings = Findings::default();
    for backend in ["kernel", "afxdp"] {
        run_backend(backend, &work, &mut findings);
    }
    println!("both backends in {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        findings.0.is_empty(),
        "{} failed:\n{}",
        findings.0.len(),
        findings.0.join("\n")
    );
}
