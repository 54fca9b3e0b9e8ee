//! Byte rings for the send and receive sides, sized to what they hold. The capacity (the
//! send buffer or receive window) is fixed, but storage starts empty, grows by doubling from
//! [`Ring::FIRST_ALLOC`] as bytes need room, and can be given back once the ring is empty:
//! a connection holding a few bytes holds a few KiB, and an idle one none.

/// Bytes `[head, head+len)` of a circular buffer of `size` bytes, at most `cap`.
#[derive(Debug)]
pub struct Ring {
    /// Storage of `size` bytes (its capacity), of which the first `buf.len()` have been
    /// written: new storage is not zeroed, since in-order bytes fill it from index 0 and wrap
    /// only once they have reached the end. Only what out-of-order data skips over is zeroed,
    /// so that every byte within `extent` of the head is always written.
    buf: Vec<u8>,
    /// 0, or a power of two of at least `FIRST_ALLOC` bytes, or `cap`.
    size: usize,
    cap: usize,
    /// Index in `buf` of the first held byte.
    head: usize,
    len: usize,
    /// Bytes from `head` that may hold data: the held ones and any written past them by
    /// `write_at` (out-of-order data). Storage can go only when this is zero.
    extent: usize,
}

impl Ring {
    /// The first allocation: a request or a response header fits.
    pub const FIRST_ALLOC: usize = 4096;

