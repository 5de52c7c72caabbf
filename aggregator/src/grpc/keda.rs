//! KEDA's external scaler, served on the aggregator's gRPC port: a
//! ScaledObject with an `external-push` trigger follows one
//! VariantAutoscaling's desired replicas, with no Prometheus in between.
//!
//! The metric is the desired replica count with a target of 1 per replica,
//! so the HPA KEDA manages sets replicas to the decision. The variant is
//! active while its decision is above zero; `StreamIsActive` pushes a change
//! the moment a decision changes it. `StreamMetricSpec` (KEDA 2.21) sends
//! the spec when it opens; the target never changes, so that is all it
//! sends until KEDA closes it or the variant goes.
//!
//! Every replica answers. The leader answers from its own decisions; a
//! follower answers what the leader published in the VariantAutoscaling's
//! status, so answers do not depend on which replica KEDA reaches, and a
//! failover hands over to a replica that analysed the same streams all
//! along.

use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use wva_core::snapshot::{Decisions, Published};
use wva_core::variants::VariantKey;
use wva_proto::keda::external_scaler_server::ExternalScaler;
use wva_proto::keda::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// The trigger metadata naming the VariantAutoscaling to follow.
pub const VARIANT_KEY: &str = "variantAutoscaling";
/// Or the workload scaled on a signal (see `wva_core::workload`).
pub const WORKLOAD_KEY: &str = "workload";
/// Its namespace, when not the ScaledObject's own.
pub const NAMESPACE_KEY: &str = "namespace";
/// The metric KEDA puts into its HPA.
pub const METRIC: &str = "wva-desired-replicas";

/// What the scaler reads: this replica's decisions and leadership, and in a
/// cluster the decisions the leader published.
#[derive(Clone)]
pub struct Scaler {
    pub decisions: watch::Receiver<Decisions>,
    pub leading: watch::Receiver<bool>,
    pub published: Option<watch::Receiver<Published>>,
}

/// The VariantAutoscaling (or workload) a ScaledObject follows.
pub fn variant_of(reference: &ScaledObjectRef) -> Result<VariantKey, Status> {
    let metadata = &reference.scaler_metadata;
    let named = |key| {
        metadata
            .get(key)
            .map(|n: &String| n.trim())
            .filter(|n| !n.is_empty())
    };
    let name = match (named(VARIANT_KEY), named(WORKLOAD_KEY)) {
        (Some(name), None) | (None, Some(name)) => name,
        (Some(_), Some(_)) => {
            return Err(Status::invalid_argument(format!(
                "scalerMetadata sets both {VARIANT_KEY} and {WORKLOAD_KEY}: a ScaledObject follows one"
            )));
        }
        (None, None) => {
            return Err(Status::invalid_argument(format!(
                "scalerMetadata.{VARIANT_KEY} must name the VariantAutoscaling to follow (or {WORKLOAD_KEY} a workload scaled on a signal)"
            )));
        }
    };
    let namespace = metadata
        .get(NAMESPACE_KEY)
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .unwrap_or(&reference.namespace);
    if namespace.is_empty() {
        return Err(Status::invalid_argument(format!(
            "no namespace: the ScaledObject has none and scalerMetadata.{NAMESPACE_KEY} is unset"
        )));
    }
    Ok(VariantKey::new(namespace, name))
}

/// Whether a ScaledObject follows a workload scaled on a signal. Such a
/// workload is declared by annotations KEDA copies into the HPA it makes,
/// and KEDA makes that HPA only once it has the metric's spec: the spec is
/// answered before the workload is known, its values only after.
fn names_workload(reference: &ScaledObjectRef) -> bool {
    reference.scaler_metadata.contains_key(WORKLOAD_KEY)
}

impl Scaler {
    /// The variant's desired replicas as this replica answers them.
    pub fn desired(&self, variant: &VariantKey) -> Result<u32, Status> {
        let own = self
            .decisions
            .borrow()
            .iter()
            .find(|d| d.variant == *variant)
            .map(|d| d.desired_replicas);
        let published = match (&self.published, *self.leading.borrow()) {
            (Some(published), false) => published.borrow().get(variant).copied(),
            _ => None,
        };
        // A follower without a published value yet (a new variant) answers
        // its own, which the same streams produced.
        published.or(own).ok_or_else(|| {
            Status::not_found(format!(
                "no VariantAutoscaling or workload {variant} is known to wva (check scalerMetadata.{VARIANT_KEY} or {WORKLOAD_KEY}, and {NAMESPACE_KEY})"
            ))
        })
    }

