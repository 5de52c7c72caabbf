//! The HTTP side: accept connections, authenticate, route each request to a
//! verb, and answer with JSON (or a chunked watch stream).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::error::ApiError;
use super::patch::PatchKind;
use super::registry::{self, ObjectRef, Subresource};
use super::resources::Resource;
use super::route::{self, Query, Route};
use super::selector::{FieldSelector, LabelSelector};
use super::watch::{self, MAX_TIMEOUT, WatchRequest};
use super::{RecordedRequest, Shared};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves until the task is aborted; aborting drops every connection task
/// with it, which ends open watches.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    // Plain-HTTP Kubernetes API servers speak HTTP/1.1 only.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let recorded = RecordedRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        query: request.uri().query().unwrap_or("").to_string(),
        content_type: request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        status: 0,
    };
    let bearer = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Anonymous requests are refused too, as with `--anonymous-auth=false`.
    let response = if bearer == Some(shared.token.as_str()) {
        dispatch(shared, request, &recorded)
            .await
            .unwrap_or_else(|err| error_response(&err))
    } else {
        error_response(&ApiError::unauthorized())
    };
    shared.lock().requests.push(RecordedRequest {
        status: response.status().as_u16(),
        ..recorded
    });
    response
}

/// One authenticated request to a resource path, with its body read.
struct Call<'a> {
    method: Method,
    route: Route,
    query: Query,
    content_type: Option<&'a str>,
    body: Bytes,
}

impl Call<'_> {
    fn object(&self) -> Result<Value, ApiError> {
        decode_object(self.content_type, &self.body)
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    recorded: &RecordedRequest,
) -> Result<Response<Body>, ApiError> {
    let method = request.method().clone();
    if recorded.path == "/version" && method == Method::GET {
        return Ok(json_response(StatusCode::OK, &version()));
    }
    let route = route::parse(&recorded.path).ok_or_else(ApiError::no_such_path)?;
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    let call = Call {
        method,
        route,
        query: Query::parse(&recorded.query),
        content_type: recorded.content_type.as_deref(),
        body,
    };
    match call.route.name.as_deref() {
        _ if call.route.resource == Resource::TokenReviews => token_review(shared, &call),
        None => collection(shared, &call),
        Some(name) => object(shared, &call, name),
    }
}

/// TokenReviews are create-only and never stored.
fn token_review(shared: &Shared, call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    match (&call.route.name, &call.method) {
        (None, &Method::POST) => {
            let reviewed = shared.lock().tokens.review(&call.object()?)?;
            Ok(json_response(StatusCode::CREATED, &reviewed))
        }
        (None, _) => Err(ApiError::method_not_allowed()),
        (Some(_), _) => Err(ApiError::no_such_path()),
    }
}

