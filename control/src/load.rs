//! The whole check of a tables text: parse, decode, validate, compile.

use std::path::Path;

use crate::de;
use crate::diag::Diagnostics;
use crate::fastde;
use crate::schema::Tables;
use crate::snapshot::Snapshot;
use crate::source::Source;
use crate::tree;
use crate::validate::{self, Context};

/// Tables that passed every check, and what they compile to.
pub struct Compiled {
    pub tables: Tables,
    pub snapshot: Snapshot,
}

/// Check `src` and compile it. On failure, every error found, sorted by position.
pub fn compile(src: &Source, ctx: &Context) -> Result<Compiled, Diagnostics> {
    // Most texts decode on the fast path. One it does not take is read again
    // through the tree, which reports every error.
    let (tables, mut errors) = match fastde::tables(&src.text) {
        Some(tables) => (tables, Vec::new()),
        None => {
            let root = tree::parse(src).map_err(|d| Diagnostics(vec![d]))?;
            let (tables, errors) = de::decode_partial::<Tables>(src, &root, "");
            // Validate even what decoded only in part, so one run shows every error.
            (tables.unwrap_or_default(), errors)
        }
    };
    match validate::validate(src, &tables, ctx) {
        Ok(snapshot) if errors.is_empty() => return Ok(Compiled { tables, snapshot }),
        Ok(_) => {}
        Err(more) => errors.extend(more),
    }
    let mut d = Diagnostics(errors);
    d.sort();
    Err(d)
}

/// Read and compile a tables file; relative certificate paths resolve against its
/// directory.
pub fn compile_file(path: &Path, now: std::time::SystemTime) -> Result<Compiled, Diagnostics> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![crate::Diagnostic::whole_file(
            &name,
            format!("cannot read tables file: {e}"),
        )])
    })?;
    let src = Source::new(name, text);
    let ctx = Context {
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        now,
    };
    compile(&src, &ctx)
}