    pub fn new(cap: usize) -> Self {
        Ring {
            buf: Vec::new(),
            size: 0,
            cap,
            head: 0,
            len: 0,
            extent: 0,
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
    /// Bytes of heap this ring holds.
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }
    /// Nothing held and nothing written past the held bytes: the storage may go.
    pub fn is_idle(&self) -> bool {
        self.extent == 0
    }

    /// `head + i` wrapped into the storage (`i` < storage size).
    #[inline]
    fn index(&self, i: usize) -> usize {
        let j = self.head + i;
        if j >= self.size {
            j - self.size
        } else {
            j
        }
    }

    /// Writes `data` at index `at` (`at + data.len()` ≤ `size`), extending the written prefix.
    #[inline]
    fn put(&mut self, at: usize, data: &[u8]) {
        debug_assert!(at + data.len() <= self.size);
        if at > self.buf.len() {
            self.buf.resize(at, 0); // a gap before out-of-order data
        }
        let inside = self.buf.len().min(at + data.len()) - at;
        self.buf[at..at + inside].copy_from_slice(&data[..inside]);
        // Within the capacity: never reallocates.
        self.buf.extend_from_slice(&data[inside..]);
    }

    /// Makes room for `need` bytes from the head (`need` ≤ `cap`): at least doubles the
    /// storage, so filling a ring copies each byte O(1) times, and lays the bytes out from
    /// index 0. Everything within `extent` keeps its offset from the head.
    fn reserve(&mut self, need: usize) {
        if need <= self.size {
            return;
        }
        let size = need
            .max(Self::FIRST_ALLOC)
            .max(2 * self.size)
            .next_power_of_two()
            .min(self.cap);
        let mut buf = Vec::with_capacity(size);
        // Everything within `extent` has been written (a write zeroes any gap before it).
        let first = self.extent.min(self.size - self.head);
        buf.extend_from_slice(&self.buf[self.head..self.head + first]);
        buf.extend_from_slice(&self.buf[..self.extent - first]);
        self.buf = buf;
        self.size = size;
        self.head = 0;
    }

    /// Gives the storage back if the ring is idle; returns whether it did.
    pub fn release_if_idle(&mut self) -> bool {
        if self.extent > 0 || self.buf.capacity() == 0 {
            return false;
        }
        self.buf = Vec::new();
        self.size = 0;
        self.head = 0;
        true
    }

    /// Forgets every byte and gives the storage back.
    pub fn clear(&mut self) {
        self.len = 0;
        self.extent = 0;
        self.head = 0;
        self.buf = Vec::new();
        self.size = 0;
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
        let end = self.len + offset + n;
        let start = self.head + self.len + offset;
        if start + n <= self.buf.len() {
            // The common case: room in written storage, no wrap.
            self.buf[start..start + n].copy_from_slice(&data[..n]);
            self.extent = self.extent.max(end);
            return n;
        }
        self.reserve(end);
        if self.head + end > self.size && self.buf.len() < self.size {
            // Out-of-order data that wraps before the ring has been written to its end: the
            // bytes it skips over count as written from here on.
            self.buf.resize(self.size, 0);
        }
        let start = self.index(self.len + offset);
        let first = n.min(self.size - start);
        self.put(start, &data[..first]);
        self.put(0, &data[first..n]);
        self.extent = self.extent.max(end);
        n
    }

    /// Makes `n` bytes written by `write_at(0, ..)` part of the held bytes.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free());
        let n = n.min(self.free());
        let written = self.extent - self.len;
        debug_assert!(n <= written, "commit of bytes never written");
        if n > written {
            // Zeros, rather than a read past what was written.
            self.write_at(written, &vec![0; n - written]);
        }
        self.len += n;
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
        let start = self.index(offset);
        let first = n.min(self.size - start);
        dst[..first].copy_from_slice(&self.buf[start..start + first]);
        dst[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }

    /// Drops `n` bytes from the head. The storage stays until the owner calls
    /// `release_if_idle`: a connection that empties its ring many times a second would
    /// otherwise allocate (and regrow) it each time.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.len -= n;
        self.extent -= n;
        if self.extent == 0 {
            // Nothing to keep in place: start again at index 0.
            self.head = 0;
        } else {
            // Bytes written past the end (out-of-order data) stay where they are.
            self.head = self.index(n);
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
    use proptest::prelude::*;

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
        assert!(!r.is_idle(), "the byte past the end is still there");
        assert_eq!(r.write_at(0, b"c"), 1);
        r.commit(2);
        assert_eq!(r.pop(&mut dst), 2);
        assert_eq!(&dst, b"cd");
        assert!(r.is_idle());
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

    #[test]
    fn one_byte_takes_the_first_allocation_and_draining_gives_it_back() {
        let mut r = Ring::new(256 * 1024);
        assert_eq!(r.allocated(), 0);
        assert_eq!(r.push(b"x"), 1);
        assert_eq!(r.allocated(), Ring::FIRST_ALLOC);
        assert_eq!(
            r.free(),
            256 * 1024 - 1,
            "the window is the capacity, not the storage"
        );
        assert!(!r.release_if_idle(), "holds a byte");
        let mut dst = [0u8; 1];
        assert_eq!(r.pop(&mut dst), 1);
        assert!(r.is_idle());
        assert!(r.release_if_idle());
        assert_eq!(r.allocated(), 0);
    }

    #[test]
    fn grows_by_doubling_to_the_cap_and_keeps_larger_storage_until_released() {
        let cap = 256 * 1024;
        let mut r = Ring::new(cap);
        let mut sizes = vec![];
        let mut byte = 0u8;
        while r.free() > 0 {
            let chunk: Vec<u8> = (0..1000)
                .map(|_| {
                    byte = byte.wrapping_add(1);
                    byte
                })
                .collect();
            let n = r.push(&chunk);
            byte = byte.wrapping_sub((chunk.len() - n) as u8);
            if sizes.last() != Some(&r.allocated()) {
                sizes.push(r.allocated());
            }
        }
        assert_eq!(
            sizes,
            [4, 8, 16, 32, 64, 128, 256].map(|k| k * 1024).to_vec()
        );
        assert_eq!(r.len(), cap);
        assert_eq!(r.push(b"more"), 0, "never beyond the cap");
        // Drain in odd pieces; every byte comes back in order.
        let mut dst = vec![0u8; 777];
        let mut expect = 0u8;
        while !r.is_empty() {
            let n = r.pop(&mut dst);
            for &b in &dst[..n] {
                expect = expect.wrapping_add(1);
                assert_eq!(b, expect);
            }
        }
        assert_eq!(r.allocated(), cap, "kept until the owner releases it");
        assert!(r.release_if_idle());
        assert_eq!(r.allocated(), 0);
        assert!(!r.release_if_idle());
    }

    #[test]
    fn release_keeps_storage_that_holds_bytes() {
        let mut r = Ring::new(64 * 1024);
        r.push(&[1; 10_000]);
        assert!(!r.release_if_idle());
        r.consume(10_000);
        // Out-of-order bytes alone also hold the storage.
        r.write_at(5000, b"z");
        assert!(!r.release_if_idle());
        assert_eq!(r.allocated(), 16 * 1024);
        r.clear();
        assert_eq!((r.allocated(), r.len()), (0, 0));
    }

    #[test]
    fn growth_keeps_wrapped_and_out_of_order_bytes() {
        let mut r = Ring::new(64 * 1024);
        r.push(&[7; 3000]);
        r.consume(2900); // head at 2900 of 4096, 100 bytes held
        let held: Vec<u8> = (0..2500).map(|i| i as u8).collect();
        assert_eq!(r.push(&held), 2500); // 2600 held, wrapping at 4096
        assert_eq!(r.allocated(), 4096);
        // Past the end: needs 2600 + 3003 bytes, so the storage doubles.
        assert_eq!(r.write_at(3000, b"ooo"), 3);
        assert_eq!(r.allocated(), 8192);
        let mut dst = vec![0u8; 100];
        assert_eq!(r.pop(&mut dst), 100);
        assert_eq!(dst, vec![7; 100]);
        let mut dst = vec![0u8; 2500];
        assert_eq!(r.pop(&mut dst), 2500);
        assert_eq!(dst, held);
        assert_eq!(r.write_at(0, &[1; 3000]), 3000);
        r.commit(3003);
        let mut dst = vec![0u8; 3003];
        assert_eq!(r.pop(&mut dst), 3003);
        assert_eq!(&dst[3000..], b"ooo");
    }

    /// Out-of-order data can land at index 0 before in-order bytes have reached the end of
    /// the storage (found by `matches_a_model`): what it skips over must count as written,
    /// or growing copies past the written bytes.
    #[test]
    fn out_of_order_data_that_wraps_before_the_end() {
        let mut r = Ring::new(10_000);
        r.push(&[1; 1920]);
        r.push(&[2; 2647]); // 8 KiB storage, 4567 bytes written
        r.consume(2507); // head at 2507, 2060 held
        assert_eq!(r.write_at(3625, b"w"), 1); // index 2507 + 2060 + 3625 = 8192: wraps to 0
        assert_eq!(r.write_at(5908, &[3; 225]), 225); // needs 8193: grows to 10,000
        assert_eq!(r.allocated(), 10_000);
        let mut dst = vec![0u8; 2060];
        assert_eq!(r.pop(&mut dst), 2060);
        assert_eq!(dst, vec![2; 2060]);
        r.write_at(0, &[0; 3625]);
        r.commit(3626);
        let mut dst = vec![0u8; 3626];
        assert_eq!(r.pop(&mut dst), 3626);
        assert_eq!(dst[3625], b'w');
    }

    /// Every head position of a full first allocation, grown by in-order and by out-of-order
    /// bytes: the bytes come back in order.
    #[test]
    fn growth_from_every_head_position() {
        let pattern: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for head in 0..Ring::FIRST_ALLOC {
            for past_the_end in [false, true] {
                let mut r = Ring::new(32 * 1024);
                r.push(&vec![0xee; head + 1]);
                r.consume(head); // the head sits at `head`, one filler byte held
                let fill = Ring::FIRST_ALLOC - 1;
                assert_eq!(r.push(&pattern[..fill]), fill); // full, wrapped unless head = 0
                assert_eq!(r.allocated(), Ring::FIRST_ALLOC);
                let more = &pattern[fill..fill + 5000];
                if past_the_end {
                    assert_eq!(r.write_at(1000, &more[1000..]), 4000);
                    assert_eq!(r.write_at(0, &more[..1000]), 1000);
                    r.commit(5000);
                } else {
                    assert_eq!(r.push(more), 5000);
                }
                assert_eq!(r.allocated(), 16 * 1024);
                let mut out = vec![0u8; r.len()];
                assert_eq!(r.pop(&mut out), 1 + fill + 5000);
                assert_eq!(out[0], 0xee);
                assert!(out[1..] == pattern[..fill + 5000], "head {head}");
                assert!(r.is_idle());
            }
        }
    }

    /// What a ring does, against a model: a `VecDeque` of held bytes plus a map of bytes
    /// written past them.
    #[derive(Clone, Debug)]
    enum Op {
        Push(usize),
        WriteAt(usize, usize),
        Commit(usize),
        Pop(usize),
        Release,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..3000).prop_map(Op::Push),
            2 => (0usize..9000, 1usize..3000).prop_map(|(o, n)| Op::WriteAt(o, n)),
            2 => (0usize..4000).prop_map(Op::Commit),
            4 => (0usize..5000).prop_map(Op::Pop),
            1 => Just(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_model(cap in prop_oneof![Just(7usize), Just(4096), Just(10_000), Just(16 * 1024)],
                           ops in proptest::collection::vec(op(), 1..200)) {
            use std::collections::{BTreeMap, VecDeque};
            let mut r = Ring::new(cap);
            let mut held: VecDeque<u8> = VecDeque::new();
            // Offset past the held bytes -> byte.
            let mut past: BTreeMap<usize, u8> = BTreeMap::new();
            let mut counter = 0u8;
            let mut fresh = |n: usize| -> Vec<u8> {
                (0..n).map(|_| { counter = counter.wrapping_add(1); counter }).collect()
            };
            for op in ops {
                match op {
                    Op::Push(n) => {
                        let data = fresh(n);
                        let k = r.push(&data);
                        prop_assert_eq!(k, n.min(cap - held.len()));
                        // Pushed bytes land on top of anything written past the end.
                        let shifted: BTreeMap<usize, u8> =
                            past.range(k..).map(|(o, b)| (o - k, *b)).collect();
                        past = shifted;
                        held.extend(&data[..k]);
                    }
                    Op::WriteAt(off, n) => {
                        let data = fresh(n);
                        let k = r.write_at(off, &data);
                        let room = cap - held.len();
                        prop_assert_eq!(k, if off >= room { 0 } else { n.min(room - off) });
                        for (i, b) in data[..k].iter().enumerate() {
                            past.insert(off + i, *b);
                        }
                    }
                    Op::Commit(n) => {
                        // Only bytes written contiguously past the end may be committed.
                        let mut k = 0;
                        while k < n && past.contains_key(&k) {
                            k += 1;
                        }
                        r.commit(k);
                        for i in 0..k {
                            held.push_back(past.remove(&i).expect("contiguous"));
                        }
                        past = past.into_iter().map(|(o, b)| (o - k, b)).collect();
                    }
                    Op::Pop(n) => {
                        let mut dst = vec![0u8; n];
                        let k = r.pop(&mut dst);
                        prop_assert_eq!(k, n.min(held.len()));
                        let expect: Vec<u8> = held.drain(..k).collect();
                        prop_assert_eq!(&dst[..k], &expect[..]);
                    }
                    Op::Release => {
                        let released = r.release_if_idle();
                        if released {
                            prop_assert!(held.is_empty() && past.is_empty());
                        }
                    }
                }
                prop_assert_eq!(r.len(), held.len());
                prop_assert!(r.allocated() <= cap);
                prop_assert_eq!(r.is_idle(), held.is_empty() && past.is_empty());
                prop_assert_eq!(r.extent - r.len, past.keys().next_back().map_or(0, |o| o + 1));
                let mut all = vec![0u8; held.len()];
                prop_assert_eq!(r.read_at(0, &mut all), held.len());
                prop_assert!(all.iter().eq(held.iter()));
            }
        }
    }
}
