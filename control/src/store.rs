//! The tables file and the publisher together: reload from the file, or take a
//! PUT, check it, write it to the file and publish it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::diag::{Diagnostic, Diagnostics};
use crate::etcd::{self, Remote};
use crate::load;
use crate::publish::{ChangeSource, Publisher};
use crate::source::Source;
use crate::validate::Context;

/// The name PUT bodies carry in error lines.
pub const PUT_NAME: &str = "PUT/tables";

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("invalid tables")]
    Invalid(Diagnostics),
    #[error("cannot write the tables file: {0}")]
    Write(std::io::Error),
    /// etcd mode: the tables changed in etcd after the revision the writer read.
    #[error("{0}")]
    Conflict(String),
    /// etcd mode: etcd did not take the write.
    #[error("{0}")]
    Etcd(String),
}

/// The first line of the local cache of tables applied from etcd.
const CACHE_HEADER: &str = "# xdpmesh: tables applied from etcd, revision ";

pub struct TableStore {
    path: PathBuf,
    publisher: Arc<Publisher>,
    /// One reload or PUT at a time, so check-then-publish is not interleaved.
    busy: Mutex<()>,
    /// Text a PUT just wrote to the file: its file event must not publish it twice.
    written: Mutex<Option<Arc<str>>>,
    /// etcd mode: the tables come from etcd, `path` is the local cache of the last
    /// tables applied, and a PUT writes to etcd.
    remote: Option<Arc<Remote>>,
    /// etcd mode: where relative paths in the tables resolve (the node file's directory;
    /// the cache may live elsewhere).
    base_dir: Option<PathBuf>,
}

impl TableStore {
    pub fn new(path: impl Into<PathBuf>, publisher: Arc<Publisher>) -> Self {
        Self {
            path: path.into(),
            publisher,
            busy: Mutex::new(()),
            written: Mutex::new(None),
            remote: None,
            base_dir: None,
        }
    }

