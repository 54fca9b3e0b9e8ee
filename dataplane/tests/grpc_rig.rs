//! gRPC end to end (issue #19) on the four-namespace rig, kernel backend then AF_XDP: a Python
//! `grpcio` client in xm-cli → gateway A (HTTP/2 front) ══ mTLS ══ gateway B → a `grpcio`
//! server in xm-srv, which speaks only HTTP/2 (`upstream_protocol = "h2c"` on B).
//!
//! - unary and server-streaming calls succeed, and 64 concurrent calls on one channel;
//! - A routes by gRPC method (`match.grpc`): `SayHello` and the rest of the service are
//!   counted under two routes;
//! - B denies one method (`paths` in an authorization rule): PERMISSION_DENIED, as a
//!   trailers-only answer from B that A passes on;
//! - a server's own status (NOT_FOUND, in trailers-only form) reaches the client;
//! - a call whose deadline is shorter than the server's delay ends DEADLINE_EXCEEDED;
//! - the gateway holds a call to its `grpc-timeout`: curl sends one (curl has no deadline of
//!   its own) and gets DEADLINE_EXCEEDED from the gateway;
//! - A's `/metrics` counts `grpc_status` 0, 5 and 7 on the routes.
//!
//! Needs root and Debian's python3-grpcio; under CI=true it must run.

mod common;

