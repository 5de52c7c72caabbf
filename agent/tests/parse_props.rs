//! Properties of the parser: generated valid lines read back exactly, and no
//! input, however broken, makes it (or the extractor) panic or lose track of
//! line numbers.

use proptest::prelude::*;
use wva_agent::extract::Extractor;
use wva_agent::parse::{Line, ParseError, Parser};
use wva_proto::v1::Role;

/// One generated sample and how to write it.
#[derive(Debug, Clone)]
struct Generated {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
    value_text: String,
    timestamp: Option<i64>,
    separator: &'static str,
    trailing_comma: bool,
    exemplar: bool,
}

impl Generated {
    fn render(&self) -> String {
        let mut line = self.name.clone();
        if !self.labels.is_empty() || self.trailing_comma {
            let pairs: Vec<String> = self
                .labels
                .iter()
                .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                .collect();
            line.push('{');
            line.push_str(&pairs.join(self.separator));
            if self.trailing_comma && !self.labels.is_empty() {
                line.push(',');
            }
            line.push('}');
        }
        line.push(' ');
        line.push_str(&self.value_text);
        if let Some(ts) = self.timestamp {
            line.push_str(&format!(" {ts}"));
        }
        if self.exemplar {
            line.push_str(" # {trace_id=\"0af7651916cd43dd\"} 0.046 1520879607.789");
        }
        line
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The spellings exporters use: Go (`1.5e+06`), Python (`1.5e+06`, `+Inf`),
/// Rust's shortest round-trip forms.
fn spellings(v: f64) -> Vec<String> {
    if v.is_nan() {
        return vec!["NaN".into()];
    }
    if v.is_infinite() {
        return vec![if v > 0.0 { "+Inf" } else { "-Inf" }.into()];
    }
    let exp = format!("{v:e}");
    let (mantissa, e) = exp.split_once('e').unwrap();
    let (sign, digits) = match e.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', e),
    };
    vec![
        format!("{v}"),
        exp.clone(),
        format!("{v:E}"),
        format!("{mantissa}e{sign}{digits:0>2}"),
    ]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::NAN),
        (-1e6..1e6f64),
        (0u32..100_000).prop_map(f64::from),
        prop_oneof![Just(1e-300), Just(2.5e300), Just(-7.25e-123)],
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => any::<char>(),
        1 => Just('\\'),
        1 => Just('"'),
        1 => Just('\n'),
        1 => Just(','),
        1 => Just('='),
        1 => Just('}'),
    ];
    prop::collection::vec(ch, 0..24).prop_map(String::from_iter)
}

fn generated() -> impl Strategy<Value = Generated> {
    let label = (
        "[a-zA-Z_][a-zA-Z0-9_]{0,12}".prop_filter("not le", |n| n != "le"),
        label_value(),
    );
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,40}",
        prop::collection::vec(label, 0..6),
        value(),
        any::<prop::sample::Index>(),
        prop::option::of(any::<i64>()),
        prop_oneof![Just(","), Just(", ")],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, labels, value, spelling, timestamp, separator, trailing_comma, exemplar)| {
                let options = spellings(value);
                Generated {
                    name,
                    labels,
                    value,
                    value_text: options[spelling.index(options.len())].clone(),
                    timestamp,
                    separator,
                    trailing_comma,
                    exemplar,
                }
            },
        )
}

/// Text that looks enough like exposition to reach every branch.
fn garbage() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("vllm:num_requests_running"),
        Just("h_bucket"),
        Just("le"),
        Just("model_name"),
        Just("{"),
        Just("}"),
        Just("\""),
        Just("\\"),
        Just("="),
        Just(","),
        Just(" "),
        Just("\t"),
        Just("\n"),
        Just("\r\n"),
        Just("#"),
        Just("# TYPE "),
        Just("# HELP "),
        Just("# EOF"),
        Just("1.5e+06"),
        Just("+Inf"),
        Just("NaN"),
        Just("é"),
        Just("0"),
    ];
    prop_oneof![
        prop::collection::vec(token, 0..60).prop_map(|t| t.concat()),
        "(?s).{0,200}",
    ]
}

