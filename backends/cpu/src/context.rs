//! A context: the KV caches of its sequences, a thread pool and the batch decoder.

use std::sync::Arc;

use corral_backend_api::{
    BackendError, BatchEntry, ContextParams, ErrorKind,
    plugin::{BatchLimits, Context, check_batch, check_seq},
};
use corral_gguf::pooling::Pooling;

use crate::forward::{Output, Profile, Scratch, forward};
use crate::kv::{SeqCache, range};
use crate::model::ModelInner;

/// Largest number of sequences a context accepts.
pub const MAX_SEQ: u32 = 256;

/// A context of [`crate::CpuModel`].
pub struct CpuContext {
    model: Arc<ModelInner>,
    params: ContextParams,
    pool: rayon::ThreadPool,
    /// Pool for single-token decodes when `n_threads` differs from `n_threads_batch`.
    pool_single: Option<rayon::ThreadPool>,
    caches: Vec<SeqCache>,
    scratch: Scratch,
    /// Per entry of the last decode: its row in `logits`, if it asked for logits.
    out_index: Vec<Option<usize>>,
    logits: Vec<f32>,
    /// Pooled embeddings of the sequences of the last decode (embedding contexts).
    pooled: Vec<Option<Vec<f32>>>,
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(4, |n| n.get() as u32)
}

fn keep_awake() -> bool {
    static K: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *K.get_or_init(|| std::env::var("CORRAL_CPU_SPIN").map_or(true, |v| v != "0"))
}

/// Runs `f` on the current pool thread while every other thread of the pool stays awake:
/// each runs a task that takes the pool's pending work as soon as it appears
/// (`rayon::yield_now`) and spins while there is none, until `f` returns. A single-token
/// step has 4-5 parallel regions per layer with a little serial work between them, and
/// rayon's idle threads otherwise fall asleep there and must be woken for the next
/// region (llama.cpp's threads spin at barriers for the same reason).
fn with_threads_awake<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let others = rayon::current_num_threads().saturating_sub(1);
    if others == 0 {
        return f();
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Ends the spinning when `f` returns or unwinds (the scope waits for its tasks, so a
    /// panic in `f` must stop them too).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    let mut out = None;
    rayon::scope(|s| {
        for _ in 0..others {
            s.spawn(|_| {
                let mut idle = 0u32;
                while !done.load(Ordering::Acquire) {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => idle = 0,
                        Some(rayon::Yield::Idle) => {
                            idle = idle.wrapping_add(1);
                            // Give the core away now and then, should the pool have more
                            // threads than the machine has cores.
                            if idle.is_multiple_of(256) {
                                std::thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        None => break,
                    }
                }
            });
        }
        let _done = Done(&done);
        out = Some(f());
    });
    out.expect("the scope ran f")
}

fn build_pool(n: u32) -> Result<rayon::ThreadPool, BackendError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n as usize)
        .thread_name(|i| format!("corral-cpu-{i}"))
        .build()
        .map_err(|e| BackendError::internal(format!("cannot start {n} compute threads: {e}")))
}

impl CpuContext {
    pub(crate) fn new(model: Arc<ModelInner>, p: &ContextParams) -> Result<Self, BackendError> {
        if p.embeddings
            && let Err(why) = &model.hp.pooling
        {
            return Err(BackendError::unsupported(why.clone()));
        }
        if p.n_ctx == 0 || p.n_batch == 0 || p.n_seq_max == 0 {
            return Err(BackendError::invalid(format!(
                "context sizes must be positive (n_ctx {}, n_batch {}, n_seq_max {})",
                p.n_ctx, p.n_batch, p.n_seq_max
            )));
        }
        if p.n_seq_max > MAX_SEQ {
            return Err(BackendError::invalid(format!(
                "n_seq_max {} is above the cpu backend's limit of {MAX_SEQ}",
                p.n_seq_max
            )));
        }
        if p.n_ctx > i32::MAX as u32 / 2 {
            return Err(BackendError::invalid("n_ctx is too large"));
        }
        let opts = &model.options;
        let pick = |asked: u32, opt: Option<u32>| match (asked, opt) {
            (0, Some(o)) if o > 0 => o,
            (0, _) => default_threads(),
            (n, _) => n,
        };
        let n_threads = pick(p.n_threads, opts.n_threads).clamp(1, 512);
        let n_threads_batch =
            pick(p.n_threads_batch, opts.n_threads_batch.or(opts.n_threads)).clamp(1, 512);
        let pool = build_pool(n_threads_batch)?;
        let pool_single =
            if n_threads != n_threads_batch { Some(build_pool(n_threads)?) } else { None };
        let n_batch = p.n_batch.min(p.n_ctx);
        let params = ContextParams {
            n_ctx: p.n_ctx,
            n_batch,
            n_seq_max: p.n_seq_max,
            n_threads,
            n_threads_batch,
            embeddings: p.embeddings,
            seed: p.seed,
        };
        let n_layer = model.hp.n_layer;
        let mut scratch = Scratch::default();
        scratch.profile = std::env::var_os("CORRAL_CPU_PROFILE").map(|_| Profile::default());
        Ok(CpuContext {
            caches: (0..p.n_seq_max).map(|_| SeqCache::new(n_layer)).collect(),
            model,
            params,
            pool,
            pool_single,
            scratch,
            out_index: Vec::new(),
            logits: Vec::new(),
            pooled: Vec::new(),
        })
    }

