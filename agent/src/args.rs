//! Command line and environment of `wva-agent`.
//!
//! Every flag has an environment fallback so the admission webhook can inject
//! the sidecar with `env` entries only (flag > env > default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::Uri;
use wva_proto::v1::Role;

use crate::signal_spec::SignalSpec;

/// Shortest and longest scrape interval the agent accepts, from the command
/// line or from the aggregator.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Scrape interval without `--interval`, and while the target serves whole
/// bodies.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Scrape interval without `--interval` while the target serves filtered
/// bodies: a few KB rendered four times a second cost vLLM less than its
/// whole body once (docs/benchmarks.md, "Exporter cost of a scrape").
pub const FILTERED_INTERVAL: Duration = Duration::from_millis(250);

/// Upper bound of the default scrape timeout (the interval).
const MAX_DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "wva-agent",
    version,
    about = "Scrapes a local vLLM or EPP /metrics and streams its signals to wva-aggregator"
)]
pub struct Args {
    /// URL of the local metrics endpoint, e.g. http://127.0.0.1:8000/metrics
    /// (https is verified against --target-ca or the system roots).
    #[arg(long, env = "WVA_TARGET", value_parser = parse_target)]
    pub target: Uri,

    /// gRPC URL of the aggregator (http:// or https://); several,
    /// comma-separated, get a stream each.
    #[arg(long, env = "WVA_AGGREGATOR", value_parser = parse_aggregator, value_delimiter = ',', required = true)]
    pub aggregator: Vec<Uri>,

    /// Stream to every address each aggregator host resolves to (a headless
    /// Service), re-resolved every 30 s: every aggregator replica then sees
    /// every pod, so a leader failover loses no data.
    #[arg(long, env = "WVA_AGGREGATOR_FAN_OUT", default_value_t = false, action = clap::ArgAction::Set)]
    pub aggregator_fan_out: bool,

    /// Name of the pod this agent runs in.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,

    /// Namespace of the pod.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// VariantAutoscaling (Deployment) the pod belongs to.
    #[arg(long, env = "WVA_VARIANT")]
    pub variant: String,

    /// What the target is.
    #[arg(long, env = "WVA_ROLE", value_enum, default_value_t = RoleArg::Vllm)]
    pub role: RoleArg,

    /// Scrape interval (100ms to 60s); the aggregator may change it
    /// [default: 250ms while the target serves filtered scrapes, else 1s].
    #[arg(long, env = "WVA_INTERVAL", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Ask the target for only the samples the agent reads (`name[]` query
    /// parameters); a target that ignores them is scraped whole.
    #[arg(long, env = "WVA_FILTERED_SCRAPE", default_value_t = true, action = clap::ArgAction::Set)]
    pub filtered_scrape: bool,

