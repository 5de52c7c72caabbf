//! The API-server double behaves like the real API server for a real client:
//! every test talks to it through `kube::Client` over HTTP.

use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersionKind, Status};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use serde_json::{Value, json};
use wva_e2e::apiserver::{ApiServer, ChangeKind, Resource, TokenIdentity};

/// Guards every await on the server; none should come near it.
const GUARD: Duration = Duration::from_secs(10);

fn vas(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("llmd.ai", "v1alpha1", "VariantAutoscaling");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "variantautoscalings");
    Api::namespaced_with(client, "default", &resource)
}

fn va(name: &str, labels: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "llmd.ai/v1alpha1",
        "kind": "VariantAutoscaling",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "scaleTargetRef": { "kind": "Deployment", "name": name },
            "modelID": "org/model",
            "variantCost": "10.0",
        },
    }))
    .expect("a VariantAutoscaling")
}

/// The `Status` of a failed call, or a panic naming what came back instead.
fn status<T: Debug>(result: Result<T, kube::Error>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names(objects: &[DynamicObject]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o.metadata.name.as_deref().unwrap_or(""))
        .collect()
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("an event within the guard time")
        .expect("the stream goes on")
}

/// The next watcher event, as `(variant, object name)`.
async fn next_watcher_event<S>(events: &mut S) -> (&'static str, String)
where
    S: Stream<Item = watcher::Result<watcher::Event<DynamicObject>>> + Unpin,
{
    let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
    match next(events).await.expect("a watcher event, not an error") {
        watcher::Event::Init => ("Init", String::new()),
        watcher::Event::InitApply(o) => ("InitApply", name(&o)),
        watcher::Event::InitDone => ("InitDone", String::new()),
        watcher::Event::Apply(o) => ("Apply", name(&o)),
        watcher::Event::Delete(o) => ("Delete", name(&o)),
    }
}

/// The next non-bookmark raw watch event, as `(type, object name)`.
async fn next_watch_event<S>(events: &mut S) -> (&'static str, String)
where
    S: Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin,
{
    let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
    loop {
        match next(events).await.expect("a watch event") {
            WatchEvent::Added(o) => return ("ADDED", name(&o)),
            WatchEvent::Modified(o) => return ("MODIFIED", name(&o)),
            WatchEvent::Deleted(o) => return ("DELETED", name(&o)),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(status) => panic!("watch error {status:?}"),
        }
    }
}

#[tokio::test]
async fn create_get_list_with_selectors_and_already_exists() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let api = vas(server.client());
    let pp = PostParams::default();
    let created = api.create(&pp, &va("a", json!({ "app": "web" }))).await?;
    api.create(&pp, &va("b", json!({ "app": "api", "tier": "gpu" })))
        .await?;

    let meta = &created.metadata;
    assert_eq!(meta.uid.as_ref().map(String::len), Some(36));
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert!(meta.creation_timestamp.is_some());
    let rv: u64 = meta.resource_version.as_deref().unwrap().parse()?;

    let got = api.get("a").await?;
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(got.types.unwrap().kind, "VariantAutoscaling");
    let stored = server
        .get(Resource::VariantAutoscalings, Some("default"), "a")
        .unwrap();
    assert_eq!(stored["metadata"]["resourceVersion"], rv.to_string());

    for (selector, expected) in [
        ("app=web", vec!["a"]),
        ("app!=web", vec!["b"]),
        ("tier", vec!["b"]),
        ("!tier", vec!["a"]),
        ("app in (web,api),!tier", vec!["a"]),
        ("app notin (web)", vec!["b"]),
    ] {
        let list = api.list(&ListParams::default().labels(selector)).await?;
        assert_eq!(names(&list.items), expected, "{selector}");
        let list_rv: u64 = list.metadata.resource_version.unwrap().parse()?;
        assert!(list_rv > rv);
    }

    let exists = status(api.create(&pp, &va("a", json!({}))).await);
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(
        exists.message,
        "variantautoscalings.llmd.ai \"a\" already exists"
    );
    let missing = status(api.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        missing.message,
        "variantautoscalings.llmd.ai \"nope\" not found"
    );
    Ok(())
}

#[tokio::test]
async fn a_put_with_a_stale_resource_version_conflicts() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let api = vas(server.client());
    let pp = PostParams::default();
    let created = api.create(&pp, &va("a", json!({}))).await?;

    let mut fresh = created.clone();
    fresh.data["spec"]["modelID"] = json!("org/other");
    let replaced = api.replace("a", &pp, &fresh).await?;
    assert_eq!(replaced.metadata.generation, Some(2));

    let mut stale = created.clone();
    stale.data["spec"]["modelID"] = json!("org/third");
    let conflict = status(api.replace("a", &pp, &stale).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on variantautoscalings.llmd.ai \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );

    // Custom resources allow no unconditional update.
    let mut unconditional = created;
    unconditional.metadata.resource_version = None;
    let invalid = status(api.replace("a", &pp, &unconditional).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        api.get("a").await?.data["spec"]["modelID"],
        json!("org/other")
    );
    Ok(())
}

