//! Out-of-order segment bookkeeping for receive-side SACK (RFC 2018) and reassembly.
//! The bytes themselves live in the receive ring; this tracks which ranges past `rcv_nxt` are held.

use super::seq::Seq;

/// A bounded, sorted, non-overlapping set of received ranges past `rcv_nxt`.
#[derive(Debug, Default)]
pub struct Assembler {
    /// (start, end, recency); end exclusive.
    ranges: Vec<(Seq, Seq, u32)>,
    clock: u32,
}

pub const MAX_RANGES: usize = 16;

impl Assembler {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Records `[start, end)`. Returns false when it would need more than `MAX_RANGES` ranges
    /// (the caller drops the segment and counts it).
    pub fn add(&mut self, start: Seq, end: Seq) -> bool {
        if start >= end {
            return true;
        }
        self.clock = self.clock.wrapping_add(1);
        let mut s = start;
        let mut e = end;
        // Merge every range that overlaps or touches [s, e).
        let mut i = 0;
        let mut insert_at = self.ranges.len();
        let mut merged = false;
        while i < self.ranges.len() {
            let (rs, re, _) = self.ranges[i];
            if re < s {
                i += 1;
                continue;
            }
            if rs > e {
                insert_at = i;
                break;
            }
            s = s.min(rs);
            e = e.max(re);
            self.ranges.remove(i);
            insert_at = i;
            merged = true;
        }
        if !merged && self.ranges.len() >= MAX_RANGES {
            return false;
        }
        let insert_at = insert_at.min(self.ranges.len());
        self.ranges.insert(insert_at, (s, e, self.clock));
        true
    }

    /// If the first held range starts at or before `rcv_nxt`, removes it and returns its end.
    pub fn pop_contiguous(&mut self, rcv_nxt: Seq) -> Option<Seq> {
        match self.ranges.first() {
            Some(&(s, e, _)) if s <= rcv_nxt => {
                self.ranges.remove(0);
                Some(e.max(rcv_nxt))
            }
            _ => None,
        }
    }

    /// Ranges for SACK blocks: the most recently changed first (RFC 2018 §4).
    pub fn sack_blocks(&self, out: &mut crate::wire::tcp::SackBlocks, max: usize) {
        let mut order: [(u32, usize); MAX_RANGES] = [(0, 0); MAX_RANGES];
        for (i, r) in self.ranges.iter().enumerate() {
            order[i] = (r.2, i);
        }
        let n = self.ranges.len();
        order[..n].sort_unstable_by_key(|o| core::cmp::Reverse(o.0));
        for &(_, i) in order[..n].iter().take(max) {
            let (s, e, _) = self.ranges[i];
            out.push(s.0, e.0);
        }
    }

    /// How many disjoint ranges are held.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::SackBlocks;

    #[test]
    fn merges_and_pops() {
        let mut a = Assembler::default();
        assert!(a.add(Seq(20), Seq(30)));
        assert!(a.add(Seq(40), Seq(50)));
        assert!(a.add(Seq(30), Seq(40)));
        assert_eq!(a.len(), 1);
        assert_eq!(a.pop_contiguous(Seq(10)), None);
        assert_eq!(a.pop_contiguous(Seq(20)), Some(Seq(50)));
        assert!(a.is_empty());
    }

    #[test]
    fn bounded_and_recent_first() {
        let mut a = Assembler::default();
        for i in 0..MAX_RANGES as u32 {
            assert!(a.add(Seq(100 + i * 10), Seq(105 + i * 10)));
        }
        assert!(
            !a.add(Seq(1000), Seq(1001)),
            "a 17th disjoint range is refused"
        );
        assert!(
            a.add(Seq(105), Seq(107)),
            "growing an existing range is fine"
        );
        let mut s = SackBlocks::default();
        a.sack_blocks(&mut s, 3);
        assert_eq!(s.as_slice()[0], (100, 107));
        assert_eq!(s.len(), 3);
    }
}