    /// Served model the pod is expected to report (repeatable; env: comma list).
    #[arg(
        long = "model",
        value_name = "MODEL",
        env = "WVA_MODELS",
        value_delimiter = ','
    )]
    pub models: Vec<String>,

    /// Named value to forward, computed from the target's series, e.g.
    /// 'queue_depth=sum(redis_key_size{key="jobs"})' (repeatable, at most
    /// 16; env: one per line, as matchers hold commas).
    #[arg(
        long = "signal",
        value_name = "NAME=EXPR",
        env = "WVA_SIGNALS",
        value_delimiter = '\n'
    )]
    pub signals: Vec<SignalSpec>,

    /// Read the --signal values from this second local target (an exporter
    /// sidecar, e.g. http://127.0.0.1:9121/metrics) instead of --target;
    /// for the vllm and epp roles.
    #[arg(long, env = "WVA_SIGNALS_TARGET", value_parser = parse_target)]
    pub signals_target: Option<Uri>,

    /// Accelerator type of the pod, e.g. H100.
    #[arg(long, env = "WVA_ACCELERATOR")]
    pub accelerator: Option<String>,

    /// UID of the pod.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,

    /// Address of the agent's own /metrics, /healthz and /readyz (port 0 picks one).
    #[arg(long, env = "WVA_AGENT_LISTEN", default_value = "0.0.0.0:9400")]
    pub listen: SocketAddr,

    /// Time limit of one scrape [default: the interval, at most 10s].
    #[arg(long, env = "WVA_SCRAPE_TIMEOUT", value_parser = parse_timeout)]
    pub scrape_timeout: Option<Duration>,

    /// Memory for one metrics body: the bytes received and, for a gzip body,
    /// the decoded bytes together (e.g. 4MiB, 512KiB, 1000000).
    #[arg(long, env = "WVA_MAX_BODY_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub max_body_bytes: usize,

    /// Ask the target for a gzip body. Worth it only when the target is not on
    /// loopback; a gzip body is decoded whether asked for or not.
    #[arg(long, env = "WVA_ACCEPT_GZIP")]
    pub accept_gzip: bool,

    /// PEM file with the CA certificates that sign the aggregator's certificate
    /// (https aggregator URL; without it the system roots are used).
    #[arg(long, env = "WVA_TLS_CA", conflicts_with = "tls_ca_pem")]
    pub tls_ca: Option<PathBuf>,

    /// The same CA certificates as PEM text (the injection webhook sets it to
    /// the aggregator's self-made CA).
    #[arg(
        long,
        env = "WVA_TLS_CA_PEM",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub tls_ca_pem: Option<String>,

    /// PEM client certificate presented to the aggregator.
    #[arg(long, env = "WVA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "WVA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Name to verify in the aggregator's certificate [default: the URL's host].
    #[arg(long, env = "WVA_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// File holding a bearer token for the aggregator; re-read at every connect.
    #[arg(long, env = "WVA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// File holding a bearer token for the target (EPP protects its metrics);
    /// re-read at every scrape.
    #[arg(long, env = "WVA_TARGET_TOKEN_FILE")]
    pub target_token_file: Option<PathBuf>,

    /// PEM file with the CA certificates of an https target [default: the system roots].
    #[arg(long, env = "WVA_TARGET_CA")]
    pub target_ca: Option<PathBuf>,

    /// Name to verify in an https target's certificate [default: the URL's host].
    #[arg(long, env = "WVA_TARGET_SERVER_NAME")]
    pub target_server_name: Option<String>,

    /// Accept any certificate from an https target (development only).
    #[arg(long, env = "WVA_TARGET_INSECURE_SKIP_VERIFY")]
    pub target_insecure_skip_verify: bool,
}

/// The scrape interval: the explicit one, else the faster default while the
/// target serves filtered bodies.
pub fn scrape_interval(explicit: Option<Duration>, filtered: bool) -> Duration {
    explicit.unwrap_or(if filtered {
        FILTERED_INTERVAL
    } else {
        DEFAULT_INTERVAL
    })
}

/// The scrape timeout at a given interval: the explicit one, or the interval
/// capped at 10 s, so a hung target costs at most one tick.
pub fn scrape_timeout(explicit: Option<Duration>, interval: Duration) -> Duration {
    explicit.unwrap_or_else(|| interval.min(MAX_DEFAULT_SCRAPE_TIMEOUT))
}

impl Args {
    /// Whether the aggregator URLs ask for TLS (they all use one scheme).
    pub fn aggregator_tls(&self) -> bool {
        self.aggregator
            .first()
            .is_some_and(|u| u.scheme_str() == Some("https"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Vllm,
    Epp,
    /// Any other target: forwards only the --signal values.
    Generic,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Vllm => Role::Vllm,
            RoleArg::Epp => Role::Epp,
            RoleArg::Generic => Role::Generic,
        }
    }
}

fn parse_url(s: &str, schemes: &[&str]) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("invalid URL: {e}"))?;
    match uri.scheme_str() {
        Some(scheme) if schemes.contains(&scheme) => {}
        _ => {
            return Err(format!(
                "URL must start with {}://",
                schemes.join(":// or ")
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("URL has no host".to_owned());
    }
    Ok(uri)
}

fn parse_target(s: &str) -> Result<Uri, String> {
    parse_url(s, &["http", "https"])
}

fn parse_aggregator(s: &str) -> Result<Uri, String> {
    parse_url(s, &["http", "https"])
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "interval must be between {} and {}",
            humantime::format_duration(MIN_INTERVAL),
            humantime::format_duration(MAX_INTERVAL)
        ))
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        Err("scrape timeout must be greater than zero".to_owned())
    } else {
        Ok(d)
    }
}

