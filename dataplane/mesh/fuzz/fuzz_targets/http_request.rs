//! Arbitrary bytes as a client's byte stream: request heads, each followed by its body, as
//! many as are pipelined (up to 8).
//!
//! Input: 4 bytes of configuration (limits, split seed), then the stream. For each head that
//! parses: it lies within the input and `max_head`; `write_request_head` gives bytes that parse
//! to the same head (all of them, nothing left over); the body after it is framed the same
//! whole or in pieces (mesh_fuzz::check_framer); a body that ends is followed by the next
//! request. No panic anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::http::{parse_request, write_request_head, Limits};

fuzz_target!(|data: &[u8]| {
    let ([sel, a, b, seed], mut stream) = mesh_fuzz::config::<4>(data);
    let limits = mesh_fuzz::limits(sel, a, b);
    for i in 0..8u32 {
        let Ok(Some((head, n))) = parse_request(stream, &limits) else {
            return;
        };
        assert!(
            n <= stream.len() && n <= limits.max_head,
            "head of {n} bytes"
        );

        let mut out = Vec::new();
        write_request_head(&head, &mut out, &[]);
        // The written head may be longer (CRLF for LF, ": " after names): allow for it.
        let again = Limits {
            max_head: limits.max_head.max(out.len() + 1),
            ..limits
        };
        match parse_request(&out, &again) {
            Ok(Some((head2, n2))) => {
                assert_eq!(
                    head2,
                    head,
                    "written head {:?}",
                    String::from_utf8_lossy(&out)
                );
                assert_eq!(n2, out.len());
            }
            other => panic!(
                "written head {:?} parsed as {other:?}",
                String::from_utf8_lossy(&out)
            ),
        }

        let rest = &stream[n..];
        let seed = u32::from(seed) | i << 8;
        match mesh_fuzz::check_framer(head.body, &limits, rest, seed) {
            Some(body) => stream = &rest[body..],
            None => return,
        }
    }
});
