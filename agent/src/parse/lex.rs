//! Byte-level scanning shared by sample lines, metadata lines and label
//! blocks. Every function takes a byte offset and returns the offset where
//! its token ends, so callers slice the `&str` without copying.

const METRIC: u8 = 1;
const LABEL: u8 = 2;

/// Character classes: `[a-zA-Z0-9_:]` for metric names (`:` is what vLLM
/// uses), `[a-zA-Z0-9_]` for label names. Digits may not start either.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b == b'_' {
            t[c] = METRIC | LABEL;
        } else if b == b':' {
            t[c] = METRIC;
        }
        c += 1;
    }
    t
};

fn name_end(b: &[u8], start: usize, class: u8) -> usize {
    match b.get(start) {
        Some(c) if !c.is_ascii_digit() => {}
        _ => return start,
    }
    let mut i = start;
    while i < b.len() && CLASS[usize::from(b[i])] & class != 0 {
        i += 1;
    }
    i
}

/// End of the metric name starting at `start` (`start` itself when there is none).
pub(super) fn metric_name_end(b: &[u8], start: usize) -> usize {
    name_end(b, start, METRIC)
}

/// End of the label name starting at `start` (`start` itself when there is none).
pub(super) fn label_name_end(b: &[u8], start: usize) -> usize {
    name_end(b, start, LABEL)
}

pub(super) fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_blank(b[i]) {
        i += 1;
    }
    i
}

/// End of the token starting at `start`: the next blank or the end of line.
pub(super) fn token_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && !is_blank(b[i]) {
        i += 1;
    }
    i
}

/// A sample value, bucket bound or timestamp: decimal or exponent notation,
/// `+Inf`/`-Inf`/`NaN` and the other case-insensitive spellings
/// (`inf`, `infinity`) that OpenMetrics allows and Go's `ParseFloat` accepts.
pub(super) fn number(token: &str) -> Option<f64> {
    short_decimal(token.as_bytes()).or_else(|| token.parse().ok())
}

/// Powers of ten that are exact in an `f64`.
const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Fast path for the numbers exporters write most (`129.0`, `0.25`,
/// `1.5e+06`): at most 15 digits and a net exponent within ±22. Both the
/// digits and the power of ten are then exact, so one multiplication or
/// division rounds correctly (Clinger's fast path). `None` sends every other
/// token to the general parser.
fn short_decimal(b: &[u8]) -> Option<f64> {
    let (negative, b) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let mut mantissa = 0u64;
    let mut digits = 0;
    let mut exponent = 0i32;
    let mut i = 0;
    let mut take_digits = |i: &mut usize| {
        let start = *i;
        while let Some(d) = b.get(*i).filter(|d| d.is_ascii_digit()) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            *i += 1;
        }
        *i - start
    };
    digits += take_digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        let fraction = take_digits(&mut i);
        digits += fraction;
        exponent -= fraction as i32;
    }
    if digits == 0 || digits > 15 {
        return None;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        let sign = if b.get(i) == Some(&b'-') { -1 } else { 1 };
        i += usize::from(matches!(b.get(i), Some(b'-' | b'+')));
        let start = i;
        let mut e = 0i32;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            e = e * 10 + i32::from(d - b'0');
            i += 1;
            if i - start > 3 {
                return None;
            }
        }
        if i == start {
            return None;
        }
        exponent += sign * e;
    }
    if i != b.len() {
        return None;
    }
    let pow = *EXACT_POW10.get(exponent.unsigned_abs() as usize)?;
    let m = mantissa as f64;
    let v = if exponent < 0 { m / pow } else { m * pow };
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_allow_colons_label_names_do_not() {
        let s = b"vllm:kv_cache_usage_perc{";
        assert_eq!(metric_name_end(s, 0), 24);
        assert_eq!(label_name_end(s, 0), 4);
        assert_eq!(label_name_end(b"_private=", 0), 8);
        assert_eq!(metric_name_end(b"9lives", 0), 0);
        assert_eq!(label_name_end(b"", 0), 0);
    }

    #[test]
    fn numbers_in_every_spelling_exporters_use() {
        assert_eq!(number("1.5e+06"), Some(1.5e6));
        assert_eq!(number("2.5e-300"), Some(2.5e-300));
        assert_eq!(number("1E+100"), Some(1e100));
        assert_eq!(number("-0.25"), Some(-0.25));
        assert_eq!(number("42"), Some(42.0));
        assert_eq!(number("+Inf"), Some(f64::INFINITY));
        assert_eq!(number("-Inf"), Some(f64::NEG_INFINITY));
        assert!(number("NaN").is_some_and(f64::is_nan));
        assert_eq!(number("1.7953860551936307e+09"), Some(1.7953860551936307e9));
        for bad in [
            "", "abc", "1,5", "0x10", "1e", "1e+", "--1", "-", ".", "1 ", "1.2.3",
        ] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let tokens = [
            "0",
            "0.0",
            "-0.0",
            "129.0",
            "12071.0",
            "0.26094863420427555",
            "9.912222e+06",
            "1404.7502564338383",
            "1.7953860551936307e+09",
            "0.001",
            ".5",
            "5.",
            "1e22",
            "1e23",
            "123456789012345",
            "1234567890123456",
            "4.2e-7",
            "7e-22",
            "7e-23",
            "1E+3",
            "+2.5",
            "0.30000000000000004",
            "999999999999999e-22",
            "1.5e0001",
        ];
        for t in tokens {
            let general: f64 = t.parse().unwrap();
            assert_eq!(number(t).map(f64::to_bits), Some(general.to_bits()), "{t}");
            if let Some(fast) = short_decimal(t.as_bytes()) {
                assert_eq!(fast.to_bits(), general.to_bits(), "{t}");
            }
        }
        assert!(short_decimal(b"129.0").is_some());
        assert!(short_decimal(b"9.912222e+06").is_some());
        assert!(short_decimal(b"0.26094863420427555").is_none());
    }
}
