#!/usr/bin/env python3
"""Concurrent streaming chat benchmark for `corral serve` (standard library only).

Sends N concurrent streaming /api/chat requests (for each N in --concurrency) and reports,
per N: aggregate tokens/s (all tokens generated / wall time from the first request to the
last token), per-stream tokens/s (the server's eval_count / eval_duration, and wall-clock
between first and last token), and time to first token.

Each level runs --reps times, the levels interleaved (1, 4, 8, 1, 4, 8, ...) so that a
slow minute of a shared machine does not land on one level only; the table gives medians.

Either point it at a running server (--url, --model), or let it start one:
  serve_bench.py --corral target/release/corral --plugin-dir DIR --gguf /tmp/tl.gguf --threads 2

With --engine-bench (needs --corral), it runs `corral bench --pp 0 --tg TOKENS` on the
same file, plugin and threads while no server runs (with --compare-isolation, once before
each repetition, so both figures come from the same stretches of time), and reports the
single stream's server-side rate (eval_count / eval_duration) as a ratio to the median of
the engine's own tg rates.

With --raw-bin PATH (the `llama-raw` built with the plugin), after the server has stopped
it runs `llama-raw batched` on the same file and threads: raw llama.cpp decoding N
sequences together, their prompts (of the median prompt length the server reported)
decoded first, with the same number of tokens each. Its aggregate counting the prompts is
what N streams could reach at best; the table shows corral against it.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a steam engine works, in detail.",
    "Describe a journey across a desert.",
    "List the steps of baking bread and why each matters.",
    "Tell the history of a small mountain village.",
    "Describe the life cycle of a star.",
    "Write a letter from a sailor to his family.",
    "Explain the rules of chess to a beginner.",
]


def one_stream(url, model, prompt, tokens, seed, out):
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "options": {"num_predict": tokens, "temperature": 0.8, "seed": seed},
    }).encode()
    req = urllib.request.Request(url + "/api/chat", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = None
    last = None
    final = None
    try:
        r = urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None
    with r:
        for line in r:
            v = json.loads(line)
            if "error" in v:
                raise RuntimeError(v["error"])
            now = time.perf_counter()
            if v.get("message", {}).get("content") and first is None:
                first = now
            last = now
            if v.get("done"):
                final = v
    out.append({"t0": t0, "first": first, "last": last, "final": final})


def run_level(url, model, n, tokens, rep=0):
    """N concurrent streams. Each repetition words its prompts differently from the start,
    so the server's prefix cache cannot skip prompt processing in later repetitions."""
    results = []
    threads = [threading.Thread(target=one_stream,
                                args=(url, model, f"Request {rep}.{i}: {PROMPTS[i % len(PROMPTS)]}",
                                      tokens, i, results))
               for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(r["last"] for r in results)
    total = sum(r["final"]["eval_count"] for r in results)
    server_rates = [r["final"]["eval_count"] / (r["final"]["eval_duration"] / 1e9) for r in results]
    wall_rates = [(r["final"]["eval_count"] - 1) / (r["last"] - r["first"]) for r in results if r["last"] > r["first"]]
    ttfts = [r["first"] - r["t0"] for r in results]
    return {
        "streams": n,
        "tokens": total,
        "aggregate_tps": total / (end - start),
        "per_stream_server_tps": statistics.mean(server_rates),
        "per_stream_wall_tps": statistics.mean(wall_rates) if wall_rates else 0.0,
        "ttft_mean_s": statistics.mean(ttfts),
        "ttft_max_s": max(ttfts),
        "prompt_tokens": statistics.median(r["final"]["prompt_eval_count"] for r in results),
    }


def median_row(samples):
    """The median of each figure over the repetitions of one level."""
    keys = [k for k in samples[0] if k != "streams"]
    row = {"streams": samples[0]["streams"], "reps": len(samples)}
    for k in keys:
        row[k] = statistics.median(s[k] for s in samples)
    row["aggregate_tps_samples"] = [s["aggregate_tps"] for s in samples]
    return row


def engine_bench(args, model):
    """`corral bench`'s tg rate on the same file, plugin and threads (server not running)."""
    env = dict(os.environ, CORRAL_PLUGIN_PATH_ONLY="1", XDG_CONFIG_HOME="/nonexistent-corral-bench")
    cmd = [args.corral, "--plugin-dir", args.plugin_dir, "bench", model, "--threads", str(args.threads),
           "--pp", "0", "--tg", str(args.tokens), "--reps", "3", "--no-raw", "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)["results"][0]
    return {"engine": r["engine"], "test": r["test"], "median_tps": r["median_tps"]}


def raw_batched(args, model, levels, prompt_tokens):
    """llama.cpp's own aggregate for each level (prompts counted), from `llama-raw batched`."""
    cmd = [args.raw_bin, "batched", model, "--threads", str(args.threads),
           "--np", ",".join(str(n) for n in levels), "--pp", str(max(1, int(prompt_tokens))),
           "--tg", str(args.tokens), "--reps", "3", "--unified", "0", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {r["n_seq"]: r["with_prompt"]["median_tps"] for r in json.loads(out)["rows"]}


def start_server(args, isolation=None):
    env = dict(os.environ, CORRAL_PLUGIN_PATH_ONLY="1", XDG_CONFIG_HOME="/nonexistent-corral-bench",
               CORRAL_LOG="warn", CORRAL_NUM_PARALLEL=str(max(args.concurrency)))
    if isolation:
        env["CORRAL_ISOLATION"] = isolation
    cmd = [args.corral, "--plugin-dir", args.plugin_dir, "serve", "--host", "127.0.0.1:0",
           "--threads", str(args.threads)]
    if args.gguf:
        # The model is named by path: let the server read files in its directory.
        cmd += ["--allow-model-paths", os.path.dirname(os.path.abspath(args.gguf))]
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        m = re.match(r"listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    raise RuntimeError("server did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--model", help="model name or absolute GGUF path (default: --gguf)")
    ap.add_argument("--corral")
    ap.add_argument("--plugin-dir")
    ap.add_argument("--gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each level (median reported)")
    ap.add_argument("--engine-bench", action="store_true",
                    help="also run `corral bench` tg on the same model first, for the HTTP/engine ratio")
    ap.add_argument("--raw-bin", help="llama-raw of the same build: adds llama.cpp's batched ceiling")
    ap.add_argument("--compare-isolation", action="store_true",
                    help="measure engines in worker processes (the default) against engines "
                         "in-process: one server at a time, restarted for every repetition, "
                         "modes alternating; report their ratio")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    proc = None
    url = args.url
    model = args.model or (os.path.abspath(args.gguf) if args.gguf else None)
    if args.engine_bench and not (args.corral and args.plugin_dir and model):
        ap.error("--engine-bench needs --corral, --plugin-dir and --gguf")
    # With --engine-bench, `corral bench` runs once before each repetition (no server
    # running then), so its rate and the server's come from the same stretches of time
    # on a machine whose speed drifts; the median of those runs is the engine's rate.
    engine_runs = []

    def bench_engine():
        if args.engine_bench:
            engine_runs.append(engine_bench(args, model))
    if not url:
        if not (args.corral and args.plugin_dir and model):
            ap.error("give --url and --model, or --corral, --plugin-dir and --gguf")
    modes = ["process", "in-process"] if args.compare_isolation else [None]
    samples = {(m, n): [] for m in modes for n in args.concurrency}
    if args.compare_isolation and not args.url:
        # One server alive at a time: each repetition starts the mode's server, warms it
        # up, runs every level and stops it (alternating which mode goes first), so an
        # idle second server holding its own copy of the model shares nothing with the
        # measured one.
        for rep in range(max(1, args.reps)):
            bench_engine()
            for mode in (modes if rep % 2 == 0 else modes[::-1]):
                p, url_m = start_server(args, mode)
                try:
                    one_stream(url_m, model, "warm up", 8, 0, [])
                    for n in args.concurrency:
                        samples[(mode, n)].append(run_level(url_m, model, n, args.tokens, rep))
                finally:
                    p.terminate()
                    p.wait(30)
    else:
        # The servers stay up here, so the engine is measured once, before they start.
        bench_engine()
        servers = {}
        try:
            for mode in modes:
                if args.url:
                    servers[mode] = (None, args.url)
                else:
                    servers[mode] = start_server(args, mode)
                # Warm-up: load the model and run a short generation.
                one_stream(servers[mode][1], model, "warm up", 8, 0, [])
            for rep in range(max(1, args.reps)):
                # Alternate which server goes first, so neither always follows the other.
                for mode in (modes if rep % 2 == 0 else modes[::-1]):
                    for n in args.concurrency:
                        samples[(mode, n)].append(run_level(servers[mode][1], model, n, args.tokens, rep))
        finally:
            for p, _ in servers.values():
                if p:
                    p.terminate()
                    p.wait(30)
    engine = None
    if engine_runs:
        engine = dict(engine_runs[0], median_tps=statistics.median(r["median_tps"] for r in engine_runs),
                      runs=[r["median_tps"] for r in engine_runs])
    by_mode = {m: [median_row(samples[(m, n)]) for n in args.concurrency] for m in modes}
    rows = by_mode[modes[0]]
    raw = None
    if args.raw_bin:
        if not model:
            ap.error("--raw-bin needs the model file (--gguf, or --model as a path)")
        raw = raw_batched(args, model, args.concurrency, rows[0]["prompt_tokens"])
        for r in rows:
            r["llama_cpp_batched_tps"] = raw.get(r["streams"])
    if args.json:
        out = {"engine_bench": engine, "levels": rows}
        if args.compare_isolation:
            out["in_process_levels"] = by_mode["in-process"]
        print(json.dumps(out, indent=2))
        return
    base = rows[0]["aggregate_tps"]
    print(f"medians of {rows[0]['reps']} repetitions per level, {args.tokens} tokens per stream")
    raw_head = f" {'llama.cpp t/s':>14} {'corral/llama.cpp':>17} {'llama.cpp vs 1':>15}" if raw else ""
    print(f"{'streams':>7} {'aggregate t/s':>14} {'vs 1':>6} {'per-stream t/s (server)':>24} "
          f"{'per-stream t/s (wall)':>22} {'TTFT mean':>10} {'TTFT max':>9}" + raw_head)
    for r in rows:
        line = (f"{r['streams']:>7} {r['aggregate_tps']:>14.2f} {r['aggregate_tps'] / base:>6.2f} "
                f"{r['per_stream_server_tps']:>24.2f} {r['per_stream_wall_tps']:>22.2f} "
                f"{r['ttft_mean_s']:>9.3f}s {r['ttft_max_s']:>8.3f}s")
        if raw and r.get("llama_cpp_batched_tps"):
            lc = r["llama_cpp_batched_tps"]
            line += (f" {lc:>14.2f} {r['aggregate_tps'] / lc:>17.3f} "
                     f"{lc / raw[rows[0]['streams']]:>15.2f}")
        print(line)

    if args.compare_isolation:
        print("engines in worker processes (default) vs in-process, aggregate t/s:")
        for r, q in zip(by_mode["process"], by_mode["in-process"]):
            print(f"{r['streams']:>7} streams: process {r['aggregate_tps']:.2f}, in-process "
                  f"{q['aggregate_tps']:.2f}, ratio {r['aggregate_tps'] / q['aggregate_tps']:.3f}; "
                  f"per-stream (server) ratio "
                  f"{r['per_stream_server_tps'] / q['per_stream_server_tps']:.3f}")
    if engine:
        one = rows[0]["per_stream_server_tps"]
        print(f"single stream through HTTP: {one:.2f} t/s (server eval rate) vs {engine['engine']} "
              f"{engine['test']} {engine['median_tps']:.2f} t/s: {one / engine['median_tps']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
