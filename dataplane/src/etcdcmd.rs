//! `xdpmesh tables push|get|diff|history` and `xdpmesh register`: the tables in etcd
//! (issue #20; the key layout is in `control::etcd`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Subcommand};
use control::etcd::{Client, EtcdConfig, EtcdError};

use crate::{FAILED, OK};

/// Exit code of a push refused because the tables changed in etcd meanwhile (409).
pub(crate) const CONFLICT: u8 = 3;

#[derive(Args, Clone)]
pub(crate) struct EtcdArgs {
    /// etcd client URLs (http://HOST:PORT or https://HOST:PORT), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The key prefix of the mesh's tables.
    #[arg(long, default_value = control::etcd::DEFAULT_PREFIX)]
    prefix: String,
    /// CA of etcd's server certificate (https).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// A file holding `user:password` (etcd authentication).
    #[arg(long)]
    credentials_file: Option<PathBuf>,
}

impl EtcdArgs {
    fn client(&self) -> Result<Client, EtcdError> {
        let mut cfg = EtcdConfig::new(self.etcd.clone(), &self.prefix);
        cfg.ca = self.ca.clone();
        cfg.cert = self.cert.clone();
        cfg.key = self.key.clone();
        cfg.credentials_file = self.credentials_file.clone();
        Client::new(&cfg)
    }
}

#[derive(Subcommand)]
pub(crate) enum TablesCommand {
    /// Check a tables file and write it to etcd, with a compare-and-swap: it is refused
    /// (exit 3, "409 conflict") when the tables in etcd changed after --revision (default:
    /// the revision read just before writing).
    Push(PushArgs),
    /// Print the tables in etcd on stdout (their revision on stderr).
    Get(GetArgs),
    /// Show how a tables file differs from the tables in etcd (exit 1 when it does).
    Diff(DiffArgs),
    /// List the revisions of the tables in etcd, newest first (as far as etcd's history
    /// goes back: compaction drops older ones).
    History(HistoryArgs),
}

#[derive(Args)]
pub(crate) struct PushArgs {
    file: PathBuf,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The revision the change was made from (`tables get` prints it).
    #[arg(long)]
    revision: Option<i64>,
    /// Write without checking the tables here first (nodes still check them).
    #[arg(long)]
    no_check: bool,
}

#[derive(Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// An older revision (default: the latest).
    #[arg(long, default_value_t = 0)]
    revision: i64,
}

