//! Kernel-side clients shared by the interop tests.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

/// A kernel TCP client (call it inside the peer's namespace): sends `size` seeded random bytes
/// to an echo service at `to` while reading the echo back, then half-closes. Returns the sha256
/// of what it sent, of what came back, and how many bytes came back.
pub fn kernel_echo_client(to: SocketAddrV4, size: usize, seed: u64) -> (Vec<u8>, Vec<u8>, usize) {
    let mut c = TcpStream::connect_timeout(&to.into(), Duration::from_secs(10)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
        h.finalize().to_vec()
    });
    let mut h = Sha256::new();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = c.read(&mut buf).expect("read echo");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    (writer.join().unwrap(), h.finalize().to_vec(), got)
}
