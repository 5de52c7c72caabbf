//! Test support: a kube `Client` whose API server is a script, as kube-rs's
//! own tests do with `tower-test`.

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tower_test::mock;

pub type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// A client and the handle that receives its requests.
pub fn client() -> (Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// Answers one request with `body` as JSON.
pub fn respond(send: mock::SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    send.send_response(response);
}

/// A `Status` failure body, as the API server sends one.
pub fn failure(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code})
}

/// The request's JSON body.
pub async fn json_body(request: Request<Body>) -> Value {
    let bytes = request.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
