//! Compiles the XDP steering program (`bpf/steer.bpf.c`) into `$OUT_DIR/steer.bpf.o`,
//! which `src/xdp/steer.rs` embeds with `include_bytes!`.
//!
//! Needs clang with the BPF target (Debian: clang, llvm). The libbpf headers
//! (`bpf/bpf_helpers.h`, ...) come from the libbpf-sys build: a crate that depends
//! directly on a `links = "bpf"` crate gets its `include` path as `DEP_BPF_INCLUDE`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "bpf/steer.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");

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
