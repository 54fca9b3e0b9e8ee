//! SMI import: TrafficSplit (split.smi-spec.io v1alpha1–v1alpha4), TrafficTarget
//! (access.smi-spec.io), HTTPRouteGroup and TCPRoute (specs.smi-spec.io) → tables.
//!
//! Mapping, and what it assumes:
//! - Every Kubernetes service named by a split becomes a `[[service]]` without
//!   endpoints (SMI has none): fill them in.
//! - A TrafficSplit becomes routes on its root service whose backends are the split's
//!   services with their weights (v1alpha1 quantities such as `500m` are scaled to
//!   whole numbers). With `matches`, each HTTPRouteGroup match becomes a route, and
//!   requests that match none stay on the root service, as SMI says.
//! - A TrafficTarget's destination service account `NAME` is taken to be the service
//!   `NAME`; identities are `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/NAME`. Each allowed
//!   HTTPRouteGroup match becomes one `[[authorization]]` rule (methods, path); a
//!   TCPRoute allows the whole service.
//! - `pathRegex` is anchored at the start only (SMI), ours must match the whole path,
//!   so `R` becomes `R.*` (or `R` without its `$`).
//!
//! What cannot be expressed is named in [`Imported::notes`] and left out: ports
//! (destination ports, TCPRoute ports), header conditions in access rules, UDPRoute,
//! source kinds other than ServiceAccount, weights that are not numbers, unknown kinds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize as _;
use serde_yaml::Value;

use crate::de::Sp;
use crate::schema::{
    Authorization, Backend, HeaderMatch, Labels, PathMatch, Route, RouteMatch, Service, Tables,
};

#[derive(Debug, Clone)]
pub struct Options {
    /// For SPIFFE IDs made from service accounts.
    pub trust_domain: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
        }
    }
}

/// The tables made, and what could not be carried over.
#[derive(Debug, Clone)]
pub struct Imported {
    pub tables: Tables,
    pub notes: Vec<String>,
}

impl Imported {
    /// TOML for the tables, headed by the notes as comments.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# Imported from SMI by `xdpmesh import smi`.\n");
        if !self.tables.services.is_empty() {
            out.push_str("# Services have no endpoints in SMI: add them before use.\n");
        }
        for n in &self.notes {
            let _ = writeln!(out, "# not expressed: {n}");
        }
        out.push('\n');
        out.push_str(&self.tables.to_toml());
        out
    }
}

#[derive(Debug, Clone)]
struct HttpMatch {
    name: String,
    path_regex: Option<String>,
    methods: Vec<String>,
    headers: Vec<(String, String)>,
}

struct Doc<'a> {
    /// `file: kind NAME` for notes and errors.
    label: String,
    kind: &'a str,
    name: String,
    namespace: String,
    /// `spec`, or the document itself for v1alpha1 layouts without one.
    body: &'a Value,
}

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