    /// Resolves when anything an answer depends on may have changed; never
    /// once the aggregator shuts down.
    async fn changed(&mut self) {
        let published = async {
            match &mut self.published {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(()) = self.decisions.changed() => {}
            Ok(()) = self.leading.changed() => {}
            () = published => {}
        }
    }
}

type Pushed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The one metric: the decision, with a target of 1 per replica.
fn metric_spec() -> GetMetricSpecResponse {
    GetMetricSpecResponse {
        metric_specs: vec![MetricSpec {
            metric_name: METRIC.into(),
            target_size: 1,
            target_size_float: 1.0,
        }],
    }
}

/// Streams `first`, then what `next` makes of the variant's desired
/// replicas each time they may have changed (nothing when it returns
/// `None`), until KEDA closes the stream; ends with the error once the
/// variant is gone. One answer is in flight at most: a stalled KEDA holds
/// no backlog, it reads the latest state when it catches up.
fn follow<T: Send + 'static>(
    mut scaler: Scaler,
    variant: VariantKey,
    first: T,
    mut next: impl FnMut(u32) -> Option<T> + Send + 'static,
) -> Pushed<T> {
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(Ok(first)).expect("a fresh channel has room");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = scaler.changed() => {}
                () = tx.closed() => return,
            }
            match scaler.desired(&variant) {
                Ok(desired) => {
                    if let Some(answer) = next(desired)
                        && tx.send(Ok(answer)).await.is_err()
                    {
                        return;
                    }
                }
                Err(gone) => {
                    let _ = tx.send(Err(gone)).await;
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let variant = variant_of(request.get_ref())?;
        let result = self.desired(&variant)? > 0;
        Ok(Response::new(IsActiveResponse { result }))
    }

    type StreamIsActiveStream = Pushed<IsActiveResponse>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let variant = variant_of(request.get_ref())?;
        let mut last = self.desired(&variant)? > 0;
        let first = IsActiveResponse { result: last };
        let changes = move |desired: u32| {
            let active = desired > 0;
            (active != last).then(|| {
                last = active;
                IsActiveResponse { result: active }
            })
        };
        Ok(Response::new(follow(self.clone(), variant, first, changes)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let variant = variant_of(request.get_ref())?;
        if !names_workload(request.get_ref()) {
            self.desired(&variant)?;
        }
        Ok(Response::new(metric_spec()))
    }

    type StreamMetricSpecStream = Pushed<GetMetricSpecResponse>;

    async fn stream_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let variant = variant_of(request.get_ref())?;
        if let Err(unknown) = self.desired(&variant) {
            if !names_workload(request.get_ref()) {
                return Err(unknown);
            }
            // Not known until KEDA's HPA carries the annotations: the spec,
            // until KEDA closes the stream.
            let spec = tokio_stream::once(Ok(metric_spec())).chain(tokio_stream::pending());
            return Ok(Response::new(Box::pin(spec)));
        }
        let unchanged = |_| None;
        Ok(Response::new(follow(
            self.clone(),
            variant,
            metric_spec(),
            unchanged,
        )))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let reference = request
            .scaled_object_ref
            .ok_or_else(|| Status::invalid_argument("scaledObjectRef is missing"))?;
        let desired = self.desired(&variant_of(&reference)?)?;
        // KEDA asks by the name it gave the metric (with its own prefix).
        let metric_name = if request.metric_name.is_empty() {
            METRIC.to_string()
        } else {
            request.metric_name
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name,
                metric_value: i64::from(desired),
                metric_value_float: f64::from(desired),
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use tokio_stream::StreamExt;
    use tonic::Code;

    use super::*;
    use wva_core::decision::{Basis, DataState};
    use wva_core::testing::decision as for_test;

    struct World {
        decisions: watch::Sender<Decisions>,
        leading: watch::Sender<bool>,
        published: watch::Sender<Published>,
        scaler: Scaler,
    }

    fn world(leading: bool) -> World {
        let (decisions, decisions_rx) = watch::channel(Decisions::default());
        let (leading, leading_rx) = watch::channel(leading);
        let (published, published_rx) = watch::channel(Published::default());
        World {
            decisions,
            leading,
            published,
            scaler: Scaler {
                decisions: decisions_rx,
                leading: leading_rx,
                published: Some(published_rx),
            },
        }
    }

    impl World {
        fn decide(&self, desired: u32) {
            let basis = Basis::Analysis(wva_core::analysis::model::Reason::Steady);
            let decision = for_test(1, desired, basis, DataState::Fresh, 1);
            self.decisions.send_replace(Arc::new(vec![decision]));
        }
        fn publish(&self, desired: u32) {
            let stored = HashMap::from([(VariantKey::new("ns", "va"), desired)]);
            self.published.send_replace(Arc::new(stored));
        }
    }

    fn reference(metadata: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: "chat-so".into(),
            namespace: "ns".into(),
            scaler_metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_metadata_names_the_variant_in_the_scaled_objects_namespace_by_default() {
        let own = variant_of(&reference(&[(VARIANT_KEY, "va")])).unwrap();
        assert_eq!(own, VariantKey::new("ns", "va"));
        let other = variant_of(&reference(&[(VARIANT_KEY, "va"), (NAMESPACE_KEY, "llm")])).unwrap();
        let worker = variant_of(&reference(&[(WORKLOAD_KEY, "worker")])).unwrap();
        assert_eq!(worker, VariantKey::new("ns", "worker"));
        let both = variant_of(&reference(&[(VARIANT_KEY, "va"), (WORKLOAD_KEY, "worker")]));
        assert_eq!(
            both.unwrap_err().message(),
            "scalerMetadata sets both variantAutoscaling and workload: a ScaledObject follows one"
        );
        assert_eq!(other, VariantKey::new("llm", "va"));
        let missing = variant_of(&reference(&[])).unwrap_err();
        assert_eq!(missing.code(), Code::InvalidArgument);
        assert!(
            missing.message().contains("variantAutoscaling"),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn the_leader_answers_its_own_decision_and_a_follower_the_published_one() {
        let w = world(true);
        w.decide(3);
        w.publish(2);
        let va = VariantKey::new("ns", "va");
        assert_eq!(w.scaler.desired(&va).unwrap(), 3);
        w.leading.send_replace(false);
        assert_eq!(w.scaler.desired(&va).unwrap(), 2);
        w.published.send_replace(Published::default());
        assert_eq!(
            w.scaler.desired(&va).unwrap(),
            3,
            "nothing published yet: its own"
        );
        let unknown = w
            .scaler
            .desired(&VariantKey::new("ns", "other"))
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        assert!(unknown.message().contains("ns/other"), "{unknown:?}");
    }

    #[tokio::test]
    async fn the_stream_pushes_activation_changes_only() {
        let w = world(true);
        w.decide(0);
        let request = Request::new(reference(&[(VARIANT_KEY, "va")]));
        let mut stream = w
            .scaler
            .stream_is_active(request)
            .await
            .unwrap()
            .into_inner();
        assert!(!stream.next().await.unwrap().unwrap().result);
        w.decide(2);
        assert!(stream.next().await.unwrap().unwrap().result);
        // 2 → 3 keeps it active: nothing to push; 3 → 0 is pushed next.
        w.decide(3);
        w.decide(0);
        assert!(!stream.next().await.unwrap().unwrap().result);
        w.decisions.send_replace(Decisions::default());
        let gone = stream.next().await.unwrap().unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        assert!(stream.next().await.is_none(), "the stream ends");
    }

    #[tokio::test]
    async fn the_metric_spec_stream_sends_the_spec_at_once_and_stays_open() {
        let w = world(true);
        w.decide(1);
        let request = Request::new(reference(&[(VARIANT_KEY, "va")]));
        let mut stream = w
            .scaler
            .stream_metric_spec(request)
            .await
            .unwrap()
            .into_inner();
        let spec = stream.next().await.unwrap().unwrap();
        let polled = w
            .scaler
            .get_metric_spec(Request::new(reference(&[(VARIANT_KEY, "va")])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec, polled, "what it streams agrees with GetMetricSpec");
        // A new decision changes no target: nothing is sent (the follower
        // runs on this test's one thread when it yields), and the stream
        // stays open until the variant goes.
        w.decide(5);
        tokio::task::yield_now().await;
        w.decisions.send_replace(Decisions::default());
        let gone = stream.next().await.unwrap().unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        assert!(stream.next().await.is_none(), "the stream ends");
    }

    #[tokio::test]
    async fn a_workload_gets_its_spec_before_it_is_known_and_values_after() {
        let w = world(true);
        let worker = || Request::new(reference(&[(WORKLOAD_KEY, "va")]));
        let unknown = || Request::new(reference(&[(VARIANT_KEY, "va")]));
        // KEDA makes the HPA that declares the workload only once it has
        // the spec; a VariantAutoscaling's spec still waits for it.
        assert!(w.scaler.get_metric_spec(worker()).await.is_ok());
        let refused = w.scaler.get_metric_spec(unknown()).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        let mut spec = w
            .scaler
            .stream_metric_spec(worker())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec.next().await.unwrap().unwrap(), metric_spec());
        let more = futures::FutureExt::now_or_never(spec.next());
        assert!(more.is_none(), "the stream stays open: {more:?}");
        let values = w.scaler.is_active(worker()).await.unwrap_err();
        assert_eq!(values.code(), Code::NotFound);

        w.decide(3);
        assert!(
            w.scaler
                .is_active(worker())
                .await
                .unwrap()
                .into_inner()
                .result
        );
    }

    #[tokio::test]
    async fn metrics_are_the_decision_with_a_target_of_one() {
        let w = world(true);
        w.decide(4);
        let spec = w
            .scaler
            .get_metric_spec(Request::new(reference(&[(VARIANT_KEY, "va")])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec.metric_specs[0].target_size_float, 1.0);
        assert_eq!(spec.metric_specs[0].target_size, 1);
        let metrics = w
            .scaler
            .get_metrics(Request::new(GetMetricsRequest {
                scaled_object_ref: Some(reference(&[(VARIANT_KEY, "va")])),
                metric_name: "s0-wva-desired-replicas".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        let value = &metrics.metric_values[0];
        assert_eq!(value.metric_name, "s0-wva-desired-replicas");
        assert_eq!((value.metric_value, value.metric_value_float), (4, 4.0));
    }
}
