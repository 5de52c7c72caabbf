//! Numbers and label values written the way vLLM's Python Prometheus client
//! writes them.
//!
//! That client prints `repr(float)` (`129.0`, `0.5`, `1e-05`, `1e+16`) but
//! switches to Go-style exponents for positive values with more than six
//! integer digits (`2.693517e+06`, `1.7953860551934388e+09`), so a reader
//! comparing the simulator with a real server sees the same text.

use std::fmt::{self, Write};

/// Escapes a label value (`\`, `"` and newline).
pub fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Appends `value` to `out` in the Python client's format.
pub fn write_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    // Rust's `{:?}` is shortest round-trip with the same switch to exponent
    // form as Python's repr (below 1e-4 and from 1e16); only the exponent
    // spelling differs.
    let mut digits = Digits::default();
    let _ = write!(digits, "{value:?}");
    let repr = digits.as_str();
    if let Some(e) = repr.find('e') {
        let (mantissa, exponent) = (&repr[..e], &repr[e + 1..]);
        let (sign, exponent) = match exponent.strip_prefix('-') {
            Some(rest) => ('-', rest),
            None => ('+', exponent),
        };
        out.push_str(mantissa);
        out.push('e');
        out.push(sign);
        if exponent.len() < 2 {
            out.push('0');
        }
        out.push_str(exponent);
        return;
    }
    let dot = repr.find('.').unwrap_or(repr.len());
    if value > 0.0 && dot > 6 {
        let (int, frac) = (&repr[..dot], repr.get(dot + 1..).unwrap_or(""));
        let start = out.len();
        out.push_str(&int[..1]);
        out.push('.');
        out.push_str(&int[1..]);
        out.push_str(frac);
        let kept = out[start..].trim_end_matches(['0', '.']).len();
        out.truncate(start + kept);
        // The Python client always writes "e+0" before the exponent, even a
        // two-digit one.
        let _ = write!(out, "e+0{}", dot - 1);
    } else {
        out.push_str(repr);
    }
}

/// A stack buffer for one formatted float (at most 24 characters).
#[derive(Default)]
struct Digits {
    buf: [u8; 32],
    len: usize,
}

impl Digits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("NaN")
    }
}

impl Write for Digits {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(v: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, v);
        s
    }

    #[test]
    fn matches_python_client_output() {
        // Expected strings are what prometheus_client's floatToGoString prints.
        let cases = [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (129.0, "129.0"),
            (897_839.0, "897839.0"),
            (2_693_517.0, "2.693517e+06"),
            (1_795_386_055.193_438_8, "1.7953860551934388e+09"),
            (0.260_948_634_204_275_55, "0.26094863420427555"),
            (1e-5, "1e-05"),
            (0.00012, "0.00012"),
            (3.5e-7, "3.5e-07"),
            (12_345_678_901.5, "1.23456789015e+010"),
            (1e16, "1e+16"),
            (2.5e20, "2.5e+20"),
            (-3.0, "-3.0"),
            (100_000.0, "100000.0"),
            (1_000_000.0, "1e+06"),
            (4_294_967_296.0, "4.294967296e+09"),
            (1e-4, "0.0001"),
            (123_456.789, "123456.789"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (value, expected) in cases {
            assert_eq!(fmt(value), expected, "formatting {value:?}");
        }
    }

    #[test]
    fn appends_without_touching_existing_text() {
        let mut s = String::from("x ");
        write_float(&mut s, 2_000_000.0);
        assert_eq!(s, "x 2e+06");
    }
}
