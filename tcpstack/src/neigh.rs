//! The neighbour (ARP) cache: bounded in entries and in packets waiting per neighbour.

use crate::stats::{Counter, DropReason, Stats};
use crate::time::Instant;
use crate::wire::MacAddr;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct NeighborConfig {
    /// Most entries held (default 1024). New neighbours beyond it are refused and counted.
    pub max_entries: usize,
    /// IP packets held per unresolved neighbour (default 8); more are dropped and counted.
    pub max_queue: usize,
    /// How long a learnt address is used before it is resolved again (default 60 s).
    pub reachable_time: Duration,
    /// Interval between ARP requests for an unresolved neighbour (default 1 s).
    pub retry_interval: Duration,
    /// Requests before an unresolved neighbour's queue is dropped (default 3).
    pub max_requests: u32,
}

impl Default for NeighborConfig {
    fn default() -> Self {
        NeighborConfig {
            max_entries: 1024,
            max_queue: 8,
            reachable_time: Duration::from_secs(60),
            retry_interval: Duration::from_secs(1),
            max_requests: 3,
        }
    }
}

#[derive(Debug)]
enum Entry {
    Reachable {
        mac: MacAddr,
        expires: Instant,
    },
    Incomplete {
        queue: VecDeque<Vec<u8>>,
        next_request: Instant,
        requests: u32,
    },
}

#[derive(Debug)]
pub struct NeighborCache {
    cfg: NeighborConfig,
    entries: HashMap<Ipv4Addr, Entry>,
    /// Addresses to send an ARP request for.
    requests: VecDeque<Ipv4Addr>,
    /// Queued IP packets whose neighbour has been resolved, ready to send.
    ready: VecDeque<(MacAddr, Vec<u8>)>,
}

impl NeighborCache {
    pub fn new(cfg: NeighborConfig) -> Self {
        NeighborCache {
            cfg,
            entries: HashMap::new(),
            requests: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    pub fn lookup(&self, ip: Ipv4Addr, now: Instant) -> Option<MacAddr> {
        match self.entries.get(&ip) {
            Some(Entry::Reachable { mac, expires }) if *expires > now => Some(*mac),
            _ => None,
        }
    }

    /// Records `ip → mac`. `create` is false for ARP traffic not addressed to us: then only an
    /// existing entry is refreshed (RFC 826 "merge").
    pub fn learn(
        &mut self,
        ip: Ipv4Addr,
        mac: MacAddr,
        now: Instant,
        create: bool,
        stats: &mut Stats,
    ) {
        if mac.is_multicast() || ip.is_broadcast() || ip.is_unspecified() {
            return;
        }
        let expires = now + self.cfg.reachable_time;
        match self.entries.get_mut(&ip) {
            Some(e) => {
                if let Entry::Incomplete { queue, .. } = e {
                    self.ready.extend(queue.drain(..).map(|p| (mac, p)));
                }
                *e = Entry::Reachable { mac, expires };
            }
            None if create => {
                if self.entries.len() >= self.cfg.max_entries && !self.evict_expired(now) {
                    stats.drop(DropReason::NeighCacheFull);
                    return;
                }
                self.entries.insert(ip, Entry::Reachable { mac, expires });
            }
            None => {}
        }
    }

    fn evict_expired(&mut self, now: Instant) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| !matches!(e, Entry::Reachable { expires, .. } if *expires <= now));
        self.entries.len() < before
    }

    /// Holds an IP packet until `ip` resolves, asking for it when needed.
    pub fn enqueue(&mut self, ip: Ipv4Addr, packet: Vec<u8>, now: Instant, stats: &mut Stats) {
        let stale = matches!(self.entries.get(&ip), Some(Entry::Reachable { .. }));
        if stale {
            self.entries.remove(&ip);
        }
        if !self.entries.contains_key(&ip) {
            if self.entries.len() >= self.cfg.max_entries && !self.evict_expired(now) {
                stats.drop(DropReason::NeighCacheFull);
                return;
            }
            self.entries.insert(
                ip,
                Entry::Incomplete {
                    queue: VecDeque::new(),
                    next_request: now + self.cfg.retry_interval,
                    requests: 1,
                },
            );
            self.requests.push_back(ip);
        }
        if let Some(Entry::Incomplete { queue, .. }) = self.entries.get_mut(&ip) {
            if queue.len() >= self.cfg.max_queue {
                stats.drop(DropReason::NeighQueueFull);
            } else {
                queue.push_back(packet);
            }
        }
    }

