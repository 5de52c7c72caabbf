//! The PromQL the Prometheus source runs, built from arbitrary namespaces
//! and model names: every value must stay one string literal that PromQL
//! reads back as the value itself.
//!
//! The input is `namespace NUL model` (no NUL: all of it is the model).
#![no_main]

use std::str::Chars;

use libfuzzer_sys::fuzz_target;
use wva_aggregator::prometheus::promql::{Namespace, SignalQueries, signal_queries};
use wva_core::variants::is_dns_label;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (namespace, model) = text.split_once('\0').unwrap_or(("llm", &text));
    let namespace = match Namespace::parse(namespace) {
        Ok(parsed) => {
            assert!(is_dns_label(namespace) && parsed.as_str() == namespace);
            parsed
        }
        Err(_) => {
            assert!(!is_dns_label(namespace));
            Namespace::parse("llm").expect("a DNS label")
        }
    };
    let x = Namespace::parse("x").expect("a DNS label");
    let reference = queries(signal_queries(&x, "x")).map(|q| lex(&q));
    for (query, (skeleton, literals)) in queries(signal_queries(&namespace, model))
        .into_iter()
        .zip(reference)
    {
        let (got_skeleton, got) = lex(&query);
        // Outside its literals the query is the same whatever the values.
        assert_eq!(got_skeleton, skeleton, "{query}");
        assert_eq!(got.len(), literals.len(), "{query}");
        // Each selector matches `namespace` then `model_name`.
        for pair in got.chunks(2) {
            assert_eq!(pair, [namespace.as_str(), model], "{query}");
        }
    }
});

/// Every query, by destructuring so that a new one cannot be left out.
fn queries(q: SignalQueries) -> [String; 4] {
    let SignalQueries {
        kv_cache_usage,
        requests_waiting,
        requests_running,
        request_success,
    } = q;
    [
        kv_cache_usage,
        requests_waiting,
        requests_running,
        request_success,
    ]
}

/// Splits a query into its text outside double-quoted strings (each left as
/// `""`) and the strings' values, read as the PromQL lexer reads them (Go's
/// escapes, no raw newline). Panics on a string PromQL would refuse.
fn lex(query: &str) -> (String, Vec<String>) {
    let mut skeleton = String::new();
    let mut literals = Vec::new();
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            skeleton.push(c);
            continue;
        }
        skeleton.push_str("\"\"");
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated string") {
                '"' => break,
                '\n' => panic!("a raw newline in a string: {query:?}"),
                '\\' => value.push(unescape(&mut chars)),
                c => value.push(c),
            }
        }
        literals.push(value);
    }
    (skeleton, literals)
}

/// The character an escape (after its backslash) stands for. `\x` and octal
/// escapes are bytes in Go, so only their ASCII range is a character.
fn unescape(chars: &mut Chars<'_>) -> char {
    let escape = chars.next().expect("an escape at the end");
    let mut number = |digits: usize, radix: u32| {
        let text: String = chars.by_ref().take(digits).collect();
        assert!(
            text.len() == digits && text.chars().all(|c| c.is_digit(radix)),
            "bad escape digits {text:?}"
        );
        u32::from_str_radix(&text, radix).expect("digits")
    };
    let code_point = |code| char::from_u32(code).expect("a code point");
    let byte = |code: u32| {
        assert!(code < 0x80, "a byte escape outside ASCII: {code:#x}");
        code_point(code)
    };
    match escape {
        'a' => '\x07',
        'b' => '\x08',
        'f' => '\x0c',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0b',
        c @ ('\\' | '"') => c,
        'x' => byte(number(2, 16)),
        'u' => code_point(number(4, 16)),
        'U' => code_point(number(8, 16)),
        c @ '0'..='7' => byte(c.to_digit(8).expect("octal") * 64 + number(2, 8)),
        c => panic!("unknown escape \\{c}"),
    }
}
