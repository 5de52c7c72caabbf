//! Zero-copy parser for the Prometheus text format (0.0.4) and OpenMetrics
//! 1.0 text, the two formats vLLM and the endpoint picker serve.
//!
//! [`Parser`] walks a body line by line and yields borrowed [`Line`]s: no
//! allocation per line or sample, names and label values are slices of the
//! body, labels are validated once and iterated lazily. Each line is checked
//! on its own; a malformed one yields a [`ParseError`] with its line number
//! and iteration continues with the next line, so the caller decides what a
//! bad line means (see `extract` for the agent's policy).
//!
//! The body must already be decoded: gzip is the scrape layer's job.
//! Family-level rules (contiguous families, no duplicate series, a `+Inf`
//! bucket per histogram) are not checked.

mod error;
mod labels;
mod lex;

use memchr::memchr;

pub use error::{ErrorKind, Found, ParseError, Snippet};
pub use labels::{Label, LabelIter, Labels, unescape_into, unescaped_eq};
use lex::{is_blank, is_metric_char, metric_name_end, number, skip_blanks, span, token_end};

/// One meaningful line. Blank lines and plain comments are skipped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Line<'a> {
    Sample(Sample<'a>),
    /// `# TYPE name kind`; in OpenMetrics the family name of a counter lacks
    /// the `_total` its samples carry.
    Type {
        name: &'a str,
        kind: MetricType,
    },
    /// `# HELP name text`; `text` is as written (escapes not decoded).
    Help {
        name: &'a str,
        text: &'a str,
    },
    /// `# UNIT name unit` (OpenMetrics).
    Unit {
        name: &'a str,
        unit: &'a str,
    },
    /// `# EOF`, the end of an OpenMetrics body.
    Eof,
}

/// One sample line. Exemplars (`# {…} value` after the value) are skipped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Labels<'a>,
    pub value: f64,
    /// As written: milliseconds in text 0.0.4, seconds in OpenMetrics.
    pub timestamp: Option<f64>,
}

impl Sample<'_> {
    /// Whether this is the `_created` timestamp series of a counter,
    /// histogram or summary, which carries no signal.
    pub fn is_created(&self) -> bool {
        self.name.ends_with("_created")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    /// OpenMetrics `unknown`, text format `untyped`.
    Unknown,
}

impl MetricType {
    fn from_token(token: &str) -> Option<Self> {
        Some(match token {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            "untyped" | "unknown" => MetricType::Unknown,
            _ => return None,
        })
    }
}

/// Iterator over the lines of one body.
#[derive(Debug, Clone)]
pub struct Parser<'a> {
    rest: &'a str,
    line_number: usize,
    line: &'a str,
    after_eof: bool,
    /// The name of the last sample returned (see `name_end`).
    last_name: &'a str,
}

impl<'a> Parser<'a> {
    pub fn new(body: &'a str) -> Self {
        Parser {
            rest: body,
            line_number: 0,
            line: "",
            after_eof: false,
            last_name: "",
        }
    }

    /// 1-based number of the line last returned (0 before the first).
    pub fn line_number(&self) -> usize {
        self.line_number
    }

    /// Text of the line last returned, without its line ending.
    pub fn line_text(&self) -> &'a str {
        self.line
    }
}

impl<'a> Iterator for Parser<'a> {
    type Item = Result<Line<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (line, rest) = match memchr(b'\n', self.rest.as_bytes()) {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, ""),
            };
            self.rest = rest;
            self.line_number += 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            self.line = line;
            let b = line.as_bytes();
            let start = skip_blanks(b, 0);
            if start == b.len() {
                continue;
            }
            let parsed = if self.after_eof {
                self.rest = "";
                Err(ErrorKind::AfterEof)
            } else if b[start] == b'#' {
                match metadata(line, start + 1) {
                    Ok(None) => continue,
                    Ok(Some(line)) => Ok(line),
                    Err(kind) => Err(kind),
                }
            } else {
                sample(line, start, self.last_name).map(|s| {
                    self.last_name = s.name;
                    Line::Sample(s)
                })
            };
            self.after_eof = matches!(parsed, Ok(Line::Eof));
            return Some(parsed.map_err(|kind| ParseError {
                line: self.line_number,
                kind,
            }));
        }
    }
}

