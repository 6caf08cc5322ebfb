//! Speculative decoding's pure logic: where drafts come from without a draft model
//! (prompt lookup over the sequence's own tokens), the settings, and how a speculation
//! adapts its length. The acceptance rule that keeps the target distribution is
//! [`Sampler::verify`](crate::sampler::Sampler::verify), beside the sampler it relies on.
//!
//! A round of speculation decodes a sequence's pending token and up to K draft tokens in
//! one batch entry each; the target's logits after each position check the next draft.
//! Greedy requests accept a draft exactly when it is the argmax, so their text is the
//! same with and without speculation; sampled requests accept a draft `d` with
//! probability `min(1, p(d) / q(d))` and, on rejection, sample from `max(0, p - q)`
//! normalized (Leviathan et al. 2023, Chen et al. 2023), which leaves every token
//! distributed as `p`, the sampler's processed distribution.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where draft tokens come from, as a request (`options.speculative`), a Modelfile
/// (`PARAMETER speculative`) or the server (`CORRAL_SPECULATIVE`, `[server] speculative`)
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpecMode {
    /// No speculation.
    Off,
    /// Prompt-lookup drafts when they pay off: a sequence drafts only while its drafts
    /// are being accepted, and backs off (exponentially longer pauses) when they are
    /// not.
    #[default]
    Auto,
    /// Prompt-lookup drafts on every step that finds a match.
    Ngram,
    /// Drafts from the model's draft model (`PARAMETER draft_model NAME`); prompt
    /// lookup when the model has none.
    Draft,
}

impl SpecMode {
    /// The names accepted, for messages.
    pub const NAMES: &'static str = "off, auto, ngram or draft";
}

impl fmt::Display for SpecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecMode::Off => "off",
            SpecMode::Auto => "auto",
            SpecMode::Ngram => "ngram",
            SpecMode::Draft => "draft",
        })
    }
}

/// A speculation mode that is not one of [`SpecMode::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("speculative mode {0:?} is not one of {names}", names = SpecMode::NAMES)]
pub struct UnknownMode(pub String);

impl FromStr for SpecMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "none" | "0" => Ok(SpecMode::Off),
            "auto" => Ok(SpecMode::Auto),
            "ngram" | "on" | "true" | "1" | "lookup" => Ok(SpecMode::Ngram),
            "draft" => Ok(SpecMode::Draft),
            _ => Err(UnknownMode(s.to_string())),
        }
    }
}

/// The default number of draft tokens per round.
pub const DEFAULT_DRAFT_MAX: u32 = 8;
/// The most draft tokens a round may have.
pub const MAX_DRAFT_MAX: u32 = 64;
/// Longest n-gram the lookup tries first.
pub const NGRAM_MAX: usize = 3;

/// Proposes up to `k` tokens to follow `history` (the sequence's prompt, generated
/// tokens and pending token): the tokens that followed the most recent earlier
/// occurrence of its last `n` tokens, trying `n = max_n` down to `min_n`. A
/// continuation that runs into the end of `history` goes on with its own tokens, so a
/// repeating pattern shorter than `k` is repeated. Empty when nothing matches.
pub fn ngram_draft(history: &[u32], max_n: usize, min_n: usize, k: usize) -> Vec<u32> {
    let len = history.len();
    if k == 0 || min_n == 0 {
        return Vec::new();
    }
    for n in (min_n..=max_n.min(len.saturating_sub(1))).rev() {
        let key = &history[len - n..];
        // Occurrences that start at i < len - n (not the suffix itself), latest first.
        let found = (0..len - n).rev().find(|&i| &history[i..i + n] == key);
        if let Some(i) = found {
            let start = i + n;
            let mut out = Vec::with_capacity(k);
            for j in 0..k {
                let src = start + j;
                // start < len, so src - len < j: the token exists already.
                let t = if src < len { history[src] } else { out[src - len] };
                out.push(t);
            }
            return out;
        }
    }
    Vec::new()
}

/// How one sequence's speculation adapts between rounds: how many drafts the next round
/// may have, and, in [`SpecMode::Auto`], pauses after rounds that gained nothing.
#[derive(Debug, Clone)]
pub struct Adaptive {
    mode: SpecMode,
    max: usize,
    /// Drafts allowed next round.
    len: usize,
    /// Rounds in a row in which nothing was accepted.
    misses: u32,
    /// Steps left to skip before drafting again.
    pause: u32,
    /// Draft tokens proposed so far.
    pub proposed: usize,
    /// Draft tokens accepted so far.
    pub accepted: usize,
}

impl Adaptive {
    /// A fresh state for `mode` with at most `max` drafts a round.
    pub fn new(mode: SpecMode, max: usize) -> Self {
        let len = if mode == SpecMode::Auto { max.min(4) } else { max };
        Adaptive { mode, max, len, misses: 0, pause: 0, proposed: 0, accepted: 0 }
    }

