//! Reload the tables when their file changes.
//!
//! Watches the file's parent directory, not the file: editors and `PUT` replace it
//! by renaming a new file over it, which a watch on the old inode would not see.
//! Events are debounced: a reload happens once the directory has been quiet for
//! the debounce interval.

use std::ffi::OsString;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::store::TableStore;

/// How often the watcher thread frees retired snapshots when nothing happens.
const RECLAIM_EVERY: Duration = Duration::from_millis(500);

/// A running watch; dropping it (or [`WatchHandle::stop`]) ends the thread.
pub struct WatchHandle {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Dropping the watcher drops the channel's sender: the thread sees it closed.
        self.watcher.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start watching `store`'s tables file. The first load is the caller's.
pub fn watch(store: Arc<TableStore>, debounce: Duration) -> notify::Result<WatchHandle> {
    let dir = match store.path().parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name: OsString = store
        .path()
        .file_name()
        .map(OsString::from)
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;

    let thread = std::thread::Builder::new()
        .name("xdpmesh-watch".into())
        .spawn(move || {
            let relevant = |ev: &notify::Result<notify::Event>| match ev {
                Ok(e) => {
                    !matches!(e.kind, EventKind::Access(_))
                        && e.paths
                            .iter()
                            .any(|p| p.file_name() == Some(name.as_os_str()))
                }
                // An overflowed queue may have lost our event: reload to be sure.
                Err(_) => true,
            };
            loop {
                match rx.recv_timeout(RECLAIM_EVERY) {
                    Ok(ev) if relevant(&ev) => {
                        // Debounce: wait until no event has come for `debounce`.
                        let mut quiet_since = Instant::now();
                        loop {
                            let left = debounce.saturating_sub(quiet_since.elapsed());
                            match rx.recv_timeout(left) {
                                Ok(_) => quiet_since = Instant::now(),
                                Err(RecvTimeoutError::Timeout) => break,
                                Err(RecvTimeoutError::Disconnected) => return,
                            }
                        }
                        // Errors are recorded by the store for /config/errors.
                        let _ = store.reload_file();
                    }
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                store.publisher().reclaim();
            }
        })
        .map_err(notify::Error::io)?;
    Ok(WatchHandle {
        watcher: Some(watcher),
        thread: Some(thread),
    })
}
