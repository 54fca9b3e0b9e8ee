//! Arbitrary bytes as an Ethernet frame into a stack with a listener: no panic, and whatever it
//! answers is a well-formed frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use tcpstack::{Instant, Ipv4Cidr, MacAddr, Stack, StackConfig};

fuzz_target!(|data: &[u8]| {
    let ip = Ipv4Addr::new(10, 0, 0, 2);
    let mut s = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 0, 2]), vec![Ipv4Cidr::new(ip, 24)], [9; 16]));
    s.listen(SocketAddrV4::new(ip, 80)).unwrap();
    // Several frames: split the input on a marker so one input can carry a short exchange.
    for (i, frame) in data.split(|&b| b == 0xA5).enumerate() {
        let now = Instant::from_millis(i as u64 * 10);
        s.handle_frame(now, frame);
        let mut buf = [0u8; 1514];
        while let Some(n) = s.poll_transmit(now, &mut buf) {
            assert!(n >= 14 && n <= buf.len());
        }
        while s.poll_event().is_some() {}
    }
});
