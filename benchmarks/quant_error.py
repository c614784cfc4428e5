"""Output error that 4- and 8-bit affine quantization adds to each component's linear layers.

For every distinct linear shape of a component at full size (3B or 7B config values), y = W x
is computed with W random-normal (like trained weights, roughly) and x random-normal, in float32
and through the quantized weight; the table shows the relative error ||y_q - y|| / ||y||.
This is the measurement behind the converter's per-component defaults (README, "Quantization").

    python benchmarks/quant_error.py --size 3b --out benchmarks/results/quant_error.json
"""

import argparse
import json
from pathlib import Path

import mlx.core as mx

SHAPES = {  # (out, in) of each component's linear layers, from omni_spec.md §2
    "3b": {
        "thinker": [(2048, 2048), (256, 2048), (11008, 2048), (2048, 11008)],
        "talker": [(896, 2048), (896, 896), (128, 896), (4864, 896), (896, 4864), (8448, 896)],
        "audio_tower": [(1280, 1280), (5120, 1280), (1280, 5120), (2048, 1280)],
        "visual": [(1280, 1280), (3420, 1280), (1280, 3420), (5120, 5120), (2048, 5120)],
    },
    "7b": {
        "thinker": [(3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)],
        "talker": [(896, 3584), (1536, 896), (512, 896), (896, 1536), (18944, 896), (896, 18944), (8448, 896)],
        "audio_tower": [(1280, 1280), (5120, 1280), (1280, 5120), (3584, 1280)],
        "visual": [(1280, 1280), (3420, 1280), (1280, 3420), (5120, 5120), (3584, 5120)],
    },
}
TOKENS = 64


def relative_error(out_dim, in_dim, bits, group_size):
    w = mx.random.normal((out_dim, in_dim)) * 0.02
    x = mx.random.normal((TOKENS, in_dim))
    y = x @ w.T
    q = mx.quantize(w, group_size=group_size, bits=bits)
    yq = mx.quantized_matmul(x, *q, transpose=True, group_size=group_size, bits=bits)
    return (mx.linalg.norm(yq - y) / mx.linalg.norm(y)).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", choices=list(SHAPES))
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    mx.random.seed(0)
    rows = []
    print(f"{'component':12} | rel. output error 8-bit | 4-bit  (group {a.group_size}, {a.size})")
    for comp, shapes in SHAPES[a.size].items():
        # Layers whose input width the group size doesn't divide stay in float (the converter skips them).
        shapes = [(o, i) for o, i in shapes if i % a.group_size == 0]
        errs = {b: max(relative_error(o, i, b, a.group_size) for o, i in shapes) for b in (8, 4)}
        rows.append({"component": comp, "max_rel_error_8bit": errs[8], "max_rel_error_4bit": errs[4]})
        print(f"{comp:12} | {errs[8]:23.4%} | {errs[4]:.4%}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"size": a.size, "group_size": a.group_size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
