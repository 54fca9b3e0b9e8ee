//! Opening and closing in every order, resets, TIME-WAIT, SYN cookies, zero windows and keepalive.

mod common;

use common::*;
use std::time::Duration;
use tcpstack::{Counter, DropReason, Error, Event, Keepalive, ResetReason, State};

fn events(stack: &mut tcpstack::Stack) -> Vec<Event> {
    std::iter::from_fn(|| stack.poll_event()).collect()
}

/// Runs until `pred` holds for the collected events of (A, B).
fn run_until(
    sim: &mut Sim,
    limit: Duration,
    mut pred: impl FnMut(&[Event], &[Event]) -> bool,
) -> (Vec<Event>, Vec<Event>) {
    let mut ea = Vec::new();
    let mut eb = Vec::new();
    sim.run(limit, |s| {
        ea.extend(events(&mut s.a));
        eb.extend(events(&mut s.b));
        pred(&ea, &eb)
    });
    (ea, eb)
}

fn read_all(stack: &mut tcpstack::Stack, id: tcpstack::ConnId) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stack.read(id, &mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Error::WouldBlock) => return (out, false),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn active_close_by_client_enters_time_wait_then_expires() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.a.write(a, b"bye").unwrap();
    sim.a.close(sim.now, a).unwrap();
    let (ea, _) = run_until(&mut sim, Duration::from_secs(5), |_, eb| {
        eb.contains(&Event::PeerClosed(b))
    });
    assert!(ea.is_empty(), "A waits in FIN-WAIT-2 for B's FIN: {ea:?}");
    let (data, eof) = read_all(&mut sim.b, b);
    assert_eq!((data.as_slice(), eof), (&b"bye"[..], true));
    sim.b.close(sim.now, b).unwrap();
    run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
        eb.contains(&Event::Closed(b)) && ea.contains(&Event::Closed(a))
    });
    assert_eq!(
        sim.a.time_wait_count(),
        1,
        "the side that closed first holds TIME-WAIT"
    );
    assert_eq!(sim.b.time_wait_count(), 0);
    assert_eq!((sim.a.connection_count(), sim.b.connection_count()), (0, 0));
    assert_eq!(
        sim.a.read(a, &mut [0u8; 4]),
        Err(Error::InvalidHandle),
        "handles die with the connection"
    );
    sim.advance(Duration::from_secs(61));
    assert_eq!(sim.a.time_wait_count(), 0, "TIME-WAIT expires after 2 MSL");
}

#[test]
fn server_closes_first() {
    let mut sim = Sim::new(2, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.b.write(b, b"response").unwrap();
    sim.b.close(sim.now, b).unwrap();
    run_until(&mut sim, Duration::from_secs(5), |ea, _| {
        ea.contains(&Event::PeerClosed(a))
    });
    let (data, eof) = read_all(&mut sim.a, a);
    assert_eq!((data.as_slice(), eof), (&b"response"[..], true));
    sim.a.close(sim.now, a).unwrap();
    run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
        ea.contains(&Event::Closed(a)) && eb.contains(&Event::Closed(b))
    });
    assert_eq!(sim.b.time_wait_count(), 1);
    assert_eq!(sim.a.time_wait_count(), 0);
}

#[test]
fn simultaneous_close_both_hold_time_wait() {
    let mut sim = Sim::new(
        3,
        LinkConfig {
            delay: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let (a, b) = establish(&mut sim, 80);
    sim.a.close(sim.now, a).unwrap();
    sim.b.close(sim.now, b).unwrap();
    run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
        ea.contains(&Event::Closed(a)) && eb.contains(&Event::Closed(b))
    });
    assert_eq!(
        (sim.a.time_wait_count(), sim.b.time_wait_count()),
        (1, 1),
        "both went through CLOSING"
    );
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    let mut sim = Sim::new(4, LinkConfig::lossy(0.02));
    let (a, b) = establish(&mut sim, 80);
    sim.a.write(a, b"request").unwrap();
    sim.a.shutdown_write(a).unwrap();
    assert_eq!(sim.a.write(a, b"more"), Err(Error::SendClosed));
    run_until(&mut sim, Duration::from_secs(30), |_, eb| {
        eb.contains(&Event::PeerClosed(b))
    });
    let (req, eof) = read_all(&mut sim.b, b);
    assert_eq!((req.as_slice(), eof), (&b"request"[..], true));
    assert_eq!(sim.b.state(b).unwrap(), State::CloseWait);
    sim.run(Duration::from_secs(30), |s| {
        s.a.state(a).unwrap() == State::FinWait2
    });
    // B keeps sending after A's FIN: a half-closed connection is still a pipe one way.
    transfer_b_to_a(&mut sim, a, b, 300_000);
    run_until(&mut sim, Duration::from_secs(30), |ea, eb| {
        ea.contains(&Event::Closed(a)) && eb.contains(&Event::Closed(b))
    });
}

