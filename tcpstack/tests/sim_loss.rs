//! Bulk throughput under random loss on the virtual clock (issue #21): how long one stream
//! takes through a link that drops 1 % or 2 % of frames both ways (no reordering, duplication
//! or corruption: what `nft ... numgen random mod 100 < 2 drop` on the hop does), and how the
//! sender repaired the losses (fast retransmits against retransmission timeouts).
//!
//! `cargo test -p tcpstack --test sim_loss -- --nocapture` prints the figures.

mod common;

use common::*;
use std::time::Duration;
use tcpstack::Counter;

struct Figures {
    gbps: f64,
    rtos: u64,
    fast: u64,
    rexmits: u64,
    segments: u64,
}

fn run(loss: f64, delay_us: u64, seed: u64, total: u64) -> Figures {
    let link = LinkConfig {
        loss,
        bandwidth: 1_000_000_000,
        delay: Duration::from_micros(delay_us),
        ..Default::default()
    };
    let mut sim = Sim::new(seed, link);
    let (a, b) = establish(&mut sim, 80);
    let start = sim.now;
    transfer(&mut sim, a, b, total, seed, Duration::from_secs(3600));
    let secs = sim.now.saturating_duration_since(start).as_secs_f64();
    let s = sim.a.stats();
    Figures {
        gbps: total as f64 * 8.0 / secs / 1e9,
        rtos: s.get(Counter::RtoTimeouts),
        fast: s.get(Counter::FastRetransmits),
        rexmits: s.get(Counter::Retransmits),
        segments: s.get(Counter::SegmentsOut),
    }
}

/// Mean over seeds of one configuration, printed as a line of the report.
fn measure(loss: f64, delay_us: u64) -> Figures {
    const SEEDS: u64 = 3;
    let mut sum = Figures {
        gbps: 0.0,
        rtos: 0,
        fast: 0,
        rexmits: 0,
        segments: 0,
    };
    for seed in 0..SEEDS {
        let f = run(loss, delay_us, 100 + seed, 16 << 20);
        sum.gbps += f.gbps / SEEDS as f64;
        sum.rtos += f.rtos;
        sum.fast += f.fast;
        sum.rexmits += f.rexmits;
        sum.segments += f.segments;
    }
    println!(
        "loss {:>4.1} %  one-way {:>5} us  1 Gbit/s link: {:.3} Gbit/s  \
         (per 3 x 16 MiB: {} RTOs, {} fast retransmits, {} retransmits, {} segments)",
        loss * 100.0,
        delay_us,
        sum.gbps,
        sum.rtos,
        sum.fast,
        sum.rexmits,
        sum.segments
    );
    sum
}

#[test]
fn throughput_under_random_loss() {
    for delay_us in [50, 1000] {
        for loss in [0.0, 0.01, 0.02] {
            measure(loss, delay_us);
        }
    }
}
