//! The subcommands: ask the client, format, write. Streams run until the
//! server ends them (an error) or Ctrl-C (success).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use wva_proto::v1::{DecisionFilter, TapRequest};

use crate::args::{Cli, Command, Output};
use crate::client::Client;
use crate::error::Result;
use crate::events::{Tracker, event_json, event_line};
use crate::{format, json};

/// Moves the cursor home and clears the screen, so each `top` frame
/// replaces the last.
const CLEAR: &str = "\x1b[H\x1b[2J";

pub async fn run(cli: Cli) -> Result<()> {
    let client = Client::connect(&cli.connection).await?;
    match cli.command {
        Command::Get { filter, output } => get(&client, filter.to_proto(), output).await,
        Command::Watch { filter, output } => {
            until_interrupted(watch(&client, filter.to_proto(), output)).await
        }
        Command::Top { filter, once } => {
            until_interrupted(top(&client, filter.to_proto(), once)).await
        }
        Command::Tap {
            pod,
            namespace,
            output,
        } => until_interrupted(tap(&client, TapRequest { namespace, pod }, output)).await,
    }
}

/// Runs a stream until it fails or the user presses Ctrl-C, which is how a
/// stream is meant to end.
async fn until_interrupted(stream: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::select! {
        result = stream => result,
        Ok(()) = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn get(client: &Client, filter: DecisionFilter, output: Output) -> Result<()> {
    let snapshot = client.get(filter.clone()).await?;
    if let Some(text) = format::leadership_note(None, snapshot.leading) {
        note(text);
    }
    match output {
        Output::Json => {
            let text = serde_json::to_string_pretty(&json::Snapshot::from(&snapshot))?;
            print(&format!("{text}\n"))
        }
        Output::Table if snapshot.decisions.is_empty() => {
            note(&format::no_decisions(&filter));
            Ok(())
        }
        Output::Table => print(&format::decisions_table(&snapshot)),
    }
}

async fn watch(client: &Client, filter: DecisionFilter, output: Output) -> Result<()> {
    let mut stream = client.watch(filter.clone()).await?;
    let mut tracker = Tracker::default();
    let mut leading = None;
    loop {
        let snapshot = client.next(&mut stream).await?;
        if leading.is_none() && snapshot.decisions.is_empty() && output == Output::Table {
            note(&format!(
                "{}; waiting for changes",
                format::no_decisions(&filter)
            ));
        }
        if let Some(text) = format::leadership_note(leading, snapshot.leading) {
            note(text);
        }
        leading = Some(snapshot.leading);
        let mut text = String::new();
        for event in tracker.update(&snapshot, snapshot.at_ms) {
            let line = match output {
                Output::Table => event_line(&event),
                Output::Json => event_json(&event)?,
            };
            text.push_str(&line);
            text.push('\n');
        }
        if !text.is_empty() {
            print(&text)?;
        }
    }
}

async fn top(client: &Client, filter: DecisionFilter, once: bool) -> Result<()> {
    let mut stream = client.watch(filter).await?;
    // Redrawing in place only makes sense on a screen; a pipe or file gets
    // the frames one after another.
    let terminal = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let snapshot = client.next(&mut stream).await?;
        let frame = format::top_frame(&snapshot, client.server(), now_ms());
        let separator = match (terminal, first) {
            (true, _) => CLEAR,
            (false, true) => "",
            (false, false) => "\n",
        };
        print(&format!("{separator}{frame}"))?;
        if once {
            return Ok(());
        }
        first = false;
    }
}

async fn tap(client: &Client, request: TapRequest, output: Output) -> Result<()> {
    let mut stream = client.tap(request).await?;
    loop {
        let sample = client.next(&mut stream).await?;
        let line = match output {
            Output::Table => format::sample_line(&sample),
            Output::Json => serde_json::to_string(&json::PodSample::from(&sample))?,
        };
        print(&format!("{line}\n"))?;
    }
}

/// Writes and flushes at once, so a reader of a pipe sees each event when
/// it happens.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A remark for the person at the terminal, kept off stdout so scripts
/// reading stdout see only results.
fn note(text: &str) {
    // Nothing useful is left to do if stderr is gone.
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
