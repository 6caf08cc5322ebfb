#!/usr/bin/env python3
"""KV cache type benchmark for `corral serve` (standard library only).

Starts two servers on the same model, one with an f16 KV cache and one with another
type (`OLLAMA_KV_CACHE_TYPE`, default q8_0), and sends them the same greedy
/api/generate request in turn (the order alternating per repetition, so a slow minute of
a shared machine lands on both). Prints each one's decode rates (the server's eval_count
/ eval_duration), the ratio of the medians, and what `/api/ps` says of each cache
(`kv_bytes_per_token`, the engine, flash attention). `--context N` puts a passage of N
words before the question (each request's own, so decoding runs over a long context and
the prompt-processing rates are compared too).

  kv_cache_bench.py --corral target/release/corral --plugin-dir target/release \\
      --gguf /var/tmp/corral-models/gemma-3-270m-q4_k_m.gguf --backend llama-cpp
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True)
    ap.add_argument("--plugin-dir", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--backend", default=None, help="corral's engine (default: the host's choice)")
    ap.add_argument("--type", default="q8_0", help="the KV cache type compared with f16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--context", type=int, default=0,
                    help="words of passage before the question (each request's own, so the prompt "
                         "is computed anew and its rate is reported too)")
    args = ap.parse_args()
    gguf = os.path.abspath(args.gguf)
    servers = {}
    for kv in ("f16", args.type):
        port = free_port()
        env = dict(os.environ, OLLAMA_KV_CACHE_TYPE=kv, CORRAL_NUM_THREADS=str(args.threads),
                   CORRAL_MODELS=tempfile.mkdtemp(prefix="corral-kv-bench-"),
                   CORRAL_ALLOW_MODEL_PATHS=os.path.dirname(gguf), CORRAL_PLUGIN_PATH_ONLY="1",
                   CORRAL_KEEP_ALIVE="-1", CORRAL_LOG="warn",
                   XDG_CONFIG_HOME="/nonexistent-corral-bench")
        cmd = [args.corral, "--plugin-dir", args.plugin_dir, "serve", "--host", f"127.0.0.1:{port}"]
        if args.backend:
            cmd += ["--backend", args.backend]
        servers[kv] = (f"http://127.0.0.1:{port}",
                       subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for url, proc in servers.values():
            for _ in range(300):
                try:
                    call(url, "/api/version")
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise SystemExit(f"corral serve exited with {proc.returncode}")
                    time.sleep(0.2)

        words = ("the keeper climbed the stairs at dusk to light the lamp while ships "
                 "passed far out on the grey water and gulls circled the rocks below").split()
        passage = " ".join(words[i % len(words)] for i in range(args.context))

        def generate(url, n, i):
            # The request's number first, so no cached prefix serves the passage.
            prompt = f"Note {i}. {passage} Write a long story about a lighthouse keeper."
            v = call(url, "/api/generate", {
                "model": gguf, "prompt": prompt,
                "stream": False, "options": {"num_predict": n, "temperature": 0,
                                             "num_ctx": args.context * 2 + n + 256}})
            return (v["eval_count"] / v["eval_duration"] * 1e9,
                    v["prompt_eval_count"] / max(v["prompt_eval_duration"], 1) * 1e9)

        for url, _ in servers.values():
            generate(url, 16, -1)  # load and warm up
        rates = {kv: [] for kv in servers}
        prompt_rates = {kv: [] for kv in servers}
        kinds = list(servers)
        for i in range(args.reps):
            for kv in (kinds if i % 2 == 0 else kinds[::-1]):
                rate, prompt_rate = generate(servers[kv][0], args.tokens, i)
                rates[kv].append(rate)
                prompt_rates[kv].append(prompt_rate)
        for kv, (url, _) in servers.items():
            m = call(url, "/api/ps")["models"][0]
            print(f"{kv:5} median {statistics.median(rates[kv]):7.2f} t/s  "
                  f"{[round(x, 1) for x in rates[kv]]}  kv_bytes_per_token {m['kv_bytes_per_token']}  "
                  f"engine {m['backend']}  flash_attention {m['flash_attention']}  cache {m['kv_cache_type']}")
        print(f"{args.type}/f16 decode rate: {statistics.median(rates[args.type]) / statistics.median(rates['f16']):.3f}")
        if args.context:
            for kv in servers:
                print(f"{kv:5} prompt median {statistics.median(prompt_rates[kv]):8.1f} t/s  "
                      f"{[round(x) for x in prompt_rates[kv]]}")
            print(f"{args.type}/f16 prompt rate: "
                  f"{statistics.median(prompt_rates[args.type]) / statistics.median(prompt_rates['f16']):.3f}")
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
