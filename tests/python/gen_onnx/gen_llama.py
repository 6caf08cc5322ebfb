#!/usr/bin/env python3
"""Writes a llama decoder in the onnxruntime-genai layout from a GGUF made by
`corral model generate` (F32 or F16 weights), so the ONNX and llama.cpp backends can be
compared on the same weights.

    gen_llama.py MODEL.gguf OUT_DIR [--f16-io]

--f16-io makes the past/present KV tensors and the logits float16, as GPU exports of
onnxruntime-genai have them (the arithmetic inside stays float32).

OUT_DIR receives:
  model.onnx            inputs  input_ids [B,S] i64, attention_mask [B,P+S] i64,
                                position_ids [B,S] i64, past_key_values.N.key/value [B,Hkv,P,D]
                        outputs logits [B,S,V], present.N.key/value [B,Hkv,P+S,D],
                                last_hidden_state [B,S,E] (the final-normed hidden state, the
                                vector llama.cpp pools for embeddings)
  genai_config.json     onnxruntime-genai's config (names of the inputs and outputs)
  tokenizer.json        the GGUF's byte-level BPE (tokens + merges, GPT-2 pre-tokenizer)
  tokenizer_config.json bos/eos and the chat template

The graph computes what llama.cpp's llama architecture computes: RMSNorm, rotary position
embedding in llama.cpp's "normal" mode (adjacent pairs rotate, the layout GGUF stores Q/K
in), grouped-query attention, SwiGLU feed-forward.
"""

import json
import os
import sys

import numpy as np
import onnx
from gguf import GGUFReader
from onnx import TensorProto, helper, numpy_helper