fn collection(shared: &Arc<Shared>, call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let route = &call.route;
    // A namespaced resource's all-namespaces path only lists and watches.
    let writable = route.namespace.is_some() || !route.resource.namespaced();
    match call.method {
        Method::GET if call.query.flag("watch") => watch(shared, route, &call.query),
        Method::GET => list(shared, route, &call.query),
        Method::POST if writable => {
            let object = call.object()?;
            let mut state = shared.lock();
            let namespace = route.namespace.as_deref();
            let created = registry::create(&mut state.store, route.resource, namespace, object)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        Method::DELETE if writable => delete_collection(shared, route, &call.query),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn object(shared: &Shared, call: &Call<'_>, name: &str) -> Result<Response<Body>, ApiError> {
    let resource = call.route.resource;
    let target = ObjectRef {
        resource,
        namespace: call.route.namespace.as_deref(),
        name,
    };
    let subresource = call.route.subresource;
    match (&call.method, subresource) {
        (&Method::GET, _) => {
            let state = shared.lock();
            let object = state.store.get(resource, target.namespace, name);
            let object = object.ok_or_else(|| ApiError::not_found(resource, name))?;
            Ok(json_response(StatusCode::OK, object))
        }
        (&Method::PUT, _) => {
            let object = call.object()?;
            let mut state = shared.lock();
            let replaced = registry::replace(&mut state.store, target, subresource, object)?;
            Ok(json_response(StatusCode::OK, &replaced))
        }
        (&Method::PATCH, _) => {
            let (kind, patch) = patch_request(call)?;
            let mut state = shared.lock();
            let (patched, created) =
                registry::patch(&mut state.store, target, subresource, kind, &patch)?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &patched))
        }
        (&Method::DELETE, Subresource::Main) => {
            let options = if call.body.is_empty() {
                json!({})
            } else {
                call.object()?
            };
            let deleted = registry::delete(&mut shared.lock().store, target, &options)?;
            let response = deleted_response(resource, &deleted);
            Ok(json_response(StatusCode::OK, &response))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The patch format from `Content-Type` and the parsed patch body.
fn patch_request(call: &Call<'_>) -> Result<(PatchKind, Value), ApiError> {
    let custom = call.route.resource.is_custom();
    let kind = call
        .content_type
        .and_then(PatchKind::from_content_type)
        .filter(|kind| *kind != PatchKind::Strategic || !custom)
        .ok_or_else(|| ApiError::unsupported_media_type(PatchKind::accepted(custom)))?;
    let field_manager = call.query.get("fieldManager").unwrap_or("");
    if kind == PatchKind::Apply && field_manager.is_empty() {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            "fieldManager",
            "FieldValueRequired",
            "Required value: is required for apply patch",
        ));
    }
    Ok((kind, kind.parse_body(&call.body)?))
}

/// The object for types that return it, else the success `Status` the
/// generic registry builds (with the resource, not the kind, in `details.kind`).
fn deleted_response(resource: Resource, deleted: &Value) -> Value {
    if resource.returns_deleted_object() {
        return deleted.clone();
    }
    let meta = &deleted["metadata"];
    let mut details =
        json!({ "name": meta["name"], "kind": resource.plural(), "uid": meta["uid"] });
    if !resource.group().is_empty() {
        details["group"] = json!(resource.group());
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
    ))
}

/// LIST, with `limit`/`continue` paging over the current objects.
fn list(shared: &Shared, route: &Route, query: &Query) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(query)?;
    let limit = match query.get("limit") {
        None | Some("" | "0") => usize::MAX,
        Some(n) => n
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {n:?}")))?,
    };
    let start = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => continue_start(token)?,
        None => String::new(),
    };
    let state = shared.lock();
    let resource_version = state.store.resource_version();
    let mut matching = state
        .store
        .entries(route.resource, route.namespace.as_deref(), &start)
        .filter(|(_, o)| labels.matches(o) && fields.matches(o));
    let page: Vec<(&str, &Value)> = matching.by_ref().take(limit).collect();
    let remaining = matching.count();
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if let (Some((last, _)), true) = (page.last(), remaining > 0) {
        metadata["continue"] = json!(continue_token(resource_version, last));
        if labels.is_empty() && fields.is_empty() {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(list_response(
        route.resource,
        metadata,
        page.into_iter().map(|(_, o)| o),
    ))
}

/// A `<Kind>List` of `objects`.
fn list_response<'a>(
    resource: Resource,
    metadata: Value,
    objects: impl Iterator<Item = &'a Value>,
) -> Response<Body> {
    let items: Vec<Value> = objects.map(|o| list_item(resource, o)).collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// Built-in types' list items carry no `kind`/`apiVersion` (the list names
/// them); custom resources' items, served as unstructured JSON, do.
fn list_item(resource: Resource, object: &Value) -> Value {
    let mut item = object.clone();
    if !resource.is_custom()
        && let Some(item) = item.as_object_mut()
    {
        item.remove("kind");
        item.remove("apiVersion");
    }
    item
}

/// The real server's continue token: base64 of `{"v","rv","start"}`, where
/// `start` is the key path just after the last item returned.
fn continue_token(resource_version: u64, last: &str) -> String {
    let token =
        json!({ "v": "meta.k8s.io/v1", "rv": resource_version, "start": format!("{last}\u{0}") });
    let bytes = k8s_openapi::ByteString(token.to_string().into_bytes());
    serde_json::to_value(bytes)
        .expect("bytes serialize")
        .as_str()
        .expect("base64 text")
        .to_string()
}

fn continue_start(token: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let bytes: k8s_openapi::ByteString =
        serde_json::from_value(json!(token)).map_err(|_| invalid())?;
    let decoded: Value = serde_json::from_slice(&bytes.0).map_err(|_| invalid())?;
    decoded["start"]
        .as_str()
        .map(String::from)
        .ok_or_else(invalid)
}

fn delete_collection(
    shared: &Shared,
    route: &Route,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(query)?;
    let mut state = shared.lock();
    let namespace = route.namespace.as_deref();
    let deleted = registry::delete_collection(
        &mut state.store,
        route.resource,
        namespace,
        &labels,
        &fields,
    );
    let resource_version = state.store.resource_version();
    Ok(list_response(
        route.resource,
        json!({ "resourceVersion": resource_version.to_string() }),
        deleted.iter(),
    ))
}

fn watch(shared: &Arc<Shared>, route: &Route, query: &Query) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(query)?;
    let resource_version = match query.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        ),
    };
    let timeout = match query.get("timeoutSeconds") {
        None | Some("" | "0") => MAX_TIMEOUT,
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
    };
    let request = WatchRequest {
        resource: route.resource,
        namespace: route.namespace.clone(),
        labels,
        fields,
        resource_version,
        bookmarks: query.flag("allowWatchBookmarks"),
        send_initial_events: query.flag("sendInitialEvents"),
        timeout,
    };
    let events = watch::start(shared, request).map(|bytes| Ok(Frame::data(bytes)));
    // No content length: hyper sends the body with chunked transfer encoding.
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed_unsync(StreamBody::new(events)))
        .expect("a valid response");
    Ok(response)
}

