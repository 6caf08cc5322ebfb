#!/usr/bin/env python3
"""Reference sentence embeddings, computed independently of corral: the `tokenizers`
package for the tokens, onnxruntime's Python API for the forward pass, numpy for the
pooling and normalisation that the model's sentence-transformers config asks for.

    reference_embed.py MODEL_DIR TEXT [TEXT ...]   -> JSON {"embeddings": [[...], ...],
                                                            "tokens": [[...], ...]}
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    d, texts = sys.argv[1], sys.argv[2:]
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
    pooling = "mean"
    pcfg = os.path.join(d, "1_Pooling", "config.json")
    if os.path.exists(pcfg):
        with open(pcfg) as f:
            p = json.load(f)
        if p.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif p.get("pooling_mode_max_tokens"):
            pooling = "max"
    normalize = False
    mpath = os.path.join(d, "modules.json")
    if os.path.exists(mpath):
        with open(mpath) as f:
            normalize = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
    names = {i.name for i in sess.get_inputs()}
    out, all_ids = [], []
    for t in texts:
        ids = tok.encode(t).ids
        n = len(ids)
        feeds = {"input_ids": np.array([ids], dtype=np.int64)}
        if "attention_mask" in names:
            feeds["attention_mask"] = np.ones((1, n), dtype=np.int64)
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros((1, n), dtype=np.int64)
        h = sess.run(None, feeds)[0][0].astype(np.float64)  # [S,H]
        if pooling == "cls":
            v = h[0]
        elif pooling == "max":
            v = h.max(axis=0)
        else:
            v = h.mean(axis=0)
        if normalize:
            v = v / max(np.linalg.norm(v), 1e-12)
        out.append([float(x) for x in v])
        all_ids.append(ids)
    json.dump({"embeddings": out, "tokens": all_ids, "pooling": pooling, "normalize": normalize}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
