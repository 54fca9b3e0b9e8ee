//! `xdpmesh run --backend kernel` on 127.0.0.1 (no namespaces, no root): the access log
//! gets one JSON line per request and per connection, is reopened on SIGHUP after a
//! logrotate-style rename, and `PUT /logging?level=...` changes what the JSON logs on stderr
//! carry. The gateway is killed and reaped on drop, on panic too.

use dataplane::netns::wait_for;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

/// The gateway process; killed and reaped on drop.
struct Gateway {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
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
    fn start(node: &Path) -> Gateway {
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
        };
        let ready = wait_for(DEADLINE, || {
            gw.stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(" ready"))
                .then_some(())
        });
        assert!(
            ready.is_some(),
            "not ready: {:?} {:?}",
            gw.stdout.lock().unwrap(),
            gw.stderr.lock().unwrap()
        );
        gw
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// stderr lines as JSON objects (every log line must be one).
    fn logs(&self) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers every request on a connection with 200 "ok".
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(c));
        }
    });
    addr
}

fn serve(mut c: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One request on its own connection; the whole response.
fn http(addr: SocketAddr, head: &str) -> String {
    exchange(addr, head, false)
}

/// `head`, then (`half_close`) our FIN, so that a server behind a TCP listener sees the end.
fn exchange(addr: SocketAddr, head: &str, half_close: bool) -> String {
    let mut c = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    if half_close {
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Setup {
    dir: Dir,
    node: PathBuf,
    web: SocketAddr,
    raw: SocketAddr,
    admin: SocketAddr,
}

fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("xdpmesh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let up = upstream();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let raw: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!(
            "[node]\nname = \"al\"\ntables = \"tables.toml\"\nadmin = \"{admin}\"\n\n\
             [access_log]\npath = \"access.log\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tables.toml"),
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"{web}\"\nprotocol = \"http\"\n\n\
             [[listener]]\nname = \"raw\"\nbind = \"{raw}\"\nprotocol = \"tcp\"\nservice = \"app\"\n\n\
             [[service]]\nname = \"app\"\nhosts = [\"app.test\"]\nendpoints = [{{ address = \"{up}\" }}]\n\n\
             [[route]]\nname = \"all\"\nservice = \"app\"\n"
        ),
    )
    .unwrap();
    Setup {
        dir: Dir(dir),
        node,
        web,
        raw,
        admin,
    }
}

