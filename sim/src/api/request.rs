//! Request bodies of `/v1/completions` and `/v1/chat/completions`, reduced to
//! what the simulation needs: prompt sizes, output limits and streaming.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::tokens::{CHAT_TOKENS_PER_MESSAGE, estimate_tokens, fingerprint};

/// Which endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

/// One prompt: its approximate token count and a fingerprint of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prompt {
    pub tokens: u32,
    pub fingerprint: u64,
}

/// A parsed generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Model as requested (echoed back); `None` means the base model.
    pub model: Option<String>,
    pub prompts: Vec<Prompt>,
    pub n: u32,
    pub max_tokens: Option<u32>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    pub seed: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Fields both endpoints share; unknown fields are ignored, as vLLM does.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Body {
    model: Option<String>,
    prompt: Option<Value>,
    messages: Option<Value>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    ignore_eos: Option<bool>,
    seed: Option<i64>,
}

impl Generation {
    pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<Self, ApiError> {
        let body: Body = serde_json::from_slice(bytes)?;
        let (prompts, max_tokens) = match endpoint {
            Endpoint::Completions => {
                let prompt = body.prompt.as_ref().ok_or_else(|| missing("prompt"))?;
                (completion_prompts(prompt)?, body.max_tokens)
            }
            Endpoint::ChatCompletions => {
                let messages = body.messages.as_ref().ok_or_else(|| missing("messages"))?;
                // vLLM prefers the newer name when both are given.
                (
                    vec![chat_prompt(messages)?],
                    body.max_completion_tokens.or(body.max_tokens),
                )
            }
        };
        let max_tokens = max_tokens.map(|v| positive("max_tokens", v)).transpose()?;
        let n = body.n.map_or(Ok(1), |v| positive("n", v))?;
        let seed = body.seed.map(|s| s as u64);
        Ok(Self {
            model: body.model,
            prompts,
            n,
            max_tokens,
            ignore_eos: body.ignore_eos.unwrap_or(false),
            stream: body.stream.unwrap_or(false),
            include_usage: body
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            seed,
        })
    }
}

fn missing(field: &'static str) -> ApiError {
    ApiError::Field {
        field,
        problem: "is required".into(),
    }
}

fn positive(field: &'static str, value: i64) -> Result<u32, ApiError> {
    match u32::try_from(value) {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(ApiError::Field {
            field,
            problem: format!("must be between 1 and {}, got {value}", u32::MAX),
        }),
    }
}

/// `prompt`: a string, an array of strings, an array of token ids, or an
/// array of arrays of token ids; each string or id array is one prompt.
fn completion_prompts(prompt: &Value) -> Result<Vec<Prompt>, ApiError> {
    let shape = || ApiError::Field {
        field: "prompt",
        problem: "must be a non-empty string, array of strings, array of token ids or array of \
                  arrays of token ids"
            .into(),
    };
    match prompt {
        Value::String(text) => Ok(vec![text_prompt(text)]),
        Value::Array(items) if items.is_empty() => Err(shape()),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(Value::as_str)
            .map(text_prompt)
            .collect()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            Ok(vec![token_prompt(prompt, items)])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item.as_array() {
                Some(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
                    Ok(token_prompt(item, ids))
                }
                _ => Err(shape()),
            })
            .collect(),
        _ => Err(shape()),
    }
}

fn text_prompt(text: &str) -> Prompt {
    Prompt {
        tokens: estimate_tokens(text.chars().count()),
        fingerprint: fingerprint(&[text.as_bytes()]),
    }
}

fn token_prompt(value: &Value, ids: &[Value]) -> Prompt {
    let tokens = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    Prompt {
        tokens,
        fingerprint: fingerprint(&[value.to_string().as_bytes()]),
    }
}

