//! Tables in etcd (issue #20): a small blocking client of etcd's v3 JSON gateway, the key
//! layout, and the sync loop that keeps one node's tables at etcd's latest revision.
//!
//! Key layout under the prefix `P` (default `/xdpmesh`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `P/tables` | the whole tables TOML | `xdpmesh tables push`, `PUT /tables` on a node in etcd mode |
//! | `P/endpoints/<service>/<address>` | JSON `{"address", "labels"?, "via"?, "weight"?}`, bound to a lease | `xdpmesh register` |
//!
//! A node reads the whole prefix with one range at one revision, merges the registered
//! endpoints into their `[[service]]`'s `endpoints` and compiles the result like a file:
//! one revision → one snapshot, never half of a change. Then it watches the prefix from
//! the next revision: each watch response (whole revisions, etcd never splits one) updates
//! the node's copy of the prefix and the result is applied as the response's last
//! revision. A reconnect or a compaction starts again with a full read at the latest
//! revision; a revision at or below the last one seen is skipped, so none is applied
//! twice and none is missed.
//!
//! Why the JSON gateway (`POST /v3/kv/range`, `/v3/watch`, ...) over HTTP/1.1 and not
//! gRPC: the `etcd-client` crate needs `protoc` at build time and a tokio runtime;
//! this is a few hundred lines on `std::net` + rustls, run on the control thread.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// A watch read returns [`WatchMsg::Idle`] after this long without a message (the
/// sync loop then checks whether it should stop).
const WATCH_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/xdpmesh";

/// `[etcd]` of the node file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`, tried in turn.
    pub endpoints: Vec<String>,
    /// Without a trailing `/`.
    pub prefix: String,
    /// CA certificate(s) that etcd's server certificate chains to (https endpoints).
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A file holding `user:password` (etcd's own authentication).
    pub credentials_file: Option<PathBuf>,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            prefix: normalize_prefix(prefix),
            ca: None,
            cert: None,
            key: None,
            credentials_file: None,
        }
    }
    pub fn tables_key(&self) -> String {
        format!("{}/tables", self.prefix)
    }
    pub fn endpoints_prefix(&self) -> String {
        format!("{}/endpoints/", self.prefix)
    }
    pub fn registration_key(&self, service: &str, address: &str) -> String {
        format!("{}{service}/{address}", self.endpoints_prefix())
    }
}

/// `/xdpmesh/` and `xdpmesh` both mean `/xdpmesh`.
pub fn normalize_prefix(p: &str) -> String {
    let t = p.trim().trim_end_matches('/');
    if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{t}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connect, TLS, I/O or timeout).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd: {0}")]
    Server(String),
    /// The revision asked for was compacted away.
    #[error("etcd: revision compacted")]
    Compacted,
    /// A compare-and-swap found the key changed since the revision given.
    #[error("the tables changed since revision {read}: now at {current}")]
    Conflict { read: i64, current: i64 },
    #[error("etcd client setup: {0}")]
    Setup(String),
}

/// One key-value at a revision.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub lease: i64,
}

/// The whole prefix at one revision.
#[derive(Debug, Clone)]
pub struct PrefixSnapshot {
    pub revision: i64,
    /// `P/tables`, if present.
    pub tables: Option<Kv>,
    /// `P/endpoints/...`, by key.
    pub registrations: Vec<Kv>,
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A blocking client of the JSON gateway; one request per connection.
pub struct Client {
    cfg: EtcdConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
    pub timeout: Duration,
}

fn b64(s: impl AsRef<[u8]>) -> String {
    data_encoding::BASE64.encode(s.as_ref())
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| data_encoding::BASE64.decode(s.as_bytes()).ok())
        .unwrap_or_default()
}

/// etcd's JSON writes int64 as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key just after every key starting with `p` (etcd's `range_end` for a prefix).
fn prefix_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kv(v: &Value) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&unb64(&v["key"])).into_owned(),
        value: unb64(&v["value"]),
        mod_revision: int(&v["mod_revision"]),
        create_revision: int(&v["create_revision"]),
        lease: int(&v["lease"]),
    }
}

fn error_of(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    Some(match e {
        Value::String(s) => v["message"].as_str().unwrap_or(s).to_string(),
        other => other["message"]
            .as_str()
            .map_or_else(|| other.to_string(), str::to_string),
    })
}

