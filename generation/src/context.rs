//! The context-limit policy: what to do with a prompt that does not fit, how much a
//! context shift discards, and why a generation ended.
//!
//! Ollama's semantics: the first `num_keep` tokens of a prompt are never dropped (usually
//! the start of the system prompt); when the window overflows, tokens right after them
//! are discarded. When a prompt is truncated it is cut to the size a context shift
//! would leave (`num_keep` plus half of the rest of the window), so there is room to
//! generate; with [`ContextPolicy::Refuse`] (Ollama's `"truncate": false`) an overlong
//! prompt is an error instead.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The context window when nothing sets one and the model does not say its own.
pub const FALLBACK_NUM_CTX: u32 = 2048;
/// The largest context window chosen by default: a model trained on more still gets
/// this many positions per sequence unless a setting asks for more (its KV cache grows
/// with the window, and most chats need far less).
pub const MAX_DEFAULT_NUM_CTX: u32 = 4096;

/// The context-length rule, the same for `corral run`, `corral serve` and
/// `corral bench`: the window per sequence is
///
/// 1. `requested` when set: the model's `num_ctx` PARAMETER, or a command's
///    `--num-ctx` / options (`bench` asks for exactly what its test needs);
/// 2. else `setting` when set (`CORRAL_CONTEXT_LENGTH`, `--num-ctx` of `serve`, the
///    config's `[server] num_ctx`);
/// 3. else the model's training context (`model_max`), at most [`MAX_DEFAULT_NUM_CTX`];
/// 4. else, for a model that does not say (`model_max == 0`), [`FALLBACK_NUM_CTX`].
///
/// A request or setting past the training context of a model that says it gets the
/// training context, as Ollama clamps `num_ctx` (positions the model never saw, and a
/// KV cache of memory no prompt can use well; a client that asks every model for 128k
/// works with each at its own size). [`exceeds_training`] tells when that happened.
/// `corral bench` asks for exactly what its test needs and does not use this rule.
///
/// The result is at least [`MIN_NUM_CTX`].
pub fn context_length(requested: Option<u32>, setting: Option<u32>, model_max: u32) -> u32 {
    let default =
        if model_max == 0 { FALLBACK_NUM_CTX } else { model_max.min(MAX_DEFAULT_NUM_CTX) };
    let asked = requested.or(setting).map_or(default, |n| match model_max {
        0 => n,
        max => n.min(max),
    });
    asked.max(MIN_NUM_CTX)
}

/// The smallest window a model is loaded with: Ollama's scheduler raises a smaller
/// `num_ctx` to 4.
pub const MIN_NUM_CTX: u32 = 4;

/// The window `requested` or `setting` asked for, when [`context_length`] cut it to the
/// model's training context `model_max`.
pub fn exceeds_training(
    requested: Option<u32>,
    setting: Option<u32>,
    model_max: u32,
) -> Option<u32> {
    requested.or(setting).filter(|&n| model_max > 0 && n > model_max)
}

/// What to do with a prompt longer than the context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextPolicy {
    /// Drop tokens after the first `num_keep` (Ollama's default).
    #[default]
    Truncate,
    /// Refuse the request with [`ContextError::PromptTooLong`].
    Refuse,
}

/// A prompt that cannot be run in the context window.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContextError {
    /// The prompt does not fit and the policy is [`ContextPolicy::Refuse`].
    #[error("{}", too_long(.prompt, .num_ctx, .reserved))]
    PromptTooLong {
        /// Prompt length in tokens.
        prompt: usize,
        /// The context window.
        num_ctx: usize,
        /// Tokens that must stay free for generation.
        reserved: usize,
    },
    /// The context window is zero tokens.
    #[error("the context window (num_ctx) is 0 tokens; it must be at least 1")]
    ZeroContext,
}

fn too_long(prompt: &usize, num_ctx: &usize, reserved: &usize) -> String {
    let room = if *reserved > 0 {
        format!(" with {reserved} kept free to generate")
    } else {
        String::new()
    };
    format!(
        "the prompt is {prompt} tokens long, but the context window (num_ctx) is {num_ctx} \
         tokens{room}; shorten the prompt or raise num_ctx"
    )
}

