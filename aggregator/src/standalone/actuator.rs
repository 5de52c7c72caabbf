//! The local actuator: a ReplicaSet controller for simulated replicas. It
//! follows each variant's desired replicas by starting and stopping
//! [`replica`](super::replica) pairs, and reports replica counts (current =
//! started, ready = answering `/health`) back to the analysis.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wva_core::decision::Decision;
use wva_core::snapshot::{Decisions, ReplicaCounts, Replicas, Variants};
use wva_core::stabilization::Window;
use wva_core::variants::{Variant, VariantKey};

use super::replica::{self, ReplicaEvent, ReplicaSpec};
use crate::args::LocalActuatorArgs;

/// Annotation with extra `vllm-sim` flags for a variant's replicas (standalone only).
pub const SIM_ARGS_ANNOTATION: &str = "wva.llmd.ai/sim-args";

#[derive(Debug, Clone)]
pub struct ActuatorConfig {
    pub sim_bin: PathBuf,
    pub agent_bin: PathBuf,
    pub cold_start: Duration,
    pub scale_down_stabilization: Duration,
    pub agent_interval: Duration,
    pub initial_replicas: u32,
    pub aggregator_url: String,
}

impl ActuatorConfig {
    /// The configuration the flags describe; fails when a binary is missing.
    pub fn from_args(args: &LocalActuatorArgs, aggregator_url: String) -> anyhow::Result<Self> {
        Ok(ActuatorConfig {
            sim_bin: binary(&args.sim_bin, "vllm-sim")?,
            agent_bin: binary(&args.agent_bin, "wva-agent")?,
            cold_start: args.cold_start,
            scale_down_stabilization: args.scale_down_stabilization,
            agent_interval: args.agent_interval,
            initial_replicas: args.initial_replicas,
            aggregator_url,
        })
    }
}

/// The binary at `flag`, or else the one named `name` beside this executable.
fn binary(flag: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot locate this executable")?
            .with_file_name(name),
    };
    if !path.is_file() {
        anyhow::bail!(
            "{name} binary not found at {} (build the workspace with `cargo build --workspace --bins`, or pass its path)",
            path.display()
        );
    }
    Ok(path)
}

/// A ready replica that takes requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub variant: VariantKey,
    pub model: String,
    pub pod: String,
    pub addr: SocketAddr,
}

pub type Endpoints = Arc<Vec<Endpoint>>;

struct Slot {
    pod: String,
    index: u32,
    stop: Option<oneshot::Sender<()>>,
    ready_at: Option<SocketAddr>,
}

pub struct LocalActuator {
    config: ActuatorConfig,
    slots: BTreeMap<VariantKey, Vec<Slot>>,
    next_index: HashMap<VariantKey, u32>,
    stabilizers: HashMap<VariantKey, Window>,
    tasks: JoinSet<()>,
    events_tx: replica::Events<VariantKey>,
    events_rx: mpsc::Receiver<(VariantKey, ReplicaEvent)>,
    counts: watch::Sender<Replicas>,
    endpoints: watch::Sender<Endpoints>,
}

impl LocalActuator {
    pub fn new(config: ActuatorConfig) -> Self {
        let (events_tx, events_rx) = mpsc::channel(256);
        LocalActuator {
            config,
            slots: BTreeMap::new(),
            next_index: HashMap::new(),
            stabilizers: HashMap::new(),
            tasks: JoinSet::new(),
            events_tx,
            events_rx,
            counts: watch::channel(Replicas::default()).0,
            endpoints: watch::channel(Endpoints::default()).0,
        }
    }

    pub fn counts(&self) -> watch::Receiver<Replicas> {
        self.counts.subscribe()
    }

    pub fn endpoints(&self) -> watch::Receiver<Endpoints> {
        self.endpoints.subscribe()
    }

