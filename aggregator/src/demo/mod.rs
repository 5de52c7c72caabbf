//! The self-contained demo: the aggregator in standalone mode on its embedded
//! variants, the local actuator running simulated replicas, a load ramp up
//! and down, and a live table of what the autoscaler sees and decides.
pub mod dashboard;
pub mod keda_view;
pub mod loadgen;
pub mod trace;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use dashboard::Frame;
use keda_view::KedaView;
use loadgen::{LoadStats, RequestShape};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trace::Profile;
use wva_core::admission::SharedToken;
use wva_core::config::hybrid::HybridConfig;
use wva_core::config::saturation::SaturationConfigSet;
use wva_core::variants::{VariantKey, parse_variants};

use crate::args::Args;
use crate::grpc::readers::ReaderAuth;
use crate::runtime::{self, Settings, Upstream};
use crate::standalone::actuator::{ActuatorConfig, LocalActuator};

/// The embedded VariantAutoscalings.
pub const VARIANTS: &str = include_str!("variants.yaml");

/// The service class of HYBRID mode when no `--service-class-config` is given.
const SERVICE_CLASS: &str = include_str!("serviceclass.yaml");

/// Longest wait, after the load ends, for the fleet to scale back down.
const SETTLE: Duration = Duration::from_secs(90);

/// The demo's load lasts 100 s, so its scale-down window is 20 s (at speed
/// 1) rather than the HPA's 300 s a real fleet uses.
const SCALE_DOWN_WINDOW_SECONDS: f64 = 20.0;

/// The saturation config of `--saturation-config` when given, else the
/// built-in thresholds and steps with the demo's scale-down window.
fn saturation_config(args: &Args, speed: f64) -> anyhow::Result<SaturationConfigSet> {
    if let Some(path) = &args.saturation_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("saturation config {}", path.display()))?;
        return Ok(SaturationConfigSet::from_yaml_file_contents(&text)?);
    }
    let seconds = (SCALE_DOWN_WINDOW_SECONDS / speed).ceil();
    let data = std::collections::BTreeMap::from([(
        "default".to_string(),
        format!("scaleDownStabilizationSeconds: {seconds}"),
    )]);
    Ok(SaturationConfigSet::from_data(&data)?)
}

/// HYBRID mode's classes: `--service-class-config` when given, else the
/// demo's own.
fn service_classes(args: &Args) -> anyhow::Result<HybridConfig> {
    let text = match &args.service_class_config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("serviceclass config {}", path.display()))?,
        None => SERVICE_CLASS.to_string(),
    };
    Ok(HybridConfig::from_yaml_file_contents(&text)?)
}

/// What the demo saw, for its closing lines and for tests.
#[derive(Debug, Default)]
pub struct Summary {
    pub peak_desired: HashMap<VariantKey, u32>,
    pub final_desired: HashMap<VariantKey, u32>,
    pub completed: u64,
    /// The most requests waiting across the model's replicas at once, as
    /// the analysis saw them (sampled every second).
    pub peak_queue: u64,
    /// Seconds in which requests waited at the replicas (sampled every
    /// second): how long the model ran saturated.
    pub queued_seconds: u64,
    /// The 95th percentile of the requests' time to first token.
    pub ttft_p95: Option<Duration>,
    /// Replicas started (ready or not) summed over the seconds of the run.
    pub replica_seconds: u64,
    /// How often a variant's desired replicas turned from rising to falling
    /// or back while the load ran.
    pub direction_changes: u32,
    /// From the step of the step trace until the ready replicas could serve
    /// the offered load.
    pub time_to_cover: Option<Duration>,
    pub settled: bool,
    /// The slowest change the KEDA-shaped client saw, after its decision.
    pub keda_max_lag: Option<Duration>,
}

