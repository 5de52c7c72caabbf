//! A real Prometheus server (`prometheus` on the PATH, e.g. Debian's
//! /usr/bin/prometheus) on loopback (or another local address), started
//! with a test's configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::{Proc, eventually, free_addr, http_get};

/// A running Prometheus, killed when dropped.
pub struct Prometheus {
    pub addr: SocketAddr,
    pub proc: Proc,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (config, TSDB and log go there) with the
    /// configuration `config` and, if given, the web configuration `web`
    /// (TLS, client certificates). Returns once it is ready: `/-/ready`
    /// answers 200 over plain HTTP, or, with a web config, once it accepts
    /// connections (callers then poll through their TLS client).
    pub async fn start(dir: &Path, config: &str, web: Option<&str>) -> anyhow::Result<Self> {
        Self::start_at(dir, config, web, free_addr()).await
    }

    /// [`Prometheus::start`] listening on `addr`.
    pub async fn start_at(
        dir: &Path,
        config: &str,
        web: Option<&str>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = dir.join("prometheus.log");
        let mut cmd = Command::new(std::env::var("PROMETHEUS_BIN").unwrap_or("prometheus".into()));
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg("--log.level=warn");
        if let Some(web) = web {
            let web_file = dir.join("web.yml");
            std::fs::write(&web_file, web)?;
            cmd.arg(format!("--web.config.file={}", web_file.display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("start prometheus (is it installed? scripts/test installs it)")?;
        let mut server = Prometheus {
            addr,
            proc: Proc { child },
            log,
        };
        let tls = web.is_some();
        let ready = eventually(Duration::from_secs(30), "Prometheus to be ready", || {
            let exited = server.proc.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    bail!("prometheus exited with {status}");
                }
                if tls {
                    return Ok(TcpStream::connect(addr).await.ok().map(|_| ()));
                }
                Ok(match http_get(addr, "/-/ready").await {
                    Ok((200, _)) => Some(()),
                    _ => None,
                })
            }
        })
        .await;
        if let Err(e) = ready {
            bail!("{e:#}\nprometheus log:\n{}", server.log_text());
        }
        Ok(server)
    }

    /// What Prometheus logged so far (warnings and errors), for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.proc.child.kill().await;
    }
}
