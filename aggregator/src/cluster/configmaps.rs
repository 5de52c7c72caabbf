//! The configuration ConfigMaps in the aggregator's own namespace: read once
//! at start (failing fast on an invalid one), then watched. Dynamic changes
//! apply at once and are logged old → new; a change to a static parameter is
//! rejected with a Warning Event, and an invalid per-model config (saturation,
//! scale to zero, HYBRID mode's service classes) keeps the previous one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wva_core::config::hybrid::HybridConfig;
use wva_core::config::params as core_params;
use wva_core::config::saturation::SaturationConfigSet;
use wva_core::config::scale_to_zero::ScaleToZeroConfigSet;
use wva_core::snapshot::Tuning;

use crate::params::{self, Parsed};

pub const IMMUTABLE_REJECTED: &str = "ImmutableConfigChangeRejected";

/// A per-model configuration held in a ConfigMap of its own.
pub trait ModelConfig: PartialEq + Default + Send + Sync + Sized + 'static {
    /// How logs name it.
    const WHAT: &'static str;
    /// Reason of the Warning Event for an invalid edit.
    const INVALID: &'static str;
    fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String>;
    /// Number of entries, for the update log, where it has a meaning.
    fn entries(&self) -> Option<usize>;
}

impl ModelConfig for SaturationConfigSet {
    const WHAT: &'static str = "saturation config";
    const INVALID: &'static str = "InvalidSaturationConfig";
    fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        SaturationConfigSet::from_data(data).map_err(|e| e.to_string())
    }
    fn entries(&self) -> Option<usize> {
        Some(self.overrides().count() + 1)
    }
}

impl ModelConfig for ScaleToZeroConfigSet {
    const WHAT: &'static str = "scale-to-zero config";
    const INVALID: &'static str = "InvalidScaleToZeroConfig";
    fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        ScaleToZeroConfigSet::from_data(data).map_err(|e| e.to_string())
    }
    fn entries(&self) -> Option<usize> {
        Some(self.models() + 1)
    }
}

impl ModelConfig for HybridConfig {
    const WHAT: &'static str = "serviceclass config";
    const INVALID: &'static str = "InvalidServiceClassConfig";
    fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        HybridConfig::from_data(data).map_err(|e| e.to_string())
    }
    fn entries(&self) -> Option<usize> {
        None
    }
}

/// Which ConfigMaps, where. A per-model one is `None` when a file provides
/// it instead.
#[derive(Debug, Clone)]
pub struct Names {
    pub namespace: String,
    pub main: String,
    pub saturation: Option<String>,
    pub scale_to_zero: Option<String>,
    pub service_class: Option<String>,
}

/// The ConfigMaps as read at start.
pub struct Initial {
    pub main: BTreeMap<String, String>,
    pub saturation: Option<SaturationConfigSet>,
    pub scale_to_zero: Option<ScaleToZeroConfigSet>,
    pub service_class: Option<HybridConfig>,
}

/// Reads the ConfigMaps; a missing one is empty (defaults), an unreadable or
/// invalid one is an error naming it.
pub async fn read(client: Client, names: &Names) -> anyhow::Result<Initial> {
    let api: Api<ConfigMap> = Api::namespaced(client, &names.namespace);
    let main = data_of(&api, &names.namespace, &names.main).await?;
    Ok(Initial {
        main,
        saturation: read_model_config(&api, &names.namespace, names.saturation.as_deref()).await?,
        scale_to_zero: read_model_config(&api, &names.namespace, names.scale_to_zero.as_deref())
            .await?,
        service_class: read_model_config(&api, &names.namespace, names.service_class.as_deref())
            .await?,
    })
}

