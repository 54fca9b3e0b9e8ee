//! The `xdpmesh` binary's generated documentation: shell completions and man pages name every
//! subcommand `--help` lists, and `--version` names the commit the binary was built from.

use std::path::Path;
use std::process::Command;

fn xdpmesh(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(args)
        .output()
        .expect("run xdpmesh");
    assert!(
        out.status.success(),
        "xdpmesh {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The subcommands of `xdpmesh [SUB...] --help` (its "Commands:" block, without `help`).
fn subcommands(path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let help = xdpmesh(&args);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every subcommand, as a path: ["run"], ["ca"], ["ca", "init"], ...
fn all_subcommands() -> Vec<Vec<String>> {
    let mut all = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        for sub in subcommands(&p) {
            let mut next = path.clone();
            next.push(sub);
            all.push(next.clone());
            todo.push(next);
        }
    }
    all
}

#[test]
fn help_lists_the_subcommands_this_test_relies_on() {
    let all = all_subcommands();
    for want in [
        &["run"][..],
        &["check"],
        &["ca", "init"],
        &["ca", "issue"],
        &["import", "smi"],
        &["tables", "push"],
        &["tables", "history"],
        &["register"],
        &["completions"],
        &["man"],
    ] {
        assert!(
            all.iter().any(|p| p == want),
            "{want:?} not in --help: {all:?}"
        );
    }
}

#[test]
fn completions_name_every_subcommand() {
    let all = all_subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = xdpmesh(&["completions", shell]);
        assert!(script.len() > 500, "{shell}: {} bytes", script.len());
        for path in &all {
            let name = path.last().unwrap();
            assert!(script.contains(name.as_str()), "{shell} lacks {path:?}");
        }
        // Options too, e.g. run's --drain-timeout.
        assert!(
            script.contains("drain-timeout"),
            "{shell} lacks --drain-timeout"
        );
    }
}

#[test]
fn man_page_names_every_subcommand() {
    let page = xdpmesh(&["man"]);
    assert!(page.contains(".TH xdpmesh 1"), "no .TH line");
    for path in all_subcommands().iter().filter(|p| p.len() == 1) {
        assert!(page.contains(path[0].as_str()), "xdpmesh.1 lacks {path:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("man1");
    xdpmesh(&["man", "--out", d.to_str().unwrap()]);
    for path in all_subcommands() {
        let file = d.join(format!("xdpmesh-{}.1", path.join("-")));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(path.last().unwrap().as_str()),
            "{}",
            file.display()
        );
    }
    assert!(d.join("xdpmesh.1").is_file());
}

/// The commit the checkout is at, as build.rs reads it; None outside git.
fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args(["-c", "safe.directory=*", "rev-parse", "--short", "HEAD"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

#[test]
fn version_names_the_commit() {
    let v = xdpmesh(&["--version"]);
    let v = v.trim();
    let commit = env!("XDPMESH_COMMIT");
    assert_eq!(
        v,
        format!("xdpmesh {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
    // build.rs says where the commit came from: $XDPMESH_COMMIT, git, or neither.
    match env!("XDPMESH_COMMIT_SOURCE") {
        "git" => assert_eq!(Some(commit.to_string()), git_head(), "{v}"),
        "none" => assert_eq!(commit, "unknown commit"),
        src => assert_eq!(src, "env"),
    }
}
