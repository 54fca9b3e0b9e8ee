//! `xdpmesh completions SHELL` and `xdpmesh man` (a module of the binary): shell completions
//! (clap_complete) and man pages (clap_mangen), both generated from the clap definitions in
//! `main.rs`, so they list exactly the subcommands and options this build has.

use super::{Cli, FAILED, OK};
use clap::{Args, CommandFactory};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Args)]
pub(crate) struct ManArgs {
    /// Write xdpmesh.1 and one page per subcommand (xdpmesh-run.1, xdpmesh-ca-init.1, ...) into
    /// this directory instead of printing xdpmesh.1 to stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The completion script for `a.shell` on `out`.
pub(crate) fn completions(a: &CompletionsArgs, out: &mut dyn Write) -> u8 {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "xdpmesh", out);
    OK
}

/// xdpmesh.1 on `out`, or every page into `a.out`.
pub(crate) fn man(a: &ManArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let cmd = Cli::command();
    let r = match &a.out {
        None => clap_mangen::Man::new(cmd).render(out),
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map(|()| {
                let _ = writeln!(out, "man pages written to {}", dir.display());
            }),
    };
    match r {
        Ok(()) => OK,
        Err(e) => {
            let where_ = a
                .out
                .as_ref()
                .map_or("stdout".into(), |d| d.display().to_string());
            let _ = writeln!(err, "error: cannot write the man page to {where_}: {e}");
            FAILED
        }
    }
}
