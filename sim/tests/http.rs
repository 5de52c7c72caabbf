//! The OpenAI-style HTTP API, in-process (paused time) and over loopback TCP.

mod common;

use std::time::Duration;

use common::{MODEL, Server, call, json, replica, sample, send};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn streamed_completion_yields_one_chunk_per_token_then_done() {
    let server = Server::start(&["--itl-base", "1ms", "--prefill-overhead", "1ms"]).await;
    let body = r#"{"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "tell me", "max_tokens": 7, "stream": true}"#;
    let (head, bytes) = server.request(Method::POST, "/v1/completions", body).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers[http::header::CONTENT_TYPE],
        "text/event-stream; charset=utf-8"
    );
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("SSE data line"))
        .collect();
    assert_eq!(events.len(), 8, "{text}");
    assert_eq!(events[7], "[DONE]");
    for (i, event) in events[..7].iter().enumerate() {
        let chunk = json(event.as_bytes());
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["model"], MODEL);
        assert!(
            chunk["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("cmpl-"))
        );
        let finish = &chunk["choices"][0]["finish_reason"];
        assert_eq!(finish.as_str(), (i == 6).then_some("length"), "chunk {i}");
    }
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn streamed_chat_sends_the_role_first_and_usage_on_request() {
    let replica = replica(&[]);
    let body = r#"{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3,
        "stream": true, "stream_options": {"include_usage": true}}"#;
    let (status, bytes) = call(&replica, Method::POST, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    let chunks: Vec<_> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| json(e.as_bytes()))
        .collect();
    assert_eq!(chunks.len(), 4);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[3]["choices"], serde_json::json!([]));
    assert_eq!(chunks[3]["usage"]["completion_tokens"], 3);
    assert_eq!(chunks[3]["usage"]["prompt_tokens"], 5);
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn full_waiting_queue_answers_429() {
    let server = Server::start(&["--max-num-seqs", "1", "--max-waiting", "1"]).await;
    let engine = &server.replica.engines()[0];
    let body = r#"{"prompt": "long", "max_tokens": 2000}"#;
    let running = tokio::spawn(send(server.addr, Method::POST, "/v1/completions", body));
    engine
        .subscribe()
        .wait_for(|s| s.running == 1)
        .await
        .expect("engine");
    let waiting = tokio::spawn(send(server.addr, Method::POST, "/v1/completions", body));
    engine
        .subscribe()
        .wait_for(|s| s.waiting == 1)
        .await
        .expect("engine");
    let (head, bytes) = server.request(Method::POST, "/v1/completions", body).await;
    assert_eq!(head.status, StatusCode::TOO_MANY_REQUESTS);
    let error = json(&bytes);
    assert_eq!(error["error"]["code"], 429);
    assert_eq!(
        error["error"]["message"],
        "the waiting queue is full (1 of 1 requests waiting)"
    );
    // Closing both clients aborts their requests.
    running.abort();
    waiting.abort();
    let idle = engine
        .subscribe()
        .wait_for(|s| s.finished == 2)
        .await
        .expect("engine")
        .to_owned();
    assert_eq!((idle.running, idle.waiting, idle.used_blocks), (0, 0, 0));
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_frees_a_non_streamed_request() {
    let server = Server::start(&[]).await;
    let engine = &server.replica.engines()[0];
    let body = r#"{"prompt": "a long answer please", "max_tokens": 5000}"#;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    engine
        .subscribe()
        .wait_for(|s| s.running == 1 && s.used_blocks > 0)
        .await
        .expect("engine");
    drop(stream);
    let idle = engine
        .subscribe()
        .wait_for(|s| s.finished == 1)
        .await
        .expect("engine")
        .to_owned();
    assert_eq!((idle.running, idle.used_blocks), (0, 0));
    let text = String::from_utf8(server.replica.render_metrics().to_vec()).expect("utf-8");
    assert_eq!(
        sample(
            &text,
            "vllm:request_success_total",
            &[("finished_reason", "abort")]
        ),
        1.0
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn startup_delay_answers_503_until_loaded() {
    let replica = replica(&["--startup-delay", "30s"]);
    let completion = r#"{"prompt": "hi", "max_tokens": 2}"#;
    assert_eq!(
        call(&replica, Method::GET, "/health", "").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, body) = call(&replica, Method::POST, "/v1/completions", completion).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["error"]["type"], "ServiceUnavailableError");
    assert_eq!(
        call(&replica, Method::GET, "/v1/models", "").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // /metrics answers during load and shows an idle engine.
    let (status, metrics) = call(&replica, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(metrics.to_vec()).expect("utf-8");
    assert_eq!(sample(&text, "vllm:num_requests_running", &[]), 0.0);

    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        call(&replica, Method::GET, "/health", "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&replica, Method::POST, "/v1/completions", completion)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn bad_requests_get_precise_openai_errors() {
    let replica = replica(&["--max-model-len", "100"]);
    let cases = [
        (
            r#"{"prompt": "x", "model": "gpt-4"}"#,
            StatusCode::NOT_FOUND,
            "The model `gpt-4` does not exist.",
        ),
        (
            r#"{"prompt": "x", "max_tokens": 5"#,
            StatusCode::BAD_REQUEST,
            "invalid JSON body: EOF while parsing an object at line 1 column 31",
        ),
        (
            r#"{"prompt": "x", "max_tokens": 100}"#,
            StatusCode::BAD_REQUEST,
            "'max_tokens' is too large: 100. This model's maximum context length is 100 tokens and your request has 1 input tokens (100 > 100 - 1).",
        ),
        (
            &format!(r#"{{"prompt": "{}"}}"#, "x".repeat(400)),
            StatusCode::BAD_REQUEST,
            "This model's maximum context length is 100 tokens. However, your request has 100 input tokens. Please reduce the length of the input.",
        ),
        (
            r#"{"prompt": "x", "n": 0}"#,
            StatusCode::BAD_REQUEST,
            "invalid `n`: must be between 1 and 4294967295, got 0",
        ),
        (
            r#"{"prompt": ["a", "b"], "n": 600}"#,
            StatusCode::BAD_REQUEST,
            "a request may ask for at most 1024 sequences (prompts × n), this one asks for 1200",
        ),
    ];
    for (body, status, message) in cases {
        let (got, bytes) = call(&replica, Method::POST, "/v1/completions", body).await;
        assert_eq!(got, status, "{body}");
        let error = json(&bytes);
        assert_eq!(error["error"]["message"], message, "{body}");
        assert_eq!(error["error"]["code"], status.as_u16());
    }
    let (status, bytes) = call(&replica, Method::GET, "/v2/nothing", "").await;
    assert_eq!(
        (status, json(&bytes)["detail"].as_str()),
        (StatusCode::NOT_FOUND, Some("Not Found"))
    );
    let (status, _) = call(&replica, Method::GET, "/v1/completions", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_output() {
    let body = r#"{"prompt": "The capital of France is", "max_tokens": 12}"#;
    let mut outputs = Vec::new();
    for seed in ["7", "7", "8"] {
        let replica = replica(&["--seed", seed]);
        let (status, bytes) = call(&replica, Method::POST, "/v1/completions", body).await;
        assert_eq!(status, StatusCode::OK);
        let response = json(&bytes);
        outputs.push((
            response["id"].clone(),
            response["choices"][0]["text"].clone(),
        ));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_ne!(outputs[0].0, outputs[2].0);
    assert_ne!(outputs[0].1, outputs[2].1);
}

#[tokio::test(start_paused = true)]
async fn batches_and_n_make_one_choice_each() {
    let replica = replica(&["--eos-probability", "0.5", "--lora-adapters", "sql-lora"]);
    let body = r#"{"prompt": ["one", "two"], "n": 3, "max_tokens": 40}"#;
    let (status, bytes) = call(&replica, Method::POST, "/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK);
    let response = json(&bytes);
    let choices = response["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 6);
    assert!(choices.iter().enumerate().all(|(i, c)| c["index"] == i));
    // With a one-in-two chance per token, all six stop well before 40 tokens.
    assert!(
        choices.iter().all(|c| c["finish_reason"] == "stop"),
        "{response}"
    );
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    assert_eq!(
        sample(
            &text,
            "vllm:request_success_total",
            &[("finished_reason", "stop")]
        ),
        6.0
    );
    // n is recorded once per prompt, with the longest of its sequences.
    assert_eq!(sample(&text, "vllm:request_params_n_count", &[]), 2.0);
    assert_eq!(sample(&text, "vllm:request_params_n_sum", &[]), 6.0);
    let generated = response["usage"]["completion_tokens"]
        .as_f64()
        .expect("usage");
    assert_eq!(
        sample(&text, "vllm:generation_tokens_total", &[]),
        generated
    );
    assert_eq!(response["usage"]["prompt_tokens"], 2);

    let (status, bytes) = call(&replica, Method::GET, "/v1/models", "").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<_> = json(&bytes)["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [MODEL, "sql-lora"]);
}

#[tokio::test]
async fn binary_prints_its_address_and_exits_cleanly_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vllm-sim"))
        .args(["--port", "0", "--model", "m", "--seed", "1"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start vllm-sim");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .expect("read")
        .expect("a line");
    let addr = line
        .strip_prefix("listening on http://")
        .expect("address line")
        .to_owned();
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::get("/health")
        .header(http::header::HOST, &addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .is_empty()
    );

    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits promptly");
    assert!(status.expect("exit status").success());
}
