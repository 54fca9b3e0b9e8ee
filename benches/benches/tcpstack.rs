//! tcpstack in memory on one core: bulk throughput (MTU 1500 and 3500), segments per second,
//! and connection open+close per second. `cargo bench -p benches --bench tcpstack`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

#[path = "pair.rs"]
mod pair;
use pair::Pair;

const TRANSFER: usize = 16 << 20;

fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk");
    g.throughput(Throughput::Bytes(TRANSFER as u64));
    g.sample_size(20);
    for mtu in [1500usize, 3500] {
        g.bench_with_input(BenchmarkId::new("mtu", mtu), &mtu, |bch, &mtu| {
            let mut p = Pair::new(mtu);
            let (a, b) = p.establish(80);
            let chunk = vec![0x5au8; 64 * 1024];
            let mut sink = vec![0u8; 256 * 1024];
            bch.iter(|| p.transfer(a, b, TRANSFER, &chunk, &mut sink));
        });
    }
    g.finish();
}

fn segments(c: &mut Criterion) {
    // Full-sized segments at MTU 1500 carry 1448 bytes (timestamps on): count data segments.
    let mut g = c.benchmark_group("segments");
    let segs = TRANSFER.div_ceil(1448) as u64;
    g.throughput(Throughput::Elements(segs));
    g.sample_size(20);
    g.bench_function("mtu1500", |bch| {
        let mut p = Pair::new(1500);
        let (a, b) = p.establish(80);
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sink = vec![0u8; 256 * 1024];
        bch.iter(|| p.transfer(a, b, TRANSFER, &chunk, &mut sink));
    });
    g.finish();
}

fn open_close(c: &mut Criterion) {
    let mut g = c.benchmark_group("connections");
    g.throughput(Throughput::Elements(1));
    g.bench_function("open_close", |bch| {
        let mut p = Pair::new(1500);
        let mut cfg_tw = 0;
        bch.iter(|| {
            let (a, b) = p.establish(80);
            p.a.close(p.now, a).unwrap();
            p.pump();
            p.b.close(p.now, b).unwrap();
            p.pump();
            cfg_tw += 1;
            // Expire TIME-WAIT now and then so the table does not dominate.
            if cfg_tw % 10_000 == 0 {
                p.advance(Duration::from_secs(61));
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bulk, segments, open_close);
criterion_main!(benches);
