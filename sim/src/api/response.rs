//! Response bodies in vLLM's OpenAI shapes: whole responses, and SSE streams
//! with one chunk per generated token followed by `data: [DONE]`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde::Serialize;
use tokio::sync::mpsc;

use super::request::Endpoint;
use crate::engine::TokenEvent;
use crate::finish::FinishReason;

/// What every response and chunk of one request repeats.
#[derive(Debug, Clone)]
pub struct Header {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: (),
    finish_reason: Option<&'static str>,
    stop_reason: (),
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: (),
    finish_reason: Option<&'static str>,
    stop_reason: (),
}

#[derive(Serialize)]
struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChunkChoice<'a> {
    index: u32,
    delta: ChatDelta<'a>,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

/// One finished choice of a non-streamed response.
#[derive(Debug, Default, Clone)]
pub struct Choice {
    pub text: String,
    pub finish: Option<FinishReason>,
}

impl Header {
    fn envelope<C>(
        &self,
        object: &'static str,
        choices: C,
        usage: Option<Usage>,
    ) -> Envelope<'_, C> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage,
        }
    }

    /// The whole (non-streamed) response.
    pub fn complete(&self, choices: &[Choice], usage: Usage) -> Vec<u8> {
        let reason = |c: &Choice| c.finish.map(FinishReason::as_str);
        let result = match self.endpoint {
            Endpoint::Completions => {
                let choices: Vec<_> = (0..)
                    .zip(choices)
                    .map(|(index, c)| TextChoice {
                        index,
                        text: &c.text,
                        logprobs: (),
                        finish_reason: reason(c),
                        stop_reason: (),
                    })
                    .collect();
                serde_json::to_vec(&self.envelope("text_completion", choices, Some(usage)))
            }
            Endpoint::ChatCompletions => {
                let choices: Vec<_> = (0..)
                    .zip(choices)
                    .map(|(index, c)| ChatChoice {
                        index,
                        message: ChatMessage {
                            role: "assistant",
                            content: &c.text,
                        },
                        logprobs: (),
                        finish_reason: reason(c),
                        stop_reason: (),
                    })
                    .collect();
                serde_json::to_vec(&self.envelope("chat.completion", choices, Some(usage)))
            }
        };
        result.unwrap_or_default()
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::ChatCompletions => "chat.completion.chunk",
        }
    }

    /// Appends the SSE event of one token; `first` marks a choice's first
    /// chunk, which carries the assistant role in chat streams.
    fn write_token(&self, out: &mut Vec<u8>, event: &TokenEvent, first: bool) {
        let finish_reason = event.finish.map(FinishReason::as_str);
        let object = self.chunk_object();
        out.extend_from_slice(b"data: ");
        let written = match self.endpoint {
            Endpoint::Completions => {
                let choice = TextChoice {
                    index: event.index,
                    text: event.text,
                    logprobs: (),
                    finish_reason,
                    stop_reason: (),
                };
                serde_json::to_writer(&mut *out, &self.envelope(object, [choice], None))
            }
            Endpoint::ChatCompletions => {
                let choice = ChatChunkChoice {
                    index: event.index,
                    delta: ChatDelta {
                        role: first.then_some("assistant"),
                        content: event.text,
                    },
                    logprobs: (),
                    finish_reason,
                };
                serde_json::to_writer(&mut *out, &self.envelope(object, [choice], None))
            }
        };
        debug_assert!(written.is_ok(), "serializing to a Vec cannot fail");
        out.extend_from_slice(b"\n\n");
    }

    /// Appends the usage-only chunk of `stream_options.include_usage`.
    fn write_usage(&self, out: &mut Vec<u8>, usage: Usage) {
        out.extend_from_slice(b"data: ");
        let choices: [(); 0] = [];
        let written = serde_json::to_writer(
            &mut *out,
            &self.envelope(self.chunk_object(), choices, Some(usage)),
        );
        debug_assert!(written.is_ok(), "serializing to a Vec cannot fail");
        out.extend_from_slice(b"\n\n");
    }
}

/// Server-sent events of a streamed request, fed by the engine. Dropping it
/// (the client went away) drops the receiver, which aborts the sequences.
pub struct EventStream {
    header: Header,
    rx: mpsc::UnboundedReceiver<TokenEvent>,
    /// Whether each choice has sent its first chunk.
    started: Vec<bool>,
    unfinished: usize,
    /// Prompt tokens, and completion tokens so far, when usage is reported.
    usage: Option<Usage>,
    done: bool,
}

impl EventStream {
    pub fn new(
        header: Header,
        rx: mpsc::UnboundedReceiver<TokenEvent>,
        choices: usize,
        prompt_tokens: Option<u32>,
    ) -> Self {
        Self {
            header,
            rx,
            started: vec![false; choices],
            unfinished: choices,
            usage: prompt_tokens.map(|p| Usage::new(p, 0)),
            done: false,
        }
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let Some(event) = ready!(this.rx.poll_recv(cx)) else {
            // The engine is gone (shutdown): end the stream without [DONE].
            this.done = true;
            return Poll::Ready(None);
        };
        let mut out = Vec::with_capacity(256);
        let first = this
            .started
            .get_mut(event.index as usize)
            .is_some_and(|s| !std::mem::replace(s, true));
        this.header.write_token(&mut out, &event, first);
        if let Some(usage) = &mut this.usage {
            *usage = Usage::new(usage.prompt_tokens, usage.completion_tokens + 1);
        }
        if event.finish.is_some() {
            this.unfinished = this.unfinished.saturating_sub(1);
        }
        if this.unfinished == 0 {
            if let Some(usage) = this.usage {
                this.header.write_usage(&mut out, usage);
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
            this.done = true;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
