//! wva-k8s: the aggregator's Kubernetes adapters. The VariantAutoscaling
//! resource, its status and the controller that keeps both in step with the
//! analysis; leader election; the pod identity behind agent admission; and
//! pod scraping, a polled source. Depends on `wva-core`, never on the binary.
#![forbid(unsafe_code)]

pub mod bounded;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod events;
pub mod identity;
pub mod leader;
pub mod pods;
pub mod resolve;
pub mod scrape_source;
pub mod scraping;
#[cfg(test)]
pub(crate) mod scripted;
pub mod status;
pub mod writer;

/// An API for one namespace, or for all when `namespace` is `None`.
pub(crate) fn scoped<K>(client: kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    }
}
