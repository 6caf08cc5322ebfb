//! Contexts: a KV cache per sequence behind the backend-api batch interface.
//!
//! Decoder: each sequence keeps its own past keys and values (`[1, kv_heads, cells,
//! head_dim]` per layer, float32) and the position of every cell. A batch runs one
//! sequence at a time (the graphs have batch 1 semantics here): its new tokens, the
//! sequence's past, an all-ones attention mask and the entries' positions go in; the
//! logits of the entries that asked for them and the `present` tensors (the new past) come
//! out. `kv_remove` and `kv_copy` slice cells out of and into these tensors.
//!
//! Encoder: a sequence's "cache" is its tokens; every decode runs the encoder over the
//! sequence's whole token list and pools the result, so prompts split over several
//! batches give the same vector as one batch.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use corral_backend_api::{
    BackendError, BatchEntry, ContextParams, ErrorKind,
    plugin::{BatchLimits, check_batch},
};
use half::f16;
use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorRef};

use crate::model::{DecoderIo, EncoderIo, Kind, Pooling, Shared};

/// One sequence's cache.
#[derive(Debug, Clone, Default)]
struct Seq {
    /// Position of each cell, in cache order.
    pos: Vec<u32>,
    /// Token of each cell (encoders re-run them; decoders keep them for inspection).
    tokens: Vec<u32>,
    /// Per layer: keys `[kv_heads, cells, head_dim]` (decoders only).
    k: Vec<Vec<f32>>,
    /// Per layer: values, same layout.
    v: Vec<Vec<f32>>,
}

impl Seq {
    fn len(&self) -> usize {
        self.pos.len()
    }

    /// Keeps the cells for which `keep` is true.
    fn retain(&mut self, keep: &[bool], heads: usize, hd: usize) {
        let n = self.len();
        if keep.iter().all(|&k| k) {
            return;
        }
        let kept = keep.iter().filter(|&&k| k).count();
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut out = Vec::with_capacity(heads * kept * hd);
            for h in 0..heads {
                for (c, &k) in keep.iter().enumerate() {
                    if k {
                        let at = (h * n + c) * hd;
                        out.extend_from_slice(&layer[at..at + hd]);
                    }
                }
            }
            *layer = out;
        }
        let mut i = 0;
        self.pos.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        let mut i = 0;
        self.tokens.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    /// Appends the cells of `src` for which `take` is true.
    fn append_from(&mut self, src: &Seq, take: &[bool], heads: usize, hd: usize) {
        let n_dst = self.len();
        let n_src = src.len();
        let added = take.iter().filter(|&&t| t).count();
        if added == 0 {
            return;
        }
        if self.k.len() != src.k.len() {
            self.k = vec![Vec::new(); src.k.len()];
            self.v = vec![Vec::new(); src.v.len()];
        }
        let merge = |dst: &Vec<f32>, s: &Vec<f32>| {
            let mut out = Vec::with_capacity(heads * (n_dst + added) * hd);
            for h in 0..heads {
                out.extend_from_slice(&dst[h * n_dst * hd..(h + 1) * n_dst * hd]);
                for (c, &t) in take.iter().enumerate() {
                    if t {
                        let at = (h * n_src + c) * hd;
                        out.extend_from_slice(&s[at..at + hd]);
                    }
                }
            }
            out
        };
        for l in 0..src.k.len() {
            self.k[l] = merge(&self.k[l], &src.k[l]);
            self.v[l] = merge(&self.v[l], &src.v[l]);
        }
        for (c, &t) in take.iter().enumerate() {
            if t {
                self.pos.push(src.pos[c]);
                self.tokens.push(src.tokens[c]);
            }
        }
    }
}

/// A context over an ONNX model.
pub struct OnnxContext {
    shared: Arc<Shared>,
    params: ContextParams,
    seqs: Vec<Seq>,
    /// Logits of the last decode, by batch index (only entries that asked).
    logits: Vec<Option<Vec<f32>>>,
    /// Pooled embeddings of the last decode, by sequence.
    embeds: Vec<Option<Vec<f32>>>,
}

