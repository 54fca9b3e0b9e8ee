//! Every hw-config error: its exact message, key, hint and position in the node file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hw_config::{Bind, Poll, Report, Steer, System, SystemChecks, XdpMode, DEFAULT_SPIN, MAX_MTU};

const HEAD: &str = "[node]\nname = \"n\"\ntables = \"t.toml\"\n";

/// The real sysfs, with a fixed CPU count so the messages do not depend on the machine.
fn sys() -> System {
    System {
        net_dir: PathBuf::from("/sys/class/net"),
        cpus: 2,
    }
}

fn report(interfaces: &str, checks: SystemChecks) -> Report {
    let src = control::Source::new("n.toml", format!("{HEAD}{interfaces}"));
    let node = control::node::parse(src, Path::new("."))
        .unwrap_or_else(|e| panic!("[node] part must be good: {e}"));
    hw_config::check_trees(&node.source, &node.interfaces, checks, &sys())
}

fn errors(interfaces: &str) -> Vec<String> {
    errors_with(interfaces, SystemChecks::Off)
}

fn errors_with(interfaces: &str, checks: SystemChecks) -> Vec<String> {
    report(interfaces, checks)
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[track_caller]
fn one(interfaces: &str, expected: &str) {
    assert_eq!(
        errors(interfaces),
        vec![expected.to_owned()],
        "for:\n{interfaces}"
    );
}

#[test]
fn a_good_interface_decodes_with_defaults() {
    let r = report(
        "[[interface]]\nname = \"eth1\"\naddress = \"10.10.1.1/24\"\nqueues = [0, 1]\ncores = [0, 1]\n",
        SystemChecks::Off,
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.notes.is_empty());
    let i = &r.interfaces[0];
    assert_eq!(i.name, "eth1");
    assert_eq!(i.addresses, vec!["10.10.1.1/24".parse().expect("cidr")]);
    assert_eq!(i.xdp_mode, XdpMode::Native);
    assert_eq!(i.bind, Bind::Copy);
    assert_eq!((i.poll, i.spin), (Poll::Adaptive, DEFAULT_SPIN));
    assert_eq!(i.steer, Steer::Owned);
    assert_eq!(
        (i.queues.clone(), i.cores.clone()),
        (vec![0, 1], vec![0, 1])
    );
    assert_eq!((i.mtu, i.next_hop, i.rss_key.clone()), (None, None, None));
}

#[test]
fn every_key_decodes() {
    let key = ["6d"; 40].join(":");
    let r = report(
        &format!(
            "[[interface]]\nname = \"eth1\"\naddress = [\"10.10.1.1/24\", \"10.10.9.1/24\"]\nnext_hop = \"10.10.9.254\"\nxdp_mode = \"native\"\nbind = \"zero-copy\"\nqueues = [3]\ncores = [1]\nmtu = {MAX_MTU}\nrss_key = \"{key}\"\npoll = \"busy\"\nsteer = \"dedicated\"\n"
        ),
        SystemChecks::Off,
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let i = &r.interfaces[0];
    assert_eq!(i.addresses.len(), 2);
    assert_eq!(i.next_hop, Some("10.10.9.254".parse().expect("ip")));
    assert_eq!(i.bind, Bind::ZeroCopy);
    assert_eq!(i.mtu, Some(3826));
    assert_eq!(i.rss_key.as_deref(), Some(&[0x6d; 40][..]));
    assert_eq!((i.poll, i.steer), (Poll::Busy, Steer::Dedicated));
    assert_eq!(i.spin, Duration::MAX, "a busy worker never sleeps");
}

#[test]
fn spin_sets_the_adaptive_window_and_nothing_else() {
    let r = report(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nspin = \"2ms\"\n"),
        SystemChecks::Off,
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.interfaces[0].spin, Duration::from_millis(2));
    // poll = "answers" takes the same ceiling, with the same default; 0us is interrupt-driven.
    for (extra, spin) in [("", DEFAULT_SPIN), ("spin = \"0us\"\n", Duration::ZERO)] {
        let r = report(
            &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\npoll = \"answers\"\n{extra}"),
            SystemChecks::Off,
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            (r.interfaces[0].poll, r.interfaces[0].spin),
            (Poll::Answers, spin)
        );
    }
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nspin = \"2 fortnights\"\n"),
        "n.toml:9:8: interface[0].spin: \"2 fortnights\" is not a duration: unknown time unit \"fortnights\", supported units: ns, us/\u{b5}s, ms, sec, min, hours, days, weeks, months, years (and few variations) (hint: e.g. \"200us\" or \"2ms\")",
    );
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nspin = \"2s\"\n"),
        "n.toml:9:8: interface[0].spin: spin \"2s\" is above 1s (hint: use poll = \"busy\" for a worker that never sleeps)",
    );
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\npoll = \"busy\"\nspin = \"2ms\"\n"),
        "n.toml:10:8: interface[0].spin: spin applies to poll = \"adaptive\" and \"answers\"; a busy worker never sleeps (hint: remove spin, or set poll = \"adaptive\")",
    );
}

