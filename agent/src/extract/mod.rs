//! Reduces one exposition body to the signals of `wva.v1.Sample`.
//!
//! Malformed lines: a target's `/metrics` mixes its own families with
//! foreign ones (Python runtime, HTTP middleware, other libraries), and one
//! broken foreign line must not blind the autoscaler. So:
//!
//! - a malformed line of a family this role reads fails the scrape
//!   ([`ExtractError::Parse`]): for vLLM any `vllm:` line, for an endpoint
//!   picker the queue and pool families; numbers next to a corrupt line
//!   cannot be trusted, and a body cut off mid-line ends up here too;
//! - any other malformed line is skipped and counted
//!   ([`Extractor::skipped_lines`], [`Extractor::first_skipped`]);
//! - a body in which no line is a sample but some line is malformed (an
//!   HTML error page, say) is not an exposition ([`ExtractError::NotExposition`]);
//! - a body without a single family of the role is the wrong target
//!   ([`ExtractError::NoVllmMetrics`], [`ExtractError::NoEppMetrics`]); the
//!   error says what the body held instead ([`Found`]).
//!
//! Operator-configured signals ([`Extractor::with_signals`], see `generic`)
//! are read beside the role's families in the same pass. They never fail a
//! body and are not the role's families: a body holding only them is still
//! the wrong target. In the generic role they are all there is: any
//! exposition is the right target, a malformed line of a signal's family
//! fails it, and a signal no series matched is absent.

mod epp;
mod generic;
mod seen;
mod slots;
mod vllm;

use std::time::Instant;

use wva_proto::v1::{Role, Sample};

use self::seen::Seen;
use self::slots::Overflow;
use crate::parse::{Line, ParseError, Parser};
use crate::signal_spec::SignalSpec;

/// Error for a body the extractor cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("malformed exposition: {0}")]
    Parse(ParseError),
    #[error("malformed exposition: no sample in the body, {0}")]
    NotExposition(ParseError),
    #[error("no vLLM metrics found (is the target a vLLM server?): {0}")]
    NoVllmMetrics(Found),
    #[error("no endpoint-picker metrics found (is the target an EPP?): {0}")]
    NoEppMetrics(Found),
    #[error("the extractor was built for ROLE_UNSPECIFIED")]
    UnspecifiedRole,
    #[error("extraction ran out of time after {lines} lines")]
    Deadline { lines: usize },
    #[error("more than {limit} distinct {what} in one body")]
    TooManyKeys { what: &'static str, limit: usize },
    #[error("a label naming one of the {what} is {len} bytes, over {limit}")]
    KeyTooLong {
        what: &'static str,
        len: usize,
        limit: usize,
    },
}

/// Names of the samples the extractor of `role` reads: a target that honours
/// a filtered request for them serves nothing else.
pub fn read_samples(role: Role) -> Box<dyn Iterator<Item = &'static str>> {
    match role {
        Role::Epp => Box::new(epp::read_samples()),
        Role::Vllm => Box::new(vllm::read_samples()),
        Role::Generic | Role::Unspecified => Box::new(std::iter::empty()),
    }
}

/// How often, in lines, extraction looks at its deadline: reading the
/// clock costs about as much as a few lines.
pub const DEADLINE_CHECK_LINES: usize = 1024;

/// Reusable extractor: keeps its buffers between scrapes so steady-state
/// extraction does not allocate.
#[derive(Debug)]
pub struct Extractor {
    role: Role,
    vllm: vllm::Vllm,
    epp: epp::Epp,
    generic: generic::Generic,
    /// Whether the last `extract` succeeded.
    valid: bool,
    /// Samples of the last body that the extractor does not read.
    unread: usize,
    skipped: usize,
    first_skipped: Option<ParseError>,
}

impl Extractor {
    pub fn new(role: Role) -> Self {
        Self::with_signals(role, Vec::new())
    }

    /// An extractor that also computes `signals` (checked with
    /// [`crate::signal_spec::check_all`]) from every body.
    pub fn with_signals(role: Role, signals: Vec<SignalSpec>) -> Self {
        Extractor {
            role,
            vllm: vllm::Vllm::default(),
            epp: epp::Epp::default(),
            generic: generic::Generic::new(signals),
            valid: false,
            unread: 0,
            skipped: 0,
            first_skipped: None,
        }
    }

    /// Parses one body and replaces the signals of the previous one.
    pub fn extract(&mut self, body: &str) -> Result<(), ExtractError> {
        self.extract_by(body, None)
    }

    /// Like [`Extractor::extract`], giving up at `deadline` (checked every
    /// [`DEADLINE_CHECK_LINES`] lines), so a scrape's timeout covers its
    /// extraction too.
    pub fn extract_within(&mut self, body: &str, deadline: Instant) -> Result<(), ExtractError> {
        self.extract_by(body, Some(deadline))
    }

    fn extract_by(&mut self, body: &str, deadline: Option<Instant>) -> Result<(), ExtractError> {
        self.valid = false;
        self.unread = 0;
        self.skipped = 0;
        self.first_skipped = None;
        self.vllm.clear();
        self.epp.clear();
        self.generic.clear();
        if self.role == Role::Unspecified {
            return Err(ExtractError::UnspecifiedRole);
        }

        let (mut samples, mut own) = (0usize, 0usize);
        let mut lines = Parser::new(body);
        let mut read = 0usize;
        while let Some(line) = lines.next() {
            read += 1;
            if read.is_multiple_of(DEADLINE_CHECK_LINES)
                && deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Err(ExtractError::Deadline { lines: read });
            }
            match line {
                Ok(Line::Sample(sample)) => {
                    samples += 1;
                    let seen = match self.role {
                        Role::Epp => self.epp.observe(&sample),
                        Role::Generic => Seen::Foreign,
                        _ => self.vllm.observe(&sample),
                    };
                    let signal = self.generic.observe(&sample);
                    own += usize::from(seen != Seen::Foreign);
                    self.unread += usize::from(seen != Seen::Read && !signal);
                }
                Ok(_) => {}
                Err(e) if self.reads(leading_name(lines.line_text())) => {
                    return Err(ExtractError::Parse(e));
                }
                Err(e) => {
                    self.skipped += 1;
                    self.first_skipped.get_or_insert(e);
                }
            }
        }

