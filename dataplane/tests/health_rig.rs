//! Endpoint health (issue #16) on the four-namespace rig, for both backends: client in xm-cli
//! → gateway A ══ mTLS ══ gateway B → endpoints in xm-srv served by this test.
//!
//! Checks, per backend: (1) pooling: a keep-alive load and a connection-per-request load of
//! a three-endpoint service make at most 5 upstream connects per 1,000 client requests on A
//! and on B; (2) a server that closes idle connections after 1 s, hit by bursts separated by
//! longer pauses, causes no client error and the gateway sees it (`peer_closed` or a fresh
//! connect); (3) one of three endpoints killed (listener and connections closed) during a
//! 300 req/s load with no retries: client errors stop within 2 s of the kill, B's health
//! checks mark it unhealthy, and once started again it gets requests within
//! interval × (healthy + 1) + 1 s; (4) a server that accepts and never answers is ejected by
//! A after its timeouts, and then the others carry the load with no error; (5) with
//! `circuit_breaker = { max_pending = 10 }` and a server answering after 2 s, the 11th
//! concurrent request gets 503 at once and is counted as `max_pending`. Needs root; under
//! CI=true it must run. The rig's namespaces are fixed: one test, one backend after the other.

mod common;

use common::{admin_get, metric, metric_in, put_tables, rig, RigGuard};
use dataplane::netns::{skip_unless_root, wait_for, NetNs};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Servers in xm-srv.

/// Answers `200 ok`, keep-alive.
const OK: u8 = 0;
/// As OK, but closes a connection idle for 1 s.
const IDLE_CLOSE: u8 = 1;
/// Reads requests and never answers (health probes included).
const HANG: u8 = 2;
/// Answers after 2 s (health probes at once).
const SLOW: u8 = 3;

const SLOW_FOR: Duration = Duration::from_secs(2);
const IDLE_FOR: Duration = Duration::from_secs(1);

/// Service `hp` (pooling), three endpoints.
const HP: [u16; 3] = [8201, 8202, 8203];
/// Service `hidle`: one endpoint closing idle connections after 1 s.
const HIDLE: u16 = 8211;
/// Service `hk` (kill and restart), three endpoints, health-checked by B.
const HK: [u16; 3] = [8221, 8222, 8223];
/// Service `hh`: the first endpoint hangs.
const HH: [u16; 3] = [8231, 8232, 8233];
/// Service `hs`: one slow endpoint behind A's `max_pending = 10`.
const HS: u16 = 8241;

/// One endpoint's behaviour and what it saw.
struct Ep {
    port: u16,
    mode: AtomicU8,
    /// Requests other than health probes.
    requests: AtomicU64,
    /// `GET /healthz` answered.
    probes: AtomicU64,
    accepted: AtomicU64,
    /// Connections this server closed for being idle.
    idle_closed: AtomicU64,
}

/// An endpoint's open connections: a clone of each socket and its thread.
type Conns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// A listening endpoint: its accept thread and its connections (a clone of each socket, to
/// shut it down when the endpoint is killed).
struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    conns: Conns,
}

/// Every endpoint of the test, each an HTTP/1.1 server on 10.10.3.2 in xm-srv that can be
/// killed (listener closed, connections shut down: connects are refused, as after its
/// process died) and started again. Stopped on drop.
struct Servers {
    srv: NetNs,
    eps: Vec<Arc<Ep>>,
    running: Vec<Option<Running>>,
}

impl Servers {
    fn start(srv: NetNs, list: &[(u16, u8)]) -> Servers {
        let mut s = Servers {
            srv,
            eps: list
                .iter()
                .map(|&(port, mode)| {
                    Arc::new(Ep {
                        port,
                        mode: AtomicU8::new(mode),
                        requests: AtomicU64::new(0),
                        probes: AtomicU64::new(0),
                        accepted: AtomicU64::new(0),
                        idle_closed: AtomicU64::new(0),
                    })
                })
                .collect(),
            running: list.iter().map(|_| None).collect(),
        };
        for i in 0..list.len() {
            s.up(i);
        }
        s
    }

    fn index(&self, port: u16) -> usize {
        self.eps.iter().position(|e| e.port == port).expect("port")
    }

    fn ep(&self, port: u16) -> &Ep {
        &self.eps[self.index(port)]
    }

    fn requests(&self, port: u16) -> u64 {
        self.ep(port).requests.load(Ordering::SeqCst)
    }