use common::{admin_get, metric_in, put_tables, repo, rig, RigGuard};
use dataplane::netns::{skip_unless_root, NetNs};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 50051;
/// Debian's interpreter, which has python3-grpcio (another `python3` may be first on PATH).
const PYTHON: &str = "/usr/bin/python3";

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gRPC server in xm-srv, once it listens.
fn start_server(srv: &NetNs) -> Reaped {
    let mut child = srv
        .command(PYTHON)
        .arg(repo().join("dataplane/tests/grpc/greeter.py"))
        .arg(format!("10.10.3.2:{PORT}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start greeter.py");
    let stdout = child.stdout.take().expect("its stdout");
    let guard = Reaped(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("greeter.py says ready within 20 s");
    assert_eq!(line.trim(), "ready", "greeter.py: {line:?}");
    guard
}

fn a_tables() -> String {
    format!(
        r#"{base}
[[service]]
name = "greeter"
hosts = ["greeter.rig.mesh"]
endpoints = [{{ address = "10.10.3.2:{PORT}", via = "gw-b" }}]

[[route]]
name = "say"
service = "greeter"
match = {{ grpc = {{ service = "helloworld.Greeter", method = "SayHello" }} }}
retries = {{ on = ["unavailable"] }}

[[route]]
name = "greeter"
service = "greeter"
match = {{ grpc = {{ service = "helloworld.Greeter" }} }}
"#,
        base = include_str!("../../scripts/rig/gwa-tables.toml"),
    )
}

fn b_tables() -> String {
    format!(
        r#"{base}
[[service]]
name = "greeter"
endpoints = [{{ address = "10.10.3.2:{PORT}" }}]
upstream_protocol = "h2c"

[[authorization]]
service = "greeter"
allow = ["spiffe://rig.mesh/sa/client"]
paths = [{{ prefix = "/helloworld.Greeter" }}]

[[authorization]]
service = "greeter"
deny = ["spiffe://rig.mesh/sa/client"]
paths = [{{ exact = "/helloworld.Greeter/Secret" }}]
"#,
        base = include_str!("../../scripts/rig/gwb-tables.toml"),
    )
}

/// `xdpmesh_requests_total` of `route` with `grpc_status` on A.
fn grpc_count(metrics: &str, route: &str, grpc_status: u8) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("xdpmesh_requests_total{"))
        .filter(|l| l.contains("direction=\"outbound\""))
        .filter(|l| l.contains(&format!("route=\"{route}\"")))
        .filter(|l| l.contains(&format!("grpc_status=\"{grpc_status}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

fn run_backend(backend: &str, work: &Path) {
    println!("==== backend {backend}");
    let t = Instant::now();
    let state = work.join(format!("state-{backend}"));
    let (cli, gwa, gwb, srv) = (
        NetNs::existing("xm-cli").unwrap(),
        NetNs::existing("xm-gwa").unwrap(),
        NetNs::existing("xm-gwb").unwrap(),
        NetNs::existing("xm-srv").unwrap(),
    );
    let _server = start_server(&srv);
    rig(&["mesh", "--backend", backend], &state);
    put_tables(&gwb, &b_tables(), &state, "grpc-gwb-tables.toml");
    put_tables(&gwa, &a_tables(), &state, "grpc-gwa-tables.toml");

    let out = cli
        .command(PYTHON)
        .arg(repo().join("dataplane/tests/grpc/client.py"))
        .args(["10.10.1.1:80", "greeter.rig.mesh"])
        .output()
        .expect("run client.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "[{backend}] client.py failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("[{backend}] client.py: {text}");
    let got: Value = serde_json::from_str(text.trim()).expect("client.py prints JSON");
    let call = |k: &str| {
        (
            got[k][0].as_str().unwrap_or("?").to_string(),
            got[k][1].clone(),
        )
    };
    assert_eq!(
        call("say"),
        ("OK".into(), Value::from("hello rig")),
        "[{backend}]"
    );
    assert_eq!(call("again"), ("OK".into(), Value::from("hello again")));
    let parts: Vec<Value> = (0..5).map(|i| Value::from(format!("part {i}"))).collect();
    assert_eq!(
        call("stream"),
        ("OK".into(), Value::from(parts)),
        "[{backend}]"
    );
    assert_eq!(call("secret").0, "PERMISSION_DENIED", "[{backend}] {got}");
    assert_eq!(call("secret").1, Value::from("denied"), "B's reason");
    assert_eq!(
        call("fail"),
        ("NOT_FOUND".into(), Value::from("no such greeting")),
        "[{backend}]"
    );
    assert_eq!(call("deadline").0, "DEADLINE_EXCEEDED", "[{backend}]");
    assert_eq!(got["concurrent_ok"], 64, "[{backend}] {got}");

    // The gateway's own deadline: curl sends `grpc-timeout: 200m` and waits up to 10 s; the
    // server would answer after 2 s.
    let frame = {
        let msg = b"sleep:2000";
        let mut f = vec![0u8];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    };
    let body = state.join("grpc-frame.bin");
    std::fs::write(&body, &frame).unwrap();
    let started = Instant::now();
    let head = cli
        .exec_ok([
            "curl",
            "-s",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--connect-to",
            "greeter.rig.mesh:80:10.10.1.1:80",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            "grpc-timeout: 200m",
            "--data-binary",
            &format!("@{}", body.display()),
            "http://greeter.rig.mesh/helloworld.Greeter/SayHelloAgain",
        ])
        .expect("curl with grpc-timeout");
    let took = started.elapsed();
    println!("[{backend}] curl with grpc-timeout: 200m, {took:?}:\n{head}");
    assert!(
        head.contains("grpc-status: 4") && head.contains("grpc-message: request_timeout"),
        "[{backend}] the gateway answers DEADLINE_EXCEEDED: {head}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "[{backend}] at the call's deadline, not the server's answer: {took:?}"
    );

    let m = admin_get(&gwa, "/metrics");
    // 1 + 64 + the deadline call (cut by the client, or answered 4) on `say`.
    assert!(grpc_count(&m, "say", 0) >= 65, "[{backend}] say OK:\n{m}");
    assert!(
        grpc_count(&m, "greeter", 0) >= 2,
        "[{backend}] SayHelloAgain, Stream"
    );
    assert_eq!(grpc_count(&m, "greeter", 5), 1, "[{backend}] NOT_FOUND");
    assert_eq!(
        grpc_count(&m, "greeter", 7),
        1,
        "[{backend}] PERMISSION_DENIED"
    );
    assert_eq!(
        grpc_count(&m, "greeter", 4),
        1,
        "[{backend}] DEADLINE_EXCEEDED"
    );
    let m = admin_get(&gwb, "/metrics");
    assert!(
        metric_in(&m, "xdpmesh_h2_upstream_streams_total", "") >= 70,
        "[{backend}] B's calls went to the server as HTTP/2 streams"
    );
    rig(&["stop"], &state);
    println!("[{backend}] done in {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn grpc_through_the_pair_on_the_rig_with_both_backends() {
    if skip_unless_root("grpc_through_the_pair_on_the_rig_with_both_backends") {
        return;
    }
    let work = std::env::temp_dir().join(format!("xdpmesh-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let _rig = RigGuard {
        work: work.to_owned(),
    };
    rig(&["up"], &work);
    for backend in ["kernel", "afxdp"] {
        run_backend(backend, &work);
    }
}
