//! Label blocks: validated once when their line is parsed, then iterated
//! lazily from the borrowed text. Values stay escaped until a caller asks.

use std::borrow::Cow;

use memchr::memchr;

use super::error::{ErrorKind, Found, Snippet};
use super::lex::{find_either, is_number, label_name_end, skip_blanks, span};

/// The labels of one sample, borrowed from the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Labels<'a> {
    /// The text after `{` up to and including `}`; empty for a sample
    /// without labels.
    block: &'a str,
}

impl<'a> Labels<'a> {
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter(Lexer {
            s: self.block,
            pos: 0,
        })
    }

    /// The first label called `name`.
    pub fn get(&self, name: &str) -> Option<Label<'a>> {
        self.iter().find(|l| l.name == name)
    }

    /// Validates the block of `line` that starts at byte `start` (just after
    /// `{`) and returns it with the offset just after its `}`. A `bucket`
    /// sample's `le` must be a number.
    pub(super) fn lex(
        line: &'a str,
        start: usize,
        bucket: bool,
    ) -> Result<(Self, usize), ErrorKind> {
        let mut lexer = Lexer {
            s: line,
            pos: start,
        };
        while let Some(label) = lexer.next_label()? {
            if bucket && label.name == "le" && !is_number(label.raw_value) {
                return Err(ErrorKind::InvalidBucketBound(Snippet::new(label.raw_value)));
            }
        }
        let labels = Labels {
            block: &line[start..lexer.pos],
        };
        Ok((labels, lexer.pos))
    }
}

impl<'a> IntoIterator for Labels<'a> {
    type Item = Label<'a>;
    type IntoIter = LabelIter<'a>;

    fn into_iter(self) -> LabelIter<'a> {
        self.iter()
    }
}

/// Iterator over a validated block; allocation-free.
#[derive(Debug, Clone)]
pub struct LabelIter<'a>(Lexer<'a>);

impl<'a> Iterator for LabelIter<'a> {
    type Item = Label<'a>;

    #[inline]
    fn next(&mut self) -> Option<Label<'a>> {
        self.0.next_accepted()
    }
}

/// One label; `raw_value` is the text between the quotes, still escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label<'a> {
    pub name: &'a str,
    pub raw_value: &'a str,
}

impl<'a> Label<'a> {
    /// Whether the unescaped value equals `s`, without allocating.
    pub fn value_eq(&self, s: &str) -> bool {
        unescaped_eq(self.raw_value, s)
    }

    /// Appends the unescaped value to `out`.
    pub fn unescape_into(&self, out: &mut String) {
        unescape_into(self.raw_value, out);
    }

    /// The unescaped value; borrowed unless the value holds an escape.
    pub fn value(&self) -> Cow<'a, str> {
        if memchr(b'\\', self.raw_value.as_bytes()).is_none() {
            Cow::Borrowed(self.raw_value)
        } else {
            let mut out = String::with_capacity(self.raw_value.len());
            self.unescape_into(&mut out);
            Cow::Owned(out)
        }
    }
}

/// Whether the escaped label value `raw` unescapes to `s`.
pub fn unescaped_eq(raw: &str, s: &str) -> bool {
    let mut rest = s;
    for piece in Unescaped(raw) {
        match rest.strip_prefix(piece) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Appends the unescaped form of the label value `raw` to `out`.
pub fn unescape_into(raw: &str, out: &mut String) {
    for piece in Unescaped(raw) {
        out.push_str(piece);
    }
}

/// Splits an escaped value into unescaped pieces: runs of plain text and the
/// characters that `\\`, `\"` and `\n` stand for. A backslash before any
/// other character stays as written, as OpenMetrics specifies.
struct Unescaped<'a>(&'a str);

impl<'a> Iterator for Unescaped<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.0;
        if s.is_empty() {
            return None;
        }
        let (piece, consumed) = match memchr(b'\\', s.as_bytes()) {
            None => (s, s.len()),
            Some(0) => match s.as_bytes().get(1) {
                Some(b'\\') => ("\\", 2),
                Some(b'"') => ("\"", 2),
                Some(b'n') => ("\n", 2),
                _ => ("\\", 1),
            },
            Some(i) => (&s[..i], i),
        };
        self.0 = &s[consumed..];
        Some(piece)
    }
}

