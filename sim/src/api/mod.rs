//! The HTTP endpoints of a vLLM OpenAI-compatible server: `/v1/completions`,
//! `/v1/chat/completions`, `/v1/models`, `/health` and `/metrics`.

mod error;
mod request;
mod response;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use error::ApiError;
pub use request::{Endpoint, Generation, Prompt};

use crate::engine::{SequenceSpec, Submission};
use crate::metrics::exposition::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::metrics::restrict::SampleNames;
use crate::replica::{Replica, ServedModel};
use crate::tokens::{TokenSampler, mix};
use response::{Choice, EventStream, Header, Usage};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response body of every endpoint.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Most sequences (prompts × n) one request may ask for.
pub const MAX_SEQUENCES: usize = 1024;

const JSON: &str = "application/json";

/// Answers one HTTP request.
pub async fn handle<B>(replica: Arc<Replica>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let arrival = Instant::now();
    let endpoint = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            let status = if replica.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return respond(status, None, Empty::new().boxed());
        }
        // vLLM mounts prometheus_client's ASGI app on `/metrics` with and
        // without the trailing slash; it honours `name[]`.
        (&Method::GET, "/metrics" | "/metrics/") => {
            let names = req.uri().query().and_then(SampleNames::from_query);
            let body = match names {
                Some(names) => replica.render_metrics_of(&names),
                None => replica.render_metrics(),
            };
            return respond(
                StatusCode::OK,
                Some(METRICS_CONTENT_TYPE),
                Full::new(body).boxed(),
            );
        }
        (&Method::GET, "/v1/models") => {
            if !replica.is_ready() {
                return error(&ApiError::NotReady);
            }
            return json(StatusCode::OK, &models(&replica));
        }
        (&Method::POST, "/v1/completions") => Endpoint::Completions,
        (&Method::POST, "/v1/chat/completions") => Endpoint::ChatCompletions,
        (
            _,
            "/health"
            | "/metrics"
            | "/metrics/"
            | "/v1/models"
            | "/v1/completions"
            | "/v1/chat/completions",
        ) => {
            return detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        _ => return detail(StatusCode::NOT_FOUND, "Not Found"),
    };
    match generate(&replica, endpoint, req.into_body(), arrival).await {
        Ok(response) => response,
        Err(e) => error(&e),
    }
}

async fn generate<B>(
    replica: &Replica,
    endpoint: Endpoint,
    body: B,
    arrival: Instant,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !replica.is_ready() {
        return Err(ApiError::NotReady);
    }
    let bytes = read_body(body).await?;
    let generation = Generation::parse(endpoint, &bytes)?;
    let model = generation
        .model
        .clone()
        .unwrap_or_else(|| replica.config().model.clone());
    let served = replica
        .resolve_model(&model)
        .ok_or_else(|| ApiError::ModelNotFound(model.clone()))?;
    let sequences = sequences(replica, &generation, served)?;
    let choices = sequences.len();
    let prompt_tokens = generation
        .prompts
        .iter()
        .fold(0_u32, |sum, p| sum.saturating_add(p.tokens));

    let (events, mut rx) = mpsc::unbounded_channel();
    replica.next_engine().submit(Submission {
        arrival,
        events,
        n: generation.n,
        sequences,
    })?;

    let prefix = match endpoint {
        Endpoint::Completions => "cmpl-",
        Endpoint::ChatCompletions => "chatcmpl-",
    };
    let header = Header {
        endpoint,
        id: format!("{prefix}{}", replica.next_id()),
        created: unix_seconds(),
        model,
    };
    if generation.stream {
        let usage = generation.include_usage.then_some(prompt_tokens);
        let stream = EventStream::new(header, rx, choices, usage);
        return Ok(respond(
            StatusCode::OK,
            Some("text/event-stream; charset=utf-8"),
            stream.boxed(),
        ));
    }
    // Dropping this future (the client went away) drops `rx`, which aborts
    // the sequences in the engine.
    let mut results = vec![Choice::default(); choices];
    let mut unfinished = choices;
    let mut completion_tokens = 0_u32;
    while unfinished > 0 {
        let event = rx.recv().await.ok_or(ApiError::ShuttingDown)?;
        completion_tokens += 1;
        if let Some(choice) = results.get_mut(event.index as usize) {
            choice.text.push_str(event.text);
            if event.finish.is_some() {
                choice.finish = event.finish;
                unfinished -= 1;
            }
        }
    }
    let body = header.complete(&results, Usage::new(prompt_tokens, completion_tokens));
    Ok(respond(
        StatusCode::OK,
        Some(JSON),
        Full::new(Bytes::from(body)).boxed(),
    ))
}

