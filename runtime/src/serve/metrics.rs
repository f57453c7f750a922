//! Prometheus text metrics: request counts by endpoint and status, token counts, time to
//! first token and time per output token histograms, queue depth and running sequences.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::engine::Load;

/// Upper bounds (seconds) of the time-to-first-token buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the time-per-output-token buckets.
const TPOT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    ttft: Mutex<Histogram>,
    tpot: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft: Mutex::new(Histogram::new(&TTFT_BUCKETS)),
            tpot: Mutex::new(Histogram::new(&TPOT_BUCKETS)),
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((endpoint, status))
            .or_default() += 1;
    }

    /// Records one finished generation: its token counts, time to first token and mean
    /// time per later token.
    pub fn generation(
        &self,
        prompt: usize,
        generated: usize,
        ttft_s: Option<f64>,
        tpot_s: Option<f64>,
    ) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        if let Some(t) = ttft_s {
            self.ttft.lock().unwrap().observe(t);
        }
        if let Some(t) = tpot_s {
            self.tpot.lock().unwrap().observe(t);
        }
    }

    /// The Prometheus exposition text.
    pub fn render(&self, load: &Load) -> String {
        let mut out = String::new();
        out += "# HELP lmq_requests_total Requests answered, by endpoint and HTTP status.\n\
                # TYPE lmq_requests_total counter\n";
        for ((e, s), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "lmq_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}"
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "lmq_prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "lmq_generation_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        self.ttft.lock().unwrap().write(
            &mut out,
            "lmq_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
        );
        self.tpot.lock().unwrap().write(
            &mut out,
            "lmq_time_per_output_token_seconds",
            "Mean time between generated tokens after the first, per request.",
        );
        gauge(
            &mut out,
            "lmq_queue_depth",
            "Requests waiting for a batch slot.",
            load.queued.load(Ordering::SeqCst),
        );
        let (proposed, accepted) = (
            load.proposed.load(Ordering::Relaxed),
            load.accepted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "lmq_spec_proposed_tokens_total",
            "Tokens a speculative proposer guessed.",
            proposed as u64,
        );
        counter(
            &mut out,
            "lmq_spec_accepted_tokens_total",
            "Guessed tokens the target accepted.",
            accepted as u64,
        );
        if proposed > 0 {
            let _ = writeln!(
                out,
                "# HELP lmq_spec_acceptance_rate Accepted / proposed speculative tokens.\n\
                 # TYPE lmq_spec_acceptance_rate gauge\nlmq_spec_acceptance_rate {}",
                accepted as f64 / proposed as f64
            );
        }
        gauge(
            &mut out,
            "lmq_running_sequences",
            "Sequences in the running batch.",
            load.running.load(Ordering::SeqCst),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.generation(10, 5, Some(0.03), Some(0.012));
        m.generation(10, 5, Some(2.0), None);
        m.request("completions", 200);
        let text = m.render(&Load::default());
        assert!(text.contains("lmq_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("lmq_time_to_first_token_seconds_bucket{le=\"2.5\"} 2"));
        assert!(text.contains("lmq_time_to_first_token_seconds_count 2"));
        assert!(text.contains("lmq_time_per_output_token_seconds_count 1"));
        assert!(text.contains("lmq_generation_tokens_total 10"));
        assert!(text.contains("lmq_requests_total{endpoint=\"completions\",status=\"200\"} 1"));
    }
}
