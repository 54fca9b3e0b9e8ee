//! Idle upstream connections kept for reuse by every session of one worker (issue #16,
//! "Connection pools"). Keyed by what a connection is bound to: its endpoint and, for a mesh
//! hop, the service its SNI and preamble named and the identity it presented (gateway B binds
//! a hop to those at its start). The engine owns the transport side: it checks a connection
//! is still open before handing it out, and closes what the pool gives back.

use super::leg::Leg;
use control::snapshot::PoolRt;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddrV4;
use std::sync::Arc;
use tcpstack::Instant;

/// Idle connections one worker keeps at most, all endpoints together.
pub const MAX_IDLE_TOTAL: usize = 4096;

/// What an upstream connection is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub endpoint: SocketAddrV4,
    /// The service it was opened for: its circuit breaker counts it, its `pool` settings
    /// apply, and only its requests take it.
    pub service: Arc<str>,
    /// A mesh hop: what gateway B bound it to and what A verified. `None`: a plain
    /// connection to a local endpoint.
    pub hop: Option<HopId>,
}

/// A mesh hop's identities: the client identity it presented (B authorizes by it for the
/// hop's life), and the peer gateway it went to (address and SPIFFE ID it was checked as).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HopId {
    pub identity: Arc<str>,
    /// A stream of a multiplexed hop (`hop_protocol = "h2"`), not a connection of its own.
    pub mux: bool,
    /// The certificates and trust it was opened with ([`crate::engine::MeshTls::generation`]).
    pub tls_generation: u64,
    pub peer: SocketAddrV4,
    pub peer_identity: Arc<str>,
}

/// A connection's life so far, carried with it between sessions and the pool.
#[derive(Clone, Debug)]
pub struct UpMeta {
    pub key: PoolKey,
    pub born: Instant,
    /// Requests it carried.
    pub requests: u32,
    /// Its service's pool settings, from the tables it was opened under.
    pub cfg: PoolRt,
}

impl UpMeta {
    /// May it carry one more request, or go back to the pool?
    pub fn reusable(&self, now: Instant) -> bool {
        self.requests < self.cfg.max_requests
            && now.saturating_duration_since(self.born) < self.cfg.max_lifetime
            && self.cfg.max_idle_per_endpoint > 0
    }
}

pub(crate) struct Idle<C> {
    pub leg: Leg<C>,
    pub meta: UpMeta,
    since: Instant,
    epoch: u64,
}

impl<C> Idle<C> {
    fn deadline(&self) -> Instant {
        (self.since + self.meta.cfg.idle_timeout).min(self.meta.born + self.meta.cfg.max_lifetime)
    }
}

impl<C> Pool<C> {
    /// Every idle connection.
    pub fn idle_legs(&self) -> impl Iterator<Item = (&Leg<C>, &UpMeta)> {
        self.slots.iter().flatten().map(|i| (&i.leg, &i.meta))
    }
}

#[derive(Default)]
pub(crate) struct Pool<C> {
    slots: Vec<Option<Idle<C>>>,
    free: Vec<usize>,
    /// Slots per key, most recently parked last (taken first: its TCP state is warmest).
    by_key: FxHashMap<PoolKey, Vec<usize>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_epoch: u64,
    idle: usize,
}

impl<C> Pool<C> {
    pub fn new() -> Self {
        Pool {
            slots: Vec::new(),
            free: Vec::new(),
            by_key: FxHashMap::default(),
            timers: BinaryHeap::new(),
            next_epoch: 0,
            idle: 0,
        }
    }

    /// Connections held idle.
    pub fn idle(&self) -> usize {
        self.idle
    }

    /// Idle connections per endpoint, whatever they are bound to.
    pub fn idle_by_endpoint(&self) -> HashMap<SocketAddrV4, u32> {
        let mut m = HashMap::new();
        for (k, v) in &self.by_key {
            *m.entry(k.endpoint).or_insert(0) += v.len() as u32;
        }
        m
    }

