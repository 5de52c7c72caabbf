//! The VariantAutoscaling controller: watches VariantAutoscalings and
//! Deployments, feeds the analysis the variants whose targets exist with their
//! replica counts, and writes each object's status from the decisions.
//!
//! Every watch event re-resolves at once, so a Deployment created after its
//! VariantAutoscaling is picked up by the watch, not by a periodic tick.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wva_core::decision::Decision;
use wva_core::snapshot::{Decisions, Published, ReplicaCounts, Replicas, Variants};
use wva_core::variants::VariantKey;

use super::crd::VariantAutoscaling;
use super::resolve::{self, Resolved};
use super::scoped;
use super::writer::{StatusWriter, Target};

#[derive(Debug, Clone)]
pub struct Options {
    /// Watch one namespace; `None` watches the whole cluster.
    pub namespace: Option<String>,
    /// Manage only VariantAutoscalings labelled with this instance.
    pub controller_instance: Option<String>,
    /// Names this controller in Events.
    pub reporter: Reporter,
}

/// The analysis inputs the controller maintains.
pub struct Feeds {
    pub variants: watch::Receiver<Variants>,
    pub replicas: watch::Receiver<Replicas>,
    pub published: watch::Receiver<Published>,
}

pub struct Controller {
    client: Client,
    options: Options,
    variants: watch::Sender<Variants>,
    replicas: watch::Sender<Replicas>,
    published: watch::Sender<Published>,
}

/// Which watch an event came from, and whether it ends that watch's initial list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Variants {
        listed: bool,
    },
    Deployments {
        listed: bool,
    },
    /// HPAs only set floors and ceilings: a decision waits for the two lists above, not
    /// for this one, so a cluster that forbids reading HPAs still works.
    Autoscalers,
}

fn listed<K>(event: &watcher::Event<K>) -> bool {
    matches!(event, watcher::Event::InitDone)
}

impl Controller {
    pub fn new(client: Client, options: Options) -> (Self, Feeds) {
        let (variants, variants_rx) = watch::channel(Variants::default());
        let (replicas, replicas_rx) = watch::channel(Replicas::default());
        let (published, published_rx) = watch::channel(Published::default());
        let controller = Controller {
            client,
            options,
            variants,
            replicas,
            published,
        };
        let feeds = Feeds {
            variants: variants_rx,
            replicas: replicas_rx,
            published: published_rx,
        };
        (controller, feeds)
    }

