//! `xdpmesh run` as an operator runs it: a node file with one two-queue veth interface and
//! built-in listeners, the binary started in the gateway's namespace, kernel clients in the
//! peer's. Checks that both workers serve flows and hand each other misdirected segments
//! (counted on /metrics), that SIGTERM drains (an active connection finishes, new ones are
//! refused), that the program detaches on exit, and that an immediate restart rebinds.
//! Needs root; under CI=true it must run.

mod common;

use common::kernel_echo_client;
use dataplane::netns::{skip_unless_root, wait_for, NetNs, VethPair};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const GW: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 100);

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(ns: &NetNs, node: &Path) -> Running {
        let mut child = ns
            .command(env!("CARGO_BIN_EXE_xdpmesh"))
            .args(["run", "--config"])
            .arg(node)
            .args(["--drain-timeout", "10s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn xdpmesh run");
        ns.wait_entered(&mut child).expect("enter netns");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                println!("xdpmesh: {l}");
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut r = Running { child, lines };
        r.expect_line("ready", Duration::from_secs(30));
        r
    }

    fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        loop {
            match self.lines.recv_timeout(timeout) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait();
                    panic!("no line with {needle:?} from xdpmesh (status {status:?})");
                }
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for exit and returns the remaining stdout.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().expect("wait");
        (status, self.lines.iter().collect())
    }
}

fn write_node(dir: &Path, ifname: &str) -> PathBuf {
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!(
            "[node]\nname = \"rg\"\ntables = \"tables.toml\"\n\n\
             [[interface]]\nname = \"{ifname}\"\naddress = \"{GW}/24\"\n\
             queues = [0, 1]\ncores = [0, 1]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tables.toml"),
        format!(
            "[[listener]]\nname = \"echo\"\nbind = \"{GW}:7\"\nprotocol = \"echo\"\n\n\
             [[listener]]\nname = \"web\"\nbind = \"{GW}:80\"\nprotocol = \"http-ok\"\n"
        ),
    )
    .unwrap();
    node
}

/// `name{labels} value` lines of the admin API's /metrics whose name starts with `prefix`.
fn metrics(ns: &NetNs, prefix: &str) -> HashMap<String, u64> {
    let text = ns
        .exec_ok([
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:9901/metrics",
        ])
        .expect("GET /metrics");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A worker counter of the worker on `core` (it serves queue `core` here).
fn per_queue(m: &HashMap<String, u64>, name: &str, core: u32) -> u64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("xdpmesh_worker_{name}_total{{"))
                && k.contains(&format!("worker=\"{core}\""))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// (core in the thread name, Cpus_allowed_list) of the process's worker threads.
fn worker_cpus(pid: u32) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let Some(q) = comm.trim().strip_prefix("xm-core") else {
            continue;
        };
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        v.push((q.to_string(), cpus));
    }
    v.sort();
    v
}

