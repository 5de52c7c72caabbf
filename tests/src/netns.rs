//! A host of its own for a test: a network namespace joined to the test's
//! by a veth pair, so the link between them can be cut the way a network
//! partition cuts it (packets vanish; nothing is refused or reset).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context, bail};
use tokio::process::Command;

/// Hosts made so far by this test process, numbering their names and subnets.
static MADE: AtomicU8 = AtomicU8::new(0);

/// A network namespace with one link to the test's namespace: `outside` is
/// the test's end, `inside` the host's. Removed when dropped.
pub struct Host {
    pub name: String,
    link: String,
    pub outside: Ipv4Addr,
    pub inside: Ipv4Addr,
}

impl Host {
    pub async fn new() -> anyhow::Result<Host> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 100_000;
        let host = Host {
            name: format!("wva-host-{id}-{n}"),
            // Interface names are at most 15 bytes.
            link: format!("wvh{id}o{n}"),
            outside: Ipv4Addr::new(10, 213, n, 1),
            inside: Ipv4Addr::new(10, 213, n, 2),
        };
        let peer = format!("wvh{id}i{n}");
        ip(&["netns", "add", &host.name]).await?;
        ip(&[
            "link", "add", &host.link, "type", "veth", "peer", "name", &peer,
        ])
        .await?;
        ip(&["link", "set", &peer, "netns", &host.name]).await?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", host.outside),
            "dev",
            &host.link,
        ])
        .await?;
        ip(&["link", "set", &host.link, "up"]).await?;
        let inside = format!("{}/30", host.inside);
        for step in [
            vec!["addr", "add", inside.as_str(), "dev", peer.as_str()],
            vec!["link", "set", peer.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut args = vec!["netns", "exec", host.name.as_str(), "ip"];
            args.extend(step);
            ip(&args).await?;
        }
        Ok(host)
    }

    /// Cuts the link: from now on every packet between the two is lost.
    pub async fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.link, "down"]).await
    }

    /// Restores the link.
    pub async fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.link, "up"]).await
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so the pair.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .await
        .context("run ip (Debian: iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
