//! Reading the aggregator's /metrics: plain values and one histogram.

use std::fmt;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole response (status line, headers, body) of an HTTP/1.0 GET.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The value of an unlabelled series.
pub fn value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Cumulative bucket counts by upper bound, as exposed.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
}

impl Histogram {
    pub fn parse(body: &str, name: &str) -> Self {
        let bucket = format!("{name}_bucket{{le=\"");
        let mut histogram = Histogram::default();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let (le, count) = rest.split_once("\"} ").unwrap_or_default();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                histogram
                    .buckets
                    .push((le, count.trim().parse().unwrap_or(0.0)));
            } else if let Some(sum) = line.strip_prefix(&format!("{name}_sum ")) {
                histogram.sum = sum.trim().parse().unwrap_or(0.0);
            }
        }
        histogram
    }

    /// What was observed between `earlier` and this reading.
    pub fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(&(le, now), &(_, then))| (le, now - then))
            .collect();
        Histogram {
            buckets,
            sum: self.sum - earlier.sum,
        }
    }

    fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |&(_, c)| c)
    }

    /// The upper bound of the bucket that holds quantile `q`.
    fn quantile_bound(&self, q: f64) -> f64 {
        let rank = q * self.count();
        self.buckets
            .iter()
            .find(|&&(_, c)| c >= rank && c > 0.0)
            .map_or(f64::NAN, |&(le, _)| le)
    }
}

impl fmt::Display for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.count();
        write!(
            f,
            "{count} observations, mean {:.1} ms, p50 ≤ {} ms, p99 ≤ {} ms, max ≤ {} ms",
            1e3 * self.sum / count,
            1e3 * self.quantile_bound(0.5),
            1e3 * self.quantile_bound(0.99),
            1e3 * self.quantile_bound(1.0),
        )
    }
}
