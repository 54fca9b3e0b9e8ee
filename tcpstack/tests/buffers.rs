//! Buffer memory follows the bytes a connection holds (issue #14, item 10): storage grows
//! from 4 KiB as data needs room, and an idle connection gives it back.

mod common;

use common::*;
use std::time::Duration;
use tcpstack::{ConnId, Error, Event, State, TcpConfig};

const FIRST: usize = 4096;

fn events(stack: &mut tcpstack::Stack) -> Vec<Event> {
    std::iter::from_fn(|| stack.poll_event()).collect()
}

fn read_all(stack: &mut tcpstack::Stack, id: ConnId) -> (usize, bool) {
    let mut n = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stack.read(id, &mut buf) {
            Ok(0) => return (n, true),
            Ok(k) => n += k,
            Err(Error::WouldBlock) => return (n, false),
            Err(e) => panic!("{e}"),
        }
    }
}

/// `n` connections A→B:80, in one go.
fn establish_many(sim: &mut Sim, n: usize) -> Vec<(ConnId, ConnId)> {
    sim.b.listen(addr(B_IP, 80)).unwrap();
    let ids: Vec<ConnId> = (0..n)
        .map(|_| sim.a.connect(sim.now, addr(B_IP, 80)).unwrap())
        .collect();
    let mut accepted = std::collections::HashMap::new();
    let mut connected = 0;
    sim.run(Duration::from_secs(10), |s| {
        for e in events(&mut s.a) {
            assert!(matches!(e, Event::Connected(_)), "{e:?}");
            connected += 1;
        }
        for e in events(&mut s.b) {
            let Event::Accepted { id, remote, .. } = e else {
                panic!("{e:?}")
            };
            accepted.insert(remote, id);
        }
        connected == n && accepted.len() == n
    });
    ids.into_iter()
        .map(|a| (a, accepted[&sim.a.local_addr(a).unwrap()]))
        .collect()
}

/// The gateway case: 2,000 clients each send one byte. While the gateway holds the byte, a
/// connection holds one first allocation (4 KiB, not 256 KiB); once it has read it and the
/// connection has been idle for `buffer_release_delay`, nothing, on either side.
#[test]
fn two_thousand_one_byte_clients_hold_a_first_allocation_then_nothing() {
    let n = 2000;
    let delay = TcpConfig::default().buffer_release_delay;
    let mut sim = Sim::new(50, LinkConfig::default());
    let pairs = establish_many(&mut sim, n);
    assert_eq!(sim.b.buffers_allocated(), 0, "no data yet, no buffers");
    for &(a, _) in &pairs {
        assert_eq!(sim.a.write(a, b"x").unwrap(), 1);
    }
    sim.run(Duration::from_secs(5), |s| {
        pairs
            .iter()
            .all(|&(_, b)| s.b.recv_available(b).unwrap() == 1)
    });
    events(&mut sim.a);
    events(&mut sim.b);
    let holding = sim.b.buffers_allocated();
    println!(
        "{n} connections holding 1 byte: {} bytes of buffers on the gateway ({} per connection)",
        holding,
        holding / n
    );
    assert_eq!(holding, n * FIRST);
    for &(_, b) in &pairs {
        assert_eq!(read_all(&mut sim.b, b), (1, false));
    }
    let start = sim.now;
    sim.advance(delay - Duration::from_millis(100));
    assert_eq!(
        sim.b.buffers_allocated(),
        n * FIRST,
        "kept a while, in case more comes"
    );
    sim.advance(Duration::from_millis(200));
    assert!(sim.now - start > delay);
    println!(
        "idle: gateway {} bytes, clients {} bytes",
        sim.b.buffers_allocated(),
        sim.a.buffers_allocated()
    );
    assert_eq!(sim.b.buffers_allocated(), 0, "idle: receive buffers freed");
    assert_eq!(sim.a.buffers_allocated(), 0, "idle: send buffers freed");
    // They still work: an answer each way.
    for &(a, b) in &pairs[..10] {
        sim.b.write(b, b"y").unwrap();
        sim.a.write(a, b"z").unwrap();
    }
    sim.run(Duration::from_secs(5), |s| {
        pairs[..10].iter().all(|&(a, b)| {
            s.a.recv_available(a).unwrap() == 1 && s.b.recv_available(b).unwrap() == 1
        })
    });
}

