#!/usr/bin/env python3
"""Converts a sentence-transformers BERT model (Hugging Face files: model.safetensors,
config.json, tokenizer.json, modules.json, 1_Pooling/config.json) for corral's engines,
and computes reference embeddings from the safetensors with numpy alone (no torch).

    convert_bert.py onnx SRC_DIR OUT_DIR       # an ONNX sentence encoder directory
    convert_bert.py gguf SRC_DIR OUT.gguf      # a GGUF llama.cpp's `bert` architecture runs
    convert_bert.py reference SRC_DIR [--gelu-tanh] TEXT...  # JSON: each TEXT's embedding

Needs numpy, onnx, tokenizers and gguf (all in tests/python/requirements.txt). Supports
BERT with absolute positions, erf GELU, mean or CLS pooling and an optional Normalize
module: all-MiniLM-L6-v2, bge-small, e5-small and their kin.
"""

import json
import os
import pathlib
import shutil
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BF16": None}


def read_safetensors(path):
    """Tensors of a .safetensors file as numpy arrays (float32 for floats)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            f.seek(base + start)
            raw = f.read(end - start)
            if info["dtype"] == "BF16":
                arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=DTYPES[info["dtype"]])
            arr = arr.reshape(info["shape"])
            out[name.removeprefix("bert.")] = arr.astype(np.float32) if arr.dtype != np.int64 else arr
        return out


class Bert:
    """The model's files, read."""

    def __init__(self, src):
        self.src = pathlib.Path(src)
        self.cfg = json.loads((self.src / "config.json").read_text())
        if self.cfg.get("model_type") not in ("bert", None):
            raise SystemExit(f"{src}: model_type {self.cfg.get('model_type')!r} is not bert")
        if self.cfg.get("position_embedding_type", "absolute") != "absolute":
            raise SystemExit(f"{src}: only absolute position embeddings are supported")
        if self.cfg.get("hidden_act", "gelu") != "gelu":
            raise SystemExit(f"{src}: hidden_act {self.cfg['hidden_act']!r} is not gelu")
        self.w = read_safetensors(self.src / "model.safetensors")
        self.H = self.cfg["hidden_size"]
        self.L = self.cfg["num_hidden_layers"]
        self.NH = self.cfg["num_attention_heads"]
        self.FF = self.cfg["intermediate_size"]
        self.eps = self.cfg.get("layer_norm_eps", 1e-12)
        pooling = self.src / "1_Pooling" / "config.json"
        pool = json.loads(pooling.read_text()) if pooling.exists() else {}
        self.pooling = "cls" if pool.get("pooling_mode_cls_token") else "mean"
        modules = self.src / "modules.json"
        self.normalize = modules.exists() and any(
            m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
        sbert = self.src / "sentence_bert_config.json"
        self.max_seq = (json.loads(sbert.read_text()).get("max_seq_length") if sbert.exists()
                        else None) or self.cfg.get("max_position_embeddings", 512)

    def layer(self, i, name):
        return self.w[f"encoder.layer.{i}.{name}"]


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def erf(x):
    # numpy has no erf; math.erf per element is exact and fast enough for references.
    import math
    return np.vectorize(math.erf)(x)


def reference(model, texts, gelu="erf"):
    """Sentence embeddings computed from the weights in float64, as sentence-transformers
    computes them (the tokenizer from tokenizer.json, truncated to max_seq_length).
    `gelu="tanh"` uses the tanh approximation of GELU that llama.cpp's BERT graph uses,
    to tell that approximation apart from other differences."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model.src / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(model.max_seq)
    w = {k: v.astype(np.float64) for k, v in model.w.items() if v.dtype != np.int64}
    D = model.H // model.NH
    out = []
    for text in texts:
        enc = tok.encode(text)
        ids = np.array(enc.ids)
        S = len(ids)
        h = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(S)]
             + w["embeddings.token_type_embeddings.weight"][np.zeros(S, dtype=np.int64)])
        h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], model.eps)
        for i in range(model.L):
            p = f"encoder.layer.{i}."
            lin = lambda x, n: x @ w[p + n + ".weight"].T + w[p + n + ".bias"]  # noqa: E731
            q = lin(h, "attention.self.query").reshape(S, model.NH, D).transpose(1, 0, 2)
            k = lin(h, "attention.self.key").reshape(S, model.NH, D).transpose(1, 0, 2)
            v = lin(h, "attention.self.value").reshape(S, model.NH, D).transpose(1, 0, 2)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(D)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            c = (s @ v).transpose(1, 0, 2).reshape(S, model.H)
            h = layer_norm(h + lin(c, "attention.output.dense"),
                           w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], model.eps)
            f = lin(h, "intermediate.dense")
            if gelu == "tanh":
                f = 0.5 * f * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (f + 0.044715 * f ** 3)))
            else:
                f = 0.5 * f * (1.0 + erf(f / np.sqrt(2.0)))
            h = layer_norm(h + lin(f, "output.dense"),
                           w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], model.eps)
        e = h[0] if model.pooling == "cls" else h.mean(0)
        if model.normalize:
            e = e / max(np.linalg.norm(e), 1e-12)
        out.append({"text": text, "tokens": enc.ids, "embedding": [float(x) for x in e]})
    return out


def onnx_graph(w, H, NH, L, eps, graph_name="bert"):
    """A BERT encoder as an ONNX model (opset 17) from weights `w` in Hugging Face's names
    (float32 numpy arrays, linear weights [out, in]): input_ids, attention_mask,
    token_type_ids [B,S] int64 → last_hidden_state [B,S,H]. Also used by
    tests/python/gen_onnx/gen_bert.py with random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    D = H // NH
    inits, nodes = [], []
    counter = [0]

    def name(p):
        counter[0] += 1
        return f"{p}_{counter[0]}"

    def init(arr, n=None):
        n = n or name("w")
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def node(op, ins, **attrs):
        out_name = name(op.lower())
        nodes.append(helper.make_node(op, ins, [out_name], **attrs))
        return out_name

    def i64(*v):
        return init(np.array(v, dtype=np.int64))

    def f32(v):
        return init(np.array(v, dtype=np.float32))

    def layer_norm_node(x, prefix):
        return node("LayerNormalization", [x, init(w[prefix + ".weight"]), init(w[prefix + ".bias"])],
                    axis=-1, epsilon=eps)

    def linear(x, prefix):
        return node("Add", [node("MatMul", [x, init(w[prefix + ".weight"].T)]), init(w[prefix + ".bias"])])

    shape = node("Shape", ["input_ids"])
    batch = node("Gather", [shape, i64(0)], axis=0)
    seq = node("Gather", [shape, i64(1)], axis=0)
    pos = node("Unsqueeze", [node("Range", [init(np.array(0, dtype=np.int64)), node("Squeeze", [seq]),
                                            init(np.array(1, dtype=np.int64))]), i64(0)])
    h = node("Add", [node("Gather", [init(w["embeddings.word_embeddings.weight"]), "input_ids"], axis=0),
                     node("Gather", [init(w["embeddings.position_embeddings.weight"]), pos], axis=0)])
    h = node("Add", [h, node("Gather", [init(w["embeddings.token_type_embeddings.weight"]), "token_type_ids"], axis=0)])
    h = layer_norm_node(h, "embeddings.LayerNorm")
    m = node("Cast", [node("Unsqueeze", ["attention_mask", i64(1, 2)])], to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [f32(1.0), m]), f32(-3.4e38)])
    scale = f32(1.0 / np.sqrt(D))

    def heads(x):
        return node("Transpose", [node("Reshape", [x, node("Concat", [batch, seq, i64(NH, D)], axis=0)])], perm=[0, 2, 1, 3])

    for i in range(L):
        p = f"encoder.layer.{i}."
        q = heads(linear(h, p + "attention.self.query"))
        k = heads(linear(h, p + "attention.self.key"))
        v = heads(linear(h, p + "attention.self.value"))
        s = node("Add", [node("Mul", [node("MatMul", [q, node("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), bias])
        c = node("Transpose", [node("MatMul", [node("Softmax", [s], axis=-1), v])], perm=[0, 2, 1, 3])
        c = node("Reshape", [c, node("Concat", [batch, seq, i64(H)], axis=0)])
        h = layer_norm_node(node("Add", [h, linear(c, p + "attention.output.dense")]), p + "attention.output.LayerNorm")
        f = linear(h, p + "intermediate.dense")
        f = node("Mul", [node("Mul", [f, node("Add", [node("Erf", [node("Div", [f, f32(np.sqrt(2.0))])]), f32(1.0)])]), f32(0.5)])
        h = layer_norm_node(node("Add", [h, linear(f, p + "output.dense")]), p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"]))
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", H])]
    graph = helper.make_graph(nodes, graph_name, ins, outs, inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="corral convert_bert.py")
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model


def to_onnx(model, out):
    """The encoder as an ONNX graph ([`onnx_graph`]); pooling stays with the engine,
    configured by the copied sentence-transformers files."""
    import onnx

    onnx_model = onnx_graph(model.w, model.H, model.NH, model.L, model.eps)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(out / "model.onnx"))
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (model.src / f).exists():
            shutil.copy(model.src / f, out / f)
    if (model.src / "1_Pooling").is_dir():
        shutil.copytree(model.src / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)
    print(f"wrote {out}/model.onnx: bert, {model.L} layers, {model.H} wide")


def to_gguf(model, out):
    """A GGUF for llama.cpp's `bert` architecture, as llama.cpp's convert_hf_to_gguf.py
    writes one (WordPiece vocabulary with phantom spaces, F32 tensors, mean or CLS
    pooling)."""
    import gguf

    tj = json.loads((model.src / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["content"] for a in tj.get("added_tokens", []) if a.get("special")}
    types, names = [], []
    for t in tokens:
        if t in special:
            types.append(gguf.TokenType.CONTROL)
            names.append(t)
        else:
            types.append(gguf.TokenType.NORMAL)
            names.append(t[2:] if t.startswith("##") else "\u2581" + t)
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_name(model.cfg.get("_name_or_path", "bert"))
    w.add_context_length(model.cfg.get("max_position_embeddings", 512))
    w.add_embedding_length(model.H)
    w.add_feed_forward_length(model.FF)
    w.add_block_count(model.L)
    w.add_head_count(model.NH)
    w.add_layer_norm_eps(model.eps)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.CLS if model.pooling == "cls" else gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("bert")
    w.add_token_type_count(model.cfg.get("type_vocab_size", 2))
    w.add_token_list(names)
    w.add_token_types(types)
    ids = {t: i for i, t in enumerate(tokens)}
    for key, tok in (("unk", "[UNK]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("cls", "[CLS]"), ("mask", "[MASK]")):
        if tok in ids:
            adder = getattr(w, f"add_{key}_token_id", None)
            if adder is not None:
                adder(ids[tok])
            else:
                w.add_uint32(f"tokenizer.ggml.{key}_token_id", ids[tok])
    if "[CLS]" in ids:
        w.add_bos_token_id(ids["[CLS]"])
    names_map = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    per_layer = {
        "attention.self.query": "attn_q", "attention.self.key": "attn_k",
        "attention.self.value": "attn_v", "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm", "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm",
    }
    for i in range(model.L):
        for hf, gg in per_layer.items():
            for kind in ("weight", "bias"):
                names_map[f"encoder.layer.{i}.{hf}.{kind}"] = f"blk.{i}.{gg}.{kind}"
    for hf, gg in names_map.items():
        w.add_tensor(gg, np.ascontiguousarray(model.w[hf], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}: bert, {model.L} layers, {model.H} wide, vocab {len(tokens)}")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("onnx", "gguf", "reference"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    model = Bert(sys.argv[2])
    if sys.argv[1] == "reference":
        texts = sys.argv[3:]
        gelu = "erf"
        if texts[:1] == ["--gelu-tanh"]:
            texts, gelu = texts[1:], "tanh"
        json.dump(reference(model, texts, gelu), sys.stdout)
        print()
    elif len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    elif sys.argv[1] == "onnx":
        to_onnx(model, sys.argv[3])
    else:
        to_gguf(model, sys.argv[3])


if __name__ == "__main__":
    main()
