//! What every worker of a gateway shares about endpoint health: the verdicts of the active
//! health checks (run by one worker, read by all), and each worker's view of the endpoints it
//! balances over (ejections, outstanding requests, latency, pooled connections) for
//! `GET /endpoints` and `/metrics`. Workers write their view at most once a second; readers
//! merge the views.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One endpoint as one worker sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointReport {
    pub service: String,
    pub endpoint: Option<SocketAddrV4>,
    /// Ejected now: for how much longer.
    pub ejected_for: Option<Duration>,
    /// The ejection multiplier (ejections not yet decayed).
    pub ejections: u32,
    pub ejections_consecutive: u64,
    pub ejections_success_rate: u64,
    pub returns: u64,
    /// Skipped for a health verdict (this gateway's checks, or a peer gateway's refusal).
    pub unhealthy: bool,
    pub consecutive_failures: u32,
    pub outstanding: u32,
    /// The balancer's latency estimate, if it keeps one (p2c-ewma) and has a sample.
    pub ewma: Option<Duration>,
    /// Idle connections in the worker's pool.
    pub pooled: u32,
}

/// A health check's verdict on an endpoint this gateway owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub service: String,
    pub endpoint: SocketAddrV4,
    /// `healthy`, `unhealthy` or `unknown` (no verdict yet).
    pub health: &'static str,
    /// Why the last probe failed, if it did.
    pub last_failure: Option<&'static str>,
}

#[derive(Default)]
pub struct HealthBoard {
    version: AtomicU64,
    unhealthy: Mutex<Arc<HashSet<(String, SocketAddrV4)>>>,
    checks: Mutex<Vec<CheckReport>>,
    workers: Mutex<BTreeMap<usize, Vec<EndpointReport>>>,
}

impl HealthBoard {
    pub fn new() -> Arc<HealthBoard> {
        Arc::new(HealthBoard::default())
    }

    /// Bumped at each change of the verdicts: a worker re-reads them when it moved.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The endpoints (by service name) the health checks found unhealthy.
    pub fn unhealthy(&self) -> Arc<HashSet<(String, SocketAddrV4)>> {
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The checking worker publishes its verdicts.
    pub fn set_checks(&self, checks: Vec<CheckReport>) {
        let bad: HashSet<(String, SocketAddrV4)> = checks
            .iter()
            .filter(|c| c.health == "unhealthy")
            .map(|c| (c.service.clone(), c.endpoint))
            .collect();
        let mut cur = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        if **cur != bad {
            *cur = Arc::new(bad);
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        drop(cur);
        *self.checks.lock().unwrap_or_else(|e| e.into_inner()) = checks;
    }

    pub fn set_worker(&self, worker: usize, report: Vec<EndpointReport>) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker, report);
    }

    /// Every worker's view merged per (service, endpoint), with the health checks' verdicts:
    /// ejected while any worker ejects it (for the longest), outstanding requests and pooled
    /// connections summed, latency averaged over the workers that have one.
    pub fn merged(&self) -> Vec<(EndpointReport, Option<CheckReport>)> {
        self.merged_with(std::iter::empty())
    }

    /// [`Self::merged`], plus a row for each `(service, endpoint)` of `tables` that neither a
    /// worker nor a health check has reported yet: an operator looks for every endpoint the
    /// tables name, not only those a request has reached.
    pub fn merged_with(
        &self,
        tables: impl IntoIterator<Item = (String, SocketAddrV4)>,
    ) -> Vec<(EndpointReport, Option<CheckReport>)> {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut by: BTreeMap<(String, Option<SocketAddrV4>), (EndpointReport, u32)> =
            BTreeMap::new();
        for r in workers.values().flatten() {
            let e = by
                .entry((r.service.clone(), r.endpoint))
                .or_insert_with(|| {
                    (
                        EndpointReport {
                            service: r.service.clone(),
                            endpoint: r.endpoint,
                            ..Default::default()
                        },
                        0,
                    )
                });
            let (m, n) = e;
            m.ejected_for = m.ejected_for.max(r.ejected_for);
            m.ejections = m.ejections.max(r.ejections);
            m.ejections_consecutive += r.ejections_consecutive;
            m.ejections_success_rate += r.ejections_success_rate;
            m.returns += r.returns;
            m.unhealthy |= r.unhealthy;
            m.consecutive_failures = m.consecutive_failures.max(r.consecutive_failures);
            m.outstanding += r.outstanding;
            m.pooled += r.pooled;
            if let Some(l) = r.ewma {
                m.ewma = Some(m.ewma.unwrap_or_default() + l);
                *n += 1;
            }
        }
        drop(workers);
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out: Vec<(EndpointReport, Option<CheckReport>)> = by
            .into_values()
            .map(|(mut m, n)| {
                if n > 0 {
                    m.ewma = m.ewma.map(|l| l / n);
                }
                let c = checks
                    .iter()
                    .find(|c| c.service == m.service && Some(c.endpoint) == m.endpoint)
                    .cloned();
                (m, c)
            })
            .collect();
        // Checked endpoints no worker has balanced over yet.
        for c in checks {
            if !out
                .iter()
                .any(|(m, _)| m.service == c.service && m.endpoint == Some(c.endpoint))
            {
                let m = EndpointReport {
                    service: c.service.clone(),
                    endpoint: Some(c.endpoint),
                    ..Default::default()
                };
                out.push((m, Some(c)));
            }
        }
        let mut seen: HashSet<(String, Option<SocketAddrV4>)> = out
            .iter()
            .map(|(m, _)| (m.service.clone(), m.endpoint))
            .collect();
        for (service, endpoint) in tables {
            if seen.insert((service.clone(), Some(endpoint))) {
                let m = EndpointReport {
                    service,
                    endpoint: Some(endpoint),
                    ..Default::default()
                };
                out.push((m, None));
            }
        }
        out
    }