    /// Time per phase of the forward passes so far (`CORRAL_CPU_PROFILE` set), and
    /// resets it.
    pub fn take_profile(&mut self) -> Option<Profile> {
        let p = self.scratch.profile.take();
        if p.is_some() {
            self.scratch.profile = Some(Profile::default());
        }
        p
    }

    fn check_seq(&self, seq: u32) -> Result<(), BackendError> {
        check_seq(seq, self.params.n_seq_max)
    }

    fn validate(&self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        check_batch(batch, &BatchLimits::for_context(&self.params, self.model.hp.n_vocab as u32))?;
        let n_seq = self.params.n_seq_max as usize;
        // Per sequence: (count, min pos, max pos) of the batch's entries.
        let mut seen: Vec<(u32, u32, u32)> = vec![(0, u32::MAX, 0); n_seq];
        for e in batch {
            let s = &mut seen[e.seq as usize];
            s.0 += 1;
            s.1 = s.1.min(e.pos);
            s.2 = s.2.max(e.pos);
        }
        let mut new_cells = 0usize;
        for (seq, &(count, lo, hi)) in seen.iter().enumerate() {
            if count == 0 {
                continue;
            }
            new_cells += count as usize;
            let last = self.caches[seq].pos_max();
            if last >= 0 && lo as i64 != last as i64 + 1 {
                return Err(BackendError::invalid(format!(
                    "sequence {seq}: the batch starts at position {lo} but the KV cache ends at \
                     position {last}; positions must continue the sequence ({})",
                    last + 1
                )));
            }
            if hi - lo + 1 != count {
                return Err(BackendError::invalid(format!(
                    "sequence {seq}: the batch's positions {lo}..={hi} are not {count} \
                     consecutive positions"
                )));
            }
        }
        let used: usize = self.caches.iter().map(SeqCache::len).sum();
        if used + new_cells > self.params.n_ctx as usize {
            return Err(BackendError::new(
                ErrorKind::ContextFull,
                format!(
                    "no room in the KV cache for a batch of {} entries ({used} of {} cells in \
                     use); remove finished sequences or use a larger context",
                    batch.len(),
                    self.params.n_ctx
                ),
            ));
        }
        Ok(())
    }
}

