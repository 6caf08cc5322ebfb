//! `cpu-raw`: the cpu engine driven directly (no host), with the same commands and JSON
//! as the llama.cpp backend's `llama-raw`, so outputs can be compared file for file.
//!
//! ```text
//! cpu-raw logits MODEL --prompt TEXT [--json]
//! cpu-raw greedy MODEL --prompt TEXT [--n 32] [--json]
//! cpu-raw bench  MODEL [--threads N] [--pp 512] [--tg 128] [--reps 3] [--json]
//! cpu-raw batched MODEL [--threads N] [--np 4] [--pp 128] [--tg 64]
//! common: [--cache-type f16|q8_0|q4_0] (the KV cache's type)
//! ```
//! `batched` follows `llama-raw batched`: a context with `--np` sequences, a prompt of
//! `--pp` random tokens per sequence, then `--tg` steps that decode one token of every
//! sequence in one batch; it prints the time per step and the aggregate tokens/s (the
//! ceiling for a server's `--np` streams at that context length).
//! Set `CORRAL_CPU_PROFILE=1` to print time per forward-pass phase after `bench`.

use std::process::ExitCode;
use std::time::Instant;

use corral_backend_api::{
    BatchEntry, ContextParams, LoadRequest,
    plugin::{Backend, Context, Model},
};
use corral_backend_cpu::{CpuBackend, CpuContext, CpuModel, CpuOptions};

struct Args {
    cmd: String,
    model: String,
    prompt: String,
    n: usize,
    threads: u32,
    pp: u32,
    tg: u32,
    reps: usize,
    np: u32,
    json: bool,
    /// The KV cache's type (`kv_cache_type`: f16, q8_0, q4_0).
    cache_type: String,
}

fn parse() -> Result<Args, String> {
    let usage = "usage: cpu-raw (logits|greedy|bench|batched) MODEL [--prompt T] [--n N] \
                 [--threads N] [--pp N] [--tg N] [--reps N] [--np N] [--cache-type f16|q8_0|q4_0] [--json]";
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or(usage)?;
    let model = it.next().ok_or(usage)?;
    let mut a = Args {
        cmd,
        model,
        prompt: String::new(),
        n: 32,
        threads: 0,
        pp: 512,
        tg: 128,
        reps: 3,
        np: 4,
        json: false,
        cache_type: "f16".into(),
    };
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--prompt" => a.prompt = val()?,
            "--n" => a.n = val()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--pp" => a.pp = val()?.parse().map_err(|e| format!("--pp: {e}"))?,
            "--tg" => a.tg = val()?.parse().map_err(|e| format!("--tg: {e}"))?,
            "--reps" => a.reps = val()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--np" => a.np = val()?.parse().map_err(|e| format!("--np: {e}"))?,
            "--json" => a.json = true,
            "--cache-type" => a.cache_type = val()?,
            other => return Err(format!("unknown argument {other}\n{usage}")),
        }
    }
    Ok(a)
}

fn load(a: &Args) -> Result<CpuModel, String> {
    let b = CpuBackend::with_options(CpuOptions::default());
    let mut request = LoadRequest::new(a.model.as_str(), "gguf");
    request
        .settings
        .extra
        .push((corral_backend_api::EXTRA_KV_CACHE_TYPE.into(), a.cache_type.clone()));
    b.load_model(&request).map_err(|e| e.to_string())
}

