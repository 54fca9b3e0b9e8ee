//! The binary's logs: `tracing` events, filtered by an `EnvFilter` that the admin API can
//! replace while running (`PUT /logging?level=...`), formatted for people or as JSON lines,
//! written to stderr by tracing-appender's own thread through a bounded, lossy queue: a full
//! queue drops the line (counted, `xdpmesh_log_lines_dropped_total`) instead of stalling the
//! thread that logged, so a worker never waits on a slow terminal or journal.

use std::io::IsTerminal;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Layer, Registry};

/// The filter when neither `--log-level` nor `RUST_LOG` gives one.
pub const DEFAULT_FILTER: &str = "info";
/// Lines waiting for the writer thread at most; more are dropped and counted.
pub const QUEUE_LINES: usize = 16 * 1024;
/// A filter is at most this long (it comes from an HTTP request, too).
pub const MAX_FILTER_LEN: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// `2026-12-04T10:00:00.123456Z  INFO target: message key=value`
    #[default]
    Human,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, fields).
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("the filter is longer than {MAX_FILTER_LEN} bytes")]
    TooLong,
    #[error("the filter is empty")]
    Empty,
    #[error("the filter has a character other than printable ASCII")]
    NotAscii,
    #[error("`{0}` is not a level (trace, debug, info, warn, error, off); a target needs one too, as in `mesh=debug`")]
    BareTarget(String),
    #[error("`{0}`: {1}")]
    Invalid(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("log filter {0:?}: {1}")]
    Filter(String, FilterError),
    #[error("a logger is installed already")]
    AlreadySet,
}

/// Checks filter directives (`RUST_LOG` syntax) as the admin API and `--log-level` take
/// them: stricter than `EnvFilter` in one way, a bare word must be a level. (`EnvFilter`
/// reads `debgu` as "target debgu at trace, everything else off".) Regex field filters are
/// off: the text may come from a request.
pub fn parse_filter(text: &str) -> Result<EnvFilter, FilterError> {
    if text.len() > MAX_FILTER_LEN {
        return Err(FilterError::TooLong);
    }
    if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(FilterError::NotAscii);
    }
    let text = text.trim();
    if text.split(',').all(|d| d.trim().is_empty()) {
        return Err(FilterError::Empty);
    }
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    for d in &directives {
        let bare = !d.contains('=') && !d.contains('[');
        if bare
            && d.parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        {
            return Err(FilterError::BareTarget(d.to_string()));
        }
        directive(d)?;
    }
    let text = directives.join(",");
    EnvFilter::builder()
        .with_regex(false)
        .parse(&text)
        .map_err(|e| FilterError::Invalid(text.clone(), e.to_string()))
}

fn directive(d: &str) -> Result<(), FilterError> {
    EnvFilter::builder()
        .with_regex(false)
        .parse(d)
        .map(drop)
        .map_err(|e| FilterError::Invalid(d.to_string(), e.to_string()))
}

/// The installed logger. Keep it for the life of the process: dropping it flushes what is
/// queued and stops the writer thread.
pub struct Logging {
    pub control: LogControl,
    _guard: WorkerGuard,
}

/// The logger's filter and dropped-line counter, for the admin API and `/metrics`.
#[derive(Clone)]
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    dropped: ErrorCounter,
}

impl Logging {
    /// Installs the global logger. `filter`: `--log-level`, else `RUST_LOG`, else
    /// [`DEFAULT_FILTER`].
    pub fn init(format: Format, filter: Option<&str>) -> Result<Logging, InitError> {
        let text = filter
            .map(str::to_owned)
            .or_else(|| {
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|s| !s.trim().is_empty())
            })
            .unwrap_or_else(|| DEFAULT_FILTER.to_string());
        let env = parse_filter(&text).map_err(|e| InitError::Filter(text.clone(), e))?;
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUE_LINES)
            .thread_name("xm-log")
            .finish(std::io::stderr());
        let dropped = writer.error_counter();
        let (filter_layer, handle) = reload::Layer::new(env);
        let ansi = std::io::stderr().is_terminal();
        let out = match format {
            Format::Human => fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                .with_target(true)
                .boxed(),
            Format::Json => fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(writer)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(filter_layer)
            .with(out)
            .try_init()
            .map_err(|_| InitError::AlreadySet)?;
        Ok(Logging {
            control: LogControl {
                filter: handle,
                dropped,
            },
            _guard: guard,
        })
    }
}