/// Parses a byte count with an optional binary suffix (`KiB`, `MiB`, `GiB`).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let unit: usize = match suffix.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number of bytes"))?;
    match n.checked_mul(unit) {
        Some(0) => Err("size must be greater than zero".to_owned()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("size {s:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [&str; 11] = [
        "wva-agent",
        "--target",
        "http://127.0.0.1:8000/metrics",
        "--aggregator",
        "http://wva-aggregator:9500",
        "--pod-name",
        "pod-a",
        "--namespace",
        "ns",
        "--variant",
        "llama",
    ];

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(REQUIRED.iter().chain(extra))
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.role, RoleArg::Vllm);
        assert_eq!(args.interval, None, "chosen by what the target serves");
        assert_eq!(
            scrape_interval(args.interval, false),
            Duration::from_secs(1)
        );
        assert_eq!(
            scrape_interval(args.interval, true),
            Duration::from_millis(250)
        );
        assert!(args.filtered_scrape);
        assert_eq!(args.listen, "0.0.0.0:9400".parse().unwrap());
        assert_eq!(args.max_body_bytes, 4 << 20);
        assert_eq!(
            scrape_timeout(args.scrape_timeout, DEFAULT_INTERVAL),
            Duration::from_secs(1)
        );
        assert_eq!(
            scrape_timeout(args.scrape_timeout, Duration::from_secs(30)),
            MAX_DEFAULT_SCRAPE_TIMEOUT
        );
        assert!(!args.aggregator_tls());
    }

    #[test]
    fn repeated_models_and_explicit_values() {
        let args = parse(&[
            "--model",
            "a",
            "--model",
            "b,c",
            "--role",
            "epp",
            "--interval",
            "250ms",
            "--scrape-timeout",
            "2s",
            "--max-body-bytes",
            "512KiB",
            "--filtered-scrape",
            "false",
        ])
        .unwrap();
        assert!(!args.filtered_scrape);
        assert_eq!(args.models, ["a", "b", "c"]);
        assert_eq!(Role::from(args.role), Role::Epp);
        assert_eq!(args.interval, Some(Duration::from_millis(250)));
        assert_eq!(
            scrape_interval(args.interval, false),
            Duration::from_millis(250)
        );
        assert_eq!(
            scrape_timeout(args.scrape_timeout, Duration::from_secs(60)),
            Duration::from_secs(2)
        );
        assert_eq!(args.max_body_bytes, 512 << 10);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--interval", "10ms"][..],
            &["--interval", "2m"],
            &["--interval", "soon"],
            &["--scrape-timeout", "0s"],
            &["--max-body-bytes", "12XB"],
            &["--tls-cert", "cert.pem"],
            &["--role", "router"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let with_target = |target| {
            Args::try_parse_from([
                "wva-agent",
                "--target",
                target,
                "--aggregator",
                "http://a:1",
                "--pod-name",
                "p",
                "--namespace",
                "n",
                "--variant",
                "v",
            ])
        };
        let err = with_target("ftp://127.0.0.1:8000/metrics")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("URL must start with http:// or https://"),
            "{err}"
        );
        assert!(with_target("https://127.0.0.1:8443/metrics").is_ok());
    }

    #[test]
    fn signals_repeat_on_the_command_line_and_one_per_line_in_the_environment() {
        let jobs = r#"queue_depth=sum(redis_key_size{db="db0",key="jobs"})"#;
        let args = parse(&["--signal", jobs, "--signal", "busy=max(workers_busy)"]).unwrap();
        let names: Vec<_> = args.signals.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["queue_depth", "busy"]);
        assert_eq!(args.signals[0].matchers.len(), 2, "commas stay inside");

        let bad = parse(&["--signal", "q=count(m)"]).unwrap_err().to_string();
        assert!(
            bad.contains(r#"invalid --signal "q=count(m)": unknown aggregation "count""#),
            "{bad}"
        );
        // The delimiter the environment form is split at applies to flags too.
        let lines = format!("{jobs}\nbusy=max(workers_busy)");
        let args = parse(&["--signal", &lines]).unwrap();
        assert_eq!(args.signals.len(), 2);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("2 Mi"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