    /// etcd mode: tables from etcd, `cache` the local copy of the last ones applied.
    /// Relative paths in the tables (certificates) resolve against `base_dir`.
    pub fn with_etcd(
        cache: impl Into<PathBuf>,
        publisher: Arc<Publisher>,
        remote: Arc<Remote>,
        base_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            remote: Some(remote),
            base_dir: Some(base_dir.into()),
            ..Self::new(cache, publisher)
        }
    }

    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// etcd mode: check and publish the tables read at `revision`, then write them to
    /// the local cache (atomically). A bad text keeps the current tables and is
    /// recorded (source `etcd`).
    pub fn apply_etcd(&self, revision: i64, text: String) -> Result<u64, Diagnostics> {
        let _g = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let prefix = self
            .remote
            .as_ref()
            .map_or(String::new(), |r| r.client.config().tables_key());
        let st = self.publisher.status();
        if st.last_ok && st.generation > 0 && *st.source == *text {
            // A revision that changed nothing of ours (another key under the prefix, a
            // lease renewed by a put): nothing to compile or swap.
            return Ok(st.generation);
        }
        let src = Source::new(format!("etcd:{prefix}@{revision}"), text);
        match load::compile(&src, &self.context()) {
            Ok(c) => {
                let mut cached = format!("{CACHE_HEADER}{revision}\n").into_bytes();
                cached.extend_from_slice(src.text.as_bytes());
                if let Err(e) = write_atomically(&self.path, &cached) {
                    tracing::warn!(
                        "tables: cannot write the etcd cache {}: {e}",
                        self.path.display()
                    );
                }
                Ok(self.publisher.publish(
                    c.snapshot,
                    src.text,
                    format!("etcd revision {revision}"),
                ))
            }
            Err(d) => {
                self.publisher
                    .record_failure_from(ChangeSource::Etcd, d.clone());
                Err(d)
            }
        }
    }

    /// etcd mode, etcd unreachable at start: publish the local cache. Returns the
    /// revision it holds.
    pub fn load_cache(&self) -> Result<i64, Diagnostics> {
        let _g = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let name = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            Diagnostics(vec![Diagnostic::whole_file(
                &name,
                format!("etcd unreachable and no local cache of its tables: {e}"),
            )])
        })?;
        let revision = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(CACHE_HEADER))
            .and_then(|r| r.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let src = Source::new(name, text);
        let c = load::compile(&src, &self.context())?;
        self.publisher.publish(
            c.snapshot,
            src.text,
            format!("etcd cache (revision {revision})"),
        );
        Ok(revision)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    fn context(&self) -> Context {
        Context {
            base_dir: self.base_dir.clone().unwrap_or_else(|| {
                self.path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            }),
            now: SystemTime::now(),
        }
    }

    /// Read, check and publish the tables file. On failure the current tables stay
    /// and the errors are recorded. Returns the generation now published.
    pub fn reload_file(&self) -> Result<u64, Diagnostics> {
        let _g = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let name = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let d = Diagnostics(vec![Diagnostic::whole_file(
                    &name,
                    format!("cannot read tables file: {e}"),
                )]);
                self.publisher.record_failure(d.clone());
                return Err(d);
            }
        };
        let echo = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if echo.as_deref() == Some(text.as_str()) {
            return Ok(self.publisher.status().generation);
        }
        let src = Source::new(name.clone(), text);
        match load::compile(&src, &self.context()) {
            Ok(c) => Ok(self
                .publisher
                .publish(c.snapshot, src.text, format!("file {name}"))),
            Err(d) => {
                self.publisher.record_failure(d.clone());
                Err(d)
            }
        }
    }

    /// Check `text`; if good, write it to the tables file (atomically) and publish.
    /// Nothing changes when it is bad or cannot be written.
    pub fn put(&self, text: &str) -> Result<u64, PutError> {
        self.put_at(text, None)
    }

    /// [`Self::put`]; in etcd mode, a compare-and-swap on `read` (the revision the
    /// writer read; default the revision this node serves): the text goes to etcd when
    /// the tables there have not changed since, else [`PutError::Conflict`]. It returns
    /// once this node has applied it (or after 5 s).
    pub fn put_at(&self, text: &str, read: Option<i64>) -> Result<u64, PutError> {
        let src = Source::new(PUT_NAME, text);
        if let Some(remote) = &self.remote {
            if let Err(d) = load::compile(&src, &self.context()) {
                self.publisher
                    .record_failure_from(ChangeSource::Put, d.clone());
                return Err(PutError::Invalid(d));
            }
            let read = read.unwrap_or_else(|| {
                remote
                    .state
                    .applied
                    .load(std::sync::atomic::Ordering::Acquire)
            });
            return match remote.client.put_tables(text, read) {
                Ok(rev) => {
                    remote.wait_seen(rev, std::time::Duration::from_secs(5));
                    Ok(self.publisher.status().generation)
                }
                Err(e @ etcd::EtcdError::Conflict { .. }) => Err(PutError::Conflict(e.to_string())),
                Err(e) => Err(PutError::Etcd(e.to_string())),
            };
        }
        let _g = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let compiled = match load::compile(&src, &self.context()) {
            Ok(c) => c,
            Err(d) => {
                self.publisher
                    .record_failure_from(ChangeSource::Put, d.clone());
                return Err(PutError::Invalid(d));
            }
        };
        *self.written.lock().unwrap_or_else(PoisonError::into_inner) = Some(src.text.clone());
        if let Err(e) = write_atomically(&self.path, text.as_bytes()) {
            self.written
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            return Err(PutError::Write(e));
        }
        Ok(self.publisher.publish(compiled.snapshot, src.text, "PUT"))
    }
}

/// Write to a temporary file in the same directory, sync, rename over `path`:
/// readers (and the file watcher) see the old file or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl etcd::Apply for TableStore {
    fn apply(&self, revision: i64, text: String) -> Result<(), Diagnostics> {
        self.apply_etcd(revision, text).map(drop)
    }
    fn idle(&self) {
        self.publisher.reclaim();
    }
}
