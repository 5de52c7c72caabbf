//! Every Kubernetes API call but a watch is bounded in time. A hung call (a
//! paused API server, a connection lost without a reset) fails after
//! [`CALL_TIMEOUT`] instead of holding up status writes, TokenReviews,
//! Events or anything else waiting on it. Watches are long polls that the
//! API server itself ends (kube's watcher asks for 290 s), so they are left
//! alone; a reflector notices a dead one through its own timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Uri};
use kube::client::ClientBuilder;
use tower::{BoxError, Layer, Service};

/// How long one API call may take to answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A Kubernetes client, configured from the cluster (or `KUBECONFIG`), whose
/// calls are bounded by [`CALL_TIMEOUT`].
pub async fn client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await?;
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&BoundedCalls(CALL_TIMEOUT))
        .build())
}

/// Bounds every request but a watch to the given time.
#[derive(Debug, Clone, Copy)]
pub struct BoundedCalls(pub Duration);

impl<S> Layer<S> for BoundedCalls {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            timeout: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    timeout: Duration,
}

type Answer<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B> Service<Request<B>> for Bounded<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Answer<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let watch = is_watch(request.uri());
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let answer = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            if watch {
                return answer.await.map_err(Into::into);
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(format!(
                    "{method} {path}: the API server did not answer within {timeout:?}"
                )
                .into()),
            }
        })
    }
}

fn is_watch(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;
    use tower_test::mock;

    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_fails_after_the_bound() {
        let (service, mut handle) = mock::pair::<Request<()>, ()>();
        let mut bounded = BoundedCalls(CALL_TIMEOUT).layer(service);
        let call = bounded
            .ready()
            .await
            .unwrap()
            .call(request("/apis/authentication.k8s.io/v1/tokenreviews"));
        // The API server takes the request and never answers.
        let (_taken, _never) = handle.next_request().await.unwrap();
        let error = call.await.unwrap_err().to_string();
        assert!(error.contains("did not answer within 15s"), "{error}");
        assert!(error.contains("/tokenreviews"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_is_left_to_the_api_server() {
        let (service, mut handle) = mock::pair::<Request<()>, ()>();
        let mut bounded = BoundedCalls(CALL_TIMEOUT).layer(service);
        let mut watch = bounded
            .ready()
            .await
            .unwrap()
            .call(request("/api/v1/pods?watch=true&timeoutSeconds=290"));
        let (_taken, answer) = handle.next_request().await.unwrap();
        tokio::time::sleep(CALL_TIMEOUT * 4).await;
        assert!(
            futures::poll!(&mut watch).is_pending(),
            "a watch outlives the bound"
        );
        answer.send_response(());
        watch.await.unwrap();
    }

    #[test]
    fn only_watch_requests_are_watches() {
        assert!(is_watch(&"/api/v1/pods?watch=true".parse().unwrap()));
        assert!(is_watch(
            &"/api/v1/pods?labelSelector=a&watch=1".parse().unwrap()
        ));
        assert!(!is_watch(&"/api/v1/pods?watchers=true".parse().unwrap()));
        assert!(!is_watch(&"/api/v1/pods".parse().unwrap()));
    }
}
