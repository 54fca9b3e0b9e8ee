//! Sequence number arithmetic modulo 2^32 (RFC 9293 §3.4).

use core::cmp::Ordering;
use core::ops::{Add, Sub};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Seq(pub u32);

impl Seq {
    /// Signed distance `self - other`; meaningful for numbers within 2^31 of each other.
    #[inline]
    pub fn diff(self, other: Seq) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
    #[inline]
    pub fn max(self, o: Seq) -> Seq {
        if self >= o {
            self
        } else {
            o
        }
    }
    #[inline]
    pub fn min(self, o: Seq) -> Seq {
        if self <= o {
            self
        } else {
            o
        }
    }
}

impl PartialOrd for Seq {
    fn partial_cmp(&self, other: &Seq) -> Option<Ordering> {
        Some(self.diff(*other).cmp(&0))
    }
}

impl Add<usize> for Seq {
    type Output = Seq;
    #[inline]
    fn add(self, n: usize) -> Seq {
        Seq(self.0.wrapping_add(n as u32))
    }
}

impl Sub<usize> for Seq {
    type Output = Seq;
    #[inline]
    fn sub(self, n: usize) -> Seq {
        Seq(self.0.wrapping_sub(n as u32))
    }
}

impl Sub<Seq> for Seq {
    type Output = usize;
    /// Distance `self - other`; `other` must not be after `self`.
    #[inline]
    fn sub(self, other: Seq) -> usize {
        let d = self.diff(other);
        debug_assert!(d >= 0, "sequence went backwards: {self:?} - {other:?}");
        d.max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps() {
        let a = Seq(u32::MAX - 10);
        let b = a + 20;
        assert!(b > a);
        assert_eq!(b - a, 20);
        assert_eq!(b.0, 9);
        assert!(a < b && b.max(a) == b && a.min(b) == a);
    }
}
