//! Decision events for `watch`: the stream carries a full snapshot per
//! analysis, and an operator wants to see only what changed in it.

use std::collections::BTreeMap;

use serde::Serialize;
use wva_proto::v1::{DecisionSnapshot, VariantDecision};

use crate::format::{kv_and_queue, timestamp};
use crate::json;

/// What happened to a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// In the first snapshot of the watch.
    Initial,
    /// Appeared later (a new VariantAutoscaling).
    Added,
    /// Its desired replicas, basis or data state changed.
    Changed,
    /// Gone from the decisions (its VariantAutoscaling was deleted).
    Removed,
}

/// The part of a decision whose changes are events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub desired_replicas: u32,
    pub basis: String,
    pub data: String,
}

impl From<&VariantDecision> for State {
    fn from(d: &VariantDecision) -> Self {
        State {
            desired_replicas: d.desired_replicas,
            basis: d.basis.clone(),
            data: d.data.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub change: Change,
    pub namespace: String,
    pub name: String,
    /// The analysis' time, or when the removal was seen.
    pub at_ms: i64,
    /// The state before a change or removal.
    pub previous: Option<State>,
    /// The decision now; `None` once removed.
    pub decision: Option<VariantDecision>,
}

/// Remembers each variant's last state between snapshots.
#[derive(Debug, Default)]
pub struct Tracker {
    /// `None` before the first snapshot.
    last: Option<BTreeMap<(String, String), State>>,
}

impl Tracker {
    /// The events a snapshot makes, ordered by namespace and name; `now_ms`
    /// (the snapshot's time) dates removals, which no analysis dates.
    pub fn update(&mut self, snapshot: &DecisionSnapshot, now_ms: i64) -> Vec<Event> {
        let first = self.last.is_none();
        let mut last = self.last.take().unwrap_or_default();
        let mut current = BTreeMap::new();
        let mut events = Vec::new();
        for d in &snapshot.decisions {
            let key = (d.namespace.clone(), d.name.clone());
            let state = State::from(d);
            let previous = last.remove(&key);
            let change = match &previous {
                _ if first => Some(Change::Initial),
                None => Some(Change::Added),
                Some(p) if *p != state => Some(Change::Changed),
                Some(_) => None,
            };
            if let Some(change) = change {
                events.push(Event {
                    change,
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    at_ms: d.decided_at_ms,
                    previous,
                    decision: Some(d.clone()),
                });
            }
            current.insert(key, state);
        }
        // What is left of the last snapshot is gone from this one.
        for ((namespace, name), state) in last {
            events.push(Event {
                change: Change::Removed,
                namespace,
                name,
                at_ms: now_ms,
                previous: Some(state),
                decision: None,
            });
        }
        events.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.last = Some(current);
        events
    }
}

/// `2026-11-23T14:05:01Z llm/chat-l4 desired 2 → 3 (saturation) data=fresh kv=84% queue=6`
pub fn event_line(e: &Event) -> String {
    let head = format!("{} {}/{}", timestamp(e.at_ms), e.namespace, e.name);
    let Some(d) = &e.decision else {
        return format!("{head} removed");
    };
    let desired = match &e.previous {
        Some(p) if p.desired_replicas != d.desired_replicas => {
            format!("{} → {}", p.desired_replicas, d.desired_replicas)
        }
        _ => d.desired_replicas.to_string(),
    };
    let added = if e.change == Change::Added {
        " added:"
    } else {
        ""
    };
    let (kv, queue) = kv_and_queue(d);
    format!(
        "{head}{added} desired {desired} ({}) data={} kv={kv} queue={queue}",
        d.basis, d.data
    )
}

/// The event as one JSON object, with the full decision.
pub fn event_json(e: &Event) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct Json<'a> {
        at: String,
        event: Change,
        namespace: &'a str,
        variant: &'a str,
        previous: Option<&'a State>,
        decision: Option<json::Decision<'a>>,
    }
    serde_json::to_string(&Json {
        at: timestamp(e.at_ms),
        event: e.change,
        namespace: &e.namespace,
        variant: &e.name,
        previous: e.previous.as_ref(),
        decision: e.decision.as_ref().map(json::Decision::from),
    })
}

#[cfg(test)]
mod tests {
    use wva_proto::v1::PodInput;

    use super::*;

    const T0: i64 = 1_795_442_701_000;

    fn decision(name: &str, desired: u32, basis: &str, data: &str, at_ms: i64) -> VariantDecision {
        VariantDecision {
            namespace: "llm".into(),
            name: name.into(),
            model_id: "m".into(),
            desired_replicas: desired,
            basis: basis.into(),
            data: data.into(),
            inputs: vec![
                PodInput {
                    pod: format!("{name}-0"),
                    kv_cache_usage: 0.9,
                    queue_length: 4.0,
                    saturated: true,
                },
                PodInput {
                    pod: format!("{name}-1"),
                    kv_cache_usage: 0.78,
                    queue_length: 2.0,
                    saturated: false,
                },
            ],
            decided_at_ms: at_ms,
            ..Default::default()
        }
    }

