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
    let compiled = load::compile_file(&node.tables, now)?;
    Ok((node, compiled))
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