/// Import `(file name, YAML text)` pairs. Errors (unparsable YAML, references to
/// missing route groups, missing required fields) are returned all together.
pub fn import(files: &[(String, String)], opts: &Options) -> Result<Imported, Vec<String>> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
            match serde_yaml::Value::deserialize(d) {
                Ok(Value::Null) => {}
                Ok(v) => values.push((file.clone(), i, v)),
                Err(e) => {
                    let at = e
                        .location()
                        .map(|l| format!(":{}:{}", l.line(), l.column()))
                        .unwrap_or_default();
                    errors.push(format!("{file}{at}: YAML error: {e}"));
                    break; // the rest of this file cannot be read past the error
                }
            }
        }
    }
    let mut docs = Vec::new();
    let mut notes = Vec::new();
    for (file, i, v) in &values {
        let kind = v.get("kind").and_then(s).unwrap_or("");
        let meta = v.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(s)
            .unwrap_or("")
            .to_owned();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(s)
            .unwrap_or("default")
            .to_owned();
        let label = format!("{file}: {kind} \"{name}\"");
        if name.is_empty() {
            errors.push(format!("{file}: document {}: no metadata.name", i + 1));
            continue;
        }
        if let Some(api) = v.get("apiVersion").and_then(s) {
            let known = [
                "split.smi-spec.io/",
                "access.smi-spec.io/",
                "specs.smi-spec.io/",
            ];
            if !known.iter().any(|k| api.starts_with(k)) {
                notes.push(format!("{label}: apiVersion {api} is not SMI; skipped"));
                continue;
            }
        }
        let body = v.get("spec").unwrap_or(v);
        docs.push(Doc {
            label,
            kind,
            name,
            namespace,
            body,
        });
    }
    let mut namespaces: Vec<&str> = docs.iter().map(|d| d.namespace.as_str()).collect();
    namespaces.sort();
    namespaces.dedup();
    if namespaces.len() > 1 {
        notes.push(format!(
            "namespaces {} are merged: names must be unique across them",
            namespaces.join(", ")
        ));
    }

    // Route groups and TCP routes first: splits and targets refer to them.
    let mut groups: BTreeMap<String, Vec<HttpMatch>> = BTreeMap::new();
    let mut tcp_routes: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for d in &docs {
        match d.kind {
            "HTTPRouteGroup" => {
                let matches = seq(d.body.get("matches"))
                    .iter()
                    .enumerate()
                    .map(|(j, m)| http_match(m, j))
                    .collect();
                groups.insert(d.name.clone(), matches);
            }
            "TCPRoute" => {
                let ports = d
                    .body
                    .get("matches")
                    .and_then(|m| m.get("ports"))
                    .map(|p| seq(Some(p)).iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                tcp_routes.insert(d.name.clone(), ports);
            }
            "UDPRoute" => notes.push(format!(
                "{}: UDP is not carried by xdpmesh; skipped",
                d.label
            )),
            "TrafficSplit" | "TrafficTarget" => {}
            other => notes.push(format!(
                "{}: kind \"{other}\" is not imported; skipped",
                d.label
            )),
        }
    }

    let mut b = Builder::default();
    for d in docs.iter().filter(|d| d.kind == "TrafficSplit") {
        split(d, &groups, &mut b, &mut notes, &mut errors);
    }
    for d in docs.iter().filter(|d| d.kind == "TrafficTarget") {
        target(
            d,
            &groups,
            &tcp_routes,
            opts,
            &mut b,
            &mut notes,
            &mut errors,
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Imported {
        tables: b.tables,
        notes,
    })
}

fn http_match(m: &Value, j: usize) -> HttpMatch {
    let name = m
        .get("name")
        .and_then(s)
        .map_or_else(|| format!("match-{j}"), str::to_owned);
    let path_regex = m.get("pathRegex").and_then(s).map(str::to_owned);
    let methods = seq(m.get("methods"))
        .iter()
        .filter_map(s)
        .map(str::to_owned)
        .collect();
    // v1alpha4: a map; the split spec's example writes a list of one-entry maps.
    let mut headers = Vec::new();
    let mut add = |map: &serde_yaml::Mapping| {
        for (k, v) in map {
            if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                headers.push((k.to_ascii_lowercase(), v.to_owned()));
            }
        }
    };
    match m.get("headers") {
        Some(Value::Mapping(map)) => add(map),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_mapping)
            .for_each(&mut add),
        _ => {}
    }
    HttpMatch {
        name,
        path_regex,
        methods,
        headers,
    }
}

/// SMI's start-anchored path regex as our whole-path regex.
fn whole_path_regex(r: &str) -> String {
    let r = r.strip_prefix('^').unwrap_or(r);
    match r.strip_suffix('$') {
        Some(full) => full.to_owned(),
        None if r.ends_with(".*") => r.to_owned(),
        None => format!("{r}.*"),
    }
}

#[derive(Default)]
struct Builder {
    tables: Tables,
}

impl Builder {
    fn service(&mut self, name: &str) {
        if !self.tables.services.iter().any(|s| *s.name == name) {
            self.tables.services.push(Sp::new(Service {
                name: Sp::new(name.to_owned()),
                hosts: Vec::new(),
                endpoints: Vec::new(),
                load_balancer: Sp::default(),
                hash_key: None,
                retries: None,
                fault: None,
                rate_limit: None,
                mirror: None,
                retry_budget: None,
                circuit_breaker: None,
                outlier: None,
                health_check: None,
                pool: None,
                upstream_protocol: Sp::default(),
            }));
        }
    }
}

