//! Direct pod scraping against local HTTP servers serving a real vLLM
//! exposition: the numbers, bearer auth, the concurrency limit, timeouts and
//! the cache's TTL.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wva_core::store::PodKey;
use wva_k8s::scraping::{PodScraper, PodTarget, ScrapeConfig};

const FIXTURE: &str = "vllm-v1-0.11.0-generated-lora-6adapters-45s.prom";
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn fixture() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/metrics");
    std::fs::read_to_string(dir.join(FIXTURE)).expect("fixture")
}

/// How a test pod answers.
#[derive(Clone, Copy)]
enum Answer {
    /// The fixture after `delay` (a slow pod).
    Metrics { delay: Duration },
    /// Never.
    Hang,
}

#[derive(Default)]
struct Observed {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// A pod's `/metrics`, requiring `token` when given.
async fn pod(
    answer: Answer,
    token: Option<&'static str>,
    observed: Arc<Observed>,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(fixture());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (body, observed) = (body.clone(), observed.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let now = observed.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                observed.most_in_flight.fetch_max(now, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let authorized =
                    token.is_none_or(|t| head.contains(&format!("authorization: bearer {t}")));
                let response = match answer {
                    Answer::Hang => std::future::pending::<String>().await,
                    Answer::Metrics { .. } if !authorized => {
                        "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string()
                    }
                    Answer::Metrics { delay } => {
                        // A slow pod, so that concurrent scrapes overlap.
                        tokio::time::sleep(delay).await;
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                };
                observed.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

fn target(name: &str, addr: std::net::SocketAddr) -> PodTarget {
    PodTarget {
        pod: PodKey {
            namespace: "llm".into(),
            pod: name.into(),
        },
        url: format!("http://{addr}/metrics").parse().unwrap(),
    }
}

const FAST: Answer = Answer::Metrics {
    delay: Duration::ZERO,
};

#[tokio::test]
async fn a_scraped_pod_yields_the_agents_signals() {
    let addr = pod(FAST, None, Arc::default()).await;
    let mut scraper = PodScraper::new(ScrapeConfig::default());
    let t = target("p-0", addr);
    scraper.refresh(std::slice::from_ref(&t)).await.unwrap();
    let sample = scraper.get(&t.pod, Instant::now()).expect("a sample");
    assert!(sample.up, "{}", sample.error);
    let model = sample.models.iter().find(|m| m.model == MODEL).unwrap();
    assert_eq!(
        (model.requests_running, model.requests_waiting),
        (11.0, 5.0)
    );
}

#[tokio::test]
async fn the_bearer_token_is_sent_and_a_wrong_one_fails_clearly() {
    let addr = pod(FAST, Some("s3cret"), Arc::default()).await;
    let t = target("p-0", addr);
    let mut right = PodScraper::new(ScrapeConfig {
        token: Some("s3cret".into()),
        ..ScrapeConfig::default()
    });
    right.refresh(std::slice::from_ref(&t)).await.unwrap();
    assert!(right.get(&t.pod, Instant::now()).unwrap().up);

    let mut wrong = PodScraper::new(ScrapeConfig {
        token: Some("guess".into()),
        ..ScrapeConfig::default()
    });
    wrong.refresh(std::slice::from_ref(&t)).await.unwrap();
    let sample = wrong.get(&t.pod, Instant::now()).unwrap();
    assert!(!sample.up);
    assert!(sample.error.contains("401"), "{}", sample.error);
}

#[tokio::test]
async fn scrapes_run_concurrently_up_to_the_limit() {
    let observed = Arc::new(Observed::default());
    let slow = Answer::Metrics {
        delay: Duration::from_millis(100),
    };
    let mut targets = Vec::new();
    for i in 0..6 {
        let addr = pod(slow, None, observed.clone()).await;
        targets.push(target(&format!("p-{i}"), addr));
    }
    let mut scraper = PodScraper::new(ScrapeConfig {
        max_concurrent: 2,
        ..ScrapeConfig::default()
    });
    scraper.refresh(&targets).await.unwrap();
    assert_eq!(observed.most_in_flight.load(Ordering::SeqCst), 2);
    let now = Instant::now();
    assert!(
        targets
            .iter()
            .all(|t| scraper.get(&t.pod, now).is_some_and(|s| s.up))
    );
}

#[tokio::test]
async fn a_hung_pod_times_out_and_does_not_hold_the_others() {
    let hung = target("hung", pod(Answer::Hang, None, Arc::default()).await);
    let fine = target("fine", pod(FAST, None, Arc::default()).await);
    let mut scraper = PodScraper::new(ScrapeConfig {
        timeout: Duration::from_millis(300),
        ..ScrapeConfig::default()
    });
    scraper
        .refresh(&[hung.clone(), fine.clone()])
        .await
        .unwrap();
    let now = Instant::now();
    let sample = scraper.get(&hung.pod, now).unwrap();
    assert!(!sample.up);
    assert!(sample.error.contains("300ms"), "{}", sample.error);
    assert!(scraper.get(&fine.pod, now).unwrap().up);
}

#[tokio::test]
async fn the_cache_expires_and_forgets_pods_no_longer_targeted() {
    let t = target("p-0", pod(FAST, None, Arc::default()).await);
    let mut scraper = PodScraper::new(ScrapeConfig {
        ttl: Duration::from_secs(30),
        ..ScrapeConfig::default()
    });
    scraper.refresh(std::slice::from_ref(&t)).await.unwrap();
    let at = scraper.scraped_at(&t.pod).unwrap();
    assert!(scraper.get(&t.pod, at + Duration::from_secs(29)).is_some());
    assert!(scraper.get(&t.pod, at + Duration::from_secs(30)).is_none());

    // The pod became unready (no longer a target): nothing is kept for it.
    scraper.refresh(&[]).await.unwrap();
    assert!(scraper.scraped_at(&t.pod).is_none());
}
