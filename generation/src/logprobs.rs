//! Log-probabilities of sampled tokens, for the `logprobs` of the OpenAI and Ollama APIs.
//!
//! They are the model's own distribution: log-softmax of the raw logits at temperature 1,
//! before penalties, truncation (top_k/top_p/...) or a structured-output mask change them,
//! which is what OpenAI reports and what a caller comparing models wants.

/// The distribution of one step: its log-normaliser and the most likely tokens.
#[derive(Debug, Clone)]
pub struct StepLogprobs {
    /// `log(sum(exp(logits)))`.
    log_norm: f64,
    /// The `n` most likely tokens, most likely first, with their log-probabilities.
    pub top: Vec<(u32, f32)>,
}

impl StepLogprobs {
    /// Summarises raw `logits`, keeping the `top_n` most likely tokens (ties: lower id
    /// first). Non-finite logits count as impossible.
    pub fn of(logits: &[f32], top_n: usize) -> StepLogprobs {
        let max = logits.iter().copied().filter(|x| x.is_finite()).fold(f32::MIN, f32::max);
        let sum: f64 =
            logits.iter().filter(|x| x.is_finite()).map(|&x| f64::from(x - max).exp()).sum();
        let log_norm = f64::from(max) + sum.max(f64::MIN_POSITIVE).ln();
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(top_n + 1);
        if top_n > 0 {
            for (i, &x) in logits.iter().enumerate() {
                if !x.is_finite() || (top.len() == top_n && x <= top[top_n - 1].1) {
                    continue;
                }
                let at = top.partition_point(|&(_, y)| y >= x);
                top.insert(at, (i as u32, x));
                top.truncate(top_n);
            }
        }
        for t in &mut top {
            t.1 = (f64::from(t.1) - log_norm) as f32;
        }
        StepLogprobs { log_norm, top }
    }

    /// The log-probability of a token whose raw logit is `logit`.
    pub fn logprob_of_logit(&self, logit: f32) -> f32 {
        if logit.is_finite() {
            (f64::from(logit) - self.log_norm) as f32
        } else {
            f32::NEG_INFINITY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_log_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let s = StepLogprobs::of(&logits, 3);
        let norm: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        for (i, &x) in logits.iter().enumerate() {
            let want = (f64::from(x) - norm) as f32;
            assert!((s.logprob_of_logit(x) - want).abs() < 1e-6, "token {i}");
        }
        let ids: Vec<u32> = s.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 0], "most likely first, ties by lower id");
        let total: f32 = logits.iter().map(|&x| s.logprob_of_logit(x).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn large_logits_and_masked_tokens() {
        let logits = [1000.0f32, f32::NEG_INFINITY, 999.0];
        let s = StepLogprobs::of(&logits, 5);
        assert_eq!(s.top.len(), 2, "impossible tokens are not listed");
        assert!((s.top[0].1 - (-(1.0f32 + (-1.0f32).exp()).ln())).abs() < 1e-5);
        assert_eq!(s.logprob_of_logit(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(StepLogprobs::of(&logits, 0).top.is_empty());
    }
}
