//! # corral-plugin-example
//!
//! A deterministic toy engine that exercises the whole corral plugin contract while
//! depending on `corral-backend-api` alone. It is what a third party copies to start a
//! backend of their own (see README.md), and what the host's tests use to check
//! loading, choice, failure handling and the conformance suite without a real engine.
//!
//! The "model" is any existing file: the vocabulary is the 256 bytes plus three special
//! tokens, and the logits at a position are a hash of everything the sequence's KV cache
//! holds up to that position. That makes every KV operation observable: a wrong removal,
//! copy or batch mix-up changes the logits.
//!
//! Options (`[backends.example]` in the host config) make it misbehave on purpose:
//! `fail_init = true` makes init fail, `hang_init = true` never returns from it,
//! `panic_on_token = N` panics in decode when token
//! N is decoded. Lines of a model file make that model crash, hang or fail ([`faults`]).

pub mod faults;

use std::collections::BTreeMap;

use corral_backend_api::{
    BackendError, BatchEntry, Capabilities, ContextParams, Device, DeviceKind, ErrorKind,
    InitContext, LoadRequest, ModelInfo, SpecialTokenIds,
    plugin::{Backend, BatchLimits, Context, Model, check_batch},
};
use serde::Deserialize;

/// First special token id; byte tokens are `0..256`.
pub const BOS: u32 = 256;
/// End of sequence.
pub const EOS: u32 = 257;
/// End of turn.
pub const EOT: u32 = 258;
/// Vocabulary size: 256 bytes + 3 specials.
pub const VOCAB: u32 = 259;
const SPECIALS: [(&str, u32); 3] = [("<s>", BOS), ("</s>", EOS), ("<|eot|>", EOT)];
/// Embedding width of the toy model.
pub const EMBD: usize = 16;

/// Options from the host config.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExampleOptions {
    /// Make init fail (to test the host's fallback).
    pub fail_init: bool,
    /// Panic inside decode when this token is decoded (to test the panic guard).
    pub panic_on_token: Option<u32>,
    /// Never return from init (to test the host's init timeout).
    pub hang_init: bool,
}

/// The toy backend.
pub struct ExampleBackend {
    options: ExampleOptions,
}

impl ExampleBackend {
    /// Plugin entry point, called by the host through `init`.
    pub fn init(init: &InitContext) -> Result<Self, BackendError> {
        let options: ExampleOptions = init.options()?;
        if options.hang_init {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        if options.fail_init {
            return Err(BackendError::internal("init failed because the option fail_init is set"));
        }
        log::info!("example backend initialised (host {})", init.host_version());
        Ok(ExampleBackend { options })
    }
}

impl Backend for ExampleBackend {
    type Model = ExampleModel;

    fn devices(&self) -> Vec<Device> {
        vec![Device {
            index: 0,
            name: "toy CPU".into(),
            kind: DeviceKind::Cpu,
            ..Device::default()
        }]
    }

    fn load_model(&self, request: &LoadRequest) -> Result<ExampleModel, BackendError> {
        let path = request.path.as_str();
        let meta = std::fs::metadata(path)
            .map_err(|e| BackendError::not_found(format!("cannot open model {path}: {e}")))?;
        if !meta.is_file() {
            return Err(BackendError::invalid(format!("model {path} is not a file")));
        }
        let triggers = faults::Triggers::of_file(path);
        if let Some(f) = triggers.on_load {
            f.fire(&format!("loading {path}"))?;
        }
        // The file's length seeds the toy weights: different files, different logits.
        Ok(ExampleModel {
            seed: meta.len() ^ 0x9e37_79b9_7f4a_7c15,
            size: meta.len(),
            panic_on_token: self.options.panic_on_token,
            triggers,
        })
    }

    fn describe(&self) -> String {
        format!("example toy engine {}", env!("CARGO_PKG_VERSION"))
    }
}

/// The toy model's chat template (a model reports its own, as GGUF files carry
/// `tokenizer.chat_template`): ChatML, with the tools offered in a turn of their own and
/// an assistant's tool calls as JSON, so the host knows the model takes tools.
const CHAT_TEMPLATE: &str = "{%- if tools %}{{ '<|im_start|>tools\\n' + (tools | tojson) + \
'<|im_end|>\\n' }}{% endif %}{%- for message in messages %}{{ '<|im_start|>' + message['role'] + \
'\\n' + (message['content'] or '') }}{%- if message['tool_calls'] %}{{ message['tool_calls'] | \
tojson }}{% endif %}{{ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}\
{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The toy model.
pub struct ExampleModel {
    seed: u64,
    size: u64,
    panic_on_token: Option<u32>,
    triggers: faults::Triggers,
}

impl Model for ExampleModel {
    type Context = ExampleContext;

    fn metadata(&self) -> ModelInfo {
        ModelInfo {
            architecture: "toy".into(),
            name: "example".into(),
            parameter_count: u64::from(VOCAB) * EMBD as u64,
            // Trained on a million positions: the toy model keeps tokens, not a KV
            // cache, and tests ask it for long windows (a served window stops at the
            // training context; the default stays 4096).
            context_length: 1 << 20,
            embedding_length: EMBD as u32,
            block_count: 0,
            quantization: "F32".into(),
            size_bytes: self.size,
            kv: vec![
                ("general.architecture".into(), "toy".into()),
                ("tokenizer.chat_template".into(), CHAT_TEMPLATE.into()),
            ],
        }
    }

