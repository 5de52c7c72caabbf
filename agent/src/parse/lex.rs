//! Byte-level scanning shared by sample lines, metadata lines and label
//! blocks. Every function takes a byte offset and returns the offset where
//! its token ends, so callers slice the `&str` without copying.
//!
//! Tokens are short (a 40-byte name, a one-word value), too short for a
//! vector search to pay for its setup, so the scanners test eight bytes at a
//! time in a `u64` and hand only long runs to `memchr`.

use memchr::memchr2;

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
    // Eight bytes at a time while a whole word is left, then byte by byte.
    while let Some(word) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let stops = non_name_bytes(u64::from_le_bytes(*word), class);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && CLASS[usize::from(b[i])] & class != 0 {
        i += 1;
    }
    i
}

/// `c` in every byte of a word.
pub(super) const fn splat(c: u8) -> u64 {
    u64::from_le_bytes([c; 8])
}

const HIGH_BITS: u64 = splat(0x80);

/// The bytes of `word` (read little-endian) outside `class`, flagged by their
/// high bit. Each range test adds a constant to 7-bit bytes, which cannot
/// carry into the next byte, and reads the high bit: set when `x >= lo`,
/// and set in the second sum when `x > hi`.
fn non_name_bytes(word: u64, class: u8) -> u64 {
    let in_range = |x: u64, lo: u8, hi: u8| (x + splat(0x80 - lo)) & !(x + splat(0x7f - hi));
    let x = word & !HIGH_BITS;
    // `:` follows `9` in ASCII, so metric names take one range for both.
    let last_digit = if class == METRIC { b':' } else { b'9' };
    let name = in_range(x | splat(0x20), b'a', b'z')
        | in_range(x, b'0', last_digit)
        | in_range(x, b'_', b'_');
    // A byte with its high bit set is not ASCII, so never part of a name.
    !(name & !word) & HIGH_BITS
}