#[test]
fn run_serves_on_two_queues_drains_on_sigterm_and_restarts() {
    if skip_unless_root("run_serves_on_two_queues_drains_on_sigterm_and_restarts") {
        return;
    }
    let pair = VethPair::create_with_queues("rg", None, "10.96.0.2/24", 2).expect("veth pair");
    let dir = std::env::temp_dir().join(format!("xdpmesh-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = write_node(&dir, &pair.if_a);
    let echo = SocketAddrV4::new(GW, 7);

    let mut gw = Running::start(&pair.a, &node);
    assert_eq!(
        worker_cpus(gw.child.id()),
        vec![
            ("0".to_string(), "0".to_string()),
            ("1".to_string(), "1".to_string())
        ],
        "each worker thread is pinned to its core"
    );

    // 64 concurrent echo flows, byte-exact.
    pair.b.run(|| {
        std::thread::scope(|s| {
            let flows: Vec<_> = (0..64u64)
                .map(|i| s.spawn(move || kernel_echo_client(echo, 256 * 1024, i)))
                .collect();
            for f in flows {
                let (sent, got, n) = f.join().unwrap();
                assert_eq!(n, 256 * 1024);
                assert_eq!(sent, got, "echo differs");
            }
        })
    });
    let body = pair
        .b
        .exec_ok(["curl", "-sf", "--max-time", "5", &format!("http://{GW}/")])
        .expect("curl http-ok");
    assert_eq!(body, "ok");

    // Both workers own flows; segments that landed on the other queue were handed over.
    let m = wait_for(Duration::from_secs(10), || {
        let m = metrics(&pair.a, "xdpmesh_worker_");
        let accepted = per_queue(&m, "accepted", 0) + per_queue(&m, "accepted", 1);
        (accepted == 65).then_some(m)
    })
    .expect("65 accepted connections on /metrics");
    for q in [0, 1] {
        assert!(
            per_queue(&m, "accepted", q) > 0,
            "queue {q} served no flow: {m:?}"
        );
    }
    let out = per_queue(&m, "handoff_out", 0) + per_queue(&m, "handoff_out", 1);
    let inn = per_queue(&m, "handoff_in", 0) + per_queue(&m, "handoff_in", 1);
    assert!(out > 0, "no hand-offs counted: {m:?}");
    assert!(inn > 0 && inn <= out);
    println!(
        "hand-offs: {out} out, {inn} in; accepted q0 {} q1 {}",
        per_queue(&m, "accepted", 0),
        per_queue(&m, "accepted", 1)
    );
    // The stacks' and the rings' counters are on /metrics too, per worker, every label
    // written: an operator sees drops and retransmissions without a debugger.
    let t = metrics(&pair.a, "xdpmesh_");
    let series = |name: &str, core: u32, label: &str| {
        t.get(&format!(
            "xdpmesh_{name}_total{{worker=\"{core}\",{label}}}"
        ))
        .copied()
    };
    let mut segments = 0;
    for q in [0, 1] {
        let s = series("tcp_events", q, "event=\"segments_in\"").expect("segments_in series");
        assert!(s > 0, "worker {q} counted no segments: {t:?}");
        segments += s;
        assert!(series("tcp_events", q, "event=\"retransmits\"").is_some());
        assert!(series("tcp_drops", q, "reason=\"tcp_checksum\"").is_some());
        assert!(series("ring_drops", q, "reason=\"rx_ring_full\"").is_some());
    }
    // 65 connections, each at least SYN, ACK, request and FIN.
    assert!(segments >= 65 * 4, "{segments} segments in");

    // SIGTERM with a connection mid-exchange: it finishes, new connections are refused.
    pair.b.run(|| {
        let mut c = TcpStream::connect_timeout(&echo.into(), Duration::from_secs(5)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1024];
        c.write_all(&[1; 1024]).unwrap();
        c.read_exact(&mut buf).unwrap();
        gw.signal(libc::SIGTERM);
        gw.expect_line("draining", Duration::from_secs(10));
        let refused = TcpStream::connect_timeout(&echo.into(), Duration::from_secs(5));
        assert_eq!(
            refused.map(|_| ()).unwrap_err().kind(),
            ErrorKind::ConnectionRefused,
            "a draining gateway refuses new connections"
        );
        c.write_all(&[2; 1024]).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [2; 1024]);
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("clean close after drain");
        assert!(rest.is_empty());
    });
    let (status, lines) = gw.finish();
    assert!(status.success(), "exit {status}: {lines:?}");
    let finished: usize = lines
        .iter()
        .filter(|l| l.contains("connections finished"))
        .filter_map(|l| {
            l.split(": ")
                .nth(2)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(
        finished, 1,
        "the active connection finished in the drain: {lines:?}"
    );
    let link = pair.a.exec_ok(["ip", "link", "show", &pair.if_a]).unwrap();
    assert!(!link.contains("prog/xdp"), "program still attached: {link}");

    // An immediate restart binds the same queues (EBUSY retried) and serves.
    let gw = Running::start(&pair.a, &node);
    let body = pair
        .b
        .exec_ok(["curl", "-sf", "--max-time", "5", &format!("http://{GW}/")])
        .expect("curl after restart");
    assert_eq!(body, "ok");
    gw.signal(libc::SIGINT);
    let (status, _) = gw.finish();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
