//! HYBRID mode in the engine: learns each (model, accelerator)'s profile
//! from its pods' consecutive samples, plans every model's replicas from
//! its arrival rate and class, and arbitrates each variant's target with
//! the saturation analysis's ([`crate::hybrid`]).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Deserialize;
use wva_proto::v1::ModelSignals;

use super::assessed::Assessed;
use crate::analysis::model::{Reason, arrivals_and_backlog};
use crate::config::hybrid::HybridConfig;
use crate::config::service_class::{CLASS_ANNOTATION, ServiceClass};
use crate::decision::ModelBased;
use crate::fast_hash::{Map, Set};
use crate::hybrid::arbitration::{Driver, arbitrate};
use crate::hybrid::plan::{Claim, Offer, under_ceilings};
use crate::hybrid::profile::{
    DEFAULT_HALF_LIFE_POINTS, Fitted, Interval, Linear, Profile, ProfileFit, Quality,
};
use crate::hybrid::replica::{Sustains, TokenMix, sustains};
use crate::model_key::ModelRef;
use crate::pod_models::PodModels;
use crate::store::PodKey;
use crate::variants::Variant;

/// The VariantAutoscaling annotation that gives its profile explicitly,
/// as JSON: `{"itl": {"intercept": 10, "slope": 0.2}, "prefill":
/// {"intercept": 20, "slope": 0.1}, "maxBatch": 256}` (ms; per request
/// running on one engine, per prompt token). It wins over the fit.
pub const PROFILE_ANNOTATION: &str = "wva.llmd.ai/performance-profile";

#[derive(Debug, Default)]
pub(super) struct HybridState {
    /// Each pod's last sample per model, and when it arrived.
    previous: PodModels<(Instant, ModelSignals)>,
    /// Per `(model, accelerator)`: the fit and the last profile it passed
    /// with. A steady load narrows the fit's spread until it no longer
    /// passes, but the profile it had does not stop being true.
    fits: Map<(String, String), Learned>,
}

#[derive(Debug)]
struct Learned {
    fit: ProfileFit,
    last: Option<Profile>,
}

/// The profile a variant is planned with.
struct Known {
    profile: Profile,
    fitted: bool,
    quality: Option<Quality>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GivenProfile {
    itl: Linear,
    prefill: Linear,
    max_batch: Option<u32>,
}

impl HybridState {
    /// Plans every assessed model and arbitrates its variants' targets.
    pub(super) fn plan(&mut self, config: &HybridConfig, now: Instant, models: &mut [Assessed]) {
        let mut claims = Vec::new();
        for (index, model) in models.iter_mut().enumerate() {
            let fresh = fresh_of(model, now);
            self.learn(model, &fresh);
            model.plans = vec![None; model.variants.len()];
            match self.claim(config, model, &fresh) {
                Ok(claim) => claims.push((index, claim)),
                Err(abstains) => {
                    for plan in &mut model.plans {
                        *plan = Some((*abstains).clone());
                    }
                }
            }
        }
        let mixes = under_ceilings(
            &claims
                .iter()
                .map(|(_, c)| c.claim.clone())
                .collect::<Vec<_>>(),
            &config.ceilings,
        );
        for ((index, claim), mix) in claims.into_iter().zip(mixes) {
            let model = &mut models[index];
            for (i, mut view) in claim.views.into_iter().enumerate() {
                if view.per_replica.is_some() {
                    let planned = mix.replicas[i];
                    let target = &mut model.targets[i];
                    let (replicas, driver) = arbitrate(target.target_replicas, Some(planned));
                    if driver == Driver::Optimizer {
                        target.target_replicas = replicas;
                        target.reason = Reason::Optimizer;
                    }
                    view.planned = Some(planned);
                    view.carried = Some(mix.carries);
                }
                model.plans[i] = Some(view);
            }
        }
    }

