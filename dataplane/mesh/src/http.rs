//! HTTP/1.1 for a proxy (RFC 9110, RFC 9112), sans-IO.
//!
//! The engine buffers bytes from a connection and calls [`parse_request`] /
//! [`parse_response`] until a head is complete; heads are parsed by httparse and
//! copied into owned [`RequestHead`] / [`ResponseHead`] values. The message body
//! is never buffered: a [`BodyFramer`] is fed the bytes as they arrive and says how
//! many of them belong to the current message, so the proxy forwards them
//! unchanged (chunk framing and trailers included) and knows where the next
//! message starts.
//!
//! Framing is where proxies get desynchronised from the servers behind them
//! (request smuggling), so the rules here are strict (RFC 9112 §6.1–6.3, §7.1):
//! a request with both Transfer-Encoding and Content-Length is refused, differing
//! Content-Length values are refused, identical duplicates are collapsed into
//! one field before forwarding, chunk-size lines must end in CRLF and carry only
//! valid extension bytes. A head is re-emitted with CRLF line endings
//! ([`write_request_head`]), so lenient line endings never reach the next hop.
//!
//! Errors carry the status to answer ([`HttpError::status`]) for errors in a
//! client's request. For an upstream response that fails to parse, the proxy
//! answers 502 instead (RFC 9110 §15.6.3; RFC 9112 §6.3 item 5).

use control::snapshot::HeaderLookup;
use rand::RngCore;
use std::time::Duration;

/// Bounds on what one message may make the proxy hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a head (start line, fields, final CRLF). Larger: 431.
    pub max_head: usize,
    /// Header fields in a head. More: 431.
    pub max_headers: usize,
    /// Bytes of one chunk-size line including extensions and CRLF.
    pub max_chunk_line: usize,
    /// Bytes of a chunked body's trailer section including the final CRLF.
    pub max_trailers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 16 * 1024,
            max_headers: 64,
            max_chunk_line: 4096,
            max_trailers: 16 * 1024,
        }
    }
}

impl Limits {
    /// Fields a gateway adds to a request it forwards: `x-request-id`, `traceparent`.
    pub const ADDED_FIELDS: usize = 2;
    /// Bytes those fields take at most, with their names and CRLFs (50 + 70), rounded up.
    pub const ADDED_BYTES: usize = 256;

    /// The limits a gateway applies to requests from a peer gateway: the client's limits
    /// plus what the first gateway adds, so that one limit holds for what the client sent
    /// and a request the first gateway accepted is not refused by the second.
    pub fn from_peer_gateway(&self) -> Limits {
        Limits {
            max_head: self.max_head + Self::ADDED_BYTES,
            max_headers: self.max_headers + Self::ADDED_FIELDS,
            ..*self
        }
    }
}

/// Why a message was refused. [`HttpError::status`] is what to answer a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("message head larger than the limit")]
    HeadTooLarge,
    #[error("more header fields than the limit")]
    TooManyHeaders,
    #[error("malformed message head: {0}")]
    Malformed(&'static str),
    #[error("both Transfer-Encoding and Content-Length")]
    TransferEncodingWithContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingHttp10,
    #[error("chunked is not the final transfer coding, or is applied twice")]
    ChunkedNotFinal,
    #[error("unknown transfer coding")]
    UnknownTransferCoding,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("differing Content-Length values")]
    ConflictingContentLength,
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host field")]
    DuplicateHost,
    #[error("bad chunked framing: {0}")]
    BadChunk(&'static str),
    #[error("chunk-size line longer than the limit")]
    ChunkLineTooLong,
    #[error("trailer section larger than the limit")]
    TrailersTooLarge,
    #[error("connection closed inside a message body")]
    Truncated,
    #[error("bad request target: {0}")]
    BadTarget(&'static str),
}

impl HttpError {
    /// The status code to answer a client whose request caused this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders | HttpError::TrailersTooLarge => {
                431
            }
            // RFC 9112 §6.1: a transfer coding the server does not understand.
            HttpError::UnknownTransferCoding => 501,
            _ => 400,
        }
    }

    /// A complete response for this error (`connection: close`).
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        simple_response(
            status,
            reason_phrase(status),
            format!("{self}\n").as_bytes(),
        )
    }
}

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// The body ends when the server closes the connection (responses only).
    UntilClose,
    /// After a 101 or a 2xx to CONNECT: both directions are opaque bytes.
    Tunnel,
}

impl BodyKind {
    /// Is there any body to forward? (`Length(0)` is none.)
    pub fn has_body(&self) -> bool {
        !matches!(self, BodyKind::None | BodyKind::Length(0))
    }
}

/// A request head, owned, in the order received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request-target as received (origin-form `/p?q`, absolute-form, `*`, or authority-form).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Names as received (case kept), values as bytes (RFC 9110 §5.5).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyKind,
    /// May the client connection carry another request after this one?
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// The `Upgrade` value when the request asks for one (with `Connection: upgrade`).
    pub upgrade: Option<String>,
}

impl RequestHead {
    /// The first field with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header_of(&self.headers, name)
    }

    /// The authority the request is for: the host of an absolute-form target (RFC 9112
    /// §3.2.2: it overrides Host), else the Host field. May include a port.
    pub fn host(&self) -> Option<&str> {
        if let Some(rest) = split_scheme(&self.target) {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let auth = &rest[..end];
            // Drop userinfo, which RFC 9110 §4.2.4 forbids but a client may still send.
            return Some(auth.rsplit_once('@').map_or(auth, |(_, h)| h));
        }
        self.header("host")
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The path and query: the target itself in origin-form, the part after the
    /// authority in absolute-form (`/` if empty).
    pub fn path(&self) -> &str {
        match split_scheme(&self.target) {
            Some(rest) => match rest.find(['/', '?']) {
                Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
                _ => "/",
            },
            None => &self.target,
        }
    }
}

impl HeaderLookup for RequestHead {
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        header_of(&self.headers, lower_name)
    }
}

/// A response head, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyKind,
    /// May the upstream connection carry another request after this response?
    pub keep_alive: bool,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header_of(&self.headers, name)
    }

    /// A 1xx other than 101: forward it and parse the next head for the same request
    /// (RFC 9110 §15.2).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

fn header_of<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn split_scheme(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    ok.then_some(rest)
}

fn httparse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::HeaderName => HttpError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        httparse::Error::Status => HttpError::Malformed("invalid status"),
        httparse::Error::Token => HttpError::Malformed("invalid token"),
        httparse::Error::Version => HttpError::Malformed("invalid version"),
    }
}

/// Headers on the stack for the default limit; a larger limit allocates.
const STACK_HEADERS: usize = 64;

/// Run httparse on at most `max_head` bytes: a head that is not complete within
/// them is too large, whatever follows.
fn parse_bounded<T>(
    buf: &[u8],
    limits: &Limits,
    parse: impl for<'b> FnOnce(&'b [u8], &mut [httparse::Header<'b>]) -> Result<Option<T>, HttpError>,
) -> Result<Option<T>, HttpError> {
    let view = &buf[..buf.len().min(limits.max_head)];
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let headers: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap
    };
    match parse(view, headers)? {
        Some(t) => Ok(Some(t)),
        None if buf.len() >= limits.max_head => Err(HttpError::HeadTooLarge),
        None => Ok(None),
    }
}

fn own_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

/// Elements of every field named `name`, comma-separated, trimmed, empty ones
/// skipped (RFC 9110 §5.6.1).
pub(crate) fn list_elements<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| list_of(v))
}

/// The elements of one list field's value: comma-separated, trimmed, empty ones skipped.
pub(crate) fn list_of(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn has_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    list_elements(headers, name).any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

fn count(headers: &[(String, Vec<u8>)], name: &str) -> usize {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

/// Content-Length per RFC 9110 §8.6: `1*DIGIT`; several fields or a list are
/// accepted only when all values are the same, and are then collapsed into the
/// first field so the next hop sees one value.
fn content_length(headers: &mut Vec<(String, Vec<u8>)>) -> Result<Option<u64>, HttpError> {
    let mut value: Option<u64> = None;
    let mut fields = 0usize;
    let mut listed = false;
    for (n, v) in headers.iter() {
        if !n.eq_ignore_ascii_case("content-length") {
            continue;
        }
        fields += 1;
        let mut parts = 0;
        for part in v.split(|&b| b == b',') {
            parts += 1;
            let part = trim_ows(part);
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::BadContentLength);
            }
            let n = part.iter().try_fold(0u64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let n = n.ok_or(HttpError::BadContentLength)?;
            match value {
                Some(prev) if prev != n => return Err(HttpError::ConflictingContentLength),
                _ => value = Some(n),
            }
        }
        listed |= parts > 1;
    }
    if let (Some(n), true) = (value, fields > 1 || listed) {
        let mut first = true;
        headers.retain_mut(|(name, v)| {
            if !name.eq_ignore_ascii_case("content-length") {
                return true;
            }
            if first {
                first = false;
                *v = n.to_string().into_bytes();
                return true;
            }
            false
        });
    }
    Ok(value)
}

/// Transfer codings we can forward without decoding (RFC 9112 §7 and the IANA
/// registry); anything else in a request is answered 501 (RFC 9112 §6.1).
const KNOWN_CODINGS: [&[u8]; 6] = [
    b"chunked",
    b"gzip",
    b"x-gzip",
    b"deflate",
    b"compress",
    b"x-compress",
];

struct Codings {
    /// How often `chunked` appears.
    chunked: usize,
    /// The last coding is `chunked`.
    last_chunked: bool,
    unknown: bool,
}

impl Codings {
    /// `chunked` once, as the final coding: the only chunked framing there is.
    fn chunked_final(&self) -> bool {
        self.last_chunked && self.chunked == 1
    }
}

fn transfer_codings(headers: &[(String, Vec<u8>)]) -> Codings {
    let mut c = Codings {
        chunked: 0,
        last_chunked: false,
        unknown: false,
    };
    for e in list_elements(headers, "transfer-encoding") {
        // transfer-coding = token *( OWS ";" OWS transfer-parameter )
        let name = trim_ows(e.split(|&b| b == b';').next().unwrap_or(e));
        let is_chunked = name.eq_ignore_ascii_case(b"chunked");
        c.chunked += usize::from(is_chunked);
        c.last_chunked = is_chunked;
        c.unknown |= !KNOWN_CODINGS.iter().any(|k| name.eq_ignore_ascii_case(k));
    }
    c
}

/// Parse a request head at the start of `buf`.
///
/// `Ok(None)`: incomplete, call again with more bytes. `Ok(Some((head, n)))`: the
/// head is `buf[..n]` and the body (if any) starts at `n`; pipelined requests
/// follow it. Errors once `max_head` bytes hold no complete head.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    parse_bounded(buf, limits, |view, headers| {
        let mut req = httparse::Request::new(headers);
        let n = match req.parse(view).map_err(httparse_error)? {
            httparse::Status::Partial => return Ok(None),
            httparse::Status::Complete(n) => n,
        };
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Err(HttpError::Malformed("incomplete request line"));
        };
        let head = request_head(method, target, version, own_headers(req.headers))?;
        Ok(Some((head, n)))
    })
}

