//! Issue #20: many gateway nodes reading their tables from etcd. A 3-member etcd cluster
//! (three `etcd` processes on loopback ports, in a temp dir) and 5 `xdpmesh run --backend
//! kernel` gateways on 127.0.0.1 reading one prefix; each node serves its own listener
//! (`[node] listeners`) of the shared tables. No root, no namespaces. Every process is
//! killed and reaped by a guard, on panic too.
//!
//! What it proves, in order: 50 changes pushed with `xdpmesh tables push` are live on all
//! 5 nodes (p50/p99 printed; a request through each node sees the new route); a bad change
//! is refused by every node with its position and the next good one applies; two pushes
//! from one revision: one wins, the other gets 409; a registered endpoint appears on every
//! node and is gone within ttl + 1 s of its registrar's death; the etcd leader killed
//! during a stream of changes loses none and applies none twice; all of etcd stopped: the
//! nodes keep serving (readyz degraded), a node restarted meanwhile serves its cache, and
//! all converge when etcd is back.
//!
//! Without an `etcd` binary the test prints SKIPPED, except under CI=true where it fails.

use dataplane::netns::wait_for;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "/xm-test";
const NODES: usize = 5;

/// A free loopback port, never one handed out before in this process: the tests run in
/// parallel and bind their ports later, and the OS may give a port just released (one test's
/// etcd then failed to bind its peer port in a CI run, and its pushes never went through).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(p) {
            return p;
        }
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Three etcd members; every process killed and reaped on drop.
struct Etcd {
    dir: PathBuf,
    clients: Vec<u16>,
    peers: Vec<u16>,
    procs: Vec<Option<Child>>,
    extra: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

impl Etcd {
    fn new(dir: &Path, extra: &[&str]) -> Etcd {
        let mut e = Etcd {
            dir: dir.to_path_buf(),
            clients: (0..3).map(|_| free_port()).collect(),
            peers: (0..3).map(|_| free_port()).collect(),
            procs: (0..3).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..3 {
            e.start(i);
        }
        e.wait_healthy();
        e
    }

    fn endpoints(&self) -> String {
        self.clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start(&mut self, i: usize) {
        let cluster = (0..3)
            .map(|j| format!("m{j}=http://127.0.0.1:{}", self.peers[j]))
            .collect::<Vec<_>>()
            .join(",");
        let c = format!("http://127.0.0.1:{}", self.clients[i]);
        let p = format!("http://127.0.0.1:{}", self.peers[i]);
        let log = std::fs::File::create(self.dir.join(format!("etcd-m{i}.log"))).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "xm-etcd-rig"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.procs[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self, members: &[usize]) -> control::etcd::Client {
        let eps = members
            .iter()
            .map(|&i| format!("http://127.0.0.1:{}", self.clients[i]))
            .collect();
        control::etcd::Client::new(&control::etcd::EtcdConfig::new(eps, PREFIX)).unwrap()
    }

    fn wait_healthy(&self) {
        let live: Vec<usize> = (0..3).filter(|&i| self.procs[i].is_some()).collect();
        let ok = wait_for(Duration::from_secs(20), || {
            live.iter()
                .all(|&i| {
                    self.client(&[i])
                        .call("/v3/kv/range", &serde_json::json!({"key": "eA=="}))
                        .is_ok()
                })
                .then_some(())
        });
        assert!(ok.is_some(), "etcd members {live:?} not healthy");
    }

    /// The member that is the leader now.
    fn leader(&self) -> usize {
        wait_for(Duration::from_secs(10), || {
            (0..3).filter(|&i| self.procs[i].is_some()).find(|&i| {
                self.client(&[i])
                    .call("/v3/maintenance/status", &serde_json::json!({}))
                    .is_ok_and(|v| v["leader"] == v["header"]["member_id"])
            })
        })
        .expect("no etcd leader")
    }
}

/// A gateway process; killed and reaped on drop.
struct Gateway {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    admin: SocketAddr,
    web: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

impl Gateway {
    fn start(node: &Path, admin: SocketAddr, web: SocketAddr) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
            .args([
                "run",
                "--backend",
                "kernel",
                "--log-format",
                "json",
                "--config",
            ])
            .arg(node)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xdpmesh run");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let gw = Gateway {
            child,
            stdout,
            stderr,
            admin,
            web,
        };
        let ready = wait_for(Duration::from_secs(20), || {
            gw.stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(" ready"))
                .then_some(())
        });
        assert!(
            ready.is_some(),
            "{} not ready: {:?} {:?}",
            node.display(),
            gw.stdout.lock().unwrap(),
            gw.stderr.lock().unwrap()
        );
        gw
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, "localhost").unwrap_or((0, String::new()))
    }