fn transfer_b_to_a(sim: &mut Sim, a: tcpstack::ConnId, b: tcpstack::ConnId, total: usize) {
    std::mem::swap(&mut sim.a, &mut sim.b);
    transfer(sim, b, a, total as u64, 9, Duration::from_secs(60));
    std::mem::swap(&mut sim.a, &mut sim.b);
    // Both have now shut down; both close their handles.
    sim.a.close(sim.now, a).unwrap();
    sim.b.close(sim.now, b).unwrap();
}

#[test]
fn connecting_to_a_closed_port_is_refused() {
    let mut sim = Sim::new(5, LinkConfig::default());
    let a = sim.a.connect(sim.now, addr(B_IP, 81)).unwrap();
    let (ea, _) = run_until(&mut sim, Duration::from_secs(5), |ea, _| !ea.is_empty());
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::Refused
        }]
    );
    assert_eq!(sim.b.stats().drops(DropReason::TcpNoConnection), 1);
    assert_eq!(sim.b.stats().get(Counter::RstsSent), 1);
    assert_eq!(sim.a.connection_count(), 0);
}

#[test]
fn abort_resets_the_peer() {
    let mut sim = Sim::new(6, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.a.abort(a).unwrap();
    let (ea, eb) = run_until(&mut sim, Duration::from_secs(5), |_, eb| !eb.is_empty());
    assert_eq!(ea, vec![Event::Closed(a)]);
    assert_eq!(
        eb,
        vec![Event::Reset {
            id: b,
            reason: ResetReason::PeerReset
        }]
    );
    assert_eq!((sim.a.connection_count(), sim.b.connection_count()), (0, 0));
}

#[test]
fn closing_with_unread_data_resets() {
    let mut sim = Sim::new(7, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.a.write(a, b"unread").unwrap();
    run_until(&mut sim, Duration::from_secs(5), |_, eb| {
        eb.contains(&Event::Readable(b))
    });
    sim.b.close(sim.now, b).unwrap();
    let (ea, _) = run_until(&mut sim, Duration::from_secs(5), |ea, _| !ea.is_empty());
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::PeerReset
        }]
    );
}

#[test]
fn blind_rst_in_window_gets_a_challenge_ack_and_is_ignored() {
    let mut sim = Sim::new(8, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    // Forge a RST from A's address with a sequence number inside B's window but not exact.
    let local = sim.a.local_addr(a).unwrap();
    let (rcv_nxt_b, _) = next_seq_pair(&mut sim, a, b);
    let frame = forge_tcp(
        local,
        addr(B_IP, 80),
        rcv_nxt_b.wrapping_add(1000),
        0,
        tcpstack::wire::tcp::Flags::RST,
        b"",
    );
    sim.b.handle_frame(sim.now, &frame);
    assert_eq!(sim.b.stats().get(Counter::ChallengeAcks), 1);
    assert_eq!(sim.b.state(b).unwrap(), State::Established);
    // A SYN on an established connection also only earns a challenge ACK (RFC 5961 §4).
    let frame = forge_tcp(
        local,
        addr(B_IP, 80),
        rcv_nxt_b.wrapping_add(5),
        0,
        tcpstack::wire::tcp::Flags::SYN,
        b"",
    );
    sim.b.handle_frame(sim.now, &frame);
    assert_eq!(sim.b.stats().get(Counter::ChallengeAcks), 2);
    // An exact-sequence RST does reset.
    let frame = forge_tcp(
        local,
        addr(B_IP, 80),
        rcv_nxt_b,
        0,
        tcpstack::wire::tcp::Flags::RST,
        b"",
    );
    sim.b.handle_frame(sim.now, &frame);
    let (_, eb) = run_until(&mut sim, Duration::from_secs(1), |_, eb| !eb.is_empty());
    assert_eq!(
        eb,
        vec![Event::Reset {
            id: b,
            reason: ResetReason::PeerReset
        }]
    );
}

/// Sends one byte A→B and reads the sequence number B expects next from B's ACK.
fn next_seq_pair(sim: &mut Sim, a: tcpstack::ConnId, b: tcpstack::ConnId) -> (u32, u32) {
    sim.record = Some(Vec::new());
    sim.a.set_nagle(a, false).unwrap();
    sim.a.write(a, b"x").unwrap();
    run_until(sim, Duration::from_secs(1), |_, eb| {
        eb.contains(&Event::Readable(b))
    });
    sim.advance(Duration::from_millis(100));
    read_all(&mut sim.b, b);
    let rec = sim.record.take().unwrap();
    let (_, f) = rec
        .iter()
        .rev()
        .find(|(to_b, f)| !to_b && f.len() > 34)
        .expect("an ACK from B");
    let s = tcpstack::wire::tcp::Segment::parse(&f[34..], B_IP, A_IP).unwrap();
    (s.header.ack, s.header.seq)
}

#[test]
fn simultaneous_open() {
    let mut sim = Sim::new(
        9,
        LinkConfig {
            delay: Duration::from_millis(5),
            ..Default::default()
        },
    );
    let pa = addr(A_IP, 5000);
    let pb = addr(B_IP, 6000);
    let a = sim.a.connect_from(sim.now, pa, pb).unwrap();
    let b = sim.b.connect_from(sim.now, pb, pa).unwrap();
    let (ea, eb) = run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
        !ea.is_empty() && !eb.is_empty()
    });
    assert_eq!(ea, vec![Event::Connected(a)]);
    assert_eq!(eb, vec![Event::Connected(b)]);
    transfer(&mut sim, a, b, 100_000, 1, Duration::from_secs(10));
}