    fn snapshot(decisions: Vec<VariantDecision>) -> DecisionSnapshot {
        DecisionSnapshot {
            decisions,
            leading: true,
            at_ms: 0,
        }
    }

    fn lines(tracker: &mut Tracker, s: &DecisionSnapshot, now_ms: i64) -> Vec<String> {
        tracker.update(s, now_ms).iter().map(event_line).collect()
    }

    #[test]
    fn the_first_snapshot_prints_every_variant_then_only_changes() {
        let mut tracker = Tracker::default();
        let first = snapshot(vec![
            decision("chat-l4", 2, "steady", "fresh", T0),
            decision("chat-h100", 1, "steady", "fresh", T0),
        ]);
        assert_eq!(
            lines(&mut tracker, &first, T0),
            [
                "2026-11-23T14:05:01Z llm/chat-h100 desired 1 (steady) data=fresh kv=84% queue=6",
                "2026-11-23T14:05:01Z llm/chat-l4 desired 2 (steady) data=fresh kv=84% queue=6",
            ]
        );

        // The next analysis changes nothing that matters (time, inputs).
        let mut same = first.clone();
        for d in &mut same.decisions {
            d.decided_at_ms += 1000;
            d.inputs[0].kv_cache_usage = 0.5;
        }
        assert!(tracker.update(&same, T0 + 1000).is_empty());

        let scaled = snapshot(vec![
            decision("chat-l4", 3, "saturation", "fresh", T0 + 2000),
            decision("chat-h100", 1, "steady", "fresh", T0 + 2000),
        ]);
        assert_eq!(
            lines(&mut tracker, &scaled, T0 + 2000),
            [
                "2026-11-23T14:05:03Z llm/chat-l4 desired 2 → 3 (saturation) data=fresh kv=84% queue=6"
            ]
        );

        // Basis and data alone are changes too.
        let held = snapshot(vec![
            decision("chat-l4", 3, "saturation", "fresh", T0 + 3000),
            VariantDecision {
                inputs: vec![],
                ..decision("chat-h100", 1, "safety_net", "missing", T0 + 3000)
            },
        ]);
        assert_eq!(
            lines(&mut tracker, &held, T0 + 3000),
            ["2026-11-23T14:05:04Z llm/chat-h100 desired 1 (safety_net) data=missing kv=- queue=-"]
        );
    }

    #[test]
    fn variants_that_come_and_go_are_events() {
        let mut tracker = Tracker::default();
        assert!(tracker.update(&snapshot(vec![]), T0).is_empty());
        let added = snapshot(vec![decision("chat", 1, "scale_from_zero", "idle", T0)]);
        let events = tracker.update(&added, T0);
        assert_eq!(events[0].change, Change::Added);
        assert_eq!(
            event_line(&events[0]),
            "2026-11-23T14:05:01Z llm/chat added: desired 1 (scale_from_zero) data=idle kv=84% queue=6"
        );
        let events = tracker.update(&snapshot(vec![]), T0 + 5000);
        assert_eq!(events[0].change, Change::Removed);
        assert_eq!(events[0].previous.as_ref().unwrap().desired_replicas, 1);
        assert_eq!(
            event_line(&events[0]),
            "2026-11-23T14:05:06Z llm/chat removed"
        );
    }

    #[test]
    fn a_json_event_carries_the_previous_state_and_the_full_decision() {
        let mut tracker = Tracker::default();
        tracker.update(
            &snapshot(vec![decision("chat", 2, "steady", "fresh", T0)]),
            T0,
        );
        let events = tracker.update(
            &snapshot(vec![decision("chat", 3, "saturation", "fresh", T0 + 1000)]),
            T0 + 1000,
        );
        let value: serde_json::Value =
            serde_json::from_str(&event_json(&events[0]).unwrap()).unwrap();
        assert_eq!(value["at"], "2026-11-23T14:05:02Z");
        assert_eq!(value["event"], "changed");
        assert_eq!(
            (&value["namespace"], &value["variant"]),
            (&"llm".into(), &"chat".into())
        );
        assert_eq!(
            value["previous"],
            serde_json::json!({"desiredReplicas": 2, "basis": "steady", "data": "fresh"})
        );
        assert_eq!(value["decision"]["desiredReplicas"], 3);
        assert_eq!(value["decision"]["inputs"][1]["pod"], "chat-1");

        let events = tracker.update(&snapshot(vec![]), T0 + 2000);
        let value: serde_json::Value =
            serde_json::from_str(&event_json(&events[0]).unwrap()).unwrap();
        assert_eq!(value["event"], "removed");
        assert!(value["decision"].is_null());
    }
}
