#!/usr/bin/env python3
"""corral serve against llama-server on the same GGUF file, same client, same run.

Both servers stay up for the whole run (each idle while the other works) and every
measurement runs on one, then the other, the order alternating per repetition, so the
pairs see the same minute of this machine (a virtual machine's memory bandwidth drifts by
more than the differences measured). `--one-at-a-time` starts each server alone per
repetition instead. Every prompt carries the repetition's tag, so no server answers one
from a prefix cached by an earlier measurement.

Workloads:

  plain   N concurrent /v1/completions of --tokens tokens (N in --concurrency): aggregate
          generated tokens per second of wall time.
  prefill N concurrent one-token completions whose prompts (--prefill-tokens each) share
          nothing: prompt tokens per second of wall time, prompt processing with N
          sequences in flight.
  embed   N concurrent /v1/embeddings requests of --embed-batch texts of --embed-words
          words: texts embedded per second. Needs an embedding model (a BERT GGUF, e.g.
          from scripts/convert_bert.py) and runs alone (`--workloads embed`); llama-server
          then gets `--embeddings`.
  shared  4 concurrent streaming chats that share one system prompt of about
          --system-tokens tokens (a RAG or agent prompt), then --rounds - 1 more rounds of
          4 in which each chat asks a new question after its earlier turns (the history
          holds fixed answers, so both servers get the same prompts): wall time per round,
          mean time to first token, and the tokens the answers took (the same work on
          both servers when these agree; both sample greedily without a repeat penalty).

The peer is llama-server built by scripts/build-llama-server.sh (from the llama.cpp that
llama-cpp-python vendors), run with `-t THREADS -np 4 -c 4*CTX`; corral serve runs with
4 parallel sequences of CTX tokens each and THREADS threads. Ratios are corral's speed
over llama-server's (above 1: corral is faster).

  tests/bench/vs_llama_server.py --corral target/release/corral \\
      --plugin-dir target/release --gguf model.gguf \\
      --llama-server "$(scripts/build-llama-server.sh)"
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, what, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        for path in ("/health", "/api/version"):
            try:
                with urllib.request.urlopen(url + path, timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
        time.sleep(0.3)
    sys.exit(f"{what} did not start within {timeout} s")


def post(url, path, body, timeout=1800):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


# Both servers sample alike: corral's OpenAI endpoints default to Ollama's repeat penalty
# of 1.1, llama-server's to 1.0, and on a real model the penalty changes where answers end.
SAME_SAMPLING = {"temperature": 0, "repeat_penalty": 1.0}


def stream_chat(url, model, messages, max_tokens):
    """A streaming /v1/chat/completions: (text, seconds to first token, total seconds,
    tokens generated as the server's usage counts them)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "seed": 1, "stream_options": {"include_usage": True}, **SAME_SAMPLING}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    first = None
    text = []
    tokens = 0
    with urllib.request.urlopen(req, timeout=1800) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                tokens = ev["usage"].get("completion_tokens", tokens)
            for ch in ev.get("choices", []):
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    if first is None:
                        first = time.time() - t0
                    text.append(piece)
    return "".join(text), (first if first is not None else time.time() - t0), time.time() - t0, tokens


class Peer:
    def __init__(self, name, cmd, env, model):
        self.name, self.cmd, self.env, self.model = name, cmd, env, model

    def __enter__(self):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [c.replace("{port}", str(port)) for c in self.cmd]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=self.log)
        wait_ready(self.url, self.proc, self.name)
        return self

    def __exit__(self, *a):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def at_once(one, n):
    """Runs one(0) .. one(n - 1) on n threads at once; the wall seconds they took."""
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.time() - t


def plain(peer, n, tokens, tag=""):
    """Aggregate tokens/s of n concurrent completions."""
    results = [None] * n

    def one(i):
        v = post(peer.url, "/v1/completions",
                 {"model": peer.model, "prompt": f"Once upon a time, story {tag}{i}:",
                  "max_tokens": tokens, "seed": i, "ignore_eos": True, **SAME_SAMPLING})
        results[i] = v["usage"]["completion_tokens"]

    wall = at_once(one, n)
    return sum(results) / wall


def prefill(peer, n, tokens, tag=""):
    """Prompt tokens/s of n concurrent completions of one token whose prompts of about
    `tokens` tokens share nothing (each starts with its own words), so every prompt is
    evaluated in full: prompt processing with n sequences in flight."""
    body = system_prompt(peer, tokens)
    results = [None] * n

    def one(i):
        v = post(peer.url, "/v1/completions",
                 {"model": peer.model, "prompt": f"Reader {tag}{i * 7919} asks. " + body,
                  "max_tokens": 1, "temperature": 0, "cache_prompt": False})
        results[i] = v["usage"]["prompt_tokens"]

    wall = at_once(one, n)
    return sum(results) / wall


