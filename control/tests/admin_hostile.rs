//! The admin API against hostile clients, over real TCP on 127.0.0.1: slow heads, a
//! trickled head, a slow body, a client that never reads, oversize heads, every slot
//! running a handler, and reads without the token off loopback. Waits are bounded
//! deadlines and polls, never sleeps standing in for synchronisation.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use control::admin::{AdminConfig, AdminExtension, AdminServer, Request, Response, StartError};
use control::{Publisher, TableStore};

const GOOD: &str = "[[service]]\nname = \"reviews\"\nendpoints = [{ address = \"10.0.0.1:80\" }]\n";
const TOKEN: &str = "s3cret";

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Everything the server sends until it closes (a reset after data counts as the end).
fn read_all(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no end of response within {within:?}; got {} bytes",
                    buf.len()
                )
            }
            Err(_) => return buf,
        }
    }
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    Reply {
        status: head[9..12].parse().expect("status"),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn send(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(raw).expect("send");
    parse(&read_all(&mut s, Duration::from_secs(10)))
}

fn get(addr: SocketAddr, path: &str, headers: &str) -> Reply {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n").as_bytes(),
    )
}

fn bearer() -> String {
    format!("authorization: Bearer {TOKEN}\r\n")
}

/// `xdpmesh_admin_refused_total{reason="REASON"}` from /metrics.
fn refused(addr: SocketAddr, headers: &str, reason: &str) -> u64 {
    let m = get(addr, "/metrics", headers);
    assert_eq!(m.status, 200, "{}", m.body);
    let key = format!("xdpmesh_admin_refused_total{{reason=\"{reason}\"}} ");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key} in\n{}", m.body))
        .parse()
        .expect("a count")
}

/// Poll `f` until it holds or `within` has passed.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<TableStore>,
    server: AdminServer,
}

impl Rig {
    fn addr(&self) -> SocketAddr {
        let a = self.server.local_addr();
        // Bound to 0.0.0.0 (off loopback), reached over loopback.
        SocketAddr::new([127, 0, 0, 1].into(), a.port())
    }
}

fn rig(
    cfg: impl FnOnce(&mut AdminConfig),
    bind: &str,
    token: Option<&str>,
    ext: Option<Arc<dyn AdminExtension>>,
) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, GOOD).expect("write");
    let store = Arc::new(TableStore::new(&path, Arc::new(Publisher::new())));
    store.reload_file().expect("good tables");
    let mut c = AdminConfig::new(bind.parse().expect("addr"), token.map(str::to_owned));
    cfg(&mut c);
    let server = AdminServer::start(c, store.clone(), ext).expect("start");
    Rig {
        _dir: dir,
        store,
        server,
    }
}

fn local(cfg: impl FnOnce(&mut AdminConfig)) -> Rig {
    rig(cfg, "127.0.0.1:0", None, None)
}

/// A client that has sent `sent` of a request and holds the connection.
struct Slow {
    stream: TcpStream,
    connected: Instant,
}

fn slow(addr: SocketAddr, sent: &[u8]) -> Slow {
    // Before connect: the server's deadline runs from accept, later.
    let connected = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(sent).expect("send");
    Slow { stream, connected }
}

/// The case at 64 instead of 40 clients, with the default configuration (32
/// slots, 5 s head deadline): clients that have sent one byte of a head and hold must
/// not starve the probes or /metrics, and are all closed — evicted, or 408 at the head
/// deadline — within the deadline. With the old server (a per-read timeout, no
/// deadline, no eviction) every normal request got 503.
#[test]
fn sixty_four_slow_heads_starve_nothing_and_are_all_closed_by_the_deadline() {
    let r = local(|_| {});
    let a = r.addr();
    let head_timeout = AdminConfig::new(a, None).head_timeout;
    let mut slows: Vec<Slow> = (0..64).map(|_| slow(a, b"G")).collect();

    let mut ok = [0u32; 3];
    for _ in 0..20 {
        for (i, path) in ["/healthz", "/readyz", "/metrics"].into_iter().enumerate() {
            let reply = get(a, path, "");
            assert_eq!(reply.status, 200, "{path}: {}\n{}", reply.head, reply.body);
            ok[i] += 1;
        }
    }
    assert_eq!(ok, [20, 20, 20]);

    // Every slow client is closed, with a 408 or without an answer, by its deadline
    // (measured from accept, which is after the client's connect) plus slack.
    let (mut timed_out, mut closed) = (0, 0);
    for s in &mut slows {
        let left = (s.connected + head_timeout + Duration::from_secs(3))
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let raw = read_all(&mut s.stream, left);
        if raw.is_empty() {
            closed += 1;
        } else {
            let reply = parse(&raw);
            assert_eq!(reply.status, 408, "{}", reply.head);
            assert!(
                s.connected.elapsed() >= head_timeout,
                "408 after {:?}, before the {head_timeout:?} deadline",
                s.connected.elapsed()
            );
            timed_out += 1;
        }
    }
    assert_eq!(timed_out + closed, 64);
    let evicted = refused(a, "", "evicted");
    let deadline = refused(a, "", "deadline");
    assert!(
        evicted >= 32,
        "64 slow heads in 32 slots evict 32, got {evicted}"
    );
    assert_eq!(deadline, timed_out, "408s counted");
    assert!(evicted + deadline >= 64, "{evicted} + {deadline}");
}

