//! The demo's KEDA-shaped client: it follows every variant through the
//! aggregator's external scaler over gRPC, exactly as KEDA would
//! (`StreamIsActive` pushes, `GetMetrics` polls), and measures how long after
//! a decision changed it saw the change.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use wva_core::snapshot::Decisions;
use wva_core::variants::VariantKey;
use wva_proto::keda::external_scaler_client::ExternalScalerClient;
use wva_proto::keda::{GetMetricsRequest, ScaledObjectRef};

use crate::grpc::keda::{METRIC, NAMESPACE_KEY, VARIANT_KEY};

/// How often the client asks for the metric (KEDA's pollingInterval, shortened).
const POLL: Duration = Duration::from_millis(100);

/// What the client last saw of one variant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub active: Option<bool>,
    pub desired: Option<u32>,
}

/// The client's view of every variant, and the slowest change it saw.
#[derive(Debug, Default)]
pub struct KedaView {
    pub seen: Mutex<BTreeMap<String, Seen>>,
    pub max_lag: Mutex<Option<Duration>>,
}

impl KedaView {
    /// One line for the demo's table.
    pub fn line(&self) -> String {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let rows: Vec<String> = seen
            .iter()
            .map(|(name, s)| {
                let active = match s.active {
                    Some(true) => "active",
                    Some(false) => "inactive",
                    None => "?",
                };
                let desired = s.desired.map_or("?".to_string(), |d| d.to_string());
                format!("{name} {active}, {desired} replicas")
            })
            .collect();
        let lag = self
            .max_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(String::new(), |l| {
                format!(
                    "   slowest change seen {} ms after its decision",
                    l.as_millis()
                )
            });
        format!("KEDA view: {}{lag}", rows.join(" · "))
    }

    fn record_lag(&self, lag: Duration) {
        let mut max = self.max_lag.lock().unwrap_or_else(|p| p.into_inner());
        *max = Some(max.map_or(lag, |m| m.max(lag)));
    }
}

fn reference(variant: &VariantKey) -> ScaledObjectRef {
    ScaledObjectRef {
        name: format!("{}-scaledobject", variant.name),
        namespace: variant.namespace.clone(),
        scaler_metadata: [
            (VARIANT_KEY.to_string(), variant.name.clone()),
            (NAMESPACE_KEY.to_string(), variant.namespace.clone()),
        ]
        .into(),
    }
}

/// Follows `variants` until `stop`; `decisions` tells when each change was
/// made, to measure how late the client saw it.
pub async fn follow(
    grpc: SocketAddr,
    variants: Vec<VariantKey>,
    decisions: watch::Receiver<Decisions>,
    view: Arc<KedaView>,
    stop: CancellationToken,
) {
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .expect("a valid URL")
        .connect_lazy();
    let changed_at = Arc::new(Mutex::new(HashMap::<VariantKey, (u32, Instant)>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(track_changes(decisions, Arc::clone(&changed_at)));
    for variant in variants {
        let client = ExternalScalerClient::new(channel.clone());
        tasks.spawn(follow_one(
            client,
            variant,
            Arc::clone(&view),
            Arc::clone(&changed_at),
        ));
    }
    stop.cancelled().await;
    tasks.shutdown().await;
}

/// Notes when each variant's desired value took its current value.
async fn track_changes(
    mut decisions: watch::Receiver<Decisions>,
    changed_at: Arc<Mutex<HashMap<VariantKey, (u32, Instant)>>>,
) {
    loop {
        {
            let current = decisions.borrow_and_update().clone();
            let mut changed = changed_at.lock().unwrap_or_else(|p| p.into_inner());
            for d in current.iter() {
                let entry = changed
                    .entry(d.variant.clone())
                    .or_insert((d.desired_replicas, Instant::now()));
                if entry.0 != d.desired_replicas {
                    *entry = (d.desired_replicas, Instant::now());
                }
            }
        }
        if decisions.changed().await.is_err() {
            return;
        }
    }
}

async fn follow_one(
    mut client: ExternalScalerClient<Channel>,
    variant: VariantKey,
    view: Arc<KedaView>,
    changed_at: Arc<Mutex<HashMap<VariantKey, (u32, Instant)>>>,
) {
    let set = |update: &dyn Fn(&mut Seen)| {
        let mut seen = view.seen.lock().unwrap_or_else(|p| p.into_inner());
        update(seen.entry(variant.name.clone()).or_default());
    };
    let lag_of = |desired: u32| {
        let changed = changed_at.lock().unwrap_or_else(|p| p.into_inner());
        changed
            .get(&variant)
            .filter(|(value, _)| *value == desired)
            .map(|(_, at)| at.elapsed())
    };
    // Until the aggregator has decided for the variant, it answers NOT_FOUND.
    let mut active = loop {
        if let Ok(stream) = client.stream_is_active(reference(&variant)).await {
            break stream.into_inner();
        }
        tokio::time::sleep(POLL).await;
    };
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            pushed = active.message() => match pushed {
                Ok(Some(answer)) => set(&|s| s.active = Some(answer.result)),
                _ => return,
            },
            _ = poll.tick() => {
                let request = GetMetricsRequest {
                    scaled_object_ref: Some(reference(&variant)),
                    metric_name: METRIC.into(),
                };
                let Ok(answer) = client.get_metrics(request).await else { continue };
                let Some(value) = answer.into_inner().metric_values.first().cloned() else { continue };
                let desired = u32::try_from(value.metric_value).unwrap_or(0);
                let before = view.seen.lock().unwrap_or_else(|p| p.into_inner())
                    .get(&variant.name).and_then(|s| s.desired);
                if before.is_some_and(|b| b != desired)
                    && let Some(lag) = lag_of(desired)
                {
                    view.record_lag(lag);
                }
                set(&|s| s.desired = Some(desired));
            }
        }
    }
}
