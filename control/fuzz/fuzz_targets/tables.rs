//! Arbitrary bytes as a tables file through the path `xdpmesh check` and every reload
//! take (`control::compile`: parse, decode, validate, compile to a snapshot): no panic,
//! and every error points inside the text on one line. Tables that compile are also
//! looked up, rendered as `GET /tables` renders them, and read back as a node file.
#![no_main]

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use control::{Context, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Not UTF-8: a reload reports that before parsing; fuzz the longest valid prefix.
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default(),
    };
    let src = Source::new("fuzz.toml", text);
    // A fixed clock and a directory that does not exist: certificate checks fail the
    // same way on every run.
    let ctx = Context {
        base_dir: "/nonexistent".into(),
        now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    };
    let lines = text.split('\n').count();
    match control::compile(&src, &ctx) {
        Err(d) => {
            assert!(!d.is_empty(), "an error result without errors");
            for e in d.iter() {
                assert!(e.line >= 1 && e.line <= lines && e.col >= 1, "{e}");
                assert!(!e.to_string().contains('\n'), "multi-line error: {e:?}");
            }
        }
        Ok(c) => {
            let s = &c.snapshot;
            for svc in &s.services {
                for h in &svc.hosts {
                    let _ = s.route(h, "GET", "/a/b?c", &[("x-a", b"1".as_slice())][..]);
                    let _ = s.service_for_host(h);
                }
            }
            let _ = c.tables.to_toml();
        }
    }
    // The fast decoder takes only what the tree path decodes, and gives the same values
    // and spans.
    if let Some(d) = control::fastde::disagreement(text) {
        panic!("fast decoder disagrees:\n{d}");
    }
    let _ = control::node::parse(src, Path::new("/nonexistent"));
});