/// How many tokens to keep at the front, given `num_keep` (-1 = all) and the window.
/// Like Ollama, at least one token must be discardable, so it is at most `num_ctx - 1`.
pub fn effective_keep(num_keep: i32, prompt_len: usize, num_ctx: usize) -> usize {
    let keep = if num_keep < 0 { prompt_len } else { num_keep as usize };
    keep.min(num_ctx.saturating_sub(1))
}

/// Tokens a context shift discards after the kept prefix: half of the rest of the window,
/// as Ollama does (at least 1). Use it when a running sequence fills the window: remove
/// positions `keep..keep + discard` from the KV cache and move the rest down.
pub fn shift_discard(num_ctx: usize, keep: usize) -> usize {
    (num_ctx.saturating_sub(keep) / 2).max(1)
}

/// Fits a tokenized prompt into a window of `num_ctx` tokens.
///
/// A prompt fits when it leaves room to generate: one token when `num_predict` is not 0
/// (a prompt-only request, `num_predict == 0`, may fill the window). A prompt that fits
/// comes back unchanged. Otherwise, with [`ContextPolicy::Truncate`], the result is the
/// first `keep` tokens ([`effective_keep`]) followed by the last tokens of the prompt,
/// `num_ctx - room` tokens in all, where `room` is the space a context shift would free
/// (half of the window after the kept prefix), or `num_predict` when that is smaller and
/// positive. With [`ContextPolicy::Refuse`] it is an error naming both lengths.
pub fn fit_prompt(
    tokens: &[u32],
    num_ctx: usize,
    num_keep: i32,
    num_predict: i32,
    policy: ContextPolicy,
) -> Result<Vec<u32>, ContextError> {
    if num_ctx == 0 {
        return Err(ContextError::ZeroContext);
    }
    let min_room = usize::from(num_predict != 0);
    if tokens.len() + min_room <= num_ctx {
        return Ok(tokens.to_vec());
    }
    if policy == ContextPolicy::Refuse {
        return Err(ContextError::PromptTooLong {
            prompt: tokens.len(),
            num_ctx,
            reserved: min_room,
        });
    }
    let keep = effective_keep(num_keep, tokens.len(), num_ctx);
    let half = shift_discard(num_ctx, keep);
    let room = match num_predict {
        0 => 0,
        n if n > 0 => (n as usize).min(half),
        _ => half,
    };
    let target = (num_ctx - room).max(keep + 1).min(num_ctx);
    let tail = target - keep;
    let mut out = Vec::with_capacity(target);
    out.extend_from_slice(&tokens[..keep]);
    out.extend_from_slice(&tokens[tokens.len() - tail..]);
    Ok(out)
}

/// Why a generation ended, with Ollama's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DoneReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `num_predict` tokens were generated, or the context window is full.
    Length,
}

impl DoneReason {
    /// Ollama's string: `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
        }
    }
}

