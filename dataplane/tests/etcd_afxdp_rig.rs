//! Issue #20's AF_XDP pair: the rig's two gateways on AF_XDP take their tables from etcd
//! (one member, in xm-srv on 10.10.3.2:2379, a prefix per gateway), serve a request through
//! the mesh, and apply a change pushed with `xdpmesh tables push` within a second.
//!
//! The etcd client is a kernel connection from the gateway's namespace through the interface
//! the gateway serves. The gateway's XDP program takes the replies to its own ephemeral ports
//! (32768–60999), which Linux picks from too: the client binds a port below them
//! (`control::kernelconn`). Without that, this test's change never arrived ("connection timed
//! out", readyz degraded). Root, the rig; under CI=true it must run.

mod common;

use common::{admin_get, rig, RigGuard};
use dataplane::netns::{skip_unless_root, wait_for, NetNs};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ETCD: &str = "http://10.10.3.2:2379";
const DEADLINE: Duration = Duration::from_secs(30);

/// Killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(ns: &str, args: &[&str], log: &Path) -> Reaped {
    let out = std::fs::File::create(log).unwrap();
    Reaped(
        NetNs::existing(ns)
            .unwrap()
            .command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}")),
    )
}

fn wait_line(log: &Path, needle: &str) {
    let found = wait_for(DEADLINE, || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
            .then_some(())
    });
    assert!(
        found.is_some(),
        "no {needle:?} in {}:\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// An HTTP server in xm-srv on 10.10.3.2:8080 answering "from-srv" to everything, until drop.
struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Server {
        let l = NetNs::existing("xm-srv")
            .unwrap()
            .try_run(|| TcpListener::bind("10.10.3.2:8080"))
            .expect("enter xm-srv")
            .expect("bind 10.10.3.2:8080");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut w = c;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            let body = "from-srv";
                            if write!(
                                w,
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Server { stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `curl` from xm-cli through gateway A: (status, body).
fn get(path: &str) -> (String, String) {
    let out = NetNs::existing("xm-cli")
        .unwrap()
        .command("curl")
        .args(["-s", "--max-time", "3", "-w", "\n%{http_code}"])
        .arg(format!("http://10.10.1.1{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

fn revision(ns: &NetNs) -> i64 {
    let body = admin_get(ns, "/readyz");
    body.split("revision ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(-1)
}

fn push(work: &Path, file: &str, prefix: &str) -> i64 {
    let out = NetNs::existing("xm-srv")
        .unwrap()
        .command(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["tables", "push"])
        .arg(work.join(file))
        .args(["--etcd", ETCD, "--prefix", prefix])
        .output()
        .expect("xdpmesh tables push");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tables push {file}: {text}");
    text.split("revision ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {text:?}"))
}

#[test]
fn an_afxdp_pair_on_the_rig_takes_its_tables_from_etcd() {
    if skip_unless_root("an_afxdp_pair_on_the_rig_takes_its_tables_from_etcd") {
        return;
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "etcd is not installed (scripts/lib/deps.sh installs etcd-server)"
        );
        println!("SKIPPED: no etcd binary");
        return;
    }
    let work = std::env::temp_dir().join(format!("xdpmesh-etcd-afxdp-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let _rig = RigGuard { work: work.clone() };
    rig(&["up"], &work);
    // The CA, identities, node files and tables of the rig, as `rig.sh mesh` makes them; its
    // own gateways are stopped: these run from etcd.
    rig(&["mesh", "--backend", "afxdp"], &work);
    rig(&["stop"], &work);
    let _etcd = spawn(
        "xm-srv",
        &[
            "etcd",
            "--name",
            "m0",
            "--data-dir",
            &work.join("etcd").display().to_string(),
            "--listen-client-urls",
            ETCD,
            "--advertise-client-urls",
            ETCD,
            "--listen-peer-urls",
            "http://10.10.3.2:2380",
            "--initial-advertise-peer-urls",
            "http://10.10.3.2:2380",
            "--initial-cluster",
            "m0=http://10.10.3.2:2380",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ],
        &work.join("etcd.log"),
    );
    let srv = NetNs::existing("xm-srv").unwrap();
    let healthy = wait_for(DEADLINE, || {
        srv.command("etcdctl")
            .args(["--endpoints", ETCD, "endpoint", "health"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
    assert!(healthy.is_some(), "etcd in xm-srv is not healthy");
    let _server = Server::start();

    push(&work, "gwb-tables.toml", "/xm/gwb");
    push(&work, "gwa-tables.toml", "/xm/gwa");
    for (name, prefix) in [("gwa", "/xm/gwa"), ("gwb", "/xm/gwb")] {
        let node = work.join(format!("{name}-node.toml"));
        let text = std::fs::read_to_string(&node).unwrap();
        let text = text.replacen(
            &format!("tables = \"{name}-tables.toml\""),
            &format!("tables = \"{name}-cache.toml\""),
            1,
        );
        assert!(text.contains("-cache.toml"), "{text}");
        std::fs::write(
            &node,
            format!("{text}\n[etcd]\nendpoints = [\"{ETCD}\"]\nprefix = \"{prefix}\"\n"),
        )
        .unwrap();
    }
    let t = Instant::now();
    let run = |ns: &str, name: &str| {
        let log = work.join(format!("{name}-etcd.log"));
        let node = work.join(format!("{name}-node.toml")).display().to_string();
        let g = spawn(
            ns,
            &[
                env!("CARGO_BIN_EXE_xdpmesh"),
                "run",
                "--backend",
                "afxdp",
                "--config",
                &node,
            ],
            &log,
        );
        wait_line(&log, " ready");
        g
    };
    let _gwb = run("xm-gwb", "gwb");
    let _gwa = run("xm-gwa", "gwa");
    println!(
        "both gateways ready from etcd in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (gwa, gwb) = (
        NetNs::existing("xm-gwa").unwrap(),
        NetNs::existing("xm-gwb").unwrap(),
    );
    assert!(admin_get(&gwa, "/readyz").starts_with("ready: etcd revision"));
    assert!(admin_get(&gwb, "/readyz").starts_with("ready: etcd revision"));
    let through = wait_for(DEADLINE, || {
        (get("/") == ("200".into(), "from-srv".into())).then_some(())
    });
    assert!(through.is_some(), "no 200 through the pair: {:?}", get("/"));

    // A change for A: a route answering 418 under /tea, pushed to A's prefix.
    let tables = std::fs::read_to_string(work.join("gwa-tables.toml")).unwrap();
    let first_route = tables.find("[[route]]").expect("a route in A's tables");
    let changed = format!(
        "{}[[route]]\nname = \"tea\"\nservice = \"web\"\nmatch = {{ path = {{ prefix = \"/tea\" }} }}\n\
         fault = {{ abort = {{ percent = 100, status = 418 }} }}\n\n{}",
        &tables[..first_route],
        &tables[first_route..]
    );
    std::fs::write(work.join("gwa-tables-2.toml"), changed).unwrap();
    assert_eq!(get("/tea").0, "200", "before the change");
    let t = Instant::now();
    let rev = push(&work, "gwa-tables-2.toml", "/xm/gwa");
    let live = wait_for(Duration::from_secs(5), || {
        (revision(&gwa) >= rev && get("/tea").0 == "418").then_some(t.elapsed())
    });
    let took = live.unwrap_or_else(|| {
        panic!(
            "revision {rev} not live on A: readyz {:?}, /tea {:?}",
            admin_get(&gwa, "/readyz"),
            get("/tea")
        )
    });
    println!(
        "revision {rev} live on gateway A (AF_XDP) {:.0} ms after the push began",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(get("/").0, "200", "the rest still served");
    // B keeps its own prefix's revision.
    assert!(revision(&gwb) > 0 && revision(&gwb) < rev);
}