def embed(peer, n, batch, words, tag=""):
    """Texts embedded per second by n concurrent /v1/embeddings requests of `batch`
    texts of `words` words each (every text its own, so nothing is answered from a
    cache): a retrieval index being built."""
    results = [None] * n

    def one(i):
        texts = [f"Passage {tag}{i}.{j}: " + " ".join(document(words).split()[8 + j % 5:][:words])
                 for j in range(batch)]
        v = post(peer.url, "/v1/embeddings", {"model": peer.model, "input": texts})
        assert len(v["data"]) == batch and all(len(d["embedding"]) > 0 for d in v["data"]), v
        results[i] = batch

    wall = at_once(one, n)
    return sum(results) / wall


def document(n_words):
    words = []
    i = 0
    while len(words) < n_words:
        words += f"Section {i}: the service keeps records of orders, invoices and shipments; " \
                 f"each record {i} has an owner, a date and a status.".split()
        i += 1
    return "You answer questions about this document.\n\n" + " ".join(words[:n_words])


SYSTEM = {}


def system_prompt(peer, tokens):
    """A document of about `tokens` tokens of the model's vocabulary: the words per token
    are measured once on a sample (a generated vocabulary splits words more finely than
    a trained one)."""
    if tokens not in SYSTEM:
        sample = document(200)
        v = post(peer.url, "/v1/completions", {"model": peer.model, "prompt": sample, "max_tokens": 1})
        per_word = v["usage"]["prompt_tokens"] / 200
        SYSTEM[tokens] = document(int(tokens / per_word))
    return SYSTEM[tokens]


