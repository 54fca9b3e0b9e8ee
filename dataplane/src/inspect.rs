//! `GET /connections`: the admin thread asks each worker for its connections, and the worker
//! answers from its own loop (the engine and the transport are the worker's alone), so the
//! data path never takes a lock for it.

use mesh::engine::ConnView;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One worker's mailbox.
#[derive(Default, Debug)]
pub struct Inspect {
    wanted: AtomicBool,
    answer: Mutex<Option<Vec<ConnView>>>,
    /// One question at a time.
    asking: Mutex<()>,
}

impl Inspect {
    /// Asks the worker and waits for its answer up to `timeout` (`None`: it did not answer,
    /// e.g. it is stopping).
    pub fn ask(&self, timeout: Duration) -> Option<Vec<ConnView>> {
        let _one = self.asking.lock().unwrap_or_else(|e| e.into_inner());
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.wanted.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.answer.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Some(a);
            }
            if Instant::now() >= deadline {
                self.wanted.store(false, Ordering::Release);
                return None;
            }
            // The worker answers within one loop turn (it sleeps at most 10 ms).
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Called by the worker in its loop: answers a pending question with `view()`.
    pub fn serve(&self, view: impl FnOnce() -> Vec<ConnView>) {
        if self.wanted.load(Ordering::Relaxed) && self.wanted.swap(false, Ordering::Acquire) {
            *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(view());
        }
    }
}

/// The connections of every worker as JSON (`GET /connections`).
pub fn json(workers: &[(String, Option<Vec<ConnView>>)]) -> String {
    let addr = |a: Option<std::net::SocketAddrV4>| a.map(|a| a.to_string());
    let list: Vec<serde_json::Value> = workers
        .iter()
        .map(|(name, conns)| {
            serde_json::json!({
                "worker": name,
                "answered": conns.is_some(),
                "connections": conns.iter().flatten().map(|c| serde_json::json!({
                    "role": c.role,
                    "listener": c.listener.as_deref(),
                    "local": addr(c.addrs.map(|a| a.0)),
                    "remote": addr(c.addrs.map(|a| a.1)),
                    "state": c.state,
                    "age_ms": c.age.as_millis() as u64,
                    "bytes_sent": c.bytes_sent,
                    "bytes_received": c.bytes_received,
                    "endpoint": addr(c.endpoint),
                    "service": c.service.as_deref(),
                    "tcp_state": c.tcp.as_ref().map(|t| t.state.clone()),
                    "rtt_us": c.tcp.as_ref().and_then(|t| t.rtt).map(|r| r.as_micros() as u64),
                    "cwnd_bytes": c.tcp.as_ref().and_then(|t| t.cwnd_bytes),
                    "retransmits": c.tcp.as_ref().map(|t| t.retransmits),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "workers": list }))
        .unwrap_or_else(|_| "{}".into())
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_question_is_answered_from_the_worker_loop_and_times_out_without_it() {
        let i = Arc::new(Inspect::default());
        assert_eq!(i.ask(Duration::from_millis(5)), None, "nobody serves");
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (i, stop) = (i.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    i.serve(Vec::new);
                    std::thread::yield_now();
                }
            })
        };
        assert_eq!(i.ask(Duration::from_secs(5)), Some(Vec::new()));
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
    }
}
