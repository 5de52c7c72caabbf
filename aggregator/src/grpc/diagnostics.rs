//! The `wva.v1.Diagnostics` service: decisions as they are made, and the
//! raw samples of one pod, for operators (`wvactl`).
//!
//! Diagnostics never slow ingest: decisions are read from the channel the
//! analysis already publishes to, each watcher has a bounded backlog, and a
//! watcher that falls behind is cut off with RESOURCE_EXHAUSTED. Samples are
//! copied for a tap only while someone taps that pod; otherwise ingest pays
//! one atomic load per sample.

use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use wva_core::analysis::saturation::is_saturated;
use wva_core::decision::Decision;
use wva_core::snapshot::Decisions;
use wva_core::store::{PodKey, PodStore};
use wva_proto::v1::diagnostics_server::Diagnostics;
use wva_proto::v1::{
    DecisionFilter, DecisionSnapshot, ModelSaturation, PodInput, PodSample, Role, TapRequest,
    VariantDecision,
};

use super::taps::{TAP_BACKLOG, Taps};

/// Analyses a watcher may fall behind before it is cut off.
pub const WATCH_BACKLOG: usize = 32;
/// Watches and taps open at once, over all clients.
pub const MAX_STREAMS: usize = 64;

pub struct DiagnosticsService {
    decisions: watch::Receiver<Decisions>,
    leading: watch::Receiver<bool>,
    store: Arc<PodStore>,
    taps: Arc<Taps>,
    /// One permit per open watch or tap.
    streams: Arc<Semaphore>,
}

impl DiagnosticsService {
    pub fn new(
        decisions: watch::Receiver<Decisions>,
        leading: watch::Receiver<bool>,
        store: Arc<PodStore>,
        taps: Arc<Taps>,
    ) -> Self {
        DiagnosticsService {
            decisions,
            leading,
            store,
            taps,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// A place for one more watch or tap, if any is free.
    fn open_stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_STREAMS} diagnostics streams are open on this aggregator; retry later"
            ))
        })
    }
}

fn matches(filter: &DecisionFilter, d: &Decision) -> bool {
    let field = |want: &str, have: &str| want.is_empty() || want == have;
    field(&filter.namespace, &d.variant.namespace)
        && field(&filter.model, &d.model_id)
        && field(&filter.variant, &d.variant.name)
}

/// A decision as the diagnostics protocol carries it.
pub fn to_proto(d: &Decision) -> VariantDecision {
    let config = &d.saturation.config;
    let analysis = &d.saturation.analysis;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    VariantDecision {
        namespace: d.variant.namespace.clone(),
        name: d.variant.name.clone(),
        model_id: d.model_id.clone(),
        accelerator: d.accelerator.clone(),
        cost: d.cost,
        current_replicas: d.current_replicas,
        ready_replicas: d.ready_replicas,
        desired_replicas: d.desired_replicas,
        basis: d.basis.as_str().into(),
        change_reason: d.change_reason.unwrap_or_default().into(),
        data: d.data.as_str().into(),
        data_age_seconds: d.data_age.map(|a| a.as_secs_f64()),
        inputs: d
            .inputs
            .iter()
            .map(|load| PodInput {
                pod: load.pod.to_string(),
                kv_cache_usage: load.kv_cache_usage,
                queue_length: load.requests_waiting,
                saturated: is_saturated(load, config),
            })
            .collect(),
        decided_at_ms: d
            .decided_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
        source_failure: d
            .source_failure
            .as_ref()
            .map(|f| format!("{}: {}", f.source, f.error))
            .unwrap_or_default(),
        limit: d.limit.map(|l| l.as_str()).unwrap_or_default().into(),
        workload: d.workload.as_ref().map(|w| wva_proto::v1::WorkloadSignal {
            signal: w.target.signal.clone(),
            target_per_pod: w.target.target_per_pod,
            across: w.target.across.as_str().into(),
            total: w.total,
            reporting: w.reporting,
        }),
        saturation: Some(ModelSaturation {
            total_replicas: count(analysis.total_replicas),
            saturated_replicas: count(analysis.saturated_replicas),
            avg_spare_kv: analysis.avg_spare_kv,
            avg_spare_queue: analysis.avg_spare_queue,
            should_scale_up: analysis.should_scale_up,
            scale_down_safe: analysis.scale_down_safe,
            kv_cache_threshold: config.kv_cache_threshold,
            queue_length_threshold: config.queue_length_threshold,
            kv_spare_trigger: config.kv_spare_trigger,
            queue_spare_trigger: config.queue_spare_trigger,
        }),
    }
}

