//! An in-process Kubernetes API-server test double: plain HTTP on loopback,
//! real paths, real JSON, real semantics, for the resources wva touches.
//!
//! The real control plane (`crate::controlplane`, `tests/control_plane.rs`)
//! is the reference; the double serves the end-to-end tests not yet ported
//! to it and faults a real server cannot be made to show on demand (410
//! Gone, a watch cut mid-stream; see docs/testing.md). Tests point the
//! aggregator (through [`ApiServer::write_kubeconfig`]) and themselves
//! (through [`ApiServer::client`], acting like kubectl) at this double, and
//! assert on what was stored ([`ApiServer::get`], [`ApiServer::events`]),
//! what changed ([`ApiServer::subscribe`]) and what was asked
//! ([`ApiServer::requests`]).
//!
//! # Faithful to the real server
//!
//! - **Paths and verbs**: `/api/v1/…` and `/apis/{group}/{version}/…`, namespaced
//!   and all-namespaces collections, objects and `/status`; GET, LIST, WATCH,
//!   POST, PUT, PATCH, DELETE and DELETE on a collection; 404 for anything else,
//!   405 for a verb a path does not take. The resources are in [`Resource`].
//! - **resourceVersion**: one global counter (a decimal string), bumped by every
//!   write, including deletes. A write that changes nothing is not committed:
//!   no new resourceVersion, no watch event.
//! - **Server-owned metadata**: `uid` (random UUID), `creationTimestamp`
//!   (RFC 3339, seconds), `generation` for the types whose strategy tracks it
//!   (the CRD on any non-metadata non-status change, Deployments on spec or
//!   annotation changes, ReplicaSets and Pods on spec changes), `namespace`
//!   from the URL; `generateName`; empty `labels`/`annotations`/`finalizers`/
//!   `ownerReferences` are dropped, as Go's `omitempty` drops them.
//! - **Preconditions and errors**: a `Status` body with the real reason, code,
//!   message and details: NotFound, AlreadyExists, Conflict (resourceVersion or
//!   uid in a PUT, a patch or DeleteOptions), BadRequest (malformed body, a
//!   namespace or name differing from the URL, a wrong kind or apiVersion),
//!   Invalid (a custom resource PUT without resourceVersion, no name, an apply
//!   patch without `fieldManager`, a failing JSON patch operation),
//!   UnsupportedMediaType, MethodNotAllowed, Unauthorized (missing or wrong
//!   bearer token), and NotFound for a create in a namespace that does not
//!   exist (`default`, `kube-system`, `kube-public` and `kube-node-lease` exist
//!   from the start).
//! - **Status subresource**: writes to the object keep the stored `.status`;
//!   writes to `/status` change only `.status`; create drops `.status` (the CRD)
//!   or starts from the type's initial status (`{}`, Pods `phase: Pending`,
//!   Namespaces `phase: Active`).
//! - **Patches**: JSON patch (RFC 6902), merge patch (RFC 7386); strategic merge
//!   patch is refused with 415 for the custom resource, as for any CRD.
//! - **DELETE** answers with the deleted object for Pods, Services and
//!   Namespaces (`ReturnDeletedObject` in their registries) and with a success
//!   `Status` naming the object for the other types; the DELETED watch event
//!   carries the deletion's resourceVersion.
//! - **LIST**: `labelSelector` (full syntax), `fieldSelector` on
//!   `metadata.name`/`metadata.namespace`, `limit`/`continue` with the real
//!   token format and `remainingItemCount`; etcd key order; items of built-in
//!   types carry no `kind`/`apiVersion` (custom resources' items do).
//! - **WATCH**: chunked newline-delimited JSON events; history replay from
//!   `resourceVersion`, or synthetic ADDED events when it is absent or `"0"`;
//!   410 `Expired` ERROR event (then the end) for a version older than the
//!   history ([`ApiServer::compact`]); objects entering or leaving a selector
//!   arrive as ADDED or DELETED; BOOKMARKs with `allowWatchBookmarks`;
//!   `sendInitialEvents` with the `k8s.io/initial-events-end` bookmark;
//!   `timeoutSeconds`; a watch that falls behind is closed, like a slow
//!   watcher in the real watch cache.
//! - **TokenReview**: the service-account authenticator's answer for tokens
//!   registered with [`ApiServer::register_token`]: username, uid, groups,
//!   pod and credential-id extras, audience intersection, the API server's own
//!   audience when a review or a token names none; failures as
//!   `[invalid bearer token, …]` with `authenticated` omitted.
//!
//! # Simplified
//!
//! - No schema: no CRD OpenAPI validation, defaulting or pruning, and built-in
//!   types are stored as sent apart from the metadata above and a few defaults
//!   (`spec.replicas: 1` on Deployments and ReplicaSets; Secret `stringData`
//!   folded into base64 `data`, `type: Opaque`). Unknown fields are kept.
//! - Strategic merge patch is applied as a merge patch. That is exact for
//!   patches without lists or `$` directives (labels, annotations, scalar
//!   fields such as the Lease fields kube-lease-manager patches); any other
//!   strategic patch fails with a 500 naming the limitation, never silently.
//! - Server-side apply (`application/apply-patch+yaml`, JSON or YAML body,
//!   `fieldManager` required, `force` accepted) is a merge patch that creates a
//!   missing object: no `managedFields`, no conflicts, and fields a manager
//!   stops applying are not removed. Exact for a single manager that keeps
//!   applying the same fields. Clients that rely on apply conflicts for mutual
//!   exclusion (kube-lease-manager taking an orphaned Lease) are not protected.
//! - LIST and GET always answer from the current state: `resourceVersion`,
//!   `resourceVersionMatch` are ignored and a `continue` page shows objects as
//!   they are now, not as of the first page.
//! - DELETE is immediate: no finalizers, no graceful deletion, no garbage
//!   collection of owned objects, and deleting a namespace leaves its contents.
//! - The two Event APIs are separate stores (the real server serves one store
//!   through both); [`ApiServer::events`] returns both.
//! - Authentication accepts only the kubeconfig's token and authorizes
//!   everything (no RBAC); registered service-account tokens answer
//!   TokenReviews but do not authenticate requests, and a review does not check
//!   that the bound pod or service account still exists.
//! - Bookmarks come every second and watches last at most 60 seconds (the real
//!   server: about once a minute, 30–60 minutes), so clients re-watch often.
//! - Only `/version` besides the resource paths: no discovery, no OpenAPI.

