//! The tables file and the publisher together: reload from the file, or take a
//! PUT, check it, write it to the file and publish it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::diag::{Diagnostic, Diagnostics};
use crate::load;
use crate::publish::Publisher;
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
}

pub struct TableStore {
    path: PathBuf,
    publisher: Arc<Publisher>,
    /// One reload or PUT at a time, so check-then-publish is not interleaved.
    busy: Mutex<()>,
    /// Text a PUT just wrote to the file: its file event must not publish it twice.
    written: Mutex<Option<Arc<str>>>,
}

impl TableStore {
    pub fn new(path: impl Into<PathBuf>, publisher: Arc<Publisher>) -> Self {
        Self {
            path: path.into(),
            publisher,
            busy: Mutex::new(()),
            written: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    fn context(&self) -> Context {
        Context {
            base_dir: self
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
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
        let _g = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let src = Source::new(PUT_NAME, text);
        let compiled = match load::compile(&src, &self.context()) {
            Ok(c) => c,
            Err(d) => {
                self.publisher.record_failure(d.clone());
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