const GOOD: &str = "name = \"eth1\"\naddress = \"10.10.1.1/24\"\n";

#[test]
fn missing_and_unknown_keys() {
    one(
        "[[interface]]\nname = \"eth1\"\naddress = \"10.10.1.1/24\"\nqueues = [0]\n",
        "n.toml:4:1: interface[0].cores: missing required key \"cores\" (hint: add cores = ...)",
    );
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nqueue = [1]\n"),
        "n.toml:9:1: interface[0].queue: unknown key \"queue\" (hint: did you mean \"queues\"?)",
    );
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\npoll = \"bussy\"\n"),
        "n.toml:9:8: interface[0].poll: unknown value \"bussy\" (hint: did you mean \"busy\"?)",
    );
}

#[test]
fn queues_and_cores_length_mismatch() {
    one(
        &format!("[[interface]]\n{GOOD}queues = [0, 1, 2]\ncores = [0, 1]\n"),
        "n.toml:8:9: interface[0].cores: 2 cores for 3 queues (hint: one core per queue, in the same order: the worker for queues[i] runs on cores[i])",
    );
}

#[test]
fn a_core_used_twice_on_one_interface_or_missing_on_another() {
    one(
        &format!("[[interface]]\n{GOOD}queues = [0, 1]\ncores = [1, 1]\n"),
        "n.toml:8:13: interface[0].cores[1]: core 1 is already used by interface[0].cores[0] (eth1 queue 0) (hint: each worker needs a core of its own: pick another core)",
    );
    one(
        &format!(
            "[[interface]]\n{GOOD}queues = [0, 1]\ncores = [0, 1]\n[[interface]]\nname = \"eth2\"\naddress = \"10.10.2.1/24\"\nqueues = [0]\ncores = [1]\n"
        ),
        "n.toml:13:9: interface[1].cores: cores [1] differ from interface[0].cores [0, 1] (hint: each worker (core) serves one queue of every interface, so a connection and its upstream stay on one core: list the same cores on every interface)",
    );
}

#[test]
fn interfaces_share_their_workers_cores() {
    let e = errors(&format!(
        "[[interface]]\n{GOOD}queues = [0, 1]\ncores = [0, 1]\n[[interface]]\nname = \"eth2\"\naddress = \"10.10.2.1/24\"\nqueues = [3, 2]\ncores = [1, 0]\n"
    ));
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn a_queue_used_twice() {
    one(
        &format!("[[interface]]\n{GOOD}queues = [2, 2]\ncores = [0, 1]\n"),
        "n.toml:7:14: interface[0].queues[1]: queue 2 is listed twice (hint: one worker per queue: remove the duplicate)",
    );
    one(
        &format!("[[interface]]\n{GOOD}queues = []\ncores = []\n"),
        "n.toml:7:10: interface[0].queues: no queues (hint: list at least one queue id, e.g. queues = [0])",
    );
}

#[test]
fn mtu_above_the_frame_limit_or_below_ipv4s_minimum() {
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nmtu = 9000\n"),
        "n.toml:9:7: interface[0].mtu: mtu 9000 is above 3826, the most one 4096-byte UMEM frame holds (hint: set mtu = 3826 or less (4096 frame - 256 XDP headroom - 14 Ethernet header))",
    );
    assert!(errors(&format!(
        "[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nmtu = 3826\n"
    ))
    .is_empty());
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nmtu = 67\n"),
        "n.toml:9:7: interface[0].mtu: mtu 67 is below 68, the IPv4 minimum (hint: RFC 791: every IPv4 link carries 68-byte datagrams)",
    );
}