impl fmt::Display for DoneReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether generation must end for length before sampling another token.
///
/// `generated` tokens have been produced so far and `used` positions of the window are
/// filled. `num_predict` > 0 caps the generated count; 0 ends after the first token, as
/// Ollama's `n_predict: 0` to llama-server does (it was unlimited here); -2 ends when the
/// window is full;
/// -1 (unlimited) also ends when the window is full unless `can_shift` (the host will
/// shift the context instead). Ollama additionally caps -1 at ten times `num_ctx`, which
/// this also applies, so a looping model cannot run forever.
pub fn length_limit(
    generated: usize,
    used: usize,
    num_ctx: usize,
    num_predict: i32,
    can_shift: bool,
) -> Option<DoneReason> {
    let full = used >= num_ctx;
    let hit = match num_predict {
        n if n >= 0 => generated >= n as usize || (full && !can_shift),
        -2 => full,
        _ => generated >= num_ctx.saturating_mul(10) || (full && !can_shift),
    };
    hit.then_some(DoneReason::Length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_predict_zero_ends_after_one_token() {
        assert_eq!(length_limit(1, 10, 512, 0, true), Some(DoneReason::Length));
        assert_eq!(length_limit(1, 10, 512, -1, true), None);
        assert_eq!(length_limit(1, 10, 512, 2, true), None);
    }

    #[test]
    fn context_length_rule() {
        assert_eq!(context_length(Some(100), Some(8192), 32768), 100);
        assert_eq!(context_length(None, Some(8192), 32768), 8192);
        assert_eq!(context_length(None, None, 32768), MAX_DEFAULT_NUM_CTX);
        assert_eq!(context_length(None, None, 512), 512);
        assert_eq!(context_length(None, None, 0), FALLBACK_NUM_CTX);
        assert_eq!(context_length(Some(0), None, 0), MIN_NUM_CTX);
        assert_eq!(context_length(Some(1), None, 2048), 4);
        // Past the training context: the training context (Ollama's clamp).
        assert_eq!(context_length(Some(1 << 30), None, 2048), 2048);
        assert_eq!(context_length(None, Some(100_000), 32768), 32768);
        assert_eq!(context_length(Some(1 << 30), None, 0), 1 << 30);
        assert_eq!(exceeds_training(Some(4096), None, 2048), Some(4096));
        assert_eq!(exceeds_training(Some(2048), Some(9999), 2048), None);
        assert_eq!(exceeds_training(None, Some(9999), 0), None);
    }

    fn seq(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn fitting_prompt_is_unchanged() {
        let p = seq(10);
        assert_eq!(fit_prompt(&p, 11, 4, -1, ContextPolicy::Refuse).unwrap(), p);
        assert_eq!(fit_prompt(&p, 10, 4, 0, ContextPolicy::Refuse).unwrap(), p);
        assert!(fit_prompt(&p, 10, 4, -1, ContextPolicy::Refuse).is_err());
    }

    #[test]
    fn truncate_keeps_front_and_tail() {
        let p = seq(100);
        // keep 4, window 20: room = (20-4)/2 = 8, target 12 = 4 kept + last 8.
        let out = fit_prompt(&p, 20, 4, -1, ContextPolicy::Truncate).unwrap();
        assert_eq!(out, vec![0, 1, 2, 3, 92, 93, 94, 95, 96, 97, 98, 99]);
        // A small num_predict needs less room.
        let out = fit_prompt(&p, 20, 4, 2, ContextPolicy::Truncate).unwrap();
        assert_eq!(out.len(), 18);
        assert_eq!(&out[..5], &[0, 1, 2, 3, 86]);
        // num_predict 0 may fill the window.
        assert_eq!(fit_prompt(&p, 20, 4, 0, ContextPolicy::Truncate).unwrap().len(), 20);
    }

    #[test]
    fn keep_is_clamped() {
        let p = seq(50);
        // num_keep -1 = the whole prompt, clamped to num_ctx - 1 = 9, room (10-9)/2 -> 1.
        let out = fit_prompt(&p, 10, -1, -1, ContextPolicy::Truncate).unwrap();
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 49]);
        assert_eq!(fit_prompt(&p, 1, 4, -1, ContextPolicy::Truncate).unwrap(), vec![49]);
    }

    #[test]
    fn refuse_message() {
        let e = fit_prompt(&seq(3000), 2048, 4, -1, ContextPolicy::Refuse).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the prompt is 3000 tokens long, but the context window (num_ctx) is 2048 tokens \
             with 1 kept free to generate; shorten the prompt or raise num_ctx"
        );
        assert_eq!(
            fit_prompt(&[], 0, 4, -1, ContextPolicy::Truncate),
            Err(ContextError::ZeroContext)
        );
    }

    #[test]
    fn done_reason_strings() {
        assert_eq!(DoneReason::Stop.to_string(), "stop");
        assert_eq!(serde_json::to_string(&DoneReason::Length).unwrap(), "\"length\"");
    }

    #[test]
    fn length_limits() {
        assert_eq!(length_limit(5, 10, 100, 5, true), Some(DoneReason::Length));
        assert_eq!(length_limit(4, 10, 100, 5, true), None);
        assert_eq!(length_limit(4, 100, 100, -2, true), Some(DoneReason::Length));
        assert_eq!(length_limit(4, 100, 100, -1, true), None);
        assert_eq!(length_limit(4, 100, 100, -1, false), Some(DoneReason::Length));
        assert_eq!(length_limit(1000, 10, 100, -1, true), Some(DoneReason::Length));
        assert_eq!(shift_discard(2048, 4), 1022);
    }
}
