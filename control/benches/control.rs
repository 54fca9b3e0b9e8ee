//! Control-plane benchmarks: compile 10k services / 50k endpoints / 10k routes,
//! route lookup by host and path, and the pause a reader sees while snapshots are
//! swapped. Run: `cargo bench -p control`. The swap-pause figures are printed after
//! criterion's (criterion reports means; a pause is a tail).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{de, tree, validate, Context, Publisher, Snapshot, Source, Tables};
use criterion::{criterion_group, Criterion};

// The allocator of the `xdpmesh` binary, so these figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 5;

/// 10k services with 5 endpoints each (50k), and one route per service (10k):
/// a third match a path prefix, a third an exact path plus method, a third a header.
fn big_tables() -> String {
    let mut s = String::with_capacity(8 << 20);
    for i in 0..SERVICES {
        s.push_str(&format!(
            "[[service]]\nname = \"svc-{i}\"\nhosts = [\"svc-{i}.corp.mesh\"]\nendpoints = [\n"
        ));
        for e in 0..ENDPOINTS_PER_SERVICE {
            let ip = i * ENDPOINTS_PER_SERVICE + e;
            s.push_str(&format!(
                "  {{ address = \"10.{}.{}.{}:8080\", labels = {{ version = \"v{}\" }} }},\n",
                ip >> 16,
                (ip >> 8) & 255,
                ip & 255,
                e % 2 + 1
            ));
        }
        s.push_str("]\n");
    }
    for i in 0..SERVICES {
        let m = match i % 3 {
            0 => format!("{{ path = {{ prefix = \"/api/v{}\" }} }}", i % 7),
            1 => format!("{{ path = {{ exact = \"/items/{i}\" }}, method = \"GET\" }}"),
            _ => "{ headers = { x-canary = \"1\" } }".to_owned(),
        };
        s.push_str(&format!(
            "[[route]]\nservice = \"svc-{i}\"\nmatch = {m}\nbackends = [{{ labels = {{ version = \"v1\" }}, weight = 90 }}, {{ labels = {{ version = \"v2\" }}, weight = 10 }}]\n"
        ));
    }
    s
}

fn compile(text: &str) -> Snapshot {
    let src = Source::new("big.toml", text);
    control::compile(&src, &Context::new("."))
        .expect("valid")
        .snapshot
}

fn bench_compile(c: &mut Criterion) {
    let text = big_tables();
    let src = Source::new("big.toml", text.as_str());
    let root = tree::parse(&src).expect("parses");
    let tables: Tables = de::decode(&src, &root, "").expect("decodes");
    let ctx = Context::new(".");
    let mut g = c.benchmark_group("compile_10k_services_50k_endpoints_10k_routes");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    // The snapshot is dropped outside the measurement: a node drops the old one after the
    // swap, not while compiling the new one.
    g.bench_function("text_to_snapshot", |b| {
        b.iter_with_large_drop(|| compile(&text))
    });
    // The two halves of compiling: text to tables straight from the parser's events
    // (what `compile` does), then validate and index.
    g.bench_function("fast_decode", |b| {
        b.iter(|| black_box(control::fastde::tables(&text).expect("fast path")))
    });
    // The tree path, taken when the fast one gives up (and for the error messages).
    g.bench_function("toml_parse", |b| {
        b.iter(|| black_box(tree::parse(&src).expect("parses")))
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(de::decode::<Tables>(&src, &root, "").expect("decodes")))
    });
    g.bench_function("validate_and_index", |b| {
        b.iter(|| black_box(validate::validate(&src, &tables, &ctx).expect("valid")))
    });
    g.finish();
}

/// The requests' host names and paths, back to back in one buffer as a worker's receive
/// buffer holds them, and read in order. (As 10k separate `String`s each read was a
/// cache miss of the bench's own, which a worker that just parsed the request does
/// not have: the index should be what is cold, not the input.)
struct Strings {
    text: String,
    ends: Vec<usize>,
}

