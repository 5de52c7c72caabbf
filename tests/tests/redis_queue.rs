//! The job-queue harness against a real Redis and Prometheus Redis exporter:
//! the exporter follows a list's length as jobs are pushed and taken, the
//! depth that queue-scaled workers are sized on.

use std::time::Duration;

use anyhow::bail;
use wva_e2e::eventually;
use wva_e2e::redis::{KEY_SIZE, Redis, RedisExporter};

const QUEUE: &str = "jobs";
/// Upper bound for the exporter to show a change; it reads Redis at each scrape.
const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn exporter_follows_the_queue_depth() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let exporter = RedisExporter::start(&redis, QUEUE).await?;

    assert_eq!(redis.push(QUEUE, 37).await?, 37);
    exported_depth(&exporter, 37.0).await?;

    let taken = redis.pop(QUEUE, 30).await?;
    assert_eq!(taken.len(), 30);
    assert_eq!(taken[0], "jobs-0", "a queue hands out its oldest job first");
    assert_eq!(redis.llen(QUEUE).await?, 7);
    exported_depth(&exporter, 7.0).await?;
    Ok(())
}

/// Awaits the exporter's [`KEY_SIZE`] of the queue reading `depth`.
async fn exported_depth(exporter: &RedisExporter, depth: f64) -> anyhow::Result<()> {
    eventually(
        WITHIN,
        &format!("{KEY_SIZE} of {QUEUE} to be {depth}"),
        || async {
            match exporter.key_size(QUEUE).await? {
                size if size == depth => Ok(Some(())),
                size => bail!("{KEY_SIZE} is {size}"),
            }
        },
    )
    .await
}