    fn vocab_size(&self) -> u32 {
        // A `vocab=N` line makes the model report another size (tests of the host's bound).
        self.triggers.vocab.unwrap_or(VOCAB)
    }

    fn special_tokens(&self) -> SpecialTokenIds {
        SpecialTokenIds {
            bos: Some(BOS),
            eos: Some(EOS),
            eot: Some(EOT),
            eog: vec![EOS, EOT],
            add_bos: true,
            add_eos: false,
        }
    }

    /// Logits and (toy) pooled embeddings. No context shift (`kv_shift` keeps the
    /// default `Unsupported`) and no per-sequence split (`new_context_per_sequence` keeps
    /// the default, a shared context): claim only what is implemented.
    fn capabilities(&self) -> Capabilities {
        Capabilities::GENERATION | Capabilities::EMBEDDINGS
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let mut out = Vec::with_capacity(text.len() + 1);
        if add_special {
            out.push(BOS);
        }
        let bytes = text.as_bytes();
        let mut i = 0;
        'outer: while i < bytes.len() {
            if parse_special {
                for (s, id) in SPECIALS {
                    if bytes[i..].starts_with(s.as_bytes()) {
                        out.push(id);
                        i += s.len();
                        continue 'outer;
                    }
                }
            }
            out.push(u32::from(bytes[i]));
            i += 1;
        }
        Ok(out)
    }

    fn token_to_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        match token {
            0..=255 => Ok(vec![token as u8]),
            _ => SPECIALS
                .iter()
                .find(|(_, id)| *id == token)
                .map(|(s, _)| s.as_bytes().to_vec())
                .ok_or_else(|| {
                    BackendError::invalid(format!("token {token} is out of range (vocab {VOCAB})"))
                }),
        }
    }

    fn new_context(&self, params: &ContextParams) -> Result<ExampleContext, BackendError> {
        if params.n_ctx == 0 || params.n_seq_max == 0 || params.n_batch == 0 {
            return Err(BackendError::invalid("n_ctx, n_batch and n_seq_max must be positive"));
        }
        Ok(ExampleContext {
            params: params.clone(),
            seed: self.seed,
            panic_on_token: self.panic_on_token,
            triggers: self.triggers.clone(),
            decodes: 0,
            seqs: vec![BTreeMap::new(); params.n_seq_max as usize],
            logits: Vec::new(),
        })
    }
}

/// The toy context: each sequence's KV cache is a map position → token.
pub struct ExampleContext {
    params: ContextParams,
    seed: u64,
    panic_on_token: Option<u32>,
    triggers: faults::Triggers,
    /// Decode calls so far (for `on_decode` triggers).
    decodes: u64,
    seqs: Vec<BTreeMap<u32, u32>>,
    logits: Vec<Option<Vec<f32>>>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f32 {
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

impl ExampleContext {
    fn seq(&self, seq: u32) -> Result<usize, BackendError> {
        if seq < self.params.n_seq_max {
            Ok(seq as usize)
        } else {
            Err(BackendError::invalid(format!(
                "sequence id {seq} is out of range (n_seq_max {})",
                self.params.n_seq_max
            )))
        }
    }

    fn used(&self) -> usize {
        self.seqs.iter().map(BTreeMap::len).sum()
    }

    fn compute_logits(&self, seq: usize, pos: u32) -> Vec<f32> {
        let mut h = self.seed;
        for (&p, &t) in self.seqs[seq].range(..=pos) {
            h = splitmix(h ^ (u64::from(p) << 32 | u64::from(t)));
        }
        (0..VOCAB).map(|v| 4.0 * unit(splitmix(h ^ u64::from(v)))).collect()
    }
}

impl Context for ExampleContext {
    fn params(&self) -> ContextParams {
        self.params.clone()
    }

    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), BackendError> {
        // The range checks every engine owes the host, from corral-backend-api.
        check_batch(batch, &BatchLimits::for_context(&self.params, VOCAB))?;
        let new = batch.iter().filter(|e| !self.seqs[e.seq as usize].contains_key(&e.pos)).count();
        if self.used() + new > self.params.n_ctx as usize {
            return Err(BackendError::new(
                ErrorKind::ContextFull,
                format!("KV cache full: {} cells used of {}", self.used(), self.params.n_ctx),
            ));
        }
        if let Some(t) = self.panic_on_token
            && batch.iter().any(|e| e.token == t)
        {
            panic!("decode saw token {t} (panic_on_token is set)");
        }
        self.decodes += 1;
        let mut poisoned = false;
        if let Some((n, f)) = self.triggers.on_decode
            && n == self.decodes
        {
            poisoned = f == faults::Fault::Nan;
            f.fire(&format!("decode call {n} (on_decode trigger)"))?;
        }
        if let Some((t, f)) = self.triggers.on_token
            && batch.iter().any(|e| e.token == t)
        {
            f.fire(&format!("decode of token {t} (on_token trigger)"))?;
        }
        if let Some(cost) = self.triggers.token_cost {
            std::thread::sleep(cost.saturating_mul(batch.len().try_into().unwrap_or(u32::MAX)));
        }
        let mut logits = Vec::with_capacity(batch.len());
        for e in batch {
            self.seqs[e.seq as usize].insert(e.pos, e.token);
            logits.push(e.logits.then(|| self.compute_logits(e.seq as usize, e.pos)));
        }
        if poisoned {
            logits.iter_mut().flatten().for_each(|l| l.fill(f32::NAN));
        }
        self.logits = logits;
        Ok(())
    }

    fn logits(&self, index: u32) -> Result<&[f32], BackendError> {
        match self.logits.get(index as usize) {
            Some(Some(l)) => Ok(l),
            Some(None) => {
                Err(BackendError::invalid(format!("batch entry {index} did not ask for logits")))
            }
            None => Err(BackendError::invalid(format!(
                "batch entry {index} is out of range (last batch had {})",
                self.logits.len()
            ))),
        }
    }

    fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
        if !self.params.embeddings {
            return Err(BackendError::unsupported("context was not created with embeddings"));
        }
        let s = &self.seqs[self.seq(seq)?];
        if s.is_empty() {
            return Err(BackendError::invalid(format!("sequence {seq} is empty")));
        }
        let mut v = vec![0f32; EMBD];
        for &t in s.values() {
            for (i, x) in v.iter_mut().enumerate() {
                *x += unit(splitmix(self.seed ^ (u64::from(t) << 8 | i as u64)));
            }
        }
        let n = s.len() as f32;
        v.iter_mut().for_each(|x| *x /= n);
        Ok(v)
    }