        if let (0, Some(e)) = (samples, self.first_skipped) {
            return Err(ExtractError::NotExposition(e));
        }
        let overflow = match self.role {
            Role::Epp => self.epp.overflow(),
            _ => self.vllm.overflow(),
        };
        match overflow {
            Some((what, Overflow::TooMany)) => {
                return Err(ExtractError::TooManyKeys {
                    what,
                    limit: slots::MAX_KEYS,
                });
            }
            Some((what, Overflow::TooLong(len))) => {
                return Err(ExtractError::KeyTooLong {
                    what,
                    len,
                    limit: slots::MAX_KEY_BYTES,
                });
            }
            None => {}
        }
        if own == 0 && self.role != Role::Generic {
            // The wrong target: worth a second pass to say what it serves.
            let found = Found::in_body(body, self.role == Role::Vllm);
            return Err(match self.role {
                Role::Epp => ExtractError::NoEppMetrics(found),
                _ => ExtractError::NoVllmMetrics(found),
            });
        }
        self.valid = true;
        Ok(())
    }

    /// Writes the signals of the last `extract` into `sample` (`models`,
    /// `epp` and `signals`), reusing the sample's buffers; none after a
    /// failed one.
    pub fn fill(&self, sample: &mut Sample) {
        self.fill_signals(sample);
        match self.role {
            Role::Vllm if self.valid => {
                self.vllm.fill(&mut sample.models);
                sample.epp = None;
            }
            Role::Epp if self.valid => {
                sample.models.clear();
                self.epp
                    .fill(sample.epp.get_or_insert_with(Default::default));
            }
            _ => {
                sample.models.clear();
                sample.epp = None;
            }
        }
    }

    /// Writes only the signals of the last `extract` into `sample.signals`
    /// (none after a failed one), leaving the rest of the sample alone.
    pub fn fill_signals(&self, sample: &mut Sample) {
        if self.valid {
            self.generic.fill(&mut sample.signals);
        } else {
            sample.signals.clear();
        }
    }

    /// Samples of the last body neither among [`read_samples`] nor named by
    /// a signal: a target that serves some ignored a filtered request.
    pub fn unread_samples(&self) -> usize {
        self.unread
    }

    /// Malformed lines skipped by the last `extract` (see the module docs).
    pub fn skipped_lines(&self) -> usize {
        self.skipped
    }

    /// The first of them, for a log line.
    pub fn first_skipped(&self) -> Option<&ParseError> {
        self.first_skipped.as_ref()
    }

    /// Whether a malformed line of family `name` must fail the scrape.
    fn reads(&self, name: &str) -> bool {
        match self.role {
            Role::Epp => epp::reads(name),
            Role::Generic => self.generic.reads(name),
            _ => vllm::is_vllm(name),
        }
    }
}

/// What a body without the role's families holds: its sample count, a few
/// of its names, and a name that mentions vLLM in a form not read (`vllm.`
/// or `U__vllm_3a_…` escapes, say), the likely cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub samples: usize,
    /// Up to [`Found::NAMES`] distinct sample names, in body order.
    pub names: Vec<String>,
    pub vllm_like: Option<String>,
}

impl Found {
    const NAMES: usize = 3;
    /// Names are cut to this many bytes: the error goes into logs and the
    /// sample's error field.
    const NAME_BYTES: usize = 64;

    /// `vllm_like` is looked for when the role is vLLM.
    fn in_body(body: &str, vllm_like: bool) -> Found {
        let mut found = Found {
            samples: 0,
            names: Vec::new(),
            vllm_like: None,
        };
        let cut = |name: &str| name[..name.floor_char_boundary(Self::NAME_BYTES)].to_string();
        for line in Parser::new(body) {
            let Ok(Line::Sample(sample)) = line else {
                continue;
            };
            found.samples += 1;
            if found.names.len() < Self::NAMES && !found.names.iter().any(|n| n == sample.name) {
                found.names.push(cut(sample.name));
            }
            if vllm_like
                && found.vllm_like.is_none()
                && sample
                    .name
                    .as_bytes()
                    .windows(4)
                    .any(|w| w.eq_ignore_ascii_case(b"vllm"))
            {
                found.vllm_like = Some(cut(sample.name));
            }
        }
        found
    }
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.samples == 0 {
            return f.write_str("the body has no samples");
        }
        let plural = if self.samples == 1 { "" } else { "s" };
        write!(
            f,
            "the body has {} sample{plural}, such as {}",
            self.samples,
            self.names.join(", ")
        )?;
        if let Some(name) = &self.vllm_like {
            write!(f, "; {name} mentions vLLM but in a form not read")?;
        }
        Ok(())
    }
}

/// The metric name a (possibly malformed) sample line starts with.
fn leading_name(line: &str) -> &str {
    let line = line.trim_start_matches([' ', '\t']);
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    &line[..end]
}

#[cfg(test)]
mod tests;
