//! `xdpmesh tap` and `xdpmesh top`: clients of the admin API's `GET /tap` stream
//! ([`crate::tap_hub`] describes its lines). Plain TCP to the admin address, so both work
//! from inside a gateway's namespace (`ip netns exec NS xdpmesh tap ...`).

use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Connecting to the admin API and reading its response head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A chunk of the stream longer than this is refused (the gateway sends at most 64 KiB).
const MAX_CHUNK: usize = 1024 * 1024;
/// `top`'s sliding window, and the most requests it keeps in it.
pub const TOP_WINDOW: Duration = Duration::from_secs(10);
const TOP_SAMPLES: usize = 100_000;
/// `top`'s rows at most.
const TOP_ROWS: usize = 20;

/// What to ask `/tap` for.
#[derive(Debug, Clone, Default)]
pub struct TapRequest {
    /// host:port of the admin API.
    pub admin: String,
    /// Bearer token, when its reads need one.
    pub token: Option<String>,
    /// `(parameter, value)` pairs of the query (filters, limit, seconds).
    pub params: Vec<(&'static str, String)>,
}

impl TapRequest {
    fn target(&self) -> String {
        let mut t = String::from("/tap");
        for (i, (k, v)) in self.params.iter().enumerate() {
            t.push(if i == 0 { '?' } else { '&' });
            t.push_str(k);
            t.push('=');
            t.push_str(&encode(v));
        }
        t
    }

    /// Opens the stream: its lines, or the gateway's refusal (status and text) as an error.
    pub fn open(&self) -> Result<Lines, String> {
        let addr = self
            .admin
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.admin))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.admin))?;
        let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("admin API at {addr}: {e}"))?;
        let auth = self
            .token
            .as_deref()
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {} HTTP/1.1\r\nhost: {}\r\n{auth}accept: application/x-ndjson\r\n\r\n",
            self.target(),
            self.admin
        )
        .map_err(|e| format!("admin API at {addr}: {e}"))?;
        s.set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut status_line = String::new();
        r.read_line(&mut status_line)
            .map_err(|e| format!("admin API at {addr}: {e}"))?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("admin API at {addr}: not HTTP: {status_line:?}"))?;
        let mut chunked = false;
        let mut length = None;
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).map_err(|e| e.to_string())? == 0 || l.len() > 16 * 1024 {
                return Err(format!("admin API at {addr}: bad response head"));
            }
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                } else if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse::<usize>().ok();
                }
            }
        }
        if status != 200 || !chunked {
            let mut body = vec![0; length.unwrap_or(0).min(64 * 1024)];
            let _ = r.read_exact(&mut body);
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim_end()
            ));
        }
        // From here on a quiet tap may wait long for its next line.
        r.get_ref()
            .set_read_timeout(None)
            .map_err(|e| e.to_string())?;
        Ok(Lines {
            r,
            chunk_left: 0,
            done: false,
            pending: Vec::new(),
        })
    }
}

/// %-encodes what a query value must not carry raw.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The stream's lines, from its chunked body.
pub struct Lines {
    r: BufReader<TcpStream>,
    chunk_left: usize,
    done: bool,
    pending: Vec<u8>,
}

impl Lines {
    /// The next line; `Ok(None)` at the end of the body.
    pub fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()));
            }
            if self.done {
                return Ok(None);
            }
            if self.chunk_left == 0 {
                let mut size = String::new();
                if self.r.read_line(&mut size)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let size = size.trim();
                if size.is_empty() {
                    continue; // the CRLF after a chunk's data
                }
                let n = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                if n > MAX_CHUNK {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunk too large",
                    ));
                }
                if n == 0 {
                    self.done = true;
                    continue;
                }
                self.chunk_left = n;
            }
            let mut buf = vec![0; self.chunk_left.min(16 * 1024)];
            let got = self.r.read(&mut buf)?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.chunk_left -= got;
            self.pending.extend_from_slice(&buf[..got]);
            if self.pending.len() > MAX_CHUNK {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
        }
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("-")
}

fn ms(us: Option<u64>) -> String {
    match us {
        Some(us) => format!("{:.1}ms", us as f64 / 1000.0),
        None => "-".into(),
    }
}