#[test]
fn syn_cookies_when_the_backlog_is_full() {
    let mut cb = stack_config(B_MAC, B_IP, 2);
    cb.syn_backlog = 0;
    let mut sim = Sim::with_configs(10, LinkConfig::default(), stack_config(A_MAC, A_IP, 1), cb);
    let (a, b) = establish(&mut sim, 80);
    assert_eq!(sim.b.stats().get(Counter::SynCookiesSent), 1);
    assert_eq!(sim.b.stats().get(Counter::SynCookiesAccepted), 1);
    transfer(&mut sim, a, b, 1 << 20, 2, Duration::from_secs(60));
    // A forged ACK with a wrong cookie is refused with a RST.
    let frame = forge_tcp(
        addr(A_IP, 4444),
        addr(B_IP, 80),
        1,
        12345,
        tcpstack::wire::tcp::Flags::ACK,
        b"",
    );
    sim.b.handle_frame(sim.now, &frame);
    assert_eq!(sim.b.stats().drops(DropReason::TcpSynCookieInvalid), 1);
}

#[test]
fn syn_retries_then_timeout() {
    let mut sim = Sim::new(11, LinkConfig::default());
    sim.cut = true;
    let a = sim.a.connect(sim.now, addr(B_IP, 80)).unwrap();
    // The ARP request goes nowhere either; after the neighbour gives up, TCP still retries SYN.
    let (ea, _) = run_until(&mut sim, Duration::from_secs(600), |ea, _| !ea.is_empty());
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::TimedOut
        }]
    );
    assert_eq!(sim.a.connection_count(), 0);
}

#[test]
fn zero_window_is_probed_until_the_reader_drains() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    let mut cb = stack_config(B_MAC, B_IP, 2);
    ca.tcp.send_buffer = 64 * 1024;
    cb.tcp.recv_buffer = 16 * 1024;
    let mut sim = Sim::with_configs(12, LinkConfig::default(), ca, cb);
    let (a, b) = establish(&mut sim, 80);
    let data = vec![7u8; 64 * 1024];
    let mut written = 0;
    while written < data.len() {
        match sim.a.write(a, &data[written..]) {
            Ok(n) => written += n,
            Err(Error::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(written, 64 * 1024);
    assert_eq!(
        sim.a.write(a, b"x"),
        Err(Error::WouldBlock),
        "backpressure: the send buffer is capped"
    );
    sim.advance(Duration::from_secs(30));
    assert_eq!(
        sim.b.recv_available(b).unwrap(),
        16 * 1024,
        "the receiver's buffer is full"
    );
    assert!(sim.a.stats().get(Counter::ZeroWindowProbes) > 0);
    assert_eq!(
        sim.a.state(a).unwrap(),
        State::Established,
        "probing is not a timeout"
    );
    // The reader drains; the rest flows and the writer is told it may write again.
    let mut got = 0;
    let mut writable = false;
    let mut buf = vec![0u8; 8192];
    sim.run(Duration::from_secs(60), |s| {
        while let Some(e) = s.a.poll_event() {
            writable |= e == Event::Writable(a);
        }
        while let Ok(n) = s.b.read(b, &mut buf) {
            got += n;
        }
        got == 64 * 1024 && writable
    });
}

#[test]
fn keepalive_detects_a_dead_peer() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    ca.tcp.keepalive = Some(Keepalive {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(2),
        probes: 3,
    });
    let mut sim = Sim::with_configs(13, LinkConfig::default(), ca, stack_config(B_MAC, B_IP, 2));
    let (a, _b) = establish(&mut sim, 80);
    // While the peer answers, keepalives keep the connection up.
    sim.advance(Duration::from_secs(60));
    assert!(sim.a.stats().get(Counter::KeepalivesSent) >= 5);
    assert_eq!(sim.a.state(a).unwrap(), State::Established);
    sim.cut = true;
    let (ea, _) = run_until(&mut sim, Duration::from_secs(60), |ea, _| !ea.is_empty());
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::KeepaliveTimeout
        }]
    );
}

