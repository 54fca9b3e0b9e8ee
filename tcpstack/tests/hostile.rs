//! Hostile traffic (issue #14): floods of segments we must drop may not draw a flood of
//! answers, and a peer cannot make a connection hold buffer memory it does not use.

mod common;

use common::*;
use std::time::Duration;
use tcpstack::wire::tcp::{Flags, Segment};
use tcpstack::{ConnId, Counter, Event, State, TcpConfig};

fn events(stack: &mut tcpstack::Stack) -> Vec<Event> {
    std::iter::from_fn(|| stack.poll_event()).collect()
}

/// Sends one byte A→B, lets B read it, and returns (the sequence number B expects next, B's
/// next sequence number), read from B's ACK.
fn sequence_numbers(sim: &mut Sim, a: ConnId, b: ConnId) -> (u32, u32) {
    sim.record = Some(Vec::new());
    sim.a.set_nagle(a, false).unwrap();
    sim.a.write(a, b"x").unwrap();
    sim.run(Duration::from_secs(1), |s| {
        s.b.recv_available(b).unwrap() == 1
    });
    sim.advance(Duration::from_millis(100));
    assert_eq!(sim.b.read(b, &mut [0u8; 4]).unwrap(), 1);
    events(&mut sim.a);
    events(&mut sim.b);
    let rec = sim.record.take().unwrap();
    let (_, f) = rec
        .iter()
        .rev()
        .find(|(to_b, f)| !to_b && f.len() > 34)
        .expect("an ACK from B");
    let s = Segment::parse(&f[34..], B_IP, A_IP).unwrap();
    (s.header.ack, s.header.seq)
}

struct Flood {
    /// Segments B sent while the frames came in.
    answers: u64,
    suppressed: u64,
}

/// Delivers `n` frames from `frame(i)` to B, 1 ms apart, letting B send after each one (so
/// answers cannot merge into one pending ACK), and counts what B sent back.
fn flood(sim: &mut Sim, n: u32, mut frame: impl FnMut(u32) -> Vec<u8>) -> Flood {
    let out = sim.b.stats().get(Counter::SegmentsOut);
    let supp = sim.b.stats().get(Counter::InvalidAcksSuppressed);
    for i in 0..n {
        sim.b.handle_frame(sim.now, &frame(i));
        sim.advance(Duration::from_millis(1));
    }
    Flood {
        answers: sim.b.stats().get(Counter::SegmentsOut) - out,
        suppressed: sim.b.stats().get(Counter::InvalidAcksSuppressed) - supp,
    }
}

