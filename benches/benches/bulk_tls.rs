//! tcpstack in memory on one core with TLS 1.3: 16 MiB one way at MTU 1500, the sender (A) a
//! rustls client encrypting through `tcpstack::tls::TlsSession`, the receiver (B) a rustls server
//! decrypting. `cargo bench -p benches --bench bulk_tls`.
//!
//! - `bulk_tls/leg` is the gateways' own path: the sender is `mesh::leg::Leg` (what encrypts
//!   the hop between gateways) over the stack, counted as `encrypt` is. The goal's figure.
//! - `bulk_tls/encrypt` counts everything but the receiver's record processing (rustls
//!   `process_new_packets`: parsing and AEAD open are timed and subtracted): TLS record
//!   encryption on one side, the TCP work of both ends, and every copy on both ends.
//! - `bulk_tls/encrypt_decrypt` counts the receiver's decryption too.
//! - `bulk_tls/encrypt_aes128` is `encrypt` with TLS13_AES_128_GCM_SHA256 instead of the
//!   provider's first choice, AES-256-GCM (what the mesh negotiates).
//! - `bulk_tls/plain` is `bulk/mtu/1500` of the `tcpstack` bench (no TLS), as a baseline in the
//!   same run.
//!
//! The handshake happens before the measured loop; one 16 MiB transfer of non-repeating bytes
//! is checked byte for byte before timing starts.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh::leg::Leg;
use mesh::net::{Net, NetError, NetEvent};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, BufRead};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcpstack::tls::{TcpIo, TlsSession};
use tcpstack::{ConnId, Error as StackError, Stack};

#[path = "pair.rs"]
mod pair;
use pair::Pair;

const TRANSFER: usize = 16 << 20;
const MTU: usize = 1500;
const CHUNK: usize = 64 * 1024;

/// The provider the mesh uses (`mesh::tls::provider`): aws-lc-rs, whose first TLS 1.3 suite is
/// AES-256-GCM; `aes128` keeps only TLS13_AES_128_GCM_SHA256 (a comparison, not the mesh's).
fn provider(aes128: bool) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    if aes128 {
        p.cipher_suites = vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    }
    Arc::new(p)
}

fn configs(aes128: bool) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["reviews.mesh".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der: CertificateDer<'static> = cert.der().clone();
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let server = ServerConfig::builder_with_provider(provider(aes128))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let client = ClientConfig::builder_with_provider(provider(aes128))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(client), Arc::new(server))
}

/// One stack as the mesh's `Net`, as the gateway's worker wraps its ports (`StackNet`).
struct OneStack<'a>(&'a mut Stack);

fn net_err(e: StackError) -> NetError {
    match e {
        StackError::WouldBlock => NetError::WouldBlock,
        StackError::SendClosed => NetError::Closed,
        _ => NetError::Reset,
    }
}

impl Net for OneStack<'_> {
    type Conn = ConnId;
    fn connect(
        &mut self,
        now: tcpstack::Instant,
        remote: SocketAddrV4,
    ) -> Result<ConnId, NetError> {
        self.0.connect(now, remote).map_err(|_| NetError::Reset)
    }
    fn read(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize, NetError> {
        self.0.read(c, buf).map_err(net_err)
    }
    fn write(&mut self, c: ConnId, data: &[u8]) -> Result<usize, NetError> {
        self.0.write(c, data).map_err(net_err)
    }
    fn shutdown_write(&mut self, c: ConnId) {
        let _ = self.0.shutdown_write(c);
    }
    fn close(&mut self, now: tcpstack::Instant, c: ConnId) {
        let _ = self.0.close(now, c);
    }
    fn abort(&mut self, c: ConnId) {
        let _ = self.0.abort(c);
    }
    fn poll_event(&mut self) -> Option<NetEvent<ConnId>> {
        None
    }
}

/// The sender: tcpstack's own TLS adapter, or the mesh's leg.
enum Tx {
    Session(Box<TlsSession>),
    Leg(Leg<ConnId>),
}

