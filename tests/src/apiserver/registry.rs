//! What the real server's generic registry and each type's strategy do to an
//! object on create, update, patch and delete: validate the request against
//! the URL, check preconditions, fill server-owned metadata, isolate `status`,
//! move `generation`, and skip writes that change nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::patch::PatchKind;
use super::resources::{Generation, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ChangeKind, Store};

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subresource {
    /// The object itself: `.status` is kept as stored when the type has `/status`.
    Main,
    /// `/status`: only `.status` changes.
    Status,
}

/// The object a request addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectRef<'a> {
    pub resource: Resource,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl ObjectRef<'_> {
    fn current(&self, store: &Store) -> Result<Value, ApiError> {
        store
            .get(self.resource, self.namespace, self.name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(self.resource, self.name))
    }
}

/// POST: creates an object in `namespace` (ignored for cluster-scoped types).
pub(crate) fn create(
    store: &mut Store,
    resource: Resource,
    namespace: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    check_type(resource, &body)?;
    set_namespace(resource, namespace, &mut body)?;
    let name = name_for_create(resource, &mut body)?;
    if let Some(ns) = namespace.filter(|_| resource.namespaced())
        && store.get(Resource::Namespaces, None, ns).is_none()
    {
        // NamespaceLifecycle admission: no objects in a namespace that does not exist.
        return Err(ApiError::not_found(Resource::Namespaces, ns));
    }
    if store.get(resource, namespace, &name).is_some() {
        return Err(ApiError::already_exists(resource, &name));
    }
    if meta_str(&body, "resourceVersion").is_some() {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    prepare_for_create(resource, &mut body);
    Ok(store.commit(ChangeKind::Added, resource, None, body))
}

/// PUT: replaces an object (or only its status).
pub(crate) fn replace(
    store: &mut Store,
    target: ObjectRef<'_>,
    subresource: Subresource,
    mut body: Value,
) -> Result<Value, ApiError> {
    let current = target.current(store)?;
    check_type(target.resource, &body)?;
    check_name(target.name, &body)?;
    set_namespace(target.resource, target.namespace, &mut body)?;
    // Custom resources do not allow unconditional updates.
    if target.resource.is_custom() && meta_str(&body, "resourceVersion").is_none() {
        return Err(ApiError::invalid(
            target.resource.group(),
            target.resource.kind(),
            target.name,
            "metadata.resourceVersion",
            "FieldValueInvalid",
            "Invalid value: 0x0: must be specified for an update",
        ));
    }
    check_preconditions(target, &current, &body)?;
    Ok(write(store, target.resource, current, body, subresource))
}

/// PATCH: applies a patch to the stored object; an apply patch creates a
/// missing object. Returns the object and whether it was created.
pub(crate) fn patch(
    store: &mut Store,
    target: ObjectRef<'_>,
    subresource: Subresource,
    kind: PatchKind,
    patch: &Value,
) -> Result<(Value, bool), ApiError> {
    if kind == PatchKind::Apply {
        // An applied configuration is a whole (partial) object.
        check_type(target.resource, patch)?;
    }
    let Some(current) = store
        .get(target.resource, target.namespace, target.name)
        .cloned()
    else {
        if kind == PatchKind::Apply && subresource == Subresource::Main {
            let mut body = patch.clone();
            if meta_str(&body, "name").is_none() {
                body["metadata"]["name"] = json!(target.name);
            }
            check_name(target.name, &body)?;
            return create(store, target.resource, target.namespace, body).map(|o| (o, true));
        }
        return Err(ApiError::not_found(target.resource, target.name));
    };
    let mut patched = kind.apply(&current, patch)?;
    check_type(target.resource, &patched)?;
    check_name(target.name, &patched)?;
    set_namespace(target.resource, target.namespace, &mut patched)?;
    // A patch carrying metadata.resourceVersion (or uid) is a precondition.
    check_preconditions(target, &current, &patched)?;
    Ok((
        write(store, target.resource, current, patched, subresource),
        false,
    ))
}

/// DELETE: removes the object at once (no finalizers, no graceful deletion)
/// and returns it at the deletion's resourceVersion.
pub(crate) fn delete(
    store: &mut Store,
    target: ObjectRef<'_>,
    options: &Value,
) -> Result<Value, ApiError> {
    let current = target.current(store)?;
    let preconditions = &options["preconditions"];
    let failed = [("uid", "UID"), ("resourceVersion", "ResourceVersion")]
        .into_iter()
        .find_map(|(field, label)| {
            let wanted = preconditions[field].as_str()?;
            let actual = meta_str(&current, field).unwrap_or("");
            (wanted != actual).then(|| {
                format!(
                    "Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}"
                )
            })
        });
    if let Some(why) = failed {
        return Err(ApiError::conflict(target.resource, target.name, &why));
    }
    Ok(store.commit(
        ChangeKind::Deleted,
        target.resource,
        Some(current.clone()),
        current,
    ))
}

/// DELETE on a collection: deletes every matching object and returns them.
pub(crate) fn delete_collection(
    store: &mut Store,
    resource: Resource,
    namespace: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Vec<Value> {
    let doomed: Vec<Value> = store
        .list(resource, namespace)
        .filter(|o| labels.matches(o) && fields.matches(o))
        .cloned()
        .collect();
    doomed
        .into_iter()
        .map(|current| {
            store.commit(
                ChangeKind::Deleted,
                resource,
                Some(current.clone()),
                current,
            )
        })
        .collect()
}

/// Stores `next` in place of `current` after the update strategy, unless the
/// result is identical: the real server then writes nothing, so the
/// resourceVersion stays and no watch event is sent.
fn write(
    store: &mut Store,
    resource: Resource,
    current: Value,
    body: Value,
    subresource: Subresource,
) -> Value {
    let next = match subresource {
        Subresource::Main => prepare_for_update(resource, &current, body),
        Subresource::Status => {
            let mut next = current.clone();
            copy_field(&mut next, &body, "status");
            next
        }
    };
    if next == current {
        return current;
    }
    store.commit(ChangeKind::Modified, resource, Some(current), next)
}

fn prepare_for_create(resource: Resource, body: &mut Value) {
    let meta = metadata_mut(body);
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), now());
    for server_owned in [
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        meta.remove(server_owned);
    }
    if resource.generation() != Generation::Untracked {
        meta.insert("generation".into(), json!(1));
    }
    if resource.has_status_subresource() {
        // Status cannot be set on create; built-in types start from their
        // strategy's initial status, custom resources from none.
        let object = body.as_object_mut().expect("checked to be an object");
        match resource {
            Resource::Pods => object.insert("status".into(), json!({ "phase": "Pending" })),
            Resource::Namespaces => object.insert("status".into(), json!({ "phase": "Active" })),
            Resource::Services => object.insert("status".into(), json!({ "loadBalancer": {} })),
            _ if resource.is_custom() => object.remove("status"),
            _ => object.insert("status".into(), json!({})),
        };
    }
    apply_defaults(resource, body);
}

