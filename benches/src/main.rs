//! `xdpmesh-bench`: open-loop latency harness. See benches/README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use benches::engine::Progress;
use benches::plot::plot_runs;
use benches::report::{format_compare, format_run, Report};
use benches::runner::{parse_cpu_of, parse_named, run_compare, run_one, Mode, Options};
use benches::servers::{ServerKind, ServerOpts, TestServer};
use benches::BenchError;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "xdpmesh-bench",
    version,
    about = "Open-loop latency harness: constant-rate load, latency from each request's intended \
             send time (coordinated omission corrected), HdrHistogram percentiles, plots."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure one target, or several interleaved with --compare.
    Run(Box<RunArgs>),
    /// Draw a percentile plot (SVG or PNG) of saved JSON results, all runs on one chart.
    Plot(PlotArgs),
    /// Run a small test server (TCP echo or HTTP 200) until killed.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Request/response over persistent connections; the server echoes --size bytes.
    Tcp,
    /// HTTP/1.1 keep-alive GET.
    Http,
    /// A new connection per request: handshake + --size-byte echo + close (0: handshake only).
    Connect,
}

#[derive(Args)]
struct RunArgs {
    /// host:port, or http://host[:port][/path] (implies --mode http).
    #[arg(required_unless_present = "compare", conflicts_with = "compare")]
    target: Option<String>,
    /// Compare targets, interleaved in rounds; ratios are to the first.
    #[arg(long, value_name = "NAME=TARGET", num_args = 1..)]
    compare: Vec<String>,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Concurrent connections (each carries one request at a time).
    #[arg(short = 'c', long, default_value_t = 10)]
    connections: usize,
    /// Requests per second over all connections.
    #[arg(short = 'r', long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured time (split over the rounds with --compare).
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring (each round with --compare).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// A request with no full response this long after it was sent is a timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Request (and echoed response) size in bytes, for tcp and connect modes.
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// HTTP path (default: the URL's, or /).
    #[arg(long)]
    path: Option<String>,
    /// Extra HTTP header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// A new connection per request in http mode too.
    #[arg(long)]
    new_conn: bool,
    /// Close per-request connections with RST (SO_LINGER 0): no TIME_WAIT pile-up.
    #[arg(long)]
    linger0: bool,
    /// Busy-poll this long before each send instead of sleeping (e.g. 200us): less harness
    /// lag on machines with slow wake-ups, at the cost of CPU. Default: never spin.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    spin: Duration,
    /// TLS to the target (not supported yet).
    #[arg(long)]
    tls: bool,
    /// Charge the measured window(s) of run NAME (a --compare name, or --name) with the CPU
    /// time of these processes (user + system, /proc/PID/stat): CPU per 1,000 requests of the
    /// proxies under test. Repeatable.
    #[arg(long, value_name = "NAME=PID[,PID...]")]
    cpu_of: Vec<String>,
    /// Rounds for --compare.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Label of a single run (default: the target).
    #[arg(long)]
    name: Option<String>,
    /// Print the JSON report on stdout instead of the text.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Also draw the percentile plot to this file (.svg or .png).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Title of the plot.
    #[arg(long)]
    title: Option<String>,
    /// Show the live progress line even when stderr is not a terminal.
    #[arg(long, conflicts_with = "no_progress")]
    progress: bool,
    /// Never show the progress line.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct PlotArgs {
    /// JSON reports written by `run --json` or `run --save`.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output file, .svg or .png.
    #[arg(short = 'o', long)]
    output: PathBuf,
    #[arg(long)]
    title: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ServeKind {
    Echo,
    Http,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(value_enum)]
    kind: ServeKind,
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Added before every response.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// HTTP body size.
    #[arg(long, default_value_t = 13)]
    body_size: usize,
    /// HTTP status to answer with.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
    status: u16,
    /// Send HTTP bodies chunked.
    #[arg(long)]
    chunked: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => cmd_run(*a),
        Cmd::Plot(a) => cmd_plot(a),
        Cmd::Serve(a) => cmd_serve(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdpmesh-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_run(a: RunArgs) -> Result<(), BenchError> {
    if a.tls {
        return Err(BenchError::Config(
            "--tls is not supported yet: the harness speaks plain TCP and HTTP/1.1".into(),
        ));
    }
    let opts = Options {
        mode: a.mode.map(|m| match m {
            ModeArg::Tcp => Mode::Tcp,
            ModeArg::Http => Mode::Http,
            ModeArg::Connect => Mode::Connect,
        }),
        size: a.size,
        path: a.path,
        headers: a.headers,
        new_conn: a.new_conn,
        connections: a.connections,
        rate: a.rate,
        warmup: a.warmup,
        duration: a.duration,
        timeout: a.timeout,
        connect_timeout: a.connect_timeout,
        linger0: a.linger0,
        spin: a.spin,
        progress: if a.no_progress {
            Progress::Off
        } else if a.progress {
            Progress::On
        } else {
            Progress::Auto
        },
        cpu_of: a
            .cpu_of
            .iter()
            .map(|s| parse_cpu_of(s))
            .collect::<Result<_, _>>()?,
    };
    let runs = if a.compare.is_empty() {
        let target = a.target.unwrap_or_default();
        let name = a.name.unwrap_or_else(|| target.clone());
        vec![run_one(&name, &target, &opts)?]
    } else {
        let targets = a
            .compare
            .iter()
            .map(|s| parse_named(s))
            .collect::<Result<Vec<_>, _>>()?;
        run_compare(&targets, a.rounds, &opts)?
    };
    let report = Report::new(runs);
    if a.json {
        println!("{}", report.to_json());
    } else {
        for r in &report.runs {
            println!("{}", format_run(r));
        }
        if report.runs.len() > 1 {
            print!("{}", format_compare(&report.runs));
        }
    }
    for r in &report.runs {
        if let Some(w) = &r.warning {
            eprintln!("xdpmesh-bench: WARNING: {}: {w}", r.name);
        }
    }
    if let Some(path) = &a.save {
        std::fs::write(path, report.to_json() + "\n")
            .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
    }
    if let Some(path) = &a.plot {
        let title = a.title.unwrap_or_else(|| default_title(&report));
        plot_runs(&report.runs, path, &title)?;
    }
    Ok(())
}

fn default_title(report: &Report) -> String {
    match report.runs.first() {
        Some(r) => format!(
            "{} {}, {:.0} req/s, {} connections",
            r.mode, r.request, r.asked_rate, r.connections
        ),
        None => "latency by percentile".into(),
    }
}

fn cmd_plot(a: PlotArgs) -> Result<(), BenchError> {
    let mut runs = Vec::new();
    for p in &a.inputs {
        let text = std::fs::read_to_string(p)
            .map_err(|e| BenchError::io(format!("read {}", p.display()), e))?;
        let report = Report::from_json(&text).map_err(|reason| BenchError::Input {
            path: p.display().to_string(),
            reason,
        })?;
        runs.extend(report.runs);
    }
    let title = a.title.unwrap_or_else(|| "latency by percentile".into());
    plot_runs(&runs, &a.output, &title)
}

fn cmd_serve(a: ServeArgs) -> Result<(), BenchError> {
    let kind = match a.kind {
        ServeKind::Echo => ServerKind::Echo,
        ServeKind::Http => ServerKind::Http {
            status: a.status,
            body_len: a.body_size,
            chunked: a.chunked,
        },
    };
    let server = TestServer::start(
        a.listen,
        ServerOpts {
            kind,
            delay: a.delay,
            stall: None,
        },
    )
    .map_err(|e| BenchError::io(format!("listen on {}", a.listen), e))?;
    eprintln!("xdpmesh-bench: serving on {}", server.addr());
    server.wait();
    Ok(())
}
