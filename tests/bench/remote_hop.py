#!/usr/bin/env python3
"""What a remote hop costs: the same model streamed from a corral serve directly and
through a second corral serve that has it as a remote model (`[remotes.NAME]`), on
loopback. Prints the time to first token and the time per token of each, medians of
--reps streamed generations, and the differences.

  tests/bench/remote_hop.py --corral target/release/corral --plugin-dir target/release \\
      --gguf model.gguf [--tokens 64] [--reps 5]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, store, config, env_extra=None):
    port = free_port()
    cfg = os.path.join(store, "config.toml")
    with open(cfg, "w") as f:
        f.write(config)
    env = dict(os.environ, CORRAL_PLUGIN_PATH_ONLY="1", CORRAL_MODELS=store, CORRAL_CONFIG=cfg,
               CORRAL_ALLOW_MODEL_PATHS=os.path.dirname(os.path.abspath(args.gguf)),
               CORRAL_NUM_THREADS=str(args.threads), CORRAL_KEEP_ALIVE="-1", CORRAL_LOG="warn",
               XDG_CONFIG_HOME="/nonexistent-corral-bench")
    env.update(env_extra or {})
    p = subprocess.Popen([args.corral, "--plugin-dir", args.plugin_dir, "serve", "--host", f"127.0.0.1:{port}"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/api/version", timeout=1)
            return p, url
        except Exception:
            time.sleep(0.1)
    sys.exit("corral serve did not start")


def post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=600)


def stream(url, model, tokens):
    """(seconds to first token, seconds per later token)."""
    t0 = time.time()
    first = None
    n = 0
    with post(url, "/api/generate", {"model": model, "prompt": "Tell me a long story about a lighthouse.",
                                     "stream": True, "options": {"num_predict": tokens, "temperature": 0}}) as r:
        for line in r:
            v = json.loads(line)
            if v.get("response"):
                n += 1
                if first is None:
                    first = time.time()
            if v.get("done"):
                break
    end = time.time()
    return first - t0, (end - first) / max(n - 1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", required=True)
    ap.add_argument("--plugin-dir", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    gguf = os.path.abspath(args.gguf)
    back_store, front_store = tempfile.mkdtemp(), tempfile.mkdtemp()
    back, back_url = start(args, back_store, "")
    front, front_url = start(args, front_store, f'[remotes.lab]\nurl = "{back_url}"\n')
    try:
        post(front_url, "/api/create", {"model": "hop", "from": gguf, "remote_host": "lab", "stream": False}).read()
        stream(back_url, gguf, 8)  # load and warm up
        direct, hop = [], []
        for _ in range(args.reps):
            direct.append(stream(back_url, gguf, args.tokens))
            hop.append(stream(front_url, "hop", args.tokens))
        med = lambda xs, i: statistics.median(x[i] for x in xs)
        d_ttft, h_ttft = med(direct, 0), med(hop, 0)
        d_tok, h_tok = med(direct, 1), med(hop, 1)
        print(f"{'':<18}{'direct':>10}{'via remote':>12}{'added':>10}")
        print(f"{'first token ms':<18}{d_ttft * 1e3:>10.2f}{h_ttft * 1e3:>12.2f}{(h_ttft - d_ttft) * 1e3:>10.2f}")
        print(f"{'per token ms':<18}{d_tok * 1e3:>10.3f}{h_tok * 1e3:>12.3f}{(h_tok - d_tok) * 1e3:>10.3f}")
        print(f"tokens/s: direct {1 / d_tok:.2f}, via remote {1 / h_tok:.2f} ({d_tok / h_tok:.3f}x)")
    finally:
        for p in (front, back):
            p.terminate()
            p.wait(20)


if __name__ == "__main__":
    main()