/// When every slot holds an incomplete request, a new connection takes the oldest one's
/// slot: that one is closed without an answer, the newer one keeps its slot.
#[test]
fn a_new_connection_takes_the_slot_of_the_oldest_incomplete_one() {
    let r = local(|c| {
        c.max_connections = 2;
        // Longer than the test: only an eviction can close the slow clients.
        c.head_timeout = Duration::from_secs(60);
    });
    let a = r.addr();
    // Accepted in connect order (the listen queue is FIFO).
    let mut oldest = slow(a, b"GET /tab");
    let mut newer = slow(a, b"GET /tab");
    assert_eq!(get(a, "/healthz", "").status, 200);
    assert!(
        read_all(&mut oldest.stream, Duration::from_secs(10)).is_empty(),
        "evicted without an answer"
    );
    // The newer one still has its slot, and finishes its request.
    newer
        .stream
        .write_all(b"les HTTP/1.1\r\n\r\n")
        .expect("finish the request");
    let reply = parse(&read_all(&mut newer.stream, Duration::from_secs(10)));
    assert_eq!((reply.status, reply.body.as_str()), (200, GOOD));
    assert!(refused(a, "", "evicted") >= 1);
}

/// One byte every 100 ms: every read succeeds in time, yet the head deadline, counted
/// from accept, cuts the client with 408. A per-read timeout never would.
#[test]
fn a_head_trickled_a_byte_at_a_time_is_cut_by_the_head_deadline() {
    let head_timeout = Duration::from_secs(1);
    let r = local(|c| c.head_timeout = head_timeout);
    let a = r.addr();
    let start = Instant::now();
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
        .expect("send");
    // The 100 ms read timeout paces the bytes: read for an answer, else send one more.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut sent = 0;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(10) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if got.is_empty() && s.write_all(b"a").is_ok() {
                    sent += 1;
                }
            }
            Err(_) => break,
        }
    }
    let took = start.elapsed();
    let reply = parse(&got);
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert!(
        took >= head_timeout && took < head_timeout + Duration::from_secs(2),
        "cut after {took:?}"
    );
    assert!(sent >= 5, "only {sent} bytes trickled");
    assert_eq!(refused(a, "", "deadline"), 1);
}

/// A PUT whose body trickles is cut at the request deadline, and changes nothing.
#[test]
fn a_slow_body_is_cut_by_the_request_deadline() {
    let request_timeout = Duration::from_secs(1);
    let r = local(|c| {
        c.head_timeout = Duration::from_millis(500);
        c.request_timeout = request_timeout;
    });
    let a = r.addr();
    let start = Instant::now();
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(b"PUT /tables HTTP/1.1\r\ncontent-length: 1000\r\n\r\n# a")
        .expect("send");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(10) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if got.is_empty() {
                    let _ = s.write_all(b"a");
                }
            }
            Err(_) => break,
        }
    }
    let took = start.elapsed();
    let reply = parse(&got);
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert!(
        took >= request_timeout && took < request_timeout + Duration::from_secs(2),
        "cut after {took:?}"
    );
    assert_eq!(r.store.publisher().status().generation, 1);
    assert_eq!(refused(a, "", "deadline"), 1);
}

/// A large response to a client that never reads: cut at the write deadline.
struct Big;
const BIG: usize = 64 << 20;
impl AdminExtension for Big {
    fn handle(&self, req: &Request<'_>) -> Option<Response> {
        (req.path == "/big").then(|| Response {
            status: 200,
            content_type: "application/octet-stream",
            headers: Vec::new(),
            body: vec![b'x'; BIG],
        })
    }
}

#[test]
fn a_client_that_never_reads_is_cut_at_the_write_deadline() {
    let r = rig(
        |c| c.write_timeout = Duration::from_millis(500),
        "127.0.0.1:0",
        None,
        Some(Arc::new(Big)),
    );
    let a = r.addr();
    let mut s = slow(a, b"GET /big HTTP/1.1\r\n\r\n");
    assert!(
        eventually(Duration::from_secs(10), || refused(a, "", "write_deadline")
            == 1),
        "the response to a client that does not read was not cut"
    );
    let raw = read_all(&mut s.stream, Duration::from_secs(10));
    assert!(
        raw.len() < BIG,
        "got all {} bytes of a response that was cut",
        raw.len()
    );
    assert_eq!(get(a, "/healthz", "").status, 200);
}