fn invalid(msg: impl Into<String>) -> BackendError {
    BackendError::invalid(msg)
}

fn ort_err(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::internal(format!("ONNX Runtime failed {what}: {e}"))
}

impl OnnxContext {
    /// Creates a context; decoders without a hidden-state output refuse embeddings.
    pub fn new(shared: Arc<Shared>, params: &ContextParams) -> Result<OnnxContext, BackendError> {
        let mut params = params.clone();
        if params.n_seq_max == 0 {
            return Err(invalid("n_seq_max must be at least 1"));
        }
        if params.n_seq_max > 4096 {
            return Err(invalid(format!("n_seq_max {} is more than 4096", params.n_seq_max)));
        }
        if params.n_ctx == 0 {
            params.n_ctx =
                if shared.meta.context_length > 0 { shared.meta.context_length } else { 2048 };
        }
        if params.n_batch == 0 {
            params.n_batch = params.n_ctx;
        }
        if params.embeddings
            && let Kind::Decoder(d) = &shared.kind
            && d.hidden.is_none()
        {
            return Err(BackendError::unsupported(
                "this decoder graph has no hidden-state output (last_hidden_state), so it \
                 cannot compute embeddings",
            ));
        }
        let n = params.n_seq_max as usize;
        Ok(OnnxContext {
            shared,
            params,
            seqs: vec![Seq::default(); n],
            logits: Vec::new(),
            embeds: vec![None; n],
        })
    }

    fn validate(&self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        check_batch(batch, &BatchLimits::for_context(&self.params, self.shared.vocab))
    }

