//! Text views of decisions and samples: the `get` table, the `top` frame and
//! the `tap` lines. Pure functions of the messages, so every column is tested
//! here without a server.

use std::time::{Duration, UNIX_EPOCH};

use wva_proto::v1::{DecisionFilter, DecisionSnapshot, PodSample, VariantDecision};

/// Columns are separated by this, as kubectl does.
const GAP: &str = "   ";

/// Average KV-cache usage (0..1) and total queue over the decision's inputs;
/// `None` when no pod reported.
pub fn load(d: &VariantDecision) -> Option<(f64, f64)> {
    let n = d.inputs.len();
    (n > 0).then(|| {
        let kv = d.inputs.iter().map(|i| i.kv_cache_usage).sum::<f64>() / n as f64;
        (kv, d.inputs.iter().map(|i| i.queue_length).sum())
    })
}

/// A fraction as a whole percentage: `0.843` → `84%`.
pub fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

/// A count that may be fractional (queues are summed or averaged gauges):
/// whole numbers without decimals.
pub fn count(n: f64) -> String {
    if (n - n.round()).abs() < 1e-9 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

/// The average KV usage and total queue of a decision, `-` without inputs.
pub fn kv_and_queue(d: &VariantDecision) -> (String, String) {
    match load(d) {
        Some((kv, queue)) => (percent(kv), count(queue)),
        None => ("-".into(), "-".into()),
    }
}

/// Age of the data: tenths below 10 s, then s, m and h; `-` when no sample
/// was used.
pub fn age(seconds: Option<f64>) -> String {
    let Some(s) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    if s < 10.0 {
        return format!("{s:.1}s");
    }
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// Unix milliseconds as an RFC 3339 UTC time to the second.
pub fn timestamp(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Unix milliseconds as an RFC 3339 UTC time to the millisecond.
pub fn timestamp_millis(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// Rows under a header, each column as wide as its widest cell, without
/// trailing blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(
                ' ',
                width.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The snapshot's decisions ordered by namespace and name, whatever order
/// the server sent.
pub fn sorted(snapshot: &DecisionSnapshot) -> Vec<&VariantDecision> {
    let mut decisions: Vec<_> = snapshot.decisions.iter().collect();
    decisions.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    decisions
}

/// A column's heading and how a decision fills it.
type Column = (&'static str, fn(&VariantDecision) -> &str);

/// Columns shown only when some decision has a value for them.
const OPTIONAL: [Column; 2] = [
    ("LIMITED", |d| &d.limit),
    ("SOURCE-FAILURE", |d| &d.source_failure),
];

/// The `get` table; LIMITED only when a variant cannot take its step, and
/// SOURCE-FAILURE only when a variant's source failed.
pub fn decisions_table(snapshot: &DecisionSnapshot) -> String {
    let optional: Vec<_> = OPTIONAL
        .into_iter()
        .filter(|(_, value)| snapshot.decisions.iter().any(|d| !value(d).is_empty()))
        .collect();
    let mut header = vec![
        "NAMESPACE",
        "VARIANT",
        "MODEL",
        "ACCELERATOR",
        "CURRENT",
        "READY",
        "DESIRED",
        "BASIS",
        "DATA",
        "KV",
        "QUEUE",
        "AGE",
    ];
    header.extend(optional.iter().map(|(name, _)| *name));
    let rows: Vec<Vec<String>> = sorted(snapshot)
        .into_iter()
        .map(|d| {
            let (kv, queue) = kv_and_queue(d);
            let mut row = vec![
                d.namespace.clone(),
                d.name.clone(),
                model_or_signal(d),
                or_dash(&d.accelerator),
                d.current_replicas.to_string(),
                d.ready_replicas.to_string(),
                d.desired_replicas.to_string(),
                d.basis.clone(),
                d.data.clone(),
                kv,
                queue,
                age(d.data_age_seconds),
            ];
            row.extend(optional.iter().map(|(_, value)| or_dash(value(d))));
            row
        })
        .collect();
    table(&header, &rows)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// What to say when no decision matches: nothing is printed to stdout, so a
/// script sees an empty result and a person sees why.
pub fn no_decisions(filter: &DecisionFilter) -> String {
    let terms: Vec<String> = [
        ("namespace", &filter.namespace),
        ("model", &filter.model),
        ("variant", &filter.variant),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(name, value)| format!("{name}={value}"))
    .collect();
    if terms.is_empty() {
        "no variant decisions (the aggregator knows no VariantAutoscaling yet)".into()
    } else {
        format!("no variant decisions match {}", terms.join(" "))
    }
}

/// What to tell the user when the answering replica's leadership is first
/// seen (`previous` is `None`) or changes: a follower's decisions are
/// computed but not published, which matters when reading them.
pub fn leadership_note(previous: Option<bool>, leading: bool) -> Option<&'static str> {
    match (previous, leading) {
        (Some(before), now) if before == now => None,
        (_, false) => {
            Some("note: this aggregator replica does not lead; its decisions are not published")
        }
        (Some(false), true) => {
            Some("note: this aggregator replica now leads; its decisions are published")
        }
        (None | Some(true), true) => None,
    }
}

/// One `top` frame: a title line, then a row per variant. `desired` carries
/// an arrow when it differs from the current replicas.
pub fn top_frame(snapshot: &DecisionSnapshot, server: &str, now_ms: i64) -> String {
    let role = if snapshot.leading {
        "leader"
    } else {
        "follower, decisions not published"
    };
    let n = snapshot.decisions.len();
    let mut out = format!(
        "wvactl top   {server} ({role})   {}   {n} variant{}\n\n",
        timestamp(now_ms),
        if n == 1 { "" } else { "s" }
    );
    if n == 0 {
        out.push_str("no variant decisions match\n");
        return out;
    }
    let rows: Vec<Vec<String>> = sorted(snapshot)
        .into_iter()
        .map(|d| {
            let (kv, queue) = kv_and_queue(d);
            let trend = match d.desired_replicas.cmp(&d.current_replicas) {
                std::cmp::Ordering::Greater => " ↑",
                std::cmp::Ordering::Less => " ↓",
                std::cmp::Ordering::Equal => "",
            };
            vec![
                d.namespace.clone(),
                d.name.clone(),
                model_or_signal(d),
                d.current_replicas.to_string(),
                format!("{}{trend}", d.desired_replicas),
                kv,
                queue,
                d.data.clone(),
                age(d.data_age_seconds),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAMESPACE",
            "VARIANT",
            "MODEL",
            "CURRENT",
            "DESIRED",
            "KV",
            "QUEUE",
            "DATA",
            "AGE",
        ],
        &rows,
    ));
    out
}

/// The MODEL cell: the model, or for a workload the signal it scales on,
/// its total and its target per pod (`queue_depth=23/5` per pod).
fn model_or_signal(d: &VariantDecision) -> String {
    match &d.workload {
        None => d.model_id.clone(),
        Some(w) => {
            let total = w.total.map_or_else(|| "?".to_string(), |t| t.to_string());
            format!("{}={total}/{}", w.signal, w.target_per_pod)
        }
    }
}

/// One `tap` line: when, which sample, and its signals per model, EPP
/// queue and forwarded signal, or why the scrape failed.
pub fn sample_line(s: &PodSample) -> String {
    let Some(sample) = &s.sample else {
        return format!("{}/{} sent no sample", s.namespace, s.pod);
    };
    let mut line = format!(
        "{} seq={} ",
        timestamp_millis(sample.scraped_at_ms),
        sample.seq
    );
    if !sample.up {
        line.push_str(&format!("down error={:?}", sample.error));
        return line;
    }
    line.push_str("up");
    let before = line.len();
    for m in &sample.models {
        line.push_str(&format!(
            " model={} kv={:.1}% waiting={} running={}",
            m.model,
            m.kv_cache_usage * 100.0,
            count(m.requests_waiting),
            count(m.requests_running)
        ));
    }
    for q in sample.epp.iter().flat_map(|e| &e.queues) {
        line.push_str(&format!(" queue[{}]={}", q.model, count(q.queue_size)));
    }
    for s in &sample.signals {
        line.push_str(&format!(" signal[{}]={}", s.name, s.value));
    }
    if line.len() == before {
        line.push_str(" (no signals)");
    }
    line
}

#[cfg(test)]
mod tests {
    use wva_proto::v1::{
        EppModelQueue, EppSignals, ModelSignals, NamedValue, PodInput, Role, Sample,
    };

    use super::*;

    fn decision(
        namespace: &str,
        name: &str,
        desired: u32,
        inputs: &[(f64, f64)],
    ) -> VariantDecision {
        VariantDecision {
            namespace: namespace.into(),
            name: name.into(),
            model_id: "meta/llama-8b".into(),
            accelerator: "L4".into(),
            current_replicas: 2,
            ready_replicas: 2,
            desired_replicas: desired,
            basis: "saturation".into(),
            data: "fresh".into(),
            data_age_seconds: Some(0.4),
            inputs: inputs
                .iter()
                .enumerate()
                .map(|(i, &(kv, queue))| PodInput {
                    pod: format!("{name}-{i}"),
                    kv_cache_usage: kv,
                    queue_length: queue,
                    saturated: kv >= 0.8,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn load_is_the_average_kv_and_the_total_queue() {
        let d = decision("llm", "chat", 3, &[(0.9, 4.0), (0.78, 2.0)]);
        assert_eq!(kv_and_queue(&d), ("84%".into(), "6".into()));
        let idle = decision("llm", "chat", 0, &[]);
        assert_eq!(kv_and_queue(&idle), ("-".into(), "-".into()));
        assert_eq!(count(2.5), "2.5");
        assert_eq!(count(-0.0), "-0");
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(f64::NAN)), "-");
        assert_eq!(age(Some(0.42)), "0.4s");
        assert_eq!(age(Some(42.9)), "42s");
        assert_eq!(age(Some(185.0)), "3m5s");
        assert_eq!(age(Some(7300.0)), "2h1m");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(1_795_442_701_000), "2026-11-23T14:05:01Z");
        assert_eq!(
            timestamp_millis(1_795_442_701_250),
            "2026-11-23T14:05:01.250Z"
        );
        assert_eq!(timestamp(-5), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn the_get_table_is_aligned_and_sorted() {
        let snapshot = DecisionSnapshot {
            decisions: vec![
                decision("llm", "chat-l4", 3, &[(0.9, 4.0), (0.78, 2.0)]),
                VariantDecision {
                    accelerator: String::new(),
                    basis: "safety_net".into(),
                    data: "missing".into(),
                    data_age_seconds: None,
                    ..decision("llm", "chat-h100", 1, &[])
                },
            ],
            leading: true,
            at_ms: 0,
        };
        assert_eq!(
            decisions_table(&snapshot),
            "\
NAMESPACE   VARIANT     MODEL           ACCELERATOR   CURRENT   READY   DESIRED   BASIS        DATA      KV    QUEUE   AGE
llm         chat-h100   meta/llama-8b   -             2         2       1         safety_net   missing   -     -       -
llm         chat-l4     meta/llama-8b   L4            2         2       3         saturation   fresh     84%   6       0.4s
"
        );
    }

    #[test]
    fn a_source_failure_adds_its_column() {
        let failed = VariantDecision {
            source_failure: "prometheus: HTTP 503".into(),
            ..decision("llm", "b", 2, &[])
        };
        let snapshot = DecisionSnapshot {
            decisions: vec![decision("llm", "a", 2, &[(0.5, 0.0)]), failed],
            leading: true,
            at_ms: 0,
        };
        let table = decisions_table(&snapshot);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("AGE    SOURCE-FAILURE"), "{table}");
        assert!(lines[1].ends_with("0.4s   -"), "{table}");
        assert!(lines[2].ends_with("0.4s   prometheus: HTTP 503"), "{table}");
    }

    #[test]
    fn a_limited_variant_adds_its_column_before_source_failures() {
        let limited = VariantDecision {
            limit: "pods_pending".into(),
            ..decision("llm", "b", 2, &[])
        };
        let failed = VariantDecision {
            source_failure: "prometheus: HTTP 503".into(),
            ..decision("llm", "c", 2, &[])
        };
        let snapshot = DecisionSnapshot {
            decisions: vec![decision("llm", "a", 2, &[(0.5, 0.0)]), limited, failed],
            leading: true,
            at_ms: 0,
        };
        let table = decisions_table(&snapshot);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].ends_with("AGE    LIMITED        SOURCE-FAILURE"),
            "{table}"
        );
        assert!(lines[2].ends_with("pods_pending   -"), "{table}");
        assert!(
            lines[3].ends_with("-              prometheus: HTTP 503"),
            "{table}"
        );
    }

    #[test]
    fn an_empty_result_says_what_was_asked() {
        assert_eq!(
            no_decisions(&DecisionFilter {
                model: "other".into(),
                namespace: "llm".into(),
                variant: String::new()
            }),
            "no variant decisions match namespace=llm model=other"
        );
        assert!(no_decisions(&DecisionFilter::default()).contains("no VariantAutoscaling"));
    }

    #[test]
    fn leadership_is_noted_when_it_matters() {
        assert_eq!(leadership_note(None, true), None);
        assert_eq!(leadership_note(Some(true), true), None);
        assert!(
            leadership_note(None, false)
                .unwrap()
                .contains("does not lead")
        );
        assert!(
            leadership_note(Some(true), false)
                .unwrap()
                .contains("does not lead")
        );
        assert!(
            leadership_note(Some(false), true)
                .unwrap()
                .contains("now leads")
        );
        assert_eq!(leadership_note(Some(false), false), None);
    }

    #[test]
    fn a_top_frame_shows_the_trend_and_freshness() {
        let snapshot = DecisionSnapshot {
            decisions: vec![
                decision("llm", "up", 3, &[(0.9, 7.0)]),
                decision("llm", "down", 1, &[(0.1, 0.0)]),
            ],
            leading: false,
            at_ms: 0,
        };
        assert_eq!(
            top_frame(&snapshot, "http://wva:9443", 1_795_442_701_000),
            "\
wvactl top   http://wva:9443 (follower, decisions not published)   2026-11-23T14:05:01Z   2 variants

NAMESPACE   VARIANT   MODEL           CURRENT   DESIRED   KV    QUEUE   DATA    AGE
llm         down      meta/llama-8b   2         1 ↓       10%   0       fresh   0.4s
llm         up        meta/llama-8b   2         3 ↑       90%   7       fresh   0.4s
"
        );
        let empty = DecisionSnapshot {
            decisions: vec![],
            leading: true,
            at_ms: 0,
        };
        let frame = top_frame(&empty, "http://wva:9443", 0);
        assert!(frame.contains("(leader)   1970-01-01T00:00:00Z   0 variants\n"));
        assert!(
            frame.ends_with("\n\nno variant decisions match\n"),
            "{frame}"
        );
    }

    fn pod_sample(sample: Sample) -> PodSample {
        PodSample {
            namespace: "llm".into(),
            pod: "chat-0".into(),
            variant: "chat".into(),
            role: Role::Vllm as i32,
            sample: Some(sample),
        }
    }

    #[test]
    fn a_workload_shows_its_signal_where_a_variant_shows_its_model() {
        let mut worker = VariantDecision {
            model_id: String::new(),
            workload: Some(wva_proto::v1::WorkloadSignal {
                signal: "queue_depth".into(),
                target_per_pod: 5.0,
                across: "max".into(),
                total: Some(23.0),
                reporting: 2,
            }),
            ..Default::default()
        };
        assert_eq!(model_or_signal(&worker), "queue_depth=23/5");
        worker.workload.as_mut().unwrap().total = None;
        assert_eq!(model_or_signal(&worker), "queue_depth=?/5");
        let variant = VariantDecision {
            model_id: "meta/llama".into(),
            ..Default::default()
        };
        assert_eq!(model_or_signal(&variant), "meta/llama");
    }

    #[test]
    fn tap_lines_show_each_models_signals_or_the_error() {
        let up = pod_sample(Sample {
            seq: 12,
            scraped_at_ms: 1_795_442_701_250,
            up: true,
            models: vec![ModelSignals {
                model: "meta/llama-8b".into(),
                kv_cache_usage: 0.4234,
                requests_waiting: 3.0,
                requests_running: 5.0,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            sample_line(&up),
            "2026-11-23T14:05:01.250Z seq=12 up model=meta/llama-8b kv=42.3% waiting=3 running=5"
        );

        let down = pod_sample(Sample {
            seq: 13,
            scraped_at_ms: 1_795_442_702_250,
            error: "cannot connect to 127.0.0.1:8000: Connection refused".into(),
            ..Default::default()
        });
        assert_eq!(
            sample_line(&down),
            "2026-11-23T14:05:02.250Z seq=13 down error=\"cannot connect to 127.0.0.1:8000: Connection refused\""
        );

        let epp = pod_sample(Sample {
            seq: 2,
            up: true,
            epp: Some(EppSignals {
                queues: vec![EppModelQueue {
                    model: "m".into(),
                    queue_size: 3.0,
                    queue_bytes: 0.0,
                }],
                pools: vec![],
            }),
            ..Default::default()
        });
        assert!(sample_line(&epp).ends_with("seq=2 up queue[m]=3"));

        let worker = pod_sample(Sample {
            seq: 4,
            up: true,
            signals: vec![NamedValue {
                name: "queue_depth".into(),
                value: 23.0,
            }],
            ..Default::default()
        });
        assert!(sample_line(&worker).ends_with("seq=4 up signal[queue_depth]=23"));

        let bare = pod_sample(Sample {
            seq: 1,
            up: true,
            ..Default::default()
        });
        assert!(sample_line(&bare).ends_with("seq=1 up (no signals)"));
        let none = PodSample {
            sample: None,
            ..pod_sample(Sample::default())
        };
        assert_eq!(sample_line(&none), "llm/chat-0 sent no sample");
    }
}