fn server_error(msg: String) -> EtcdError {
    if msg.contains("compacted") {
        EtcdError::Compacted
    } else {
        EtcdError::Server(msg)
    }
}

impl Client {
    pub fn new(cfg: &EtcdConfig) -> Result<Self, EtcdError> {
        if cfg.endpoints.is_empty() {
            return Err(EtcdError::Setup("no endpoints".into()));
        }
        let any_tls = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
        let tls = if any_tls {
            Some(tls_config(cfg)?)
        } else {
            None
        };
        let credentials = match &cfg.credentials_file {
            None => None,
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| EtcdError::Setup(format!("{}: {e}", p.display())))?;
                let line = t.lines().next().unwrap_or("").trim();
                let (u, pw) = line.split_once(':').ok_or_else(|| {
                    EtcdError::Setup(format!("{}: not `user:password`", p.display()))
                })?;
                Some((u.to_string(), pw.to_string()))
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            tls,
            credentials,
            token: Mutex::new(None),
            preferred: AtomicUsize::new(0),
            timeout: Duration::from_secs(2),
        })
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.cfg
    }

    fn connect(
        &self,
        endpoint: &str,
        timeout: Duration,
        read_timeout: Duration,
    ) -> io::Result<Box<dyn Conn>> {
        let (secure, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
            (true, r)
        } else {
            (false, endpoint.strip_prefix("http://").unwrap_or(endpoint))
        };
        let hostport = rest.trim_end_matches('/');
        let addr = hostport
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("{hostport}: no address")))?;
        // On an AF_XDP gateway's host, a kernel connection through an interface the gateway
        // serves must not use its ephemeral ports (the XDP program takes their replies).
        let tcp = if addr.ip().is_loopback() {
            TcpStream::connect_timeout(&addr, timeout)?
        } else {
            crate::kernelconn::connect_below_gateway_ports(addr, timeout)?
        };
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(read_timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        if !secure {
            return Ok(Box::new(tcp));
        }
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| io::Error::other(format!("{host}: {e}")))?;
        let tls = self
            .tls
            .clone()
            .ok_or_else(|| io::Error::other("no TLS configuration"))?;
        let conn = rustls::ClientConnection::new(tls, name).map_err(io::Error::other)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
    }

    fn request_bytes(&self, endpoint: &str, path: &str, body: &str) -> Vec<u8> {
        let host = endpoint
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(t) = self
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            head.push_str(&format!("authorization: {t}\r\n"));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut b = head.into_bytes();
        b.extend_from_slice(body.as_bytes());
        b
    }

    /// Open a response stream for `path` on the first endpoint that answers.
    fn open(
        &self,
        path: &str,
        body: &Value,
        read_timeout: Duration,
    ) -> Result<Response, EtcdError> {
        let n = self.cfg.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let body = body.to_string();
        let mut last = String::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let ep = &self.cfg.endpoints[idx];
            let attempt = (|| -> io::Result<Response> {
                let mut c = self.connect(ep, self.timeout, read_timeout)?;
                c.write_all(&self.request_bytes(ep, path, &body))?;
                c.flush()?;
                Response::read_head(c)
            })();
            match attempt {
                Ok(r) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) => last = format!("{ep}: {e}"),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    /// One unary call: POST JSON, read the whole JSON answer.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        self.authenticate_once()?;
        let v = self.call_raw(path, body)?;
        if let Some(msg) = error_of(&v) {
            if msg.contains("token") && self.credentials.is_some() {
                // An expired or unknown token (etcd restarted): once more with a new one.
                *self.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
                self.authenticate_once()?;
                let v = self.call_raw(path, body)?;
                return match error_of(&v) {
                    Some(m) => Err(server_error(m)),
                    None => Ok(v),
                };
            }
            return Err(server_error(msg));
        }
        Ok(v)
    }

    fn call_raw(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut r = self.open(path, body, self.timeout)?;
        let bytes = r
            .read_all()
            .map_err(|e| EtcdError::Unreachable(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            EtcdError::Server(format!(
                "HTTP {}: not JSON ({e}): {}",
                r.status,
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }

    fn authenticate_once(&self) -> Result<(), EtcdError> {
        let Some((user, password)) = &self.credentials else {
            return Ok(());
        };
        if self
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        let v = self.call_raw(
            "/v3/auth/authenticate",
            &json!({"name": user, "password": password}),
        )?;
        if let Some(m) = error_of(&v) {
            return Err(EtcdError::Server(format!("authenticate as {user}: {m}")));
        }
        let t = v["token"].as_str().unwrap_or_default().to_string();
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(t);
        Ok(())
    }

    /// Everything under the prefix at `revision` (0: the latest), in one range.
    pub fn snapshot(&self, revision: i64) -> Result<PrefixSnapshot, EtcdError> {
        let p = format!("{}/", self.cfg.prefix);
        let mut req = json!({"key": b64(&p), "range_end": b64(prefix_end(&p))});
        if revision > 0 {
            req["revision"] = json!(revision.to_string());
        }
        let v = self.call("/v3/kv/range", &req)?;
        let revision = int(&v["header"]["revision"]);
        let tables_key = self.cfg.tables_key();
        let reg = self.cfg.endpoints_prefix();
        let mut snap = PrefixSnapshot {
            revision,
            tables: None,
            registrations: Vec::new(),
        };
        for k in v["kvs"].as_array().into_iter().flatten().map(kv) {
            if k.key == tables_key {
                snap.tables = Some(k);
            } else if k.key.starts_with(&reg) {
                snap.registrations.push(k);
            }
        }
        Ok(snap)
    }

    /// One key at `revision` (0: latest); with the header revision.
    pub fn get(&self, key: &str, revision: i64) -> Result<(i64, Option<Kv>), EtcdError> {
        self.get_with(key, revision, false)
    }

    /// [`Self::get`] without the value (its revisions only): cheap with 6 MB tables.
    pub fn get_meta(&self, key: &str, revision: i64) -> Result<(i64, Option<Kv>), EtcdError> {
        self.get_with(key, revision, true)
    }

    fn get_with(
        &self,
        key: &str,
        revision: i64,
        keys_only: bool,
    ) -> Result<(i64, Option<Kv>), EtcdError> {
        let mut req = json!({"key": b64(key), "keys_only": keys_only});
        if revision > 0 {
            req["revision"] = json!(revision.to_string());
        }
        let v = self.call("/v3/kv/range", &req)?;
        let kv = v["kvs"].as_array().and_then(|a| a.first()).map(kv);
        Ok((int(&v["header"]["revision"]), kv))
    }

    /// Write the tables if their key has not changed after revision `read` (the tables
    /// as read at `read`): a concurrent change makes this a [`EtcdError::Conflict`],
    /// never a lost update. Returns the revision written.
    pub fn put_tables(&self, text: &str, read: i64) -> Result<i64, EtcdError> {
        let key = b64(self.cfg.tables_key());
        let req = json!({
            "compare": [{"target": "MOD", "key": key, "result": "LESS",
                         "mod_revision": (read + 1).to_string()}],
            "success": [{"request_put": {"key": key, "value": b64(text)}}],
            "failure": [{"request_range": {"key": key}}],
        });
        let v = self.call("/v3/kv/txn", &req)?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(int(&v["header"]["revision"]));
        }
        let current = v["responses"][0]["response_range"]["kvs"][0]["mod_revision"].clone();
        Err(EtcdError::Conflict {
            read,
            current: int(&current),
        })
    }

    pub fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let v = self.call(
            "/v3/lease/grant",
            &json!({"TTL": ttl.as_secs().max(1).to_string()}),
        )?;
        Ok(int(&v["ID"]))
    }

    /// Renew a lease; false when it has expired already.
    pub fn lease_keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        let r = if v.get("result").is_some() {
            &v["result"]
        } else {
            &v
        };
        Ok(int(&r["TTL"]) > 0)
    }

    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .map(drop)
    }

    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut req = json!({"key": b64(key), "value": b64(value)});
        if lease != 0 {
            req["lease"] = json!(lease.to_string());
        }
        let v = self.call("/v3/kv/put", &req)?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Watch the prefix from `start` (a revision): the stream yields each message's
    /// header revision, and whether it carried events or a compaction.
    pub fn watch(&self, start: i64) -> Result<Watch, EtcdError> {
        self.authenticate_once()?;
        let p = format!("{}/", self.cfg.prefix);
        let req = json!({"create_request": {
            "key": b64(&p), "range_end": b64(prefix_end(&p)),
            "start_revision": start.to_string(), "progress_notify": true}});
        let r = self.open("/v3/watch", &req, WATCH_READ_TIMEOUT)?;
        if r.status != 200 {
            return Err(EtcdError::Server(format!("watch: HTTP {}", r.status)));
        }
        Ok(Watch {
            r,
            line: Vec::new(),
            scanned: 0,
        })
    }
}

