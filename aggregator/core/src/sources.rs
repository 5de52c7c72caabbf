//! Where a variant's signals come from: the kinds of source, what a polled
//! source answers, and why one failed.

use wva_proto::v1::{ModelSignals, Role, Sample};

use crate::decision::FailedSource;
use crate::variants::Variant;

pub const SOURCE_ANNOTATION: &str = "wva.llmd.ai/metrics-source";
/// Names the Service of the variant's endpoint picker, in its namespace.
pub const EPP_SERVICE_ANNOTATION: &str = "wva.llmd.ai/epp-service";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Agent,
    PodScraping,
    Prometheus,
}

impl SourceKind {
    /// Every source, in the order their names are listed.
    pub const ALL: [SourceKind; 3] = [
        SourceKind::Agent,
        SourceKind::PodScraping,
        SourceKind::Prometheus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Agent => "agent",
            SourceKind::PodScraping => "pod-scraping",
            SourceKind::Prometheus => "prometheus",
        }
    }

    /// The source a variant's annotation names, else `default`; an unknown
    /// name is an error that names the accepted ones.
    pub fn of(va: &Variant, default: SourceKind) -> Result<SourceKind, String> {
        match va.annotations.get(SOURCE_ANNOTATION).map(|s| s.trim()) {
            None => Ok(default),
            Some(name) => Self::named(name).ok_or_else(|| {
                format!(
                    "annotation {SOURCE_ANNOTATION}={name:?} names no source (agent, pod-scraping, prometheus)"
                )
            }),
        }
    }

    /// This source, as the origin of a failure.
    pub fn failed(self) -> FailedSource {
        match self {
            SourceKind::Agent => FailedSource::Agent,
            SourceKind::PodScraping => FailedSource::PodScraping,
            SourceKind::Prometheus => FailedSource::Prometheus,
        }
    }

    /// The source called `name`, if any.
    pub fn named(name: &str) -> Option<SourceKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One pod's answer to a poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PolledPod {
    pub pod: String,
    pub role: Role,
    /// The signals; the poller sets the sequence and time fields.
    pub sample: Sample,
}

impl PolledPod {
    /// A serving pod reporting `signals`.
    pub fn serving(pod: String, signals: ModelSignals) -> Self {
        PolledPod {
            pod,
            role: Role::Vllm,
            sample: Sample {
                models: vec![signals],
                ..Sample::default()
            },
        }
    }
}

/// A source asked for a variant's pods.
#[async_trait::async_trait]
pub trait PolledSource: Send + Sync + 'static {
    fn kind(&self) -> SourceKind;
    /// The variant's pods and their signals for its model, now.
    async fn poll(&self, va: &Variant) -> Result<Vec<PolledPod>, String>;
    /// The pods of the endpoint picker the variant names, for a source that
    /// can reach them.
    async fn poll_epp(&self, _va: &Variant) -> Result<Vec<PolledPod>, String> {
        Err(format!(
            "source {} cannot read endpoint pickers",
            self.kind().as_str()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn va(source: Option<&str>) -> Variant {
        let annotations: Vec<(&str, &str)> =
            source.map(|s| (SOURCE_ANNOTATION, s)).into_iter().collect();
        crate::testing::variant(&annotations)
    }

    #[test]
    fn the_annotation_names_the_source_and_the_default_applies_without_one() {
        assert_eq!(
            SourceKind::of(&va(None), SourceKind::Agent),
            Ok(SourceKind::Agent)
        );
        assert_eq!(
            SourceKind::of(&va(None), SourceKind::PodScraping),
            Ok(SourceKind::PodScraping)
        );
        assert_eq!(
            SourceKind::of(&va(Some("agent")), SourceKind::Prometheus),
            Ok(SourceKind::Agent)
        );
        assert_eq!(
            SourceKind::of(&va(Some("prometheus")), SourceKind::Agent),
            Ok(SourceKind::Prometheus)
        );
        let error = SourceKind::of(&va(Some("carrier-pigeon")), SourceKind::Agent).unwrap_err();
        assert!(error.contains("agent, pod-scraping, prometheus"), "{error}");
    }
}
