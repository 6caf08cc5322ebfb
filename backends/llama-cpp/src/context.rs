//! A context: llama.cpp's KV cache plus the batch decoder over it.

use std::sync::Arc;

use corral_backend_api::{
    BackendError, BatchEntry, ContextParams, ErrorKind,
    plugin::{BatchLimits, Context, check_batch, check_seq},
};
use corral_gguf::pooling::Pooling;
use corral_probe::ggml;
use llama_cpp_sys_2 as sys;

use crate::logging;
use crate::model::ModelInner;

/// A llama.cpp context made by [`crate::LlamaModel`]. Every batch entry is validated
/// before llama.cpp sees it (some bad input makes llama.cpp abort the process).
pub struct LlamaContext {
    ptr: *mut sys::llama_context,
    mem: sys::llama_memory_t,
    batch: sys::llama_batch,
    model: Arc<ModelInner>,
    params: ContextParams,
    /// For each entry of the last successful decode: whether its logits were computed.
    outputs: Vec<bool>,
    /// Sequences that had entries in the last successful decode (embedding contexts).
    decoded_seqs: Vec<bool>,
    /// Positions one sequence may hold: `n_ctx` with a unified KV cache, `n_ctx /
    /// n_seq_max` (rounded up by llama.cpp) with one stream per sequence.
    n_ctx_seq: u32,
    /// One KV buffer for every sequence (`kv_unified`); otherwise a stream each.
    unified: bool,
    /// The sliding window whose older positions the cache drops
    /// (`ModelInner::pruned_window`); 0 when it keeps every position.
    pruned_window: i32,
    /// The CPU thread pools attached to the context (freed after it).
    pools: ThreadPools,
}

/// ggml CPU thread pools attached to a context, as llama.cpp's own tools (llama-server,
/// llama-cli, llama-bench) attach them. Without one, ggml starts and joins its worker
/// threads for every graph it computes, that is once per decoded token. A pool's threads
/// poll briefly for the next graph, then sleep until one comes.
struct ThreadPools {
    decode: *mut sys::ggml_threadpool,
    /// Null when prompt batches use the decode pool.
    batch: *mut sys::ggml_threadpool,
}

impl ThreadPools {
    /// Pools of `n_threads` (single tokens) and `n_threads_batch` (prompt batches), attached
    /// to `ctx`; none attached (ggml's per-graph threads) when ggml cannot create them.
    ///
    /// # Safety
    /// `ctx` is a live context that outlives the attachment; the pools are freed only
    /// after the context (see `LlamaContext`'s `Drop`).
    unsafe fn attach(ctx: *mut sys::llama_context, n_threads: i32, n_threads_batch: i32) -> Self {
        let new_pool = |n: i32, paused: bool| {
            // SAFETY: plain constructors over a parameter struct ggml initialises.
            unsafe {
                let mut params = sys::ggml_threadpool_params_default(n);
                params.paused = paused;
                sys::ggml_threadpool_new(&mut params)
            }
        };
        let mut pools = ThreadPools { decode: std::ptr::null_mut(), batch: std::ptr::null_mut() };
        if n_threads_batch != n_threads {
            pools.batch = new_pool(n_threads_batch, false);
            if pools.batch.is_null() {
                return pools;
            }
        }
        // As llama.cpp's common_threadpools: with two pools the decode pool starts paused
        // (ggml resumes a pool when it computes a graph on it and pauses the other).
        pools.decode = new_pool(n_threads, !pools.batch.is_null());
        if pools.decode.is_null() {
            pools.free();
            return pools;
        }
        let batch = if pools.batch.is_null() { pools.decode } else { pools.batch };
        // SAFETY: per this function's contract; both pools are live.
        unsafe { sys::llama_attach_threadpool(ctx, pools.decode, batch) };
        pools
    }

    fn free(&mut self) {
        for pool in [&mut self.decode, &mut self.batch] {
            if !pool.is_null() {
                // SAFETY: created by ggml_threadpool_new and freed once (nulled here);
                // no context uses it any more (see `attach`).
                unsafe { sys::ggml_threadpool_free(*pool) };
                *pool = std::ptr::null_mut();
            }
        }
    }
}

// SAFETY: a llama_context may move between threads; the host drives it from one thread
// at a time (the type is not Sync), and the model it uses is kept alive by the Arc. Its
// thread pools are driven only through the context, from whichever thread decodes.
unsafe impl Send for LlamaContext {}