fn request_head(
    method: &str,
    target: &str,
    version: u8,
    mut headers: Vec<(String, Vec<u8>)>,
) -> Result<RequestHead, HttpError> {
    if target.is_empty() {
        return Err(HttpError::Malformed("empty request-target"));
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; never more than one.
    match count(&headers, "host") {
        0 if version == 1 => return Err(HttpError::MissingHost),
        0 | 1 => {}
        _ => return Err(HttpError::DuplicateHost),
    }
    let has_te = count(&headers, "transfer-encoding") > 0;
    let body = if has_te {
        // RFC 9112 §6.1: both present is a smuggling attempt until shown otherwise.
        if count(&headers, "content-length") > 0 {
            return Err(HttpError::TransferEncodingWithContentLength);
        }
        // RFC 9112 §6.1: HTTP/1.0 framing with TE is faulty.
        if version == 0 {
            return Err(HttpError::TransferEncodingHttp10);
        }
        let c = transfer_codings(&headers);
        // RFC 9112 §7: chunked is applied at most once.
        if c.chunked > 1 {
            return Err(HttpError::ChunkedNotFinal);
        }
        if c.unknown {
            return Err(HttpError::UnknownTransferCoding);
        }
        // RFC 9112 §6.3 item 4: a request whose final coding is not chunked has no
        // determinable length.
        if !c.chunked_final() {
            return Err(HttpError::ChunkedNotFinal);
        }
        BodyKind::Chunked
    } else {
        match content_length(&mut headers)? {
            Some(n) => BodyKind::Length(n),
            // RFC 9112 §6.3 item 7.
            None => BodyKind::None,
        }
    };
    let close = has_token(&headers, "connection", "close");
    let keep_alive = !close && (version == 1 || has_token(&headers, "connection", "keep-alive"));
    // RFC 9110 §10.1.1: ignore 100-continue in an HTTP/1.0 request.
    let expect_continue = version == 1 && has_token(&headers, "expect", "100-continue");
    // RFC 9110 §7.8: Upgrade counts only with the "upgrade" connection option, and
    // never in HTTP/1.0. An `h2c` upgrade is not offered (RFC 9113 §3.1 deprecates it, and
    // an h2c tunnel would carry requests no route or policy sees): the request is served
    // as HTTP/1.1 and its Upgrade field, hop-by-hop, is not forwarded.
    let h2c = list_elements(&headers, "upgrade").any(|e| {
        let proto = e.split(|&b| b == b'/').next().unwrap_or(e);
        proto.eq_ignore_ascii_case(b"h2c")
    });
    let upgrade = if version == 1 && !h2c && has_token(&headers, "connection", "upgrade") {
        header_of(&headers, "upgrade")
            .map(trim_ows)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    } else {
        None
    };
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        headers,
        body,
        keep_alive,
        expect_continue,
        upgrade,
    })
}

/// Parse a response head at the start of `buf`; `request_method` is the method of
/// the request it answers (a response to HEAD has no body). Same return shape as
/// [`parse_request`].
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    request_method: &str,
) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    parse_bounded(buf, limits, |view, headers| {
        let mut res = httparse::Response::new(headers);
        let n = match res.parse(view).map_err(httparse_error)? {
            httparse::Status::Partial => return Ok(None),
            httparse::Status::Complete(n) => n,
        };
        let (Some(version), Some(status)) = (res.version, res.code) else {
            return Err(HttpError::Malformed("incomplete status line"));
        };
        if !(100..=999).contains(&status) {
            return Err(HttpError::Malformed("invalid status"));
        }
        let reason = res.reason.unwrap_or("").to_owned();
        let head = response_head(
            status,
            reason,
            version,
            own_headers(res.headers),
            request_method,
        )?;
        Ok(Some((head, n)))
    })
}

fn response_head(
    status: u16,
    reason: String,
    version: u8,
    mut headers: Vec<(String, Vec<u8>)>,
    request_method: &str,
) -> Result<ResponseHead, HttpError> {
    let close = has_token(&headers, "connection", "close");
    let mut keep_alive =
        !close && (version == 1 || has_token(&headers, "connection", "keep-alive"));
    // RFC 9112 §6.3, in its order.
    let body = if status == 101 {
        keep_alive = false;
        BodyKind::Tunnel
    } else if (100..200).contains(&status)
        || status == 204
        || status == 304
        || request_method == "HEAD"
    {
        BodyKind::None
    } else if request_method == "CONNECT" && (200..300).contains(&status) {
        keep_alive = false;
        BodyKind::Tunnel
    } else if count(&headers, "transfer-encoding") > 0 {
        // Item 3: TE overrides CL, and CL must not be forwarded; the message might
        // be a splitting attempt, so do not reuse the connection.
        if count(&headers, "content-length") > 0 {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-length"));
            keep_alive = false;
        }
        let c = transfer_codings(&headers);
        if c.chunked > 1 {
            // RFC 9112 §7: chunked applied twice; no safe way to delimit it.
            return Err(HttpError::ChunkedNotFinal);
        } else if version == 1 && c.chunked_final() {
            BodyKind::Chunked
        } else {
            // Item 4 (and §6.1 for HTTP/1.0 with TE): read until close.
            keep_alive = false;
            BodyKind::UntilClose
        }
    } else {
        match content_length(&mut headers)? {
            Some(n) => BodyKind::Length(n),
            None => {
                keep_alive = false;
                BodyKind::UntilClose
            }
        }
    };
    Ok(ResponseHead {
        status,
        reason,
        version,
        headers,
        body,
        keep_alive,
    })
}

/// What part of the bytes given to [`BodyFramer::advance`] belongs to the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// The first `body_bytes` bytes are body (framing included): forward them.
    pub body_bytes: usize,
    /// The message is complete; bytes after `body_bytes` start the next message.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex chunk-size.
    Size {
        digits: bool,
        value: u64,
    },
    /// Whitespace after the size: only `;` or CR may follow (BWS, RFC 9112 §7.1.1).
    SizeWs {
        value: u64,
    },
    /// In chunk extensions, up to CR.
    /// In chunk extensions (RFC 9112 §7.1.1), up to CR.
    Ext {
        value: u64,
        at: Ext,
    },
    /// CR of the size line seen.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    TrailerField {
        colon: bool,
    },
    TrailerLf,
    EndLf,
    Finished,
}

/// Where in `*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )` a byte falls;
/// `chunk-ext-val = token / quoted-string`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// After `;`: BWS, then a name.
    Start,
    Name,
    /// BWS after a name: `=`, `;` or CR.
    AfterName,
    /// After `=`: BWS, then a token or a quoted string.
    ValueStart,
    Token,
    Quoted,
    /// After `\` in a quoted string.
    QuotedPair,
    /// BWS after a value: `;` or CR.
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framer {
    Done,
    Length(u64),
    Chunked(Chunk),
    Forever,
}

/// Delimits one message body in a byte stream without holding any of it:
/// O(1) state (RFC 9112 §6.3, §7.1).
///
/// Call order: `new(head.body)`, then [`advance`](Self::advance) with each piece of
/// received data until `done`; on end of stream call [`eof`](Self::eof) to learn
/// whether the message was complete. After an error the stream is unusable: close it.
#[derive(Debug, Clone)]
pub struct BodyFramer {
    state: Framer,
    line_len: usize,
    trailer_len: usize,
    max_chunk_line: usize,
    max_trailers: usize,
    /// The trailer section's bytes, kept only when asked for (a gRPC call's `grpc-status`);
    /// bounded by `max_trailers`.
    trailers: Option<Vec<u8>>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value and quoted-string bytes: HTAB, SP, VCHAR, obs-text (RFC 9110 §5.5).
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl BodyFramer {
    pub fn new(kind: BodyKind) -> Self {
        Self::with_limits(kind, &Limits::default())
    }

    pub fn with_limits(kind: BodyKind, limits: &Limits) -> Self {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => Framer::Done,
            BodyKind::Length(n) => Framer::Length(n),
            BodyKind::Chunked => Framer::Chunked(Chunk::Size {
                digits: false,
                value: 0,
            }),
            BodyKind::UntilClose | BodyKind::Tunnel => Framer::Forever,
        };
        Self {
            state,
            line_len: 0,
            trailer_len: 0,
            max_chunk_line: limits.max_chunk_line,
            max_trailers: limits.max_trailers,
            trailers: None,
        }
    }

