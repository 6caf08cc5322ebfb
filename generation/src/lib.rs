//! # corral-generation
//!
//! The generation logic every corral engine shares, written once in the host: sampling,
//! stop strings, chat templates, streaming detokenization and the context-limit policy.
//! Pure logic: no backend, no async, no HTTP. The host's engine loop calls it with the
//! logits an engine computed and the token bytes of the model's vocabulary, so the same
//! seed gives the same text on every engine that computes the same logits.
//!
//! A generation step in the host looks like this:
//!
//! ```
//! use corral_generation::{
//!     Detokenizer, DoneReason, Sampler, SamplingOptions, StopMatcher,
//! };
//!
//! let options = SamplingOptions { seed: Some(1), stop: vec!["\n".into()], ..Default::default() };
//! options.validate().unwrap();
//! let mut sampler = Sampler::new(&options, 4).unwrap();
//! let mut detok = Detokenizer::new();
//! let mut stops = StopMatcher::new(options.stop.iter().cloned());
//! let vocab: [&[u8]; 4] = [b"a", b"b", b"\n", b"c"];
//! let mut history = vec![0u32];
//! let mut out = String::new();
//! let mut reason = DoneReason::Length;
//! for _ in 0..16 {
//!     let mut logits = vec![1.0, 0.5, 0.2, 0.1]; // from the engine
//!     let token = sampler.sample(&mut logits, &history);
//!     history.push(token);
//!     let text = detok.push(vocab[token as usize]);
//!     let step = stops.push(&text);
//!     out.push_str(&step.emit);
//!     if step.stopped {
//!         reason = DoneReason::Stop;
//!         break;
//!     }
//! }
//! if reason == DoneReason::Length {
//!     let tail = detok.finish();
//!     out.push_str(&stops.push(&tail).emit);
//!     out.push_str(&stops.finish());
//! }
//! assert!(!out.contains('\n'));
//! ```
//!
//! Modules:
//! - [`options`]: [`SamplingOptions`] with Ollama's names, defaults and validation.
//! - [`sampler`]: [`Sampler`] (penalties, top_k, typical_p, top_p, min_p, temperature,
//!   seeded draw) and the [`Constraint`] hook for structured output.
//! - [`speculative`]: speculative decoding's drafts (prompt lookup), modes and
//!   adaptive length; its acceptance rule is [`Sampler::verify`].
//! - [`template`]: [`ChatTemplate`], Hugging Face chat templates rendered by minijinja.
//! - [`detok`]: [`Detokenizer`], complete UTF-8 out of token bytes.
//! - [`stop`]: [`StopMatcher`], stop strings across token boundaries.
//! - [`context`]: [`fit_prompt`], context shifts, the context-length rule and [`DoneReason`].
//! - [`gotemplate`]: Ollama's Go templates (Modelfile `TEMPLATE`) translated to Jinja.
//! - [`known_templates`]: chat templates for files that carry none, chosen from the
//!   vocabulary and the architecture.
//! - [`structured`]: JSON-schema structured output as a [`Constraint`] over token bytes.
//! - [`logprobs`], [`thinking`], [`toolcall`]: log-probabilities, `<think>` blocks and
//!   tool calls parsed out of the generated text.

pub mod context;
pub mod detok;
pub mod gotemplate;
pub mod known_templates;
pub mod logprobs;
pub mod options;
pub mod sampler;
pub mod speculative;
pub mod stop;
pub mod structured;
pub mod template;
pub mod thinking;
pub mod toolcall;

pub use context::{
    ContextError, ContextPolicy, DoneReason, context_length, effective_keep, fit_prompt,
    length_limit, shift_discard,
};
pub use detok::Detokenizer;
pub use options::{OptionsError, SamplingOptions};
pub use sampler::{Constraint, Sampler, argmax};
pub use stop::{StopMatcher, StopStep};
pub use template::{CHATML_TEMPLATE, ChatInput, ChatMessage, ChatTemplate, TemplateError};

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn types_cross_threads() {
        send_sync::<crate::ChatTemplate>();
        send_sync::<crate::SamplingOptions>();
        send_sync::<crate::StopMatcher>();
        send_sync::<crate::Detokenizer>();
        send::<crate::Sampler>();
    }
}