    /// The revision in `/readyz` ("ready: etcd revision R" or "degraded: serving etcd
    /// revision R ...").
    fn revision(&self) -> i64 {
        let body = self.get("/readyz").1;
        body.split("revision ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(-1)
    }

    /// A request routed by this node's listener: the upstream's answer.
    fn route(&self) -> String {
        match http(self.web, "GET", "/", "web") {
            Some((200, body)) => body,
            other => format!("{other:?}"),
        }
    }
}

fn http(to: SocketAddr, method: &str, path: &str, host: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// An upstream answering every request with its name; runs until the test ends.
fn upstream(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    addr
}

struct Mesh {
    webs: Vec<SocketAddr>,
    v1: SocketAddr,
    v2: SocketAddr,
}

impl Mesh {
    /// The shared tables: one http listener per node, service `web` with a v1 and a v2
    /// endpoint, a route sending everything to `version`. `mark` makes each change unique.
    fn tables(&self, version: &str, mark: &str) -> String {
        let mut t = format!("# change {mark}\n");
        for (i, w) in self.webs.iter().enumerate() {
            t += &format!("[[listener]]\nname = \"n{i}\"\nbind = \"{w}\"\nprotocol = \"http\"\n\n");
        }
        t += &format!(
            "[[service]]\nname = \"web\"\nendpoints = [{{ address = \"{}\", labels = {{ version = \"v1\" }} }}, {{ address = \"{}\", labels = {{ version = \"v2\" }} }}]\n\n\
             [[route]]\nname = \"main\"\nservice = \"web\"\nbackends = [{{ labels = {{ version = \"{version}\" }}, weight = 100 }}]\n",
            self.v1, self.v2
        );
        t
    }
}

/// The binary under test; `XM_XDPMESH_BIN` runs another build (the benchmark's release one).
fn bin() -> String {
    std::env::var("XM_XDPMESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_xdpmesh").to_string())
}

fn xdpmesh(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run xdpmesh")
}

fn push(file: &Path, endpoints: &str, extra: &[&str]) -> Output {
    let mut a = vec![
        "tables",
        "push",
        file.to_str().unwrap(),
        "--etcd",
        endpoints,
        "--prefix",
        PREFIX,
    ];
    a.extend_from_slice(extra);
    xdpmesh(&a)
}

fn pushed_revision(o: &Output) -> i64 {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "push failed: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.trim()
        .rsplit(' ')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out:?}"))
}

/// Wait until every node serves revision `rev` or later; how long that took.
fn converge(gws: &[Gateway], rev: i64, within: Duration) -> Duration {
    let t0 = Instant::now();
    let ok = wait_for(within, || {
        gws.iter().all(|g| g.revision() >= rev).then_some(())
    });
    assert!(
        ok.is_some(),
        "not all nodes at revision {rev} within {within:?}: {:?}",
        gws.iter().map(|g| g.get("/readyz").1).collect::<Vec<_>>()
    );
    t0.elapsed()
}

/// The 5 nodes: node files (each serving its own listener) and running gateways.
fn start_nodes(dir: &Path, eps: &str, mesh: &Mesh) -> (Vec<PathBuf>, Vec<Gateway>) {
    let ep_list = eps
        .split(',')
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes = Vec::new();
    let mut gws = Vec::new();
    for i in 0..NODES {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let node = dir.join(format!("node-{i}.toml"));
        std::fs::write(
            &node,
            format!(
                "[node]\nname = \"gw{i}\"\ntables = \"cache-{i}.toml\"\nadmin = \"{admin}\"\nlisteners = [\"n{i}\"]\n\n\
                 [etcd]\nendpoints = [{ep_list}]\nprefix = \"{PREFIX}\"\n"
            ),
        )
        .unwrap();
        gws.push(Gateway::start(&node, admin, mesh.webs[i]));
        nodes.push(node);
    }
    (nodes, gws)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn etcd_installed() -> bool {
    if Command::new("etcd").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "etcd is not installed (scripts/lib/deps.sh installs etcd-server)"
    );
    println!("SKIPPED etcd_rig: no etcd binary (apt-get install etcd-server etcd-client)");
    false
}

/// The benchmark of benches/README.md ("Tables in etcd"): 10k-service tables (50k
/// endpoints, 10k routes; `XM_ETCD_BENCH_SERVICES`) on 5 nodes, 20 changes
/// (`XM_ETCD_BENCH_CHANGES`): convergence from write to all nodes applied, etcd's CPU and
/// disk per change. Run with a release build:
/// `XM_XDPMESH_BIN=target/release/xdpmesh cargo test -p dataplane --test etcd_rig -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_etcd_convergence_big_tables() {
    if !etcd_installed() {
        return;
    }
    let services: usize = std::env::var("XM_ETCD_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let changes: usize = std::env::var("XM_ETCD_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("xm-etcd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = Dir(dir.clone());
    // The tables are ~6 MB: above etcd's default request limit of 1.5 MiB.
    let etcd = Etcd::new(
        &dir,
        &[
            "--max-request-bytes",
            "33554432",
            "--quota-backend-bytes",
            "8589934592",
        ],
    );
    let eps = etcd.endpoints();
    let mesh = Mesh {
        webs: (0..NODES)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect(),
        v1: upstream("v1"),
        v2: upstream("v2"),
    };
    let big = |mark: usize| {
        let mut t = mesh.tables(
            if mark.is_multiple_of(2) { "v1" } else { "v2" },
            &mark.to_string(),
        );
        for i in 0..services {
            t += &format!(
                "[[service]]\nname = \"svc-{i}\"\nhosts = [\"svc-{i}.corp.mesh\"]\nendpoints = [\n"
            );
            for e in 0..5 {
                let ip = i * 5 + e;
                t += &format!(
                    "  {{ address = \"10.{}.{}.{}:8080\", labels = {{ version = \"v{}\" }} }},\n",
                    ip >> 16,
                    (ip >> 8) & 255,
                    ip & 255,
                    e % 2 + 1
                );
            }
            t += "]\n";
        }
        for i in 0..services {
            t += &format!(
                "[[route]]\nservice = \"svc-{i}\"\nmatch = {{ path = {{ prefix = \"/api/v{}\" }} }}\nbackends = [{{ labels = {{ version = \"v1\" }}, weight = 90 }}, {{ labels = {{ version = \"v2\" }}, weight = 10 }}]\n",
                i % 7
            );
        }
        t
    };
    let file = dir.join("tables.toml");
    std::fs::write(&file, big(0)).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    let mut rev = pushed_revision(&push(&file, &eps, &["--no-check"]));
    let (_nodes, gws) = start_nodes(&dir, &eps, &mesh);
    converge(&gws, rev, Duration::from_secs(60));
    let etcd_pids: Vec<u32> = etcd.procs.iter().flatten().map(Child::id).collect();
    let gw_pids: Vec<u32> = gws.iter().map(|g| g.child.id()).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let members = || {
        (0..3)
            .map(|i| dir_bytes(&dir.join(format!("m{i}"))))
            .sum::<u64>()
    };
    let (etcd_cpu0, gw_cpu0, disk0) = (cpu(&etcd_pids), cpu(&gw_pids), members());
    let mut from_push = Vec::new();
    let mut from_ack = Vec::new();
    for k in 1..=changes {
        std::fs::write(&file, big(k)).unwrap();
        let t0 = Instant::now();
        let o = push(&file, &eps, &["--no-check"]);
        let acked = Instant::now();
        rev = pushed_revision(&o);
        converge(&gws, rev, Duration::from_secs(60));
        from_push.push(t0.elapsed());
        from_ack.push(acked.elapsed());
    }
    let (etcd_cpu, gw_cpu, disk) = (
        cpu(&etcd_pids) - etcd_cpu0,
        cpu(&gw_pids) - gw_cpu0,
        members().saturating_sub(disk0),
    );
    from_push.sort();
    from_ack.sort();
    let n = changes as f64;
    println!(
        "etcd_bench: {services} services, tables {size} bytes, {NODES} nodes, {changes} changes: \
         convergence from push start p50 {:?} p99 {:?} max {:?}; from etcd's ack p50 {:?} p99 {:?}; \
         per change: etcd CPU {:.3} s (3 members), etcd disk +{} bytes (3 members, WAL + db), \
         gateways' CPU {:.3} s (5 nodes)",
        percentile(&from_push, 0.5),
        percentile(&from_push, 0.99),
        from_push[from_push.len() - 1],
        percentile(&from_ack, 0.5),
        percentile(&from_ack, 0.99),
        etcd_cpu / n,
        (disk as f64 / n) as u64,
        gw_cpu / n,
    );
    if let Some(l) = gws[0]
        .stderr
        .lock()
        .unwrap()
        .iter()
        .rfind(|l| l.contains("applied etcd revision"))
    {
        println!("etcd_bench: node 0's last apply: {l}");
    }
    for l in gws[0]
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("WARN"))
    {
        println!("etcd_bench: node 0: {l}");
    }
    // Where node 0's CPU went, by live thread (since its start; exited threads, e.g. the
    // admin API's per-connection ones, only in the total).
    let pid = gws[0].child.id();
    let mut threads = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap();
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        threads.push(format!("{} {:.2} s", comm.trim(), ticks / 100.0));
    }
    println!(
        "etcd_bench: node 0 CPU {:.2} s in all; live threads: {}",
        cpu_seconds(pid),
        threads.join(", ")
    );
    for (i, g) in gws.iter().enumerate() {
        assert_eq!(
            g.route(),
            if changes.is_multiple_of(2) {
                "v1"
            } else {
                "v2"
            },
            "node {i}"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
fn tables_in_etcd_converge_on_every_node() {
    if !etcd_installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("xm-etcd-rig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = Dir(dir.clone());
    let mut etcd = Etcd::new(&dir, &[]);
    let eps = etcd.endpoints();

    let mesh = Mesh {
        webs: (0..NODES)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect(),
        v1: upstream("v1"),
        v2: upstream("v2"),
    };
    let file = dir.join("tables.toml");
    std::fs::write(&file, mesh.tables("v1", "0")).unwrap();
    let mut rev = pushed_revision(&push(&file, &eps, &[]));

    let (nodes, mut gws) = start_nodes(&dir, &eps, &mesh);
    converge(&gws, rev, Duration::from_secs(5));
    for g in &gws {
        assert_eq!(g.route(), "v1");
    }

    // 1. 50 changes: write → live on all 5 nodes; a request through each sees the route.
    let mut from_push = Vec::new();
    let mut from_ack = Vec::new();
    for k in 1..=50u32 {
        let version = if k.is_multiple_of(2) { "v1" } else { "v2" };
        std::fs::write(&file, mesh.tables(version, &k.to_string())).unwrap();
        let t0 = Instant::now();
        let o = push(&file, &eps, &[]);
        let acked = Instant::now();
        rev = pushed_revision(&o);
        converge(&gws, rev, Duration::from_secs(5));
        from_push.push(t0.elapsed());
        from_ack.push(acked.elapsed());
        for (i, g) in gws.iter().enumerate() {
            assert_eq!(g.route(), version, "node {i} after change {k}");
        }
    }
    from_push.sort();
    from_ack.sort();
    println!(
        "etcd_rig: convergence on {NODES} nodes over 50 changes: from `tables push` start p50 {:?} p99 {:?} max {:?}; from etcd's ack p50 {:?} p99 {:?}",
        percentile(&from_push, 0.5),
        percentile(&from_push, 0.99),
        from_push[from_push.len() - 1],
        percentile(&from_ack, 0.5),
        percentile(&from_ack, 0.99),
    );
    assert!(percentile(&from_push, 0.99) < Duration::from_secs(1));
    let good_version = "v1"; // change 50

    // 2. A bad change (a route to an unknown service), written past the local check: every
    // node keeps the old tables and reports the error with its position; the next applies.
    let bad = mesh.tables("v2", "bad").replace(
        "service = \"web\"\nbackends",
        "service = \"nope\"\nbackends",
    );
    std::fs::write(&file, &bad).unwrap();
    let bad_rev = pushed_revision(&push(&file, &eps, &["--no-check"]));
    let line = bad.lines().position(|l| l == "service = \"nope\"").unwrap() + 1;
    let want = format!(
        "etcd:{PREFIX}/tables@{bad_rev}:{line}:11: route[0].service: unknown service \"nope\""
    );
    for (i, g) in gws.iter().enumerate() {
        let got = wait_for(Duration::from_secs(5), || {
            let e = g.get("/config/errors").1;
            e.contains(&want).then_some(e)
        });
        assert!(
            got.is_some(),
            "node {i}: /config/errors {:?}, want {want:?}",
            g.get("/config/errors").1
        );
        assert_eq!(g.revision(), rev, "node {i} keeps the last good revision");
        assert_eq!(
            g.route(),
            good_version,
            "node {i} keeps routing by the old tables"
        );
        let m = g.get("/metrics").1;
        assert!(
            m.lines()
                .any(|l| l == "xdpmesh_tables_reload_failures_total{source=\"etcd\"} 1"),
            "node {i}: {m}"
        );
        assert!(m
            .lines()
            .any(|l| l == format!("xdpmesh_tables_source_revision {rev}")));
    }
    std::fs::write(&file, mesh.tables("v2", "after-bad")).unwrap();
    rev = pushed_revision(&push(&file, &eps, &[]));
    converge(&gws, rev, Duration::from_secs(5));
    for g in &gws {
        assert_eq!(g.route(), "v2");
        assert_eq!(g.get("/config/errors").1, "");
    }

    // 3. Two pushes from the same revision: one wins, the other gets 409.
    let (fa, fb) = (dir.join("a.toml"), dir.join("b.toml"));
    std::fs::write(&fa, mesh.tables("v1", "a")).unwrap();
    std::fs::write(&fb, mesh.tables("v1", "b")).unwrap();
    let from = rev.to_string();
    let (ea, eb) = (eps.clone(), eps.clone());
    let (fa2, fb2, froma, fromb) = (fa.clone(), fb.clone(), from.clone(), from.clone());
    let ta = std::thread::spawn(move || push(&fa2, &ea, &["--revision", &froma]));
    let tb = std::thread::spawn(move || push(&fb2, &eb, &["--revision", &fromb]));
    let (oa, ob) = (ta.join().unwrap(), tb.join().unwrap());
    let codes = [oa.status.code(), ob.status.code()];
    assert!(
        codes == [Some(0), Some(3)] || codes == [Some(3), Some(0)],
        "{codes:?} {oa:?} {ob:?}"
    );
    let (won, lost) = if codes[0] == Some(0) {
        (&oa, &ob)
    } else {
        (&ob, &oa)
    };
    assert!(String::from_utf8_lossy(&lost.stderr).contains("409 conflict"));
    rev = pushed_revision(won);
    converge(&gws, rev, Duration::from_secs(5));
    // The admin API's PUT /tables on a node in etcd mode: the same CAS, 409 when stale.
    let stale = format!(
        "PUT /tables HTTP/1.1\r\nhost: x\r\nx-tables-revision: {from}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        mesh.tables("v1", "stale").len(),
        mesh.tables("v1", "stale")
    );
    let mut s = TcpStream::connect(gws[0].admin).unwrap();
    s.write_all(stale.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    // From the revision it serves: written to etcd, live on every node.
    let fresh = mesh.tables("v1", "put");
    let put = format!(
        "PUT /tables HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{fresh}",
        fresh.len()
    );
    let mut s = TcpStream::connect(gws[0].admin).unwrap();
    s.write_all(put.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, now) = etcd
        .client(&[0, 1, 2])
        .get(&format!("{PREFIX}/tables"), 0)
        .unwrap();
    let now = now.expect("tables in etcd");
    assert_eq!(String::from_utf8_lossy(&now.value), fresh);
    rev = now.mod_revision;
    converge(&gws, rev, Duration::from_secs(5));
    for g in &gws {
        assert!(g.get("/tables").1.starts_with("# change put\n"));
    }
    // tables diff: the file against etcd.
    std::fs::write(&file, &fresh).unwrap();
    let same = xdpmesh(&[
        "tables",
        "diff",
        file.to_str().unwrap(),
        "--etcd",
        &eps,
        "--prefix",
        PREFIX,
    ]);
    assert!(same.status.success(), "{same:?}");
    std::fs::write(&file, fresh.replace("# change put", "# change other")).unwrap();
    let differs = xdpmesh(&[
        "tables",
        "diff",
        file.to_str().unwrap(),
        "--etcd",
        &eps,
        "--prefix",
        PREFIX,
    ]);
    let out = String::from_utf8_lossy(&differs.stdout);
    assert_eq!(differs.status.code(), Some(1), "{out}");
    assert!(out.contains("-# change put\n+# change other\n"), "{out}");

    // 4. A registered endpoint appears on every node; gone within ttl + 1 s of its
    // registrar's death.
    let v3 = upstream("v3");
    let v3s = v3.to_string();
    let mut registrar = Command::new(bin())
        .args([
            "register",
            "--service",
            "web",
            "--address",
            &v3s,
            "--ttl",
            "2s",
        ])
        .args(["--label", "version=v3", "--etcd", &eps, "--prefix", PREFIX])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Reaper<'a>(&'a mut Child);
    impl Drop for Reaper<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let reaper = Reaper(&mut registrar);
    for (i, g) in gws.iter().enumerate() {
        let seen = wait_for(Duration::from_secs(5), || {
            g.get("/tables").1.contains(&v3s).then_some(())
        });
        assert!(seen.is_some(), "node {i} never got the registered endpoint");
    }
    drop(reaper); // SIGKILL: no revoke, the lease has to expire
    let killed = Instant::now();
    let gone = wait_for(Duration::from_secs(6), || {
        gws.iter()
            .all(|g| !g.get("/tables").1.contains(&v3s))
            .then_some(())
    });
    let took = killed.elapsed();
    assert!(
        gone.is_some() && took < Duration::from_secs(3),
        "registration gone after {took:?}"
    );
    println!("etcd_rig: registered endpoint gone from all nodes {took:?} after its registrar was killed (ttl 2 s)");

    // 5. Kill the leader during a stream of changes: none lost, none applied twice.
    let leader = etcd.leader();
    let stream_eps = eps.clone();
    let stream_file = dir.join("stream.toml");
    let tables_for = (0..20u32)
        .map(|k| {
            mesh.tables(
                if k.is_multiple_of(2) { "v1" } else { "v2" },
                &format!("s{k}"),
            )
        })
        .collect::<Vec<_>>();
    let writer = std::thread::spawn(move || {
        let mut revs = Vec::new();
        for (k, t) in tables_for.iter().enumerate() {
            std::fs::write(&stream_file, t).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let o = push(&stream_file, &stream_eps, &[]);
                if o.status.success() {
                    revs.push((k, pushed_revision(&o)));
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "push {k} never went through: {o:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        revs
    });
    std::thread::sleep(Duration::from_millis(150));
    etcd.kill(leader);
    let revs = writer.join().unwrap();
    let last = revs.last().unwrap().1;
    converge(&gws, last, Duration::from_secs(10));
    for (i, g) in gws.iter().enumerate() {
        assert!(g.get("/tables").1.starts_with("# change s19\n"), "node {i}");
        assert_eq!(g.route(), "v2", "node {i}");
        // Each revision applied at most once, in increasing order.
        let applied: Vec<i64> = g
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split("applied etcd revision ").nth(1))
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        let mut counts = HashMap::new();
        for r in &applied {
            *counts.entry(*r).or_insert(0) += 1;
        }
        assert!(
            counts.values().all(|&c| c == 1),
            "node {i} applied twice: {applied:?}"
        );
        assert!(
            applied.windows(2).all(|w| w[0] < w[1]),
            "node {i}: {applied:?}"
        );
    }
    // etcd kept every change: the history lists each pushed revision.
    let h = xdpmesh(&[
        "tables", "history", "--etcd", &eps, "--prefix", PREFIX, "--limit", "100",
    ]);
    let history = String::from_utf8_lossy(&h.stdout);
    for (k, r) in &revs {
        assert!(
            history
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&r.to_string())),
            "change s{k} (revision {r}) missing from the history:\n{history}"
        );
    }
    etcd.start(leader);
    etcd.wait_healthy();
    rev = last;

    // 6. All of etcd stopped: nodes keep serving, degraded; a node restarted meanwhile
    // serves its cache; etcd back: every node converges to the latest revision.
    for i in 0..3 {
        etcd.kill(i);
    }
    for (i, g) in gws.iter().enumerate() {
        let degraded = wait_for(Duration::from_secs(10), || {
            let (code, body) = g.get("/readyz");
            (code == 200 && body.starts_with("degraded")).then_some(())
        });
        assert!(degraded.is_some(), "node {i}: {:?}", g.get("/readyz"));
        assert_eq!(g.route(), "v2", "node {i} serves on with etcd down");
    }
    let (admin0, web0) = (gws[0].admin, gws[0].web);
    drop(gws.remove(0));
    gws.insert(0, Gateway::start(&nodes[0], admin0, web0));
    let (code, body) = gws[0].get("/readyz");
    assert_eq!(code, 200);
    assert!(
        body.starts_with(&format!(
            "degraded: serving etcd revision {rev}, from the local cache"
        )),
        "{body}"
    );
    assert_eq!(
        gws[0].route(),
        "v2",
        "the restarted node routes by its cache"
    );
    assert!(gws[0]
        .stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("serving the local cache")));
    for i in 0..3 {
        etcd.start(i);
    }
    etcd.wait_healthy();
    // Changed meanwhile, by a writer that reached etcd first.
    std::fs::write(&file, mesh.tables("v1", "back")).unwrap();
    rev = pushed_revision(&push(&file, &eps, &[]));
    let t = converge(&gws, rev, Duration::from_secs(10));
    for (i, g) in gws.iter().enumerate() {
        assert!(
            g.get("/readyz").1.starts_with("ready: etcd revision"),
            "node {i}"
        );
        assert_eq!(g.route(), "v1", "node {i}");
    }
    println!("etcd_rig: after etcd's restart all nodes at revision {rev} in {t:?}");

    // 7. History compacted away: the nodes go on (they never resume a watch from an old
    // revision), and `xdpmesh check` reads the tables in etcd.
    etcd.client(&[0, 1, 2])
        .call(
            "/v3/kv/compaction",
            &serde_json::json!({"revision": rev.to_string(), "physical": true}),
        )
        .expect("compaction");
    std::fs::write(&file, mesh.tables("v2", "compacted")).unwrap();
    rev = pushed_revision(&push(&file, &eps, &[]));
    converge(&gws, rev, Duration::from_secs(5));
    for g in &gws {
        assert_eq!(g.route(), "v2");
    }
    let h = xdpmesh(&["tables", "history", "--etcd", &eps, "--prefix", PREFIX]);
    assert!(
        String::from_utf8_lossy(&h.stdout).contains("(older revisions compacted)"),
        "{h:?}"
    );
    let check = xdpmesh(&["check", "--config", nodes[1].to_str().unwrap()]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(out.contains("ok: node gw1"), "{out}");
}

/// etcd with TLS and client certificates (`--client-cert-auth`): `tables push`/`get` with
/// `--ca --cert --key`, and a node with `[etcd] ca, cert, key` on https endpoints.
#[test]
fn etcd_over_tls_with_a_client_certificate() {
    if !etcd_installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("xm-etcd-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = Dir(dir.clone());
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{script}: {o:?}");
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(&format!("openssl req -x509 {ec} -keyout ca-key.pem -out ca.pem -days 1 -subj /CN=xm-etcd-ca 2>/dev/null"));
    for (name, eku) in [
        ("server", "serverAuth,clientAuth"),
        ("client", "clientAuth"),
    ] {
        sh(&format!(
            "openssl req {ec} -keyout {name}-key.pem -out {name}.csr -subj /CN={name} 2>/dev/null\n\
             printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage={eku}\\n' >{name}.ext\n\
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out {name}.pem -days 1 -extfile {name}.ext 2>/dev/null"
        ));
    }
    let (cp, pp) = (free_port(), free_port());
    let c = format!("https://127.0.0.1:{cp}");
    let p = format!("http://127.0.0.1:{pp}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _etcd = Kill(
        Command::new("etcd")
            .current_dir(&dir)
            .args(["--name", "tls", "--data-dir", "data"])
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("tls={p}")])
            .args(["--cert-file", "server.pem", "--key-file", "server-key.pem"])
            .args(["--client-cert-auth", "--trusted-ca-file", "ca.pem"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd"),
    );
    let tls = |d: &Path| {
        let s = |f: &str| d.join(f).to_str().unwrap().to_string();
        vec![
            "--ca".to_string(),
            s("ca.pem"),
            "--cert".into(),
            s("client.pem"),
            "--key".into(),
            s("client-key.pem"),
        ]
    };
    let mesh = Mesh {
        webs: (0..NODES)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect(),
        v1: upstream("v1"),
        v2: upstream("v2"),
    };
    let file = dir.join("tables.toml");
    std::fs::write(&file, mesh.tables("v2", "tls")).unwrap();
    let args = tls(&dir);
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let pushed = wait_for(Duration::from_secs(20), || {
        let o = push(&file, &c, &extra);
        o.status.success().then_some(o)
    });
    let pushed = pushed.unwrap_or_else(|| {
        let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        panic!("push over TLS never went through; etcd's log:\n{log}")
    });
    let rev = pushed_revision(&pushed);
    // Without a client certificate etcd refuses the connection.
    let o = push(&file, &c, &["--ca", dir.join("ca.pem").to_str().unwrap()]);
    assert!(!o.status.success(), "{o:?}");
    let mut get = vec!["tables", "get", "--etcd", &c, "--prefix", PREFIX];
    get.extend_from_slice(&extra);
    let o = xdpmesh(&get);
    assert_eq!(String::from_utf8_lossy(&o.stdout), mesh.tables("v2", "tls"));

    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!(
            "[node]\nname = \"gw0\"\ntables = \"cache.toml\"\nadmin = \"{admin}\"\nlisteners = [\"n0\"]\n\n\
             [etcd]\nendpoints = [\"{c}\"]\nprefix = \"{PREFIX}\"\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client-key.pem\"\n"
        ),
    )
    .unwrap();
    let gw = Gateway::start(&node, admin, mesh.webs[0]);
    assert_eq!(gw.get("/readyz").1, format!("ready: etcd revision {rev}\n"));
    assert_eq!(gw.route(), "v2");
}

/// etcd with authentication on: `--credentials-file` (user:password) for the CLI, and
/// `[etcd] credentials_file` for a node, which watches with its token.
#[test]
fn etcd_with_a_user_and_password() {
    if !etcd_installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("xm-etcd-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = Dir(dir.clone());
    let (cp, pp) = (free_port(), free_port());
    let c = format!("http://127.0.0.1:{cp}");
    let p = format!("http://127.0.0.1:{pp}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _etcd = Kill(
        Command::new("etcd")
            .current_dir(&dir)
            .args(["--name", "auth", "--data-dir", "data"])
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("auth={p}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd"),
    );
    let admin_client =
        control::etcd::Client::new(&control::etcd::EtcdConfig::new(vec![c.clone()], PREFIX))
            .unwrap();
    let up = wait_for(Duration::from_secs(20), || {
        admin_client
            .call(
                "/v3/auth/user/add",
                &serde_json::json!({"name": "root", "password": "s3cret"}),
            )
            .ok()
    });
    assert!(up.is_some(), "etcd never answered");
    for (path, body) in [
        ("/v3/auth/role/add", serde_json::json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        admin_client.call(path, &body).expect(path);
    }
    std::fs::write(dir.join("user"), "root:s3cret\n").unwrap();
    let creds = dir.join("user");
    let creds = creds.to_str().unwrap();
    let mesh = Mesh {
        webs: vec![SocketAddr::from(([127, 0, 0, 1], free_port()))],
        v1: upstream("v1"),
        v2: upstream("v2"),
    };
    let file = dir.join("tables.toml");
    std::fs::write(&file, mesh.tables("v1", "auth")).unwrap();
    let refused = push(&file, &c, &[]);
    assert!(!refused.status.success(), "{refused:?}");
    let rev = pushed_revision(&push(&file, &c, &["--credentials-file", creds]));

    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!(
            "[node]\nname = \"gw0\"\ntables = \"cache.toml\"\nadmin = \"{admin}\"\n\n\
             [etcd]\nendpoints = [\"{c}\"]\nprefix = \"{PREFIX}\"\ncredentials_file = \"user\"\n"
        ),
    )
    .unwrap();
    let gw = Gateway::start(&node, admin, mesh.webs[0]);
    assert_eq!(gw.revision(), rev);
    assert_eq!(gw.route(), "v1");
    // The watch carries the token too: the next change arrives.
    std::fs::write(&file, mesh.tables("v2", "auth-2")).unwrap();
    let rev = pushed_revision(&push(&file, &c, &["--credentials-file", creds]));
    converge(std::slice::from_ref(&gw), rev, Duration::from_secs(5));
    assert_eq!(gw.route(), "v2");
}
