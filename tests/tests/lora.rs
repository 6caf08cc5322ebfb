//! LoRA adapters (Modelfile `ADAPTER`): llama.cpp applies them to every context (the
//! adapted model answers exactly as the same weights merged into the file do, an adapter
//! of zeros changes nothing), through `corral serve` and `corral run`; an engine that
//! cannot apply them refuses the model with the reason rather than answering as the base
//! model, and a bad adapter is the model's clear error, the server staying up.

use std::collections::HashMap;
use std::path::Path;

use corral_e2e::*;
use corral_gguf::generate::lora::{AdapterOptions, generate_adapter};
use corral_gguf::reader::GgufFile;
use serde_json::{Value, json};

const PROMPT: &str = "Once upon a time";

fn greedy(url: &str, model: &str) -> (u16, Value) {
    post_json(
        url,
        "/api/generate",
        &json!({"model": model, "prompt": PROMPT, "raw": true, "stream": false,
        "options": {"num_predict": 16, "temperature": 0}}),
    )
}

fn create(url: &str, name: &str, lines: &str) {
    let (st, v) =
        post_json(url, "/api/create", &json!({"model": name, "stream": false, "modelfile": lines}));
    assert_eq!(st, 200, "create {name}: {v}");
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// `base` with every adapted weight replaced by `W + alpha/rank · B·A` (f32 files only):
/// what the adapter means, computed without llama.cpp's LoRA path.
fn merge(base: &Path, adapter: &Path, out: &Path) {
    let lora = GgufFile::open(adapter).unwrap();
    let alpha = lora.get("adapter.lora.alpha").and_then(corral_gguf::Value::as_f64).unwrap() as f32;
    // name → (inputs, rank, A, B)
    #[derive(Default)]
    struct Pair {
        n_in: usize,
        rank: usize,
        a: Vec<f32>,
        b: Vec<f32>,
    }
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    for t in lora.tensors() {
        let data = floats(&lora.read_tensor_bytes(t).unwrap());
        if let Some(name) = t.name.strip_suffix(".lora_a") {
            let p = pairs.entry(name.to_string()).or_default();
            (p.n_in, p.rank, p.a) = (t.dims[0] as usize, t.dims[1] as usize, data);
        } else {
            pairs.entry(t.name.strip_suffix(".lora_b").unwrap().to_string()).or_default().b = data;
        }
    }
    rewrite_gguf(base, out, &[], &|name, bytes| {
        let Some(Pair { n_in, rank, a, b }) = pairs.get(name) else { return };
        let (n_in, rank) = (*n_in, *rank);
        let scale = alpha / rank as f32;
        let mut w = floats(bytes);
        let n_out = w.len() / n_in;
        for o in 0..n_out {
            for i in 0..n_in {
                let d: f32 = (0..rank).map(|r| b[o * rank + r] * a[r * n_in + i]).sum();
                w[o * n_in + i] += scale * d;
            }
        }
        *bytes = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    });
}

#[test]
fn llama_cpp_applies_adapters_as_their_merged_weights_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_) = llama_cpp_plugin_dir(dir.path()) else { return };
    let d = dir.path();
    let base = d.join("base.gguf");
    generate_model(&base, "tiny", "f32");
    let (tuned, zero, merged) = (d.join("tuned.gguf"), d.join("zero.gguf"), d.join("merged.gguf"));
    generate_adapter(&base, &tuned, &AdapterOptions::default()).unwrap();
    generate_adapter(&base, &zero, &AdapterOptions { zero: true, ..Default::default() }).unwrap();
    merge(&base, &tuned, &merged);
    // An adapter for another architecture.
    let gemma = generate_arch_model(d, "gemma.gguf", "gemma3");
    let foreign = d.join("foreign.gguf");
    generate_adapter(&gemma, &foreign, &AdapterOptions::default()).unwrap();

    let store = d.join("store");
    let store_env = store.to_string_lossy().into_owned();
    let s = Server::start(&[d], &[("CORRAL_MODELS", &store_env)], &[]);
    create(&s.url, "base", &format!("FROM {}", base.display()));
    create(&s.url, "merged", &format!("FROM {}", merged.display()));
    create(&s.url, "tuned", &format!("FROM {}\nADAPTER {}", base.display(), tuned.display()));
    create(&s.url, "zero", &format!("FROM {}\nADAPTER {}", base.display(), zero.display()));
    create(&s.url, "foreign", &format!("FROM {}\nADAPTER {}", base.display(), foreign.display()));
    let text = |model: &str| {
        let (st, v) = greedy(&s.url, model);
        assert_eq!(st, 200, "{model}: {v}");
        v["response"].as_str().unwrap().to_string()
    };
    let (base_text, tuned_text) = (text("base"), text("tuned"));
    assert_ne!(tuned_text, base_text, "the adapter changed nothing");
    assert_eq!(tuned_text, text("merged"), "the adapter is not its merged weights");
    assert_eq!(text("zero"), base_text, "an adapter of zeros changed the answer");

    let (st, v) = greedy(&s.url, "foreign");
    assert_eq!(st, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("LoRA adapter") && msg.contains("architecture"), "{msg}");
    assert_eq!(text("tuned"), tuned_text, "the server stayed up and kept its models");
    // `corral create` through the server uploads the adapter as a blob, as the FROM file.
    let mf = d.join("Modelfile");
    std::fs::write(&mf, format!("FROM {}\nADAPTER {}\n", base.display(), tuned.display())).unwrap();
    let mut c = corral(&[d]);
    c.env("CORRAL_HOST", s.url.trim_start_matches("http://"));
    c.args(["create", "tuned-cli", "-f"]).arg(&mf);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(text("tuned-cli"), tuned_text, "created through the server with its adapter");
    drop(s);

    // `corral run` on the store applies them too.
    let run_text = |model: &str| {
        let mut c = corral(&[d]);
        c.env("CORRAL_MODELS", &store_env).args(["run", "--local", model, PROMPT]);
        c.args(["--temperature", "0", "--num-predict", "16"]);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "run {model}: {stderr}");
        stdout
    };
    let tuned_run = run_text("tuned");
    assert_ne!(tuned_run, run_text("base"));
    assert_eq!(tuned_run, run_text("merged"));
}

#[test]
fn an_engine_that_cannot_apply_adapters_refuses_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_) = cpu_plugin_dir(dir.path()) else { return };
    let d = dir.path();
    let base = d.join("base.gguf");
    generate_model(&base, "tiny", "f32");
    let tuned = d.join("tuned.gguf");
    generate_adapter(&base, &tuned, &AdapterOptions::default()).unwrap();
    let s = Server::start(&[d], &[], &[]);
    create(&s.url, "tuned", &format!("FROM {}\nADAPTER {}", base.display(), tuned.display()));
    let (st, v) = greedy(&s.url, "tuned");
    assert_eq!(st, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("cannot apply") && msg.contains("LoRA"), "{msg}");
    let (st, v) = greedy(&s.url, &base.to_string_lossy());
    assert_eq!(st, 200, "the base model still loads: {v}");
}