/// Every item of the body, checking line bookkeeping on the way.
fn check_lines(body: &str) -> Vec<Result<(), ParseError>> {
    let lines = body.split('\n').count();
    let mut parser = Parser::new(body);
    let mut out = Vec::new();
    let mut last = 0;
    while let Some(item) = parser.next() {
        let n = parser.line_number();
        assert!(n > last && n <= lines, "line {n} after {last} of {lines}");
        last = n;
        if let Err(e) = &item {
            assert_eq!(e.line, n);
            assert!(!e.to_string().is_empty());
        }
        out.push(item.map(|_| ()));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn generated_lines_read_back(g in generated()) {
        let line = g.render();
        let items: Vec<_> = Parser::new(&line).collect();
        let [Ok(Line::Sample(s))] = items.as_slice() else {
            panic!("{line:?}: {items:?}");
        };
        prop_assert_eq!(s.name, g.name.as_str());
        let labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|l| (l.name.to_owned(), l.value().into_owned()))
            .collect();
        prop_assert_eq!(&labels, &g.labels);
        for (l, (_, want)) in s.labels.iter().zip(&g.labels) {
            prop_assert!(l.value_eq(want));
            let mut unescaped = String::new();
            l.unescape_into(&mut unescaped);
            prop_assert_eq!(&unescaped, want);
        }
        if g.value.is_nan() {
            prop_assert!(s.value.is_nan());
        } else {
            prop_assert_eq!(s.value, g.value, "{}", g.value_text);
        }
        prop_assert_eq!(s.timestamp, g.timestamp.map(|t| t as f64));
    }

    #[test]
    fn lines_read_back_inside_a_body(lines in prop::collection::vec(generated(), 1..20), crlf: bool) {
        let end = if crlf { "\r\n" } else { "\n" };
        let body: String = lines.iter().map(|g| g.render() + end).collect();
        let names: Vec<_> = Parser::new(&body)
            .map(|item| match item {
                Ok(Line::Sample(s)) => s.name.to_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        let want: Vec<_> = lines.iter().map(|g| g.name.clone()).collect();
        prop_assert_eq!(names, want);
    }

    #[test]
    fn garbage_never_panics_and_errors_name_their_line(body in garbage()) {
        check_lines(&body);
        for role in [Role::Vllm, Role::Epp, Role::Unspecified] {
            let mut x = Extractor::new(role);
            let _ = x.extract(&body);
            x.fill(&mut Default::default());
        }
    }

    #[test]
    fn damaged_lines_fail_on_their_own_line(
        g in generated(),
        before in prop::collection::vec(generated(), 0..4),
        cut in any::<prop::sample::Index>(),
        insert in prop::option::of(prop_oneof![Just('"'), Just('{'), Just('}'), Just('\\'), Just(' '), Just('x'), Just('=')]),
    ) {
        let line = g.render();
        let chars: Vec<char> = line.chars().collect();
        let at = cut.index(chars.len() + 1);
        let damaged: String = match insert {
            Some(c) => chars[..at].iter().chain([&c]).chain(&chars[at..]).collect(),
            None => chars[..at].iter().collect(),
        };
        let prefix: String = before.iter().map(|g| g.render() + "\n").collect();
        let body = format!("{prefix}{damaged}\nok_after 1\n");
        let items = check_lines(&body);
        // Earlier lines are untouched, and the damage never spills over.
        prop_assert!(items[..before.len()].iter().all(Result::is_ok));
        prop_assert!(items.last().is_some_and(Result::is_ok));
        for e in items.iter().filter_map(|r| r.as_ref().err()) {
            prop_assert_eq!(e.line, before.len() + 1);
        }
    }
}
