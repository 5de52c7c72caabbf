//! Joins the watched VariantAutoscalings with their target Deployments: which
//! variants the analysis sees, with which replica counts, and where every
//! object stands for its status. HorizontalPodAutoscalers annotated as
//! scaling targets (`wva_core::workload`) add workloads scaled on a signal.
//! Pure: the caller passes what the watches hold.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec};
use kube::Resource;
use serde::Serialize;
use wva_core::snapshot::ReplicaCounts;
use wva_core::variants::{self, DEFAULT_TARGET_KIND, FieldError, Variant, VariantKey};
use wva_core::workload;

use super::crd;

/// The label that assigns a VariantAutoscaling to one controller instance.
pub const CONTROLLER_INSTANCE_LABEL: &str = "wva.llmd.ai/controller-instance";

/// Where one managed VariantAutoscaling stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    Invalid(FieldError),
    TargetMissing {
        name: String,
    },
    Running {
        name: String,
        replicas: ReplicaCounts,
    },
}

#[derive(Debug, Default, PartialEq)]
pub struct Resolved {
    /// Valid variants whose target exists: what the analysis sees.
    pub variants: Vec<Variant>,
    pub replicas: HashMap<VariantKey, ReplicaCounts>,
    /// Every managed object, ordered by key.
    pub standings: Vec<(VariantKey, Standing)>,
    /// Annotated HPAs that declare no workload, as `namespace/name` and why.
    pub refused_workloads: Vec<(VariantKey, String)>,
}

/// Whether this controller instance manages `va`: all objects when no
/// instance is set, else only those labelled with it.
pub fn manages(va: &crd::VariantAutoscaling, instance: Option<&str>) -> bool {
    labelled_for(&va.metadata, instance)
}

/// Whether an object's labels assign it to `instance` (any object when none).
fn labelled_for(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    instance: Option<&str>,
) -> bool {
    match instance {
        None => true,
        Some(want) => meta
            .labels
            .as_ref()
            .and_then(|l| l.get(CONTROLLER_INSTANCE_LABEL))
            .is_some_and(|have| have == want),
    }
}

/// `namespace/name` of an object from the API server (which always sets both).
pub fn key_of(va: &crd::VariantAutoscaling) -> VariantKey {
    VariantKey::new(
        va.metadata.namespace.clone().unwrap_or_default(),
        va.metadata.name.clone().unwrap_or_default(),
    )
}

/// Replica counts of a Deployment: `spec.replicas` (Kubernetes defaults it
/// to 1) and `status.readyReplicas`.
pub fn replica_counts(deployment: &Deployment) -> ReplicaCounts {
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    ReplicaCounts {
        current: u32::try_from(current).unwrap_or(0),
        ready: u32::try_from(ready).unwrap_or(0),
        floor: 0,
        ceiling: None,
    }
}

/// Marks the HPAs KEDA manages; KEDA itself takes such a target to zero.
const KEDA_SCALED_OBJECT_LABEL: &str = "scaledobject.keda.sh/name";

/// Whether KEDA made this HPA (for a ScaledObject).
pub fn made_by_keda(hpa: &HorizontalPodAutoscaler) -> bool {
    scaled_object_of(hpa).is_some()
}

/// The ScaledObject of an HPA KEDA made.
fn scaled_object_of(hpa: &HorizontalPodAutoscaler) -> Option<&String> {
    hpa.metadata.labels.as_ref()?.get(KEDA_SCALED_OBJECT_LABEL)
}