    /// Retries requests and gives up on neighbours that never answered.
    pub fn on_timer(&mut self, now: Instant, stats: &mut Stats) {
        let mut give_up = Vec::new();
        for (ip, e) in self.entries.iter_mut() {
            if let Entry::Incomplete {
                queue,
                next_request,
                requests,
            } = e
            {
                if *next_request <= now {
                    if *requests >= self.cfg.max_requests {
                        for _ in queue.drain(..) {
                            stats.drop(DropReason::NeighUnresolved);
                        }
                        give_up.push(*ip);
                    } else {
                        *requests += 1;
                        *next_request = now + self.cfg.retry_interval;
                        self.requests.push_back(*ip);
                    }
                }
            }
        }
        for ip in give_up {
            self.entries.remove(&ip);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Incomplete { next_request, .. } => Some(*next_request),
                _ => None,
            })
            .min()
    }

    pub fn pop_request(&mut self, stats: &mut Stats) -> Option<Ipv4Addr> {
        let ip = self.requests.pop_front()?;
        stats.inc(Counter::ArpRequestsSent);
        Some(ip)
    }

    pub fn pop_ready(&mut self) -> Option<(MacAddr, Vec<u8>)> {
        self.ready.pop_front()
    }

    pub fn has_output(&self) -> bool {
        !self.requests.is_empty() || !self.ready.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);

    #[test]
    fn queues_until_resolved_then_releases_in_order() {
        let mut s = Stats::default();
        let mut n = NeighborCache::new(NeighborConfig {
            max_queue: 2,
            ..Default::default()
        });
        let t = Instant::ZERO;
        n.enqueue(IP, vec![1], t, &mut s);
        n.enqueue(IP, vec![2], t, &mut s);
        n.enqueue(IP, vec![3], t, &mut s);
        assert_eq!(s.drops(DropReason::NeighQueueFull), 1);
        assert_eq!(n.pop_request(&mut s), Some(IP));
        assert_eq!(n.pop_request(&mut s), None);
        n.learn(IP, MAC, t, false, &mut s);
        assert_eq!(n.pop_ready(), Some((MAC, vec![1])));
        assert_eq!(n.pop_ready(), Some((MAC, vec![2])));
        assert_eq!(n.lookup(IP, t), Some(MAC));
        assert_eq!(n.lookup(IP, t + Duration::from_secs(61)), None, "expires");
    }

    #[test]
    fn gives_up_after_retries_and_counts_drops() {
        let mut s = Stats::default();
        let mut n = NeighborCache::new(NeighborConfig::default());
        let mut t = Instant::ZERO;
        n.enqueue(IP, vec![1], t, &mut s);
        let mut requests = 0;
        while n.pop_request(&mut s).is_some() || n.next_deadline().is_some() {
            requests += 1;
            t += Duration::from_secs(1);
            n.on_timer(t, &mut s);
            assert!(requests < 10);
        }
        assert_eq!(s.get(Counter::ArpRequestsSent), 3);
        assert_eq!(s.drops(DropReason::NeighUnresolved), 1);
        assert!(n.is_empty());
    }

    #[test]
    fn bounded_entries() {
        let mut s = Stats::default();
        let mut n = NeighborCache::new(NeighborConfig {
            max_entries: 2,
            ..Default::default()
        });
        for i in 0..3u8 {
            n.learn(
                Ipv4Addr::new(10, 0, 0, i + 1),
                MAC,
                Instant::ZERO,
                true,
                &mut s,
            );
        }
        assert_eq!(n.len(), 2);
        assert_eq!(s.drops(DropReason::NeighCacheFull), 1);
    }
}
