//! Errors of the OpenAI-style endpoints, answered as vLLM does:
//! `{"error": {"message", "type", "param", "code"}}`.

use http::StatusCode;
use serde::Serialize;
use serde_json::error::Category;

use crate::engine::SubmitError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", describe_json(.0))]
    Json(#[from] serde_json::Error),
    #[error("invalid `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error(
        "This model's maximum context length is {max_model_len} tokens. However, your request \
         has {prompt_tokens} input tokens. Please reduce the length of the input."
    )]
    PromptTooLong {
        max_model_len: u32,
        prompt_tokens: u32,
    },
    #[error(
        "'max_tokens' is too large: {max_tokens}. This model's maximum context length is \
         {max_model_len} tokens and your request has {prompt_tokens} input tokens \
         ({max_tokens} > {max_model_len} - {prompt_tokens})."
    )]
    MaxTokensTooLarge {
        max_tokens: u32,
        max_model_len: u32,
        prompt_tokens: u32,
    },
    #[error(
        "a request may ask for at most {limit} sequences (prompts × n), this one asks for {requested}"
    )]
    TooManySequences { requested: usize, limit: usize },
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("The model is still loading; retry shortly.")]
    NotReady,
    #[error("The server is shutting down.")]
    ShuttingDown,
}

fn describe_json(e: &serde_json::Error) -> String {
    match e.classify() {
        Category::Data => format!("invalid request: {e}"),
        Category::Syntax | Category::Eof | Category::Io => format!("invalid JSON body: {e}"),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInfo<'a>,
}

#[derive(Serialize)]
struct ErrorInfo<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: u16,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Submit(SubmitError::QueueFull { .. }) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Json(_)
            | ApiError::Field { .. }
            | ApiError::PromptTooLong { .. }
            | ApiError::MaxTokensTooLarge { .. }
            | ApiError::TooManySequences { .. }
            | ApiError::Body(_)
            | ApiError::Submit(SubmitError::EmptySequence | SubmitError::ExceedsKvCache { .. }) => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeError",
            StatusCode::TOO_MANY_REQUESTS => "RateLimitError",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
            _ => "BadRequestError",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::Field { field, .. } => Some(field),
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::MaxTokensTooLarge { .. } => Some("max_tokens"),
            _ => None,
        }
    }

    /// The JSON body of the error response.
    pub fn body(&self) -> Vec<u8> {
        let message = self.to_string();
        let body = ErrorBody {
            error: ErrorInfo {
                message: &message,
                kind: self.kind(),
                param: self.param(),
                code: self.status().as_u16(),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_and_shape_errors_are_told_apart() {
        let syntax = serde_json::from_str::<serde_json::Value>("{\"a\":").expect_err("truncated");
        assert!(
            ApiError::from(syntax)
                .to_string()
                .starts_with("invalid JSON body: EOF while parsing")
        );
        let shape = serde_json::from_str::<u32>("\"x\"").expect_err("wrong type");
        assert!(
            ApiError::from(shape)
                .to_string()
                .starts_with("invalid request: invalid type: string")
        );
    }

    #[test]
    fn body_is_openai_shaped() {
        let err = ApiError::Submit(SubmitError::QueueFull {
            waiting: 4,
            capacity: 4,
        });
        let body: serde_json::Value = serde_json::from_slice(&err.body()).expect("json");
        assert_eq!(body["error"]["code"], 429);
        assert_eq!(body["error"]["type"], "RateLimitError");
        assert_eq!(
            body["error"]["message"],
            "the waiting queue is full (4 of 4 requests waiting)"
        );
    }
}
