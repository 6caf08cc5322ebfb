#!/usr/bin/env bash
# One command on a fresh machine: install build dependencies, build corral, its llama.cpp
# plugin and its pure-Rust CPU engine (release), generate a small model with random weights (no download
# needed), register it as `corral-tiny`, and start `corral serve` on 127.0.0.1:11434.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
"$here/scripts/install-deps.sh"
# Built for this machine's CPU, as llama.cpp's own default build is (GGML_NATIVE): the
# repository's .cargo/config.toml gives every plain cargo build `-C target-cpu=native`,
# and the plugin's manifest then requires the features the build used. Distributions
# build portable variants instead (scripts/dist.sh). On x86-64 the pure-Rust engine ranks
# first and runs the models it supports; every other model loads on llama.cpp.
cargo build --release -p corral -p corral-backend-llama-cpp -p corral-backend-cpu
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
models="${CORRAL_MODELS:-$HOME/.local/share/corral/models}"
mkdir -p "$models"
data="$(cd "$models/.." && pwd)"
gguf="$data/corral-tiny.gguf"
[ -f "$gguf" ] || "$bin/corral" model generate "$gguf" --shape small --type q8_0
if "$bin/corral" create --help >/dev/null 2>&1; then
  printf 'FROM %s\nPARAMETER temperature 0.7\n' "$gguf" > "$data/Modelfile.corral-tiny"
  "$bin/corral" create corral-tiny -f "$data/Modelfile.corral-tiny" >/dev/null || true
fi
echo "model: corral-tiny ($gguf); try: curl http://127.0.0.1:11434/api/generate -d '{\"model\":\"corral-tiny\",\"prompt\":\"Hello\"}'"
exec "$bin/corral" serve "$@"