/// `xdpmesh tap`'s table: the header.
pub const TAP_HEADER: &str = "TIME          STATUS METHOD  SERVICE          ROUTE            ENDPOINT              DURATION  UPSTREAM  ATT OUTCOME  PATH";

/// One request line as a table row; a `dropped` line as a note; `None` for the `end` line.
pub fn tap_row(v: &Value) -> Option<String> {
    match v["type"].as_str() {
        Some("http") => {
            let time = s(v, "time");
            // 2026-01-01T12:34:56.789012Z → 12:34:56.789
            let clock = time.get(11..23).unwrap_or(time);
            let status = v["status"]
                .as_u64()
                .map_or_else(|| "cut".to_string(), |c| c.to_string());
            let outcome = match (s(v, "outcome"), v["reason"].as_str()) {
                (o, Some(r)) => format!("{o}:{r}"),
                (o, None) => o.to_string(),
            };
            Some(format!(
                "{clock:<13} {status:<6} {:<7} {:<16} {:<16} {:<21} {:>8}  {:>8}  {:>3} {outcome:<8} {}",
                s(v, "method"),
                s(v, "service"),
                s(v, "route"),
                s(v, "endpoint"),
                ms(v["duration_us"].as_u64()),
                ms(v["upstream_us"].as_u64()),
                v["attempts"].as_u64().unwrap_or(0),
                s(v, "path"),
            ))
        }
        Some("dropped") => Some(format!(
            "# {} requests not shown: this reader was too slow",
            v["dropped"].as_u64().unwrap_or(0)
        )),
        _ => None,
    }
}

/// `xdpmesh tap`: prints the stream until it ends; exit code 0, or 1 when it could not be
/// read.
pub fn tap(req: &TapRequest, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut lines = match req.open() {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(err, "xdpmesh tap: {e}");
            return 1;
        }
    };
    if !json {
        let _ = writeln!(out, "{TAP_HEADER}");
    }
    loop {
        match lines.next_line() {
            Ok(Some(l)) => {
                let w = if json {
                    writeln!(out, "{l}")
                } else {
                    match serde_json::from_str::<Value>(&l)
                        .ok()
                        .as_ref()
                        .and_then(tap_row)
                    {
                        Some(row) => writeln!(out, "{row}"),
                        None => Ok(()),
                    }
                };
                // A closed pipe (`| head`): done.
                if w.and_then(|()| out.flush()).is_err() {
                    return 0;
                }
            }
            Ok(None) => return 0,
            Err(e) => {
                let _ = writeln!(err, "xdpmesh tap: the stream broke: {e}");
                return 1;
            }
        }
    }
}

/// What `top` groups by: service, route, method, path without the query.
type Key = (String, String, String, String);

/// One request as `top` counts it.
struct Sample {
    at: Instant,
    key: Key,
    ok: bool,
    duration_us: u64,
}

/// `top`'s sliding window of requests, filled by the stream's reader thread.
#[derive(Default)]
pub struct Window {
    samples: std::collections::VecDeque<Sample>,
    dropped: u64,
    error: Option<String>,
}

impl Window {
    /// Counts one line of the stream.
    pub fn add(&mut self, v: &Value, now: Instant) {
        match v["type"].as_str() {
            Some("http") => {}
            Some("dropped") => {
                self.dropped += v["dropped"].as_u64().unwrap_or(0);
                return;
            }
            _ => return,
        }
        let path = s(v, "path");
        let path = path.split('?').next().unwrap_or(path);
        if self.samples.len() >= TOP_SAMPLES {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(Sample {
            at: now,
            key: (
                s(v, "service").to_string(),
                s(v, "route").to_string(),
                s(v, "method").to_string(),
                path.chars().take(64).collect(),
            ),
            ok: v["status"].as_u64().is_some_and(|c| c < 500),
            duration_us: v["duration_us"].as_u64().unwrap_or(0),
        });
    }

    /// The table: the busiest (service, route, method, path) over the last `window`.
    pub fn render(&mut self, now: Instant, window: Duration, since: Duration) -> String {
        while self
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > window)
        {
            self.samples.pop_front();
        }
        let mut rows: HashMap<&Key, (u64, u64, Vec<u64>)> = HashMap::new();
        for s in &self.samples {
            let r = rows.entry(&s.key).or_default();
            r.0 += 1;
            r.1 += u64::from(s.ok);
            r.2.push(s.duration_us);
        }
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        let secs = since.min(window).as_secs_f64().max(1.0);
        let mut t = format!(
            "{:<16} {:<16} {:<7} {:<28} {:>9} {:>8} {:>9} {:>9}\n",
            "SERVICE", "ROUTE", "METHOD", "PATH", "RPS", "SUCCESS", "P50", "P99"
        );
        for ((svc, route, method, path), (n, ok, mut d)) in rows.into_iter().take(TOP_ROWS) {
            d.sort_unstable();
            let q = |p: f64| d[((d.len() as f64 * p).ceil() as usize).clamp(1, d.len()) - 1];
            t.push_str(&format!(
                "{svc:<16} {route:<16} {method:<7} {path:<28} {:>9.1} {:>7.1}% {:>9} {:>9}\n",
                n as f64 / secs,
                ok as f64 * 100.0 / n as f64,
                ms(Some(q(0.50))),
                ms(Some(q(0.99))),
            ));
        }
        if self.dropped > 0 {
            t.push_str(&format!(
                "# {} requests not counted (slow reader or window full)\n",
                self.dropped
            ));
        }
        if let Some(e) = &self.error {
            t.push_str(&format!("# tap: {e}\n"));
        }
        t
    }
}

