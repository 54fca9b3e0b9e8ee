//! From options to results: one target, or several interleaved in rounds (`--compare`).

use std::time::Duration;

use crate::engine::{self, LoadSpec, Progress, RawRun, Workload};
use crate::error::BenchError;
use crate::report::{summarise, RunMeta, RunResult};
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Request/response over persistent connections: `size` bytes out, the same back.
    Tcp,
    /// HTTP/1.1 keep-alive GET.
    Http,
    /// A new connection per request (handshake + `size`-byte echo + close).
    Connect,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Http => "http",
            Mode::Connect => "connect",
        }
    }
}

/// Everything about a run except the target.
#[derive(Debug, Clone)]
pub struct Options {
    /// None: `http` for an `http://` target, else `tcp`.
    pub mode: Option<Mode>,
    pub size: usize,
    /// HTTP path (overrides the URL's).
    pub path: Option<String>,
    /// Extra HTTP header lines, `Name: value`.
    pub headers: Vec<String>,
    /// A new connection per request in `http` (and `tcp`) mode too.
    pub new_conn: bool,
    pub connections: usize,
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub linger0: bool,
    pub spin: Duration,
    pub progress: Progress,
    /// Per run name: processes whose CPU time its measured window is charged with.
    pub cpu_of: Vec<(String, Vec<u32>)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: None,
            size: 64,
            path: None,
            headers: Vec::new(),
            new_conn: false,
            connections: 10,
            rate: 1000.0,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            linger0: false,
            spin: Duration::ZERO,
            progress: Progress::Auto,
            cpu_of: Vec::new(),
        }
    }
}

/// The load spec and report metadata for one target.
pub fn plan(
    name: &str,
    target: &Target,
    opts: &Options,
) -> Result<(LoadSpec, RunMeta), BenchError> {
    let mode = opts
        .mode
        .unwrap_or(if target.is_url { Mode::Http } else { Mode::Tcp });
    let (workload, request) = match mode {
        Mode::Tcp | Mode::Connect => (
            Workload::Echo { size: opts.size },
            format!("{} B echo", opts.size),
        ),
        Mode::Http => {
            let path = opts
                .path
                .clone()
                .or_else(|| target.path.clone())
                .unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(BenchError::Config(format!(
                    "HTTP path {path:?} must start with / and contain no spaces or control bytes"
                )));
            }
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: xdpmesh-bench/{}\r\n",
                target.authority,
                env!("CARGO_PKG_VERSION")
            );
            for h in &opts.headers {
                let ok = h
                    .split_once(':')
                    .is_some_and(|(n, _)| !n.is_empty() && !n.contains(' '))
                    && !h.bytes().any(|b| b == b'\r' || b == b'\n');
                if !ok {
                    return Err(BenchError::Config(format!(
                        "header {h:?} must look like 'Name: value'"
                    )));
                }
                req.push_str(h);
                req.push_str("\r\n");
            }
            req.push_str("\r\n");
            (
                Workload::Http {
                    request: req.into_bytes(),
                },
                format!("GET {path}"),
            )
        }
    };
    let new_conn = mode == Mode::Connect || opts.new_conn;
    let spec = LoadSpec {
        target: target.input.clone(),
        addr: reachable_addr(target, opts.connect_timeout)?,
        workload,
        new_conn,
        connections: opts.connections,
        rate: opts.rate,
        warmup: opts.warmup,
        duration: opts.duration,
        timeout: opts.timeout,
        connect_timeout: opts.connect_timeout,
        linger0: opts.linger0,
        spin: opts.spin,
        progress: opts.progress,
        label: name.to_string(),
        cpu_pids: opts
            .cpu_of
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, pids)| pids.iter().copied())
            .collect(),
    };
    spec.validate()?;
    let meta = RunMeta {
        cpu_pids: spec.cpu_pids.clone(),
        name: name.to_string(),
        target: target.input.clone(),
        mode: mode.as_str().to_string(),
        request,
        new_conn,
        connections: opts.connections,
        asked_rate: opts.rate,
        warmup_s: opts.warmup.as_secs_f64(),
        rounds: 1,
    };
    Ok((spec, meta))
}