    /// Keep the trailer section of a chunked body (see [`BodyFramer::trailers`]).
    pub fn keep_trailers(&mut self) {
        self.trailers.get_or_insert_with(Vec::new);
    }

    /// The trailer section seen so far (field lines and the final CRLF), when kept.
    pub fn trailers(&self) -> Option<&[u8]> {
        self.trailers.as_deref()
    }

    pub fn is_done(&self) -> bool {
        self.state == Framer::Done
    }

    /// Feed the next received bytes.
    pub fn advance(&mut self, data: &[u8]) -> Result<Advance, HttpError> {
        match &mut self.state {
            Framer::Done => Ok(Advance {
                body_bytes: 0,
                done: true,
            }),
            Framer::Forever => Ok(Advance {
                body_bytes: data.len(),
                done: false,
            }),
            Framer::Length(remaining) => {
                let take = take(*remaining, data.len());
                *remaining -= take as u64;
                let done = *remaining == 0;
                if done {
                    self.state = Framer::Done;
                }
                Ok(Advance {
                    body_bytes: take,
                    done,
                })
            }
            Framer::Chunked(st) => {
                let mut st = *st;
                let mut i = 0;
                while i < data.len() && st != Chunk::Finished {
                    st = match st {
                        Chunk::Data { remaining } => {
                            let n = take(remaining, data.len() - i);
                            i += n;
                            match remaining - n as u64 {
                                0 => Chunk::DataCr,
                                remaining => Chunk::Data { remaining },
                            }
                        }
                        other => {
                            let b = data[i];
                            i += 1;
                            self.step(other, b)?
                        }
                    };
                }
                let done = st == Chunk::Finished;
                self.state = if done {
                    Framer::Done
                } else {
                    Framer::Chunked(st)
                };
                Ok(Advance {
                    body_bytes: i,
                    done,
                })
            }
        }
    }

    /// The stream ended: is the message complete? For a body delimited by close
    /// (and a tunnel) this is the normal end; otherwise the message was cut short.
    pub fn eof(&self) -> Result<(), HttpError> {
        match self.state {
            Framer::Done | Framer::Forever => Ok(()),
            Framer::Length(_) | Framer::Chunked(_) => Err(HttpError::Truncated),
        }
    }

    /// One byte of chunked framing outside chunk data (RFC 9112 §7.1). Strict:
    /// CRLF only, no bytes after the size but BWS and extensions, since a lenient
    /// parser in front of a strict one (or the reverse) is how chunked smuggling works.
    fn step(&mut self, st: Chunk, b: u8) -> Result<Chunk, HttpError> {
        use HttpError::BadChunk;
        match st {
            Chunk::Size { .. }
            | Chunk::SizeWs { .. }
            | Chunk::Ext { .. }
            | Chunk::SizeLf { .. } => {
                self.line_len += 1;
                if self.line_len > self.max_chunk_line {
                    return Err(HttpError::ChunkLineTooLong);
                }
            }
            Chunk::TrailerStart | Chunk::TrailerField { .. } | Chunk::TrailerLf | Chunk::EndLf => {
                self.trailer_len += 1;
                if self.trailer_len > self.max_trailers {
                    return Err(HttpError::TrailersTooLarge);
                }
                if let Some(t) = self.trailers.as_mut() {
                    t.push(b);
                }
            }
            _ => {}
        }
        Ok(match st {
            Chunk::Size { digits, value } => match (b as char).to_digit(16) {
                Some(d) => Chunk::Size {
                    digits: true,
                    value: value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                        .ok_or(BadChunk("chunk size overflows"))?,
                },
                None if !digits => return Err(BadChunk("chunk size is not hex")),
                None => match b {
                    b';' => Chunk::Ext {
                        value,
                        at: Ext::Start,
                    },
                    b' ' | b'\t' => Chunk::SizeWs { value },
                    b'\r' => Chunk::SizeLf { value },
                    _ => return Err(BadChunk("invalid byte after chunk size")),
                },
            },
            Chunk::SizeWs { value } => match b {
                b' ' | b'\t' => Chunk::SizeWs { value },
                b';' => Chunk::Ext {
                    value,
                    at: Ext::Start,
                },
                b'\r' => Chunk::SizeLf { value },
                _ => return Err(BadChunk("invalid byte after chunk size")),
            },
            Chunk::Ext { value, at } => {
                let ws = b == b' ' || b == b'\t';
                let next = match (at, b) {
                    (Ext::Start, _) if ws => Ext::Start,
                    (Ext::Start, b) if is_tchar(b) => Ext::Name,
                    (Ext::Name, b) if is_tchar(b) => Ext::Name,
                    (Ext::Name | Ext::AfterName, _) if ws => Ext::AfterName,
                    (Ext::Name | Ext::AfterName, b'=') => Ext::ValueStart,
                    (Ext::ValueStart, _) if ws => Ext::ValueStart,
                    (Ext::ValueStart, b'"') => Ext::Quoted,
                    (Ext::ValueStart | Ext::Token, b) if is_tchar(b) => Ext::Token,
                    (Ext::Quoted, b'"') => Ext::AfterValue,
                    (Ext::Quoted, b'\\') => Ext::QuotedPair,
                    (Ext::Quoted, b'\r') => {
                        return Err(BadChunk("unterminated quoted chunk extension"))
                    }
                    (Ext::Quoted | Ext::QuotedPair, b) if is_field_byte(b) => Ext::Quoted,
                    (Ext::Token | Ext::AfterValue, _) if ws => Ext::AfterValue,
                    (Ext::Name | Ext::AfterName | Ext::Token | Ext::AfterValue, b';') => Ext::Start,
                    (Ext::Name | Ext::AfterName | Ext::Token | Ext::AfterValue, b'\r') => {
                        return Ok(Chunk::SizeLf { value })
                    }
                    _ => return Err(BadChunk("invalid byte in chunk extension")),
                };
                Chunk::Ext { value, at: next }
            }
            Chunk::SizeLf { value } => {
                if b != b'\n' {
                    return Err(BadChunk("chunk-size line not ended by CRLF"));
                }
                self.line_len = 0;
                match value {
                    0 => Chunk::TrailerStart,
                    remaining => Chunk::Data { remaining },
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size {
                digits: false,
                value: 0,
            },
            Chunk::DataCr | Chunk::DataLf => {
                return Err(BadChunk("chunk data not followed by CRLF"))
            }
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                // obs-fold (a line starting with whitespace) is refused (RFC 9112 §5.2).
                b if is_tchar(b) => Chunk::TrailerField { colon: false },
                _ => return Err(BadChunk("invalid trailer field")),
            },
            Chunk::TrailerField { colon: false } => match b {
                b':' => Chunk::TrailerField { colon: true },
                b if is_tchar(b) => Chunk::TrailerField { colon: false },
                _ => return Err(BadChunk("invalid trailer field name")),
            },
            Chunk::TrailerField { colon: true } => match b {
                b'\r' => Chunk::TrailerLf,
                b if is_field_byte(b) => Chunk::TrailerField { colon: true },
                _ => return Err(BadChunk("invalid trailer field value")),
            },
            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
            Chunk::TrailerLf => return Err(BadChunk("trailer line not ended by CRLF")),
            Chunk::EndLf if b == b'\n' => Chunk::Finished,
            Chunk::EndLf => return Err(BadChunk("chunked body not ended by CRLF")),
            // Consumed by `advance` without stepping.
            Chunk::Data { .. } | Chunk::Finished => st,
        })
    }
}

/// `min(remaining, available)` without truncating `remaining` on 32-bit targets.
fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_version(out: &mut Vec<u8>, version: u8) {
    out.extend_from_slice(if version == 0 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    });
}

/// ` NNN ` of a status line: three digits, without `format!`'s allocation for the ones
/// `parse_response` takes (100..=999).
fn push_status(out: &mut Vec<u8>, st: u16) {
    if (100..=999).contains(&st) {
        let d = |x: u16| b'0' + (x % 10) as u8;
        out.extend_from_slice(&[b' ', d(st / 100), d(st / 10), d(st), b' ']);
    } else {
        out.extend_from_slice(format!(" {st:03} ").as_bytes());
    }
}

/// Re-emit a request head: the request line, the fields in order, then `add`.
///
/// The version is kept: an HTTP/1.0 client's request goes on as HTTP/1.0 so the
/// server answers in framing the client understands (no chunked), since the body
/// is forwarded unchanged.
pub fn write_request_head(head: &RequestHead, out: &mut Vec<u8>, add: &[(&str, &[u8])]) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.push(b' ');
    push_version(out, head.version);
    out.extend_from_slice(b"\r\n");
    for (n, v) in &head.headers {
        push_header(out, n, v);
    }
    for (n, v) in add {
        push_header(out, n, v);
    }
    out.extend_from_slice(b"\r\n");
}