/// The engine sequences of a request: `n` per prompt, each with its output
/// limit, stop position and a generator seeded from the replica seed, the
/// prompt and the choice.
fn sequences(
    replica: &Replica,
    generation: &Generation,
    served: ServedModel,
) -> Result<Vec<SequenceSpec>, ApiError> {
    let config = replica.config();
    let max_model_len = config.engine.max_model_len;
    let requested = generation
        .prompts
        .len()
        .saturating_mul(generation.n as usize);
    if requested > MAX_SEQUENCES {
        return Err(ApiError::TooManySequences {
            requested,
            limit: MAX_SEQUENCES,
        });
    }
    let lora = match served {
        ServedModel::Base => None,
        ServedModel::Adapter(id) => Some(id),
    };
    let mut sequences = Vec::with_capacity(requested);
    for (parent, prompt) in (0..).zip(&generation.prompts) {
        if prompt.tokens >= max_model_len {
            return Err(ApiError::PromptTooLong {
                max_model_len,
                prompt_tokens: prompt.tokens,
            });
        }
        let room = max_model_len - prompt.tokens;
        let max_tokens = match generation.max_tokens {
            Some(max_tokens) if max_tokens > room => {
                return Err(ApiError::MaxTokensTooLarge {
                    max_tokens,
                    max_model_len,
                    prompt_tokens: prompt.tokens,
                });
            }
            Some(max_tokens) => max_tokens,
            None => config.default_max_tokens.min(room),
        };
        let prompt_seed = mix(
            mix(config.seed, prompt.fingerprint),
            generation.seed.unwrap_or(0),
        );
        for choice in 0..generation.n {
            let mut sampler = TokenSampler::new(mix(prompt_seed, u64::from(choice)));
            let eos_at = if generation.ignore_eos {
                None
            } else {
                sampler.eos_position(config.eos_probability, max_tokens)
            };
            sequences.push(SequenceSpec {
                index: parent * generation.n + choice,
                parent,
                prompt_tokens: prompt.tokens,
                max_tokens,
                max_tokens_param: generation.max_tokens,
                eos_at,
                lora,
                sampler,
            });
        }
    }
    Ok(sequences)
}

async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        }),
        Err(e) => Err(ApiError::Body(e.to_string())),
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelCard<'a>>,
}

#[derive(Serialize)]
struct ModelCard<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    root: &'a str,
    parent: Option<&'a str>,
    max_model_len: Option<u32>,
}

fn models(replica: &Replica) -> ModelList<'_> {
    let config = replica.config();
    let created = unix_seconds();
    let card = |id, parent, max_model_len| ModelCard {
        id,
        object: "model",
        created,
        owned_by: "vllm",
        root: id,
        parent,
        max_model_len,
    };
    let base = card(
        config.model.as_str(),
        None,
        Some(config.engine.max_model_len),
    );
    let adapters = config
        .lora_adapters
        .iter()
        .map(|a| card(a.as_str(), Some(config.model.as_str()), None));
    ModelList {
        object: "list",
        data: std::iter::once(base).chain(adapters).collect(),
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn respond(status: StatusCode, content_type: Option<&'static str>, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
    }
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(status, Some(JSON), Full::new(Bytes::from(body)).boxed())
}

fn error(e: &ApiError) -> Response<Body> {
    respond(
        e.status(),
        Some(JSON),
        Full::new(Bytes::from(e.body())).boxed(),
    )
}

/// FastAPI's answer for unknown routes and methods.
fn detail(status: StatusCode, detail: &'static str) -> Response<Body> {
    #[derive(Serialize)]
    struct Detail {
        detail: &'static str,
    }
    json(status, &Detail { detail })
}
