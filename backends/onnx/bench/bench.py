#!/usr/bin/env python3
"""Benchmarks the ONNX Runtime backend beside the llama.cpp backend on the same weights.

    bench.py --corral target/debug/corral --onnx-plugin DIR --llama-plugin DIR
             [--shape small] [--threads 2] [--reps 3] [--tg 64] [--pp 128] [--texts 32]

Run it with a Python that has onnx, onnxruntime, numpy, tokenizers and gguf (the venv of
scripts/install-deps.sh). A plugin directory holds manifest.toml and the plugin library
(see tests/src/lib.rs: onnx_plugin_dir, llama_cpp_plugin_dir).

It makes a llama GGUF of the given shape with random F32 weights (`corral model
generate`), the genai-layout ONNX decoder from the same weights (gen_llama.py), and a
MiniLM-shaped BERT encoder (6 layers, 384 wide, 12 heads; gen_bert.py), then measures:
  - generation and prompt tokens/s: `corral bench` on the ONNX decoder and on the GGUF;
  - embeddings/s through the real server (`corral serve`, POST /api/embed with batches of
    short sentences): the ONNX encoder, the ONNX decoder (mean-pooled last hidden
    state) and llama.cpp on the GGUF (mean-pooled, the same vector).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "..", "..", "..", "tests", "python", "gen_onnx")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a land far away, there was a little house.",
    "How many people live in the world today?",
    "Water is made of hydrogen and oxygen.",
    "She said that the picture on the wall was her mother's.",
    "Three small animals came to our home again.",
    "Write a sentence about the earth and the air.",
    "Every year the men build a big boat by the water.",
]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def corral_env():
    env = dict(os.environ)
    env["CORRAL_PLUGIN_PATH_ONLY"] = "1"
    env["CORRAL_LOG"] = "warn"
    env.pop("CORRAL_CONFIG", None)
    env["XDG_CONFIG_HOME"] = "/nonexistent-corral-bench"
    return env


def bench_gen(corral, plugin, model, a):
    out = run([corral, "--plugin-dir", plugin, "bench", model, "--no-raw", "--json",
               "-t", str(a.threads), "--pp", str(a.pp), "--tg", str(a.tg), "-r", str(a.reps)],
              env=corral_env())
    rows = json.loads(out)["results"]
    return {r["test"]: (r["median_tps"], r["stddev_tps"]) for r in rows}


def bench_embed(corral, plugin, model, a):
    port = free_port()
    env = corral_env()
    env["CORRAL_LOG"] = "info"
    p = subprocess.Popen([corral, "--plugin-dir", plugin, "serve", "--host", f"127.0.0.1:{port}",
                          "--threads", str(a.threads)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/api/embed"
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=1)
                break
            except Exception:
                if time.time() > deadline or p.poll() is not None:
                    sys.exit(f"corral serve did not start: {p.stderr.read() if p.poll() is not None else ''}")
                time.sleep(0.2)
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(a.texts)]
        body = json.dumps({"model": model, "input": texts}).encode()

        def once():
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                v = json.load(r)
            assert len(v["embeddings"]) == len(texts), v
            return v.get("prompt_eval_count", 0)

        once()  # load + warm up
        rates, tokens = [], 0
        for _ in range(a.reps):
            t = time.perf_counter()
            tokens = once()
            rates.append(len(texts) / (time.perf_counter() - t))
        rates.sort()
        return rates[len(rates) // 2], tokens / len(texts)
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True)
    ap.add_argument("--onnx-plugin", required=True)
    ap.add_argument("--llama-plugin")
    ap.add_argument("--shape", default="small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="corral-onnx-bench-")
    os.makedirs(work, exist_ok=True)
    gguf = os.path.join(work, f"{a.shape}-f32.gguf")
    dec = os.path.join(work, f"{a.shape}-onnx")
    enc = os.path.join(work, "minilm-shaped-bert")
    if not os.path.exists(gguf):
        run([a.corral, "model", "generate", gguf, "--shape", a.shape, "--type", "f32"], env=corral_env())
    if not os.path.exists(os.path.join(dec, "model.onnx")):
        run([sys.executable, os.path.join(GEN, "gen_llama.py"), gguf, dec])
    if not os.path.exists(os.path.join(enc, "model.onnx")):
        run([sys.executable, os.path.join(GEN, "gen_bert.py"), enc, "--layers", "6", "--hidden", "384", "--heads", "12"])

    print(f"weights: llama shape {a.shape!r}, F32 ({gguf}); threads {a.threads}; reps {a.reps}")
    rows = []
    onnx = bench_gen(a.corral, a.onnx_plugin, dec, a)
    rows += [("onnx", f"decoder {a.shape}", t, v) for t, v in onnx.items()]
    if a.llama_plugin:
        ll = bench_gen(a.corral, a.llama_plugin, gguf, a)
        rows += [("llama-cpp", f"decoder {a.shape}", t, v) for t, v in ll.items()]
    print()
    print("| backend    | model              | test   |   tokens/s |      ± |")
    print("|------------|--------------------|--------|------------|--------|")
    for b, m, t, (tps, sd) in rows:
        print(f"| {b:<10} | {m:<18} | {t:<6} | {tps:>10.1f} | {sd:>6.1f} |")
    print()
    erows = [("onnx", "bert 6x384 (MiniLM)", *bench_embed(a.corral, a.onnx_plugin, enc, a)),
             ("onnx", f"decoder {a.shape}", *bench_embed(a.corral, a.onnx_plugin, dec, a))]
    if a.llama_plugin:
        erows.append(("llama-cpp", f"decoder {a.shape}", *bench_embed(a.corral, a.llama_plugin, gguf, a)))
    print(f"/api/embed, batches of {a.texts} sentences:")
    print("| backend    | model               | embeddings/s | tokens/text |")
    print("|------------|---------------------|--------------|-------------|")
    for b, m, eps, tpt in erows:
        print(f"| {b:<10} | {m:<19} | {eps:>12.1f} | {tpt:>11.1f} |")


if __name__ == "__main__":
    main()
