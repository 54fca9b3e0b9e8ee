//! Latency harness (`xdpmesh-bench`) and micro-benchmarks.
//!
//! The harness is an open-loop load generator: requests are scheduled on a fixed timeline at a
//! constant rate, and each latency is measured from the request's *intended* send time, so a
//! stalled server is charged for every request it delayed (coordinated omission corrected, as in
//! wrk2 and HdrHistogram). See `benches/README.md` for usage.

pub mod cpu;
pub mod engine;
pub mod error;
pub mod http1;
pub mod plot;
pub mod report;
pub mod runner;
pub mod servers;
pub mod target;
mod timer;

pub use engine::{LoadSpec, RawRun, Workload};
pub use error::{BenchError, ErrorKind};
pub use report::{Report, RunResult};