/// Kubernetes quantity → thousandths (`1` → 1000, `500m` → 500, `0.5` → 500).
fn milli(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return n.checked_mul(1000);
    }
    let t = v.as_str()?.trim();
    if let Some(m) = t.strip_suffix('m') {
        return m.parse().ok();
    }
    let x: f64 = t.parse().ok()?;
    (x >= 0.0 && x.is_finite() && x < 4e12).then(|| (x * 1000.0).round() as u64)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn split(
    d: &Doc<'_>,
    groups: &BTreeMap<String, Vec<HttpMatch>>,
    b: &mut Builder,
    notes: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    let Some(root) = d.body.get("service").and_then(s) else {
        errors.push(format!("{}: no spec.service", d.label));
        return;
    };
    // The root may be written as an FQDN (v1alpha1): keep the service name.
    let root = root.split('.').next().unwrap_or(root).to_owned();
    b.service(&root);
    let mut backends = Vec::new();
    for be in seq(d.body.get("backends")) {
        let Some(svc) = be.get("service").and_then(s) else {
            errors.push(format!("{}: a backend without service", d.label));
            continue;
        };
        let Some(w) = be.get("weight").and_then(milli) else {
            notes.push(format!(
                "{}: backend {svc}: weight {:?} is not a number; backend left out",
                d.label,
                be.get("weight")
            ));
            continue;
        };
        b.service(svc);
        backends.push((svc.to_owned(), w));
    }
    if backends.is_empty() {
        errors.push(format!("{}: no usable backends", d.label));
        return;
    }
    let g = backends.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
    let backends: Vec<Sp<Backend>> = backends
        .into_iter()
        .map(|(svc, w)| {
            Sp::new(Backend {
                service: Some(Sp::new(svc)),
                labels: Labels::default(),
                weight: Sp::new(u32::try_from(w / g).unwrap_or(u32::MAX)),
            })
        })
        .collect();

    let refs = seq(d.body.get("matches"));
    if refs.is_empty() {
        b.tables.routes.push(Sp::new(Route {
            name: Some(Sp::new(d.name.clone())),
            service: Sp::new(root),
            matches: None,
            backends,
            timeout: None,
            timeouts: None,
            retries: None,
            fault: None,
            rate_limit: None,
            mirror: None,
        }));
        return;
    }
    for r in refs {
        let kind = r.get("kind").and_then(s).unwrap_or("HTTPRouteGroup");
        let Some(gname) = r.get("name").and_then(s) else {
            errors.push(format!("{}: a match without name", d.label));
            continue;
        };
        if kind != "HTTPRouteGroup" {
            notes.push(format!(
                "{}: match kind {kind} \"{gname}\" is not supported; left out",
                d.label
            ));
            continue;
        }
        let Some(group) = groups.get(gname) else {
            errors.push(format!(
                "{}: refers to HTTPRouteGroup \"{gname}\", which is not in the input",
                d.label
            ));
            continue;
        };
        for m in group {
            for (method, suffix) in methods_of(m) {
                let rm = RouteMatch {
                    host: None,
                    path: m
                        .path_regex
                        .as_deref()
                        .map(|r| Sp::new(PathMatch::Regex(whole_path_regex(r)))),
                    method: method.map(Sp::new),
                    headers: m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), Sp::new(HeaderMatch::Regex(v.clone()))))
                        .collect(),
                    grpc: None,
                };
                b.tables.routes.push(Sp::new(Route {
                    name: Some(Sp::new(format!("{}-{}{suffix}", d.name, m.name))),
                    service: Sp::new(root.clone()),
                    matches: Some(Sp::new(rm)),
                    backends: backends.clone(),
                    timeout: None,
                    timeouts: None,
                    retries: None,
                    fault: None,
                    rate_limit: None,
                    mirror: None,
                }));
            }
        }
    }
}

/// One route per method (ours match one method); `*` or none = any.
fn methods_of(m: &HttpMatch) -> Vec<(Option<String>, String)> {
    if m.methods.is_empty() || m.methods.iter().any(|x| x == "*") {
        return vec![(None, String::new())];
    }
    m.methods
        .iter()
        .map(|x| {
            (
                Some(x.to_ascii_uppercase()),
                format!("-{}", x.to_ascii_lowercase()),
            )
        })
        .collect()
}

