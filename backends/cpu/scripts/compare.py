#!/usr/bin/env python3
"""Compares the cpu engine with raw llama.cpp on one GGUF file.

usage: compare.py CPU_RAW LLAMA_RAW MODEL [--greedy N]

For each prompt: the last-position logits of both (max |diff|, relative to the largest
logit, top-1 agreement), and optionally greedy continuations of N tokens (equal or not).
"""
import json, subprocess, sys

PROMPTS = [
    "Hello", "The capital of France is", "Once upon a time, in a land far away",
    "fn main() { println!(\"héllo\"); }", "The quick brown fox jumps over the lazy dog.",
    "1 2 3 4 5 6 7 8 9 10", "In the beginning", "<|im_start|>user\nHi<|im_end|>\n",
    "What is the meaning of life?", "A B C D E F G", "def f(x):\n    return x * 2\n",
    "Tokyo, Paris, London and", "She said that", "The weather today is", "Lorem ipsum dolor sit amet",
    "2 + 2 =", "import numpy as np", "Dear Sir or Madam,", "Rust is a systems language",
    "To be or not to be", "the the the the the", "Water boils at", "My name is",
    "Here is a list:\n- one\n- two\n-", "日本語のテキスト", "🦀 crabs 🦀", "It was a dark and stormy night",
    "SELECT * FROM users WHERE", "Once more unto the breach", "Roses are red,",
    "The mitochondria is", "E = mc^2 means",
]


def run(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main():
    cpu, raw, model = sys.argv[1:4]
    n_greedy = int(sys.argv[sys.argv.index("--greedy") + 1]) if "--greedy" in sys.argv else 0
    worst = worst_rel = 0.0
    mean_abs = []
    top1 = 0
    for p in PROMPTS:
        a = run(cpu, "logits", model, "--prompt", p, "--json")
        b = run(raw, "logits", model, "--prompt", p, "--json")
        assert a["prompt_tokens"] == b["prompt_tokens"], (p, a["prompt_tokens"], b["prompt_tokens"])
        la, lb = a["logits"], b["logits"]
        d = [abs(x - y) for x, y in zip(la, lb)]
        scale = max(abs(y) for y in lb)
        worst = max(worst, max(d))
        worst_rel = max(worst_rel, max(d) / scale)
        mean_abs.append(sum(d) / len(d))
        top1 += la.index(max(la)) == lb.index(max(lb))
    n = len(PROMPTS)
    print(f"{model}: {n} prompts: max |diff| {worst:.3e}, max |diff|/max|logit| {worst_rel:.3e}, "
          f"mean |diff| {sum(mean_abs)/n:.3e}, top-1 agreement {top1}/{n}")
    if n_greedy:
        equal = 0
        lens = []
        for p in PROMPTS:
            a = run(cpu, "greedy", model, "--prompt", p, "--n", str(n_greedy), "--json")
            b = run(raw, "greedy", model, "--prompt", p, "--n", str(n_greedy), "--json")
            same = a["tokens"] == b["tokens"]
            equal += same
            lens.append(len(b["tokens"]))
            if not same:
                k = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y),
                         min(len(a["tokens"]), len(b["tokens"])))
                print(f"  greedy differs for {p!r} at token {k}")
        print(f"  greedy {n_greedy}: {equal}/{n} continuations identical "
              f"(llama.cpp lengths: min {min(lens)}, max {max(lens)}; shorter = stopped at EOG)")


main()
