//! LoRA adapters (Ollama's Modelfile `ADAPTER`, llama.cpp's `--lora`): checked, loaded
//! onto their model, and applied at scale 1 to every context made from it.
//!
//! llama.cpp's adapter loader throws (and returns null) on most bad files, but reads
//! metadata with ggml accessors that abort on a value of the wrong type
//! (`gguf_get_val_str` on a number, `gguf_get_val_f32` on an integer). So an adapter goes
//! through the model files' own check ([`check_gguf`]: magic, ggml's header parse,
//! tensors within the file) and then through [`check_adapter`], which holds every key
//! llama.cpp reads to the type it reads it as, before llama.cpp sees it.

use std::ffi::CString;
use std::path::Path;

use corral_backend_api::BackendError;
use corral_gguf::reader::GgufFile;
use corral_gguf::{GgmlType, Value};
use llama_cpp_sys_2 as sys;

use crate::gguf_check::check_gguf;
use crate::logging;

/// The adapters loaded onto one model, applied to each of its contexts. llama.cpp frees
/// them with their model (`llama_model_free`); they are never freed on their own here.
#[derive(Debug, Default)]
pub(crate) struct Adapters {
    ptrs: Vec<*mut sys::llama_adapter_lora>,
}

impl Adapters {
    /// Checks and loads every adapter in `paths` onto `model`, whose architecture is
    /// `arch`.
    ///
    /// # Safety
    /// `model` must be a live model that outlives the returned value's use.
    pub(crate) unsafe fn load<'a>(
        model: *mut sys::llama_model,
        arch: &str,
        paths: impl Iterator<Item = &'a str>,
    ) -> Result<Adapters, BackendError> {
        let mut ptrs = Vec::new();
        for path in paths {
            let p = Path::new(path);
            check_gguf(p, false)
                .map_err(|e| BackendError::new(e.kind, format!("LoRA adapter: {}", e.message)))?;
            let file = GgufFile::open(p).map_err(|e| {
                BackendError::invalid(format!("LoRA adapter {path}: cannot read it: {e}"))
            })?;
            check_adapter(&file, arch)
                .map_err(|why| BackendError::invalid(format!("LoRA adapter {path}: {why}")))?;
            let cpath = CString::new(path)
                .map_err(|_| BackendError::invalid("LoRA adapter path contains a NUL byte"))?;
            logging::clear_errors();
            // SAFETY: `model` is live (the caller's contract); `cpath` is a valid C string.
            // llama.cpp catches its own exceptions and answers null.
            let ptr = unsafe { sys::llama_adapter_lora_init(model, cpath.as_ptr()) };
            if ptr.is_null() {
                let errors = logging::take_errors();
                return Err(BackendError::invalid(format!(
                    "llama.cpp could not load the LoRA adapter {path}: {}",
                    if errors.is_empty() { "no reason given".into() } else { errors.join("; ") }
                )));
            }
            ptrs.push(ptr);
        }
        Ok(Adapters { ptrs })
    }

    /// Applies every adapter at scale 1 to `ctx`.
    ///
    /// # Safety
    /// `ctx` must be a live context of the model these adapters were loaded onto.
    pub(crate) unsafe fn apply(&self, ctx: *mut sys::llama_context) -> Result<(), BackendError> {
        if self.ptrs.is_empty() {
            return Ok(());
        }
        let mut ptrs = self.ptrs.clone();
        let mut scales = vec![1.0f32; ptrs.len()];
        // SAFETY: `ctx` is live (the caller's contract); both arrays hold `ptrs.len()`
        // items, and llama.cpp copies them.
        let rc = unsafe {
            sys::llama_set_adapters_lora(ctx, ptrs.as_mut_ptr(), ptrs.len(), scales.as_mut_ptr())
        };
        if rc != 0 {
            return Err(BackendError::internal(format!(
                "llama.cpp could not apply the model's LoRA adapters (error {rc})"
            )));
        }
        Ok(())
    }
}

/// The element types llama.cpp's own converter (`convert_lora_to_gguf.py`) writes.
const ADAPTER_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