/// The HPAs in `namespace` that scale Deployment `name`.
fn scaling<'a>(
    hpas: impl IntoIterator<Item = &'a HorizontalPodAutoscaler>,
    namespace: &str,
    name: &str,
) -> impl Iterator<Item = (&'a HorizontalPodAutoscaler, &'a HorizontalPodAutoscalerSpec)> {
    hpas.into_iter().filter_map(move |hpa| {
        let spec = hpa.spec.as_ref()?;
        let target = &spec.scale_target_ref;
        let api_group = target
            .api_version
            .as_deref()
            .map(|v| v.split('/').next().unwrap_or(v));
        (hpa.metadata.namespace.as_deref() == Some(namespace)
            && target.kind == "Deployment"
            && target.name == name
            && matches!(api_group, None | Some("apps")))
        .then_some((hpa, spec))
    })
}

/// The fewest replicas the autoscalers of Deployment `namespace/name` can
/// set: the highest `minReplicas` (default 1) of the HPAs that target it, or
/// 0 without any. KEDA's HPAs never go below 1, but KEDA scales their target
/// between 0 and 1 itself: a KEDA HPA's floor is its ScaledObject's
/// `minReplicaCount`, which `keda_min(namespace, scaled object)` gives when
/// known; unknown, a KEDA HPA at 1 is taken for a floor of 0.
pub fn scaler_floor<'a>(
    hpas: impl IntoIterator<Item = &'a HorizontalPodAutoscaler>,
    namespace: &str,
    name: &str,
    keda_min: impl Fn(&str, &str) -> Option<u32>,
) -> u32 {
    scaling(hpas, namespace, name)
        .map(|(hpa, spec)| {
            let min = u32::try_from(spec.min_replicas.unwrap_or(1)).unwrap_or(0);
            match scaled_object_of(hpa) {
                None => min,
                Some(so) => keda_min(namespace, so).unwrap_or(if min <= 1 { 0 } else { min }),
            }
        })
        .max()
        .unwrap_or(0)
}

/// The most replicas the autoscalers of Deployment `namespace/name` can set:
/// the lowest `maxReplicas` of the HPAs that target it (KEDA's HPA carries
/// its ScaledObject's `maxReplicaCount`), or `None` without any.
pub fn scaler_ceiling<'a>(
    hpas: impl IntoIterator<Item = &'a HorizontalPodAutoscaler>,
    namespace: &str,
    name: &str,
) -> Option<u32> {
    scaling(hpas, namespace, name)
        .map(|(_, spec)| u32::try_from(spec.max_replicas).unwrap_or(0))
        .min()
}

/// Resolves `vas` against `target(namespace, name)`, the replica counts of
/// that Deployment when it exists.
/// When two objects scale one Deployment, the older (then the first by name)
/// keeps it and the other is invalid.
pub fn resolve(
    vas: &[&crd::VariantAutoscaling],
    target: impl Fn(&str, &str) -> Option<ReplicaCounts>,
) -> Resolved {
    let mut ordered: Vec<&crd::VariantAutoscaling> = vas.to_vec();
    oldest_first(&mut ordered);
    let mut out = Resolved::default();
    let mut owners: HashMap<(String, String), VariantKey> = HashMap::new();
    for object in ordered {
        let key = key_of(object);
        let standing = match validated(object) {
            Err(error) => Standing::Invalid(error),
            Ok(va) => standing(va, &mut owners, &target, &mut out),
        };
        out.standings.push((key, standing));
    }
    out.standings.sort_by(|a, b| a.0.cmp(&b.0));
    out.variants.sort_by_key(Variant::key);
    out
}

/// Orders objects the older first, then by name: the older keeps what two
/// objects claim.
fn oldest_first<K: Resource>(objects: &mut [&K]) {
    objects.sort_by(|a, b| {
        let (a, b) = (a.meta(), b.meta());
        (&a.creation_timestamp, &a.name).cmp(&(&b.creation_timestamp, &b.name))
    });
}

/// An object from the API server as the aggregator reads it (a
/// VariantAutoscaling, or an annotated HorizontalPodAutoscaler).
fn validated(object: &impl Serialize) -> Result<Variant, FieldError> {
    serde_json::to_value(object)
        .map_err(|e| FieldError {
            field: "object",
            problem: format!("cannot be encoded: {e}"),
        })
        .and_then(variants::from_json)
}