    /// Starts endpoint `port` listening (again).
    fn start_one(&mut self, port: u16) {
        let i = self.index(port);
        self.up(i);
    }

    /// Kills endpoint `port`: once this returns, its listener is closed and every
    /// connection it had is shut down.
    fn kill(&mut self, port: u16) {
        let i = self.index(port);
        self.down(i);
    }

    fn up(&mut self, i: usize) {
        assert!(self.running[i].is_none(), "already running");
        let ep = self.eps[i].clone();
        let port = ep.port;
        let l = self.srv.run(|| {
            TcpListener::bind(("10.10.3.2", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"))
        });
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let accept = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((c, _)) => {
                            let _ = c.set_nonblocking(false);
                            ep.accepted.fetch_add(1, Ordering::SeqCst);
                            let Ok(mine) = c.try_clone() else { continue };
                            let (ep, stop) = (ep.clone(), stop.clone());
                            let h = std::thread::spawn(move || serve(c, &ep, &stop));
                            let mut list = conns.lock().unwrap();
                            // Finished connections let go of their clone (and its descriptor).
                            list.retain(|(_, h)| !h.is_finished());
                            list.push((mine, h));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                // The listener closes here.
            })
        };
        self.running[i] = Some(Running {
            stop,
            accept,
            conns,
        });
    }

