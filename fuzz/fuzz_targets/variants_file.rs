//! The configuration files an operator writes, on arbitrary text: the
//! VariantAutoscaling file of standalone mode, and ConfigMaps read by the
//! main parameter table (with the rules for editing it while running) and
//! the saturation and scale-to-zero parsers.
//!
//! The input is read whole as a variants file. Split at its first `---`
//! line it is also an edit of the main ConfigMap from the first document
//! to the second (from nothing to the input when there is no separator),
//! and the second document is read as each per-model ConfigMap.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use wva_aggregator::params::{self, Parsed};
use wva_core::config::config_map_data;
use wva_core::config::params::{
    Edit, Mutability, PARAMS, ParamError, STATIC_WITHOUT_FLAG, edit, find, without_rejected,
};
use wva_core::config::saturation::{SaturationConfig, SaturationConfigSet};
use wva_core::config::scale_to_zero::ScaleToZeroConfigSet;
use wva_core::variants::{
    ACCELERATOR_LABEL, API_VERSION, KIND, Variant, from_json, is_dns_label, parse_variants,
};

const CONFIG_MAP: &str = "wva-config";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_variants(&text);
    let (old, new) = text.split_once("\n---\n").unwrap_or(("", &text));
    let Ok(new) = config_map_data(new) else {
        return;
    };
    check_model_configs(&new);
    check_edit(&config_map_data(old).unwrap_or_default(), &new);
});

fn check_variants(text: &str) {
    let Ok(variants) = parse_variants(text) else {
        return;
    };
    let mut keys = HashSet::new();
    let mut targets = HashSet::new();
    for va in &variants {
        assert!(keys.insert(va.key()), "{va:?}");
        assert!(
            targets.insert((&va.namespace, &va.target.kind, &va.target.name)),
            "{va:?}"
        );
        assert!(is_dns_label(&va.namespace), "{va:?}");
        assert!(va.cost.is_finite() && va.cost >= 0.0, "{va:?}");
        assert!(!va.model_id.trim().is_empty(), "{va:?}");
        let label = va.labels.get(ACCELERATOR_LABEL);
        assert_eq!(va.accelerator, label.cloned().unwrap_or_default());
        // Kubernetes mode reads the same object as JSON from the API server.
        assert_eq!(from_json(as_object(va)).as_ref(), Ok(va));
    }
}

/// The VariantAutoscaling object `va` was read from, with its defaults
/// written out.
fn as_object(va: &Variant) -> serde_json::Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": va.name,
            "namespace": va.namespace,
            "labels": va.labels,
            "annotations": va.annotations,
        },
        "spec": {
            "scaleTargetRef": {
                "kind": va.target.kind,
                "name": va.target.name,
                "apiVersion": va.target.api_version,
            },
            "modelID": va.model_id,
            "variantCost": va.cost.to_string(),
        },
    })
}

fn check_model_configs(data: &BTreeMap<String, String>) {
    if let Ok(set) = SaturationConfigSet::from_data(data) {
        check_thresholds(&set.default_config());
        for o in set.overrides() {
            check_thresholds(&o.config);
            assert_eq!(set.for_model(&o.model_id, &o.namespace), o.config);
        }
    }
    if let Ok(set) = ScaleToZeroConfigSet::from_data(data) {
        assert!(set.models() <= data.len());
    }
}

/// The ranges the saturation analysis relies on.
fn check_thresholds(c: &SaturationConfig) {
    assert!(
        c.kv_cache_threshold > 0.0 && c.kv_cache_threshold <= 1.0,
        "{c:?}"
    );
    assert!(c.queue_length_threshold > 0.0 && c.queue_length_threshold.is_finite());
    assert!(
        (0.0..=c.kv_cache_threshold).contains(&c.kv_spare_trigger),
        "{c:?}"
    );
    assert!((0.0..=c.queue_length_threshold).contains(&c.queue_spare_trigger));
}

/// An edit of the main ConfigMap as the running aggregator applies it,
/// started with one flag so that a key a flag overrides is among them.
fn check_edit(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) {
    let argv: Vec<OsString> = ["wva-aggregator", "--analysis-interval", "10s"]
        .map(OsString::from)
        .into();
    let Ok(running) = params::parse(&argv, CONFIG_MAP, old) else {
        return;
    };
    let changes = edit(|p| running.set_outside(p), old, new);
    check_changes(&changes, &running, old, new);

    // With the rejected keys put back, nothing is left to reject and the
    // rest of the edit stands.
    let effective = without_rejected(old, new, &changes.rejected);
    let again = edit(|p| running.set_outside(p), old, &effective);
    let expected = Edit {
        rejected: Vec::new(),
        ..changes
    };
    assert_eq!(again, expected);

    match params::parse(&argv, CONFIG_MAP, &effective) {
        Err(ParamError::Invalid { key, .. }) => {
            assert!(
                find(&key).is_some() && effective.contains_key(&key),
                "{key}"
            );
        }
        Err(ParamError::ProactiveModel { .. } | ParamError::CommandLine(_)) | Ok(_) => {}
    }
}

/// Each key reported once, as a known key whose value changed, in the list
/// its kind of parameter belongs to.
fn check_changes(
    changes: &Edit,
    running: &Parsed,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) {
    let changed = |key: &str| old.get(key).map(|v| v.trim()) != new.get(key).map(|v| v.trim());
    let applied = changes.applied.iter().map(|(key, _, _)| key);
    let all: Vec<_> = changes
        .rejected
        .iter()
        .chain(applied)
        .chain(&changes.overridden)
        .collect();
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        all.len(),
        "{changes:?}"
    );
    for key in all {
        assert!(changed(key), "{key} did not change");
    }
    let static_without_flag = |key: &str| STATIC_WITHOUT_FLAG.contains(&key);
    for key in &changes.rejected {
        let rejectable = find(key).is_some_and(|p| p.mutability == Mutability::Static);
        assert!(rejectable || static_without_flag(key), "{key}");
    }
    for (key, before, after) in &changes.applied {
        let param = find(key).expect("an applied key is a parameter");
        assert_eq!(param.mutability, Mutability::Dynamic);
        assert!(!running.set_outside(param));
        assert_eq!(
            (before.as_ref(), after.as_ref()),
            (old.get(*key), new.get(*key))
        );
    }
    let reported = changes.rejected.len() + changes.applied.len() + changes.overridden.len();
    let known = PARAMS
        .iter()
        .map(|p| p.key)
        .chain(STATIC_WITHOUT_FLAG.iter().copied());
    assert_eq!(
        reported,
        known.filter(|key| changed(key)).count(),
        "{changes:?}"
    );
}
