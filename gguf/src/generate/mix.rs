//! Which ggml type each tensor is stored in: llama.cpp's `llama_tensor_get_type`
//! (`src/llama-quant.cpp`) for the weight types the generator offers, so a generated
//! `Q4_K_M` file has the types `llama-quantize in.gguf out.gguf Q4_K_M` gives the F32
//! file, and the plain K types those of `llama-quantize --pure ... Q4_K_S` / `Q5_K_S`
//! (or `Q6_K`).
//!
//! Only what the generator's architectures can reach is ported: no experts, no
//! importance matrix, no user overrides; Falcon's special cases never apply.

use crate::types::GgmlType;

use super::{Arch, WeightType};

/// A tensor as the type choice sees it: its name and dimensions (`dims[0]` the row).
#[derive(Debug, Clone, Copy)]
pub(super) struct TensorRef<'a> {
    pub(super) name: &'a str,
    pub(super) dims: &'a [u64],
}

/// llama.cpp's `tensor_category`, the part of it these architectures have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttentionQkv,
    AttentionV,
    AttentionK,
    AttentionQ,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

/// `tensor_get_category`: exact names for the embeddings and the output, substrings
/// for the rest, in llama.cpp's order.
fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" {
        return Category::TokenEmbd;
    }
    let table = [
        ("attn_qkv.weight", Category::AttentionQkv),
        ("attn_v.weight", Category::AttentionV),
        ("attn_k.weight", Category::AttentionK),
        ("attn_q.weight", Category::AttentionQ),
        ("attn_output.weight", Category::AttentionOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    table.iter().find(|(s, _)| name.contains(s)).map_or(Category::Other, |&(_, c)| c)
}

/// `category_is_attn_v`: the fused QKV counts as a V tensor (and is treated as one).
fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttentionV | Category::AttentionQkv)
}

/// `tensor_allows_quantization` for these tensors: 2-D weights except norms.
fn allows_quantization(t: &TensorRef<'_>) -> bool {
    t.dims.len() >= 2 && t.name.ends_with("weight") && !t.name.contains("_norm.weight")
}

/// `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// `tensor_type_fallback`: a K type whose block does not divide the row becomes a
/// 32-block type, and a row that is not whole 32-blocks either becomes F16.
pub(super) fn fallback(ty: GgmlType, row: u64) -> GgmlType {
    if row.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let to = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        other => other,
    };
    if row.is_multiple_of(to.block_size()) { to } else { GgmlType::F16 }
}

/// The model facts the choice depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModelFacts {
    pub(super) arch: Arch,
    pub(super) n_layer: u32,
    pub(super) n_head: u32,
    pub(super) n_head_kv: u32,
}

impl ModelFacts {
    /// llama.cpp's `LLM_TYPE_70B` (it bumps attn_v one K type up): llama with 80 layers
    /// and grouped-query attention, or qwen2 with 80 layers.
    fn is_70b(&self) -> bool {
        match self.arch {
            Arch::Llama | Arch::Llama3 => self.n_layer == 80 && self.n_head != self.n_head_kv,
            Arch::Qwen2 => self.n_layer == 80,
            _ => false,
        }
    }
}

