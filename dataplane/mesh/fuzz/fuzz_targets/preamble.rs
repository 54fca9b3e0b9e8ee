//! The mesh preamble (`XM/1 <endpoint> <tcp|http>\n`, mesh::engine::preamble).
//!
//! - Arbitrary bytes: decode never panics; a decoded preamble ends in its newline, within the
//!   input and within preamble::MAX, decodes the same from its own bytes, and encoding what it
//!   names decodes back to it. "Incomplete" only while the input is shorter than MAX and has
//!   no newline.
//! - The first 7 bytes as an endpoint (address, port) and a tcp/http bit: the encoding fits in
//!   MAX, decodes back with its full length, whatever follows it, and every proper prefix of it
//!   is incomplete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::engine::preamble::{decode, encode, MAX};
use std::net::{Ipv4Addr, SocketAddrV4};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Some((ep, http, len))) => {
            assert!(len >= 1 && len <= data.len() && len <= MAX, "len {len}");
            assert_eq!(data[len - 1], b'\n');
            assert_eq!(decode(&data[..len]), Ok(Some((ep, http, len))));
            let e = encode(ep, http);
            assert_eq!(decode(&e), Ok(Some((ep, http, e.len()))));
        }
        Ok(None) => assert!(data.len() < MAX && !data.contains(&b'\n')),
        Err(()) => {}
    }

    let (cfg, rest) = mesh_fuzz::config::<7>(data);
    let ep = SocketAddrV4::new(
        Ipv4Addr::new(cfg[0], cfg[1], cfg[2], cfg[3]),
        u16::from_le_bytes([cfg[4], cfg[5]]),
    );
    let http = cfg[6] & 1 != 0;
    let e = encode(ep, http);
    assert!(e.len() <= MAX, "{} bytes", e.len());
    for k in 0..e.len() {
        assert_eq!(decode(&e[..k]), Ok(None), "prefix of {k} bytes");
    }
    let mut followed = e.clone();
    followed.extend_from_slice(rest);
    assert_eq!(decode(&followed), Ok(Some((ep, http, e.len()))));
});
