//! `llama-raw`: raw llama.cpp through its C API, the reference that corral's figures and
//! outputs are compared against. It uses `llama-cpp-sys-2` directly, not the plugin.
//!
//! ```text
//! llama-raw bench  MODEL [--threads N] [--pp 512] [--tg 128] [--reps 5] [--json]
//! llama-raw greedy MODEL --prompt TEXT [--n 32] [--json]
//! llama-raw logits MODEL --prompt TEXT [--json]
//! llama-raw batched MODEL [--np 1,2,4,8] [--pp 128] [--tg 64] [--unified 1] [--json]
//! llama-raw chunks MODEL [--np N] [--pp N] [--unified 0|1] [--fa 0|1] [--reps N]
//! llama-raw embed  MODEL --prompt TEXT
//! common: [--ctx N] [--gpu-layers N] [--threads N] [--cache-type f16|q8_0|q4_0]
//! ```
//!
//! `bench` follows llama-bench: one warm-up, then per repetition pp = one batch of N
//! random prompt tokens on an empty cache, timed; tg = N single-token decodes on an empty
//! cache, timed together. It reports the median, min, max and standard deviation in
//! tokens/s. `greedy` tokenizes with llama.cpp (add_special and parse_special on),
//! decodes the prompt, then takes the argmax token N times (stopping early at an
//! end-of-generation token). `logits` prints the logits of the last prompt position.
//! `batched` follows llama-batched-bench: for each n in `--np`, a context with n
//! sequences, a prompt of `--pp` tokens per sequence, then `--tg` steps that decode one
//! token of every sequence in one batch; it reports the step time and the aggregate
//! tokens/s, which is the ceiling for a server's n parallel streams; and the same with
//! the prompts' time counted (all n prompts decoded in one batch first), the ceiling for a
//! benchmark whose streams each start with a prompt.
//! `chunks` measures what a server step costs on top of a long context: `--np` sequences
//! (its first value, at least 2) hold `--pp` tokens each, then one sequence gets a prompt chunk
//! of 1, 16, 32, 48, 63, 64, 65, 96 and 128 tokens, alone and in one batch with a decode
//! token of another sequence (a server's continuous batching), each undone after it is
//! timed; medians of `--reps`.
//! `embed` prints the prompt's pooled embedding as the llama.cpp plugin computes it: the
//! file's pooling (`<arch>.pooling_type`) when it names one, else mean; the whole prompt in
//! one batch (non-causal models need that).

use std::ffi::{CStr, CString};
use std::process::ExitCode;
use std::time::Instant;

use llama_cpp_sys_2 as sys;
use serde_json::json;

struct Args {
    cmd: String,
    model: String,
    threads: i32,
    pp: usize,
    tg: usize,
    reps: usize,
    json: bool,
    prompt: Option<String>,
    n: usize,
    ctx: u32,
    gpu_layers: i32,
    nps: Vec<usize>,
    unified: bool,
    /// Flash attention: `None` is llama.cpp's auto.
    flash_attn: Option<bool>,
    /// The KV cache's type, keys and values (`None`: llama.cpp's default, f16).
    cache_type: Option<sys::ggml_type>,
}

