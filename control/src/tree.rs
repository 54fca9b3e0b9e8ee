//! A TOML document as a tree where every key and value keeps its byte span.
//!
//! Built from `toml`'s spanned parser (`toml::de::DeTable`, the fastest spanned TOML
//! parser we measured), then decoded into the typed schema by [`crate::de`]. When
//! that parser rejects a text, `toml_edit`'s parser reads it again: its syntax-error
//! messages and positions are the ones `xdpmesh check` has always printed, and a text
//! only it accepts still gets a tree. Other crates (hw-config's `[[interface]]`) get
//! these nodes handed on untouched and decode them with the same machinery.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use toml::de::{DeTable, DeValue};
use toml::Spanned;
use toml_edit::{ImDocument, Item, Table, Value as TValue};

use crate::diag::Diagnostic;
use crate::source::{Source, Span};

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// TOML date/time, kept as written; no table of ours takes one.
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Shared between equal keys of one document (a file of 10k services has
    /// 400k keys and a few dozen distinct ones).
    pub key: Arc<str>,
    pub key_span: Span,
    pub node: Node,
}

impl Value {
    /// The TOML word for this kind of value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

impl Node {
    /// The entry for `key` if this is a table that has it.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Table(es) => es.iter().find(|e| &*e.key == key),
            _ => None,
        }
    }
}

/// Parse TOML text into a spanned tree. A syntax error stops parsing: TOML
/// cannot be read past it, so only that one error is reported.
pub fn parse(src: &Source) -> Result<Node, Diagnostic> {
    match parse_fast(&src.text) {
        Some(root) => Ok(root),
        None => parse_edit(src),
    }
}

/// `None` when `toml` rejects the text or a value does not fit ours (an integer
/// out of range): `toml_edit` then says why, with the position.
fn parse_fast(text: &str) -> Option<Node> {
    let doc = DeTable::parse(text).ok()?;
    fast_table(doc.into_inner(), 0..0, &mut Keys::default())
}

/// Interned keys of one document.
#[derive(Default)]
struct Keys(FxHashMap<Box<str>, Arc<str>>);

impl Keys {
    fn get(&mut self, k: &str) -> Arc<str> {
        if let Some(a) = self.0.get(k) {
            return a.clone();
        }
        let a: Arc<str> = k.into();
        self.0.insert(k.into(), a.clone());
        a
    }
}

fn fast_table(t: DeTable<'_>, span: Span, keys: &mut Keys) -> Option<Node> {
    let mut entries = Vec::with_capacity(t.len());
    for (k, v) in t {
        let key_span = k.span();
        entries.push(Entry {
            key: keys.get(k.get_ref()),
            key_span,
            node: fast_value(v, keys)?,
        });
    }
    Some(Node {
        span,
        value: Value::Table(entries),
    })
}

fn fast_value(v: Spanned<DeValue<'_>>, keys: &mut Keys) -> Option<Node> {
    let span = v.span();
    let value = match v.into_inner() {
        DeValue::String(s) => Value::String(s.into_owned()),
        DeValue::Integer(i) => Value::Integer(i64::from_str_radix(i.as_str(), i.radix()).ok()?),
        DeValue::Float(f) => {
            let x: f64 = f.as_str().parse().ok()?;
            // An overflowing literal (1e999) is an error in TOML, not infinity.
            if x.is_infinite() && !f.as_str().contains("inf") {
                return None;
            }
            Value::Float(x)
        }
        DeValue::Boolean(b) => Value::Boolean(b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(
            a.into_iter()
                .map(|v| fast_value(v, keys))
                .collect::<Option<_>>()?,
        ),
        DeValue::Table(t) => return fast_table(t, span, keys),
    };
    Some(Node { span, value })
}

fn parse_edit(src: &Source) -> Result<Node, Diagnostic> {
    let doc = ImDocument::parse(&*src.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        // toml_edit's message is multi-line with a source excerpt; keep the last line.
        let msg = e.message().trim().replace('\n', "; ");
        Diagnostic::at(src, &span, "", format!("TOML syntax error: {msg}"))
    })?;
    Ok(table(doc.as_table(), 0..0))
}

fn table(t: &Table, fallback: Span) -> Node {
    let span = t.span().unwrap_or(fallback);
    let entries = t
        .iter()
        .filter_map(|(k, item)| {
            let key_span = t.key(k).and_then(|k| k.span()).unwrap_or(span.clone());
            let node = self::item(item, key_span.clone())?;
            Some(Entry {
                key: k.into(),
                key_span,
                node,
            })
        })
        .collect();
    Node {
        span,
        value: Value::Table(entries),
    }
}

fn item(it: &Item, fallback: Span) -> Option<Node> {
    match it {
        Item::None => None,
        Item::Value(v) => Some(value(v, fallback)),
        Item::Table(t) => Some(table(t, fallback)),
        Item::ArrayOfTables(a) => {
            let span = a.span().unwrap_or(fallback);
            let elems = a.iter().map(|t| table(t, span.clone())).collect();
            Some(Node {
                span,
                value: Value::Array(elems),
            })
        }
    }
}

