//! HTTP/2 clients on an `http` listener (issue #19, first part): a gateway on kernel sockets
//! (loopback, no root) in front of an HTTP/1.1 upstream this test runs, with real clients —
//! curl (`--http2-prior-knowledge`), nghttp and h2load (Debian `nghttp2-client`) — and a
//! client written here for what they will not send.
//!
//! - h2c with prior knowledge and HTTP/1.1 on the same port; `Upgrade: h2c` is not taken up;
//! - a server's 103 Early Hints reaches the HTTP/2 client before the final response;
//! - an 8 MiB download byte-exact, a 1 MiB upload echoed byte-exact, a chunked response's
//!   trailers delivered as HTTP/2 trailers;
//! - h2load: 2 connections × 16 concurrent streams, every request answered, counted;
//! - rapid reset (CVE-2023-44487): a client that opens streams and resets each at once ends
//!   with GOAWAY ENHANCE_YOUR_CALM, counted; a well-behaved client is served meanwhile;
//! - a header block over the limit: refused, counted, the connection's other streams served;
//! - the other known attacks, each refused in bounded memory and time, counted, with curl
//!   served meanwhile or afterwards: CONTINUATION floods (endless empty frames, many small
//!   ones, a few full ones past the header-list limit) and SETTINGS and PING floods end with
//!   GOAWAY ENHANCE_YOUR_CALM; a zero-window stall ends with GOAWAY FLOW_CONTROL_ERROR at the
//!   listener's `body_stall`; a client that never reads is reset at it.

mod common;

use common::KernelGateway as Gateway;
use dataplane::netns::wait_for;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);
const BIG: usize = 8 << 20;

/// Deterministic body bytes.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 % 251) as u8).collect()
}

/// An HTTP/1.1 upstream: `GET /big` → 8 MiB (content-length), `POST /echo` → the body back
/// (content-length), `GET /trailers` → a chunked body with a trailer field, anything else
/// → `ok`.
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = serve(c);
            });
        }
    });
    addr
}

fn serve(c: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = vec![0u8; length];
        r.read_exact(&mut body)?;
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                if n == 0 {
                    let mut end = String::new();
                    r.read_line(&mut end)?;
                    break;
                }
                r.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..n]);
            }
        }
        if target.starts_with("/big") {
            write!(w, "HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n")?;
            w.write_all(&pattern(BIG))?;
        } else if target.starts_with("/echo") {
            write!(
                w,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )?;
            w.write_all(&body)?;
        } else if target.starts_with("/early-hints") {
            w.write_all(
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            )?;
        } else if target.starts_with("/trailers") {
            w.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
            )?;
        } else {
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?;
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> (Gateway, SocketAddr, SocketAddr) {
    start_with("")
}

/// A gateway whose listener has `listener` added to its table (e.g. its timeouts).
fn start_with(listener: &str) -> (Gateway, SocketAddr, SocketAddr) {
    // Tests run at once in this process: each gateway its own directory.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xdpmesh-h2-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let up = upstream();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!("[node]\nname = \"h2\"\ntables = \"tables.toml\"\nadmin = \"{admin}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tables.toml"),
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"{web}\"\nprotocol = \"http\"\n{listener}\n\n\
             [[service]]\nname = \"app\"\nhosts = [\"app.test\", \"127.0.0.1\"]\nendpoints = [{{ address = \"{up}\" }}]\n\n\
             [[route]]\nname = \"to-app\"\nservice = \"app\"\n"
        ),
    )
    .unwrap();
    let gw = Gateway::start(dir);
    (gw, web, admin)
}

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut c = TcpStream::connect_timeout(&admin, DEADLINE).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} on /metrics"))
}

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is missing (Debian nghttp2-client; scripts/lib/deps.sh installs it)");
    }
    found
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl")
}