    fn decode_decoder(
        &mut self,
        io: &DecoderIo,
        groups: &BTreeMap<u32, Vec<usize>>,
        batch: &[BatchEntry],
    ) -> Result<(), BackendError> {
        let shared = self.shared.clone();
        let (heads, hd) = (io.n_kv_heads, io.head_dim);
        let vocab = shared.vocab as usize;
        // Check every sequence's room first, so a refused batch changes nothing.
        for (&s, idx) in groups {
            let past = self.seqs[s as usize].len();
            if past + idx.len() > self.params.n_ctx as usize {
                return Err(BackendError::new(
                    ErrorKind::ContextFull,
                    format!(
                        "sequence {s} holds {past} tokens; {} more exceed n_ctx {}",
                        idx.len(),
                        self.params.n_ctx
                    ),
                ));
            }
        }
        for (&s, idx) in groups {
            let seq = &self.seqs[s as usize];
            let past = seq.len();
            let n = idx.len();
            let ids: Vec<i64> = idx.iter().map(|&i| i64::from(batch[i].token)).collect();
            let positions: Vec<i64> = idx.iter().map(|&i| i64::from(batch[i].pos)).collect();
            let mask = vec![1i64; past + n];
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
            let t = |e| ort_err("creating an input tensor", e);
            inputs.push((
                Cow::from(io.input_ids.as_str()),
                TensorRef::from_array_view(([1usize, n], &ids[..])).map_err(t)?.into(),
            ));
            if let Some(m) = &io.attention_mask {
                inputs.push((
                    Cow::from(m.as_str()),
                    TensorRef::from_array_view(([1usize, past + n], &mask[..])).map_err(t)?.into(),
                ));
            }
            if let Some(p) = &io.position_ids {
                inputs.push((
                    Cow::from(p.as_str()),
                    TensorRef::from_array_view(([1usize, n], &positions[..])).map_err(t)?.into(),
                ));
            }
            let empty: Vec<f32> = Vec::new();
            // A float16 cache goes in converted (the cache itself stays float32 here).
            let half_cache: Vec<(Vec<f16>, Vec<f16>)> = if io.kv_f16 {
                (0..io.past_key.len())
                    .map(|l| {
                        let conv = |x: Option<&Vec<f32>>| {
                            x.unwrap_or(&empty).iter().map(|&v| f16::from_f32(v)).collect()
                        };
                        (conv(seq.k.get(l)), conv(seq.v.get(l)))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let no_half = (Vec::new(), Vec::new());
            for (l, (pk, pv)) in io.past_key.iter().zip(&io.past_value).enumerate() {
                let shape = [1usize, heads, past, hd];
                let (k, v): (SessionInputValue<'_>, SessionInputValue<'_>) = if io.kv_f16 {
                    let (hk, hv) = half_cache.get(l).unwrap_or(&no_half);
                    (
                        TensorRef::from_array_view((shape, &hk[..])).map_err(t)?.into(),
                        TensorRef::from_array_view((shape, &hv[..])).map_err(t)?.into(),
                    )
                } else {
                    let k = seq.k.get(l).unwrap_or(&empty);
                    let v = seq.v.get(l).unwrap_or(&empty);
                    (
                        TensorRef::from_array_view((shape, &k[..])).map_err(t)?.into(),
                        TensorRef::from_array_view((shape, &v[..])).map_err(t)?.into(),
                    )
                };
                inputs.push((Cow::from(pk.as_str()), k));
                inputs.push((Cow::from(pv.as_str()), v));
            }
            let mut session =
                shared.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let outputs = session.run(inputs).map_err(|e| ort_err("running the decoder", e))?;
            let (shape, logits) = floats(&outputs[io.logits.as_str()], "the logits")?;
            // Rows of `vocab` logits, as the run's own shape says (a graph may compute
            // another shape than it declares, and genai_config's vocab_size may be wrong):
            // one per position, or one for the last position only (some exports).
            let rows = logit_rows(&shape, logits.len(), vocab).ok_or_else(|| {
                BackendError::internal(format!(
                    "the logits output has shape {shape:?}, not [.., {n}, {vocab}] or \
                     [.., 1, {vocab}] (vocab_size {vocab})"
                ))
            })?;
            if rows != n && rows != 1 {
                return Err(BackendError::internal(format!(
                    "the logits output has {rows} rows for a batch of {n} positions"
                )));
            }
            for (j, &i) in idx.iter().enumerate() {
                if batch[i].logits {
                    let row = if rows == n {
                        j
                    } else if j + 1 == n {
                        0
                    } else {
                        return Err(BackendError::unsupported(
                            "this graph returns logits for the last token only; request logits \
                             for the last entry of each sequence only",
                        ));
                    };
                    self.logits[i] = Some(logits[row * vocab..(row + 1) * vocab].to_vec());
                }
            }
            if self.params.embeddings
                && let Some(h) = &io.hidden
            {
                let (shape, hidden) = floats(&outputs[h.as_str()], "the hidden state")?;
                let width = shape.last().copied().unwrap_or(0).max(0) as usize;
                if width == 0 || hidden.len() < n * width {
                    return Err(BackendError::internal("hidden-state output has an odd shape"));
                }
                self.embeds[s as usize] = Some(pool(&hidden[..n * width], n, width, Pooling::Mean));
            }
            let mut new_k = Vec::with_capacity(io.past_key.len());
            let mut new_v = Vec::with_capacity(io.past_key.len());
            for l in 0..io.past_key.len() {
                for (name, dst) in
                    [(&io.present_key[l], &mut new_k), (&io.present_value[l], &mut new_v)]
                {
                    let (shape, data) = floats(&outputs[name.as_str()], name)?;
                    // The whole shape, not the count: cells are cut and copied per head.
                    let expect = [1, heads, past + n, hd].map(|d| d as i64);
                    if shape[..] != expect[..] {
                        return Err(BackendError::internal(format!(
                            "{name} has shape {shape:?}, expected [1, {heads}, {}, {hd}]",
                            past + n
                        )));
                    }
                    dst.push(data.into_owned());
                }
            }
            drop(outputs);
            drop(session);
            let seq = &mut self.seqs[s as usize];
            seq.k = new_k;
            seq.v = new_v;
            seq.pos.extend(idx.iter().map(|&i| batch[i].pos));
            seq.tokens.extend(idx.iter().map(|&i| batch[i].token));
        }
        Ok(())
    }

    fn decode_encoder(
        &mut self,
        io: &EncoderIo,
        groups: &BTreeMap<u32, Vec<usize>>,
        batch: &[BatchEntry],
    ) -> Result<(), BackendError> {
        if !self.params.embeddings {
            return Err(BackendError::unsupported(
                "this is an embedding model (an encoder): it computes embeddings, not logits; \
                 use it for embeddings (/api/embed, /v1/embeddings)",
            ));
        }
        let shared = self.shared.clone();
        for (&s, idx) in groups {
            // Tokens in position order: the cached ones plus the new ones.
            let seq = &self.seqs[s as usize];
            let mut cells: Vec<(u32, u32)> =
                seq.pos.iter().copied().zip(seq.tokens.iter().copied()).collect();
            cells.extend(idx.iter().map(|&i| (batch[i].pos, batch[i].token)));
            cells.sort_by_key(|c| c.0);
            let n = cells.len();
            if n > io.max_len {
                return Err(BackendError::new(
                    ErrorKind::ContextFull,
                    format!(
                        "sequence {s} has {n} tokens; this encoder takes at most {}",
                        io.max_len
                    ),
                ));
            }
            let ids: Vec<i64> = cells.iter().map(|c| i64::from(c.1)).collect();
            let ones = vec![1i64; n];
            let zeros = vec![0i64; n];
            let t = |e| ort_err("creating an input tensor", e);
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![(
                Cow::from(io.input_ids.as_str()),
                TensorRef::from_array_view(([1usize, n], &ids[..])).map_err(t)?.into(),
            )];
            if let Some(m) = &io.attention_mask {
                inputs.push((
                    Cow::from(m.as_str()),
                    TensorRef::from_array_view(([1usize, n], &ones[..])).map_err(t)?.into(),
                ));
            }
            if let Some(tt) = &io.token_type_ids {
                inputs.push((
                    Cow::from(tt.as_str()),
                    TensorRef::from_array_view(([1usize, n], &zeros[..])).map_err(t)?.into(),
                ));
            }
            let mut session =
                shared.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let outputs = session.run(inputs).map_err(|e| ort_err("running the encoder", e))?;
            let (shape, h) = outputs[io.output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| ort_err("reading the encoder output", e))?;
            let width = shape.last().copied().unwrap_or(0).max(0) as usize;
            let mut v = if shape.len() == 2 && shape[0] == 1 {
                // Already pooled ([1, H]).
                h.to_vec()
            } else {
                if width == 0 || h.len() != n * width {
                    return Err(BackendError::internal(format!(
                        "encoder output {} has shape {shape:?}, expected [1, {n}, H]",
                        io.output
                    )));
                }
                pool(h, n, width, io.pooling)
            };
            drop(outputs);
            drop(session);
            if io.normalize {
                normalize(&mut v);
            }
            self.embeds[s as usize] = Some(v);
            let seq = &mut self.seqs[s as usize];
            seq.pos = cells.iter().map(|c| c.0).collect();
            seq.tokens = cells.iter().map(|c| c.1).collect();
        }
        Ok(())
    }

    fn seq_range(&self, seq: i32) -> Result<std::ops::Range<usize>, BackendError> {
        if seq < 0 {
            Ok(0..self.seqs.len())
        } else if (seq as u32) < self.params.n_seq_max {
            Ok(seq as usize..seq as usize + 1)
        } else {
            Err(invalid(format!(
                "sequence {seq} is out of range (n_seq_max {})",
                self.params.n_seq_max
            )))
        }
    }

    fn kv_dims(&self) -> (usize, usize) {
        match &self.shared.kind {
            Kind::Decoder(d) => (d.n_kv_heads, d.head_dim),
            Kind::Encoder(_) => (0, 0),
        }
    }
}

/// A float tensor's shape and values as float32 (float16 outputs are converted).
fn floats<'a>(value: &'a DynValue, what: &str) -> Result<(Vec<i64>, Cow<'a, [f32]>), BackendError> {
    if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
        return Ok((shape.iter().copied().collect(), Cow::Borrowed(data)));
    }
    let (shape, data) = value
        .try_extract_tensor::<f16>()
        .map_err(|e| ort_err(&format!("reading {what} (float32 or float16 expected)"), e))?;
    Ok((shape.iter().copied().collect(), Cow::Owned(data.iter().map(|x| x.to_f32()).collect())))
}

fn in_range(p: u32, p0: i32, p1: i32) -> bool {
    let lo = p0.max(0) as u32;
    p >= lo && (p1 < 0 || p < p1 as u32)
}

/// Pools `n` rows of `width` values.
pub fn pool(h: &[f32], n: usize, width: usize, how: Pooling) -> Vec<f32> {
    let mut out = vec![0f32; width];
    match how {
        Pooling::Cls => out.copy_from_slice(&h[..width]),
        Pooling::Max => {
            out.copy_from_slice(&h[..width]);
            for r in 1..n {
                for (o, x) in out.iter_mut().zip(&h[r * width..(r + 1) * width]) {
                    *o = o.max(*x);
                }
            }
        }
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let mut acc = vec![0f64; width];
            for r in 0..n {
                for (a, x) in acc.iter_mut().zip(&h[r * width..(r + 1) * width]) {
                    *a += f64::from(*x);
                }
            }
            let div = if how == Pooling::Mean { n as f64 } else { (n as f64).sqrt() };
            for (o, a) in out.iter_mut().zip(acc) {
                *o = (a / div.max(1.0)) as f32;
            }
        }
    }
    out
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if n > 1e-12 {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) / n) as f32);
    }
}