fn value(v: &TValue, fallback: Span) -> Node {
    let span = v.span().unwrap_or(fallback);
    let value = match v {
        TValue::String(s) => Value::String(s.value().clone()),
        TValue::Integer(i) => Value::Integer(*i.value()),
        TValue::Float(f) => Value::Float(*f.value()),
        TValue::Boolean(b) => Value::Boolean(*b.value()),
        TValue::Datetime(d) => Value::Datetime(d.value().to_string()),
        TValue::Array(a) => Value::Array(a.iter().map(|x| value(x, span.clone())).collect()),
        TValue::InlineTable(t) => Value::Table(
            t.iter()
                .map(|(k, x)| {
                    let key_span = t.key(k).and_then(|k| k.span()).unwrap_or(span.clone());
                    Entry {
                        key: k.into(),
                        key_span: key_span.clone(),
                        node: value(x, key_span),
                    }
                })
                .collect(),
        ),
    };
    Node { span, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spans_of_keys_and_values() {
        let text = "[[service]]\nname = \"a\"\nendpoints = [{ address = \"1.2.3.4:5\" }]\n";
        let src = Source::new("t", text);
        let root = parse(&src).expect("parses");
        let svc = &root.get("service").expect("service").node;
        let Value::Array(items) = &svc.value else {
            panic!("array of tables")
        };
        let name = items[0].get("name").expect("name");
        assert_eq!(&text[name.key_span.clone()], "name");
        assert_eq!(&text[name.node.span.clone()], "\"a\"");
        let eps = &items[0].get("endpoints").expect("endpoints").node;
        let Value::Array(eps) = &eps.value else {
            panic!("array")
        };
        let addr = eps[0].get("address").expect("address");
        assert_eq!(src.line_col(addr.node.span.start), (3, 26));
    }

    /// Same keys, values and start positions (the only part of a span messages use).
    fn same(a: &Node, b: &Node) -> bool {
        a.span.start == b.span.start
            && match (&a.value, &b.value) {
                (Value::Array(x), Value::Array(y)) => {
                    x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
                }
                (Value::Table(x), Value::Table(y)) => {
                    x.len() == y.len()
                        && x.iter().zip(y).all(|(a, b)| {
                            a.key == b.key && a.key_span == b.key_span && same(&a.node, &b.node)
                        })
                }
                (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
                (x, y) => x == y,
            }
    }

    #[test]
    fn fast_parser_gives_the_tree_toml_edit_gives() {
        let mut texts: Vec<String> = [
            "a = 1\nb.c.d = \"x\"\nb.e = [1, 2.5, true, 'lit']\n",
            "[t]\nx = 0x1f\ny = 1_000\nz = -3\nf = 6.02e23\nn = nan\ni = -inf\n[t.sub]\nq = 1\n",
            "[[a.b]]\nx = 1\n[[a.b]]\nx = 2\n[a.b.c]\ny = 3\n[a]\nz = 4\n",
            "d1 = 1979-05-27T07:32:00Z\nd2 = 1979-05-27\nd3 = 07:32:00\nd4 = 1979-05-27T00:32:00.999999-07:00\n",
            r#"s = """
multi\
  line"""
t = '''raw
x'''
u = "\u00e9\t"
"quoted key" = 1
"#,
            "x = { a = { b = [ { c = 1 }, { d = [] } ] }, e = {} }\n[[y]]\n[[y]]\nz = 1\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for e in std::fs::read_dir(dir).expect("examples dir") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "toml") {
                texts.push(std::fs::read_to_string(path).expect("example"));
            }
        }
        for text in texts {
            let src = Source::new("t", text.as_str());
            let fast = parse_fast(&text).expect("fast parser accepts");
            let edit = parse_edit(&src).expect("toml_edit accepts");
            assert!(same(&fast, &edit), "{text}\n{fast:#?}\n{edit:#?}");
        }
    }

    #[test]
    fn what_the_fast_parser_rejects_gets_toml_edit_s_error() {
        // Out of i64 range: toml_edit's message, at the value.
        let src = Source::new("t", "a = 1\nb = 9223372036854775808\n");
        let d = parse(&src).expect_err("too large");
        assert_eq!((d.line, d.col), (2, 5), "{}", d.message);
        assert!(d.message.starts_with("TOML syntax error"), "{}", d.message);
        let src = Source::new("t", "a = 1\na = 2\n");
        let d = parse(&src).expect_err("duplicate key");
        assert_eq!(d.line, 2, "{}", d.message);
    }

    #[test]
    fn syntax_error_has_a_position() {
        let src = Source::new("t", "a = 1\nb = = 2\n");
        let d = parse(&src).expect_err("bad toml");
        assert_eq!((d.line, d.col), (2, 5));
        assert!(d.message.starts_with("TOML syntax error"), "{}", d.message);
    }
}