impl Context for CpuContext {
    fn params(&self) -> ContextParams {
        self.params.clone()
    }

    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        self.validate(batch)?;
        self.out_index.clear();
        self.logits.clear();
        self.pooled.clear();
        let emb = self.params.embeddings;
        let out_rows: Vec<usize> = (0..batch.len()).filter(|&i| emb || batch[i].logits).collect();
        let pool = match (&self.pool_single, batch.len()) {
            (Some(p), 1) => p,
            _ => &self.pool,
        };
        let model = &self.model;
        let factors = model.rope_factors(self.params.n_ctx as usize);
        let caches = &mut self.caches;
        let scratch = &mut self.scratch;
        let out = pool.install(|| {
            if batch.len() == 1 && keep_awake() {
                with_threads_awake(|| {
                    forward(model, caches, batch, &out_rows, emb, factors, scratch)
                })
            } else {
                forward(model, caches, batch, &out_rows, emb, factors, scratch)
            }
        });
        match out {
            Output::Logits(l) => {
                self.logits = l;
                let mut row = 0;
                for e in batch {
                    if e.logits {
                        self.out_index.push(Some(row));
                        row += 1;
                    } else {
                        self.out_index.push(None);
                    }
                }
            }
            Output::Hidden(h) => {
                let d = self.model.hp.n_embd;
                let rows = out_rows.iter().map(|&i| &batch[i]);
                // Embedding contexts exist only where the pooling is one (`new`).
                let pooling = *self.model.hp.pooling.as_ref().unwrap_or(&Pooling::Mean);
                self.pooled = pool_sequences(pooling, rows, &h, d, self.params.n_seq_max as usize);
                self.out_index = vec![None; batch.len()];
            }
        }
        Ok(())
    }

    fn logits(&self, index: u32) -> Result<&[f32], BackendError> {
        if self.params.embeddings {
            return Err(BackendError::unsupported(
                "this context computes embeddings; create one with embeddings off for logits",
            ));
        }
        match self.out_index.get(index as usize) {
            None => Err(BackendError::invalid(format!(
                "batch entry {index} is out of range: the last decode had {} entries",
                self.out_index.len()
            ))),
            Some(None) => Err(BackendError::invalid(format!(
                "batch entry {index} did not ask for logits in the last decode"
            ))),
            Some(Some(row)) => {
                let nv = self.model.hp.n_vocab;
                Ok(&self.logits[row * nv..(row + 1) * nv])
            }
        }
    }

    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        if !self.params.embeddings {
            return Err(BackendError::invalid(
                "this context was made without embeddings; create one with embeddings: true",
            ));
        }
        self.check_seq(seq)?;
        match self.pooled.get(seq as usize) {
            Some(Some(v)) => Ok(v.clone()),
            _ => Err(BackendError::invalid(format!(
                "sequence {seq} had no entries in the last decode, so it has no embedding"
            ))),
        }
    }

    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        let row_bytes = self.model.kv_row_bytes();
        let r = range(p0, p1);
        if seq < 0 {
            for c in &mut self.caches {
                c.retain(row_bytes, |p| !r(p));
            }
        } else {
            self.check_seq(seq as u32)?;
            self.caches[seq as usize].retain(row_bytes, |p| !r(p));
        }
        Ok(())
    }

    fn kv_shift(&mut self, seq: u32, p0: i32, p1: i32, delta: i32) -> Result<(), BackendError> {
        self.check_seq(seq)?;
        let r = range(p0, p1);
        let cache = &mut self.caches[seq as usize];
        if cache.pos.iter().any(|&p| r(p) && (i64::from(p) + i64::from(delta)) < 0) {
            return Err(BackendError::invalid(format!(
                "shifting positions [{p0}, {p1}) of sequence {seq} by {delta} makes one negative"
            )));
        }
        if delta == 0 {
            return Ok(());
        }
        let row_bytes = self.model.kv_row_bytes();
        // The context's KV cells are shared by all sequences, so one sequence may use all
        // n_ctx of them: that is the per-sequence context size llama.cpp's choice between
        // long and short LongRoPE factors looks at (as in decode).
        let factors = self.model.rope_factors(self.params.n_ctx as usize);
        for c in 0..cache.pos.len() {
            if !r(cache.pos[c]) {
                continue;
            }
            cache.pos[c] = (i64::from(cache.pos[c]) + i64::from(delta)) as u32;
            for (l, layer) in cache.k.iter_mut().enumerate() {
                crate::forward::rerotate_keys(
                    &self.model,
                    l,
                    &mut layer[c * row_bytes..(c + 1) * row_bytes],
                    delta,
                    factors,
                );
            }
        }
        Ok(())
    }

    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        self.check_seq(src)?;
        self.check_seq(dst)?;
        if src == dst {
            return Ok(());
        }
        let row_bytes = self.model.kv_row_bytes();
        let r = range(p0, p1);
        let source = std::mem::take(&mut self.caches[src as usize]);
        let d = &mut self.caches[dst as usize];
        // Copied positions replace any the destination held.
        let copied: std::collections::HashSet<u32> =
            source.pos.iter().copied().filter(|&p| r(p)).collect();
        d.retain(row_bytes, |p| !copied.contains(&p));
        d.append_from(&source, row_bytes, &r);
        self.caches[src as usize] = source;
        Ok(())
    }

    fn kv_pos_max(&self, seq: u32) -> i32 {
        self.caches.get(seq as usize).map_or(-1, SeqCache::pos_max)
    }

    fn kv_clear(&mut self) -> Result<(), BackendError> {
        for c in &mut self.caches {
            c.clear();
        }
        self.out_index.clear();
        self.logits.clear();
        self.pooled.clear();
        Ok(())
    }
}

