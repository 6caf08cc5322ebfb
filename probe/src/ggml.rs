//! What llama.cpp's CPU backend (ggml) does with a build's vector extensions, where the
//! llama.cpp plugin (which decides) and the host's memory estimate (which counts what the
//! decision costs) must agree: flash attention's `auto` on the CPU.
//!
//! ggml's CPU flash-attention kernel decodes one query against the cache position by
//! position (a dot product, a scalar `expf`, an F16 accumulator update per cached
//! position), and its F16 vector helpers (`ggml_vec_dot_f16`, `ggml_vec_mad_f16`,
//! `ggml_vec_scale_f16`) take `GGML_F16_STEP` elements a loop iteration and the rest one
//! at a time. With a head size the step does not divide, every position is scalar work,
//! and attention without flash attention (two F16 matrix products and a vectorised
//! softmax) is the faster: TinyLlama's 64-element heads with AVX512-FP16's step of 128
//! decoded 2.3x as fast at 2,900 cached positions. With heads the step divides, flash
//! attention decoded as fast or faster and processes long prompts 10-25% faster
//! (figures: the llama.cpp backend's README, "Flash attention on the CPU").

/// ggml's `GGML_F16_STEP` for a build with the CPU features `has` answers for: 128 with
/// AVX512-FP16, 64 with AVX-512, 32 with AVX; `None` off x86-64 (ARM's 16 and 32 divide
/// every usual head size) or without AVX. `has` takes normalised feature names
/// (`avx512fp16`, `avx512f`, `avx`).
pub fn f16_step(x86_64: bool, has: impl Fn(&str) -> bool) -> Option<u32> {
    if !x86_64 {
        None
    } else if has("avx512fp16") {
        Some(128)
    } else if has("avx512f") {
        Some(64)
    } else if has("avx") {
        Some(32)
    } else {
        None
    }
}

/// Whether ggml's CPU flash attention would run its per-position work on keys or values
/// of `head_sizes` (partly) one element at a time: a head size that is not a multiple of
/// `step`.
pub fn flash_attention_is_scalar(head_sizes: (u64, u64), step: Option<u32>) -> bool {
    step.map(u64::from)
        .is_some_and(|s| !head_sizes.0.is_multiple_of(s) || !head_sizes.1.is_multiple_of(s))
}

/// Query rows ggml's CPU flash attention computes as one tile (`GGML_FA_TILE_Q`). A
/// micro-batch that holds at least this many tokens of one sequence (with an f16 cache)
/// runs the tiled kernel, whose part tiles cost whole ones; one with fewer runs the
/// per-row kernel, which cost 1.7 times as much per row at 1,300 cached positions
/// (`tests/bench/README.md`).
pub const FLASH_ATTENTION_TILE_ROWS: u32 = 64;

/// Bytes of attention scores llama.cpp's CPU path without flash attention may hold at
/// once: f32 scores of one micro-batch's queries against every cached position, per head.
pub const ATTENTION_SCORES_BUDGET: u64 = 256 << 20;

/// The smallest micro-batch worth giving flash attention up for (prompt processing slows
/// when matrix products see fewer rows).
pub const MIN_UBATCH_WITHOUT_FLASH_ATTENTION: u64 = 64;

/// The micro-batch to run without flash attention, or `None` to keep it: the scores,
/// `n_ubatch × n_kv × n_head × 4` bytes, sit in the compute buffer, so the micro-batch
/// shrinks (in steps of 32) to keep them within [`ATTENTION_SCORES_BUDGET`], and where
/// that would take it below [`MIN_UBATCH_WITHOUT_FLASH_ATTENTION`] (very long contexts),
/// flash attention stays.
pub fn ubatch_without_flash_attention(n_ubatch: u64, n_kv: u64, n_head: u64) -> Option<u64> {
    let per_token = n_kv.max(1).saturating_mul(n_head.max(1)).saturating_mul(4);
    let fits = ATTENTION_SCORES_BUDGET / per_token;
    if fits >= n_ubatch {
        return Some(n_ubatch);
    }
    let u = fits / 32 * 32;
    (u >= MIN_UBATCH_WITHOUT_FLASH_ATTENTION).then_some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_follows_the_widest_f16_extension() {
        let with = |list: &'static [&'static str]| move |f: &str| list.contains(&f);
        assert_eq!(f16_step(true, with(&["avx", "avx512f", "avx512fp16"])), Some(128));
        assert_eq!(f16_step(true, with(&["avx", "avx512f"])), Some(64));
        assert_eq!(f16_step(true, with(&["avx", "avx2"])), Some(32));
        assert_eq!(f16_step(true, with(&[])), None);
        assert_eq!(f16_step(false, with(&["avx512fp16"])), None);
    }

    #[test]
    fn cpu_attention_keeps_the_micro_batch_while_the_scores_fit() {
        // TinyLlama (32 heads), 4 sequences of 4,096: 512 x 4,096 x 32 x 4 = 256 MiB.
        assert_eq!(ubatch_without_flash_attention(512, 4096, 32), Some(512));
        // Gemma 3 270M (4 heads) with 32,768 positions: 256 MiB again.
        assert_eq!(ubatch_without_flash_attention(512, 32_768, 4), Some(512));
        // A smaller micro-batch asked for stays as it is.
        assert_eq!(ubatch_without_flash_attention(16, 4096, 32), Some(16));
    }

    #[test]
    fn cpu_attention_shrinks_the_micro_batch_then_gives_up() {
        // 8,192 positions x 32 heads: 256 of 512 fit.
        assert_eq!(ubatch_without_flash_attention(512, 8192, 32), Some(256));
        // 12,000 positions x 32 heads: 174 fit, rounded down to 160.
        assert_eq!(ubatch_without_flash_attention(512, 12_000, 32), Some(160));
        // 32,768 x 32: 64 fit, the floor.
        assert_eq!(ubatch_without_flash_attention(512, 32_768, 32), Some(64));
        // 131,072 x 32: 16 would fit, below the floor: flash attention stays on.
        assert_eq!(ubatch_without_flash_attention(512, 131_072, 32), None);
        // Degenerate sizes do not divide by zero.
        assert_eq!(ubatch_without_flash_attention(512, 0, 0), Some(512));
    }

    #[test]
    fn flash_attention_is_scalar_where_the_head_size_is_not_a_multiple_of_the_step() {
        // TinyLlama's 64: scalar with AVX512-FP16's 128, vectorised with AVX-512's 64.
        assert!(flash_attention_is_scalar((64, 64), Some(128)));
        assert!(!flash_attention_is_scalar((64, 64), Some(64)));
        // Phi-3's 96 has a scalar tail with 64; Gemma 3's 256 never.
        assert!(flash_attention_is_scalar((96, 96), Some(64)));
        assert!(!flash_attention_is_scalar((256, 256), Some(128)));
        // Keys and values count apart (MLA-style heads: 192 and 128).
        assert!(flash_attention_is_scalar((192, 128), Some(128)));
        // No x86 SIMD step known: llama.cpp's choice stands.
        assert!(!flash_attention_is_scalar((64, 64), None));
    }
}
