//! `GET /metrics`: Prometheus text exposition, kept by hand (a few counters and one
//! histogram do not need a metrics crate).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

/// Upper bounds (seconds) of the time-to-first-token histogram.
const TTFT_BUCKETS: [f64; 12] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Server counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens evaluated.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Generation time summed over requests, microseconds.
    pub eval_micros: AtomicU64,
    ttft: Mutex<(Vec<u64>, f64, u64)>,
    /// Models loaded now.
    pub loaded_models: AtomicUsize,
    /// Engine workers that crashed or hung.
    pub worker_crashes: AtomicU64,
    /// Models loaded again after their engine crashed.
    pub worker_restarts: AtomicU64,
    /// Draft tokens decoded by speculative decoding.
    pub draft_tokens: AtomicU64,
    /// Draft tokens accepted.
    pub draft_accepted: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry((endpoint.to_string(), status)).or_insert(0) += 1;
    }

    /// Records a time to first token.
    pub fn ttft(&self, secs: f64) {
        let mut h = self.ttft.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if h.0.is_empty() {
            h.0 = vec![0; TTFT_BUCKETS.len()];
        }
        for (i, b) in TTFT_BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += secs;
        h.2 += 1;
    }

    /// Records a finished generation.
    pub fn generation(&self, prompt_evaluated: usize, generated: usize, eval: std::time::Duration) {
        self.prompt_tokens.fetch_add(prompt_evaluated as u64, Ordering::Relaxed);
        self.generated_tokens.fetch_add(generated as u64, Ordering::Relaxed);
        self.eval_micros.fetch_add(eval.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records a finished generation's speculation.
    pub fn speculation(&self, drafted: usize, accepted: usize) {
        self.draft_tokens.fetch_add(drafted as u64, Ordering::Relaxed);
        self.draft_accepted.fetch_add(accepted as u64, Ordering::Relaxed);
    }

    /// The exposition text. `per_model` gives (model, active sequences, queued requests).
    pub fn render(&self, per_model: &[(String, usize, usize)]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP corral_requests_total HTTP requests answered, by endpoint and status."
        );
        let _ = writeln!(s, "# TYPE corral_requests_total counter");
        for ((ep, st), n) in
            self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter()
        {
            let _ = writeln!(s, "corral_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}");
        }
        let pt = self.prompt_tokens.load(Ordering::Relaxed);
        let gt = self.generated_tokens.load(Ordering::Relaxed);
        let us = self.eval_micros.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP corral_prompt_tokens_total Prompt tokens evaluated (after prefix reuse)."
        );
        let _ = writeln!(s, "# TYPE corral_prompt_tokens_total counter");
        let _ = writeln!(s, "corral_prompt_tokens_total {pt}");
        let _ = writeln!(s, "# HELP corral_generated_tokens_total Tokens generated.");
        let _ = writeln!(s, "# TYPE corral_generated_tokens_total counter");
        let _ = writeln!(s, "corral_generated_tokens_total {gt}");
        let _ = writeln!(
            s,
            "# HELP corral_generation_seconds_total Time spent generating, summed over requests."
        );
        let _ = writeln!(s, "# TYPE corral_generation_seconds_total counter");
        let _ = writeln!(s, "corral_generation_seconds_total {}", us as f64 / 1e6);
        let dt = self.draft_tokens.load(Ordering::Relaxed);
        let da = self.draft_accepted.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP corral_draft_tokens_total Draft tokens decoded by speculative decoding."
        );
        let _ = writeln!(s, "# TYPE corral_draft_tokens_total counter");
        let _ = writeln!(s, "corral_draft_tokens_total {dt}");
        let _ = writeln!(s, "# HELP corral_draft_accepted_total Draft tokens accepted.");
        let _ = writeln!(s, "# TYPE corral_draft_accepted_total counter");
        let _ = writeln!(s, "corral_draft_accepted_total {da}");
        let tps = if us > 0 { gt as f64 / (us as f64 / 1e6) } else { 0.0 };
        let _ =
            writeln!(s, "# HELP corral_tokens_per_second Mean per-request generation rate so far.");
        let _ = writeln!(s, "# TYPE corral_tokens_per_second gauge");
        let _ = writeln!(s, "corral_tokens_per_second {tps:.3}");
        let _ = writeln!(
            s,
            "# HELP corral_time_to_first_token_seconds Time from request to first token."
        );
        let _ = writeln!(s, "# TYPE corral_time_to_first_token_seconds histogram");
        {
            let h = self.ttft.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (i, b) in TTFT_BUCKETS.iter().enumerate() {
                let n = h.0.get(i).copied().unwrap_or(0);
                let _ = writeln!(s, "corral_time_to_first_token_seconds_bucket{{le=\"{b}\"}} {n}");
            }
            let _ = writeln!(s, "corral_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}", h.2);
            let _ = writeln!(s, "corral_time_to_first_token_seconds_sum {}", h.1);
            let _ = writeln!(s, "corral_time_to_first_token_seconds_count {}", h.2);
        }
        let _ = writeln!(s, "# HELP corral_loaded_models Models loaded now.");
        let _ = writeln!(s, "# TYPE corral_loaded_models gauge");
        let _ = writeln!(s, "corral_loaded_models {}", per_model.len());
        for (name, help, v) in [
            (
                "corral_worker_crashes_total",
                "Engine worker processes that crashed or hung.",
                &self.worker_crashes,
            ),
            (
                "corral_worker_restarts_total",
                "Models loaded again after their engine crashed.",
                &self.worker_restarts,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
        }
        let _ =
            writeln!(s, "# HELP corral_active_sequences Sequences decoding or waiting, per model.");
        let _ = writeln!(s, "# TYPE corral_active_sequences gauge");
        let _ = writeln!(s, "# HELP corral_queue_depth Requests waiting for a sequence slot.");
        let _ = writeln!(s, "# TYPE corral_queue_depth gauge");
        let mut total_q = 0;
        for (m, active, queued) in per_model {
            let m = m.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(s, "corral_active_sequences{{model=\"{m}\"}} {active}");
            let _ = writeln!(s, "corral_queue_depth{{model=\"{m}\"}} {queued}");
            total_q += queued;
        }
        let _ = writeln!(s, "corral_queue_depth_total {total_q}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.request("/api/chat", 200);
        m.request("/api/chat", 200);
        m.ttft(0.03);
        m.generation(10, 5, std::time::Duration::from_secs(1));
        let t = m.render(&[("tiny:latest".into(), 1, 0)]);
        assert!(
            t.contains("corral_requests_total{endpoint=\"/api/chat\",status=\"200\"} 2"),
            "{t}"
        );
        assert!(t.contains("corral_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"), "{t}");
        assert!(t.contains("corral_time_to_first_token_seconds_bucket{le=\"0.025\"} 0"), "{t}");
        assert!(t.contains("corral_generated_tokens_total 5"));
        assert!(t.contains("corral_active_sequences{model=\"tiny:latest\"} 1"));
    }
}