const USAGE: &str = "usage: llama-raw (bench|greedy|logits|batched|chunks|shared|tokenize|embed) MODEL [--threads N] \
[--pp N] [--tg N] [--reps N] [--prompt TEXT] [--n N] [--ctx N] [--gpu-layers N] \
[--np N,N,..] [--unified 0|1] [--fa 0|1] [--cache-type f16|q8_0|q4_0] [--json]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or(USAGE)?;
    if cmd == "-h" || cmd == "--help" {
        return Err(USAGE.into());
    }
    let model = it.next().ok_or(USAGE)?;
    let mut a = Args {
        cmd,
        model,
        threads: std::thread::available_parallelism().map_or(4, |n| n.get() as i32),
        pp: 512,
        tg: 128,
        reps: 5,
        json: false,
        prompt: None,
        n: 32,
        ctx: 0,
        gpu_layers: -1,
        nps: vec![1, 2, 4, 8],
        unified: true,
        flash_attn: None,
        cache_type: None,
    };
    while let Some(flag) = it.next() {
        if flag == "--json" {
            a.json = true;
            continue;
        }
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<i64>().map_err(|_| format!("{flag}: '{v}' is not a number"));
        match flag.as_str() {
            "--threads" | "-t" => a.threads = num(&val)?.clamp(1, 1024) as i32,
            "--pp" => a.pp = num(&val)?.max(0) as usize,
            "--tg" => a.tg = num(&val)?.max(0) as usize,
            "--reps" | "-r" => a.reps = num(&val)?.max(1) as usize,
            "--prompt" | "-p" => a.prompt = Some(val),
            "--n" | "-n" => a.n = num(&val)?.max(0) as usize,
            "--ctx" | "-c" => a.ctx = num(&val)?.clamp(0, 1 << 24) as u32,
            "--gpu-layers" | "-ngl" => a.gpu_layers = num(&val)?.clamp(-1, 100_000) as i32,
            "--np" => {
                a.nps = val
                    .split(',')
                    .map(|v| num(v.trim()).map(|n| n.clamp(1, 256) as usize))
                    .collect::<Result<_, _>>()?;
            }
            "--unified" => a.unified = num(&val)? != 0,
            "--fa" => a.flash_attn = Some(num(&val)? != 0),
            "--cache-type" => {
                a.cache_type = Some(match val.as_str() {
                    "f16" => sys::GGML_TYPE_F16,
                    "q8_0" => sys::GGML_TYPE_Q8_0,
                    "q4_0" => sys::GGML_TYPE_Q4_0,
                    _ => return Err(format!("--cache-type: '{val}' is not f16, q8_0 or q4_0")),
                });
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

struct Model(*mut sys::llama_model);
impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: loaded once, freed once.
        unsafe { sys::llama_model_free(self.0) }
    }
}
struct Ctx(*mut sys::llama_context);
impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: created once, freed once, before the model (declared after it).
        unsafe { sys::llama_free(self.0) }
    }
}

unsafe extern "C" fn quiet_log(
    level: sys::ggml_log_level,
    text: *const std::ffi::c_char,
    _: *mut std::ffi::c_void,
) {
    if level == sys::GGML_LOG_LEVEL_ERROR && !text.is_null() {
        // SAFETY: llama.cpp passes a NUL-terminated string.
        eprint!("{}", unsafe { CStr::from_ptr(text) }.to_string_lossy());
    }
}

/// `LLAMA_RAW_DUMP=DIR`: llama.cpp's graph callback writes every contiguous f32 tensor
/// whose name is a plain graph name (`attn_norm-3`, `result_output`) to `DIR/NAME.f32`
/// (raw little-endian f32, the last evaluation of that name wins), for comparing an
/// engine's intermediate values with llama.cpp's stage by stage.
unsafe extern "C" fn dump_tensor(
    t: *mut sys::ggml_tensor,
    ask: bool,
    _: *mut std::ffi::c_void,
) -> bool {
    // SAFETY: ggml passes a live tensor whose name is a NUL-terminated array.
    let (name, ty, contiguous, bytes) = unsafe {
        (
            CStr::from_ptr(sys::ggml_get_name(t)).to_string_lossy().into_owned(),
            (*t).type_,
            sys::ggml_is_contiguous(t),
            sys::ggml_nbytes(t),
        )
    };
    let plain = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with("leaf")
        && !name.starts_with("node");
    let wanted = plain && ty == sys::GGML_TYPE_F32 && contiguous;
    if ask {
        return wanted;
    }
    if wanted && let Some(dir) = std::env::var_os("LLAMA_RAW_DUMP") {
        let mut buf = vec![0u8; bytes];
        // SAFETY: `buf` holds the tensor's nbytes; the tensor is computed (ask == false).
        unsafe { sys::ggml_backend_tensor_get(t, buf.as_mut_ptr().cast(), 0, bytes) };
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{name}.f32")), &buf);
    }
    true
}

