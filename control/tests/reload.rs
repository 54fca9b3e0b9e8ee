//! Publishing: whole snapshots only, bad input never replaces good tables, and
//! retired snapshots are freed off the readers' path.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use control::{Context, Publisher, Source, TableStore};

/// Tables where three places must agree on `k`: the endpoint port, its label,
/// and the header value the route matches.
fn tables_for(k: u32) -> String {
    format!(
        "[[service]]\nname = \"svc\"\nendpoints = [{{ address = \"10.0.0.1:{port}\", labels = {{ gen = \"{k}\" }} }}, {{ address = \"10.0.0.2:80\", labels = {{ gen = \"other\" }} }}]\n\
         [[route]]\nname = \"r{k}\"\nservice = \"svc\"\nmatch = {{ headers = {{ x-gen = \"{k}\" }} }}\nbackends = [{{ labels = {{ gen = \"{k}\" }} }}]\n",
        port = 10_000 + k
    )
}

fn compile(k: u32) -> control::Snapshot {
    let src = Source::new("t.toml", tables_for(k));
    control::compile(&src, &Context::new("."))
        .expect("valid")
        .snapshot
}

#[test]
fn readers_never_see_a_half_updated_table_over_1000_reloads() {
    let publisher = Arc::new(Publisher::new());
    publisher.publish(compile(0), "".into(), "test");
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (p, done) = (publisher.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last_gen = 0;
                let mut checks = 0u64;
                let mut gens_seen = 0u64;
                while !done.load(Ordering::Acquire) {
                    let snap = p.load();
                    assert!(snap.generation >= last_gen, "generation went back");
                    if snap.generation != last_gen {
                        gens_seen += 1;
                    }
                    last_gen = snap.generation;
                    // The route names its k; the header it matches, the endpoint it
                    // selects and that endpoint's port must all say the same k.
                    let route = &snap.routes[0];
                    let k: u32 = route
                        .name
                        .as_deref()
                        .and_then(|n| n[1..].parse().ok())
                        .expect("route name");
                    let want = k.to_string();
                    let hdr: &[(&str, &[u8])] = &[("x-gen", want.as_bytes())];
                    let hit = snap.route("svc", "GET", "/", hdr).expect("route hit");
                    assert_eq!(hit.id, Some(0));
                    let b = hit.route.pick(checks).expect("backend");
                    let ep = &snap.services[b.service as usize].endpoints[b.endpoints[0] as usize];
                    assert_eq!(
                        ep.address.port() as u32,
                        10_000 + k,
                        "endpoint from another table"
                    );
                    assert_eq!(ep.labels.get("gen"), Some(want.as_str()));
                    checks += 1;
                }
                (checks, gens_seen)
            })
        })
        .collect();
    for k in 1..=1000 {
        let generation = publisher.publish(compile(k), "".into(), "test");
        assert_eq!(generation, u64::from(k) + 1);
    }
    done.store(true, Ordering::Release);
    for r in readers {
        let (checks, gens) = r.join().expect("reader panicked");
        assert!(
            checks > 0 && gens > 0,
            "reader did no work: {checks} checks, {gens} generations"
        );
    }
    assert_eq!(publisher.load().generation, 1001);
    // Nobody holds old snapshots any more: all are freed.
    assert_eq!(publisher.reclaim(), 0);
}

#[test]
fn a_reader_keeps_its_generation_and_its_snapshot_outlives_the_swap() {
    let publisher = Publisher::new();
    publisher.publish(compile(1), "".into(), "test");
    let held = publisher.load();
    publisher.publish(compile(2), "".into(), "test");
    assert_eq!(held.generation, 1);
    assert_eq!(held.routes[0].name.as_deref(), Some("r1"));
    assert_eq!(publisher.load().generation, 2);
    // The retired snapshot stays (and is not freed by the reader's drop) while held.
    assert_eq!(publisher.reclaim(), 1);
    drop(held);
    assert_eq!(publisher.reclaim(), 0);
}

#[test]
fn a_bad_file_or_bad_put_never_replaces_good_tables() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, tables_for(7)).expect("write");
    let store = TableStore::new(&path, Arc::new(Publisher::new()));
    assert_eq!(store.reload_file().expect("good"), 1);

    std::fs::write(
        &path,
        "[[service]]\nname = \"svc\"\nendpoints = [{ address = \"nope\" }]\n",
    )
    .expect("write");
    let errs = store.reload_file().expect_err("bad file");
    assert_eq!(errs.len(), 1);
    let st = store.publisher().status();
    assert_eq!(
        (st.generation, st.reload_failures, st.last_ok),
        (1, 1, false)
    );
    assert_eq!(st.errors, errs);
    assert_eq!(
        store.publisher().load().routes[0].name.as_deref(),
        Some("r7")
    );
    assert_eq!(&*st.source, tables_for(7));

    std::fs::write(&path, tables_for(7)).expect("restore");
    let errs = match store.put("[[route]]\nservice = \"missing\"\n") {
        Err(control::store::PutError::Invalid(d)) => d,
        other => panic!("expected invalid, got {other:?}"),
    };
    assert_eq!(
        errs.to_string(),
        "PUT/tables:2:11: route[0].service: unknown service \"missing\" (hint: define it in a [[service]] table)\n"
    );
    let st = store.publisher().status();
    assert_eq!((st.generation, st.reload_failures), (1, 2));
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        tables_for(7),
        "bad PUT touched the file"
    );

    // Unreadable file: also kept.
    std::fs::remove_file(&path).expect("rm");
    assert!(store.reload_file().is_err());
    assert_eq!(store.publisher().load().generation, 1);
}

#[test]
fn put_writes_the_file_and_its_own_file_event_does_not_publish_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, tables_for(1)).expect("write");
    let store = TableStore::new(&path, Arc::new(Publisher::new()));
    store.reload_file().expect("good");
    assert_eq!(store.put(&tables_for(2)).expect("put"), 2);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), tables_for(2));
    // What the watcher does on the rename event:
    assert_eq!(store.reload_file().expect("echo"), 2);
    assert_eq!(store.publisher().status().reloads, 2);
    // A later change of the file is a real reload again.
    std::fs::write(&path, tables_for(3)).expect("write");
    assert_eq!(store.reload_file().expect("change"), 3);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tables.toml")]);
}
