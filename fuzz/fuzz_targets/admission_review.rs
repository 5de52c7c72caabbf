//! The injection webhook's answer to arbitrary request bodies: an
//! AdmissionReview that admits the pod, with a patch that applies to it, or
//! an error; never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wva_webhook::injection::{InjectionConfig, Scope};
use wva_webhook::server::{Verdict, review};

/// The injection configuration as a sidecar (init container) and as a
/// regular container: the two shapes of patch.
static CONFIGS: LazyLock<[InjectionConfig; 2]> = LazyLock::new(|| {
    let sidecar = InjectionConfig::parse(
        "image: registry.example/wva-agent:1.0\n\
         aggregatorAddress: https://wva-aggregator.wva-system.svc:9443\n",
    )
    .expect("the configuration is valid");
    let container = InjectionConfig {
        native_sidecar: false,
        ..sidecar.clone()
    };
    [sidecar, container]
});

fuzz_target!(|data: &[u8]| {
    // The API server writes strict JSON: valid UTF-8 and unique keys. The
    // webhook's reader takes more (serde_json checks neither the UTF-8 nor
    // the escapes of the fields it skips, and which of two duplicate keys
    // wins depends on the field), so the body as sent is only checked for a
    // well-formed answer, and its strict re-encoding against the request.
    let strict = serde_json::from_slice::<Value>(data).ok();
    for (scope, config) in [(Scope::Namespace, &CONFIGS[0]), (Scope::Pod, &CONFIGS[1])] {
        check(data, scope, config, None);
        if let Some(request) = &strict {
            let body = serde_json::to_vec(request).expect("a JSON value serializes");
            check(&body, scope, config, Some(request));
        }
    }
});

/// Checks the answer to `body`, and against `request` when that is what
/// `body` strictly says.
fn check(body: &[u8], scope: Scope, config: &InjectionConfig, request: Option<&Value>) {
    let Ok((answer, verdict)) = review(body, scope, config) else {
        return;
    };
    let response = answer
        .response
        .as_ref()
        .expect("an answer carries a response");
    assert!(response.allowed, "the webhook never denies a pod");
    serde_json::to_vec(&answer).expect("the answer serializes");
    let patch = response.patch.as_deref();
    let warned = response.warnings.as_ref().is_some_and(|w| !w.is_empty());
    match verdict {
        Verdict::Injected => assert!(patch.is_some()),
        Verdict::Skipped => assert!(patch.is_none()),
        Verdict::NotInjected => assert!(patch.is_none() && warned),
        Verdict::Malformed => panic!("an answered review is not malformed"),
    }
    let Some(request) = request else {
        return;
    };
    let uid = request.pointer("/request/uid").and_then(Value::as_str);
    assert_eq!(Some(response.uid.as_str()), uid);
    if let Some(patch) = patch {
        check_patch(request, patch, scope, config);
    }
}

/// The patch applies to the pod it was made for, and the patched pod, sent
/// again (the API server re-invokes webhooks), is left alone.
fn check_patch(request: &Value, patch: &[u8], scope: Scope, config: &InjectionConfig) {
    let patch: json_patch::Patch = serde_json::from_slice(patch).expect("the patch is JSON Patch");
    let mut again = request.clone();
    let pod = again
        .pointer_mut("/request/object")
        .expect("an injection has a pod");
    // The API server always sends a pod's metadata and spec; the patch
    // extends them rather than creating them.
    if ["metadata", "spec"].iter().any(|k| !pod[k].is_object()) {
        return;
    }
    if let Err(e) = json_patch::patch(pod, &patch) {
        panic!("the patch does not apply: {e}\npatch: {patch:?}\npod: {pod}");
    }
    let body = serde_json::to_vec(&again).expect("the patched review serializes");
    match review(&body, scope, config) {
        Ok((_, Verdict::Skipped)) => {}
        other => panic!("a patched pod was not left alone: {other:?}"),
    }
}
