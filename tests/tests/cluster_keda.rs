//! KEDA itself (its operator and metrics server, `wva_e2e::keda`) scaling a
//! Deployment on wva's decisions through the aggregator's external scaler,
//! as docs/keda.md tells users to set it up: an `external-push` trigger
//! over the chart's TLS. The assertions are on the Deployment's replicas.

use std::time::Duration;

use wva_e2e::install::*;
use wva_e2e::keda::{Keda, authenticate_to_wva, scaled_object};
use wva_e2e::*;

/// Time for a decision to reach the Deployment: KEDA's push or its HPA's
/// sync (15 s), with room for a busy machine.
const THROUGH_KEDA: Duration = Duration::from_secs(120);

/// Awaits `CHAT`'s Deployment at replicas `pred` accepts; returns them.
async fn replicas_where(
    client: &kube::Client,
    keda: &Keda,
    what: &str,
    pred: impl Fn(i32) -> bool,
) -> anyhow::Result<i32> {
    let reached = eventually(THROUGH_KEDA, what, || async {
        Ok(spec_replicas(client, NS, CHAT).await?.filter(|r| pred(*r)))
    })
    .await;
    match reached {
        Ok(replicas) => Ok(replicas),
        Err(e) => anyhow::bail!("{e:#}\n{}", keda.logs(client).await?),
    }
}

#[tokio::test]
async fn keda_scales_a_deployment_from_zero_up_and_back_to_zero_on_wva_decisions()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &WAKING_FROM_ZERO).await?;
    // A held request saturates a replica at this threshold; scale-downs are
    // not held by wva's window.
    saturating_on_a_held_request(&client, "scaleDownStabilizationSeconds: 0\n").await?;
    let keda = Keda::install(&plane).await?;
    authenticate_to_wva(&plane, NS).await?;
    plane
        .create(&vllm_deployment_with(CHAT, 1, &SLOW_DECODING_SIM))
        .await?;
    let mut va = variant_autoscaling(CHAT, CHAT);
    let queue = endpoint_picker(&plane, &client, &mut va).await?;
    plane.create(&va).await?;
    plane.create(&scaled_object(NS, CHAT, 0)).await?;

    // Up: a held request saturates the replica; KEDA's HPA follows wva.
    let pod = controller_pods(&client, CHAT, 1).await?.remove(0);
    let sim = serving_sim(&node, &pod.metadata.name.unwrap_or_default()).await?;
    let request = hold_completion(sim, MODEL, 400, 500).await?;
    let raised = replicas_where(&client, &keda, "KEDA to raise chat", |r| r > 1).await?;
    shown(&plane, &["get", "scaledobject,hpa", "-n", NS]).await?;
    let metrics = replicas[0].metrics;
    chat_decision_where(metrics, "the decision KEDA applied", |d| {
        d["desiredReplicas"] == raised
    })
    .await?;

    // Down to zero: the load leaves, the model idles past its retention,
    // wva decides 0 and KEDA deactivates the Deployment.
    drop(request);
    replicas_where(&client, &keda, "KEDA to take chat to zero", |r| r == 0).await?;

    // And back: requests queue at the endpoint picker, wva wakes the model
    // and KEDA's push brings the Deployment to one replica.
    *queue.lock().unwrap_or_else(|p| p.into_inner()) = flow_control(MODEL, 3);
    replicas_where(&client, &keda, "KEDA to bring chat back", |r| r == 1).await?;
    // By now the decision may say it waits for that replica (converging);
    // why its value last changed is what woke it.
    let decision = chat_decision_where(metrics, "one replica for the queue", |d| {
        d["desiredReplicas"] == 1
    })
    .await?;
    assert_eq!(decision["changeReason"], "scale_from_zero", "{decision}");
    Ok(())
}
