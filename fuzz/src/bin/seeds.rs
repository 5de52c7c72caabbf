//! Writes seed inputs made from real `/metrics` bodies:
//! `seeds FIXTURES CORPUS`, where FIXTURES is `shared/fixtures/metrics` and
//! CORPUS holds one working corpus directory per target.
//!
//! - `exposition`: each body, and the vLLM families of a vLLM body without
//!   their histogram buckets: the lines the extractor reads, short enough
//!   for mutations to reach them;
//! - `sample_hello`: the Hello and the Sample an agent would send for it;
//! - `promql`: each model name it reports.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

// Built instrumented like the targets, it links libFuzzer's coverage hooks.
use libfuzzer_sys as _;
use prost::Message;
use wva_agent::extract::Extractor;
use wva_proto::v1::agent_message::Kind;
use wva_proto::v1::{AgentMessage, Hello, Role, Sample};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [fixtures, corpus] = args.as_slice() else {
        return Err("usage: seeds FIXTURES CORPUS".into());
    };
    let mut bodies = Vec::new();
    find_bodies(fixtures, &mut bodies)?;
    if bodies.is_empty() {
        return Err(format!("no exposition bodies under {}", fixtures.display()).into());
    }
    let mut written = 0;
    for path in &bodies {
        let body = fs::read_to_string(path)?;
        // `epp-gie-v1.5.0/queue_avg_size_metrics.prom` → `epp-gie-v1.5.0-queue_avg_size_metrics.prom`
        let name = path
            .strip_prefix(fixtures)?
            .to_string_lossy()
            .replace('/', "-");
        let mut seed = |target: &str, file: String, bytes: &[u8]| {
            written += 1;
            let dir = corpus.join(target);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join(file), bytes)
        };
        seed("exposition", name.clone(), body.as_bytes())?;
        let own: String = body
            .split_inclusive('\n')
            .filter(|line| is_vllm_family(line) && !line.contains("_bucket"))
            .collect();
        if !own.is_empty() && own.len() < body.len() {
            seed("exposition", format!("{name}-vllm"), own.as_bytes())?;
        }
        for (role, label) in [(Role::Vllm, "vllm"), (Role::Epp, "epp")] {
            let mut extractor = Extractor::new(role);
            if extractor.extract(&body).is_err() {
                continue;
            }
            let mut sample = Sample {
                seq: 1,
                scraped_at_ms: 1_760_000_000_000,
                up: true,
                scrape_duration_us: 1500,
                ..Sample::default()
            };
            extractor.fill(&mut sample);
            let models: Vec<String> = sample
                .models
                .iter()
                .map(|m| m.model.clone())
                .chain(
                    sample
                        .epp
                        .iter()
                        .flat_map(|e| &e.queues)
                        .map(|q| q.model.clone()),
                )
                .collect();
            let hello = Hello {
                pod: format!("{label}-0"),
                namespace: "llm".into(),
                role: role.into(),
                models: models.clone(),
                variant: label.into(),
                accelerator: "H100".into(),
                agent_version: "0.1.0".into(),
                interval_ms: 1000,
                ..Hello::default()
            };
            for (kind, message) in [
                ("hello", Kind::Hello(hello)),
                ("sample", Kind::Sample(sample)),
            ] {
                let message = AgentMessage {
                    kind: Some(message),
                };
                seed(
                    "sample_hello",
                    format!("{name}-{label}-{kind}"),
                    &message.encode_to_vec(),
                )?;
            }
            for (i, model) in models.iter().enumerate() {
                seed(
                    "promql",
                    format!("{name}-{label}-{i}"),
                    format!("llm\0{model}").as_bytes(),
                )?;
            }
        }
    }
    println!(
        "{written} seeds from {} bodies in {}",
        bodies.len(),
        fixtures.display()
    );
    Ok(())
}

/// Whether an exposition line is a sample or metadata of a vLLM family.
fn is_vllm_family(line: &str) -> bool {
    let name = ["# HELP ", "# TYPE "]
        .iter()
        .find_map(|m| line.strip_prefix(m))
        .unwrap_or(line);
    name.starts_with("vllm:")
}

/// The exposition bodies under `dir`, at any depth (not its notes).
fn find_bodies(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            find_bodies(&path, out)?;
        } else if path.extension().is_none_or(|e| e != "md") {
            out.push(path);
        }
    }
    Ok(())
}
