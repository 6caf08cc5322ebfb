//! Helpers shared by the tests that compare this engine with llama.cpp (`llama-raw`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use corral_backend_api::plugin::{Context, Model};
use corral_backend_api::{BatchEntry, ContextParams};
use corral_backend_cpu::tokenizer::Tokenizer;
use corral_gguf::reader::GgufFile;

/// The real Gemma 3 270M Q4_K_M file (`scripts/fetch-models.sh` puts it in
/// `CORRAL_MODEL_CACHE`, default `/var/tmp/corral-models`); `None`, saying so, when missing.
pub(crate) fn gemma_file() -> Option<PathBuf> {
    let cache = std::env::var_os("CORRAL_MODEL_CACHE")
        .map_or_else(|| PathBuf::from("/var/tmp/corral-models"), PathBuf::from);
    let path = cache.join("gemma-3-270m-q4_k_m.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIP: {} missing (run scripts/fetch-models.sh)", path.display());
        None
    }
}

/// Prompts for greedy agreement on the Gemma file: prose, code, Japanese, numbers, a chat
/// turn; on 9 of them llama.cpp's own variants (flash attention off, no repacking) fork
/// from its default within 32 tokens.
pub(crate) const GEMMA_PROMPTS: [&str; 16] = [
    "The capital city of France is Paris. The capital city of Germany is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "東京は日本の首都です。大阪は",
    "1, 2, 3, 4, 5,",
    "The quick brown fox",
    "Water boils at a temperature of",
    "import numpy as np\n",
    "The largest planet in our solar system is",
    "Question: What is 2 + 2?\nAnswer:",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "La capitale de la France est",
    "In 1492, Christopher Columbus",
    "SELECT name FROM users WHERE",
    "The first law of thermodynamics states that",
    "Dear Sir or Madam,",
];

/// `llama-raw ARGS` (with `env` set) run to completion; its JSON output.
pub(crate) fn raw_json_env(
    raw: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let out = Command::new(raw)
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::null())
        .output()
        .expect("run llama-raw");
    assert!(out.status.success(), "llama-raw {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("llama-raw prints JSON")
}

/// `llama-raw ARGS`; its JSON output.
pub(crate) fn raw_json(raw: &std::path::Path, args: &[&str]) -> serde_json::Value {
    raw_json_env(raw, args, &[])
}

/// An `n_ctx`-cell, 2-thread context of `model` with `prompt` decoded in one batch, and
/// the logits of its last position.
pub(crate) fn decode_prompt<M: Model>(
    model: &M,
    prompt: &[u32],
    n_ctx: u32,
) -> (M::Context, Vec<f32>) {
    let mut c = model
        .new_context(&ContextParams {
            n_ctx,
            n_batch: 512,
            n_seq_max: 1,
            n_threads: 2,
            ..Default::default()
        })
        .expect("context");
    let batch: Vec<BatchEntry> = prompt
        .iter()
        .enumerate()
        .map(|(i, &t)| BatchEntry {
            token: t,
            pos: i as u32,
            seq: 0,
            logits: i + 1 == prompt.len(),
        })
        .collect();
    c.decode(&batch).expect("decode the prompt");
    let logits = c.logits(batch.len() as u32 - 1).expect("logits").to_vec();
    (c, logits)
}

/// `llama-raw` (llama.cpp through llama-cpp-sys-2): `CORRAL_LLAMA_RAW`, or the one the
/// llama-cpp backend crate builds in the target dir; `None`, saying so, when missing.
pub(crate) fn llama_raw() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CORRAL_LLAMA_RAW").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug/llama-raw")),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/llama-raw")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIP: llama-raw not built (cargo build -p corral-backend-llama-cpp)");
    }
    found
}

/// 1,000 varied strings: prose, code, numbers, emoji, CJK and other scripts, runs of
/// spaces, tabs and newlines, special-token texts, and random mixtures of all of them.
pub(crate) fn varied_strings() -> Vec<String> {
    let fragments = [
        "Hello world",
        "The capital city of France is Paris.",
        " leading space",
        "trailing space ",
        "  two leading",
        "fn main() {\n    println!(\"hi\");\n}",
        "def fibonacci(n):\n\treturn n if n < 2 else fibonacci(n-1) + fibonacci(n-2)",
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        "<bos>",
        "<eos>",
        "<unused0>",
        "東京は日本の首都です。",
        "中文分词测试",
        "한국어 문장",
        "Ünïcödé ñ ç ß",
        "Привет, мир!",
        "مرحبا بالعالم",
        "🌸🌸 😀👍🏽 👨‍👩‍👧",
        "3.14159 2718 1,000,000 0x1F 1e-9",
        "https://example.com/path?q=1&r=2#frag",
        "a  b   c\t\td\n\n\ne",
        "\n",
        "   ",
        "\t",
        "{\"key\": [1, 2, {\"nested\": null}]}",
        "SELECT * FROM users WHERE id = 42;",
        "<html><body class=\"x\">&amp;</body></html>",
        "CamelCaseIdentifiers and snake_case_ones",
        "!!!???...---___",
        "don't won't it's",
        "I'M SURE YOU'LL SEE, WE'D GO",
        "<|begin_of_text|><|im_start|>user\nhi<|im_end|>\n",
        "1234567890 12 123 1234 99999",
        "\r\n\r\nwindows lines\r\n",
    ];
    let mut out: Vec<String> = fragments.iter().map(|s| (*s).to_string()).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seps = ["", " ", "  ", "\n", "\t", "\n\n", " \n ", "   "];
    while out.len() < 1000 {
        let parts = 1 + (next() % 4) as usize;
        let mut s = String::new();
        for _ in 0..parts {
            s.push_str(fragments[(next() % fragments.len() as u64) as usize]);
            s.push_str(seps[(next() % seps.len() as u64) as usize]);
        }
        // Cut at a random character boundary now and then: partial words and UTF-8 runs.
        if next() % 3 == 0 {
            let cut = (next() as usize) % (s.chars().count() + 1);
            s = s.chars().take(cut).collect();
        }
        if !s.is_empty() {
            out.push(s);
        }
    }
    out
}

/// llama.cpp's token ids of `texts` in the vocabulary of `model` (BOS added as the file
/// says, special-token texts parsed), through `llama-raw tokenize`.
pub(crate) fn llama_cpp_tokens(
    raw: &std::path::Path,
    model: &std::path::Path,
    texts: &[String],
) -> Vec<Vec<u32>> {
    let mut child = Command::new(raw)
        .arg("tokenize")
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run llama-raw");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(serde_json::to_string(texts).unwrap().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "llama-raw tokenize {} failed", model.display());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts that this engine's tokenizer gives llama.cpp's ids for every text of
/// `texts` in the vocabulary of `model`, printing how many were compared.
pub(crate) fn assert_tokenization_equals_llama_cpp(
    raw: &std::path::Path,
    model: &std::path::Path,
    texts: &[String],
) {
    let want = llama_cpp_tokens(raw, model, texts);
    let file = GgufFile::open(model).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let special = tok.special_tokens(&file);
    let mut differ = Vec::new();
    for (text, want) in texts.iter().zip(&want) {
        let got =
            if text.is_empty() { Vec::new() } else { tok.tokenize(text, true, true, &special) };
        if &got != want {
            differ.push(format!("{text:?}\n  cpu:       {got:?}\n  llama.cpp: {want:?}"));
        }
    }
    println!("{}: {} strings, {} differ", model.display(), texts.len(), differ.len());
    assert!(
        differ.is_empty(),
        "{}",
        differ.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The index of the largest value (the first on ties), as greedy sampling picks it.
pub(crate) fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}