#[test]
fn an_interface_named_twice() {
    one(
        &format!(
            "[[interface]]\n{GOOD}queues = [0]\ncores = [0]\n[[interface]]\n{GOOD}queues = [1]\ncores = [0]\n"
        ),
        "n.toml:10:8: interface[1].name: interface \"eth1\" is already described at line 5 (hint: merge the two [[interface]] tables)",
    );
}

#[test]
fn bad_addresses() {
    one(
        "[[interface]]\nname = \"eth1\"\naddress = \"10.10.1.1\"\nqueues = [0]\ncores = [0]\n",
        "n.toml:6:11: interface[0].address: \"10.10.1.1\" is not an IPv4 CIDR (hint: write ADDRESS/PREFIX, e.g. \"10.10.1.1/24\")",
    );
    one(
        "[[interface]]\nname = \"eth1\"\naddress = [\"10.10.1.1/24\", \"10.10.300.1/24\"]\nqueues = [0]\ncores = [0]\n",
        "n.toml:6:28: interface[0].address[1]: \"10.10.300.1/24\" is not an IPv4 CIDR (hint: write ADDRESS/PREFIX, e.g. \"10.10.1.1/24\")",
    );
    one(
        "[[interface]]\nname = \"eth1\"\naddress = \"fd00::1/64\"\nqueues = [0]\ncores = [0]\n",
        "n.toml:6:11: interface[0].address: \"fd00::1/64\" is IPv6; the data plane speaks IPv4 only (hint: use an IPv4 address/prefix)",
    );
    one(
        "[[interface]]\nname = \"eth1\"\naddress = []\nqueues = [0]\ncores = [0]\n",
        "n.toml:6:11: interface[0].address: no address (hint: give at least one, e.g. address = \"10.10.1.1/24\")",
    );
    one(
        "[[interface]]\nname = \"eth1\"\naddress = 5\nqueues = [0]\ncores = [0]\n",
        "n.toml:6:11: interface[0].address: expected a CIDR string or an array of them, found integer 5",
    );
}

#[test]
fn generic_mode_is_a_note_not_an_error() {
    let r = report(
        &format!("[[interface]]\n{GOOD}xdp_mode = \"generic\"\nqueues = [0]\ncores = [0]\n"),
        SystemChecks::Off,
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.interfaces[0].xdp_mode, XdpMode::Generic);
    let notes: Vec<String> = r.notes.iter().map(ToString::to_string).collect();
    assert_eq!(
        notes,
        vec!["n.toml:7:12: interface[0].xdp_mode: generic XDP drops GSO super-packets (hint: use native where the driver supports XDP; on generic, turn off GRO/GSO: ethtool -K eth1 gro off gso off)"]
    );
}

#[test]
fn rss_key_wrong_length_or_not_hex() {
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nrss_key = \"6d5a\"\n"),
        "n.toml:9:11: interface[0].rss_key: rss_key is 2 bytes, not 40 or 52 (hint: mlx5 takes 40 bytes, i40e and ice 52; `ethtool -x NAME` shows the NIC's)",
    );
    one(
        &format!("[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nrss_key = \"6g:5a\"\n"),
        "n.toml:9:11: interface[0].rss_key: rss_key is not hex (hint: write bytes as hex, optionally colon-separated, as `ethtool -x` prints them)",
    );
    let key52 = "ab".repeat(52);
    assert!(errors(&format!(
        "[[interface]]\n{GOOD}queues = [0]\ncores = [0]\nrss_key = \"{key52}\"\n"
    ))
    .is_empty());
}

