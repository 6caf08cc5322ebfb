#!/usr/bin/env bash
# Fuzzes corral's parsers with AFL++ (cargo-afl, stable Rust).
#
#   fuzz/run.sh TARGET|all SECONDS
#
# Builds the targets with AFL instrumentation, runs each for SECONDS (one after another,
# or FUZZ_JOBS at a time), then prints per target: executions, crashes, hangs, and the
# paths of the inputs that crashed or hung. Exits 1 when any target crashed or hung, 2 on
# a usage error, 3 when cargo-afl is missing.
#
# Environment:
#   FUZZ_OUT         where AFL writes (default fuzz/out); FUZZ_OUT/TARGET/default/{queue,crashes,hangs}
#   FUZZ_TARGET_DIR  cargo target dir of the instrumented build (default /var/tmp/corral-fuzz-target)
#   FUZZ_JOBS        targets fuzzed at once (default 1)
#   FUZZ_RESUME=1    continue from FUZZ_OUT/TARGET instead of starting from the seeds
#   FUZZ_EXECS=N     stop a target after N executions as well (AFL's -E)
#   FUZZ_TIMEOUT_MS  time limit per input (default 1000): slower is a hang
#   FUZZ_MEM_MB      memory limit of the target process (default 2048): more is a crash
#   FUZZ_INSTALL=1   install cargo-afl (cargo install cargo-afl; cargo afl config --build)
#                    when it is missing
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
targets=(gguf_reader modelfile gotemplate chat_template json_schema names_digests oci_manifest)

usage() {
  echo "usage: fuzz/run.sh TARGET|all SECONDS" >&2
  echo "targets: ${targets[*]}" >&2
  exit 2
}
[ $# -eq 2 ] || usage
which="$1"
seconds="$2"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
if [ "$which" = all ]; then
  chosen=("${targets[@]}")
else
  case " ${targets[*]} " in *" $which "*) chosen=("$which") ;; *) usage ;; esac
fi

out_root="${FUZZ_OUT:-$here/out}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/corral-fuzz-target}"
jobs="${FUZZ_JOBS:-1}"
timeout_ms="${FUZZ_TIMEOUT_MS:-1000}"
mem_mb="${FUZZ_MEM_MB:-2048}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo afl --version >/dev/null 2>&1; then
  if [ "${FUZZ_INSTALL:-0}" = 1 ]; then
    echo "== installing cargo-afl"
    cargo install --locked cargo-afl || exit 3
    # The install builds AFL++ for the current rustc; if it did not, build it now.
    cargo afl config --build >/dev/null 2>&1 || true
  else
    echo "cargo-afl is not installed: cargo install --locked cargo-afl" >&2
    echo "(or run fuzz/run.sh with FUZZ_INSTALL=1; fuzz/ci.sh replays the seeds without it)" >&2
    exit 3
  fi
fi

echo "== building ${chosen[*]} with AFL instrumentation (target dir $CARGO_TARGET_DIR)"
bins=()
for t in "${chosen[@]}"; do bins+=(--bin "$t"); done
if ! cargo afl build --release --features afl --manifest-path "$here/Cargo.toml" "${bins[@]}"; then
  echo "build failed" >&2
  exit 1
fi

# AFL's checks that matter on a workstation, not in an unattended run: CPU frequency
# scaling, a core_pattern that pipes to a crash reporter, the UI, a free core each.
export AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1
export AFL_NO_AFFINITY=1
export AFL_IGNORE_SEED_PROBLEMS=1
export AFL_SKIP_CRASHES=1
export AFL_NO_WARN_INSTABILITY=1

fuzz_one() {
  local t="$1"
  local out="$out_root/$t"
  local input="$out_root/.input/$t"
  mkdir -p "$out_root"
  if [ "${FUZZ_RESUME:-0}" = 1 ] && [ -d "$out/default/queue" ]; then
    input="-"
  else
    rm -rf "$out" "$input"
    mkdir -p "$input"
    # Seeds and past crashes that are fixed; the open ones would only crash again.
    find "$here/seeds/$t" "$here/regressions/$t" -path '*/open' -prune -o -type f \
      ! -name 'README*' -print 2>/dev/null | while read -r f; do
      cp "$f" "$input/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
  fi
  local args=(-i "$input" -o "$out" -t "$timeout_ms" -m "$mem_mb" -V "$seconds")
  [ -f "$here/dicts/$t.dict" ] && args+=(-x "$here/dicts/$t.dict")
  [ -n "${FUZZ_EXECS:-}" ] && args+=(-E "$FUZZ_EXECS")
  mkdir -p "$out"
  echo "== fuzzing $t for ${seconds}s (log: $out_root/$t.log)"
  cargo afl fuzz "${args[@]}" -- "$CARGO_TARGET_DIR/release/$t" >"$out_root/$t.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "afl-fuzz exited with $rc for $t; the end of its log:" >&2
    tail -n 20 "$out_root/$t.log" >&2
  fi
}

running=0
for t in "${chosen[@]}"; do
  fuzz_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

stat() { sed -n "s/^$1 *: *//p" "$2" 2>/dev/null | head -n 1; }

echo
printf '%-15s %12s %10s %8s %7s %7s %8s\n' target executions execs/s corpus crashes hangs seconds
bad=0
report=""
for t in "${chosen[@]}"; do
  stats="$out_root/$t/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    printf '%-15s %s\n' "$t" "no fuzzer_stats: afl-fuzz did not run (see $out_root/$t.log)"
    bad=1
    continue
  fi
  crashes="$(stat saved_crashes "$stats")"
  [ -n "$crashes" ] || crashes="$(stat unique_crashes "$stats")"
  hangs="$(stat saved_hangs "$stats")"
  [ -n "$hangs" ] || hangs="$(stat unique_hangs "$stats")"
  printf '%-15s %12s %10s %8s %7s %7s %8s\n' "$t" "$(stat execs_done "$stats")" \
    "$(stat execs_per_sec "$stats")" "$(stat corpus_count "$stats")" "${crashes:-?}" \
    "${hangs:-?}" "$(stat run_time "$stats")"
  for kind in crashes hangs; do
    for f in "$out_root/$t/default/$kind"/id:*; do
      [ -e "$f" ] || continue
      report+="$t $kind: $f"$'\n'
      bad=1
    done
  done
done
if [ -n "$report" ]; then
  echo
  echo "inputs that crashed or hung (replay one with:"
  echo "  cargo run --manifest-path fuzz/Cargo.toml --release --bin replay -- TARGET FILE):"
  printf '%s' "$report"
fi
exit $bad