fn load(a: &Args) -> Result<Model, String> {
    let meta = std::fs::metadata(&a.model).map_err(|e| format!("{}: {e}", a.model))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", a.model));
    }
    let path = CString::new(a.model.as_str()).map_err(|_| "model path has a NUL byte")?;
    // SAFETY: plain init calls and a by-value default struct; the path is a C string.
    unsafe {
        if std::env::var_os("LLAMA_RAW_VERBOSE").is_none() {
            sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
        }
        sys::llama_backend_init();
        let mut mp = sys::llama_model_default_params();
        mp.n_gpu_layers = a.gpu_layers;
        mp.load_mode = sys::LLAMA_LOAD_MODE_MMAP;
        if std::env::var_os("LLAMA_RAW_NO_REPACK").is_some() {
            mp.use_extra_bufts = false;
        }
        let m = sys::llama_model_load_from_file(path.as_ptr(), mp);
        if m.is_null() {
            return Err(format!("llama.cpp could not load {}", a.model));
        }
        Ok(Model(m))
    }
}

fn new_ctx(m: &Model, a: &Args, n_ctx: u32, n_batch: u32) -> Result<Ctx, String> {
    new_ctx_seqs(m, a, n_ctx, n_batch, 1, true)
}

fn new_ctx_seqs(
    m: &Model,
    a: &Args,
    n_ctx: u32,
    n_batch: u32,
    n_seq: u32,
    unified: bool,
) -> Result<Ctx, String> {
    // SAFETY: model is live; params by value.
    unsafe {
        let mut cp = sys::llama_context_default_params();
        cp.n_ctx = n_ctx;
        cp.n_batch = n_batch;
        cp.n_ubatch = 512.min(n_batch);
        cp.n_seq_max = n_seq;
        cp.n_threads = a.threads;
        cp.n_threads_batch = a.threads;
        cp.kv_unified = unified;
        if let Some(fa) = a.flash_attn {
            cp.flash_attn_type = if fa {
                sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
            };
        }
        if let Some(t) = a.cache_type {
            cp.type_k = t;
            cp.type_v = t;
        }
        if std::env::var_os("LLAMA_RAW_DUMP").is_some() {
            cp.cb_eval = Some(dump_tensor);
        }
        let c = sys::llama_init_from_model(m.0, cp);
        if c.is_null() {
            return Err("llama.cpp could not create a context".into());
        }
        Ok(Ctx(c))
    }
}

fn n_vocab(m: &Model) -> usize {
    // SAFETY: live model.
    unsafe { sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(m.0)).max(0) as usize }
}

/// Decodes `tokens` at positions `start..` of sequence 0, logits for the last only.
fn decode(c: &Ctx, tokens: &[i32], start: i32, n_batch: usize) -> Result<(), String> {
    for (ci, chunk) in tokens.chunks(n_batch.max(1)).enumerate() {
        let base = ci * n_batch.max(1);
        let entries: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, start + (base + i) as i32, 0, base + i + 1 == tokens.len()))
            .collect();
        decode_entries(c, &entries)?;
    }
    Ok(())
}

fn clear(c: &Ctx) {
    // SAFETY: live context.
    unsafe { sys::llama_memory_clear(sys::llama_get_memory(c.0), true) }
}

fn stats(samples: &[f64]) -> serde_json::Value {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    let mean = s.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    json!({"median_tps": median, "mean_tps": mean, "min_tps": s[0], "max_tps": s[n - 1],
           "stddev_tps": sd, "samples_tps": samples})
}

