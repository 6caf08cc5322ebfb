#!/usr/bin/env bash
# cuda-check.sh: the CUDA variant of the llama.cpp plugin on an NVIDIA machine, checked the
# way a user runs it. Needs no Rust toolchain on that machine: build here, copy over.
#
#   backends/llama-cpp/build-variant.sh cuda13 OUT          # OUT/llama-cpp-cuda13/
#   tests/gpu/cuda-check.sh CORRAL PLUGIN_DIR [LLAMA_RAW] [PLUGIN_TESTS]
#
# CORRAL: the host binary. PLUGIN_DIR: a directory of plugin directories (OUT above; the
# pure-Rust engine's may sit beside it). LLAMA_RAW: the llama-raw of the same cuda build
# (target/llama-cuda13/release/llama-raw), for `corral bench`'s ratio against raw
# llama.cpp. PLUGIN_TESTS: the plugin's test binary of the same build (`cargo test
# --no-run` with the same features and environment; it runs llama-raw from the path it
# was compiled with). cuBLAS 13 must be findable: LD_LIBRARY_PATH, or the nvidia-cublas
# wheel, which this script looks for under /opt, /usr/local and /usr/lib.
#
# It prints: nvidia-smi's view, `corral probe` (the GPU as NVML reports it), `corral
# backends --check` (which variant is chosen and that it loads), `corral bench` on a
# generated TinyLlama-shaped Q4_K_M against raw llama.cpp, one-shot and interactive
# `corral run` in-process and in a worker process (exit codes), a server's `/api/ps`
# estimate beside the GPU memory its engine process holds, 1 and 4 concurrent streams,
# and the plugin's tests on the GPU. Exit code: the number of failed steps. SHAPE=tiny
# (the generator's shape presets) makes the model smaller, for a dry run on a CPU.
set -uo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,22p' "$0" >&2
    exit 2
fi
CORRAL=$(realpath "$1")
PLUGINS=$(realpath "$2")
LLAMA_RAW=${3:+$(realpath "$3")}
PLUGIN_TESTS=${4:+$(realpath "$4")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
FAILED=0
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
check() { "$@" || { echo "FAILED ($?): $*"; FAILED=$((FAILED + 1)); }; }
c() { "$CORRAL" --plugin-dir "$PLUGINS" "$@"; }

if ! ldconfig -p 2>/dev/null | grep -q libcublas.so.13; then
    CUBLAS=$(find /opt /usr/local /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)
    [[ -n $CUBLAS ]] && export LD_LIBRARY_PATH="$(dirname "$CUBLAS")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

step "nvidia-smi"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
step "corral probe"
check c probe
step "corral backends --check"
check c backends --check --format gguf

step "a TinyLlama-shaped Q4_K_M"
check c model generate --shape "${SHAPE:-tinyllama}" --type q4_k_m tl.gguf

step "corral bench (the chosen backend) against raw llama.cpp"
if [[ -n $LLAMA_RAW ]]; then
    check c bench tl.gguf -r 5 --raw-bin "$LLAMA_RAW"
else
    check c bench tl.gguf -r 5 --no-raw
fi

for iso in in-process process; do
    step "corral run --isolation $iso (one-shot)"
    check c run --isolation "$iso" tl.gguf "Hello" >/dev/null
done
if command -v script >/dev/null; then
    step "corral run --isolation in-process (interactive, two turns)"
    printf 'Hello\nHow are you?\n/bye\n' >turns
    check script -qec "'$CORRAL' --plugin-dir '$PLUGINS' run --isolation in-process tl.gguf" /dev/null <turns >/dev/null
fi

step "serve: the estimate against the GPU, 1 and 4 streams"
export CORRAL_HOST=127.0.0.1:11577 URL=http://127.0.0.1:11577
c serve --models "$WORK/store" >serve.log 2>&1 &
SERVE=$!
up() { python3 -c 'import os, urllib.request; urllib.request.urlopen(os.environ["URL"] + "/api/version", timeout=1)' 2>/dev/null; }
for _ in $(seq 100); do up && break; sleep 0.1; done
printf 'FROM %s\n' "$WORK/tl.gguf" >Modelfile
check c create tl -f Modelfile >/dev/null
check python3 - <<'PY'
import json, os, threading, time, urllib.request
URL = os.environ["URL"]
def gen(i, out):
    body = json.dumps({"model": "tl", "prompt": f"Stream {i}: tell me a story", "stream": False,
                       "options": {"num_predict": 256, "temperature": 0}}).encode()
    r = json.loads(urllib.request.urlopen(urllib.request.Request(URL + "/api/generate", data=body), timeout=300).read())
    out[i] = r["eval_count"]
for n in (1, 4, 1, 4):
    out = {}
    t = time.time()
    th = [threading.Thread(target=gen, args=(i, out)) for i in range(n)]
    [x.start() for x in th]; [x.join() for x in th]
    dt = time.time() - t
    print(f"{n} stream(s): {sum(out.values())} tokens in {dt:.2f} s = {sum(out.values()) / dt:.1f} t/s")
m = json.loads(urllib.request.urlopen(URL + "/api/ps").read())["models"][0]
print({k: m[k] for k in ("size", "size_vram", "context_length", "num_parallel", "backend")})
PY
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
kill "$SERVE"; wait "$SERVE"

if [[ -n $PLUGIN_TESTS ]]; then
    step "the plugin's tests on the GPU"
    check "$PLUGIN_TESTS" --test-threads 1
fi

step "done: $FAILED failed step(s)"
exit "$FAILED"
