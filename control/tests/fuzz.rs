//! Robustness: random and mutated input through parse → decode → validate → compile
//! (and the node and SMI parsers) never panics, every error it reports points
//! inside the text, and the fast decoder accepts nothing the tree path does not
//! decode the same way. Property tests stand in for cargo-fuzz here: they run in the
//! normal test suite with a fixed case count.

use std::path::Path;

use control::{Context, Source};
use proptest::prelude::*;

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    v.sort();
    v
}

fn check_text(text: &str) {
    let src = Source::new("f.toml", text);
    let lines = text.split('\n').count();
    if let Err(d) = control::compile(&src, &Context::new("/nonexistent")) {
        assert!(!d.is_empty(), "an error result without errors");
        for e in d.iter() {
            assert!(
                e.line >= 1 && e.line <= lines,
                "line {} outside 1..={lines}: {e}",
                e.line
            );
            assert!(e.col >= 1, "{e}");
            assert!(!e.to_string().contains('\n'), "multi-line error: {e:?}");
        }
    }
    if let Some(d) = control::fastde::disagreement(text) {
        panic!("the fast decoder disagrees with the tree on {text:?}:\n{d}");
    }
    let _ = control::node::parse(src, Path::new("/nonexistent"));
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, char),
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let n = chars.len().max(1);
        match e {
            Edit::Insert(at, s) => {
                let at = at % (chars.len() + 1);
                chars.splice(at..at, s.chars());
            }
            Edit::Delete(at, len) => {
                let at = at % n;
                let end = (at + len).min(chars.len());
                if at < end {
                    chars.drain(at..end);
                }
            }
            Edit::Replace(at, c) => {
                if !chars.is_empty() {
                    let at = at % chars.len();
                    chars[at] = *c;
                }
            }
        }
    }
    chars.into_iter().collect()
}

/// Fragments that make TOML structurally interesting.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[[service]]\n".to_owned()),
        Just("[[route]]\n".to_owned()),
        Just("[service]\n".to_owned()),
        Just("name = \"a\"\n".to_owned()),
        Just("= ".to_owned()),
        Just("{ ".to_owned()),
        Just(" }".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just(",".to_owned()),
        Just("\n".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("weight = -1".to_owned()),
        Just("weight = 99999999999".to_owned()),
        Just("regex = \"(((\"".to_owned()),
        Just("regex = \"a{1000000}\"".to_owned()),
        Just("ü".to_owned()),
        "[a-z_.]{1,8}".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), fragment()).prop_map(|(a, s)| Edit::Insert(a, s)),
        (any::<usize>(), 1usize..20).prop_map(|(a, l)| Edit::Delete(a, l)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Edit::Replace(a, c)),
    ]
}

/// Random key = value lines and sections from the schema's words and others.
fn random_doc() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("identity"),
        Just("peer"),
        Just("listener"),
        Just("service"),
        Just("route"),
        Just("authorization"),
        Just("node"),
        Just("interface"),
        Just("bogus"),
    ];
    let key = prop_oneof![
        Just("name"),
        Just("id"),
        Just("address"),
        Just("bind"),
        Just("protocol"),
        Just("service"),
        Just("endpoints"),
        Just("backends"),
        Just("match"),
        Just("labels"),
        Just("weight"),
        Just("load_balancer"),
        Just("hash_key"),
        Just("allow"),
        Just("deny"),
        Just("paths"),
        Just("methods"),
        Just("hosts"),
        Just("via"),
        Just("sources"),
        Just("cert"),
        Just("key"),
        Just("identity"),
        Just("tables"),
        Just("admin"),
        Just("zzz"),
    ];
    let leaf = prop_oneof![
        "\"[ -~]{0,12}\"".prop_map(|s| s),
        Just("\"10.0.0.1:80\"".to_owned()),
        Just("\"spiffe://m/a\"".to_owned()),
        Just("\"round-robin\"".to_owned()),
        Just("\"http\"".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1.5".to_owned()),
    ];
    let value = leaf.prop_recursive(3, 16, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("address"),
                        Just("labels"),
                        Just("weight"),
                        Just("exact"),
                        Just("prefix"),
                        Just("regex"),
                        Just("x")
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| {
                let mut seen = std::collections::HashSet::new();
                let parts: Vec<String> = kv
                    .into_iter()
                    .filter(|(k, _)| seen.insert(*k))
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            }),
        ]
    });
    let entry = (
        section,
        any::<bool>(),
        prop::collection::vec((key, value), 0..6),
    )
        .prop_map(|(sec, aot, kvs)| {
            let mut s = if aot {
                format!("[[{sec}]]\n")
            } else {
                format!("[{sec}]\n")
            };
            let mut seen = std::collections::HashSet::new();
            for (k, v) in kvs {
                if seen.insert(k) {
                    s.push_str(&format!("{k} = {v}\n"));
                }
            }
            s
        });
    prop::collection::vec(entry, 0..6).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_examples_never_panic(which in 0usize..16, edits in prop::collection::vec(edit(), 1..8)) {
        let ex = examples();
        let text = apply(&ex[which % ex.len()], &edits);
        check_text(&text);
    }

    #[test]
    fn random_documents_never_panic(doc in random_doc()) {
        check_text(&doc);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check_text(&text);
    }

    #[test]
    fn mutated_smi_never_panics(which in 0usize..8, edits in prop::collection::vec(edit(), 1..6)) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smi");
        let mut files: Vec<_> = std::fs::read_dir(dir).expect("fixtures").map(|e| e.expect("e").path()).collect();
        files.sort();
        let text = std::fs::read_to_string(&files[which % files.len()]).expect("read");
        let mutated = apply(&text, &edits);
        if let Ok(out) = control::smi::import(&[("f.yaml".into(), mutated)], &control::smi::Options::default()) {
            // Whatever it makes must at least be TOML we can read back.
            let text = out.to_toml();
            let src = Source::new("imported.toml", text);
            let _ = control::compile(&src, &Context::new("."));
        }
    }
}