#[test]
fn oversize_heads_get_431_and_oversize_bodies_413() {
    let r = local(|_| {});
    let a = r.addr();
    // No end of head in sight at 20 KiB (over the 16 KiB limit).
    let long = format!("GET /healthz HTTP/1.1\r\nx: {}", "a".repeat(20 * 1024));
    let reply = send(a, long.as_bytes());
    assert_eq!(reply.status, 431, "{}", reply.head);
    let many: String = (0..100).map(|i| format!("x-{i}: 1\r\n")).collect();
    let reply = send(a, format!("GET /healthz HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (431, "too many header fields\n")
    );
    let reply = send(
        a,
        b"PUT /tables HTTP/1.1\r\ncontent-length: 4194305\r\n\r\n",
    );
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert_eq!(refused(a, "", "too_large"), 3);
}

/// Holds every request for `/block` in its handler until opened.
struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    open: Mutex<bool>,
    opened: Condvar,
}
impl Gate {
    fn open(&self) {
        *self.open.lock().expect("lock") = true;
        self.opened.notify_all();
    }
}
impl AdminExtension for Gate {
    fn handle(&self, req: &Request<'_>) -> Option<Response> {
        if req.path != "/block" {
            return None;
        }
        let _ = self.entered.lock().expect("lock").send(());
        let open = self.open.lock().expect("lock");
        let (_open, _) = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(30), |open| !*open)
            .expect("lock");
        Some(Response::text(200, "released\n"))
    }
}

/// Only connections running a handler keep their slot; when every slot is one, a new
/// connection gets a fast 503, counted as busy.
#[test]
fn every_slot_in_a_handler_gives_a_fast_503() {
    let (entered_tx, entered) = mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        open: Mutex::new(false),
        opened: Condvar::new(),
    });
    let r = rig(
        |c| c.max_connections = 2,
        "127.0.0.1:0",
        None,
        Some(gate.clone()),
    );
    let a = r.addr();
    let mut held: Vec<Slow> = (0..2)
        .map(|_| slow(a, b"GET /block HTTP/1.1\r\n\r\n"))
        .collect();
    for _ in &held {
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("/block in its handler");
    }
    let start = Instant::now();
    let busy = get(a, "/healthz", "");
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "503 took {:?}",
        start.elapsed()
    );
    gate.open();
    for h in &mut held {
        let reply = parse(&read_all(&mut h.stream, Duration::from_secs(10)));
        assert_eq!((reply.status, reply.body.as_str()), (200, "released\n"));
    }
    assert!(eventually(Duration::from_secs(10), || get(
        a, "/healthz", ""
    )
    .status
        == 200));
    assert_eq!(refused(a, "", "busy"), 1);
}

/// Bound off loopback (0.0.0.0, reached here over 127.0.0.1), every request but the
/// probes needs the token; the probes tell nothing but ok / ready.
#[test]
fn off_loopback_reads_need_the_token_but_the_probes_do_not() {
    let r = rig(|_| {}, "0.0.0.0:0", Some(TOKEN), None);
    check_reads_locked(r.addr());
}

/// The same on loopback with `token_for_reads`.
#[test]
fn token_for_reads_locks_reads_on_loopback_too() {
    let r = rig(
        |c| c.token_for_reads = true,
        "127.0.0.1:0",
        Some(TOKEN),
        None,
    );
    check_reads_locked(r.addr());
    // And without a token it does not start.
    let store = Arc::new(TableStore::new(
        "/nonexistent/t.toml",
        Arc::new(Publisher::new()),
    ));
    let mut cfg = AdminConfig::new("127.0.0.1:0".parse().expect("addr"), None);
    cfg.token_for_reads = true;
    assert!(matches!(
        AdminServer::start(cfg, store, None),
        Err(StartError::NeedsToken(_))
    ));
}

fn check_reads_locked(a: SocketAddr) {
    for path in ["/metrics", "/tables", "/config/errors", "/nope"] {
        let none = get(a, path, "");
        assert_eq!(none.status, 401, "{path}: {}", none.head);
        assert!(
            none.head.contains("www-authenticate: Bearer"),
            "{}",
            none.head
        );
        assert_eq!(none.body, "bearer token required\n");
        let wrong = get(a, path, "authorization: Bearer s3creT\r\n");
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
    }
    let m = get(a, "/metrics", &bearer());
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("xdpmesh_tables_generation 1\n"),
        "{}",
        m.body
    );
    assert_eq!(get(a, "/tables", &bearer()).body, GOOD);
    assert_eq!(
        get(a, "/nope", "authorization: bearer s3cret\r\n").status,
        404
    );
    let health = get(a, "/healthz", "");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(a, "/readyz", "");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    // A PUT without the token is refused on its head, before its body is read.
    let put = send(a, b"PUT /tables HTTP/1.1\r\ncontent-length: 10\r\n\r\n");
    assert_eq!(put.status, 401);
    assert_eq!(refused(a, &bearer(), "unauthorized"), 9);
}

/// On loopback without `token_for_reads`, reads stay open and writes need the token.
#[test]
fn on_loopback_reads_stay_open() {
    let r = rig(|_| {}, "127.0.0.1:0", Some(TOKEN), None);
    let a = r.addr();
    assert_eq!(get(a, "/metrics", "").status, 200);
    assert_eq!(get(a, "/tables", "").body, GOOD);
    let put = send(a, b"PUT /tables HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(put.status, 401);
    assert_eq!(refused(a, "", "unauthorized"), 1);
}
