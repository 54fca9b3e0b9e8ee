//! Errors of the harness itself, and the kinds of request failure it counts.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// Why the harness could not run (reported in one line, non-zero exit).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid target {target:?}: {reason}")]
    BadTarget { target: String, reason: String },
    #[error("cannot resolve {target:?}: {source}")]
    Resolve { target: String, source: io::Error },
    #[error("cannot connect to {target} ({addr}): {source}")]
    Unreachable {
        target: String,
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("opened only {opened} of {wanted} connections to {target}: {reason}")]
    ConnectionsFailed {
        target: String,
        opened: usize,
        wanted: usize,
        reason: String,
    },
    #[error("invalid option: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{path}: {reason}")]
    Input { path: String, reason: String },
    #[error("plot {path}: {reason}")]
    Plot { path: String, reason: String },
}

impl BenchError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why one request failed. Counted per kind; failed requests are not in the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The target refused the connection (RST to our SYN).
    ConnectRefused,
    /// The connection was not established within `--connect-timeout`.
    ConnectTimeout,
    /// No route / host unreachable.
    Unreachable,
    /// No free local port (too many connections in TIME_WAIT: see `--linger0`).
    NoLocalPort,
    /// The peer reset the connection.
    Reset,
    /// The peer closed the connection before the response was complete.
    Closed,
    /// No complete response within `--timeout` of the actual send.
    Timeout,
    /// Bytes that do not make a valid response (bad HTTP, too many echo bytes, unsolicited data).
    BadResponse,
    /// An HTTP 4xx status.
    Http4xx,
    /// An HTTP 5xx (or other non-2xx/3xx) status.
    Http5xx,
    /// Scheduled in the measured window but not completed when the run ended (after draining
    /// for `--timeout`): the target could not keep up.
    Unfinished,
    /// Any other socket error.
    Io,
}

impl ErrorKind {
    /// Classify a socket error from connect, read or write.
    pub fn from_io(e: &io::Error, connecting: bool) -> Self {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ErrorKind::ConnectRefused,
            K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => ErrorKind::Reset,
            K::TimedOut if connecting => ErrorKind::ConnectTimeout,
            K::TimedOut => ErrorKind::Timeout,
            K::AddrNotAvailable => ErrorKind::NoLocalPort,
            K::HostUnreachable | K::NetworkUnreachable => ErrorKind::Unreachable,
            K::UnexpectedEof => ErrorKind::Closed,
            _ => ErrorKind::Io,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::NoLocalPort => "no_local_port",
            ErrorKind::Reset => "reset",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::Unfinished => "unfinished",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
