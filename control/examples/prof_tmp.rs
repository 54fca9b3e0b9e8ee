// TEMPORARY profiling harness (helperA); deleted before hand-off.
use control::{de, tree, validate, Context, Source, Tables};
use std::time::Instant;
const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 5;
fn big_tables() -> String {
    let mut s = String::with_capacity(8 << 20);
    for i in 0..SERVICES {
        s.push_str(&format!(
            "[[service]]\nname = \"svc-{i}\"\nhosts = [\"svc-{i}.corp.mesh\"]\nendpoints = [\n"
        ));
        for e in 0..ENDPOINTS_PER_SERVICE {
            let ip = i * ENDPOINTS_PER_SERVICE + e;
            s.push_str(&format!(
                "  {{ address = \"10.{}.{}.{}:8080\", labels = {{ version = \"v{}\" }} }},\n",
                ip >> 16,
                (ip >> 8) & 255,
                ip & 255,
                e % 2 + 1
            ));
        }
        s.push_str("]\n");
    }
    for i in 0..SERVICES {
        let m = match i % 3 {
            0 => format!("{{ path = {{ prefix = \"/api/v{}\" }} }}", i % 7),
            1 => format!("{{ path = {{ exact = \"/items/{i}\" }}, method = \"GET\" }}"),
            _ => "{ headers = { x-canary = \"1\" } }".to_owned(),
        };
        s.push_str(&format!(
            "[[route]]\nservice = \"svc-{i}\"\nmatch = {m}\nbackends = [{{ labels = {{ version = \"v1\" }}, weight = 90 }}, {{ labels = {{ version = \"v2\" }}, weight = 10 }}]\n"
        ));
    }
    s
}
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
fn main() {
    let only = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args()
        .nth(2)
        .map(|x| x.parse().unwrap())
        .unwrap_or(7);
    let text = big_tables();
    let src = Source::new("big.toml", text.as_str());
    let ctx = Context::new(".");
    let root = tree::parse(&src).unwrap();
    let tables: Tables = de::decode(&src, &root, "").unwrap();
    let mut v = vec![];
    for _ in 0..n {
        let t = Instant::now();
        match only.as_str() {
            "detable" => drop(toml::de::DeTable::parse(&text).unwrap()),
            "parse" => drop(tree::parse(&src).unwrap()),
            "decode" => drop(de::decode::<Tables>(&src, &root, "").unwrap()),
            "validate" => drop(validate::validate(&src, &tables, &ctx).unwrap()),
            _ => drop(control::compile(&src, &ctx).unwrap()),
        }
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{only}: median {:.1} ms (incl. drop), min {:.1}",
        med(v.clone()),
        v.iter().cloned().fold(f64::MAX, f64::min)
    );
}