fn ctx(m: &CpuModel, a: &Args, n_ctx: u32, n_batch: u32) -> Result<CpuContext, String> {
    m.new_context(&ContextParams {
        n_ctx,
        n_batch,
        n_seq_max: 1,
        n_threads: a.threads,
        n_threads_batch: a.threads,
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

fn decode(c: &mut CpuContext, start: u32, toks: &[u32]) -> Result<Vec<f32>, String> {
    let batch: Vec<BatchEntry> = toks
        .iter()
        .enumerate()
        .map(|(i, &t)| BatchEntry {
            token: t,
            pos: start + i as u32,
            seq: 0,
            logits: i + 1 == toks.len(),
        })
        .collect();
    c.decode(&batch).map_err(|e| e.to_string())?;
    c.logits(toks.len() as u32 - 1).map(<[f32]>::to_vec).map_err(|e| e.to_string())
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

fn greedy(a: &Args, logits_only: bool) -> Result<(), String> {
    let m = load(a)?;
    let toks = m.tokenize(&a.prompt, true, true).map_err(|e| e.to_string())?;
    if toks.is_empty() {
        return Err("the prompt tokenizes to nothing".into());
    }
    let n_ctx = (toks.len() + a.n + 8) as u32;
    let mut c = ctx(&m, a, n_ctx.max(64), toks.len() as u32)?;
    let mut l = decode(&mut c, 0, &toks)?;
    if logits_only {
        let nv = l.len();
        let v: Vec<String> = l.iter().map(|x| format!("{x}")).collect();
        println!("{{\"prompt_tokens\":{toks:?},\"n_vocab\":{nv},\"logits\":[{}]}}", v.join(","));
        return Ok(());
    }
    let eog = m.special_tokens().eog;
    let mut out = Vec::new();
    let mut reason = "length";
    for i in 0..a.n {
        let t = argmax(&l);
        if eog.contains(&t) {
            reason = "eog";
            break;
        }
        out.push(t);
        if i + 1 < a.n {
            l = decode(&mut c, (toks.len() + i) as u32, &[t])?;
        }
    }
    let text = m.detokenize(&out).map_err(|e| e.to_string())?;
    if a.json {
        let esc: String = text
            .chars()
            .map(|ch| match ch {
                '"' => "\\\"".to_string(),
                '\\' => "\\\\".to_string(),
                c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
                c => c.to_string(),
            })
            .collect();
        println!(
            "{{\"prompt_tokens\":{toks:?},\"stop_reason\":\"{reason}\",\"text\":\"{esc}\",\"tokens\":{out:?}}}"
        );
    } else {
        println!("{text}");
    }
    Ok(())
}

/// A fixed stream of pseudo-random token ids in `1..nv` (xorshift), the same every run.
fn random_tokens(nv: u32) -> impl FnMut() -> u32 {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % u64::from(nv.saturating_sub(1).max(1))) as u32 + 1
    }
}

/// Prints a context's phase profile to stderr.
fn print_profile(name: &str, p: corral_backend_cpu::forward::Profile) {
    let total: f64 = p.phases.iter().map(|x| x.1).sum();
    eprintln!("profile {name}: total {total:.3} s");
    for (phase, secs, calls) in p.phases {
        eprintln!("  {phase:<16} {secs:>8.3} s {:>5.1}%  ({calls} calls)", 100.0 * secs / total);
    }
}

fn stats(s: &mut [f64]) -> (f64, f64, f64, f64) {
    s.sort_by(f64::total_cmp);
    let med = s[s.len() / 2];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    (med, mean, s[0], s[s.len() - 1])
}

fn bench(a: &Args) -> Result<(), String> {
    let m = load(a)?;
    let nv = m.vocab_size();
    let n_ctx = (a.pp + a.tg + 16).next_power_of_two().max(256);
    let mut c = ctx(&m, a, n_ctx, a.pp.max(1))?;
    let mut next = random_tokens(nv);
    decode(&mut c, 0, &[next()])?;
    c.kv_clear().map_err(|e| e.to_string())?;
    let _ = c.take_profile();
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..a.reps {
        if a.pp > 0 {
            c.kv_clear().map_err(|e| e.to_string())?;
            let toks: Vec<u32> = (0..a.pp).map(|_| next()).collect();
            let t = Instant::now();
            decode(&mut c, 0, &toks)?;
            pp.push(f64::from(a.pp) / t.elapsed().as_secs_f64());
        }
    }
    let pp_prof = c.take_profile();
    for _ in 0..a.reps {
        if a.tg > 0 {
            c.kv_clear().map_err(|e| e.to_string())?;
            let t = Instant::now();
            for p in 0..a.tg {
                decode(&mut c, p, &[next()])?;
            }
            tg.push(f64::from(a.tg) / t.elapsed().as_secs_f64());
        }
    }
    let tg_prof = c.take_profile();
    let params = c.params();
    for (name, s) in [(format!("pp{}", a.pp), &mut pp), (format!("tg{}", a.tg), &mut tg)] {
        if s.is_empty() {
            continue;
        }
        let (med, mean, min, max) = stats(s);
        if a.json {
            println!(
                "{{\"test\":\"{name}\",\"threads\":{},\"median_tps\":{med:.3},\"mean_tps\":{mean:.3},\"min_tps\":{min:.3},\"max_tps\":{max:.3}}}",
                params.n_threads
            );
        } else {
            println!(
                "{name}: median {med:.2} t/s (mean {mean:.2}, min {min:.2}, max {max:.2}), {} threads",
                params.n_threads
            );
        }
    }
    for (name, p) in [("pp", pp_prof), ("tg", tg_prof)] {
        if let Some(p) = p {
            print_profile(name, p);
        }
    }
    Ok(())
}

fn batched(a: &Args) -> Result<(), String> {
    let m = load(a)?;
    let nv = m.vocab_size();
    let np = a.np.max(1);
    let mut c = m
        .new_context(&ContextParams {
            n_ctx: np * (a.pp + a.tg + 16),
            n_batch: a.pp.max(np),
            n_seq_max: np,
            n_threads: a.threads,
            n_threads_batch: a.threads,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let mut next = random_tokens(nv);
    let t = Instant::now();
    for seq in 0..np {
        let batch: Vec<BatchEntry> = (0..a.pp)
            .map(|pos| BatchEntry { token: next(), pos, seq, logits: pos + 1 == a.pp })
            .collect();
        c.decode(&batch).map_err(|e| e.to_string())?;
    }
    let prompt_s = t.elapsed().as_secs_f64();
    let _ = c.take_profile();
    let t = Instant::now();
    for step in 0..a.tg {
        let batch: Vec<BatchEntry> = (0..np)
            .map(|seq| BatchEntry { token: next(), pos: a.pp + step, seq, logits: true })
            .collect();
        c.decode(&batch).map_err(|e| e.to_string())?;
    }
    let tg_s = t.elapsed().as_secs_f64();
    let step_ms = 1e3 * tg_s / f64::from(a.tg.max(1));
    println!(
        "np {np}, pp {} per sequence: prompts {:.2} t/s; step {step_ms:.2} ms, {:.2} t/s aggregate",
        a.pp,
        f64::from(np * a.pp) / prompt_s,
        f64::from(np * a.tg) / tg_s
    );
    if let Some(p) = c.take_profile() {
        print_profile("steps", p);
    }
    Ok(())
}

fn main() -> ExitCode {
    let r = parse().and_then(|a| match a.cmd.as_str() {
        "logits" => greedy(&a, true),
        "greedy" => greedy(&a, false),
        "bench" => bench(&a),
        "batched" => batched(&a),
        other => Err(format!("unknown command {other}")),
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpu-raw: {e}");
            ExitCode::FAILURE
        }
    }
}