/// Scans `name="value"` pairs up to the closing brace.
#[derive(Debug, Clone)]
struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// The next label, or `None` once past the closing brace.
    #[inline]
    fn next_label(&mut self) -> Result<Option<Label<'a>>, ErrorKind> {
        let b = self.s.as_bytes();
        let start = skip_blanks(b, self.pos);
        if b.get(start) == Some(&b'}') {
            self.pos = start + 1;
            return Ok(None);
        }
        let name_end = label_name_end(b, start);
        if name_end == start {
            return Err(ErrorKind::ExpectedLabelName(Found::at(self.s, start)));
        }
        // Most labels are written `name="value"`, with no blanks to skip.
        let open = match b.get(name_end..name_end + 2) {
            Some(b"=\"") => name_end + 1,
            _ => self.opening_quote(name_end)?,
        };
        let close = closing_quote(b, open + 1).ok_or(ErrorKind::UnterminatedLabelValue)?;
        let label = Label {
            name: span(self.s, start, name_end),
            raw_value: span(self.s, open + 1, close),
        };
        let next = skip_blanks(b, close + 1);
        self.pos = match b.get(next) {
            Some(b',') => next + 1,
            // Left for the next call, which ends the block.
            Some(b'}') => next,
            _ => return Err(ErrorKind::ExpectedLabelSeparator(Found::at(self.s, next))),
        };
        Ok(Some(label))
    }

    /// Offset of the quote opening the value of a name that ends at
    /// `name_end`, past blanks around its `=`.
    fn opening_quote(&self, name_end: usize) -> Result<usize, ErrorKind> {
        let b = self.s.as_bytes();
        let eq = skip_blanks(b, name_end);
        if b.get(eq) != Some(&b'=') {
            return Err(ErrorKind::ExpectedEquals(Found::at(self.s, eq)));
        }
        let open = skip_blanks(b, eq + 1);
        if b.get(open) != Some(&b'"') {
            return Err(ErrorKind::ExpectedQuote(Found::at(self.s, open)));
        }
        Ok(open)
    }

    /// The next label of a block that `next_label` accepted, which has
    /// nothing to check any more: a name runs to its `=` (less trailing
    /// blanks), a value to its closing quote. This is the loop every
    /// reader of labels runs, so it skips the character classes.
    #[inline]
    fn next_accepted(&mut self) -> Option<Label<'a>> {
        let b = self.s.as_bytes();
        let start = skip_blanks(b, self.pos);
        if *b.get(start)? == b'}' {
            return None;
        }
        let eq = start + find_either(&b[start..], b'=', b'=')?;
        let open = skip_blanks(b, eq + 1);
        let close = closing_quote(b, open + 1)?;
        let next = skip_blanks(b, close + 1);
        self.pos = next + usize::from(b.get(next) == Some(&b','));
        Some(Label {
            // Only blanks can stand between a name and its `=`.
            name: span(self.s, start, eq).trim_ascii_end(),
            raw_value: span(self.s, open + 1, close),
        })
    }
}

