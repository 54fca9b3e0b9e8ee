//! Loss recovery on the virtual clock with chosen losses: SACK recovery (RFC 6675) repairs
//! several holes of one window in about one round trip, RACK (RFC 8985 §6) finds a lost
//! retransmission, a tail loss probe (RFC 8985 §7) repairs a lost tail without waiting for
//! the retransmission timeout, and hostile SACK blocks are ignored and counted.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;
use tcpstack::wire::tcp::{Flags, Header, Options, SackBlocks, Segment};
use tcpstack::wire::{ethernet, ipv4, tcp};
use tcpstack::{ConnId, Counter, Instant};

/// A clean link: 1 Gbit/s, 1 ms each way.
fn link() -> LinkConfig {
    LinkConfig {
        bandwidth: 1_000_000_000,
        delay: Duration::from_millis(1),
        ..Default::default()
    }
}

/// The A→B data segment in `frame`: (seq, payload length).
fn data_seq(to_b: bool, frame: &[u8]) -> Option<(u32, usize)> {
    if !to_b || frame.len() <= 34 {
        return None;
    }
    let s = Segment::parse(&frame[34..], A_IP, B_IP).ok()?;
    (!s.payload.is_empty()).then_some((s.header.seq, s.payload.len()))
}

/// Drops transmission number `k` (0 = the first) of the `n`-th new data segment, for each
/// `(n, k)` in `plan` (n counts from 1 in order of first transmission).
fn drop_plan(plan: &'static [(usize, usize)]) -> DropFn {
    let mut order: HashMap<u32, (usize, usize)> = HashMap::new(); // seq → (n, times seen)
    Box::new(move |to_b, frame| {
        let Some((seq, _)) = data_seq(to_b, frame) else {
            return false;
        };
        let next = order.len() + 1;
        let e = order.entry(seq).or_insert((next, 0));
        let (n, k) = *e;
        e.1 += 1;
        plan.contains(&(n, k))
    })
}

/// Writes `total` pattern bytes on A (all fit the send buffer) and runs until B has read
/// them, byte-exact. Returns the virtual time it took.
fn send_and_read(sim: &mut Sim, a: ConnId, b: ConnId, total: usize, seed: u64) -> Duration {
    let mut data = vec![0u8; total];
    Pattern::new(seed).fill(&mut data);
    assert_eq!(sim.a.write(a, &data).unwrap(), total);
    let start = sim.now;
    read_until(sim, b, total, seed);
    sim.now.saturating_duration_since(start)
}

fn read_until(sim: &mut Sim, b: ConnId, total: usize, seed: u64) {
    let mut rx = Pattern::new(seed);
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    sim.run(Duration::from_secs(60), |s| {
        while s.a.poll_event().is_some() {}
        while s.b.poll_event().is_some() {}
        while let Ok(n) = s.b.read(b, &mut buf) {
            if n == 0 {
                break;
            }
            rx.fill(&mut expect[..n]);
            assert!(buf[..n] == expect[..n], "byte mismatch at {got}");
            got += n;
        }
        got == total
    });
}

#[test]
fn three_holes_in_one_window_are_repaired_in_about_one_round_trip() {
    let mut sim = Sim::new(1, link());
    let (a, b) = establish(&mut sim, 80);
    sim.drop_if = Some(drop_plan(&[(3, 0), (5, 0), (7, 0)]));
    // The initial window: ten segments.
    let smss = 1448;
    let took = send_and_read(&mut sim, a, b, 10 * smss, 1);
    println!("three holes: {took:?}");
    let s = sim.a.stats();
    assert_eq!(s.get(Counter::RtoTimeouts), 0);
    assert_eq!(s.get(Counter::Retransmits), 3, "each hole sent once more");
    assert_eq!(
        s.get(Counter::FastRetransmits),
        1,
        "one recovery for the three"
    );
    assert!(s.get(Counter::RackLost) >= 3);
    // One round trip (about 2.1 ms) for the window and its SACKs, one for the repairs; one
    // hole per round trip (NewReno) would take four.
    assert!(took < Duration::from_micros(5_000), "took {took:?}");
}

#[test]
fn a_lost_retransmission_is_found_without_a_timeout() {
    let mut sim = Sim::new(2, link());
    let (a, b) = establish(&mut sim, 80);
    // Segment 40 of a 1 MiB transfer is lost, and so is its first retransmission.
    sim.drop_if = Some(drop_plan(&[(40, 0), (40, 1)]));
    transfer(&mut sim, a, b, 1 << 20, 2, Duration::from_secs(60));
    let s = sim.a.stats();
    assert_eq!(s.get(Counter::RtoTimeouts), 0);
    assert_eq!(s.get(Counter::Retransmits), 2);
}

