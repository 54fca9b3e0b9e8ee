//! File watch: atomic renames and in-place edits reload; bad edits are refused and
//! reported; the conditions are awaited with deadlines, never slept on.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use control::{Publisher, TableStore};

const DEADLINE: Duration = Duration::from_secs(20);

fn tables(port: u16) -> String {
    format!("[[service]]\nname = \"s\"\nendpoints = [{{ address = \"10.0.0.1:{port}\" }}]\n")
}

fn rename_into_place(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

fn port(p: &Publisher) -> u16 {
    p.load().services[0].endpoints[0].address.port()
}

#[test]
fn reloads_on_rename_and_edit_and_keeps_good_tables_on_a_bad_edit() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, tables(1)).expect("write");
    let publisher = Arc::new(Publisher::new());
    let store = Arc::new(TableStore::new(&path, publisher.clone()));
    store.reload_file().expect("first load");
    let watch = control::watch::watch(store.clone(), Duration::from_millis(30)).expect("watch");

    rename_into_place(&path, &tables(2));
    assert!(
        publisher.wait_for(DEADLINE, |s| s.generation == 2),
        "{:?}",
        publisher.status()
    );
    assert_eq!(port(&publisher), 2);

    // A bad edit: refused, recorded, the good tables stay.
    rename_into_place(&path, "[[service]]\nname = 1\n");
    assert!(
        publisher.wait_for(DEADLINE, |s| s.reload_failures == 1),
        "{:?}",
        publisher.status()
    );
    let st = publisher.status();
    assert_eq!(st.generation, 2);
    assert_eq!(st.errors.len(), 1);
    assert_eq!(
        st.errors.0[0].message,
        "expected a string, found an integer"
    );
    assert_eq!(port(&publisher), 2);

    // An in-place edit (truncate and write) is seen too.
    std::fs::write(&path, tables(3)).expect("write");
    assert!(
        publisher.wait_for(DEADLINE, |s| s.generation == 3),
        "{:?}",
        publisher.status()
    );
    assert_eq!(port(&publisher), 3);

    // Other files in the directory do not trigger reloads: change one, then the
    // tables; only the tables change publishes (generation 4, not more).
    std::fs::write(dir.path().join("unrelated.txt"), "x").expect("write");
    rename_into_place(&path, &tables(4));
    assert!(
        publisher.wait_for(DEADLINE, |s| s.generation == 4),
        "{:?}",
        publisher.status()
    );
    assert_eq!(publisher.status().reload_failures, 1);

    watch.stop();
}

#[test]
fn a_burst_of_writes_is_debounced_into_few_reloads_ending_at_the_last() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, tables(1)).expect("write");
    let publisher = Arc::new(Publisher::new());
    let store = Arc::new(TableStore::new(&path, publisher.clone()));
    store.reload_file().expect("first load");
    let _watch = control::watch::watch(store, Duration::from_millis(200)).expect("watch");
    for p in 10..60 {
        rename_into_place(&path, &tables(p));
    }
    assert!(
        publisher.wait_for(DEADLINE, |_| port(&publisher) == 59),
        "{:?}",
        publisher.status()
    );
    let reloads = publisher.status().reloads;
    assert!(
        reloads < 50,
        "50 writes gave {reloads} reloads: not debounced"
    );
}

#[test]
fn control_plane_starts_from_a_node_file_serves_and_follows_the_file() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tmp");
    let node_path = dir.path().join("node.toml");
    std::fs::write(&node_path, "[node]\nname = \"n\"\ntables = \"tables.toml\"\nadmin = \"127.0.0.1:0\"\n[[interface]]\nname = \"eth1\"\n")
        .expect("write");
    std::fs::write(dir.path().join("tables.toml"), tables(1)).expect("write");
    let node = control::node::load(&node_path).expect("node");
    let plane = control::ControlPlane::start(&node, None).expect("start");
    let mut s = std::net::TcpStream::connect(plane.admin.local_addr()).expect("connect");
    s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    rename_into_place(&dir.path().join("tables.toml"), &tables(2));
    assert!(
        plane.publisher.wait_for(DEADLINE, |s| s.generation == 2),
        "{:?}",
        plane.publisher.status()
    );

    // Bad tables: refuse to start.
    std::fs::write(dir.path().join("tables.toml"), "[[service]]\n").expect("write");
    match control::ControlPlane::start(&node, None) {
        Err(control::plane::StartError::Tables(d)) => assert_eq!(d.len(), 1),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with bad tables"),
    }
}