def shared(peer, system_tokens, rounds, answer_tokens, tag=""):
    """Per round: (wall seconds, mean time to first token, tokens generated in all)."""
    system = f"Case {tag}. " + system_prompt(peer, system_tokens)
    chats = [[{"role": "system", "content": system}] for _ in range(4)]
    out = []
    for r in range(rounds):
        ttfts = [0.0] * 4
        counts = [0] * 4

        def one(i):
            chats[i].append({"role": "user", "content": f"Question {r}.{i}: what is the status of record {i * 7 + r}?"})
            _, ttft, _, counts[i] = stream_chat(peer.url, peer.model, chats[i], answer_tokens)
            # The history carries a fixed answer, not the generated one: both servers then
            # see the same prompts (a random-weight model's answers differ per engine
            # and re-tokenize into arbitrary lengths).
            chats[i].append({"role": "assistant", "content":
                             f"Record {i * 7 + r} was shipped on day {r + i}; its owner confirmed the invoice."})
            ttfts[i] = ttft

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        t = time.time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out.append((time.time() - t, statistics.mean(ttfts), sum(counts)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", required=True)
    ap.add_argument("--plugin-dir", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096, help="context per sequence")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--workloads", default="plain,prefill,shared")
    ap.add_argument("--prefill-tokens", type=int, default=512,
                    help="prompt length of the prefill workload")
    ap.add_argument("--system-tokens", type=int, default=1200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--answer-tokens", type=int, default=48)
    ap.add_argument("--embed-batch", type=int, default=16, help="texts per request of the embed workload")
    ap.add_argument("--embed-words", type=int, default=120, help="words per text of the embed workload")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--isolation", default="process")
    ap.add_argument("--backend", default=None,
                    help="corral's engine (`corral serve --backend`); default: the host's choice")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="start each server alone per repetition (default: both stay up, measurements interleaved)")
    ap.add_argument("--llama-server-args", default="",
                    help="extra llama-server arguments, space-separated (e.g. \"-fa off\")")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gguf = os.path.abspath(args.gguf)
    store = tempfile.mkdtemp(prefix="corral-bench-store-")
    cenv = dict(os.environ, CORRAL_PLUGIN_PATH_ONLY="1", CORRAL_NUM_PARALLEL="4",
                CORRAL_NUM_THREADS=str(args.threads), CORRAL_CONTEXT_LENGTH=str(args.ctx),
                CORRAL_MODELS=store, CORRAL_ALLOW_MODEL_PATHS=os.path.dirname(gguf),
                CORRAL_ISOLATION=args.isolation, CORRAL_KEEP_ALIVE="-1", CORRAL_LOG="warn",
                XDG_CONFIG_HOME="/nonexistent-corral-bench")
    peers = {
        "corral": lambda: Peer("corral", [args.corral, "--plugin-dir", args.plugin_dir, "serve",
                                          "--host", "127.0.0.1:{port}"]
                               + (["--backend", args.backend] if args.backend else []), cenv, gguf),
        "llama-server": lambda: Peer("llama-server", [args.llama_server, "-m", gguf, "-t", str(args.threads),
                                                      "-tb", str(args.threads), "-np", "4", "-c", str(4 * args.ctx),
                                                      "--host", "127.0.0.1", "--port", "{port}"]
                                     + (["--embeddings"] if "embed" in args.workloads.split(",") else [])
                                     + args.llama_server_args.split(),
                                     dict(os.environ), "model"),
    }
    levels = [int(x) for x in args.concurrency.split(",") if x]
    workloads = args.workloads.split(",")
    # The measurements, each a function of (server, tag) returning {metric: value}.
    cases = []
    if "plain" in workloads:
        cases += [lambda p, tag, n=n: {f"plain x{n} t/s": plain(p, n, args.tokens, tag)} for n in levels]
    if "prefill" in workloads:
        cases += [lambda p, tag, n=n: {f"prefill x{n} t/s": prefill(p, n, args.prefill_tokens, tag)}
                  for n in levels]
    if "embed" in workloads:
        cases += [lambda p, tag, n=n: {f"embed x{n} texts/s": embed(p, n, args.embed_batch, args.embed_words, tag)}
                  for n in levels]
    if "shared" in workloads:
        def shared_case(p, tag):
            out = {}
            for r, (wall, ttft, tokens) in enumerate(shared(p, args.system_tokens, args.rounds,
                                                             args.answer_tokens, tag)):
                out[f"shared round {r + 1} s"] = wall
                out[f"shared round {r + 1} ttft s"] = ttft
                # The answers' tokens: a round is the same work on both servers only when
                # these agree (a real model may end an answer early).
                out[f"shared round {r + 1} tokens"] = tokens
            return out
        cases.append(shared_case)
    res = {name: {} for name in peers}

    def record(name, values):
        for k, v in values.items():
            res[name].setdefault(k, []).append(v)

    def warm(peer):
        # Load the model, touch the weights.
        if workloads == ["embed"]:
            post(peer.url, "/v1/embeddings", {"model": peer.model, "input": "Hi"})
        else:
            post(peer.url, "/v1/completions", {"model": peer.model, "prompt": "Hi", "max_tokens": 8})

    if args.one_at_a_time:
        for rep in range(args.reps):
            order = list(peers) if rep % 2 == 0 else list(reversed(list(peers)))
            for name in order:
                with peers[name]() as peer:
                    warm(peer)
                    for i, case in enumerate(cases):
                        record(name, case(peer, f"{rep}.{i}."))
                print(f"rep {rep + 1} {name}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in res[name].items()),
                      file=sys.stderr, flush=True)
    else:
        with peers["corral"]() as corral, peers["llama-server"]() as llama:
            running = {"corral": corral, "llama-server": llama}
            for peer in running.values():
                warm(peer)
            for rep in range(args.reps):
                for i, case in enumerate(cases):
                    order = list(running) if (rep + i) % 2 == 0 else list(reversed(list(running)))
                    for name in order:
                        time.sleep(0.5)  # let the other server's threads settle
                        record(name, case(running[name], f"{rep}.{i}."))
                for name in running:
                    print(f"rep {rep + 1} {name}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in res[name].items()),
                          file=sys.stderr, flush=True)
    rows = []
    for key in res["corral"]:
        cs, ls = res["corral"][key], res["llama-server"][key]
        # Speed-ups: for rates corral/llama, for times llama/corral; the median of the
        # medians' ratio and of each repetition's own ratio (the pairs measured together).
        # (Token counts: corral's over llama-server's, 1.00 when both did the same work.)
        speedup = (lambda c, l: c / l) if key.endswith(("/s", "tokens")) else (lambda c, l: l / c)
        c, l = statistics.median(cs), statistics.median(ls)
        paired = statistics.median(speedup(a, b) for a, b in zip(cs, ls))
        rows.append((key, c, l, speedup(c, l), paired))
    if args.json:
        print(json.dumps([{"metric": k, "corral": c, "llama_server": l, "speedup": r, "paired_speedup": pr}
                          for k, c, l, r, pr in rows], indent=1))
        return
    print(f"{'metric':<28}{'corral':>10}{'llama-server':>14}{'speed-up':>10}{'paired':>9}")
    for k, c, l, r, pr in rows:
        print(f"{k:<28}{c:>10.2f}{l:>14.2f}{r:>9.2f}x{pr:>8.2f}x")


if __name__ == "__main__":
    main()
