#!/usr/bin/env bash
# Checks the model generator's quantized files against llama.cpp's own quantizer: for
# every architecture and a few shapes, it generates the F32 file and the generator's
# Q4_K_M (and plain Q4_K / Q5_K / Q6_K) files with the same seed, quantizes the F32 file
# with `llama-quantize`, and compares tensor by tensor (type, shape, data bytes) with
# gguf/examples/gguf_compare.rs. Any difference fails the script.
#
#   LLAMA_QUANTIZE=/path/to/llama-quantize scripts/check_quantize.sh
#
# llama-quantize is not part of the build; make one from llama.cpp's source (the same
# version llama-cpp-sys-2 vendors) with
#   cmake -S llama.cpp -B /tmp/lq -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
#   cmake --build /tmp/lq --target llama-quantize -j
# Without one the script says so and exits 0 (it is a manual check, not part of
# scripts/test.sh: building llama-quantize takes longer than the check). The generator's
# quantizers are also checked against ggml in `cargo test` (backends/llama-cpp/tests/
# quant_vs_ggml.rs), which needs no llama-quantize.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

lq="${LLAMA_QUANTIZE:-$(command -v llama-quantize || true)}"
if [ -z "$lq" ] || [ ! -x "$lq" ]; then
  echo "check_quantize: no llama-quantize (set LLAMA_QUANTIZE or put it on PATH); skipped"
  exit 0
fi

cargo build --release -q -p corral-gguf --example gguf_generate --example gguf_compare
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
gen="$target_dir/release/examples/gguf_generate"
cmp="$target_dir/release/examples/gguf_compare"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Shapes: tiny (64 wide: every K type falls back), small (256 wide: Q4_K and Q6_K
# proper), 16 layers (the more-bits layer pattern), a Gemma-3-270M-like width (640
# wide, 256-wide heads: fallbacks next to K types), and 48 wide (not whole 32-blocks:
# the fallbacks fall back to F16).
shapes=("tiny" "small" "small:n_layer=16,n_vocab=1024"
  "tiny:n_embd=640,n_head=4,head_dim=256,n_ff=2048,n_layer=3,n_vocab=2048"
  "tiny:n_embd=48,n_head=4,n_ff=96")
# The generator's type, llama-quantize's arguments.
kinds=("Q4_K_M|Q4_K_M" "Q4_K|--pure Q4_K_S" "Q5_K|--pure Q5_K_S" "Q6_K|Q6_K")
failed=0
checked=0
for arch in llama llama3 qwen2 qwen3 gemma2 gemma3 phi3; do
  for shape in "${shapes[@]}"; do
    case "$arch" in
      # Their Q projection is n_embd wide: no separate head size.
      qwen2 | phi3) shape="${shape/,head_dim=256/}" ;;
    esac
    f32="$work/f32.gguf"
    "$gen" "$shape" F32 "$f32" 7 "$arch" >/dev/null
    for kind in "${kinds[@]}"; do
      ours_type="${kind%%|*}"
      lq_args="${kind#*|}"
      if [ "$ours_type" != Q4_K_M ] && [ "$shape" != small ] && [ "$shape" != tiny ]; then
        continue # the plain K types on two shapes per architecture
      fi
      ours="$work/ours.gguf"
      theirs="$work/theirs.gguf"
      "$gen" "$shape" "$ours_type" "$ours" 7 "$arch" >/dev/null
      # shellcheck disable=SC2086
      set -- $lq_args
      if [ "$1" = --pure ]; then
        "$lq" --pure "$f32" "$theirs" "$2" >"$work/lq.log" 2>&1 || { cat "$work/lq.log"; exit 1; }
      else
        "$lq" "$f32" "$theirs" "$1" >"$work/lq.log" 2>&1 || { cat "$work/lq.log"; exit 1; }
      fi
      checked=$((checked + 1))
      printf '%-7s %-70s %-7s ' "$arch" "$shape" "$ours_type"
      if out="$("$cmp" "$ours" "$theirs")"; then
        echo "${out#*: }"
      else
        failed=$((failed + 1))
        echo "DIFFERENT"
        echo "$out"
      fi
    done
  done
done
echo "check_quantize: $checked comparisons, $failed with differences"
[ "$failed" -eq 0 ]