/// `xdpmesh top`'s options.
pub struct TopOptions {
    pub request: TapRequest,
    pub interval: Duration,
    /// Print the table this many times, plainly (no raw mode, no screen clearing), then exit.
    pub iterations: Option<u64>,
}

/// `xdpmesh top`: the busiest routes and paths, refreshed every interval, `q` quits.
pub fn top(o: &TopOptions, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let win = Arc::new(Mutex::new(Window::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // The first connection in the foreground: a refusal is an error at once.
    let mut req = o.request.clone();
    req.params.retain(|(k, _)| *k != "seconds" && *k != "limit");
    req.params
        .push(("seconds", crate::tap_hub::MAX_SECONDS.to_string()));
    let first = match req.open() {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(err, "xdpmesh top: {e}");
            return 1;
        }
    };
    {
        let (win, stop) = (win.clone(), stop.clone());
        std::thread::spawn(move || read_into(first, req, &win, &stop));
    }
    let started = Instant::now();
    let code = match o.iterations {
        Some(n) => {
            for i in 0..n {
                std::thread::sleep(o.interval);
                let t = win.lock().unwrap_or_else(PoisonError::into_inner).render(
                    Instant::now(),
                    TOP_WINDOW,
                    started.elapsed(),
                );
                if write!(out, "{t}").and_then(|()| out.flush()).is_err() {
                    break;
                }
                if i + 1 < n {
                    let _ = writeln!(out);
                }
            }
            0
        }
        None => interactive(o, &win, started, out, err),
    };
    stop.store(true, Ordering::SeqCst);
    code
}

/// Reads the stream into the window; opens it again when it ends (after `seconds`).
fn read_into(mut lines: Lines, req: TapRequest, win: &Mutex<Window>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match lines.next_line() {
            Ok(Some(l)) => {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    win.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .add(&v, Instant::now());
                }
            }
            Ok(None) | Err(_) => {
                let mut reopened = req.open();
                while let Err(e) = reopened {
                    win.lock().unwrap_or_else(PoisonError::into_inner).error = Some(e);
                    std::thread::sleep(Duration::from_secs(1));
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    reopened = req.open();
                }
                win.lock().unwrap_or_else(PoisonError::into_inner).error = None;
                if let Ok(l) = reopened {
                    lines = l;
                }
            }
        }
    }
}

/// The terminal in non-canonical mode without echo (keys arrive one by one, `q` is not
/// shown; Ctrl-C still signals), restored on drop and from the panic hook.
struct RawTerm {
    saved: libc::termios,
}

static SAVED: std::sync::OnceLock<libc::termios> = std::sync::OnceLock::new();

fn restore(t: &libc::termios) {
    // SAFETY: tcsetattr reads the termios we hand it; fd 0 stays open for the process.
    unsafe {
        libc::tcsetattr(0, libc::TCSANOW, t);
    }
    let mut o = io::stdout();
    // Leave the alternate screen, show the cursor.
    let _ = o.write_all(b"\x1b[?25h\x1b[?1049l");
    let _ = o.flush();
}