#[test]
fn a_lost_tail_is_probed_not_timed_out() {
    let mut sim = Sim::new(3, link());
    let (a, b) = establish(&mut sim, 80);
    // The last two segments of the only window are lost.
    sim.drop_if = Some(drop_plan(&[(9, 0), (10, 0)]));
    let took = send_and_read(&mut sim, a, b, 10 * 1448, 3);
    println!("lost tail with a probe: {took:?}");
    let s = sim.a.stats();
    assert_eq!(s.get(Counter::RtoTimeouts), 0);
    assert_eq!(s.get(Counter::TailLossProbes), 1);
    // The probe goes after 2 SRTT + 2 ms (about 6 ms), then RACK finds segment 9: far
    // below the 200 ms timeout.
    assert!(took < Duration::from_millis(20), "took {took:?}");
}

#[test]
fn without_tail_loss_probes_the_tail_waits_for_the_timeout() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    ca.tcp.tail_loss_probe = false;
    let mut sim = Sim::with_configs(3, link(), ca, stack_config(B_MAC, B_IP, 2));
    let (a, b) = establish(&mut sim, 80);
    sim.drop_if = Some(drop_plan(&[(9, 0), (10, 0)]));
    let took = send_and_read(&mut sim, a, b, 10 * 1448, 3);
    assert_eq!(sim.a.stats().get(Counter::RtoTimeouts), 1);
    assert!(took >= Duration::from_millis(200), "took {took:?}");
}

/// A frame from B to A carrying `h`.
fn frame_to_a(h: &Header) -> Vec<u8> {
    let l4 = h.len();
    let mut f = vec![0u8; 14 + 20 + l4];
    ethernet::emit(&mut f, A_MAC, B_MAC, ethernet::ETHERTYPE_IPV4);
    h.emit(&mut f[34..]);
    tcp::fill_checksum(&mut f[34..], B_IP, A_IP);
    ipv4::emit(&mut f[14..], B_IP, A_IP, ipv4::PROTO_TCP, l4, 7);
    f
}

#[test]
fn hostile_sack_blocks_are_ignored_and_counted() {
    let mut sim = Sim::new(4, link());
    let (a, b) = establish(&mut sim, 80);
    sim.record = Some(Vec::new());
    let total = 200_000;
    let mut data = vec![0u8; total];
    Pattern::new(4).fill(&mut data);
    assert_eq!(sim.a.write(a, &data).unwrap(), total);
    // Some data acknowledged, more in flight.
    sim.advance(Duration::from_micros(2_500));
    let rec = sim.record.take().unwrap();
    let last_from_b = rec
        .iter()
        .rev()
        .filter(|(to_b, f)| !to_b && f.len() > 34)
        .find_map(|(_, f)| Segment::parse(&f[34..], B_IP, A_IP).ok())
        .expect("B acknowledged something")
        .header;
    let (una, max) = (last_from_b.ack, last_from_b.ack.wrapping_add(total as u32));
    let hostile: [(u32, u32); 8] = [
        (max.wrapping_add(1000), max.wrapping_add(2000)), // beyond anything sent
        (una.wrapping_add(0x8000_0000), una.wrapping_add(0x8000_1000)), // half the space away
        (una.wrapping_add(3000), una.wrapping_add(1000)), // reversed
        (una.wrapping_add(5000), una.wrapping_add(5000)), // empty
        (una.wrapping_sub(0x4000_0000), una.wrapping_add(0x4000_0000)), // around everything
        (una.wrapping_add(1), u32::MAX),                  // to the end of the space
        (0, u32::MAX),
        (una.wrapping_sub(100), una.wrapping_sub(10)), // a D-SACK: legitimate, not marked
    ];
    let ignored_before = sim.a.stats().get(Counter::SackBlocksIgnored);
    for (i, chunk) in hostile.chunks(3).enumerate() {
        let mut sack = SackBlocks::default();
        for &(l, r) in chunk {
            sack.push(l, r);
        }
        let h = Header {
            src_port: 80,
            dst_port: sim.a.local_addr(a).unwrap().port(),
            seq: last_from_b.seq,
            ack: una,
            flags: Flags::ACK,
            window: last_from_b.window,
            options: Options {
                sack,
                ..Options::default()
            },
        };
        let now: Instant = sim.now + Duration::from_micros(i as u64);
        sim.a.handle_frame(now, &frame_to_a(&h));
    }
    let ignored = sim.a.stats().get(Counter::SackBlocksIgnored) - ignored_before;
    assert!(ignored >= 6, "ignored {ignored}");
    // Nothing was marked by them: the transfer completes, byte-exact, without a timeout.
    read_until(&mut sim, b, total, 4);
    assert_eq!(sim.a.stats().get(Counter::RtoTimeouts), 0);
}
