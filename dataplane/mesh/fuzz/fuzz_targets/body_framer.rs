//! The body framer on its own (requests and responses share it).
//!
//! Input: 4 bytes of configuration, then the body bytes. Bits 0-2 of the first pick the kind:
//! chunked (0-3), Length (4: the next two bytes, 5: near u64::MAX), None (6), until close (7);
//! bit 5 small limits (mesh_fuzz::limits); the fourth byte seeds the split points.
//! - Arbitrary bytes: the same outcome whole or in pieces (mesh_fuzz::check_framer).
//! - Bit 4 set: the bytes instead describe a chunked body (chunk sizes, data, extensions,
//!   trailers) that is encoded, followed by the bytes not used; the framer must take exactly
//!   the encoded body, whole and in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::http::{BodyKind, Limits};

fuzz_target!(|data: &[u8]| {
    let ([sel, a, b, seed], body) = mesh_fuzz::config::<4>(data);
    if sel & 0x10 != 0 {
        let (encoded, len) = encode_chunked(body);
        let limits = Limits {
            max_trailers: 1 << 20,
            ..Limits::default()
        };
        let got = mesh_fuzz::check_framer(BodyKind::Chunked, &limits, &encoded, seed.into());
        assert_eq!(
            got,
            Some(len),
            "valid chunked body {:?}",
            String::from_utf8_lossy(&encoded)
        );
        return;
    }
    let kind = match sel & 7 {
        0..=3 => BodyKind::Chunked,
        4 => BodyKind::Length(u64::from(u16::from_le_bytes([a, b]))),
        5 => BodyKind::Length(u64::MAX - u64::from(a)),
        6 => BodyKind::None,
        _ => BodyKind::UntilClose,
    };
    let limits = mesh_fuzz::limits(sel >> 5, a, b);
    mesh_fuzz::check_framer(kind, &limits, body, seed.into());
});

/// A valid chunked body from `spec`, then what is left of `spec`; and the body's length.
/// Each chunk: a size byte (0 ends the chunks; the low 7 bits are the size), a style byte
/// (leading zeros, upper-case hex, an extension, whitespace before it), then that many data
/// bytes. After the last chunk, trailer fields while the next byte is odd.
fn encode_chunked(spec: &[u8]) -> (Vec<u8>, usize) {
    let mut bytes = spec.iter().copied();
    let mut out = Vec::new();
    let mut next = || bytes.next().unwrap_or(0);
    loop {
        let size = usize::from(next() & 0x7f);
        let style = next();
        let hex = if style & 1 != 0 {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        out.extend_from_slice("0".repeat(usize::from(style >> 1 & 3)).as_bytes());
        out.extend_from_slice(hex.as_bytes());
        if style & 8 != 0 {
            out.extend_from_slice(if style & 16 != 0 { b" \t;" } else { b";" });
            out.extend_from_slice(b"ext=\"v a\"");
        }
        out.extend_from_slice(b"\r\n");
        if size == 0 {
            break;
        }
        for _ in 0..size {
            out.push(next());
        }
        out.extend_from_slice(b"\r\n");
    }
    while next() & 1 != 0 {
        let v = next();
        out.extend_from_slice(format!("x-t{v}: {v} \t{v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let len = out.len();
    // What is left of the spec follows, as the next message would.
    out.extend(std::iter::from_fn(|| bytes.next()));
    (out, len)
}
