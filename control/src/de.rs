//! serde decoding of a spanned [`Node`] tree that reports *every* error it can,
//! each with its span, key path and a hint.
//!
//! serde stops at the first error, so [`decode`] retries: after each error it hides
//! the offending key or element (as if it were not written) and decodes again, until
//! it succeeds or nothing is left to hide. A missing key reported for a table whose
//! value was hidden by an earlier error is not reported twice. Array indices in
//! messages stay those of the file.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, value::StrDeserializer, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess,
    IntoDeserializer, MapAccess, SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde::{Deserialize, Serialize};

use crate::diag::{did_you_mean, Diagnostic};
use crate::source::{Source, Span};
use crate::tree::{Entry, Node, Value};

/// A value with the span it was written at. Compares, hashes and serializes as the
/// bare value, so tables compare equal whatever their layout.
#[derive(Clone, Default)]
pub struct Sp<T> {
    pub span: Span,
    pub value: T,
}

impl<T> Sp<T> {
    pub fn new(value: T) -> Self {
        Self { span: 0..0, value }
    }
}

impl<T> std::ops::Deref for Sp<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Sp<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Sp<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Sp<T> {}

impl<T: Serialize> Serialize for Sp<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T> From<T> for Sp<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

pub(crate) const SP_NAME: &str = "$xdpmesh::Sp";
const SP_START: &str = "$start";
const SP_END: &str = "$end";
const SP_VALUE: &str = "$value";

/// Only [`decode`]'s deserializer knows how to fill an `Sp<T>`.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sp<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Sp<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a spanned value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Sp<T>, A::Error> {
                let mut start = 0usize;
                let mut end = 0usize;
                while let Some(SpField(k)) = m.next_key::<SpField>()? {
                    match k {
                        SP_START => start = m.next_value()?,
                        SP_END => end = m.next_value()?,
                        SP_VALUE => {
                            let value = m.next_value()?;
                            return Ok(Sp {
                                span: start..end,
                                value,
                            });
                        }
                        _ => return Err(de::Error::custom("bad spanned value")),
                    }
                }
                Err(de::Error::custom("spanned value without a value"))
            }
        }
        d.deserialize_struct(SP_NAME, &[SP_START, SP_END, SP_VALUE], V(PhantomData))
    }
}

/// One of `Sp`'s field names, read without allocating (a table has one `Sp` per
/// value, and a `String` key each time showed in compile profiles).
struct SpField(&'static str);

impl<'de> Deserialize<'de> for SpField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SpField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a spanned value's field")
            }
            fn visit_str<E: de::Error>(self, k: &str) -> Result<SpField, E> {
                [SP_START, SP_END, SP_VALUE]
                    .into_iter()
                    .find(|f| *f == k)
                    .map(SpField)
                    .ok_or_else(|| E::custom("bad spanned value"))
            }
        }
        d.deserialize_identifier(V)
    }
}

// ---------------------------------------------------------------------------------
// Errors

#[derive(Debug)]
enum Kind {
    UnknownField,
    MissingField(String),
    Other,
}

/// An error while decoding; carries where it happened once a node claims it.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    hint: Option<String>,
    /// For an unknown key: the known key it most likely meant.
    meant: Option<&'static str>,
    at: Option<At>,
}