/// What llama.cpp's adapter loader reads, held to the types it reads it as; and its
/// tensors: `lora_a` / `lora_b` pairs of matrices of a type its converter writes.
pub(crate) fn check_adapter(file: &GgufFile, arch: &str) -> Result<(), String> {
    let string = |key: &str| -> Result<Option<&str>, String> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{key} is {}, not a string", v.display_short())),
        }
    };
    for (key, want, what) in [
        ("general.type", "adapter", "not an adapter"),
        ("adapter.type", "lora", "not a LoRA adapter"),
        ("general.architecture", arch, "not for this model's architecture"),
    ] {
        let got = string(key)?;
        if got != Some(want) {
            return Err(format!(
                "{what} ({key} is {}, llama.cpp needs {want:?})",
                got.map_or("missing".to_string(), |t| format!("{t:?}"))
            ));
        }
    }
    if let Some(v) = file.get("adapter.lora.alpha")
        && !matches!(v, Value::F32(_))
    {
        return Err(format!("adapter.lora.alpha is {}, not a 32-bit float", v.display_short()));
    }
    if file.tensors().is_empty() {
        return Err("it holds no tensors".into());
    }
    for t in file.tensors() {
        if !(t.name.ends_with(".lora_a") || t.name.ends_with(".lora_b")) {
            return Err(format!("tensor {:?} is neither a lora_a nor a lora_b matrix", t.name));
        }
        if t.dims.len() != 2 || t.dims.contains(&0) {
            return Err(format!("tensor {:?} is not a matrix (dimensions {:?})", t.name, t.dims));
        }
        if !ADAPTER_TYPES.contains(&t.ggml_type) {
            return Err(format!(
                "tensor {:?} is of type {:?}; adapters hold F32, F16, BF16 or Q8_0",
                t.name, t.ggml_type
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_gguf::writer::GgufBuilder;

    fn adapter(meta: &[(&str, Value)], tensors: &[(&str, Vec<u64>, GgmlType)]) -> GgufFile {
        let mut b = GgufBuilder::new();
        for (k, v) in meta {
            b.add_metadata(*k, v.clone()).unwrap();
        }
        for (name, dims, t) in tensors {
            b.add_tensor(*name, dims, *t).unwrap();
        }
        let mut w = b.begin(Vec::new()).unwrap();
        while let Some(t) = w.next_tensor().cloned() {
            let size = corral_gguf::writer::tensor_size(&t.dims, t.ggml_type).unwrap();
            w.write_tensor(&t.name, &vec![0u8; size as usize]).unwrap();
        }
        GgufFile::from_bytes(&w.finish().unwrap()).unwrap()
    }

    fn good_meta() -> Vec<(&'static str, Value)> {
        vec![
            ("general.type", Value::String("adapter".into())),
            ("general.architecture", Value::String("llama".into())),
            ("adapter.type", Value::String("lora".into())),
            ("adapter.lora.alpha", Value::F32(8.0)),
        ]
    }

    fn pair() -> Vec<(&'static str, Vec<u64>, GgmlType)> {
        vec![
            ("blk.0.attn_q.weight.lora_a", vec![64, 4], GgmlType::F32),
            ("blk.0.attn_q.weight.lora_b", vec![4, 64], GgmlType::F32),
        ]
    }

    #[test]
    fn a_lora_adapter_of_the_models_architecture_passes() {
        assert_eq!(check_adapter(&adapter(&good_meta(), &pair()), "llama"), Ok(()));
    }

    #[test]
    fn what_llama_cpp_would_abort_or_refuse_on_is_refused_with_the_reason() {
        let with = |key: &str, v: Value| {
            let mut m = good_meta();
            m.retain(|(k, _)| *k != key);
            m.push((Box::leak(key.to_string().into_boxed_str()), v));
            check_adapter(&adapter(&m, &pair()), "llama").unwrap_err()
        };
        // Types llama.cpp's accessors assert on.
        assert!(with("general.type", Value::U32(1)).contains("not a string"));
        assert!(with("adapter.type", Value::Bool(true)).contains("not a string"));
        assert!(with("adapter.lora.alpha", Value::U32(8)).contains("32-bit float"));
        // What it refuses.
        assert!(with("general.type", Value::String("model".into())).contains("not an adapter"));
        assert!(with("adapter.type", Value::String("cvec".into())).contains("not a LoRA"));
        assert!(
            check_adapter(&adapter(&good_meta(), &pair()), "gemma3")
                .unwrap_err()
                .contains("architecture")
        );
        let tensors = |t: &[(&str, Vec<u64>, GgmlType)]| {
            check_adapter(&adapter(&good_meta(), t), "llama").unwrap_err()
        };
        assert!(tensors(&[]).contains("no tensors"));
        assert!(
            tensors(&[("blk.0.attn_q.weight", vec![64, 64], GgmlType::F32)]).contains("neither")
        );
        assert!(tensors(&[("x.lora_a", vec![64, 4, 2], GgmlType::F32)]).contains("not a matrix"));
        assert!(tensors(&[("x.lora_a", vec![64, 4], GgmlType::Q4_0)]).contains("type"));
    }
}
