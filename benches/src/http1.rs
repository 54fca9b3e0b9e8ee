//! Incremental HTTP/1.1 response reader for the load generator (RFC 9112).
//!
//! Heads are parsed with `httparse`; bodies are counted and dropped, never stored. The body
//! length follows RFC 9112 §6.3: 1xx/204/304 have none, then `Transfer-Encoding: chunked`,
//! then `Content-Length`, else the body runs to the end of the connection.

/// Largest response head we accept before calling it a bad response.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line or trailer line.
const MAX_LINE: usize = 4 * 1024;
const MAX_HEADERS: usize = 64;

/// A response that finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub status: u16,
    /// The server asked to close (`Connection: close`), or the body ran to EOF.
    pub close: bool,
    /// Bytes that arrived after the end of this response. We never pipeline, so any is an error.
    pub leftover: usize,
}

/// Why a response is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bad response head: {0}")]
    Head(String),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("bad Content-Length")]
    ContentLength,
    #[error("bad chunk: {0}")]
    Chunk(&'static str),
    #[error("protocol switch (101) is not supported")]
    Upgrade,
    #[error("connection closed before the response was complete")]
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilEof,
}

/// Reads one response at a time from the bytes of a connection.
#[derive(Debug)]
pub struct ResponseReader {
    buf: Vec<u8>,
    state: State,
    status: u16,
    close: bool,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(1024),
            state: State::Head,
            status: 0,
            close: false,
        }
    }

    /// Forget any partial response (the connection was replaced).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.state = State::Head;
        self.status = 0;
        self.close = false;
    }

    /// True while no byte of a response has been seen.
    pub fn is_idle(&self) -> bool {
        self.state == State::Head && self.buf.is_empty()
    }

    /// Feed bytes read from the connection. Returns the response once it is complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Done>, HttpError> {
        match self.state {
            // Body bytes are only counted: skip the copy.
            State::Fixed(_) | State::ChunkData(_) | State::UntilEof if self.buf.is_empty() => {
                let used = self.consume_body(data.len());
                if used < data.len() {
                    self.buf.extend_from_slice(&data[used..]);
                }
            }
            _ => self.buf.extend_from_slice(data),
        }
        self.advance()
    }

    /// The connection reached EOF. Completes a response whose body runs to EOF.
    pub fn eof(&mut self) -> Result<Option<Done>, HttpError> {
        match self.state {
            State::UntilEof => {
                let done = Done {
                    status: self.status,
                    close: true,
                    leftover: 0,
                };
                self.reset();
                Ok(Some(done))
            }
            State::Head if self.buf.is_empty() => Ok(None),
            _ => Err(HttpError::Truncated),
        }
    }

    /// Count `n` body bytes against the current state; returns how many were used.
    fn consume_body(&mut self, n: usize) -> usize {
        match self.state {
            State::Fixed(rem) | State::ChunkData(rem) => {
                let take = rem.min(n as u64);
                let left = rem - take;
                self.state = match self.state {
                    State::Fixed(_) => State::Fixed(left),
                    _ => State::ChunkData(left),
                };
                take as usize
            }
            State::UntilEof => n,
            _ => 0,
        }
    }

    fn advance(&mut self) -> Result<Option<Done>, HttpError> {
        loop {
            match self.state {
                State::Head => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    if !self.parse_head()? {
                        return Ok(None);
                    }
                }
                State::Fixed(0) => return Ok(Some(self.finish())),
                State::Fixed(_) | State::ChunkData(_) | State::UntilEof => {
                    let used = self.consume_body(self.buf.len());
                    self.buf.drain(..used);
                    match self.state {
                        State::ChunkData(0) => self.state = State::ChunkEnd,
                        State::Fixed(0) => {}
                        _ => return Ok(None),
                    }
                }
                State::ChunkSize => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.drain(..used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > MAX_LINE {
                            return Err(HttpError::Chunk("chunk-size line too long"));
                        }
                        return Ok(None);
                    }
                    Err(_) => return Err(HttpError::Chunk("invalid chunk size")),
                },
                State::ChunkEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(HttpError::Chunk("chunk data not followed by CRLF"));
                    }
                    self.buf.drain(..2);
                    self.state = State::ChunkSize;
                }
                // RFC 9112 §7.1.2: trailer fields, then an empty line.
                State::Trailers => match find_crlf(&self.buf) {
                    Some(0) => {
                        self.buf.drain(..2);
                        return Ok(Some(self.finish()));
                    }
                    Some(i) => {
                        self.buf.drain(..i + 2);
                    }
                    None => {
                        if self.buf.len() > MAX_LINE {
                            return Err(HttpError::Chunk("trailer line too long"));
                        }
                        return Ok(None);
                    }
                },
            }
        }
    }

    /// Parse the head if complete; returns false when more bytes are needed.
    fn parse_head(&mut self) -> Result<bool, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let used = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(false);
            }
            Err(e) => return Err(HttpError::Head(e.to_string())),
        };
        let status = resp.code.unwrap_or(0);
        let http10 = resp.version == Some(0);
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = http10;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(HttpError::ContentLength)?;
                // RFC 9112 §6.3 item 5: differing repeated lengths are unrecoverable.
                if content_length.is_some_and(|old| old != v) {
                    return Err(HttpError::ContentLength);
                }
                content_length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked must be the final coding (RFC 9112 §6.1).
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        close = false;
                    }
                }
            }
        }
        self.buf.drain(..used);
        self.status = status;
        self.close = close;
        self.state = match status {
            101 => return Err(HttpError::Upgrade),
            // Interim responses (RFC 9110 §15.2): the final one follows.
            100..=199 => State::Head,
            204 | 304 => State::Fixed(0),
            _ if chunked => State::ChunkSize,
            _ => match content_length {
                Some(n) => State::Fixed(n),
                None => {
                    self.close = true;
                    State::UntilEof
                }
            },
        };
        Ok(true)
    }

    fn finish(&mut self) -> Done {
        let done = Done {
            status: self.status,
            close: self.close,
            leftover: self.buf.len(),
        };
        self.buf.clear();
        self.state = State::Head;
        self.status = 0;
        self.close = false;
        done
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `wire` split at every position and check each split gives the same result.
    fn read_all_splits(wire: &[u8]) -> Result<Done, HttpError> {
        let mut first = None;
        for cut in 0..=wire.len() {
            let mut r = ResponseReader::new();
            let mut out = r.push(&wire[..cut])?;
            if out.is_none() {
                out = r.push(&wire[cut..])?;
            }
            let out = out.expect("response complete");
            if let Some(f) = first {
                assert_eq!(f, out, "split at {cut}");
            }
            first = Some(out);
        }
        Ok(first.expect("at least one split"))
    }

    #[test]
    fn content_length_body() {
        let d = read_all_splits(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(
            d,
            Done {
                status: 200,
                close: false,
                leftover: 0
            }
        );
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        let d = read_all_splits(wire).unwrap();
        assert_eq!(d.status, 200);
        assert_eq!(d.leftover, 0);
    }

    #[test]
    fn interim_100_then_final() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let d = read_all_splits(wire).unwrap();
        assert_eq!(d.status, 503);
        assert!(d.close);
    }

    #[test]
    fn no_length_runs_to_eof() {
        let mut r = ResponseReader::new();
        assert_eq!(r.push(b"HTTP/1.1 200 OK\r\n\r\nsome body").unwrap(), None);
        let d = r.eof().unwrap().unwrap();
        assert!(d.close);
        assert_eq!(d.status, 200);
    }

    #[test]
    fn truncated_body_is_an_error_at_eof() {
        let mut r = ResponseReader::new();
        assert_eq!(
            r.push(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                .unwrap(),
            None
        );
        assert_eq!(r.eof(), Err(HttpError::Truncated));
    }

    #[test]
    fn extra_bytes_are_reported_as_leftover() {
        let mut r = ResponseReader::new();
        let d = r
            .push(b"HTTP/1.1 204 No Content\r\n\r\njunk")
            .unwrap()
            .unwrap();
        assert_eq!(d.leftover, 4);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        for wire in [
            &b"HTTQ/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
            b"HTTP/1.1 101 Switching\r\n\r\n",
        ] {
            let mut r = ResponseReader::new();
            assert!(r.push(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let mut r = ResponseReader::new();
        let mut head = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        head.resize(MAX_HEAD + 10, b'a');
        assert_eq!(r.push(&head), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn reader_is_reusable_across_responses() {
        let mut r = ResponseReader::new();
        for _ in 0..3 {
            let d = r
                .push(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap()
                .unwrap();
            assert_eq!(d.leftover, 0);
            assert!(r.is_idle());
        }
    }
}
