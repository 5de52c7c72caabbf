//! `?watch=true`: a stream of newline-delimited `{"type","object"}` events —
//! history after the requested resourceVersion (or synthetic ADDED events for
//! the current objects), then live changes, bookmarks, and an end after the
//! timeout so that clients re-watch.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

use super::Shared;
use super::error::ApiError;
use super::resources::Resource;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, ChangeKind};

/// How often a watch with `allowWatchBookmarks` gets a BOOKMARK (the real
/// server sends them about once a minute; sooner keeps tests quick).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a watch stays open, and how long one without `timeoutSeconds`
/// lasts (the real server picks 30–60 minutes; shorter exercises re-watching).
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// A watch request's parameters.
pub(crate) struct WatchRequest {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None` when absent or `"0"`: start with the current objects.
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    /// `sendInitialEvents=true` (streaming lists): current objects, then a
    /// bookmark marking the end of the initial events.
    pub send_initial_events: bool,
    pub timeout: Duration,
}

impl WatchRequest {
    fn selects(&self, object: &Value) -> bool {
        let in_namespace = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        in_namespace && self.labels.matches(object) && self.fields.matches(object)
    }

    /// The event a watcher with this request's selectors sees for a change:
    /// an object that starts matching is ADDED, one that stops matching is
    /// DELETED (with its previous content), as the real watch cache does.
    fn event(&self, change: &Change) -> Option<Value> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.selects(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.selects(p));
        let (kind, object) = match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => ("ADDED", change.object.clone()),
            (ChangeKind::Deleted, _, true) => ("DELETED", change.object.clone()),
            (ChangeKind::Modified, true, true) => ("MODIFIED", change.object.clone()),
            (ChangeKind::Modified, false, true) => ("ADDED", change.object.clone()),
            (ChangeKind::Modified, true, false) => {
                let mut previous = change.previous.clone()?;
                previous["metadata"]["resourceVersion"] =
                    json!(change.resource_version.to_string());
                ("DELETED", previous)
            }
            _ => return None,
        };
        Some(json!({ "type": kind, "object": object }))
    }

    fn bookmark(&self, resource_version: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        json!({
            "type": "BOOKMARK",
            "object": {
                "kind": self.resource.kind(),
                "apiVersion": self.resource.api_version(),
                "metadata": metadata,
            },
        })
    }
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("events serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch: the backlog is taken and the live subscription opened
/// under one lock, so no change is missed or sent twice.
pub(crate) fn start(
    shared: &Arc<Shared>,
    request: WatchRequest,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let (pending, live) = {
        let state = shared.lock();
        let store = &state.store;
        let live = store.subscribe();
        match request.resource_version {
            Some(since) if !request.send_initial_events => match store.changes_since(since) {
                Ok(changes) => {
                    let backlog = changes.iter().filter_map(|c| request.event(c));
                    (backlog.map(|e| line(&e)).collect(), Some(live))
                }
                Err(oldest) => {
                    // The client must re-list: one ERROR event, then the end.
                    let gone =
                        ApiError::expired(format!("too old resource version: {since} ({oldest})"));
                    let event = json!({ "type": "ERROR", "object": gone.to_status() });
                    (VecDeque::from([line(&event)]), None)
                }
            },
            _ => {
                let mut backlog: VecDeque<Bytes> = store
                    .list(request.resource, request.namespace.as_deref())
                    .filter(|o| request.selects(o))
                    .map(|o| line(&json!({ "type": "ADDED", "object": o })))
                    .collect();
                if request.send_initial_events {
                    backlog.push_back(line(&request.bookmark(store.resource_version(), true)));
                }
                (backlog, Some(live))
            }
        }
    };
    let bookmarks = request.bookmarks.then(|| {
        let mut interval =
            tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    });
    let watch = Watch {
        deadline: Box::pin(tokio::time::sleep(request.timeout.min(MAX_TIMEOUT))),
        request,
        pending,
        live,
        bookmarks,
        shared: Arc::clone(shared),
    };
    futures::stream::unfold(watch, |mut watch| async move {
        watch.next().await.map(|bytes| (bytes, watch))
    })
}

struct Watch {
    request: WatchRequest,
    pending: VecDeque<Bytes>,
    /// `None` once the watch only has its backlog left to send.
    live: Option<broadcast::Receiver<Change>>,
    deadline: Pin<Box<Sleep>>,
    bookmarks: Option<Interval>,
    shared: Arc<Shared>,
}

impl Watch {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            let live = self.live.as_mut()?;
            tokio::select! {
                () = &mut self.deadline => return None,
                () = tick(&mut self.bookmarks) => {
                    if let Some(bookmark) = self.bookmark() {
                        return Some(line(&bookmark));
                    }
                }
                received = live.recv() => match received {
                    Ok(change) => {
                        if let Some(event) = self.request.event(&change) {
                            return Some(line(&event));
                        }
                    }
                    // Lagged: end the watch like the real server ends a slow
                    // watcher; the client re-watches from its last version.
                    Err(_) => return None,
                },
            }
        }
    }

    /// A bookmark at the current resourceVersion, only when every change up
    /// to it has been sent (nothing is queued for this watch).
    fn bookmark(&self) -> Option<Value> {
        let state = self.shared.lock();
        let caught_up = self.live.as_ref().is_some_and(|live| live.is_empty());
        caught_up.then(|| self.request.bookmark(state.store.resource_version(), false))
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