def field_str(reader, key):
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def field_strs(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_num(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.parts[f.data[0]][0].item()


def tensors(reader):
    out = {}
    for t in reader.tensors:
        # GGUF F32 = 0, F16 = 1; the reader gives numpy arrays in row-major order with
        # the dimensions reversed (rows, row length), i.e. [out, in] for matrices.
        if t.tensor_type not in (0, 1):
            sys.exit(f"{t.name}: tensor type {t.tensor_type} is not F32/F16; generate the GGUF with --type f32 or f16")
        shape = [int(x) for x in reversed(t.shape.tolist())]
        out[t.name] = np.asarray(t.data, dtype=np.float32).reshape(shape)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    f16_io = "--f16-io" in sys.argv[1:]
    if len(args) != 2 or any(a.startswith("--") and a != "--f16-io" for a in sys.argv[1:]):
        sys.exit(__doc__)
    src, out_dir = args
    io_type = TensorProto.FLOAT16 if f16_io else TensorProto.FLOAT
    os.makedirs(out_dir, exist_ok=True)
    r = GGUFReader(src)
    arch = field_str(r, "general.architecture")
    if arch != "llama":
        sys.exit(f"architecture {arch!r} is not llama")
    n_embd = field_num(r, "llama.embedding_length")
    n_layer = field_num(r, "llama.block_count")
    n_head = field_num(r, "llama.attention.head_count")
    n_head_kv = field_num(r, "llama.attention.head_count_kv")
    n_ctx = field_num(r, "llama.context_length")
    eps = float(field_num(r, "llama.attention.layer_norm_rms_epsilon"))
    base = float(field_num(r, "llama.rope.freq_base", 10000.0))
    head_dim = n_embd // n_head
    group = n_head // n_head_kv
    w = tensors(r)
    n_vocab = w["token_embd.weight"].shape[0]

    inits = []
    nodes = []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(arr, prefix="c"):
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(op, inputs, prefix=None, n_out=1, **attrs):
        outs = [name(prefix or op.lower()) for _ in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def weight(key, transpose=False):
        a = w[key]
        if transpose:
            a = np.ascontiguousarray(a.T)
        n = key
        inits.append(numpy_helper.from_array(a.astype(np.float32), n))
        return n

    def rms_norm(x, key):
        sq = node("Mul", [x, x])
        mean = node("ReduceMean", [sq], axes=[-1], keepdims=1)
        var = node("Add", [mean, const(np.array(eps, dtype=np.float32))])
        inv = node("Reciprocal", [node("Sqrt", [var])])
        return node("Mul", [node("Mul", [x, inv]), weight(key)])

    def linear(x, key):
        # GGUF matrices are [out, in]; MatMul wants [in, out].
        return node("MatMul", [x, weight(key, transpose=True)])

    # Shapes and positions.
    ids_shape = node("Shape", ["input_ids"])
    batch = node("Gather", [ids_shape, const(np.array([0], dtype=np.int64))], axis=0)
    seq = node("Gather", [ids_shape, const(np.array([1], dtype=np.int64))], axis=0)
    mask_shape = node("Shape", ["attention_mask"])
    total = node("Gather", [mask_shape, const(np.array([1], dtype=np.int64))], axis=0)
    past = node("Sub", [total, seq])

    # Rotary tables from position_ids: angle[b, s, i] = pos * base^(-2i/D).
    inv_freq = (base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)
    pos_f = node("Cast", ["position_ids"], to=TensorProto.FLOAT)
    pos_f = node("Unsqueeze", [pos_f, const(np.array([-1], dtype=np.int64))])
    angle = node("Mul", [pos_f, const(inv_freq)])  # [B,S,D/2]
    angle = node("Unsqueeze", [angle, const(np.array([2], dtype=np.int64))])  # [B,S,1,D/2]
    cos = node("Cos", [angle])
    sin = node("Sin", [angle])

    # Attention bias [B,1,S,T]: causal within the new tokens, padding from attention_mask.
    q_idx = node("Add", [node("Range", [const(np.array(0, dtype=np.int64)), node("Squeeze", [seq]), const(np.array(1, dtype=np.int64))]), past])
    k_idx = node("Range", [const(np.array(0, dtype=np.int64)), node("Squeeze", [total]), const(np.array(1, dtype=np.int64))])
    allowed = node("LessOrEqual", [node("Unsqueeze", [k_idx, const(np.array([0], dtype=np.int64))]), node("Unsqueeze", [q_idx, const(np.array([1], dtype=np.int64))])])  # [S,T]
    pad_ok = node("Cast", ["attention_mask"], to=TensorProto.BOOL)  # [B,T]
    pad_ok = node("Unsqueeze", [pad_ok, const(np.array([1, 2], dtype=np.int64))])  # [B,1,1,T]
    allowed = node("And", [allowed, pad_ok])  # [B,1,S,T]
    neg = const(np.array(-1e9, dtype=np.float32))
    zero = const(np.array(0.0, dtype=np.float32))
    bias = node("Where", [allowed, zero, neg])

    def rope(x, heads):
        # x [B,S,H*D] -> [B,S,H,D/2,2]; rotate adjacent pairs.
        shp = node("Concat", [batch, seq, const(np.array([heads, head_dim // 2, 2], dtype=np.int64))], axis=0)
        x = node("Reshape", [x, shp])
        x0, x1 = node("Split", [x, const(np.array([1, 1], dtype=np.int64))], n_out=2, axis=-1)
        x0 = node("Squeeze", [x0, const(np.array([-1], dtype=np.int64))])
        x1 = node("Squeeze", [x1, const(np.array([-1], dtype=np.int64))])
        o0 = node("Sub", [node("Mul", [x0, cos]), node("Mul", [x1, sin])])
        o1 = node("Add", [node("Mul", [x0, sin]), node("Mul", [x1, cos])])
        o = node("Concat", [node("Unsqueeze", [o0, const(np.array([-1], dtype=np.int64))]), node("Unsqueeze", [o1, const(np.array([-1], dtype=np.int64))])], axis=-1)
        shp = node("Concat", [batch, seq, const(np.array([heads, head_dim], dtype=np.int64))], axis=0)
        o = node("Reshape", [o, shp])
        return node("Transpose", [o], perm=[0, 2, 1, 3])  # [B,H,S,D]

    def heads_of(x, heads):
        shp = node("Concat", [batch, seq, const(np.array([heads, head_dim], dtype=np.int64))], axis=0)
        return node("Transpose", [node("Reshape", [x, shp])], perm=[0, 2, 1, 3])

    def repeat_kv(x):
        if group == 1:
            return x
        # [B,Hkv,T,D] -> [B,Hkv,1,T,D] -> [B,Hkv,g,T,D] -> [B,H,T,D]; head h uses kv h//g.
        x5 = node("Unsqueeze", [x, const(np.array([2], dtype=np.int64))])
        s = node("Shape", [x5])
        tdim = node("Gather", [s, const(np.array([3], dtype=np.int64))], axis=0)
        target = node("Concat", [batch, const(np.array([n_head_kv, group], dtype=np.int64)), tdim, const(np.array([head_dim], dtype=np.int64))], axis=0)
        x5 = node("Expand", [x5, target])
        shp = node("Concat", [batch, const(np.array([n_head], dtype=np.int64)), tdim, const(np.array([head_dim], dtype=np.int64))], axis=0)
        return node("Reshape", [x5, shp])

    h = node("Gather", [weight("token_embd.weight"), "input_ids"], axis=0)  # [B,S,E]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", io_type, ["batch_size", "sequence_length", n_vocab])]
    scale = const(np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        inputs.append(helper.make_tensor_value_info(pk, io_type, ["batch_size", n_head_kv, "past_sequence_length", head_dim]))
        inputs.append(helper.make_tensor_value_info(pv, io_type, ["batch_size", n_head_kv, "past_sequence_length", head_dim]))
        if f16_io:
            pk = node("Cast", [pk], to=TensorProto.FLOAT)
            pv = node("Cast", [pv], to=TensorProto.FLOAT)
        x = rms_norm(h, p + "attn_norm.weight")
        q = rope(linear(x, p + "attn_q.weight"), n_head)
        k = rope(linear(x, p + "attn_k.weight"), n_head_kv)
        v = heads_of(linear(x, p + "attn_v.weight"), n_head_kv)
        k_all = f"present.{i}.key"
        v_all = f"present.{i}.value"
        if f16_io:
            k_all, v_all = name("k_all"), name("v_all")
        nodes.append(helper.make_node("Concat", [pk, k], [k_all], axis=2))
        nodes.append(helper.make_node("Concat", [pv, v], [v_all], axis=2))
        if f16_io:
            nodes.append(helper.make_node("Cast", [k_all], [f"present.{i}.key"], to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [v_all], [f"present.{i}.value"], to=TensorProto.FLOAT16))
        outputs.append(helper.make_tensor_value_info(f"present.{i}.key", io_type, ["batch_size", n_head_kv, "total_sequence_length", head_dim]))
        outputs.append(helper.make_tensor_value_info(f"present.{i}.value", io_type, ["batch_size", n_head_kv, "total_sequence_length", head_dim]))
        kt = node("Transpose", [repeat_kv(k_all)], perm=[0, 1, 3, 2])
        scores = node("Add", [node("Mul", [node("MatMul", [q, kt]), scale]), bias])
        probs = node("Softmax", [scores], axis=-1)
        ctx = node("MatMul", [probs, repeat_kv(v_all)])  # [B,H,S,D]
        ctx = node("Transpose", [ctx], perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, node("Concat", [batch, seq, const(np.array([n_embd], dtype=np.int64))], axis=0)])
        h = node("Add", [h, linear(ctx, p + "attn_output.weight")])
        x = rms_norm(h, p + "ffn_norm.weight")
        g = linear(x, p + "ffn_gate.weight")
        g = node("Mul", [g, node("Sigmoid", [g])])
        u = linear(x, p + "ffn_up.weight")
        h = node("Add", [h, linear(node("Mul", [g, u]), p + "ffn_down.weight")])
    x = rms_norm(h, "output_norm.weight")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    outputs.append(helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", n_embd]))
    if f16_io:
        nodes.append(helper.make_node("Cast", [node("MatMul", [x, weight("output.weight", transpose=True)])], ["logits"], to=TensorProto.FLOAT16))
    else:
        nodes.append(helper.make_node("MatMul", [x, weight("output.weight", transpose=True)], ["logits"]))

    graph = helper.make_graph(nodes, "corral-tiny-llama", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="corral gen_llama.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out_dir, "model.onnx"))

    tokens = field_strs(r, "tokenizer.ggml.tokens")
    merges = field_strs(r, "tokenizer.ggml.merges")
    types = [int(x) for x in (r.fields["tokenizer.ggml.token_type"].parts[i][0] for i in r.fields["tokenizer.ggml.token_type"].data)]
    bos = field_num(r, "tokenizer.ggml.bos_token_id")
    eos = field_num(r, "tokenizer.ggml.eos_token_id")
    eot = field_num(r, "tokenizer.ggml.eot_token_id")
    add_bos = bool(field_num(r, "tokenizer.ggml.add_bos_token", True))
    template = field_str(r, "tokenizer.chat_template") if "tokenizer.chat_template" in r.fields else None
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3
    ]
    post = None
    if add_bos:
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}},
        }
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges,
        },
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
    tc = {"bos_token": tokens[bos], "eos_token": tokens[eos], "add_bos_token": add_bos, "add_eos_token": False}
    if template:
        tc["chat_template"] = template
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, ensure_ascii=False, indent=1)
    genai = {
        "model": {
            "type": "llama",
            "vocab_size": n_vocab,
            "context_length": n_ctx,
            "bos_token_id": bos,
            "eos_token_id": [eos, eot] if eot is not None else eos,
            "pad_token_id": eos,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": head_dim,
                "hidden_size": n_embd,
                "num_attention_heads": n_head,
                "num_hidden_layers": n_layer,
                "num_key_value_heads": n_head_kv,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {"max_length": n_ctx, "do_sample": False},
    }
    with open(os.path.join(out_dir, "genai_config.json"), "w", encoding="utf-8") as f:
        json.dump(genai, f, indent=1)
    print(f"wrote {out_dir}: {n_layer} layers, {n_embd} wide, {n_head}/{n_head_kv} heads, vocab {n_vocab}")


if __name__ == "__main__":
    main()
