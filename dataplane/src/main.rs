//! `xdpmesh`: the gateway binary. One small function per subcommand; each writes
//! to the given output streams and returns the process exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod docs;
mod etcdcmd;
mod run;

/// `xdpmesh --version`: the crate's version and the git commit it was built from (build.rs;
/// "unknown commit" outside a git checkout unless XDPMESH_COMMIT is set at build time).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("XDPMESH_COMMIT"), ")");

// mimalloc: table reloads allocate and free about a million small objects; with glibc's
// allocator malloc/free were ~30 % of text → snapshot (benches/README.md, control).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "xdpmesh", version = VERSION, about = "AF_XDP service-mesh gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway from a node file until SIGTERM or SIGINT, then drain and exit.
    Run(RunArgs),
    /// Check a node file and the tables it names; print every error, one per line. With
    /// --admin: check a running gateway instead (tables, certificates, peers, endpoints,
    /// interfaces), one finding per line with a hint; exit 1 on any error.
    Check(CheckArgs),
    /// Stream a running gateway's requests as they complete (GET /tap): a table, or the
    /// JSON lines with --json. Ends after --limit requests or --seconds.
    Tap(TapArgs),
    /// The busiest routes and paths of a running gateway (from GET /tap): rate, success,
    /// p50/p99 over the last 10 s, refreshed every --interval; q quits.
    Top(TopArgs),
    /// Convert other formats into xdpmesh tables.
    #[command(subcommand)]
    Import(ImportCommand),
    /// The mesh's own certificate authority: a root, and leaf certificates for SPIFFE IDs.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The tables in etcd (a node file with [etcd] reads them): push, get, diff, history.
    #[command(subcommand)]
    Tables(etcdcmd::TablesCommand),
    /// Register an endpoint in etcd under a lease, renewed until this process stops;
    /// every node in etcd mode adds it to its service.
    Register(etcdcmd::RegisterArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff), or write every page into a directory with --out.
    Man(docs::ManArgs),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Make a root CA (ECDSA P-256): DIR/ca.pem and DIR/ca-key.pem (0600).
    Init(CaInitArgs),
    /// Issue a leaf for a SPIFFE ID (URI SAN; server and client auth): OUT/cert.pem (leaf
    /// then root) and OUT/key.pem (0600).
    Issue(CaIssueArgs),
}

#[derive(Args)]
struct CaInitArgs {
    #[arg(long)]
    out: PathBuf,
    /// Lifetime of the root.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    validity: std::time::Duration,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CaIssueArgs {
    /// The CA directory (from `ca init`).
    #[arg(long)]
    ca: PathBuf,
    /// spiffe://TRUST-DOMAIN/PATH
    #[arg(long)]
    id: String,
    #[arg(long)]
    out: PathBuf,
    /// Lifetime of the leaf.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    validity: std::time::Duration,
    /// Replace existing files (gateways pick up the new ones for new connections).
    #[arg(long)]
    force: bool,
    /// A DNS name for the certificate besides the SPIFFE ID (repeatable), for clients
    /// outside the mesh that check an `ingress-tls` listener's host name.
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// The node file (its [node] table names the tables file).
    #[arg(long, required_unless_present = "admin")]
    config: Option<PathBuf>,
    /// A running gateway's admin API (e.g. 127.0.0.1:9901): check it live. Run it where the
    /// gateway runs (`ip netns exec NS ...`): peers and key files are reached from here.
    #[arg(long, conflicts_with_all = ["config", "system"])]
    admin: Option<String>,
    /// The admin API's bearer token, when its reads need one (else $XDPMESH_ADMIN_TOKEN).
    #[arg(long, requires = "admin")]
    token: Option<String>,
    /// With --admin: also check every peer gateway whose `admin` address the tables give
    /// (its admin API, same token), each under its own heading.
    #[arg(long, requires = "admin")]
    all: bool,
    /// The node file describes this machine: every [[interface]] must exist here.
    /// Without it, only interfaces present here are checked against the machine.
    #[arg(long)]
    system: bool,
}

/// Where the admin API is, and the filters of a tap.
#[derive(Args)]
struct TapFilterArgs {
    /// The gateway's admin API (host:port); run where it listens (`ip netns exec NS ...`).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// The admin API's bearer token, when its reads need one (else $XDPMESH_ADMIN_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Only requests to this service.
    #[arg(long)]
    service: Option<String>,
    /// Only requests that matched this route (by name).
    #[arg(long)]
    route: Option<String>,
    /// Only this method (GET, POST, ...).
    #[arg(long)]
    method: Option<String>,
    /// Only targets starting with this (`/api`).
    #[arg(long)]
    path_prefix: Option<String>,
    /// Only this status: a code (503), a class (5xx) or `cut`.
    #[arg(long)]
    status: Option<String>,
    /// Only requests whose caller or peer gateway has this SPIFFE ID.
    #[arg(long)]
    identity: Option<String>,
}

