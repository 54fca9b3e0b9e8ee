//! `address = "CIDR"` or `address = ["CIDR", ...]`, each element with its span.

use std::fmt;

use control::de::Sp;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The written addresses; a bare string has an empty span (the caller uses the
/// key's span instead).
#[derive(Debug, Default)]
pub struct Addresses(pub Vec<Sp<String>>);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Addresses;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CIDR string or an array of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Addresses, E> {
                Ok(Addresses(vec![Sp::new(s.to_owned())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Addresses, A::Error> {
                let mut out = Vec::new();
                while let Some(a) = seq.next_element::<Sp<String>>()? {
                    out.push(a);
                }
                Ok(Addresses(out))
            }
        }
        d.deserialize_any(V)
    }
}
