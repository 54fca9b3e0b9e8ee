//! A TOML document as a tree where every key and value keeps its byte span.
//!
//! Built straight from the events of `toml_parser` (the lexer and parser under
//! `toml` 0.9; building our tree from them skips `toml`'s own `DeTable`, which cost
//! as much again), then decoded into the typed schema by [`crate::de`]. When that
//! path rejects a text, `toml_edit`'s parser reads it again: its syntax-error
//! messages and positions are the ones `xdpmesh check` has always printed, and a
//! text only it accepts still gets a tree. Other crates (hw-config's `[[interface]]`)
//! get these nodes handed on untouched and decode them with the same machinery.

use std::sync::Arc;

use std::borrow::Cow;

use rustc_hash::FxHashMap;
use toml::value::Datetime;
use toml_edit::{ImDocument, Item, Table, Value as TValue};

use crate::diag::Diagnostic;
use crate::source::{Source, Span};
use toml_parser::decoder::{Encoding, ScalarKind};
use toml_parser::lexer::TokenKind;
use toml_parser::parser::{Event, EventKind, EventReceiver, RecursionGuard, ValidateWhitespace};
use toml_parser::{ErrorSink, Span as PSpan};

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

/// `None` when `toml_parser` rejects the text, a value does not fit ours (an
/// integer out of range), or the text does something this builder does not take
/// on (a redefinition, a dotted key into a header-made table): `toml_edit` then
/// decides, and says why with the position. So this only has to be right about
/// what it accepts.
fn parse_fast(text: &str) -> Option<Node> {
    let mut fast = Fast {
        source: toml_parser::Source::new(text),
        events: Vec::new(),
        pos: 0,
        keys: Keys::default(),
        root: Vec::new(),
        meta: Vec::new(),
        current: Vec::new(),
    };
    chunks(text, |events| {
        // Borrowed for the chunk and handed back, so the buffer is reused.
        fast.events = std::mem::take(events);
        fast.pos = 0;
        let done = fast.expressions();
        *events = std::mem::take(&mut fast.events);
        done
    })?;
    Some(Node {
        span: 0..0,
        value: Value::Table(fast.root),
    })
}

/// Lexes and parses `text` a chunk of lines at a time and hands each chunk's
/// events (no whitespace, comments or newlines) to `each`. `None` when
/// `toml_parser` rejects the text or `each` gives up.
pub(crate) fn chunks(
    text: &str,
    mut each: impl FnMut(&mut Vec<Event>) -> Option<()>,
) -> Option<()> {
    let source = toml_parser::Source::new(text);
    // The parser wants a slice of tokens ending in `Eof`; the empty text lexes to one.
    let eof = toml_parser::Source::new("").lex().next()?;
    let mut lexer = source.lex();
    let mut tokens = Vec::with_capacity(CHUNK_TOKENS + 1);
    let mut events = Vec::with_capacity(CHUNK_TOKENS);
    // Lexed and parsed a chunk of lines at a time, so the token and event buffers
    // stay small and are reused (whole-text buffers were ~40 MB, fresh pages on
    // every parse). A chunk ends after a newline outside brackets and braces: a
    // concatenation of valid documents split there is a valid document, and a
    // wrong split can only make a chunk fail, which falls back to toml_edit.
    let mut depth = 0i64;
    let mut at_eof = false;
    while !at_eof {
        tokens.clear();
        loop {
            let Some(t) = lexer.next() else {
                at_eof = true;
                break;
            };
            tokens.push(t);
            match t.kind() {
                TokenKind::Eof => {
                    at_eof = true;
                    break;
                }
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => depth -= 1,
                TokenKind::Newline if depth == 0 && tokens.len() >= CHUNK_TOKENS => break,
                _ => {}
            }
        }
        if tokens.last().map(|t| t.kind()) != Some(TokenKind::Eof) {
            tokens.push(eof);
        }
        events.clear();
        let mut sink = Collect {
            events: &mut events,
            bad: false,
        };
        let mut err: Option<toml_parser::ParseError> = None;
        {
            let mut ws = ValidateWhitespace::new(&mut sink, source);
            // Bounds the recursion of the consumers' value readers.
            let mut guard = RecursionGuard::new(&mut ws, MAX_DEPTH);
            toml_parser::parser::parse_document(&tokens, &mut guard, &mut err);
        }
        if err.is_some() || sink.bad {
            return None;
        }
        each(&mut events)?;
    }
    Some(())
}

/// Tokens per chunk (at least; a chunk ends at a line end).
const CHUNK_TOKENS: usize = 1 << 14;