#[tokio::test]
async fn a_merge_patch_deletes_keys_with_null() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let api = vas(server.client());
    api.create(
        &PostParams::default(),
        &va("a", json!({ "app": "web", "tier": "gpu" })),
    )
    .await?;
    let patch = json!({
        "metadata": { "labels": { "app": null, "owner": "me" } },
        "spec": { "variantCost": null },
    });
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let labels = patched.metadata.labels.unwrap();
    assert_eq!(
        labels.keys().map(String::as_str).collect::<Vec<_>>(),
        ["owner", "tier"]
    );
    assert!(patched.data["spec"].get("variantCost").is_none());
    assert_eq!(patched.data["spec"]["modelID"], "org/model");
    let request = server.requests().pop().unwrap();
    assert_eq!(request.method, "PATCH");
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    Ok(())
}

#[tokio::test]
async fn the_status_subresource_is_isolated_both_ways() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let api = vas(server.client());
    let mut body = va("a", json!({}));
    body.data["status"] = json!({ "actuation": { "applied": true } });
    let created = api.create(&PostParams::default(), &body).await?;
    assert!(created.data.get("status").is_none(), "create drops status");

    // Through /status, a spec change is ignored and generation stays.
    let mut changes = server.subscribe();
    let to_status = json!({
        "spec": { "modelID": "org/hacked" },
        "status": { "actuation": { "applied": true } },
    });
    let after_status = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&to_status))
        .await?;
    assert_eq!(after_status.data["spec"]["modelID"], "org/model");
    assert_eq!(after_status.data["status"]["actuation"]["applied"], true);
    assert_eq!(after_status.metadata.generation, Some(1));
    let change = tokio::time::timeout(GUARD, changes.recv()).await??;
    assert_eq!(change.kind, ChangeKind::Modified);
    assert_eq!((change.namespace(), change.name()), (Some("default"), "a"));
    assert_eq!(change.object["status"]["actuation"]["applied"], true);

    // Through the object, a status change is ignored and a spec change bumps generation.
    let to_object = json!({
        "spec": { "modelID": "org/next" },
        "status": { "actuation": { "applied": false } },
    });
    let after_object = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&to_object))
        .await?;
    assert_eq!(after_object.data["spec"]["modelID"], "org/next");
    assert_eq!(after_object.data["status"]["actuation"]["applied"], true);
    assert_eq!(after_object.metadata.generation, Some(2));

    // Labels are metadata: no new generation.
    let labels = json!({ "metadata": { "labels": { "x": "y" } } });
    let relabelled = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&labels))
        .await?;
    assert_eq!(relabelled.metadata.generation, Some(2));

    // Writing the same status again commits nothing.
    let again = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&to_status))
        .await?;
    assert_eq!(
        again.metadata.resource_version,
        relabelled.metadata.resource_version
    );

    // A PUT to /status replaces the status and nothing else.
    let mut replacement = again.clone();
    replacement.data["status"] = json!({ "actuation": { "applied": false } });
    replacement.data["spec"]["modelID"] = json!("org/ignored");
    let replaced = api
        .replace_status("a", &PostParams::default(), &replacement)
        .await?;
    assert_eq!(replaced.data["status"]["actuation"]["applied"], false);
    assert_eq!(replaced.data["spec"]["modelID"], "org/next");

    let status_writes = server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/status") && r.method != "GET")
        .count();
    assert_eq!(status_writes, 3);
    Ok(())
}