#[derive(Debug)]
struct At {
    span: Span,
    path: Vec<Seg>,
    /// Address of the node to hide before retrying.
    target: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl Error {
    fn new(message: String) -> Self {
        Self {
            kind: Kind::Other,
            message,
            hint: None,
            meant: None,
            at: None,
        }
    }
    fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// serde's names for what it expected, in TOML words.
fn toml_expected(exp: &str) -> String {
    match exp {
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" | "usize" => "a non-negative integer".into(),
        "i64" | "i32" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" | "a string" => exp.into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.into(),
    }
}

fn toml_unexpected(u: &Unexpected<'_>) -> String {
    match u {
        Unexpected::Bool(b) => format!("boolean {b}"),
        Unexpected::Signed(i) => format!("integer {i}"),
        Unexpected::Unsigned(i) => format!("integer {i}"),
        Unexpected::Float(x) => format!("float {x}"),
        // `{:?}`: a value may hold newlines or quotes; a message is one line.
        Unexpected::Str(s) => format!("string {s:?}"),
        Unexpected::Map => "a table".into(),
        Unexpected::Seq => "an array".into(),
        other => other.to_string(),
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(msg.to_string())
    }
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::new(format!(
            "expected {}, found {}",
            toml_expected(&exp.to_string()),
            toml_unexpected(&unexp)
        ))
    }
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::new(format!(
            "expected {}, found {}",
            toml_expected(&exp.to_string()),
            toml_unexpected(&unexp)
        ))
    }
    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        Self::new(format!("expected {exp}, found {len} elements"))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let hint = did_you_mean(variant, expected.iter().copied())
            .or_else(|| Some(format!("one of: {}", expected.join(", "))));
        Self::new(format!("unknown value {variant:?}")).with_hint(hint)
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let meant = closest(field, expected);
        let hint = if expected.is_empty() {
            Some("this table takes no keys".into())
        } else if let Some(m) = meant {
            Some(format!("did you mean \"{m}\"?"))
        } else {
            Some(format!("allowed keys: {}", expected.join(", ")))
        };
        Self {
            kind: Kind::UnknownField,
            message: format!("unknown key {field:?}"),
            hint,
            meant,
            at: None,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        Self {
            kind: Kind::MissingField(field.into()),
            message: format!("missing required key \"{field}\""),
            hint: Some(format!("add {field} = ...")),
            meant: None,
            at: None,
        }
    }
}

fn closest(word: &str, known: &'static [&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), *k))
        .filter(|(s, _)| *s >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

// ---------------------------------------------------------------------------------
// Paths: a borrowed chain while decoding, materialized only on error.

#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    fn to_vec(self) -> Vec<Seg> {
        let mut out = Vec::new();
        let mut p = self;
        loop {
            match p {
                Path::Root => break,
                Path::Key(parent, k) => {
                    out.push(Seg::Key(k.to_owned()));
                    p = *parent;
                }
                Path::Index(parent, i) => {
                    out.push(Seg::Index(i));
                    p = *parent;
                }
            }
        }
        out.reverse();
        out
    }
    fn last_key(&self) -> Option<&str> {
        match self {
            Path::Key(_, k) => Some(k),
            _ => None,
        }
    }
}

/// `service[0].endpoints[1].via`, with `prefix` in front.
pub fn path_string(prefix: &str, path: &[Seg]) -> String {
    let mut s = prefix.to_owned();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    s.push_str(k);
                } else {
                    s.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

// ---------------------------------------------------------------------------------
// The deserializer

type Hidden = HashSet<usize>;

fn addr(n: &Node) -> usize {
    n as *const Node as usize
}

struct NodeDe<'n, 'p> {
    node: &'n Node,
    path: Path<'p>,
    hidden: &'p Hidden,
}

impl<'n, 'p> NodeDe<'n, 'p> {
    fn locate(&self, mut e: Error) -> Error {
        if e.at.is_none() {
            e.at = Some(At {
                span: self.node.span.clone(),
                path: self.path.to_vec(),
                target: addr(self.node),
            });
        }
        e
    }

    fn wrong_type(&self, expected: &str) -> Error {
        let found = self.node.value.kind();
        let hint = match (&self.node.value, expected, self.path.last_key()) {
            (Value::Table(_), "an array", Some(k)) => {
                Some(format!("write [[{k}]] for each entry, or {k} = [ ... ]"))
            }
            (Value::Integer(i), "a string", _) => Some(format!("quote it: \"{i}\"")),
            (Value::String(s), "an integer", _) if s.parse::<i64>().is_ok() => {
                Some(format!("remove the quotes: {s}"))
            }
            _ => None,
        };
        self.locate(Error::new(format!("expected {expected}, found {found}")).with_hint(hint))
    }

    fn visible_entries(&self, es: &'n [Entry]) -> impl Iterator<Item = &'n Entry> + use<'n, 'p> {
        let hidden = self.hidden;
        es.iter()
            .filter(move |e| hidden.is_empty() || !hidden.contains(&addr(&e.node)))
    }
}

/// The `Deserializer` methods that both of our deserializers ([`NodeDe`] and
/// `fastde`'s) answer with another of their methods. One list, so that the two read
/// every type the same way: every integer as `i64`, `f32` as `f64`, characters,
/// bytes and identifiers as strings, tuples as arrays. A unit struct is a unit
/// (which no TOML value is).
macro_rules! forward_to_ours {
    ($err:ty) => {
        $crate::de::forward_to_ours!($err; deserialize_i64: deserialize_i8, deserialize_i16,
            deserialize_i32, deserialize_u8, deserialize_u16, deserialize_u32, deserialize_u64);
        $crate::de::forward_to_ours!($err; deserialize_f64: deserialize_f32);
        $crate::de::forward_to_ours!($err; deserialize_str: deserialize_string, deserialize_char,
            deserialize_identifier, deserialize_bytes, deserialize_byte_buf);

        fn deserialize_tuple<V: serde::de::Visitor<'de>>(
            self,
            _len: usize,
            v: V,
        ) -> Result<V::Value, $err> {
            self.deserialize_seq(v)
        }

        fn deserialize_tuple_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            _len: usize,
            v: V,
        ) -> Result<V::Value, $err> {
            self.deserialize_seq(v)
        }

        fn deserialize_unit_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            v: V,
        ) -> Result<V::Value, $err> {
            self.deserialize_unit(v)
        }
    };
    ($err:ty; $to:ident: $($from:ident),+) => {
        $(
            fn $from<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, $err> {
                self.$to(v)
            }
        )+
    };
}
pub(crate) use forward_to_ours;