    /// Whether speculation is on at all.
    pub fn enabled(&self) -> bool {
        self.mode != SpecMode::Off && self.max > 0
    }

    /// The mode.
    pub fn mode(&self) -> SpecMode {
        self.mode
    }

    /// How many drafts this step may have (0: decode normally). Counts a paused step.
    pub fn budget(&mut self) -> usize {
        if !self.enabled() {
            return 0;
        }
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        self.len
    }

    /// Records a round: `proposed` drafts were decoded, the first `accepted` kept.
    pub fn record(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        self.proposed += proposed;
        self.accepted += accepted;
        if self.mode != SpecMode::Auto {
            return;
        }
        if accepted == proposed {
            self.len = (self.len * 2).min(self.max);
        } else {
            self.len = (accepted + 1).clamp(1, self.max);
        }
        if accepted == 0 {
            // Nothing gained: pause 1, 2, 4, ... 32 steps before the next try.
            self.misses = self.misses.saturating_add(1);
            self.pause = 1u32 << self.misses.min(5).saturating_sub(1);
        } else {
            self.misses = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_continuation_of_the_latest_match() {
        // "a b c d e ... a b c" -> "d e".
        let h = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        assert_eq!(ngram_draft(&h, 3, 1, 2), vec![4, 5]);
        assert_eq!(ngram_draft(&h, 3, 1, 4), vec![4, 5, 9, 9]);
        // The most recent occurrence wins: "7 1" then "7 2" -> after "7" comes 2.
        let h = [7, 1, 0, 7, 2, 0, 7];
        assert_eq!(ngram_draft(&h, 3, 1, 1), vec![2]);
    }

    #[test]
    fn prefers_longer_ngrams() {
        // The last 3 tokens (1 2 3) occurred at 0 followed by 8; the 1-gram "3" occurred
        // more recently, followed by 6. The 3-gram wins.
        let h = [1, 2, 3, 8, 0, 3, 6, 1, 2, 3];
        assert_eq!(ngram_draft(&h, 3, 1, 1), vec![8]);
        // Without a 3- or 2-gram match, the 1-gram one.
        let h = [5, 3, 6, 4, 3];
        assert_eq!(ngram_draft(&h, 3, 1, 2), vec![6, 4]);
        // min_n 2 refuses the 1-gram.
        assert!(ngram_draft(&h, 3, 2, 2).is_empty());
    }

    #[test]
    fn repeats_a_short_cycle_past_the_end() {
        let h = [1, 2, 1, 2, 1];
        assert_eq!(ngram_draft(&h, 3, 1, 5), vec![2, 1, 2, 1, 2]);
        let h = [4, 4];
        assert_eq!(ngram_draft(&h, 3, 1, 3), vec![4, 4, 4]);
    }

    #[test]
    fn nothing_without_a_match() {
        assert!(ngram_draft(&[1, 2, 3, 4], 3, 1, 8).is_empty());
        assert!(ngram_draft(&[], 3, 1, 8).is_empty());
        assert!(ngram_draft(&[1], 3, 1, 8).is_empty());
        assert!(ngram_draft(&[1, 1], 3, 1, 0).is_empty());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("ngram".parse::<SpecMode>(), Ok(SpecMode::Ngram));
        assert_eq!("OFF".parse::<SpecMode>(), Ok(SpecMode::Off));
        assert_eq!("auto".parse::<SpecMode>(), Ok(SpecMode::Auto));
        assert_eq!("draft".parse::<SpecMode>(), Ok(SpecMode::Draft));
        let e = "fast".parse::<SpecMode>().unwrap_err();
        assert!(e.to_string().contains("off, auto, ngram or draft"), "{e}");
    }

    #[test]
    fn auto_backs_off_and_grows_back() {
        let mut a = Adaptive::new(SpecMode::Auto, 8);
        assert_eq!(a.budget(), 4);
        a.record(4, 4);
        assert_eq!(a.budget(), 8);
        a.record(8, 0);
        // One paused step, then a single draft.
        assert_eq!(a.budget(), 0);
        assert_eq!(a.budget(), 1);
        a.record(1, 0);
        assert_eq!((a.budget(), a.budget(), a.budget()), (0, 0, 1));
        a.record(1, 1);
        assert_eq!(a.budget(), 2);
        assert_eq!((a.proposed, a.accepted), (14, 5));
        // ngram never pauses and keeps its length.
        let mut n = Adaptive::new(SpecMode::Ngram, 8);
        n.record(8, 0);
        assert_eq!(n.budget(), 8);
        assert_eq!(Adaptive::new(SpecMode::Off, 8).budget(), 0);
    }
}