fn target(
    d: &Doc<'_>,
    groups: &BTreeMap<String, Vec<HttpMatch>>,
    tcp_routes: &BTreeMap<String, Vec<i64>>,
    opts: &Options,
    b: &mut Builder,
    notes: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    let Some(dest) = d.body.get("destination") else {
        errors.push(format!("{}: no destination", d.label));
        return;
    };
    let Some(svc) = dest.get("name").and_then(s) else {
        errors.push(format!("{}: destination without name", d.label));
        return;
    };
    if dest.get("port").is_some() {
        notes.push(format!(
            "{}: destination port is not expressible; the rule covers every port",
            d.label
        ));
    }
    b.service(svc);
    let mut allow = Vec::new();
    for src in seq(d.body.get("sources")) {
        let kind = src.get("kind").and_then(s).unwrap_or("ServiceAccount");
        let (Some(name), "ServiceAccount") = (src.get("name").and_then(s), kind) else {
            notes.push(format!(
                "{}: source kind {kind} is not expressible; left out",
                d.label
            ));
            continue;
        };
        let ns = src.get("namespace").and_then(s).unwrap_or(&d.namespace);
        allow.push(Sp::new(format!(
            "spiffe://{}/ns/{ns}/sa/{name}",
            opts.trust_domain
        )));
    }
    if allow.is_empty() {
        notes.push(format!("{}: no usable sources; nothing allowed", d.label));
        return;
    }
    // v1alpha1 calls the rules `specs`.
    let rules = d.body.get("rules").or_else(|| d.body.get("specs"));
    let rule = |methods: Vec<Sp<String>>, paths: Vec<Sp<PathMatch>>| {
        Sp::new(Authorization {
            service: Sp::new(svc.to_owned()),
            allow: allow.clone(),
            deny: Vec::new(),
            methods,
            paths,
        })
    };
    for r in seq(rules) {
        let kind = r.get("kind").and_then(s).unwrap_or("");
        let Some(rname) = r.get("name").and_then(s) else {
            errors.push(format!("{}: a rule without name", d.label));
            continue;
        };
        match kind {
            "HTTPRouteGroup" => {
                let Some(group) = groups.get(rname) else {
                    errors.push(format!(
                        "{}: refers to HTTPRouteGroup \"{rname}\", which is not in the input",
                        d.label
                    ));
                    continue;
                };
                let wanted: Vec<&str> = seq(r.get("matches")).iter().filter_map(s).collect();
                for w in &wanted {
                    if !group.iter().any(|m| m.name == *w) {
                        errors.push(format!(
                            "{}: HTTPRouteGroup \"{rname}\" has no match \"{w}\"",
                            d.label
                        ));
                    }
                }
                for m in group
                    .iter()
                    .filter(|m| wanted.is_empty() || wanted.contains(&m.name.as_str()))
                {
                    if !m.headers.is_empty() {
                        notes.push(format!("{}: header conditions of match \"{}\" are not expressible in access rules; the rule ignores them", d.label, m.name));
                    }
                    let methods = methods_of(m)
                        .into_iter()
                        .filter_map(|(x, _)| x.map(Sp::new))
                        .collect();
                    let paths = m
                        .path_regex
                        .as_deref()
                        .map(|p| vec![Sp::new(PathMatch::Regex(whole_path_regex(p)))])
                        .unwrap_or_default();
                    b.tables.authorizations.push(rule(methods, paths));
                }
            }
            "TCPRoute" => {
                match tcp_routes.get(rname) {
                    Some(ports) if !ports.is_empty() => notes.push(format!(
                        "{}: TCPRoute \"{rname}\" ports {ports:?} are not expressible; the rule covers every port",
                        d.label
                    )),
                    Some(_) => {}
                    None => {
                        errors.push(format!("{}: refers to TCPRoute \"{rname}\", which is not in the input", d.label));
                        continue;
                    }
                }
                b.tables.authorizations.push(rule(Vec::new(), Vec::new()));
            }
            other => notes.push(format!(
                "{}: rule kind \"{other}\" is not expressible; left out",
                d.label
            )),
        }
    }
}