impl corral_backend_api::plugin::Context for OnnxContext {
    fn params(&self) -> ContextParams {
        self.params.clone()
    }

    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        self.validate(batch)?;
        self.logits = vec![None; batch.len()];
        self.embeds.iter_mut().for_each(|e| *e = None);
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, e) in batch.iter().enumerate() {
            groups.entry(e.seq).or_default().push(i);
        }
        let shared = self.shared.clone();
        match &shared.kind {
            Kind::Decoder(io) => self.decode_decoder(io, &groups, batch),
            Kind::Encoder(io) => self.decode_encoder(io, &groups, batch),
        }
    }

    fn logits(&self, index: u32) -> Result<&[f32], BackendError> {
        match self.logits.get(index as usize) {
            Some(Some(l)) => Ok(l),
            Some(None) => Err(invalid(format!(
                "batch entry {index} did not ask for logits (set logits = true)"
            ))),
            None => Err(invalid(format!(
                "batch entry {index} does not exist (the last batch had {} entries)",
                self.logits.len()
            ))),
        }
    }

    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        if !self.params.embeddings {
            return Err(invalid("this context was not created with embeddings = true"));
        }
        match self.embeds.get(seq as usize) {
            Some(Some(e)) => Ok(e.clone()),
            Some(None) => Err(invalid(format!("the last batch did not decode sequence {seq}"))),
            None => Err(invalid(format!(
                "sequence {seq} is out of range (n_seq_max {})",
                self.params.n_seq_max
            ))),
        }
    }

    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        let (heads, hd) = self.kv_dims();
        for s in self.seq_range(seq)? {
            let keep: Vec<bool> = self.seqs[s].pos.iter().map(|&p| !in_range(p, p0, p1)).collect();
            self.seqs[s].retain(&keep, heads, hd);
        }
        Ok(())
    }

    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        let n = self.params.n_seq_max;
        if src >= n || dst >= n {
            return Err(invalid(format!(
                "sequence {} is out of range (n_seq_max {n})",
                src.max(dst)
            )));
        }
        if src == dst {
            return Ok(());
        }
        let (heads, hd) = self.kv_dims();
        // The destination's cells in the range are replaced by the source's.
        let keep: Vec<bool> =
            self.seqs[dst as usize].pos.iter().map(|&p| !in_range(p, p0, p1)).collect();
        self.seqs[dst as usize].retain(&keep, heads, hd);
        let source = self.seqs[src as usize].clone();
        let take: Vec<bool> = source.pos.iter().map(|&p| in_range(p, p0, p1)).collect();
        self.seqs[dst as usize].append_from(&source, &take, heads, hd);
        Ok(())
    }

    fn kv_pos_max(&self, seq: u32) -> i32 {
        self.seqs.get(seq as usize).and_then(|s| s.pos.iter().max()).map_or(-1, |&p| p as i32)
    }

    fn kv_clear(&mut self) -> Result<(), BackendError> {
        self.seqs.iter_mut().for_each(|s| *s = Seq::default());
        Ok(())
    }
}