    /// Runs until shutdown. Status is written only while `leading`, and only
    /// after both watches have listed once, so a Deployment not yet seen is
    /// never reported missing.
    pub async fn run(
        self,
        mut decisions: watch::Receiver<Decisions>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let (va_store, va_writer) = reflector::store::<VariantAutoscaling>();
        let (deploy_store, deploy_writer) = reflector::store::<Deployment>();
        let vas = reflector::reflector(
            va_writer,
            watcher(
                scoped(self.client.clone(), self.options.namespace.as_deref()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|e| e.map(|e| Change::Variants { listed: listed(&e) }));
        let deployments = reflector::reflector(
            deploy_writer,
            watcher(
                scoped::<Deployment>(self.client.clone(), self.options.namespace.as_deref()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|e| e.map(|e| Change::Deployments { listed: listed(&e) }));
        let (hpa_store, hpa_writer) = reflector::store::<HorizontalPodAutoscaler>();
        let hpas = reflector::reflector(
            hpa_writer,
            watcher(
                scoped::<HorizontalPodAutoscaler>(
                    self.client.clone(),
                    self.options.namespace.as_deref(),
                ),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|e| e.map(|_| Change::Autoscalers));
        let mut changes: BoxStream<'_, _> =
            futures::stream::select(futures::stream::select(vas, deployments), hpas).boxed();
        // KEDA's ScaledObjects, watched from the first HPA KEDA makes: their
        // minReplicaCount is the floor of those HPAs.
        let mut scaled_objects: Option<Store<DynamicObject>> = None;

        let mut writer = StatusWriter::new(self.client.clone(), self.options.reporter.clone());
        let mut refused = Refused::default();
        let (mut vas_listed, mut deployments_listed) = (false, false);
        // Re-resolved only after a watch event; a new decision alone reuses it.
        let mut resolved: Option<Resolved> = None;
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(Change::Variants { listed })) => {
                        vas_listed |= listed;
                        resolved = None;
                    }
                    Some(Ok(Change::Deployments { listed })) => {
                        deployments_listed |= listed;
                        resolved = None;
                    }
                    Some(Ok(Change::Autoscalers)) => resolved = None,
                    Some(Err(e)) => {
                        warn!(error = %e, "watch failed; retrying with backoff");
                        continue;
                    }
                    None => anyhow::bail!("the Kubernetes watches ended"),
                },
                changed = decisions.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                Ok(()) = leading.changed() => {
                    // Another leader may have written meanwhile: start from
                    // what the API server holds.
                    writer.forget();
                }
                _ = shutdown.cancelled() => return Ok(()),
            }
            // Looked for after a watch event only, not at every decision.
            if resolved.is_none()
                && scaled_objects.is_none()
                && hpa_store.state().iter().any(|h| resolve::made_by_keda(h))
            {
                let (store, watched) = self.watch_scaled_objects();
                changes = futures::stream::select(changes, watched).boxed();
                scaled_objects = Some(store);
            }
            if !(vas_listed && deployments_listed) {
                continue;
            }
            let resolved = resolved.get_or_insert_with(|| {
                let fresh = self.resolve(
                    &va_store,
                    &deploy_store,
                    &hpa_store,
                    scaled_objects.as_ref(),
                );
                self.publish(&fresh);
                refused.report(&fresh.refused_workloads);
                self.published.send_if_modified(|current| {
                    let stored: HashMap<VariantKey, u32> = va_store
                        .state()
                        .iter()
                        .filter_map(|va| Some((resolve::key_of(va), stored_desired(va)?)))
                        .collect();
                    let changed = **current != stored;
                    if changed {
                        *current = Arc::new(stored);
                    }
                    changed
                });
                fresh
            });
            if !*leading.borrow_and_update() {
                continue;
            }
            let decisions = decisions.borrow_and_update().clone();
            let objects = va_store.state();
            let targets = targets(&objects, resolved, &decisions);
            let now = Time(Timestamp::now());
            let written = writer.sync(&targets, &now).await;
            if written > 0 {
                info!(written, "VariantAutoscaling statuses written");
            }
        }
    }

    /// A store of KEDA's ScaledObjects and the watch that fills it.
    fn watch_scaled_objects(
        &self,
    ) -> (
        Store<DynamicObject>,
        BoxStream<'static, Result<Change, watcher::Error>>,
    ) {
        info!("KEDA scales a variant: its ScaledObject's minReplicaCount is the variant's floor");
        let resource = scaled_object_resource();
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let api = match self.options.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let watched = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .map(|e| e.map(|_| Change::Autoscalers))
            .boxed();
        (store, watched)
    }

    fn resolve(
        &self,
        vas: &Store<VariantAutoscaling>,
        deployments: &Store<Deployment>,
        hpas: &Store<HorizontalPodAutoscaler>,
        scaled_objects: Option<&Store<DynamicObject>>,
    ) -> Resolved {
        let hpas = hpas.state();
        let resource = scaled_object_resource();
        let keda_min = |ns: &str, name: &str| {
            let key = ObjectRef::new_with(name, resource.clone()).within(ns);
            let object = scaled_objects?.get(&key)?;
            // KEDA's default minReplicaCount is 0.
            let min = object.data["spec"]["minReplicaCount"].as_u64().unwrap_or(0);
            Some(u32::try_from(min).unwrap_or(u32::MAX))
        };
        let objects = vas.state();
        let instance = self.options.controller_instance.as_deref();
        let managed: Vec<&VariantAutoscaling> = objects
            .iter()
            .map(Arc::as_ref)
            .filter(|va| resolve::manages(va, instance))
            .collect();
        let target = |ns: &str, name: &str| {
            deployments
                .get(&ObjectRef::new(name).within(ns))
                .map(|d| ReplicaCounts {
                    floor: resolve::scaler_floor(hpas.iter().map(Arc::as_ref), ns, name, keda_min),
                    ceiling: resolve::scaler_ceiling(hpas.iter().map(Arc::as_ref), ns, name),
                    ..resolve::replica_counts(&d)
                })
        };
        let mut resolved = resolve::resolve(&managed, target);
        resolve::workloads(
            hpas.iter().map(Arc::as_ref),
            instance,
            target,
            &mut resolved,
        );
        resolved
    }

    /// Sends the analysis inputs when they changed, so an unrelated event does
    /// not trigger an analysis.
    fn publish(&self, resolved: &Resolved) {
        self.variants.send_if_modified(|current| {
            let changed = current.as_slice() != resolved.variants.as_slice();
            if changed {
                *current = Arc::new(resolved.variants.clone());
            }
            changed
        });
        self.replicas.send_if_modified(|current| {
            let changed = **current != resolved.replicas;
            if changed {
                *current = Arc::new(resolved.replicas.clone());
            }
            changed
        });
    }
}

/// The annotated HPAs refused as scaling targets, logged once per reason.
#[derive(Default)]
struct Refused(Vec<(VariantKey, String)>);

impl Refused {
    fn report(&mut self, now: &[(VariantKey, String)]) {
        for (hpa, why) in now.iter().filter(|r| !self.0.contains(r)) {
            warn!(hpa = %hpa, "HorizontalPodAutoscaler declares no workload to scale on a signal: {why}");
        }
        self.0 = now.to_vec();
    }
}

/// KEDA's ScaledObject (`keda.sh/v1alpha1`).
fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

/// The desired replicas the statuses hold, to seed the analysis so a restart
/// or a failover continues from them instead of starting over. Fails with a
/// clear message when the CRD is missing or the API refuses the list.
pub async fn stored_decisions(
    client: Client,
    namespace: Option<&str>,
) -> anyhow::Result<HashMap<VariantKey, u32>> {
    let api: Api<VariantAutoscaling> = scoped(client, namespace);
    let list = match api.list(&Default::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the VariantAutoscaling CRD (variantautoscalings.llmd.ai) is not installed: {}",
            e.message
        ),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot list VariantAutoscalings")),
    };
    Ok(list
        .items
        .iter()
        .filter_map(|va| Some((resolve::key_of(va), stored_desired(va)?)))
        .collect())
}

