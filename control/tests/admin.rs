//! The admin API over real TCP on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use control::admin::{AdminConfig, AdminExtension, AdminServer, Request, Response, StartError};
use control::{Publisher, TableStore};

const GOOD: &str = "[[service]]\nname = \"reviews\"\nendpoints = [{ address = \"10.0.0.1:80\" }]\n";
const GOOD2: &str =
    "# second\n[[service]]\nname = \"reviews\"\nendpoints = [{ address = \"10.0.0.2:80\" }]\n";

struct Reply {
    status: u16,
    head: String,
    body: String,
}

fn send(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw).expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head[9..12].parse().expect("status");
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn req(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> Reply {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    send(addr, raw.as_bytes())
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<TableStore>,
    server: AdminServer,
}

fn rig(token: Option<&str>, load: bool) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, GOOD).expect("write");
    let store = Arc::new(TableStore::new(&path, Arc::new(Publisher::new())));
    if load {
        store.reload_file().expect("good tables");
    }
    let cfg = AdminConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        token.map(str::to_owned),
    );
    let server = AdminServer::start(cfg, store.clone(), None).expect("start");
    Rig {
        _dir: dir,
        store,
        server,
    }
}

#[test]
fn health_and_readiness() {
    let r = rig(None, false);
    let a = r.server.local_addr();
    assert_eq!(req(a, "GET", "/healthz", "", "").status, 200);
    let ready = req(a, "GET", "/readyz", "", "");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "no tables loaded\n")
    );
    r.store.reload_file().expect("load");
    assert_eq!(req(a, "GET", "/readyz", "", "").status, 200);
}

#[test]
fn get_after_put_returns_what_was_put() {
    let r = rig(None, true);
    let a = r.server.local_addr();
    let got = req(a, "GET", "/tables", "", "");
    assert_eq!((got.status, got.body.as_str()), (200, GOOD));
    assert!(got.head.contains("x-generation: 1"), "{}", got.head);

    let put = req(a, "PUT", "/tables", "", GOOD2);
    assert_eq!((put.status, put.body.as_str()), (200, "generation 2\n"));
    let got = req(a, "GET", "/tables", "", "");
    assert_eq!(got.body, GOOD2);
    assert_eq!(
        r.store.publisher().load().services[0].endpoints[0]
            .address
            .to_string(),
        "10.0.0.2:80"
    );
    assert_eq!(
        std::fs::read_to_string(r.store.path()).expect("file"),
        GOOD2
    );
}

#[test]
fn bad_put_is_400_with_check_lines_and_changes_nothing() {
    let r = rig(None, true);
    let a = r.server.local_addr();
    let bad = "[[service]]\nname = \"reviews\"\nendpoints = [{ adress = \"10.0.0.1:80\" }]\n[[route]]\nservice = \"reveiws\"\n";
    let put = req(a, "PUT", "/tables", "", bad);
    let expected = "PUT/tables:3:16: service[0].endpoints[0].adress: unknown key \"adress\" (hint: did you mean \"address\"?)\n\
                    PUT/tables:5:11: route[0].service: unknown service \"reveiws\" (hint: did you mean \"reviews\"?)\n";
    assert_eq!((put.status, put.body.as_str()), (400, expected));
    assert_eq!(req(a, "GET", "/tables", "", "").body, GOOD);
    assert_eq!(req(a, "GET", "/config/errors", "", "").body, expected);
    let m = req(a, "GET", "/metrics", "", "").body;
    for line in [
        "xdpmesh_tables_generation 1",
        "xdpmesh_tables_reloads_total 1",
        "xdpmesh_tables_reload_failures_total{source=\"put\"} 1",
        "xdpmesh_tables_reload_failures_total{source=\"file\"} 0",
        "xdpmesh_tables_last_reload_success 0",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    let not_utf8 = send(
        a,
        b"PUT /tables HTTP/1.1\r\ncontent-length: 2\r\n\r\n\xff\xfe",
    );
    assert_eq!(not_utf8.status, 400);
    // A good PUT clears the errors.
    assert_eq!(req(a, "PUT", "/tables", "", GOOD2).status, 200);
    assert_eq!(req(a, "GET", "/config/errors", "", "").body, "");
}

#[test]
fn metrics_are_prometheus_text() {
    let r = rig(None, true);
    let m = req(r.server.local_addr(), "GET", "/metrics", "", "");
    assert!(
        m.head.contains("content-type: text/plain; version=0.0.4"),
        "{}",
        m.head
    );
    let ts = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("xdpmesh_tables_last_reload_timestamp_seconds "))
        .expect("timestamp");
    assert!(ts.parse::<f64>().expect("number") > 1.6e9);
    assert!(m
        .body
        .contains("# TYPE xdpmesh_tables_reloads_total counter\n"));
}

