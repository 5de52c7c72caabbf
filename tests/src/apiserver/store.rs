//! Storage, like etcd under the real server: objects by key, one global
//! resourceVersion counter, the history of changes that watches replay, and a
//! broadcast of each committed change.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::Resource;

/// What a committed write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub resource: Resource,
    /// The resourceVersion this write created.
    pub resource_version: u64,
    /// The object as stored (for `Deleted`, its last state at the deletion's
    /// resourceVersion).
    pub object: Value,
    /// The object before the write (`None` for `Added`).
    pub previous: Option<Value>,
}

impl Change {
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Objects are keyed like etcd keys (`/registry/<resource>/<namespace>/<name>`):
/// `(resource, "namespace/name")`, or `(resource, "name")` when cluster-scoped,
/// so lists come back in the real server's order.
type Key = (Resource, String);

/// The key path of an object within its resource.
pub(crate) fn key_path(namespace: Option<&str>, name: &str) -> String {
    match namespace.filter(|ns| !ns.is_empty()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Enough for any test; a watch that falls further behind is closed, as the
/// real watch cache closes slow watchers, and re-watches from its last version.
const BROADCAST_CAPACITY: usize = 4096;

pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    /// Every change after `compacted_at`, in resourceVersion order.
    history: Vec<Change>,
    compacted_at: u64,
    changes: broadcast::Sender<Change>,
}

impl Store {
    pub fn new() -> Store {
        Store {
            objects: BTreeMap::new(),
            resource_version: 0,
            history: Vec::new(),
            compacted_at: 0,
            changes: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn get(&self, resource: Resource, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&(resource, key_path(namespace, name)))
    }

    /// Objects of one resource, in one namespace or all, in key order.
    pub fn list<'a>(
        &'a self,
        resource: Resource,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.entries(resource, namespace, "")
            .map(|(_, object)| object)
    }

    /// `(key path, object)` pairs of one resource, in one namespace or all,
    /// from the key path `from` on (as a paginated list continues).
    pub fn entries<'a>(
        &'a self,
        resource: Resource,
        namespace: Option<&str>,
        from: &str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        let prefix = namespace.map(|ns| format!("{ns}/")).unwrap_or_default();
        let start = (resource, from.max(prefix.as_str()).to_string());
        self.objects
            .range(start..)
            .take_while(move |((r, path), _)| *r == resource && path.starts_with(&prefix))
            .map(|((_, path), object)| (path.as_str(), object))
    }

    /// Commits a write: takes the next resourceVersion, stamps it on the
    /// object, stores (or removes) it, records it and broadcasts it.
    pub fn commit(
        &mut self,
        kind: ChangeKind,
        resource: Resource,
        previous: Option<Value>,
        mut object: Value,
    ) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let meta = &object["metadata"];
        let path = key_path(
            meta["namespace"].as_str(),
            meta["name"].as_str().unwrap_or(""),
        );
        let key = (resource, path);
        match kind {
            ChangeKind::Deleted => self.objects.remove(&key),
            ChangeKind::Added | ChangeKind::Modified => self.objects.insert(key, object.clone()),
        };
        let change = Change {
            kind,
            resource,
            resource_version: self.resource_version,
            object: object.clone(),
            previous,
        };
        self.history.push(change.clone());
        // Nobody listening is fine.
        let _ = self.changes.send(change);
        object
    }

    /// Changes after `resource_version`, or `Err(compacted_at)` when the
    /// history no longer reaches back that far.
    pub fn changes_since(&self, resource_version: u64) -> Result<&[Change], u64> {
        if resource_version < self.compacted_at {
            return Err(self.compacted_at);
        }
        let start = self
            .history
            .partition_point(|c| c.resource_version <= resource_version);
        Ok(&self.history[start..])
    }

    /// Forgets the history, as etcd compaction does.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_at = self.resource_version;
    }

    /// Changes committed from now on. Subscribing while holding the state lock
    /// gives a gap-free hand-over from a snapshot to live changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(namespace: &str, name: &str) -> Value {
        json!({ "metadata": { "namespace": namespace, "name": name } })
    }

    #[test]
    fn every_write_takes_the_next_global_version() {
        let mut store = Store::new();
        let a = store.commit(ChangeKind::Added, Resource::Pods, None, object("ns", "a"));
        let b = store.commit(
            ChangeKind::Added,
            Resource::ConfigMaps,
            None,
            object("ns", "b"),
        );
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        store.commit(ChangeKind::Deleted, Resource::Pods, Some(a.clone()), a);
        assert_eq!(store.resource_version(), 3);
        assert!(store.get(Resource::Pods, Some("ns"), "a").is_none());
        assert_eq!(store.changes_since(1).unwrap().len(), 2);
    }

    #[test]
    fn lists_are_per_resource_and_namespace_in_key_order() {
        let mut store = Store::new();
        for (ns, name) in [("b", "x"), ("a", "z"), ("a", "y"), ("a-b", "w")] {
            store.commit(ChangeKind::Added, Resource::Pods, None, object(ns, name));
        }
        store.commit(
            ChangeKind::Added,
            Resource::Services,
            None,
            object("a", "s"),
        );
        let names = |ns| {
            store
                .list(Resource::Pods, ns)
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // As etcd orders "a-b/w" before "a/y": by key string, not by namespace.
        assert_eq!(names(None), ["w", "y", "z", "x"]);
        assert_eq!(names(Some("a")), ["y", "z"]);
    }

    #[test]
    fn compaction_expires_older_versions_only() {
        let mut store = Store::new();
        store.commit(ChangeKind::Added, Resource::Pods, None, object("ns", "a"));
        store.commit(ChangeKind::Added, Resource::Pods, None, object("ns", "b"));
        store.compact();
        assert_eq!(store.changes_since(1).unwrap_err(), 2);
        assert!(store.changes_since(2).unwrap().is_empty());
        store.commit(ChangeKind::Added, Resource::Pods, None, object("ns", "c"));
        assert_eq!(store.changes_since(2).unwrap().len(), 1);
    }
}