/// The desired replicas in a VariantAutoscaling's status.
fn stored_desired(va: &VariantAutoscaling) -> Option<u32> {
    let desired = va.status.as_ref()?.desired_optimized_alloc.num_replicas?;
    u32::try_from(desired).ok()
}

/// Pairs each managed object with its standing and its decision.
fn targets<'a>(
    objects: &'a [Arc<VariantAutoscaling>],
    resolved: &'a Resolved,
    decisions: &'a Decisions,
) -> Vec<Target<'a>> {
    let objects: HashMap<VariantKey, &VariantAutoscaling> = objects
        .iter()
        .map(|o| (resolve::key_of(o), o.as_ref()))
        .collect();
    let decisions: HashMap<&VariantKey, &Decision> =
        decisions.iter().map(|d| (&d.variant, d)).collect();
    resolved
        .standings
        .iter()
        .filter_map(|(key, standing)| {
            Some(Target {
                object: objects.get(key)?,
                standing,
                decision: decisions.get(key).copied(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::scripted::{self, failure, respond};

    fn va(name: &str, status: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
            "metadata": {"name": name, "namespace": "llm"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": name}, "modelID": "m"},
            "status": status
        })
    }

    #[tokio::test]
    async fn stored_decisions_continue_from_status() {
        let (client, mut handle) = scripted::client();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::GET);
            assert_eq!(
                request.uri().path(),
                "/apis/llmd.ai/v1alpha1/namespaces/llm/variantautoscalings"
            );
            let list = json!({
                "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscalingList",
                "metadata": {"resourceVersion": "9"},
                "items": [
                    va("decided", json!({"desiredOptimizedAlloc": {"numReplicas": 4, "accelerator": "L4"}})),
                    va("cleared", json!({"desiredOptimizedAlloc": {}})),
                    va("new", serde_json::Value::Null),
                ]
            });
            respond(send, StatusCode::OK, &list);
        });
        let stored = stored_decisions(client, Some("llm")).await.unwrap();
        assert_eq!(
            stored,
            HashMap::from([(VariantKey::new("llm", "decided"), 4)])
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_crd_is_named() {
        let (client, mut handle) = scripted::client();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            let status = failure(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
            respond(send, StatusCode::NOT_FOUND, &status);
        });
        let error = stored_decisions(client, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("variantautoscalings.llmd.ai"), "{error}");
        assert!(error.contains("not installed"), "{error}");
        server.await.unwrap();
    }
}
