//! Throughput of the exposition parser and the extractor on the two largest
//! vLLM fixtures, next to `prometheus_parse::Scrape::parse`.
//!
//! ```text
//! cargo bench -p wva-agent --bench parse
//! ```

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wva_agent::extract::Extractor;
use wva_agent::parse::{Line, Parser};
use wva_proto::v1::{Role, Sample};

const FIXTURES: [(&str, &str); 2] = [
    ("dp2", "vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom"),
    ("lora", "vllm-v1-0.11.0-generated-lora-6adapters-45s.prom"),
];

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/metrics")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the repository must be cloned next to shared/)",
            path.display()
        )
    })
}

/// Walks every line, sample and label; returns the number of samples.
fn parse_all(body: &str) -> usize {
    let mut samples = 0;
    for line in Parser::new(body) {
        if let Ok(Line::Sample(s)) = line {
            samples += 1;
            black_box((s.name, s.value));
            for label in s.labels {
                black_box((label.name, label.raw_value));
            }
        }
    }
    samples
}

fn prometheus_parse(body: &str) -> prometheus_parse::Scrape {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("in-memory lines")
}

fn bench(c: &mut Criterion) {
    for (id, file) in FIXTURES {
        let body = read(file);
        println!(
            "{id}: {} bytes, samples: wva-agent {}, prometheus-parse {}",
            body.len(),
            parse_all(&body),
            prometheus_parse(&body).samples.len()
        );

        let mut group = c.benchmark_group(format!("parse/{id}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("wva-agent parser", |b| {
            b.iter(|| parse_all(black_box(&body)))
        });
        let mut extractor = Extractor::new(Role::Vllm);
        let mut sample = Sample::default();
        group.bench_function("wva-agent extract+fill", |b| {
            b.iter(|| {
                extractor
                    .extract(black_box(&body))
                    .expect("fixture extracts");
                extractor.fill(&mut sample);
            })
        });
        group.bench_function("prometheus-parse", |b| {
            b.iter(|| prometheus_parse(black_box(&body)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