    /// `GET /endpoints`: a JSON array, one object per (service, endpoint).
    pub fn json(&self) -> String {
        self.json_with(std::iter::empty())
    }

    /// `GET /endpoints` with every endpoint of `tables` listed (see [`Self::merged_with`]).
    pub fn json_with(&self, tables: impl IntoIterator<Item = (String, SocketAddrV4)>) -> String {
        let mut out = String::from("[");
        for (i, (m, c)) in self.merged_with(tables).iter().enumerate() {
            let health = match (c, m.unhealthy) {
                (Some(c), _) => c.health,
                (None, true) => "unhealthy",
                (None, false) => "unchecked",
            };
            let opt_ms = |d: Option<Duration>| {
                d.map_or("null".to_string(), |d| {
                    format!("{:.3}", d.as_secs_f64() * 1e3)
                })
            };
            let last = c
                .as_ref()
                .and_then(|c| c.last_failure)
                .map_or("null".to_string(), json_str);
            let _ = write!(
                out,
                "{}\n{{\"service\": {}, \"endpoint\": {}, \"health\": \"{health}\", \"last_probe_failure\": {last}, \"ejected\": {}, \"ejected_for_ms\": {}, \"ejections\": {}, \"consecutive_failures\": {}, \"outstanding\": {}, \"ewma_latency_ms\": {}, \"pool_idle\": {}}}",
                if i == 0 { "" } else { "," },
                json_str(&m.service),
                m.endpoint
                    .map_or("null".to_string(), |e| json_str(&e.to_string())),
                m.ejected_for.is_some(),
                opt_ms(m.ejected_for),
                m.ejections,
                m.consecutive_failures,
                m.outstanding,
                opt_ms(m.ewma),
                m.pooled,
            );
        }
        out.push_str("\n]\n");
        out
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(p: u16) -> SocketAddrV4 {
        SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 1), p)
    }

    #[test]
    fn endpoints_of_the_tables_are_listed_before_any_request_reaches_them() {
        let b = HealthBoard::new();
        b.set_worker(
            0,
            vec![EndpointReport {
                service: "web".into(),
                endpoint: Some(ep(1)),
                outstanding: 3,
                ..Default::default()
            }],
        );
        let tables = [("web".to_string(), ep(1)), ("web".to_string(), ep(2))];
        let rows = b.merged_with(tables.clone());
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].0.outstanding, 3, "the worker's row is kept");
        assert_eq!(
            (rows[1].0.endpoint, rows[1].0.outstanding),
            (Some(ep(2)), 0)
        );
        let json: serde_json::Value = serde_json::from_str(&b.json_with(tables)).unwrap();
        assert_eq!(json[1]["endpoint"], "10.0.0.1:2");
        assert_eq!(json[1]["health"], "unchecked");
        assert_eq!(b.merged().len(), 1);
    }

    #[test]
    fn verdicts_bump_the_version_only_when_they_change() {
        let b = HealthBoard::new();
        let check = |h| CheckReport {
            service: "web".into(),
            endpoint: ep(1),
            health: h,
            last_failure: None,
        };
        b.set_checks(vec![check("healthy")]);
        assert_eq!(b.version(), 0);
        b.set_checks(vec![check("unhealthy")]);
        assert_eq!(b.version(), 1);
        assert!(b.unhealthy().contains(&("web".to_string(), ep(1))));
        b.set_checks(vec![check("unhealthy")]);
        assert_eq!(b.version(), 1);
    }

    #[test]
    fn worker_views_merge_and_render_as_json() {
        let b = HealthBoard::new();
        let r = |ej: Option<u64>, out: u32, ewma: Option<u64>| EndpointReport {
            service: "web\"x".into(),
            endpoint: Some(ep(1)),
            ejected_for: ej.map(Duration::from_millis),
            outstanding: out,
            ewma: ewma.map(Duration::from_millis),
            pooled: 1,
            ..Default::default()
        };
        b.set_worker(0, vec![r(Some(500), 2, Some(2))]);
        b.set_worker(1, vec![r(None, 3, Some(4))]);
        let m = b.merged();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0.outstanding, 5);
        assert_eq!(m[0].0.pooled, 2);
        assert_eq!(m[0].0.ewma, Some(Duration::from_millis(3)));
        assert_eq!(m[0].0.ejected_for, Some(Duration::from_millis(500)));
        let j = b.json();
        assert!(j.contains("\"service\": \"web\\\"x\""), "{j}");
        assert!(
            j.contains("\"ejected\": true, \"ejected_for_ms\": 500.000"),
            "{j}"
        );
        assert!(j.contains("\"health\": \"unchecked\""), "{j}");
    }
}