impl Tx {
    fn id(&self) -> ConnId {
        match self {
            Tx::Session(t) => t.id,
            Tx::Leg(l) => l.conn,
        }
    }

    fn is_handshaking(&self) -> bool {
        match self {
            Tx::Session(t) => t.is_handshaking(),
            Tx::Leg(l) => l.is_handshaking(),
        }
    }

    /// Plaintext in; how much was taken.
    fn write(&mut self, stack: &mut Stack, data: &[u8]) -> usize {
        match self {
            Tx::Session(t) => {
                let n = t.write(data).unwrap();
                t.drive(stack).unwrap();
                n
            }
            Tx::Leg(l) => l.write(&mut OneStack(stack), data).unwrap(),
        }
    }

    /// Records out (and, for `Session`, records in).
    fn flush(&mut self, stack: &mut Stack) {
        match self {
            Tx::Session(t) => {
                t.drive(stack).unwrap();
            }
            Tx::Leg(l) => l.flush(&mut OneStack(stack)).unwrap(),
        }
    }

    /// Handshake and post-handshake records (the server's tickets) in, records out.
    fn drive(&mut self, stack: &mut Stack) {
        match self {
            Tx::Session(t) => {
                t.drive(stack).unwrap();
            }
            Tx::Leg(l) => {
                let mut net = OneStack(stack);
                if l.is_handshaking() {
                    l.handshake(&mut net).unwrap();
                } else {
                    let got = l.read(&mut net, &mut [0u8; 64]).unwrap();
                    assert_eq!(got, Err(NetError::WouldBlock), "the server sent no data");
                }
            }
        }
    }
}

/// A TLS 1.3 connection over the pair: A is the client (sender), B the server (receiver).
struct TlsPair {
    p: Pair,
    b: ConnId,
    tx: Tx,
    rx: ServerConnection,
    /// Time spent in the receiver's `process_new_packets` since the last `take_excluded`.
    excluded: Duration,
}

impl TlsPair {
    fn new(aes128: bool, leg: bool) -> TlsPair {
        let (ccfg, scfg) = configs(aes128);
        let mut p = Pair::new(MTU);
        let (a, b) = p.establish(443);
        let client =
            ClientConnection::new(ccfg, ServerName::try_from("reviews.mesh").unwrap()).unwrap();
        let mut t = TlsPair {
            p,
            b,
            tx: if leg {
                Tx::Leg(Leg::tls(a, client.into(), true))
            } else {
                Tx::Session(Box::new(TlsSession::new(a, client)))
            },
            rx: ServerConnection::new(scfg).unwrap(),
            excluded: Duration::ZERO,
        };
        // Handshake, outside any measurement.
        for _ in 0..100 {
            t.tx.drive(&mut t.p.a);
            t.p.pump();
            t.receive(&mut |_| {}, false);
            while t.rx.wants_write() {
                t.rx.write_tls(&mut TcpIo {
                    stack: &mut t.p.b,
                    id: t.b,
                })
                .unwrap();
            }
            t.p.pump();
            if !t.tx.is_handshaking() && !t.rx.is_handshaking() {
                break;
            }
        }
        assert!(
            !t.tx.is_handshaking() && !t.rx.is_handshaking(),
            "handshake"
        );
        // The client reads the server's session tickets (post-handshake) so none are pending.
        t.p.pump();
        t.tx.drive(&mut t.p.a);
        t
    }

    fn suite(&self) -> String {
        format!("{:?}", self.rx.negotiated_cipher_suite().unwrap().suite())
    }