/// Offset of the quote closing a value that starts at `from`, skipping
/// escaped characters.
#[inline]
fn closing_quote(b: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + find_either(b.get(from..)?, b'"', b'\\')?;
        if b[at] == b'"' {
            return Some(at);
        }
        from = at + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(block: &str) -> Result<Vec<(String, String)>, ErrorKind> {
        let (labels, _) = Labels::lex(block, 0, false)?;
        Ok(labels
            .iter()
            .map(|l| (l.name.to_owned(), l.value().into_owned()))
            .collect())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn separators_blanks_and_trailing_comma() {
        let want = pairs(&[("a", "1"), ("b", "2")]);
        assert_eq!(lex(r#"a="1",b="2"}"#).unwrap(), want);
        assert_eq!(lex(r#"a="1", b="2"}"#).unwrap(), want);
        assert_eq!(lex(r#" a = "1" ,	b="2" , }"#).unwrap(), want);
        assert_eq!(lex("}").unwrap(), pairs(&[]));
    }

    #[test]
    fn label_names_may_start_with_underscore() {
        assert_eq!(
            lex(r#"__name__="x",_id="7"}"#).unwrap(),
            pairs(&[("__name__", "x"), ("_id", "7")])
        );
    }

    #[test]
    fn escapes_are_decoded_on_demand() {
        let (labels, _) =
            Labels::lex(r#"p="C:\\dir",q="say \"hi\"",n="a\nb",u="\d"}"#, 0, false).unwrap();
        let got: Vec<_> = labels.iter().map(|l| l.value().into_owned()).collect();
        assert_eq!(got, ["C:\\dir", "say \"hi\"", "a\nb", "\\d"]);
        let p = labels.get("p").unwrap();
        assert_eq!(p.raw_value, r"C:\\dir");
        assert!(p.value_eq("C:\\dir"));
        assert!(!p.value_eq("C:\\\\dir"));
        assert!(!p.value_eq("C:\\di"));
        assert!(matches!(labels.get("q").unwrap().value(), Cow::Owned(_)));
        let mut out = String::from(">");
        labels.get("n").unwrap().unescape_into(&mut out);
        assert_eq!(out, ">a\nb");
    }

    #[test]
    fn plain_values_are_borrowed() {
        let (labels, _) =
            Labels::lex(r#"model_name="/models/llama",x="a,b=c"}"#, 0, false).unwrap();
        let model = labels.get("model_name").unwrap();
        assert!(matches!(model.value(), Cow::Borrowed("/models/llama")));
        assert!(model.value_eq("/models/llama"));
        assert!(!model.value_eq("/models/llam"));
        // Commas and equals signs inside a value are part of it.
        assert!(labels.get("x").unwrap().value_eq("a,b=c"));
        assert_eq!(labels.get("missing"), None);
    }

    #[test]
    fn malformed_blocks_name_the_fault() {
        use ErrorKind::*;
        assert_eq!(
            lex(r#"a="1" 3"#),
            Err(ExpectedLabelSeparator(Found(Some('3'))))
        );
        assert_eq!(lex(r#"a="1"#), Err(UnterminatedLabelValue));
        assert_eq!(lex(r#"a="1\""#), Err(UnterminatedLabelValue));
        assert_eq!(lex(r#"a="1\"#), Err(UnterminatedLabelValue));
        assert_eq!(lex(r#"a=1}"#), Err(ExpectedQuote(Found(Some('1')))));
        assert_eq!(lex(r#"a:b="1"}"#), Err(ExpectedEquals(Found(Some(':')))));
        assert_eq!(lex(r#"9a="1"}"#), Err(ExpectedLabelName(Found(Some('9')))));
        assert_eq!(lex(r#",}"#), Err(ExpectedLabelName(Found(Some(',')))));
        assert_eq!(lex(r#"a="1""#), Err(ExpectedLabelSeparator(Found(None))));
        assert_eq!(lex(""), Err(ExpectedLabelName(Found(None))));
    }

    #[test]
    fn bucket_bounds_must_be_numbers() {
        assert!(Labels::lex(r#"le="+Inf"}"#, 0, true).is_ok());
        assert!(Labels::lex(r#"le="1e-05"}"#, 0, true).is_ok());
        assert_eq!(
            Labels::lex(r#"x="1",le="fast"}"#, 0, true),
            Err(ErrorKind::InvalidBucketBound(Snippet::new("fast")))
        );
        // Only `_bucket` samples carry bounds.
        assert!(Labels::lex(r#"le="fast"}"#, 0, false).is_ok());
    }
}