/// Nesting of arrays and inline tables the fast path takes (toml's own limit).
const MAX_DEPTH: u32 = 80;

/// The parser's events without whitespace, comments and newlines (checked by
/// `ValidateWhitespace` before they get here).
struct Collect<'e> {
    events: &'e mut Vec<Event>,
    bad: bool,
}

impl Collect<'_> {
    fn push(&mut self, kind: EventKind, encoding: Option<Encoding>, span: PSpan) {
        self.events.push(Event::new_unchecked(kind, encoding, span));
    }
}

impl EventReceiver for Collect<'_> {
    fn std_table_open(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::StdTableOpen, None, span);
    }
    fn std_table_close(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::StdTableClose, None, span);
    }
    fn array_table_open(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::ArrayTableOpen, None, span);
    }
    fn array_table_close(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::ArrayTableClose, None, span);
    }
    fn inline_table_open(&mut self, span: PSpan, _: &mut dyn ErrorSink) -> bool {
        self.push(EventKind::InlineTableOpen, None, span);
        true
    }
    fn inline_table_close(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::InlineTableClose, None, span);
    }
    fn array_open(&mut self, span: PSpan, _: &mut dyn ErrorSink) -> bool {
        self.push(EventKind::ArrayOpen, None, span);
        true
    }
    fn array_close(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::ArrayClose, None, span);
    }
    fn simple_key(&mut self, span: PSpan, enc: Option<Encoding>, _: &mut dyn ErrorSink) {
        self.push(EventKind::SimpleKey, enc, span);
    }
    fn key_sep(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::KeySep, None, span);
    }
    fn key_val_sep(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::KeyValSep, None, span);
    }
    fn scalar(&mut self, span: PSpan, enc: Option<Encoding>, _: &mut dyn ErrorSink) {
        self.push(EventKind::Scalar, enc, span);
    }
    fn value_sep(&mut self, span: PSpan, _: &mut dyn ErrorSink) {
        self.push(EventKind::ValueSep, None, span);
    }
    fn error(&mut self, _: PSpan, _: &mut dyn ErrorSink) {
        self.bad = true;
    }
}

/// Interned keys of one document: equal keys share one `Arc`, so key lookups
/// while building compare pointers.
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

/// What the builder knows about each entry of a table it may still add to, kept
/// beside the entries (same index) and dropped once the tree is built. TOML's
/// rules (spec 1.0 "Table", "Array of Tables", "Inline Table"): a value, an
/// inline table or a static array is never added to; a table a header defined is
/// not defined again; a table made by dotted keys is extended only by dotted keys.
enum Meta {
    Frozen,
    Table(Made, Vec<Meta>),
    /// `[[x]]`: one `Meta::Table` per element.
    ArrayOfTables(Vec<Meta>),
}

#[derive(PartialEq)]
enum Made {
    /// By a header's leading keys (`[a.b]` makes `a`).
    Implicit,
    Header,
    Dotted,
}

type Key = (Arc<str>, Span);

fn pspan(s: PSpan) -> Span {
    s.start()..s.end()
}

fn find(es: &[Entry], k: &Arc<str>) -> Option<usize> {
    es.iter().position(|e| Arc::ptr_eq(&e.key, k))
}

/// Keys one table may have on the fast path: `find` is linear, so a table of
/// more goes to `toml_edit` (hashed) rather than take quadratic time.
pub(crate) const MAX_TABLE_KEYS: usize = 512;

/// `es` may take one more key.
fn room(es: &[Entry]) -> Option<()> {
    (es.len() < MAX_TABLE_KEYS).then_some(())
}