    fn down(&mut self, i: usize) {
        let Some(r) = self.running[i].take() else {
            return;
        };
        r.stop.store(true, Ordering::SeqCst);
        let _ = r.accept.join();
        let conns: Vec<_> = r.conns.lock().unwrap().drain(..).collect();
        for (c, _) in &conns {
            let _ = c.shutdown(Shutdown::Both);
        }
        for (_, h) in conns {
            let _ = h.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for i in 0..self.running.len() {
            self.down(i);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One connection of an endpoint, by its mode. Every way out shuts the socket down (the
/// accept thread holds a clone of it).
fn serve(mut c: TcpStream, ep: &Ep, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = c.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut idle = Instant::now();
    'conn: while !stop.load(Ordering::SeqCst) {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == "content-length")
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                let close = head.lines().any(|l| {
                    l.split_once(':')
                        .is_some_and(|(k, v)| k.trim() == "connection" && v.contains("close"))
                });
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let mode = ep.mode.load(Ordering::SeqCst);
                if mode == HANG {
                    ep.requests.fetch_add(1, Ordering::SeqCst);
                    continue; // never answered
                }
                if path.starts_with("/healthz") {
                    ep.probes.fetch_add(1, Ordering::SeqCst);
                } else {
                    ep.requests.fetch_add(1, Ordering::SeqCst);
                    if mode == SLOW {
                        let until = Instant::now() + SLOW_FOR;
                        while Instant::now() < until {
                            if stop.load(Ordering::SeqCst) {
                                break 'conn;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                let resp: &[u8] = if close {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                if c.write_all(resp).is_err() || close {
                    break;
                }
                idle = Instant::now();
                continue;
            }
        }
        if ep.mode.load(Ordering::SeqCst) == IDLE_CLOSE
            && buf.is_empty()
            && idle.elapsed() >= IDLE_FOR
        {
            ep.idle_closed.fetch_add(1, Ordering::SeqCst);
            break;
        }
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    let _ = c.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------
// Clients in xm-cli.

/// One response as a client saw it: status 0 is a transport failure.
#[derive(Clone, Debug)]
struct Seen {
    status: u16,
    /// `x-xdpmesh-error`, when the gateway answered.
    error: Option<String>,
    sent: Instant,
    done: Instant,
}

struct Reply {
    status: u16,
    error: Option<String>,
    close: bool,
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

    fn ask(&mut self, req: &[u8]) -> std::io::Result<Reply> {
        self.w.write_all(req)?;
        let (mut status, mut len, mut error, mut close) = (0u16, 0usize, None, false);
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
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-xdpmesh-error" => error = Some(v.trim().to_owned()),
                    "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok(Reply {
            status,
            error,
            close,
        })
    }
}

/// One request on a connection of its own (inside xm-cli), timed.
fn one_request(req: &[u8]) -> Seen {
    let sent = Instant::now();
    let got = Client::connect().and_then(|mut c| c.ask(req));
    let (status, error) = match got {
        Ok(r) => (r.status, r.error),
        Err(_) => (0, None),
    };
    Seen {
        status,
        error,
        sent,
        done: Instant::now(),
    }
}

enum Until {
    Count(usize),
    Stop(Arc<AtomicBool>),
}

/// Offers `rate` requests a second over `conns` client connections from xm-cli, each on its
/// own schedule (a slow answer delays only its own connection). `fresh`: a new connection for
/// every request (the request should carry `Connection: close`); otherwise keep-alive.
fn drive(
    cli: &NetNs,
    rate: u32,
    conns: usize,
    req: &'static [u8],
    fresh: bool,
    until: Until,
) -> Vec<Seen> {
    let per_conn = Duration::from_secs_f64(conns as f64 / f64::from(rate));
    let until = &until;
    cli.run(move || {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..conns)
                .map(|k| {
                    sc.spawn(move || {
                        let start = Instant::now() + per_conn.mul_f64(k as f64 / conns as f64);
                        let mut c: Option<Client> = None;
                        let mut seen = Vec::new();
                        for i in 0.. {
                            match until {
                                Until::Count(n) if i >= *n => break,
                                Until::Stop(s) if s.load(Ordering::SeqCst) => break,
                                _ => {}
                            }
                            let at = start + per_conn * i as u32;
                            if let Some(d) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(d);
                            }
                            let sent = Instant::now();
                            if c.is_none() {
                                c = Client::connect().ok();
                            }
                            let got = c.as_mut().map(|c| c.ask(req));
                            let (status, error) = match got {
                                Some(Ok(r)) => {
                                    if r.close || fresh {
                                        c = None;
                                    }
                                    (r.status, r.error)
                                }
                                _ => {
                                    c = None;
                                    (0, None)
                                }
                            };
                            seen.push(Seen {
                                status,
                                error,
                                sent,
                                done: Instant::now(),
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

fn load(
    cli: &NetNs,
    rate: u32,
    secs: f64,
    conns: usize,
    req: &'static [u8],
    fresh: bool,
) -> Vec<Seen> {
    let per_conn = (f64::from(rate) * secs / conns as f64).round() as usize;
    drive(cli, rate, conns, req, fresh, Until::Count(per_conn))
}

/// A keep-alive load running in the background until `finish` (or drop).
struct BgLoad {
    stop: Arc<AtomicBool>,
    h: Option<JoinHandle<Vec<Seen>>>,
}

impl BgLoad {
    fn start(rate: u32, conns: usize, req: &'static [u8]) -> BgLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let cli = NetNs::existing("xm-cli").unwrap();
            drive(&cli, rate, conns, req, false, Until::Stop(s))
        });
        BgLoad { stop, h: Some(h) }
    }

    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.h.take().unwrap().join().expect("background load")
    }
}

impl Drop for BgLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn count(seen: &[Seen], status: u16) -> usize {
    seen.iter().filter(|s| s.status == status).count()
}

/// Non-200 responses by (status, x-xdpmesh-error), for printing.
fn failures(seen: &[Seen]) -> Vec<((u16, Option<String>), usize)> {
    let mut m: std::collections::BTreeMap<(u16, Option<String>), usize> = Default::default();
    for s in seen.iter().filter(|s| s.status != 200) {
        *m.entry((s.status, s.error.clone())).or_default() += 1;
    }
    m.into_iter().collect()
}

// ---------------------------------------------------------------------------------------
// Gateways.

/// One endpoint's row of `GET /endpoints`, as its line of JSON (one object per line).
fn endpoint_row(ns: &NetNs, service: &str, port: u16) -> Option<String> {
    let key = format!("\"service\": \"{service}\", \"endpoint\": \"10.10.3.2:{port}\"");
    admin_get(ns, "/endpoints")
        .lines()
        .find(|l| l.contains(&key))
        .map(|l| l.trim().trim_end_matches(',').to_owned())
}

/// A string or literal field of a `/endpoints` row.
fn field(row: &str, name: &str) -> String {
    let key = format!("\"{name}\": ");
    let Some(at) = row.find(&key) else {
        return String::new();
    };
    let rest = &row[at + key.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        s.split('"').next().unwrap_or("").to_owned()
    } else {
        rest.split([',', '}'])
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    }
}

fn endpoints(ports: &[u16], via: bool) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|p| match via {
            true => format!("{{ address = \"10.10.3.2:{p}\", via = \"gw-b\" }}"),
            false => format!("{{ address = \"10.10.3.2:{p}\" }}"),
        })
        .collect();
    format!("[{}]", list.join(", "))
}

const HEALTH_CHECK: &str = "health_check = { http = { path = \"/healthz\" }, interval = \"1s\", timeout = \"500ms\", unhealthy = 3, healthy = 2 }";
/// B's health check on `hk`: a restarted endpoint is back within this of its restart
/// (interval × (healthy + 1) + 1 s).
const BACK_WITHIN: Duration = Duration::from_secs(4);

/// Gateway A: the rig's tables plus this test's services (every endpoint via gw-b; round
/// robin, outlier detection at its defaults, no retries).
fn a_tables() -> String {
    format!(
        r#"{base}
[[service]]
name = "hp"
hosts = ["hp.rig.mesh"]
endpoints = {hp}

[[service]]
name = "hidle"
hosts = ["hidle.rig.mesh"]
endpoints = {hidle}

[[service]]
name = "hk"
hosts = ["hk.rig.mesh"]
endpoints = {hk}

[[service]]
name = "hh"
hosts = ["hh.rig.mesh"]
endpoints = {hh}

[[route]]
name = "hang"
service = "hh"
timeout = "500ms"

[[service]]
name = "hs"
hosts = ["hs.rig.mesh"]
endpoints = {hs}
circuit_breaker = {{ max_pending = 10 }}
"#,
        base = include_str!("../../scripts/rig/gwa-tables.toml"),
        hp = endpoints(&HP, true),
        hidle = endpoints(&[HIDLE], true),
        hk = endpoints(&HK, true),
        hh = endpoints(&HH, true),
        hs = endpoints(&[HS], true),
    )
}

/// Gateway B: the rig's tables plus the local endpoints of this test's services; `hk` is
/// health-checked.
fn b_tables() -> String {
    let mut t = include_str!("../../scripts/rig/gwb-tables.toml").to_owned();
    for (svc, ports, extra) in [
        ("hp", &HP[..], ""),
        ("hidle", &[HIDLE][..], ""),
        ("hk", &HK[..], HEALTH_CHECK),
        ("hh", &HH[..], ""),
        ("hs", &[HS][..], ""),
    ] {
        t.push_str(&format!(
            "\n[[service]]\nname = \"{svc}\"\nendpoints = {}\n{extra}\n\n[[authorization]]\nservice = \"{svc}\"\nallow = [\"spiffe://rig.mesh/sa/client\"]\n",
            endpoints(ports, false)
        ));
    }
    t
}

const HP_GET: &[u8] = b"GET /p HTTP/1.1\r\nHost: hp.rig.mesh\r\n\r\n";
const HP_CLOSE: &[u8] = b"GET /p HTTP/1.1\r\nHost: hp.rig.mesh\r\nConnection: close\r\n\r\n";
const HIDLE_GET: &[u8] = b"GET /i HTTP/1.1\r\nHost: hidle.rig.mesh\r\n\r\n";
const HK_GET: &[u8] = b"GET /k HTTP/1.1\r\nHost: hk.rig.mesh\r\n\r\n";
const HH_GET: &[u8] = b"GET /h HTTP/1.1\r\nHost: hh.rig.mesh\r\n\r\n";
const HS_GET: &[u8] = b"GET /s HTTP/1.1\r\nHost: hs.rig.mesh\r\nConnection: close\r\n\r\n";

/// The pool counters of one gateway.
#[derive(Debug, Clone, Copy)]
struct PoolFigures {
    connects: u64,
    reused: u64,
    requests: u64,
    peer_closed: u64,
}

fn pool_figures(ns: &NetNs) -> PoolFigures {
    let text = admin_get(ns, "/metrics");
    PoolFigures {
        connects: metric_in(&text, "xdpmesh_proxy_upstream_connects_total", ""),
        reused: metric_in(&text, "xdpmesh_proxy_upstream_reused_total", ""),
        requests: metric_in(&text, "xdpmesh_proxy_requests_total", ""),
        peer_closed: metric_in(
            &text,
            "xdpmesh_proxy_pool_closes_total",
            "reason=\"peer_closed\"",
        ),
    }
}

impl std::ops::Sub for PoolFigures {
    type Output = PoolFigures;
    fn sub(self, o: PoolFigures) -> PoolFigures {
        PoolFigures {
            connects: self.connects - o.connects,
            reused: self.reused - o.reused,
            requests: self.requests - o.requests,
            peer_closed: self.peer_closed - o.peer_closed,
        }
    }
}

struct Rig {
    cli: NetNs,
    gwa: NetNs,
    gwb: NetNs,
}

/// What failed, over both backends: each check runs whatever failed before it, and the
/// test fails at the end with the whole list.
#[derive(Default)]
struct Findings(Vec<String>, String);

impl Findings {
    /// Records a failure that need not stop the check it is part of.
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let m = format!("{}: {}", self.1, msg());
            println!("FAILED {m}");
            self.0.push(m);
        }
    }

    /// Runs one check; a panic in it is recorded and the next check runs.
    fn step(&mut self, backend: &str, name: &str, f: impl FnOnce(&mut Findings)) {
        self.1 = format!("{backend} {name}");
        println!("-- {name}");
        let t = Instant::now();
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if let Err(e) = got {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let m = format!("{}: {why}", self.1);
            println!("FAILED {m}");
            self.0.push(m);
        }
        println!("-- {name}: {:.1} s", t.elapsed().as_secs_f64());
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

/// (1) One load of service `hp`: (client requests, A's pool figures, B's), all answered 200.
fn pool_load(
    r: &Rig,
    what: &str,
    (rate, secs, conns): (u32, f64, usize),
    fresh: bool,
) -> (u64, PoolFigures, PoolFigures) {
    let (a0, b0) = (pool_figures(&r.gwa), pool_figures(&r.gwb));
    let req = if fresh { HP_CLOSE } else { HP_GET };
    let seen = load(&r.cli, rate, secs, conns, req, fresh);
    let (a, b) = (pool_figures(&r.gwa) - a0, pool_figures(&r.gwb) - b0);
    let n = seen.len() as u64;
    let per = |c: u64| c as f64 * 1000.0 / n as f64;
    println!(
        "pooling, {what}: {} of {n} ok; A: {} connects ({:.2}/1000), {} reused, {} requests; B: {} connects ({:.2}/1000), {} reused, {} requests, {} peer_closed; pooled now A {} B {}",
        count(&seen, 200),
        a.connects,
        per(a.connects),
        a.reused,
        a.requests,
        b.connects,
        per(b.connects),
        b.reused,
        b.requests,
        b.peer_closed,
        metric(&r.gwa, "xdpmesh_proxy_pooled_connections", ""),
        metric(&r.gwb, "xdpmesh_proxy_pooled_connections", ""),
    );
    assert_eq!(
        count(&seen, 200),
        seen.len(),
        "pooling, {what}: failures {:?}",
        failures(&seen)
    );
    (n, a, b)
}

/// (1) Upstream connects per 1,000 client requests on A and on B, ≤ 5: a keep-alive load
/// and a load of one request per client connection, once the pools are warm. The cold start
/// before them (same shape as the keep-alive load) is printed, not judged: a session keeps
/// its upstream while its client connection is open, so it opens about one per client
/// connection, plus the hops A's `min_idle` warm-up opens to replace those taken.
fn pooling(r: &Rig) {
    const CONNS: usize = 25;
    pool_load(
        r,
        "cold start, 25 connections, 500 req/s, 2 s",
        (500, 2.0, CONNS),
        false,
    );
    for (what, shape, fresh) in [
        (
            "keep-alive, 25 connections, 500 req/s, 10 s",
            (500, 10.0, CONNS),
            false,
        ),
        (
            "a connection per request, 300 req/s, 5 s",
            (300, 5.0, 10),
            true,
        ),
    ] {
        let (n, a, b) = pool_load(r, what, shape, fresh);
        let per = |c: u64| c as f64 * 1000.0 / n as f64;
        assert!(
            per(a.connects) <= 5.0 && per(b.connects) <= 5.0,
            "pooling, {what}: upstream connects per 1,000 requests: A {:.2}, B {:.2} (≤ 5)",
            per(a.connects),
            per(b.connects)
        );
        assert!(
            a.reused > 0 && b.reused > 0,
            "pooling, {what}: nothing reused"
        );
    }
}

/// (2) Bursts with pauses longer than the server's 1 s idle close.
fn idle_close(r: &Rig, servers: &Servers) {
    let ep = servers.ep(HIDLE);
    let (b0, closed0) = (pool_figures(&r.gwb), ep.idle_closed.load(Ordering::SeqCst));
    let mut seen = Vec::new();
    let pauses = [1.5, 1.2, 1.05, 1.3, 1.1];
    for (k, pause) in pauses.iter().enumerate() {
        seen.extend(load(&r.cli, 200, 0.5, 5, HIDLE_GET, false));
        if k + 1 < pauses.len() {
            std::thread::sleep(Duration::from_secs_f64(*pause));
        }
    }
    let b = pool_figures(&r.gwb) - b0;
    let closed = ep.idle_closed.load(Ordering::SeqCst) - closed0;
    println!(
        "idle close: {} of {} ok in {} bursts; the server closed {closed} idle connections; B: {} peer_closed, {} connects, {} reused",
        count(&seen, 200),
        seen.len(),
        pauses.len(),
        b.peer_closed,
        b.connects,
        b.reused
    );
    assert_eq!(
        count(&seen, 200),
        seen.len(),
        "idle close: client errors {:?}",
        failures(&seen)
    );
    assert!(closed >= 1, "the server never closed an idle connection");
    assert!(
        b.peer_closed >= 1 || b.connects as usize >= pauses.len() - 1,
        "B neither saw the server's closes (peer_closed {}) nor connected afresh ({} connects)",
        b.peer_closed,
        b.connects
    );
}

/// (3) One endpoint of three killed under a 300 req/s load (no retries), then started again.
fn kill_and_restart(r: &Rig, servers: &mut Servers, findings: &mut Findings) {
    const DEAD: u16 = HK[2];
    let healthy_metric = format!("service=\"hk\",endpoint=\"10.10.3.2:{DEAD}\"");
    // B's health checks run: each endpoint answered two probes (and is healthy, by its
    // `healthy = 2`).
    let probes = || -> Vec<u64> {
        HK.iter()
            .map(|p| servers.ep(*p).probes.load(Ordering::SeqCst))
            .collect()
    };
    let probed = wait_for(Duration::from_secs(5), || {
        probes().iter().all(|n| *n >= 2).then_some(())
    });
    assert!(
        probed.is_some(),
        "B's health checks did not probe hk's endpoints: {:?}",
        probes()
    );
    // ... and B shows them healthy (its workers report once a second).
    let shown = wait_for(Duration::from_secs(3), || {
        HK.iter()
            .all(|p| {
                endpoint_row(&r.gwb, "hk", *p).is_some_and(|row| field(&row, "health") == "healthy")
            })
            .then_some(())
    });
    findings.check(shown.is_some(), || {
        let m = admin_get(&r.gwb, "/metrics");
        let healthy: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("xdpmesh_endpoint_healthy{service=\"hk\""))
            .collect();
        format!(
            "B's /endpoints does not show hk's endpoints healthy after {:?} passed probes: {:?}; xdpmesh_endpoint_healthy for hk on B: {healthy:?}",
            probes(),
            admin_get(&r.gwb, "/endpoints")
        )
    });
    let bg = BgLoad::start(300, 15, HK_GET);
    // Load on all three for 2 s (a schedule, not a wait for an event).
    std::thread::sleep(Duration::from_secs(2));
    let before_kill = servers.requests(DEAD);
    assert!(before_kill > 0, "{DEAD} got no requests before the kill");
    let refusals = || {
        let m = admin_get(&r.gwb, "/metrics");
        [
            metric_in(
                &m,
                "xdpmesh_proxy_refused_total",
                "reason=\"connect_failed\"",
            ),
            metric_in(
                &m,
                "xdpmesh_proxy_refused_total",
                "reason=\"endpoint_unhealthy\"",
            ),
        ]
    };
    let refused0 = refusals();
    servers.kill(DEAD);
    let killed = Instant::now();
    let unhealthy = wait_for(Duration::from_secs(8), || {
        let row = endpoint_row(&r.gwb, "hk", DEAD)?;
        (field(&row, "health") == "unhealthy"
            && metric(&r.gwb, "xdpmesh_endpoint_healthy", &healthy_metric) == 0)
            .then(|| (killed.elapsed(), row))
    });
    let a_view = endpoint_row(&r.gwa, "hk", DEAD);
    println!(
        "kill: B marked {DEAD} unhealthy after {:?}; B row {:?}; A row {a_view:?}",
        unhealthy.as_ref().map(|u| u.0),
        unhealthy.as_ref().map(|u| &u.1)
    );
    assert!(
        unhealthy.is_some(),
        "B never marked {DEAD} unhealthy: {:?}, xdpmesh_endpoint_healthy {}",
        endpoint_row(&r.gwb, "hk", DEAD),
        metric(&r.gwb, "xdpmesh_endpoint_healthy", &healthy_metric)
    );
    // A while with the endpoint down and known unhealthy.
    std::thread::sleep(Duration::from_secs(1));
    let refused = refusals();
    servers.start_one(DEAD);
    let restarted = Instant::now();
    let at_restart = servers.requests(DEAD);
    let back = wait_for(BACK_WITHIN, || {
        (servers.requests(DEAD) > at_restart).then(|| restarted.elapsed())
    });
    let healthy_again = wait_for(Duration::from_secs(5), || {
        endpoint_row(&r.gwb, "hk", DEAD)
            .filter(|row| field(row, "health") == "healthy")
            .map(|_| restarted.elapsed())
    });
    // Load on all three again for 1 s after it is back.
    std::thread::sleep(Duration::from_secs(1));
    let seen = bg.finish();
    let bad: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    let last_bad = bad
        .iter()
        .map(|s| s.done.saturating_duration_since(killed))
        .max();
    let after_restart = bad.iter().filter(|s| s.sent >= restarted).count();
    println!(
        "kill: {} requests, {} not 200 {:?}, the last {last_bad:?} after the kill, {after_restart} after the restart; B refused {} as connect_failed and {} as endpoint_unhealthy while it was down; {DEAD} back after {back:?} (B healthy after {healthy_again:?}), {} requests since; probes seen {}",
        seen.len(),
        bad.len(),
        failures(&seen),
        refused[0] - refused0[0],
        refused[1] - refused0[1],
        servers.requests(DEAD) - at_restart,
        servers.ep(DEAD).probes.load(Ordering::SeqCst),
    );
    assert!(
        last_bad.is_none_or(|d| d <= Duration::from_secs(2)),
        "client errors went on {last_bad:?} after the kill: {:?}",
        failures(&seen)
    );
    assert_eq!(after_restart, 0, "errors after the restart");
    assert!(
        back.is_some(),
        "{DEAD} got no request within {BACK_WITHIN:?} of its restart (B: {:?}; A: {:?})",
        endpoint_row(&r.gwb, "hk", DEAD),
        endpoint_row(&r.gwa, "hk", DEAD)
    );
}

/// (4) A server that accepts and never answers, behind A's 500 ms route timeout.
fn hang(r: &Rig, servers: &Servers) {
    const HUNG: u16 = HH[0];
    let ejected_metric = format!("service=\"hh\",endpoint=\"10.10.3.2:{HUNG}\"");
    let ejections0 = metric(&r.gwa, "xdpmesh_service_ejections_total", "service=\"hh\"");
    let bg = BgLoad::start(100, 10, HH_GET);
    let started = Instant::now();
    let ejected = wait_for(Duration::from_secs(10), || {
        let text = admin_get(&r.gwa, "/metrics");
        (metric_in(&text, "xdpmesh_endpoint_ejected", &ejected_metric) == 1
            || metric_in(&text, "xdpmesh_service_ejections_total", "service=\"hh\"") > ejections0)
            .then(|| started.elapsed())
    });
    let during = bg.finish();
    let row = endpoint_row(&r.gwa, "hh", HUNG);
    println!(
        "hang: ejected on A after {ejected:?}; A row {row:?}; ejections +{}; while ejecting {} requests, {} not 200 {:?}, {} to the hung one",
        metric(&r.gwa, "xdpmesh_service_ejections_total", "service=\"hh\"") - ejections0,
        during.len(),
        during.len() - count(&during, 200),
        failures(&during),
        servers.requests(HUNG)
    );
    assert!(
        ejected.is_some(),
        "A never ejected the hung endpoint: {row:?}, xdpmesh_endpoint_ejected {}",
        metric(&r.gwa, "xdpmesh_endpoint_ejected", &ejected_metric)
    );
    let hung0 = servers.requests(HUNG);
    let seen = load(&r.cli, 200, 3.0, 10, HH_GET, false);
    let errors = seen.len() - count(&seen, 200);
    println!(
        "hang: later window {} requests, {errors} not 200 {:?}; the hung one got {}",
        seen.len(),
        failures(&seen),
        servers.requests(HUNG) - hung0
    );
    assert!(
        errors as f64 <= 0.002 * seen.len() as f64,
        "the others did not carry the load: {:?}",
        failures(&seen)
    );
    assert_eq!(
        servers.requests(HUNG),
        hung0,
        "the ejected endpoint got requests"
    );
}

/// (5) `max_pending = 10` on A, a server answering after 2 s.
fn max_pending(r: &Rig, servers: &Servers) {
    let label = "service=\"hs\",limit=\"max_pending\"";
    let overflow0 = metric(&r.gwa, "xdpmesh_service_overflow_total", label);
    let s0 = servers.requests(HS);
    let cli = NetNs::existing("xm-cli").unwrap();
    let ten = std::thread::spawn(move || {
        cli.run(|| {
            std::thread::scope(|sc| {
                let hs: Vec<_> = (0..10).map(|_| sc.spawn(|| one_request(HS_GET))).collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        })
    });
    let at_server = wait_for(Duration::from_secs(5), || {
        (servers.requests(HS) - s0 >= 10).then_some(())
    });
    assert!(
        at_server.is_some(),
        "the 10 slow requests did not reach the server: {}",
        servers.requests(HS) - s0
    );
    let extra: Vec<Seen> = r.cli.run(|| (0..2).map(|_| one_request(HS_GET)).collect());
    let first = ten.join().expect("the ten");
    let overflow = metric(&r.gwa, "xdpmesh_service_overflow_total", label) - overflow0;
    let took: Vec<Duration> = extra.iter().map(|s| s.done - s.sent).collect();
    let slowest = first.iter().map(|s| s.done - s.sent).min();
    println!(
        "max_pending: the 11th and 12th: {:?} in {took:?}; the first 10: {} ok (fastest {slowest:?}); overflow{{max_pending}} +{overflow}; server saw {}",
        extra
            .iter()
            .map(|s| (s.status, s.error.clone()))
            .collect::<Vec<_>>(),
        count(&first, 200),
        servers.requests(HS) - s0
    );
    for (s, t) in extra.iter().zip(&took) {
        assert_eq!(s.status, 503, "beyond max_pending: {s:?}");
        assert!(*t < Duration::from_millis(500), "503 after {t:?}");
    }
    assert_eq!(
        count(&first, 200),
        10,
        "the first ten: {:?}",
        failures(&first)
    );
    assert_eq!(overflow, 2, "xdpmesh_service_overflow_total{{{label}}}");
    assert_eq!(
        servers.requests(HS) - s0,
        10,
        "a refused request reached the server"
    );
}

fn run_backend(backend: &str, work: &Path, findings: &mut Findings) {
    println!("==== backend {backend}");
    let t = Instant::now();
    let state = work.join(format!("state-{backend}"));
    let r = Rig {
        cli: NetNs::existing("xm-cli").unwrap(),
        gwa: NetNs::existing("xm-gwa").unwrap(),
        gwb: NetNs::existing("xm-gwb").unwrap(),
    };
    let mut list: Vec<(u16, u8)> = Vec::new();
    list.extend(HP.iter().map(|p| (*p, OK)));
    list.push((HIDLE, IDLE_CLOSE));
    list.extend(HK.iter().map(|p| (*p, OK)));
    list.extend([(HH[0], HANG), (HH[1], OK), (HH[2], OK)]);
    list.push((HS, SLOW));
    let mut servers = Servers::start(NetNs::existing("xm-srv").unwrap(), &list);
    rig(&["mesh", "--backend", backend], &state);
    put_tables(&r.gwb, &b_tables(), &state, "health-gwb-tables.toml");
    put_tables(&r.gwa, &a_tables(), &state, "health-gwa-tables.toml");
    let up = wait_for(Duration::from_secs(10), || {
        let s = load(&r.cli, 10, 0.1, 1, HP_GET, false);
        (s[0].status == 200).then_some(())
    });
    assert!(up.is_some(), "hp is not served through the mesh");

    findings.step(backend, "(1) pooling", |_| pooling(&r));
    findings.step(backend, "(2) idle close", |_| idle_close(&r, &servers));
    findings.step(backend, "(3) kill and restart", |f| {
        kill_and_restart(&r, &mut servers, f)
    });
    findings.step(backend, "(4) hang", |_| hang(&r, &servers));
    findings.step(backend, "(5) max_pending", |_| max_pending(&r, &servers));

    drop(servers);
    rig(&["stop"], &state);
    println!(
        "==== backend {backend} done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn endpoint_health_on_the_rig_with_both_backends() {
    if skip_unless_root("endpoint_health_on_the_rig_with_both_backends") {
        return;
    }
    let work = std::env::temp_dir().join(format!("xdpmesh-health-{}", std::process::id()));
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