impl RawTerm {
    fn new() -> io::Result<RawTerm> {
        // SAFETY: isatty and tcgetattr only read fd 0's state into the zeroed struct.
        let saved = unsafe {
            if libc::isatty(0) != 1 {
                return Err(io::Error::other(
                    "stdin is not a terminal (use --iterations N)",
                ));
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Err(io::Error::last_os_error());
            }
            t
        };
        let _ = SAVED.set(saved);
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(t) = SAVED.get() {
                restore(t);
            }
            prev(info);
        }));
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; the struct is a valid termios copied from the terminal's.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut o = io::stdout();
        let _ = o.write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = o.flush();
        Ok(RawTerm { saved })
    }

    /// Whether `q` (or Q) was pressed within `wait`.
    fn quit_pressed(&self, wait: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
            return false;
        }
        let mut b = [0u8; 64];
        // SAFETY: reads into our buffer, at most its length.
        let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
        n > 0 && b[..n as usize].iter().any(|&c| c == b'q' || c == b'Q')
    }
}

impl Drop for RawTerm {
    fn drop(&mut self) {
        restore(&self.saved);
    }
}

fn interactive(
    o: &TopOptions,
    win: &Mutex<Window>,
    started: Instant,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, signalled.clone());
    }
    let term = match RawTerm::new() {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "xdpmesh top: {e}");
            return 1;
        }
    };
    let mut next = Instant::now();
    loop {
        if signalled.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        if now >= next {
            let t = win.lock().unwrap_or_else(PoisonError::into_inner).render(
                now,
                TOP_WINDOW,
                started.elapsed(),
            );
            let head = format!(
                "xdpmesh top — {}  (last {} s, every {}; q quits)\n\n",
                o.request.admin,
                TOP_WINDOW.as_secs(),
                humantime::format_duration(o.interval)
            );
            let screen = format!("\x1b[H\x1b[2J{head}{t}").replace('\n', "\r\n");
            if out
                .write_all(screen.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                break;
            }
            next = now + o.interval;
        }
        if term.quit_pressed(
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
        ) {
            break;
        }
    }
    drop(term);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        let r = TapRequest {
            admin: "x".into(),
            token: None,
            params: vec![
                ("path_prefix", "/a b&c".into()),
                ("identity", "spiffe://d/e".into()),
            ],
        };
        assert_eq!(
            r.target(),
            "/tap?path_prefix=/a%20b%26c&identity=spiffe://d/e"
        );
    }

    #[test]
    fn rows_and_the_window() {
        let v = serde_json::json!({"type":"http","time":"2026-01-01T12:34:56.789012Z","method":"GET",
            "service":"reviews","route":"canary","endpoint":"10.0.3.2:8080","path":"/a?b","status":503,
            "duration_us":1500,"upstream_us":null,"attempts":1,"outcome":"error","reason":"connect_failed"});
        let row = tap_row(&v).unwrap();
        assert!(
            row.starts_with("12:34:56.789  503    GET     reviews"),
            "{row}"
        );
        assert!(
            row.contains("1.5ms") && row.contains("error:connect_failed") && row.ends_with("/a?b"),
            "{row}"
        );
        assert!(tap_row(&serde_json::json!({"type":"end"})).is_none());
        let mut w = Window::default();
        let now = Instant::now();
        for i in 0..10u64 {
            let mut v = v.clone();
            v["status"] = serde_json::json!(if i < 8 { 200 } else { 503 });
            v["duration_us"] = serde_json::json!((i + 1) * 1000);
            w.add(&v, now);
        }
        let t = w.render(now, TOP_WINDOW, Duration::from_secs(5));
        let row = t.lines().nth(1).unwrap();
        assert!(
            row.starts_with("reviews          canary           GET     /a "),
            "{t}"
        );
        // 10 requests over 5 s: 2/s; 80 % success; p50 5 ms, p99 10 ms.
        assert!(
            row.contains("      2.0    80.0%     5.0ms    10.0ms"),
            "{t}"
        );
        // Later than the window: gone.
        let t = w.render(
            now + TOP_WINDOW + Duration::from_secs(1),
            TOP_WINDOW,
            Duration::from_secs(60),
        );
        assert_eq!(t.lines().count(), 1, "{t}");
    }
}