impl Strings {
    fn new(items: impl Iterator<Item = String>) -> Self {
        let mut s = Strings {
            text: String::new(),
            ends: Vec::new(),
        };
        for item in items {
            s.text.push_str(&item);
            s.ends.push(s.text.len());
        }
        s
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

fn bench_lookup(c: &mut Criterion) {
    let snap = compile(&big_tables());
    let none: &[(&str, &[u8])] = &[];
    let canary: &[(&str, &[u8])] = &[("user-agent", b"bench"), ("x-canary", b"1")];
    let hosts = Strings::new((0..SERVICES).map(|i| format!("svc-{i}.corp.mesh")));
    let exact_paths = Strings::new((0..SERVICES).map(|i| format!("/items/{i}")));
    let mut g = c.benchmark_group("route_lookup");
    // Across all 10k hosts in turn (a cold-cache worst case), then one hot host.
    let mut i = 0usize;
    g.bench_function("host_and_prefix_path", |b| {
        b.iter(|| {
            i = (i + 3) % SERVICES; // i % 3 == 0: prefix routes
            let hit = snap.route(hosts.get(i), "GET", "/api/v3/orders/42", none);
            black_box(hit.map(|h| h.route.backends.len()))
        })
    });
    let mut i = 1usize;
    g.bench_function("host_and_exact_path_and_method", |b| {
        b.iter(|| {
            i = (i + 3) % SERVICES;
            black_box(
                snap.route(hosts.get(i), "GET", exact_paths.get(i), none)
                    .map(|h| h.id),
            )
        })
    });
    let mut i = 2usize;
    g.bench_function("host_and_header", |b| {
        b.iter(|| {
            i = (i + 3) % SERVICES;
            black_box(snap.route(hosts.get(i), "GET", "/", canary).map(|h| h.id))
        })
    });
    let mut i = 0usize;
    g.bench_function("miss_falls_back_to_default_route", |b| {
        b.iter(|| {
            i = (i + 1) % SERVICES;
            black_box(
                snap.route(hosts.get(i), "POST", "/nothing/here", none)
                    .map(|h| h.id),
            )
        })
    });
    // One hot host, as a worker serving a busy service sees it.
    g.bench_function("hot_host_and_prefix_path", |b| {
        b.iter(|| {
            black_box(
                snap.route(
                    black_box("svc-3.corp.mesh"),
                    "GET",
                    black_box("/api/v3/orders/42"),
                    none,
                )
                .map(|h| h.id),
            )
        })
    });
    g.bench_function("hot_host_and_exact_path_and_method", |b| {
        b.iter(|| {
            black_box(
                snap.route(
                    black_box("svc-4.corp.mesh"),
                    "GET",
                    black_box("/items/4"),
                    none,
                )
                .map(|h| h.id),
            )
        })
    });
    g.bench_function("pick_backend", |b| {
        let r = &snap.routes[0];
        let mut x = 0u64;
        b.iter(|| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            black_box(r.pick(x >> 33).map(|b| b.weight))
        })
    });
    g.finish();
}

fn bench_load(c: &mut Criterion) {
    let p = Publisher::new();
    p.publish(compile(&big_tables()), "".into(), "bench");
    c.bench_function("publisher_load_full", |b| {
        b.iter(|| black_box(p.load().generation))
    });
}

criterion_group!(benches, bench_compile, bench_lookup, bench_load);

/// The reader's view of a swap: time every `load()` + lookup + drop on a reader
/// thread, once with a writer publishing as fast as it can and once without, and
/// compare the tails. Printed, not asserted.
fn swap_pause() {
    let template = compile(&big_tables());
    let p = Arc::new(Publisher::new());
    p.publish(template.clone(), "".into(), "bench");
    let none: &[(&str, &[u8])] = &[];
    let run = |swapping: bool| {
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                // Reads that were the first to see a new generation: the swap's own cost.
                let mut first = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let mut first_load = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let mut generations = 0;
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let snap = p.load();
                    let load_ns = t0.elapsed().as_nanos() as u64;
                    let hit = snap
                        .route("svc-42.corp.mesh", "GET", "/api/v0/x", none)
                        .map(|h| h.id);
                    let g = snap.generation;
                    drop(snap);
                    let ns = t0.elapsed().as_nanos() as u64;
                    black_box(hit);
                    let _ = h.record(ns);
                    if g != last {
                        generations += 1;
                        last = g;
                        let _ = first.record(ns);
                        let _ = first_load.record(load_ns);
                    }
                }
                (h, first, first_load, generations)
            })
        };
        let t0 = Instant::now();
        let mut swaps = 0;
        let mut swap_ns = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        while t0.elapsed() < Duration::from_secs(10) {
            if swapping {
                let next = template.clone(); // built off the timed path
                let s0 = Instant::now();
                p.publish(next, "".into(), "bench");
                let _ = swap_ns.record(s0.elapsed().as_nanos() as u64);
                swaps += 1;
            } else {
                std::thread::park_timeout(Duration::from_millis(10));
            }
            p.reclaim();
        }
        stop.store(true, Ordering::Relaxed);
        let (h, first, first_load, gens) = reader.join().expect("reader");
        (h, first, first_load, gens, swaps, swap_ns)
    };
    println!("\nswap pause (reader thread: load + route lookup + drop, ns):");
    for swapping in [false, true] {
        let (h, first, first_load, gens, swaps, swap_ns) = run(swapping);
        println!(
            "  {:<13} reads {:>10}  p50 {:>5}  p99 {:>6}  p99.9 {:>7}  p99.99 {:>8}  max {:>9}  (swaps {swaps}, generations seen {gens})",
            if swapping { "with swaps" } else { "without swaps" },
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.value_at_quantile(0.9999),
            h.max()
        );
        if swapping {
            println!(
                "  first read of each new generation ({} reads; cold caches: new memory): p50 {} ns, p99 {} ns, max {} ns",
                first.len(),
                first.value_at_quantile(0.5),
                first.value_at_quantile(0.99),
                first.max()
            );
            println!(
                "    of which load() alone: p50 {} ns, p99 {} ns, max {} ns",
                first_load.value_at_quantile(0.5),
                first_load.value_at_quantile(0.99),
                first_load.max()
            );
            println!(
                "  publish (writer side: swap, retire, free the old snapshot): p50 {} ns, max {} ns",
                swap_ns.value_at_quantile(0.5),
                swap_ns.max()
            );
        }
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs this without --bench: keep that quick. With a
    // name filter, run the swap measurement only if the filter names it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
        .collect();
    let profiling = args.iter().any(|a| a == "--profile-time");
    if args.iter().any(|a| a == "--bench")
        && !profiling
        && (filters.is_empty() || filters.iter().any(|f| f.contains("swap")))
    {
        swap_pause();
    }
}