fn bench(a: &Args) -> Result<(), String> {
    let m = load(a)?;
    let nv = n_vocab(&m) as u64;
    let n_ctx = (a.pp + a.tg).max(16) as u32;
    let n_batch = a.pp.clamp(1, 2048) as u32;
    let c = new_ctx(&m, a, n_ctx, n_batch)?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand_tok = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % nv) as i32
    };
    // Warm-up, as llama-bench does.
    if a.pp > 0 {
        let toks: Vec<i32> = (0..a.pp).map(|_| rand_tok()).collect();
        decode(&c, &toks, 0, n_batch as usize)?;
        clear(&c);
    }
    if a.tg > 0 {
        decode(&c, &[rand_tok()], 0, 1)?;
        clear(&c);
    }
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..a.reps {
        if a.pp > 0 {
            let toks: Vec<i32> = (0..a.pp).map(|_| rand_tok()).collect();
            clear(&c);
            let t = Instant::now();
            decode(&c, &toks, 0, n_batch as usize)?;
            // SAFETY: live context.
            unsafe { sys::llama_synchronize(c.0) };
            pp.push(a.pp as f64 / t.elapsed().as_secs_f64());
        }
        if a.tg > 0 {
            clear(&c);
            let t = Instant::now();
            for i in 0..a.tg {
                decode(&c, &[rand_tok()], i as i32, 1)?;
                // Each token's logits are read, as a generator must before it can choose
                // the next token (and as corral bench does). llama-bench reads none,
                // which lets a GPU queue run ahead of the CPU; on the CPU it is the same.
                // SAFETY: live context whose last decode asked for this entry's logits.
                if unsafe { sys::llama_get_logits_ith(c.0, -1) }.is_null() {
                    return Err("llama.cpp returned no logits".into());
                }
            }
            tg.push(a.tg as f64 / t.elapsed().as_secs_f64());
        }
    }
    // SAFETY: static strings.
    let (version, sysinfo) = unsafe {
        (
            CStr::from_ptr(sys::llama_version()).to_string_lossy().into_owned(),
            CStr::from_ptr(sys::llama_print_system_info()).to_string_lossy().into_owned(),
        )
    };
    let out = json!({
        "engine": "llama.cpp (raw C API)",
        "llama_cpp_version": version,
        "system_info": sysinfo.trim(),
        "model": a.model,
        "threads": a.threads,
        "reps": a.reps,
        "pp": if a.pp > 0 { json!({"n_tokens": a.pp, "stats": stats(&pp)}) } else { json!(null) },
        "tg": if a.tg > 0 { json!({"n_tokens": a.tg, "stats": stats(&tg)}) } else { json!(null) },
    });
    if a.json {
        println!("{out}");
    } else {
        println!("llama.cpp {version}, {} threads, {} reps", a.threads, a.reps);
        for (name, n, s) in [("pp", a.pp, &out["pp"]), ("tg", a.tg, &out["tg"])] {
            if n > 0 {
                let st = &s["stats"];
                println!(
                    "{name}{n}: {:.2} t/s (min {:.2}, max {:.2}, sd {:.2})",
                    st["median_tps"].as_f64().unwrap_or(0.0),
                    st["min_tps"].as_f64().unwrap_or(0.0),
                    st["max_tps"].as_f64().unwrap_or(0.0),
                    st["stddev_tps"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}

/// One batch of `(token, pos, seq, logits)` entries.
fn decode_entries(c: &Ctx, entries: &[(i32, i32, i32, bool)]) -> Result<(), String> {
    // SAFETY: the batch holds entries.len() slots with one seq id each, all written.
    unsafe {
        let mut b = sys::llama_batch_init(entries.len() as i32, 0, 1);
        for (i, &(t, p, s, logits)) in entries.iter().enumerate() {
            *b.token.add(i) = t;
            *b.pos.add(i) = p;
            *b.n_seq_id.add(i) = 1;
            *(*b.seq_id.add(i)) = s;
            *b.logits.add(i) = i8::from(logits);
        }
        b.n_tokens = entries.len() as i32;
        let rc = sys::llama_decode(c.0, b);
        sys::llama_batch_free(b);
        if rc != 0 {
            return Err(format!("llama_decode returned {rc}"));
        }
    }
    Ok(())
}

/// `chunks`: the time of a prompt chunk of each size on top of `--pp` cached tokens, alone
/// and batched with one decode token of another sequence.
fn chunks(a: &Args) -> Result<(), String> {
    let m = load(a)?;
    let np = a.nps.first().copied().unwrap_or(4).max(2);
    let sizes = [1usize, 16, 32, 48, 63, 64, 65, 96, 128];
    let n_ctx = ((a.pp + 130) * np) as u32;
    let c = new_ctx_seqs(&m, a, n_ctx, 512, np as u32, a.unified)?;
    let nv = n_vocab(&m) as i32;
    let token = |k: usize| (100 + (k as i32 * 7919) % (nv - 200).max(1)).min(nv - 1);
    for s in 0..np {
        let prompt: Vec<_> =
            (0..a.pp).map(|p| (token(p + s), p as i32, s as i32, p + 1 == a.pp)).collect();
        for chunk in prompt.chunks(512) {
            decode_entries(&c, chunk)?;
        }
    }
    let undo = || {
        for s in 0..np as i32 {
            // SAFETY: live context and memory; removing positions past the prompt.
            unsafe { sys::llama_memory_seq_rm(sys::llama_get_memory(c.0), s, a.pp as i32, -1) };
        }
    };
    let time = |batch: &[(i32, i32, i32, bool)]| -> Result<f64, String> {
        let mut ms = Vec::new();
        for _ in 0..a.reps {
            undo();
            let t = Instant::now();
            decode_entries(&c, batch)?;
            // SAFETY: live context.
            unsafe { sys::llama_synchronize(c.0) };
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        undo();
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    };
    println!(
        "{} threads, {np} sequences of {} cached tokens, kv_unified {}, flash attention {}",
        a.threads,
        a.pp,
        a.unified,
        a.flash_attn.map_or("auto", |f| if f { "on" } else { "off" })
    );
    println!("| chunk | alone ms | ms per token | with a decode token of another sequence ms |");
    for n in sizes {
        let chunk: Vec<_> = (0..n).map(|k| (token(k), (a.pp + k) as i32, 1, k + 1 == n)).collect();
        let alone = time(&chunk)?;
        let mut mixed = vec![(token(7), a.pp as i32, 0, true)];
        mixed.extend_from_slice(&chunk);
        let with_decode = time(&mixed)?;
        println!("| {n} | {alone:.1} | {:.2} | {with_decode:.1} |", alone / n as f64);
    }
    Ok(())
}

fn batched(a: &Args) -> Result<(), String> {
    let m = load(a)?;
    let nv = n_vocab(&m) as u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand_tok = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % nv) as i32
    };
    let mut rows = Vec::new();
    for &np in &a.nps {
        let per_seq = (a.pp + a.tg + 1) as u32;
        let n_ctx = if a.ctx > 0 { a.ctx } else { per_seq * np as u32 };
        let n_batch = (a.pp * np).clamp(np, 2048) as u32;
        let c = new_ctx_seqs(&m, a, n_ctx, n_batch, np as u32, a.unified)?;
        let (mut tg, mut with_prompt) = (Vec::new(), Vec::new());
        for rep in 0..=a.reps {
            clear(&c);
            let mut prompt = Vec::new();
            for s in 0..np {
                for p in 0..a.pp {
                    prompt.push((rand_tok(), p as i32, s as i32, p + 1 == a.pp));
                }
            }
            let t_prompt = Instant::now();
            for chunk in prompt.chunks(n_batch as usize) {
                decode_entries(&c, chunk)?;
            }
            // SAFETY: live context.
            unsafe { sys::llama_synchronize(c.0) };
            let prompt_s = t_prompt.elapsed().as_secs_f64();
            let t = Instant::now();
            for i in 0..a.tg {
                let step: Vec<_> =
                    (0..np).map(|s| (rand_tok(), (a.pp + i) as i32, s as i32, true)).collect();
                decode_entries(&c, &step)?;
            }
            // SAFETY: live context.
            unsafe { sys::llama_synchronize(c.0) };
            if rep > 0 {
                // repetition 0 is the warm-up
                let tg_s = t.elapsed().as_secs_f64();
                tg.push((a.tg * np) as f64 / tg_s);
                with_prompt.push((a.tg * np) as f64 / (tg_s + prompt_s));
            }
        }
        let st = stats(&tg);
        let agg = st["median_tps"].as_f64().unwrap_or(0.0);
        rows.push(json!({"n_seq": np, "pp": a.pp, "tg": a.tg,
            "step_ms": 1000.0 * np as f64 / agg.max(1e-9), "stats": st,
            "with_prompt": stats(&with_prompt)}));
    }
    let base = rows.first().and_then(|r| r["stats"]["median_tps"].as_f64()).unwrap_or(1.0);
    if a.json {
        println!("{}", json!({"threads": a.threads, "unified": a.unified, "rows": rows}));
    } else {
        println!("{} threads, kv_unified {}, pp {} per sequence", a.threads, a.unified, a.pp);
        let base_wp =
            rows.first().and_then(|r| r["with_prompt"]["median_tps"].as_f64()).unwrap_or(1.0);
        println!(
            "| n_seq | step ms | aggregate t/s | vs first | sd | with prompts t/s | vs first |"
        );
        for r in &rows {
            let st = &r["stats"];
            let agg = st["median_tps"].as_f64().unwrap_or(0.0);
            let wp = r["with_prompt"]["median_tps"].as_f64().unwrap_or(0.0);
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r["n_seq"],
                r["step_ms"].as_f64().unwrap_or(0.0),
                agg,
                agg / base,
                st["stddev_tps"].as_f64().unwrap_or(0.0),
                wp,
                wp / base_wp
            );
        }
    }
    Ok(())
}

/// `shared`: one round of the shared-prompt workload on llama.cpp alone. `--pp` prompt
/// tokens are decoded once on sequence 0 and copied to the other `--np` sequences
/// (`llama_memory_seq_cp`: shared cells in a unified cache, a copy per stream otherwise);
/// then each sequence's own `--n` question tokens, one sequence per call (as corral's
/// host does) and all in one call (as llama-server does); then `--tg` steps of one token
/// per sequence. Prints the milliseconds of each phase, per repetition's median.
fn shared(a: &Args) -> Result<(), String> {
    let m = load(a)?;
    let np = a.nps.first().copied().unwrap_or(4).max(1);
    let n_ctx =
        if a.ctx > 0 { a.ctx } else { ((a.pp + a.n + a.tg + 1) * np).next_multiple_of(256) as u32 };
    let c = new_ctx_seqs(&m, a, n_ctx, 2048, np as u32, a.unified)?;
    let nv = n_vocab(&m) as i32;
    let token = |k: usize| (100 + (k as i32 * 7919) % (nv - 200).max(1)).min(nv - 1);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut rows: Vec<[f64; 4]> = Vec::new();
    for rep in 0..=a.reps {
        let mut phase = [0f64; 4];
        for (together, slot) in [(false, 1usize), (true, 2)] {
            clear(&c);
            let t = Instant::now();
            let prefix: Vec<_> = (0..a.pp).map(|p| (token(p), p as i32, 0, false)).collect();
            for chunk in prefix.chunks(512) {
                decode_entries(&c, chunk)?;
            }
            for s in 1..np {
                // SAFETY: live context; sequence ids below n_seq_max.
                unsafe {
                    sys::llama_memory_seq_cp(sys::llama_get_memory(c.0), 0, s as i32, -1, -1);
                };
            }
            // SAFETY: live context.
            unsafe { sys::llama_synchronize(c.0) };
            phase[0] = ms(t);
            let question = |s: usize| -> Vec<(i32, i32, i32, bool)> {
                (0..a.n)
                    .map(|k| {
                        (token(10_000 + s * 1000 + k), (a.pp + k) as i32, s as i32, k + 1 == a.n)
                    })
                    .collect()
            };
            let t = Instant::now();
            if together {
                let all: Vec<_> = (0..np).flat_map(question).collect();
                decode_entries(&c, &all)?;
            } else {
                for s in 0..np {
                    decode_entries(&c, &question(s))?;
                }
            }
            // SAFETY: live context.
            unsafe { sys::llama_synchronize(c.0) };
            phase[slot] = ms(t);
            if together {
                let t = Instant::now();
                for i in 0..a.tg {
                    let step: Vec<_> = (0..np)
                        .map(|s| (token(20_000 + i), (a.pp + a.n + i) as i32, s as i32, true))
                        .collect();
                    decode_entries(&c, &step)?;
                }
                // SAFETY: live context.
                unsafe { sys::llama_synchronize(c.0) };
                phase[3] = ms(t) / a.tg.max(1) as f64;
            }
        }
        if rep > 0 {
            rows.push(phase);
        }
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let out = json!({"threads": a.threads, "unified": a.unified, "flash_attn": a.flash_attn,
        "n_seq": np, "prefix": a.pp, "question": a.n,
        "prefix_ms": median(0), "questions_one_by_one_ms": median(1),
        "questions_together_ms": median(2), "step_ms": median(3)});
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(())
}

fn tokenize(m: &Model, text: &str) -> Result<Vec<i32>, String> {
    let len = i32::try_from(text.len()).map_err(|_| "prompt too long")?;
    let mut cap = text.len() + 4;
    for _ in 0..2 {
        let mut out = vec![0i32; cap];
        // SAFETY: text valid for len bytes, out holds cap tokens.
        let n = unsafe {
            sys::llama_tokenize(
                sys::llama_model_get_vocab(m.0),
                text.as_ptr().cast(),
                len,
                out.as_mut_ptr(),
                cap as i32,
                true,
                true,
            )
        };
        if n >= 0 {
            out.truncate(n as usize);
            return Ok(out);
        }
        cap = n.unsigned_abs() as usize;
    }
    Err("tokenization failed".into())
}

fn piece(m: &Model, t: i32) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    // SAFETY: t comes from argmax over the vocabulary; buf holds 256 bytes.
    let n = unsafe {
        sys::llama_token_to_piece(
            sys::llama_model_get_vocab(m.0),
            t,
            buf.as_mut_ptr().cast(),
            256,
            0,
            true,
        )
    };
    buf.truncate(n.max(0) as usize);
    buf
}

fn last_logits(c: &Ctx, nv: usize) -> Result<Vec<f32>, String> {
    // SAFETY: the last decode asked for logits of its last entry; nv floats are there.
    unsafe {
        let p = sys::llama_get_logits_ith(c.0, -1);
        if p.is_null() {
            return Err("no logits".into());
        }
        Ok(std::slice::from_raw_parts(p, nv).to_vec())
    }
}

fn argmax(l: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as i32
}

fn greedy(a: &Args, logits_only: bool) -> Result<(), String> {
    let prompt = a.prompt.as_deref().ok_or("--prompt is required")?;
    let m = load(a)?;
    let nv = n_vocab(&m);
    let toks = tokenize(&m, prompt)?;
    if toks.is_empty() {
        return Err("the prompt tokenizes to nothing".into());
    }
    let n_ctx = if a.ctx > 0 { a.ctx } else { (toks.len() + a.n + 8) as u32 };
    let c = new_ctx(&m, a, n_ctx, 512)?;
    decode(&c, &toks, 0, 512)?;
    if logits_only {
        let l = last_logits(&c, nv)?;
        if a.json {
            println!("{}", json!({"prompt_tokens": toks, "n_vocab": nv, "logits": l}));
        } else {
            println!("argmax {} of {nv}", argmax(&l));
        }
        return Ok(());
    }
    let vocab = {
        // SAFETY: live model.
        unsafe { sys::llama_model_get_vocab(m.0) }
    };
    let mut out = Vec::new();
    let mut text = Vec::new();
    let mut stop = "length";
    for i in 0..a.n {
        let t = argmax(&last_logits(&c, nv)?);
        // SAFETY: t < n_vocab.
        if unsafe { sys::llama_vocab_is_eog(vocab, t) } {
            stop = "eog";
            break;
        }
        out.push(t);
        text.extend(piece(&m, t));
        if i + 1 < a.n {
            decode(&c, &[t], (toks.len() + i) as i32, 1)?;
        }
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    if a.json {
        println!(
            "{}",
            json!({"prompt_tokens": toks, "tokens": out, "text": text, "stop_reason": stop})
        );
    } else {
        println!("{text}");
    }
    Ok(())
}

/// `tokenize`: a JSON array of strings on stdin, the JSON array of their tokens (BOS as
/// the vocabulary asks, special-token texts parsed) on stdout.
fn tokenize_many(a: &Args) -> Result<(), String> {
    use std::io::Read as _;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).map_err(|e| e.to_string())?;
    let texts: Vec<String> = serde_json::from_str(&input).map_err(|e| e.to_string())?;
    let m = load(a)?;
    let mut out = Vec::with_capacity(texts.len());
    for t in &texts {
        out.push(if t.is_empty() { Vec::new() } else { tokenize(&m, t)? });
    }
    println!("{}", json!(out));
    Ok(())
}

/// A metadata value of the model as text, if the file has the key.
fn meta(m: &Model, key: &str) -> Option<String> {
    let key = CString::new(key).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: live model; buf holds 256 bytes and llama.cpp writes at most that many,
    // NUL-terminated.
    let n = unsafe {
        sys::llama_model_meta_val_str(m.0, key.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    if n < 0 {
        return None;
    }
    buf.truncate((n as usize).min(buf.len() - 1));
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// `embed`: the prompt's pooled embedding, pooled as the plugin does.
fn embed(a: &Args) -> Result<(), String> {
    let prompt = a.prompt.as_deref().ok_or("--prompt is required")?;
    let m = load(a)?;
    let toks = tokenize(&m, prompt)?;
    if toks.is_empty() {
        return Err("the prompt tokenizes to nothing".into());
    }
    let arch = meta(&m, "general.architecture").unwrap_or_default();
    let declared = meta(&m, &format!("{arch}.pooling_type")).is_some();
    let n = (toks.len() as u32).max(16);
    // SAFETY: model is live; params by value; the batch holds toks.len() entries with one
    // sequence id each, all written; the embedding read is n_embd floats when not null.
    unsafe {
        let mut cp = sys::llama_context_default_params();
        cp.n_ctx = n + 16;
        cp.n_batch = n;
        cp.n_ubatch = n;
        cp.n_seq_max = 1;
        cp.n_threads = a.threads;
        cp.n_threads_batch = a.threads;
        cp.embeddings = true;
        cp.pooling_type = if declared {
            sys::LLAMA_POOLING_TYPE_UNSPECIFIED
        } else {
            sys::LLAMA_POOLING_TYPE_MEAN
        };
        let c = sys::llama_init_from_model(m.0, cp);
        if c.is_null() {
            return Err("llama.cpp could not create an embedding context".into());
        }
        let c = Ctx(c);
        let entries: Vec<_> =
            toks.iter().enumerate().map(|(i, &t)| (t, i as i32, 0, true)).collect();
        decode_entries(&c, &entries)?;
        let p = sys::llama_get_embeddings_seq(c.0, 0);
        if p.is_null() {
            return Err("llama.cpp gave no pooled embedding (pooling none?)".into());
        }
        let d = sys::llama_model_n_embd(m.0).max(0) as usize;
        let e = std::slice::from_raw_parts(p, d).to_vec();
        println!("{}", json!({"prompt_tokens": toks, "embedding": e}));
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let r = match a.cmd.as_str() {
        "bench" => bench(&a),
        "greedy" => greedy(&a, false),
        "logits" => greedy(&a, true),
        "batched" => batched(&a),
        "chunks" => chunks(&a),
        "shared" => shared(&a),
        "tokenize" => tokenize_many(&a),
        "embed" => embed(&a),
        other => Err(format!("unknown command {other}\n{USAGE}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llama-raw: {e}");
            ExitCode::FAILURE
        }
    }
}
