//! A real Redis server (`redis-server`, Debian's package) holding a job
//! queue, and the Prometheus Redis exporter (`prometheus-redis-exporter`)
//! publishing the queue's depth as `redis_key_size{db="db0",key="<key>"}`:
//! the signal queue-scaled workers follow.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::{Proc, eventually, free_addr, metric};

/// The exporter's gauge of a checked key's length (a list's LLEN).
pub const KEY_SIZE: &str = "redis_key_size";

/// A running Redis without persistence, killed when dropped.
pub struct Redis {
    pub addr: SocketAddr,
    pub proc: Proc,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts `redis-server` on a free loopback port in a temporary
    /// directory; returns once it answers PING.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = free_addr();
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start redis-server (is it installed? scripts/test installs it)")?;
        let mut redis = Redis {
            addr,
            proc: Proc { child },
            log,
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(10), "Redis to answer PING", || {
            let exited = redis.proc.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    bail!("redis-server exited with {status}");
                }
                Ok(match command(addr, &["PING"]).await {
                    Ok(Reply::Status(s)) if s == "PONG" => Some(()),
                    _ => None,
                })
            }
        })
        .await;
        if let Err(e) = ready {
            let log = std::fs::read_to_string(&redis.log).unwrap_or_default();
            bail!("{e:#}\nredis log:\n{log}");
        }
        Ok(redis)
    }

    /// A client of this Redis.
    pub fn client(&self) -> RedisClient {
        RedisClient { addr: self.addr }
    }
}

/// The queue's commands, to a Redis at `addr` (one run by the tests, or by
/// the local node in a pod).
#[derive(Debug, Clone, Copy)]
pub struct RedisClient {
    pub addr: SocketAddr,
}

impl RedisClient {
    /// Appends `n` items (`<key>-0`, `<key>-1`, …) to the list `key`;
    /// returns its new length.
    pub async fn push(&self, key: &str, n: usize) -> anyhow::Result<u64> {
        let items: Vec<String> = (0..n).map(|i| format!("{key}-{i}")).collect();
        let mut args = vec!["RPUSH", key];
        args.extend(items.iter().map(String::as_str));
        match command(self.addr, &args).await? {
            Reply::Integer(len) => Ok(len.try_into()?),
            other => bail!("RPUSH answered {other:?}"),
        }
    }

    /// Takes up to `n` items from the head of the list `key`, oldest first.
    pub async fn pop(&self, key: &str, n: usize) -> anyhow::Result<Vec<String>> {
        match command(self.addr, &["LPOP", key, &n.to_string()]).await? {
            Reply::Array(items) => Ok(items),
            // The key does not exist.
            Reply::Nil => Ok(Vec::new()),
            other => bail!("LPOP answered {other:?}"),
        }
    }

    /// The length of the list `key` (0 when it does not exist).
    pub async fn llen(&self, key: &str) -> anyhow::Result<u64> {
        match command(self.addr, &["LLEN", key]).await? {
            Reply::Integer(len) => Ok(len.try_into()?),
            other => bail!("LLEN answered {other:?}"),
        }
    }
}

/// One command to the Redis at `addr` over a connection of its own, in RESP2.
async fn command(addr: SocketAddr, args: &[&str]) -> anyhow::Result<Reply> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let exchange = async {
        let mut stream = BufReader::new(TcpStream::connect(addr).await?);
        stream.write_all(request.as_bytes()).await?;
        read_reply(&mut stream).await
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("Redis did not answer within 5 s")?
}

/// A RESP2 reply, as far as the queue's commands need: arrays hold bulk
/// strings only (LPOP with a count), and nil is a nil array (LPOP of a
/// missing key).
#[derive(Debug)]
enum Reply {
    Status(String),
    Integer(i64),
    Array(Vec<String>),
    Nil,
}

async fn read_reply(stream: &mut BufReader<TcpStream>) -> anyhow::Result<Reply> {
    let line = read_line(stream).await?;
    let (kind, rest) = line.split_at_checked(1).context("empty reply line")?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => bail!("Redis error: {rest}"),
        ":" => Reply::Integer(rest.parse()?),
        "*" if rest.starts_with('-') => Reply::Nil,
        "*" => {
            let mut items = Vec::new();
            for _ in 0..rest.parse::<usize>()? {
                let line = read_line(stream).await?;
                let len: usize = line
                    .strip_prefix('$')
                    .and_then(|len| len.parse().ok())
                    .with_context(|| format!("{line:?} in an array of bulk strings"))?;
                // The payload and its CRLF.
                let mut payload = vec![0; len + 2];
                stream.read_exact(&mut payload).await?;
                payload.truncate(len);
                items.push(String::from_utf8(payload)?);
            }
            Reply::Array(items)
        }
        _ => bail!("unexpected reply line {line:?}"),
    })
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        bail!("Redis closed the connection");
    }
    Ok(line.trim_end_matches("\r\n").to_string())
}

/// A running `prometheus-redis-exporter`, killed when dropped.
pub struct RedisExporter {
    /// Where it serves `/metrics`.
    pub addr: SocketAddr,
    pub proc: Proc,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisExporter {
    /// Starts the exporter on a free loopback port, scraping `redis` and
    /// exporting the length of `key` (in db 0) as [`KEY_SIZE`]; returns
    /// once its `/metrics` shows Redis up.
    pub async fn start(redis: &Redis, key: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = free_addr();
        let log = dir.path().join("exporter.log");
        let child = Command::new("prometheus-redis-exporter")
            .arg(format!("-redis.addr=redis://{}", redis.addr))
            .arg(format!("-web.listen-address={addr}"))
            .arg(format!("-check-single-keys={key}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context(
                "start prometheus-redis-exporter (is it installed? scripts/test installs it)",
            )?;
        let mut exporter = RedisExporter {
            addr,
            proc: Proc { child },
            log,
            _dir: dir,
        };
        // /metrics answers while Redis is unreachable too, with redis_up 0.
        let ready = eventually(
            Duration::from_secs(10),
            "the exporter to reach Redis",
            || {
                let exited = exporter.proc.child.try_wait().ok().flatten();
                async move {
                    if let Some(status) = exited {
                        bail!("prometheus-redis-exporter exited with {status}");
                    }
                    let up = metric(addr, "redis_up").await?;
                    Ok(up.iter().any(|(_, v)| *v == 1.0).then_some(()))
                }
            },
        )
        .await;
        if let Err(e) = ready {
            let log = std::fs::read_to_string(&exporter.log).unwrap_or_default();
            bail!("{e:#}\nexporter log:\n{log}");
        }
        Ok(exporter)
    }

    /// The exported length of `key` in db 0. The exporter reads it at each
    /// scrape, and shows a missing key as 0.
    pub async fn key_size(&self, key: &str) -> anyhow::Result<f64> {
        metric(self.addr, KEY_SIZE)
            .await?
            .into_iter()
            .find(|(labels, _)| {
                labels.get("db").map(String::as_str) == Some("db0")
                    && labels.get("key").map(String::as_str) == Some(key)
            })
            .map(|(_, v)| v)
            .with_context(|| format!("no {KEY_SIZE}{{db=\"db0\",key=\"{key}\"}} sample"))
    }
}