/// Re-emit a response head: the status line, the fields in order, then `add`.
pub fn write_response_head(head: &ResponseHead, out: &mut Vec<u8>, add: &[(&str, &[u8])]) {
    push_version(out, head.version);
    push_status(out, head.status);
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in &head.headers {
        push_header(out, n, v);
    }
    for (n, v) in add {
        push_header(out, n, v);
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// `n` random bytes, never all zero (W3C Trace Context §3.2.2.3–4: all-zero ids
/// are invalid); a zero draw gets its last bit set rather than a retry loop.
pub(crate) fn random_nonzero<const N: usize>(rng: &mut impl RngCore) -> [u8; N] {
    let mut b = [0u8; N];
    rng.fill_bytes(&mut b);
    if b.iter().all(|&x| x == 0) {
        b[N - 1] = 1;
    }
    b
}

/// Add `x-request-id: <32 hex>` (128 random bits) unless the request has one.
/// Returns whether it was added.
pub fn ensure_request_id(head: &mut RequestHead, rng: &mut impl RngCore) -> bool {
    if head.header("x-request-id").is_some() {
        return false;
    }
    let mut v = Vec::with_capacity(32);
    hex_into(&mut v, &random_nonzero::<16>(rng));
    head.headers.push(("x-request-id".to_owned(), v));
    true
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Is this a `traceparent` value to pass on (W3C Trace Context Level 1, §3.2)?
/// Version `00` is exactly 55 bytes; a higher version (not `ff`) is accepted when
/// its first 55 bytes parse as version 00 and byte 56, if any, is `-` (§3.2.4).
/// Hex is lower-case; trace-id and parent-id must not be all zeros (§3.2.2.3–4).
pub fn traceparent_is_valid(v: &[u8]) -> bool {
    if v.len() < 55 {
        return false;
    }
    let (version, trace_id, parent_id, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let dashes = v[2] == b'-' && v[35] == b'-' && v[52] == b'-';
    let version_ok = is_lower_hex(version) && version != b"ff";
    let length_ok = if version == b"00" {
        v.len() == 55
    } else {
        v.len() == 55 || v[55] == b'-'
    };
    dashes
        && version_ok
        && length_ok
        && is_lower_hex(trace_id)
        && is_lower_hex(parent_id)
        && is_lower_hex(flags)
        && trace_id.iter().any(|&b| b != b'0')
        && parent_id.iter().any(|&b| b != b'0')
}

/// A request target as the gateway routes, authorizes and forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalTarget {
    /// The target to forward: the scheme and authority of an absolute-form target, the
    /// normalized path, then the query unchanged.
    pub forward: String,
    /// What routes and policies match: the normalized path with each segment's `;`
    /// parameters cut off before dot segments are removed, no query.
    pub matched: String,
}

/// Normalizes a request target (origin-form or absolute-form; `*` stays `*`), so that a
/// route or a policy sees the path the server will serve (RFC 3986 §6.2.2):
/// - percent-encoded unreserved characters are decoded (`%61` is `a`), other escapes get
///   upper-case hex digits; a malformed escape is refused;
/// - `%2F`, `%5C`, `%00` and `\` are refused: servers disagree on whether an escaped
///   slash separates segments, so no path rule could be enforced on them;
/// - runs of `/` merge into one (as nginx's `merge_slashes` does);
/// - dot segments are removed (RFC 3986 §5.2.4), so `/public/../admin` is `/admin`;
/// - for matching only, `;parameters` are cut from each segment (as Tomcat and Spring do),
///   so `/admin;x=1` matches as `/admin`; a segment whose name is empty, `.` or `..` but
///   carries parameters (`/;x/`, `/..;/`) is refused: servers disagree on whether it is a
///   dot segment, and the forwarded and matched paths would differ.
///
/// The query is never part of the matched path and is forwarded unchanged.
pub fn normalize_target(target: &str) -> Result<NormalTarget, HttpError> {
    if target == "*" {
        return Ok(NormalTarget {
            forward: target.to_owned(),
            matched: target.to_owned(),
        });
    }
    let (prefix, rest) = match split_scheme(target) {
        Some(after) => {
            let end = after.find(['/', '?']).unwrap_or(after.len());
            let cut = target.len() - after.len() + end;
            (&target[..cut], &target[cut..])
        }
        None => ("", target),
    };
    if rest.contains('#') {
        return Err(HttpError::BadTarget("fragment in the request target"));
    }
    let (path, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.is_empty() && !prefix.is_empty() {
        "/"
    } else {
        path
    };
    if !path.starts_with('/') {
        return Err(HttpError::BadTarget("the path does not start with /"));
    }
    // The common case, already normal: no escape, no empty, dot or parameter segment.
    let plain = !path.contains(['%', ';', '\\']) && !path.contains("//") && !path.contains("/.");
    if plain && rest.len() == path.len() + query.len() {
        return Ok(NormalTarget {
            forward: target.to_owned(),
            matched: path.to_owned(),
        });
    }
    let decoded = decode_unreserved(path)?;
    let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    // One list of segments for both paths, so a `..` removes the same segment in each.
    for seg in &segments {
        let name = seg.split(';').next().unwrap_or("");
        if name.len() != seg.len() && matches!(name, "" | "." | "..") {
            return Err(HttpError::BadTarget(
                "parameters on an empty or dot segment",
            ));
        }
    }
    let trailing = decoded.ends_with('/') && decoded.len() > 1;
    let forward_path = join_without_dots(segments.iter().copied(), trailing);
    let matched = join_without_dots(
        segments.iter().map(|s| s.split(';').next().unwrap_or("")),
        trailing,
    );
    Ok(NormalTarget {
        forward: format!("{prefix}{forward_path}{query}"),
        matched,
    })
}

/// Decodes `%XX` of unreserved characters (RFC 3986 §2.3), upper-cases the hex of the rest.
fn decode_unreserved(path: &str) -> Result<String, HttpError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).and_then(|&c| (c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(HttpError::BadTarget("malformed percent-encoding"));
                };
                let c = (hi * 16 + lo) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else if matches!(c, b'/' | b'\\' | 0) {
                    return Err(HttpError::BadTarget("escaped slash, backslash or NUL"));
                } else {
                    out.push('%');
                    out.push_str(&format!("{c:02X}"));
                }
                i += 3;
            }
            b'\\' => return Err(HttpError::BadTarget("backslash in the path")),
            _ => {
                // Multi-byte characters pass through whole (httparse allows obs-text).
                let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&path[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    Ok(out)
}

/// `/`-joined segments with `.` and `..` removed (RFC 3986 §5.2.4 on a path without empty
/// segments); `trailing`: the path ended in `/`, and so does the result. A path whose last
/// segment is a dot segment ends in `/` too (`/a/..` is `/`, `/a/.` is `/a/`).
fn join_without_dots<'a>(segments: impl Iterator<Item = &'a str>, trailing: bool) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut dir = trailing;
    for seg in segments {
        dir = false;
        match seg {
            "." => dir = true,
            ".." => {
                kept.pop();
                dir = true;
            }
            _ => kept.push(seg),
        }
    }
    if trailing {
        dir = true;
    }
    let mut out = String::with_capacity(64);
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || dir {
        out.push('/');
    }
    out
}

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1), and are never
/// forwarded: each hop sets its own.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// Fields the message's framing or routing rests on: a `Connection` option naming one of
/// them is ignored, so a client cannot make a hop drop its framing (a desync) or its Host.
const NEVER_HOP_BY_HOP: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "host",
    "x-request-id",
    "traceparent",
];

/// Is `name` a field this hop must not forward, given the message's `Connection` options?
/// `listed`: the options of the head's `Connection` fields (collected once per head, not once
/// per field).
fn is_hop_by_hop(listed: &[&[u8]], name: &str) -> bool {
    if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return true;
    }
    !listed.is_empty()
        && !NEVER_HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        && listed
            .iter()
            .any(|o| o.eq_ignore_ascii_case(name.as_bytes()))
}

/// Fields only the gateway writes: whatever a client or a server sent under these names is
/// dropped (a client must not make up how many attempts were made).
const GATEWAY_FIELDS: [&str; 2] = ["x-xdpmesh-attempts", "x-xdpmesh-error"];

/// Room for a head with these fields, its first line and the gateway's own fields: one
/// allocation per head, not one per doubling as fields are pushed.
fn reserve_head(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)]) {
    let fields: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    out.reserve(fields + 512);
}

fn push_end_to_end(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)]) {
    let listed: Vec<&[u8]> = list_elements(headers, "connection").collect();
    for (n, v) in headers {
        let ours = GATEWAY_FIELDS.iter().any(|g| n.eq_ignore_ascii_case(g));
        if !ours && !is_hop_by_hop(&listed, n) {
            push_header(out, n, v);
        }
    }
}

/// Writes a request head for the next hop: the request line with `target`, the end-to-end
/// fields in order (hop-by-hop ones dropped, RFC 9110 §7.6.1), then `add`. An upgrade the
/// client asked for goes on as `upgrade` and `connection: upgrade` (RFC 9110 §7.8).
pub fn write_forwarded_request(
    head: &RequestHead,
    target: &str,
    out: &mut Vec<u8>,
    add: &[(&str, &[u8])],
) {
    reserve_head(out, &head.headers);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.push(b' ');
    push_version(out, head.version);
    out.extend_from_slice(b"\r\n");
    push_end_to_end(out, &head.headers);
    if let Some(u) = &head.upgrade {
        push_header(out, "upgrade", u.as_bytes());
        push_header(out, "connection", b"upgrade");
    }
    for (n, v) in add {
        push_header(out, n, v);
    }
    out.extend_from_slice(b"\r\n");
}

/// How the gateway's connection to the client goes on after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientConnection {
    /// Kept alive (an HTTP/1.0 client is told so: it would assume a close otherwise).
    KeepAlive { http10: bool },
    /// Closed after this response: `connection: close`.
    Close,
    /// A 101: `connection: upgrade` with the server's `upgrade`.
    Upgrade,
}

