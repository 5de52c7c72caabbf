//! `GET /metrics?name[]=…`: only the samples a scraper names, the way
//! Python's `prometheus_client` answers it from `make_asgi_app` (a
//! restricted registry).
//!
//! That client matches *sample* names (`vllm:prompt_tokens_total`,
//! `vllm:request_prompt_tokens_sum`, never the bare family name of a counter
//! or histogram), keeps a family's HELP/TYPE header when any of its samples
//! remains, even one that is only a `_created` companion, and writes nothing
//! for a family left without samples. Parameters are read like Python's
//! `parse_qs`: `+` and percent escapes are decoded, empty values ignored.

use std::collections::HashSet;

/// The sample names of a scrape's `name[]` query parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleNames(HashSet<String>);

impl SampleNames {
    /// The names in `query` (the URI's query string), or `None` when it
    /// names none: then the whole exposition is served.
    pub fn from_query(query: &str) -> Option<Self> {
        let names: HashSet<String> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| decode(key) == "name[]")
            .map(|(_, value)| decode(value))
            .filter(|value| !value.is_empty())
            .collect();
        (!names.is_empty()).then_some(Self(names))
    }

    fn contains(&self, sample: &str) -> bool {
        self.0.contains(sample)
    }
}

/// Python's `unquote_plus`: `+` is a space, `%XX` a byte, an invalid escape
/// stays as written, invalid UTF-8 becomes U+FFFD.
fn decode(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (byte, None) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The part of `exposition` (text format, as [`super::exposition`] writes
/// it) that `names` asks for.
pub fn restrict(exposition: &str, names: &SampleNames) -> String {
    let mut out = String::new();
    let mut sections = Sections(exposition).peekable();
    while let Some(family) = sections.next() {
        // prometheus_client holds `_created` samples in the family they
        // belong to and writes them as a gauge section right after it.
        let created = sections.next_if(|s| s.is_created_of(&family));
        let samples = family.samples_in(names);
        let created_samples = created.as_ref().map(|c| c.samples_in(names));
        let created_kept = created_samples.as_ref().is_some_and(|s| !s.is_empty());
        if samples.is_empty() && !created_kept {
            continue;
        }
        out.push_str(family.header);
        out.extend(samples);
        if let (Some(created), Some(samples)) = (created, created_samples)
            && created_kept
        {
            out.push_str(created.header);
            out.extend(samples);
        }
    }
    out
}

/// One `# HELP` / `# TYPE` header and the sample lines after it.
struct Section<'a> {
    name: &'a str,
    kind: &'a str,
    header: &'a str,
    samples: &'a str,
}

impl<'a> Section<'a> {
    /// Whether this is the `_created` gauge of counter or histogram `family`.
    fn is_created_of(&self, family: &Section<'_>) -> bool {
        let base = match family.kind {
            "counter" => family.name.strip_suffix("_total"),
            "histogram" | "summary" => Some(family.name),
            _ => None,
        };
        self.kind == "gauge"
            && base.is_some_and(|base| self.name.strip_prefix(base) == Some("_created"))
    }

    /// The sample lines (with their newlines) whose name `names` holds.
    fn samples_in(&self, names: &SampleNames) -> Vec<&'a str> {
        self.samples
            .split_inclusive('\n')
            .filter(|line| {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                names.contains(&line[..end])
            })
            .collect()
    }
}

/// The sections of an exposition, in order.
struct Sections<'a>(&'a str);

impl<'a> Iterator for Sections<'a> {
    type Item = Section<'a>;

    fn next(&mut self) -> Option<Section<'a>> {
        let text = self.0;
        if text.is_empty() {
            return None;
        }
        let end = text.find("\n# HELP ").map_or(text.len(), |i| i + 1);
        let (section, rest) = text.split_at(end);
        self.0 = rest;
        let header_end = nth_line_end(section, 2);
        let (header, samples) = section.split_at(header_end);
        let name = header
            .strip_prefix("# HELP ")
            .and_then(|h| h.split(' ').next())
            .unwrap_or("");
        let kind = header
            .lines()
            .nth(1)
            .and_then(|t| t.rsplit(' ').next())
            .unwrap_or("");
        Some(Section {
            name,
            kind,
            header,
            samples,
        })
    }
}

