//! Checks across the decoded `[[interface]]` tables, and against the machine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use control::diag::did_you_mean;
use control::{Diagnostic, Source, Span};
use ipnet::{IpNet, Ipv4Net};

use crate::{
    Interface, Poll, RawInterface, Report, System, SystemChecks, XdpMode, DEFAULT_SPIN, MAX_MTU,
    MAX_SPIN, MIN_MTU,
};

/// RSS key sizes NICs take: 40 bytes (Microsoft's Toeplitz key, mlx5) and 52
/// (Intel i40e/ice: 40 + 12 extended bytes).
const RSS_KEY_LENS: [usize; 2] = [40, 52];

pub(crate) fn validate(
    src: &Source,
    raws: &[(usize, RawInterface)],
    checks: SystemChecks,
    sys: &System,
    report: &mut Report,
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    // The workers: the cores of the first interface, which every interface must list too.
    let mut workers: Option<(String, Vec<u32>)> = None;
    let mut subnets: Vec<Ipv4Net> = Vec::new();
    let mut checked: Vec<(usize, Option<Interface>)> = Vec::new();

    for (i, raw) in raws {
        let k = format!("interface[{i}]");
        let start = report.errors.len();
        let err = |span: &Span, key: String, msg: String, hint: String| {
            Diagnostic::at(src, span, key, msg).hint(hint)
        };
        let name = raw.name.value.as_str();

        if let Some(first) = names.get(name) {
            let (line, _) = src.line_col(*first);
            report.errors.push(err(
                &raw.name.span,
                format!("{k}.name"),
                format!("interface \"{name}\" is already described at line {line}"),
                "merge the two [[interface]] tables".into(),
            ));
        } else {
            names.insert(name, raw.name.span.start);
        }
        if name.is_empty() {
            report.errors.push(err(
                &raw.name.span,
                format!("{k}.name"),
                "name is empty".into(),
                "the interface's name, as `ip link` shows it".into(),
            ));
        }

        // Addresses
        let mut addresses = Vec::new();
        let list = &raw.address.value.0;
        if list.is_empty() {
            report.errors.push(err(
                &raw.address.span,
                format!("{k}.address"),
                "no address".into(),
                "give at least one, e.g. address = \"10.10.1.1/24\"".into(),
            ));
        }
        let single = list.len() == 1 && list[0].span == (0..0);
        for (j, a) in list.iter().enumerate() {
            let (span, key) = if single {
                (&raw.address.span, format!("{k}.address"))
            } else {
                (&a.span, format!("{k}.address[{j}]"))
            };
            match a.value.parse::<IpNet>() {
                Ok(IpNet::V4(net)) => {
                    addresses.push(net);
                    subnets.push(net.trunc());
                }
                Ok(IpNet::V6(_)) => report.errors.push(err(
                    span,
                    key,
                    format!("\"{}\" is IPv6; the data plane speaks IPv4 only", a.value),
                    "use an IPv4 address/prefix".into(),
                )),
                Err(_) => report.errors.push(err(
                    span,
                    key,
                    format!("\"{}\" is not an IPv4 CIDR", a.value),
                    "write ADDRESS/PREFIX, e.g. \"10.10.1.1/24\"".into(),
                )),
            }
        }

        // Queues and cores
        let queues = &raw.queues.value;
        let core_list = &raw.cores.value;
        if queues.is_empty() {
            report.errors.push(err(
                &raw.queues.span,
                format!("{k}.queues"),
                "no queues".into(),
                "list at least one queue id, e.g. queues = [0]".into(),
            ));
        }
        if queues.len() != core_list.len() {
            report.errors.push(err(
                &raw.cores.span,
                format!("{k}.cores"),
                format!("{} cores for {} queues", core_list.len(), queues.len()),
                "one core per queue, in the same order: the worker for queues[i] runs on cores[i]"
                    .into(),
            ));
        }
        for (j, q) in queues.iter().enumerate() {
            if queues[..j].iter().any(|p| p.value == q.value) {
                report.errors.push(err(
                    &q.span,
                    format!("{k}.queues[{j}]"),
                    format!("queue {} is listed twice", q.value),
                    "one worker per queue: remove the duplicate".into(),
                ));
            }
        }
        // One worker per core; each worker serves one queue of every interface, so a
        // proxied connection and its upstream (often on another interface) stay on one core.
        for (j, c) in core_list.iter().enumerate() {
            if let Some(f) = core_list[..j].iter().position(|p| p.value == c.value) {
                let queue = queues.get(f).map_or(0, |q| q.value);
                report.errors.push(err(
                    &c.span,
                    format!("{k}.cores[{j}]"),
                    format!(
                        "core {} is already used by {k}.cores[{f}] ({name} queue {queue})",
                        c.value
                    ),
                    "each worker needs a core of its own: pick another core".into(),
                ));
            }
        }
        let mine: Vec<u32> = core_list.iter().map(|c| c.value).collect();
        match &workers {
            None => workers = Some((k.clone(), mine)),
            Some((first, cores)) => {
                let mut a = cores.clone();
                let mut b = mine.clone();
                a.sort_unstable();
                b.sort_unstable();
                if a != b {
                    report.errors.push(err(
                        &raw.cores.span,
                        format!("{k}.cores"),
                        format!("cores {mine:?} differ from {first}.cores {cores:?}"),
                        "each worker (core) serves one queue of every interface, so a connection and its upstream stay on one core: list the same cores on every interface".into(),
                    ));
                }
            }
        }

        // MTU
        if let Some(m) = &raw.mtu {
            if m.value > MAX_MTU {
                report.errors.push(err(
                    &m.span,
                    format!("{k}.mtu"),
                    format!(
                        "mtu {} is above {MAX_MTU}, the most one 4096-byte UMEM frame holds",
                        m.value
                    ),
                    format!(
                        "set mtu = {MAX_MTU} or less (4096 frame - 256 XDP headroom - 14 Ethernet header)"
                    ),
                ));
            } else if m.value < MIN_MTU {
                report.errors.push(err(
                    &m.span,
                    format!("{k}.mtu"),
                    format!("mtu {} is below {MIN_MTU}, the IPv4 minimum", m.value),
                    "RFC 791: every IPv4 link carries 68-byte datagrams".into(),
                ));
            }
        }

        // Polling
        let mut spin = match raw.poll {
            Poll::Adaptive | Poll::Answers => DEFAULT_SPIN,
            Poll::Busy => Duration::MAX,
        };
        if let Some(sp) = &raw.spin {
            match (raw.poll, humantime::parse_duration(&sp.value)) {
                (Poll::Busy, _) => report.errors.push(err(
                    &sp.span,
                    format!("{k}.spin"),
                    "spin applies to poll = \"adaptive\" and \"answers\"; a busy worker never sleeps".into(),
                    "remove spin, or set poll = \"adaptive\"".into(),
                )),
                (Poll::Adaptive | Poll::Answers, Ok(d)) if d <= MAX_SPIN => spin = d,
                (Poll::Adaptive | Poll::Answers, Ok(_)) => report.errors.push(err(
                    &sp.span,
                    format!("{k}.spin"),
                    format!(
                        "spin {:?} is above {}",
                        sp.value,
                        humantime::format_duration(MAX_SPIN)
                    ),
                    "use poll = \"busy\" for a worker that never sleeps".into(),
                )),
                (Poll::Adaptive | Poll::Answers, Err(e)) => report.errors.push(err(
                    &sp.span,
                    format!("{k}.spin"),
                    format!("{:?} is not a duration: {e}", sp.value),
                    "e.g. \"200us\" or \"2ms\"".into(),
                )),
            }
        }

        // RSS key
        let mut rss_key = None;
        if let Some(key) = &raw.rss_key {
            match parse_hex(&key.value) {
                None => report.errors.push(err(
                    &key.span,
                    format!("{k}.rss_key"),
                    "rss_key is not hex".into(),
                    "write bytes as hex, optionally colon-separated, as `ethtool -x` prints them"
                        .into(),
                )),
                Some(bytes) if !RSS_KEY_LENS.contains(&bytes.len()) => report.errors.push(err(
                    &key.span,
                    format!("{k}.rss_key"),
                    format!("rss_key is {} bytes, not 40 or 52", bytes.len()),
                    "mlx5 takes 40 bytes, i40e and ice 52; `ethtool -x NAME` shows the NIC's"
                        .into(),
                )),
                Some(bytes) => rss_key = Some(bytes),
            }
        }

        // generic XDP: allowed, but say what it costs.
        if let Some(mode) = &raw.xdp_mode {
            if mode.value == XdpMode::Generic {
                report.notes.push(
                    Diagnostic::at(
                        src,
                        &mode.span,
                        format!("{k}.xdp_mode"),
                        "generic XDP drops GSO super-packets",
                    )
                    .hint(format!(
                        "use native where the driver supports XDP; on generic, turn off GRO/GSO: ethtool -K {name} gro off gso off"
                    )),
                );
            }
        }

        // Against the machine
        let present = sys.has_interface(name);
        if checks == SystemChecks::Required && !present && !name.is_empty() {
            let here = sys.interfaces();
            let hint = did_you_mean(name, here.iter().map(String::as_str))
                .unwrap_or_else(|| format!("interfaces here: {}", here.join(", ")));
            report.errors.push(err(
                &raw.name.span,
                format!("{k}.name"),
                format!("no interface \"{name}\" on this machine"),
                hint,
            ));
        }
        if checks != SystemChecks::Off && present {
            if let Some(n) = sys.rx_queues(name) {
                for (j, q) in queues.iter().enumerate() {
                    if q.value >= n {
                        report.errors.push(err(
                            &q.span,
                            format!("{k}.queues[{j}]"),
                            format!(
                                "queue {} does not exist: {name} has {n} rx queue{}",
                                q.value,
                                if n == 1 { "" } else { "s" }
                            ),
                            format!(
                                "use queue ids 0 to {}, or raise the count: ethtool -L {name} combined N",
                                n.saturating_sub(1)
                            ),
                        ));
                    }
                }
            }
            for (j, c) in core_list.iter().enumerate() {
                if c.value >= sys.cpus {
                    report.errors.push(err(
                        &c.span,
                        format!("{k}.cores[{j}]"),
                        format!(
                            "core {} does not exist: this machine has {} CPU{}",
                            c.value,
                            sys.cpus,
                            if sys.cpus == 1 { "" } else { "s" }
                        ),
                        format!("pick cores 0 to {}", sys.cpus.saturating_sub(1)),
                    ));
                }
            }
        }

        let ok = report.errors.len() == start;
        checked.push((
            *i,
            ok.then(|| Interface {
                name: name.to_owned(),
                addresses,
                next_hop: None,
                xdp_mode: raw.xdp_mode.as_ref().map_or(XdpMode::Native, |m| m.value),
                bind: raw.bind,
                queues: queues.iter().map(|q| q.value).collect(),
                cores: core_list.iter().map(|c| c.value).collect(),
                mtu: raw.mtu.as_ref().map(|m| m.value),
                rss_key,
                poll: raw.poll,
                spin,
                steer: raw.steer,
            }),
        ));
    }

    // Next hops need every subnet, so they go last.
    for ((i, raw), (_, iface)) in raws.iter().zip(checked.iter_mut()) {
        let Some(nh) = &raw.next_hop else { continue };
        let key = format!("interface[{i}].next_hop");
        match nh.value.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                if subnets.iter().any(|s| s.contains(&ip)) {
                    if let Some(iface) = iface {
                        iface.next_hop = Some(ip);
                    }
                } else {
                    let list: Vec<String> = subnets.iter().map(Ipv4Net::to_string).collect();
                    report.errors.push(
                        Diagnostic::at(
                            src,
                            &nh.span,
                            key,
                            format!(
                                "next hop {ip} is outside every interface subnet ({})",
                                list.join(", ")
                            ),
                        )
                        .hint("a gateway must be on-link: pick an address in one of these subnets"),
                    );
                    *iface = None;
                }
            }
            _ => {
                report.errors.push(
                    Diagnostic::at(
                        src,
                        &nh.span,
                        key,
                        format!("\"{}\" is not an IPv4 address", nh.value),
                    )
                    .hint("e.g. next_hop = \"10.10.1.254\""),
                );
                *iface = None;
            }
        }
    }

    if report.errors.is_empty() {
        report.interfaces = checked.into_iter().filter_map(|(_, i)| i).collect();
    }
}

/// `6d5a...` or `6d:5a:...` → bytes.
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let h = (p[0] as char).to_digit(16)?;
            let l = (p[1] as char).to_digit(16)?;
            u8::try_from(h * 16 + l).ok()
        })
        .collect()
}