#[tokio::test]
async fn a_watcher_sees_the_initial_list_then_changes() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let api = vas(server.client());
    let pp = PostParams::default();
    api.create(&pp, &va("a", json!({}))).await?;

    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(next_watcher_event(&mut events).await, ("Init", "".into()));
    assert_eq!(
        next_watcher_event(&mut events).await,
        ("InitApply", "a".into())
    );
    assert_eq!(
        next_watcher_event(&mut events).await,
        ("InitDone", "".into())
    );

    api.create(&pp, &va("b", json!({}))).await?;
    assert_eq!(next_watcher_event(&mut events).await, ("Apply", "b".into()));
    let patch = json!({ "metadata": { "labels": { "seen": "yes" } } });
    api.patch("b", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(next_watcher_event(&mut events).await, ("Apply", "b".into()));
    // Custom resources answer a delete with a success Status, not the object.
    let deleted = api.delete("b", &DeleteParams::default()).await?;
    let details = deleted.right().and_then(|status| status.details).unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("b", "variantautoscalings")
    );
    assert_eq!(
        next_watcher_event(&mut events).await,
        ("Delete", "b".into())
    );
    assert!(
        server
            .get(Resource::VariantAutoscalings, Some("default"), "b")
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn compaction_expires_old_watches_and_a_watcher_relists() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let client = server.client();
    let api = vas(client.clone());
    let pp = PostParams::default();
    api.create(&pp, &va("a", json!({}))).await?;

    // A raw watch from before the compaction: one 410 ERROR event, then the end.
    let listed = api.list(&ListParams::default()).await?;
    let old = listed.metadata.resource_version.unwrap();
    api.create(&pp, &va("b", json!({}))).await?;
    server.compact();
    let uri = format!(
        "/apis/llmd.ai/v1alpha1/namespaces/default/variantautoscalings?watch=true&resourceVersion={old}&allowWatchBookmarks=true"
    );
    let request = http::Request::get(uri).body(kube::client::Body::empty())?;
    let response = tokio::time::timeout(GUARD, client.send(request)).await??;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = tokio::time::timeout(GUARD, response.into_body().collect())
        .await??
        .to_bytes();
    let lines: Vec<Value> = serde_json::Deserializer::from_slice(&body)
        .into_iter()
        .collect::<Result<_, _>>()?;
    let now = server
        .get(Resource::VariantAutoscalings, Some("default"), "b")
        .unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        lines,
        [json!({
            "type": "ERROR",
            "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {old} ({now})"),
                "reason": "Expired", "code": 410,
            },
        })]
    );

    // A watcher that lists, then falls behind a compaction, re-lists and goes on.
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    for _ in 0..4 {
        initial.push(next_watcher_event(&mut events).await);
    }
    assert_eq!(
        initial,
        [
            ("Init", "".into()),
            ("InitApply", "a".into()),
            ("InitApply", "b".into()),
            ("InitDone", "".into())
        ]
    );
    // The watcher watches only when polled again: change and compact first.
    api.create(&pp, &va("c", json!({}))).await?;
    server.compact();
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected the 410 watch error, got {other:?}"),
    }
    let mut relisted = Vec::new();
    for _ in 0..5 {
        relisted.push(next_watcher_event(&mut events).await);
    }
    assert_eq!(
        relisted,
        [
            ("Init", "".into()),
            ("InitApply", "a".into()),
            ("InitApply", "b".into()),
            ("InitApply", "c".into()),
            ("InitDone", "".into())
        ]
    );
    api.create(&pp, &va("d", json!({}))).await?;
    assert_eq!(next_watcher_event(&mut events).await, ("Apply", "d".into()));
    Ok(())
}

#[tokio::test]
async fn a_selector_watch_sees_objects_enter_and_leave_and_bookmarks() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let api = vas(server.client());
    api.create(&PostParams::default(), &va("a", json!({ "app": "web" })))
        .await?;
    let params = WatchParams::default().labels("app=web").timeout(2);
    let mut events = api.watch(&params, "0").await?.boxed();
    assert_eq!(next_watch_event(&mut events).await, ("ADDED", "a".into()));

    let relabel = |app: &str| json!({ "metadata": { "labels": { "app": app } } });
    let pp = PatchParams::default();
    api.patch("a", &pp, &Patch::Merge(relabel("api"))).await?;
    assert_eq!(next_watch_event(&mut events).await, ("DELETED", "a".into()));
    api.create(&PostParams::default(), &va("b", json!({ "app": "api" })))
        .await?;
    api.patch("a", &pp, &Patch::Merge(relabel("web"))).await?;
    assert_eq!(next_watch_event(&mut events).await, ("ADDED", "a".into()));
    api.patch(
        "a",
        &pp,
        &Patch::Merge(json!({ "spec": { "modelID": "m" } })),
    )
    .await?;
    assert_eq!(
        next_watch_event(&mut events).await,
        ("MODIFIED", "a".into())
    );

    // Bookmarks while idle, then the end after timeoutSeconds.
    let current = server
        .get(Resource::VariantAutoscalings, Some("default"), "b")
        .unwrap()["metadata"]["resourceVersion"]
        .clone();
    let bookmark = loop {
        if let WatchEvent::Bookmark(bookmark) = next(&mut events).await? {
            break bookmark;
        }
    };
    assert!(
        bookmark.metadata.resource_version.parse::<u64>()? >= current.as_str().unwrap().parse()?
    );
    assert_eq!(bookmark.types.kind, "VariantAutoscaling");
    let end = tokio::time::timeout(GUARD, async {
        while let Some(event) = events.try_next().await? {
            assert!(matches!(event, WatchEvent::Bookmark(_)), "{event:?}");
        }
        anyhow::Ok(())
    });
    end.await??;
    Ok(())
}

