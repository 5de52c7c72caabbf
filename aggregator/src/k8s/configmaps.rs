//! The configuration ConfigMaps in the aggregator's own namespace: read once
//! at start (failing fast on an invalid one), then watched. Dynamic changes
//! apply at once and are logged old → new; a change to a static parameter is
//! rejected with a Warning Event, and an invalid saturation config keeps the
//! previous one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::params::{self, Parsed};
use crate::config::saturation::SaturationConfigSet;
use crate::service::Tuning;

pub const IMMUTABLE_REJECTED: &str = "ImmutableConfigChangeRejected";
pub const INVALID_SATURATION_CONFIG: &str = "InvalidSaturationConfig";

/// Which ConfigMaps, where.
#[derive(Debug, Clone)]
pub struct Names {
    pub namespace: String,
    pub main: String,
    /// `None` when a file (`--saturation-config`) provides it instead.
    pub saturation: Option<String>,
}

/// The ConfigMaps as read at start.
pub struct Initial {
    pub main: BTreeMap<String, String>,
    pub saturation: Option<SaturationConfigSet>,
}

/// Reads both ConfigMaps; a missing one is empty (defaults), an unreadable or
/// invalid one is an error naming it.
pub async fn read(client: Client, names: &Names) -> anyhow::Result<Initial> {
    let api: Api<ConfigMap> = Api::namespaced(client, &names.namespace);
    let data = |cm: Option<ConfigMap>| cm.and_then(|c| c.data).unwrap_or_default();
    let main = api.get_opt(&names.main).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot read ConfigMap {}/{}: {e}",
            names.namespace,
            names.main
        )
    })?;
    let main = data(main);
    let saturation = match &names.saturation {
        None => None,
        Some(name) => {
            let cm = api.get_opt(name).await.map_err(|e| {
                anyhow::anyhow!("cannot read ConfigMap {}/{name}: {e}", names.namespace)
            })?;
            Some(
                SaturationConfigSet::from_data(&data(cm))
                    .map_err(|e| anyhow::anyhow!("ConfigMap {}/{name}: {e}", names.namespace))?,
            )
        }
    };
    Ok(Initial { main, saturation })
}

/// Where changes go.
pub struct Outputs {
    pub tuning: watch::Sender<Tuning>,
    pub saturation: Option<watch::Sender<Arc<SaturationConfigSet>>>,
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
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &running.names.namespace);
    let recorder = Recorder::new(client, running.reporter);
    let mut state = Watched {
        names: running.names,
        argv: running.argv,
        running: running.parsed,
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
            _ = crate::shutdown::requested(&mut shutdown) => return Ok(()),
        }
    }
}

struct Watched {
    names: Names,
    argv: Vec<OsString>,
    running: Parsed,
    /// The main ConfigMap's data in force (rejected keys kept as they were).
    main: BTreeMap<String, String>,
    recorder: Recorder,
    outputs: Outputs,
}

impl Watched {
    async fn changed(&mut self, cm: &ConfigMap, data: BTreeMap<String, String>) {
        let name = cm.metadata.name.as_deref().unwrap_or_default();
        if name == self.names.main {
            self.main_changed(cm, data).await;
        } else if Some(name) == self.names.saturation.as_deref() {
            self.saturation_changed(cm, &data).await;
        }
    }

    async fn main_changed(&mut self, cm: &ConfigMap, data: BTreeMap<String, String>) {
        let edit = params::edit(&self.running, &self.main, &data);
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
        let effective = params::without_rejected(&self.main, &data, &edit.rejected);
        match params::parse(&self.argv, &self.names.main, &effective) {
            Ok(parsed) => {
                for (key, old, new) in &edit.applied {
                    info!(key, old = ?old, new = ?new, "Updated configuration");
                }
                self.outputs
                    .tuning
                    .send_if_modified(|t| replace(t, Tuning::from_args(&parsed.args)));
                self.main = effective;
            }
            Err(e) => {
                error!(error = %e, "invalid configuration change ignored; the previous values stay");
                self.warn(cm, "InvalidConfiguration", e.to_string()).await;
            }
        }
    }

    async fn saturation_changed(&mut self, cm: &ConfigMap, data: &BTreeMap<String, String>) {
        let Some(tx) = &self.outputs.saturation else {
            return;
        };
        match SaturationConfigSet::from_data(data) {
            Ok(config) => {
                let old_entries = tx.borrow().overrides().count() + 1;
                let new_entries = config.overrides().count() + 1;
                if tx.send_if_modified(|c| replace(c, Arc::new(config))) {
                    info!(old_entries, new_entries, "Updated saturation config");
                }
            }
            Err(e) => {
                error!(error = %e, "invalid saturation config ignored; the previous one stays");
                self.warn(cm, INVALID_SATURATION_CONFIG, e.to_string())
                    .await;
            }
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

/// Replaces `slot` with `value` when they differ; returns whether it did.
fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    let changed = *slot != value;
    if changed {
        *slot = value;
    }
    changed
}