impl<'de> Deserializer<'de> for NodeDe<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.node.value {
            Value::String(s) | Value::Datetime(s) => v.visit_str(s),
            Value::Integer(i) => v.visit_i64(*i),
            Value::Float(x) => v.visit_f64(*x),
            Value::Boolean(b) => v.visit_bool(*b),
            Value::Array(_) => return self.deserialize_seq(v),
            Value::Table(_) => return self.deserialize_map(v),
        };
        r.map_err(|e| self.locate(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Boolean(b) => v.visit_bool(*b).map_err(|e| self.locate(e)),
            _ => Err(self.wrong_type("a boolean")),
        }
    }

    forward_to_ours!(Error);

    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Integer(i) => v.visit_i64(*i).map_err(|e| self.locate(e)),
            _ => Err(self.wrong_type("an integer")),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Float(x) => v.visit_f64(*x).map_err(|e| self.locate(e)),
            Value::Integer(i) => v.visit_i64(*i).map_err(|e| self.locate(e)),
            _ => Err(self.wrong_type("a number")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::String(s) => v.visit_str(s).map_err(|e| self.locate(e)),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        // TOML has no null: a key that is written is Some.
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Array(items) => {
                let access = Seq {
                    items: items.iter().enumerate(),
                    path: &self.path,
                    hidden: self.hidden,
                };
                v.visit_seq(access).map_err(|e| self.locate(e))
            }
            _ => Err(self.wrong_type("an array")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Table(es) => {
                let access = Map {
                    entries: self.visible_entries(es),
                    value: None,
                    path: &self.path,
                    hidden: self.hidden,
                };
                v.visit_map(access).map_err(|e| self.locate(e))
            }
            _ => Err(self.wrong_type("a table")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        if name == SP_NAME {
            return v.visit_map(SpanAccess::new(self.node.span.clone(), self));
        }
        let _ = fields;
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::String(s) => {
                let d: StrDeserializer<'_, Error> = s.as_str().into_deserializer();
                v.visit_enum(d).map_err(|e| self.locate(e))
            }
            Value::Table(es) => {
                let mut vis = self.visible_entries(es);
                match (vis.next(), vis.next()) {
                    (Some(entry), None) => v
                        .visit_enum(Enum {
                            entry,
                            path: &self.path,
                            hidden: self.hidden,
                        })
                        .map_err(|e| self.locate(e)),
                    _ => Err(self.locate(
                        Error::new(format!(
                            "expected a table with exactly one of: {}",
                            variants.join(", ")
                        ))
                        .with_hint(Some(format!(
                            "e.g. {{ {} = ... }}",
                            variants.first().unwrap_or(&"key")
                        ))),
                    )),
                }
            }
            _ => Err(self.wrong_type(&format!("one of: {}", variants.join(", ")))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_unit<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Error> {
        // No table of ours has a unit value; TOML cannot write one.
        Err(self.locate(Error::new("this key takes no value".into())))
    }
}

struct Seq<'p, I> {
    items: I,
    path: &'p Path<'p>,
    hidden: &'p Hidden,
}

impl<'de, 'n: 'p, 'p, I: Iterator<Item = (usize, &'n Node)>> SeqAccess<'de> for Seq<'p, I> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        for (i, node) in self.items.by_ref() {
            if !self.hidden.is_empty() && self.hidden.contains(&addr(node)) {
                continue;
            }
            let path = Path::Index(self.path, i);
            let de = NodeDe {
                node,
                path,
                hidden: self.hidden,
            };
            return seed.deserialize(de).map(Some);
        }
        Ok(None)
    }
}