/// The sample at `start` of `line`; `last_name` is the previous one's.
fn sample<'a>(line: &'a str, start: usize, last_name: &str) -> Result<Sample<'a>, ErrorKind> {
    let b = line.as_bytes();
    let name_end = name_end(b, start, last_name);
    if name_end == start {
        return Err(ErrorKind::ExpectedName(Found::at(line, start)));
    }
    let name = span(line, start, name_end);
    let mut pos = skip_blanks(b, name_end);
    let mut labels = Labels::default();
    if b.get(pos) == Some(&b'{') {
        let (block, end) = Labels::lex(line, pos + 1, name.ends_with("_bucket"))?;
        labels = block;
        pos = skip_blanks(b, end);
    } else if pos == name_end && pos < b.len() {
        return Err(ErrorKind::AfterName(Found::at(line, pos)));
    }

    let value_end = token_end(b, pos);
    if value_end == pos {
        return Err(ErrorKind::MissingValue);
    }
    let token = span(line, pos, value_end);
    let value = number(token).ok_or_else(|| ErrorKind::InvalidValue(Snippet::new(token)))?;

    let mut timestamp = None;
    pos = skip_blanks(b, value_end);
    if pos < b.len() && b[pos] != b'#' {
        let end = token_end(b, pos);
        let token = span(line, pos, end);
        let ts = number(token).filter(|t| t.is_finite());
        timestamp = Some(ts.ok_or_else(|| ErrorKind::InvalidTimestamp(Snippet::new(token)))?);
        pos = skip_blanks(b, end);
    }
    // Whatever follows a `#` here is an OpenMetrics exemplar.
    if pos < b.len() && b[pos] != b'#' {
        return Err(ErrorKind::TrailingText(Snippet::new(&line[pos..])));
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// End of the metric name at `start`. A family's samples repeat the name of
/// the sample before, `last`, and comparing that is cheaper than scanning.
/// (An empty `last` before a non-name byte gives `start`, as a scan would.)
fn name_end(b: &[u8], start: usize, last: &str) -> usize {
    let end = start + last.len();
    let repeated = b.get(start..end) == Some(last.as_bytes())
        && !b.get(end).is_some_and(|&c| is_metric_char(c));
    if repeated {
        end
    } else {
        metric_name_end(b, start)
    }
}

/// A `#` line from the byte after the hash: `None` for a plain comment.
fn metadata(line: &str, from: usize) -> Result<Option<Line<'_>>, ErrorKind> {
    let b = line.as_bytes();
    let keyword_start = skip_blanks(b, from);
    let keyword_end = token_end(b, keyword_start);
    let after_keyword = skip_blanks(b, keyword_end);
    let what = match &line[keyword_start..keyword_end] {
        "EOF" if after_keyword == b.len() => return Ok(Some(Line::Eof)),
        "HELP" => "# HELP",
        "TYPE" => "# TYPE",
        "UNIT" => "# UNIT",
        _ => return Ok(None),
    };
    let name_end = metric_name_end(b, after_keyword);
    if name_end == after_keyword || b.get(name_end).is_some_and(|&c| !is_blank(c)) {
        return Err(ErrorKind::MetadataName(what));
    }
    let name = &line[after_keyword..name_end];
    let text = &line[skip_blanks(b, name_end)..];
    Ok(Some(match what {
        "# HELP" => Line::Help { name, text },
        "# UNIT" => Line::Unit {
            name,
            unit: text.trim_end_matches([' ', '\t']),
        },
        _ => {
            let token = text.trim_end_matches([' ', '\t']);
            let kind = MetricType::from_token(token)
                .ok_or_else(|| ErrorKind::UnknownType(Snippet::new(token)))?;
            Line::Type { name, kind }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(body: &str) -> Vec<Result<Line<'_>, ParseError>> {
        Parser::new(body).collect()
    }

    fn one_sample(line: &str) -> Sample<'_> {
        match lines(line).as_slice() {
            [Ok(Line::Sample(s))] => *s,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn one_error(body: &str) -> ParseError {
        let errors: Vec<_> = lines(body).into_iter().filter_map(Result::err).collect();
        match errors.as_slice() {
            [e] => *e,
            other => panic!("{body:?}: {other:?}"),
        }
    }

    #[test]
    fn vllm_names_with_colons() {
        let s = one_sample(r#"vllm:num_requests_running{engine="0",model_name="m"} 129.0"#);
        assert_eq!(s.name, "vllm:num_requests_running");
        assert_eq!(s.value, 129.0);
        assert_eq!(s.timestamp, None);
        assert!(s.labels.get("engine").unwrap().value_eq("0"));
    }

    #[test]
    fn values_and_timestamps() {
        let s = one_sample("a 1.5e+06 1700000000000");
        assert_eq!((s.value, s.timestamp), (1.5e6, Some(1.7e12)));
        assert_eq!(one_sample("a{} -Inf").value, f64::NEG_INFINITY);
        assert!(one_sample("a NaN").value.is_nan());
        assert_eq!(one_sample("a 2.5e-300").value, 2.5e-300);
        // OpenMetrics timestamps are seconds with a fraction.
        assert_eq!(
            one_sample("a_total 17.0 1520879607.789").timestamp,
            Some(1520879607.789)
        );
        // Blanks and tabs between tokens, trailing blanks, CRLF.
        let s = one_sample("a {x=\"1\"}\t 3   4 \t\r");
        assert_eq!((s.value, s.timestamp), (3.0, Some(4.0)));
        // No blank needed after the closing brace.
        assert_eq!(one_sample("a{x=\"1\"}3").value, 3.0);
    }

    #[test]
    fn exemplars_are_skipped() {
        let s = one_sample(r#"foo_bucket{le="0.1"} 8 # {trace_id="KOO5S4vxi0o"} 0.054"#);
        assert_eq!((s.value, s.timestamp), (8.0, None));
        let s =
            one_sample(r#"foo_bucket{le="10"} 17 1520879607.789 # {id="x"} 9.8 1520879607.789"#);
        assert_eq!((s.value, s.timestamp), (17.0, Some(1520879607.789)));
        assert_eq!(one_sample("foo_total 3 # {} 1").value, 3.0);
    }

    #[test]
    fn metadata_lines() {
        let body = "# HELP vllm:prompt_tokens Number of prefill tokens.\n\
                    # TYPE vllm:prompt_tokens counter\n\
                    # UNIT foo_seconds seconds\n\
                    # a plain comment\n\
                    #\n\
                    # HELP empty\n\
                    vllm:prompt_tokens_total{model_name=\"m\"} 3\n\
                    # EOF\n";
        let got: Vec<_> = lines(body).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got[..3],
            [
                Line::Help {
                    name: "vllm:prompt_tokens",
                    text: "Number of prefill tokens."
                },
                Line::Type {
                    name: "vllm:prompt_tokens",
                    kind: MetricType::Counter
                },
                Line::Unit {
                    name: "foo_seconds",
                    unit: "seconds"
                },
            ]
        );
        assert_eq!(
            got[3],
            Line::Help {
                name: "empty",
                text: ""
            }
        );
        assert!(matches!(got[4], Line::Sample(s) if s.name == "vllm:prompt_tokens_total"));
        assert_eq!(got[5], Line::Eof);
        assert_eq!(got.len(), 6);
        assert!(matches!(
            lines("# TYPE x untyped")[0],
            Ok(Line::Type {
                kind: MetricType::Unknown,
                ..
            })
        ));
    }

    #[test]
    fn created_series_are_recognisable() {
        assert!(one_sample(r#"vllm:prompt_tokens_created{model_name="m"} 1.79e+09"#).is_created());
        assert!(!one_sample(r#"vllm:prompt_tokens_total{model_name="m"} 3"#).is_created());
    }

    #[test]
    fn blank_lines_and_missing_final_newline() {
        let mut p = Parser::new("\n  \na 1\n\n\tb 2");
        assert!(matches!(p.next(), Some(Ok(Line::Sample(s))) if s.name == "a"));
        assert_eq!((p.line_number(), p.line_text()), (3, "a 1"));
        assert!(matches!(p.next(), Some(Ok(Line::Sample(s))) if s.name == "b"));
        assert_eq!(p.line_number(), 5);
        assert!(p.next().is_none());
        assert!(Parser::new("").next().is_none());
    }

    #[test]
    fn histograms_in_either_order() {
        let v1 = "h_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 3.5\n";
        let v0 = "h_sum 3.5\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n";
        let names = |body| {
            let mut n: Vec<_> = lines(body)
                .into_iter()
                .map(|l| match l {
                    Ok(Line::Sample(s)) => (s.name, s.value.to_bits()),
                    other => panic!("{other:?}"),
                })
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(v1), names(v0));
    }

    #[test]
    fn errors_carry_line_and_fault() {
        use ErrorKind::*;
        let e = one_error("ok 1\nvllm:num_requests_running{model_name=\"m\" 3\n");
        assert_eq!(e.line, 2);
        assert_eq!(e.kind, ExpectedLabelSeparator(Found(Some('3'))));
        assert_eq!(
            e.to_string(),
            "line 2: expected ',' or '}' after a label value, found '3'"
        );
        assert_eq!(
            one_error("a abc").to_string(),
            "line 1: invalid value \"abc\""
        );
        assert_eq!(
            one_error("a{b=\"c").to_string(),
            "line 1: unterminated label value"
        );
        assert_eq!(
            one_error("<!DOCTYPE html>").kind,
            ExpectedName(Found(Some('<')))
        );
        assert_eq!(one_error("a-b 1").kind, AfterName(Found(Some('-'))));
        assert_eq!(one_error("a").kind, MissingValue);
        assert_eq!(one_error("a{x=\"1\"}").kind, MissingValue);
        assert_eq!(
            one_error("a 1 xyz").kind,
            InvalidTimestamp(Snippet::new("xyz"))
        );
        assert_eq!(
            one_error("a 1 NaN").kind,
            InvalidTimestamp(Snippet::new("NaN"))
        );
        assert_eq!(one_error("a 1 2 3").kind, TrailingText(Snippet::new("3")));
        assert_eq!(
            one_error("# TYPE x flavour").kind,
            UnknownType(Snippet::new("flavour"))
        );
        assert_eq!(one_error("# TYPE").kind, MetadataName("# TYPE"));
        assert_eq!(one_error("# HELP 1x y").kind, MetadataName("# HELP"));
        assert_eq!(
            one_error("h_bucket{le=\"Infinite\"} 1").kind,
            InvalidBucketBound(Snippet::new("Infinite"))
        );
    }

    #[test]
    fn a_bad_line_does_not_stop_the_rest() {
        let got = lines("a 1\nb{ 2\nc 3\n");
        assert!(matches!(got[0], Ok(Line::Sample(s)) if s.name == "a"));
        assert_eq!(got[1].unwrap_err().line, 2);
        assert!(matches!(got[2], Ok(Line::Sample(s)) if s.name == "c"));
    }

    #[test]
    fn nothing_but_blank_lines_may_follow_eof() {
        assert!(lines("a 1\n# EOF\n\n").iter().all(Result::is_ok));
        let got = lines("a 1\n# EOF\nb 2\nc 3\n");
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            Err(ParseError {
                line: 3,
                kind: ErrorKind::AfterEof
            })
        );
        // `# EOF` followed by text is an ordinary comment.
        assert_eq!(lines("# EOF or not\na 1").len(), 1);
    }

    #[test]
    fn long_info_lines() {
        let labels: Vec<String> = (0..40)
            .map(|i| format!("label_{i}=\"value number {i}\""))
            .collect();
        let line = format!("vllm:cache_config_info{{{}}} 1.0", labels.join(","));
        assert!(line.len() > 560);
        let s = one_sample(&line);
        assert_eq!(s.labels.iter().count(), 40);
        assert!(
            s.labels
                .get("label_39")
                .unwrap()
                .value_eq("value number 39")
        );
    }
}