#[test]
fn time_wait_is_bounded() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    ca.max_time_wait = 5;
    let mut sim = Sim::with_configs(14, LinkConfig::default(), ca, stack_config(B_MAC, B_IP, 2));
    sim.b.listen(addr(B_IP, 80)).unwrap();
    for _ in 0..8 {
        let a = sim.a.connect(sim.now, addr(B_IP, 80)).unwrap();
        let mut b = None;
        run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
            for e in eb {
                if let Event::Accepted { id, .. } = e {
                    b = Some(*id);
                }
            }
            ea.contains(&Event::Connected(a)) && b.is_some()
        });
        sim.a.close(sim.now, a).unwrap();
        let b = b.unwrap();
        run_until(&mut sim, Duration::from_secs(5), |_, eb| {
            eb.contains(&Event::PeerClosed(b))
        });
        sim.b.close(sim.now, b).unwrap();
        run_until(&mut sim, Duration::from_secs(5), |ea, _| {
            ea.contains(&Event::Closed(a))
        });
    }
    assert_eq!(sim.a.time_wait_count(), 5);
    assert_eq!(sim.a.stats().get(Counter::TimeWaitEvicted), 3);
}

#[test]
fn time_wait_tuple_is_reused_by_a_newer_syn() {
    let mut sim = Sim::new(15, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    let pa = sim.a.local_addr(a).unwrap();
    sim.b.close(sim.now, b).unwrap();
    run_until(&mut sim, Duration::from_secs(5), |ea, _| {
        ea.contains(&Event::PeerClosed(a))
    });
    sim.a.close(sim.now, a).unwrap();
    run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
        ea.contains(&Event::Closed(a)) && eb.contains(&Event::Closed(b))
    });
    assert_eq!(sim.b.time_wait_count(), 1);
    // A reconnects from the same port: its new ISN is later, so B reopens the tuple.
    sim.advance(Duration::from_secs(1));
    let a2 = sim.a.connect_from(sim.now, pa, addr(B_IP, 80)).unwrap();
    let (ea, _) = run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
        !ea.is_empty() && eb.iter().any(|e| matches!(e, Event::Accepted { .. }))
    });
    assert_eq!(ea, vec![Event::Connected(a2)]);
    assert_eq!(sim.b.stats().get(Counter::TimeWaitReused), 1);
}

#[test]
fn writable_after_backpressure_and_no_growth_beyond_caps() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    ca.tcp.send_buffer = 32 * 1024;
    let mut sim = Sim::with_configs(16, LinkConfig::default(), ca, stack_config(B_MAC, B_IP, 2));
    let (a, b) = establish(&mut sim, 80);
    transfer(&mut sim, a, b, 4 << 20, 3, Duration::from_secs(60));
    let _ = b;
}

#[test]
fn fin_waits_for_a_zero_window_instead_of_looping() {
    let mut cb = stack_config(B_MAC, B_IP, 2);
    cb.tcp.recv_buffer = 16 * 1024;
    let mut sim = Sim::with_configs(17, LinkConfig::default(), stack_config(A_MAC, A_IP, 1), cb);
    let (a, b) = establish(&mut sim, 80);
    assert_eq!(sim.a.write(a, &[1u8; 16 * 1024]).unwrap(), 16 * 1024);
    sim.a.shutdown_write(a).unwrap();
    sim.advance(Duration::from_secs(2));
    let frames_before = sim.frames;
    sim.advance(Duration::from_secs(30));
    let frames = sim.frames - frames_before;
    assert!(
        frames < 40,
        "{frames} frames in 30 s against a zero window: the FIN must wait for persist probes"
    );
    // The reader drains; the FIN follows the data.
    let mut got = 0;
    let mut eof = false;
    let mut buf = vec![0u8; 4096];
    sim.run(Duration::from_secs(120), |s| {
        while s.b.poll_event().is_some() {}
        loop {
            match s.b.read(b, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(_) => break,
            }
        }
        eof
    });
    assert_eq!(got, 16 * 1024);
}

#[test]
fn a_closed_connection_is_not_held_forever_by_a_zero_window() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    // The orphan limit alone (the persist timeout is tested below).
    ca.tcp.persist_timeout = Duration::MAX;
    let mut cb = stack_config(B_MAC, B_IP, 2);
    cb.tcp.recv_buffer = 8 * 1024;
    let mut sim = Sim::with_configs(18, LinkConfig::default(), ca, cb);
    let (a, _b) = establish(&mut sim, 80);
    sim.a.write(a, &[1u8; 64 * 1024]).unwrap();
    sim.a.close(sim.now, a).unwrap();
    let (ea, _) = run_until(&mut sim, Duration::from_secs(3600), |ea, _| !ea.is_empty());
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::TimedOut
        }]
    );
    assert_eq!(sim.a.connection_count(), 0);
}

