//! Bytes of heap per idle established connection in tcpstack, beyond its buffers (which are
//! allocated on first use, so an idle connection that never carried data has none). Counts
//! every allocation with a wrapping global allocator. `cargo bench -p benches --bench conn_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

#[path = "pair.rs"]
mod pair;

struct Counting;
static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    // `cargo test --benches` runs this too; keep that quick.
    let n: usize = if std::env::args().any(|a| a == "--bench") {
        20_000
    } else {
        200
    };
    let mut p = pair::Pair::new(1500);
    p.b.listen(std::net::SocketAddrV4::new(pair::B_IP, 80))
        .unwrap();
    // Warm up maps and queues so their first growth is not counted as per-connection cost.
    let (a0, b0) = p.establish(80);
    let before = HELD.load(Ordering::Relaxed);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(p.establish(80));
    }
    p.advance(std::time::Duration::from_millis(100));
    let after = HELD.load(Ordering::Relaxed);
    let per_conn_both = (after - before) as f64 / n as f64;
    println!("idle established connections: {n} on each side");
    println!(
        "heap per connection per side (both stacks' tables, no buffers): {:.0} bytes",
        per_conn_both / 2.0
    );
    println!(
        "of which the connection struct itself: {} bytes",
        tcpstack::Stack::connection_state_size()
    );
    assert_eq!(p.a.connection_count(), n + 1);
    let _ = (a0, b0, ids);
}