fn snapshot(decisions: &Decisions, leading: bool, filter: &DecisionFilter) -> DecisionSnapshot {
    DecisionSnapshot {
        decisions: decisions
            .iter()
            .filter(|d| matches(filter, d))
            .map(to_proto)
            .collect(),
        leading,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `rx` followed, if `cut` fires, by the error it carries.
fn with_cutoff<T: Send + 'static>(
    rx: mpsc::Receiver<Result<T, Status>>,
    cut: oneshot::Receiver<Status>,
) -> BoxStream<T> {
    let ending = futures::stream::once(cut).filter_map(|cut| async move { cut.ok().map(Err) });
    Box::pin(ReceiverStream::new(rx).chain(ending))
}

#[tonic::async_trait]
impl Diagnostics for DiagnosticsService {
    type WatchDecisionsStream = BoxStream<DecisionSnapshot>;

    async fn watch_decisions(
        &self,
        request: Request<DecisionFilter>,
    ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
        let place = self.open_stream()?;
        let filter = request.into_inner();
        let mut decisions = self.decisions.clone();
        let leading = self.leading.clone();
        // Latest wins: one snapshot waits for the client at most, built when
        // it has taken the previous one, so a slow watcher holds one
        // snapshot's memory however far behind it falls.
        let (tx, rx) = mpsc::channel(1);
        let (cut_tx, cut) = oneshot::channel();
        tokio::spawn(async move {
            let _place = place;
            // An analysis the client has not been sent yet; the first
            // snapshot is the current decisions.
            let mut unsent = true;
            let mut behind = 0;
            loop {
                tokio::select! {
                    permit = tx.reserve(), if unsent => {
                        let Ok(permit) = permit else { return };
                        let current = decisions.borrow_and_update().clone();
                        permit.send(Ok(snapshot(&current, *leading.borrow(), &filter)));
                        (unsent, behind) = (false, 0);
                    }
                    changed = decisions.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if unsent {
                            behind += 1;
                        }
                        unsent = true;
                        if behind >= WATCH_BACKLOG {
                            let _ = cut_tx.send(Status::resource_exhausted(format!(
                                "this watcher fell {WATCH_BACKLOG} snapshots behind and was cut off; reconnect to resume from the current decisions"
                            )));
                            return;
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(with_cutoff(rx, cut)))
    }

    async fn get_decisions(
        &self,
        request: Request<DecisionFilter>,
    ) -> Result<Response<DecisionSnapshot>, Status> {
        let current = self.decisions.borrow().clone();
        Ok(Response::new(snapshot(
            &current,
            *self.leading.borrow(),
            request.get_ref(),
        )))
    }

    type TapPodStream = BoxStream<PodSample>;

    async fn tap_pod(
        &self,
        request: Request<TapRequest>,
    ) -> Result<Response<Self::TapPodStream>, Status> {
        let place = self.open_stream()?;
        let TapRequest { namespace, pod } = request.into_inner();
        let key = PodKey { namespace, pod };
        let hello = self
            .store
            .with_pods(|pods| pods.get(&key).map(|e| e.hello.clone()))
            .ok_or_else(|| Status::not_found(format!("no pod {key} streams to this aggregator")))?;
        let mut guard = self.taps.subscribe(key.clone());
        let (tx, rx) = mpsc::channel(TAP_BACKLOG);
        let (cut_tx, cut) = oneshot::channel();
        let role = Role::try_from(hello.role).unwrap_or(Role::Unspecified);
        tokio::spawn(async move {
            let _place = place;
            loop {
                let sample = tokio::select! {
                    received = guard.rx.recv() => received,
                    () = tx.closed() => return,
                };
                let sample = match sample {
                    Ok(sample) => sample,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = cut_tx.send(Status::resource_exhausted(format!(
                            "this tap fell behind by {missed} samples and was cut off; reconnect"
                        )));
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = cut_tx.send(Status::not_found(format!(
                            "pod {key} stopped streaming to this aggregator"
                        )));
                        return;
                    }
                };
                let sample = PodSample {
                    namespace: key.namespace.clone(),
                    pod: key.pod.clone(),
                    variant: hello.variant.clone(),
                    role: role as i32,
                    sample: Some(sample),
                };
                if tx.send(Ok(sample)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(with_cutoff(rx, cut)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use tonic::Code;
    use wva_core::analysis::model::Reason;
    use wva_core::decision::{Basis, DataState};
    use wva_core::testing::decision as for_test;
    use wva_proto::v1::{Hello, Sample};

    use super::*;

    struct World {
        decisions: watch::Sender<Decisions>,
        service: DiagnosticsService,
    }

    impl World {
        /// Watches every decision.
        async fn watch_all(&self) -> BoxStream<DecisionSnapshot> {
            self.service
                .watch_decisions(Request::new(filter("", "", "")))
                .await
                .unwrap()
                .into_inner()
        }

        /// Publishes `n` analyses, desired 0 to `n - 1`, letting watchers
        /// run after each.
        async fn analyse(&self, n: u32) {
            for desired in 0..n {
                self.decisions
                    .send_replace(Arc::new(vec![decision("a", "chat", "m1", desired)]));
                tokio::task::yield_now().await;
            }
        }

        /// Opens a tap on pod `a/pod`.
        async fn tap(&self, pod: &str) -> Result<Response<BoxStream<PodSample>>, Status> {
            let request = TapRequest {
                namespace: "a".into(),
                pod: pod.into(),
            };
            self.service.tap_pod(Request::new(request)).await
        }
    }

    fn world() -> World {
        let (decisions, rx) = watch::channel(Decisions::default());
        World {
            decisions,
            service: DiagnosticsService::new(
                rx,
                watch::channel(true).1,
                Arc::new(PodStore::default()),
                Arc::default(),
            ),
        }
    }

    fn decision(namespace: &str, name: &str, model: &str, desired: u32) -> Decision {
        let basis = Basis::Analysis(Reason::Steady);
        let mut d = for_test(1, desired, basis, DataState::Fresh, 2);
        d.variant = wva_core::variants::VariantKey::new(namespace, name);
        d.model_id = model.into();
        d.inputs[1].kv_cache_usage = 0.95;
        d
    }

    fn filter(namespace: &str, model: &str, variant: &str) -> DecisionFilter {
        DecisionFilter {
            namespace: namespace.into(),
            model: model.into(),
            variant: variant.into(),
        }
    }

    #[tokio::test]
    async fn filters_select_by_namespace_model_and_variant() {
        let w = world();
        w.decisions.send_replace(Arc::new(vec![
            decision("a", "chat", "m1", 1),
            decision("a", "code", "m2", 2),
            decision("b", "chat", "m1", 3),
        ]));
        let names = |f: DecisionFilter| {
            let service = &w.service;
            async move {
                let snapshot = service.get_decisions(Request::new(f)).await.unwrap();
                let snapshot = snapshot.into_inner();
                assert!(snapshot.leading);
                snapshot
                    .decisions
                    .iter()
                    .map(|d| format!("{}/{}", d.namespace, d.name))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            names(filter("", "", "")).await,
            ["a/chat", "a/code", "b/chat"]
        );
        assert_eq!(names(filter("a", "", "")).await, ["a/chat", "a/code"]);
        assert_eq!(names(filter("", "m1", "")).await, ["a/chat", "b/chat"]);
        assert_eq!(names(filter("", "", "code")).await, ["a/code"]);
        assert!(names(filter("c", "", "")).await.is_empty());
    }

    #[test]
    fn a_decision_carries_its_inputs_verdicts_and_spare_capacity() {
        let d = to_proto(&decision("a", "chat", "m1", 2));
        assert_eq!(d.basis, "steady");
        assert_eq!(d.data, "fresh");
        let saturated: Vec<bool> = d.inputs.iter().map(|i| i.saturated).collect();
        assert_eq!(saturated, [false, true], "0.95 is above the 0.80 threshold");
        let saturation = d.saturation.unwrap();
        assert_eq!(saturation.kv_cache_threshold, 0.80);
        assert_eq!(saturation.queue_length_threshold, 5.0);
    }

    #[tokio::test]
    async fn a_watch_starts_with_the_current_decisions_and_follows_each_analysis() {
        let w = world();
        w.decisions
            .send_replace(Arc::new(vec![decision("a", "chat", "m1", 1)]));
        let mut stream = w.watch_all().await;
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.decisions[0].desired_replicas, 1);
        w.decisions
            .send_replace(Arc::new(vec![decision("a", "chat", "m1", 4)]));
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(next.decisions[0].desired_replicas, 4);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_cut_off_with_a_clear_status() {
        let w = world();
        let mut stream = w.watch_all().await;
        // Never read while the analysis publishes far more than the backlog.
        w.analyse(WATCH_BACKLOG as u32 * 4).await;
        let mut received = 0;
        let status = loop {
            match stream.next().await {
                Some(Ok(_)) => received += 1,
                Some(Err(status)) => break status,
                None => panic!("the stream ended without a status"),
            }
        };
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("cut off"), "{status:?}");
        assert!(received <= WATCH_BACKLOG, "held {received} snapshots");
    }

    #[tokio::test]
    async fn a_watcher_that_never_reads_holds_one_snapshot() {
        let w = world();
        let mut stream = w.watch_all().await;
        w.analyse(WATCH_BACKLOG as u32 - 1).await;
        // Behind by all but one analysis: still open, holding only the
        // first snapshot; once read, the latest follows, nothing between.
        let first = stream.next().await.unwrap().unwrap();
        assert!(first.decisions.iter().all(|d| d.desired_replicas == 0));
        let latest = stream.next().await.unwrap().unwrap();
        assert_eq!(
            latest.decisions[0].desired_replicas,
            WATCH_BACKLOG as u32 - 2
        );
    }

    #[tokio::test]
    async fn diagnostics_streams_are_capped() {
        let w = world();
        let watch = || w.service.watch_decisions(Request::new(filter("", "", "")));
        let mut open = Vec::new();
        for _ in 0..MAX_STREAMS {
            open.push(watch().await.unwrap().into_inner());
        }
        let refused = watch().await.err().expect("one stream too many");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused.message().contains("64 diagnostics streams"),
            "{refused:?}"
        );
        assert_eq!(
            w.tap("p").await.err().unwrap().code(),
            Code::ResourceExhausted
        );
        // A client that leaves frees its place.
        open.pop();
        let reopened = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match watch().await {
                    Ok(stream) => break stream,
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await;
        assert!(reopened.is_ok(), "a freed place is reused");
    }

    #[tokio::test]
    async fn a_tap_ends_with_not_found_when_its_pod_stops_streaming() {
        let w = world();
        let key = PodKey {
            namespace: "a".into(),
            pod: "chat-0".into(),
        };
        w.service
            .store
            .register(key.clone(), 1, Hello::default(), Instant::now());
        let mut tap = w.tap("chat-0").await.unwrap().into_inner();
        let sample = Sample {
            seq: 3,
            ..Sample::default()
        };
        w.service.taps.offer(&key, &sample);
        w.service.taps.close(&key);
        let last = tap.next().await.unwrap().unwrap();
        assert_eq!(last.sample.unwrap().seq, 3, "buffered samples come first");
        let ended = tap.next().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), Code::NotFound);
        assert!(
            ended.message().contains("a/chat-0 stopped streaming"),
            "{ended:?}"
        );
        assert!(tap.next().await.is_none());
    }

    #[tokio::test]
    async fn a_tap_streams_the_pods_samples_and_nothing_when_unknown() {
        let w = world();
        let key = PodKey {
            namespace: "a".into(),
            pod: "chat-0".into(),
        };
        let hello = Hello {
            pod: "chat-0".into(),
            namespace: "a".into(),
            variant: "chat".into(),
            role: Role::Vllm as i32,
            ..Hello::default()
        };
        w.service
            .store
            .register(key.clone(), 1, hello, Instant::now());
        let unknown = w.tap("nope").await.err().unwrap();
        assert_eq!(unknown.code(), Code::NotFound);
        assert!(unknown.message().contains("a/nope"), "{unknown:?}");

        let sample = |seq| Sample {
            seq,
            up: true,
            ..Sample::default()
        };
        w.service.taps.offer(&key, &sample(1));
        let mut tap = w.tap("chat-0").await.unwrap().into_inner();
        w.service.taps.offer(&key, &sample(2));
        let got = tap.next().await.unwrap().unwrap();
        assert_eq!(
            got.sample.unwrap().seq,
            2,
            "only samples after the tap opened"
        );
        assert_eq!(
            (got.variant.as_str(), got.role),
            ("chat", Role::Vllm as i32)
        );
        drop(tap);
        // The closed tap is forgotten: ingest is back to one atomic load.
        for _ in 0..100 {
            if w.service.taps.open.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(w.service.taps.open.load(Ordering::Relaxed), 0);
        assert!(w.service.taps.pods.lock().unwrap().is_empty());
    }
}
