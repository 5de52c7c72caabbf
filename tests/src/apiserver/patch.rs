//! PATCH bodies: the four content types the real server accepts and how each
//! changes a stored object.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch formats, by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`, applied as a merge patch
    /// (see [`check_strategic`]).
    Strategic,
    /// `application/apply-patch+yaml`: server-side apply, applied as a merge
    /// patch without field ownership.
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<PatchKind> {
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        match media_type.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" => Some(PatchKind::Apply),
            _ => None,
        }
    }

    /// The media types a resource accepts, in the order the real server lists
    /// them; custom resources have no strategic merge patch.
    pub fn accepted(custom: bool) -> &'static [&'static str] {
        if custom {
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ]
        } else {
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ]
        }
    }

    /// Parses a patch body: apply patches are YAML (of which JSON is a subset).
    pub fn parse_body(self, body: &[u8]) -> Result<Value, ApiError> {
        let parsed = match self {
            PatchKind::Apply => serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string()),
            _ => serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()),
        };
        parsed.map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
    }

    /// Applies `patch` to `target` and returns the patched object.
    pub fn apply(self, target: &Value, patch: &Value) -> Result<Value, ApiError> {
        match self {
            PatchKind::Json => json_patch(target, patch),
            PatchKind::Merge | PatchKind::Apply => {
                require_object(patch)?;
                Ok(merge_patch(target, patch))
            }
            PatchKind::Strategic => {
                require_object(patch)?;
                check_strategic(patch)?;
                Ok(merge_patch(target, patch))
            }
        }
    }
}

fn require_object(patch: &Value) -> Result<(), ApiError> {
    if patch.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "the patch body must be a JSON object",
        ))
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` deletes a key,
/// anything else (arrays included) replaces.
pub(crate) fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut merged = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            merged.remove(key);
        } else {
            let patched = merge_patch(merged.get(key).unwrap_or(&Value::Null), value);
            merged.insert(key.clone(), patched);
        }
    }
    Value::Object(merged)
}

/// A strategic merge patch equals a merge patch when it contains no list
/// and no `$` directive: then no merge key, patch strategy or directive can
/// apply. The clients the double serves patch only maps and scalars this way
/// (label and annotation changes, Lease fields); anything else fails loudly
/// rather than being merged differently from the real server.
fn check_strategic(patch: &Value) -> Result<(), ApiError> {
    match patch {
        Value::Array(_) => Err(ApiError::internal(
            "the API-server double applies strategic merge patches as merge patches and cannot merge a list by its merge key; send a JSON merge patch instead",
        )),
        Value::Object(map) => {
            if let Some(directive) = map.keys().find(|k| k.starts_with('$')) {
                return Err(ApiError::internal(format!(
                    "the API-server double does not implement the strategic merge patch directive {directive}"
                )));
            }
            map.values().try_for_each(check_strategic)
        }
        _ => Ok(()),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`,
/// applied in order to a copy; any failing operation leaves the object unchanged.
fn json_patch(target: &Value, operations: &Value) -> Result<Value, ApiError> {
    let operations = operations
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    let mut doc = target.clone();
    for op in operations {
        apply_operation(&mut doc, op).map_err(|why| {
            ApiError::invalid_patch(format!("the JSON patch operation {op} failed: {why}"))
        })?;
    }
    Ok(doc)
}

