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


def convert_bert():
    """scripts/convert_bert.py, whose ONNX graph builder this generator feeds."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "scripts", "convert_bert.py")
    spec = importlib.util.spec_from_file_location("convert_bert", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

    # Random weights in Hugging Face's names, built into a graph by the project's converter.
    def rand(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm(prefix):
        w[prefix + ".weight"] = (1.0 + rng.standard_normal(H) * 0.1).astype(np.float32)
        w[prefix + ".bias"] = (rng.standard_normal(H) * 0.1).astype(np.float32)

    def linear(prefix, i, o, std):
        w[prefix + ".weight"] = rand(o, i, std=std)
        w[prefix + ".bias"] = rand(o)

    w = {
        "embeddings.word_embeddings.weight": rand(V, H, std=1.0),
        "embeddings.position_embeddings.weight": rand(P, H, std=0.5),
        "embeddings.token_type_embeddings.weight": rand(2, H, std=0.5),
    }
    norm("embeddings.LayerNorm")
    for i in range(L):
        p = f"encoder.layer.{i}."
        std = 1.0 / np.sqrt(H)
        for part in ("query", "key", "value"):
            linear(p + "attention.self." + part, H, H, std)
        linear(p + "attention.output.dense", H, H, std)
        norm(p + "attention.output.LayerNorm")
        linear(p + "intermediate.dense", H, FF, std)
        linear(p + "output.dense", FF, H, 1.0 / np.sqrt(FF))
        norm(p + "output.LayerNorm")
    model = convert_bert().onnx_graph(w, H, NH, L, 1e-12, graph_name="corral-tiny-bert")
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
