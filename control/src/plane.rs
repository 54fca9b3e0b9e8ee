//! Everything the control thread runs for one node, started in one call: the
//! first load, the file watch and the admin API. For `xdpmesh run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::admin::{self, AdminConfig, AdminExtension, AdminServer};
use crate::diag::Diagnostics;
use crate::node::NodeConfig;
use crate::publish::Publisher;
use crate::store::TableStore;
use crate::watch::{self, WatchHandle};

/// File events closer together than this are one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The tables do not check: refuse to start rather than run without tables.
    #[error("tables:\n{0}")]
    Tables(Diagnostics),
    #[error("watching the tables file: {0}")]
    Watch(#[from] notify::Error),
    #[error("{0}")]
    Admin(#[from] admin::StartError),
    #[error("[etcd]: {0}")]
    Etcd(#[from] crate::etcd::EtcdError),
    #[error("{0}")]
    Thread(std::io::Error),
}

/// How long a node starting in etcd mode tries etcd before it serves its local cache.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(3);

/// The etcd sync thread; stopped when dropped.
struct EtcdSync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for EtcdSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The tables' source: the file watch, or the etcd sync.
enum Source {
    File(#[allow(dead_code)] WatchHandle),
    Etcd(#[allow(dead_code)] EtcdSync),
}

/// The running control plane; dropping it stops the watch and the admin API.
pub struct ControlPlane {
    pub publisher: Arc<Publisher>,
    pub store: Arc<TableStore>,
    pub admin: AdminServer,
    _source: Source,
}

impl ControlPlane {
    /// Load the node's tables (they must check), watch them, serve the admin API.
    /// `ext` adds the data plane's endpoints and metrics to the admin API.
    pub fn start(
        node: &NodeConfig,
        ext: Option<Arc<dyn AdminExtension>>,
    ) -> Result<Self, StartError> {
        let publisher = Arc::new(Publisher::new());
        let (store, source) = match &node.etcd {
            None => {
                let store = Arc::new(TableStore::new(&node.tables, publisher.clone()));
                store.reload_file().map_err(StartError::Tables)?;
                let watch = watch::watch(store.clone(), DEBOUNCE)?;
                (store, Source::File(watch))
            }
            Some(cfg) => {
                let remote = Arc::new(crate::etcd::Remote::new(cfg)?);
                let store = Arc::new(TableStore::with_etcd(
                    &node.tables,
                    publisher.clone(),
                    remote.clone(),
                    node.path.parent().unwrap_or(std::path::Path::new(".")),
                ));
                let sync = start_etcd(&store, &remote)?;
                (store, Source::Etcd(sync))
            }
        };
        let admin = AdminServer::start(
            AdminConfig::new(node.admin, node.admin_token.clone()),
            store.clone(),
            ext,
        )?;
        Ok(Self {
            publisher,
            store,
            admin,
            _source: source,
        })
    }
}

/// The first load from etcd (or, etcd unreachable for [`ETCD_START_TIMEOUT`], from the
/// local cache), then the sync thread.
fn start_etcd(
    store: &Arc<TableStore>,
    remote: &Arc<crate::etcd::Remote>,
) -> Result<EtcdSync, StartError> {
    use crate::etcd::{self, EtcdError};
    let deadline = Instant::now() + ETCD_START_TIMEOUT;
    let first = loop {
        match remote.client.snapshot(0) {
            Ok(s) => break Ok(s),
            Err(e @ (EtcdError::Unreachable(_) | EtcdError::Server(_)))
                if Instant::now() < deadline =>
            {
                *remote
                    .state
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = e.to_string();
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => break Err(e),
        }
    };
    match first {
        Ok(snap) => {
            if snap.tables.is_none() {
                return Err(StartError::Tables(Diagnostics(vec![
                    crate::Diagnostic::whole_file(
                        format!("etcd:{}", remote.client.config().tables_key()),
                        "no tables in etcd",
                    )
                    .hint("write them with `xdpmesh tables push FILE --etcd URL`"),
                ])));
            }
            etcd::apply_snapshot(remote, &**store, &snap);
            if remote.state.applied.load(Ordering::Acquire) != snap.revision {
                return Err(StartError::Tables(store.publisher().status().errors));
            }
            remote.state.connected.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            let rev = store.load_cache().map_err(StartError::Tables)?;
            tracing::warn!(
                "tables: etcd unreachable at start ({e}); serving the local cache {} (etcd revision {rev}) until it answers",
                store.path().display()
            );
            let st = &remote.state;
            st.applied.store(rev, Ordering::Release);
            st.seen.store(rev, Ordering::Release);
            st.from_cache.store(true, Ordering::Relaxed);
            st.lost_since_ms.store(etcd::unix_ms(), Ordering::Relaxed);
            *st.last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = e.to_string();
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (r, t, s) = (remote.clone(), store.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("xdpmesh-etcd".into())
        .spawn(move || {
            let reclaim = t.clone();
            etcd::sync_loop(r, t, s);
            reclaim.publisher().reclaim();
        })
        .map_err(StartError::Thread)?;
    Ok(EtcdSync {
        stop,
        thread: Some(thread),
    })
}
