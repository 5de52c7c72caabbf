//! `--signal NAME=EXPR`: a named value the agent computes from its target's
//! series and forwards in `Sample.signals`, for workloads other than vLLM.
//!
//! ```text
//! NAME     = [a-z_][a-z0-9_]*                 at most 63 bytes
//! EXPR     = AGG "(" METRIC [ "{" MATCHERS "}" ] ")"
//! AGG      = "sum" | "max" | "min" | "avg"
//! METRIC   = [a-zA-Z_:][a-zA-Z0-9_:]*         a sample name, matched exactly
//! MATCHERS = MATCHER ( "," MATCHER )*         at most 8
//! MATCHER  = LABEL ( "=" | "!=" ) '"' VALUE '"'
//! ```
//!
//! `VALUE` may hold `\"` and `\\`. Blanks are allowed between tokens of
//! `EXPR`. A missing label reads as `""`, as in Prometheus.

use std::str::FromStr;

use wva_proto::v1::Role;

pub use wva_proto::{MAX_SIGNAL_NAME_BYTES as MAX_NAME_BYTES, MAX_SIGNALS};

/// Matchers of one signal: each costs a label lookup per matching sample.
pub const MAX_MATCHERS: usize = 8;

/// One parsed `--signal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalSpec {
    pub name: String,
    pub agg: Agg,
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Sum,
    Max,
    Min,
    Avg,
}

/// `label="value"` (`equal`) or `label!="value"`; `value` is unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    pub equal: bool,
    pub value: String,
}

/// A `--signal` value that is not a signal, or a set of them that is not
/// allowed together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid --signal {spec:?}: {reason}")]
    Invalid { spec: String, reason: String },
    #[error("{count} --signal flags, at most {MAX_SIGNALS} allowed")]
    TooMany { count: usize },
    #[error("--signal name {0:?} is given twice")]
    Duplicate(String),
    #[error("--role generic forwards only --signal values: give at least one")]
    NothingToForward,
    #[error("--signals-target without --signal: nothing would be read there")]
    NothingToReadThere,
    #[error(
        "--signals-target is for the vllm and epp roles: a generic agent reads its signals from --target"
    )]
    GenericWithSignalsTarget,
}

/// Checks the set for an agent of `role`, whose signals come from a second
/// target when `separate`: a generic agent with no signal would stream
/// empty samples, and a second target needs signals to read.
pub fn check_for_role(role: Role, specs: &[SignalSpec], separate: bool) -> Result<(), SpecError> {
    match (role, separate) {
        (Role::Generic, true) => return Err(SpecError::GenericWithSignalsTarget),
        (Role::Generic, false) if specs.is_empty() => return Err(SpecError::NothingToForward),
        (_, true) if specs.is_empty() => return Err(SpecError::NothingToReadThere),
        _ => {}
    }
    check_all(specs)
}

/// Checks what single flags cannot: the count and distinct names.
pub fn check_all(specs: &[SignalSpec]) -> Result<(), SpecError> {
    if specs.len() > MAX_SIGNALS {
        return Err(SpecError::TooMany { count: specs.len() });
    }
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(SpecError::Duplicate(spec.name.clone()));
        }
    }
    Ok(())
}

impl FromStr for SignalSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        parse(spec).map_err(|reason| SpecError::Invalid {
            spec: spec.to_owned(),
            reason,
        })
    }
}

fn parse(spec: &str) -> Result<SignalSpec, String> {
    let (name, expr) = spec
        .split_once('=')
        .ok_or("expected NAME=EXPR, e.g. queue_depth=sum(redis_key_size)")?;
    check_name(name)?;
    let mut c = Cursor { s: expr, pos: 0 };
    let agg = match c.word(|b, _| b.is_ascii_alphabetic()) {
        "sum" => Agg::Sum,
        "max" => Agg::Max,
        "min" => Agg::Min,
        "avg" => Agg::Avg,
        "" => return Err(c.unexpected("an aggregation (sum, max, min or avg)")),
        other => {
            return Err(format!(
                "unknown aggregation {other:?}, expected sum, max, min or avg"
            ));
        }
    };
    c.expect('(')?;
    let metric = c.word(|b, i| {
        b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
    });
    if metric.is_empty() {
        return Err(c.unexpected("a metric name"));
    }
    let metric = metric.to_owned();
    let mut matchers = Vec::new();
    if c.eat('{') {
        loop {
            if matchers.len() == MAX_MATCHERS {
                return Err(format!("more than {MAX_MATCHERS} matchers"));
            }
            matchers.push(c.matcher()?);
            if !c.eat(',') {
                break;
            }
        }
        c.expect('}')?;
    }
    c.expect(')')?;
    c.skip_blanks();
    if c.pos < c.s.len() {
        return Err(c.unexpected("the end after ')'"));
    }
    Ok(SignalSpec {
        name: name.to_owned(),
        agg,
        metric,
        matchers,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name before '=' is empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name is {} bytes, at most {MAX_NAME_BYTES} allowed",
            name.len()
        ));
    }
    if !wva_proto::is_signal_name(name) {
        return Err(format!(
            "name {name:?} must match [a-z_][a-z0-9_]* (lower case)"
        ));
    }
    Ok(())
}

