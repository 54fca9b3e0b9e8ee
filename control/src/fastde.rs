//! The fast way from text to the schema types: decode straight from `toml_parser`'s
//! events, with no spanned tree in between. The tree and its allocations were more
//! than half of compiling a big tables file.
//!
//! It takes the layout tables files are written in: top-level keys, and `[name]` /
//! `[[name]]` headers whose entries are written inline. Anything else (a dotted key,
//! a nested header, a duplicate key) and any decoding error make it give up; then
//! [`crate::tree`] and [`crate::de`] read the text again and say what is wrong and
//! where. So, like the tree's own fast path, it only has to be right about what it
//! accepts, and there it must give what `de` gives, spans included. [`disagreement`]
//! checks that; the fuzz tests call it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    self, value::StrDeserializer, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess,
    IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;
use toml_parser::decoder::Encoding;
use toml_parser::parser::{Event, EventKind};
use toml_parser::Span as PSpan;

use crate::de::{Sp, SpanAccess, SP_NAME};
use crate::source::{Source, Span};
use crate::tree::{self, Scalar, MAX_TABLE_KEYS};

/// Decode `text` into tables, or `None` when the text is not in the layout this path
/// takes or does not decode: the caller then takes the tree path, which reports why.
pub fn tables(text: &str) -> Option<crate::Tables> {
    decode(text)
}

/// As [`tables`], for a `T` that visits every value it is given. Values are decoded
/// (and duplicate keys found) only when visited, so a type that skips some (no
/// `deny_unknown_fields`, `IgnoredAny`) could let through what the tree path rejects.
pub(crate) fn decode<T: DeserializeOwned>(text: &str) -> Option<T> {
    let doc = Doc::new(text)?;
    T::deserialize(De {
        doc: &doc,
        at: At::Root,
    })
    .ok()
}

/// One event in 16 bytes. Separators are left out (the parser has checked them);
/// an array or inline table opener knows its closer, so a value is skipped in one
/// step.
#[derive(Clone, Copy)]
struct Ev {
    start: u32,
    end: u32,
    /// For an opener, the index of its closer.
    link: u32,
    /// For an array, how many elements (saturating): serde sizes the vector once.
    len: u16,
    kind: EventKind,
    enc: Option<Encoding>,
}

const _: () = assert!(std::mem::size_of::<Ev>() == 16);

/// A `[name]` table or one `[[name]]` element: its header's span and the events
/// of its key-values.
struct Section {
    span: Span,
    kvs: (usize, usize),
}

enum RootVal {
    /// `name = value` before the first header: the value's first event.
    Value(usize),
    Table(Section),
    Array(Vec<Section>),
}

struct Doc<'t> {
    source: toml_parser::Source<'t>,
    ev: Vec<Ev>,
    root: Vec<(Cow<'t, str>, RootVal)>,
}

impl<'t> Doc<'t> {
    fn new(text: &'t str) -> Option<Self> {
        let mut doc = Doc {
            source: toml_parser::Source::new(text),
            ev: events(text)?,
            root: Vec::new(),
        };
        doc.layout()?;
        Some(doc)
    }

    /// Index after the value that starts at `i`.
    fn skip(&self, i: usize) -> Option<usize> {
        let e = self.ev.get(i)?;
        match e.kind {
            EventKind::Scalar => Some(i + 1),
            EventKind::ArrayOpen | EventKind::InlineTableOpen => Some(e.link as usize + 1),
            _ => None,
        }
    }

    fn event(&self, i: usize) -> Option<Event> {
        let e = self.ev.get(i)?;
        let span = PSpan::new_unchecked(e.start as usize, e.end as usize);
        Some(Event::new_unchecked(e.kind, e.enc, span))
    }