pub async fn run(args: &Args, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let variants = parse_variants(VARIANTS).context("embedded demo variants")?;
    let keys: Vec<VariantKey> = variants.iter().map(|v| v.key()).collect();
    let model = variants
        .first()
        .map(|v| v.model_id.clone())
        .context("the demo has no variants")?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = grpc.local_addr()?;
    let metrics_url = format!("http://{}/metrics", http.local_addr()?);

    let speed = args.demo_speed.max(0.1);
    let stop = CancellationToken::new();
    let (_variants_tx, variants_rx) = watch::channel(Arc::new(variants));
    let (_saturation_tx, saturation_rx) = watch::channel(Arc::new(saturation_config(args, speed)?));
    let actuator = LocalActuator::new(ActuatorConfig::from_args(
        &args.local,
        format!("http://{grpc_addr}"),
    )?);
    let settings = Settings {
        default_source: wva_core::sources::SourceKind::Agent,
        legacy_metrics: args.legacy_metrics,
        controller_instance: args.controller_instance.clone(),
        scale_to_zero: false,
        hybrid: args.experimental_proactive_model,
        admission: Arc::new(SharedToken(None)),
        tls: None,
        // The demo listens on loopback only.
        readers: ReaderAuth::default(),
        polled: Vec::new(),
        poll_interval: args.poll_interval,
        webhook_metrics: None,
    };
    let running = runtime::start(
        settings,
        grpc,
        http,
        Upstream::alone(
            variants_rx.clone(),
            saturation_rx,
            watch::channel(Arc::default()).1,
            watch::channel(Arc::new(service_classes(args)?)).1,
            Some(actuator.counts()),
            args.tuning(),
        ),
        stop.clone(),
    );
    let decisions = running.decisions.clone();
    let endpoints = actuator.endpoints();
    let actuator_task = tokio::spawn(actuator.run(variants_rx, decisions.clone(), stop.clone()));

    let trace = args.demo_trace;
    let profile = trace.profile(speed);
    let stats = Arc::new(LoadStats::default());
    let load_task = tokio::spawn(loadgen::run(
        profile.clone(),
        RequestShape {
            model,
            prompt_chars: 2048,
            max_tokens: 128,
        },
        endpoints,
        Arc::clone(&stats),
        7,
        stop.clone(),
    ));

    let keda = Arc::new(KedaView::default());
    let keda_task = tokio::spawn(keda_view::follow(
        grpc_addr,
        keys,
        decisions.clone(),
        Arc::clone(&keda),
        stop.clone(),
    ));
    let view = View {
        metrics_url: &metrics_url,
        grpc: &format!("http://{grpc_addr}"),
        keda: &keda,
    };
    let load = Load {
        profile: &profile,
        step_at: trace.step_at(speed),
        stats: &stats,
    };
    let mut summary = watch_and_draw(&load, decisions, &view, &shutdown).await;
    summary.keda_max_lag = *keda.max_lag.lock().unwrap_or_else(|p| p.into_inner());
    summary.ttft_p95 = stats.ttft_quantile(0.95);

    stop.cancel();
    let _ = keda_task.await;
    let _ = load_task.await;
    let _ = actuator_task.await;
    running.join().await?;
    Ok(summary)
}

/// The load being sent, and what it measures.
struct Load<'a> {
    profile: &'a Profile,
    /// When the step trace's step begins.
    step_at: Option<f64>,
    stats: &'a LoadStats,
}

/// Where the demo's outputs can be seen, for the table's footer.
struct View<'a> {
    metrics_url: &'a str,
    grpc: &'a str,
    keda: &'a KedaView,
}

async fn watch_and_draw(
    load: &Load<'_>,
    decisions: watch::Receiver<wva_core::snapshot::Decisions>,
    view: &View<'_>,
    shutdown: &CancellationToken,
) -> Summary {
    let tty = std::io::stdout().is_terminal();
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_sent: HashMap<VariantKey, u64> = HashMap::new();
    let (profile, stats) = (load.profile, load.stats);
    let mut summary = Summary::default();
    let mut settled_since_load_end = None;
    let mut directions: HashMap<VariantKey, (u32, Option<bool>)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return summary,
        }
        let t = start.elapsed().as_secs_f64();
        let current = decisions.borrow().clone();
        let sent = stats.sent_per_variant();
        let rps: Vec<f64> = current
            .iter()
            .map(|d| {
                let now = sent.get(&d.variant).copied().unwrap_or(0);
                let before = last_sent.get(&d.variant).copied().unwrap_or(0);
                (now - before) as f64
            })
            .collect();
        last_sent = sent;
        for d in current.iter() {
            let peak = summary.peak_desired.entry(d.variant.clone()).or_default();
            *peak = (*peak).max(d.desired_replicas);
            summary
                .final_desired
                .insert(d.variant.clone(), d.desired_replicas);
        }
        let load_over = t >= profile.duration();
        if !load_over {
            summary.direction_changes += direction_changes(&mut directions, &current);
        }
        summary.replica_seconds += current
            .iter()
            .map(|d| u64::from(d.current_replicas))
            .sum::<u64>();
        if let Some(step) = load.step_at
            && t >= step
            && summary.time_to_cover.is_none()
            && covers(&current, profile.rate_at(t))
        {
            summary.time_to_cover = Some(Duration::from_secs_f64(t - step));
        }
        let waiting: f64 = current
            .iter()
            .flat_map(|d| &d.inputs)
            .map(|load| load.requests_waiting)
            .sum();
        summary.peak_queue = summary.peak_queue.max(waiting as u64);
        summary.queued_seconds += u64::from(waiting > 0.0);
        summary.completed = stats.completed.load(Ordering::Relaxed);

        let phase = phase(profile, t);
        let frame = Frame {
            elapsed_s: t,
            phase,
            offered_rps: profile.rate_at(t),
            in_flight: stats.in_flight(),
            completed: summary.completed,
            rejected: stats.rejected.load(Ordering::Relaxed),
            decisions: &current,
            variant_rps: &rps,
            metrics_url: view.metrics_url,
            grpc: view.grpc,
            keda: view.keda.line(),
        };
        let text = dashboard::render(&frame);
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = write!(out, "\x1b[H\x1b[2J{text}");
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();

        if load_over {
            let settled = stats.in_flight() == 0 && is_settled(&current);
            let since = settled_since_load_end.get_or_insert(t);
            if settled {
                summary.settled = true;
                return summary;
            }
            if t - *since > SETTLE.as_secs_f64() {
                return summary;
            }
        }
    }
}