#[derive(Args)]
pub(crate) struct DiffArgs {
    file: PathBuf,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[derive(Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Revisions listed at most.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

#[derive(Args)]
pub(crate) struct RegisterArgs {
    /// The `[[service]]` the endpoint belongs to.
    #[arg(long)]
    service: String,
    /// The endpoint, IP:PORT.
    #[arg(long)]
    address: String,
    /// The lease: the endpoint disappears this long after this process stops renewing it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Labels, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The `[[peer]]` gateway in front of the endpoint.
    #[arg(long)]
    via: Option<String>,
    #[arg(long)]
    weight: Option<u32>,
    #[command(flatten)]
    etcd: EtcdArgs,
}

pub(crate) fn tables(c: TablesCommand, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let r = match c {
        TablesCommand::Push(a) => push(&a, out, err),
        TablesCommand::Get(a) => get(&a, out, err),
        TablesCommand::Diff(a) => diff(&a, out, err),
        TablesCommand::History(a) => history(&a, out),
    };
    r.unwrap_or_else(|e| {
        let _ = writeln!(err, "{e}");
        FAILED
    })
}

fn push(a: &PushArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, EtcdError> {
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{}: {e}", a.file.display());
            return Ok(FAILED);
        }
    };
    if !a.no_check {
        if let Err(d) = control::compile_file(&a.file, SystemTime::now()) {
            let _ = write!(err, "{d}");
            return Ok(FAILED);
        }
    }
    let client = a.etcd.client()?;
    let read = match a.revision {
        Some(r) => r,
        None => client.get_meta(&client.config().tables_key(), 0)?.0,
    };
    match client.put_tables(&text, read) {
        Ok(rev) => {
            let _ = writeln!(out, "pushed: revision {rev}");
            Ok(OK)
        }
        Err(e @ EtcdError::Conflict { .. }) => {
            let _ = writeln!(
                err,
                "409 conflict: {e}; read them again (tables get) and redo the change"
            );
            Ok(CONFLICT)
        }
        Err(e) => Err(e),
    }
}

fn get(a: &GetArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, EtcdError> {
    let client = a.etcd.client()?;
    let key = client.config().tables_key();
    let (rev, kv) = client.get(&key, a.revision)?;
    let Some(kv) = kv else {
        let _ = writeln!(err, "no {key} in etcd (revision {rev})");
        return Ok(FAILED);
    };
    let _ = out.write_all(&kv.value);
    let _ = writeln!(
        err,
        "# {key}: revision {rev} (changed at revision {})",
        kv.mod_revision
    );
    Ok(OK)
}

fn diff(a: &DiffArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, EtcdError> {
    let file = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{}: {e}", a.file.display());
            return Ok(FAILED);
        }
    };
    let client = a.etcd.client()?;
    let key = client.config().tables_key();
    let (rev, kv) = client.get(&key, 0)?;
    let theirs = kv.map(|k| String::from_utf8_lossy(&k.value).into_owned());
    let theirs = theirs.unwrap_or_default();
    let _ = writeln!(
        out,
        "--- etcd {key} (revision {rev})\n+++ {}",
        a.file.display()
    );
    let changed = line_diff(&theirs, &file, out);
    Ok(if changed { FAILED } else { OK })
}

/// The changed middle of two texts, line by line (common head and tail cut): enough to
/// see a change to tables, cheap for 10k services.
fn line_diff(old: &str, new: &str, out: &mut dyn Write) -> bool {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (da, db) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    if da.is_empty() && db.is_empty() {
        return false;
    }
    let _ = writeln!(
        out,
        "@@ -{},{} +{},{} @@",
        head + 1,
        da.len(),
        head + 1,
        db.len()
    );
    for l in da {
        let _ = writeln!(out, "-{l}");
    }
    for l in db {
        let _ = writeln!(out, "+{l}");
    }
    true
}

fn history(a: &HistoryArgs, out: &mut dyn Write) -> Result<u8, EtcdError> {
    let client = a.etcd.client()?;
    let key = client.config().tables_key();
    let (_, mut kv) = client.get(&key, 0)?;
    let mut n = 0;
    let _ = writeln!(out, "revision  version  bytes  lines");
    while let Some(k) = kv.take() {
        if n >= a.limit {
            break;
        }
        n += 1;
        let text = String::from_utf8_lossy(&k.value);
        let _ = writeln!(
            out,
            "{:>8}  {:>7}  {:>5}  {:>5}",
            k.mod_revision,
            k.mod_revision - k.create_revision + 1,
            k.value.len(),
            text.lines().count()
        );
        if k.mod_revision <= k.create_revision {
            break;
        }
        match client.get(&key, k.mod_revision - 1) {
            Ok((_, prev)) => kv = prev,
            Err(EtcdError::Compacted) => {
                let _ = writeln!(out, "(older revisions compacted)");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(OK)
}

/// `xdpmesh register`: the endpoint under PREFIX/endpoints/SERVICE/ADDRESS with a lease,
/// renewed every ttl/3 until SIGTERM or SIGINT (then revoked: gone at once).
pub(crate) fn register(a: &RegisterArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut value = serde_json::json!({"address": a.address});
    if !a.labels.is_empty() {
        let mut m = serde_json::Map::new();
        for l in &a.labels {
            let Some((k, v)) = l.split_once('=') else {
                let _ = writeln!(err, "--label {l:?}: not KEY=VALUE");
                return FAILED;
            };
            m.insert(k.to_string(), v.into());
        }
        value["labels"] = m.into();
    }
    if let Some(v) = &a.via {
        value["via"] = v.clone().into();
    }
    if let Some(w) = a.weight {
        value["weight"] = w.into();
    }
    let client = match a.etcd.client() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return FAILED;
        }
    };
    let key = client.config().registration_key(&a.service, &a.address);
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(s, stop.clone());
    }
    let ttl = a.ttl.max(Duration::from_secs(1));
    let every = ttl / 3;
    let mut lease = 0i64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next = Instant::now() + every;
            let renewed = lease != 0 && client.lease_keepalive(lease).unwrap_or(false);
            if !renewed {
                let granted = client.lease_grant(ttl).and_then(|id| {
                    client
                        .put(&key, value.to_string().as_bytes(), id)
                        .map(|rev| (id, rev))
                });
                match granted {
                    Ok((id, rev)) => {
                        lease = id;
                        let _ = writeln!(
                            out,
                            "registered {key} (lease {id:x}, ttl {}s) at revision {rev}",
                            ttl.as_secs()
                        );
                        let _ = out.flush();
                    }
                    Err(e) => {
                        let _ = writeln!(err, "register: {e}; retrying");
                        next = Instant::now() + Duration::from_millis(500);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if lease != 0 {
        let _ = client.lease_revoke(lease);
    }
    OK
}
