//! Everything the control thread runs for one node, started in one call: the
//! first load, the file watch and the admin API. For `xdpmesh run`.

use std::sync::Arc;
use std::time::Duration;

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
}

/// The running control plane; dropping it stops the watch and the admin API.
pub struct ControlPlane {
    pub publisher: Arc<Publisher>,
    pub store: Arc<TableStore>,
    pub admin: AdminServer,
    _watch: WatchHandle,
}

impl ControlPlane {
    /// Load the node's tables (they must check), watch them, serve the admin API.
    /// `ext` adds the data plane's endpoints and metrics to the admin API.
    pub fn start(
        node: &NodeConfig,
        ext: Option<Arc<dyn AdminExtension>>,
    ) -> Result<Self, StartError> {
        let publisher = Arc::new(Publisher::new());
        let store = Arc::new(TableStore::new(&node.tables, publisher.clone()));
        store.reload_file().map_err(StartError::Tables)?;
        let watch = watch::watch(store.clone(), DEBOUNCE)?;
        let admin = AdminServer::start(
            AdminConfig::new(node.admin, node.admin_token.clone()),
            store.clone(),
            ext,
        )?;
        Ok(Self {
            publisher,
            store,
            admin,
            _watch: watch,
        })
    }
}
