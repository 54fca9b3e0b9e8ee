//! Fixed-capacity byte rings for the send and receive sides. Storage is allocated on first use so
//! that a half-open or idle connection costs no buffer memory; capacity never grows.

/// Bytes `[head, head+len)` of a circular buffer of `cap` bytes.
#[derive(Debug)]
pub struct Ring {
    buf: Vec<u8>,
    cap: usize,
    head: usize,
    len: usize,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: Vec::new(),
            cap,
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn free(&self) -> usize {
        self.cap - self.len
    }
    /// Bytes of heap this ring holds (0 until first use).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    fn ensure(&mut self) {
        if self.buf.len() != self.cap {
            self.buf = vec![0; self.cap];
        }
    }

    /// Copies `data` into the ring at `offset` bytes past the end of the held bytes, without
    /// making it readable. Returns how many bytes fit.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        if offset >= self.free() {
            return 0;
        }
        let n = data.len().min(self.free() - offset);
        if n == 0 {
            return 0;
        }
        self.ensure();
        let start = (self.head + self.len + offset) % self.cap;
        let first = n.min(self.cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        n
    }

    /// Makes `n` bytes written by `write_at(0, ..)` part of the held bytes.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free());
        self.len += n.min(self.free());
    }

    /// Appends as much of `data` as fits; returns the count.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = self.write_at(0, data);
        self.commit(n);
        n
    }

    /// Copies held bytes starting `offset` bytes from the head into `dst`; returns the count.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        if offset >= self.len {
            return 0;
        }
        let n = dst.len().min(self.len - offset);
        let start = (self.head + offset) % self.cap;
        let first = n.min(self.cap - start);
        dst[..first].copy_from_slice(&self.buf[start..start + first]);
        dst[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }

    /// Drops `n` bytes from the head.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        // The head moves even when the ring empties: bytes written past the end (out-of-order
        // data) stay where they are.
        if self.cap > 0 {
            self.head = (self.head + n) % self.cap;
        }
    }

    /// `read_at(0, dst)` then `consume`.
    pub fn pop(&mut self, dst: &mut [u8]) -> usize {
        let n = self.read_at(0, dst);
        self.consume(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_keeps_order() {
        let mut r = Ring::new(7);
        assert_eq!(r.allocated(), 0);
        let mut out = Vec::new();
        let mut next = 0u8;
        for round in 0..50 {
            let chunk: Vec<u8> = (0..(round % 5 + 1))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let n = r.push(&chunk);
            next = next.wrapping_sub((chunk.len() - n) as u8);
            let mut dst = [0u8; 3];
            let m = r.pop(&mut dst);
            out.extend_from_slice(&dst[..m]);
        }
        let mut dst = [0u8; 7];
        let m = r.pop(&mut dst);
        out.extend_from_slice(&dst[..m]);
        let expect: Vec<u8> = (1..=out.len() as u32).map(|i| i as u8).collect();
        assert_eq!(out, expect);
    }

    #[test]
    fn data_past_the_end_survives_draining() {
        let mut r = Ring::new(8);
        r.push(b"ab");
        assert_eq!(r.write_at(1, b"d"), 1);
        let mut dst = [0u8; 2];
        assert_eq!(r.pop(&mut dst), 2);
        assert_eq!(r.write_at(0, b"c"), 1);
        r.commit(2);
        assert_eq!(r.pop(&mut dst), 2);
        assert_eq!(&dst, b"cd");
    }

    #[test]
    fn write_at_offset_then_commit() {
        let mut r = Ring::new(8);
        assert_eq!(r.write_at(3, b"def"), 3);
        assert_eq!(r.write_at(0, b"abc"), 3);
        r.commit(6);
        let mut dst = [0u8; 8];
        assert_eq!(r.pop(&mut dst), 6);
        assert_eq!(&dst[..6], b"abcdef");
        assert_eq!(r.write_at(8, b"x"), 0);
        assert_eq!(r.write_at(6, b"xyz"), 2);
    }
}
