//! Failures as the real API server reports them: a `meta/v1 Status` with the
//! reason, code, message and details that `k8s.io/apimachinery/pkg/api/errors`
//! would produce.

use serde_json::{Value, json};

use super::resources::Resource;

/// An API failure, turned into a `Status` response body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// `details` naming the object as `NewNotFound`, `NewConflict`, … do: the
/// *resource* (plural) goes in `kind`.
fn resource_details(resource: Resource, name: &str) -> Value {
    let mut details = json!({ "name": name, "kind": resource.plural() });
    if !resource.group().is_empty() {
        details["group"] = json!(resource.group());
    }
    details
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn not_found(resource: Resource, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" not found", resource.qualified());
        ApiError::new(404, "NotFound", message).with_details(resource_details(resource, name))
    }

    /// A path that names no served resource.
    pub fn no_such_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(resource: Resource, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" already exists", resource.qualified());
        ApiError::new(409, "AlreadyExists", message).with_details(resource_details(resource, name))
    }

    /// A failed precondition: `why` is the reason the update cannot be applied.
    pub fn conflict(resource: Resource, name: &str, why: &str) -> ApiError {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            resource.qualified()
        );
        ApiError::new(409, "Conflict", message).with_details(resource_details(resource, name))
    }

    /// The resourceVersion precondition failed.
    pub fn modified(resource: Resource, name: &str) -> ApiError {
        ApiError::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// A field-validation failure (422), as `NewInvalid` reports it: the
    /// *kind* goes in `details.kind` and each cause names its field.
    pub fn invalid(
        group: &str,
        kind: &str,
        name: &str,
        field: &str,
        cause_reason: &str,
        detail: &str,
    ) -> ApiError {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = format!("{qualified_kind} \"{name}\" is invalid: {field}: {detail}");
        let mut details = json!({
            "name": name,
            "kind": kind,
            "causes": [{ "reason": cause_reason, "message": detail, "field": field }],
        });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        ApiError::new(422, "Invalid", message).with_details(details)
    }

    /// A JSON patch operation that cannot be applied to the stored object.
    pub fn invalid_patch(message: String) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn unsupported_media_type(accepted: &[&str]) -> ApiError {
        let message = format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        );
        ApiError::new(415, "UnsupportedMediaType", message).with_details(json!({}))
    }

    /// The watch history no longer reaches back to the requested version.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
        .with_details(json!({ "causes": [{ "message": message }] }))
    }

    /// The `Status` object sent as the response body (or a watch ERROR object).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_qualified_resource() {
        let status = ApiError::not_found(Resource::VariantAutoscalings, "x").to_status();
        assert_eq!(
            status,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "variantautoscalings.llmd.ai \"x\" not found",
                "reason": "NotFound",
                "details": { "name": "x", "group": "llmd.ai", "kind": "variantautoscalings" },
                "code": 404,
            })
        );
    }

    #[test]
    fn invalid_names_the_kind_and_the_field() {
        let err = ApiError::invalid(
            "llmd.ai",
            "VariantAutoscaling",
            "x",
            "metadata.resourceVersion",
            "FieldValueInvalid",
            "Invalid value: 0: must be specified for an update",
        );
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "VariantAutoscaling.llmd.ai \"x\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update"
        );
        assert_eq!(err.details.unwrap()["kind"], "VariantAutoscaling");
    }
}