/// A pair where B's receive buffer (16 KiB) is full and A has 48 KiB more queued: B's window
/// is zero. Returns as soon as B's buffer is full: A learns of the zero window (and starts
/// probing) within a delayed ACK of that.
fn zero_window_pair(seed: u64) -> (Sim, tcpstack::ConnId, tcpstack::ConnId) {
    let mut cb = stack_config(B_MAC, B_IP, 2);
    cb.tcp.recv_buffer = 16 * 1024;
    let mut sim = Sim::with_configs(
        seed,
        LinkConfig::default(),
        stack_config(A_MAC, A_IP, 1),
        cb,
    );
    let (a, b) = establish(&mut sim, 80);
    assert_eq!(sim.a.write(a, &[5u8; 64 * 1024]).unwrap(), 64 * 1024);
    sim.run(Duration::from_secs(5), |s| {
        s.b.recv_available(b).unwrap() == 16 * 1024
    });
    events(&mut sim.a);
    events(&mut sim.b);
    (sim, a, b)
}

#[test]
fn a_peer_that_never_opens_its_window_is_reset_after_the_persist_timeout() {
    let (mut sim, a, b) = zero_window_pair(19);
    let start = sim.now;
    let timeout = tcpstack::TcpConfig::default().persist_timeout;
    assert_eq!(timeout, Duration::from_secs(60));
    // Not before the bound: the peer answers every probe, so nothing else ends it.
    sim.advance(timeout - Duration::from_secs(2));
    assert_eq!(sim.a.state(a).unwrap(), State::Established);
    assert_eq!(events(&mut sim.a), vec![]);
    assert_eq!(sim.a.stats().get(Counter::ZeroWindowTimeouts), 0);
    let probes = sim.a.stats().get(Counter::ZeroWindowProbes);
    assert!(probes >= 5, "{probes} probes in {timeout:?}");
    assert_eq!(
        sim.a.stats().get(Counter::RtoTimeouts),
        0,
        "probes were answered"
    );
    // At the bound: A resets, and the RST reaches B.
    let (ea, eb) = run_until(&mut sim, Duration::from_secs(10), |ea, eb| {
        !ea.is_empty() && !eb.is_empty()
    });
    let waited = sim.now - start;
    assert!(
        waited >= timeout && waited < timeout + Duration::from_millis(100),
        "reset after {waited:?} of zero window, bound {timeout:?}"
    );
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::ZeroWindowTimeout
        }]
    );
    assert_eq!(
        eb,
        vec![Event::Reset {
            id: b,
            reason: ResetReason::PeerReset
        }]
    );
    assert_eq!(sim.a.stats().get(Counter::ZeroWindowTimeouts), 1);
    assert_eq!(sim.a.stats().get(Counter::RstsSent), 1);
    assert_eq!(
        sim.a.connection_count(),
        0,
        "the connection and its buffers are freed"
    );
    assert_eq!(sim.b.connection_count(), 0);
}

#[test]
fn a_window_that_opens_before_the_persist_timeout_restarts_its_clock() {
    let (mut sim, a, b) = zero_window_pair(20);
    let start = sim.now;
    let timeout = tcpstack::TcpConfig::default().persist_timeout;
    sim.advance(timeout - Duration::from_secs(1));
    // Just before the bound the reader takes 4 KiB: the window opens, A sends, and the
    // window is zero again at once.
    let mut buf = vec![0u8; 4096];
    assert_eq!(sim.b.read(b, &mut buf).unwrap(), 4096);
    let reopened = sim.now;
    sim.advance(Duration::from_millis(50));
    assert_eq!(
        sim.b.recv_available(b).unwrap(),
        16 * 1024,
        "the opening was used"
    );
    // Well past the first bound: still up, since the clock restarted at the opening.
    sim.advance(Duration::from_secs(30));
    assert_eq!(sim.a.state(a).unwrap(), State::Established);
    assert_eq!(events(&mut sim.a), vec![]);
    assert!(sim.now - start > timeout + Duration::from_secs(25));
    // The new period ends a full bound after the opening.
    let (ea, _) = run_until(&mut sim, Duration::from_secs(60), |ea, _| !ea.is_empty());
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::ZeroWindowTimeout
        }]
    );
    let waited = sim.now - reopened;
    assert!(
        waited >= timeout && waited < timeout + Duration::from_millis(100),
        "reset {waited:?} after the window reopened, bound {timeout:?}"
    );
}

