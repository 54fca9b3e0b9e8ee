//! `GET /tap`, `xdpmesh tap` and `xdpmesh top` against `xdpmesh run --backend kernel` on
//! 127.0.0.1 (no namespaces, no root, no access log: the tap alone turns events on). A
//! client keeps one keep-alive connection busy for the whole test, opened before any tap,
//! so requests on a connection older than the tap are seen too. The gateway is killed and
//! reaped on drop, on panic too.

use dataplane::netns::wait_for;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

struct Gateway {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream answering every request with 200 "ok".
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

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops the load on drop.
struct Load(Arc<AtomicBool>, Arc<AtomicU64>);
impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One keep-alive connection sending requests for `app.test` and `other.test` in turn, a
/// few hundred a second, until dropped.
fn load(web: SocketAddr) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (s, d) = (stop.clone(), done.clone());
    let mut c = TcpStream::connect_timeout(&web, DEADLINE).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    std::thread::spawn(move || {
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut i = 0u64;
        while !s.load(Ordering::SeqCst) {
            let host = if i.is_multiple_of(2) {
                "app.test"
            } else {
                "other.test"
            };
            let req = format!("GET /api/{i} HTTP/1.1\r\nhost: {host}\r\n\r\n");
            if c.write_all(req.as_bytes()).is_err() {
                return;
            }
            // Status line, fields, then the 2-byte body.
            let mut len = 0;
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if l == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            i += 1;
            d.store(i, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(3));
        }
    });
    Load(stop, done)
}

struct Setup {
    _dir: Dir,
    gw: Gateway,
    web: SocketAddr,
    admin: SocketAddr,
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("xdpmesh-tap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let up = upstream();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!("[node]\nname = \"tap\"\ntables = \"tables.toml\"\nadmin = \"{admin}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tables.toml"),
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"{web}\"\nprotocol = \"http\"\n\n\
             [[service]]\nname = \"app\"\nhosts = [\"app.test\"]\nendpoints = [{{ address = \"{up}\" }}]\n\n\
             [[service]]\nname = \"other\"\nhosts = [\"other.test\"]\nendpoints = [{{ address = \"{up}\" }}]\n\n\
             [[route]]\nname = \"to-app\"\nservice = \"app\"\n\n\
             [[route]]\nname = \"to-other\"\nservice = \"other\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["run", "--backend", "kernel", "--config"])
        .arg(&node)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn xdpmesh run");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    {
        let out = child.stdout.take().unwrap();
        let l = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
    }
    let gw = Gateway { child, stdout };
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
        "not ready: {:?}",
        gw.stdout.lock().unwrap()
    );
    Setup {
        _dir: Dir(dir),
        gw,
        web,
        admin,
    }
}

/// A tap's response: status, head, and the body's lines (chunked decoding by hand: the
/// wire format is what is tested).
struct Tap {
    status: u16,
    head: String,
    lines: Vec<Value>,
}