/// How many rows of `vocab` logits an output of `shape` holding `len` values has: its
/// last dimension must be `vocab` and the others must multiply to the rest.
fn logit_rows(shape: &[i64], len: usize, vocab: usize) -> Option<usize> {
    let (&last, rest) = shape.split_last()?;
    if vocab == 0 || usize::try_from(last).ok()? != vocab {
        return None;
    }
    let rows = rest.iter().try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))?;
    (rows.checked_mul(vocab)? == len).then_some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logit rows come from the run's shape: per position or last only, and a last
    /// dimension other than the vocabulary (a wrong vocab_size, a transposed layout) or a
    /// shape that does not match the data is refused instead of read at the wrong stride.
    #[test]
    fn logit_rows_follow_the_output_shape() {
        assert_eq!(logit_rows(&[1, 5, 100], 500, 100), Some(5));
        assert_eq!(logit_rows(&[1, 1, 100], 100, 100), Some(1));
        assert_eq!(logit_rows(&[1, 5, 104], 520, 100), None);
        assert_eq!(logit_rows(&[1, 100, 5], 500, 100), None);
        assert_eq!(logit_rows(&[1, 5, 100], 400, 100), None);
        assert_eq!(logit_rows(&[-1, 5, 100], 500, 100), None);
        assert_eq!(logit_rows(&[i64::MAX, i64::MAX, 100], 500, 100), None);
        assert_eq!(logit_rows(&[], 0, 100), None);
        assert_eq!(logit_rows(&[1, 0], 0, 0), None);
    }

    fn seq(cells: &[u32], heads: usize, hd: usize) -> Seq {
        let n = cells.len();
        let layer: Vec<f32> = (0..heads * n * hd).map(|i| i as f32).collect();
        Seq { pos: cells.to_vec(), tokens: cells.to_vec(), k: vec![layer.clone()], v: vec![layer] }
    }

    #[test]
    fn retain_slices_every_head() {
        let mut s = seq(&[0, 1, 2], 2, 2);
        // layout [h][cell][d]: head 0 = 0..6, head 1 = 6..12
        s.retain(&[true, false, true], 2, 2);
        assert_eq!(s.pos, vec![0, 2]);
        assert_eq!(s.k[0], vec![0., 1., 4., 5., 6., 7., 10., 11.]);
    }

    #[test]
    fn append_merges_per_head() {
        let src = seq(&[0, 1], 2, 1); // head0: [0,1], head1: [2,3]
        let mut dst = Seq::default();
        dst.append_from(&src, &[true, false], 2, 1);
        assert_eq!(dst.pos, vec![0]);
        assert_eq!(dst.k[0], vec![0., 2.]);
        dst.append_from(&src, &[false, true], 2, 1);
        assert_eq!(dst.k[0], vec![0., 1., 2., 3.]);
    }

    #[test]
    fn pooling_modes() {
        let h = [1.0, 2.0, 3.0, 6.0];
        assert_eq!(pool(&h, 2, 2, Pooling::Mean), vec![2.0, 4.0]);
        assert_eq!(pool(&h, 2, 2, Pooling::Cls), vec![1.0, 2.0]);
        assert_eq!(pool(&h, 2, 2, Pooling::Max), vec![3.0, 6.0]);
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn ranges() {
        assert!(in_range(5, -1, -1));
        assert!(in_range(5, 5, 6));
        assert!(!in_range(6, 5, 6));
        assert!(!in_range(4, 5, -1));
    }
}
