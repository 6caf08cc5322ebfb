//! The engine in its agreement mode (`match_llama_cpp`: matrix products in llama.cpp's
//! float order, `corral_backend_cpu::ggml_order`) on the real Gemma 3 270M Q4_K_M file,
//! against llama.cpp's default configuration (`llama-raw`, built natively beside these
//! tests): the last position's logits equal llama.cpp's bit for bit and so do 32 greedy
//! tokens, on every prompt, including those where llama.cpp's own variants (flash attention
//! off, weights not repacked) fork from its default at near-ties; and so with the KV cache
//! in each of the types both keep (f16, q8_0, q4_0: `--cache-type` for `llama-raw`). Asserted on x86 CPUs with
//! AVX-512 (where every kernel's order was checked stage by stage with
//! `scripts/compare-dumps.py`); elsewhere the agreement is printed. A process of its own,
//! since the mode is process-wide. Skips, saying why, when the file or `llama-raw` is
//! missing.

mod common;

use common::{GEMMA_PROMPTS, argmax, decode_prompt, gemma_file, llama_raw, raw_json};
use corral_backend_api::{
    BatchEntry, LoadRequest,
    plugin::{Backend, Context},
};
use corral_backend_cpu::kernels::Isa;
use corral_backend_cpu::{CpuBackend, CpuOptions};

#[test]
fn gemma_in_llama_cpp_order_equals_llama_cpp_bit_for_bit() {
    let Some(path) = gemma_file() else { return };
    let Some(raw) = llama_raw() else { return };
    let options = CpuOptions { match_llama_cpp: Some(true), ..CpuOptions::default() };
    for cache in ["f16", "q8_0", "q4_0"] {
        agree_with_llama_cpp(&path, &raw, &options, cache);
    }
}

/// The logits and greedy texts of every prompt against `llama-raw`'s, both keeping the KV
/// cache as `cache`.
fn agree_with_llama_cpp(
    path: &std::path::Path,
    raw: &std::path::Path,
    options: &CpuOptions,
    cache: &str,
) {
    let mut request = LoadRequest::new(path.to_string_lossy(), "gguf");
    request.settings.extra.push((corral_backend_api::EXTRA_KV_CACHE_TYPE.into(), cache.into()));
    let model = CpuBackend::with_options(options.clone())
        .load_model(&request)
        .expect("the cpu engine loads the Gemma file");
    let model_path = path.to_string_lossy().into_owned();
    let checked = Isa::detected() == Isa::Avx512Vnni;
    let (mut equal_logits, mut equal_text) = (0, 0);
    let cache_flag = ["--cache-type", cache];
    for prompt in GEMMA_PROMPTS {
        let greedy = ["greedy", &model_path, "--prompt", prompt, "--n", "32", "--json"];
        let want = raw_json(raw, &[&greedy[..], &cache_flag].concat());
        let prompt_tokens: Vec<u32> =
            serde_json::from_value(want["prompt_tokens"].clone()).unwrap();
        let want_tokens: Vec<u32> = serde_json::from_value(want["tokens"].clone()).unwrap();
        let logits_args = ["logits", &model_path, "--prompt", prompt, "--json"];
        let want_logits: Vec<f32> = serde_json::from_value(
            raw_json(raw, &[&logits_args[..], &cache_flag].concat())["logits"].clone(),
        )
        .unwrap();
        let (mut c, logits) = decode_prompt(&model, &prompt_tokens, 512);
        let differ =
            logits.iter().zip(&want_logits).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        let mut got = Vec::new();
        let mut next = argmax(&logits);
        for i in 0..want_tokens.len() {
            got.push(next);
            let pos = (prompt_tokens.len() + i) as u32;
            c.decode(&[BatchEntry { token: next, pos, seq: 0, logits: true }]).unwrap();
            next = argmax(c.logits(0).unwrap());
        }
        let agreement = got.iter().zip(&want_tokens).take_while(|(a, b)| a == b).count();
        println!(
            "{cache} cache, {prompt:?}: {differ} of {} logits differ from llama.cpp's; greedy {agreement} of {} tokens equal",
            logits.len(),
            want_tokens.len()
        );
        equal_logits += usize::from(differ == 0);
        equal_text += usize::from(agreement == want_tokens.len());
        if checked {
            assert_eq!(differ, 0, "{cache} cache, {prompt:?}: logits differ from llama.cpp's");
            assert_eq!(got, want_tokens, "{cache} cache, {prompt:?}: greedy text differs");
        }
    }
    println!(
        "{cache} cache: {equal_logits} of {n} prompts' logits and {equal_text} of {n} greedy texts equal llama.cpp's{}",
        if checked { "" } else { " (not asserted: no AVX-512 here)" },
        n = GEMMA_PROMPTS.len()
    );
}
