//! Writes VariantAutoscaling status through the status subresource, only when
//! it changed, and publishes the Events each change deserves.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;
use tracing::{debug, info, warn};
use wva_core::decision::Decision;
use wva_core::variants::VariantKey;

use super::crd::{VariantAutoscaling, VariantAutoscalingStatus};
use super::events::{self, Note};
use super::resolve::{Standing, key_of};
use super::status::{self, Situation};

/// The field manager named in every write.
pub const FIELD_MANAGER: &str = "wva-aggregator";

/// What this writer last stored for an object (by UID, so a recreated object
/// with the same name starts over).
struct Written {
    uid: Option<String>,
    status: VariantAutoscalingStatus,
}

pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    written: HashMap<VariantKey, Written>,
}

/// One object to bring up to date.
pub struct Target<'a> {
    pub object: &'a VariantAutoscaling,
    pub standing: &'a Standing,
    pub decision: Option<&'a Decision>,
}

impl StatusWriter {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            written: HashMap::new(),
        }
    }

    /// Drops what this writer remembers having written.
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// Brings every target's status up to date; returns how many were written.
    /// A failed write is logged and retried at the next sync; it never stops
    /// the others.
    pub async fn sync(&mut self, targets: &[Target<'_>], now: &Time) -> usize {
        let live: Vec<VariantKey> = targets.iter().map(|t| key_of(t.object)).collect();
        self.written.retain(|k, _| live.contains(k));
        let mut count = 0;
        for (target, key) in targets.iter().zip(live) {
            match self.sync_one(target, key, now).await {
                Ok(true) => count += 1,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot write VariantAutoscaling status; will retry"),
            }
        }
        count
    }

    async fn sync_one(
        &mut self,
        target: &Target<'_>,
        key: VariantKey,
        now: &Time,
    ) -> Result<bool, kube::Error> {
        let object = target.object;
        let uid = object.metadata.uid.clone();
        // What this writer stored last is newer than a cache that has not
        // caught up with it yet.
        let previous = match self.written.get(&key) {
            Some(w) if w.uid == uid => Some(&w.status),
            _ => object.status.as_ref(),
        };
        let situation = match target.standing {
            Standing::Invalid(error) => Situation::Invalid(error),
            Standing::TargetMissing { name } => Situation::TargetMissing { name },
            Standing::Running { name, replicas } => Situation::Running {
                name,
                replicas: *replicas,
                decision: target.decision,
            },
        };
        let next = status::next(previous, situation, object.metadata.generation, now);
        if previous == Some(&next) {
            return Ok(false);
        }
        let notes = events::between(previous, &next, target.decision);
        let api: Api<VariantAutoscaling> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = json!({ "status": next });
        match api
            .patch_status(
                &key.name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                // Deleted since the watch saw it; the watch will drop it.
                debug!(variant = %key, "VariantAutoscaling is gone; status not written");
                self.written.remove(&key);
                return Ok(false);
            }
            Err(e) => {
                self.written.remove(&key);
                return Err(e);
            }
        }
        info!(variant = %key, "status updated");
        self.written.insert(key, Written { uid, status: next });
        let reference = object.object_ref(&());
        for note in notes {
            if let Err(e) = self.recorder.publish(&event(&note), &reference).await {
                warn!(error = %e, reason = note.reason, "cannot publish event");
            }
        }
        Ok(true)
    }
}