/// Prometheus's own Accept gets OpenMetrics text, encoded by prometheus-client from the same
/// families: counters named without `_total`, samples with it, and `# EOF` at the end.
#[test]
fn metrics_are_openmetrics_when_asked() {
    let r = rig(None, true);
    let accept = "accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let m = req(r.server.local_addr(), "GET", "/metrics", accept, "");
    assert!(
        m.head
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        m.head
    );
    assert!(
        m.body.contains("# TYPE xdpmesh_tables_reloads counter\n"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("\nxdpmesh_tables_reloads_total"),
        "{}",
        m.body
    );
    assert!(m.body.ends_with("# EOF\n"), "{}", m.body);
}

#[test]
fn token_guards_put() {
    let r = rig(Some("s3cret"), true);
    let a = r.server.local_addr();
    let none = req(a, "PUT", "/tables", "", GOOD2);
    assert_eq!(none.status, 401);
    assert!(none.head.contains("www-authenticate: Bearer"));
    assert_eq!(
        req(a, "PUT", "/tables", "authorization: Bearer nope\r\n", GOOD2).status,
        401
    );
    assert_eq!(req(a, "GET", "/tables", "", "").body, GOOD);
    assert_eq!(
        req(
            a,
            "PUT",
            "/tables",
            "authorization: Bearer s3cret\r\n",
            GOOD2
        )
        .status,
        200
    );
    // Reads need no token.
    assert_eq!(req(a, "GET", "/tables", "", "").body, GOOD2);
}

#[test]
fn non_loopback_bind_without_token_is_refused() {
    let store = Arc::new(TableStore::new(
        "/nonexistent/t.toml",
        Arc::new(Publisher::new()),
    ));
    let cfg = AdminConfig::new("0.0.0.0:0".parse().expect("addr"), None);
    assert!(matches!(
        AdminServer::start(cfg, store, None),
        Err(StartError::NeedsToken(_))
    ));
}

#[test]
fn limits_and_bad_requests() {
    let r = rig(None, true);
    let a = r.server.local_addr();
    let big_head = format!("GET /healthz HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(send(a, big_head.as_bytes()).status, 431);
    let big_body = "PUT /tables HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n";
    assert_eq!(send(a, big_body.as_bytes()).status, 413);
    assert_eq!(send(a, b"\x00\x01garbage\r\n\r\n").status, 400);
    assert_eq!(
        send(
            a,
            b"PUT /tables HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        .status,
        411
    );
    assert_eq!(req(a, "GET", "/nope", "", "").status, 404);
    let m = req(a, "DELETE", "/tables", "", "");
    assert_eq!(m.status, 405);
    assert!(m.head.contains("allow: GET, PUT"));
    // Still serving, tables intact.
    assert_eq!(req(a, "GET", "/tables", "", "").body, GOOD);
}

struct Dash;
impl AdminExtension for Dash {
    fn handle(&self, req: &Request<'_>) -> Option<Response> {
        (req.path == "/dashboard").then(|| Response::text(200, "dash\n"))
    }
    fn metrics(&self, out: &mut String) {
        out.push_str("xdpmesh_worker_up 1\n");
    }
}

#[test]
fn extensions_add_endpoints_and_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, GOOD).expect("write");
    let store = Arc::new(TableStore::new(&path, Arc::new(Publisher::new())));
    let cfg = AdminConfig::new("127.0.0.1:0".parse().expect("addr"), None);
    let server = AdminServer::start(cfg, store, Some(Arc::new(Dash))).expect("start");
    let a = server.local_addr();
    assert_eq!(req(a, "GET", "/dashboard", "", "").body, "dash\n");
    assert!(req(a, "GET", "/metrics", "", "")
        .body
        .contains("xdpmesh_worker_up 1\n"));
}

/// A stream of `n` lines, one per call; counts its drops (the connection's end).
struct Lines {
    n: usize,
    sent: usize,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl control::admin::BodyStream for Lines {
    fn next(&mut self, out: &mut Vec<u8>, wait: Duration) -> bool {
        if self.sent == self.n {
            // Endless when n is 0 ... after nothing: wait like a quiet tap.
            std::thread::sleep(wait);
            return self.n == 0;
        }
        self.sent += 1;
        out.extend_from_slice(format!("{{\"line\":{}}}\n", self.sent).as_bytes());
        self.sent < self.n
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Streams(Arc<std::sync::atomic::AtomicUsize>);
impl AdminExtension for Streams {
    fn stream(&self, req: &Request<'_>) -> Option<Result<control::admin::Streaming, Response>> {
        let n = match req.path {
            "/three" => 3,
            "/forever" => 0,
            "/refused" => return Some(Err(Response::text(503, "full\n"))),
            _ => return None,
        };
        Some(Ok(control::admin::Streaming {
            content_type: "application/x-ndjson",
            body: Box::new(Lines {
                n,
                sent: 0,
                dropped: self.0.clone(),
            }),
        }))
    }
}

/// The chunked body of a whole response, decoded.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let n = usize::from_str_radix(size, 16).expect("hex size");
        if n == 0 {
            assert_eq!(rest, "\r\n", "the last chunk ends the body");
            return out;
        }
        out.push_str(&rest[..n]);
        assert_eq!(&rest[n..n + 2], "\r\n");
        body = &rest[n + 2..];
    }
}

#[test]
fn streams_are_chunked_bounded_and_end_when_the_client_leaves() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, GOOD).expect("write");
    let store = Arc::new(TableStore::new(&path, Arc::new(Publisher::new())));
    let mut cfg = AdminConfig::new("127.0.0.1:0".parse().expect("addr"), None);
    cfg.max_stream = Duration::from_millis(600);
    let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server =
        AdminServer::start(cfg, store, Some(Arc::new(Streams(drops.clone())))).expect("start");
    let a = server.local_addr();
    let r = req(a, "GET", "/three", "", "");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("transfer-encoding: chunked"), "{}", r.head);
    assert!(!r.head.contains("content-length"), "{}", r.head);
    assert_eq!(
        unchunk(&r.body),
        "{\"line\":1}\n{\"line\":2}\n{\"line\":3}\n"
    );
    // A refusal is a whole response; other paths go on to the API.
    assert_eq!(req(a, "GET", "/refused", "", "").status, 503);
    assert_eq!(req(a, "GET", "/healthz", "", "").status, 200);
    // An endless body is ended (cleanly) at max_stream.
    let t = std::time::Instant::now();
    let r = req(a, "GET", "/forever", "", "");
    assert_eq!((r.status, unchunk(&r.body).as_str()), (200, ""));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A client that leaves ends its stream (and frees what it held) within a poll or two.
    let before = drops.load(std::sync::atomic::Ordering::SeqCst);
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(b"GET /forever HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("send");
    let mut head = [0u8; 64];
    let _ = s.read(&mut head).expect("the head");
    drop(s);
    let t = std::time::Instant::now();
    while drops.load(std::sync::atomic::Ordering::SeqCst) == before {
        assert!(t.elapsed() < Duration::from_millis(1500), "not noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = req(a, "GET", "/metrics", "", "").body;
    assert!(
        m.contains("xdpmesh_admin_refused_total{reason=\"write_deadline\"} 0"),
        "{m}"
    );
}

/// The same with curl, as an operator would.
#[test]
fn curl_put_and_get() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(std::env::var("CI").is_err(), "curl is required under CI");
        eprintln!("curl not installed; skipping");
        return;
    }
    let r = rig(None, true);
    let url = format!("http://{}/tables", r.server.local_addr());
    let file = r._dir.path().join("new.toml");
    std::fs::write(&file, GOOD2).expect("write");
    let put = std::process::Command::new("curl")
        .args(["-sS", "-X", "PUT", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(&url)
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&put.stdout), "generation 2\n");
    let get = std::process::Command::new("curl")
        .args(["-sS", "-f", &url])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&get.stdout), GOOD2);
}
