//! Bulk transfers between two stacks on a virtual clock through a faulty link.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tcpstack::{Counter, DropReason};

#[test]
fn clean_link_small_transfer() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    transfer(&mut sim, a, b, 1_000_000, 7, Duration::from_secs(60));
    assert_eq!(
        sim.a.stats().get(Counter::Retransmits),
        0,
        "no loss, no retransmits"
    );
}

#[test]
fn transfer_64_mib_with_loss_reordering_duplication_and_corruption() {
    let mut sim = Sim::new(2, LinkConfig::lossy(0.02));
    let (a, b) = establish(&mut sim, 80);
    transfer(&mut sim, a, b, 64 << 20, 11, Duration::from_secs(3600));
    assert!(sim.a.stats().get(Counter::Retransmits) > 0);
    assert!(
        sim.a.stats().get(Counter::FastRetransmits) > 0,
        "loss is repaired by fast retransmit"
    );
    assert!(sim.b.stats().get(Counter::OutOfOrderSegments) > 0);
    let corrupt = sim.a.stats().drops(DropReason::TcpChecksum)
        + sim.b.stats().drops(DropReason::TcpChecksum)
        + sim.a.stats().drops(DropReason::Ipv4Checksum)
        + sim.b.stats().drops(DropReason::Ipv4Checksum);
    assert!(
        corrupt > 0,
        "corrupted frames are caught by checksums and counted"
    );
}

#[test]
fn random_transfers_with_random_faults() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    for round in 0..16u64 {
        let loss = rng.gen_range(0.0..0.10);
        let size = rng.gen_range(1..4u64 << 20);
        let mut link = LinkConfig::lossy(loss);
        link.delay = Duration::from_micros(rng.gen_range(50..5000));
        link.bandwidth = rng.gen_range(100_000_000..10_000_000_000);
        let mut sim = Sim::new(round, link);
        let (a, b) = establish(&mut sim, 80);
        transfer(&mut sim, a, b, size, round, Duration::from_secs(7200));
    }
}

#[test]
fn sack_blocks_are_reported_for_holes() {
    let mut sim = Sim::new(3, LinkConfig::lossy(0.05));
    sim.record = Some(Vec::new());
    let (a, b) = establish(&mut sim, 80);
    transfer(&mut sim, a, b, 2 << 20, 3, Duration::from_secs(600));
    let rec = sim.record.take().unwrap();
    let with_sack = rec
        .iter()
        .filter(|(to_b, f)| !to_b && f.len() > 34)
        .filter_map(|(_, f)| tcpstack::wire::tcp::Segment::parse(&f[34..], B_IP, A_IP).ok())
        .filter(|s| !s.header.options.sack.is_empty())
        .count();
    assert!(
        with_sack > 0,
        "B's ACKs carry SACK blocks while it holds out-of-order data"
    );
}

#[test]
fn mtu_3500_transfer() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    let mut cb = stack_config(B_MAC, B_IP, 2);
    ca.mtu = 3500;
    cb.mtu = 3500;
    let mut sim = Sim::with_configs(4, LinkConfig::lossy(0.01), ca, cb);
    let (a, b) = establish(&mut sim, 80);
    transfer(&mut sim, a, b, 8 << 20, 4, Duration::from_secs(600));
}

#[test]
fn both_directions_at_once() {
    let mut sim = Sim::new(5, LinkConfig::lossy(0.03));
    let (a, b) = establish(&mut sim, 80);
    // B→A first, then A→B on the same connection.
    std::mem::swap(&mut sim.a, &mut sim.b);
    transfer(&mut sim, b, a, 1 << 20, 5, Duration::from_secs(600));
    std::mem::swap(&mut sim.a, &mut sim.b);
    transfer(&mut sim, a, b, 1 << 20, 6, Duration::from_secs(600));
}
