//! The resource table: every type the double serves, with the per-type facts
//! the real API server takes from each type's registry strategy.

/// A resource type the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `llmd.ai/v1alpha1 variantautoscalings` (a CRD with the status subresource).
    VariantAutoscalings,
    /// `apps/v1 deployments`.
    Deployments,
    /// `apps/v1 replicasets`.
    ReplicaSets,
    /// `v1 pods`.
    Pods,
    /// `v1 configmaps`.
    ConfigMaps,
    /// `v1 secrets`.
    Secrets,
    /// `v1 services`.
    Services,
    /// `v1 events`, the legacy core Events.
    CoreEvents,
    /// `v1 namespaces` (cluster-scoped).
    Namespaces,
    /// `events.k8s.io/v1 events`, what kube's `Recorder` writes.
    Events,
    /// `coordination.k8s.io/v1 leases`.
    Leases,
    /// `authentication.k8s.io/v1 tokenreviews` (cluster-scoped, create-only, never stored).
    TokenReviews,
    /// `admissionregistration.k8s.io/v1 mutatingwebhookconfigurations` (cluster-scoped).
    MutatingWebhookConfigurations,
    /// `autoscaling/v2 horizontalpodautoscalers`.
    HorizontalPodAutoscalers,
}

/// When `metadata.generation` moves, as each type's update strategy decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Generation {
    /// The type has no generation.
    Untracked,
    /// Bumped when `spec` changes.
    Spec,
    /// Bumped when `spec` or `metadata.annotations` change: the Deployment
    /// strategy counts annotations because they are copied to ReplicaSets.
    SpecAndAnnotations,
    /// Bumped when anything but `metadata` and `status` changes (custom resources).
    AllButMetadataAndStatus,
}

impl Resource {
    /// Every served resource, for path lookup.
    const ALL: [Resource; 14] = [
        Resource::VariantAutoscalings,
        Resource::Deployments,
        Resource::ReplicaSets,
        Resource::Pods,
        Resource::ConfigMaps,
        Resource::Secrets,
        Resource::Services,
        Resource::CoreEvents,
        Resource::Namespaces,
        Resource::Events,
        Resource::Leases,
        Resource::TokenReviews,
        Resource::MutatingWebhookConfigurations,
        Resource::HorizontalPodAutoscalers,
    ];

    /// Finds the resource served at `/api/v1/{plural}` (group `""`) or
    /// `/apis/{group}/{version}/{plural}`.
    pub(crate) fn lookup(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Self::ALL
            .into_iter()
            .find(|r| r.group() == group && r.version() == version && r.plural() == plural)
    }

    /// API group; `""` is the core group.
    pub fn group(self) -> &'static str {
        match self {
            Resource::VariantAutoscalings => "llmd.ai",
            Resource::Deployments | Resource::ReplicaSets => "apps",
            Resource::Pods
            | Resource::ConfigMaps
            | Resource::Secrets
            | Resource::Services
            | Resource::CoreEvents
            | Resource::Namespaces => "",
            Resource::Events => "events.k8s.io",
            Resource::Leases => "coordination.k8s.io",
            Resource::TokenReviews => "authentication.k8s.io",
            Resource::MutatingWebhookConfigurations => "admissionregistration.k8s.io",
            Resource::HorizontalPodAutoscalers => "autoscaling",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Resource::VariantAutoscalings => "v1alpha1",
            Resource::HorizontalPodAutoscalers => "v2",
            _ => "v1",
        }
    }

    /// `apiVersion` as objects carry it: `v1` or `group/version`.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => self.version().to_string(),
            group => format!("{group}/{}", self.version()),
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Resource::VariantAutoscalings => "variantautoscalings",
            Resource::Deployments => "deployments",
            Resource::ReplicaSets => "replicasets",
            Resource::Pods => "pods",
            Resource::ConfigMaps => "configmaps",
            Resource::Secrets => "secrets",
            Resource::Services => "services",
            Resource::CoreEvents | Resource::Events => "events",
            Resource::Namespaces => "namespaces",
            Resource::Leases => "leases",
            Resource::TokenReviews => "tokenreviews",
            Resource::MutatingWebhookConfigurations => "mutatingwebhookconfigurations",
            Resource::HorizontalPodAutoscalers => "horizontalpodautoscalers",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::VariantAutoscalings => "VariantAutoscaling",
            Resource::Deployments => "Deployment",
            Resource::ReplicaSets => "ReplicaSet",
            Resource::Pods => "Pod",
            Resource::ConfigMaps => "ConfigMap",
            Resource::Secrets => "Secret",
            Resource::Services => "Service",
            Resource::CoreEvents | Resource::Events => "Event",
            Resource::Namespaces => "Namespace",
            Resource::Leases => "Lease",
            Resource::TokenReviews => "TokenReview",
            Resource::MutatingWebhookConfigurations => "MutatingWebhookConfiguration",
            Resource::HorizontalPodAutoscalers => "HorizontalPodAutoscaler",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Resource::Namespaces | Resource::TokenReviews | Resource::MutatingWebhookConfigurations
        )
    }

    /// Whether `/status` exists: then the main resource ignores `.status` and
    /// `/status` changes nothing else.
    pub fn has_status_subresource(self) -> bool {
        matches!(
            self,
            Resource::VariantAutoscalings
                | Resource::Deployments
                | Resource::ReplicaSets
                | Resource::Pods
                | Resource::Services
                | Resource::Namespaces
                | Resource::HorizontalPodAutoscalers
        )
    }

    /// Whether DELETE answers with the deleted object (`ReturnDeletedObject`
    /// in the type's registry) rather than a success `Status`.
    pub(crate) fn returns_deleted_object(self) -> bool {
        matches!(
            self,
            Resource::Pods | Resource::Services | Resource::Namespaces
        )
    }

    /// Custom resources differ from built-in types in a few visible ways:
    /// PUT needs a resourceVersion, strategic merge patch is refused, list
    /// items keep `kind`/`apiVersion`, and a created object has no `status`.
    pub(crate) fn is_custom(self) -> bool {
        self == Resource::VariantAutoscalings
    }

    pub(crate) fn generation(self) -> Generation {
        match self {
            Resource::VariantAutoscalings => Generation::AllButMetadataAndStatus,
            Resource::Deployments => Generation::SpecAndAnnotations,
            // Pods track a generation since Kubernetes 1.34 (PodObservedGenerationTracking).
            Resource::ReplicaSets | Resource::Pods | Resource::HorizontalPodAutoscalers => {
                Generation::Spec
            }
            _ => Generation::Untracked,
        }
    }

    /// `plural` or `plural.group`, as error messages name a resource.
    pub(crate) fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_event_apis_are_distinct_resources() {
        assert_eq!(
            Resource::lookup("", "v1", "events"),
            Some(Resource::CoreEvents)
        );
        assert_eq!(
            Resource::lookup("events.k8s.io", "v1", "events"),
            Some(Resource::Events)
        );
        assert_eq!(Resource::lookup("apps", "v1beta1", "deployments"), None);
    }

    #[test]
    fn names_follow_the_api_conventions() {
        let va = Resource::VariantAutoscalings;
        assert_eq!(va.api_version(), "llmd.ai/v1alpha1");
        assert_eq!(va.qualified(), "variantautoscalings.llmd.ai");
        assert_eq!(Resource::Pods.api_version(), "v1");
        assert_eq!(Resource::Pods.qualified(), "pods");
    }
}