fn standing(
    va: Variant,
    owners: &mut HashMap<(String, String), VariantKey>,
    target: &impl Fn(&str, &str) -> Option<ReplicaCounts>,
    out: &mut Resolved,
) -> Standing {
    if va.target.kind != DEFAULT_TARGET_KIND {
        return Standing::Invalid(FieldError {
            field: "spec.scaleTargetRef.kind",
            problem: format!("{:?} is not supported: only Deployment", va.target.kind),
        });
    }
    let claim = (va.namespace.clone(), va.target.name.clone());
    if let Some(owner) = owners.get(&claim) {
        return Standing::Invalid(FieldError {
            field: "spec.scaleTargetRef.name",
            problem: format!(
                "{:?} is already the target of VariantAutoscaling {owner}",
                va.target.name
            ),
        });
    }
    owners.insert(claim, va.key());
    let name = va.target.name.clone();
    match target(&va.namespace, &name) {
        None => Standing::TargetMissing { name },
        Some(replicas) => {
            out.replicas.insert(va.key(), replicas);
            out.variants.push(va);
            Standing::Running { name, replicas }
        }
    }
}

/// Adds the workloads that annotated HPAs (or KEDA's HPAs, which carry
/// their ScaledObject's annotations) declare, after the variants: an HPA
/// whose annotations are wrong, whose target is not a Deployment, is a
/// VariantAutoscaling's, or is another annotated HPA's, is refused with the
/// reason; one whose Deployment does not exist yet waits for it.
pub fn workloads<'a>(
    hpas: impl IntoIterator<Item = &'a HorizontalPodAutoscaler>,
    instance: Option<&str>,
    target: impl Fn(&str, &str) -> Option<ReplicaCounts>,
    out: &mut Resolved,
) {
    let mut annotated: Vec<&HorizontalPodAutoscaler> = hpas
        .into_iter()
        .filter(|hpa| {
            let annotations = hpa.metadata.annotations.as_ref();
            annotations.is_some_and(|a| a.contains_key(workload::SIGNAL_ANNOTATION))
                && labelled_for(&hpa.metadata, instance)
        })
        .collect();
    // The older HPA keeps a contested workload, as with VariantAutoscalings.
    oldest_first(&mut annotated);
    let models = out.variants.len();
    for hpa in annotated {
        let at = VariantKey::new(
            hpa.metadata.namespace.clone().unwrap_or_default(),
            hpa.metadata.name.clone().unwrap_or_default(),
        );
        match workload_of(hpa, &out.variants, models) {
            Err(why) => out.refused_workloads.push((at, why)),
            Ok(worker) => {
                if let Some(replicas) = target(&worker.namespace, &worker.target.name) {
                    out.replicas.insert(worker.key(), replicas);
                    out.variants.push(worker);
                }
            }
        }
    }
    out.variants.sort_by_key(Variant::key);
    out.refused_workloads.sort();
}

