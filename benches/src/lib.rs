//! Latency harness and micro-benchmarks.