#[test]
fn next_hop_outside_every_subnet_or_not_an_address() {
    one(
        &format!("[[interface]]\n{GOOD}next_hop = \"10.10.2.1\"\nqueues = [0]\ncores = [0]\n"),
        "n.toml:7:12: interface[0].next_hop: next hop 10.10.2.1 is outside every interface subnet (10.10.1.0/24) (hint: a gateway must be on-link: pick an address in one of these subnets)",
    );
    // On another interface's subnet is fine.
    assert!(errors(&format!(
        "[[interface]]\n{GOOD}next_hop = \"10.10.2.9\"\nqueues = [0]\ncores = [0]\n[[interface]]\nname = \"eth2\"\naddress = \"10.10.2.1/24\"\nqueues = [0]\ncores = [0]\n"
    ))
    .is_empty());
    one(
        &format!("[[interface]]\n{GOOD}next_hop = \"gw\"\nqueues = [0]\ncores = [0]\n"),
        "n.toml:7:12: interface[0].next_hop: \"gw\" is not an IPv4 address (hint: e.g. next_hop = \"10.10.1.254\")",
    );
}

#[test]
fn unknown_interface_only_when_required() {
    let text =
        "[[interface]]\nname = \"lo0\"\naddress = \"127.0.0.1/8\"\nqueues = [0]\ncores = [0]\n";
    assert!(errors_with(text, SystemChecks::IfPresent).is_empty());
    assert_eq!(
        errors_with(text, SystemChecks::Required),
        vec!["n.toml:5:8: interface[0].name: no interface \"lo0\" on this machine (hint: did you mean \"lo\"?)"]
    );
}

#[test]
fn queue_beyond_the_interfaces_rx_queues() {
    // Loopback exists everywhere and has one RX queue.
    let text = "[[interface]]\nname = \"lo\"\naddress = \"127.0.0.1/8\"\nqueues = [0, 1]\ncores = [0, 1]\n";
    assert!(errors_with(text, SystemChecks::Off).is_empty());
    assert_eq!(
        errors_with(text, SystemChecks::IfPresent),
        vec!["n.toml:7:14: interface[0].queues[1]: queue 1 does not exist: lo has 1 rx queue (hint: use queue ids 0 to 0, or raise the count: ethtool -L lo combined N)"]
    );
}

#[test]
fn core_beyond_the_cpus() {
    let text =
        "[[interface]]\nname = \"lo\"\naddress = \"127.0.0.1/8\"\nqueues = [0]\ncores = [2]\n";
    assert_eq!(
        errors_with(text, SystemChecks::Required),
        vec!["n.toml:8:10: interface[0].cores[0]: core 2 does not exist: this machine has 2 CPUs (hint: pick cores 0 to 1)"]
    );
    // A NIC that is not here: its cores belong to another machine.
    let away =
        "[[interface]]\nname = \"eth9\"\naddress = \"10.0.0.1/8\"\nqueues = [0]\ncores = [7]\n";
    assert!(errors_with(away, SystemChecks::IfPresent).is_empty());
}

#[test]
fn errors_of_several_interfaces_come_in_file_order() {
    let e = errors(
        "[[interface]]\nname = \"a\"\naddress = \"x\"\nqueues = [0]\ncores = [0]\nmtu = 1\n[[interface]]\nname = \"b\"\naddress = \"10.0.0.1/8\"\nqueues = [0]\ncores = [0, 1]\n",
    );
    let lines: Vec<&str> = e.iter().map(|l| &l[..l.find(": ").unwrap_or(0)]).collect();
    assert_eq!(
        lines,
        vec!["n.toml:6:11", "n.toml:9:7", "n.toml:14:9", "n.toml:14:9"]
    );
}