/// The entries (and their metas) of child `i`: a table, or the last element of
/// an array of tables.
fn child<'t>(
    es: &'t mut [Entry],
    ms: &'t mut [Meta],
    i: usize,
) -> Option<(&'t mut Vec<Entry>, &'t mut Vec<Meta>)> {
    let node = &mut es.get_mut(i)?.node;
    match (&mut node.value, ms.get_mut(i)?) {
        (Value::Table(t), Meta::Table(_, m)) => Some((t, m)),
        (Value::Array(a), Meta::ArrayOfTables(m)) => {
            match (&mut a.last_mut()?.value, m.last_mut()?) {
                (Value::Table(t), Meta::Table(_, m)) => Some((t, m)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn empty_table(span: Span) -> Node {
    Node {
        span,
        value: Value::Table(Vec::new()),
    }
}

/// `a.b.c = node` into the table `es`.
fn insert_dotted<'t>(
    mut es: &'t mut Vec<Entry>,
    mut ms: &'t mut Vec<Meta>,
    path: &[Key],
    node: Node,
) -> Option<()> {
    let ((last, last_span), prefix) = path.split_last()?;
    for (k, span) in prefix {
        let i = match find(es, k) {
            Some(i) => match ms.get(i)? {
                Meta::Table(Made::Dotted, _) => i,
                _ => return None,
            },
            None => {
                room(es)?;
                es.push(Entry {
                    key: k.clone(),
                    key_span: span.clone(),
                    node: empty_table(span.clone()),
                });
                ms.push(Meta::Table(Made::Dotted, Vec::new()));
                es.len() - 1
            }
        };
        (es, ms) = child(es, ms, i)?;
    }
    if find(es, last).is_some() {
        return None;
    }
    room(es)?;
    es.push(Entry {
        key: last.clone(),
        key_span: last_span.clone(),
        node,
    });
    ms.push(Meta::Frozen);
    Some(())
}

struct Fast<'t> {
    source: toml_parser::Source<'t>,
    /// The current chunk's events, and the next one to read.
    events: Vec<Event>,
    pos: usize,
    keys: Keys,
    root: Vec<Entry>,
    meta: Vec<Meta>,
    /// The table key-values go to: entry indices from the root.
    current: Vec<usize>,
}

impl Fast<'_> {
    fn next(&mut self) -> Option<Event> {
        let e = *self.events.get(self.pos)?;
        self.pos += 1;
        Some(e)
    }

    fn key(&mut self, e: Event) -> Option<Key> {
        let s = key(self.source.get(e)?)?;
        Some((self.keys.get(&s), pspan(e.span())))
    }

    /// Reads `a.b.c` starting at key event `first` into `out`; returns the event after it.
    fn dotted_key(&mut self, first: Event, out: &mut Vec<Key>) -> Option<Event> {
        out.clear();
        out.push(self.key(first)?);
        loop {
            let e = self.next()?;
            if e.kind() != EventKind::KeySep {
                return Some(e);
            }
            let k = self.next()?;
            if k.kind() != EventKind::SimpleKey {
                return None;
            }
            out.push(self.key(k)?);
        }
    }

    /// The key-values and headers of one chunk.
    fn expressions(&mut self) -> Option<()> {
        let mut path: Vec<Key> = Vec::new();
        while let Some(e) = self.next() {
            match e.kind() {
                EventKind::StdTableOpen | EventKind::ArrayTableOpen => {
                    let array = e.kind() == EventKind::ArrayTableOpen;
                    let first = self.next()?;
                    if first.kind() != EventKind::SimpleKey {
                        return None;
                    }
                    let close = self.dotted_key(first, &mut path)?;
                    let want = if array {
                        EventKind::ArrayTableClose
                    } else {
                        EventKind::StdTableClose
                    };
                    if close.kind() != want {
                        return None;
                    }
                    let span = e.span().start()..close.span().end();
                    self.current = header(&mut self.root, &mut self.meta, &path, array, span)?;
                }
                EventKind::SimpleKey => {
                    if self.dotted_key(e, &mut path)?.kind() != EventKind::KeyValSep {
                        return None;
                    }
                    let node = self.value()?;
                    let (mut es, mut ms) = (&mut self.root, &mut self.meta);
                    for &i in &self.current {
                        (es, ms) = child(es, ms, i)?;
                    }
                    insert_dotted(es, ms, &path, node)?;
                }
                _ => return None,
            }
        }
        Some(())
    }

    fn value(&mut self) -> Option<Node> {
        let e = self.next()?;
        match e.kind() {
            EventKind::Scalar => self.scalar(e),
            EventKind::ArrayOpen => {
                let mut items = Vec::new();
                loop {
                    let n = self.next()?;
                    match n.kind() {
                        EventKind::ArrayClose => {
                            return Some(Node {
                                span: e.span().start()..n.span().end(),
                                value: Value::Array(items),
                            })
                        }
                        EventKind::ValueSep => {}
                        _ => {
                            self.pos -= 1;
                            items.push(self.value()?);
                        }
                    }
                }
            }
            EventKind::InlineTableOpen => {
                let mut es = Vec::new();
                let mut ms = Vec::new();
                let mut path = Vec::new();
                loop {
                    let n = self.next()?;
                    match n.kind() {
                        EventKind::InlineTableClose => {
                            return Some(Node {
                                span: e.span().start()..n.span().end(),
                                value: Value::Table(es),
                            })
                        }
                        EventKind::ValueSep => {}
                        EventKind::SimpleKey => {
                            if self.dotted_key(n, &mut path)?.kind() != EventKind::KeyValSep {
                                return None;
                            }
                            let node = self.value()?;
                            insert_dotted(&mut es, &mut ms, &path, node)?;
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    fn scalar(&mut self, e: Event) -> Option<Node> {
        let value = match scalar(self.source.get(e)?)? {
            Scalar::Str(s) => Value::String(s.into_owned()),
            Scalar::Datetime(d) => Value::Datetime(d),
            Scalar::Int(i) => Value::Integer(i),
            Scalar::Float(x) => Value::Float(x),
            Scalar::Bool(b) => Value::Boolean(b),
        };
        Some(Node {
            span: pspan(e.span()),
            value,
        })
    }
}

/// A scalar as both fast paths read it (this one and [`crate::fastde`]).
pub(crate) enum Scalar<'t> {
    Str(Cow<'t, str>),
    /// As toml writes it back.
    Datetime(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// `None` for a value that does not fit ours (an integer out of range, a float
/// literal that overflows): the caller then falls back.
pub(crate) fn scalar(raw: toml_parser::Raw<'_>) -> Option<Scalar<'_>> {
    let mut s = Cow::Borrowed("");
    let mut err: Option<toml_parser::ParseError> = None;
    let kind = raw.decode_scalar(&mut s, &mut err);
    if err.is_some() {
        return None;
    }
    Some(match kind {
        ScalarKind::String => Scalar::Str(s),
        ScalarKind::Boolean(b) => Scalar::Bool(b),
        ScalarKind::DateTime => Scalar::Datetime(s.parse::<Datetime>().ok()?.to_string()),
        ScalarKind::Integer(radix) => Scalar::Int(i64::from_str_radix(&s, radix.value()).ok()?),
        ScalarKind::Float => {
            let x: f64 = s.parse().ok()?;
            // An overflowing literal (1e999) is an error in TOML, not infinity.
            if x.is_infinite() && !s.contains("inf") {
                return None;
            }
            Scalar::Float(x)
        }
    })
}

/// A key as written, unquoted and unescaped.
pub(crate) fn key(raw: toml_parser::Raw<'_>) -> Option<Cow<'_, str>> {
    let mut s = Cow::Borrowed("");
    let mut err: Option<toml_parser::ParseError> = None;
    raw.decode_key(&mut s, &mut err);
    err.is_none().then_some(s)
}

/// `[a.b.c]` or `[[a.b.c]]`: makes or finds the table; returns its index path.
fn header<'t>(
    root: &'t mut Vec<Entry>,
    meta: &'t mut Vec<Meta>,
    path: &[Key],
    array: bool,
    span: Span,
) -> Option<Vec<usize>> {
    let ((last, last_span), prefix) = path.split_last()?;
    let mut at = Vec::with_capacity(path.len());
    let (mut es, mut ms) = (root, meta);
    for (k, kspan) in prefix {
        let i = match find(es, k) {
            Some(i) => match ms.get(i)? {
                Meta::Table(..) | Meta::ArrayOfTables(_) => i,
                Meta::Frozen => return None,
            },
            None => {
                room(es)?;
                es.push(Entry {
                    key: k.clone(),
                    key_span: kspan.clone(),
                    node: empty_table(kspan.clone()),
                });
                ms.push(Meta::Table(Made::Implicit, Vec::new()));
                es.len() - 1
            }
        };
        at.push(i);
        (es, ms) = child(es, ms, i)?;
    }
    let i = match find(es, last) {
        None => {
            room(es)?;
            let (node, m) = if array {
                (
                    Node {
                        span: span.clone(),
                        value: Value::Array(vec![empty_table(span)]),
                    },
                    Meta::ArrayOfTables(vec![Meta::Table(Made::Header, Vec::new())]),
                )
            } else {
                (empty_table(span), Meta::Table(Made::Header, Vec::new()))
            };
            es.push(Entry {
                key: last.clone(),
                key_span: last_span.clone(),
                node,
            });
            ms.push(m);
            es.len() - 1
        }
        Some(i) => {
            let entry = es.get_mut(i)?;
            match (ms.get_mut(i)?, &mut entry.node.value, array) {
                (Meta::Table(made, _), _, false) if *made == Made::Implicit => {
                    // Spans as toml_edit gives them: where the table is defined.
                    *made = Made::Header;
                    entry.node.span = span;
                    entry.key_span = last_span.clone();
                }
                (Meta::ArrayOfTables(m), Value::Array(items), true) => {
                    items.push(empty_table(span));
                    m.push(Meta::Table(Made::Header, Vec::new()));
                }
                _ => return None,
            }
            i
        }
    };
    at.push(i);
    Some(at)
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
            // Dotted keys inside an inline table extend the table they made.
            "x = { a.b = 1, a.c = 2, d = 3 }\n",
            // A header may add a sub-table under a table dotted keys made.
            "[fruit]\napple.color = 'red'\napple.taste.sweet = true\n[fruit.apple.texture]\nsmooth = true\n",
            // An implicit table defined later; a header into the last array element.
            "[a.b.c]\nx = 1\n[a.b]\nd = 1\n[[t]]\n[t.s]\nx = 1\n[[t]]\n[t.s]\nx = 2\n",
            "\"a\\tb\" = 1\n'c.d' = 2\n\"\" = 3\nk.\"q.r\".s = 4\n",
            "# comment\n[ spaced . header ] # c\n  k = \"v\" # c\n",
            "e = \"\\U0001F600 \\\" \\\\\"\nm = '''\nfirst\n  second'''\n",
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

    /// TOML's rules on defining things once: the fast path must not accept any of
    /// these, and the fallback reports each as an error.
    #[test]
    fn redefinitions_and_bad_values_are_errors() {
        let bad = [
            "a = 1\na = 2\n",
            "a.b = 1\na = 2\n",
            "a.b = 1\na.b.c = 2\n",
            "[a]\n[a]\n",
            "[a]\nb = 1\n[a.b]\n",
            "a = { b = 1 }\n[a]\n",
            "a = { b = 1 }\na.c = 2\n",
            "a = [1]\n[[a]]\n",
            "[[a]]\n[a]\n",
            "[a.b]\n[[a]]\n",
            "[a]\n[[a]]\n",
            "[fruit]\napple.color = 'red'\n[fruit.apple]\n",
            "x = { a = 1, a = 2 }\n",
            "x = { a = { b = 1 }, a.c = 2 }\n",
            "x = { a = [1] }\n[x.a]\n",
            "a = \"\\q\"\n",
            "a = 1979-13-45\n",
            "a = 1e999\n",
            "a = \"x\"\"y\"\n",
            "[a\n",
            "a = [1, 2\n",
            "a = 1 b = 2\n",
        ];
        for text in bad {
            assert!(parse_fast(text).is_none(), "fast path accepted {text:?}");
            let d = parse(&Source::new("t", text)).expect_err(text);
            assert!(d.message.starts_with("TOML syntax error"), "{}", d.message);
        }
    }

    /// Texts of many chunks: the same tree as toml_edit, and redefinitions across
    /// chunks still caught.
    #[test]
    fn long_texts_parse_across_chunks() {
        let mut text = String::from("[top]\nk = 1\n");
        for i in 0..3000 {
            text.push_str(&format!(
                "[[service]]\nname = \"s{i}\" # c\nendpoints = [\n  {{ address = \"a{i}\" }},\n  {{ address = \"b\", labels = {{ v = \"1\" }} }},\n]\nm = \"\"\"\n[x]\n\"\"\"\n"
            ));
        }
        assert!(text.len() / 4 > CHUNK_TOKENS, "spans several chunks");
        let src = Source::new("t", text.as_str());
        let fast = parse_fast(&text).expect("fast parser accepts");
        let edit = parse_edit(&src).expect("toml_edit accepts");
        assert!(same(&fast, &edit));
        for tail in ["[top]\n", "[[top]]\n", "m = 2\n", "[service]\n", "x = ]\n"] {
            let bad = format!("{text}{tail}");
            assert!(parse_fast(&bad).is_none(), "{tail}");
            assert!(parse(&Source::new("t", bad.as_str())).is_err(), "{tail}");
        }
    }

    #[test]
    fn big_tables_go_to_toml_edit() {
        let text: String = (0..2000).map(|i| format!("k{i} = {i}\n")).collect();
        assert!(parse_fast(&text).is_none());
        let root = parse(&Source::new("t", text.as_str())).expect("parses");
        let Value::Table(es) = &root.value else {
            panic!("table")
        };
        assert_eq!(es.len(), 2000);
    }

    #[test]
    fn deep_nesting_is_not_a_crash() {
        let text = format!("a = {}1{}\n", "[".repeat(5000), "]".repeat(5000));
        assert!(parse_fast(&text).is_none());
        let text = format!("a = {}1{}\n", "{ b = ".repeat(100), " }".repeat(100));
        assert!(parse_fast(&text).is_none());
    }

    #[test]
    fn syntax_error_has_a_position() {
        let src = Source::new("t", "a = 1\nb = = 2\n");
        let d = parse(&src).expect_err("bad toml");
        assert_eq!((d.line, d.col), (2, 5));
        assert!(d.message.starts_with("TOML syntax error"), "{}", d.message);
    }
}
