//! LoRA adapters for generated (or any) models: what Ollama's Modelfile `ADAPTER` and
//! llama.cpp's `--lora` take, in the layout llama.cpp's `convert_lora_to_gguf.py` writes
//! (`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for each
//! adapted weight `W` of shape `[in, out]` a pair `W.lora_a` `[in, rank]` and `W.lora_b`
//! `[rank, out]`, so that the adapted weight is `W + alpha/rank · B·A`).

use std::path::Path;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::error::GgufError;
use crate::reader::GgufFile;
use crate::types::{GgmlType, Value};
use crate::writer::GgufBuilder;

/// What adapter to write.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterOptions {
    /// The rank of each `B·A` update.
    pub rank: u64,
    /// `adapter.lora.alpha`: the update is scaled by `alpha / rank`.
    pub alpha: f32,
    /// The weights adapted: suffixes of the base model's tensor names
    /// (`attn_q.weight` adapts every `blk.N.attn_q.weight`).
    pub targets: Vec<String>,
    /// Random seed.
    pub seed: u64,
    /// Every `B` zero: an adapter that changes nothing (the adapted model computes
    /// exactly what its base does), for tests.
    pub zero: bool,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            rank: 4,
            alpha: 4.0,
            targets: vec!["attn_q.weight".into(), "attn_v.weight".into(), "ffn_down.weight".into()],
            seed: 7,
            zero: false,
        }
    }
}

/// Writes a LoRA adapter for the model file `base` to `out`: the base's architecture, a
/// pair of F32 matrices for every 2-D weight whose name ends with one of the targets.
/// `A` is normal with standard deviation `1/sqrt(in)`, `B` normal with deviation 1 (or
/// zero), so a rank-4 update moves each output by about the size of the input's norm.
/// Returns the number of weights adapted.
pub fn generate_adapter(
    base: &Path,
    out: &Path,
    opts: &AdapterOptions,
) -> Result<usize, GgufError> {
    let file = GgufFile::open(base)?;
    let arch = file
        .architecture()
        .ok_or_else(|| {
            GgufError::Writer(format!("{} has no general.architecture", base.display()))
        })?
        .to_string();
    if opts.rank == 0 {
        return Err(GgufError::Writer("an adapter's rank must be at least 1".into()));
    }
    let adapted: Vec<(String, u64, u64)> = file
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2 && opts.targets.iter().any(|s| t.name.ends_with(s.as_str())))
        .map(|t| (t.name.clone(), t.dims[0], t.dims[1]))
        .collect();
    if adapted.is_empty() {
        return Err(GgufError::Writer(format!(
            "{} has no 2-D weight named like {:?}",
            base.display(),
            opts.targets
        )));
    }
    let mut b = GgufBuilder::new();
    b.add_metadata("general.architecture", Value::String(arch))?;
    b.add_metadata("general.type", Value::String("adapter".into()))?;
    b.add_metadata("general.name", Value::String("corral-random-lora".into()))?;
    b.add_metadata("adapter.type", Value::String("lora".into()))?;
    b.add_metadata("adapter.lora.alpha", Value::F32(opts.alpha))?;
    for (name, n_in, n_out) in &adapted {
        b.add_tensor(format!("{name}.lora_a"), &[*n_in, opts.rank], GgmlType::F32)?;
        b.add_tensor(format!("{name}.lora_b"), &[opts.rank, *n_out], GgmlType::F32)?;
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(opts.seed);
    let mut normal = |n: u64, scale: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                let v: f32 = StandardNormal.sample(&mut rng);
                (v * scale).to_le_bytes()
            })
            .collect()
    };
    let mut bytes = Vec::new();
    let mut w = b.begin(&mut bytes)?;
    for (name, n_in, n_out) in &adapted {
        w.write_tensor(
            &format!("{name}.lora_a"),
            &normal(n_in * opts.rank, 1.0 / (*n_in as f32).sqrt()),
        )?;
        let b_scale = if opts.zero { 0.0 } else { 1.0 };
        w.write_tensor(&format!("{name}.lora_b"), &normal(opts.rank * n_out, b_scale))?;
    }
    w.finish()?;
    std::fs::write(out, &bytes)
        .map_err(|e| GgufError::io(format!("writing {}", out.display()), e))?;
    Ok(adapted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenerateOptions, generate_model};

    #[test]
    fn an_adapter_pairs_every_target_weight_in_llama_cpps_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (base, out) = (dir.path().join("m.gguf"), dir.path().join("lora.gguf"));
        generate_model(&base, &GenerateOptions::default()).unwrap();
        let n = generate_adapter(&base, &out, &AdapterOptions::default()).unwrap();
        let model = GgufFile::open(&base).unwrap();
        let lora = GgufFile::open(&out).unwrap();
        assert_eq!(lora.get_str("general.type"), Some("adapter"));
        assert_eq!(lora.get_str("adapter.type"), Some("lora"));
        assert_eq!(lora.architecture(), model.architecture());
        assert_eq!(lora.tensors().len(), 2 * n);
        let layers = model.tensors().iter().filter(|t| t.name.ends_with("attn_q.weight")).count();
        assert_eq!(n, 3 * layers);
        for t in model.tensors().iter().filter(|t| t.name.ends_with("attn_v.weight")) {
            let a = lora.tensors().iter().find(|x| x.name == format!("{}.lora_a", t.name)).unwrap();
            let b = lora.tensors().iter().find(|x| x.name == format!("{}.lora_b", t.name)).unwrap();
            assert_eq!((a.dims[0], a.dims[1], b.dims[0], b.dims[1]), (t.dims[0], 4, 4, t.dims[1]));
        }
        let none = AdapterOptions { targets: vec!["nothing.weight".into()], ..Default::default() };
        assert!(generate_adapter(&base, &out, &none).is_err());
    }
}