/// One change to one key.
#[derive(Debug, Clone)]
pub struct Event {
    pub delete: bool,
    pub kv: Kv,
}

impl PrefixSnapshot {
    /// The prefix after `events` (of revisions up to `revision`): the watch keeps a node's
    /// copy current without reading the prefix again.
    pub fn update(&mut self, cfg: &EtcdConfig, revision: i64, events: Vec<Event>) {
        let tables_key = cfg.tables_key();
        let reg = cfg.endpoints_prefix();
        for e in events {
            if e.kv.key == tables_key {
                self.tables = (!e.delete).then_some(e.kv);
            } else if e.kv.key.starts_with(&reg) {
                let at = self
                    .registrations
                    .binary_search_by(|r| r.key.cmp(&e.kv.key));
                match (at, e.delete) {
                    (Ok(i), true) => {
                        self.registrations.remove(i);
                    }
                    (Ok(i), false) => self.registrations[i] = e.kv,
                    (Err(i), false) => self.registrations.insert(i, e.kv),
                    (Err(_), true) => {}
                }
            }
        }
        self.revision = revision;
    }
}

/// What one watch message says.
#[derive(Debug, Clone)]
pub enum WatchMsg {
    /// The events of one response (whole revisions), and the last revision among them.
    Changed(i64, Vec<Event>),
    /// Nothing new (created, progress); the revision etcd is at.
    Quiet(i64),
    /// The start revision was compacted: read everything again.
    Compacted,
    /// No message within the read timeout (the connection is still open).
    Idle,
}

