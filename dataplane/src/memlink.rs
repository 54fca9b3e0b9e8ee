//! An in-memory link for tests: two sides, each with one or more receive queues, joined by
//! bounded in-process queues. Each side's `spread` decides which of its queues a frame lands
//! on, the way RSS or a veth's TX queue choice would, so multi-queue behaviour (handoffs
//! between workers) can be tested deterministically without root.
//!
//! Each queue has an eventfd ([`Wake`]) that is readable while frames wait, so a worker
//! sleeps on a memory device exactly as on an AF_XDP socket.

use crate::device::{Capabilities, Device};
use crate::wake::Wake;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Picks a receive queue for a frame (the result is taken modulo the queue count).
pub type Spread = Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// Frames a receive queue holds; more are dropped and counted, like a full NIC ring.
pub const QUEUE_DEPTH: usize = 4096;

struct RxQueue {
    frames: Mutex<VecDeque<Vec<u8>>>,
    wake: Wake,
    dropped: AtomicU64,
}

/// One end of the link.
pub struct SideConfig {
    pub mac: [u8; 6],
    pub queues: usize,
    pub spread: Spread,
}

impl SideConfig {
    /// One queue: everything lands on it.
    pub fn single(mac: [u8; 6]) -> Self {
        SideConfig {
            mac,
            queues: 1,
            spread: Arc::new(|_| 0),
        }
    }
}

struct Side {
    mac: [u8; 6],
    queues: Vec<RxQueue>,
    spread: Spread,
}

/// The link; make devices with [`MemLink::device`].
pub struct MemLink {
    sides: [Side; 2],
    mtu: usize,
}

impl MemLink {
    pub fn new(a: SideConfig, b: SideConfig, mtu: usize) -> io::Result<Arc<Self>> {
        let side = |c: SideConfig| -> io::Result<Side> {
            let queues = (0..c.queues.max(1))
                .map(|_| {
                    Ok(RxQueue {
                        frames: Mutex::new(VecDeque::new()),
                        wake: Wake::new()?,
                        dropped: AtomicU64::new(0),
                    })
                })
                .collect::<io::Result<_>>()?;
            Ok(Side {
                mac: c.mac,
                queues,
                spread: c.spread,
            })
        };
        Ok(Arc::new(MemLink {
            sides: [side(a)?, side(b)?],
            mtu,
        }))
    }

    /// The device for `queue` of `side` (0 or 1).
    pub fn device(self: &Arc<Self>, side: usize, queue: u32) -> MemDevice {
        assert!(side < 2 && (queue as usize) < self.sides[side].queues.len());
        MemDevice {
            link: self.clone(),
            side,
            queue: queue as usize,
            free: Vec::new(),
            batch: Vec::new(),
        }
    }

    /// Frames dropped because a receive queue of `side` was full.
    pub fn dropped(&self, side: usize) -> u64 {
        self.sides[side]
            .queues
            .iter()
            .map(|q| q.dropped.load(Ordering::Relaxed))
            .sum()
    }
}

/// One queue of one side.
pub struct MemDevice {
    link: Arc<MemLink>,
    side: usize,
    queue: usize,
    /// Spent buffers, reused for sending so steady traffic does not allocate.
    free: Vec<Vec<u8>>,
    batch: Vec<Vec<u8>>,
}

const BATCH: usize = 64;
const FREE_MAX: usize = 1024;

impl Device for MemDevice {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_frame: self.link.mtu + 14,
            mtu: self.link.mtu,
            queue_id: self.queue as u32,
            mac: self.link.sides[self.side].mac,
            batch: BATCH,
        }
    }

    fn receive<F: FnMut(&[u8])>(&mut self, max: usize, mut on_frame: F) -> io::Result<usize> {
        let q = &self.link.sides[self.side].queues[self.queue];
        {
            let mut frames = q.frames.lock().unwrap_or_else(|e| e.into_inner());
            let n = max.min(BATCH).min(frames.len());
            self.batch.extend(frames.drain(..n));
            if frames.is_empty() {
                // Under the lock: a frame pushed after this notifies again.
                q.wake.clear();
            }
        }
        let n = self.batch.len();
        for f in self.batch.drain(..) {
            on_frame(&f);
            if self.free.len() < FREE_MAX {
                self.free.push(f);
            }
        }
        Ok(n)
    }

    fn transmit<F: FnMut(&mut [u8]) -> Option<usize>>(
        &mut self,
        max: usize,
        mut fill: F,
    ) -> io::Result<usize> {
        let peer = &self.link.sides[1 - self.side];
        let max_frame = self.link.mtu + 14;
        let mut sent = 0;
        while sent < max.min(BATCH) {
            let mut buf = self.free.pop().unwrap_or_default();
            buf.resize(max_frame, 0);
            let Some(len) = fill(&mut buf) else {
                self.free.push(buf);
                break;
            };
            if len == 0 || len > max_frame {
                self.free.push(buf);
                continue;
            }
            buf.truncate(len);
            let qi = (peer.spread)(&buf) % peer.queues.len();
            let q = &peer.queues[qi];
            let mut frames = q.frames.lock().unwrap_or_else(|e| e.into_inner());
            if frames.len() >= QUEUE_DEPTH {
                q.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                frames.push_back(buf);
                // Readable from empty to drained: one wakeup per burst, not per frame.
                if frames.len() == 1 {
                    q.wake.notify();
                }
            }
            sent += 1;
        }
        Ok(sent)
    }

    fn ready_fd(&self) -> RawFd {
        self.link.sides[self.side].queues[self.queue].wake.fd()
    }
}
