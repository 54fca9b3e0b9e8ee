//! The proxy engine's HTTP/1.1 behaviour, over kernel sockets on loopback (no root needed):
//! keep-alive on both sides, routing by path and header, a chunked request body streamed
//! through, `Expect: 100-continue`, an upgrade turned into a tunnel, `x-request-id` added
//! when absent and kept when present, `traceparent` naming the gateway's span (a child of
//! the client's when it sent one), 400 for bad framing; connects that
//! fail retried on another endpoint, 503 when every attempt failed, 504 at the request
//! timeout, 408 for a head that never ends, idle keep-alive connections closed. Timeouts are
//! set short in the tables; every wait is a blocking read with a 10 s bound, not a sleep.
//! The mTLS hop and AF_XDP are covered on the rig (`mesh_rig.rs`).

use dataplane::proxy::kernel::KernelWorker;
use mesh::engine::{Expiry, NoMeshTls, Outcome, Refusal};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A small origin server: answers every request with its name, the request line and the
/// headers it received (as the body); echoes the body of POSTs; `Expect: 100-continue` gets
/// a 100 first; `Upgrade` gets a 101 and then echoes raw bytes.
fn origin(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(name, c));
        }
    });
    addr
}

fn serve(name: &str, c: TcpStream) {
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    loop {
        let mut head = Vec::new();
        let mut line = String::new();
        let (mut len, mut chunked, mut expect, mut upgrade) = (0usize, false, false, false);
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let l = line.to_ascii_lowercase();
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
            expect |= l.starts_with("expect:") && l.contains("100-continue");
            upgrade |= l.starts_with("upgrade:");
            head.push(line.trim_end().to_string());
        }
        if upgrade {
            w.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n",
            )
            .unwrap();
            let _ = std::io::copy(&mut r, &mut w);
            return;
        }
        if expect {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        }
        let mut body = Vec::new();
        if chunked {
            body = read_chunked(&mut r);
        } else {
            body.resize(len, 0);
            r.read_exact(&mut body).unwrap();
        }
        let mut out = format!("{name}\n{}\n", head.join("\n")).into_bytes();
        out.extend_from_slice(&body);
        // Chunked, in two chunks: the response side's framing is exercised too.
        let half = out.len() / 2;
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [&out[..half], &out[half..]] {
            resp.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            resp.extend_from_slice(part);
            resp.extend_from_slice(b"\r\n");
        }
        resp.extend_from_slice(b"0\r\n\r\n");
        w.write_all(&resp).unwrap();
    }
}

struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<mesh::engine::ProxyStats>>,
}

impl Proxy {
    fn start(tables: &str) -> Proxy {
        let src = control::Source::new("t.toml", tables.to_string());
        let compiled =
            control::compile(&src, &control::Context::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let publisher = Arc::new(control::Publisher::new());
        publisher.publish(compiled.snapshot, Arc::from(tables), "test");
        let addr = publisher.load().listeners[0].bind;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let mut w = KernelWorker::new(publisher, Arc::new(NoMeshTls)).expect("listen");
        let thread = std::thread::spawn(move || {
            w.run(&st).unwrap();
            w.engine.stats
        });
        Proxy {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> mesh::engine::ProxyStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tables(a: SocketAddr, b: SocketAddr, listen: u16) -> String {
    format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:{listen}"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [
  {{ address = "{a}", labels = {{ v = "a" }} }},
  {{ address = "{b}", labels = {{ v = "b" }} }},
]

[[route]]
service = "web"
match = {{ headers = {{ x-pick = "b" }} }}
backends = [{{ labels = {{ v = "b" }}, weight = 1 }}]

[[route]]
service = "web"
match = {{ path = {{ prefix = "/b" }} }}
backends = [{{ labels = {{ v = "b" }}, weight = 1 }}]

[[route]]
service = "web"
backends = [{{ labels = {{ v = "a" }}, weight = 1 }}]
"#
    )
}

/// Reads a chunked body (no trailers) and returns its data.
fn read_chunked(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let (mut body, mut line) = (Vec::new(), String::new());
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let n = usize::from_str_radix(line.trim_end(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        body.extend_from_slice(&chunk[..n]);
        if n == 0 {
            return body;
        }
    }
}

/// Reads one response: (status, headers, body), following Content-Length or chunked.
fn response(r: &mut BufReader<TcpStream>) -> (u16, Vec<String>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    let (mut len, mut chunked) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
        headers.push(line.trim_end().to_string());
    }
    let body = if chunked {
        read_chunked(r)
    } else {
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        body
    };
    (status, headers, body)
}

fn client(p: &Proxy) -> (TcpStream, BufReader<TcpStream>) {
    let c = TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (c.try_clone().unwrap(), BufReader::new(c))
}

#[test]
fn http_through_the_proxy() {
    let (a, b) = (origin("origin-a"), origin("origin-b"));
    let p = Proxy::start(&tables(a, b, free_port()));
    let (mut w, mut r) = client(&p);

    // Keep-alive: several requests on one connection, routed per request.
    let get = |w: &mut TcpStream, path: &str, extra: &str| {
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: web.test\r\n{extra}\r\n").as_bytes())
            .unwrap();
    };
    get(&mut w, "/", "");
    let (s, _, body) = response(&mut r);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(s, 200);
    assert!(body.starts_with("origin-a\nGET / HTTP/1.1"), "{body}");
    // Added when absent: a request id and a W3C traceparent.
    assert!(
        body.to_ascii_lowercase().contains("\nx-request-id: "),
        "{body}"
    );
    let tp = body
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("traceparent: ")
                .map(str::to_string)
        })
        .expect("traceparent added");
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-") && tp.ends_with("-01"));

