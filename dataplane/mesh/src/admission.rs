//! Connection caps shared by every worker's engine: how many connections each listener, and
//! each client address on it, has open now. An engine asks at accept and gives the slot back
//! when the session ends; a refusal is a reset at accept (`listener_overflow`,
//! `source_overflow`). Keyed by listener name, so a reload that keeps a listener keeps its
//! count.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// Open connections per listener and per (listener, client address).
#[derive(Default)]
pub struct Admission {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    listeners: HashMap<Arc<str>, u32>,
    sources: HashMap<(Arc<str>, Ipv4Addr), u32>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Listener,
    Source,
}

/// A connection counted against its listener and address until it is dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    listener: Arc<str>,
    source: Ipv4Addr,
}

impl Admission {
    pub fn new() -> Arc<Admission> {
        Arc::new(Admission::default())
    }

    /// Counts a connection from `source` on `listener` if both caps have room.
    pub fn admit(
        self: &Arc<Self>,
        listener: &Arc<str>,
        source: Ipv4Addr,
        (max, max_per_source): (u32, u32),
    ) -> Result<Ticket, Overflow> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let on_listener = c.listeners.get(listener).copied().unwrap_or(0);
        if on_listener >= max {
            return Err(Overflow::Listener);
        }
        let key = (listener.clone(), source);
        let from_source = c.sources.get(&key).copied().unwrap_or(0);
        if from_source >= max_per_source {
            return Err(Overflow::Source);
        }
        c.listeners.insert(listener.clone(), on_listener + 1);
        c.sources.insert(key, from_source + 1);
        Ok(Ticket {
            admission: self.clone(),
            listener: listener.clone(),
            source,
        })
    }

    /// Connections open on `listener` now.
    pub fn open(&self, listener: &str) -> u32 {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.listeners.get(listener).copied().unwrap_or(0)
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({} from {})", self.listener, self.source)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Entries at zero are removed: a map of every address ever seen would grow forever.
        if let Some(n) = c.listeners.get_mut(&self.listener) {
            *n -= 1;
            if *n == 0 {
                c.listeners.remove(&self.listener);
            }
        }
        let key = (self.listener.clone(), self.source);
        if let Some(n) = c.sources.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.sources.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_come_back() {
        let a = Admission::new();
        let l: Arc<str> = Arc::from("web");
        let x = Ipv4Addr::new(10, 0, 0, 1);
        let y = Ipv4Addr::new(10, 0, 0, 2);
        let t1 = a.admit(&l, x, (3, 2)).unwrap();
        let t2 = a.admit(&l, x, (3, 2)).unwrap();
        assert_eq!(a.admit(&l, x, (3, 2)).unwrap_err(), Overflow::Source);
        let t3 = a.admit(&l, y, (3, 2)).unwrap();
        assert_eq!(a.admit(&l, y, (3, 2)).unwrap_err(), Overflow::Listener);
        assert_eq!(a.open("web"), 3);
        drop(t1);
        let t4 = a.admit(&l, x, (3, 2)).unwrap();
        drop((t2, t3, t4));
        assert_eq!(a.open("web"), 0);
        let c = a.counts.lock().unwrap();
        assert!(
            c.listeners.is_empty() && c.sources.is_empty(),
            "nothing left"
        );
    }
}