#[test]
fn keepalive_can_be_set_per_connection() {
    // Off in the stack's configuration, on for one connection.
    let mut sim = Sim::new(21, LinkConfig::default());
    let (a, _b) = establish(&mut sim, 80);
    sim.advance(Duration::from_secs(30));
    assert_eq!(sim.a.stats().get(Counter::KeepalivesSent), 0);
    sim.a
        .set_keepalive(
            sim.now,
            a,
            Some(Keepalive {
                idle: Duration::from_secs(10),
                interval: Duration::from_secs(2),
                probes: 3,
            }),
        )
        .unwrap();
    sim.advance(Duration::from_secs(9));
    assert_eq!(
        sim.a.stats().get(Counter::KeepalivesSent),
        0,
        "idle time from the call"
    );
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.a.stats().get(Counter::KeepalivesSent), 1);
    sim.cut = true;
    let set_at = sim.now;
    let (ea, _) = run_until(&mut sim, Duration::from_secs(60), |ea, _| !ea.is_empty());
    assert_eq!(
        ea,
        vec![Event::Reset {
            id: a,
            reason: ResetReason::KeepaliveTimeout
        }]
    );
    assert!(sim.now - set_at <= Duration::from_secs(20));
    // On, then off again, for another connection of the same stack: no probes.
    sim.cut = false;
    let (a2, _) = establish(&mut sim, 81);
    let k = Keepalive {
        idle: Duration::from_secs(1),
        interval: Duration::from_secs(1),
        probes: 1,
    };
    sim.a.set_keepalive(sim.now, a2, Some(k)).unwrap();
    sim.a.set_keepalive(sim.now, a2, None).unwrap();
    let sent = sim.a.stats().get(Counter::KeepalivesSent);
    sim.advance(Duration::from_secs(120));
    assert_eq!(sim.a.stats().get(Counter::KeepalivesSent), sent);
    assert_eq!(sim.a.state(a2).unwrap(), State::Established);
}

#[test]
fn shutdown_during_connect_sends_the_data_then_fin() {
    let mut sim = Sim::new(
        19,
        LinkConfig {
            delay: Duration::from_millis(5),
            ..Default::default()
        },
    );
    sim.b.listen(addr(B_IP, 80)).unwrap();
    let a = sim.a.connect(sim.now, addr(B_IP, 80)).unwrap();
    sim.a.write(a, b"early").unwrap();
    sim.a.shutdown_write(a).unwrap();
    let mut b = None;
    run_until(&mut sim, Duration::from_secs(5), |_, eb| {
        for e in eb {
            if let Event::Accepted { id, .. } = e {
                b = Some(*id);
            }
        }
        eb.iter().any(|e| matches!(e, Event::PeerClosed(_)))
    });
    let (data, eof) = read_all(&mut sim.b, b.unwrap());
    assert_eq!((data.as_slice(), eof), (&b"early"[..], true));
}

#[test]
fn simultaneous_bulk_both_ways_with_loss_stays_within_the_mtu() {
    // Each side holds out-of-order data while sending: its data segments carry SACK blocks,
    // and must still fit the MTU.
    let mut sim = Sim::new(20, LinkConfig::lossy(0.04));
    let (a, b) = establish(&mut sim, 80);
    let total = 2u64 << 20;
    let mut tx = [Pattern::new(1), Pattern::new(2)];
    let mut rx = [Pattern::new(2), Pattern::new(1)];
    let mut sent = [0u64; 2];
    let mut got = [0u64; 2];
    let mut pending = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 16384];
    let mut expect = vec![0u8; 16384];
    sim.run(Duration::from_secs(600), |s| {
        for side in 0..2 {
            let (stack, id) = if side == 0 {
                (&mut s.a, a)
            } else {
                (&mut s.b, b)
            };
            while stack.poll_event().is_some() {}
            while sent[side] < total {
                if pending[side].is_empty() {
                    let n = (total - sent[side]).min(8192) as usize;
                    pending[side].resize(n, 0);
                    tx[side].fill(&mut pending[side]);
                }
                match stack.write(id, &pending[side]) {
                    Ok(n) => {
                        pending[side].drain(..n);
                        sent[side] += n as u64;
                    }
                    Err(_) => break,
                }
            }
            while let Ok(n) = stack.read(id, &mut buf) {
                if n == 0 {
                    break;
                }
                rx[side].fill(&mut expect[..n]);
                assert!(buf[..n] == expect[..n]);
                got[side] += n as u64;
            }
        }
        got == [total, total]
    });
    for st in [sim.a.stats(), sim.b.stats()] {
        assert_eq!(
            st.drops(DropReason::TxBufferTooSmall),
            0,
            "a segment did not fit the MTU"
        );
    }
    assert!(
        sim.a.stats().get(Counter::OutOfOrderSegments) > 0
            && sim.b.stats().get(Counter::OutOfOrderSegments) > 0
    );
}

