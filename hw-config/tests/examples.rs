//! Every example node file passes `xdpmesh check`'s checks: control's for `[node]`
//! and its tables, hw-config's for `[[interface]]` (machine checks off: the NICs are
//! not on this machine).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hw_config::SystemChecks;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && !p.to_string_lossy().ends_with("-tables.toml")
        })
        .collect();
    files.sort();
    files
}

fn check(path: &Path) -> hw_config::Report {
    let (node, _) = control::check::check_node(path, SystemTime::now())
        .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
    let report = hw_config::check(&node, SystemChecks::Off);
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors.is_empty(),
        "{}:\n{}",
        path.display(),
        errors.join("\n")
    );
    assert!(
        report.notes.is_empty(),
        "{}: {:?}",
        path.display(),
        report.notes
    );
    assert!(!report.interfaces.is_empty(), "{}", path.display());
    report
}

#[test]
fn every_example_checks() {
    let files = examples();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        [
            "intel-i40e.toml",
            "intel-ice.toml",
            "mlx5.toml",
            "veth-rig-gwa.toml",
            "veth-rig-gwb.toml"
        ]
    );
    for f in &files {
        check(f);
    }
}

#[test]
fn rig_examples_use_the_rigs_interfaces_and_addresses() {
    let rig =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rig.sh"))
            .expect("rig.sh");
    for (file, ns) in [
        ("veth-rig-gwa.toml", "xm-gwa"),
        ("veth-rig-gwb.toml", "xm-gwb"),
    ] {
        let r = check(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(file),
        );
        for i in &r.interfaces {
            // scripts/rig.sh XM_LINKS: "ns_a if_a addr_a ns_b if_b addr_b"
            let entry = format!("{ns} {} {}", i.name, i.addresses[0]);
            assert!(
                rig.contains(&entry),
                "{file}: {entry} is not in scripts/rig.sh"
            );
        }
    }
}
