//! The demo's live table, one row per variant. Rendering is a pure function
//! of a frame so it can be tested; the caller decides how to draw it.

use std::fmt::Write;

use wva_core::decision::Decision;

/// One redraw of the table.
pub struct Frame<'a> {
    pub elapsed_s: f64,
    pub phase: &'a str,
    pub offered_rps: f64,
    pub in_flight: u32,
    pub completed: u64,
    pub rejected: u64,
    pub decisions: &'a [Decision],
    /// Requests per second sent to each row of `decisions`, same order.
    pub variant_rps: &'a [f64],
    pub metrics_url: &'a str,
    /// The gRPC address: KEDA's external scaler and diagnostics.
    pub grpc: &'a str,
    /// What a KEDA-shaped client sees through the external scaler.
    pub keda: String,
}

pub fn render(frame: &Frame<'_>) -> String {
    let mut out = String::with_capacity(1024);
    let _ = writeln!(
        out,
        "wva demo  t={:>5.1}s  phase: {:<10} offered load: {:>5.1} req/s  in flight: {:>4}  completed: {:>6}  rejected (429): {}",
        frame.elapsed_s,
        frame.phase,
        frame.offered_rps,
        frame.in_flight,
        frame.completed,
        frame.rejected
    );
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:<6} {:>8} {:>6} {:>6} {:>8} {:>6} {:>8}  WHY",
        "VARIANT", "COST", "ACCEL", "LOAD r/s", "KV %", "QUEUE", "CURRENT", "READY", "DESIRED"
    );
    for (d, rps) in frame.decisions.iter().zip(frame.variant_rps) {
        let (kv, queue) = d.load_summary().map_or_else(
            || ("-".to_string(), "-".to_string()),
            |(kv, queue)| (format!("{:.0}", kv * 100.0), format!("{queue:.0}")),
        );
        let marker = match d.desired_replicas.cmp(&d.current_replicas) {
            std::cmp::Ordering::Greater => "▲",
            std::cmp::Ordering::Less => "▼",
            std::cmp::Ordering::Equal => " ",
        };
        let _ = writeln!(
            out,
            "{:<24} {:>6.1} {:<6} {:>8.1} {:>6} {:>6} {:>8} {:>6} {:>7}{}  {}",
            d.variant.name,
            d.cost,
            d.accelerator,
            rps,
            kv,
            queue,
            d.current_replicas,
            d.ready_replicas,
            d.desired_replicas,
            marker,
            d.basis.as_str()
        );
    }
    let _ = writeln!(out, "{}", frame.keda);
    let _ = writeln!(
        out,
        "gauges: {}   live view: wvactl --server {} top   (Ctrl-C stops the demo)",
        frame.metrics_url, frame.grpc
    );
    out
}