/// Position in `EXPR`; error messages count bytes from its start.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip_blanks(&mut self) {
        while self.s[self.pos..].starts_with([' ', '\t']) {
            self.pos += 1;
        }
    }

    /// The longest run of bytes `ok(byte, index in run)` accepts, after blanks.
    fn word(&mut self, ok: impl Fn(u8, usize) -> bool) -> &'a str {
        self.skip_blanks();
        let start = self.pos;
        let len = self.s.as_bytes()[start..]
            .iter()
            .enumerate()
            .take_while(|&(i, &b)| ok(b, i))
            .count();
        self.pos += len;
        &self.s[start..self.pos]
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_blanks();
        let ate = self.s[self.pos..].starts_with(c);
        self.pos += usize::from(ate);
        ate
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{c}'")))
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        match self.s[self.pos..].chars().next() {
            Some(found) => format!(
                "expected {wanted} at byte {} of the expression, found {found:?}",
                self.pos
            ),
            None => format!("expected {wanted}, the expression ends"),
        }
    }

    fn matcher(&mut self) -> Result<Matcher, String> {
        let label =
            self.word(|b, i| b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit()));
        if label.is_empty() {
            return Err(self.unexpected("a label name"));
        }
        let equal = if self.eat('=') {
            true
        } else if self.s[self.pos..].starts_with("!=") {
            self.pos += 2;
            false
        } else {
            return Err(self.unexpected(&format!("'=' or '!=' after label {label:?}")));
        };
        self.expect('"')?;
        let unclosed = || format!("the value of label {label:?} has no closing '\"'");
        let mut value = String::new();
        let mut chars = self.s[self.pos..].char_indices();
        loop {
            match chars.next() {
                Some((i, '"')) => {
                    self.pos += i + 1;
                    break;
                }
                Some((_, '\\')) => match chars.next() {
                    Some((_, c @ ('"' | '\\'))) => value.push(c),
                    Some((_, c)) => {
                        return Err(format!(
                            "unknown escape \\{c} in the value of label {label:?} (only \\\" and \\\\)"
                        ));
                    }
                    None => return Err(unclosed()),
                },
                Some((_, c)) => value.push(c),
                None => return Err(unclosed()),
            }
        }
        Ok(Matcher {
            label: label.to_owned(),
            equal,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> SignalSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn reason(s: &str) -> String {
        match s.parse::<SignalSpec>() {
            Err(SpecError::Invalid { spec, reason }) => {
                assert_eq!(spec, s, "the error names the flag value");
                reason
            }
            other => panic!("{s}: {other:?}"),
        }
    }

    fn matcher(label: &str, equal: bool, value: &str) -> Matcher {
        Matcher {
            label: label.into(),
            equal,
            value: value.into(),
        }
    }

    #[test]
    fn good_forms() {
        assert_eq!(
            spec("queue_depth=sum(redis_key_size)"),
            SignalSpec {
                name: "queue_depth".into(),
                agg: Agg::Sum,
                metric: "redis_key_size".into(),
                matchers: vec![],
            }
        );
        let s = spec(r#"q=max(redis_key_size{db="db0",key!="jobs"})"#);
        assert_eq!(s.agg, Agg::Max);
        assert_eq!(
            s.matchers,
            [matcher("db", true, "db0"), matcher("key", false, "jobs")]
        );
        let s = spec(r#"_a1=min( vllm:num_requests_running { engine = "1" } ) "#);
        assert_eq!(
            (s.agg, s.metric.as_str()),
            (Agg::Min, "vllm:num_requests_running")
        );
        assert_eq!(s.matchers, [matcher("engine", true, "1")]);
        let s = spec(r#"x=avg(m{k="a\"b\\c,}",e=""})"#);
        assert_eq!(s.agg, Agg::Avg);
        assert_eq!(
            s.matchers,
            [matcher("k", true, r#"a"b\c,}"#), matcher("e", true, "")]
        );
        let longest = format!("{}=sum(m)", "a".repeat(MAX_NAME_BYTES));
        assert_eq!(spec(&longest).name.len(), MAX_NAME_BYTES);
        let eight = (0..MAX_MATCHERS)
            .map(|i| format!("l{i}=\"v\""))
            .collect::<Vec<_>>();
        assert_eq!(
            spec(&format!("n=sum(m{{{}}})", eight.join(",")))
                .matchers
                .len(),
            8
        );
    }

    #[test]
    fn each_error_says_what_is_wrong() {
        let cases = [
            ("sum(m)", "expected NAME=EXPR"),
            ("=sum(m)", "the name before '=' is empty"),
            ("Queue=sum(m)", "must match [a-z_][a-z0-9_]*"),
            ("1q=sum(m)", "must match"),
            ("q-1=sum(m)", "must match"),
            (
                "q=",
                "expected an aggregation (sum, max, min or avg), the expression ends",
            ),
            ("q=count(m)", "unknown aggregation \"count\""),
            (
                "q=sum m",
                "expected '(' at byte 4 of the expression, found 'm'",
            ),
            (
                "q=sum()",
                "expected a metric name at byte 4 of the expression, found ')'",
            ),
            ("q=sum(1m)", "expected a metric name"),
            ("q=sum(m", "expected ')', the expression ends"),
            ("q=sum(m))", "expected the end after ')' at byte 6"),
            ("q=sum(m{})", "expected a label name at byte 6"),
            ("q=sum(m{a})", "expected '=' or '!=' after label \"a\""),
            ("q=sum(m{a=b})", "expected '\"' at byte 8"),
            (
                "q=sum(m{a=\"b})",
                "the value of label \"a\" has no closing '\"'",
            ),
            (
                r#"q=sum(m{a="b\"#,
                "the value of label \"a\" has no closing '\"'",
            ),
            (
                r#"q=sum(m{a="\n"})"#,
                r#"unknown escape \n in the value of label "a""#,
            ),
            ("q=sum(m{a=\"b\",})", "expected a label name at byte 12"),
            ("q=sum(m{a=\"b\" b=\"c\"})", "expected '}' at byte 12"),
        ];
        for (bad, wanted) in cases {
            let got = reason(bad);
            assert!(got.contains(wanted), "{bad}: {got}");
        }
        let long = reason(&format!("{}=sum(m)", "a".repeat(MAX_NAME_BYTES + 1)));
        assert_eq!(long, "name is 64 bytes, at most 63 allowed");
        let nine = (0..=MAX_MATCHERS)
            .map(|i| format!("l{i}=\"v\""))
            .collect::<Vec<_>>();
        assert_eq!(
            reason(&format!("n=sum(m{{{}}})", nine.join(","))),
            "more than 8 matchers"
        );
        let err = "q=sum(m{".parse::<SignalSpec>().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid --signal \"q=sum(m{\": expected a label name, the expression ends"
        );
    }

    #[test]
    fn sets_are_bounded_and_names_distinct() {
        let specs: Vec<SignalSpec> = (0..=MAX_SIGNALS)
            .map(|i| spec(&format!("s{i}=sum(m)")))
            .collect();
        assert_eq!(check_all(&specs[..MAX_SIGNALS]), Ok(()));
        assert_eq!(
            check_all(&specs).unwrap_err().to_string(),
            "17 --signal flags, at most 16 allowed"
        );
        let twice = [spec("a=sum(m)"), spec("b=sum(m)"), spec("a=max(n)")];
        assert_eq!(check_all(&twice), Err(SpecError::Duplicate("a".into())));
        assert_eq!(
            check_for_role(Role::Generic, &[], false)
                .unwrap_err()
                .to_string(),
            "--role generic forwards only --signal values: give at least one"
        );
        assert_eq!(check_for_role(Role::Generic, &specs[..1], false), Ok(()));
        assert_eq!(check_for_role(Role::Vllm, &[], false), Ok(()));
        assert_eq!(check_for_role(Role::Vllm, &specs[..1], true), Ok(()));
        assert_eq!(
            check_for_role(Role::Vllm, &[], true)
                .unwrap_err()
                .to_string(),
            "--signals-target without --signal: nothing would be read there"
        );
        assert_eq!(
            check_for_role(Role::Generic, &specs[..1], true),
            Err(SpecError::GenericWithSignalsTarget)
        );
    }
}