/// Writes a response head for the client: the status line, the end-to-end fields in order,
/// then this hop's own `connection` field.
pub fn write_forwarded_response(
    head: &ResponseHead,
    out: &mut Vec<u8>,
    conn: ClientConnection,
    add: &[(&str, &[u8])],
) {
    reserve_head(out, &head.headers);
    push_version(out, head.version);
    push_status(out, head.status);
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    push_end_to_end(out, &head.headers);
    match conn {
        ClientConnection::KeepAlive { http10: true } => {
            push_header(out, "connection", b"keep-alive")
        }
        ClientConnection::KeepAlive { http10: false } => {}
        ClientConnection::Close => push_header(out, "connection", b"close"),
        ClientConnection::Upgrade => {
            if let Some(u) = head.header("upgrade") {
                push_header(out, "upgrade", u);
            }
            push_header(out, "connection", b"upgrade");
        }
    }
    for (n, v) in add {
        push_header(out, n, v);
    }
    out.extend_from_slice(b"\r\n");
}

/// The usual reason phrase, or "" (the phrase is optional, RFC 9112 §4).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The interim response a proxy sends for `Expect: 100-continue` (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A complete HTTP/1.1 response generated by the proxy. Errors (4xx, 5xx) carry
/// `connection: close`: after a framing error the stream position is unknown.
/// 1xx, 204 and 304 get neither a body nor a Content-Length (RFC 9110 §8.6).
pub fn simple_response(status: u16, reason: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status:03} {reason}\r\n").as_bytes());
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    if !bodyless {
        push_header(
            &mut out,
            "content-length",
            body.len().to_string().as_bytes(),
        );
        if !body.is_empty() {
            push_header(&mut out, "content-type", b"text/plain; charset=utf-8");
        }
    }
    if status >= 400 {
        push_header(&mut out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless {
        out.extend_from_slice(body);
    }
    out
}

/// The response the gateway itself gives when it cannot serve a request: `status`, the
/// reason in an `x-xdpmesh-error` header and as the body, `connection: close`.
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    gateway_response(status, reason, true, &[])
}

