//! `wvactl`: the operators' command line for the aggregator's live
//! diagnostics (`wva.v1.Diagnostics`).
#![forbid(unsafe_code)]

mod args;
mod client;
mod commands;
mod error;
mod events;
mod format;
mod json;

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::error::Error;

fn main() -> ExitCode {
    // Bad flags exit 2 with clap's message.
    let cli = Cli::parse();
    wva_agent::tls::install_crypto_provider();
    // One thread: wvactl runs one call at a time.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
        .and_then(|runtime| runtime.block_on(commands::run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`wvactl watch | head`): nothing to report.
        Err(Error::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "wvactl: {e}");
            ExitCode::FAILURE
        }
    }
}
