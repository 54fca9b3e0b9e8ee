//! Configuration errors: where, which key, what, and a hint.

use std::fmt;

use crate::source::{Source, Span};

/// One configuration error, printed as `file:line:col: key: message (hint: ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Dotted path of the offending key, e.g. `service[0].endpoints[1].via`.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn at(
        src: &Source,
        span: &Span,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, col) = src.line_col(span.start);
        Self {
            file: src.name.clone(),
            line,
            col,
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// An error about a file as a whole (unreadable, not found).
    pub fn whole_file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: 1,
            col: 1,
            key: String::new(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// Writes `s` with control characters escaped: a diagnostic is one line whatever the text
/// it quotes (messages quote user values with `{:?}`; this catches any that do not).
fn one_line(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.key.is_empty() {
            one_line(f, &self.key)?;
            f.write_str(": ")?;
        }
        one_line(f, &self.message)?;
        if let Some(h) = &self.hint {
            f.write_str(" (hint: ")?;
            one_line(f, h)?;
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Every error of one check, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.0.extend(other);
    }
    /// Sort by file, line and column, keeping equal positions in insertion order.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    }
}

impl fmt::Display for Diagnostics {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// "did you mean" over a list of known words: the closest one that is close enough.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for k in known {
        let score = strsim::jaro_winkler(word, k);
        if score >= 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, k));
        }
    }
    best.map(|(_, k)| format!("did you mean \"{k}\"?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_picks_the_closest() {
        let known = ["address", "via", "labels", "weight"];
        assert_eq!(
            did_you_mean("adress", known).as_deref(),
            Some("did you mean \"address\"?")
        );
        assert_eq!(
            did_you_mean("wieght", known).as_deref(),
            Some("did you mean \"weight\"?")
        );
        assert_eq!(did_you_mean("zzz", known), None);
    }

    #[test]
    fn display_is_one_line() {
        let src = Source::new("t.toml", "a = 1\nbb = 2\n");
        let d = Diagnostic::at(&src, &(6..8), "bb", "unknown key").hint("did you mean \"b\"?");
        assert_eq!(
            d.to_string(),
            "t.toml:2:1: bb: unknown key (hint: did you mean \"b\"?)"
        );
    }
}
