//! A route's request policies on the four-namespace rig, for both backends: client in xm-cli
//! → gateway A (which applies them) ══ mTLS ══ gateway B → three endpoints of one service in
//! xm-srv, served by this test, one of which fails on purpose.
//!
//! Checks: with retries, 20 s of GETs at 500 req/s succeed ≥ 99.9 % while one endpoint answers
//! 503 to 30 % of its requests, and A's retry counter equals the extra requests the servers
//! saw; POSTs are not retried (their 503s reach the client); with every endpoint failing, the
//! retry budget holds upstream requests to (1 + ratio) × client requests + min_per_second × time;
//! a 10 % abort gives 10 ± 2 % injected 503s that no server saw; a 100 ms delay on 60 % of the
//! requests carrying a header moves their p50 by ~100 ms and not their p25, and leaves other
//! requests alone (on 50 %: half are held, the p25 stays and the p75 moves); a mirror sends
//! one copy of each request to its shadow service, whose 503s never reach a client, and a
//! shadow with nothing listening costs the clients nothing; a 500/s rate limit (burst 100) offered 1,000/s for 10 s accepts 500/s ± 5 %
//! and answers 429 to the rest; a reload that turns retries off and on under load changes the
//! responses (`x-xdpmesh-attempts`) with no failed request. Needs root; under CI=true it must
//! run. The rig's namespaces are fixed: one test, one backend after the other.

