//! Open-loop load generator for the demo: Poisson arrivals at a rate that
//! follows a profile, each request sent to the ready replica with the fewest
//! requests in flight (the way an endpoint picker balances a pool).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wva_core::variants::VariantKey;

use crate::standalone::actuator::Endpoints;
use crate::standalone::probe::{self, HttpClient};

/// Requests per second over time: linear pieces between (seconds, rate) points.
#[derive(Debug, Clone)]
pub struct Profile {
    pub points: Vec<(f64, f64)>,
}

impl Profile {
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut prev = (0.0, 0.0);
        for &(pt, rate) in &self.points {
            if t <= pt {
                let span = pt - prev.0;
                return if span <= 0.0 {
                    rate
                } else {
                    prev.1 + (rate - prev.1) * (t - prev.0) / span
                };
            }
            prev = (pt, rate);
        }
        prev.1
    }

    pub fn duration(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.0)
    }
}

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
    let counter = match client.request(request).await {
        Ok(response) if response.status().is_success() => {
            let _ = response.into_body().collect().await;
            &stats.completed
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
    fn profile_interpolates_between_points_and_holds_the_last_rate() {
        let p = Profile {
            points: vec![(10.0, 10.0), (20.0, 10.0), (30.0, 0.0)],
        };
        assert_eq!(p.rate_at(0.0), 0.0);
        assert_eq!(p.rate_at(5.0), 5.0);
        assert_eq!(p.rate_at(15.0), 10.0);
        assert_eq!(p.rate_at(25.0), 5.0);
        assert_eq!(p.rate_at(40.0), 0.0);
        assert_eq!(p.duration(), 30.0);
    }
}