/// The workload `hpa` declares, unless `taken` (the first `models` of which
/// are VariantAutoscalings) already scales or names it.
fn workload_of(
    hpa: &HorizontalPodAutoscaler,
    taken: &[Variant],
    models: usize,
) -> Result<Variant, String> {
    let worker = validated(hpa).map_err(|e| e.to_string())?;
    if worker.target.kind != DEFAULT_TARGET_KIND {
        return Err(format!(
            "spec.scaleTargetRef.kind {:?} is not supported: only Deployment",
            worker.target.kind
        ));
    }
    let clash = taken.iter().enumerate().find(|(_, v)| {
        v.namespace == worker.namespace
            && (v.target.name == worker.target.name || v.name == worker.name)
    });
    match clash {
        None => Ok(worker),
        Some((i, other)) if i < models => Err(format!(
            "Deployment {:?} is VariantAutoscaling {}'s (its target, or its name)",
            worker.target.name,
            other.key()
        )),
        Some(_) => Err(format!(
            "Deployment {:?} is already scaled on a signal by an older HorizontalPodAutoscaler",
            worker.target.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::{ScaleTargetRef, VariantAutoscalingSpec};

    fn va(name: &str, target: &str, created: i64) -> crd::VariantAutoscaling {
        let mut va = crd::VariantAutoscaling::new(
            name,
            VariantAutoscalingSpec {
                scale_target_ref: ScaleTargetRef {
                    kind: "Deployment".into(),
                    name: target.into(),
                    api_version: Some("apps/v1".into()),
                },
                model_id: "meta/llama".into(),
                variant_cost: "10.0".into(),
            },
        );
        va.metadata.namespace = Some("llm".into());
        va.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        va.metadata.labels = Some(BTreeMap::from([(
            variants::ACCELERATOR_LABEL.to_string(),
            "L4".to_string(),
        )]));
        va
    }

    fn deployment(replicas: Option<i32>, ready: Option<i32>) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("llama".into()),
                namespace: Some("llm".into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas,
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: ready,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_variant_with_its_deployment_runs_with_the_deployments_counts() {
        let d = deployment(Some(3), Some(2));
        let a = va("a", "llama", 1);
        let resolved = resolve(&[&a], |ns, name| {
            (ns == "llm" && name == "llama").then(|| replica_counts(&d))
        });
        let key = VariantKey::new("llm", "a");
        let counts = ReplicaCounts {
            current: 3,
            ready: 2,
            floor: 0,
            ceiling: None,
        };
        assert_eq!(resolved.replicas.get(&key), Some(&counts));
        assert_eq!(resolved.variants.len(), 1);
        assert_eq!(resolved.variants[0].accelerator, "L4");
        assert_eq!(
            resolved.standings,
            vec![(
                key,
                Standing::Running {
                    name: "llama".into(),
                    replicas: counts
                }
            )]
        );
    }

    #[test]
    fn a_variant_without_its_deployment_is_not_analysed() {
        let a = va("a", "llama", 1);
        let resolved = resolve(&[&a], |_, _| None);
        assert!(resolved.variants.is_empty());
        assert!(resolved.replicas.is_empty());
        assert_eq!(
            resolved.standings[0].1,
            Standing::TargetMissing {
                name: "llama".into()
            }
        );
    }

    #[test]
    fn the_deployment_defaults_apply() {
        let counts = replica_counts(&deployment(None, None));
        assert_eq!(
            counts,
            ReplicaCounts {
                current: 1,
                ready: 0,
                floor: 0,
                ceiling: None,
            }
        );
    }

    #[test]
    fn an_invalid_object_is_reported_and_not_analysed() {
        let mut bad = va("bad", "llama", 1);
        bad.spec.variant_cost = "cheap".into();
        let d = deployment(Some(1), Some(1));
        let resolved = resolve(&[&bad], |_, _| Some(replica_counts(&d)));
        assert!(resolved.variants.is_empty());
        let Standing::Invalid(error) = &resolved.standings[0].1 else {
            panic!("{:?}", resolved.standings)
        };
        assert_eq!(error.field, "spec.variantCost");
    }

    #[test]
    fn only_deployments_are_supported_targets() {
        let mut sts = va("a", "llama", 1);
        sts.spec.scale_target_ref.kind = "StatefulSet".into();
        let resolved = resolve(&[&sts], |_, _| None);
        let Standing::Invalid(error) = &resolved.standings[0].1 else {
            panic!("{:?}", resolved.standings)
        };
        assert_eq!(error.field, "spec.scaleTargetRef.kind");
    }

    #[test]
    fn the_older_of_two_objects_keeps_a_shared_target() {
        let d = deployment(Some(1), Some(1));
        let newer = va("a-newer", "llama", 20);
        let older = va("z-older", "llama", 10);
        let resolved = resolve(&[&newer, &older], |_, _| Some(replica_counts(&d)));
        assert_eq!(resolved.variants.len(), 1);
        assert_eq!(resolved.variants[0].name, "z-older");
        let (key, Standing::Invalid(error)) = &resolved.standings[0] else {
            panic!("{:?}", resolved.standings)
        };
        assert_eq!(key.name, "a-newer");
        assert!(error.problem.contains("llm/z-older"), "{}", error.problem);
    }

    #[test]
    fn controller_instance_selects_labelled_objects() {
        let mut a = va("a", "llama", 1);
        assert!(manages(&a, None));
        assert!(!manages(&a, Some("blue")));
        a.metadata
            .labels
            .get_or_insert_default()
            .insert(CONTROLLER_INSTANCE_LABEL.into(), "blue".into());
        assert!(manages(&a, Some("blue")));
        assert!(!manages(&a, Some("green")));
    }

    fn hpa(
        namespace: &str,
        target: (&str, &str),
        min: Option<i32>,
        keda: bool,
    ) -> HorizontalPodAutoscaler {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": format!("{}-hpa", target.1),
                "namespace": namespace,
                "labels": if keda { serde_json::json!({KEDA_SCALED_OBJECT_LABEL: "so"}) } else { serde_json::json!({}) },
            },
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": target.0, "name": target.1},
                "minReplicas": min,
                "maxReplicas": 10,
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_scaler_floor_is_the_hpas_min_replicas() {
        let hpas = [
            hpa("llm", ("Deployment", "chat-h100"), None, false),
            hpa("llm", ("Deployment", "chat-l4"), Some(2), false),
            hpa("llm", ("StatefulSet", "chat-a100"), Some(3), false),
            hpa("other", ("Deployment", "chat-a100"), Some(4), false),
            hpa("llm", ("Deployment", "code-l4"), Some(1), true),
            hpa("llm", ("Deployment", "code-h100"), Some(2), true),
        ];
        let floor = |name| scaler_floor(&hpas, "llm", name, |_, _| None);
        assert_eq!(floor("chat-h100"), 1, "minReplicas defaults to 1");
        assert_eq!(floor("chat-l4"), 2);
        assert_eq!(floor("chat-a100"), 0, "another kind, another namespace");
        assert_eq!(floor("code-l4"), 0, "KEDA takes it from 1 to 0 itself");
        assert_eq!(floor("code-h100"), 2);
        assert_eq!(floor("no-hpa"), 0);
    }

    #[test]
    fn a_keda_hpas_floor_is_its_scaled_objects_min_replica_count() {
        let hpas = [hpa("llm", ("Deployment", "code-l4"), Some(1), true)];
        let with = |min: Option<u32>| {
            scaler_floor(&hpas, "llm", "code-l4", |ns, so| {
                assert_eq!((ns, so), ("llm", "so"), "the HPA's ScaledObject");
                min
            })
        };
        assert_eq!(with(Some(1)), 1, "KEDA never takes it to 0");
        assert_eq!(with(Some(0)), 0);
        assert_eq!(with(None), 0, "unknown: KEDA may take it to 0");
    }

    #[test]
    fn the_scaler_ceiling_is_the_lowest_max_replicas() {
        let mut tight = hpa("llm", ("Deployment", "chat-l4"), Some(2), false);
        tight.spec.as_mut().unwrap().max_replicas = 4;
        let hpas = [
            hpa("llm", ("Deployment", "chat-l4"), None, false),
            tight,
            hpa("llm", ("Deployment", "code-l4"), Some(1), true),
            hpa("other", ("Deployment", "chat-h100"), None, false),
        ];
        let ceiling = |name| scaler_ceiling(&hpas, "llm", name);
        assert_eq!(ceiling("chat-l4"), Some(4));
        assert_eq!(
            ceiling("code-l4"),
            Some(10),
            "KEDA's HPA carries maxReplicaCount"
        );
        assert_eq!(ceiling("chat-h100"), None, "another namespace");
    }

    /// An HPA on Deployment `target` in `llm` declaring a scaling target.
    fn annotated(
        name: &str,
        target: &str,
        annotations: &[(&str, &str)],
    ) -> HorizontalPodAutoscaler {
        let mut object = hpa("llm", ("Deployment", target), Some(1), false);
        object.metadata.name = Some(name.into());
        object.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        object
    }

    const JOBS: [(&str, &str); 2] = [
        (workload::SIGNAL_ANNOTATION, "jobs"),
        (workload::TARGET_ANNOTATION, "5"),
    ];

    fn counts(current: u32) -> ReplicaCounts {
        ReplicaCounts {
            current,
            ready: current,
            floor: 1,
            ceiling: Some(10),
        }
    }

    #[test]
    fn annotated_hpas_add_workloads_beside_the_variants() {
        let chat = va("chat", "llama", 1);
        let mut out = resolve(&[&chat], |_, _| Some(counts(2)));
        let hpas = [
            annotated("worker-hpa", "worker", &JOBS),
            // Not annotated: an HPA wva only reads limits from.
            hpa("llm", ("Deployment", "web"), Some(1), false),
            // Its Deployment does not exist yet.
            annotated("later-hpa", "later", &JOBS),
        ];
        workloads(
            hpas.iter(),
            None,
            |_, name| (name != "later").then(|| counts(3)),
            &mut out,
        );
        let keys: Vec<String> = out.variants.iter().map(|v| v.key().to_string()).collect();
        assert_eq!(keys, ["llm/chat", "llm/worker"]);
        let worker = &out.variants[1];
        assert_eq!(worker.signal.as_ref().unwrap().signal, "jobs");
        assert_eq!(out.replicas[&worker.key()].current, 3);
        assert!(out.refused_workloads.is_empty());
    }

    #[test]
    fn a_wrong_or_contested_scaling_target_is_refused_with_the_reason() {
        let chat = va("chat", "llama", 1);
        let mut out = resolve(&[&chat], |_, _| Some(counts(2)));
        let mut younger = annotated("second-hpa", "worker", &JOBS);
        younger.metadata.creation_timestamp = Some(Time(Timestamp::from_second(2).unwrap()));
        let mut older = annotated("first-hpa", "worker", &JOBS);
        older.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
        let hpas = [
            younger,
            older,
            annotated("on-a-variant", "llama", &JOBS),
            annotated("no-target-per-pod", "other", &JOBS[..1]),
        ];
        workloads(hpas.iter(), None, |_, _| Some(counts(1)), &mut out);
        let refused: Vec<String> = out
            .refused_workloads
            .iter()
            .map(|(hpa, why)| format!("{hpa}: {why}"))
            .collect();
        assert_eq!(
            refused,
            [
                "llm/no-target-per-pod: metadata.annotations[wva.llmd.ai/target-per-pod] is required beside wva.llmd.ai/signal (the value one pod should carry)",
                "llm/on-a-variant: Deployment \"llama\" is VariantAutoscaling llm/chat's (its target, or its name)",
                "llm/second-hpa: Deployment \"worker\" is already scaled on a signal by an older HorizontalPodAutoscaler",
            ]
        );
        assert_eq!(out.variants.len(), 2, "chat and the older HPA's worker");
    }

    #[test]
    fn an_instance_takes_only_the_hpas_labelled_for_it() {
        let mut blue = annotated("blue-hpa", "blue", &JOBS);
        blue.metadata.labels =
            Some([(CONTROLLER_INSTANCE_LABEL.to_string(), "blue".to_string())].into());
        let hpas = [blue, annotated("any-hpa", "any", &JOBS)];
        let mut out = Resolved::default();
        workloads(hpas.iter(), Some("blue"), |_, _| Some(counts(1)), &mut out);
        let names: Vec<&str> = out.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["blue"]);
    }
}
