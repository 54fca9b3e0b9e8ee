//! One atomic swap publishes one snapshot; a failed reload keeps the last good one
//! and records why.
//!
//! Readers call [`Publisher::load`] (or keep an `arc_swap::Cache` over
//! [`Publisher::cell`]) between batches and hold the `Arc` as long as they need a
//! consistent view: a connection keeps the generation it started with.
//!
//! Old snapshots are not freed by whichever reader drops the last `Arc` (that
//! would put a large free on a worker core): the publisher keeps them until only it
//! holds them and frees them on the control thread ([`Publisher::reclaim`]).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::diag::Diagnostics;
use crate::snapshot::Snapshot;

/// Where a change came from: the label of `xdpmesh_tables_reload_failures_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// The tables file (its watch, or the first load).
    File,
    /// `PUT /tables`.
    Put,
    /// A revision read from etcd.
    Etcd,
}

impl ChangeSource {
    pub const ALL: [ChangeSource; 3] = [Self::File, Self::Put, Self::Etcd];
    pub fn label(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Put => "put",
            Self::Etcd => "etcd",
        }
    }
}

/// What the admin API and metrics report about the tables.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Generation of the published snapshot; 0 before the first load.
    pub generation: u64,
    /// Successful publishes.
    pub reloads: u64,
    /// Failed reload attempts (bad file, bad PUT).
    pub reload_failures: u64,
    /// The same, by [`ChangeSource`] (indexed as [`ChangeSource::ALL`]).
    pub failures_by_source: [u64; 3],
    /// Unix time of the last successful publish.
    pub last_reload_unix: Option<f64>,
    /// Did the last attempt succeed?
    pub last_ok: bool,
    /// Errors of the last failed attempt; empty once an attempt succeeds.
    pub errors: Diagnostics,
    /// The TOML text the current snapshot was compiled from.
    pub source: Arc<str>,
    /// Where the current tables came from (`file PATH`, `PUT`).
    pub origin: String,
}

pub struct Publisher {
    current: ArcSwap<Snapshot>,
    status: Mutex<Status>,
    changed: Condvar,
    retired: Mutex<Vec<Arc<Snapshot>>>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the tables down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Publisher {
    /// Starts with an empty snapshot, generation 0.
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            status: Mutex::new(Status::default()),
            changed: Condvar::new(),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The current snapshot; keep the `Arc` for as long as one view is needed.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The swap cell itself, for readers that want `arc_swap::Cache`.
    pub fn cell(&self) -> &ArcSwap<Snapshot> {
        &self.current
    }

    /// Publish a compiled snapshot as the next generation; returns it.
    pub fn publish(&self, mut snap: Snapshot, source: Arc<str>, origin: impl Into<String>) -> u64 {
        // Holding the status lock orders generations the same as swaps.
        let mut st = lock(&self.status);
        let generation = st.generation + 1;
        snap.generation = generation;
        let old = self.current.swap(Arc::new(snap));
        lock(&self.retired).push(old);
        st.generation = generation;
        st.reloads += 1;
        st.last_reload_unix = Some(unix_now());
        st.last_ok = true;
        st.errors = Diagnostics::default();
        st.source = source;
        st.origin = origin.into();
        drop(st);
        self.changed.notify_all();
        self.reclaim();
        generation
    }

    /// Record a failed reload of the tables file; the published snapshot stays.
    pub fn record_failure(&self, errors: Diagnostics) {
        self.record_failure_from(ChangeSource::File, errors);
    }

    /// Record a failed change from `source`; the published snapshot stays.
    pub fn record_failure_from(&self, source: ChangeSource, errors: Diagnostics) {
        let mut st = lock(&self.status);
        st.reload_failures += 1;
        st.failures_by_source[source as usize] += 1;
        st.last_ok = false;
        st.errors = errors;
        drop(st);
        self.changed.notify_all();
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Wait until `pred(status)` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&Status) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.status);
        loop {
            if pred(&st) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Free retired snapshots that no reader holds any more; returns how many are
    /// still held. Call from the control thread (publish and the watcher do).
    pub fn reclaim(&self) -> usize {
        let mut r = lock(&self.retired);
        // arc-swap settles readers' borrowed guards into counts when it swaps, so
        // a count of 1 means only this list holds it and nobody can get it again.
        r.retain(|s| Arc::strong_count(s) > 1);
        r.len()
    }
}
