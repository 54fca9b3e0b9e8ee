//! `xdpmesh check --system` against a real network namespace holding the rig's
//! gw-a interfaces (root; under CI=true it must run, elsewhere it skips when not root).

use std::path::Path;

use dataplane::netns::{skip_unless_root, NetNs};

#[test]
fn check_system_sees_the_namespaces_interfaces_and_queues() {
    if skip_unless_root("check_system_sees_the_namespaces_interfaces_and_queues") {
        return;
    }
    let ns = NetNs::create("hwc").expect("netns");
    // The names hw-config/examples/veth-rig-gwa.toml uses, one RX queue each.
    ns.exec_ok([
        "ip",
        "link",
        "add",
        "gwa-cli",
        "numrxqueues",
        "1",
        "type",
        "veth",
        "peer",
        "name",
        "gwa-gwb",
        "numrxqueues",
        "1",
    ])
    .expect("veth");
    let bin = env!("CARGO_BIN_EXE_xdpmesh");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hw-config/examples");
    let good = examples.join("veth-rig-gwa.toml");
    let run = |node: &Path| {
        let out = ns
            .exec([
                bin,
                "check",
                "--system",
                "--config",
                &node.display().to_string(),
            ])
            .expect("run xdpmesh");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&good);
    assert_eq!(code, Some(0), "{err}");

    // Queue 1 on a one-queue veth; an interface this namespace does not have.
    let text = std::fs::read_to_string(&good)
        .expect("example")
        .replace("queues = [0]", "queues = [0, 1]")
        .replace("cores = [0]", "cores = [0, 1]")
        .replacen("name = \"gwa-gwb\"", "name = \"gwa-gwc\"", 1)
        .replacen(
            "tables = \"rig-gwa-tables.toml\"",
            &format!(
                "tables = {:?}",
                examples.join("rig-gwa-tables.toml").display().to_string()
            ),
            1,
        );
    let bad = std::env::temp_dir().join(format!("xdpmesh-hwc-{}.toml", std::process::id()));
    std::fs::write(&bad, text).expect("write");
    let (code, err) = run(&bad);
    let _ = std::fs::remove_file(&bad);
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest))
        .collect();
    assert_eq!(
        lines,
        vec![
            "interface[0].queues[1]: queue 1 does not exist: gwa-cli has 1 rx queue (hint: use queue ids 0 to 0, or raise the count: ethtool -L gwa-cli combined N)",
            "interface[1].name: no interface \"gwa-gwc\" on this machine (hint: did you mean \"gwa-gwb\"?)",
            "2 errors",
        ],
        "{err}"
    );
}
