//! HTTP/1.1 `200 ok` answered by nginx against our worker's built-in `http-ok`, loaded by wrk,
//! on the same machine in the same run:
//! - nginx: one worker process (`return 200 "ok"`) on the kernel address of a plain veth end;
//! - http-ok: our single-queue worker (steering program, AF_XDP, tcpstack) on an end that has no
//!   kernel address.
//!
//! wrk runs in the peer namespace. Rounds alternate (nginx, http-ok, nginx, ...); the report gives
//! each round's req/s and latency percentiles and the ratio http-ok/nginx. On a machine with two
//! or more CPUs the server is pinned to CPU 0 and wrk to CPU 1 (`taskset`, and
//! `sched_setaffinity` for our worker thread), so each side has one core.
//!
//! Needs root, nginx, wrk and taskset. `cargo bench -p dataplane --bench http`; under
//! `cargo test` it runs one 1-second round of each as a smoke test.

use dataplane::netns::{is_root, root_tests_required, wait_for, VethPair};
mod common;

use common::{cpu_jiffies, cpu_shares, thread_cpu};
use dataplane::worker::Builtin;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const OURS: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 100);
const KERNEL_A: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const PEER_CIDR: &str = "10.98.0.2/24";
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;

/// What one wrk run printed.
#[derive(Clone, Debug, Default, PartialEq)]
struct Wrk {
    requests: u64,
    rps: f64,
    /// Latency at 50, 75, 90 and 99 %.
    latency: [Duration; 4],
    /// connect + read + write + timeout errors.
    socket_errors: u64,
    non_2xx: u64,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let unit_at = s.find(|c: char| c.is_ascii_alphabetic())?;
    let v: f64 = s[..unit_at].parse().ok()?;
    let scale = match &s[unit_at..] {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(v * scale))
}

/// Parses wrk 4's report (`--latency`); `None` when a line it always prints is missing.
fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let (mut got_requests, mut got_rps, mut got_latency) = (false, false, 0);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            w.rps = rest.trim().parse().ok()?;
            got_rps = true;
        } else if words.len() >= 3 && words[1] == "requests" && words[2] == "in" {
            w.requests = words[0].parse().ok()?;
            got_requests = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                let n = part.split_whitespace().nth(1)?;
                w.socket_errors += n.parse::<u64>().ok()?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = rest.trim().parse().ok()?;
        } else if words.len() == 2 {
            let slot = match words[0] {
                "50%" => 0,
                "75%" => 1,
                "90%" => 2,
                "99%" => 3,
                _ => continue,
            };
            w.latency[slot] = parse_duration(words[1])?;
            got_latency += 1;
        }
    }
    (got_requests && got_rps && got_latency == 4).then_some(w)
}

/// user + system CPU seconds of `pids` so far (processes that are gone count 0).
fn process_cpu(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|st| {
            // Fields after the `(comm)`: state is field 3, utime 14 and stime 15 (proc(5)).
            let rest = &st[st.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum::<u64>() as f64
        / hz
}

fn pinning() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Pins the calling thread to `cpu`.
fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// Argument prefix that runs a program on `cpu` (nothing when there is one CPU).
fn on_cpu(cpu: usize) -> Vec<String> {
    if pinning() {
        vec!["taskset".into(), "-c".into(), cpu.to_string()]
    } else {
        Vec::new()
    }
}

fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(prog).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(prog).is_file())
    })
}

/// Waits until a kernel socket in B can connect to `addr`.
fn wait_listening(pair: &VethPair, addr: SocketAddrV4) -> bool {
    wait_for(Duration::from_secs(10), || {
        pair.b
            .run(|| TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).ok())
            .map(drop)
    })
    .is_some()
}

fn wrk(pair: &VethPair, addr: SocketAddrV4, secs: u64, conns: u32) -> Wrk {
    let mut args = on_cpu(CLIENT_CPU);
    args.extend(
        [
            "wrk",
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "2s",
            &format!("http://{}/", addr.ip()),
        ]
        .map(String::from),
    );
    let out = pair.b.exec(&args).expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed ({}): {}{}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's report:\n{text}"))
}

