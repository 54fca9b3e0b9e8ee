//! A device-like view of one interface queue: receive a batch of frames, transmit a
//! batch, and the fixed facts about the queue.
//!
//! Frames are Ethernet II frames without FCS. Nothing is allocated per frame:
//! received frames are lent to a callback straight from the backend's buffers
//! (for AF_XDP, the UMEM) and recycled when the callback returns; frames to send
//! are written by a callback straight into the backend's transmit buffers.
//!
//! Call order in a worker loop:
//! ```text
//! loop {
//!     dev.receive(batch, |frame| stack.handle_frame(now, frame));
//!     dev.transmit(batch, |buf| stack.poll_transmit(now, buf));
//!     if idle for a while { dev.wait(timeout) }   // sleeps in poll(2)
//! }
//! ```
//! Backends: [`crate::xdp::XskDevice`] (AF_XDP) and [`crate::memlink`] (in memory, for tests).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Fixed facts about a device queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest frame (Ethernet header included, FCS excluded) that can be sent or
    /// received: the smaller of one buffer and the interface MTU plus 14.
    pub max_frame: usize,
    /// The interface MTU (largest IPv4 packet), as the kernel reports it.
    pub mtu: usize,
    /// The interface queue this device is bound to.
    pub queue_id: u32,
    /// The interface's MAC address: the source of the frames we send.
    pub mac: [u8; 6],
    /// Largest number of frames one `receive` or `transmit` call handles.
    pub batch: usize,
}

/// The kernel's counters of one queue's rings (AF_XDP: `XDP_STATISTICS`), since the socket
/// was opened. Frames lost here never reach the stack, so its counters cannot show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingDrops {
    /// Frames dropped in copy mode because no buffer was free (the fill ring was empty: the
    /// worker fell behind) or the frame did not fit one. With zero-copy the driver takes
    /// buffers itself and a frame it has none for is lost in the NIC, uncounted here; only
    /// `fill_ring_empty` shows it.
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty: events, not frames (in copy mode each
    /// is also a frame in `rx_dropped`), so it is not part of [`RingDrops::rx_lost`].
    pub fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

impl RingDrops {
    /// (metric label, value) of every counter.
    pub fn labeled(&self) -> [(&'static str, u64); 5] {
        [
            ("rx_dropped", self.rx_dropped),
            ("rx_ring_full", self.rx_ring_full),
            ("fill_ring_empty_events", self.fill_ring_empty),
            ("rx_invalid_descs", self.rx_invalid_descs),
            ("tx_invalid_descs", self.tx_invalid_descs),
        ]
    }

    /// Received frames the kernel counted as lost, each once (invalid descriptors are our
    /// bugs, not lost traffic).
    pub fn rx_lost(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full
    }

    pub fn add(&mut self, o: &RingDrops) {
        self.rx_dropped += o.rx_dropped;
        self.rx_ring_full += o.rx_ring_full;
        self.fill_ring_empty += o.fill_ring_empty;
        self.rx_invalid_descs += o.rx_invalid_descs;
        self.tx_invalid_descs += o.tx_invalid_descs;
    }
}

/// One interface queue that moves whole frames in batches.
pub trait Device {
    /// The queue's fixed facts.
    fn capabilities(&self) -> Capabilities;

    /// Hands each waiting frame to `on_frame`, at most `max` of them (capped at
    /// `capabilities().batch`), and returns how many. The slice is valid only
    /// during the call: its buffer goes back to the backend afterwards. Never
    /// blocks; `Ok(0)` means nothing was waiting.
    fn receive<F: FnMut(&[u8])>(&mut self, max: usize, on_frame: F) -> io::Result<usize>;

    /// Sends up to `max` frames (capped at `capabilities().batch`) as one batch,
    /// with at most one kernel wakeup. `fill` gets an empty buffer of
    /// `capabilities().max_frame` bytes, writes one frame at its start and returns
    /// its length, or `None` when it has nothing more to send (that buffer is not
    /// sent). A length of 0 or above the buffer is a caller bug: that frame is
    /// dropped and counted. Returns how many frames were queued; fewer than asked
    /// while every transmit buffer is in flight (backpressure: call again later).
    fn transmit<F: FnMut(&mut [u8]) -> Option<usize>>(
        &mut self,
        max: usize,
        fill: F,
    ) -> io::Result<usize>;

    /// A descriptor that polls readable when a frame may be waiting, so a worker can
    /// sleep on it together with other descriptors.
    fn ready_fd(&self) -> RawFd;

    /// Sleeps until a frame may be waiting or `timeout` passes; returns whether
    /// the device reported frames. For idle loops: spin on `receive` first.
    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        crate::wake::poll_readable(&[self.ready_fd()], timeout)
    }

    /// The kernel's drop counters for this queue; zero for a backend without any. A
    /// system call for AF_XDP: read it now and then, not per batch.
    fn ring_drops(&self) -> RingDrops {
        RingDrops::default()
    }
}