/// Each sequence's embedding from the hidden rows `h` (`d` wide, one per entry of `rows`,
/// in order), pooled as llama.cpp pools a batch: the mean of the sequence's rows, the row
/// at position 0 (CLS), or the row at its highest position (last). `None` for a sequence
/// with no row (or, CLS, none at position 0).
fn pool_sequences<'a>(
    pooling: Pooling,
    rows: impl Iterator<Item = &'a BatchEntry>,
    h: &[f32],
    d: usize,
    n_seq: usize,
) -> Vec<Option<Vec<f32>>> {
    let row_of = |r: usize| &h[r * d..(r + 1) * d];
    match pooling {
        Pooling::Cls | Pooling::Last => {
            // The chosen row per sequence and its position.
            let mut pick: Vec<Option<(usize, u32)>> = vec![None; n_seq];
            for (r, e) in rows.enumerate() {
                let slot = &mut pick[e.seq as usize];
                let better = match pooling {
                    Pooling::Cls => e.pos == 0,
                    _ => slot.is_none_or(|(_, p)| e.pos >= p),
                };
                if better {
                    *slot = Some((r, e.pos));
                }
            }
            pick.into_iter().map(|p| p.map(|(r, _)| row_of(r).to_vec())).collect()
        }
        _ => {
            let mut sums: Vec<Option<(Vec<f64>, usize)>> = vec![None; n_seq];
            for (r, e) in rows.enumerate() {
                let slot = sums[e.seq as usize].get_or_insert_with(|| (vec![0.0; d], 0));
                for (s, v) in slot.0.iter_mut().zip(row_of(r)) {
                    *s += *v as f64;
                }
                slot.1 += 1;
            }
            sums.into_iter()
                .map(|s| s.map(|(v, n)| v.into_iter().map(|x| (x / n as f64) as f32).collect()))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean, CLS and last pooling pick per sequence what llama.cpp's graph picks, with
    /// two sequences interleaved in one batch.
    #[test]
    fn pooling_takes_the_rows_llama_cpp_takes() {
        let e = |seq, pos| BatchEntry { token: 0, pos, seq, logits: false };
        // Sequence 0 at positions 0, 1, 2 and sequence 1 at 5, 6 (a later batch of it).
        let rows = [e(0, 0), e(1, 5), e(0, 1), e(1, 6), e(0, 2)];
        let h: Vec<f32> = (0..rows.len()).flat_map(|r| [r as f32, 10.0 * r as f32]).collect();
        let pooled = |p| pool_sequences(p, rows.iter(), &h, 2, 3);
        let mean = pooled(Pooling::Mean);
        assert_eq!(mean[0], Some(vec![2.0, 20.0]));
        assert_eq!(mean[1], Some(vec![2.0, 20.0]));
        assert_eq!(mean[2], None);
        let cls = pooled(Pooling::Cls);
        assert_eq!(cls[0], Some(vec![0.0, 0.0]));
        assert_eq!(cls[1], None, "sequence 1 has no token at position 0 in this batch");
        let last = pooled(Pooling::Last);
        assert_eq!(last[0], Some(vec![4.0, 40.0]));
        assert_eq!(last[1], Some(vec![3.0, 30.0]));
    }

    /// The threads kept awake take the parallel work, the result comes back, and a panic
    /// in the step ends the spinning instead of hanging the scope.
    #[test]
    fn threads_kept_awake_do_the_work_and_stop_on_panic() {
        use rayon::prelude::*;
        let pool = build_pool(2).expect("pool");
        let sum = pool.install(|| {
            with_threads_awake(|| (0..100_000u64).into_par_iter().map(|i| i * 2).sum::<u64>())
        });
        assert_eq!(sum, 99_999 * 100_000);
        let caught = pool.install(|| {
            std::panic::catch_unwind(|| with_threads_awake(|| -> u32 { panic!("step failed") }))
        });
        assert!(caught.is_err());
        // The pool still works afterwards.
        assert_eq!(pool.install(|| with_threads_awake(|| 7)), 7);
    }
}
