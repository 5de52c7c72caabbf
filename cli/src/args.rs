//! Command line and environment of `wvactl` (flag > env > default).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::transport::Uri;
use wva_proto::v1::DecisionFilter;

#[derive(Debug, Parser)]
#[command(
    name = "wvactl",
    version,
    about = "Live diagnostics of the wva aggregator: its decisions and the signals behind them"
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the aggregator is and how to authenticate to it; the options have
/// the agent's meaning, with a `WVACTL_` environment prefix.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// gRPC URL of the aggregator; https:// turns TLS on.
    #[arg(
        long,
        global = true,
        env = "WVA_SERVER",
        default_value = "http://127.0.0.1:9443",
        value_parser = parse_server
    )]
    pub server: Uri,

    /// PEM file with the CA certificates that sign the aggregator's
    /// certificate [default: the system roots].
    #[arg(long, global = true, env = "WVACTL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate presented to the aggregator.
    #[arg(long, global = true, env = "WVACTL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "WVACTL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Name to verify in the aggregator's certificate [default: the URL's host].
    #[arg(long, global = true, env = "WVACTL_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// File holding a bearer token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "WVACTL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Time limit of connecting (TCP, TLS, HTTP/2) and of the aggregator's
    /// answer (for watch, top and tap: the opening of the stream).
    #[arg(
        long,
        global = true,
        env = "WVACTL_TIMEOUT",
        default_value = "5s",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the current decisions once.
    Get {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print a line whenever a variant's desired replicas, basis or data
    /// state changes (every variant at start).
    Watch {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// A live table of the variants, redrawn at every analysis (Ctrl-C exits).
    Top {
        #[command(flatten)]
        filter: Filter,
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
    },
    /// Print the raw samples one pod's agent sends, as they arrive.
    Tap {
        /// The pod's name.
        pod: String,
        /// The pod's namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Which variants to show; an option left out matches every variant.
#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    /// Only variants in this namespace.
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Only variants serving this model (the VariantAutoscaling's modelID).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Only the VariantAutoscaling of this name.
    #[arg(long)]
    pub variant: Option<String>,
}

impl Filter {
    pub fn to_proto(&self) -> DecisionFilter {
        DecisionFilter {
            namespace: self.namespace.clone().unwrap_or_default(),
            model: self.model.clone().unwrap_or_default(),
            variant: self.variant.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns or one line per event, for people.
    Table,
    /// JSON (one object per line for streams), for scripts.
    Json,
}

fn parse_server(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("URL must start with http:// or https://".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(uri)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_zero() {
        return Err("the timeout must be longer than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wvactl").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere_and_default_to_a_local_aggregator() {
        let cli = parse(&["get", "-n", "llm", "--model", "m"]).unwrap();
        assert_eq!(cli.connection.server.to_string(), "http://127.0.0.1:9443/");
        assert_eq!(cli.connection.timeout, Duration::from_secs(5));
        let Command::Get { filter, output } = cli.command else {
            panic!("not get")
        };
        assert_eq!(output, Output::Table);
        let filter = filter.to_proto();
        assert_eq!(
            (
                filter.namespace.as_str(),
                filter.model.as_str(),
                filter.variant.as_str()
            ),
            ("llm", "m", "")
        );

        let cli = parse(&["watch", "--server", "https://wva:9443", "--timeout", "2s"]).unwrap();
        assert_eq!(cli.connection.server.scheme_str(), Some("https"));
        assert_eq!(cli.connection.timeout, Duration::from_secs(2));

        let cli = parse(&["tap", "chat-0", "-o", "json"]).unwrap();
        let Command::Tap {
            pod,
            namespace,
            output,
        } = cli.command
        else {
            panic!("not tap")
        };
        assert_eq!((pod.as_str(), namespace.as_str()), ("chat-0", "default"));
        assert_eq!(output, Output::Json);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for (args, kind) in [
            (
                &["get", "--server", "127.0.0.1:9443"][..],
                ErrorKind::ValueValidation,
            ),
            (&["get", "--server", "ftp://x"], ErrorKind::ValueValidation),
            (&["get", "--timeout", "0s"], ErrorKind::ValueValidation),
            (&["get", "--output", "yaml"], ErrorKind::InvalidValue),
            (
                &["get", "--tls-cert", "c.pem"],
                ErrorKind::MissingRequiredArgument,
            ),
            (&["tap"], ErrorKind::MissingRequiredArgument),
            (&["top", "--output", "json"], ErrorKind::UnknownArgument),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), kind, "{args:?}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}