fn prepare_for_update(resource: Resource, current: &Value, mut next: Value) -> Value {
    for server_owned in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        let meta = metadata_mut(&mut next);
        match current["metadata"].get(server_owned) {
            Some(value) => meta.insert(server_owned.into(), value.clone()),
            None => meta.remove(server_owned),
        };
    }
    if resource.has_status_subresource() {
        copy_field(&mut next, current, "status");
    }
    apply_defaults(resource, &mut next);
    if let Some(generation) = current["metadata"]["generation"].as_i64()
        && spec_changed(resource, current, &next)
    {
        next["metadata"]["generation"] = json!(generation + 1);
    }
    next
}

/// Whether a change counts for `metadata.generation`, per the type's strategy.
fn spec_changed(resource: Resource, current: &Value, next: &Value) -> bool {
    let annotations = |o: &Value| {
        o["metadata"]["annotations"]
            .as_object()
            .filter(|m| !m.is_empty())
            .cloned()
    };
    match resource.generation() {
        Generation::Untracked => false,
        Generation::Spec => current["spec"] != next["spec"],
        Generation::SpecAndAnnotations => {
            current["spec"] != next["spec"] || annotations(current) != annotations(next)
        }
        Generation::AllButMetadataAndStatus => {
            let content = |o: &Value| {
                let mut o = o.as_object().cloned().unwrap_or_default();
                o.remove("metadata");
                o.remove("status");
                o
            };
            content(current) != content(next)
        }
    }
}

/// Defaulting and normalisation the real server applies on every write of
/// these types (a subset: see the module docs of `apiserver`).
fn apply_defaults(resource: Resource, object: &mut Value) {
    // ObjectMeta is a Go struct: empty maps and lists are omitted, not stored.
    let meta = metadata_mut(object);
    meta.retain(|key, value| {
        !value.is_null()
            && !(matches!(
                key.as_str(),
                "labels" | "annotations" | "finalizers" | "ownerReferences"
            ) && (value.as_object().is_some_and(Map::is_empty)
                || value.as_array().is_some_and(Vec::is_empty)))
    });
    match resource {
        Resource::Deployments | Resource::ReplicaSets => {
            if let Some(spec) = object["spec"].as_object_mut() {
                spec.entry("replicas").or_insert(json!(1));
            }
        }
        Resource::Secrets => {
            // stringData is write-only: merged into data, base64-encoded.
            let object = object.as_object_mut().expect("checked to be an object");
            if let Some(Value::Object(string_data)) = object.remove("stringData") {
                let data = object.entry("data").or_insert_with(|| json!({}));
                for (key, value) in string_data {
                    let bytes = ByteString(value.as_str().unwrap_or("").as_bytes().to_vec());
                    data[key] = serde_json::to_value(bytes).expect("bytes serialize");
                }
            }
            object.entry("type").or_insert(json!("Opaque"));
        }
        _ => {}
    }
}

