//! Watched Pods and ReplicaSets, reduced to what agent identity needs: each
//! object's name, namespace, UID and owner references.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
            .modify(|pod| {
                pod.spec = None;
                pod.status = None;
                slim(pod);
            })
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

/// Drops the metadata identity does not use; a cluster-wide Pod watch
/// otherwise holds every pod's annotations and managed fields.
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.annotations = None;
    meta.labels = None;
    meta.managed_fields = None;
}