    // A request id is kept; a trace is continued: its trace id kept, the gateway's span as
    // the parent (W3C Trace Context §3.2.2.4).
    let mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    get(
        &mut w,
        "/",
        &format!("x-request-id: abc\r\ntraceparent: {mine}\r\n"),
    );
    let (_, _, body) = response(&mut r);
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("x-request-id: abc"), "{body}");
    let tp = body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .expect("traceparent forwarded");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && tp.ends_with("-01"),
        "{tp}"
    );
    assert_ne!(tp, mine, "the parent is the gateway's span");
    assert_eq!(body.matches("x-request-id").count(), 1);

    // Path and header routes go to b.
    get(&mut w, "/b/x", "");
    assert!(response(&mut r).2.starts_with(b"origin-b"));
    get(&mut w, "/", "x-pick: b\r\n");
    assert!(response(&mut r).2.starts_with(b"origin-b"));

    // A chunked request body, streamed through unchanged in meaning.
    w.write_all(
        b"POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .unwrap();
    let (s, _, body) = response(&mut r);
    assert_eq!(s, 200);
    assert!(
        body.ends_with(b"hello world"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Expect: 100-continue: the 100 is relayed before the body is sent.
    w.write_all(
        b"POST /echo HTTP/1.1\r\nHost: web.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let (s, _, _) = response(&mut r);
    assert_eq!(s, 100);
    w.write_all(b"data").unwrap();
    let (s, _, body) = response(&mut r);
    assert_eq!(s, 200);
    assert!(body.ends_with(b"data"));

    // Conflicting Content-Length: 400, and the connection closes.
    w.write_all(
        b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    )
    .unwrap();
    let (s, _, _) = response(&mut r);
    assert_eq!(s, 400);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // An upgrade becomes a tunnel.
    let (mut w, mut r) = client(&p);
    w.write_all(
        b"GET /ws HTTP/1.1\r\nHost: web.test\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n",
    )
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    w.write_all(b"raw bytes both ways").unwrap();
    let mut back = [0u8; 19];
    r.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"raw bytes both ways");
    drop((w, r));

    let stats = p.stop();
    assert!(stats.upstream_reused >= 3, "keep-alive upstream: {stats:?}");
    assert_eq!(stats.refused(Refusal::BadRequest), 1);
}

#[test]
fn an_endpoint_that_refuses_gets_a_503_after_every_attempt() {
    // A port nobody listens on.
    let dead = |_| -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let p = Proxy::start(&tables(dead(0), dead(1), free_port()));
    let (mut w, mut r) = client(&p);
    w.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    let (s, headers, body) = response(&mut r);
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        headers
            .iter()
            .any(|h| h == "x-xdpmesh-error: connect_failed"),
        "{headers:?}"
    );
    let stats = p.stop();
    // The route has one endpoint: every attempt goes there, and each ends once.
    assert_eq!(stats.refused(Refusal::ConnectFailed), 1, "{stats:?}");
    assert_eq!(
        stats.attempts(Outcome::ConnectFailed),
        u64::from(mesh::engine::MAX_CONNECT_ATTEMPTS),
        "{stats:?}"
    );
    assert_eq!(
        stats.retries,
        u64::from(mesh::engine::MAX_CONNECT_ATTEMPTS) - 1
    );
}

/// One service, `endpoints` in one backend, behind an http listener with `timeouts` and a
/// route with `route_extra` keys.
fn service_tables(
    listen: u16,
    endpoints: &[SocketAddr],
    timeouts: &str,
    route_extra: &str,
) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{ address = \"{e}\" }}"))
        .collect();
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{listen}\"\nprotocol = \"http\"\n{timeouts}\n\
         [[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nendpoints = [{}]\n\
         [[route]]\nservice = \"web\"\n{route_extra}\n",
        eps.join(", ")
    )
}