fn event(note: &Note) -> Event {
    Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.to_string(),
        note: Some(note.message.clone()),
        action: "Reconcile".to_string(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::Value;

    use super::*;
    use crate::crd::{ScaleTargetRef, VariantAutoscalingSpec};
    use crate::scripted::{self, Handle, failure, json_body, respond};

    fn writer() -> (StatusWriter, Handle) {
        let (client, handle) = scripted::client();
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some("wva-0".into()),
        };
        (StatusWriter::new(client, reporter), handle)
    }

    fn object() -> VariantAutoscaling {
        let mut va = VariantAutoscaling::new(
            "llama-8b-autoscaler",
            VariantAutoscalingSpec {
                scale_target_ref: ScaleTargetRef {
                    kind: "Deployment".into(),
                    name: "llama-8b".into(),
                    api_version: None,
                },
                model_id: "meta/llama-3.1-8b".into(),
                variant_cost: "10.0".into(),
            },
        );
        va.metadata.namespace = Some("llm".into());
        va.metadata.uid = Some("uid-1".into());
        va.metadata.generation = Some(2);
        va
    }

    fn missing() -> Standing {
        Standing::TargetMissing {
            name: "llama-8b".into(),
        }
    }

    /// The one target of a sync.
    fn alone<'a>(object: &'a VariantAutoscaling, standing: &'a Standing) -> [Target<'a>; 1] {
        [Target {
            object,
            standing,
            decision: None,
        }]
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    /// Answers the status patch with the patched object and returns its body.
    async fn expect_status_patch(handle: &mut Handle) -> Value {
        let (request, send) = handle.next_request().await.expect("a status patch");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/llmd.ai/v1alpha1/namespaces/llm/variantautoscalings/llama-8b-autoscaler/status"
        );
        assert!(
            request
                .uri()
                .query()
                .unwrap_or_default()
                .contains("fieldManager=wva-aggregator"),
            "{:?}",
            request.uri()
        );
        assert_eq!(
            request.headers()["content-type"],
            "application/merge-patch+json"
        );
        let patch = json_body(request).await;
        let mut answer = serde_json::to_value(object()).unwrap();
        answer["status"] = patch["status"].clone();
        respond(send, StatusCode::OK, &answer);
        patch
    }

    #[tokio::test]
    async fn a_missing_target_is_written_once_with_a_warning_event() {
        let (mut writer, mut handle) = writer();
        let (va, standing) = (object(), missing());
        let targets = alone(&va, &standing);
        let server = tokio::spawn(async move {
            let patch = expect_status_patch(&mut handle).await;
            let (request, send) = handle.next_request().await.expect("an event");
            assert_eq!(request.method(), Method::POST);
            assert_eq!(
                request.uri().path(),
                "/apis/events.k8s.io/v1/namespaces/llm/events"
            );
            let event = json_body(request).await;
            respond(send, StatusCode::CREATED, &event);
            (patch, event)
        });
        assert_eq!(writer.sync(&targets, &now()).await, 1);
        let (patch, event) = server.await.unwrap();

        let conditions = patch["status"]["conditions"].as_array().unwrap();
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "DeploymentNotFound");
        assert_eq!(ready["message"], "Target deployment 'llama-8b' not found");
        assert_eq!(ready["observedGeneration"], 2);
        // Cleared fields are explicit nulls so the merge patch removes them.
        assert!(patch["status"]["desiredOptimizedAlloc"]["numReplicas"].is_null());

        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "DeploymentNotFound");
        assert_eq!(event["regarding"]["name"], "llama-8b-autoscaler");
        assert_eq!(event["reportingController"], FIELD_MANAGER);

        // Nothing changed: no request at all (one would never be answered).
        assert_eq!(writer.sync(&targets, &now()).await, 0);
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_at_the_next_sync() {
        let (mut writer, mut handle) = writer();
        let (va, standing) = (object(), missing());
        let targets = alone(&va, &standing);
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("a status patch");
            let timeout = failure(500, "InternalError", "etcdserver: request timed out");
            respond(send, StatusCode::INTERNAL_SERVER_ERROR, &timeout);
            handle
        });
        assert_eq!(writer.sync(&targets, &now()).await, 0);
        let mut handle = server.await.unwrap();

        let server = tokio::spawn(async move {
            expect_status_patch(&mut handle).await;
            let (request, send) = handle.next_request().await.expect("an event");
            let event = json_body(request).await;
            respond(send, StatusCode::CREATED, &event);
        });
        assert_eq!(writer.sync(&targets, &now()).await, 1);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_object_deleted_meanwhile_is_skipped_quietly() {
        let (mut writer, mut handle) = writer();
        let (va, standing) = (object(), missing());
        let targets = alone(&va, &standing);
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("a status patch");
            let gone = failure(
                404,
                "NotFound",
                "variantautoscalings.llmd.ai \"llama-8b-autoscaler\" not found",
            );
            respond(send, StatusCode::NOT_FOUND, &gone);
        });
        // No event follows a write that did not happen.
        assert_eq!(writer.sync(&targets, &now()).await, 0);
        server.await.unwrap();
    }
}