    fn key(&self, i: usize) -> Option<Cow<'t, str>> {
        let e = self.event(i)?;
        if e.kind() != EventKind::SimpleKey {
            return None;
        }
        tree::key(self.source.get(e)?)
    }

    fn scalar(&self, i: usize) -> Option<Scalar<'t>> {
        tree::scalar(self.source.get(self.event(i)?)?)
    }

    /// Sorts the top level into its keys; `None` for a dotted or repeated name.
    fn layout(&mut self) -> Option<()> {
        // The root entry whose last section the key-values go to.
        let mut current: Option<usize> = None;
        let mut i = 0;
        while i < self.ev.len() {
            let e = self.ev[i];
            match e.kind {
                EventKind::StdTableOpen | EventKind::ArrayTableOpen => {
                    self.end_section(current, i);
                    let array = e.kind == EventKind::ArrayTableOpen;
                    let key = self.key(i + 1)?;
                    let close = self.ev.get(i + 2)?;
                    let want = if array {
                        EventKind::ArrayTableClose
                    } else {
                        EventKind::StdTableClose
                    };
                    if close.kind != want {
                        return None;
                    }
                    let section = Section {
                        span: e.start as usize..close.end as usize,
                        kvs: (i + 3, i + 3),
                    };
                    let at = match self.root.iter().position(|(k, _)| *k == key) {
                        None if self.root.len() < MAX_TABLE_KEYS => {
                            let val = if array {
                                RootVal::Array(vec![section])
                            } else {
                                RootVal::Table(section)
                            };
                            self.root.push((key, val));
                            self.root.len() - 1
                        }
                        Some(r) => match &mut self.root[r].1 {
                            RootVal::Array(v) if array => {
                                v.push(section);
                                r
                            }
                            _ => return None,
                        },
                        None => return None,
                    };
                    current = Some(at);
                    i += 3;
                }
                EventKind::SimpleKey => {
                    let next = self.skip(i + 1)?;
                    if current.is_none() {
                        let key = self.key(i)?;
                        if self.root.iter().any(|(k, _)| *k == key)
                            || self.root.len() >= MAX_TABLE_KEYS
                        {
                            return None;
                        }
                        self.root.push((key, RootVal::Value(i + 1)));
                    }
                    i = next;
                }
                _ => return None,
            }
        }
        self.end_section(current, self.ev.len());
        Some(())
    }

    fn end_section(&mut self, current: Option<usize>, end: usize) {
        let section = match current.map(|r| &mut self.root[r].1) {
            Some(RootVal::Table(s)) => s,
            Some(RootVal::Array(v)) => match v.last_mut() {
                Some(s) => s,
                None => return,
            },
            _ => return,
        };
        section.kvs.1 = end;
    }
}

/// The events of `text`, or `None` for a syntax error, a dotted key or a text
/// over 4 GiB.
fn events(text: &str) -> Option<Vec<Ev>> {
    u32::try_from(text.len()).ok()?;
    // About one kept event per 5 bytes in tables files; a guess, not a bound. Capped
    // (16 MiB of events) so that a huge text that fails early reserves little.
    let mut out: Vec<Ev> = Vec::with_capacity((text.len() / 5).min(1 << 20));
    let mut open: Vec<usize> = Vec::new();
    tree::chunks(text, |chunk| {
        for e in chunk.iter() {
            let kind = e.kind();
            if let EventKind::Scalar | EventKind::ArrayOpen | EventKind::InlineTableOpen = kind {
                if let Some(&o) = open.last() {
                    let a: &mut Ev = &mut out[o];
                    if a.kind == EventKind::ArrayOpen {
                        a.len = a.len.saturating_add(1);
                    }
                }
            }
            match kind {
                EventKind::KeyValSep | EventKind::ValueSep => continue,
                EventKind::KeySep => return None,
                EventKind::ArrayOpen | EventKind::InlineTableOpen => open.push(out.len()),
                EventKind::ArrayClose | EventKind::InlineTableClose => {
                    let o = open.pop()?;
                    out[o].link = u32::try_from(out.len()).ok()?;
                }
                _ => {}
            }
            out.push(Ev {
                start: e.span().start() as u32,
                end: e.span().end() as u32,
                link: 0,
                len: 0,
                kind,
                enc: e.encoding(),
            });
        }
        Some(())
    })?;
    open.is_empty().then_some(out)
}

enum Shape<'t> {
    Scalar(Scalar<'t>),
    Array,
    Table,
}

/// Any failure: this path only says "not here".
#[derive(Debug)]
struct Bail;

impl fmt::Display for Bail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not on the fast path")
    }
}

impl std::error::Error for Bail {}

impl de::Error for Bail {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Bail
    }
}

