//! What one sample says toward its models' saturation verdicts, cheaply
//! enough to judge every sample as it arrives: a pod's scrape failing or
//! recovering, or one of its models moving between having spare capacity,
//! having less than its trigger leaves, and being saturated. When that
//! changes, the model's decision may change, and the analysis should not
//! wait for its usual batching interval.

use wva_proto::v1::Sample;

use crate::analysis::saturation::is_saturated_at;
use crate::config::saturation::{SaturationConfig, SaturationConfigSet};

/// A pod's standing, per model, as of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    up: bool,
    /// Two bits per model, in the sample's order: its [`Zone`].
    zones: u128,
}

/// Where one model's load on one pod stands against its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Zone {
    /// Below both thresholds by at least their spare triggers.
    Spare = 0,
    /// Below both thresholds, but by less than a trigger: spread over the
    /// model, such loads ask for a scale-up.
    Tight = 1,
    Saturated = 2,
}

/// Models a verdict tells apart; a sample carries at most 64 (the ingest
/// refuses more), and any beyond these are not judged.
const MODELS: usize = 64;

impl Default for Verdict {
    /// A pod that has sent nothing yet: as if up with spare capacity, so a
    /// new pod's first sample is news only when it is not.
    fn default() -> Self {
        Verdict { up: true, zones: 0 }
    }
}

impl Verdict {
    /// The verdict of `sample` from a pod in `namespace`.
    pub fn of(sample: &Sample, namespace: &str, configs: &SaturationConfigSet) -> Verdict {
        if !sample.up {
            return Verdict {
                up: false,
                zones: 0,
            };
        }
        let zones = sample
            .models
            .iter()
            .take(MODELS)
            .enumerate()
            .fold(0u128, |zones, (i, m)| {
                let config = configs.for_model(&m.model, namespace);
                let zone = zone(m.kv_cache_usage, m.requests_waiting, &config);
                zones | (zone as u128) << (2 * i)
            });
        Verdict { up: true, zones }
    }
}

fn zone(kv: f64, waiting: f64, config: &SaturationConfig) -> Zone {
    if is_saturated_at(kv, waiting, config) {
        Zone::Saturated
    } else if config.kv_cache_threshold - kv < config.kv_spare_trigger
        || config.queue_length_threshold - waiting < config.queue_spare_trigger
    {
        Zone::Tight
    } else {
        Zone::Spare
    }
}

#[cfg(test)]
mod tests {
    use wva_proto::v1::ModelSignals;

    use super::*;

    fn sample(loads: &[(f64, f64)]) -> Sample {
        Sample {
            up: true,
            models: loads
                .iter()
                .enumerate()
                .map(|(i, &(kv, waiting))| ModelSignals {
                    model: format!("m{i}"),
                    kv_cache_usage: kv,
                    requests_waiting: waiting,
                    ..ModelSignals::default()
                })
                .collect(),
            ..Sample::default()
        }
    }

    fn verdict(loads: &[(f64, f64)]) -> Verdict {
        Verdict::of(&sample(loads), "ns", &SaturationConfigSet::default())
    }

    /// With the defaults (KV 0.80, queue 5; triggers 0.1 and 3), a model is
    /// tight from KV 0.7 or 3 waiting, saturated from 0.8 or 5.
    #[test]
    fn moving_within_a_zone_is_no_news_crossing_into_another_is() {
        let calm = verdict(&[(0.3, 0.0)]);
        assert_eq!(calm, Verdict::default(), "a calm first sample is no news");
        assert_eq!(verdict(&[(0.6, 1.0)]), calm);
        for changed in [(0.75, 0.0), (0.3, 3.0), (0.85, 0.0), (0.3, 6.0)] {
            assert_ne!(verdict(&[changed]), calm, "{changed:?}");
        }
        assert_eq!(verdict(&[(0.85, 0.0)]), verdict(&[(0.95, 9.0)]));
        assert_ne!(verdict(&[(0.75, 0.0)]), verdict(&[(0.85, 0.0)]));
        // An implausible reading is saturated, as the analysis counts it.
        assert_eq!(verdict(&[(f64::NAN, 0.0)]), verdict(&[(0.9, 0.0)]));
    }

    #[test]
    fn each_model_and_the_scrape_itself_count() {
        let both_calm = verdict(&[(0.3, 0.0), (0.3, 0.0)]);
        assert_ne!(verdict(&[(0.3, 0.0), (0.9, 0.0)]), both_calm);
        assert_ne!(verdict(&[(0.9, 0.0), (0.3, 0.0)]), both_calm);
        let down = Sample {
            up: false,
            ..sample(&[(0.3, 0.0)])
        };
        assert_ne!(
            Verdict::of(&down, "ns", &SaturationConfigSet::default()),
            both_calm
        );
    }

    #[test]
    fn a_models_own_thresholds_apply() {
        let data = [(
            "strict".to_string(),
            "model_id: m0\nnamespace: ns\nkvCacheThreshold: 0.5".to_string(),
        )];
        let configs = SaturationConfigSet::from_data(&data.into()).unwrap();
        let s = sample(&[(0.6, 0.0)]);
        assert_ne!(Verdict::of(&s, "ns", &configs), Verdict::default());
        assert_eq!(Verdict::of(&s, "other", &configs), Verdict::default());
    }
}