use dataplane::netns::{skip_unless_root, wait_for, NetNs};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rig(args: &[&str], state: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/rig.sh"))
        .args(args)
        .env("XM_RIG_STATE", state)
        .env("XDPMESH_BIN", env!("CARGO_BIN_EXE_xdpmesh"))
        .current_dir(repo())
        .output()
        .expect("run rig.sh");
    assert!(
        out.status.success(),
        "rig.sh {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rig.sh down` on drop, panics included: every process left in the rig's namespaces is
/// stopped and the namespaces removed.
struct RigGuard {
    work: PathBuf,
}

impl Drop for RigGuard {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/rig.sh"))
            .arg("down")
            .env("XM_RIG_STATE", &self.work)
            .current_dir(repo())
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("rig.sh down after the test failed: {out:?}");
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

const PORTS: [u16; 3] = [8101, 8102, 8103];
/// The mirror service's one endpoint (service `polshadow`), served beside the three.
const SHADOW_PORT: u16 = 8104;
const OK_MODE: u8 = 0;
/// Every tenth request: 3 of them answer 503 (30 %).
const FLAKY: u8 = 1;
const DOWN: u8 = 2;

/// One endpoint's behaviour and what it saw.
#[derive(Default)]
struct Endpoint {
    mode: AtomicU8,
    requests: AtomicU64,
    posts: AtomicU64,
    failed: AtomicU64,
    /// Requests per path prefix: /abort and /delay.
    aborts_path: AtomicU64,
    /// Requests whose Host ends in `-shadow` (a mirror's copies).
    shadow_host: AtomicU64,
}

/// The three endpoints in xm-srv, each an HTTP/1.1 keep-alive server answering `200 ok` (or
/// 503 by its mode), and the mirror service's (the fourth). Stopped on drop.
struct Servers {
    eps: Arc<[Endpoint; 4]>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(srv: &NetNs) -> Servers {
        let eps: Arc<[Endpoint; 4]> = Arc::new(Default::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, port) in PORTS.iter().chain([&SHADOW_PORT]).enumerate() {
            let l = srv.run(|| TcpListener::bind(("10.10.3.2", *port)).expect("bind"));
            l.set_nonblocking(true).unwrap();
            let (eps, stop) = (eps.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((c, _)) => {
                            let (eps, stop) = (eps.clone(), stop.clone());
                            conns.push(std::thread::spawn(move || serve(c, &eps[i], &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        Servers { eps, stop, threads }
    }

    /// Requests the three endpoints of `pol` saw.
    fn total(&self) -> u64 {
        self.sum(|e| &e.requests)
    }

    fn sum(&self, f: impl Fn(&Endpoint) -> &AtomicU64) -> u64 {
        self.eps[..PORTS.len()]
            .iter()
            .map(|e| f(e).load(Ordering::SeqCst))
            .sum()
    }

    fn shadow(&self) -> &Endpoint {
        &self.eps[PORTS.len()]
    }

    fn set(&self, modes: [u8; 3]) {
        for (e, m) in self.eps.iter().zip(modes) {
            e.mode.store(m, Ordering::SeqCst);
        }
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

fn serve(c: TcpStream, ep: &Endpoint, stop: &AtomicBool) {
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
        let request_line = line.trim_end().to_owned();
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
                if k.eq_ignore_ascii_case("host") && v.trim().ends_with("-shadow") {
                    ep.shadow_host.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let n = ep.requests.fetch_add(1, Ordering::SeqCst);
        if request_line.starts_with("POST") {
            ep.posts.fetch_add(1, Ordering::SeqCst);
        }
        if request_line.contains(" /abort") {
            ep.aborts_path.fetch_add(1, Ordering::SeqCst);
        }
        let fail = match ep.mode.load(Ordering::SeqCst) {
            FLAKY => n % 10 < 3,
            DOWN => true,
            _ => false,
        };
        let resp: &[u8] = if fail {
            ep.failed.fetch_add(1, Ordering::SeqCst);
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nfail"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        if w.write_all(resp).is_err() {
            return;
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One response as the load saw it.
#[derive(Clone, Debug)]
struct Seen {
    status: u16,
    latency: Duration,
    attempts_header: bool,
}

/// A keep-alive client connection to gateway A (made inside xm-cli).
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

    /// Sends one request; returns (status, has x-xdpmesh-attempts, connection: close).
    fn ask(&mut self, req: &[u8]) -> std::io::Result<(u16, bool, bool)> {
        self.w.write_all(req)?;
        let (mut status, mut len, mut attempts, mut close) = (0u16, 0usize, false, false);
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
                let k = k.to_ascii_lowercase();
                match k.as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-xdpmesh-attempts" => attempts = true,
                    "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok((status, attempts, close))
    }
}

/// Offers `rate` requests a second for `secs` over `conns` keep-alive connections from xm-cli
/// (each connection sends on its own schedule, so a slow answer delays only its own); a
/// request that fails at the transport counts as status 0. Stops early once `stop` is set.
fn load(cli: &NetNs, rate: u32, secs: f64, conns: usize, req: &'static [u8]) -> Vec<Seen> {
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
                            let got = c.as_mut().map(|c| c.ask(req));
                            let (status, attempts_header) = match got {
                                Some(Ok((s, a, close))) => {
                                    if close {
                                        c = None;
                                    }
                                    (s, a)
                                }
                                _ => {
                                    c = None;
                                    (0, false)
                                }
                            };
                            seen.push(Seen {
                                status,
                                latency: t.elapsed(),
                                attempts_header,
                            });
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

fn count(seen: &[Seen], status: u16) -> usize {
    seen.iter().filter(|s| s.status == status).count()
}

fn percentile(seen: &[Seen], p: f64) -> Duration {
    let mut l: Vec<Duration> = seen.iter().map(|s| s.latency).collect();
    l.sort();
    l[((l.len() - 1) as f64 * p).round() as usize]
}

/// Gateway A's counters: the sum of every series of `name` whose labels contain `label`.
fn metric(ns: &NetNs, name: &str, label: &str) -> u64 {
    let text = ns
        .exec_ok([
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:9901/metrics",
        ])
        .expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

fn put_tables(ns: &NetNs, text: &str, dir: &Path, name: &str) {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    let out = ns
        .exec([
            "curl",
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", f.display()),
            "http://127.0.0.1:9901/tables",
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "PUT /tables {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn endpoints(via: bool) -> String {
    let list: Vec<String> = PORTS
        .iter()
        .map(|p| match via {
            true => format!("{{ address = \"10.10.3.2:{p}\", via = \"gw-b\" }}"),
            false => format!("{{ address = \"10.10.3.2:{p}\" }}"),
        })
        .collect();
    format!("[{}]", list.join(", "))
}

/// Gateway A: the rig's tables plus service `pol` and its policy routes; `retries` false
/// leaves the retry route without them (the reload check).
fn a_tables(retries: bool) -> String {
    let retry = if retries {
        "retries = { attempts = 3, on = [\"reset\", \"503\"], backoff = \"5ms\" }"
    } else {
        ""
    };
    format!(
        r#"{base}
[[service]]
name = "pol"
hosts = ["pol.rig.mesh"]
endpoints = {eps}
retry_budget = {{ ratio = 0.2, min_per_second = 10, ttl = "10s" }}

[[route]]
name = "retry"
service = "pol"
match = {{ path = {{ prefix = "/retry" }} }}
{retry}

# The budget's own service: its window holds only the requests of the budget check.
[[service]]
name = "polb"
hosts = ["polb.rig.mesh"]
endpoints = {eps}
retry_budget = {{ ratio = 0.2, min_per_second = 10, ttl = "10s" }}

[[route]]
name = "budget"
service = "polb"
retries = {{ attempts = 3, on = ["reset", "503"], backoff = "5ms" }}

[[route]]
name = "abort"
service = "pol"
match = {{ path = {{ prefix = "/abort" }} }}
fault = {{ abort = {{ percent = 10.0, status = 503 }} }}

[[route]]
name = "delay"
service = "pol"
match = {{ path = {{ prefix = "/delay" }} }}
fault = {{ delay = {{ percent = 60.0, duration = "100ms" }}, headers = {{ x-chaos = "on" }} }}

[[route]]
name = "delay50"
service = "pol"
match = {{ path = {{ prefix = "/half-delay" }} }}
fault = {{ delay = {{ percent = 50.0, duration = "100ms" }} }}

[[route]]
name = "limit"
service = "pol"
match = {{ path = {{ prefix = "/limit" }} }}
rate_limit = {{ requests_per_second = 500, burst = 100 }}

[[service]]
name = "polshadow"
endpoints = [{{ address = "10.10.3.2:{shadow}", via = "gw-b" }}]

# Nothing listens there: B answers each copy 503.
[[service]]
name = "polgone"
endpoints = [{{ address = "10.10.3.2:8109", via = "gw-b" }}]

[[route]]
name = "mirror"
service = "pol"
match = {{ path = {{ prefix = "/mirror" }} }}
mirror = {{ service = "polshadow" }}

[[route]]
name = "mirror-gone"
service = "pol"
match = {{ path = {{ prefix = "/gone" }} }}
mirror = {{ service = "polgone" }}
"#,
        shadow = SHADOW_PORT,
        base = include_str!("../../scripts/rig/gwa-tables.toml"),
        eps = endpoints(true),
    )
}

fn b_tables() -> String {
    let mut t = include_str!("../../scripts/rig/gwb-tables.toml").to_owned();
    let shadow = format!("[{{ address = \"10.10.3.2:{SHADOW_PORT}\" }}]");
    let gone = "[{ address = \"10.10.3.2:8109\" }]".to_owned();
    for (svc, eps) in [
        ("pol", endpoints(false)),
        ("polb", endpoints(false)),
        ("polshadow", shadow),
        ("polgone", gone),
    ] {
        t.push_str(&format!(
            "\n[[service]]\nname = \"{svc}\"\nendpoints = {eps}\n\n[[authorization]]\nservice = \"{svc}\"\nallow = [\"spiffe://rig.mesh/sa/client\"]\n",
        ));
    }
    t
}

const GET_RETRY: &[u8] = b"GET /retry HTTP/1.1\r\nHost: pol.rig.mesh\r\n\r\n";
const POST_RETRY: &[u8] =
    b"POST /retry HTTP/1.1\r\nHost: pol.rig.mesh\r\nContent-Length: 4\r\n\r\nbody";

fn run_backend(backend: &str, work: &Path) {
    println!("==== backend {backend}");
    let state = work.join(format!("state-{backend}"));
    let (cli, gwa, gwb, srv) = (
        NetNs::existing("xm-cli").unwrap(),
        NetNs::existing("xm-gwa").unwrap(),
        NetNs::existing("xm-gwb").unwrap(),
        NetNs::existing("xm-srv").unwrap(),
    );
    let servers = Servers::start(&srv);
    rig(&["mesh", "--backend", backend], &state);
    put_tables(&gwb, &b_tables(), &state, "pol-gwb-tables.toml");
    put_tables(&gwa, &a_tables(true), &state, "pol-gwa-tables.toml");
    let up = wait_for(Duration::from_secs(10), || {
        let s = load(&cli, 10, 0.1, 1, GET_RETRY);
        (s[0].status == 200).then_some(())
    });
    assert!(up.is_some(), "pol is not served through the mesh");

    // Retries: GET at 500 req/s for 20 s, one endpoint failing 30 % of its requests.
    servers.set([FLAKY, OK_MODE, OK_MODE]);
    let (before_srv, before_retries) = (
        servers.total(),
        metric(&gwa, "xdpmesh_route_retries_total", "route=\"retry\""),
    );
    let seen = load(&cli, 500, 20.0, 25, GET_RETRY);
    let ok = count(&seen, 200);
    let extra = servers.total() - before_srv - seen.len() as u64;
    let retries = metric(&gwa, "xdpmesh_route_retries_total", "route=\"retry\"") - before_retries;
    println!(
        "retries: {ok}/{} GETs succeeded; {} failed upstream; {extra} extra upstream requests; A counted {retries} retries",
        seen.len(),
        servers.sum(|e| &e.failed)
    );
    assert!(
        ok as f64 >= 0.999 * seen.len() as f64,
        "{ok} of {} succeeded",
        seen.len()
    );
    assert!(servers.sum(|e| &e.failed) > 0, "the flaky endpoint failed");
    assert_eq!(
        retries, extra,
        "every retry is one extra request at a server"
    );

    // POST is not retried: the failures reach the client, the servers saw each once.
    let (before_posts, before_failed) = (servers.sum(|e| &e.posts), servers.sum(|e| &e.failed));
    let seen = load(&cli, 200, 5.0, 10, POST_RETRY);
    let failed = servers.sum(|e| &e.failed) - before_failed;
    assert_eq!(servers.sum(|e| &e.posts) - before_posts, seen.len() as u64);
    assert_eq!(
        count(&seen, 503) as u64,
        failed,
        "each 503 reached the client"
    );
    assert!(failed > 0);
    assert_eq!(count(&seen, 200) + count(&seen, 503), seen.len());

    // The budget: every endpoint failing.
    servers.set([DOWN, DOWN, DOWN]);
    let before = servers.total();
    let t = Instant::now();
    let seen = load(
        &cli,
        200,
        5.0,
        10,
        b"GET /x HTTP/1.1\r\nHost: polb.rig.mesh\r\n\r\n",
    );
    let took = t.elapsed().as_secs_f64();
    let upstream = servers.total() - before;
    let bound = 1.2 * seen.len() as f64 + 10.0 * took;
    println!(
        "budget: {} client requests, {upstream} upstream (bound {bound:.0})",
        seen.len()
    );
    assert!(upstream as f64 <= bound, "{upstream} > {bound:.0}");
    assert!(upstream > seen.len() as u64, "some retries were made");
    assert!(
        metric(
            &gwa,
            "xdpmesh_route_retries_skipped_total",
            "reason=\"budget\""
        ) > 0
    );
    servers.set([OK_MODE, OK_MODE, OK_MODE]);

    // Abort 10 %: 2,000 requests.
    let before = servers.sum(|e| &e.aborts_path);
    let seen = load(
        &cli,
        500,
        4.0,
        20,
        b"GET /abort HTTP/1.1\r\nHost: pol.rig.mesh\r\n\r\n",
    );
    let aborted = count(&seen, 503);
    let reached = servers.sum(|e| &e.aborts_path) - before;
    println!("abort: {aborted} of {} injected", seen.len());
    assert_eq!(seen.len(), 2000);
    assert!((160..=240).contains(&aborted), "{aborted} aborts of 2000");
    assert_eq!(
        reached as usize + aborted,
        seen.len(),
        "no server saw an aborted one"
    );
    assert_eq!(count(&seen, 200), seen.len() - aborted);

    // Delay 100 ms on 60 % of the requests with x-chaos: on (not 50 %: with half of them
    // delayed, the median would sit on the edge between the two groups and flip by chance).
    let plain = load(
        &cli,
        100,
        4.0,
        10,
        b"GET /delay HTTP/1.1\r\nHost: pol.rig.mesh\r\n\r\n",
    );
    let chaos = load(
        &cli,
        100,
        4.0,
        10,
        b"GET /delay HTTP/1.1\r\nHost: pol.rig.mesh\r\nx-chaos: on\r\n\r\n",
    );
    let (p25, p50) = (percentile(&plain, 0.25), percentile(&plain, 0.5));
    let (c25, c50) = (percentile(&chaos, 0.25), percentile(&chaos, 0.5));
    println!("delay: without the header p25 {p25:?} p50 {p50:?}; with it p25 {c25:?} p50 {c50:?}");
    assert_eq!(count(&chaos, 200), chaos.len());
    assert!(
        p50 < Duration::from_millis(60),
        "untouched requests: {p50:?}"
    );
    assert!(
        c25 < p25 + Duration::from_millis(40),
        "p25 moved: {p25:?} → {c25:?}"
    );
    assert!(
        c50 >= p50 + Duration::from_millis(60),
        "p50 did not move by ~100 ms: {p50:?} → {c50:?}"
    );
    assert!(c50 < p50 + Duration::from_millis(200), "{p50:?} → {c50:?}");
    // And at the issue's 50 %: half are held (the counter), the p25 stays, the p75 moves by
    // ~100 ms; the p50 sits on the edge between the two groups.
    let before = metric(&gwa, "xdpmesh_route_faults_total", "route=\"delay50\"");
    let half = load(
        &cli,
        100,
        4.0,
        10,
        b"GET /half-delay HTTP/1.1\r\nHost: pol.rig.mesh\r\n\r\n",
    );
    let held = metric(&gwa, "xdpmesh_route_faults_total", "route=\"delay50\"") - before;
    let (h25, h50, h75) = (
        percentile(&half, 0.25),
        percentile(&half, 0.5),
        percentile(&half, 0.75),
    );
    let p75 = percentile(&plain, 0.75);
    println!(
        "delay 50 %: {held} of {} held; p25 {h25:?} p50 {h50:?} p75 {h75:?} (untouched p75 {p75:?})",
        half.len()
    );
    assert_eq!(count(&half, 200), half.len());
    let share = held as f64 / half.len() as f64;
    assert!(
        (0.42..=0.58).contains(&share),
        "{held} of {} held",
        half.len()
    );
    assert!(
        h25 < p25 + Duration::from_millis(40),
        "p25 moved: {p25:?} → {h25:?}"
    );
    assert!(
        h75 >= p75 + Duration::from_millis(60) && h75 < p75 + Duration::from_millis(200),
        "p75 did not move by ~100 ms: {p75:?} → {h75:?}"
    );

    // Mirror: every request's copy reaches the shadow (Host suffixed -shadow), whose 503s
    // never reach a client; a mirror service with nothing listening costs the clients nothing.
    servers.shadow().mode.store(DOWN, Ordering::SeqCst);
    let counter = |name| metric(&gwa, name, "route=\"mirror\"");
    let (m0, f0, s0) = (
        counter("xdpmesh_route_mirrored_total"),
        counter("xdpmesh_route_mirror_failures_total"),
        servers.shadow().requests.load(Ordering::SeqCst),
    );
    let seen = load(
        &cli,
        200,
        5.0,
        10,
        b"GET /mirror HTTP/1.1\r\nHost: pol.rig.mesh\r\n\r\n",
    );
    let n = seen.len() as u64;
    let copies = wait_for(Duration::from_secs(10), || {
        let got = servers.shadow().requests.load(Ordering::SeqCst) - s0;
        (got >= n).then_some(got)
    });
    let mirrored = counter("xdpmesh_route_mirrored_total") - m0;
    println!(
        "mirror: {} of {n} ok; the shadow saw {copies:?} copies; A counted {mirrored} mirrored, {} failed",
        count(&seen, 200),
        counter("xdpmesh_route_mirror_failures_total") - f0
    );
    assert_eq!(
        count(&seen, 200) as u64,
        n,
        "the shadow's 503s reached a client"
    );
    assert_eq!(copies, Some(n), "one copy per request");
    assert_eq!(mirrored, n);
    assert_eq!(
        servers.shadow().shadow_host.load(Ordering::SeqCst) - s0,
        n,
        "each copy's Host ends in -shadow"
    );
    assert_eq!(counter("xdpmesh_route_mirror_failures_total"), f0);
    let seen = load(
        &cli,
        200,
        3.0,
        10,
        b"GET /gone HTTP/1.1\r\nHost: pol.rig.mesh\r\n\r\n",
    );
    assert_eq!(
        count(&seen, 200),
        seen.len(),
        "a dead shadow failed a client"
    );
    assert_eq!(
        metric(
            &gwa,
            "xdpmesh_route_mirrored_total",
            "route=\"mirror-gone\""
        ),
        seen.len() as u64
    );

    // Rate limit 500/s, burst 100, offered 1,000/s for 10 s.
    let t = Instant::now();
    let seen = load(
        &cli,
        1000,
        10.0,
        40,
        b"GET /limit HTTP/1.1\r\nHost: pol.rig.mesh\r\n\r\n",
    );
    let took = t.elapsed().as_secs_f64();
    let accepted = count(&seen, 200);
    let rate = (accepted as f64 - 100.0) / took;
    println!(
        "rate limit: {accepted} accepted, {} refused of {} in {took:.1} s: {rate:.0}/s",
        count(&seen, 429),
        seen.len()
    );
    assert_eq!(accepted + count(&seen, 429), seen.len());
    assert!((475.0..=525.0).contains(&rate), "{rate:.0}/s accepted");

    // A reload turns retries off, then on, under load: no failed request, and only the
    // responses routed with retries carry x-xdpmesh-attempts.
    let loader = {
        let cli = NetNs::existing("xm-cli").unwrap();
        std::thread::spawn(move || load(&cli, 200, 9.0, 10, GET_RETRY))
    };
    // The reloads land 3 s and 6 s into the 9 s of load (a schedule, not a wait for an event).
    std::thread::sleep(Duration::from_secs(3));
    put_tables(&gwa, &a_tables(false), &state, "pol-gwa-off.toml");
    std::thread::sleep(Duration::from_secs(3));
    put_tables(&gwa, &a_tables(true), &state, "pol-gwa-on.toml");
    let seen = loader.join().expect("reload load");
    let with = seen.iter().filter(|s| s.attempts_header).count();
    println!(
        "reload: {} requests, {} ok, {with} with retries",
        seen.len(),
        count(&seen, 200)
    );
    assert_eq!(
        count(&seen, 200),
        seen.len(),
        "a request failed across the reloads"
    );
    assert!(
        with > 0 && with < seen.len(),
        "{with} of {} had retries",
        seen.len()
    );
    drop(servers);
    rig(&["stop"], &state);
}

#[test]
fn request_policies_on_the_rig_with_both_backends() {
    if skip_unless_root("request_policies_on_the_rig_with_both_backends") {
        return;
    }
    let work = std::env::temp_dir().join(format!("xdpmesh-policies-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let _rig = RigGuard {
        work: work.to_owned(),
    };
    rig(&["up"], &work);
    for backend in ["kernel", "afxdp"] {
        run_backend(backend, &work);
    }
}