/// `kind` and `apiVersion` must be present and name the URL's resource.
fn check_type(resource: Resource, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object must be a JSON object, got: {body}"
        )));
    }
    for (field, expected) in [
        ("apiVersion", resource.api_version()),
        ("kind", resource.kind().to_string()),
    ] {
        match body[field].as_str().filter(|s| !s.is_empty()) {
            None => {
                return Err(ApiError::bad_request(format!(
                    "Object '{}' is missing in '{body}'",
                    if field == "kind" { "Kind" } else { field }
                )));
            }
            Some(actual) if actual != expected => {
                let what = if field == "kind" {
                    "kind"
                } else {
                    "API version"
                };
                return Err(ApiError::bad_request(format!(
                    "the {what} in the data ({actual}) does not match the expected {what} ({expected})"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_name(name: &str, body: &Value) -> Result<(), ApiError> {
    let in_body = meta_str(body, "name").unwrap_or("");
    if in_body == name {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "the name of the object ({in_body}) does not match the name on the URL ({name})"
        )))
    }
}

/// Fills `metadata.namespace` from the URL; a different one in the body is
/// refused. Cluster-scoped objects never carry one.
fn set_namespace(
    resource: Resource,
    namespace: Option<&str>,
    body: &mut Value,
) -> Result<(), ApiError> {
    let meta = metadata_mut(body);
    match namespace.filter(|_| resource.namespaced()) {
        None => {
            meta.remove("namespace");
        }
        Some(ns) => match meta.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        },
    }
    Ok(())
}

/// `metadata.name`, or one generated from `metadata.generateName`.
fn name_for_create(resource: Resource, body: &mut Value) -> Result<String, ApiError> {
    if let Some(name) = meta_str(body, "name") {
        return Ok(name.to_string());
    }
    let Some(prefix) = meta_str(body, "generateName") else {
        return Err(ApiError::invalid(
            resource.group(),
            resource.kind(),
            "",
            "metadata.name",
            "FieldValueRequired",
            "Required value: name or generateName is required",
        ));
    };
    // The alphabet of k8s.io/apimachinery/pkg/util/rand: no vowels, no confusable digits.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    let name = format!("{prefix}{suffix}");
    body["metadata"]["name"] = json!(name);
    Ok(name)
}

/// `metadata.uid` and `metadata.resourceVersion` in a write are preconditions.
fn check_preconditions(
    target: ObjectRef<'_>,
    current: &Value,
    body: &Value,
) -> Result<(), ApiError> {
    if let Some(uid) = meta_str(body, "uid") {
        let actual = meta_str(current, "uid").unwrap_or("");
        if uid != actual {
            return Err(ApiError::conflict(
                target.resource,
                target.name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    match meta_str(body, "resourceVersion") {
        Some(rv) if Some(rv) != meta_str(current, "resourceVersion") => {
            Err(ApiError::modified(target.resource, target.name))
        }
        _ => Ok(()),
    }
}

/// A non-empty string field of `metadata`.
fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str().filter(|s| !s.is_empty())
}

/// `metadata` as a map, created if missing or not an object.
fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    let object = object.as_object_mut().expect("checked to be an object");
    let meta = object.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("just made an object")
}

/// Sets `to[field]` to `from[field]`, or removes it when `from` has none.
fn copy_field(to: &mut Value, from: &Value, field: &str) {
    let to = to.as_object_mut().expect("checked to be an object");
    match from.get(field) {
        Some(value) => to.insert(field.into(), value.clone()),
        None => to.remove(field),
    };
}

/// A random (version 4) UUID.
pub(crate) fn new_uid() -> String {
    let bits = (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The current time as the API serializes `metav1.Time`: RFC 3339, whole seconds, UTC.
pub(crate) fn now() -> Value {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let timestamp =
        k8s_openapi::jiff::Timestamp::from_second(i64::try_from(seconds).expect("seconds fit i64"))
            .expect("a representable time");
    serde_json::to_value(Time(timestamp)).expect("Time serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_namespace() -> Store {
        let mut store = Store::new();
        create(
            &mut store,
            Resource::Namespaces,
            None,
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "ns" } }),
        )
        .unwrap();
        store
    }

    fn deployment(name: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name },
            "spec": { "template": {} },
            "status": { "replicas": 5 },
        })
    }

    fn target(name: &str) -> ObjectRef<'_> {
        ObjectRef {
            resource: Resource::Deployments,
            namespace: Some("ns"),
            name,
        }
    }

    #[test]
    fn create_fills_server_owned_metadata_and_drops_status() {
        let mut store = store_with_namespace();
        let created = create(
            &mut store,
            Resource::Deployments,
            Some("ns"),
            deployment("d"),
        )
        .unwrap();
        let meta = &created["metadata"];
        assert_eq!(meta["namespace"], "ns");
        assert_eq!(meta["generation"], 1);
        assert_eq!(meta["resourceVersion"], "2");
        assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
        let timestamp = meta["creationTimestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.len() == 20,
            "{timestamp}"
        );
        assert_eq!(created["status"], json!({}));
        assert_eq!(created["spec"]["replicas"], 1);
    }

    #[test]
    fn create_refuses_missing_namespaces_and_mismatched_types() {
        let mut store = store_with_namespace();
        let err = create(
            &mut store,
            Resource::Deployments,
            Some("nope"),
            deployment("d"),
        );
        assert_eq!(err.unwrap_err().message, "namespaces \"nope\" not found");
        let mut pod_kind = deployment("d");
        pod_kind["kind"] = json!("Pod");
        let err = create(&mut store, Resource::Deployments, Some("ns"), pod_kind).unwrap_err();
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
    }

    #[test]
    fn generate_name_appends_five_characters() {
        let mut store = store_with_namespace();
        let mut body = deployment("");
        body["metadata"] = json!({ "generateName": "web-" });
        let created = create(&mut store, Resource::Deployments, Some("ns"), body).unwrap();
        let name = created["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    }

    #[test]
    fn identical_writes_are_not_committed() {
        let mut store = store_with_namespace();
        let created = create(
            &mut store,
            Resource::Deployments,
            Some("ns"),
            deployment("d"),
        )
        .unwrap();
        let same = replace(&mut store, target("d"), Subresource::Main, created.clone()).unwrap();
        assert_eq!(same, created);
        assert_eq!(store.resource_version(), 2);
    }

    #[test]
    fn deployment_generation_counts_spec_and_annotations_but_not_labels() {
        let mut store = store_with_namespace();
        create(
            &mut store,
            Resource::Deployments,
            Some("ns"),
            deployment("d"),
        )
        .unwrap();
        let mut generation = |patch: Value| {
            let (o, _) = super::patch(
                &mut store,
                target("d"),
                Subresource::Main,
                PatchKind::Merge,
                &patch,
            )
            .unwrap();
            o["metadata"]["generation"].as_i64().unwrap()
        };
        assert_eq!(
            generation(json!({ "metadata": { "labels": { "a": "b" } } })),
            1
        );
        assert_eq!(
            generation(json!({ "metadata": { "annotations": { "a": "b" } } })),
            2
        );
        assert_eq!(generation(json!({ "spec": { "replicas": 3 } })), 3);
        assert_eq!(generation(json!({ "status": { "replicas": 3 } })), 3);
    }

    #[test]
    fn empty_label_maps_are_not_stored() {
        let mut store = store_with_namespace();
        let mut body = deployment("d");
        body["metadata"]["labels"] = json!({ "a": "b" });
        create(&mut store, Resource::Deployments, Some("ns"), body).unwrap();
        let (patched, _) = patch(
            &mut store,
            target("d"),
            Subresource::Main,
            PatchKind::Merge,
            &json!({ "metadata": { "labels": { "a": null } } }),
        )
        .unwrap();
        assert!(patched["metadata"].get("labels").is_none());
    }

    #[test]
    fn delete_preconditions_conflict() {
        let mut store = store_with_namespace();
        create(
            &mut store,
            Resource::Deployments,
            Some("ns"),
            deployment("d"),
        )
        .unwrap();
        let options = json!({ "preconditions": { "uid": "other" } });
        let err = delete(&mut store, target("d"), &options).unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("Precondition failed: UID in precondition: other")
        );
        let deleted = delete(&mut store, target("d"), &json!({})).unwrap();
        assert_eq!(deleted["metadata"]["resourceVersion"], "3");
    }

    #[test]
    fn secrets_merge_string_data_into_base64_data() {
        let mut store = store_with_namespace();
        let body = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "s" },
            "stringData": { "token": "abc" },
        });
        let created = create(&mut store, Resource::Secrets, Some("ns"), body).unwrap();
        assert_eq!(created["data"]["token"], "YWJj");
        assert_eq!(created["type"], "Opaque");
        assert!(created.get("stringData").is_none());
    }

    #[test]
    fn uids_are_version_4() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert!(matches!(&uid[19..20], "8" | "9" | "a" | "b"), "{uid}");
        assert_ne!(uid, new_uid());
    }
}