#[test]
fn ephemeral_ports_respect_the_port_filter() {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use tcpstack::{Error, Ipv4Cidr, MacAddr, PortFilter, Stack, StackConfig};
    let local = Ipv4Addr::new(10, 0, 0, 1);
    let mut cfg = StackConfig::new(
        MacAddr([2, 0, 0, 0, 0, 1]),
        vec![Ipv4Cidr::new(local, 24)],
        [3; 16],
    );
    cfg.ephemeral_ports = (40000, 40999);
    // Keep one port in four, as a worker of four would.
    cfg.port_filter = Some(PortFilter::new(|l, _r| l.port() % 4 == 3));
    let mut stack = Stack::new(cfg.clone());
    let now = tcpstack::Instant::from_micros(0);
    let mut seen = std::collections::HashSet::new();
    for i in 0..250u16 {
        let remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80 + (i % 3));
        let id = stack.connect(now, remote).expect("a port is free");
        let port = stack.local_addr(id).unwrap().port();
        assert_eq!(port % 4, 3, "port {port} is not this worker's");
        assert!((40000..=40999).contains(&port));
        seen.insert((port, remote));
    }
    assert_eq!(seen.len(), 250, "no tuple is handed out twice");

    // A filter nothing passes: a clear error, not a loop or a wrong port.
    cfg.port_filter = Some(PortFilter::new(|_, _| false));
    let mut none = Stack::new(cfg);
    assert_eq!(
        none.connect(now, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80)),
        Err(Error::NoPortsFree)
    );
}

#[test]
fn an_active_open_reuses_our_time_wait_once_the_ports_run_out() {
    let mut ca = stack_config(A_MAC, A_IP, 1);
    ca.ephemeral_ports = (40000, 40003);
    let mut sim = Sim::with_configs(21, LinkConfig::default(), ca, stack_config(B_MAC, B_IP, 2));
    // A opens and closes first four times: four tuples in A's TIME-WAIT, every port taken.
    for i in 0..4 {
        let (a, b) = if i == 0 {
            establish(&mut sim, 80)
        } else {
            let a = sim.a.connect(sim.now, addr(B_IP, 80)).unwrap();
            let (_, eb) = run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
                ea.contains(&Event::Connected(a))
                    && eb.iter().any(|e| matches!(e, Event::Accepted { .. }))
            });
            let b = eb
                .iter()
                .find_map(|e| match e {
                    Event::Accepted { id, .. } => Some(*id),
                    _ => None,
                })
                .unwrap();
            (a, b)
        };
        sim.a.close(sim.now, a).unwrap();
        run_until(&mut sim, Duration::from_secs(5), |_, eb| {
            eb.contains(&Event::PeerClosed(b))
        });
        sim.b.close(sim.now, b).unwrap();
        run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
            ea.contains(&Event::Closed(a)) && eb.contains(&Event::Closed(b))
        });
    }
    assert_eq!(sim.a.time_wait_count(), 4);
    // Within a second of the last close nothing may be reused.
    assert_eq!(
        sim.a.connect(sim.now, addr(B_IP, 80)),
        Err(Error::NoPortsFree)
    );
    // A second later the oldest-found tuple is taken over and the new connection works.
    sim.advance(Duration::from_secs(1));
    let a2 = sim
        .a
        .connect(sim.now, addr(B_IP, 80))
        .expect("a TIME-WAIT tuple is reused");
    let (ea, eb) = run_until(&mut sim, Duration::from_secs(5), |ea, eb| {
        !ea.is_empty() && eb.iter().any(|e| matches!(e, Event::Accepted { .. }))
    });
    assert_eq!(ea, vec![Event::Connected(a2)], "B accepted: {eb:?}");
    assert_eq!(sim.a.time_wait_count(), 3);
    assert_eq!(sim.a.stats().get(Counter::TimeWaitReused), 1);
}

/// A SYN-cookie connection keeps window scaling and SACK when the SYN offered timestamps
/// (they ride in the SYN-ACK's timestamp value, as Linux does), and goes without them when
/// it did not.
#[test]
fn syn_cookie_connections_keep_window_scaling_and_sack() {
    for timestamps in [true, false] {
        let mut ca = stack_config(A_MAC, A_IP, 1);
        ca.tcp.timestamps = timestamps;
        let mut cb = stack_config(B_MAC, B_IP, 2);
        cb.syn_backlog = 0;
        let mut sim = Sim::with_configs(13, LinkConfig::lossy(0.02), ca, cb);
        sim.faults_enabled = [false, false];
        sim.record = Some(Vec::new());
        let (a, b) = establish(&mut sim, 80);
        assert_eq!(sim.b.stats().get(Counter::SynCookiesAccepted), 1);
        let synack = sim
            .record
            .take()
            .unwrap()
            .iter()
            .filter(|(to_b, f)| !to_b && f.len() > 34)
            .filter_map(|(_, f)| tcpstack::wire::tcp::Segment::parse(&f[34..], B_IP, A_IP).ok())
            .map(|s| s.header)
            .find(|h| h.flags.syn())
            .expect("a SYN-ACK");
        assert_eq!(synack.options.sack_permitted, timestamps);
        assert_eq!(synack.options.window_scale.is_some(), timestamps);
        assert_eq!(synack.options.timestamp.is_some(), timestamps);
        // With loss, A's SACK recovery needs B's SACK blocks; a 256 KiB window needs scaling.
        sim.faults_enabled = [true, true];
        transfer(&mut sim, a, b, 4 << 20, 3, Duration::from_secs(600));
        let rack = sim.a.stats().get(Counter::RackLost);
        assert_eq!(rack > 0, timestamps, "SACK-based recovery: {rack}");
        if timestamps {
            assert_eq!(sim.a.stats().get(Counter::RtoTimeouts), 0);
        }
    }
}

