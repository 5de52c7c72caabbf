//! The engine under paused tokio time: batching, queueing, KV blocks,
//! preemption, disconnects and the latency model, observed through the
//! engine's state and `/metrics`.

mod common;

use std::time::Duration;

use common::{config, replica, sample, sequence, submission};
use tokio::sync::mpsc;
use tokio::time::Instant;
use vllm_sim::engine::{Engine, EngineSnapshot, Submission, SubmitError, TokenEvent};
use vllm_sim::finish::FinishReason;

fn engine(extra: &[&str]) -> Engine {
    Engine::start(config(extra).engine, None)
}

async fn wait_for(engine: &Engine, what: impl Fn(&EngineSnapshot) -> bool) -> EngineSnapshot {
    *engine
        .subscribe()
        .wait_for(|s| what(s))
        .await
        .expect("engine is running")
}

/// Receives every token of one sequence; returns them with their arrival times.
async fn drain(rx: &mut mpsc::UnboundedReceiver<TokenEvent>) -> Vec<(TokenEvent, Instant)> {
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push((event, Instant::now()));
        if event.finish.is_some() {
            break;
        }
    }
    events
}

#[tokio::test(start_paused = true)]
async fn batch_limit_splits_running_and_waiting() {
    let replica = replica(&["--max-num-seqs", "4"]);
    let engine = &replica.engines()[0];
    let mut receivers = Vec::new();
    for _ in 0..6 {
        let (submission, rx) = submission(100, 1000);
        engine.submit(submission).expect("queued");
        receivers.push(rx);
    }
    let state = wait_for(engine, |s| s.running == 4).await;
    assert_eq!(state.waiting, 2);
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    assert_eq!(
        sample(&text, "vllm:num_requests_running", &[("engine", "0")]),
        4.0
    );
    assert_eq!(
        sample(&text, "vllm:num_requests_waiting", &[("engine", "0")]),
        2.0
    );
    // 100 prompt tokens take 7 blocks of 16 per running request.
    assert_eq!(
        sample(&text, "vllm:kv_cache_usage_perc", &[("engine", "0")]),
        28.0 / 2048.0
    );
}