#[test]
fn h2c_and_http1_on_one_port_through_the_engine() {
    if !tool("h2load") || !tool("nghttp") {
        eprintln!("skipped: nghttp2-client is not installed");
        return;
    }
    let (_gw, web, admin) = start();
    let url = |path: &str| format!("http://app.test:{}{path}", web.port());
    let resolve = format!("app.test:{}:127.0.0.1", web.port());

    // HTTP/2 with prior knowledge, and HTTP/1.1 on the same port.
    let out = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
        &url("/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n200 2", "{out:?}");
    let out = curl(&[
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
        &url("/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n200 1.1");
    // HTTP/1.1 asking to upgrade: answered in HTTP/1.1, never switched.
    let out = curl(&[
        "--http2",
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
        &url("/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n200 1.1");

    // 8 MiB down and 1 MiB up, byte-exact.
    let out = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve,
        &url("/big"),
    ]);
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        out.stdout == pattern(BIG),
        "the 8 MiB download differs ({} bytes)",
        out.stdout.len()
    );
    let up = std::env::temp_dir().join(format!("xdpmesh-h2-up-{}", std::process::id()));
    std::fs::write(&up, pattern(1 << 20)).unwrap();
    let out = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve,
        "--data-binary",
        &format!("@{}", up.display()),
        &url("/echo"),
    ]);
    let _ = std::fs::remove_file(&up);
    assert!(
        out.stdout == pattern(1 << 20),
        "the 1 MiB upload came back as {} bytes",
        out.stdout.len()
    );

    // A chunked response's trailer field arrives as an HTTP/2 trailer section.
    let out = Command::new("nghttp")
        .arg("-v")
        .arg(format!("http://127.0.0.1:{}/trailers", web.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello world"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("recv (stream_id=") && l.ends_with(") x-checksum: 42")),
        "no trailer:\n{text}"
    );

    // Multiplexed: 2 connections × 16 streams at once.
    let streams_before = metric(admin, "xdpmesh_h2_streams_total");
    let out = Command::new("h2load")
        .args(["-n", "640", "-c", "2", "-m", "16"])
        .arg(format!("http://127.0.0.1:{}/", web.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.contains("requests: 640 total, 640 started, 640 done, 640 succeeded"),
        "{text}"
    );
    assert!(text.contains("status codes: 640 2xx"), "{text}");
    assert!(metric(admin, "xdpmesh_h2_streams_total") >= streams_before + 640);

    // An interim response (103 Early Hints) reaches the HTTP/2 client before the final one.
    let out = curl(&[
        "--http2-prior-knowledge",
        "-sv",
        "--resolve",
        &resolve,
        &url("/early-hints"),
    ]);
    let verbose = String::from_utf8_lossy(&out.stderr);
    let hints = verbose.find("< HTTP/2 103");
    let last = verbose.find("< HTTP/2 200");
    assert!(
        hints.is_some() && hints < last && verbose.contains("< link: </style.css>; rel=preload"),
        "no 103 before the 200: {verbose}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");

    // Rapid reset: HEADERS then RST_STREAM, stream after stream.
    let calm_before = metric(admin, "xdpmesh_h2_rapid_reset_total");
    let mut c = RawClient::connect(web);
    let mut ended = None;
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        if c.headers(id, &[]).is_err() || c.rst(id).is_err() {
            break;
        }
        if let Some(code) = c.goaway_seen() {
            ended = Some(code);
            break;
        }
    }
    let ended = ended.or_else(|| c.wait_goaway());
    assert_eq!(
        ended,
        Some(0xb),
        "no GOAWAY ENHANCE_YOUR_CALM for a rapid reset"
    );
    assert_eq!(
        metric(admin, "xdpmesh_h2_rapid_reset_total"),
        calm_before + 1
    );
    // The gateway closes it even though the client keeps its end open, and lets go of it.
    assert!(c.wait_closed(), "the rapid-reset connection stays open");
    assert!(
        wait_for(DEADLINE, || (metric(admin, "xdpmesh_h2_connections_open")
            == 0)
            .then_some(()))
        .is_some(),
        "HTTP/2 connections still counted open: {}",
        metric(admin, "xdpmesh_h2_connections_open")
    );
    // Others are served.
    let out = curl(&["--http2-prior-knowledge", "--resolve", &resolve, &url("/")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");

    // A header block over 16 KiB: that stream is refused (431 or a reset), the next one on
    // the same connection is served.
    let mut c = RawClient::connect(web);
    let big = "x".repeat(20 << 10);
    c.headers(1, &[("x-big", &big)]).unwrap();
    c.headers(3, &[]).unwrap();
    let (status1, status3) = c.statuses(1, 3);
    assert!(
        matches!(status1, Some(431) | None),
        "stream 1 with a 20 KiB field: {status1:?}"
    );
    assert_eq!(status3, Some(200), "stream 3 after it");

    // Userinfo in `:authority` (RFC 9113 §8.3.1): that stream is reset and counted, the next
    // one on the connection served.
    let reset_before = metric(admin, "xdpmesh_h2_streams_reset_total");
    c.headers_for(5, "user@app.test", &[]).unwrap();
    c.headers(7, &[]).unwrap();
    let (status5, status7) = c.statuses(5, 7);
    assert_eq!(status5, None, "stream 5 with userinfo got a response");
    assert_eq!(status7, Some(200), "stream 7 after it");
    assert_eq!(
        metric(admin, "xdpmesh_h2_streams_reset_total"),
        reset_before + 1
    );
}

/// An HTTP/2 client by hand: frames as RFC 9113 §4.1 and §6 lay them out, header blocks in
/// HPACK without the dynamic table or Huffman (RFC 7541 §6.1, §6.2.2).
struct RawClient {
    s: TcpStream,
    buf: Vec<u8>,
    goaway: Option<u32>,
}

impl RawClient {
    fn connect(web: SocketAddr) -> RawClient {
        RawClient::connect_with(web, &[])
    }

    /// A client whose first SETTINGS frame carries `settings` (identifier, value).
    fn connect_with(web: SocketAddr, settings: &[(u16, u32)]) -> RawClient {
        let mut s = TcpStream::connect_timeout(&web, DEADLINE).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        // A hostile client's writes stop when the gateway stops reading: not past the test.
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut c = RawClient {
            s,
            buf: Vec::new(),
            goaway: None,
        };
        c.frame(4, 0, 0, &settings_payload(settings)).unwrap(); // SETTINGS
        c
    }

    /// Writes `bytes` (frames built with [`frame_bytes`]) without reading anything; whether
    /// the gateway took them all (it may close first) is not the point.
    fn flood(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// GET `path` for app.test, END_STREAM | END_HEADERS.
    fn get(&mut self, id: u32, path: &str) -> std::io::Result<()> {
        // :method GET (2), :scheme http (6) indexed; :path (4), :authority (1) literal.
        let mut block = vec![0x82, 0x86, 0x04];
        hpack_string(&mut block, path.as_bytes());
        block.push(0x01);
        hpack_string(&mut block, b"app.test");
        self.frame(1, 0x5, id, &block)
    }

    fn frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) -> std::io::Result<()> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f)
    }

    /// GET / for app.test, END_STREAM | END_HEADERS, with `extra` fields.
    fn headers(&mut self, id: u32, extra: &[(&str, &str)]) -> std::io::Result<()> {
        self.headers_for(id, "app.test", extra)
    }

    fn headers_for(
        &mut self,
        id: u32,
        authority: &str,
        extra: &[(&str, &str)],
    ) -> std::io::Result<()> {
        // :method GET (2), :scheme http (6), :path / (4): indexed; :authority (1) literal.
        let mut block = vec![0x82, 0x86, 0x84, 0x01];
        hpack_string(&mut block, authority.as_bytes());
        for (k, v) in extra {
            block.push(0x00); // literal without indexing, new name
            hpack_string(&mut block, k.as_bytes());
            hpack_string(&mut block, v.as_bytes());
        }
        // Blocks over the default SETTINGS_MAX_FRAME_SIZE go on in CONTINUATION frames.
        let mut parts = block.chunks(16384).peekable();
        let first = parts.next().unwrap_or(&[]);
        let last = parts.peek().is_none();
        self.frame(1, if last { 0x5 } else { 0x1 }, id, first)?;
        while let Some(p) = parts.next() {
            let last = parts.peek().is_none();
            self.frame(9, if last { 0x4 } else { 0 }, id, p)?;
        }
        Ok(())
    }

    fn rst(&mut self, id: u32) -> std::io::Result<()> {
        self.frame(3, 0, id, &8u32.to_be_bytes()) // CANCEL
    }

    /// Reads what arrived; frames are parsed from the buffer.
    fn read_some(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => is_pending(&e),
        }
    }

    /// Complete frames in the buffer: (type, flags, stream, payload).
    fn frames(&mut self) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while self.buf.len() >= 9 {
            let len = (usize::from(self.buf[0]) << 16)
                | (usize::from(self.buf[1]) << 8)
                | usize::from(self.buf[2]);
            if self.buf.len() < 9 + len {
                break;
            }
            let id = u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let f = (self.buf[3], self.buf[4], id, self.buf[9..9 + len].to_vec());
            if f.0 == 7 && f.3.len() >= 8 {
                self.goaway = Some(u32::from_be_bytes(f.3[4..8].try_into().unwrap()));
            }
            out.push(f);
            self.buf.drain(..9 + len);
        }
        out
    }

    fn goaway_seen(&mut self) -> Option<u32> {
        self.read_some();
        self.frames();
        self.goaway
    }

    fn wait_goaway(&mut self) -> Option<u32> {
        wait_for(DEADLINE, || {
            let open = self.read_some();
            self.frames();
            self.goaway.or(if open { None } else { Some(u32::MAX) })
        })
        .filter(|c| *c != u32::MAX)
    }

    /// Whether the server closes the connection (end of stream) within the deadline.
    fn wait_closed(&mut self) -> bool {
        wait_for(DEADLINE, || {
            // What the gateway sent before it closed may be megabytes: many reads a turn.
            let mut chunk = vec![0u8; 64 << 10];
            for _ in 0..256 {
                match self.s.read(&mut chunk) {
                    Ok(0) => return Some(()),
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        self.frames();
                    }
                    Err(e) if is_pending(&e) => break,
                    Err(_) => return Some(()),
                }
            }
            None
        })
        .is_some()
    }

    /// The `:status` of two streams' responses (first HEADERS of each; `None` for a reset).
    fn statuses(&mut self, a: u32, b: u32) -> (Option<u16>, Option<u16>) {
        let mut got: [Option<Option<u16>>; 2] = [None, None];
        let _ = wait_for(DEADLINE, || {
            self.read_some();
            for (kind, _, id, payload) in self.frames() {
                let slot = if id == a {
                    0
                } else if id == b {
                    1
                } else {
                    continue;
                };
                match kind {
                    1 if got[slot].is_none() => got[slot] = Some(status_of(&payload)),
                    3 if got[slot].is_none() => got[slot] = Some(None),
                    _ => {}
                }
            }
            (got[0].is_some() && got[1].is_some()).then_some(())
        });
        (got[0].flatten(), got[1].flatten())
    }
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    // Length with a 7-bit prefix, H = 0 (RFC 7541 §5.1, §5.2).
    if s.len() < 127 {
        out.push(s.len() as u8);
    } else {
        out.push(127);
        let mut n = s.len() - 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// `:status` from a response header block: the static table's indexed forms (8–14), or a
/// literal with the `:status` name (index 8) the encoder may send.
fn status_of(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    match first {
        0x88 => Some(200),
        0x89 => Some(204),
        0x8a => Some(206),
        0x8b => Some(304),
        0x8c => Some(400),
        0x8d => Some(404),
        0x8e => Some(500),
        // Literal with an indexed name (any of the three literal forms, index 8).
        0x48 | 0x08 | 0x18 => {
            let len = usize::from(block.get(1)? & 0x7f);
            std::str::from_utf8(block.get(2..2 + len)?)
                .ok()?
                .parse()
                .ok()
        }
        _ => None,
    }
}

/// A read that found nothing yet (the socket's short timeout), not a closed connection.
fn is_pending(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    matches!(e.kind(), WouldBlock | TimedOut | Interrupted)
}

fn settings_payload(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (k, v) in settings {
        p.extend_from_slice(&k.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

/// One frame's bytes (RFC 9113 §4.1).
fn frame_bytes(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A literal header field `x-pad` without indexing whose encoding takes about `n` bytes.
fn hpack_pad(n: usize) -> Vec<u8> {
    let mut value_len = n;
    loop {
        let mut f = vec![0x00];
        hpack_string(&mut f, b"x-pad");
        hpack_string(&mut f, &vec![b'a'; value_len]);
        if f.len() <= n {
            return f;
        }
        value_len -= 1;
    }
}

/// The gateway's resident memory in KiB (`VmRSS`).
fn rss_kib(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The gateway grew by less than `mib` MiB since `before` (KiB).
fn assert_rss_bounded(gw: &Gateway, before: u64, mib: u64, what: &str) {
    let now = rss_kib(gw);
    assert!(
        now < before + (mib << 10),
        "{what}: the gateway grew from {before} KiB to {now} KiB"
    );
}

/// curl over HTTP/2 with prior knowledge gets `/` through the gateway.
fn curl_served(web: SocketAddr) -> bool {
    let resolve = format!("app.test:{}:127.0.0.1", web.port());
    let url = format!("http://app.test:{}/", web.port());
    let out = curl(&["--http2-prior-knowledge", "--resolve", &resolve, &url]);
    out.stdout == b"ok"
}

/// The connection ended: GOAWAY with `code` read, then the gateway closed it and let go of it.
fn assert_goaway_and_closed(c: &mut RawClient, admin: SocketAddr, code: u32, what: &str) {
    assert_eq!(c.wait_goaway(), Some(code), "{what}: no GOAWAY {code:#x}");
    assert!(c.wait_closed(), "{what}: the connection stays open");
    assert_open_connections_drop_to_zero(admin, what);
}

fn assert_open_connections_drop_to_zero(admin: SocketAddr, what: &str) {
    assert!(
        wait_for(DEADLINE, || (metric(admin, "xdpmesh_h2_connections_open")
            == 0)
            .then_some(()))
        .is_some(),
        "{what}: HTTP/2 connections still counted open: {}",
        metric(admin, "xdpmesh_h2_connections_open")
    );
}

/// CONTINUATION floods (CVE-2024-27316 class): a header block that never ends, in endless
/// empty frames, in many small ones, or in a few full ones past twice the header-list limit,
/// ends with GOAWAY ENHANCE_YOUR_CALM, counted each time.
#[test]
fn continuation_floods_end_with_enhance_your_calm() {
    let (gw, web, admin) = start();
    let name = "xdpmesh_h2_floods_total{kind=\"continuation\"}";
    let before = metric(admin, name);
    let rss = rss_kib(&gw);
    let cases: [(&str, usize, usize); 3] = [
        ("endless empty CONTINUATION frames", 0, 100_000),
        ("many 1 KiB CONTINUATION frames", 1024, 1000),
        (
            "16 KiB CONTINUATION frames past the header-list limit",
            16_000,
            64,
        ),
    ];
    for (i, (what, size, count)) in cases.into_iter().enumerate() {
        let mut c = RawClient::connect(web);
        // HEADERS without END_HEADERS: GET / for app.test, the block goes on.
        let mut block = vec![0x82, 0x86, 0x84, 0x01];
        hpack_string(&mut block, b"app.test");
        let mut bytes = frame_bytes(1, 0x1, 1, &block);
        let pad = if size == 0 {
            Vec::new()
        } else {
            hpack_pad(size)
        };
        for _ in 0..count {
            bytes.extend(frame_bytes(9, 0, 1, &pad));
        }
        c.flood(&bytes);
        assert_goaway_and_closed(&mut c, admin, 0xb, what);
        assert_eq!(metric(admin, name), before + i as u64 + 1, "{what}");
        assert!(curl_served(web), "{what}: curl not served after it");
    }
    assert_rss_bounded(&gw, rss, 32, "CONTINUATION floods");
}

/// SETTINGS and PING floods: thousands of frames, none of the ACKs read, end with GOAWAY
/// ENHANCE_YOUR_CALM past 1,000 in 10 s, counted by kind; another client is served.
#[test]
fn settings_and_ping_floods_end_with_enhance_your_calm() {
    let (gw, web, admin) = start();
    let rss = rss_kib(&gw);
    for (kind, frame) in [
        (
            "settings",
            frame_bytes(4, 0, 0, &settings_payload(&[(2, 0)])),
        ),
        ("ping", frame_bytes(6, 0, 0, b"flooding")),
    ] {
        let name = format!("xdpmesh_h2_floods_total{{kind=\"{kind}\"}}");
        let before = metric(admin, &name);
        let mut c = RawClient::connect(web);
        // A stream open on the connection meanwhile: it ends with the connection.
        c.get(1, "/").unwrap();
        let bytes: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 20_000)
            .collect();
        c.flood(&bytes);
        assert_goaway_and_closed(&mut c, admin, 0xb, kind);
        assert_eq!(metric(admin, &name), before + 1, "{kind}");
        assert!(curl_served(web), "{kind}: curl not served after it");
    }
    assert_rss_bounded(&gw, rss, 32, "SETTINGS and PING floods");
    // A well-behaved client's few SETTINGS and PINGs are not a flood.
    let mut c = RawClient::connect(web);
    for _ in 0..10 {
        c.frame(6, 0, 0, b"pingpong").unwrap();
    }
    c.get(1, "/").unwrap();
    c.get(3, "/").unwrap();
    assert_eq!(c.statuses(1, 3), (Some(200), Some(200)));
    assert_eq!(c.goaway, None);
}

/// A zero-window stall: the client shuts every stream's window (SETTINGS_INITIAL_WINDOW_SIZE
/// = 0), asks for 8 MiB and holds the connection without a WINDOW_UPDATE. curl is served
/// meanwhile; at the listener's `body_stall` the connection ends with GOAWAY
/// FLOW_CONTROL_ERROR, counted.
#[test]
fn a_zero_window_stall_ends_with_flow_control_error_at_the_stall_timeout() {
    let (gw, web, admin) = start_with("timeouts = { body_stall = \"2s\" }");
    let name = "xdpmesh_h2_stalls_total{kind=\"window\"}";
    let before = metric(admin, name);
    let rss = rss_kib(&gw);
    let mut c = RawClient::connect_with(web, &[(4, 0)]);
    c.get(1, "/big").unwrap();
    c.get(3, "/big").unwrap();
    // The response heads arrive (HEADERS is not flow-controlled), no DATA can.
    assert_eq!(c.statuses(1, 3), (Some(200), Some(200)));
    let t0 = std::time::Instant::now();
    assert!(curl_served(web), "curl not served during the stall");
    assert_eq!(metric(admin, name), before, "ended before its timeout");
    assert_goaway_and_closed(&mut c, admin, 0x3, "zero-window stall");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "ended after {:?}, before its stall timeout",
        t0.elapsed()
    );
    assert_eq!(metric(admin, name), before + 1);
    assert!(curl_served(web), "curl not served after the stall");
    assert_rss_bounded(&gw, rss, 32, "zero-window stall");
}

/// A client that opens its windows wide, asks for 8 × 8 MiB and never reads: the gateway
/// holds a bounded amount (its socket buffers fill, then its own), and resets the connection
/// at the listener's `body_stall`, counted; curl is served meanwhile.
#[test]
fn a_client_that_never_reads_is_reset_at_the_stall_timeout() {
    let (gw, web, admin) = start_with("timeouts = { body_stall = \"2s\" }");
    let name = "xdpmesh_h2_stalls_total{kind=\"unread\"}";
    let before = metric(admin, name);
    let rss = rss_kib(&gw);
    let mut c = RawClient::connect_with(web, &[(4, 0x7fff_ffff)]);
    c.frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()) // WINDOW_UPDATE
        .unwrap();
    for i in 0..8 {
        c.get(2 * i + 1, "/big").unwrap();
    }
    assert!(
        curl_served(web),
        "curl not served while a client does not read"
    );
    assert!(
        wait_for(DEADLINE, || (metric(admin, name) == before + 1)
            .then_some(()))
        .is_some(),
        "the unread connection is not ended"
    );
    // 64 MiB asked for; the gateway holds a few of it at most.
    assert_rss_bounded(&gw, rss, 24, "a client that never reads");
    assert!(c.wait_closed(), "the unread connection stays open");
    assert_open_connections_drop_to_zero(admin, "a client that never reads");
    assert!(curl_served(web), "curl not served after it");
}