struct Map<'n, 'p, I> {
    entries: I,
    value: Option<&'n Entry>,
    path: &'p Path<'p>,
    hidden: &'p Hidden,
}

impl<'de, 'n, 'p, I: Iterator<Item = &'n Entry>> MapAccess<'de> for Map<'n, 'p, I> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let d: StrDeserializer<'_, Error> = (*entry.key).into_deserializer();
        seed.deserialize(d).map(Some).map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some(At {
                    span: entry.key_span.clone(),
                    path: Path::Key(self.path, &entry.key).to_vec(),
                    target: addr(&entry.node),
                });
            }
            e
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some(entry) = self.value.take() else {
            return Err(Error::new("value without a key".into()));
        };
        let path = Path::Key(self.path, &entry.key);
        seed.deserialize(NodeDe {
            node: &entry.node,
            path,
            hidden: self.hidden,
        })
    }
}

/// `Sp<T>`'s fields for a value at `span`: start, end, then the value itself from
/// `de` (this deserializer's and [`crate::fastde`]'s).
pub(crate) struct SpanAccess<D> {
    span: Span,
    de: Option<D>,
    state: u8,
}

impl<D> SpanAccess<D> {
    pub(crate) fn new(span: Span, de: D) -> Self {
        Self {
            span,
            de: Some(de),
            state: 0,
        }
    }
}

impl<'de, D: Deserializer<'de>> MapAccess<'de> for SpanAccess<D> {
    type Error = D::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, D::Error> {
        let key = match self.state {
            0 => SP_START,
            1 => SP_END,
            2 => SP_VALUE,
            _ => return Ok(None),
        };
        let d: StrDeserializer<'_, D::Error> = key.into_deserializer();
        seed.deserialize(d).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, D::Error> {
        self.state += 1;
        match self.state {
            1 => seed.deserialize((self.span.start as u64).into_deserializer()),
            2 => seed.deserialize((self.span.end as u64).into_deserializer()),
            _ => match self.de.take() {
                Some(d) => seed.deserialize(d),
                None => Err(de::Error::custom("spanned value read twice")),
            },
        }
    }
}

struct Enum<'n, 'p> {
    entry: &'n Entry,
    path: &'p Path<'p>,
    hidden: &'p Hidden,
}

impl<'de, 'n: 'p, 'p> EnumAccess<'de> for Enum<'n, 'p> {
    type Error = Error;
    type Variant = NodeDe<'n, 'p>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Error> {
        let d: StrDeserializer<'_, Error> = (*self.entry.key).into_deserializer();
        let v = seed.deserialize(d).map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some(At {
                    span: self.entry.key_span.clone(),
                    path: Path::Key(self.path, &self.entry.key).to_vec(),
                    target: addr(&self.entry.node),
                });
            }
            e
        })?;
        Ok((
            v,
            NodeDe {
                node: &self.entry.node,
                path: Path::Key(self.path, &self.entry.key),
                hidden: self.hidden,
            },
        ))
    }
}

impl<'de> VariantAccess<'de> for NodeDe<'_, '_> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Err(self.locate(Error::new("this value takes no table".into())))
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }
}

// ---------------------------------------------------------------------------------

