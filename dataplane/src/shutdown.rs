//! The two phases of a graceful stop, shared by the thread that handles the signal and the
//! workers. Workers first stop accepting and report it; only then is the drain announced, so a
//! client that reads "draining" and connects is refused rather than accepted and reset later.
//! A worker whose own connections are done keeps serving its queues until every worker is
//! done: it still refuses new connections there and hands other workers their segments.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Shutdown {
    stop: AtomicBool,
    deadline: Mutex<Duration>,
    refusing: Mutex<usize>,
    changed: Condvar,
    workers: AtomicUsize,
    finished: AtomicUsize,
}

impl Shutdown {
    /// The flag a worker's run loop polls between batches.
    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// How long workers may drain; set before the stop flag, so a worker that sees the flag
    /// reads the right value.
    pub fn deadline(&self) -> Duration {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks every worker to stop accepting and drain for up to `deadline`; returns once
    /// `workers` of them stopped accepting (a worker that exited counts: see [`Arrival`]).
    pub fn begin(&self, deadline: Duration, workers: usize) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        self.workers.store(workers, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let mut n = self.refusing.lock().unwrap_or_else(|e| e.into_inner());
        while *n < workers {
            n = self.changed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A worker's promise to report when it no longer accepts; kept for the worker's lifetime.
    pub fn arrival(&self) -> Arrival<'_> {
        Arrival {
            shutdown: self,
            refusing: false,
            finished: false,
        }
    }
}

/// Reports "no longer accepting" and "my connections are done" once each: explicitly, or when
/// dropped, so a worker that fails or panics never leaves the others waiting.
pub struct Arrival<'a> {
    shutdown: &'a Shutdown,
    refusing: bool,
    finished: bool,
}

impl Arrival<'_> {
    pub fn refusing(&mut self) {
        if !self.refusing {
            self.refusing = true;
            *self
                .shutdown
                .refusing
                .lock()
                .unwrap_or_else(|e| e.into_inner()) += 1;
            self.shutdown.changed.notify_all();
        }
    }

    /// This worker has no connection left; it keeps serving while [`Arrival::others_busy`].
    pub fn finished(&mut self) {
        if !self.finished {
            self.finished = true;
            self.shutdown.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether some worker still has connections to drain.
    pub fn others_busy(&self) -> bool {
        self.shutdown.finished.load(Ordering::SeqCst) < self.shutdown.workers.load(Ordering::SeqCst)
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        self.refusing();
        self.finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn begin_waits_for_every_worker_including_one_that_exits() {
        let s = Arc::new(Shutdown::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let workers: Vec<_> = (0..3)
            .map(|i| {
                let (s, tx) = (s.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut a = s.arrival();
                    if i == 2 {
                        return; // a failed worker: its arrival is dropped
                    }
                    while !s.flag().load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                    tx.send(s.deadline()).unwrap();
                    a.refusing();
                })
            })
            .collect();
        s.begin(Duration::from_secs(7), 3);
        // Both live workers reported before begin returned, and read the deadline set first.
        let seen: Vec<_> = rx.try_iter().collect();
        assert_eq!(seen, vec![Duration::from_secs(7); 2]);
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_finished_worker_waits_for_the_others() {
        let s = Shutdown::default();
        let (mut a, mut b) = (s.arrival(), s.arrival());
        a.refusing();
        b.refusing();
        s.begin(Duration::ZERO, 2);
        a.finished();
        assert!(a.others_busy() && b.others_busy());
        drop(b); // a worker that exits counts as finished
        assert!(!a.others_busy());
    }
}
