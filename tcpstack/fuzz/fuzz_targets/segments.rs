//! Segment sequences against one established connection: the fuzzer picks each segment's
//! sequence and acknowledgment offsets, flags, window, options and payload, and the time
//! between them. No panic; the connection's handle stays usable until it is reset or closed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use tcpstack::wire::tcp::{Flags, Header, Options, SackBlocks};
use tcpstack::wire::{arp, ethernet, ipv4, tcp};
use tcpstack::{Event, Instant, Ipv4Cidr, MacAddr, Stack, StackConfig};

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const AM: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const BM: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

fn frame(h: &Header, payload: &[u8]) -> Vec<u8> {
    let l4 = h.len() + payload.len();
    let mut f = vec![0u8; 34 + l4];
    ethernet::emit(&mut f, BM, AM, ethernet::ETHERTYPE_IPV4);
    h.emit(&mut f[34..]);
    f[34 + h.len()..].copy_from_slice(payload);
    tcp::fill_checksum(&mut f[34..], A, B);
    ipv4::emit(&mut f[14..], A, B, ipv4::PROTO_TCP, l4, 1);
    f
}

fuzz_target!(|data: &[u8]| {
    let mut s = Stack::new(StackConfig::new(BM, vec![Ipv4Cidr::new(B, 24)], [3; 16]));
    s.listen(SocketAddrV4::new(B, 80)).unwrap();
    let mut now = Instant::from_millis(1000);
    let mut buf = [0u8; 1514];
    // A's ARP request first, so that B knows A's MAC (B learns neighbours only from ARP);
    // without it the SYN-ACK waits behind B's own ARP request and no connection is made.
    let mut arp = vec![0u8; 14 + arp::PACKET_LEN];
    ethernet::emit(&mut arp, MacAddr::BROADCAST, AM, ethernet::ETHERTYPE_ARP);
    arp::ArpRepr { op: arp::Operation::Request, sender_mac: AM, sender_ip: A, target_mac: MacAddr::ZERO, target_ip: B }.emit(&mut arp[14..]);
    s.handle_frame(now, &arp);
    while s.poll_transmit(now, &mut buf).is_some() {}
    // Handshake by hand: SYN, read the SYN-ACK, ACK.
    let isn = 1000u32;
    let syn = Header { src_port: 4000, dst_port: 80, seq: isn, flags: Flags::SYN, window: 65535, options: Options { mss: Some(1460), window_scale: Some(7), sack_permitted: true, timestamp: Some((1, 0)), ..Default::default() }, ..Default::default() };
    s.handle_frame(now, &frame(&syn, b""));
    let mut our_isn = 0;
    while let Some(n) = s.poll_transmit(now, &mut buf) {
        if let Ok(seg) = tcp::Segment::parse(&buf[34..n], B, A) {
            our_isn = seg.header.seq;
        }
    }
    let ack = Header { src_port: 4000, dst_port: 80, seq: isn + 1, ack: our_isn.wrapping_add(1), flags: Flags::ACK, window: 1000, options: Options { timestamp: Some((2, 0)), ..Default::default() }, ..Default::default() };
    s.handle_frame(now, &frame(&ack, b""));
    let mut id = None;
    while let Some(e) = s.poll_event() {
        if let Event::Accepted { id: i, .. } = e {
            id = Some(i);
        }
    }
    let id = id.expect("the handshake completes");
    let _ = s.write(id, &[7u8; 3000]);

    // Each segment takes 16 bytes of input.
    for chunk in data.chunks_exact(16) {
        let seq_off = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let ack_off = i32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        let flags = Flags(chunk[8] & 0x3f);
        let window = u16::from_le_bytes([chunk[9], chunk[10]]);
        let plen = (chunk[11] as usize) * 8;
        let opt = chunk[12];
        let dt = chunk[13] as u64;
        let action = chunk[14];
        let mut options = Options::default();
        if opt & 1 != 0 {
            options.timestamp = Some((u32::from(chunk[15]) << 8 | opt as u32, 0));
        }
        if opt & 2 != 0 {
            let mut sb = SackBlocks::default();
            sb.push(our_isn.wrapping_add(ack_off as u32), our_isn.wrapping_add(ack_off as u32).wrapping_add(100));
            options.sack = sb;
        }
        let h = Header { src_port: 4000, dst_port: 80, seq: (isn + 1).wrapping_add(seq_off as u32), ack: our_isn.wrapping_add(1).wrapping_add(ack_off as u32), flags, window, options };
        let payload = vec![chunk[15]; plen];
        s.handle_frame(now, &frame(&h, &payload));
        now += Duration::from_millis(dt * 10);
        match action % 8 {
            0 => {
                let _ = s.write(id, &payload);
            }
            1 => {
                let mut r = [0u8; 512];
                let _ = s.read(id, &mut r);
            }
            2 if action > 200 => {
                let _ = s.close(now, id);
            }
            3 if action > 240 => {
                let _ = s.abort(id);
            }
            4 => {
                let _ = s.shutdown_write(id);
            }
            _ => {}
        }
        while let Some(n) = s.poll_transmit(now, &mut buf) {
            assert!(n <= buf.len());
            if u16::from_be_bytes([buf[12], buf[13]]) != ethernet::ETHERTYPE_IPV4 {
                continue; // an ARP request: A's entry aged out while time passed
            }
            // Whatever we send parses back.
            let p = ipv4::Ipv4Packet::parse(&buf[14..n]).expect("we emit valid IPv4");
            if p.protocol == ipv4::PROTO_TCP {
                tcp::Segment::parse(p.payload, B, A).expect("we emit valid TCP");
            }
        }
        while s.poll_event().is_some() {}
    }
});