pub struct Watch {
    r: Response,
    line: Vec<u8>,
    /// How much of `line` is known to hold no newline (a message of a 6 MB table comes in
    /// many reads: scanning it whole after each would be quadratic).
    scanned: usize,
}

impl Watch {
    /// The next message; an error when the stream ended (etcd went away).
    pub fn next_msg(&mut self) -> Result<WatchMsg, EtcdError> {
        loop {
            let found = self.line[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + self.scanned);
            self.scanned = found.unwrap_or(self.line.len());
            if let Some(i) = found {
                let l: Vec<u8> = self.line.drain(..=i).collect();
                self.scanned = 0;
                if l.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v: Value = serde_json::from_slice(&l)
                    .map_err(|e| EtcdError::Server(format!("watch: {e}")))?;
                if let Some(m) = error_of(&v) {
                    return Err(server_error(m));
                }
                let res = &v["result"];
                let rev = int(&res["header"]["revision"]);
                if int(&res["compact_revision"]) > 0 {
                    return Ok(WatchMsg::Compacted);
                }
                if res["canceled"].as_bool() == Some(true) {
                    return Err(EtcdError::Server(format!(
                        "watch canceled: {}",
                        res["cancel_reason"].as_str().unwrap_or("")
                    )));
                }
                return Ok(match res["events"].as_array() {
                    Some(ev) if !ev.is_empty() => {
                        let events: Vec<Event> = ev
                            .iter()
                            .map(|e| Event {
                                delete: e["type"].as_str() == Some("DELETE"),
                                kv: kv(&e["kv"]),
                            })
                            .collect();
                        let last = events
                            .iter()
                            .map(|e| e.kv.mod_revision)
                            .max()
                            .unwrap_or(rev);
                        WatchMsg::Changed(last, events)
                    }
                    _ => WatchMsg::Quiet(rev),
                });
            }
            let mut buf = [0u8; 65536];
            match self.r.read(&mut buf) {
                Ok(0) => return Err(EtcdError::Unreachable("watch stream ended".into())),
                Ok(n) => self.line.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(WatchMsg::Idle)
                }
                Err(e) => return Err(EtcdError::Unreachable(format!("watch: {e}"))),
            }
        }
    }
}

/// An HTTP/1.1 response being read: its status, then its body (chunked or not).
struct Response {
    status: u16,
    rd: BufReader<Box<dyn Conn>>,
    chunked: bool,
    /// Bytes left in the current chunk (chunked), or in the body (content-length).
    left: Option<usize>,
    done: bool,
}