    fn kv_remove(&mut self, seq: i32, p0: i32, p1: i32) -> Result<(), BackendError> {
        let lo = p0.max(0) as u32;
        let hi = if p1 < 0 { u32::MAX } else { p1 as u32 };
        let targets: Vec<usize> =
            if seq < 0 { (0..self.seqs.len()).collect() } else { vec![self.seq(seq as u32)?] };
        for s in targets {
            self.seqs[s].retain(|&p, _| p < lo || p >= hi);
        }
        Ok(())
    }

    fn kv_copy(&mut self, src: u32, dst: u32, p0: i32, p1: i32) -> Result<(), BackendError> {
        let (s, d) = (self.seq(src)?, self.seq(dst)?);
        let lo = p0.max(0) as u32;
        let hi = if p1 < 0 { u32::MAX } else { p1 as u32 };
        let copied: Vec<(u32, u32)> = self.seqs[s].range(lo..hi).map(|(&p, &t)| (p, t)).collect();
        self.seqs[d].extend(copied);
        Ok(())
    }

    fn kv_pos_max(&self, seq: u32) -> i32 {
        self.seqs.get(seq as usize).and_then(|s| s.keys().next_back()).map_or(-1, |&p| p as i32)
    }

    fn kv_clear(&mut self) -> Result<(), BackendError> {
        self.seqs.iter_mut().for_each(BTreeMap::clear);
        Ok(())
    }
}

corral_backend_api::export_plugin! {
    name: "example",
    variant: "cpu",
    version: env!("CARGO_PKG_VERSION"),
    init: ExampleBackend::init,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(n_seq: u32) -> ExampleContext {
        let m =
            ExampleModel { seed: 1, size: 1, panic_on_token: None, triggers: Default::default() };
        m.new_context(&ContextParams { n_seq_max: n_seq, n_ctx: 64, ..Default::default() }).unwrap()
    }

    fn e(token: u32, pos: u32, seq: u32) -> BatchEntry {
        BatchEntry { token, pos, seq, logits: true }
    }

    #[test]
    fn logits_depend_on_history() {
        let mut c = ctx(2);
        c.decode(&[e(1, 0, 0), e(2, 1, 0), e(1, 0, 1), e(3, 1, 1)]).unwrap();
        assert_eq!(c.logits(0).unwrap(), c.logits(2).unwrap());
        assert_ne!(c.logits(1).unwrap(), c.logits(3).unwrap());
    }

    #[test]
    fn declares_what_it_implements() {
        let m =
            ExampleModel { seed: 1, size: 1, panic_on_token: None, triggers: Default::default() };
        let caps = m.capabilities();
        assert_eq!(caps.names(), ["generation", "embeddings"]);
        let mut c = ctx(1);
        assert_eq!(c.kv_shift(0, 0, -1, 1).unwrap_err().kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut c = ctx(1);
        assert_eq!(c.decode(&[e(VOCAB, 0, 0)]).unwrap_err().kind, ErrorKind::InvalidInput);
        assert_eq!(c.decode(&[e(1, 64, 0)]).unwrap_err().kind, ErrorKind::InvalidInput);
        assert_eq!(c.decode(&[e(1, 0, 1)]).unwrap_err().kind, ErrorKind::InvalidInput);
    }
}