mod error;
mod http;
mod patch;
mod registry;
mod resources;
mod route;
mod selector;
mod store;
mod tokenreview;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use resources::Resource;
pub use store::{Change, ChangeKind};
pub use tokenreview::{API_AUDIENCE, TokenIdentity};

/// One request the double answered, for assertions such as "exactly one status write".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` when there is none.
    pub query: String,
    pub content_type: Option<String>,
    /// The HTTP status answered (200 for a watch, whose errors come as events).
    pub status: u16,
}

/// Everything requests read and write, behind one lock that is never held
/// across an `.await`.
pub(crate) struct State {
    store: store::Store,
    tokens: tokenreview::Tokens,
    requests: Vec<RecordedRequest>,
}

pub(crate) struct Shared {
    /// The bearer token the kubeconfig carries.
    token: String,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed;
        // later requests still see consistent state (writes are single steps).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running double; dropping it stops the server and ends open watches.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `127.0.0.1` on an ephemeral port and serves until dropped.
    pub async fn start() -> anyhow::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the API-server double")?;
        let addr = listener.local_addr()?;
        let mut state = State {
            store: store::Store::new(),
            tokens: tokenreview::Tokens::default(),
            requests: Vec::new(),
        };
        // The namespaces every cluster starts with.
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace =
                json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
            registry::create(&mut state.store, Resource::Namespaces, None, namespace)
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let shared = Arc::new(Shared {
            token: format!("{:032x}", rand::random::<u128>()),
            state: Mutex::new(state),
        });
        let server = tokio::spawn(http::serve(listener, Arc::clone(&shared)));
        Ok(ApiServer {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/kubeconfig`: this server, a bearer-token user and
    /// namespace `default`; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "double", "cluster": { "server": self.url() } }],
            "users": [{ "name": "admin", "user": { "token": self.shared.token } }],
            "contexts": [{
                "name": "double",
                "context": { "cluster": "double", "user": "admin", "namespace": "default" },
            }],
            "current-context": "double",
        });
        let path = dir.join("kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)
            .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// A client that talks to the double over HTTP like kubectl would, with
    /// default namespace `default`. Call it inside a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("a valid URL"));
        config.auth_info = serde_json::from_value(json!({ "token": self.shared.token }))
            .expect("a token-only AuthInfo");
        kube::Client::try_from(config).expect("a client for the API-server double")
    }

    /// The stored object, as a GET would return it (`namespace` is ignored
    /// for cluster-scoped resources).
    pub fn get(&self, resource: Resource, namespace: Option<&str>, name: &str) -> Option<Value> {
        let namespace = namespace.filter(|_| resource.namespaced());
        let state = self.shared.lock();
        state.store.get(resource, namespace, name).cloned()
    }

    /// Stored objects of a resource in one namespace, or in all with `None`,
    /// in key order (`namespace` is ignored for cluster-scoped resources).
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        let namespace = namespace.filter(|_| resource.namespaced());
        let state = self.shared.lock();
        state.store.list(resource, namespace).cloned().collect()
    }

    /// The Events of a namespace: `events.k8s.io/v1` ones, then core `v1` ones.
    pub fn events(&self, namespace: &str) -> Vec<Value> {
        let mut events = self.list(Resource::Events, Some(namespace));
        events.extend(self.list(Resource::CoreEvents, Some(namespace)));
        events
    }

    /// Every write committed from now on, so a test can await a change
    /// instead of polling.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.lock().store.subscribe()
    }

    /// The requests answered so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Forgets the watch history, like etcd compaction: a watch from an older
    /// resourceVersion gets a 410 `Expired` ERROR event. Open watches go on.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// Registers a service-account token for TokenReview.
    pub fn register_token(&self, token: &str, identity: TokenIdentity) {
        self.shared.lock().tokens.register(token, identity);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}
