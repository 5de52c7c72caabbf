//! The samples of `examples/` (one model on an L4 and an H100 variant,
//! `examples/variantautoscaling.yaml`) deployed as a user deploys them, for
//! the tests and benchmarks of wva's real consumers. Only the simulated vLLM
//! differs from the files: it is slow, so that one held request saturates a
//! replica for as long as it is held.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::controlplane::ControlPlane;
use crate::hold_completion;
use crate::install::{live_pods, serving_sim_in};
use crate::node::LocalNode;
use crate::workspace;

/// The samples' namespace and model.
pub const SAMPLES: &str = "llm-inference";
pub const SAMPLE_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
/// The samples' variants (Deployments, VariantAutoscalings and HPAs).
pub const L4: &str = "llama-8b-l4";
pub const H100: &str = "llama-8b-h100";

/// The objects of a sample file.
pub fn samples(file: &str) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(workspace().join(file))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Ok(Value::deserialize(doc)?))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// Creates the samples' namespace, a local node for it, and the objects of
/// `examples/variantautoscaling.yaml`. With `agents` false the pods do not
/// opt into the agent, for a Prometheus source to read them instead.
pub async fn deploy(plane: &ControlPlane, agents: bool) -> anyhow::Result<LocalNode> {
    plane
        .create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SAMPLES}}))
        .await?;
    plane.default_service_account(SAMPLES).await?;
    let gpus = LocalNode::start(plane, "gpus", &[SAMPLES]).await?;
    for mut object in samples("examples/variantautoscaling.yaml")? {
        if object["kind"] == "Deployment" {
            with_slow_sim(&mut object);
            if !agents {
                let annotations = &mut object["spec"]["template"]["metadata"]["annotations"];
                if let Some(annotations) = annotations.as_object_mut() {
                    annotations.remove("wva.llmd.ai/inject-agent");
                }
            }
        }
        plane.create(&object).await?;
    }
    Ok(gpus)
}

/// A sample Deployment whose simulated vLLM has a KV cache of just its
/// `--max-model-len` (8192 tokens) and decodes one token a second, so a
/// request held on it ([`hold_on`]) holds about 40 % of the cache for the
/// whole test.
fn with_slow_sim(deployment: &mut Value) {
    let args = &mut deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    if let Some(args) = args.as_array_mut() {
        args.extend(["--num-gpu-blocks", "512", "--itl-base", "1s"].map(Value::from));
    }
}

/// The simulated vLLM of the one pod of sample Deployment `name`.
pub async fn sample_sim(
    client: &kube::Client,
    node: &LocalNode,
    name: &str,
) -> anyhow::Result<std::net::SocketAddr> {
    let pod = live_pods(client, SAMPLES, &format!("app={name}"), 1)
        .await?
        .remove(0);
    serving_sim_in(node, SAMPLES, &pod.metadata.name.unwrap_or_default()).await
}

/// A request held on the pod of sample Deployment `name`.
pub async fn hold_on(
    client: &kube::Client,
    node: &LocalNode,
    name: &str,
) -> anyhow::Result<tokio::net::TcpStream> {
    hold(sample_sim(client, node, name).await?).await
}

/// A request held on the sample sim at `sim`.
pub async fn hold(sim: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    hold_completion(sim, SAMPLE_MODEL, 3200, 500).await
}
