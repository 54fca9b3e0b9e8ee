//! Compiles the XDP steering program (`bpf/steer.bpf.c`) into `$OUT_DIR/steer.bpf.o`,
//! which `src/xdp/steer.rs` embeds with `include_bytes!`.
//!
//! Needs clang with the BPF target (Debian: clang, llvm). The libbpf headers
//! (`bpf/bpf_helpers.h`, ...) come from the libbpf-sys build: a crate that depends
//! directly on a `links = "bpf"` crate gets its `include` path as `DEP_BPF_INCLUDE`.
//!
//! Also sets `XDPMESH_COMMIT` for `xdpmesh --version`: `$XDPMESH_COMMIT` when set (a build
//! from a tarball), else `git rev-parse --short HEAD` of the checkout, else "unknown commit";
//! `XDPMESH_COMMIT_SOURCE` (env | git | none) says which, for the tests.
//! The build script reruns when HEAD moves (a commit, checkout or reset), not when the work
//! tree changes: a version does not say whether the tree was dirty.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "bpf/steer.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    git_commit();

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("steer.bpf.o");
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());

    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    if let Some(inc) = env::var_os("DEP_BPF_INCLUDE") {
        cmd.arg("-I").arg(inc);
    }
    // <linux/types.h> pulls <asm/types.h>, which lives under the multiarch include
    // directory; with `-target bpf` clang does not search it by itself.
    if let Some(dir) = multiarch_include() {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-c").arg(SRC).arg("-o").arg(&obj);

    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => panic!(
            "cannot run `{clang}` to build the XDP program {SRC}: {e}\n\
             hint: apt-get install clang llvm (or set BPF_CLANG)"
        ),
    };
    assert!(
        status.success(),
        "`{clang}` failed to build {SRC} ({status}); command: {cmd:?}"
    );
}

/// `cargo:rustc-env=XDPMESH_COMMIT=...` and the files that change when HEAD moves.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=XDPMESH_COMMIT");
    if let Some(c) = env::var("XDPMESH_COMMIT").ok().filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=XDPMESH_COMMIT={c}");
        println!("cargo:rustc-env=XDPMESH_COMMIT_SOURCE=env");
        return;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    // HEAD itself (a checkout), the branch it names (a commit), packed refs, and HEAD's
    // reflog (every move of HEAD, also in a worktree). Paths that do not exist are not listed:
    // cargo would then rerun this script on every build.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".into(), "logs/HEAD".into()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for p in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &p]) {
            let path = PathBuf::from(path);
            if path.exists() {
                // --git-path is relative to the current directory (the package's).
                let abs = std::fs::canonicalize(&path).unwrap_or(path);
                println!("cargo:rerun-if-changed={}", abs.display());
            }
        }
    }
    let source = if commit.is_some() { "git" } else { "none" };
    let commit = commit.unwrap_or_else(|| "unknown commit".to_string());
    println!("cargo:rustc-env=XDPMESH_COMMIT={commit}");
    println!("cargo:rustc-env=XDPMESH_COMMIT_SOURCE={source}");
}

/// One line of `git ARGS` output in this package's directory; None when git is missing, this is
/// not a checkout, or git fails. `safe.directory=*`: a root build (sudo) of a user's checkout
/// may read its commit; git refuses other owners' repositories otherwise.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(["-c", "safe.directory=*"])
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (out.status.success() && !s.is_empty()).then(|| s.to_string())
}

fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        _ => return None,
    };
    let dir = PathBuf::from("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}
