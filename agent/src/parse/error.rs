//! Parse errors: the line and what is wrong with it, built without allocating
//! so that a target that keeps serving a broken line costs nothing per scrape.

use std::fmt;

/// A malformed line: its 1-based number and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    pub line: usize,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("expected a metric name, found {0}")]
    ExpectedName(Found),
    #[error("unexpected {0} after the metric name")]
    AfterName(Found),
    #[error("expected a label name, found {0}")]
    ExpectedLabelName(Found),
    #[error("expected '=' after a label name, found {0}")]
    ExpectedEquals(Found),
    #[error("expected '\"' to open a label value, found {0}")]
    ExpectedQuote(Found),
    #[error("unterminated label value")]
    UnterminatedLabelValue,
    #[error("expected ',' or '}}' after a label value, found {0}")]
    ExpectedLabelSeparator(Found),
    #[error("missing sample value")]
    MissingValue,
    #[error("invalid value {0}")]
    InvalidValue(Snippet),
    #[error("invalid bucket bound le={0}")]
    InvalidBucketBound(Snippet),
    #[error("invalid timestamp {0}")]
    InvalidTimestamp(Snippet),
    #[error("unexpected text {0} after the sample")]
    TrailingText(Snippet),
    /// `# HELP`, `# TYPE` or `# UNIT` not followed by a metric name.
    #[error("{0} line without a valid metric name")]
    MetadataName(&'static str),
    #[error("unknown metric type {0}")]
    UnknownType(Snippet),
    #[error("content after \"# EOF\"")]
    AfterEof,
}

/// The character where the parser expected something else; `None` is the
/// end of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found(pub Option<char>);

impl Found {
    /// The character starting at byte `pos` of `s` (a char boundary).
    pub(super) fn at(s: &str, pos: usize) -> Self {
        Found(s.get(pos..).and_then(|rest| rest.chars().next()))
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(c) => write!(f, "{c:?}"),
            None => f.write_str("end of line"),
        }
    }
}

/// The offending text, quoted, kept inline (at most [`Snippet::CAPACITY`]
/// bytes, cut at a character boundary and marked `…` when longer).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Snippet {
    buf: [u8; Snippet::CAPACITY],
    len: u8,
    truncated: bool,
}

impl Snippet {
    pub const CAPACITY: usize = 32;

    pub(super) fn new(s: &str) -> Self {
        let mut len = s.len().min(Self::CAPACITY);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0; Self::CAPACITY];
        buf[..len].copy_from_slice(&s.as_bytes()[..len]);
        Snippet {
            buf,
            len: len as u8,
            truncated: len < s.len(),
        }
    }

    fn as_str(&self) -> &str {
        // The buffer holds a prefix of a `&str` cut at a char boundary.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())?;
        if self.truncated {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_quotes_and_truncates_at_a_char_boundary() {
        assert_eq!(Snippet::new("abc").to_string(), "\"abc\"");
        assert_eq!(Snippet::new("a\"b").to_string(), r#""a\"b""#);
        // 31 ASCII bytes then a 2-byte char: the char does not fit.
        let long = format!("{}é tail", "x".repeat(31));
        assert_eq!(
            Snippet::new(&long).to_string(),
            format!("\"{}\"…", "x".repeat(31))
        );
    }

    #[test]
    fn messages_name_line_and_fault() {
        let e = ParseError {
            line: 12,
            kind: ErrorKind::UnterminatedLabelValue,
        };
        assert_eq!(e.to_string(), "line 12: unterminated label value");
        let e = ParseError {
            line: 3,
            kind: ErrorKind::InvalidValue(Snippet::new("abc")),
        };
        assert_eq!(e.to_string(), "line 3: invalid value \"abc\"");
        let e = ErrorKind::ExpectedLabelSeparator(Found(None));
        assert_eq!(
            e.to_string(),
            "expected ',' or '}' after a label value, found end of line"
        );
    }
}
