//! `vllm:lora_requests_info`: one series per combination of running and
//! waiting adapters ever seen, whose value is the Unix time it was last seen.
//!
//! vLLM never removes a combination, so the family only grows; readers take
//! the series with the highest value. The simulator keeps that behaviour.

use std::fmt::Write;

use super::text::{escape_label_value, write_float};

/// Index of an adapter in the served list.
pub type AdapterId = u16;

#[derive(Debug)]
pub struct LoraInfo {
    /// Adapter names, escaped for label values.
    names: Vec<String>,
    max_loras: u32,
    series: Vec<Series>,
}

#[derive(Debug)]
struct Series {
    running: Vec<AdapterId>,
    waiting: Vec<AdapterId>,
    updated: f64,
}

impl LoraInfo {
    pub fn new(adapters: &[String], max_loras: u32) -> Self {
        let names = adapters
            .iter()
            .map(|name| escape_label_value(name))
            .collect();
        Self {
            names,
            max_loras,
            series: Vec::new(),
        }
    }

    /// Sets the series of this combination to `now` and returns its index;
    /// `hint` (the index returned last time) makes an unchanged combination
    /// cost one comparison.
    pub fn touch(
        &mut self,
        hint: Option<usize>,
        running: &[AdapterId],
        waiting: &[AdapterId],
        now: f64,
    ) -> usize {
        let matches = |s: &Series| s.running == running && s.waiting == waiting;
        let index = hint
            .filter(|&i| self.series.get(i).is_some_and(matches))
            .or_else(|| self.series.iter().position(matches))
            .unwrap_or_else(|| {
                self.series.push(Series {
                    running: running.to_vec(),
                    waiting: waiting.to_vec(),
                    updated: now,
                });
                self.series.len() - 1
            });
        self.series[index].updated = now;
        index
    }

    /// Writes the family (HELP, TYPE and every series).
    pub fn write(&self, out: &mut String) {
        out.push_str("# HELP vllm:lora_requests_info Running stats on lora requests.\n");
        out.push_str("# TYPE vllm:lora_requests_info gauge\n");
        for series in &self.series {
            let _ = write!(
                out,
                "vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"",
                self.max_loras
            );
            self.write_names(out, &series.running);
            out.push_str("\",waiting_lora_adapters=\"");
            self.write_names(out, &series.waiting);
            out.push_str("\"} ");
            write_float(out, series.updated);
            out.push('\n');
        }
    }

    fn write_names(&self, out: &mut String, ids: &[AdapterId]) {
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&self.names[usize::from(*id)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_per_combination_with_latest_time() {
        let mut info = LoraInfo::new(&["a".into(), "tenant/b\"x".into()], 2);
        let first = info.touch(None, &[], &[0], 10.0);
        let again = info.touch(Some(first), &[], &[0], 11.0);
        assert_eq!(first, again);
        let other = info.touch(Some(first), &[0, 1], &[], 12.0);
        assert_ne!(other, first);
        assert_eq!(info.touch(None, &[], &[0], 13.0), first);
        let mut out = String::new();
        info.write(&mut out);
        assert!(out.contains(
            "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"\",waiting_lora_adapters=\"a\"} 13.0\n"
        ));
        assert!(out.contains(
            "{max_lora=\"2\",running_lora_adapters=\"a,tenant/b\\\"x\",waiting_lora_adapters=\"\"} 12.0\n"
        ));
    }
}