impl Drop for LlamaContext {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` and are freed once; the context goes before
        // the model, which `self.model` still holds.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ptr);
        }
        self.pools.free();
    }
}

impl LlamaContext {
    /// A context; `per_sequence` asks for one KV stream per sequence (`kv_unified` off)
    /// unless the backend's `kv_unified` option says otherwise.
    pub(crate) fn new(
        model: Arc<ModelInner>,
        p: &ContextParams,
        per_sequence: bool,
    ) -> Result<Self, BackendError> {
        if p.n_ctx == 0 || p.n_batch == 0 || p.n_seq_max == 0 {
            return Err(BackendError::invalid(format!(
                "context sizes must be positive (n_ctx {}, n_batch {}, n_seq_max {})",
                p.n_ctx, p.n_batch, p.n_seq_max
            )));
        }
        // llama.cpp's LLAMA_MAX_SEQ.
        const MAX_SEQ: u32 = 256;
        if p.n_seq_max > MAX_SEQ {
            return Err(BackendError::invalid(format!(
                "n_seq_max {} is above llama.cpp's limit of {MAX_SEQ}",
                p.n_seq_max
            )));
        }
        if p.n_ctx > i32::MAX as u32 / 2 || p.n_batch > i32::MAX as u32 / 2 {
            return Err(BackendError::invalid("n_ctx or n_batch is too large"));
        }
        let opts = &model.options;
        let n_batch = p.n_batch.min(p.n_ctx);
        let mut n_ubatch = if p.embeddings {
            // Pooled embeddings (and non-causal models) need the whole batch in one ubatch.
            n_batch
        } else {
            match opts.n_ubatch {
                0 => 512.min(n_batch),
                u => u.min(n_batch),
            }
        };
        // A shared context: one KV buffer, each sequence may use up to n_ctx. A
        // per-sequence one: a stream per sequence, so attention covers one sequence's cells.
        let kv_unified = opts.kv_unified.unwrap_or(!per_sequence);
        // The load's setting first, then the backend option; else llama.cpp's `auto`.
        // Embedding contexts keep `auto` as llama-server does (flash attention on the CPU):
        // it rounds Q, K and V to F16, which moves an all-MiniLM-L6-v2 embedding by 1e-4
        // to 3e-4 from its float64 reference (cosine similarities by ~1e-7), and embeds
        // 1.5x as fast as ggml's unfused attention; `flash_attention = off` gives the
        // exact path.
        let mut flash_attn = model.kv.flash_attention.or(opts.flash_attn);
        // `auto` on a model computed wholly on the CPU with an f16 cache, whose head size
        // ggml's flash attention would walk element by element: off, with a micro-batch
        // whose attention scores fit their budget (`corral_probe::ggml`). Not for
        // embeddings: their whole input is one micro-batch, which the tiled kernel takes.
        let (head_k, head_v) = model.head_sizes;
        if flash_attn.is_none()
            && !p.embeddings
            && model.cpu_only
            && model.kv.cache_type.is_none()
            && ggml::flash_attention_is_scalar((head_k.into(), head_v.into()), ggml_f16_step())
        {
            let n_kv = if kv_unified { p.n_ctx } else { p.n_ctx.div_ceil(p.n_seq_max) };
            if let Some(u) = ggml::ubatch_without_flash_attention(
                n_ubatch.into(),
                n_kv.into(),
                model.n_head.into(),
            ) {
                // At most the n_ubatch given, a u32.
                n_ubatch = u as u32;
                flash_attn = Some(false);
            }
        }
        // SAFETY: returns a plain struct by value.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = p.n_ctx;
        cp.n_batch = n_batch;
        cp.n_ubatch = n_ubatch;
        cp.n_seq_max = p.n_seq_max;
        cp.n_threads = opts.threads(p.n_threads);
        cp.n_threads_batch = opts.threads_batch(p.n_threads_batch);
        // ggml's limit (GGML_MAX_N_THREADS): more would start that many threads and
        // thrash the machine, or overrun ggml's per-thread arrays.
        for n in [cp.n_threads, cp.n_threads_batch] {
            if !(1..=512).contains(&n) {
                return Err(BackendError::invalid(format!(
                    "{n} threads: llama.cpp runs 1 to 512 (this machine has {} logical CPUs)",
                    std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
                )));
            }
        }
        cp.kv_unified = kv_unified;
        cp.swa_full = opts.swa_full();
        cp.embeddings = p.embeddings;
        if p.embeddings {
            // The file's own pooling, else mean; none, rank and undefined numbers refused
            // (rank's output is `n_cls_out` floats, which `embeddings` must not read as
            // `n_embd`; llama.cpp aborts on an undefined one while it makes the context).
            cp.pooling_type = match &model.embedding_pooling {
                Ok(Pooling::Cls) => sys::LLAMA_POOLING_TYPE_CLS,
                Ok(Pooling::Last) => sys::LLAMA_POOLING_TYPE_LAST,
                Ok(_) => sys::LLAMA_POOLING_TYPE_MEAN,
                Err(why) => return Err(BackendError::unsupported(why.clone())),
            };
        }
        if let Some(t) = model.kv.cache_type {
            cp.type_k = t;
            cp.type_v = t;
            if flash_attn == Some(false) {
                return Err(BackendError::invalid(
                    "a quantized KV cache needs flash attention in llama.cpp (the backend \
                     option flash_attn = false turns it off)",
                ));
            }
        }
        if let Some(fa) = flash_attn {
            cp.flash_attn_type = if fa {
                sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
            };
        }
        logging::clear_errors();
        // SAFETY: the model is alive (held by `model`); `cp` is fully initialised.
        let ptr = unsafe { sys::llama_init_from_model(model.ptr, cp) };
        if ptr.is_null() {
            let errors = logging::take_errors();
            let kind = if errors.iter().any(|e| e.contains("alloc") || e.contains("memory")) {
                ErrorKind::OutOfMemory
            } else if errors.iter().any(|e| e.contains("cache type")) {
                // A KV cache type this model's head sizes cannot take: the setting's fault.
                ErrorKind::InvalidInput
            } else {
                ErrorKind::Internal
            };
            return Err(BackendError::new(
                kind,
                format!(
                    "llama.cpp could not create a context of {} tokens: {}",
                    p.n_ctx,
                    if errors.is_empty() { "no reason given".into() } else { errors.join("; ") }
                ),
            ));
        }
        // SAFETY: `ptr` is a live context of the model the adapters were loaded onto; on
        // an error it is freed here, before anything else holds it.
        if let Err(e) = unsafe { model.adapters.apply(ptr) } {
            // SAFETY: as above.
            unsafe { sys::llama_free(ptr) };
            return Err(e);
        }
        // SAFETY: `ptr` is a live context; the batch holds n_batch entries of one seq id.
        let (mem, batch, n_ctx, n_batch, n_ctx_seq) = unsafe {
            (
                sys::llama_get_memory(ptr),
                sys::llama_batch_init(n_batch as i32, 0, 1),
                sys::llama_n_ctx(ptr),
                sys::llama_n_batch(ptr),
                sys::llama_n_ctx_seq(ptr),
            )
        };
        // SAFETY: `ptr` is live; `pools` goes into the context, whose Drop frees it after
        // `llama_free`.
        let pools = unsafe { ThreadPools::attach(ptr, cp.n_threads, cp.n_threads_batch) };
        let pruned_window = model.pruned_window();
        let params = ContextParams {
            n_ctx,
            n_batch: n_batch.min(cp.n_batch),
            n_seq_max: p.n_seq_max,
            n_threads: cp.n_threads as u32,
            n_threads_batch: cp.n_threads_batch as u32,
            embeddings: p.embeddings,
            seed: p.seed,
        };
        Ok(LlamaContext {
            ptr,
            mem,
            batch,
            model,
            params,
            outputs: Vec::new(),
            decoded_seqs: Vec::new(),
            n_ctx_seq: n_ctx_seq.min(n_ctx),
            unified: cp.kv_unified,
            pruned_window,
            pools,
        })
    }

    /// The raw `llama_context` pointer, for this crate's tools.
    pub fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr
    }

    fn check_seq(&self, seq: u32) -> Result<(), BackendError> {
        check_seq(seq, self.params.n_seq_max)
    }

    fn validate(&self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        let limits = BatchLimits {
            positions: self.n_ctx_seq,
            ..BatchLimits::for_context(&self.params, self.model.n_vocab)
        };
        check_batch(batch, &limits)
    }
}

impl Context for LlamaContext {
    fn params(&self) -> ContextParams {
        self.params.clone()
    }

    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        self.validate(batch)?;
        let emb = self.params.embeddings;
        // SAFETY: the batch was allocated for n_batch entries with one seq id each and
        // `batch.len() <= n_batch` was checked; every field written is within those arrays.
        unsafe {
            let b = &mut self.batch;
            for (i, e) in batch.iter().enumerate() {
                *b.token.add(i) = e.token as sys::llama_token;
                *b.pos.add(i) = e.pos as sys::llama_pos;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = e.seq as sys::llama_seq_id;
                // Pooled embeddings need every entry as an output.
                *b.logits.add(i) = i8::from(e.logits || emb);
            }
            b.n_tokens = batch.len() as i32;
        }
        self.outputs.clear();
        self.decoded_seqs.clear();
        logging::clear_errors();
        // SAFETY: the context is live and the batch filled as above.
        let rc = unsafe { sys::llama_decode(self.ptr, self.batch) };
        match rc {
            0 => {
                self.outputs = batch.iter().map(|e| e.logits && !emb).collect();
                self.decoded_seqs = vec![false; self.params.n_seq_max as usize];
                for e in batch {
                    self.decoded_seqs[e.seq as usize] = true;
                }
                Ok(())
            }
            1 => Err(BackendError::new(
                ErrorKind::ContextFull,
                format!(
                    "no room in the KV cache for a batch of {} entries (n_ctx {}); remove \
                     finished sequences or use a larger context",
                    batch.len(),
                    self.params.n_ctx
                ),
            )),
            -1 => {
                let errors = logging::take_errors();
                Err(BackendError::invalid(format!(
                    "llama.cpp refused the batch: {}",
                    if errors.is_empty() {
                        "invalid batch (positions must continue each sequence's KV cache)"
                            .to_string()
                    } else {
                        errors.join("; ")
                    }
                )))
            }
            2 => Err(BackendError::internal("llama.cpp aborted the decode")),
            rc => {
                let errors = logging::take_errors();
                Err(BackendError::internal(format!(
                    "llama_decode failed with code {rc}: {}",
                    errors.join("; ")
                )))
            }
        }
    }

    fn logits(&self, index: u32) -> Result<&[f32], BackendError> {
        if self.params.embeddings {
            return Err(BackendError::unsupported(
                "this context computes embeddings; create one with embeddings off for logits",
            ));
        }
        match self.outputs.get(index as usize) {
            None => {
                return Err(BackendError::invalid(format!(
                    "batch entry {index} is out of range: the last decode had {} entries",
                    self.outputs.len()
                )));
            }
            Some(false) => {
                return Err(BackendError::invalid(format!(
                    "batch entry {index} did not ask for logits in the last decode"
                )));
            }
            Some(true) => {}
        }
        // SAFETY: entry `index` of the last successful decode asked for logits, so
        // llama.cpp holds n_vocab floats for it until the next decode, which needs
        // `&mut self` and so cannot happen while the returned borrow lives.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr, index as i32);
            if p.is_null() {
                return Err(BackendError::internal(format!(
                    "llama.cpp has no logits for batch entry {index}"
                )));
            }
            Ok(std::slice::from_raw_parts(p, self.model.n_vocab as usize))
        }
    }

    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        if !self.params.embeddings {
            return Err(BackendError::invalid(
                "this context was made without embeddings; create one with embeddings: true",
            ));
        }
        self.check_seq(seq)?;
        if !self.decoded_seqs.get(seq as usize).copied().unwrap_or(false) {
            return Err(BackendError::invalid(format!(
                "sequence {seq} had no entries in the last decode, so it has no embedding"
            )));
        }
        // SAFETY: live context; the pooled vector of a sequence decoded last holds
        // n_embd_out floats.
        unsafe {
            let n = sys::llama_model_n_embd_out(self.model.ptr).max(0) as usize;
            let p = sys::llama_get_embeddings_seq(self.ptr, seq as sys::llama_seq_id);
            if p.is_null() || n == 0 {
                return Err(BackendError::internal(format!(
                    "llama.cpp has no pooled embedding for sequence {seq}"
                )));
            }
            Ok(std::slice::from_raw_parts(p, n).to_vec())
        }
    }

    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        if seq >= 0 {
            self.check_seq(seq as u32)?;
        }
        // Any negative id means every sequence; llama.cpp asserts on all but -1.
        let seq = seq.max(-1);
        // A sequence cut back to p0 continues at p0, whose sliding window reaches back to
        // p0 - n_swa + 1: refuse when the cache dropped positions of that window (the
        // sliding-window layers keep only the last window and micro-batch). Refused, not
        // cut: the caller then empties the sequence and evaluates its prompt anew.
        // llama-server's rule (`pos_min >= p0 - n_swa` is refused) covers chunked windows
        // too, whose chunk starts after p0 - n_swa.
        if seq >= 0 && p0 > 0 && p1 < 0 && self.pruned_window > 0 {
            // SAFETY: live memory handle; seq in range (checked above).
            let pos_min = unsafe { sys::llama_memory_seq_pos_min(self.mem, seq) };
            if pos_min > 0 && pos_min >= p0 - self.pruned_window {
                return Err(BackendError::invalid(format!(
                    "sequence {seq} no longer holds the sliding window before position {p0} \
                     (its oldest position is {pos_min}, the window {} positions; the \
                     swa_full option keeps every position)",
                    self.pruned_window
                )));
            }
        }
        // SAFETY: live memory handle; seq is -1 (all) or in range.
        let ok = unsafe { sys::llama_memory_seq_rm(self.mem, seq, p0, p1) };
        if ok {
            Ok(())
        } else {
            Err(BackendError::unsupported(format!(
                "this model's memory cannot remove part of sequence {seq} ([{p0}, {p1}))"
            )))
        }
    }

    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.check_seq(src)?;
        self.check_seq(dst)?;
        if src == dst {
            return Ok(());
        }
        // Between streams llama.cpp copies whole buffers only and asserts (aborting the
        // process) on a range: refuse ranges here. A whole copy replaces dst's contents.
        if !self.unified && (p0 > 0 || p1 >= 0) {
            return Err(BackendError::unsupported(format!(
                "this context keeps a KV stream per sequence: kv_copy copies whole sequences \
                 only (p0 <= 0, p1 < 0), not [{p0}, {p1})"
            )));
        }
        // SAFETY: live memory handle; both sequence ids are in range; between streams
        // only whole sequences reach here.
        unsafe {
            sys::llama_memory_seq_cp(
                self.mem,
                src as sys::llama_seq_id,
                dst as sys::llama_seq_id,
                p0,
                p1,
            );
        };
        Ok(())
    }

    fn kv_pos_max(&self, seq: u32) -> i32 {
        if seq >= self.params.n_seq_max {
            return -1;
        }
        // SAFETY: live memory handle; seq in range.
        unsafe { sys::llama_memory_seq_pos_max(self.mem, seq as sys::llama_seq_id) }
    }

    fn kv_clear(&mut self) -> Result<(), BackendError> {
        // SAFETY: live memory handle.
        unsafe { sys::llama_memory_clear(self.mem, true) };
        self.outputs.clear();
        self.decoded_seqs.clear();
        Ok(())
    }

    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError> {
        self.check_seq(seq)?;
        let p0 = p0.max(0); // as kv_remove: a negative p0 is 0
        if (p1 >= 0 && p1 < p0) || p0.checked_add(delta).is_none_or(|p| p < 0) {
            return Err(BackendError::invalid(format!(
                "cannot shift positions [{p0}, {p1}) of sequence {seq} by {delta}"
            )));
        }
        // SAFETY: live memory handle.
        if !unsafe { sys::llama_memory_can_shift(self.mem) } {
            return Err(BackendError::unsupported(
                "this model's memory cannot shift positions (llama_memory_can_shift is false)",
            ));
        }
        // SAFETY: live memory handle; seq in range; llama.cpp re-rotates the keys at the
        // next decode.
        unsafe { sys::llama_memory_seq_add(self.mem, seq as sys::llama_seq_id, p0, p1, delta) };
        Ok(())
    }
}

/// ggml's `GGML_F16_STEP` in this build of llama.cpp
/// ([`corral_probe::ggml::f16_step`]). llama.cpp is compiled for the same CPU features as
/// this crate (`-C target-cpu=native` turns into GGML_NATIVE; the variants set both), so
/// the crate's target features tell.
fn ggml_f16_step() -> Option<u32> {
    const BUILT_WITH: [(&str, bool); 3] = [
        ("avx512fp16", cfg!(target_feature = "avx512fp16")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("avx", cfg!(target_feature = "avx")),
    ];
    ggml::f16_step(cfg!(target_arch = "x86_64"), |feature| {
        BUILT_WITH.iter().any(|&(name, on)| on && name == feature)
    })
}