#[test]
fn a_failed_connect_is_retried_on_another_endpoint() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let live = origin("live");
    let p = Proxy::start(&service_tables(free_port(), &[dead, live], "", ""));
    let (mut w, mut r) = client(&p);
    // Round-robin sends some of these to the dead endpoint first.
    for _ in 0..6 {
        w.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .unwrap();
        let (s, _, body) = response(&mut r);
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
        assert!(body.starts_with(b"live\n"));
    }
    drop((w, r));
    let stats = p.stop();
    assert!(stats.retries >= 1, "{stats:?}");
    assert_eq!(stats.attempts(Outcome::ConnectFailed), stats.retries);
    assert_eq!(stats.attempts(Outcome::Complete), 6, "{stats:?}");
    assert_eq!(stats.refused(Refusal::ConnectFailed), 0);
}

/// A server that accepts and reads, and never answers.
fn silent_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[test]
fn a_silent_server_gives_a_504_at_the_route_timeout_while_others_are_served() {
    let (silent, live) = (silent_server(), origin("live"));
    let t = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{}\"\nprotocol = \"http\"\n\
         [[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nendpoints = [{{ address = \"{silent}\" }}]\n\
         [[service]]\nname = \"live\"\nendpoints = [{{ address = \"{live}\" }}]\n\
         [[route]]\nservice = \"web\"\nmatch = {{ headers = {{ x-pick = \"live\" }} }}\n\
         backends = [{{ service = \"live\" }}]\n\
         [[route]]\nservice = \"web\"\ntimeout = \"400ms\"\n",
        free_port()
    );
    let p = Proxy::start(&t);
    let (mut w, mut r) = client(&p);
    w.write_all(b"GET /slow HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    // Meanwhile another client is served.
    let (mut w2, mut r2) = client(&p);
    w2.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nx-pick: live\r\n\r\n")
        .unwrap();
    let (s2, _, body2) = response(&mut r2);
    assert_eq!(s2, 200, "{}", String::from_utf8_lossy(&body2));
    assert!(body2.starts_with(b"live\n"));
    let (s, headers, _) = response(&mut r);
    assert_eq!(s, 504);
    assert!(headers
        .iter()
        .any(|h| h == "x-xdpmesh-error: request_timeout"));
    drop((w, r, w2, r2));
    let stats = p.stop();
    assert_eq!(stats.timeouts(Expiry::Request), 1, "{stats:?}");
    assert_eq!(stats.attempts(Outcome::TimedOut), 1);
    assert_eq!(stats.refused(Refusal::RequestTimeout), 1);
}

#[test]
fn a_slow_head_gets_a_408_and_an_idle_connection_is_closed() {
    let live = origin("live");
    let p = Proxy::start(&service_tables(
        free_port(),
        &[live],
        "timeouts = { request_head = \"300ms\", idle = \"300ms\" }",
        "",
    ));
    // A head that never ends: 408, then the gateway closes.
    let (mut w, mut r) = client(&p);
    w.write_all(b"GET / HTTP/1.1\r\nHost: web").unwrap();
    let (s, headers, _) = response(&mut r);
    assert_eq!(s, 408);
    assert!(headers
        .iter()
        .any(|h| h == "x-xdpmesh-error: request_head_timeout"));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the 408");
    // A kept-alive connection with nothing in flight is closed after `idle`.
    let (mut w2, mut r2) = client(&p);
    w2.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    assert_eq!(response(&mut r2).0, 200);
    let mut rest = Vec::new();
    r2.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed when idle");
    drop((w, r, w2, r2));
    let stats = p.stop();
    assert_eq!(stats.timeouts(Expiry::RequestHead), 1, "{stats:?}");
    assert_eq!(stats.timeouts(Expiry::Idle), 1, "{stats:?}");
}

#[test]
fn an_unknown_host_gets_a_404() {
    let (a, b) = (origin("origin-a"), origin("origin-b"));
    let p = Proxy::start(&tables(a, b, free_port()));
    let (mut w, mut r) = client(&p);
    w.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .unwrap();
    assert_eq!(response(&mut r).0, 404);
    assert_eq!(p.stop().refused(Refusal::NoRoute), 1);
}
