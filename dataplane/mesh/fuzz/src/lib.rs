//! What the mesh fuzz targets share: reading the fuzzer's configuration bytes, limits derived
//! from them, split points, and the body framer's split invariance.

use mesh::http::{BodyFramer, BodyKind, HttpError, Limits};

/// The first `N` bytes of the input configure the run (zero when the input is shorter); the
/// rest is the message bytes.
pub fn config<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut cfg = [0u8; N];
    let n = data.len().min(N);
    cfg[..n].copy_from_slice(&data[..n]);
    (cfg, &data[n..])
}

/// Default limits when bit 0 of `sel` is clear; otherwise small ones from `a` and `b`, so
/// inputs reach every limit: the head (8..2048 bytes), the header count (0..127, past the 64
/// httparse headers kept on the stack), the chunk-size line and the trailer section.
pub fn limits(sel: u8, a: u8, b: u8) -> Limits {
    if sel & 1 == 0 {
        return Limits::default();
    }
    Limits {
        max_head: 8 + 8 * usize::from(a),
        max_headers: usize::from(b & 0x7f),
        max_chunk_line: 1 + usize::from(a % 40),
        max_trailers: 2 * usize::from(b),
    }
}

/// Piece lengths for feeding bytes in parts: a xorshift sequence from `seed`; the low 3 bits
/// pick the largest piece (1 byte up to 4 KiB), and pieces may be empty.
pub struct Splits {
    state: u32,
    max: usize,
}

impl Splits {
    pub fn new(seed: u32) -> Self {
        const MAX: [usize; 8] = [1, 2, 3, 7, 16, 64, 256, 4096];
        Self {
            state: seed.wrapping_mul(0x9E37_79B9) | 1,
            max: MAX[(seed & 7) as usize],
        }
    }

    pub fn next_len(&mut self) -> usize {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        x as usize % (self.max + 1)
    }
}

/// How a framer fed some bytes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Body bytes accepted (before the error, if any).
    pub body_bytes: usize,
    pub done: bool,
    pub error: Option<HttpError>,
    /// `eof()` after the bytes (only meaningful without an error).
    pub eof: Result<(), HttpError>,
}

fn forever(kind: BodyKind) -> bool {
    matches!(kind, BodyKind::UntilClose | BodyKind::Tunnel)
}

/// One `advance`, with what holds for any call: no more body than given; not done means every
/// byte given was body; `is_done` agrees with `done`.
fn advance(f: &mut BodyFramer, piece: &[u8]) -> Result<(usize, bool), HttpError> {
    let a = f.advance(piece)?;
    assert!(
        a.body_bytes <= piece.len(),
        "body_bytes {} > {} given",
        a.body_bytes,
        piece.len()
    );
    if !a.done {
        assert_eq!(a.body_bytes, piece.len(), "not done yet left bytes unused");
    }
    assert_eq!(a.done, f.is_done());
    Ok((a.body_bytes, a.done))
}

/// All of `data` in one call.
pub fn feed_whole(kind: BodyKind, limits: &Limits, data: &[u8]) -> Outcome {
    let mut f = BodyFramer::with_limits(kind, limits);
    match advance(&mut f, data) {
        Ok((body_bytes, done)) => Outcome {
            body_bytes,
            done,
            error: None,
            eof: f.eof(),
        },
        Err(e) => Outcome {
            body_bytes: 0,
            done: false,
            error: Some(e),
            eof: Err(HttpError::Truncated),
        },
    }
}

/// `data` in pieces from `splits`, stopping at the end of the body or at an error. After the
/// end, one more call must take nothing and say done again.
pub fn feed_split(kind: BodyKind, limits: &Limits, data: &[u8], splits: &mut Splits) -> Outcome {
    let mut f = BodyFramer::with_limits(kind, limits);
    let mut at = 0;
    let mut total = 0;
    let mut done = false;
    loop {
        let len = splits.next_len().min(data.len() - at);
        let piece = &data[at..at + len];
        match advance(&mut f, piece) {
            Ok((n, d)) => {
                total += n;
                if d {
                    done = true;
                    // Done is sticky: nothing more is body.
                    let rest = &data[at + n..];
                    assert_eq!(advance(&mut f, rest), Ok((0, true)));
                    break;
                }
                at += len;
                if at == data.len() {
                    break;
                }
            }
            Err(e) => {
                return Outcome {
                    body_bytes: total,
                    done: false,
                    error: Some(e),
                    eof: Err(HttpError::Truncated),
                }
            }
        }
    }
    Outcome {
        body_bytes: total,
        done,
        error: None,
        eof: f.eof(),
    }
}

/// Frames the body at the front of `data` whole and in pieces: the same error, or the same
/// body length, done flag and `eof()`; `eof()` is fine exactly when the body ended or is
/// delimited by close. Returns the body length when the body ended.
pub fn check_framer(kind: BodyKind, limits: &Limits, data: &[u8], seed: u32) -> Option<usize> {
    let whole = feed_whole(kind, limits, data);
    let split = feed_split(kind, limits, data, &mut Splits::new(seed));
    assert_eq!(whole.error, split.error, "{kind:?}: whole vs split error");
    if whole.error.is_some() {
        assert!(
            matches!(kind, BodyKind::Chunked),
            "{kind:?} failed: {:?}",
            whole.error
        );
        return None;
    }
    assert_eq!(
        (whole.body_bytes, whole.done, whole.eof),
        (split.body_bytes, split.done, split.eof),
        "{kind:?}: whole vs split"
    );
    assert_eq!(
        whole.eof.is_ok(),
        whole.done || forever(kind),
        "{kind:?}: eof {:?}",
        whole.eof
    );
    match kind {
        BodyKind::None | BodyKind::Length(0) => {
            assert_eq!((whole.body_bytes, whole.done), (0, true))
        }
        BodyKind::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            assert_eq!(
                (whole.body_bytes, whole.done),
                (n.min(data.len()), data.len() >= n)
            );
        }
        BodyKind::UntilClose | BodyKind::Tunnel => {
            assert_eq!((whole.body_bytes, whole.done), (data.len(), false))
        }
        BodyKind::Chunked => {
            // A chunked body ends with the CRLF after the last chunk or trailer line.
            if whole.done {
                assert!(data[..whole.body_bytes].ends_with(b"\r\n"));
            }
        }
    }
    whole.done.then_some(whole.body_bytes)
}