fn tap(admin: SocketAddr, query: &str) -> Tap {
    let mut c = TcpStream::connect_timeout(&admin, DEADLINE).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(c, "GET /tap{query} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("the whole response");
    let text = String::from_utf8(raw).unwrap();
    let (head, mut body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head[9..12].parse().unwrap();
    let mut lines = Vec::new();
    if head.contains("transfer-encoding: chunked") {
        let mut data = String::new();
        loop {
            let (size, rest) = body.split_once("\r\n").expect("a chunk size");
            let n = usize::from_str_radix(size, 16).expect("hex");
            if n == 0 {
                break;
            }
            data.push_str(&rest[..n]);
            body = &rest[n + 2..];
        }
        assert!(data.ends_with('\n'), "{data:?}");
        lines = data
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
    } else {
        lines.push(Value::String(body.to_string()));
    }
    Tap {
        status,
        head: head.to_string(),
        lines,
    }
}

#[test]
fn tap_streams_filters_ends_and_refuses_a_fifth() {
    let Setup {
        _dir,
        gw: _gw,
        web,
        admin,
    } = setup();
    let load = load(web);
    assert!(
        wait_for(DEADLINE, || (load.1.load(Ordering::SeqCst) > 20)
            .then_some(()))
        .is_some(),
        "no requests flow"
    );

    // Three lines, then the end; all of them the access log's http line.
    let t = tap(admin, "?limit=3");
    assert_eq!(t.status, 200, "{}", t.head);
    assert!(
        t.head.contains("content-type: application/x-ndjson"),
        "{}",
        t.head
    );
    assert_eq!(t.lines.len(), 4, "{:?}", t.lines);
    for l in &t.lines[..3] {
        assert_eq!(l["type"], "http", "{l}");
        assert_eq!(
            (l["listener"].as_str(), l["status"].as_u64()),
            (Some("web"), Some(200))
        );
        assert!(l["path"].as_str().unwrap().starts_with("/api/"), "{l}");
        for k in [
            "time",
            "route",
            "service",
            "endpoint",
            "method",
            "authority",
            "duration_us",
            "upstream_us",
            "attempts",
            "src_identity",
            "dst_identity",
            "request_id",
            "outcome",
            "reason",
        ] {
            assert!(l.get(k).is_some(), "{k} missing: {l}");
        }
    }
    assert_eq!(
        t.lines[3],
        serde_json::json!({"type": "end", "reason": "limit", "lines": 3, "dropped": 0})
    );

    // A filter: only `other` (by service, and by route), never `app`.
    let t = tap(admin, "?service=other&limit=5");
    assert_eq!(t.lines.len(), 6);
    assert!(t.lines[..5]
        .iter()
        .all(|l| l["service"] == "other" && l["route"] == "to-other"));
    let t = tap(
        admin,
        "?route=to-app&method=GET&path_prefix=%2Fapi%2F&status=2xx&limit=2",
    );
    assert!(
        t.lines[..2].iter().all(|l| l["service"] == "app"),
        "{:?}",
        t.lines
    );

    // `seconds` ends a stream nothing matches.
    let started = Instant::now();
    let t = tap(admin, "?service=nobody&seconds=1");
    let took = started.elapsed();
    assert_eq!(t.lines.len(), 1, "{:?}", t.lines);
    assert_eq!(t.lines[0]["reason"], "seconds");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // Bad queries: 400 with the reason; other methods 405.
    let t = tap(admin, "?servce=app");
    assert_eq!(t.status, 400);
    assert!(
        t.lines[0].as_str().unwrap().contains("unknown parameter"),
        "{:?}",
        t.lines
    );
    assert_eq!(tap(admin, "?seconds=601").status, 400);

    // Four at once; the fifth gets 503 with a clear message; one leaves, one more may come.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect_timeout(&admin, DEADLINE).unwrap();
        c.write_all(b"GET /tap?service=nobody&seconds=30 HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(c);
    }
    let t = tap(admin, "?limit=1");
    assert_eq!(t.status, 503);
    assert!(
        t.lines[0]
            .as_str()
            .unwrap()
            .contains("4 taps are running already"),
        "{:?}",
        t.lines
    );
    held.pop();
    // The server notices the closed one within its poll (250 ms).
    let again = wait_for(DEADLINE, || {
        let t = tap(admin, "?limit=1");
        (t.status == 200).then_some(t)
    })
    .expect("a place again after one left");
    assert_eq!(again.lines.len(), 2);
    drop(held);

    // The CLI: raw JSON lines, and a table.
    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args([
            "tap",
            "--json",
            "--limit",
            "2",
            "--service",
            "app",
            "--admin",
        ])
        .arg(admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[..2].iter().all(|l| l["service"] == "app"), "{text}");
    assert_eq!(lines[2]["reason"], "limit");

    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["tap", "--limit", "2", "--admin"])
        .arg(admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(
        rows[0].starts_with("TIME") && rows[0].contains("STATUS"),
        "{text}"
    );
    assert!(
        rows[1..]
            .iter()
            .all(|r| r.contains(" 200 ") && r.contains("/api/")),
        "{text}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["top", "--iterations", "2", "--interval", "1s", "--admin"])
        .arg(admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("SERVICE").count(), 2, "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("app ") || l.starts_with("other "))
        .collect();
    assert!(rows.len() >= 4, "{text}");
    assert!(rows.iter().all(|r| r.contains("100.0%")), "{text}");

    // A gateway that refuses: the CLI says why and exits 1.
    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["tap", "--status", "600", "--admin"])
        .arg(admin.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400: tap: status"),
        "{out:?}"
    );
}