/// [`error_response`], with `connection: close` only when `close`, and `add` after it.
pub fn gateway_response(status: u16, reason: &str, close: bool, add: &[(&str, &[u8])]) -> Vec<u8> {
    // 204 and 304 (which an injected abort may give) have no body (RFC 9110 §6.4.1).
    let bodyless = status == 204 || status == 304;
    let body = if bodyless {
        String::new()
    } else {
        format!("{reason}\n")
    };
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status:03} {}\r\n", reason_phrase(status)).as_bytes());
    if !bodyless {
        push_header(
            &mut out,
            "content-length",
            body.len().to_string().as_bytes(),
        );
        push_header(&mut out, "content-type", b"text/plain; charset=utf-8");
    }
    push_header(&mut out, "x-xdpmesh-error", reason.as_bytes());
    if close {
        push_header(&mut out, "connection", b"close");
    }
    for (n, v) in add {
        push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// Is this request a gRPC call? Its `content-type` says so ([`is_grpc_content_type`]).
pub fn is_grpc(head: &RequestHead) -> bool {
    head.header("content-type")
        .is_some_and(is_grpc_content_type)
}

/// `application/grpc`, with an optional `+codec` or parameters (gRPC's PROTOCOL-HTTP2.md),
/// in any case (RFC 9110 §8.3.1); not `application/grpc-web`.
pub fn is_grpc_content_type(v: &[u8]) -> bool {
    v.len() >= 16
        && v[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(v.get(16), None | Some(b'+' | b';'))
}

/// `grpc-timeout`: at most 8 digits and a unit, `H` `M` `S` `m` `u` `n` (PROTOCOL-HTTP2.md).
/// `None` when malformed: the call then has no deadline of its own, as gRPC servers read it.
pub fn grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-status` value: 0 to 16 as gRPC defines them; any other number is UNKNOWN (2),
/// as a gRPC client reads it; `None` when it is not a number.
pub fn grpc_status(v: &[u8]) -> Option<u8> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u16 = std::str::from_utf8(v).ok()?.parse().ok()?;
    Some(if n <= 16 { n as u8 } else { 2 })
}

/// The `grpc-status` field of a chunked body's trailer section (as the framer captured it).
pub fn trailer_grpc_status(trailers: &[u8]) -> Option<u8> {
    trailers.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(b"grpc-status")
            .then(|| grpc_status(&line[colon + 1..]))
            .flatten()
    })
}

/// The gRPC status for an HTTP status the gateway would answer with
/// (grpc/doc/http-grpc-status-mapping.md).
pub fn grpc_status_for_http(status: u16) -> u8 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// The gateway's own answer to a gRPC call: a trailers-only response (HTTP 200, the status
/// in `grpc-status` and the reason in `grpc-message`, no body), which an HTTP/2 front sends
/// as one HEADERS frame ending the stream. `x-xdpmesh-error` says the gateway made it.
pub fn grpc_error_response(grpc: u8, reason: &str, close: bool, add: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    push_header(&mut out, "content-type", b"application/grpc");
    push_header(&mut out, "grpc-status", grpc.to_string().as_bytes());
    // Our reasons are ASCII labels: nothing to percent-encode.
    push_header(&mut out, "grpc-message", reason.as_bytes());
    push_header(&mut out, "x-xdpmesh-error", reason.as_bytes());
    push_header(&mut out, "content-length", b"0");
    if close {
        push_header(&mut out, "connection", b"close");
    }
    for (n, v) in add {
        push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn req(s: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse_request(s.as_bytes(), &Limits::default())
    }

    fn req_ok(s: &str) -> RequestHead {
        let (h, n) = req(s).expect("valid").expect("complete");
        assert_eq!(n, s.len(), "the head is the whole input");
        h
    }

    fn req_err(s: &str) -> HttpError {
        req(s).expect_err("must be refused")
    }

    fn res(s: &str, method: &str) -> Result<Option<(ResponseHead, usize)>, HttpError> {
        parse_response(s.as_bytes(), &Limits::default(), method)
    }

    fn res_ok(s: &str, method: &str) -> ResponseHead {
        res(s, method).expect("valid").expect("complete").0
    }

    #[test]
    fn simple_get() {
        let h = req_ok("GET /a/b?c=d HTTP/1.1\r\nHost: web.svc:80\r\nX-City: berlin\r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/a/b?c=d");
        assert_eq!(h.path(), "/a/b?c=d");
        assert_eq!(h.host(), Some("web.svc:80"));
        assert_eq!(h.version, 1);
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive && !h.expect_continue && h.upgrade.is_none());
        assert_eq!(h.header("x-city"), Some(&b"berlin"[..]));
        assert_eq!(HeaderLookup::header(&h, "x-city"), Some(&b"berlin"[..]));
        assert_eq!(HeaderLookup::header(&h, "x-none"), None);
    }

    #[test]
    fn absolute_form_overrides_host() {
        let h = req_ok("GET http://user@api.svc:8080/x?y HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(h.host(), Some("api.svc:8080"));
        assert_eq!(h.path(), "/x?y");
        let h = req_ok("GET http://api.svc HTTP/1.1\r\nHost: api.svc\r\n\r\n");
        assert_eq!(h.path(), "/");
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete() {
        let s = "\r\nPOST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        for i in 0..s.len() {
            assert_eq!(req(&s[..i]), Ok(None), "prefix {i}");
        }
        let h = req_ok(s);
        assert_eq!(h.body, BodyKind::Length(3));
        assert!(h.expect_continue);
        let r = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        for i in 0..r.len() {
            assert_eq!(res(&r[..i], "GET"), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let l = Limits::default();
        let mut at = 0;
        let mut targets = vec![];
        while at < buf.len() {
            let (h, n) = parse_request(&buf[at..], &l).unwrap().unwrap();
            at += n;
            let mut f = BodyFramer::new(h.body);
            let a = f.advance(&buf[at..]).unwrap();
            assert!(a.done);
            at += a.body_bytes;
            targets.push((h.target, h.keep_alive));
        }
        assert_eq!(
            targets,
            [
                ("/1".into(), true),
                ("/2".into(), true),
                ("/3".into(), false)
            ]
        );
    }

    #[test]
    fn content_length_rules() {
        let r = |cl: &str| req(&format!("POST / HTTP/1.1\r\nHost: a\r\n{cl}\r\n\r\n"));
        assert_eq!(
            r("Content-Length: 5").unwrap().unwrap().0.body,
            BodyKind::Length(5)
        );
        assert_eq!(
            r("Content-Length: 007").unwrap().unwrap().0.body,
            BodyKind::Length(7)
        );
        // Identical duplicates are accepted and collapsed to one field (RFC 9110 §8.6).
        for dup in [
            "Content-Length: 5, 5",
            "Content-Length: 5\r\nContent-Length: 5",
        ] {
            let h = r(dup).unwrap().unwrap().0;
            assert_eq!(h.body, BodyKind::Length(5));
            let cls: Vec<_> = h
                .headers
                .iter()
                .filter(|(n, _)| n == "Content-Length")
                .collect();
            assert_eq!(cls.len(), 1);
            assert_eq!(cls[0].1, b"5");
        }
        for bad in [
            "Content-Length: 5, 6",
            "Content-Length: 5\r\nContent-Length: 6",
        ] {
            assert_eq!(r(bad), Err(HttpError::ConflictingContentLength));
        }
        for bad in [
            "Content-Length: abc",
            "Content-Length: -1",
            "Content-Length: +5",
            "Content-Length: 5 5",
            "Content-Length: 0x10",
            "Content-Length: 5,",
            "Content-Length:",
            "Content-Length: 99999999999999999999999",
        ] {
            assert_eq!(r(bad), Err(HttpError::BadContentLength), "{bad}");
        }
        assert_eq!(HttpError::ConflictingContentLength.status(), 400);
        assert_eq!(HttpError::BadContentLength.status(), 400);
    }

    #[test]
    fn transfer_encoding_rules() {
        let r = |te: &str| req(&format!("POST / HTTP/1.1\r\nHost: a\r\n{te}\r\n\r\n"));
        for ok in [
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: CHUNKED",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: gzip,,  chunked ",
        ] {
            assert_eq!(r(ok).unwrap().unwrap().0.body, BodyKind::Chunked, "{ok}");
        }
        let e = r("Transfer-Encoding: chunked\r\nContent-Length: 5").unwrap_err();
        assert_eq!(e, HttpError::TransferEncodingWithContentLength);
        assert_eq!(e.status(), 400);
        let e = r("Content-Length: 5\r\nTransfer-Encoding: chunked").unwrap_err();
        assert_eq!(e, HttpError::TransferEncodingWithContentLength);
        for bad in [
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: ",
        ] {
            assert_eq!(r(bad), Err(HttpError::ChunkedNotFinal), "{bad}");
        }
        let e = r("Transfer-Encoding: foo, chunked").unwrap_err();
        assert_eq!(e, HttpError::UnknownTransferCoding);
        assert_eq!(e.status(), 501);
        let e = req_err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e, HttpError::TransferEncodingHttp10);
    }

    #[test]
    fn connection_persistence() {
        let ka =
            |v: &str, h: &str| req_ok(&format!("GET / HTTP/{v}\r\nHost: a\r\n{h}\r\n")).keep_alive;
        assert!(!ka("1.0", ""));
        assert!(ka("1.0", "Connection: keep-alive\r\n"));
        assert!(ka("1.0", "Connection: Keep-Alive\r\n"));
        assert!(ka("1.1", ""));
        assert!(!ka("1.1", "Connection: close\r\n"));
        assert!(!ka("1.1", "Connection: keep-alive, close\r\n"));
        assert!(!ka(
            "1.1",
            "Connection: keep-alive\r\nConnection: close\r\n"
        ));
        assert!(ka("1.1", "Connection: closed\r\n"));
    }

    #[test]
    fn expect_and_upgrade() {
        let h = req_ok(
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(h.expect_continue);
        let h = req_ok("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.expect_continue, "ignored in HTTP/1.0 (RFC 9110 §10.1.1)");
        let h = req_ok(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(h.upgrade.as_deref(), Some("websocket"));
        let h = req_ok("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.upgrade, None, "Upgrade without the connection option");
        let h = req_ok("GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.upgrade, None, "ignored in HTTP/1.0 (RFC 9110 §7.8)");
    }

    #[test]
    fn host_rules() {
        assert_eq!(req_err("GET / HTTP/1.1\r\n\r\n"), HttpError::MissingHost);
        assert_eq!(
            req_err("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            HttpError::DuplicateHost
        );
        assert_eq!(req_ok("GET / HTTP/1.0\r\n\r\n").host(), None);
    }

    #[test]
    fn size_limits() {
        let l = Limits {
            max_head: 64,
            max_headers: 4,
            ..Limits::default()
        };
        // Incomplete but within the limit: wait for more.
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", &l),
            Ok(None)
        );
        // max_head bytes and still no end of head.
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        let e = parse_request(long.as_bytes(), &l).unwrap_err();
        assert_eq!(e, HttpError::HeadTooLarge);
        assert_eq!(e.status(), 431);
        assert_eq!(
            parse_request(&long.as_bytes()[..64], &l),
            Err(HttpError::HeadTooLarge)
        );
        assert_eq!(parse_request(&long.as_bytes()[..63], &l), Ok(None));
        // A complete head longer than the limit.
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(60));
        assert_eq!(
            parse_request(big.as_bytes(), &l),
            Err(HttpError::HeadTooLarge)
        );
        // Fifth header.
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        let e = parse_request(many.as_bytes(), &l).unwrap_err();
        assert_eq!(e, HttpError::TooManyHeaders);
        assert_eq!(e.status(), 431);
        // Above the on-stack header count.
        let l = Limits {
            max_headers: 100,
            ..Limits::default()
        };
        let mut s = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..80 {
            s.push_str(&format!("X-{i}: {i}\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(
            parse_request(s.as_bytes(), &l)
                .unwrap()
                .unwrap()
                .0
                .headers
                .len(),
            81
        );
        assert_eq!(
            parse_request(s.as_bytes(), &Limits::default()),
            Err(HttpError::TooManyHeaders)
        );
    }

    #[test]
    fn malformed_heads() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        ] {
            let e = req_err(bad);
            assert!(matches!(e, HttpError::Malformed(_)), "{bad:?}: {e:?}");
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn response_framing() {
        let r = res_ok("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", "GET");
        assert_eq!(
            (r.status, r.reason.as_str(), r.body, r.keep_alive),
            (200, "OK", BodyKind::Length(12), true)
        );
        let r = res_ok(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET",
        );
        assert_eq!(r.body, BodyKind::Chunked);
        let r = res_ok("HTTP/1.1 200 OK\r\n\r\n", "GET");
        assert_eq!((r.body, r.keep_alive), (BodyKind::UntilClose, false));
        let r = res_ok("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", "HEAD");
        assert_eq!((r.body, r.keep_alive), (BodyKind::None, true));
        for s in [204, 304] {
            let r = res_ok(
                &format!("HTTP/1.1 {s} X\r\nContent-Length: 12\r\n\r\n"),
                "GET",
            );
            assert_eq!(r.body, BodyKind::None);
        }
        let r = res_ok("HTTP/1.1 100 Continue\r\n\r\n", "POST");
        assert!(r.is_interim());
        assert_eq!(r.body, BodyKind::None);
        let r = res_ok(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET",
        );
        assert!(!r.is_interim());
        assert_eq!(r.body, BodyKind::Tunnel);
        let r = res_ok("HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT");
        assert_eq!(r.body, BodyKind::Tunnel);
        // TE overrides CL, CL is not forwarded, the connection is not reused (RFC 9112 §6.3 item 3).
        let r = res_ok(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET",
        );
        assert_eq!((r.body, r.keep_alive), (BodyKind::Chunked, false));
        assert_eq!(r.header("content-length"), None);
        // Not ending in chunked: until close (item 4).
        let r = res_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET");
        assert_eq!((r.body, r.keep_alive), (BodyKind::UntilClose, false));
        let r = res_ok(
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET",
        );
        assert_eq!((r.body, r.keep_alive), (BodyKind::UntilClose, false));
        assert_eq!(
            res(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "GET"
            ),
            Err(HttpError::ChunkedNotFinal)
        );
        assert_eq!(
            res("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "GET"),
            Err(HttpError::ConflictingContentLength)
        );
        assert_eq!(
            res("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "GET"),
            Err(HttpError::BadContentLength)
        );
        // Persistence.
        assert!(!res_ok("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET").keep_alive);
        assert!(
            res_ok(
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                "GET"
            )
            .keep_alive
        );
        assert!(
            !res_ok(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                "GET"
            )
            .keep_alive
        );
        assert!(matches!(
            res("HTTP/1.1 099 X\r\n\r\n", "GET"),
            Err(HttpError::Malformed(_))
        ));
    }

    /// Feed `pieces` in order; returns (body bytes, done, bytes left in the last piece).
    fn feed(kind: BodyKind, pieces: &[&[u8]]) -> Result<(usize, bool), HttpError> {
        let mut f = BodyFramer::new(kind);
        let mut total = 0;
        for p in pieces {
            let a = f.advance(p)?;
            assert!(a.body_bytes <= p.len());
            total += a.body_bytes;
            if a.done {
                assert!(f.is_done());
                return Ok((total, true));
            }
            assert_eq!(a.body_bytes, p.len(), "not done: every byte is body");
        }
        Ok((total, false))
    }

    /// The same stream fed whole, in two pieces at every split, and byte by byte.
    fn every_split(kind: BodyKind, data: &[u8]) -> Result<(usize, bool), HttpError> {
        let whole = feed(kind, &[data]);
        for i in 0..=data.len() {
            assert_eq!(feed(kind, &[&data[..i], &data[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(feed(kind, &bytes), whole, "byte by byte");
        whole
    }

    const CHUNKED: &[u8] = b"5;name=value;q=\"a b\"\r\nhello\r\n1A \t; x\r\nabcdefghijklmnopqrstuvwxyz\r\n000\r\nExpires: never\r\nX-Sum: 1\r\n\r\n";

    #[test]
    fn chunked_body_at_every_split() {
        let mut data = CHUNKED.to_vec();
        data.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        assert_eq!(
            every_split(BodyKind::Chunked, &data),
            Ok((CHUNKED.len(), true))
        );
        // Without trailers.
        let plain = b"3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            every_split(BodyKind::Chunked, plain),
            Ok((plain.len(), true))
        );
        // Cut short: not done, and end of stream is an error.
        let mut f = BodyFramer::new(BodyKind::Chunked);
        let a = f.advance(&CHUNKED[..CHUNKED.len() - 1]).unwrap();
        assert!(!a.done);
        assert_eq!(f.eof(), Err(HttpError::Truncated));
    }

    #[test]
    fn length_body_at_every_split() {
        let data = b"0123456789GET";
        assert_eq!(every_split(BodyKind::Length(10), data), Ok((10, true)));
        assert_eq!(every_split(BodyKind::Length(20), data), Ok((13, false)));
        assert_eq!(every_split(BodyKind::None, data), Ok((0, true)));
        assert_eq!(every_split(BodyKind::Length(0), data), Ok((0, true)));
        assert_eq!(every_split(BodyKind::UntilClose, data), Ok((13, false)));
        assert_eq!(every_split(BodyKind::Tunnel, data), Ok((13, false)));
        let mut f = BodyFramer::new(BodyKind::Length(20));
        f.advance(data).unwrap();
        assert_eq!(f.eof(), Err(HttpError::Truncated));
        assert_eq!(BodyFramer::new(BodyKind::UntilClose).eof(), Ok(()));
        // A length beyond usize on 32-bit targets still counts down correctly.
        let mut f = BodyFramer::new(BodyKind::Length(u64::MAX));
        assert_eq!(
            f.advance(data).unwrap(),
            Advance {
                body_bytes: 13,
                done: false
            }
        );
    }

    #[test]
    fn chunked_errors() {
        let bad = |s: &[u8]| feed(BodyKind::Chunked, &[s]).unwrap_err();
        let cases: &[(&[u8], &str)] = &[
            (b"5\nhello\r\n0\r\n\r\n", "invalid byte after chunk size"),
            (
                b"5\rhello\r\n0\r\n\r\n",
                "chunk-size line not ended by CRLF",
            ),
            (b"5;x\r\r\n", "chunk-size line not ended by CRLF"),
            (b"5\r\nhello\n0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"5\r\nhelloX\r\n", "chunk data not followed by CRLF"),
            (b"x\r\n", "chunk size is not hex"),
            (b"\r\n", "chunk size is not hex"),
            (b"-5\r\n", "chunk size is not hex"),
            (b"5 x\r\n", "invalid byte after chunk size"),
            (b"5x\r\n", "invalid byte after chunk size"),
            (b"5;a\x00\r\n", "invalid byte in chunk extension"),
            (b"5;a\nb\r\n", "invalid byte in chunk extension"),
            (b"10000000000000000\r\n", "chunk size overflows"),
            (b"0\r\n folded: x\r\n\r\n", "invalid trailer field"),
            (b"0\r\nNoColon\r\n\r\n", "invalid trailer field name"),
            (b"0\r\nX: a\x01\r\n\r\n", "invalid trailer field value"),
            (b"0\r\nX: a\r\r\n", "trailer line not ended by CRLF"),
            (b"0\r\n\rX", "chunked body not ended by CRLF"),
        ];
        for (input, why) in cases {
            assert_eq!(
                bad(input),
                HttpError::BadChunk(why),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Leading zeros are fine as long as the line is within the limit.
        assert_eq!(
            feed(
                BodyKind::Chunked,
                &[b"00000000000000000000005\r\nhello\r\n0\r\n\r\n"]
            )
            .map(|r| r.1),
            Ok(true)
        );
        let l = Limits {
            max_chunk_line: 8,
            max_trailers: 16,
            ..Limits::default()
        };
        let mut f = BodyFramer::with_limits(BodyKind::Chunked, &l);
        assert_eq!(
            f.advance(b"5;abcdefgh\r\n"),
            Err(HttpError::ChunkLineTooLong)
        );
        // The line limit is per line; exactly 8 bytes passes.
        let mut f = BodyFramer::with_limits(BodyKind::Chunked, &l);
        assert!(f.advance(b"5;abcd\r\nhello\r\n5;abcd\r\nhello\r\n").is_ok());
        let mut f = BodyFramer::with_limits(BodyKind::Chunked, &l);
        let e = f
            .advance(b"0\r\nX-Trailer: 0123456789\r\n\r\n")
            .unwrap_err();
        assert_eq!(e, HttpError::TrailersTooLarge);
        assert_eq!(e.status(), 431);
        // Byte by byte the limits hold the same.
        let mut f = BodyFramer::with_limits(BodyKind::Chunked, &l);
        let r: Result<Vec<_>, _> = b"5;abcdefgh\r\n".iter().map(|b| f.advance(&[*b])).collect();
        assert_eq!(r, Err(HttpError::ChunkLineTooLong));
    }

    #[test]
    fn response_and_body_split_together() {
        // A whole response stream split at every point parses to the same messages.
        let stream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let run = |pieces: &[&[u8]]| -> Vec<(u16, usize)> {
            let l = Limits::default();
            let mut buf = Vec::new();
            let mut out = Vec::new();
            let mut framer: Option<(u16, BodyFramer, usize)> = None;
            for p in pieces {
                buf.extend_from_slice(p);
                loop {
                    if let Some((status, f, n)) = &mut framer {
                        let a = f.advance(&buf).unwrap();
                        *n += a.body_bytes;
                        buf.drain(..a.body_bytes);
                        if !a.done {
                            break;
                        }
                        out.push((*status, *n));
                        framer = None;
                    }
                    match parse_response(&buf, &l, "GET").unwrap() {
                        None => break,
                        Some((h, n)) => {
                            buf.drain(..n);
                            framer = Some((h.status, BodyFramer::new(h.body), 0));
                        }
                    }
                }
            }
            out
        };
        let expected = vec![(100, 0), (200, 14), (204, 0)];
        assert_eq!(run(&[stream]), expected);
        for i in 0..=stream.len() {
            assert_eq!(run(&[&stream[..i], &stream[i..]]), expected, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), expected);
    }

    #[test]
    fn write_heads_round_trip() {
        let s = "POST /x?y HTTP/1.1\r\nHost: a\r\nX-Mixed-Case: v\r\nContent-Length: 3, 3\r\n\r\n";
        let h = req_ok(s);
        let mut out = Vec::new();
        write_request_head(&h, &mut out, &[("x-request-id", b"abc")]);
        assert_eq!(
            out,
            b"POST /x?y HTTP/1.1\r\nHost: a\r\nX-Mixed-Case: v\r\nContent-Length: 3\r\nx-request-id: abc\r\n\r\n"
        );
        let (again, n) = parse_request(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(again.body, BodyKind::Length(3));
        assert_eq!(again.header("x-request-id"), Some(&b"abc"[..]));
        // Bare-LF line endings in, CRLF out.
        let h = req_ok("GET / HTTP/1.0\nUser-Agent: x\n\n");
        let mut out = Vec::new();
        write_request_head(&h, &mut out, &[]);
        assert_eq!(out, b"GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n");

        let r = res_ok("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "GET");
        let mut out = Vec::new();
        write_response_head(&r, &mut out, &[("via", b"1.1 xdpmesh")]);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nvia: 1.1 xdpmesh\r\n\r\n"
        );
    }

    #[test]
    fn request_id() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut h = req_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ensure_request_id(&mut h, &mut rng));
        let id = h.header("x-request-id").unwrap().to_vec();
        assert_eq!(id.len(), 32);
        assert!(is_lower_hex(&id));
        assert!(!ensure_request_id(&mut h, &mut rng), "kept when present");
        assert_eq!(
            h.headers
                .iter()
                .filter(|(n, _)| n == "x-request-id")
                .count(),
            1
        );
        let mut h2 = req_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        ensure_request_id(&mut h2, &mut rng);
        assert_ne!(
            h2.header("x-request-id").unwrap(),
            &id[..],
            "fresh per request"
        );
        let mut h3 = req_ok("GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: mine\r\n\r\n");
        assert!(!ensure_request_id(&mut h3, &mut rng));
        assert_eq!(h3.header("x-request-id"), Some(&b"mine"[..]));
    }

    /// An rng that only ever returns zeros: ids must still be non-zero.
    struct Zeros;
    impl rand::RngCore for Zeros {
        fn next_u32(&mut self) -> u32 {
            0
        }
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn fill_bytes(&mut self, d: &mut [u8]) {
            d.fill(0)
        }
        fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand::Error> {
            d.fill(0);
            Ok(())
        }
    }

    #[test]
    fn traceparent_validity() {
        const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(traceparent_is_valid(GOOD.as_bytes()));
        assert!(traceparent_is_valid(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
        ));
        assert!(traceparent_is_valid(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09"
        ));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(!traceparent_is_valid(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ids_from_a_zero_source_are_not_zero() {
        let mut h = req_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let span = crate::trace::start_span(
            &h,
            crate::trace::SpanKind::Client,
            &mut Zeros,
            &crate::trace::Sampler::ALWAYS,
        );
        crate::trace::forward(&mut h, &span);
        ensure_request_id(&mut h, &mut Zeros);
        assert!(traceparent_is_valid(h.header("traceparent").unwrap()));
        assert_eq!(
            h.header("x-request-id"),
            Some(&b"00000000000000000000000000000001"[..])
        );
    }

    #[test]
    fn canned_responses_parse_back() {
        for status in [400u16, 403, 431, 502, 503, 504] {
            let body = format!("error {status}\n");
            let out = simple_response(status, reason_phrase(status), body.as_bytes());
            let (h, n) = parse_response(&out, &Limits::default(), "GET")
                .unwrap()
                .unwrap();
            assert_eq!(h.status, status);
            assert_eq!(h.reason, reason_phrase(status));
            assert!(!h.keep_alive, "errors close the connection");
            assert_eq!(h.body, BodyKind::Length(body.len() as u64));
            assert_eq!(&out[n..], body.as_bytes());
        }
        let ok = simple_response(200, "OK", b"ok");
        let (h, _) = parse_response(&ok, &Limits::default(), "GET")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let nc = simple_response(204, "No Content", b"ignored");
        assert_eq!(nc, b"HTTP/1.1 204 No Content\r\n\r\n");
        let (h, n) = parse_response(CONTINUE, &Limits::default(), "PUT")
            .unwrap()
            .unwrap();
        assert!(h.is_interim() && n == CONTINUE.len());
        let e = HttpError::ConflictingContentLength.response();
        assert!(e.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let l = Limits { max_head: 256, max_headers: 8, max_chunk_line: 32, max_trailers: 64 };
            let _ = parse_request(&data, &l);
            let _ = parse_response(&data, &l, "GET");
            let _ = parse_response(&data, &l, "HEAD");
            for kind in [BodyKind::Chunked, BodyKind::Length(7)] {
                let mut f = BodyFramer::with_limits(kind, &l);
                if let Ok(a) = f.advance(&data) {
                    prop_assert!(a.body_bytes <= data.len());
                }
                let _ = f.eof();
            }
        }

        #[test]
        fn http_like_input_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("GET / HTTP/1.1".to_owned()),
                    Just("HTTP/1.1 200 OK".to_owned()),
                    Just("Host: a".to_owned()),
                    Just("Transfer-Encoding: chunked".to_owned()),
                    Just("Content-Length: 3".to_owned()),
                    Just("Connection: upgrade".to_owned()),
                    Just("Upgrade: websocket".to_owned()),
                    "[ -~]{0,20}",
                    "[0-9a-fA-F;= ]{0,10}",
                    Just(String::new()),
                ],
                0..12,
            ),
            crlf in any::<bool>(),
        ) {
            let sep = if crlf { "\r\n" } else { "\n" };
            let data = lines.join(sep).into_bytes();
            let l = Limits::default();
            if let Ok(Some((h, n))) = parse_request(&data, &l) {
                prop_assert!(n <= data.len());
                let mut out = Vec::new();
                write_request_head(&h, &mut out, &[]);
                // What we emit parses back to the same head.
                let again = parse_request(&out, &l).unwrap().unwrap().0;
                prop_assert_eq!(again, h);
            }
            if let Ok(Some((h, _))) = parse_response(&data, &l, "GET") {
                let mut f = BodyFramer::new(h.body);
                let _ = f.advance(&data);
            }
            let mut f = BodyFramer::new(BodyKind::Chunked);
            let _ = f.advance(&data);
        }

        #[test]
        fn chunked_split_anywhere_same_result(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut data = Vec::new();
            for c in &chunks {
                data.extend_from_slice(format!("{:x};e=1\r\n", c.len()).as_bytes());
                data.extend_from_slice(c);
                data.extend_from_slice(b"\r\n");
            }
            data.extend_from_slice(b"0\r\nT: v\r\n\r\n");
            let body_len = data.len();
            data.extend_from_slice(b"NEXT");
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for p in points {
                pieces.push(&data[prev..p]);
                prev = p;
            }
            pieces.push(&data[prev..]);
            prop_assert_eq!(feed(BodyKind::Chunked, &pieces), Ok((body_len, true)));
        }
    }
}

#[cfg(test)]
mod normalize_tests {
    use super::*;

    #[test]
    fn targets_normalize_for_matching_and_forwarding() {
        for (target, forward, matched) in [
            ("/", "/", "/"),
            ("/a/b", "/a/b", "/a/b"),
            ("/a/b/", "/a/b/", "/a/b/"),
            ("/a/./b/../c", "/a/c", "/a/c"),
            ("/a/..", "/", "/"),
            ("/a/.", "/a/", "/a/"),
            ("/../../a", "/a", "/a"),
            ("//a///b", "/a/b", "/a/b"),
            ("/%7euser/%41%2e", "/~user/A.", "/~user/A."),
            ("/a%2e%2E/b", "/a../b", "/a../b"),
            ("/%2e%2e/admin", "/admin", "/admin"),
            ("/a%3bb", "/a%3Bb", "/a%3Bb"),
            ("/a%20b", "/a%20b", "/a%20b"),
            ("/admin;x=1/y", "/admin;x=1/y", "/admin/y"),
            ("/p/..;/admin", "", ""),
            ("/;x/a", "", ""),
            ("/admin/;/../x", "", ""),
            ("/a/.;x/b", "", ""),
            ("/a?b=/../c#", "", ""),
            ("/a?x=%zz&y=/..", "/a?x=%zz&y=/..", "/a"),
            ("http://h.test", "http://h.test/", "/"),
            ("http://h.test?q", "http://h.test/?q", "/"),
            (
                "https://u@h.test:8/a/../b?q",
                "https://u@h.test:8/b?q",
                "/b",
            ),
            ("*", "*", "*"),
        ] {
            match normalize_target(target) {
                Ok(t) => {
                    assert_eq!(
                        (t.forward.as_str(), t.matched.as_str()),
                        (forward, matched),
                        "{target}"
                    );
                }
                Err(e) => assert!(forward.is_empty(), "{target}: {e}"),
            }
        }
        for bad in [
            "/a%", "/a%4", "/a%g0", "/a%2f", "/a%5c", "/a\\b", "/a%00", "a/b", "", "/a#f",
        ] {
            assert!(
                matches!(normalize_target(bad), Err(HttpError::BadTarget(_))),
                "{bad}"
            );
            assert_eq!(HttpError::BadTarget("x").status(), 400);
        }
    }

    #[test]
    fn normalizing_is_idempotent_and_never_leaves_dot_segments() {
        let parts = ["a", ".", "..", "", "%2e", "%2E%2e", "b;p", "..;", "%41"];
        let mut n = 0;
        for x in parts {
            for y in parts {
                for z in parts {
                    let path = format!("/{x}/{y}/{z}");
                    let Ok(t) = normalize_target(&path) else {
                        continue;
                    };
                    n += 1;
                    let again = normalize_target(&t.forward).unwrap();
                    assert_eq!(again.forward, t.forward, "{path}");
                    for seg in t.matched.split('/') {
                        assert!(seg != "." && seg != "..", "{path} -> {}", t.matched);
                    }
                    assert!(!t.matched.contains("//"), "{path} -> {}", t.matched);
                }
            }
        }
        assert!(n > parts.len().pow(3) / 2, "{n}");
    }
}

#[cfg(test)]
mod chunk_ext_tests {
    use super::*;

    fn ext(line: &str) -> Result<(), HttpError> {
        let mut f = BodyFramer::new(BodyKind::Chunked);
        let body = format!("{line}\r\nhello\r\n0\r\n\r\n");
        let a = f.advance(body.as_bytes())?;
        assert!(a.done && a.body_bytes == body.len(), "{line}");
        Ok(())
    }

    #[test]
    fn chunk_extensions_follow_the_grammar_of_rfc_9112_7_1_1() {
        for good in [
            "5;a",
            "5;a=b",
            "5 ;a=b;c",
            "5; a = b ; c",
            "5;a=\"\"",
            "5;a=\"x y;z=\\\"q\\\\\"",
            "5;a=\"\t\u{e9}\"",
        ] {
            assert_eq!(ext(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("5;", "invalid byte in chunk extension"),
            ("5;=b", "invalid byte in chunk extension"),
            ("5;a=", "invalid byte in chunk extension"),
            ("5;a=b c", "invalid byte in chunk extension"),
            ("5;a=\"open", "unterminated quoted chunk extension"),
            ("5;a=\"x\"y", "invalid byte in chunk extension"),
            ("5;a b", "invalid byte in chunk extension"),
            ("5;a=(b)", "invalid byte in chunk extension"),
            ("5;a=\"\u{1}\"", "invalid byte in chunk extension"),
        ] {
            assert_eq!(ext(bad), Err(HttpError::BadChunk(why)), "{bad}");
        }
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn grpc_fields_parse_strictly() {
        assert_eq!(grpc_timeout(b"200m"), Some(Duration::from_millis(200)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"m",
            b"123456789S",
            b"1x",
            b"-1S",
            b" 1S",
            b"1.5S",
        ] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_status(b"0"), Some(0));
        assert_eq!(grpc_status(b" 14 "), Some(14));
        assert_eq!(grpc_status(b"17"), Some(2), "unknown codes are UNKNOWN");
        assert_eq!(grpc_status(b"x"), None);
        assert_eq!(grpc_status(b"1000"), None);
        let head = |ct: &str| {
            let raw = format!("POST /a.B/C HTTP/1.1\r\nHost: h\r\ncontent-type: {ct}\r\n\r\n");
            parse_request(raw.as_bytes(), &Limits::default())
                .unwrap()
                .unwrap()
                .0
        };
        assert!(is_grpc(&head("application/grpc")));
        assert!(is_grpc(&head("application/grpc+proto")));
        assert!(is_grpc(&head("Application/GRPC;charset=x")));
        assert!(!is_grpc(&head("application/grpc-web")));
        assert!(!is_grpc(&head("application/json")));
    }

    #[test]
    fn kept_trailers_are_whole_across_every_split() {
        let body = b"3\r\nabc\r\n0\r\nx-a: 1\r\ngrpc-status: 7\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut f = BodyFramer::new(BodyKind::Chunked);
            f.keep_trailers();
            let a = f.advance(&body[..split]).unwrap();
            let b = f.advance(&body[a.body_bytes..]).unwrap();
            assert!(b.done, "split {split}");
            assert_eq!(a.body_bytes + b.body_bytes, body.len() - 4);
            assert_eq!(f.trailers(), Some(&b"x-a: 1\r\ngrpc-status: 7\r\n\r\n"[..]));
            assert_eq!(trailer_grpc_status(f.trailers().unwrap()), Some(7));
        }
        let mut f = BodyFramer::new(BodyKind::Chunked);
        f.advance(body).unwrap();
        assert_eq!(f.trailers(), None, "kept only when asked");
        assert_eq!(trailer_grpc_status(b"x: 1\r\n\r\n"), None);
    }
}
