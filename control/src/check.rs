//! `xdpmesh check`: a node file and the tables it names, every error at once.

use std::path::Path;
use std::time::SystemTime;

use crate::diag::Diagnostics;
use crate::load::{self, Compiled};
use crate::node::{self, NodeConfig};
use crate::source::Source;
use crate::tree::{self, Value};

/// Check a node file and its tables file. `Ok` carries both, ready to run. When
/// the node file has errors but still names a tables file, that file is checked
/// too, so one run shows everything.
pub fn check_node(path: &Path, now: SystemTime) -> Result<(NodeConfig, Compiled), Diagnostics> {
    let node = match node::load(path) {
        Ok(n) => n,
        Err(mut errors) => {
            if let Some(tables) = tables_path_of(path) {
                if let Err(more) = load::compile_file(&tables, now) {
                    errors.extend(more);
                }
            }
            return Err(errors);
        }
    };
    let compiled = match &node.etcd {
        Some(cfg) => check_etcd(cfg, &node, now)?,
        None => load::compile_file(&node.tables, now)?,
    };
    Ok((node, compiled))
}

/// etcd mode: the tables in etcd now (with the registered endpoints), else the node's
/// local cache of the last ones it applied.
fn check_etcd(
    cfg: &crate::etcd::EtcdConfig,
    node: &NodeConfig,
    now: SystemTime,
) -> Result<Compiled, Diagnostics> {
    use crate::etcd::{merge_registrations, Client};
    let name = format!("etcd:{}", cfg.tables_key());
    let read = Client::new(cfg).and_then(|c| c.snapshot(0));
    match read {
        Ok(snap) => {
            let Some(kv) = &snap.tables else {
                return Err(Diagnostics(vec![crate::Diagnostic::whole_file(
                    &name,
                    format!("no tables in etcd at revision {}", snap.revision),
                )]));
            };
            let text = String::from_utf8_lossy(&kv.value);
            let (merged, _) =
                merge_registrations(&text, &snap.registrations, &cfg.endpoints_prefix());
            let src = Source::new(format!("{name}@{}", snap.revision), merged);
            let ctx = crate::validate::Context {
                base_dir: node
                    .path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                now,
            };
            load::compile(&src, &ctx)
        }
        Err(e) => load::compile_file(&node.tables, now).map_err(|mut d| {
            d.0.insert(
                0,
                crate::Diagnostic::whole_file(
                    &name,
                    format!("{e}; checked the local cache instead"),
                ),
            );
            d
        }),
    }
}

/// `[node] tables = "..."` read without the other checks, resolved like `node::load`.
fn tables_path_of(path: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let root = tree::parse(&Source::new("", text)).ok()?;
    let node = &root.get("node")?.node;
    let Value::String(t) = &node.get("tables")?.node.value else {
        return None;
    };
    let t = Path::new(t);
    Some(if t.is_absolute() {
        t.to_owned()
    } else {
        path.parent().unwrap_or(Path::new(".")).join(t)
    })
}