/// `messages`: a non-empty array of `{role, content}` where content is a
/// string, null, or an array of parts whose `text` counts.
fn chat_prompt(messages: &Value) -> Result<Prompt, ApiError> {
    let invalid = |problem: String| ApiError::Field {
        field: "messages",
        problem,
    };
    let list = match messages.as_array() {
        Some(list) if !list.is_empty() => list,
        _ => return Err(invalid("must be a non-empty array of messages".into())),
    };
    let mut chars = 0;
    for (i, message) in list.iter().enumerate() {
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(invalid(format!("message {i} has no string `role`")));
        }
        chars += match message.get("content") {
            None | Some(Value::Null) => 0,
            Some(Value::String(text)) => text.chars().count(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .map(|text| text.chars().count())
                .sum(),
            Some(_) => {
                return Err(invalid(format!(
                    "message {i} `content` must be a string, an array of parts or null"
                )));
            }
        };
    }
    let template = u32::try_from(list.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(CHAT_TOKENS_PER_MESSAGE);
    Ok(Prompt {
        tokens: estimate_tokens(chars).saturating_add(template),
        fingerprint: fingerprint(&[messages.to_string().as_bytes()]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str) -> Result<Generation, ApiError> {
        Generation::parse(Endpoint::Completions, body.as_bytes())
    }

    #[test]
    fn prompt_shapes() {
        let g = completion(r#"{"prompt": "abcdefgh", "max_tokens": 5}"#).expect("string");
        assert_eq!(g.prompts.len(), 1);
        assert_eq!(g.prompts[0].tokens, 2);
        assert_eq!(g.max_tokens, Some(5));
        let g = completion(r#"{"prompt": ["a", "bbbbbbbbb"]}"#).expect("strings");
        assert_eq!(
            g.prompts.iter().map(|p| p.tokens).collect::<Vec<_>>(),
            [1, 3]
        );
        let g = completion(r#"{"prompt": [1, 2, 3, 4, 5]}"#).expect("ids");
        assert_eq!(g.prompts[0].tokens, 5);
        let g = completion(r#"{"prompt": [[1, 2], [3]]}"#).expect("id batches");
        assert_eq!(
            g.prompts.iter().map(|p| p.tokens).collect::<Vec<_>>(),
            [2, 1]
        );
        for bad in [
            r#"{"prompt": []}"#,
            r#"{"prompt": [1, "a"]}"#,
            r#"{"prompt": 3}"#,
            r#"{}"#,
        ] {
            let err = completion(bad).expect_err(bad);
            assert!(
                err.to_string().starts_with("invalid `prompt`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn same_prompt_same_fingerprint() {
        let a = completion(r#"{"prompt": "hello"}"#).expect("valid");
        let b = completion(r#"{"prompt": "hello", "max_tokens": 3}"#).expect("valid");
        let c = completion(r#"{"prompt": "hellp"}"#).expect("valid");
        assert_eq!(a.prompts[0].fingerprint, b.prompts[0].fingerprint);
        assert_ne!(a.prompts[0].fingerprint, c.prompts[0].fingerprint);
    }

    #[test]
    fn numbers_are_validated() {
        let err = completion(r#"{"prompt": "x", "max_tokens": 0}"#).expect_err("zero");
        assert_eq!(
            err.to_string(),
            "invalid `max_tokens`: must be between 1 and 4294967295, got 0"
        );
        let err = completion(r#"{"prompt": "x", "n": -2}"#).expect_err("negative");
        assert!(err.to_string().starts_with("invalid `n`"));
        let err = completion(r#"{"prompt": "x", "max_tokens": "many"}"#).expect_err("string");
        assert!(
            err.to_string()
                .starts_with("invalid request: invalid type: string \"many\""),
            "{err}"
        );
    }

    #[test]
    fn chat_counts_content_and_template() {
        let body = r#"{"messages": [{"role": "system", "content": "12345678"},
            {"role": "user", "content": [{"type": "text", "text": "abcd"}]}],
            "max_tokens": 9, "max_completion_tokens": 7, "stream": true,
            "stream_options": {"include_usage": true}}"#;
        let g = Generation::parse(Endpoint::ChatCompletions, body.as_bytes()).expect("valid chat");
        assert_eq!(g.prompts[0].tokens, 3 + 2 * CHAT_TOKENS_PER_MESSAGE);
        assert_eq!(g.max_tokens, Some(7));
        assert!(g.stream && g.include_usage);
        let err = Generation::parse(
            Endpoint::ChatCompletions,
            br#"{"messages": [{"content": "x"}]}"#,
        )
        .expect_err("no role");
        assert_eq!(
            err.to_string(),
            "invalid `messages`: message 0 has no string `role`"
        );
    }
}
