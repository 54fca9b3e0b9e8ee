//! Two tcpstack instances wired back to back in memory: frames go straight from one stack's
//! `poll_transmit` into the other's `handle_frame`. Shared by the tcpstack benchmarks.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use tcpstack::{ConnId, Event, Instant, Ipv4Cidr, MacAddr, Stack, StackConfig};

pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub struct Pair {
    pub a: Stack,
    pub b: Stack,
    pub now: Instant,
    buf: Vec<u8>,
    pub frames: u64,
}

impl Pair {
    pub fn new(mtu: usize) -> Pair {
        let mut ca = StackConfig::new(
            MacAddr([2, 0, 0, 0, 0, 1]),
            vec![Ipv4Cidr::new(A_IP, 24)],
            [1; 16],
        );
        let mut cb = StackConfig::new(
            MacAddr([2, 0, 0, 0, 0, 2]),
            vec![Ipv4Cidr::new(B_IP, 24)],
            [2; 16],
        );
        ca.mtu = mtu;
        cb.mtu = mtu;
        ca.tcp.nagle = false;
        Pair {
            a: Stack::new(ca),
            b: Stack::new(cb),
            now: Instant::from_millis(1000),
            buf: vec![0; mtu + 14],
            frames: 0,
        }
    }

    /// Moves every pending frame across, both ways, until both are quiet; time steps 1 µs.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(n) = self.a.poll_transmit(self.now, &mut self.buf) {
                self.b.handle_frame(self.now, &self.buf[..n]);
                self.frames += 1;
                moved = true;
            }
            while let Some(n) = self.b.poll_transmit(self.now, &mut self.buf) {
                self.a.handle_frame(self.now, &self.buf[..n]);
                self.frames += 1;
                moved = true;
            }
            self.now += Duration::from_micros(1);
            if !moved {
                return;
            }
        }
    }

    /// Runs timers that are due within `d`.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.pump();
    }

    pub fn establish(&mut self, port: u16) -> (ConnId, ConnId) {
        let _ = self.b.listen(SocketAddrV4::new(B_IP, port));
        let a = self
            .a
            .connect(self.now, SocketAddrV4::new(B_IP, port))
            .expect("connect");
        self.pump();
        let mut b = None;
        while let Some(e) = self.b.poll_event() {
            if let Event::Accepted { id, .. } = e {
                b = Some(id);
            }
        }
        while self.a.poll_event().is_some() {}
        (a, b.expect("accepted"))
    }

    /// Sends `total` bytes A→B and reads them at B.
    pub fn transfer(&mut self, a: ConnId, b: ConnId, total: usize, chunk: &[u8], sink: &mut [u8]) {
        let mut sent = 0;
        let mut got = 0;
        while got < total {
            while sent < total {
                let n = (total - sent).min(chunk.len());
                match self.a.write(a, &chunk[..n]) {
                    Ok(w) => sent += w,
                    Err(_) => break,
                }
            }
            self.pump();
            while let Ok(n) = self.b.read(b, sink) {
                if n == 0 {
                    break;
                }
                got += n;
            }
            // Delayed ACKs and window updates go out when their timer fires.
            if self.a.send_free(a).unwrap_or(0) == 0 {
                self.advance(Duration::from_millis(1));
            }
        }
        while self.a.poll_event().is_some() {}
        while self.b.poll_event().is_some() {}
    }
}
