//! Two workers on a two-queue in-memory link, with frames landing on a random queue: every
//! flow is still served by its one owner, through hand-offs, and both workers serve flows.
//! No root needed: this is the deterministic check of the multi-queue logic; the veth test
//! (`run_gateway.rs`) checks the same on real AF_XDP queues.

use dataplane::device::Device;
use dataplane::memlink::{MemDevice, MemLink, SideConfig};
use dataplane::shard::FlowOwner;
use dataplane::worker::{Builtin, Shard, Worker, WorkerStats};
use rand::{Rng, SeedableRng};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant};
use tcpstack::{ConnId, Error, Event, Ipv4Cidr, MacAddr, Stack, StackConfig};

const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

struct Client {
    dev: MemDevice,
    stack: Stack,
    start: WallInstant,
}

impl Client {
    fn now(&self) -> tcpstack::Instant {
        tcpstack::Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }

    fn pump(&mut self) {
        let now = self.now();
        let stack = &mut self.stack;
        self.dev
            .receive(64, |f| stack.handle_frame(now, f))
            .unwrap();
        while self
            .dev
            .transmit(64, |b| stack.poll_transmit(now, b))
            .unwrap()
            == 64
        {}
    }
}

struct Flow {
    id: ConnId,
    data: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    closed: bool,
}

fn run(flows: usize, size: usize, seed: u64) -> (Vec<WorkerStats>, u64) {
    // Each frame towards the gateway lands on a random one of its two queues: the worst a
    // sender can do (a veth sender keeps a flow on one queue until it rehashes).
    let rng = Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let link = MemLink::new(
        SideConfig {
            mac: GW_MAC,
            queues: 2,
            spread: Arc::new(move |_| rng.lock().unwrap().gen_range(0..2)),
        },
        SideConfig::single(CLIENT_MAC),
        1500,
    )
    .unwrap();
    let owner = Arc::new(FlowOwner::new(vec![0, 1], None));
    let shards = Shard::all(owner).unwrap();
    let stop = AtomicBool::new(false);
    let listen = SocketAddrV4::new(GW, 7);
    std::thread::scope(|s| {
        let workers: Vec<_> = shards
            .into_iter()
            .enumerate()
            .map(|(q, shard)| {
                let dev = link.device(0, q as u32);
                let stop = &stop;
                s.spawn(move || {
                    let cfg =
                        StackConfig::new(MacAddr(GW_MAC), vec![Ipv4Cidr::new(GW, 24)], [9; 16]);
                    let mut w = Worker::new(dev, Stack::new(cfg)).with_shard(shard);
                    w.listen(listen, Builtin::Echo).unwrap();
                    w.run(stop).unwrap();
                    w.stats
                })
            })
            .collect();

        let cfg = StackConfig::new(
            MacAddr(CLIENT_MAC),
            vec![Ipv4Cidr::new(CLIENT, 24)],
            [4; 16],
        );
        let mut c = Client {
            dev: link.device(1, 0),
            stack: Stack::new(cfg),
            start: WallInstant::now(),
        };
        let mut fl: Vec<Flow> = (0..flows)
            .map(|i| {
                let now = c.now();
                Flow {
                    id: c.stack.connect(now, listen).unwrap(),
                    data: (0..size).map(|j| (j * 31 + i * 7) as u8).collect(),
                    sent: 0,
                    got: Vec::new(),
                    closed: false,
                }
            })
            .collect();
        let deadline = WallInstant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 64 * 1024];
        while fl.iter().any(|f| !f.closed) {
            assert!(WallInstant::now() < deadline, "flows did not finish");
            c.pump();
            while let Some(e) = c.stack.poll_event() {
                if let Event::Reset { id, reason } = e {
                    panic!("flow {id:?} reset: {reason:?}");
                }
            }
            let now = c.now();
            for f in fl.iter_mut().filter(|f| !f.closed) {
                if f.sent < f.data.len() {
                    match c.stack.write(f.id, &f.data[f.sent..]) {
                        Ok(n) => f.sent += n,
                        Err(Error::WouldBlock) => {}
                        Err(e) => panic!("write: {e}"),
                    }
                }
                loop {
                    match c.stack.read(f.id, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => f.got.extend_from_slice(&buf[..n]),
                        Err(Error::WouldBlock) => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
                if f.got.len() == f.data.len() {
                    assert!(f.got == f.data, "echo differs");
                    c.stack.close(now, f.id).unwrap();
                    f.closed = true;
                }
            }
            c.dev.wait(Duration::from_millis(1)).unwrap();
        }
        // Let the FINs and last ACKs through before stopping.
        let settle = WallInstant::now() + Duration::from_millis(300);
        while WallInstant::now() < settle {
            c.pump();
            let _ = c.dev.wait(Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
        let stats = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (stats, link.dropped(0))
    })
}

#[test]
fn two_workers_serve_every_flow_through_handoffs() {
    let (stats, ring_drops) = run(32, 64 * 1024, 7);
    let out: u64 = stats.iter().map(|s| s.handoff_out).sum();
    let inn: u64 = stats.iter().map(|s| s.handoff_in).sum();
    let dropped: u64 = stats.iter().map(|s| s.handoff_dropped).sum();
    println!("workers: {stats:?}; link ring drops {ring_drops}");
    assert!(out > 0, "random queues must cause hand-offs");
    assert_eq!(inn, out, "every frame handed out was handled by its owner");
    assert_eq!(dropped, 0);
    for (i, s) in stats.iter().enumerate() {
        assert!(s.accepted > 0, "worker {i} owns no flow: {s:?}");
    }
    assert_eq!(stats.iter().map(|s| s.accepted).sum::<u64>(), 32);
    assert_eq!(stats.iter().map(|s| s.resets).sum::<u64>(), 0);
}