/// Per round: what wrk saw, each CPU's busy share, and for http-ok the worker's own counts.
struct Round {
    wrk: Wrk,
    /// Each CPU's (busy, softirq) share during the wrk run, other users' load included.
    cpu: Vec<(f64, f64)>,
    /// CPU seconds the server used during the run: nginx's processes (user + system, so also
    /// the softirq work that ran while they were current: tick accounting), or our worker
    /// thread's clock (which spins while busy, so this overstates what it needs).
    server_cpu: f64,
    /// http-ok only: requests the worker answered, and its loop's CPU share.
    served: Option<(u64, f64)>,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "xm-http-bench-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(d.join("tmp")).expect("temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stop_nginx(mut child: Child) {
    // SIGTERM is nginx's fast shutdown; the namespace's drop kills whatever is left.
    // SAFETY: kill has no memory preconditions; `child` is our own, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if wait_for(Duration::from_secs(5), || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn nginx_round(secs: u64, conns: u32) -> Round {
    let pair = VethPair::create("hk", Some("10.98.0.1/24"), PEER_CIDR).expect("veth pair");
    let dir = TempDir::new("nginx");
    let d = dir.0.display();
    // One worker process answering every request with 200 "ok" from the rewrite module's
    // `return`. keepalive_requests is raised from nginx's 1000 so it, like http-ok, keeps each
    // of wrk's connections for the whole round (no reconnects in its figures).
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nuser root;\nerror_log stderr;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  keepalive_requests 100000000;\n\
         \x20 server {{\n    listen {KERNEL_A}:80;\n    location / {{ return 200 \"ok\"; }}\n  }}\n}}\n"
    );
    let conf_path = dir.0.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut args = on_cpu(SERVER_CPU);
    args.extend([
        "nginx".to_string(),
        "-e".into(),
        "stderr".into(),
        "-p".into(),
        dir.0.display().to_string(),
        "-c".into(),
        conf_path.display().to_string(),
    ]);
    let mut cmd = pair.a.command(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut child = cmd.spawn().expect("start nginx");
    pair.a.wait_entered(&mut child).expect("nginx in netns");
    let addr = SocketAddrV4::new(KERNEL_A, 80);
    if !wait_listening(&pair, addr) {
        let status = child.try_wait().ok().flatten();
        stop_nginx(child);
        panic!("nginx did not listen on {addr} within 10 s (exit: {status:?})");
    }
    let pids = pair.a.pids().expect("nginx pids");
    let (before, cpu0) = (cpu_jiffies(), process_cpu(&pids));
    let w = wrk(&pair, addr, secs, conns);
    let (cpu, server_cpu) = (
        cpu_shares(&before, &cpu_jiffies()),
        process_cpu(&pids) - cpu0,
    );
    stop_nginx(child);
    Round {
        wrk: w,
        cpu,
        server_cpu,
        served: None,
    }
}

fn ours_round(secs: u64, conns: u32) -> Round {
    let pair = VethPair::create("hx", None, PEER_CIDR).expect("veth pair");
    let addr = SocketAddrV4::new(OURS, 80);
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            pair.a.run(|| {
                if pinning() {
                    pin_self(SERVER_CPU);
                }
                let mut w = common::worker(&pair.if_a, OURS, 80, Builtin::HttpOk);
                ready.store(true, Ordering::SeqCst);
                let (cpu0, t0) = (thread_cpu(), Instant::now());
                w.run(&stop).expect("worker loop");
                let used = (thread_cpu() - cpu0).as_secs_f64();
                (w.stats, used, used / t0.elapsed().as_secs_f64())
            })
        });
        let up = wait_for(Duration::from_secs(10), || {
            ready.load(Ordering::SeqCst).then_some(())
        })
        .is_some()
            && wait_listening(&pair, addr);
        if !up {
            stop.store(true, Ordering::SeqCst);
            panic!("http-ok worker did not listen on {addr} within 10 s");
        }
        let before = cpu_jiffies();
        let w = wrk(&pair, addr, secs, conns);
        let cpu = cpu_shares(&before, &cpu_jiffies());
        stop.store(true, Ordering::SeqCst);
        let (stats, server_cpu, share) = worker.join().expect("worker thread");
        assert_eq!(stats.http_bad_requests, 0, "wrk's requests answered 400");
        // wrk counts completed responses only; the worker may have answered a few more.
        assert!(
            stats.http_requests >= w.requests,
            "worker answered {} requests, wrk counted {}",
            stats.http_requests,
            w.requests
        );
        Round {
            wrk: w,
            cpu,
            server_cpu,
            served: Some((stats.http_requests, share)),
        }
    })
}

fn check(name: &str, r: &Round) {
    assert!(r.wrk.requests > 0, "{name}: wrk completed no request");
    assert_eq!(r.wrk.socket_errors, 0, "{name}: wrk socket errors");
    assert_eq!(r.wrk.non_2xx, 0, "{name}: non-2xx responses");
}

fn line(name: &str, i: usize, r: &Round) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cpus: Vec<String> = r
        .cpu
        .iter()
        .map(|(b, si)| format!("{:3.0}% (si {:2.0}%)", b * 100.0, si * 100.0))
        .collect();
    print!(
        "  {name:7} round {i}: {:8.0} req/s  latency p50 {:.3} ms  p75 {:.3}  p90 {:.3}  p99 {:.3}  \
         server {:5.2} CPU-s = {:6.0} req per CPU-s  cpus busy [{}]",
        r.wrk.rps,
        ms(r.wrk.latency[0]),
        ms(r.wrk.latency[1]),
        ms(r.wrk.latency[2]),
        ms(r.wrk.latency[3]),
        r.server_cpu,
        r.wrk.requests as f64 / r.server_cpu.max(1e-3),
        cpus.join(", ")
    );
    match r.served {
        Some((n, share)) => println!(
            "  worker: {n} answered, loop {:.0} % of a core",
            share * 100.0
        ),
        None => println!(),
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mut missing: Vec<&str> = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces, AF_XDP)");
    }
    for prog in ["wrk", "nginx", "taskset"] {
        if !in_path(prog) {
            missing.push(prog);
        }
    }
    if !missing.is_empty() {
        if root_tests_required() {
            panic!("http bench needs {}", missing.join(", "));
        }
        println!("skipped: the http bench needs {}", missing.join(", "));
        return;
    }
    let (secs, rounds, conns) = if bench { (8, 6, 32) } else { (1, 1, 32) };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "wrk -t1 -c{conns} -d{secs}s against `200 ok`, {rounds} interleaved rounds each; {}; \
         load average at start: {}",
        if pinning() {
            format!("server on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}")
        } else {
            "one CPU, nothing pinned".into()
        },
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut n = Vec::new();
    let mut x = Vec::new();
    for i in 0..rounds {
        let r = nginx_round(secs, conns);
        line("nginx", i, &r);
        check("nginx", &r);
        n.push(r);
        let r = ours_round(secs, conns);
        line("http-ok", i, &r);
        check("http-ok", &r);
        x.push(r);
    }
    let mean = |v: &[Round]| v.iter().map(|r| r.wrk.rps).sum::<f64>() / v.len() as f64;
    let best = |v: &[Round]| v.iter().map(|r| r.wrk.rps).fold(0.0, f64::max);
    // Requests per CPU-second of the server: less sensitive than req/s to other load on the
    // machine taking the server's core away for part of a round.
    let per_cpu = |v: &[Round]| {
        v.iter().map(|r| r.wrk.requests as f64).sum::<f64>()
            / v.iter().map(|r| r.server_cpu).sum::<f64>().max(1e-3)
    };
    let mut ratios: Vec<f64> = n
        .iter()
        .zip(&x)
        .map(|(a, b)| b.wrk.rps / a.wrk.rps)
        .collect();
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    for (name, v) in [
        ("nginx (1 worker process)", &n),
        ("http-ok (1 AF_XDP worker)", &x),
    ] {
        println!(
            "  {name:26} {:8.0} req/s mean, {:8.0} best round, {:7.0} req per server CPU-second",
            mean(v),
            best(v),
            per_cpu(v)
        );
    }
    println!(
        "  ratio http-ok/nginx: req/s {:.2} (mean), {:.2} (median of rounds: {}), \
         {:.2} (best rounds), {:.2} (per server CPU-second)",
        mean(&x) / mean(&n),
        ratios[ratios.len() / 2],
        shown.join(" "),
        best(&x) / best(&n),
        per_cpu(&x) / per_cpu(&n)
    );
}