fn apply_operation(doc: &mut Value, op: &Value) -> Result<(), String> {
    let path = |key: &str| {
        op.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing {key}"))
    };
    let value = || op.get("value").cloned().ok_or("missing value");
    match op.get("op").and_then(Value::as_str) {
        Some("add") => add(doc, path("path")?, value()?),
        Some("remove") => remove(doc, path("path")?).map(drop),
        Some("replace") => {
            let slot = doc
                .pointer_mut(path("path")?)
                .ok_or("path does not exist")?;
            *slot = value()?;
            Ok(())
        }
        Some("move") => {
            let moved = remove(doc, path("from")?)?;
            add(doc, path("path")?, moved)
        }
        Some("copy") => {
            let copied = doc.pointer(path("from")?).ok_or("from does not exist")?;
            add(doc, path("path")?, copied.clone())
        }
        Some("test") => {
            let actual = doc.pointer(path("path")?).ok_or("path does not exist")?;
            if *actual == value()? {
                Ok(())
            } else {
                Err("test failed".into())
            }
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(pointer: &str) -> Result<(&str, String), String> {
    let (parent, last) = pointer
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    if pointer.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(pointer)?;
    match doc.pointer_mut(parent).ok_or("parent does not exist")? {
        Value::Object(map) => {
            map.insert(token, value);
            Ok(())
        }
        Value::Array(items) if token == "-" => {
            items.push(value);
            Ok(())
        }
        Value::Array(items) => {
            let index: usize = token.parse().map_err(|_| "invalid array index")?;
            if index > items.len() {
                return Err("array index out of bounds".into());
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err("parent is not a container".into()),
    }
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, String> {
    let (parent, token) = split_pointer(pointer)?;
    match doc.pointer_mut(parent).ok_or("parent does not exist")? {
        Value::Object(map) => map
            .remove(&token)
            .ok_or_else(|| "path does not exist".into()),
        Value::Array(items) => {
            let index: usize = token.parse().map_err(|_| "invalid array index")?;
            if index >= items.len() {
                return Err("array index out of bounds".into());
            }
            Ok(items.remove(index))
        }
        _ => Err("parent is not a container".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The worked example from RFC 7386 section 3.
        let target = json!({
            "title": "Goodbye!",
            "author": { "givenName": "John", "familyName": "Doe" },
            "tags": ["example", "sample"],
            "content": "This will be unchanged",
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": { "familyName": null },
            "tags": ["example"],
        });
        assert_eq!(
            merge_patch(&target, &patch),
            json!({
                "title": "Hello!",
                "author": { "givenName": "John" },
                "tags": ["example"],
                "content": "This will be unchanged",
                "phoneNumber": "+01-123-456-7890",
            })
        );
    }

    #[test]
    fn content_types_ignore_parameters_and_case() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("Application/Apply-Patch+YAML"),
            Some(PatchKind::Apply)
        );
        assert_eq!(PatchKind::from_content_type("application/json"), None);
    }

    #[test]
    fn apply_bodies_may_be_yaml() {
        let body = b"apiVersion: v1\nkind: ConfigMap\ndata:\n  a: \"1\"\n";
        let parsed = PatchKind::Apply.parse_body(body).unwrap();
        assert_eq!(parsed["data"]["a"], "1");
    }

    #[test]
    fn strategic_patches_with_lists_or_directives_fail_loudly() {
        let target = json!({ "spec": { "replicas": 1 } });
        let fine = json!({ "spec": { "replicas": 2 }, "metadata": { "labels": { "a": null } } });
        assert_eq!(
            PatchKind::Strategic.apply(&target, &fine).unwrap(),
            json!({ "spec": { "replicas": 2 }, "metadata": { "labels": {} } })
        );
        for unsupported in [
            json!({ "spec": { "containers": [{ "name": "a" }] } }),
            json!({ "spec": { "$patch": "replace" } }),
        ] {
            let err = PatchKind::Strategic
                .apply(&target, &unsupported)
                .unwrap_err();
            assert_eq!(err.code, 500);
        }
    }

    #[test]
    fn json_patch_operations() {
        let target = json!({ "a": { "b": 1 }, "list": [1, 2], "x~y": 0 });
        let ops = json!([
            { "op": "test", "path": "/a/b", "value": 1 },
            { "op": "replace", "path": "/a/b", "value": 2 },
            { "op": "add", "path": "/list/-", "value": 3 },
            { "op": "add", "path": "/list/0", "value": 0 },
            { "op": "remove", "path": "/x~0y" },
            { "op": "copy", "from": "/a", "path": "/c" },
            { "op": "move", "from": "/c/b", "path": "/d" },
        ]);
        assert_eq!(
            PatchKind::Json.apply(&target, &ops).unwrap(),
            json!({ "a": { "b": 2 }, "list": [0, 1, 2, 3], "c": {}, "d": 2 })
        );
    }

    #[test]
    fn a_failing_json_patch_operation_is_invalid() {
        let target = json!({ "a": 1 });
        let ops = json!([{ "op": "test", "path": "/a", "value": 2 }]);
        assert_eq!(PatchKind::Json.apply(&target, &ops).unwrap_err().code, 422);
        let ops = json!([{ "op": "remove", "path": "/missing" }]);
        assert_eq!(PatchKind::Json.apply(&target, &ops).unwrap_err().code, 422);
    }
}