#[test]
fn an_opened_connection_awaits_an_answer_from_its_write_to_the_peers_data() {
    let mut sim = Sim::new(21, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    assert_eq!((sim.a.awaiting_answers(), sim.b.awaiting_answers()), (0, 0));
    // A opened the connection: its request is owed an answer until data comes back.
    sim.a.write(a, b"request").unwrap();
    sim.a.write(a, b" more").unwrap();
    assert_eq!(sim.a.awaiting_answers(), 1, "counted once per connection");
    run_until(&mut sim, Duration::from_secs(1), |_, eb| {
        eb.contains(&Event::Readable(b))
    });
    assert_eq!(sim.a.awaiting_answers(), 1, "an ACK is not an answer");
    read_all(&mut sim.b, b);
    // B accepted it: its answer awaits nothing.
    sim.b.write(b, b"response").unwrap();
    assert_eq!(sim.b.awaiting_answers(), 0);
    run_until(&mut sim, Duration::from_secs(1), |ea, _| {
        ea.contains(&Event::Readable(a))
    });
    assert_eq!(sim.a.awaiting_answers(), 0, "answered");
    // Owed again while the first answer is still unread: the second answer lands behind
    // it (no new `Readable`) and still counts.
    sim.a.write(a, b"second").unwrap();
    assert_eq!(sim.a.awaiting_answers(), 1);
    sim.b.write(b, b"answer two").unwrap();
    // Without the count, this runs into the time limit (a panic).
    sim.run(Duration::from_secs(1), |s| s.a.awaiting_answers() == 0);
    assert_eq!(
        sim.a.recv_available(a).unwrap(),
        b"response".len() + b"answer two".len(),
        "an answer behind unread data"
    );
    read_all(&mut sim.a, a);
    // Owed again; then the peer goes away: nothing more to wait for.
    sim.a.write(a, b"again").unwrap();
    assert_eq!(sim.a.awaiting_answers(), 1);
    sim.b.abort(b).unwrap();
    run_until(&mut sim, Duration::from_secs(1), |ea, _| {
        ea.iter().any(|e| matches!(e, Event::Reset { .. }))
    });
    assert_eq!(sim.a.awaiting_answers(), 0, "a reset ends the wait");
    // A connection released while it waits stops counting.
    let (a2, _b2) = establish(&mut sim, 81);
    sim.a.write(a2, b"x").unwrap();
    assert_eq!(sim.a.awaiting_answers(), 1);
    sim.a.abort(a2).unwrap();
    // The RST goes out, then the slot is released.
    sim.advance(Duration::from_millis(10));
    assert!(sim.a.state(a2).is_err(), "a2 released");
    assert_eq!(sim.a.awaiting_answers(), 0, "released");
}

#[test]
fn a_cancelled_timer_is_no_longer_the_next_deadline() {
    let mut sim = Sim::new(22, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.a.write(a, b"request").unwrap();
    run_until(&mut sim, Duration::from_secs(1), |_, eb| {
        eb.contains(&Event::Readable(b))
    });
    read_all(&mut sim.b, b);
    // B owes a delayed ACK (40 ms) for the request; its answer carries that ACK at once.
    let answered = sim.now;
    sim.b.write(b, b"response").unwrap();
    run_until(&mut sim, Duration::from_secs(1), |ea, _| {
        ea.contains(&Event::Readable(a))
    });
    // What B still waits for is A's ACK of the answer: its retransmission timeout and tail
    // loss probe, both at least MIN_RTO away. The cancelled 40 ms must not be reported: a
    // worker sleeping until then would wake up for nothing.
    let due = sim.b.poll_timeout().expect("the answer's timers");
    assert!(
        due >= answered + Duration::from_millis(200),
        "next deadline {:?} after the answer at {answered:?}",
        due
    );
    // And the exchange still completes: A's delayed ACK arrives, B's timers stop.
    read_all(&mut sim.a, a);
    sim.advance(Duration::from_millis(100));
    assert!(sim
        .b
        .poll_timeout()
        .is_none_or(|t| t > sim.now + Duration::from_millis(500)));
}
