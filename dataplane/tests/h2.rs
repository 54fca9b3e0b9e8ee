//! HTTP/2 clients on an `http` listener (issue #19, first part): a gateway on kernel sockets
//! (loopback, no root) in front of an HTTP/1.1 upstream this test runs, with real clients —
//! curl (`--http2-prior-knowledge`), nghttp and h2load (Debian `nghttp2-client`) — and a
//! client written here for what they will not send.
//!
//! - h2c with prior knowledge and HTTP/1.1 on the same port; `Upgrade: h2c` is not taken up;
//! - an 8 MiB download byte-exact, a 1 MiB upload echoed byte-exact, a chunked response's
//!   trailers delivered as HTTP/2 trailers;
//! - h2load: 2 connections × 16 concurrent streams, every request answered, counted;
//! - rapid reset (CVE-2023-44487): a client that opens streams and resets each at once ends
//!   with GOAWAY ENHANCE_YOUR_CALM, counted; a well-behaved client is served meanwhile;
//! - a header block over the limit: refused, counted, the connection's other streams served.

use dataplane::netns::wait_for;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);
const BIG: usize = 8 << 20;

struct Gateway {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
    let dir = std::env::temp_dir().join(format!("xdpmesh-h2-{}", std::process::id()));
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
            "[[listener]]\nname = \"web\"\nbind = \"{web}\"\nprotocol = \"http\"\n\n\
             [[service]]\nname = \"app\"\nhosts = [\"app.test\", \"127.0.0.1\"]\nendpoints = [{{ address = \"{up}\" }}]\n\n\
             [[route]]\nname = \"to-app\"\nservice = \"app\"\n"
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
    let lines = Arc::new(Mutex::new(Vec::new()));
    {
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
    }
    let gw = Gateway { child, dir };
    let ready = wait_for(DEADLINE, || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(" ready"))
            .then_some(())
    });
    assert!(ready.is_some(), "not ready: {:?}", lines.lock().unwrap());
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
        let mut s = TcpStream::connect_timeout(&web, DEADLINE).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut c = RawClient {
            s,
            buf: Vec::new(),
            goaway: None,
        };
        c.frame(4, 0, 0, &[]).unwrap(); // SETTINGS
        c
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
            Err(_) => true,
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
            let open = self.read_some();
            self.frames();
            (!open).then_some(())
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
