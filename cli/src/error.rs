//! Everything that ends `wvactl` with exit code 1, worded for the one line
//! it prints (`wvactl: <error>`).

use std::time::Duration;

use wva_agent::tls::TlsError;
use wva_agent::token::TokenError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot reach the aggregator at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("lost the connection to the aggregator at {server}: {reason}")]
    Lost { server: String, reason: String },
    #[error("no answer from the aggregator at {server} within {}", humantime::format_duration(*.timeout))]
    NoAnswer { server: String, timeout: Duration },
    #[error(
        "the server at {server} does not serve wva.v1.Diagnostics{detail} (is it a wva aggregator as new as wvactl?)"
    )]
    Unimplemented { server: String, detail: String },
    /// The aggregator refused the request; its message says why.
    #[error("{0}")]
    Refused(String),
    /// The aggregator ended a stream with an error status (a watcher that
    /// fell behind gets RESOURCE_EXHAUSTED).
    #[error("the aggregator cut the stream: {0}")]
    Cut(String),
    #[error("the aggregator ended the stream (is it shutting down?)")]
    Closed,
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}
