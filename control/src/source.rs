//! A configuration text with its name, and byte offset → line/column mapping.

use std::ops::Range;
use std::sync::Arc;

/// Byte range into a [`Source`]'s text.
pub type Span = Range<usize>;

/// One configuration text (a file, or a PUT body) as it was read.
#[derive(Debug, Clone)]
pub struct Source {
    /// What error lines print before `:line:col` (a path, or `PUT/tables`).
    pub name: String,
    pub text: Arc<str>,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        let text: Arc<str> = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// 1-based line of a byte offset (cheaper than [`Self::line_col`]).
    pub fn line(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset.min(self.text.len())) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// 1-based line and column (in characters) of a byte offset; offsets past
    /// the end clamp to the end.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        // The offset may fall inside a multi-byte char only if a caller made it up;
        // count the chars of the longest valid prefix.
        let mut end = offset;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let col = self.text[start..end].chars().count() + 1;
        (line + 1, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_and_in_chars() {
        let s = Source::new("f", "ab\nü=1\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(1), (1, 2));
        assert_eq!(s.line_col(3), (2, 1));
        // 'ü' is two bytes: '=' is at byte 5, column 2.
        assert_eq!(s.line_col(5), (2, 2));
        assert_eq!(s.line_col(100), (3, 1));
    }
}