/// Counts the variants whose desired replicas turned direction since the
/// last look; `seen` keeps each one's last value and direction.
fn direction_changes(
    seen: &mut HashMap<VariantKey, (u32, Option<bool>)>,
    decisions: &[wva_core::decision::Decision],
) -> u32 {
    let mut changes = 0;
    for d in decisions {
        let (last, rising) = seen
            .entry(d.variant.clone())
            .or_insert((d.desired_replicas, None));
        if d.desired_replicas != *last {
            let up = d.desired_replicas > *last;
            changes += u32::from(rising.is_some_and(|r| r != up));
            (*last, *rising) = (d.desired_replicas, Some(up));
        }
    }
    changes
}

/// Whether the ready replicas can serve `rate` requests per second.
fn covers(decisions: &[wva_core::decision::Decision], rate: f64) -> bool {
    let capacity: f64 = decisions
        .iter()
        .map(|d| {
            let per = if d.accelerator == "H100" {
                trace::H100_PER_L4
            } else {
                1.0
            };
            f64::from(d.ready_replicas) * per * trace::L4_REPLICA_RPS
        })
        .sum();
    capacity >= rate
}

/// Every variant rests at its floor: the cheapest at 1, the others at 0.
fn is_settled(decisions: &[wva_core::decision::Decision]) -> bool {
    let total: u32 = decisions.iter().map(|d| d.current_replicas).sum();
    !decisions.is_empty()
        && total == 1
        && decisions.iter().all(|d| {
            d.desired_replicas == d.current_replicas && d.ready_replicas == d.current_replicas
        })
}

fn phase(profile: &Profile, t: f64) -> &'static str {
    let (now, later) = (profile.rate_at(t), profile.rate_at(t + 1.0));
    if t >= profile.duration() {
        "cool-down"
    } else if later > now {
        "ramp-up"
    } else if later < now {
        "ramp-down"
    } else if now > 0.0 {
        "steady"
    } else {
        "idle"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wva_core::analysis::model::Reason;
    use wva_core::decision::{Basis, DataState};
    use wva_core::testing::decision;

    fn desired(values: &[u32]) -> u32 {
        let mut seen = HashMap::new();
        values
            .iter()
            .map(|&v| {
                let d = decision(1, v, Basis::Analysis(Reason::Steady), DataState::Fresh, 1);
                direction_changes(&mut seen, &[d])
            })
            .sum()
    }

    #[test]
    fn direction_changes_count_turns_not_steps() {
        assert_eq!(desired(&[1, 1, 3, 5, 5, 7]), 0, "rising only");
        assert_eq!(desired(&[1, 4, 4, 2]), 1, "up, then down");
        assert_eq!(desired(&[3, 2, 4, 1, 1, 5]), 3);
    }

    #[test]
    fn ready_replicas_cover_a_rate_by_their_accelerator() {
        let mut l4 = decision(2, 2, Basis::Analysis(Reason::Steady), DataState::Fresh, 2);
        l4.accelerator = "L4".into();
        let mut h100 = l4.clone();
        h100.accelerator = "H100".into();
        h100.ready_replicas = 1;
        let capacity = 2.0 * trace::L4_REPLICA_RPS + trace::H100_PER_L4 * trace::L4_REPLICA_RPS;
        assert!(covers(&[l4.clone(), h100.clone()], capacity));
        assert!(!covers(&[l4, h100], capacity + 0.1));
    }
}