/// A name like `localhost` may resolve to ::1 and 127.0.0.1 while the server listens on one:
/// use the first address that accepts a connection.
fn reachable_addr(target: &Target, timeout: Duration) -> Result<std::net::SocketAddr, BenchError> {
    if target.addrs.len() <= 1 {
        // The engine's own first connect reports an unreachable single address.
        return Ok(target.addr);
    }
    let mut last = None;
    for addr in &target.addrs {
        match std::net::TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => return Ok(*addr),
            Err(e) => last = Some((*addr, e)),
        }
    }
    let (addr, source) = last.expect("at least two addresses were tried");
    Err(BenchError::Unreachable {
        target: target.input.clone(),
        addr,
        source,
    })
}

/// Measure one target.
pub fn run_one(name: &str, target: &str, opts: &Options) -> Result<RunResult, BenchError> {
    check_cpu_names(&[name], opts)?;
    let target = Target::parse(target)?;
    let (spec, meta) = plan(name, &target, opts)?;
    let raw = engine::run(&spec)?;
    Ok(summarise(meta, &raw))
}

/// Measure several targets on the same machine, interleaved: round 1 runs A, B, C; round 2
/// runs A, B, C again; and so on. Each round runs `duration / rounds` after its own warm-up,
/// so slow drifts of the machine (frequency, other load) hit every target alike.
pub fn run_compare(
    targets: &[(String, String)],
    rounds: u32,
    opts: &Options,
) -> Result<Vec<RunResult>, BenchError> {
    if targets.len() < 2 {
        return Err(BenchError::Config(
            "--compare needs at least two NAME=TARGET".into(),
        ));
    }
    if rounds == 0 {
        return Err(BenchError::Config("--rounds must be at least 1".into()));
    }
    check_cpu_names(
        &targets.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        opts,
    )?;
    let mut round_opts = opts.clone();
    round_opts.duration = opts.duration / rounds;
    if round_opts.duration.is_zero() {
        return Err(BenchError::Config(
            "--duration is too short for that many --rounds".into(),
        ));
    }
    let mut plans = Vec::new();
    for (name, t) in targets {
        let target = Target::parse(t)?;
        plans.push(plan(name, &target, &round_opts)?);
    }
    let mut raws: Vec<RawRun> = (0..plans.len()).map(|_| RawRun::new()).collect();
    for round in 1..=rounds {
        for ((spec, meta), raw) in plans.iter().zip(raws.iter_mut()) {
            let mut spec = spec.clone();
            spec.label = format!("{} round {round}/{rounds}", meta.name);
            raw.merge(&engine::run(&spec)?);
        }
    }
    Ok(plans
        .into_iter()
        .zip(raws)
        .map(|((_, mut meta), raw)| {
            meta.rounds = rounds;
            summarise(meta, &raw)
        })
        .collect())
}

/// Every `--cpu-of` name is a run's: a typo would otherwise measure nothing, silently.
fn check_cpu_names(names: &[&str], opts: &Options) -> Result<(), BenchError> {
    match opts
        .cpu_of
        .iter()
        .find(|(n, _)| !names.contains(&n.as_str()))
    {
        Some((n, _)) => Err(BenchError::Config(format!(
            "--cpu-of {n}=...: no run is named {n:?} (runs: {})",
            names.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Split `NAME=PID[,PID...]` (`--cpu-of`).
pub fn parse_cpu_of(s: &str) -> Result<(String, Vec<u32>), BenchError> {
    let bad = || {
        BenchError::Config(format!(
            "--cpu-of takes NAME=PID[,PID...] (process ids), got {s:?}"
        ))
    };
    let (name, pids) = s.split_once('=').ok_or_else(bad)?;
    let pids = pids
        .split(',')
        .map(|p| p.trim().parse::<u32>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    if name.is_empty() || pids.is_empty() {
        return Err(bad());
    }
    Ok((name.to_string(), pids))
}

/// Split `NAME=TARGET`.
pub fn parse_named(s: &str) -> Result<(String, String), BenchError> {
    match s.split_once('=') {
        Some((n, t)) if !n.is_empty() && !t.is_empty() => Ok((n.to_string(), t.to_string())),
        _ => Err(BenchError::Config(format!(
            "--compare takes NAME=TARGET, got {s:?}"
        ))),
    }
}