/// Where a value is.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Ev(usize),
    Section(&'a Section),
    Sections(&'a [Section]),
}

#[derive(Clone, Copy)]
struct De<'a, 't> {
    doc: &'a Doc<'t>,
    at: At<'a>,
}

impl<'a, 't> De<'a, 't> {
    fn shape(&self) -> Result<Shape<'t>, Bail> {
        match self.at {
            At::Root | At::Section(_) => Ok(Shape::Table),
            At::Sections(_) => Ok(Shape::Array),
            At::Ev(i) => match self.doc.ev.get(i).ok_or(Bail)?.kind {
                EventKind::Scalar => self.doc.scalar(i).map(Shape::Scalar).ok_or(Bail),
                EventKind::ArrayOpen => Ok(Shape::Array),
                EventKind::InlineTableOpen => Ok(Shape::Table),
                _ => Err(Bail),
            },
        }
    }

    /// The span [`tree`] gives this value's node.
    fn span(&self) -> Span {
        match self.at {
            At::Root => 0..0,
            At::Section(s) => s.span.clone(),
            At::Sections(v) => v.first().map(|s| s.span.clone()).unwrap_or(0..0),
            At::Ev(i) => match self.doc.ev.get(i) {
                Some(e) => {
                    let end = match e.kind {
                        EventKind::ArrayOpen | EventKind::InlineTableOpen => {
                            self.doc.ev.get(e.link as usize).map_or(e.end, |c| c.end)
                        }
                        _ => e.end,
                    };
                    e.start as usize..end as usize
                }
                None => 0..0,
            },
        }
    }

    fn entries(&self) -> Result<Entries<'a, 't>, Bail> {
        let kvs = match self.at {
            At::Root => {
                return Ok(Entries {
                    doc: self.doc,
                    from: EntriesFrom::Root(0),
                    value: None,
                    seen: Seen::default(),
                })
            }
            At::Section(s) => s.kvs,
            At::Ev(i) => match self.doc.ev.get(i) {
                Some(e) if e.kind == EventKind::InlineTableOpen => (i + 1, e.link as usize),
                _ => return Err(Bail),
            },
            At::Sections(_) => return Err(Bail),
        };
        Ok(Entries {
            doc: self.doc,
            from: EntriesFrom::Kvs(kvs.0, kvs.1),
            value: None,
            seen: Seen::default(),
        })
    }

    fn items(&self) -> Result<Items<'a, 't>, Bail> {
        match self.at {
            At::Sections(v) => Ok(Items {
                doc: self.doc,
                from: ItemsFrom::Sections(v.iter()),
            }),
            At::Ev(i) => match self.doc.ev.get(i) {
                Some(e) if e.kind == EventKind::ArrayOpen => Ok(Items {
                    doc: self.doc,
                    from: ItemsFrom::Evs {
                        next: i + 1,
                        end: e.link as usize,
                        left: e.len as usize,
                    },
                }),
                _ => Err(Bail),
            },
            _ => Err(Bail),
        }
    }

    fn scalar(&self) -> Result<Scalar<'t>, Bail> {
        match self.shape()? {
            Shape::Scalar(s) => Ok(s),
            _ => Err(Bail),
        }
    }
}

impl<'de> Deserializer<'de> for De<'_, '_> {
    type Error = Bail;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        match self.shape()? {
            Shape::Scalar(Scalar::Str(s)) => v.visit_str(&s),
            Shape::Scalar(Scalar::Datetime(s)) => v.visit_str(&s),
            Shape::Scalar(Scalar::Int(i)) => v.visit_i64(i),
            Shape::Scalar(Scalar::Float(x)) => v.visit_f64(x),
            Shape::Scalar(Scalar::Bool(b)) => v.visit_bool(b),
            Shape::Array => v.visit_seq(self.items()?),
            Shape::Table => v.visit_map(self.entries()?),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        match self.scalar()? {
            Scalar::Bool(b) => v.visit_bool(b),
            _ => Err(Bail),
        }
    }

