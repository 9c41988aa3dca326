//! Prometheus metrics, rendered in the text exposition format at `/metrics`.
//!
//! A small registry of our own: counters and histograms keyed by name and label set. The app
//! needs a dozen series; a metrics framework would bring more code than it saves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Bucket bounds, seconds: from a fast HTTP call to a slow CPU reply.
const SECONDS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0];
/// Bucket bounds, tokens per second.
const RATES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

type Key = (&'static str, String);

/// A value read at scrape time: name, labels, value.
pub type Gauge<'a> = (&'static str, Vec<(&'a str, &'a str)>, f64);

/// The registry.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
    histograms: Mutex<BTreeMap<Key, Histogram>>,
}

/// `name{a="x",b="y"}` label text, values escaped as the format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

const HELP: &[(&str, &str, &str)] = &[
    ("rapport_http_requests_total", "counter", "HTTP requests by route, method and status."),
    ("rapport_http_request_seconds", "histogram", "HTTP request latency by route (streams: time to the response head)."),
    ("rapport_queue_depth", "gauge", "Generation jobs by state, read from the database at scrape time."),
    ("rapport_queue_wait_seconds", "histogram", "Time from a message being stored to a worker claiming its job."),
    ("rapport_ttft_seconds", "histogram", "Time from the start of generation to the first reply text."),
    ("rapport_decode_tokens_per_second", "histogram", "Reply tokens per second after the first token."),
    ("rapport_pipeline_step_seconds", "histogram", "Time per pipeline step (prepare, understand, prompt, generate, review)."),
    ("rapport_turn_seconds", "histogram", "Whole turn, claim to stored reply."),
    ("rapport_guard_hits_total", "counter", "Guard hits by guard and direction (message, reply)."),
    ("rapport_jobs_total", "counter", "Finished jobs by outcome (done, fallback, failed, lost)."),
    ("rapport_errors_total", "counter", "Errors by kind."),
    ("rapport_rejections_total", "counter", "Requests refused for load (429/503) by reason: session_messages, client_messages, client_sessions, client_conversations, api_requests, client_queue_full, queue_full."),
    ("rapport_warm_up_seconds", "histogram", "Time to read a shipped persona's opening into the prefix cache at start-up, by persona."),
    ("rapport_read_ahead_total", "counter", "Next turns read ahead into the prefix cache after a stored reply, by outcome (read; skipped: a job was waiting; cancelled: a job arrived while it read; failed)."),
    ("rapport_read_ahead_seconds", "histogram", "Time to read a conversation's next turn ahead, up to the person's next message."),
    ("rapport_draft_reads_total", "counter", "Drafts (what a person is typing) read ahead into the prefix cache, by outcome (read; skipped: a job was waiting; cancelled: a job arrived while it read; failed)."),
    ("rapport_draft_read_seconds", "histogram", "Time to read a conversation's next turn ahead, up to what the person has typed."),
    ("rapport_drafts_total", "counter", "Drafts the page sent, by what became of them (waiting; unchanged: nothing new to read; full: too many conversations had drafts waiting; off: reading ahead is off)."),
    ("rapport_expired_total", "counter", "Rows deleted by the expiry sweep (sessions, conversations, rate_limits)."),
];

impl Metrics {
    /// Adds `by` to a counter.
    pub fn count(&self, name: &'static str, pairs: &[(&str, &str)], by: u64) {
        *self.counters.lock().expect("metrics lock").entry((name, labels(pairs))).or_default() +=
            by;
    }

    /// Records seconds.
    pub fn seconds(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.observe(name, pairs, value, SECONDS);
    }

    /// Records a tokens-per-second rate.
    pub fn rate(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.observe(name, pairs, value, RATES);
    }

    fn observe(
        &self,
        name: &'static str,
        pairs: &[(&str, &str)],
        value: f64,
        bounds: &'static [f64],
    ) {
        let mut histograms = self.histograms.lock().expect("metrics lock");
        let h = histograms.entry((name, labels(pairs))).or_insert_with(|| Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, bound) in h.bounds.iter().enumerate() {
            if value <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += value;
        h.count += 1;
    }

    /// The exposition text; `gauges` are values read at scrape time.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let counters = self.counters.lock().expect("metrics lock");
        let histograms = self.histograms.lock().expect("metrics lock");
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), v) in counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{l} {v}");
            }
            for (gname, pairs, value) in gauges.iter().filter(|(n, _, _)| n == name) {
                let _ = writeln!(out, "{gname}{} {value}", labels(pairs));
            }
            for ((n, l), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                let inner = l.trim_start_matches('{').trim_end_matches('}');
                let sep = if inner.is_empty() { "" } else { "," };
                for (bound, count) in h.bounds.iter().zip(&h.counts) {
                    let _ = writeln!(out, "{n}_bucket{{{inner}{sep}le=\"{bound}\"}} {count}");
                }
                let _ = writeln!(out, "{n}_bucket{{{inner}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{n}_sum{l} {}", h.sum);
                let _ = writeln!(out, "{n}_count{l} {}", h.count);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.seconds("rapport_ttft_seconds", &[], 0.3);
        m.seconds("rapport_ttft_seconds", &[], 3.0);
        m.count("rapport_errors_total", &[("kind", "a\"b")], 2);
        let text = m.render(&[("rapport_queue_depth", vec![("state", "queued")], 4.0)]);
        assert!(text.contains("rapport_ttft_seconds_bucket{le=\"0.5\"} 1"), "{text}");
        assert!(text.contains("rapport_ttft_seconds_bucket{le=\"5\"} 2"), "{text}");
        assert!(text.contains("rapport_ttft_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("rapport_ttft_seconds_count 2"));
        assert!(text.contains("rapport_errors_total{kind=\"a\\\"b\"} 2"), "{text}");
        assert!(text.contains("rapport_queue_depth{state=\"queued\"} 4"));
    }

    #[test]
    fn the_grafana_dashboard_queries_only_series_that_exist() {
        let dashboard = include_str!("../../../deploy/grafana-dashboard.json");
        let names = regex_lite_names(dashboard);
        assert!(names.len() >= 8, "{names:?}");
        for name in names {
            let base = name.trim_end_matches("_bucket");
            assert!(
                HELP.iter().any(|(n, _, _)| *n == base),
                "the dashboard queries {name}, which /metrics does not export"
            );
        }
    }

    /// Every `rapport_…` identifier in a text.
    fn regex_lite_names(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("rapport_") {
            let tail = &rest[i..];
            let end =
                tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            if i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
        out
    }
}