    /// Feeds each fresh pod's interval since its previous sample to its
    /// variant's fit.
    fn learn(&mut self, model: &Assessed, fresh: &[Vec<Fresh<'_>>]) {
        for (va, pods) in model.variants.iter().zip(fresh) {
            if pods.is_empty() {
                continue;
            }
            let key = (model.model.model.to_string(), va.accelerator.clone());
            for &Fresh { pod, signals, at } in pods {
                let interval = self.previous.update(
                    pod,
                    model.model.model,
                    || (at, snapshot(signals)),
                    |(seen_at, previous), new| {
                        if new || *seen_at == at {
                            return None;
                        }
                        let interval = Interval::between(previous, signals);
                        (*seen_at, *previous) = (at, snapshot(signals));
                        interval
                    },
                );
                let Some(interval) = interval else { continue };
                // The key is copied only for a new (model, accelerator).
                if let Some(learned) = self.fits.get_mut(&key) {
                    learned.fit.observe(&interval);
                } else {
                    let mut fit = ProfileFit::new(DEFAULT_HALF_LIFE_POINTS);
                    fit.observe(&interval);
                    self.fits.insert(key.clone(), Learned { fit, last: None });
                }
            }
        }
    }

    /// The model's claim on the cluster and each variant's view, or why the
    /// plan abstains for the whole model.
    fn claim(
        &mut self,
        config: &HybridConfig,
        model: &Assessed,
        fresh: &[Vec<Fresh<'_>>],
    ) -> Result<Planned, Box<ModelBased>> {
        let abstaining = |why: String| Box::new(ModelBased::abstaining(why));
        let class = class_of(config, model).map_err(abstaining)?;
        let mix = token_mix(fresh)
            .ok_or_else(|| abstaining("no request of the model has finished yet".into()))?;
        let loads = model.states.iter().flat_map(|s| &s.loads);
        let measured = loads.clone().any(|l| l.rates.is_some());
        if !measured {
            return Err(abstaining("its arrival rate is not measured yet".into()));
        }
        let arrivals = arrivals_and_backlog(loads).0;
        let mut offers = Vec::new();
        let mut views = Vec::new();
        for ((va, pods), state) in model.variants.iter().zip(fresh).zip(&model.states) {
            let mut view = ModelBased::for_class(class);
            let per_replica = match self.known(config, model.model.model, va) {
                // A running variant of unknown capacity would leave the plan
                // to put its share on the others: the model waits for it.
                Err(why) if state.current_replicas > 0 => {
                    let mut view = ModelBased::for_class(class);
                    view.abstains = Some(format!("variant {}: {why}", va.name));
                    return Err(Box::new(view));
                }
                // One at zero has nothing to learn from: it keeps its floor.
                Err(why) => {
                    view.abstains = Some(why);
                    0.0
                }
                Ok(known) => {
                    view.profile = Some(known.profile);
                    view.fitted = known.fitted;
                    view.quality = known.quality;
                    let engines = engines(pods);
                    match batch(&known.profile, pods, mix, engines) {
                        None => {
                            view.abstains = Some("no batch limit: neither the profile nor the KV cache size gives one".into());
                            0.0
                        }
                        Some(batch) => {
                            match sustains(known.profile, mix, batch, class.objectives) {
                                Sustains::Rate { per_second, .. } => {
                                    let per_replica = per_second * f64::from(engines);
                                    view.per_replica = Some(per_replica);
                                    per_replica
                                }
                                Sustains::Unattainable(miss) => {
                                    let why = format!(
                                        "objectives of class {:?} unattainable: {miss}",
                                        class.name
                                    );
                                    view.abstains = Some(why);
                                    view.unattainable = true;
                                    0.0
                                }
                            }
                        }
                    }
                }
            };
            offers.push(Offer {
                per_replica,
                cost: va.cost,
                accelerator: va.accelerator.clone(),
                min: state.min_replicas,
                max: state.max_replicas,
            });
            views.push(view);
        }
        if offers.iter().all(|o| o.per_replica <= 0.0) {
            // Every variant abstains: the first one's reason is the model's.
            return Err(views.into_iter().next().map_or_else(
                || abstaining("the model has no variant".to_string()),
                Box::new,
            ));
        }
        Ok(Planned {
            claim: Claim {
                priority: class.priority,
                load: arrivals * (1.0 + config.headroom),
                offers,
            },
            views,
        })
    }

    /// The variant's profile: given in its annotation, else fitted.
    fn known(&mut self, config: &HybridConfig, model: &str, va: &Variant) -> Result<Known, String> {
        if let Some(text) = va.annotations.get(PROFILE_ANNOTATION) {
            let given: GivenProfile = serde_json::from_str(text)
                .map_err(|e| format!("annotation {PROFILE_ANNOTATION}: {e}"))?;
            return Ok(Known {
                profile: Profile {
                    itl: given.itl,
                    prefill: given.prefill,
                    max_batch: given.max_batch,
                },
                fitted: false,
                quality: None,
            });
        }
        let key = (model.to_string(), va.accelerator.clone());
        let learned = self
            .fits
            .get_mut(&key)
            .ok_or_else(|| "profile: no latency observed yet".to_string())?;
        match learned.fit.profile(&config.rules) {
            Fitted::Ready { profile, quality } => {
                learned.last = Some(profile);
                Ok(Known {
                    profile,
                    fitted: true,
                    quality: Some(quality),
                })
            }
            Fitted::Learning { quality, why } => match learned.last {
                Some(profile) => Ok(Known {
                    profile,
                    fitted: true,
                    quality: Some(quality),
                }),
                None => Err(format!("profile still learning: {why}")),
            },
        }
    }
}

/// A model's claim, with each variant's view in the order of its variants.
struct Planned {
    claim: Claim,
    views: Vec<ModelBased>,
}

/// The class the model is served under: the one its VariantAutoscalings
/// name, else its highest-priority class.
fn class_of<'c>(config: &'c HybridConfig, model: &Assessed) -> Result<&'c ServiceClass, String> {
    let named: BTreeMap<&str, ()> = model
        .variants
        .iter()
        .filter_map(|va| va.annotations.get(CLASS_ANNOTATION))
        .map(|name| (name.as_str(), ()))
        .collect();
    if named.len() > 1 {
        let names: Vec<String> = named.keys().map(|n| format!("{n:?}")).collect();
        return Err(format!(
            "its variants name different service classes ({}) in {CLASS_ANNOTATION}",
            names.join(", ")
        ));
    }
    let named = named.keys().next().copied();
    config
        .classes
        .for_model(model.model.model, named)?
        .ok_or_else(|| {
            format!(
                "no service class is defined for model {:?}",
                model.model.model
            )
        })
}

/// The model's mean prompt and output tokens per request, over the
/// requests its fresh pods finished since they started.
fn token_mix(fresh: &[Vec<Fresh<'_>>]) -> Option<TokenMix> {
    let (mut prompt, mut prompts, mut output, mut outputs) = (0.0, 0.0, 0.0, 0.0);
    let counters = fresh
        .iter()
        .flatten()
        .filter_map(|f| f.signals.counters.as_ref());
    for c in counters {
        prompt += c.request_prompt_tokens_sum;
        prompts += c.request_prompt_tokens_count;
        output += c.request_generation_tokens_sum;
        outputs += c.request_generation_tokens_count;
    }
    (prompts > 0.0 && outputs > 0.0 && output > 0.0).then(|| TokenMix {
        prompt: prompt / prompts,
        output: output / outputs,
    })
}

/// The data-parallel engines of the variant's pods (the most any reports).
fn engines(pods: &[Fresh<'_>]) -> u32 {
    pods.iter()
        .map(|f| f.signals.engines)
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The largest batch one engine holds: the profile's, else what its KV
/// cache fits of the token mix.
fn batch(profile: &Profile, pods: &[Fresh<'_>], mix: TokenMix, engines: u32) -> Option<u32> {
    if let Some(max) = profile.max_batch {
        return Some(max);
    }
    let tokens = pods
        .iter()
        .map(|f| f.signals.num_gpu_blocks as f64 * f64::from(f.signals.block_size))
        .filter(|t| *t > 0.0)
        .reduce(f64::min)?;
    let per_engine = tokens / f64::from(engines);
    Some(((per_engine / (mix.prompt + mix.output)).floor() as u32).max(1))
}

/// A fresh sample of the model from one pod.
#[derive(Clone, Copy)]
struct Fresh<'a> {
    pod: &'a PodKey,
    signals: &'a ModelSignals,
    at: Instant,
}

/// Each variant's fresh samples of the model, in the order of its variants.
fn fresh_of<'a>(model: &Assessed<'_, 'a, '_>, now: Instant) -> Vec<Vec<Fresh<'a>>> {
    model
        .pods
        .iter()
        .map(|(pods, _)| {
            pods.iter()
                .filter_map(|pod| {
                    let (signals, at) = pod.fresh_signals(model.model.model, now)?;
                    Some(Fresh {
                        pod: pod.key,
                        signals,
                        at,
                    })
                })
                .collect()
        })
        .collect()
}

/// What the next interval is measured from: the counters and gauges, not
/// the model's name (kept once per pod and model already).
fn snapshot(signals: &ModelSignals) -> ModelSignals {
    ModelSignals {
        counters: signals.counters,
        requests_running: signals.requests_running,
        requests_waiting: signals.requests_waiting,
        engines: signals.engines,
        ..ModelSignals::default()
    }
}

impl HybridState {
    /// Forgets the pods that left the store, and the profiles of models no
    /// variant serves any more (a model's profile is shared by namespaces).
    pub(super) fn retain(&mut self, in_store: impl Fn(&PodKey) -> bool, live: &Set<ModelRef<'_>>) {
        self.previous.sweep(in_store);
        let models: Set<&str> = live.iter().map(|m| m.model).collect();
        self.fits
            .retain(|(model, _), _| models.contains(model.as_str()));
    }
}