    /// Moves ciphertext from B's TCP connection through rustls and hands plaintext to `sink`;
    /// with `timed`, the time in `process_new_packets` is added to `excluded`.
    fn receive(&mut self, sink: &mut dyn FnMut(&[u8]), timed: bool) -> usize {
        let mut got = 0;
        loop {
            let r = self.rx.read_tls(&mut TcpIo {
                stack: &mut self.p.b,
                id: self.b,
            });
            match r {
                Ok(0) => break,
                Ok(_) => {
                    if timed {
                        let t0 = Instant::now();
                        self.rx.process_new_packets().unwrap();
                        self.excluded += t0.elapsed();
                    } else {
                        self.rx.process_new_packets().unwrap();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            let mut reader = self.rx.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => break,
                    Ok(b) => {
                        let n = b.len();
                        sink(b);
                        got += n;
                        reader.consume(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        got
    }

    /// Sends `total` plaintext bytes A→B through TLS; `next` gives the bytes to send from offset
    /// `sent`, `sink` takes the plaintext B decrypted.
    fn transfer<'d>(
        &mut self,
        total: usize,
        next: &dyn Fn(usize) -> &'d [u8],
        sink: &mut dyn FnMut(&[u8]),
        timed: bool,
    ) {
        let mut sent = 0;
        let mut got = 0;
        while got < total {
            while sent < total {
                let src = next(sent);
                let n = (total - sent).min(src.len());
                match self.tx.write(&mut self.p.a, &src[..n]) {
                    0 => break,
                    w => sent += w,
                }
            }
            self.p.pump();
            got += self.receive(sink, timed);
            // Ciphertext rustls still holds goes into the space the receiver's reads opened.
            self.tx.flush(&mut self.p.a);
            if self.p.a.send_free(self.tx.id()).unwrap_or(0) == 0 {
                self.p.advance(Duration::from_millis(1));
            }
        }
        assert_eq!(got, total);
    }
}

/// Non-repeating bytes (xorshift) for the byte-exactness check.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// One 16 MiB transfer of a non-repeating pattern, compared byte for byte.
fn check(t: &mut TlsPair) {
    let data = pattern(TRANSFER);
    let mut got = Vec::with_capacity(TRANSFER);
    t.transfer(
        TRANSFER,
        &|off| &data[off..(off + CHUNK).min(TRANSFER)],
        &mut |b| got.extend_from_slice(b),
        false,
    );
    assert!(got == data, "TLS transfer not byte-exact");
}

fn bulk_tls(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk_tls");
    g.throughput(Throughput::Bytes(TRANSFER as u64));
    g.sample_size(20);

    g.bench_function("plain", |bch| {
        let mut p = Pair::new(MTU);
        let (a, b) = p.establish(80);
        let chunk = vec![0x5au8; CHUNK];
        let mut sink = vec![0u8; 256 * 1024];
        bch.iter(|| p.transfer(a, b, TRANSFER, &chunk, &mut sink));
    });

    for (name, decrypt_counted, aes128, leg) in [
        ("leg", false, false, true),
        ("encrypt", false, false, false),
        ("encrypt_decrypt", true, false, false),
        ("encrypt_aes128", false, true, false),
    ] {
        // One connection per variant, set up and checked on first use (criterion calls the
        // closure once per warm-up and per sample batch; filtered-out variants set up nothing).
        let mut setup: Option<(TlsPair, Vec<u8>, Vec<u8>)> = None;
        g.bench_function(name, |bch| {
            let (t, chunk, sink) = setup.get_or_insert_with(|| {
                let mut t = TlsPair::new(aes128, leg);
                check(&mut t);
                eprintln!("bulk_tls/{name}: {}, checked 16 MiB byte-exact", t.suite());
                (t, vec![0x5au8; CHUNK], vec![0u8; 256 * 1024])
            });
            bch.iter_custom(|iters| {
                t.excluded = Duration::ZERO;
                let start = Instant::now();
                for _ in 0..iters {
                    t.transfer(
                        TRANSFER,
                        &|_| chunk,
                        &mut |b| {
                            // The plaintext leaves rustls as the plain bench's reader's does.
                            let n = b.len().min(sink.len());
                            sink[..n].copy_from_slice(&b[..n]);
                        },
                        !decrypt_counted,
                    );
                }
                start.elapsed() - t.excluded
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bulk_tls);
criterion_main!(benches);