#[tokio::test]
async fn dropping_the_server_ends_open_watches() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let api = vas(server.client());
    let mut events = api.watch(&WatchParams::default(), "0").await?.boxed();
    drop(server);
    let ended = tokio::time::timeout(GUARD, async {
        while let Some(Ok(_)) = events.next().await {}
    });
    ended.await?;
    Ok(())
}

#[tokio::test]
async fn token_reviews_answer_like_the_service_account_authenticator() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    server.register_token(
        "agent-token",
        TokenIdentity {
            namespace: "llm".into(),
            service_account: "wva-agent".into(),
            pod_name: Some("vllm-0".into()),
            pod_uid: Some("pod-uid-0".into()),
            audiences: vec!["wva-aggregator".into()],
            expires: None,
        },
    );
    let reviews: Api<TokenReview> = Api::all(server.client());
    let review = |token: &str, audiences: &[&str]| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..TokenReview::default()
    };
    let pp = PostParams::default();

    let ok = reviews
        .create(&pp, &review("agent-token", &["other", "wva-aggregator"]))
        .await?;
    let status = ok.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(status.audiences, Some(vec!["wva-aggregator".to_string()]));
    let user = status.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:llm:wva-agent")
    );
    assert_eq!(
        user.groups.unwrap(),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:llm",
            "system:authenticated"
        ]
    );
    let extra = user.extra.unwrap();
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        ["vllm-0".to_string()]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        ["pod-uid-0".to_string()]
    );
    assert!(extra["authentication.kubernetes.io/credential-id"][0].starts_with("JTI="));
    assert!(user.uid.is_some());

    let wrong_audience = reviews
        .create(&pp, &review("agent-token", &["prometheus"]))
        .await?
        .status
        .unwrap();
    assert_ne!(wrong_audience.authenticated, Some(true));
    assert_eq!(
        wrong_audience.error.as_deref(),
        Some(
            "[invalid bearer token, token audiences [\"wva-aggregator\"] is invalid for the target audiences [\"prometheus\"]]"
        )
    );

    let unknown = reviews
        .create(&pp, &review("forged", &["wva-aggregator"]))
        .await?
        .status
        .unwrap();
    assert_ne!(unknown.authenticated, Some(true));
    assert!(unknown.error.unwrap().starts_with("[invalid bearer token"));
    assert!(
        server.list(Resource::TokenReviews, None).is_empty(),
        "reviews are not stored"
    );
    Ok(())
}

#[tokio::test]
async fn wrong_or_missing_tokens_are_unauthorized_and_the_kubeconfig_works() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let path = server.write_kubeconfig(dir.path())?;
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    assert_eq!(config.default_namespace, "default");
    let mut wrong = config.clone();
    let mut missing = config.clone();
    let configmaps: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(config)?);
    assert!(
        configmaps
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );

    wrong.auth_info = serde_json::from_value(json!({ "token": "wrong" }))?;
    missing.auth_info = Default::default();
    for config in [wrong, missing] {
        let api: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(config)?);
        let denied = status(api.list(&ListParams::default()).await);
        assert_eq!((denied.code, denied.reason.as_str()), (401, "Unauthorized"));
    }
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 401]);
    Ok(())
}

