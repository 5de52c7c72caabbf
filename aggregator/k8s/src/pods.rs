//! Watched Pods and ReplicaSets, reduced to what agent identity needs: each
//! object's name, namespace, UID and owner references, and a pod's declared
//! agent role.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::identity::ROLE_ANNOTATION;
use super::scoped;

/// Read handles on the watched objects.
#[derive(Clone)]
pub struct PodIndex {
    pub pods: Store<Pod>,
    pub replica_sets: Store<ReplicaSet>,
}

/// Starts both watches in `namespace` (all when `None`); they run until shutdown.
pub fn start(
    client: Client,
    namespace: Option<&str>,
    shutdown: CancellationToken,
) -> (PodIndex, JoinHandle<()>) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (replica_sets, rs_writer) = reflector::store::<ReplicaSet>();
    let pods_api: Api<Pod> = scoped(client.clone(), namespace);
    let rs_api: Api<ReplicaSet> = scoped(client, namespace);
    let pod_watch = reflector::reflector(
        pod_writer,
        watcher(pods_api, watcher::Config::default())
            .modify(slim_pod)
            .default_backoff(),
    );
    let rs_watch = reflector::reflector(
        rs_writer,
        watcher(rs_api, watcher::Config::default())
            .modify(|rs| {
                rs.spec = None;
                rs.status = None;
                slim(rs);
            })
            .default_backoff(),
    );
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(futures::stream::select(
            pod_watch.map(|e| e.err().map(|e| ("Pod", e))),
            rs_watch.map(|e| e.err().map(|e| ("ReplicaSet", e))),
        ));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Some((kind, e))) => warn!(kind, error = %e, "watch failed; retrying with backoff"),
                    Some(None) => {}
                    None => return,
                },
                _ = shutdown.cancelled() => return,
            }
        }
    });
    (PodIndex { pods, replica_sets }, task)
}

/// A pod as identity keeps it: no spec or status, and of its annotations
/// only the agent role it declares ([`ROLE_ANNOTATION`]).
fn slim_pod(pod: &mut Pod) {
    pod.spec = None;
    pod.status = None;
    let role = pod
        .metadata
        .annotations
        .as_mut()
        .and_then(|a| a.remove_entry(ROLE_ANNOTATION));
    slim(pod);
    pod.metadata.annotations = role.map(|entry| [entry].into());
}

/// Drops the metadata identity does not use; a cluster-wide Pod watch
/// otherwise holds every pod's annotations and managed fields.
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.annotations = None;
    meta.labels = None;
    meta.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slim_pod_keeps_its_declared_role_only() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "epp-0", "namespace": "llm", "uid": "u",
                "labels": {"app": "epp"},
                "annotations": {ROLE_ANNOTATION: "epp", "note": "a large value"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "epp-5d", "uid": "r", "controller": true}],
            },
            "spec": {"containers": [{"name": "epp"}]},
        }))
        .unwrap();
        slim_pod(&mut pod);
        let kept = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            kept["metadata"]["annotations"],
            serde_json::json!({ROLE_ANNOTATION: "epp"})
        );
        assert!(kept["metadata"].get("labels").is_none());
        assert_eq!(kept["metadata"]["ownerReferences"][0]["name"], "epp-5d");
        assert!(kept.get("spec").is_none());

        let mut plain: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": {"note": "x"}},
        }))
        .unwrap();
        slim_pod(&mut plain);
        assert_eq!(plain.metadata.annotations, None);
    }
}