/// The storage type of every tensor, in order.
pub(super) fn choose_types(
    facts: ModelFacts,
    wt: WeightType,
    tensors: &[TensorRef<'_>],
) -> Vec<GgmlType> {
    match wt {
        WeightType::Q4_K_M => q4_k_m(facts, tensors),
        WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K => tensors
            .iter()
            .map(|t| {
                if allows_quantization(t) {
                    fallback(wt.ggml_type(), t.dims[0])
                } else {
                    GgmlType::F32
                }
            })
            .collect(),
        // The generator's own rule for these, older than the K types: every 2-D tensor
        // in the type, F16 (F32 for F32) where the rows are not whole blocks.
        WeightType::F32 | WeightType::F16 | WeightType::Q8_0 | WeightType::Q4_0 => tensors
            .iter()
            .map(|t| {
                let base = wt.ggml_type();
                if t.dims.len() < 2 {
                    GgmlType::F32
                } else if base.row_bytes(t.dims[0]).is_some() {
                    base
                } else if wt == WeightType::F32 {
                    GgmlType::F32
                } else {
                    GgmlType::F16
                }
            })
            .collect(),
    }
}

/// `llama_tensor_get_type` for `LLAMA_FTYPE_MOSTLY_Q4_K_M` without an importance
/// matrix: Q4_K by default; attn_v (and a fused QKV) and ffn_down of the
/// `use_more_bits` layers Q6_K; the output (and the token embeddings when they are the
/// output) Q6_K, or Q8_0 when the row is not whole 256-blocks; then the fallbacks.
fn q4_k_m(facts: ModelFacts, tensors: &[TensorRef<'_>]) -> Vec<GgmlType> {
    let cats: Vec<Category> = tensors.iter().map(|t| category(t.name)).collect();
    let n_attention_wv = cats.iter().filter(|&&c| is_attn_v(c)).count() as i64;
    let has_tied_embeddings = !cats.contains(&Category::Output);
    // Without experts llama.cpp counts layers by the order of the tensors.
    let n_ffn_down = i64::from(facts.n_layer);
    let (mut i_attention_wv, mut i_ffn_down) = (0i64, 0i64);

    tensors
        .iter()
        .zip(&cats)
        .map(|(t, &cat)| {
            if !allows_quantization(t) {
                return GgmlType::F32;
            }
            let row = t.dims[0];
            let mut ty = GgmlType::Q4_K;
            if cat == Category::Output || (has_tied_embeddings && cat == Category::TokenEmbd) {
                ty = if row.is_multiple_of(ty.block_size()) {
                    GgmlType::Q6_K
                } else {
                    GgmlType::Q8_0
                };
            } else if cat == Category::TokenEmbd {
                // Q4_K_M leaves untied token embeddings at the default type.
            } else if is_attn_v(cat) {
                if use_more_bits(i_attention_wv, n_attention_wv) {
                    ty = GgmlType::Q6_K;
                }
                if facts.is_70b() && ty == GgmlType::Q4_K {
                    ty = GgmlType::Q5_K;
                }
                i_attention_wv += 1;
            } else if cat == Category::FfnDown {
                if use_more_bits(i_ffn_down, n_ffn_down) {
                    ty = GgmlType::Q6_K;
                }
                i_ffn_down += 1;
            }
            fallback(ty, row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(arch: Arch, n_layer: u32) -> ModelFacts {
        ModelFacts { arch, n_layer, n_head: 32, n_head_kv: 8 }
    }

    #[test]
    fn more_bits_layers() {
        // llama.cpp's pattern for 32 layers: 0..4, 28..32, and 6, 9, 12, ... between.
        let picked: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(picked, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        // Two layers: n/8 is 0, so only the last.
        let picked: Vec<i64> = (0..2).filter(|&i| use_more_bits(i, 2)).collect();
        assert_eq!(picked, vec![1]);
    }

    #[test]
    fn fallbacks() {
        assert_eq!(fallback(GgmlType::Q4_K, 512), GgmlType::Q4_K);
        assert_eq!(fallback(GgmlType::Q4_K, 640), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q5_K, 64), GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q6_K, 96), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q6_K, 40), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q8_0, 40), GgmlType::F16);
    }

    #[test]
    fn q4_k_m_like_gemma_3_270m() {
        // The types of the real gemma-3-270m Q4_K_M file (n_embd 640, head 256, ff 2048,
        // tied): attn_q/k Q5_0 (640 is not whole 256-blocks), attn_v Q8_0 (its Q6_K falls
        // back), attn_output Q4_K (1024 wide), ffn_down Q6_K in more-bits layers, the
        // token embeddings Q8_0 (the output's type, falling back).
        let dims = |a: u64, b: u64| vec![a, b];
        let owned = [
            ("token_embd.weight".to_string(), dims(640, 262_144)),
            ("output_norm.weight".to_string(), vec![640]),
            ("blk.0.attn_q.weight".to_string(), dims(640, 1024)),
            ("blk.0.attn_k.weight".to_string(), dims(640, 256)),
            ("blk.0.attn_v.weight".to_string(), dims(640, 256)),
            ("blk.0.attn_output.weight".to_string(), dims(1024, 640)),
            ("blk.0.ffn_down.weight".to_string(), dims(2048, 640)),
            ("blk.0.ffn_up.weight".to_string(), dims(640, 2048)),
        ];
        let refs: Vec<TensorRef<'_>> =
            owned.iter().map(|(n, d)| TensorRef { name: n, dims: d }).collect();
        let types = choose_types(facts(Arch::Gemma3, 18), WeightType::Q4_K_M, &refs);
        use GgmlType::*;
        assert_eq!(types, vec![Q8_0, F32, Q5_0, Q5_0, Q8_0, Q4_K, Q6_K, Q5_0]);
    }

    #[test]
    fn q4_k_m_layer_counting_and_untied() {
        let mut owned = vec![
            ("token_embd.weight".to_string(), vec![256u64, 1000]),
            ("output.weight".to_string(), vec![256, 1000]),
        ];
        for i in 0..8 {
            owned.push((format!("blk.{i}.attn_v.weight"), vec![256, 256]));
            owned.push((format!("blk.{i}.ffn_down.weight"), vec![512, 256]));
            owned.push((format!("blk.{i}.ffn_gate.weight"), vec![256, 512]));
        }
        let refs: Vec<TensorRef<'_>> =
            owned.iter().map(|(n, d)| TensorRef { name: n, dims: d }).collect();
        let types = choose_types(facts(Arch::Llama, 8), WeightType::Q4_K_M, &refs);
        assert_eq!(types[0], GgmlType::Q4_K);
        assert_eq!(types[1], GgmlType::Q6_K);
        let v: Vec<GgmlType> = (0..8).map(|i| types[2 + 3 * i]).collect();
        let more: Vec<bool> = (0..8).map(|i| use_more_bits(i, 8)).collect();
        for i in 0..8 {
            let want = if more[i] { GgmlType::Q6_K } else { GgmlType::Q4_K };
            assert_eq!(v[i], want, "attn_v {i}");
            assert_eq!(types[3 + 3 * i], want, "ffn_down {i}");
            assert_eq!(types[4 + 3 * i], GgmlType::Q4_K);
        }
        // 70B: attn_v outside the more-bits layers go to Q5_K.
        let big = ModelFacts { arch: Arch::Llama, n_layer: 80, n_head: 64, n_head_kv: 8 };
        let types = choose_types(big, WeightType::Q4_K_M, &refs);
        assert_eq!(types[2 + 3 * 4], GgmlType::Q5_K);
    }

    #[test]
    fn pure_k_types() {
        let owned = [
            ("token_embd.weight".to_string(), vec![64u64, 512]),
            ("blk.0.attn_norm.weight".to_string(), vec![64]),
            ("blk.0.ffn_down.weight".to_string(), vec![256, 64]),
        ];
        let refs: Vec<TensorRef<'_>> =
            owned.iter().map(|(n, d)| TensorRef { name: n, dims: d }).collect();
        let f = facts(Arch::Llama, 1);
        use GgmlType::*;
        assert_eq!(choose_types(f, WeightType::Q4_K, &refs), vec![Q5_0, F32, Q4_K]);
        assert_eq!(choose_types(f, WeightType::Q5_K, &refs), vec![Q5_1, F32, Q5_K]);
        assert_eq!(choose_types(f, WeightType::Q6_K, &refs), vec![Q8_0, F32, Q6_K]);
        assert_eq!(choose_types(f, WeightType::Q4_0, &refs), vec![Q4_0, F32, Q4_0]);
    }
}
