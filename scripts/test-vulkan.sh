#!/usr/bin/env bash
# Builds the Vulkan variant of the llama.cpp plugin (about 7 minutes on 2 idle cores) and
# checks it on Mesa's software Vulkan driver (lavapipe): the host must list the device and
# choose the variant when asked, the conformance suite must pass, greedy text must equal
# the CPU variant's, and logits must agree with the CPU build within
# 1e-3 + 1e-2 * max|logit| (the conformance tolerance).
# Kept out of .ci/run for time; run it by hand or set CORRAL_CI_VULKAN=1 for .ci/run.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
"$here/scripts/install-deps.sh"
out="${CORRAL_VULKAN_OUT:-$here/target/plugins}"
backends/llama-cpp/build-variant.sh vulkan "$out" >/dev/null
cargo build --release -p corral -p corral-backend-llama-cpp
rel="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
export CORRAL_PLUGIN_PATH_ONLY=1
corral() { "$rel/corral" --plugin-dir "$out" --plugin-dir "$rel" "$@"; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
corral model generate "$tmp/m.gguf" --shape small --type f32 2>/dev/null

echo "== probe lists the Vulkan device"
corral probe | grep -i -A1 vulkan
echo "== backends --backend vulkan"
corral backends --backend vulkan
echo "== conformance on the vulkan variant"
corral plugin check "$out/llama-cpp-vulkan" --model "$tmp/m.gguf"
echo "== greedy text: vulkan vs cpu"
args=(--raw --temperature 0 --repeat-penalty 1 --num-predict 32 "$tmp/m.gguf" "The capital of France is")
a="$(corral run --backend vulkan "${args[@]}" 2>/dev/null | md5sum)"
# The plain build's CPU variant (cpu-native: .cargo/config.toml builds for this CPU).
cpu_variant="$(sed -n 's/^variant = "\(.*\)"/\1/p' "$rel/llama-cpp.corral-plugin.toml")"
b="$(corral run --backend "llama-cpp:$cpu_variant" "${args[@]}" 2>/dev/null | md5sum)"
empty="$(printf '' | md5sum)"
echo "vulkan $a / cpu $b"; [ "$a" = "$b" ] && [ "$a" != "$empty" ]
echo "== logits: vulkan vs cpu"
vk_raw="${LLAMA_TARGET_ROOT:-$here/target}/llama-vulkan/release/llama-raw"
"$vk_raw" logits "$tmp/m.gguf" --prompt "The quick brown fox" --gpu-layers 99 --json 2>/dev/null > "$tmp/vk.json"
"$rel/llama-raw" logits "$tmp/m.gguf" --prompt "The quick brown fox" --json 2>/dev/null > "$tmp/cpu.json"
python3 - "$tmp/vk.json" "$tmp/cpu.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["logits"]; b = json.load(open(sys.argv[2]))["logits"]
d = max(abs(x - y) for x, y in zip(a, b)); s = max(abs(y) for y in b)
print(f"max|diff| {d:.2e}, max|logit| {s:.2f}, tolerance {1e-3 + 1e-2 * s:.2e}")
assert d <= 1e-3 + 1e-2 * s, "vulkan logits disagree with the cpu build"
PY
echo "vulkan variant OK"
