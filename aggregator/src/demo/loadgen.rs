//! Open-loop load generator for the demo: Poisson arrivals at a rate that
//! follows a profile, each request sent to the ready replica with the fewest
//! requests in flight (the way an endpoint picker balances a pool), streamed
//! so each request's time to first token is measured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wva_core::variants::VariantKey;

use super::trace::Profile;
use crate::standalone::actuator::Endpoints;
use crate::standalone::probe::{self, HttpClient};

/// Shape of each request.
#[derive(Debug, Clone)]
pub struct RequestShape {
    pub model: String,
    pub prompt_chars: usize,
    pub max_tokens: u32,
}

/// Live counters the dashboard reads.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    in_flight: Mutex<HashMap<SocketAddr, u32>>,
    sent_per_variant: Mutex<HashMap<VariantKey, u64>>,
    /// Time to first token of every completed request, in seconds.
    ttft: Mutex<Vec<f64>>,
}

impl LoadStats {
    pub fn in_flight(&self) -> u32 {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Requests sent to each variant so far.
    pub fn sent_per_variant(&self) -> HashMap<VariantKey, u64> {
        self.sent_per_variant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `q` quantile (0–1) of the times to first token so far.
    pub fn ttft_quantile(&self, q: f64) -> Option<Duration> {
        let mut all = self.ttft.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.sort_by(f64::total_cmp);
        let last = all.len().checked_sub(1)?;
        let at = ((last as f64) * q).round() as usize;
        Some(Duration::from_secs_f64(all[at.min(last)]))
    }

    /// Picks the endpoint with the fewest requests in flight and counts one more.
    fn acquire(&self, endpoints: &Endpoints) -> Option<(SocketAddr, VariantKey)> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let best = endpoints
            .iter()
            .min_by_key(|e| in_flight.get(&e.addr).copied().unwrap_or(0))?;
        *in_flight.entry(best.addr).or_default() += 1;
        *self
            .sent_per_variant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(best.variant.clone())
            .or_default() += 1;
        Some((best.addr, best.variant.clone()))
    }

    fn release(&self, addr: SocketAddr) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&addr) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Bound on concurrent requests, so an overloaded demo stays bounded.
const MAX_IN_FLIGHT: u32 = 4096;

/// Sends load following `profile` until it ends or `shutdown`.
pub async fn run(
    profile: Profile,
    shape: RequestShape,
    endpoints: watch::Receiver<Endpoints>,
    stats: Arc<LoadStats>,
    seed: u64,
    shutdown: CancellationToken,
) {
    let client = probe::client();
    let body = Bytes::from(
        serde_json::json!({
            "model": shape.model,
            "prompt": "x".repeat(shape.prompt_chars),
            "max_tokens": shape.max_tokens,
            "stream": true,
        })
        .to_string(),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let start = tokio::time::Instant::now();
    loop {
        let t = start.elapsed().as_secs_f64();
        if t >= profile.duration() {
            return;
        }
        let rate = profile.rate_at(t);
        // Idle phases re-check the profile every 100 ms.
        let gap = if rate <= 0.0 {
            Duration::from_millis(100)
        } else {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            Duration::from_secs_f64(-u.ln() / rate).min(Duration::from_secs(1))
        };
        tokio::select! {
            _ = tokio::time::sleep(gap) => {}
            _ = shutdown.cancelled() => return,
        }
        if rate <= 0.0 || stats.in_flight() >= MAX_IN_FLIGHT {
            continue;
        }
        let current = endpoints.borrow().clone();
        let Some((addr, _)) = stats.acquire(&current) else {
            continue;
        };
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let (client, body, stats) = (client.clone(), body.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            send(&client, addr, body, &stats).await;
            stats.release(addr);
        });
    }
}

async fn send(client: &HttpClient, addr: SocketAddr, body: Bytes, stats: &LoadStats) {
    let request = Request::post(format!("http://{addr}/v1/completions"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body));
    let Ok(request) = request else { return };
    let sent = Instant::now();
    let counter = match client.request(request).await {
        Ok(response) if response.status().is_success() => {
            let mut body = response.into_body();
            // The first streamed chunk carries the first token.
            let first = body.frame().await;
            let ttft = sent.elapsed().as_secs_f64();
            let complete = match first {
                Some(Ok(_)) => body.collect().await.is_ok(),
                _ => false,
            };
            if complete {
                stats
                    .ttft
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(ttft);
                &stats.completed
            } else {
                &stats.failed
            }
        }
        Ok(response) if response.status() == http::StatusCode::TOO_MANY_REQUESTS => &stats.rejected,
        _ => &stats.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttft_quantiles_pick_the_nearest_rank() {
        let stats = LoadStats::default();
        assert_eq!(stats.ttft_quantile(0.95), None);
        *stats.ttft.lock().unwrap() = (1..=100).rev().map(f64::from).collect();
        assert_eq!(stats.ttft_quantile(0.95), Some(Duration::from_secs(95)));
        assert_eq!(stats.ttft_quantile(0.0), Some(Duration::from_secs(1)));
        assert_eq!(stats.ttft_quantile(1.0), Some(Duration::from_secs(100)));
    }
}