impl Response {
    fn read_head(c: Box<dyn Conn>) -> io::Result<Self> {
        let mut rd = BufReader::with_capacity(65536, c);
        let mut head = Vec::new();
        loop {
            let n = rd.read_until(b'\n', &mut head)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a response",
                ));
            }
            if head.ends_with(b"\r\n\r\n") || head.len() > 65536 {
                break;
            }
        }
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        resp.parse(&head).map_err(io::Error::other)?;
        let status = resp.code.unwrap_or(0);
        let mut chunked = false;
        let mut len = None;
        for h in resp.headers.iter() {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if h.name.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
        Ok(Self {
            status,
            rd,
            chunked,
            left: if chunked { Some(0) } else { len },
            done: false,
        })
    }

    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to_end(&mut out)?;
        Ok(out)
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if !self.chunked {
            let want = self.left.map_or(buf.len(), |l| l.min(buf.len()));
            if want == 0 {
                self.done = true;
                return Ok(0);
            }
            let n = self.rd.read(&mut buf[..want])?;
            if let Some(l) = &mut self.left {
                *l -= n;
            }
            if n == 0 {
                self.done = true;
            }
            return Ok(n);
        }
        if self.left == Some(0) {
            let mut line = String::new();
            if self.rd.read_line(&mut line)? == 0 {
                self.done = true;
                return Ok(0);
            }
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                if self.rd.read_line(&mut line)? == 0 {
                    self.done = true;
                    return Ok(0);
                }
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = Some(size);
        }
        let left = self.left.unwrap_or(0);
        let want = left.min(buf.len());
        let n = self.rd.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
            return Ok(0);
        }
        self.left = Some(left - n);
        Ok(n)
    }
}