#[tokio::test(start_paused = true)]
async fn kv_usage_rises_with_load_and_returns_to_zero_when_idle() {
    let replica = replica(&["--max-num-seqs", "8"]);
    let engine = &replica.engines()[0];
    let kv = || {
        let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
        sample(&text, "vllm:kv_cache_usage_perc", &[("engine", "0")])
    };
    assert_eq!(kv(), 0.0);
    let (first, mut first_rx) = submission(100, 40);
    engine.submit(first).expect("queued");
    wait_for(engine, |s| s.running == 1).await;
    let one = kv();
    assert!(one > 0.0);
    let mut receivers = Vec::new();
    for _ in 0..3 {
        let (submission, rx) = submission(100, 40);
        engine.submit(submission).expect("queued");
        receivers.push(rx);
    }
    wait_for(engine, |s| s.running == 4).await;
    assert!(kv() > one, "usage grows with running requests");
    // Blocks also grow while generating: 100 prompt + 40 output tokens need 9 blocks.
    assert_eq!(drain(&mut first_rx).await.len(), 40);
    for rx in &mut receivers {
        assert_eq!(drain(rx).await.len(), 40);
    }
    let idle = wait_for(engine, |s| s.finished == 4).await;
    assert_eq!((idle.running, idle.waiting, idle.used_blocks), (0, 0, 0));
    assert_eq!(kv(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn full_waiting_queue_refuses_new_requests() {
    let engine = engine(&["--max-num-seqs", "1", "--max-waiting", "1"]);
    let (a, _a) = submission(10, 100);
    engine.submit(a).expect("runs");
    wait_for(&engine, |s| s.running == 1).await;
    let (b, _b) = submission(10, 100);
    engine.submit(b).expect("waits");
    let (c, _c) = submission(10, 100);
    assert_eq!(
        engine.submit(c).expect_err("queue full"),
        SubmitError::QueueFull {
            waiting: 1,
            capacity: 1
        }
    );
    assert_eq!(engine.subscribe().borrow().waiting, 1);
}

#[tokio::test(start_paused = true)]
async fn first_token_after_prefill_then_one_per_decode_step() {
    // Defaults: prefill 20ms + 100us per token; decode 10ms + 200us per sequence.
    let engine = engine(&[]);
    let itl = Duration::from_micros(10_200);
    for (prompt, ttft) in [
        (100, Duration::from_millis(30)),
        (1000, Duration::from_millis(120)),
    ] {
        let (submission, mut rx) = submission(prompt, 50);
        let start = submission.arrival;
        engine.submit(submission).expect("queued");
        let events = drain(&mut rx).await;
        assert_eq!(events.len(), 50);
        assert_eq!(events[0].1 - start, ttft, "TTFT of a {prompt}-token prompt");
        // Timers fire on whole milliseconds; the simulated clock does not
        // drift from the model because of it.
        for (k, (_, at)) in (0..).zip(&events) {
            let ideal = ttft + itl * k;
            let late = (*at - start).checked_sub(ideal).expect("never early");
            assert!(
                late < Duration::from_millis(1),
                "token {k} is {late:?} late"
            );
        }
        assert_eq!(events[49].0.finish, Some(FinishReason::Length));
    }
}

#[tokio::test(start_paused = true)]
async fn long_prompts_are_prefilled_in_chunks_of_the_token_budget() {
    let engine = engine(&["--max-num-seqs", "4", "--max-num-batched-tokens", "256"]);
    let (submission, mut rx) = submission(1000, 1);
    let start = submission.arrival;
    engine.submit(submission).expect("queued");
    let events = drain(&mut rx).await;
    // Chunks of 256, 256, 256 and 232 tokens: four steps, each with its overhead.
    assert_eq!(events[0].1 - start, Duration::from_millis(4 * 20 + 100));
}

#[tokio::test(start_paused = true)]
async fn preemption_recomputes_the_latest_request_and_everyone_finishes() {
    // 8 blocks of 16 tokens: each request ends up needing all of them.
    let replica = replica(&[
        "--num-gpu-blocks",
        "8",
        "--max-model-len",
        "128",
        "--max-num-seqs",
        "4",
    ]);
    let engine = &replica.engines()[0];
    let (first, mut first_rx) = submission(16, 100);
    let (second, mut second_rx) = submission(16, 100);
    engine.submit(first).expect("queued");
    engine.submit(second).expect("queued");
    let first_events = drain(&mut first_rx).await;
    let second_events = drain(&mut second_rx).await;
    assert_eq!(first_events.len(), 100);
    assert_eq!(
        second_events.len(),
        100,
        "a preempted request streams no token twice"
    );
    assert!(
        first_events[99].1 < second_events[99].1,
        "the earlier request is never the one preempted"
    );
    let state = wait_for(engine, |s| s.finished == 2).await;
    assert!(state.preemptions >= 1);
    assert_eq!(state.used_blocks, 0);
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    assert_eq!(
        sample(&text, "vllm:num_preemptions_total", &[("engine", "0")]),
        state.preemptions as f64
    );
    // Recomputation queries the prefix cache again.
    assert!(sample(&text, "vllm:prefix_cache_queries_total", &[("engine", "0")]) > 32.0);
    assert_eq!(
        sample(&text, "vllm:prompt_tokens_total", &[("engine", "0")]),
        32.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_receiver_aborts_and_frees_blocks() {
    let replica = replica(&[]);
    let engine = &replica.engines()[0];
    let (submission, rx) = submission(200, 1000);
    engine.submit(submission).expect("queued");
    let busy = wait_for(engine, |s| s.running == 1).await;
    assert_eq!(busy.used_blocks, 13);
    drop(rx);
    let idle = wait_for(engine, |s| s.finished == 1).await;
    assert_eq!((idle.running, idle.used_blocks), (0, 0));
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    assert_eq!(
        sample(
            &text,
            "vllm:request_success_total",
            &[("finished_reason", "abort")]
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn speculative_decoding_emits_accepted_drafts_in_one_step() {
    let replica = replica(&[
        "--num-speculative-tokens",
        "3",
        "--spec-acceptance-rate",
        "1",
    ]);
    let (submission, mut rx) = submission(10, 9);
    replica.engines()[0].submit(submission).expect("queued");
    let events = drain(&mut rx).await;
    assert_eq!(events.len(), 9);
    // The first token, then two steps of one token plus three accepted drafts.
    let steps: std::collections::BTreeSet<_> = events.iter().map(|(_, at)| *at).collect();
    assert_eq!(steps.len(), 3);
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    assert_eq!(sample(&text, "vllm:spec_decode_num_drafts_total", &[]), 2.0);
    assert_eq!(
        sample(&text, "vllm:spec_decode_num_draft_tokens_total", &[]),
        6.0
    );
    assert_eq!(
        sample(&text, "vllm:spec_decode_num_accepted_tokens_total", &[]),
        6.0
    );
    assert_eq!(
        sample(
            &text,
            "vllm:spec_decode_num_accepted_tokens_per_pos_total",
            &[("position", "2")]
        ),
        2.0
    );
    assert_eq!(sample(&text, "vllm:generation_tokens_total", &[]), 9.0);
}

#[tokio::test(start_paused = true)]
async fn lora_requests_beyond_max_loras_wait_without_blocking_others() {
    let replica = replica(&[
        "--lora-adapters",
        "a,b",
        "--max-loras",
        "1",
        "--max-num-seqs",
        "4",
    ]);
    let engine = &replica.engines()[0];
    let mut receivers = Vec::new();
    for lora in [Some(0), Some(1), None] {
        let (events, rx) = mpsc::unbounded_channel();
        let mut seq = sequence(0, 10, 50);
        seq.lora = lora;
        engine
            .submit(Submission {
                arrival: Instant::now(),
                events,
                n: 1,
                sequences: vec![seq],
            })
            .expect("queued");
        receivers.push(rx);
    }
    let state = wait_for(engine, |s| s.running == 2).await;
    assert_eq!(
        state.waiting, 1,
        "adapter b waits for adapter a's batch slot"
    );
    // The LoRA series is set once a step completes.
    receivers[0].recv().await.expect("first token");
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    assert!(text.contains(
        "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"a\",waiting_lora_adapters=\"b\"}"
    ));
}

#[tokio::test(start_paused = true)]
async fn oversized_sequences_are_refused() {
    let engine = engine(&["--num-gpu-blocks", "4", "--max-model-len", "64"]);
    let (submission, _rx) = submission(60, 10);
    assert_eq!(
        engine
            .submit(submission)
            .expect_err("70 tokens need 5 blocks"),
        SubmitError::ExceedsKvCache {
            tokens: 70,
            blocks: 5,
            capacity: 4
        }
    );
}