impl LogControl {
    /// The filter in force, in `RUST_LOG` syntax.
    pub fn filter(&self) -> String {
        self.filter
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }

    /// Replaces the filter; the old one stays when the text is not a valid filter.
    pub fn set_filter(&self, text: &str) -> Result<String, FilterError> {
        let f = parse_filter(text)?;
        let shown = f.to_string();
        self.filter
            .reload(f)
            .map_err(|e| FilterError::Invalid(text.to_string(), e.to_string()))?;
        Ok(shown)
    }

    /// Lines dropped because the writer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.dropped_lines() as u64
    }

    /// `xdpmesh_log_lines_dropped_total` for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP xdpmesh_log_lines_dropped_total Log lines dropped because the log writer's queue was full.\n\
             # TYPE xdpmesh_log_lines_dropped_total counter\n\
             xdpmesh_log_lines_dropped_total {}\n",
            self.dropped()
        );
    }

    /// `GET /logging` and `PUT /logging?level=FILTER` for the admin API (`PUT` needs the
    /// admin token where one is configured, like every write). `None`: not this path.
    pub fn admin(&self, req: &control::admin::Request<'_>) -> Option<control::admin::Response> {
        use control::admin::Response;
        if req.path != "/logging" {
            return None;
        }
        Some(match req.method {
            "GET" => Response::text(200, format!("{}\n", self.filter())),
            "PUT" => {
                let Some(level) = req.query.and_then(|q| query_value(q, "level")) else {
                    return Some(Response::text(
                        400,
                        "give the filter as ?level=FILTER (RUST_LOG syntax, e.g. debug or info,mesh=debug)\n",
                    ));
                };
                let level = match level {
                    Ok(l) => l,
                    Err(e) => return Some(Response::text(400, format!("level: {e}\n"))),
                };
                match self.set_filter(&level) {
                    Ok(now) => {
                        tracing::info!(filter = %now, "log filter changed by the admin API");
                        Response::text(200, format!("{now}\n"))
                    }
                    Err(e) => Response::text(400, format!("level: {e}\n")),
                }
            }
            _ => {
                let mut r = Response::text(405, "method not allowed\n");
                r.headers.push(("allow".into(), "GET, PUT".into()));
                r
            }
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("a bad %-escape")]
    BadEscape,
    #[error("not UTF-8 once decoded")]
    NotUtf8,
}

/// The value of `key` in a query string, %-decoded (`+` is a space, as forms send it).
fn query_value(query: &str, key: &str) -> Option<Result<String, QueryError>> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    Some(percent_decode(raw))
}

fn percent_decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(QueryError::BadEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| QueryError::BadEscape)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| QueryError::BadEscape)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_levels_and_target_directives() {
        for ok in [
            "debug",
            "INFO",
            "info,mesh=debug",
            "warn, dataplane::run=trace",
            "mesh::engine=off,info",
            "xdpmesh[run]=debug",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        assert_eq!(
            parse_filter("debgu").map(drop),
            Err(FilterError::BareTarget("debgu".into()))
        );
        assert!(matches!(
            parse_filter("mesh=loud"),
            Err(FilterError::Invalid(d, _)) if d == "mesh=loud"
        ));
        assert_eq!(parse_filter(" , ").map(drop), Err(FilterError::Empty));
        assert_eq!(parse_filter("info\n").map(drop), Err(FilterError::NotAscii));
        assert_eq!(
            parse_filter(&"a=info,".repeat(200)).map(drop),
            Err(FilterError::TooLong)
        );
        // A field filter's value is matched literally (no regex from a request).
        assert!(parse_filter("[span{f=.*}]=debug").is_ok());
    }

    #[test]
    fn the_level_comes_from_the_query_percent_decoded() {
        assert_eq!(
            query_value("x=1&level=info%2Cmesh%3Ddebug", "level"),
            Some(Ok("info,mesh=debug".into()))
        );
        assert_eq!(query_value("levels=debug", "level"), None);
        assert_eq!(
            query_value("level=%zz", "level"),
            Some(Err(QueryError::BadEscape))
        );
        assert_eq!(
            query_value("level=%", "level"),
            Some(Err(QueryError::BadEscape))
        );
        assert_eq!(
            query_value("level=%ff", "level"),
            Some(Err(QueryError::NotUtf8))
        );
        assert_eq!(query_value("level=a+b", "level"), Some(Ok("a b".into())));
    }
}
