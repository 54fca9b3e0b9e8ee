//! `GET /config_dump`: what the gateway runs with, as JSON: the compiled tables (listeners,
//! services with their endpoints and settings, routes, peers), the identities and trust roots
//! as loaded with their validity, and endpoint health with the pools. Never a private key:
//! identities show their certificate's path and dates, not the material.

use control::snapshot::Snapshot;
use mesh::tls::unix_now;
use serde_json::{json, Value};
use std::time::SystemTime;

/// The share of a certificate's lifetime left under which `xdpmesh check` warns (20 %, the
/// same rule as the certificate watch's warnings).
pub const WARN_LIFETIME_LEFT: f64 = 0.2;

fn validity(nb: i64, na: i64, now: i64) -> Value {
    let life = (na - nb).max(1) as f64;
    json!({
        "not_before": nb,
        "not_after": na,
        "expires_in_s": na - now,
        "lifetime_left": ((na - now) as f64 / life).clamp(0.0, 1.0),
    })
}

/// The dump; `certs` as the certificate watch holds them (`None`: no mTLS configured),
/// `endpoints` the health board's JSON (`GET /endpoints`).
pub fn json(
    snap: &Snapshot,
    certs: Option<&dataplane_certs::MeshCertsView>,
    endpoints: &str,
    dataplane: Value,
    now: SystemTime,
) -> String {
    let now_s = unix_now(now);
    let peer_name = |p: Option<u32>| {
        p.and_then(|p| snap.peers.get(p as usize))
            .map(|p| p.name.clone())
    };
    let service_name = |i: u32| snap.services.get(i as usize).map(|s| s.name.clone());
    let identity_id = |i: Option<u32>| {
        i.and_then(|i| snap.identities.get(i as usize))
            .map(|x| x.id.clone())
    };
    let listeners: Vec<Value> = snap
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "bind": l.bind.to_string(),
                "protocol": l.protocol.as_str(),
                "service": l.service.and_then(service_name),
                "identity": identity_id(l.identity),
                "timeouts": format!("{:?}", l.timeouts),
                "max_connections": l.max_connections,
                "max_connections_per_source": l.max_connections_per_source,
            })
        })
        .collect();
    let services: Vec<Value> = snap
        .services
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "hosts": s.hosts,
                "load_balancer": format!("{:?}", s.load_balancer),
                "endpoints": s.endpoints.iter().map(|e| json!({
                    "address": e.address.to_string(),
                    "via": peer_name(e.via),
                    "weight": e.weight,
                    "labels": format!("{:?}", e.labels),
                })).collect::<Vec<_>>(),
                "authorization": s.authz.as_ref().map(|rules| format!("{rules:?}")),
                "circuit_breaker": format!("{:?}", s.circuit_breaker),
                "outlier": s.outlier.as_ref().map(|o| format!("{o:?}")),
                "health_check": s.health_check.as_ref().map(|h| format!("{h:?}")),
                "pool": format!("{:?}", s.pool),
                "retry_budget": format!("{:?}", s.retry_budget),
            })
        })
        .collect();
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "service": service_name(r.service),
                "host": r.host,
                "path": r.path.as_ref().map(|p| format!("{p:?}")),
                "method": r.method,
                "headers": r.headers.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>(),
                "backends": r.backends.iter().map(|b| json!({
                    "service": service_name(b.service),
                    "endpoints": b.endpoints,
                    "weight": b.weight,
                })).collect::<Vec<_>>(),
                "timeout_ms": r.timeout.map(|d| d.as_millis() as u64),
                "policy": r.policy.as_ref().map(|p| format!("{p:?}")),
            })
        })
        .collect();
    let peers: Vec<Value> = snap
        .peers
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "address": p.address.to_string(),
                "identity": p.identity,
                "min_idle": p.min_idle,
                "admin": p.admin.map(|a| a.to_string()),
            })
        })
        .collect();
    let identities: Vec<Value> = snap
        .identities
        .iter()
        .map(|i| {
            let loaded = certs.and_then(|c| c.identities.iter().find(|l| l.0 == i.id));
            json!({
                "id": i.id,
                "sources": i.sources.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "cert": i.cert_path.display().to_string(),
                // The path, for `xdpmesh check` on this host; never the key itself.
                "key": i.key_path.display().to_string(),
                "validity": loaded.map(|l| validity(l.1, l.2, now_s)),
            })
        })
        .collect();
    let roots: Vec<Value> = certs
        .map(|c| {
            c.roots
                .iter()
                .map(|(subject, serial, nb, na)| {
                    json!({
                        "subject": subject,
                        "serial": serial,
                        "validity": validity(*nb, *na, now_s),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let endpoints: Value = serde_json::from_str(endpoints).unwrap_or(Value::Null);
    let v = json!({
        "generation": snap.generation,
        "listeners": listeners,
        "services": services,
        "routes": routes,
        "peers": peers,
        "identities": identities,
        "trust_roots": roots,
        "trust_files": snap.trust_roots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "dataplane": dataplane,
        "endpoints": endpoints,
    });
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into()) + "\n"
}

/// The certificate watch's view, without key material.
pub mod dataplane_certs {
    /// (SPIFFE ID, not_before, not_after) per identity; (subject, serial, not_before,
    /// not_after) per trust root; Unix seconds.
    #[derive(Debug, Default, Clone)]
    pub struct MeshCertsView {
        pub identities: Vec<(String, i64, i64)>,
        pub roots: Vec<(String, String, i64, i64)>,
    }

    impl MeshCertsView {
        pub fn of(c: &crate::certwatch::MeshCerts) -> Self {
            MeshCertsView {
                identities: c
                    .identities
                    .iter()
                    .map(|l| (l.identity.id.clone(), l.not_before, l.not_after))
                    .collect(),
                roots: c
                    .trust
                    .root_infos()
                    .iter()
                    .map(|r| {
                        (
                            r.subject.clone(),
                            r.serial.clone(),
                            r.not_before,
                            r.not_after,
                        )
                    })
                    .collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certwatch::CertWatch;
    use mesh::test_support::{ca, leaf_dated};

    /// The dump names what runs (listeners, services, routes, peers), dates the identity and
    /// the root, and carries no key material.
    #[test]
    fn the_dump_shows_tables_and_validity_without_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = ca("mesh");
        // Valid 2020..2100: most of its lifetime is left.
        let l = leaf_dated(&root, "spiffe://t/gw-a", (2020, 1, 1), (2100, 1, 1));
        std::fs::write(dir.path().join("ca.pem"), root.cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), l.cert.pem()).unwrap();
        let key = l.key.serialize_pem();
        std::fs::write(dir.path().join("key.pem"), &key).unwrap();
        let tables = r#"
[trust]
roots = ["ca.pem"]
[[identity]]
id = "spiffe://t/gw-a"
sources = ["10.0.1.0/24"]
cert = "cert.pem"
key = "key.pem"
[[peer]]
name = "gw-b"
address = "10.0.2.2:15443"
identity = "spiffe://t/gw-b"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"
[[service]]
name = "web"
endpoints = [{ address = "10.0.3.2:8080", via = "gw-b" }]
[[route]]
name = "canary"
service = "web"
"#;
        let src = control::Source::new("t.toml", tables.to_string());
        let compiled = control::compile(&src, &control::Context::new(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        let snap = compiled.snapshot;
        let watch = CertWatch::new(snap.trust_roots.clone(), &snap.identities).unwrap();
        let view = dataplane_certs::MeshCertsView::of(&watch.current());
        let out = json(&snap, Some(&view), "[]", Value::Null, SystemTime::now());
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["listeners"][0]["name"], "web");
        assert_eq!(v["services"][0]["endpoints"][0]["via"], "gw-b");
        assert_eq!(v["routes"][0]["name"], "canary");
        assert_eq!(v["routes"][0]["service"], "web");
        assert_eq!(v["peers"][0]["identity"], "spiffe://t/gw-b");
        let id = &v["identities"][0];
        assert_eq!(id["id"], "spiffe://t/gw-a");
        let left = id["validity"]["lifetime_left"].as_f64().unwrap();
        assert!(left > 0.8 && left < 1.0, "{left}");
        assert!(
            v["trust_roots"][0]["validity"]["expires_in_s"]
                .as_i64()
                .unwrap()
                > 0
        );
        let body = key.lines().nth(1).unwrap();
        assert!(!out.contains(body), "no key material");
        assert!(!out.contains("PRIVATE"));
    }
}
