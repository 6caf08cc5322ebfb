#!/usr/bin/env python3
"""Writes a tiny BERT-style sentence encoder with random weights, laid out as
sentence-transformers exports one to ONNX:

    gen_bert.py OUT_DIR [--seed N] [--pooling mean|cls|max] [--no-normalize]
                        [--layers N] [--hidden N] [--heads N] [--max-pos N]

OUT_DIR receives:
  model.onnx                 inputs input_ids, attention_mask, token_type_ids [B,S] i64;
                             output last_hidden_state [B,S,H]
  tokenizer.json             a WordPiece vocabulary (BERT normalizer and pre-tokenizer,
                             [CLS] ... [SEP] post-processor)
  config.json                the transformers config (model_type bert, vocab_size, ...)
  modules.json               sentence-transformers modules: Transformer, Pooling, Normalize
  1_Pooling/config.json      the pooling mode
"""

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

WORDS = """the of and to a in is it you that he was for on are with as i his they be at one have
this from or had by hot word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so these
her long make thing see him two has look more day could go come did number sound no most people
my over know water than call first who may down side been now find any new work part take get
place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end put
home read hand port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother world near build
self earth father quick brown fox jumps over lazy dog once upon land far away hello there""".split()
SUFFIXES = ["s", "ed", "ing", "er", "ly", "est", "ion", "al", "y", "e", "es", "en", "ness"]


def build_vocab():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`")
    vocab += chars
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab += ["##" + s for s in SUFFIXES]
    seen = set(vocab)
    for w in WORDS:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def make_tokenizer(vocab):
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]])
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pooling", choices=["mean", "cls", "max"], default="mean")
    ap.add_argument("--no-normalize", action="store_true")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-pos", type=int, default=512)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    vocab = build_vocab()
    V, H, L, NH, P = len(vocab), a.hidden, a.layers, a.heads, a.max_pos
    FF = 4 * H
    D = H // NH

    inits, nodes = [], []
    counter = [0]

    def name(p):
        counter[0] += 1
        return f"{p}_{counter[0]}"

    def init(arr, n=None):
        n = n or name("w")
        inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def rand(*shape, std=0.02):
        return init((rng.standard_normal(shape) * std).astype(np.float32))

    def node(op, ins, n_out=1, **attrs):
        outs = [name(op.lower()) for _ in range(n_out)]
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def i64(*v):
        return init(np.array(v, dtype=np.int64))

    def layer_norm(x):
        g = init((1.0 + rng.standard_normal(H) * 0.1).astype(np.float32))
        b = init((rng.standard_normal(H) * 0.1).astype(np.float32))
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-12)

    def linear(x, i, o, std):
        return node("Add", [node("MatMul", [x, rand(i, o, std=std)]), rand(o, std=0.02)])

    shape = node("Shape", ["input_ids"])
    batch = node("Gather", [shape, i64(0)], axis=0)
    seq = node("Gather", [shape, i64(1)], axis=0)
    pos = node("Unsqueeze", [node("Range", [init(np.array(0, dtype=np.int64)), node("Squeeze", [seq]), init(np.array(1, dtype=np.int64))]), i64(0)])
    h = node("Add", [node("Gather", [rand(V, H, std=1.0), "input_ids"], axis=0), node("Gather", [rand(P, H, std=0.5), pos], axis=0)])
    h = node("Add", [h, node("Gather", [rand(2, H, std=0.5), "token_type_ids"], axis=0)])
    h = layer_norm(h)
    # Extended mask [B,1,1,S]: 0 where attended, -10000 on padding.
    m = node("Cast", [node("Unsqueeze", ["attention_mask", i64(1, 2)])], to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [init(np.array(1.0, dtype=np.float32)), m]), init(np.array(-10000.0, dtype=np.float32))])
    scale = init(np.array(1.0 / np.sqrt(D), dtype=np.float32))

    def heads(x):
        shp = node("Concat", [batch, seq, i64(NH, D)], axis=0)
        return node("Transpose", [node("Reshape", [x, shp])], perm=[0, 2, 1, 3])

    for _ in range(L):
        std = 1.0 / np.sqrt(H)
        q, k, v = heads(linear(h, H, H, std)), heads(linear(h, H, H, std)), heads(linear(h, H, H, std))
        s = node("Add", [node("Mul", [node("MatMul", [q, node("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), bias])
        c = node("Transpose", [node("MatMul", [node("Softmax", [s], axis=-1), v])], perm=[0, 2, 1, 3])
        shp = node("Concat", [batch, seq, i64(H)], axis=0)
        c = node("Reshape", [c, shp])
        h = layer_norm(node("Add", [h, linear(c, H, H, std)]))
        f = linear(h, H, FF, std)
        # GELU (erf form).
        f = node("Mul", [node("Mul", [f, node("Add", [node("Erf", [node("Div", [f, init(np.array(np.sqrt(2.0), dtype=np.float32))])]), init(np.array(1.0, dtype=np.float32))])]), init(np.array(0.5, dtype=np.float32))])
        h = layer_norm(node("Add", [h, linear(f, FF, H, 1.0 / np.sqrt(FF))]))
    nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"]))

    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", H])]
    graph = helper.make_graph(nodes, "corral-tiny-bert", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="corral gen_bert.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(a.out, "model.onnx"))

    make_tokenizer(vocab).save(os.path.join(a.out, "tokenizer.json"))
    cfg = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": V, "hidden_size": H,
        "num_hidden_layers": L, "num_attention_heads": NH, "intermediate_size": FF,
        "max_position_embeddings": P, "type_vocab_size": 2, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "_name_or_path": "corral-tiny-bert",
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if not a.no_normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    with open(os.path.join(a.out, "modules.json"), "w") as f:
        json.dump(modules, f, indent=1)
    os.makedirs(os.path.join(a.out, "1_Pooling"), exist_ok=True)
    with open(os.path.join(a.out, "1_Pooling", "config.json"), "w") as f:
        json.dump({
            "word_embedding_dimension": H,
            "pooling_mode_cls_token": a.pooling == "cls",
            "pooling_mode_mean_tokens": a.pooling == "mean",
            "pooling_mode_max_tokens": a.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        }, f, indent=1)
    with open(os.path.join(a.out, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": P, "do_lower_case": False}, f, indent=1)
    print(f"wrote {a.out}: bert {L} layers, {H} wide, {NH} heads, vocab {V}, pooling {a.pooling}, normalize {not a.no_normalize}")


if __name__ == "__main__":
    main()