#[test]
fn access_log_lines_for_requests_and_connections_reopened_on_sighup() {
    let Setup {
        dir,
        node,
        web,
        raw,
        admin,
    } = setup("access-log");
    let gw = Gateway::start(&node);
    let log = dir.0.join("access.log");

    let resp = http(
        web,
        "GET /a/b?q=%22x%22 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let got = wait_for(DEADLINE, || {
        let l = lines(&log);
        (l.len() >= 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("no lines: {:?}", lines(&log)));
    let req = got
        .iter()
        .find(|v| v["type"] == "http")
        .expect("an http line");
    assert_eq!(req["listener"], "web");
    assert_eq!(req["route"], "all");
    assert_eq!(req["service"], "app");
    assert!(req["endpoint"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(req["method"], "GET");
    assert_eq!(req["authority"], "app.test");
    assert_eq!(req["path"], "/a/b?q=%22x%22");
    assert_eq!(
        (req["status"].as_u64(), req["attempts"].as_u64()),
        (Some(200), Some(1))
    );
    assert_eq!(req["bytes_out"], 2);
    assert!(req["upstream_us"].as_u64().is_some());
    assert_eq!(req["request_id"].as_str().map(str::len), Some(32));
    assert_eq!(req["traceparent"].as_str().map(str::len), Some(55));
    assert_eq!(req["outcome"], "ok");
    assert!(humantime::parse_rfc3339(req["time"].as_str().unwrap()).is_ok());
    let conn = got.iter().find(|v| v["type"] == "tcp").expect("a tcp line");
    assert_eq!(conn["listener"], "web");
    assert_eq!(conn["client"], req["client"]);
    assert!(conn["bytes_in"].as_u64() > Some(0) && conn["bytes_out"].as_u64() > Some(0));

    // A TCP listener: one line for the connection, with where it went and its bytes.
    let head = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let resp = exchange(raw, head, true);
    assert!(resp.ends_with("ok"), "{resp}");
    let got = wait_for(DEADLINE, || {
        let l = lines(&log);
        (l.len() >= 3).then_some(l)
    })
    .unwrap_or_else(|| panic!("no tcp line: {:?}", lines(&log)));
    let tcp = got
        .iter()
        .find(|v| v["listener"] == "raw")
        .expect("a raw line");
    assert_eq!(
        (tcp["type"].as_str(), tcp["service"].as_str()),
        (Some("tcp"), Some("app"))
    );
    assert_eq!(tcp["attempts"], 1);
    assert!(tcp["endpoint"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(tcp["bytes_in"].as_u64(), Some(head.len() as u64));
    assert_eq!(tcp["bytes_out"].as_u64(), Some(resp.len() as u64));
    assert!(tcp["upstream_us"].as_u64().is_some());

    // logrotate: rename, then SIGHUP; the gateway creates the file again.
    let rotated = dir.0.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal(libc::SIGHUP);
    assert!(
        wait_for(DEADLINE, || log.exists().then_some(())).is_some(),
        "no new file after SIGHUP"
    );
    let resp = http(
        web,
        "GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let new = wait_for(DEADLINE, || {
        let l = lines(&log);
        l.iter().any(|v| v["path"] == "/after").then_some(l)
    });
    assert!(new.is_some(), "no line in the new file");
    assert!(lines(&rotated).iter().all(|v| v["path"] != "/after"));
    assert_eq!(
        lines(&rotated).len(),
        got.len(),
        "nothing more in the old file"
    );

    // Counted on /metrics; nothing dropped here.
    let m = http(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(m.contains("\nxdpmesh_access_log_dropped_total 0\n"), "{m}");
    assert!(m.contains("\nxdpmesh_log_lines_dropped_total 0\n"), "{m}");
    drop(gw);
}

#[test]
fn put_logging_changes_what_is_logged() {
    let Setup {
        dir: _dir,
        node,
        admin,
        ..
    } = setup("logging");
    let gw = Gateway::start(&node);
    let req = |head: &str| {
        http(
            admin,
            &format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    };
    let body = |r: &str| {
        r.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    let admin_debug_lines = || {
        gw.logs()
            .iter()
            .filter(|v| v["message"] == "admin request" && v["path"] == "/endpoints")
            .count()
    };
    let filter_changes = || {
        gw.logs()
            .iter()
            .filter(|v| v["message"] == "log filter changed by the admin API")
            .count()
    };

    let r = req("GET /logging HTTP/1.1");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body(&r), "info\n");
    // At info, an admin request is not logged (it is a debug event).
    req("GET /endpoints HTTP/1.1");

    let r = req("PUT /logging?level=debug HTTP/1.1");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body(&req("GET /logging HTTP/1.1")), "debug\n");
    req("GET /endpoints HTTP/1.1");
    assert!(
        wait_for(DEADLINE, || (admin_debug_lines() == 1).then_some(())).is_some(),
        "the debug event after PUT level=debug: {:?}",
        gw.stderr.lock().unwrap()
    );

    // A bad filter is refused with the reason; the old one stays.
    let r = req("PUT /logging?level=verbose HTTP/1.1");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(body(&r).contains("`verbose` is not a level"), "{r}");
    let r = req("PUT /logging?level=mesh%3Dloud HTTP/1.1");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(body(&req("GET /logging HTTP/1.1")), "debug\n");

    // Back to info: the debug event is gone. The log is FIFO, so once the info line after it
    // is there, a debug line would have been too.
    let r = req("PUT /logging?level=info%2Cmesh%3Dwarn HTTP/1.1");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    req("GET /endpoints HTTP/1.1");
    let r = req("PUT /logging?level=info HTTP/1.1");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        wait_for(DEADLINE, || (filter_changes() == 3).then_some(())).is_some(),
        "{:?}",
        gw.stderr.lock().unwrap()
    );
    assert_eq!(admin_debug_lines(), 1, "no debug event at info");
    assert!(gw
        .logs()
        .iter()
        .all(|v| v["timestamp"].is_string() && v["level"].is_string()));
    drop(gw);
}

/// An OTLP/HTTP collector on 127.0.0.1: keeps each POST's JSON body, answers 200 `{}`.
fn collector() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().map_while(Result::ok) {
            let g = g.clone();
            std::thread::spawn(move || loop {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    if let Some(e) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break e + 4;
                    }
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = &buf[head_end..head_end + len];
                if let Ok(v) = serde_json::from_slice::<Value>(body) {
                    g.lock().unwrap().push(v);
                }
                if c.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                    .is_err()
                {
                    return;
                }
            });
        }
    });
    (addr, got)
}

/// `[traces]` in the node file: a running gateway exports one span per request to the
/// collector, continuing a client's trace (its trace id, its span as the parent) and naming
/// its own span in the `traceparent` it forwards, which the access log shows.
#[test]
fn a_running_gateway_exports_request_spans_to_the_collector() {
    let Setup { dir, node, web, .. } = setup("traces");
    let (otlp, got) = collector();
    let mut text = std::fs::read_to_string(&node).unwrap();
    text.push_str(&format!(
        "\n[traces]\nendpoint = \"http://{otlp}/v1/traces\"\nflush_interval = \"100ms\"\n"
    ));
    std::fs::write(&node, text).unwrap();
    let _gw = Gateway::start(&node);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = http(
        web,
        &format!("GET /traced HTTP/1.1\r\nhost: app.test\r\ntraceparent: {parent}\r\nconnection: close\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let spans = wait_for(DEADLINE, || {
        let spans: Vec<Value> = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        (!spans.is_empty()).then_some(spans)
    })
    .expect("a span reached the collector");
    let s = &spans[0];
    assert_eq!(s["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(s["kind"], 3, "a client span on a routing listener");
    let span_id = s["spanId"].as_str().unwrap().to_string();
    assert_eq!(span_id.len(), 16);
    assert_ne!(span_id, "b7ad6b7169203331");
    let attr = |k: &str| {
        s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
    };
    assert_eq!(
        attr("http.response.status_code").and_then(|v| v["intValue"].as_str().map(String::from)),
        Some("200".to_string())
    );
    // The access log shows the traceparent as forwarded: this gateway's span.
    let logged = wait_for(DEADLINE, || {
        lines(&dir.0.join("access.log"))
            .into_iter()
            .find(|l| l["type"] == "http")
    })
    .expect("an access log line");
    assert_eq!(
        logged["traceparent"],
        format!("00-0af7651916cd43dd8448eb211c80319c-{span_id}-01")
    );
}