/// 100 bare ACKs outside B's receive window (RFC 9293 §3.10.7.4 answers each with an ACK)
/// draw at most two ACKs, as from Linux; the rest are counted. The next one past the interval
/// is answered again.
#[test]
fn out_of_window_bare_acks_are_answered_at_most_once_per_interval() {
    let mut sim = Sim::new(40, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    let (rcv_nxt, snd_nxt) = sequence_numbers(&mut sim, a, b);
    let from = sim.a.local_addr(a).unwrap();
    let to = addr(B_IP, 80);
    // 1 MB past the left edge of B's 256 KiB window; the ACK field itself is fine.
    let bad = forge_tcp(
        from,
        to,
        rcv_nxt.wrapping_add(1 << 20),
        snd_nxt,
        Flags::ACK,
        b"",
    );
    let start = sim.now;
    let f = flood(&mut sim, 100, |_| bad.clone());
    assert!(f.answers >= 1 && f.answers <= 2, "{} ACKs", f.answers);
    assert_eq!(f.answers + f.suppressed, 100);
    let interval = TcpConfig::default().invalid_ack_interval;
    assert_eq!(interval, Duration::from_millis(500));
    // Just inside the interval: still quiet.
    sim.advance(interval - (sim.now - start) - Duration::from_millis(1));
    let f = flood(&mut sim, 1, |_| bad.clone());
    assert_eq!((f.answers, f.suppressed), (0, 1));
    // The interval has passed since the first answer: the next one is answered.
    let f = flood(&mut sim, 1, |_| bad.clone());
    assert_eq!((f.answers, f.suppressed), (1, 0));
    assert_eq!(sim.b.state(b).unwrap(), State::Established);
    assert!(events(&mut sim.a).is_empty() && events(&mut sim.b).is_empty());
    // The connection still works.
    sim.a.write(a, b"after").unwrap();
    sim.run(Duration::from_secs(1), |s| {
        s.b.recv_available(b).unwrap() == 5
    });
}

/// ACKs of data B never sent (RFC 9293 §3.10.7.4: "send an ACK, drop the segment") and ACKs
/// below B's window (RFC 5961 §5.2) share the same limit.
#[test]
fn acks_of_unsent_or_ancient_data_are_answered_at_most_once_per_interval() {
    let mut sim = Sim::new(41, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    let (rcv_nxt, snd_nxt) = sequence_numbers(&mut sim, a, b);
    let from = sim.a.local_addr(a).unwrap();
    let to = addr(B_IP, 80);
    let f = flood(&mut sim, 100, |i| {
        let ack = if i % 2 == 0 {
            snd_nxt.wrapping_add(100_000)
        } else {
            snd_nxt.wrapping_sub(1 << 30)
        };
        // With data, too: the segment is dropped with it, so it is no reason to answer.
        let payload: &[u8] = if i % 3 == 0 { b"zz" } else { b"" };
        forge_tcp(from, to, rcv_nxt, ack, Flags::ACK, payload)
    });
    assert!(f.answers >= 1 && f.answers <= 2, "{} ACKs", f.answers);
    assert_eq!(f.answers + f.suppressed, 100);
    assert_eq!(sim.b.recv_available(b).unwrap(), 0, "the data was dropped");
    assert_eq!(sim.b.state(b).unwrap(), State::Established);
}

/// Old data is answered every time: a sender retransmitting because our ACKs were lost needs
/// the answer, and data cannot be part of an ACK loop.
#[test]
fn duplicate_data_is_still_acknowledged_every_time() {
    let mut sim = Sim::new(42, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    let (rcv_nxt, snd_nxt) = sequence_numbers(&mut sim, a, b);
    let from = sim.a.local_addr(a).unwrap();
    let old = forge_tcp(
        from,
        addr(B_IP, 80),
        rcv_nxt.wrapping_sub(1),
        snd_nxt,
        Flags::ACK | Flags::PSH,
        b"x",
    );
    let f = flood(&mut sim, 10, |_| old.clone());
    assert_eq!((f.answers, f.suppressed), (10, 0));
}

/// A TIME-WAIT entry answers bare segments at most once per interval too, but every
/// retransmission of the peer's FIN.
#[test]
fn time_wait_answers_bare_segments_at_most_once_per_interval() {
    let mut sim = Sim::new(43, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    let from = sim.a.local_addr(a).unwrap();
    sim.record = Some(Vec::new());
    sim.b.close(sim.now, b).unwrap();
    sim.run(Duration::from_secs(5), |s| {
        events(&mut s.a).contains(&Event::PeerClosed(a))
    });
    sim.a.close(sim.now, a).unwrap();
    sim.run(Duration::from_secs(5), |s| s.b.time_wait_count() == 1);
    sim.advance(Duration::from_secs(1));
    let rec = sim.record.take().unwrap();
    let fin = rec
        .iter()
        .filter(|(to_b, _)| *to_b)
        .map(|(_, f)| Segment::parse(&f[34..], A_IP, B_IP).unwrap().header)
        .find(|h| h.flags.fin())
        .expect("A's FIN");
    let to = addr(B_IP, 80);
    let bare = forge_tcp(from, to, fin.seq.wrapping_add(1), fin.ack, Flags::ACK, b"");
    let f = flood(&mut sim, 100, |_| bare.clone());
    assert!(f.answers >= 1 && f.answers <= 2, "{} ACKs", f.answers);
    assert_eq!(f.answers + f.suppressed, 100);
    let fin_again = forge_tcp(from, to, fin.seq, fin.ack, Flags::ACK | Flags::FIN, b"");
    let f = flood(&mut sim, 5, |_| fin_again.clone());
    assert_eq!((f.answers, f.suppressed), (5, 0));
    assert_eq!(sim.b.time_wait_count(), 1);
}

/// `invalid_ack_interval = 0` answers every one (the behaviour before the limit).
#[test]
fn a_zero_interval_answers_every_one() {
    let mut cb = stack_config(B_MAC, B_IP, 2);
    cb.tcp.invalid_ack_interval = Duration::ZERO;
    let mut sim = Sim::with_configs(44, LinkConfig::default(), stack_config(A_MAC, A_IP, 1), cb);
    let (a, b) = establish(&mut sim, 80);
    let (rcv_nxt, snd_nxt) = sequence_numbers(&mut sim, a, b);
    let from = sim.a.local_addr(a).unwrap();
    let bad = forge_tcp(
        from,
        addr(B_IP, 80),
        rcv_nxt.wrapping_add(1 << 20),
        snd_nxt,
        Flags::ACK,
        b"",
    );
    let f = flood(&mut sim, 20, |_| bad.clone());
    assert_eq!((f.answers, f.suppressed), (20, 0));
}
