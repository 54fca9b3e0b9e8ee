//! Helpers shared by the control tests: certificates made with rcgen, temp dirs,
//! compiling text.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control::{Context, Diagnostics, Source};
use rcgen::{CertificateParams, KeyPair, SanType};

/// Write a self-signed certificate for `spiffe_id` and its key under `dir`
/// (`cert.pem`, `key.pem`), valid from `from` to `until` (year, month, day).
pub fn write_cert(
    dir: &Path,
    spiffe_id: &str,
    from: (i32, u8, u8),
    until: (i32, u8, u8),
) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let key = KeyPair::generate().expect("keygen");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("ia5"))];
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let cert = params.self_signed(&key).expect("self-sign");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c, k)
}

/// A currently valid certificate (2020 – 2999).
pub fn write_good_cert(dir: &Path, spiffe_id: &str) -> (PathBuf, PathBuf) {
    write_cert(dir, spiffe_id, (2020, 1, 1), (2999, 1, 1))
}

/// Compile `text` as `t.toml` with certificate paths relative to `base`.
pub fn compile_in(base: &Path, text: &str) -> Result<control::Compiled, Diagnostics> {
    let src = Source::new("t.toml", text);
    control::compile(&src, &Context::new(base))
}

/// The error lines for `text`, or a panic if it compiles.
pub fn errors_in(base: &Path, text: &str) -> Vec<String> {
    match compile_in(base, text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

pub fn errors(text: &str) -> Vec<String> {
    errors_in(Path::new("."), text)
}

/// Poll `cond` until it holds or `timeout` passes; returns whether it held.
/// (A deadline, not a sleep: the condition is what the test waits for.)
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(5));
    }
    cond()
}