/// Decode `root` into `T`, collecting every error. `prefix` goes in front of key
/// paths in messages (e.g. `interface[0]` when decoding one entry of a larger file).
pub fn decode<T: DeserializeOwned>(
    src: &Source,
    root: &Node,
    prefix: &str,
) -> Result<T, Vec<Diagnostic>> {
    match decode_partial(src, root, prefix) {
        (Some(v), d) if d.is_empty() => Ok(v),
        (_, d) => Err(d),
    }
}

/// Like [`decode`], but also returns what could be decoded with the bad parts left
/// out, so that later checks can still report their own errors.
pub fn decode_partial<T: DeserializeOwned>(
    src: &Source,
    root: &Node,
    prefix: &str,
) -> (Option<T>, Vec<Diagnostic>) {
    let mut hidden = Hidden::new();
    let mut diags = Vec::new();
    // (table path, key) pairs an unknown key was probably meant as: a missing-key
    // error for them would only repeat the typo.
    let mut meant: Vec<(Vec<Seg>, &'static str)> = Vec::new();
    // Each round hides one more node, so this ends; the bound is a guard, counted
    // only once there is an error (most texts decode in one round).
    let mut max_rounds = usize::MAX;
    let mut round = 0usize;
    while round < max_rounds {
        round += 1;
        let de = NodeDe {
            node: root,
            path: Path::Root,
            hidden: &hidden,
        };
        match T::deserialize(de) {
            Ok(v) => return (Some(v), diags),
            Err(e) => {
                if max_rounds == usize::MAX {
                    max_rounds = count_nodes(root) + 2;
                }
                let at = e.at.unwrap_or(At {
                    span: root.span.clone(),
                    path: Vec::new(),
                    target: addr(root),
                });
                let already_reported = match &e.kind {
                    Kind::MissingField(f) => {
                        meant.iter().any(|(p, m)| *p == at.path && m == f)
                            || node_at(root, &at.path)
                                .and_then(|n| n.get(f))
                                .is_some_and(|entry| hidden.contains(&addr(&entry.node)))
                    }
                    Kind::UnknownField => {
                        if let Some(m) = e.meant {
                            let table = at.path[..at.path.len().saturating_sub(1)].to_vec();
                            meant.push((table, m));
                        }
                        false
                    }
                    Kind::Other => false,
                };
                if !already_reported {
                    let mut key_path = at.path.clone();
                    if let Kind::MissingField(f) = &e.kind {
                        key_path.push(Seg::Key(f.clone()));
                    }
                    diags.push(
                        Diagnostic::at(src, &at.span, path_string(prefix, &key_path), e.message)
                            .maybe_hint(e.hint),
                    );
                }
                if at.target == addr(root) || !hidden.insert(at.target) {
                    return (None, diags);
                }
            }
        }
    }
    (None, diags)
}

fn node_at<'n>(root: &'n Node, path: &[Seg]) -> Option<&'n Node> {
    let mut n = root;
    for seg in path {
        n = match (seg, &n.value) {
            (Seg::Key(k), Value::Table(_)) => &n.get(k)?.node,
            (Seg::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(n)
}

fn count_nodes(n: &Node) -> usize {
    1 + match &n.value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Table(es) => es.iter().map(|e| count_nodes(&e.node)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Tables;

    /// Values and keys are quoted with escapes: a message stays on one line (found by
    /// the fuzzer: a multi-line string as an enum value).
    #[test]
    fn messages_quote_newlines() {
        let text = "[[listener]]\nname = \"w\"\nbind = \"0.0.0.0:1\"\nprotocol = \"\"\"a\nb\"\"\"\n\"x\\ny\" = 1\n";
        let src = Source::new("t", text);
        let root = crate::tree::parse(&src).expect("parses");
        let errs = decode::<Tables>(&src, &root, "").expect_err("bad protocol and key");
        let msgs: Vec<&str> = errs.iter().map(|d| d.message.as_str()).collect();
        assert!(msgs.contains(&"unknown value \"a\\nb\""), "{msgs:?}");
        assert!(msgs.contains(&"unknown key \"x\\ny\""), "{msgs:?}");
    }
}