/// A bulk transfer grows the buffers to their caps and keeps them while it runs; once the
/// connection has left them empty for `buffer_release_delay`, they go.
#[test]
fn bulk_buffers_go_after_the_release_delay() {
    let mut sim = Sim::new(51, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    let delay = TcpConfig::default().buffer_release_delay;
    assert_eq!(delay, Duration::from_secs(1));
    let chunk = vec![0x5a; 64 * 1024];
    let total = 4 << 20;
    let (mut sent, mut got) = (0, 0);
    let mut peak = (0, 0);
    sim.run(Duration::from_secs(30), |s| {
        while sent < total {
            match s.a.write(a, &chunk[..chunk.len().min(total - sent)]) {
                Ok(k) => sent += k,
                Err(_) => break,
            }
        }
        peak.0 = peak.0.max(s.a.buffers_allocated());
        peak.1 = peak.1.max(s.b.buffers_allocated());
        got += read_all(&mut s.b, b).0;
        got == total
    });
    println!(
        "bulk peaks: sender {} bytes, receiver {} bytes",
        peak.0, peak.1
    );
    assert_eq!(peak.0, TcpConfig::default().send_buffer);
    assert!(peak.1 > FIRST, "{}", peak.1);
    // Right after: the storage is kept, in case more comes.
    assert!(sim.b.buffers_allocated() > FIRST);
    sim.advance(delay + Duration::from_millis(50));
    assert_eq!(sim.a.buffers_allocated(), 0);
    assert_eq!(sim.b.buffers_allocated(), 0);
    // And grows again.
    sim.a.write(a, &chunk).unwrap();
    sim.run(Duration::from_secs(5), |s| {
        s.b.recv_available(b).unwrap() == chunk.len()
    });
    assert!(sim.b.buffers_allocated() >= chunk.len());
}

/// A connection that keeps data moving keeps its storage: a release finds a non-empty buffer
/// and leaves it.
#[test]
fn a_buffer_that_refilled_keeps_its_storage() {
    let mut sim = Sim::new(52, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.a.set_nagle(a, false).unwrap();
    sim.a.write(a, &[1; 20_000]).unwrap();
    sim.run(Duration::from_secs(1), |s| {
        s.b.recv_available(b).unwrap() == 20_000
    });
    assert_eq!(read_all(&mut sim.b, b).0, 20_000);
    let kept = sim.b.buffers_allocated();
    assert!(kept >= 20_000, "{kept}");
    // More arrives and stays unread past the release time.
    sim.advance(Duration::from_millis(500));
    sim.a.write(a, b"more").unwrap();
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.b.recv_available(b).unwrap(), 4);
    assert_eq!(sim.b.buffers_allocated(), kept);
    assert_eq!(read_all(&mut sim.b, b).0, 4);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.b.buffers_allocated(), 0);
}

/// Growth keeps out-of-order data in place (every byte is checked), and all of it goes once
/// the transfer is over.
#[test]
fn a_lossy_transfer_grows_around_out_of_order_data_then_releases() {
    let mut sim = Sim::new(53, LinkConfig::lossy(0.05));
    let (a, b) = establish(&mut sim, 80);
    transfer(&mut sim, a, b, 2 << 20, 7, Duration::from_secs(60));
    assert!(sim.a.stats().get(tcpstack::Counter::Retransmits) > 0);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.b.buffers_allocated(), 0);
    assert_eq!(sim.a.buffers_allocated(), 0);
}

/// A connection in CLOSED or TIME-WAIT that the application has not released yet holds no
/// buffer storage but for data it has not read.
#[test]
fn closed_and_time_wait_connections_hold_only_unread_data() {
    // CLOSED: B answered A's FIN with its own, unread data still in B's buffer.
    let mut sim = Sim::new(54, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.a.write(a, &[3; 30_000]).unwrap();
    sim.a.shutdown_write(a).unwrap();
    sim.run(Duration::from_secs(5), |s| {
        events(&mut s.b).contains(&Event::PeerClosed(b))
    });
    sim.b.write(b, &[4; 50_000]).unwrap();
    sim.b.shutdown_write(b).unwrap();
    sim.run(Duration::from_secs(5), |s| {
        read_all(&mut s.a, a);
        s.b.state(b).unwrap() == State::Closed
    });
    let held = sim.b.buffers_allocated();
    assert!(
        (30_000..=32 * 1024).contains(&held),
        "only the unread 30,000 bytes' storage: {held}"
    );
    assert_eq!(read_all(&mut sim.b, b), (30_000, true));
    assert_eq!(sim.b.buffers_allocated(), 0);

    // TIME-WAIT: B sent a response and closed first; A closed after reading it.
    let mut sim = Sim::new(55, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    sim.b.write(b, &[5; 100_000]).unwrap();
    sim.b.shutdown_write(b).unwrap();
    let mut got = 0;
    sim.run(Duration::from_secs(5), |s| {
        let (n, eof) = read_all(&mut s.a, a);
        got += n;
        eof
    });
    assert_eq!(got, 100_000);
    sim.a.close(sim.now, a).unwrap();
    sim.run(Duration::from_secs(5), |s| {
        s.b.state(b).unwrap() == State::TimeWait
    });
    assert_eq!(sim.b.buffers_allocated(), 0);
}

/// A reset frees what a connection held, unread or unsent.
#[test]
fn a_reset_frees_the_buffers() {
    let mut cb = stack_config(B_MAC, B_IP, 2);
    cb.tcp.recv_buffer = 16 * 1024;
    let mut sim = Sim::with_configs(56, LinkConfig::default(), stack_config(A_MAC, A_IP, 1), cb);
    let (a, b) = establish(&mut sim, 80);
    sim.a.write(a, &[6; 100_000]).unwrap();
    sim.advance(Duration::from_secs(1));
    assert!(sim.a.buffers_allocated() >= 100_000 - 16 * 1024);
    assert_eq!(sim.b.buffers_allocated(), 16 * 1024);
    sim.b.abort(b).unwrap();
    sim.advance(Duration::from_secs(1));
    assert!(events(&mut sim.a).contains(&Event::Reset {
        id: a,
        reason: tcpstack::ResetReason::PeerReset
    }));
    assert_eq!(sim.a.buffers_allocated(), 0);
    assert_eq!(sim.b.buffers_allocated(), 0);
    assert_eq!((sim.a.connection_count(), sim.b.connection_count()), (0, 0));
}
