#!/usr/bin/env python3
"""Compare two engines' intermediate values stage by stage.

Both engines write the tensors of one forward pass under llama.cpp's graph names
(`attn_norm-3`, `kqv_out-3`, `l_out-17`, `result_output`) as raw little-endian f32:

    mkdir -p /tmp/llama /tmp/cpu
    LLAMA_RAW_DUMP=/tmp/llama target/release/llama-raw logits MODEL --prompt "..." --threads 2
    CORRAL_CPU_DUMP=/tmp/cpu target/release/examples/cpu-raw logits MODEL --prompt "..." --threads 2
    scripts/compare-dumps.py /tmp/llama /tmp/cpu

prints, in forward order, each name both wrote: how many values differ, the largest
difference and the largest magnitude. The first stage that differs is where the engines'
arithmetic parts. Where one engine kept fewer rows (llama.cpp drops the rows that give no
output after the last layer's attention), the last rows are compared. Standard library only.
"""

import array
import os
import re
import sys

ORDER = [
    "inp_scaled", "attn_norm", "Vcur", "Qcur_normed", "Kcur_normed", "Qcur", "Kcur",
    "kqv_out", "attn_out", "attn_post_norm", "sa_out", "ffn_norm", "ffn_gate", "ffn_up",
    "ffn_gelu_par", "ffn_out", "ffn_post_norm", "l_out", "result_norm", "result_output",
]


def load(path):
    values = array.array("f")
    with open(path, "rb") as f:
        values.frombytes(f.read())
    if sys.byteorder != "little":
        values.byteswap()
    return values


def forward_position(file_name):
    """(layer, stage) for sorting: whole-model tensors before or after the layers."""
    name = file_name[: -len(".f32")]
    match = re.fullmatch(r"(.*?)-(\d+)", name)
    stage, layer = (match.group(1), int(match.group(2))) if match else (name, None)
    rank = ORDER.index(stage) if stage in ORDER else len(ORDER)
    if layer is None:
        layer = -1 if stage == "inp_scaled" else 1 << 30
    return (layer, rank, name)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    left, right = sys.argv[1], sys.argv[2]
    names = sorted(
        {n for n in os.listdir(left) if n.endswith(".f32")} & set(os.listdir(right)),
        key=forward_position,
    )
    if not names:
        sys.exit(f"no tensor written to both {left} and {right}")
    for name in names:
        a, b = load(os.path.join(left, name)), load(os.path.join(right, name))
        note = ""
        if len(a) != len(b):
            n = min(len(a), len(b))
            a, b = a[len(a) - n:], b[len(b) - n:]
            note = f" (last {n} values)"
        differ = sum(1 for x, y in zip(a, b) if x != y)
        max_diff = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
        max_abs = max((abs(x) for x in a), default=0.0)
        print(
            f"{name[:-4]:24s} {len(a):9d} values  {differ:9d} differ  "
            f"max diff {max_diff:.3e}  max |value| {max_abs:.3e}{note}"
        )


if __name__ == "__main__":
    main()