    /// Follows the decisions until shutdown, then stops every replica.
    pub async fn run(
        mut self,
        mut variants: watch::Receiver<Variants>,
        mut decisions: watch::Receiver<Decisions>,
        shutdown: CancellationToken,
    ) {
        // Re-evaluates the stabilization window even when no decision arrives.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let current_variants = variants.borrow_and_update().clone();
            let current_decisions = decisions.borrow_and_update().clone();
            self.reconcile(&current_variants, &current_decisions, Instant::now());
            self.publish(&current_variants);
            tokio::select! {
                _ = tick.tick() => {}
                r = variants.changed() => if r.is_err() { break },
                r = decisions.changed() => if r.is_err() { break },
                Some((key, event)) = self.events_rx.recv() => self.handle(key, event),
                _ = shutdown.cancelled() => break,
            }
        }
        self.stop_all().await;
    }

    fn reconcile(&mut self, variants: &[Variant], decisions: &[Decision], now: Instant) {
        // A decision is acted on only when it was computed from the replica
        // count we have now: one made before our last change is stale, and
        // the analysis runs again as soon as the new count is published.
        let desired: HashMap<&VariantKey, (u32, u32)> = decisions
            .iter()
            .map(|d| (&d.variant, (d.desired_replicas, d.current_replicas)))
            .collect();
        let live: Vec<VariantKey> = variants.iter().map(|v| v.key()).collect();
        let gone: Vec<VariantKey> = self
            .slots
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for key in gone {
            info!(variant = %key, "variant removed; stopping its replicas");
            self.stabilizers.remove(&key);
            for mut slot in self.slots.remove(&key).unwrap_or_default() {
                slot.stop.take();
            }
        }
        // A workload scaled on a signal runs no simulated vLLM: its pods are
        // whatever the operator runs, counted from their agents.
        for va in variants.iter().filter(|va| va.signal.is_none()) {
            let key = va.key();
            let Some(slots) = self.slots.get(&key) else {
                // A variant seen for the first time starts at its initial size.
                self.slots.insert(key.clone(), Vec::new());
                let want = self.config.initial_replicas;
                info!(variant = %key, replicas = want, "new variant; starting its initial replicas");
                for _ in 0..want {
                    self.start(va);
                }
                continue;
            };
            let have = slots.len() as u32;
            let want = match desired.get(&key) {
                Some(&(want, seen)) if seen == have => self
                    .stabilizers
                    .entry(key.clone())
                    .or_default()
                    .stabilize(now, self.config.scale_down_stabilization, want, have),
                _ => have,
            };
            if want > have {
                info!(variant = %key, from = have, to = want, "starting replicas");
                for _ in have..want {
                    self.start(va);
                }
            } else if want < have {
                info!(variant = %key, from = have, to = want, "stopping replicas");
                let slots = self.slots.get_mut(&key).expect("entry exists");
                // Like a ReplicaSet: remove not-ready replicas first, then the newest.
                slots.sort_by_key(|s| (s.ready_at.is_some(), s.index));
                for mut slot in slots.drain(..(have - want) as usize) {
                    slot.stop.take();
                }
                slots.sort_by_key(|s| s.index);
            }
        }
    }

    fn start(&mut self, va: &Variant) {
        let key = va.key();
        let index = self.next_index.entry(key.clone()).or_insert(0);
        *index += 1;
        let pod = format!("{}-{}", va.target.name, index);
        let spec = ReplicaSpec {
            pod: pod.clone(),
            namespace: va.namespace.clone(),
            deployment: va.target.name.clone(),
            model: va.model_id.clone(),
            accelerator: va.accelerator.clone(),
            sim_bin: self.config.sim_bin.clone(),
            agent_bin: self.config.agent_bin.clone(),
            sim_args: sim_args(va),
            cold_start: self.config.cold_start,
            agent_interval: self.config.agent_interval,
            aggregator_url: self.config.aggregator_url.clone(),
            seed: u64::from(*index),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        self.tasks.spawn(replica::run(
            spec,
            key.clone(),
            self.events_tx.clone(),
            stop_rx,
        ));
        self.slots.entry(key).or_default().push(Slot {
            pod,
            index: *index,
            stop: Some(stop_tx),
            ready_at: None,
        });
    }

    fn handle(&mut self, key: VariantKey, event: ReplicaEvent) {
        let Some(slots) = self.slots.get_mut(&key) else {
            return;
        };
        match event {
            ReplicaEvent::Ready { pod, addr } => {
                if let Some(slot) = slots.iter_mut().find(|s| s.pod == pod) {
                    info!(variant = %key, %pod, %addr, "replica ready");
                    slot.ready_at = Some(addr);
                }
            }
            ReplicaEvent::Exited { pod, reason } => {
                if let Some(at) = slots.iter().position(|s| s.pod == pod) {
                    warn!(variant = %key, %pod, %reason, "replica failed; it will be replaced");
                    slots.remove(at);
                }
            }
        }
    }

    fn publish(&self, variants: &[Variant]) {
        let mut counts = HashMap::with_capacity(self.slots.len());
        let mut endpoints = Vec::new();
        for va in variants.iter().filter(|va| va.signal.is_none()) {
            let key = va.key();
            let slots = self.slots.get(&key).map(Vec::as_slice).unwrap_or_default();
            let ready: Vec<&Slot> = slots.iter().filter(|s| s.ready_at.is_some()).collect();
            counts.insert(
                key.clone(),
                ReplicaCounts {
                    current: slots.len() as u32,
                    ready: ready.len() as u32,
                    // The local actuator sets any count, zero included.
                    floor: 0,
                    ceiling: None,
                },
            );
            endpoints.extend(ready.iter().filter_map(|s| {
                Some(Endpoint {
                    variant: key.clone(),
                    model: va.model_id.clone(),
                    pod: s.pod.clone(),
                    addr: s.ready_at?,
                })
            }));
        }
        self.counts.send_if_modified(|old| {
            let changed = **old != counts;
            if changed {
                *old = Arc::new(counts);
            }
            changed
        });
        self.endpoints.send_if_modified(|old| {
            let changed = **old != endpoints;
            if changed {
                *old = Arc::new(endpoints);
            }
            changed
        });
    }

    async fn stop_all(mut self) {
        for slot in self.slots.values_mut().flatten() {
            slot.stop.take();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Extra simulator flags from the variant's annotation, split on whitespace.
fn sim_args(va: &Variant) -> Vec<String> {
    va.annotations
        .get(SIM_ARGS_ANNOTATION)
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}
