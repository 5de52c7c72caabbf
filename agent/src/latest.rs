//! Hand-off of samples from the scrape loop to the aggregator stream that
//! keeps only the latest one.
//!
//! A one-slot channel instead of a queue: while the stream is down or slow,
//! newer samples overwrite older ones, so memory stays constant and the first
//! sample after a reconnect is the freshest, never a backlog.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use wva_proto::v1::Sample;

type Slot = Option<Arc<Sample>>;

pub fn channel() -> (Publisher, Subscriber) {
    let (tx, rx) = watch::channel(None);
    let sent = Arc::new(AtomicU64::new(0));
    (
        Publisher {
            tx,
            sent: sent.clone(),
        },
        Subscriber {
            rx,
            sent,
            mine: Arc::default(),
        },
    )
}

/// The scrape loop's end.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Slot>,
    /// Highest `seq` handed to any stream, shared with the subscribers.
    sent: Arc<AtomicU64>,
}

impl Publisher {
    /// Replaces the slot's sample; returns whether the replaced one was never
    /// sent (a dropped sample).
    pub fn publish(&self, sample: Sample) -> bool {
        let replaced = self.tx.send_replace(Some(Arc::new(sample)));
        replaced.is_some_and(|old| old.seq > self.sent.load(Ordering::Acquire))
    }
}

/// A stream's end: cloned per connection to one target, so a reconnect does
/// not repeat what that target already has.
#[derive(Debug, Clone)]
pub struct Subscriber {
    rx: watch::Receiver<Slot>,
    /// Highest `seq` handed to any stream (drop accounting).
    sent: Arc<AtomicU64>,
    /// Highest `seq` handed to this target's streams.
    mine: Arc<AtomicU64>,
}

impl Subscriber {
    /// A subscriber for one more target: it gets every sample, whatever the
    /// others were sent.
    pub fn for_another_target(&self) -> Subscriber {
        Subscriber {
            rx: self.rx.clone(),
            sent: self.sent.clone(),
            mine: Arc::default(),
        }
    }

    /// Samples not yet sent on any stream: first the current one if it is
    /// unsent, then each newer one as it is published. Ends when the
    /// publisher is gone.
    pub fn unsent(&self) -> Unsent {
        Unsent {
            inner: WatchStream::new(self.rx.clone()),
            sent: self.sent.clone(),
            mine: self.mine.clone(),
        }
    }
}

pub struct Unsent {
    inner: WatchStream<Slot>,
    sent: Arc<AtomicU64>,
    mine: Arc<AtomicU64>,
}

impl Stream for Unsent {
    type Item = Sample;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sample>> {
        let this = self.get_mut();
        loop {
            let Some(slot) = ready!(Pin::new(&mut this.inner).poll_next(cx)) else {
                return Poll::Ready(None);
            };
            let Some(sample) = slot else { continue };
            // A sample this target already got on an earlier stream is not repeated.
            if this.mine.fetch_max(sample.seq, Ordering::AcqRel) < sample.seq {
                this.sent.fetch_max(sample.seq, Ordering::AcqRel);
                return Poll::Ready(Some(Arc::unwrap_or_clone(sample)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keeps_only_the_latest_and_counts_overwrites() {
        let (publisher, subscriber) = channel();
        assert!(!publisher.publish(sample(1)));
        assert!(publisher.publish(sample(2)), "1 was overwritten unsent");
        let mut unsent = subscriber.unsent();
        assert_eq!(unsent.next().await.unwrap().seq, 2);
        assert!(!publisher.publish(sample(3)), "2 was sent");
        assert_eq!(unsent.next().await.unwrap().seq, 3);
    }

    #[tokio::test]
    async fn a_new_stream_does_not_repeat_a_sent_sample() {
        let (publisher, subscriber) = channel();
        publisher.publish(sample(1));
        assert_eq!(subscriber.unsent().next().await.unwrap().seq, 1);

        let mut second = subscriber.unsent();
        publisher.publish(sample(2));
        assert_eq!(second.next().await.unwrap().seq, 2);
    }

    #[tokio::test]
    async fn every_target_gets_the_current_sample() {
        let (publisher, subscriber) = channel();
        let other = subscriber.for_another_target();
        publisher.publish(sample(1));
        assert_eq!(subscriber.unsent().next().await.unwrap().seq, 1);
        assert_eq!(other.unsent().next().await.unwrap().seq, 1);
        // Sent on at least one stream: replacing it is not a drop.
        assert!(!publisher.publish(sample(2)));
    }

    #[tokio::test]
    async fn ends_when_the_publisher_is_dropped() {
        let (publisher, subscriber) = channel();
        let mut unsent = subscriber.unsent();
        drop(publisher);
        assert!(unsent.next().await.is_none());
    }
}
