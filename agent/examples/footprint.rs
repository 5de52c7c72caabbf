//! Footprint of the agent's per-tick work: scrape a vLLM body over loopback,
//! extract the signals, encode the Sample, repeated back to back.
//!
//! ```text
//! cargo run --release -p wva-agent --example footprint -- --scrapes 2000
//! ```
//!
//! The body is served by a child process (this program with `--serve`), so
//! the numbers are the agent's alone. Reports CPU time per scrape (from
//! `/proc/thread-self/schedstat`, nanoseconds, and `/proc/self/stat`, clock
//! ticks) and resident memory (`VmRSS` after warm-up and at the end, peak
//! `VmHWM`). Linux only.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::Response;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;
use wva_agent::extract::{Extractor, read_samples};
use wva_agent::filter::Filter;
use wva_agent::sampler::Sampler;
use wva_agent::scrape::Scraper;
use wva_agent::telemetry::Telemetry;
use wva_proto::v1::{AgentMessage, Role, agent_message};

const DEFAULT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/metrics/vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom"
);
const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 16 << 20;
/// `/proc/<pid>/stat` counts in USER_HZ, which Linux fixes at 100.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Parser)]
struct Cli {
    /// Exposition to serve.
    #[arg(long, default_value = DEFAULT_FIXTURE)]
    fixture: PathBuf,
    /// Measured scrapes.
    #[arg(long, default_value_t = 1000)]
    scrapes: u32,
    /// Scrapes before measuring, to fill buffers and pools.
    #[arg(long, default_value_t = 100)]
    warmup: u32,
    /// Serve the body uncompressed (vLLM gzips when asked, as the agent does).
    #[arg(long)]
    identity: bool,
    /// Serve only the samples the agent reads, as a target answering its
    /// filtered scrape does.
    #[arg(long)]
    filtered: bool,
    /// Serve the fixture on loopback and print the address (used internally).
    #[arg(long, hide = true)]
    serve: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if cli.serve {
        runtime.block_on(serve(cli))
    } else {
        runtime.block_on(measure(cli))
    }
}

async fn serve(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let mut body = std::fs::read_to_string(&cli.fixture)?;
    if cli.filtered {
        body = filtered(&body);
    }
    let body = body.into_bytes();
    let (body, encoding) = if cli.identity {
        (body, "identity")
    } else {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&body)?;
        (gz.finish()?, "gzip")
    };
    let body = Bytes::from(body);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let body = body.clone();
        let service = service_fn(move |_| {
            let response = Response::builder()
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .header("content-encoding", encoding)
                .body(Full::new(body.clone()));
            async move { Ok::<_, Infallible>(response.expect("static headers")) }
        });
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
    }
}

async fn measure(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Server(
        Command::new(std::env::current_exe()?)
            .arg("--serve")
            .arg("--fixture")
            .arg(&cli.fixture)
            .args(cli.identity.then_some("--identity"))
            .args(cli.filtered.then_some("--filtered"))
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut addr = String::new();
    BufReader::new(server.0.stdout.take().ok_or("no stdout")?).read_line(&mut addr)?;
    let target = format!("http://{}/metrics", addr.trim()).parse()?;

    let result = run_loop(&cli, target).await;
    drop(server);
    let report = result?;

    let fixture_len = std::fs::metadata(&cli.fixture)?.len();
    println!(
        "fixture           {} ({fixture_len} bytes, served {}{})",
        cli.fixture.display(),
        if cli.filtered { "filtered, " } else { "" },
        if cli.identity { "uncompressed" } else { "gzip" }
    );
    println!(
        "scrapes           {} after {} warm-up",
        cli.scrapes, cli.warmup
    );
    println!(
        "cpu per scrape    {:.1} µs (schedstat), {:.1} µs (utime+stime)",
        report.cpu_ns as f64 / 1e3 / f64::from(cli.scrapes),
        report.cpu_ticks as f64 / TICKS_PER_SECOND * 1e6 / f64::from(cli.scrapes)
    );
    println!(
        "wall per scrape   {:.1} µs",
        report.wall.as_secs_f64() * 1e6 / f64::from(cli.scrapes)
    );
    println!("rss after warm-up {}", mib(report.rss_after_warmup));
    println!("rss at end        {}", mib(report.rss_at_end));
    println!("peak rss (VmHWM)  {}", mib(report.peak_rss));
    println!(
        "sample            {} models, {} bytes encoded",
        report.models, report.encoded_len
    );
    Ok(())
}

/// The lines of `body` that are samples the agent reads.
fn filtered(body: &str) -> String {
    let read: Vec<_> = read_samples(Role::Vllm).collect();
    body.lines()
        .filter(|line| read.contains(&line.split(['{', ' ']).next().unwrap_or("")))
        .flat_map(|line| [line, "\n"])
        .collect()
}

/// The serving child, stopped however the measurement ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Report {
    cpu_ns: u64,
    cpu_ticks: u64,
    wall: Duration,
    rss_after_warmup: u64,
    rss_at_end: u64,
    peak_rss: u64,
    models: usize,
    encoded_len: usize,
}

async fn run_loop(cli: &Cli, target: http::Uri) -> Result<Report, Box<dyn std::error::Error>> {
    let scraper = Scraper::new(target, MAX_BODY)?;
    let mut sampler = Sampler::new(
        scraper,
        Extractor::new(Role::Vllm),
        Filter::disabled(),
        Arc::new(Telemetry::new()),
    );
    let mut encoded = Vec::with_capacity(4096);
    let mut tick = async |encoded: &mut Vec<u8>| -> Result<usize, Box<dyn std::error::Error>> {
        let sample = sampler.sample(TIMEOUT).await;
        if !sample.up {
            return Err(format!("scrape failed: {}", sample.error).into());
        }
        let models = sample.models.len();
        encoded.clear();
        AgentMessage {
            kind: Some(agent_message::Kind::Sample(sample)),
        }
        .encode(encoded)?;
        Ok(models)
    };

    for _ in 0..cli.warmup {
        tick(&mut encoded).await?;
    }
    let rss_after_warmup = proc_status_kib("VmRSS")?;
    let (ns0, ticks0, wall0) = (thread_cpu_ns()?, process_cpu_ticks()?, Instant::now());
    let mut models = 0;
    for _ in 0..cli.scrapes {
        models = tick(&mut encoded).await?;
    }
    let (ns1, ticks1, wall) = (thread_cpu_ns()?, process_cpu_ticks()?, wall0.elapsed());
    Ok(Report {
        cpu_ns: ns1 - ns0,
        cpu_ticks: ticks1 - ticks0,
        wall,
        rss_after_warmup,
        rss_at_end: proc_status_kib("VmRSS")?,
        peak_rss: proc_status_kib("VmHWM")?,
        models,
        encoded_len: encoded.len(),
    })
}

/// A `kB` field of `/proc/self/status`.
fn proc_status_kib(field: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| format!("{field} missing in /proc/self/status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// CPU time of this thread, in ns; the current-thread runtime does all the
/// work on it.
fn thread_cpu_ns() -> Result<u64, Box<dyn std::error::Error>> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let first = schedstat
        .split_whitespace()
        .next()
        .ok_or("empty schedstat")?;
    Ok(first.parse()?)
}

/// utime + stime of the process, in clock ticks.
fn process_cpu_ticks() -> Result<u64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name, which may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').ok_or("malformed /proc/self/stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(fields.get(n - 3).ok_or("short /proc/self/stat")?.parse()?)
    };
    Ok(field(14)? + field(15)?)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
