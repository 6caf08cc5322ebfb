#!/usr/bin/env python3
"""Speculative decoding benchmark for `corral serve` (standard library only).

Starts one server and sends the same greedy /api/chat request with each speculation mode
(`options.speculative`: off, ngram, auto; interleaved over --reps repetitions, so a slow
minute of a shared machine does not land on one mode only), and prints per mode the median
decode rate (the server's eval_count / eval_duration), the draft tokens decoded and
accepted (from /metrics), and the ratio to `off`. Every request loads the model afresh
(`keep_alive: 0`), so no request reuses another's cache. Greedy text must be the same
with speculation as without: the script fails when a mode's text is none of the texts
`off` gave (llama.cpp on CPU is not always bit-reproducible from one load to the next on
near-tied tokens, so `off` itself is checked against its own repetitions and reported).

Two prompts: `repeat` asks the model to repeat a given passage (where prompt lookup pays
off), `free` asks for free text (where drafts are rarely right: what the default, `auto`,
must not make slower).

  speculative_bench.py --corral /var/tmp/h3-release/release/corral \\
      --plugin-dir /var/tmp/h3-release/release \\
      --gguf /var/tmp/corral-models/gemma-3-270m-q4_k_m.gguf --threads 2 --reps 3
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import urllib.request

PASSAGE = (
    "The lighthouse stood at the end of the long stone pier, and every evening the keeper "
    "climbed its one hundred and twelve steps to light the lamp. Ships passing in the night "
    "saw its beam sweep across the water, and knew that the rocks of the northern shore were "
    "near. In winter the waves broke over the pier and the spray froze on the windows, but "
    "the lamp never failed, because the keeper trimmed the wick and polished the glass each "
    "morning before he slept."
)

PROMPTS = {
    "repeat": "Repeat the following passage exactly, word for word, and write nothing else:\n\n"
    + PASSAGE,
    "free": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
}


def post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    out = {}
    for name in ("corral_draft_tokens_total", "corral_draft_accepted_total"):
        m = re.search(r"^" + name + r" (\d+)", text, re.M)
        out[name] = int(m.group(1)) if m else 0
    return out


def start_server(args):
    env = dict(os.environ, CORRAL_PLUGIN_PATH_ONLY="1", XDG_CONFIG_HOME="/nonexistent-corral-bench",
               CORRAL_LOG="warn", CORRAL_NUM_PARALLEL="1",
               CORRAL_ALLOW_MODEL_PATHS=os.path.dirname(os.path.abspath(args.gguf)))
    if args.isolation:
        env["CORRAL_ISOLATION"] = args.isolation
    cmd = [args.corral, "--plugin-dir", args.plugin_dir, "serve", "--host", "127.0.0.1:0",
           "--threads", str(args.threads)]
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        m = re.match(r"listening on (http://\S+)", line)
        if m:
            return p, m.group(1)
    raise SystemExit("the server did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", required=True)
    ap.add_argument("--plugin-dir", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--modes", default="off,ngram,auto")
    ap.add_argument("--prompts", default="repeat,free")
    ap.add_argument("--isolation", choices=["process", "in-process"])
    args = ap.parse_args()
    modes = args.modes.split(",")
    proc, url = start_server(args)
    model = os.path.abspath(args.gguf)
    failed = False
    try:
        # Load the model once (the page cache) before measuring.
        post(url, "/api/chat", {"model": model, "keep_alive": 0,
                                "messages": [{"role": "user", "content": "hi"}],
                                "stream": False, "options": {"num_predict": 4, "temperature": 0}})
        for pname in args.prompts.split(","):
            rates = {m: [] for m in modes}
            drafts = {m: [0, 0] for m in modes}
            texts = {}
            for _ in range(args.reps):
                for mode in modes:
                    before = metrics(url)
                    v = post(url, "/api/chat", {
                        "model": model,
                        "keep_alive": 0,
                        "messages": [{"role": "user", "content": PROMPTS[pname]}],
                        "stream": False,
                        "options": {"num_predict": args.tokens, "temperature": 0,
                                    "speculative": mode, "draft_max": args.draft_max},
                    })
                    after = metrics(url)
                    rates[mode].append(v["eval_count"] / (v["eval_duration"] / 1e9))
                    drafts[mode][0] += after["corral_draft_tokens_total"] - before["corral_draft_tokens_total"]
                    drafts[mode][1] += after["corral_draft_accepted_total"] - before["corral_draft_accepted_total"]
                    texts.setdefault(mode, []).append((v["message"]["content"], v["eval_count"]))
            base = statistics.median(rates["off"]) if "off" in rates else None
            print(f"prompt {pname!r} ({args.tokens} tokens max, greedy, {args.reps} reps, "
                  f"{args.threads} threads):")
            for mode in modes:
                med = statistics.median(rates[mode])
                ratio = f"{med / base:5.2f}x" if base else "  -  "
                d, a = drafts[mode]
                acc = f"{a}/{d} drafts accepted" if d else "no drafts"
                counts = sorted({n for _, n in texts[mode]})
                print(f"  {mode:6s} {med:7.1f} tok/s  {ratio}  eval_count {counts}  {acc}")
            if "off" in texts:
                off = {t for t, _ in texts["off"]}
                print(f"  off reproducible over {args.reps} loads: {'yes' if len(off) == 1 else 'NO'}")
                for mode in modes:
                    if mode == "off":
                        continue
                    same = all(t in off for t, _ in texts[mode])
                    print(f"  {mode}: greedy text the same as without speculation: {'yes' if same else 'NO'}")
                    failed |= not same
            if pname == "repeat":
                ref = texts[modes[0]][0][0]
                print("  output:", json.dumps(ref[:160]) + ("..." if len(ref) > 160 else ""))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