/// The byte offset just past the `n`th line of `text` (or its end).
fn nth_line_end(text: &str, n: usize) -> usize {
    text.match_indices('\n')
        .nth(n - 1)
        .map_or(text.len(), |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP vllm:num_requests_running Running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\"} 3.0
vllm:num_requests_running{engine=\"1\"} 1.0
# HELP vllm:prompt_tokens_total Prompt tokens.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine=\"0\"} 10.0
# HELP vllm:prompt_tokens_created Prompt tokens.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine=\"0\"} 1.7e+09
# HELP vllm:ttft_seconds TTFT.
# TYPE vllm:ttft_seconds histogram
vllm:ttft_seconds_bucket{engine=\"0\",le=\"1.0\"} 2.0
vllm:ttft_seconds_bucket{engine=\"0\",le=\"+Inf\"} 2.0
vllm:ttft_seconds_count{engine=\"0\"} 2.0
vllm:ttft_seconds_sum{engine=\"0\"} 0.5
# HELP vllm:ttft_seconds_created TTFT.
# TYPE vllm:ttft_seconds_created gauge
vllm:ttft_seconds_created{engine=\"0\"} 1.7e+09
";

    fn names(query: &str) -> SampleNames {
        SampleNames::from_query(query).expect("names in the query")
    }

    #[test]
    fn query_is_read_like_parse_qs() {
        let expected = |list: &[&str]| SampleNames(list.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            names("name%5B%5D=vllm%3Aa_total&name[]=vllm:b&other=1&name[]=vllm:b"),
            expected(&["vllm:a_total", "vllm:b"])
        );
        assert_eq!(names("name[]=a+b%zz%4"), expected(&["a b%zz%4"]));
        for nothing in ["", "name[]=", "name[]", "name=vllm:a", "names[]=vllm:a"] {
            assert_eq!(SampleNames::from_query(nothing), None, "{nothing:?}");
        }
    }

    #[test]
    fn keeps_named_samples_and_their_headers() {
        let text = restrict(
            TEXT,
            &names("name[]=vllm:prompt_tokens_total&name[]=vllm:ttft_seconds_sum"),
        );
        assert_eq!(
            text,
            "# HELP vllm:prompt_tokens_total Prompt tokens.\n\
             # TYPE vllm:prompt_tokens_total counter\n\
             vllm:prompt_tokens_total{engine=\"0\"} 10.0\n\
             # HELP vllm:ttft_seconds TTFT.\n\
             # TYPE vllm:ttft_seconds histogram\n\
             vllm:ttft_seconds_sum{engine=\"0\"} 0.5\n"
        );
    }

    #[test]
    fn family_names_match_only_gauges() {
        let text = restrict(
            TEXT,
            &names(
                "name[]=vllm:num_requests_running&name[]=vllm:prompt_tokens&name[]=vllm:ttft_seconds",
            ),
        );
        assert_eq!(text, TEXT.split("# HELP vllm:prompt").next().unwrap());
    }

    #[test]
    fn a_created_sample_alone_keeps_an_empty_family_header() {
        let text = restrict(TEXT, &names("name[]=vllm:prompt_tokens_created"));
        assert_eq!(
            text,
            "# HELP vllm:prompt_tokens_total Prompt tokens.\n\
             # TYPE vllm:prompt_tokens_total counter\n\
             # HELP vllm:prompt_tokens_created Prompt tokens.\n\
             # TYPE vllm:prompt_tokens_created gauge\n\
             vllm:prompt_tokens_created{engine=\"0\"} 1.7e+09\n"
        );
    }

    #[test]
    fn unknown_names_give_an_empty_body() {
        assert_eq!(restrict(TEXT, &names("name[]=vllm:nothing")), "");
    }
}
