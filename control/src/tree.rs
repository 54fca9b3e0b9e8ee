//! A TOML document as a tree where every key and value keeps its byte span.
//!
//! Built from `toml_edit`'s parser (which keeps spans), then decoded into the typed
//! schema by [`crate::de`]. Other crates (hw-config's `[[interface]]`) get these nodes
//! handed on untouched and decode them with the same machinery.

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
    pub key: String,
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
            Value::Table(es) => es.iter().find(|e| e.key == key),
            _ => None,
        }
    }
}

/// Parse TOML text into a spanned tree. A syntax error stops parsing: TOML
/// cannot be read past it, so only that one error is reported.
pub fn parse(src: &Source) -> Result<Node, Diagnostic> {
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
                key: k.to_owned(),
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
                        key: k.to_owned(),
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

    #[test]
    fn syntax_error_has_a_position() {
        let src = Source::new("t", "a = 1\nb = = 2\n");
        let d = parse(&src).expect_err("bad toml");
        assert_eq!((d.line, d.col), (2, 5));
        assert!(d.message.starts_with("TOML syntax error"), "{}", d.message);
    }
}
