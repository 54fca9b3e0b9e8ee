//! Circuit breaking per service (issue #16): caps on the connections, pending requests and
//! requests in flight of one worker to one service's endpoints. A request over a cap gets
//! 503 at once (`overflow`), counted with the limit that tripped, instead of piling up.
//!
//! Counts are held by tokens: each connection, pending request and request in flight holds
//! one, and gives it back when dropped, so no path that ends one can forget to count it.

use control::snapshot::CircuitBreakerRt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Which cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// Upstream connections open (in use or idle in the pool).
    Connections,
    /// Requests waiting for their response head.
    Pending,
    /// Requests from routing to the end of their response.
    Requests,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::Pending => "max_pending",
            Limit::Requests => "max_requests",
        }
    }

    fn max(self, cfg: &CircuitBreakerRt) -> u32 {
        match self {
            Limit::Connections => cfg.max_connections,
            Limit::Pending => cfg.max_pending,
            Limit::Requests => cfg.max_requests,
        }
    }
}

/// One service's counts on one worker (atomics only so tokens may be sent with the engine).
#[derive(Default, Debug)]
pub struct Counts {
    counts: [AtomicU32; 3],
}

impl Counts {
    pub fn get(&self, l: Limit) -> u32 {
        self.counts[l as usize].load(Ordering::Relaxed)
    }
}

/// One unit of a count, given back on drop.
#[derive(Debug)]
pub struct Held {
    counts: Arc<Counts>,
    limit: Limit,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counts.counts[self.limit as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counts of every service this worker sent to, by name (so they carry across reloads).
#[derive(Default)]
pub struct Breakers {
    by_service: rustc_hash::FxHashMap<String, Arc<Counts>>,
}

impl Breakers {
    /// Takes one unit of `limit` for `service`, or says the cap is reached.
    pub fn hold(&mut self, service: &str, limit: Limit, cfg: &CircuitBreakerRt) -> Option<Held> {
        let counts = match self.by_service.get(service) {
            Some(c) => c.clone(),
            None => {
                // Services with nothing held are forgotten as they go (bounded by the tables).
                if self.by_service.len() > 4096 {
                    self.by_service.retain(|_, c| Arc::strong_count(c) > 1);
                }
                let c = Arc::new(Counts::default());
                self.by_service.insert(service.to_owned(), c.clone());
                c
            }
        };
        let n = &counts.counts[limit as usize];
        if n.load(Ordering::Relaxed) >= limit.max(cfg) {
            return None;
        }
        n.fetch_add(1, Ordering::Relaxed);
        Some(Held { counts, limit })
    }

    pub fn counts(&self, service: &str) -> Option<&Counts> {
        self.by_service.get(service).map(|c| &**c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_count_up_to_the_cap_and_give_back_on_drop() {
        let cfg = CircuitBreakerRt {
            max_connections: 2,
            max_pending: 1,
            max_requests: 3,
        };
        let mut b = Breakers::default();
        let a = b.hold("web", Limit::Connections, &cfg).unwrap();
        let c = b.hold("web", Limit::Connections, &cfg).unwrap();
        assert!(b.hold("web", Limit::Connections, &cfg).is_none());
        assert!(b.hold("other", Limit::Connections, &cfg).is_some());
        let p = b.hold("web", Limit::Pending, &cfg).unwrap();
        assert!(b.hold("web", Limit::Pending, &cfg).is_none());
        assert_eq!(b.counts("web").unwrap().get(Limit::Connections), 2);
        drop(a);
        assert_eq!(b.counts("web").unwrap().get(Limit::Connections), 1);
        assert!(b.hold("web", Limit::Connections, &cfg).is_some());
        drop((c, p));
        assert_eq!(b.counts("web").unwrap().get(Limit::Pending), 0);
    }
}