    /// Idle connections for `key`.
    pub fn idle_for(&self, key: &PoolKey) -> usize {
        self.by_key.get(key).map_or(0, Vec::len)
    }

    /// Keeps `leg` for reuse; gives it back when it may not be kept (its key's or the
    /// worker's cap, its lifetime or request count): the caller closes it.
    pub fn put(&mut self, leg: Leg<C>, meta: UpMeta, now: Instant) -> Result<usize, Box<Leg<C>>> {
        let per_key = self.idle_for(&meta.key);
        if !meta.reusable(now)
            || per_key >= meta.cfg.max_idle_per_endpoint as usize
            || self.idle >= MAX_IDLE_TOTAL
        {
            return Err(Box::new(leg));
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let idle = Idle {
            leg,
            meta,
            since: now,
            epoch,
        };
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let deadline = idle.deadline();
        self.by_key
            .entry(idle.meta.key.clone())
            .or_default()
            .push(slot);
        // In its slot before the timer goes in: a rebuild below works from the slots.
        self.slots[slot] = Some(idle);
        self.idle += 1;
        self.timers.push(Reverse((deadline, slot, epoch)));
        // A connection taken again leaves its entry behind until its deadline; at tens of
        // thousands of parks a second those would pile up, so rebuild from the live ones.
        if self.timers.len() > 2 * self.idle + 1024 {
            self.timers = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| Reverse((s.deadline(), i, s.epoch))))
                .collect();
        }
        Ok(slot)
    }

    /// The most recently parked connection for `key` that is `ready` (a warm hop may still
    /// be connecting), removed. The caller checks it is still open and within its lifetime
    /// before using it (and closes it otherwise).
    pub fn take(&mut self, key: &PoolKey, ready: impl Fn(&Leg<C>) -> bool) -> Option<Idle<C>> {
        let v = self.by_key.get_mut(key)?;
        let at = v
            .iter()
            .rposition(|&slot| self.slots[slot].as_ref().is_some_and(|i| ready(&i.leg)))?;
        let slot = v.remove(at);
        if v.is_empty() {
            self.by_key.remove(key);
        }
        self.release(slot)
    }

    /// The idle connection of `service` that has waited longest, removed (to make room under
    /// the service's `max_connections`).
    pub fn oldest_of(&mut self, service: &str) -> Option<Idle<C>> {
        let slot = self
            .by_key
            .iter()
            .filter(|(k, _)| &*k.service == service)
            .flat_map(|(_, v)| v.iter().copied())
            .min_by_key(|&slot| self.slots[slot].as_ref().map(|i| i.since))?;
        self.remove(slot)
    }

    /// The connection in `slot`, left in place.
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Idle<C>> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Removes the connection in `slot` (its transport failed, or it is being reused).
    pub fn remove(&mut self, slot: usize) -> Option<Idle<C>> {
        let idle = self.slots.get(slot)?.as_ref()?;
        let key = idle.meta.key.clone();
        if let Some(v) = self.by_key.get_mut(&key) {
            v.retain(|&s| s != slot);
            if v.is_empty() {
                self.by_key.remove(&key);
            }
        }
        self.release(slot)
    }

    fn release(&mut self, slot: usize) -> Option<Idle<C>> {
        let idle = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.idle -= 1;
        Some(idle)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|r| r.0 .0)
    }

    /// One connection whose idle time or lifetime ran out by `now`, removed (the caller
    /// closes it); `None` when there is none.
    pub fn expired(&mut self, now: Instant) -> Option<Idle<C>> {
        while let Some(&Reverse((t, slot, epoch))) = self.timers.peek() {
            if t > now {
                return None;
            }
            self.timers.pop();
            if self.slots[slot].as_ref().is_some_and(|i| i.epoch == epoch) {
                return self.remove(slot);
            }
        }
        None
    }

    /// Every idle connection, removed (the worker stops).
    pub fn drain(&mut self) -> Vec<Idle<C>> {
        let all: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some())
            .collect();
        all.into_iter().filter_map(|i| self.remove(i)).collect()
    }
}
