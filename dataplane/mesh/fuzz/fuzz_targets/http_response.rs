//! Arbitrary bytes as an upstream's byte stream answering one request method: response heads
//! (interim 1xx ones included), each followed by its body, as many as follow (up to 8).
//!
//! Input: 4 bytes of configuration (limits; bits 1-2 of the first pick the request method:
//! GET, HEAD, CONNECT, POST; split seed), then the stream. For each head that parses: it lies
//! within the input and `max_head`; `write_response_head` gives bytes that parse to the same
//! head; the body after it is framed the same whole or in pieces, and `eof()` accepts the end
//! exactly when the body ended or is delimited by close (mesh_fuzz::check_framer). No panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::http::{parse_response, write_response_head, BodyKind, Limits};

const METHODS: [&str; 4] = ["GET", "HEAD", "CONNECT", "POST"];

fuzz_target!(|data: &[u8]| {
    let ([sel, a, b, seed], mut stream) = mesh_fuzz::config::<4>(data);
    let limits = mesh_fuzz::limits(sel, a, b);
    let method = METHODS[usize::from(sel >> 1) & 3];
    for i in 0..8u32 {
        let Ok(Some((head, n))) = parse_response(stream, &limits, method) else {
            return;
        };
        assert!(
            n <= stream.len() && n <= limits.max_head,
            "head of {n} bytes"
        );
        assert!((100..=999).contains(&head.status));

        let mut out = Vec::new();
        write_response_head(&head, &mut out, &[]);
        let again = Limits {
            max_head: limits.max_head.max(out.len() + 1),
            ..limits
        };
        match parse_response(&out, &again, method) {
            Ok(Some((mut head2, n2))) => {
                assert_eq!(n2, out.len());
                // Content-Length next to Transfer-Encoding is dropped from the head and the
                // upstream connection is not reused (keep_alive false); the written head, without
                // it, may allow reuse. Nothing else may change, and the written head is a fixed
                // point.
                if head.body == BodyKind::Chunked && !head.keep_alive && head2.keep_alive {
                    let mut out2 = Vec::new();
                    write_response_head(&head2, &mut out2, &[]);
                    assert_eq!(out2, out);
                    head2.keep_alive = false;
                }
                assert_eq!(
                    head2,
                    head,
                    "written head {:?}",
                    String::from_utf8_lossy(&out)
                );
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