/// A POST/PUT/DELETE body: JSON or YAML, as the real server decodes them.
fn decode_object(content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let media_type = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    let decoded = match media_type.as_deref() {
        Some("application/json") => {
            serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
        }
        Some("application/yaml") => {
            serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
        }
        _ => {
            return Err(ApiError::unsupported_media_type(&[
                "application/json",
                "application/yaml",
            ]));
        }
    };
    decoded.map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "apiserver-double",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed_unsync(Full::new(Bytes::from(
            body.to_string(),
        ))))
        .expect("a valid response")
}

fn error_response(err: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &err.to_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_to_the_next_key() {
        let token = continue_token(7, "ns/b");
        assert_eq!(continue_start(&token).unwrap(), "ns/b\u{0}");
        assert_eq!(continue_start("not base64!").unwrap_err().code, 400);
    }

    #[test]
    fn built_in_list_items_have_no_type_meta() {
        let object = json!({ "kind": "Pod", "apiVersion": "v1", "metadata": {} });
        assert_eq!(
            list_item(Resource::Pods, &object),
            json!({ "metadata": {} })
        );
        let va = json!({ "kind": "VariantAutoscaling", "apiVersion": "llmd.ai/v1alpha1" });
        assert_eq!(list_item(Resource::VariantAutoscalings, &va), va);
    }

    #[test]
    fn request_bodies_need_a_known_media_type() {
        assert_eq!(
            decode_object(Some("application/json; charset=utf-8"), b"{\"a\":1}").unwrap(),
            json!({ "a": 1 })
        );
        assert_eq!(
            decode_object(Some("application/yaml"), b"a: 1").unwrap(),
            json!({ "a": 1 })
        );
        assert_eq!(decode_object(None, b"{}").unwrap_err().code, 415);
        assert_eq!(
            decode_object(Some("application/json"), b"{")
                .unwrap_err()
                .code,
            400
        );
    }
}