impl TapFilterArgs {
    fn request(&self) -> dataplane::tapcli::TapRequest {
        let mut params = Vec::new();
        for (k, v) in [
            ("service", &self.service),
            ("route", &self.route),
            ("method", &self.method),
            ("path_prefix", &self.path_prefix),
            ("status", &self.status),
            ("identity", &self.identity),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        dataplane::tapcli::TapRequest {
            admin: self.admin.clone(),
            token: self
                .token
                .clone()
                .or_else(|| std::env::var("XDPMESH_ADMIN_TOKEN").ok()),
            params,
        }
    }
}

#[derive(Args)]
struct TapArgs {
    #[command(flatten)]
    f: TapFilterArgs,
    /// End after this many requests (1 to 1000000).
    #[arg(long)]
    limit: Option<u64>,
    /// End after this many seconds (1 to 600; the gateway's default: 60).
    #[arg(long)]
    seconds: Option<u64>,
    /// Print the stream's JSON lines as they come (request, `dropped` and `end` lines).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TopArgs {
    #[command(flatten)]
    f: TapFilterArgs,
    /// How often the table is drawn.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    /// Print the table this many times, one interval apart, without taking over the
    /// terminal (scripts, tests), then exit.
    #[arg(long, conflicts_with = "once")]
    iterations: Option<u64>,
    /// The same as --iterations 1.
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The node file: its [[interface]] tables and the tables file it names.
    #[arg(long)]
    config: PathBuf,
    /// On SIGTERM/SIGINT, how long connections may take to finish before they are reset.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: std::time::Duration,
    /// afxdp: our TCP on AF_XDP sockets (the interfaces' queues). kernel: the same proxy over
    /// kernel sockets (no spare NIC needed; built-in listeners are not served).
    #[arg(long, value_enum, default_value = "afxdp")]
    backend: Backend,
    /// Log lines on stderr: human (default) or json (one object per line).
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Log filter in RUST_LOG syntax (e.g. `info,mesh=debug`); default: RUST_LOG, else
    /// `info`. Changeable while running: `PUT /logging?level=FILTER` on the admin API.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Afxdp,
    Kernel,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// SMI TrafficSplit, TrafficTarget, HTTPRouteGroup and TCPRoute YAML → tables TOML on stdout.
    Smi(SmiArgs),
}

#[derive(Args)]
struct SmiArgs {
    /// YAML files; each may hold several documents separated by `---`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Trust domain for the SPIFFE IDs made from service accounts
    /// (spiffe://DOMAIN/ns/NAMESPACE/sa/NAME).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

/// Exit codes: 0 ok, 1 the input has errors (2 is clap's for bad usage).
pub(crate) const OK: u8 = 0;
pub(crate) const FAILED: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not locked for the whole command: the log and access log writer threads write to
    // stderr and stdout too.
    let code = run(cli.command, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}

fn run(command: Command, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match command {
        Command::Run(a) => run::run(&a, out, err),
        Command::Check(a) => check(&a, out, err),
        Command::Tap(a) => {
            let mut r = a.f.request();
            if let Some(n) = a.limit {
                r.params.push(("limit", n.to_string()));
            }
            if let Some(n) = a.seconds {
                r.params.push(("seconds", n.to_string()));
            }
            dataplane::tapcli::tap(&r, a.json, out, err)
        }
        Command::Top(a) => {
            let o = dataplane::tapcli::TopOptions {
                request: a.f.request(),
                interval: a.interval.max(std::time::Duration::from_millis(100)),
                iterations: if a.once { Some(1) } else { a.iterations },
            };
            dataplane::tapcli::top(&o, out, err)
        }
        Command::Import(ImportCommand::Smi(a)) => import_smi(&a, out, err),
        Command::Ca(c) => ca(c, out, err),
        Command::Tables(c) => etcdcmd::tables(c, out, err),
        Command::Register(a) => etcdcmd::register(&a, out, err),
        Command::Completions(a) => docs::completions(&a, out),
        Command::Man(a) => docs::man(&a, out, err),
    }
}

fn check(a: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if let Some(admin) = &a.admin {
        let mut o = dataplane::livecheck::Options::new(admin.clone());
        o.token = a
            .token
            .clone()
            .or_else(|| std::env::var("XDPMESH_ADMIN_TOKEN").ok());
        let gateways = if a.all {
            dataplane::livecheck::check_all(&o)
        } else {
            vec![(String::new(), dataplane::livecheck::check(&o))]
        };
        for (heading, found) in &gateways {
            if a.all {
                let _ = writeln!(out, "== {heading}");
            }
            for f in found {
                let _ = writeln!(out, "{}", f.line());
            }
        }
        let count = |l| {
            gateways
                .iter()
                .flat_map(|(_, f)| f)
                .filter(|f| f.level == l)
                .count()
        };
        let errors = count(dataplane::livecheck::Level::Error);
        let warnings = count(dataplane::livecheck::Level::Warn);
        let _ = writeln!(out, "{errors} errors, {warnings} warnings");
        return if errors == 0 { OK } else { FAILED };
    }
    let Some(config) = a.config.as_ref() else {
        let _ = writeln!(err, "check: --config or --admin");
        return FAILED;
    };
    // hw-config checks [[interface]]; its errors print with control's, its notes
    // (warnings) as `note:` lines that do not change the exit code.
    let checks = if a.system {
        hw_config::SystemChecks::Required
    } else {
        hw_config::SystemChecks::IfPresent
    };
    let hw = control::node::load(config)
        .map(|n| hw_config::check(&n, checks))
        .unwrap_or_default();
    for note in &hw.notes {
        let _ = writeln!(err, "note: {note}");
    }
    let checked = control::check::check_node(config, SystemTime::now()).and_then(|r| {
        if hw.errors.is_empty() {
            Ok(r)
        } else {
            Err(control::Diagnostics::default())
        }
    });
    match checked {
        Ok((node, compiled)) => {
            let s = &compiled.snapshot;
            let _ = writeln!(
                out,
                "{}: ok: node {}, tables {}: {} identities, {} peers, {} listeners, {} services, {} routes",
                config.display(),
                node.name,
                node.tables.display(),
                s.identities.len(),
                s.peers.len(),
                s.listeners.len(),
                s.services.len(),
                s.routes.len()
            );
            OK
        }
        Err(mut errors) => {
            errors.extend(hw.errors);
            let _ = write!(err, "{errors}");
            let n = errors.len();
            let _ = writeln!(err, "{n} error{}", if n == 1 { "" } else { "s" });
            FAILED
        }
    }
}

/// Certificates start a few minutes in the past: gateways' clocks are never exactly equal.
const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

fn ca(c: CaCommand, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let not_before = SystemTime::now() - CLOCK_SKEW;
    let r = match c {
        CaCommand::Init(a) => control::ca::init(
            &a.out,
            &control::ca::InitOptions {
                validity: a.validity,
                not_before,
                force: a.force,
                ..Default::default()
            },
        )
        .map(|f| format!("root CA: {} (key {})", f.cert.display(), f.key.display())),
        CaCommand::Issue(a) => control::ca::issue(
            &a.ca,
            &a.id,
            &a.out,
            &control::ca::IssueOptions {
                validity: a.validity + CLOCK_SKEW,
                not_before,
                force: a.force,
                dns: a.dns.clone(),
            },
        )
        .map(|f| format!("{}: {} (key {})", a.id, f.cert.display(), f.key.display())),
    };
    match r {
        Ok(msg) => {
            let _ = writeln!(out, "{msg}");
            OK
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            FAILED
        }
    }
}

fn import_smi(a: &SmiArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut docs = Vec::new();
    for f in &a.files {
        match std::fs::read_to_string(f) {
            Ok(text) => docs.push((f.display().to_string(), text)),
            Err(e) => {
                let _ = writeln!(err, "{}: cannot read: {e}", f.display());
                return FAILED;
            }
        }
    }
    let opts = control::smi::Options {
        trust_domain: a.trust_domain.clone(),
    };
    match control::smi::import(&docs, &opts) {
        Ok(imported) => {
            for note in &imported.notes {
                let _ = writeln!(err, "not expressed: {note}");
            }
            let _ = write!(out, "{}", imported.to_toml());
            OK
        }
        Err(errors) => {
            for e in &errors {
                let _ = writeln!(err, "{e}");
            }
            FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn control_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control")
    }

    fn run_args(args: &[&str]) -> (u8, String, String) {
        let cli = Cli::try_parse_from(std::iter::once("xdpmesh").chain(args.iter().copied()))
            .expect("args parse");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(cli.command, &mut out, &mut err);
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn check_accepts_a_good_node_file() {
        let node = control_dir().join("examples/canary-node.toml");
        let (code, out, err) = run_args(&["check", "--config", &node.display().to_string()]);
        assert_eq!(code, OK, "{err}");
        assert!(out.contains(": ok: node canary"), "{out}");
        assert!(out.contains("1 services, 3 routes"), "{out}");
    }

    #[test]
    fn check_prints_every_error_one_per_line_and_fails() {
        let dir = tempfile_dir();
        std::fs::write(
            dir.join("node.toml"),
            "[node]\nname = \"n\"\ntables = \"t.toml\"\n[[interface]]\nname = \"eth1\"\naddress = \"10.0.0.1/24\"\nqueues = [0]\ncores = [0]\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("t.toml"),
            "[[service]]\nname = \"a\"\nadress = 1\n[[route]]\nservice = \"b\"\n",
        )
        .expect("write");
        let (code, out, err) = run_args(&[
            "check",
            "--config",
            &dir.join("node.toml").display().to_string(),
        ]);
        assert_eq!(code, FAILED);
        assert!(out.is_empty(), "{out}");
        let t = dir.join("t.toml").display().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            vec![
                format!("{t}:3:1: service[0].adress: unknown key \"adress\" (hint: allowed keys: name, hosts, endpoints, load_balancer, hash_key, retries, fault, rate_limit, mirror, retry_budget, circuit_breaker, outlier, health_check, pool, upstream_protocol)").as_str(),
                format!("{t}:5:11: route[0].service: unknown service \"b\" (hint: define it in a [[service]] table)").as_str(),
                "2 errors",
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn check_prints_hw_config_errors_with_controls() {
        let dir = tempfile_dir();
        let node = dir.join("node.toml");
        std::fs::write(
            &node,
            "[node]\nname = \"n\"\ntables = \"t.toml\"\n[[interface]]\nname = \"eth1\"\naddress = \"10.0.0.1/24\"\nxdp_mode = \"generic\"\nqueues = [0, 1]\ncores = [0]\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("t.toml"),
            "[[service]]\nname = \"a\"\nadress = 1\n",
        )
        .expect("write");
        let (code, out, err) = run_args(&["check", "--config", &node.display().to_string()]);
        assert_eq!(code, FAILED);
        assert!(out.is_empty(), "{out}");
        let (n, t) = (
            node.display().to_string(),
            dir.join("t.toml").display().to_string(),
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            vec![
                format!("note: {n}:7:12: interface[0].xdp_mode: generic XDP drops GSO super-packets (hint: use native where the driver supports XDP; on generic, turn off GRO/GSO: ethtool -K eth1 gro off gso off)").as_str(),
                format!("{t}:3:1: service[0].adress: unknown key \"adress\" (hint: allowed keys: name, hosts, endpoints, load_balancer, hash_key, retries, fault, rate_limit, mirror, retry_budget, circuit_breaker, outlier, health_check, pool, upstream_protocol)").as_str(),
                format!("{n}:9:9: interface[0].cores: 1 cores for 2 queues (hint: one core per queue, in the same order: the worker for queues[i] runs on cores[i])").as_str(),
                "2 errors",
            ]
        );
        // The same node with good tables still fails on the hw-config error alone.
        std::fs::write(dir.join("t.toml"), "").expect("write");
        let (code, out, err) = run_args(&["check", "--config", &n]);
        assert_eq!(code, FAILED, "{out}");
        assert!(err.ends_with("1 error\n"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn import_smi_writes_tables_that_check() {
        let f = control_dir().join("tests/fixtures/smi/split-v1alpha4-ab.yaml");
        let (code, out, err) = run_args(&["import", "smi", &f.display().to_string()]);
        assert_eq!(code, OK, "{err}");
        let src = control::Source::new("imported.toml", out.clone());
        let compiled = control::compile(&src, &control::Context::new("."))
            .unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(compiled.snapshot.routes.len(), 1);
        assert_eq!(
            compiled.snapshot.routes[0].name.as_deref(),
            Some("ab-test-firefox-users")
        );
    }

    #[test]
    fn import_smi_fails_on_unreadable_input() {
        let (code, _, err) = run_args(&["import", "smi", "/nonexistent/x.yaml"]);
        assert_eq!(code, FAILED);
        assert!(
            err.starts_with("/nonexistent/x.yaml: cannot read:"),
            "{err}"
        );
    }

    fn tempfile_dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "xdpmesh-main-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