fn tls_config(cfg: &EtcdConfig) -> Result<Arc<rustls::ClientConfig>, EtcdError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let setup =
        |p: &PathBuf, e: &dyn std::fmt::Display| EtcdError::Setup(format!("{}: {e}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    let ca = cfg
        .ca
        .as_ref()
        .ok_or_else(|| EtcdError::Setup("https endpoints need `ca`".into()))?;
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| setup(ca, &e))? {
        roots
            .add(c.map_err(|e| setup(ca, &e))?)
            .map_err(|e| setup(ca, &e))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EtcdError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| setup(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| setup(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| setup(key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| setup(cert, &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Merge registered endpoints into the tables text: each registration's endpoint is
/// appended to its `[[service]]`'s `endpoints` (an inline array, so line numbers of the
/// text stay those of the key in etcd). Registrations for a service the tables do not
/// have are returned as notes, not applied.
pub fn merge_registrations(text: &str, regs: &[Kv], prefix: &str) -> (String, Vec<String>) {
    let mut notes = Vec::new();
    if regs.is_empty() {
        return (text.to_string(), notes);
    }
    let Ok(mut doc) = text.parse::<toml_edit::DocumentMut>() else {
        // The compile reports the syntax error with its position.
        return (text.to_string(), notes);
    };
    for r in regs {
        let rest = r.key.strip_prefix(prefix).unwrap_or(&r.key);
        let service = rest.split('/').next().unwrap_or("");
        let v: Value = match serde_json::from_slice(&r.value) {
            Ok(v) => v,
            Err(e) => {
                notes.push(format!("registration {}: not JSON: {e}", r.key));
                continue;
            }
        };
        let Some(address) = v["address"].as_str() else {
            notes.push(format!("registration {}: no address", r.key));
            continue;
        };
        let mut ep = toml_edit::InlineTable::new();
        ep.insert("address", address.into());
        if let Some(via) = v["via"].as_str() {
            ep.insert("via", via.into());
        }
        if let Some(w) = v["weight"].as_i64() {
            ep.insert("weight", w.into());
        }
        if let Some(labels) = v["labels"].as_object() {
            let mut l = toml_edit::InlineTable::new();
            for (k, val) in labels {
                l.insert(k, val.as_str().unwrap_or_default().into());
            }
            ep.insert("labels", toml_edit::Value::InlineTable(l));
        }
        let found = doc
            .get_mut("service")
            .and_then(|s| s.as_array_of_tables_mut())
            .and_then(|arr| {
                arr.iter_mut()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(service))
            });
        let Some(svc) = found else {
            notes.push(format!(
                "registration {}: no [[service]] named {service:?} in the tables",
                r.key
            ));
            continue;
        };
        match svc.get_mut("endpoints") {
            Some(item) => match item.as_array_mut() {
                Some(a) => a.push(ep),
                None => notes.push(format!(
                    "registration {}: service {service:?}'s endpoints is not an inline array",
                    r.key
                )),
            },
            None => {
                let mut a = toml_edit::Array::new();
                a.push(ep);
                svc.insert("endpoints", toml_edit::value(a));
            }
        }
    }
    (doc.to_string(), notes)
}

/// The etcd state a node reports (`/readyz`, `/metrics`, the log).
#[derive(Default)]
pub struct EtcdState {
    /// The revision of the tables being served (0: none from etcd yet).
    pub applied: AtomicI64,
    /// The last revision read (applied, or refused by validation).
    pub seen: AtomicI64,
    /// Connected and watching.
    pub connected: AtomicBool,
    /// Serving tables from the local cache, etcd not reached since the start.
    pub from_cache: AtomicBool,
    /// Unix ms when etcd was lost (0 while connected).
    pub lost_since_ms: AtomicU64,
    /// Changes refused by validation.
    pub failures: AtomicU64,
    /// Reads and watches that failed (etcd unreachable or erroring).
    pub errors: AtomicU64,
    pub last_error: Mutex<String>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EtcdState {
    /// `ready`, `degraded` (serving, etcd unreachable), for `/readyz`.
    pub fn describe(&self) -> (bool, String) {
        let rev = self.applied.load(Ordering::Relaxed);
        if self.connected.load(Ordering::Relaxed) {
            (true, format!("ready: etcd revision {rev}\n"))
        } else {
            let since = self.lost_since_ms.load(Ordering::Relaxed);
            let ago = if since == 0 {
                0.0
            } else {
                unix_ms().saturating_sub(since) as f64 / 1000.0
            };
            let cache = if self.from_cache.load(Ordering::Relaxed) {
                ", from the local cache"
            } else {
                ""
            };
            (
                false,
                format!(
                    "degraded: serving etcd revision {rev}{cache}; etcd unreachable for {ago:.1}s: {}\n",
                    self.last_error.lock().unwrap_or_else(PoisonError::into_inner)
                ),
            )
        }
    }

    fn lost(&self, e: &EtcdError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.connected.swap(false, Ordering::Relaxed)
            || self.lost_since_ms.load(Ordering::Relaxed) == 0
        {
            self.lost_since_ms.store(unix_ms(), Ordering::Relaxed);
            tracing::warn!("tables: etcd lost: {e}; serving the last good tables, retrying");
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e.to_string();
    }

    fn found(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!("tables: etcd connected");
        }
        self.lost_since_ms.store(0, Ordering::Relaxed);
        self.from_cache.store(false, Ordering::Relaxed);
    }
}

/// A node's link to etcd: the client and what it reports.
pub struct Remote {
    pub client: Client,
    pub state: EtcdState,
}

impl Remote {
    pub fn new(cfg: &EtcdConfig) -> Result<Self, EtcdError> {
        Ok(Self {
            client: Client::new(cfg)?,
            state: EtcdState::default(),
        })
    }

    /// Wait (at most `timeout`) until this node has applied or refused `revision`.
    pub fn wait_seen(&self, revision: i64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.state.seen.load(Ordering::Acquire) >= revision {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

/// What the sync loop does with a snapshot: compile and publish it (the store's job).
pub trait Apply: Send + Sync {
    /// Compile and publish the merged text read at `revision`.
    fn apply(&self, revision: i64, text: String) -> Result<(), crate::Diagnostics>;
    /// Called about every 500 ms while nothing happens (free retired snapshots).
    fn idle(&self) {}
}

/// Bring a node to `snap`, unless it has seen that revision already.
pub fn apply_snapshot(remote: &Remote, target: &dyn Apply, snap: &PrefixSnapshot) {
    let st = &remote.state;
    if snap.revision <= st.seen.load(Ordering::Acquire) {
        return;
    }
    let Some(tables) = &snap.tables else {
        st.seen.store(snap.revision, Ordering::Release);
        tracing::warn!(
            "tables: etcd has no {} at revision {}; keeping the current tables",
            remote.client.cfg.tables_key(),
            snap.revision
        );
        return;
    };
    let text = String::from_utf8_lossy(&tables.value).into_owned();
    let (merged, notes) = merge_registrations(
        &text,
        &snap.registrations,
        &remote.client.cfg.endpoints_prefix(),
    );
    for n in notes {
        tracing::warn!("tables: {n}");
    }
    let t0 = Instant::now();
    match target.apply(snap.revision, merged) {
        Ok(()) => {
            st.applied.store(snap.revision, Ordering::Release);
            tracing::info!(
                "tables: applied etcd revision {} ({} ms to check, swap and cache)",
                snap.revision,
                t0.elapsed().as_millis()
            );
        }
        Err(d) => {
            st.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "tables: etcd revision {} refused, keeping revision {}:\n{d}",
                snap.revision,
                st.applied.load(Ordering::Relaxed)
            );
        }
    }
    st.seen.store(snap.revision, Ordering::Release);
}

/// The sync loop: read, apply, watch; on any error back off (100 ms doubling to 2 s)
/// and start again with a full read. Returns when `stop` is set.
pub fn sync_loop(remote: Arc<Remote>, target: Arc<dyn Apply>, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(100);
    let nap = |d: Duration| {
        let end = Instant::now() + d;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let snap = match remote.client.snapshot(0) {
            Ok(s) => s,
            Err(e) => {
                remote.state.lost(&e);
                nap(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        apply_snapshot(&remote, &*target, &snap);
        let mut current = snap;
        let mut watch = match remote.client.watch(current.revision + 1) {
            Ok(w) => w,
            Err(e) => {
                remote.state.lost(&e);
                nap(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        remote.state.found();
        backoff = Duration::from_millis(100);
        let mut quiet_since = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match watch.next_msg() {
                Ok(WatchMsg::Changed(rev, events)) => {
                    quiet_since = Instant::now();
                    // The events carry the new values: no second read of the prefix.
                    current.update(&remote.client.cfg, rev, events);
                    apply_snapshot(&remote, &*target, &current);
                }
                Ok(WatchMsg::Quiet(_)) => quiet_since = Instant::now(),
                Ok(WatchMsg::Compacted) => break,
                Ok(WatchMsg::Idle) => {
                    target.idle();
                    // A member that is gone without closing (or cut off from its
                    // cluster) sends nothing: check the cluster every 3 s of silence.
                    if quiet_since.elapsed() > Duration::from_secs(3) {
                        quiet_since = Instant::now();
                        let key = remote.client.cfg.tables_key();
                        if let Err(e) = remote.client.get_meta(&key, 0) {
                            remote.state.lost(&e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    remote.state.lost(&e);
                    break;
                }
            }
        }
        nap(backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(normalize_prefix("xdpmesh/"), "/xdpmesh");
    }

    #[test]
    fn registrations_join_their_service_on_the_same_lines() {
        let text = "[[service]]\nname = \"web\"\nendpoints = [{ address = \"127.0.0.1:1\" }]\n\n[[service]]\nname = \"api\"\n";
        let regs = vec![
            Kv {
                key: "/x/endpoints/web/127.0.0.1:2".into(),
                value: br#"{"address":"127.0.0.1:2","labels":{"v":"2"}}"#.to_vec(),
                mod_revision: 1,
                create_revision: 1,
                lease: 1,
            },
            Kv {
                key: "/x/endpoints/api/127.0.0.1:3".into(),
                value: br#"{"address":"127.0.0.1:3"}"#.to_vec(),
                mod_revision: 1,
                create_revision: 1,
                lease: 1,
            },
            Kv {
                key: "/x/endpoints/nope/127.0.0.1:4".into(),
                value: br#"{"address":"127.0.0.1:4"}"#.to_vec(),
                mod_revision: 1,
                create_revision: 1,
                lease: 1,
            },
        ];
        let (merged, notes) = merge_registrations(text, &regs, "/x/endpoints/");
        let t: toml::Value = toml::from_str(&merged).unwrap();
        let web = &t["service"][0]["endpoints"];
        assert_eq!(web.as_array().unwrap().len(), 2, "{merged}");
        assert_eq!(web[1]["labels"]["v"].as_str(), Some("2"));
        assert_eq!(
            t["service"][1]["endpoints"][0]["address"].as_str(),
            Some("127.0.0.1:3")
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(
            merged.lines().position(|l| l.starts_with("name = \"api\"")),
            text.lines().position(|l| l.starts_with("name = \"api\"")),
            "{merged}"
        );
    }
}