pub(super) fn is_metric_char(c: u8) -> bool {
    CLASS[usize::from(c)] & METRIC != 0
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

/// `&s[start..end]` for offsets the scanners found: slicing twice keeps
/// both char-boundary checks small enough to inline.
#[inline]
pub(super) fn span(s: &str, start: usize, end: usize) -> &str {
    &s[start..][..end - start]
}

/// End of the token starting at `start`: the next blank or the end of line
/// (`start` itself when that is past the end).
pub(super) fn token_end(b: &[u8], start: usize) -> usize {
    let rest = b.get(start..).unwrap_or_default();
    start + find_either(rest, b' ', b'\t').unwrap_or(rest.len())
}

/// Offset of the first `x` or `y` in `s`: the classic "has a zero byte"
/// trick on each word XOR the wanted byte, then `memchr2` past 64 bytes.
#[inline]
pub(super) fn find_either(s: &[u8], x: u8, y: u8) -> Option<usize> {
    const SCALAR_LIMIT: usize = 64;
    let zero_bytes = |v: u64| v.wrapping_sub(splat(0x01)) & !v & splat(0x80);

    let head = &s[..s.len().min(SCALAR_LIMIT)];
    let (words, tail) = head.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let v = u64::from_le_bytes(*word);
        // The lowest flagged byte is exact; higher ones may be spurious.
        let hits = zero_bytes(v ^ splat(x)) | zero_bytes(v ^ splat(y));
        if hits != 0 {
            return Some(i * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    let scanned = words.len() * 8;
    if let Some(i) = tail.iter().position(|&c| c == x || c == y) {
        return Some(scanned + i);
    }
    let rest = s.get(head.len()..).filter(|r| !r.is_empty())?;
    memchr2(x, y, rest).map(|i| head.len() + i)
}

/// A sample value, bucket bound or timestamp: decimal or exponent notation,
/// `+Inf`/`-Inf`/`NaN` and the other case-insensitive spellings
/// (`inf`, `infinity`) that OpenMetrics allows and Go's `ParseFloat` accepts.
#[inline]
pub(super) fn number(token: &str) -> Option<f64> {
    short_decimal(token.as_bytes()).or_else(|| match token {
        // Every histogram's last bucket.
        "+Inf" => Some(f64::INFINITY),
        _ => token.parse().ok(),
    })
}

/// Powers of ten that are exact in an `f64`.
const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The powers of ten that fit a `u64`.
const POW10: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Fast path for the numbers exporters write most (`129.0`, `0.25`,
/// `1.5e+06`, Python's 17-digit `1.7953860551936307e+09`): at most 19
/// digits, so the mantissa is an exact `u64`, and a net exponent within ±22
/// (±19 past 2^53). `None` sends every other token to the general parser.
fn short_decimal(b: &[u8]) -> Option<f64> {
    let (negative, mantissa, exponent) = decimal(b)?;
    let v = scale(mantissa, exponent)?;
    Some(if negative { -v } else { v })
}

/// Whether `token` is a number, without computing it (for bucket bounds).
/// What `decimal` reads, the general parser reads too.
pub(super) fn is_number(token: &str) -> bool {
    decimal(token.as_bytes()).is_some() || number(token).is_some()
}

/// A decimal of at most 19 digits and a 3-digit exponent, as its sign,
/// digits and net power of ten.
fn decimal(b: &[u8]) -> Option<(bool, u64, i32)> {
    let (negative, b) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let mut mantissa = 0u64;
    let mut i = digits(b, &mut mantissa);
    let mut count = i;
    let mut exponent = 0i32;
    if b.get(i) == Some(&b'.') {
        let fraction = digits(&b[i + 1..], &mut mantissa);
        i += 1 + fraction;
        count += fraction;
        exponent -= fraction as i32;
    }
    if count == 0 || count > 19 {
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
    (i == b.len()).then_some((negative, mantissa, exponent))
}

/// `mantissa × 10^exponent`, correctly rounded, or `None` when that needs
/// the general algorithm.
fn scale(mantissa: u64, exponent: i32) -> Option<f64> {
    let k = exponent.unsigned_abs() as usize;
    if mantissa <= 1 << 53 {
        // Clinger's fast path: both factors are exact, so one operation
        // rounds once.
        let pow = *EXACT_POW10.get(k)?;
        let m = mantissa as f64;
        return Some(if exponent < 0 { m / pow } else { m * pow });
    }
    let pow = *POW10.get(k)?;
    if exponent >= 0 {
        // The product is exact in a u128 and the cast rounds to nearest even.
        return Some((u128::from(mantissa) * u128::from(pow)) as f64);
    }
    // Shift the mantissa so that the quotient fills 63 or 64 bits: a u64,
    // divided in one step and converted in hardware. A set lowest bit stands
    // for a non-zero remainder, which is all rounding needs to know of the
    // bits past the 53rd. The result lies within 1e-19..1e19, so scaling
    // back by a power of two is exact.
    let shift = 63 + mantissa.leading_zeros() - pow.leading_zeros();
    let n = u128::from(mantissa) << shift;
    let quotient = n / u128::from(pow);
    let inexact = quotient * u128::from(pow) != n;
    let rounded = (quotient as u64 | u64::from(inexact)) as f64;
    Some(rounded * f64::from_bits(u64::from(1023 - shift) << 52))
}

/// Reads the ASCII digits that start `b` into `mantissa` (wrapping past 19
/// of them); returns how many there were.
fn digits(b: &[u8], mantissa: &mut u64) -> usize {
    let mut i = 0;
    while let Some(&word) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let Some(value) = eight_digits(u64::from_le_bytes(word)) else {
            break;
        };
        *mantissa = mantissa.wrapping_mul(100_000_000).wrapping_add(value);
        i += 8;
    }
    while let Some(d) = b.get(i).map(|d| d.wrapping_sub(b'0')).filter(|&d| d < 10) {
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    i
}

/// The value of eight ASCII digits read little-endian (the first digit in
/// the lowest byte), or `None` unless all eight are digits.
fn eight_digits(word: u64) -> Option<u64> {
    // Every byte is 0x30..=0x39: high nibble 3, and adding 6 keeps it 3.
    let nibbles = splat(0xf0);
    if word & nibbles != splat(0x30) || (word + splat(0x06)) & nibbles != splat(0x30) {
        return None;
    }
    // Merge neighbours into two-digit, then four-digit, then eight-digit
    // values, each step a multiply that lines the halves up.
    let v = word - splat(0x30);
    let v = (v * 10 + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v * 100 + (v >> 16)) & 0x0000_ffff_0000_ffff;
    Some((v * 10_000 + (v >> 32)) & 0xffff_ffff)
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
    fn word_scan_agrees_with_the_class_table() {
        for class in [METRIC, LABEL] {
            for c in 0..=255u8 {
                // From 1: a leading digit is no name, tested above.
                for at in 1..20 {
                    let mut s = [b'x'; 20];
                    s[at] = c;
                    let scalar = s.iter().position(|&b| CLASS[usize::from(b)] & class == 0);
                    let want = scalar.unwrap_or(s.len());
                    assert_eq!(
                        name_end(&s, 0, class),
                        want,
                        "class {class} byte {c} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn byte_search_at_every_offset_and_length() {
        for len in 0..150 {
            for at in 0..=len {
                let mut v = vec![b'a'; len];
                let want = (at < len).then(|| {
                    v[at] = if at % 2 == 0 { b'"' } else { b'\\' };
                    at
                });
                if at + 1 < len {
                    v[at + 1] = b'"';
                }
                assert_eq!(find_either(&v, b'"', b'\\'), want, "len {len} at {at}");
            }
        }
        // Bytes just above and below the targets, and multibyte text.
        let s = "#!][é\"".as_bytes();
        assert_eq!(find_either(s, b'"', b'\\'), Some(s.len() - 1));
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
        for good in [
            "0.005",
            "+Inf",
            "1e-05",
            "5.",
            ".5",
            "123456789012345678901",
        ] {
            assert!(is_number(good), "{good:?}");
        }
        for bad in [
            "", "abc", "1,5", "0x10", "1e", "1e+", "--1", "-", ".", "1 ", "1.2.3",
        ] {
            assert_eq!(number(bad), None, "{bad:?}");
            assert!(!is_number(bad), "{bad:?}");
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
        assert!(short_decimal(b"0.26094863420427555").is_some());
        assert!(short_decimal(b"1.7953860551936307e+09").is_some());
        assert!(short_decimal(b"12345678901234567890").is_none());
    }

    #[test]
    fn long_mantissas_round_like_the_general_parser() {
        // Ties and near-ties past 2^53, where one rounding step decides.
        let edges = [
            "9007199254740993",
            "9007199254740995",
            "9007199254740993e-1",
            "900719925474099.3",
            "18014398509481985",
            "9999999999999999999",
            "9999999999999999999e19",
            "1000000000000000001e-19",
            "4503599627370497.5",
        ];
        for t in edges {
            let general: f64 = t.parse().unwrap();
            assert_eq!(number(t).map(f64::to_bits), Some(general.to_bits()), "{t}");
        }
        // Random mantissas of up to 19 digits, the point anywhere, and
        // exponents around the fast path's limits.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let digits = (next() % 19 + 1) as u32;
            let mantissa = next() % 10u64.pow(digits);
            let mut text = format!("{mantissa:0width$}", width = digits as usize);
            let point = (next() % (u64::from(digits) + 1)) as usize;
            text.insert(point, '.');
            let exponent = (next() % 60) as i32 - 30;
            let t = format!("{text}e{exponent}");
            let general: f64 = t.parse().unwrap();
            assert_eq!(number(&t).map(f64::to_bits), Some(general.to_bits()), "{t}");
            assert!(is_number(&t), "{t}");
        }
    }
}