#[tokio::test]
async fn an_apply_patch_creates_a_missing_object_and_merges_into_it() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let configmaps: Api<ConfigMap> = Api::default_namespaced(server.client());
    let apply = PatchParams::apply("wva-test");
    let first = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "cfg" },
        "data": { "a": "1" },
    });
    let created = configmaps
        .patch("cfg", &apply, &Patch::Apply(&first))
        .await?;
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.data.unwrap()["a"], "1");
    let request = server.requests().pop().unwrap();
    assert_eq!((request.method.as_str(), request.status), ("PATCH", 201));
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(request.query.contains("fieldManager=wva-test"));

    let second = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "cfg" },
        "data": { "b": "2" },
    });
    let merged = configmaps
        .patch("cfg", &apply, &Patch::Apply(&second))
        .await?;
    assert_eq!(merged.metadata.uid, created.metadata.uid);
    let data = merged.data.unwrap();
    assert_eq!((data["a"].as_str(), data["b"].as_str()), ("1", "2"));

    // Applying a custom resource with status creates it without the status.
    let api = vas(server.client());
    let mut body = va("applied", json!({}));
    body.data["status"] = json!({ "actuation": { "applied": true } });
    let applied = api.patch("applied", &apply, &Patch::Apply(&body)).await?;
    assert_eq!(applied.metadata.generation, Some(1));
    assert!(applied.data.get("status").is_none());
    Ok(())
}

#[tokio::test]
async fn errors_come_as_real_status_bodies() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let client = server.client();
    let api = vas(client.clone());
    api.create(&PostParams::default(), &va("a", json!({})))
        .await?;
    let base = "/apis/llmd.ai/v1alpha1/namespaces/default/variantautoscalings";
    let send = |method: &str, uri: String, content_type: &str, body: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec())
            .expect("a request");
        let client = client.clone();
        async move { status(client.request::<Value>(request).await) }
    };

    let cases = [
        (
            send("PATCH", format!("{base}/a"), "text/plain", "{}").await,
            415,
            "UnsupportedMediaType",
        ),
        (
            send(
                "PATCH",
                format!("{base}/a"),
                "application/strategic-merge-patch+json",
                "{}",
            )
            .await,
            415,
            "UnsupportedMediaType",
        ),
        (
            send(
                "PATCH",
                format!("{base}/a"),
                "application/apply-patch+yaml",
                "{}",
            )
            .await,
            422,
            "Invalid",
        ),
        (
            send("POST", base.to_string(), "application/json", "{not json").await,
            400,
            "BadRequest",
        ),
        (
            send(
                "POST",
                base.to_string(),
                "application/json",
                &serde_json::to_string(&json!({
                    "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
                    "metadata": { "name": "x", "namespace": "elsewhere" },
                }))?,
            )
            .await,
            400,
            "BadRequest",
        ),
        (
            send("POST", format!("{base}/a"), "application/json", "{}").await,
            405,
            "MethodNotAllowed",
        ),
        (
            send(
                "GET",
                "/apis/llmd.ai/v1alpha1/namespaces/default/widgets".into(),
                "application/json",
                "",
            )
            .await,
            404,
            "NotFound",
        ),
    ];
    for (status, code, reason) in cases {
        assert_eq!(
            (status.code, status.reason.as_str()),
            (code, reason),
            "{status:?}"
        );
        assert_eq!(
            status.status,
            Some(kube::core::response::StatusSummary::Failure)
        );
    }

    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client(), "nope");
    let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "c" } }))?;
    let no_namespace = status(elsewhere.create(&PostParams::default(), &cm).await);
    assert_eq!(no_namespace.code, 404);
    assert_eq!(no_namespace.message, "namespaces \"nope\" not found");
    Ok(())
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let configmaps: Api<ConfigMap> = Api::default_namespaced(server.client());
    for name in ["c1", "c2", "c3"] {
        let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
        configmaps.create(&PostParams::default(), &cm).await?;
    }
    let first = configmaps.list(&ListParams::default().limit(2)).await?;
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    let token = first.metadata.continue_.clone().unwrap();
    let second = configmaps
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await?;
    let name = second.items[0].metadata.name.as_deref();
    assert_eq!((second.items.len(), name), (1, Some("c3")));
    assert_eq!(second.metadata.continue_, None);
    Ok(())
}

#[tokio::test]
async fn recorder_events_are_stored_and_series_patched() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let recorder = Recorder::new(
        server.client(),
        Reporter {
            controller: "wva-aggregator".into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        api_version: Some("llmd.ai/v1alpha1".into()),
        kind: Some("VariantAutoscaling".into()),
        name: Some("a".into()),
        namespace: Some("default".into()),
        ..ObjectReference::default()
    };
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "ScaledUp".into(),
        note: Some("2 -> 3".into()),
        action: "Scale".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await?;
    recorder.publish(&event, &reference).await?;
    let events = server.events("default");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "ScaledUp");
    assert_eq!(events[0]["regarding"]["name"], "a");
    assert_eq!(events[0]["series"]["count"], 2);
    Ok(())
}
