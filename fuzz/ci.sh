#!/usr/bin/env bash
# CI for the fuzz targets. Exits non-zero on a crash.
#
# 1. Always: every seed and every fixed past crash through its target, as a plain
#    `cargo test` (fuzz/tests/replay.rs): no instrumentation, no AFL.
# 2. When cargo-afl is installed (or FUZZ_INSTALL=1 is set): each target for
#    FUZZ_CI_SECONDS (default 20) with AFL, through fuzz/run.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== fuzz: replaying seeds and regressions"
cargo test --manifest-path "$here/Cargo.toml"

if cargo afl --version >/dev/null 2>&1 || [ "${FUZZ_INSTALL:-0}" = 1 ]; then
  echo "== fuzz: each target for ${FUZZ_CI_SECONDS:-20}s with AFL"
  FUZZ_OUT="${FUZZ_OUT:-$(mktemp -d)}" "$here/run.sh" all "${FUZZ_CI_SECONDS:-20}"
else
  echo "== fuzz: cargo-afl is not installed; replay only (FUZZ_INSTALL=1 installs it)"
fi
