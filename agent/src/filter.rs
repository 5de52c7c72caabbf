//! Asking the target for only the samples the extractor reads.
//!
//! Python's `prometheus_client`, which renders vLLM's metrics, serves only
//! the samples named by `name[]` query parameters. A filtered scrape then
//! costs vLLM's API server (the process serving requests) a few KB of
//! rendering instead of its whole body of about 100 KB. Not every handler
//! honours the query: Go's `promhttp` (an EPP) ignores it, and so does the
//! handler current vLLM serves on `/metrics`, while the filtering app it
//! mounts beside it answers `/metrics/`. So the agent asks the target's path
//! first, then the same path with a trailing slash, and keeps the first that
//! returns nothing but what it asked for. A target that honours neither is
//! scraped whole and asked again every [`RETRY_AFTER`].

use std::fmt::Write;
use std::time::{Duration, Instant};

use http::Uri;
use http::uri::PathAndQuery;

/// How long a target that ignored or failed filtered requests is scraped
/// whole before they are tried again (it may have been upgraded, or the
/// failure may have been passing).
pub const RETRY_AFTER: Duration = Duration::from_secs(600);

/// What a filtered request showed about the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The body held only the samples asked for.
    Filtered,
    /// The body held others too: the query was ignored (the body is whole
    /// and usable).
    Ignored,
    /// The request was refused or its body could not be used.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Filtering is turned off.
    Disabled,
    /// Asking `candidates[i]`, not yet seen to filter.
    Trying(usize),
    /// `candidates[i]` serves filtered bodies.
    Using(usize),
    /// No candidate filtered; the plain target until then.
    Whole { until: Instant },
}

#[derive(Debug)]
pub struct Filter {
    /// Filtered forms of the target, in the order they are tried.
    candidates: Vec<Uri>,
    state: State,
}

impl Filter {
    /// Filtered requests for `names` at `target`'s path, then at the same
    /// path with a trailing slash.
    pub fn new<'a>(target: &Uri, names: impl IntoIterator<Item = &'a str>) -> Filter {
        let query = names.into_iter().fold(String::new(), |mut query, name| {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("name%5B%5D=");
            percent_encode(name, &mut query);
            query
        });
        let path = target.path();
        let mut paths = vec![path.to_owned()];
        if !path.ends_with('/') {
            paths.push(format!("{path}/"));
        }
        let candidates = paths
            .iter()
            .filter_map(|path| with_path_and_query(target, path, &query))
            .collect();
        Filter {
            candidates,
            state: State::Trying(0),
        }
    }

    /// A filter that never asks for a filtered body.
    pub fn disabled() -> Filter {
        Filter {
            candidates: Vec::new(),
            state: State::Disabled,
        }
    }

    /// The filtered request to make now, if any; `None` means the plain target.
    pub fn uri(&mut self, now: Instant) -> Option<&Uri> {
        if let State::Whole { until } = self.state
            && now >= until
        {
            self.state = State::Trying(0);
        }
        match self.state {
            State::Trying(i) | State::Using(i) => self.candidates.get(i),
            State::Disabled | State::Whole { .. } => None,
        }
    }

    /// Whether the target serves filtered bodies.
    pub fn in_use(&self) -> bool {
        matches!(self.state, State::Using(_))
    }

    /// Learns from the request [`Filter::uri`] returned. A failure of the
    /// one in use gives it one more try; any other moves on to the next
    /// candidate, or to whole bodies when none is left.
    pub fn learn(&mut self, outcome: Outcome, now: Instant) {
        self.state = match (self.state, outcome) {
            (State::Trying(i) | State::Using(i), Outcome::Filtered) => State::Using(i),
            (State::Using(i), _) => State::Trying(i),
            (State::Trying(i), _) if i + 1 < self.candidates.len() => State::Trying(i + 1),
            (State::Trying(_), _) => State::Whole {
                until: now + RETRY_AFTER,
            },
            (state @ (State::Disabled | State::Whole { .. }), _) => state,
        };
    }
}

/// `target` with `path` and `query` (after any query of its own).
fn with_path_and_query(target: &Uri, path: &str, query: &str) -> Option<Uri> {
    let path_and_query = match target.query() {
        Some(own) => format!("{path}?{own}&{query}"),
        None => format!("{path}?{query}"),
    };
    let mut parts = target.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// Appends `s` with everything but RFC 3986's unreserved bytes escaped
/// (vLLM's names hold `:`).
fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(target: &str) -> Filter {
        Filter::new(&target.parse().unwrap(), ["vllm:a_total", "b"])
    }

    fn asked(filter: &mut Filter, now: Instant) -> Option<String> {
        filter.uri(now).map(ToString::to_string)
    }

    #[test]
    fn names_are_escaped_into_name_parameters() {
        let now = Instant::now();
        assert_eq!(
            asked(&mut filter("http://127.0.0.1:8000/metrics"), now).unwrap(),
            "http://127.0.0.1:8000/metrics?name%5B%5D=vllm%3Aa_total&name%5B%5D=b"
        );
        assert_eq!(
            asked(&mut filter("https://pod:8443/m?x=1"), now).unwrap(),
            "https://pod:8443/m?x=1&name%5B%5D=vllm%3Aa_total&name%5B%5D=b"
        );
    }

    #[test]
    fn the_trailing_slash_path_is_tried_when_the_first_ignores_the_query() {
        let now = Instant::now();
        let mut f = filter("http://h/metrics");
        f.learn(Outcome::Ignored, now);
        assert!(!f.in_use());
        assert!(
            asked(&mut f, now)
                .unwrap()
                .starts_with("http://h/metrics/?name")
        );
        f.learn(Outcome::Filtered, now);
        assert!(f.in_use());
        assert!(
            asked(&mut f, now)
                .unwrap()
                .starts_with("http://h/metrics/?name")
        );
    }

    #[test]
    fn a_target_that_filters_nowhere_is_scraped_whole_and_asked_again_later() {
        let now = Instant::now();
        let mut f = filter("http://h/metrics");
        f.learn(Outcome::Ignored, now);
        f.learn(Outcome::Failed, now);
        assert_eq!(asked(&mut f, now), None);
        assert_eq!(asked(&mut f, now + RETRY_AFTER / 2), None);
        assert!(
            asked(&mut f, now + RETRY_AFTER)
                .unwrap()
                .starts_with("http://h/metrics?")
        );
    }

    #[test]
    fn a_path_ending_in_a_slash_is_the_only_candidate() {
        let now = Instant::now();
        let mut f = filter("http://h/metrics/");
        f.learn(Outcome::Ignored, now);
        assert_eq!(asked(&mut f, now), None);
    }

    #[test]
    fn the_filter_in_use_gets_one_more_try_after_a_failure() {
        let now = Instant::now();
        let mut f = filter("http://h/metrics");
        f.learn(Outcome::Filtered, now);
        f.learn(Outcome::Failed, now);
        assert!(!f.in_use());
        assert!(asked(&mut f, now).unwrap().starts_with("http://h/metrics?"));
        f.learn(Outcome::Filtered, now);
        assert!(f.in_use());
    }

    #[test]
    fn a_disabled_filter_never_asks() {
        let now = Instant::now();
        let mut f = Filter::disabled();
        f.learn(Outcome::Filtered, now);
        assert_eq!(asked(&mut f, now + RETRY_AFTER), None);
        assert!(!f.in_use());
    }
}