async fn data_of(
    api: &Api<ConfigMap>,
    namespace: &str,
    name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let cm = api
        .get_opt(name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read ConfigMap {namespace}/{name}: {e}"))?;
    Ok(cm.and_then(|c| c.data).unwrap_or_default())
}

async fn read_model_config<T: ModelConfig>(
    api: &Api<ConfigMap>,
    namespace: &str,
    name: Option<&str>,
) -> anyhow::Result<Option<T>> {
    let Some(name) = name else { return Ok(None) };
    let data = data_of(api, namespace, name).await?;
    let config =
        T::from_data(&data).map_err(|e| anyhow::anyhow!("ConfigMap {namespace}/{name}: {e}"))?;
    Ok(Some(config))
}

/// Where changes go.
pub struct Outputs {
    pub tuning: watch::Sender<Tuning>,
    pub saturation: Option<watch::Sender<Arc<SaturationConfigSet>>>,
    pub scale_to_zero: Option<watch::Sender<Arc<ScaleToZeroConfigSet>>>,
    pub service_class: Option<watch::Sender<Arc<HybridConfig>>>,
}

/// What the watch compares changes against.
pub struct Running {
    pub names: Names,
    /// The command line, parsed again with each new ConfigMap.
    pub argv: Vec<OsString>,
    /// The configuration the process started with.
    pub parsed: Parsed,
    /// The main ConfigMap's data at start.
    pub main: BTreeMap<String, String>,
    pub reporter: Reporter,
}

/// Watches the ConfigMaps until shutdown.
pub async fn run(
    client: Client,
    running: Running,
    outputs: Outputs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &running.names.namespace);
    let recorder = Recorder::new(client, running.reporter);
    let mut state = Watched {
        names: running.names,
        argv: running.argv,
        running: running.parsed,
        main_seen: running.main.clone(),
        main: running.main,
        recorder,
        outputs,
    };
    let mut changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        tokio::select! {
            event = changes.next() => match event {
                Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                    state.changed(&cm, cm.data.clone().unwrap_or_default()).await;
                }
                Some(Ok(watcher::Event::Delete(cm))) => state.changed(&cm, BTreeMap::new()).await,
                Some(Ok(_)) => {}
                Some(Err(e)) => warn!(error = %e, "ConfigMap watch failed; retrying with backoff"),
                None => anyhow::bail!("the ConfigMap watch ended"),
            },
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

struct Watched {
    names: Names,
    argv: Vec<OsString>,
    running: Parsed,
    /// The main ConfigMap's data in force (rejected keys kept as they were).
    main: BTreeMap<String, String>,
    /// The main ConfigMap's data as last seen, so a re-list that shows the
    /// same data (a rejected key included) is not a new edit.
    main_seen: BTreeMap<String, String>,
    recorder: Recorder,
    outputs: Outputs,
}

impl Watched {
    async fn changed(&mut self, cm: &ConfigMap, data: BTreeMap<String, String>) {
        let name = cm.metadata.name.as_deref().unwrap_or_default();
        if name == self.names.main {
            self.main_changed(cm, data).await;
        } else if Some(name) == self.names.saturation.as_deref() {
            self.model_config_changed(cm, &data, &self.outputs.saturation)
                .await;
        } else if Some(name) == self.names.scale_to_zero.as_deref() {
            self.model_config_changed(cm, &data, &self.outputs.scale_to_zero)
                .await;
        } else if Some(name) == self.names.service_class.as_deref() {
            self.model_config_changed(cm, &data, &self.outputs.service_class)
                .await;
        }
    }

    async fn main_changed(&mut self, cm: &ConfigMap, data: BTreeMap<String, String>) {
        if data == self.main_seen {
            return;
        }
        self.main_seen = data.clone();
        let edit = core_params::edit(|p| self.running.set_outside(p), &self.main, &data);
        if !edit.rejected.is_empty() {
            warn!(
                config_map = %self.names.main,
                keys = ?edit.rejected,
                "Attempted to change immutable parameters; the running values stay until a restart"
            );
            let note = format!(
                "Attempted to change immutable parameters {}; they apply only after a restart",
                edit.rejected.join(", ")
            );
            self.warn(cm, IMMUTABLE_REJECTED, note).await;
        }
        for key in &edit.overridden {
            info!(
                key,
                "ConfigMap change ignored: a flag or environment variable sets this parameter"
            );
        }
        let effective = core_params::without_rejected(&self.main, &data, &edit.rejected);
        match params::parse(&self.argv, &self.names.main, &effective) {
            Ok(parsed) => {
                for (key, old, new) in &edit.applied {
                    info!(key, old = ?old, new = ?new, "Updated configuration");
                }
                self.outputs
                    .tuning
                    .send_if_modified(|t| replace(t, parsed.args.tuning()));
                self.main = effective;
            }
            Err(e) => {
                error!(error = %e, "invalid configuration change ignored; the previous values stay");
                self.warn(cm, "InvalidConfiguration", e.to_string()).await;
            }
        }
    }

    async fn model_config_changed<T: ModelConfig>(
        &self,
        cm: &ConfigMap,
        data: &BTreeMap<String, String>,
        tx: &Option<watch::Sender<Arc<T>>>,
    ) {
        let Some(tx) = tx else { return };
        if let Err(e) = apply(tx, data) {
            self.warn(cm, T::INVALID, e).await;
        }
    }

    async fn warn(&self, cm: &ConfigMap, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(note),
            action: "ReloadConfiguration".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &cm.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// Publishes the config in `data` when it is valid and new; an invalid one
/// is logged and returned as the error, and the previous one stays.
fn apply<T: ModelConfig>(
    tx: &watch::Sender<Arc<T>>,
    data: &BTreeMap<String, String>,
) -> Result<(), String> {
    match T::from_data(data) {
        Ok(config) => {
            let old_entries = tx.borrow().entries();
            let new_entries = config.entries();
            if tx.send_if_modified(|c| replace(c, Arc::new(config))) {
                info!(old_entries, new_entries, "Updated {}", T::WHAT);
            }
            Ok(())
        }
        Err(e) => {
            error!(error = %e, "invalid {} ignored; the previous one stays", T::WHAT);
            Err(e)
        }
    }
}

/// Replaces `slot` with `value` when they differ; returns whether it did.
fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    let changed = *slot != value;
    if changed {
        *slot = value;
    }
    changed
}

#[cfg(test)]
mod tests {
    use wva_core::testing::data;

    use super::*;

    fn class_of(config: &HybridConfig, model: &str) -> Option<String> {
        let class = config.classes.for_model(model, None).unwrap();
        class.map(|c| c.name.clone())
    }

    #[test]
    fn a_serviceclass_edit_applies_an_invalid_one_keeps_the_previous_a_deletion_clears() {
        let (tx, mut rx) = watch::channel(Arc::new(HybridConfig::default()));
        let premium = "- {name: Premium, model: m, priority: 1, slo-itl: 24, slo-ttw: 500}\n";
        apply(
            &tx,
            &data(&[("serviceClasses", premium), ("headroom", "0.2")]),
        )
        .unwrap();
        assert!(rx.has_changed().unwrap());
        let config = rx.borrow_and_update().clone();
        assert_eq!(class_of(&config, "m").as_deref(), Some("Premium"));
        assert_eq!(config.headroom, 0.2);

        // The same data again is no change.
        apply(
            &tx,
            &data(&[("serviceClasses", premium), ("headroom", "0.2")]),
        )
        .unwrap();
        assert!(!rx.has_changed().unwrap());

        let invalid = premium.replace("priority: 1", "priority: 0");
        let error = apply::<HybridConfig>(&tx, &data(&[("serviceClasses", &invalid)])).unwrap_err();
        assert_eq!(
            error,
            "serviceclass entry 0 (\"Premium\"): priority must be a whole number from 1 (the highest), got 0"
        );
        let error = apply::<HybridConfig>(
            &tx,
            &data(&[
                ("serviceClasses", premium),
                ("acceleratorLimits", "L4: many"),
            ]),
        )
        .unwrap_err();
        assert!(
            error.starts_with("serviceclass ConfigMap key \"acceleratorLimits\": expected a map"),
            "{error}"
        );
        assert!(!rx.has_changed().unwrap(), "the previous config stays");
        assert_eq!(class_of(&rx.borrow(), "m").as_deref(), Some("Premium"));

        // A deleted ConfigMap (no data): no classes.
        apply(&tx, &BTreeMap::new()).unwrap();
        assert_eq!(**rx.borrow_and_update(), HybridConfig::default());
    }
}