    // Each method takes what `de::NodeDe`'s does and nothing else.
    crate::de::forward_to_ours!(Bail);

    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        match self.scalar()? {
            Scalar::Int(i) => v.visit_i64(i),
            _ => Err(Bail),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        match self.scalar()? {
            Scalar::Float(x) => v.visit_f64(x),
            Scalar::Int(i) => v.visit_i64(i),
            _ => Err(Bail),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        // Not a date-time: `de` reads those only through `deserialize_any`.
        match self.scalar()? {
            Scalar::Str(s) => v.visit_str(&s),
            _ => Err(Bail),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Bail> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        v.visit_seq(self.items()?)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        v.visit_map(self.entries()?)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Bail> {
        if name == SP_NAME {
            return v.visit_map(SpanAccess::new(self.span(), self));
        }
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Bail> {
        match self.shape()? {
            Shape::Scalar(Scalar::Str(s)) => {
                let d: StrDeserializer<'_, Bail> = s.as_ref().into_deserializer();
                v.visit_enum(d)
            }
            Shape::Table => {
                let mut es = self.entries()?;
                let key = es.next_entry_key()?.ok_or(Bail)?;
                let value = es.value.take().ok_or(Bail)?;
                if es.next_entry_key()?.is_some() {
                    return Err(Bail);
                }
                v.visit_enum(Variant {
                    key,
                    de: De {
                        doc: self.doc,
                        at: value,
                    },
                })
            }
            _ => Err(Bail),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Bail> {
        v.visit_unit()
    }

    fn deserialize_unit<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Bail> {
        Err(Bail)
    }
}

struct Items<'a, 't> {
    doc: &'a Doc<'t>,
    from: ItemsFrom<'a>,
}

enum ItemsFrom<'a> {
    Evs {
        /// The next element's first event.
        next: usize,
        /// The closer.
        end: usize,
        /// Elements left, for serde to size the vector once.
        left: usize,
    },
    Sections(std::slice::Iter<'a, Section>),
}

impl<'de> SeqAccess<'de> for Items<'_, '_> {
    type Error = Bail;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Bail> {
        let at = match &mut self.from {
            ItemsFrom::Evs { next, end, left } => {
                if *next >= *end {
                    return Ok(None);
                }
                let at = *next;
                *next = self.doc.skip(at).ok_or(Bail)?;
                *left = left.saturating_sub(1);
                At::Ev(at)
            }
            ItemsFrom::Sections(it) => match it.next() {
                Some(s) => At::Section(s),
                None => return Ok(None),
            },
        };
        seed.deserialize(De { doc: self.doc, at }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        match &self.from {
            ItemsFrom::Evs { left, .. } => Some(*left),
            ItemsFrom::Sections(it) => Some(it.len()),
        }
    }
}

struct Entries<'a, 't> {
    doc: &'a Doc<'t>,
    from: EntriesFrom,
    /// Where the value of the key just read is.
    value: Option<At<'a>>,
    seen: Seen<'t>,
}

enum EntriesFrom {
    /// The next root entry.
    Root(usize),
    /// The next key's event, and the end of the table's key-values.
    Kvs(usize, usize),
}

impl<'a, 't> Entries<'a, 't> {
    /// The next key, with its value's place left in `self.value`; a key the table
    /// already has gives up (TOML forbids it; `tree` says so).
    fn next_entry_key(&mut self) -> Result<Option<Cow<'t, str>>, Bail> {
        let doc = self.doc;
        match &mut self.from {
            EntriesFrom::Root(r) => {
                let Some((key, val)) = doc.root.get(*r) else {
                    return Ok(None);
                };
                *r += 1;
                self.value = Some(match val {
                    RootVal::Value(i) => At::Ev(*i),
                    RootVal::Table(s) => At::Section(s),
                    RootVal::Array(v) => At::Sections(v),
                });
                Ok(Some(key.clone()))
            }
            EntriesFrom::Kvs(i, end) => {
                if *i >= *end {
                    return Ok(None);
                }
                let key = self.seen.insert(doc.key(*i).ok_or(Bail)?)?;
                self.value = Some(At::Ev(*i + 1));
                *i = doc.skip(*i + 1).ok_or(Bail)?;
                Ok(Some(key))
            }
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_, '_> {
    type Error = Bail;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Bail> {
        match self.next_entry_key()? {
            Some(key) => {
                let d: StrDeserializer<'_, Bail> = key.as_ref().into_deserializer();
                seed.deserialize(d).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Bail> {
        let at = self.value.take().ok_or(Bail)?;
        seed.deserialize(De { doc: self.doc, at })
    }
}

/// The keys of one table so far. Linear, as in `tree`, and bounded the same way:
/// a table of more keys takes the tree path.
#[derive(Default)]
struct Seen<'t> {
    few: [&'t str; 8],
    n: usize,
    more: Vec<Cow<'t, str>>,
}

impl<'t> Seen<'t> {
    /// `key`, handed back, unless the table already has it.
    fn insert(&mut self, key: Cow<'t, str>) -> Result<Cow<'t, str>, Bail> {
        let k: &str = &key;
        if self.few[..self.n].contains(&k) || self.more.iter().any(|m| m == k) {
            return Err(Bail);
        }
        if self.n + self.more.len() >= MAX_TABLE_KEYS {
            return Err(Bail);
        }
        match key {
            Cow::Borrowed(b) if self.n < self.few.len() => {
                self.few[self.n] = b;
                self.n += 1;
            }
            _ => self.more.push(key.clone()),
        }
        Ok(key)
    }
}

/// `{ variant = value }`.
struct Variant<'a, 't> {
    key: Cow<'t, str>,
    de: De<'a, 't>,
}

impl<'de, 'a, 't> EnumAccess<'de> for Variant<'a, 't> {
    type Error = Bail;
    type Variant = De<'a, 't>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, De<'a, 't>), Bail> {
        let d: StrDeserializer<'_, Bail> = self.key.as_ref().into_deserializer();
        Ok((seed.deserialize(d)?, self.de))
    }
}

impl<'de> VariantAccess<'de> for De<'_, '_> {
    type Error = Bail;
    fn unit_variant(self) -> Result<(), Bail> {
        Err(Bail)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Bail> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Bail> {
        self.deserialize_seq(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Bail> {
        self.deserialize_map(v)
    }
}

// ---------------------------------------------------------------------------------
// The check that both paths agree.

/// Every value of a document with its span, read through `Sp` so that both paths
/// must produce the spans the schema types would get.
#[derive(Debug)]
pub struct Dump {
    span: Span,
    value: DumpValue,
}

#[derive(Debug)]
enum DumpValue {
    Str(String),
    Int(i64),
    /// Bits, so that NaN equals NaN.
    Float(u64),
    Bool(bool),
    Array(Vec<Dump>),
    Table(Vec<(String, Dump)>),
}

impl PartialEq for Dump {
    fn eq(&self, o: &Self) -> bool {
        self.span == o.span
            && match (&self.value, &o.value) {
                (DumpValue::Str(a), DumpValue::Str(b)) => a == b,
                (DumpValue::Int(a), DumpValue::Int(b)) => a == b,
                (DumpValue::Float(a), DumpValue::Float(b)) => a == b,
                (DumpValue::Bool(a), DumpValue::Bool(b)) => a == b,
                (DumpValue::Array(a), DumpValue::Array(b)) => a == b,
                (DumpValue::Table(a), DumpValue::Table(b)) => a == b,
                _ => false,
            }
    }
}

impl<'de> Deserialize<'de> for Dump {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sp = Sp::<DumpValue>::deserialize(d)?;
        Ok(Dump {
            span: sp.span,
            value: sp.value,
        })
    }
}

impl<'de> Deserialize<'de> for DumpValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DumpValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DumpValue, E> {
                Ok(DumpValue::Str(s.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<DumpValue, E> {
                Ok(DumpValue::Int(i))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<DumpValue, E> {
                Ok(DumpValue::Float(x.to_bits()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<DumpValue, E> {
                Ok(DumpValue::Bool(b))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<DumpValue, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element::<Dump>()? {
                    v.push(x);
                }
                Ok(DumpValue::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<DumpValue, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    v.push((k, m.next_value::<Dump>()?));
                }
                Ok(DumpValue::Table(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where the fast path and the tree path disagree on `text`, if they do: the fast
/// path accepts only what the tree path accepts, with the same values and spans.
/// (It may give up where the tree path succeeds.) For the fuzz tests.
#[doc(hidden)]
pub fn disagreement(text: &str) -> Option<String> {
    let src = Source::new("t.toml", text);
    let slow_root = tree::parse(&src).ok();
    let slow = |_: ()| -> Option<Dump> {
        let root = slow_root.as_ref()?;
        crate::de::decode::<Dump>(&src, root, "").ok()
    };
    if let Some(fast) = decode::<Dump>(text) {
        match slow(()) {
            Some(s) if s == fast => {}
            Some(s) => return Some(format!("fast {fast:?}\nslow {s:?}")),
            None => return Some(format!("only the fast path accepts it: {fast:?}")),
        }
    }
    if let Some(fast) = decode::<crate::Tables>(text) {
        let slow = slow_root
            .as_ref()
            .and_then(|root| crate::de::decode::<crate::Tables>(&src, root, "").ok());
        match slow {
            Some(s) if s == fast => {}
            Some(s) => return Some(format!("tables differ: fast {fast:?}\nslow {s:?}")),
            None => return Some("only the fast path decodes the tables".into()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tables;

    const TABLES: &str = r#"# a comment
[trust]
roots = ["ca.pem"]

[[service]]
name = "web"   # trailing comment
hosts = ['web.mesh', "w\u0065b2.mesh"]
endpoints = [
  { address = "10.0.0.1:80", labels = { version = "v1", "x-zone" = "a" } },
  { address = "10.0.0.2:80", weight = 3 },
]

[[route]]
service = "web"
match = { path = { prefix = "/api" }, headers = { x-canary = "1", "x-b" = { regex = "a.*" } } }
backends = [{ labels = { version = "v1" }, weight = 90 }]

[[service]]
name = "db"
endpoints = [{ address = "10.0.1.1:5432" }]
load_balancer = "least-request"
upstream_protocol = "h2c"
"#;

    fn dump(text: &str) -> Option<Dump> {
        decode::<Dump>(text)
    }

    #[test]
    fn takes_the_layout_of_tables_files_and_agrees_with_the_tree() {
        let t: Tables = decode(TABLES).expect("fast path");
        assert_eq!(t.services.len(), 2);
        assert_eq!(*t.services[1].name, "db");
        assert_eq!(*t.services[0].hosts[1], "web2.mesh");
        // The element's span is its header's, as the tree gives it.
        let at = TABLES.find("[[service]]").expect("header");
        assert_eq!(t.services[0].span, at..at + "[[service]]".len());
        let name = TABLES.find("\"web\"").expect("name");
        assert_eq!(t.services[0].name.span, name..name + 5);
        assert_eq!(disagreement(TABLES), None);
    }

    /// Every prefix of a valid file: the fast path never accepts what the tree path
    /// rejects, and agrees on what both accept.
    #[test]
    fn every_prefix_agrees() {
        for (i, _) in TABLES.char_indices() {
            assert_eq!(
                disagreement(&TABLES[..i]),
                None,
                "prefix {i}: {:?}",
                &TABLES[..i]
            );
        }
    }

    #[test]
    fn values_decode_as_the_tree_reads_them() {
        let text = "a = 1_000\nb = 0x1f\nc = -1.5e3\nd = true\ne = 1979-05-27T07:32:00Z\nf = nan\ng = \"\"\"\nx\\ty\"\"\"\nh = 'lit\\n'\ni = []\nj = {}\nk = [[1, 2], [3]]\n";
        assert!(dump(text).is_some());
        assert_eq!(disagreement(text), None);
    }

    #[test]
    fn gives_up_on_what_it_does_not_take() {
        for text in [
            // Dotted keys and headers: legal TOML, the tree path's.
            "a.b = 1\n",
            "[a.b]\nc = 1\n",
            "x = { a.b = 1 }\n",
            // Duplicates, also through quoting: the tree path rejects them with a message.
            "a = 1\na = 2\n",
            "a = 1\n\"a\" = 2\n",
            "x = { a = 1, 'a' = 2 }\n",
            "[t]\nk = 1\nk = 2\n",
            "[t]\n[t]\n",
            "[t]\n[[t]]\n",
            "t = 1\n[t]\n",
            // Out of range, and not TOML.
            "a = 99999999999999999999\n",
            "a = 1e999\n",
            "a = \n",
            "[[a]\n",
        ] {
            assert!(dump(text).is_none(), "{text:?}");
            assert_eq!(disagreement(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_table_of_more_keys_than_the_tree_takes_goes_the_slow_way() {
        let big: String = (0..=MAX_TABLE_KEYS)
            .map(|i| format!("k{i} = {i}\n"))
            .collect();
        assert!(dump(&big).is_none());
        let inline = format!(
            "x = {{ {} }}\n",
            (0..=MAX_TABLE_KEYS)
                .map(|i| format!("k{i} = {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(dump(&inline).is_none());
        let fits: String = (0..MAX_TABLE_KEYS)
            .map(|i| format!("k{i} = {i}\n"))
            .collect();
        assert!(dump(&fits).is_some());
        assert_eq!(disagreement(&fits), None);
    }

    #[test]
    fn a_decoding_error_gives_up() {
        // Unknown key, wrong type: the tree path reports them.
        assert!(decode::<Tables>("[[service]]\nnmae = \"a\"\n").is_none());
        assert!(decode::<Tables>("[[service]]\nname = 1\n").is_none());
        assert!(decode::<Tables>("service = 1\n").is_none());
    }
}
