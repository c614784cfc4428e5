"""Vision encoder at full Qwen2.5-Omni size: ours (MLX) vs transformers, same run, same weights.

Reference: transformers' `Qwen2_5OmniVisionEncoder` (its default attention, on CUDA when torch
sees a GPU, else CPU) with random weights at the 3B or 7B config values (the towers differ only
in their output width); ours loads the same tensors. Inputs are random patches at the grids the
Qwen preprocessing gives for a 448×448 image, a 1280×1280 image and a 10 s 640×360 clip at
2 fps; preprocessing is not timed. Median of `--repeats` after one warm-up; prints a table (with
our max relative difference from the reference on the first run) and writes JSON.

    python benchmarks/vision_encoder_speed.py --bf16 --out benchmarks/results/vision_encoder.json
    python benchmarks/vision_encoder_speed.py --tiny --repeats 1      # smoke test, tiny config
"""

import argparse
import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from omni_edge.config import VisionEncoderConfig
from omni_edge.models.omni import OmniModel
from omni_edge.models.vision_encoder import VisionEncoder
from timing import timed  # benchmarks/ is the script's own folder

OUT_HIDDEN = {"3b": 2048, "7b": 3584}
FULL = dict(hidden_size=1280, depth=32, num_heads=16, intermediate_size=3420,
            fullatt_block_indexes=[7, 15, 23, 31])
TINY = dict(hidden_size=32, depth=2, num_heads=2, intermediate_size=48, fullatt_block_indexes=[1])
PATCH, MERGE, FRAME_FACTOR = 14, 2, 2
FACTOR = PATCH * MERGE
# qwen-omni-utils' pixel budgets: images 4..16384 tokens; video frames 128..768 tokens, and at
# most 128000·28²·0.9 pixels over the clip, counted per 2-frame group.
IMAGE_PIXELS = (4 * FACTOR**2, 16384 * FACTOR**2)
VIDEO_FRAME_PIXELS = (128 * FACTOR**2, 768 * FACTOR**2)
VIDEO_TOTAL_PIXELS = 128000 * FACTOR**2 * 0.9
VIDEO_FPS = 2.0


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: float):
    """The Qwen processors' resize target: sides multiples of 28, area within the budget."""
    h, w = round(height / FACTOR) * FACTOR, round(width / FACTOR) * FACTOR
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / FACTOR) * FACTOR, math.floor(width / beta / FACTOR) * FACTOR
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / FACTOR) * FACTOR, math.ceil(width * beta / FACTOR) * FACTOR
    return h, w


def image_grid(height: int, width: int):
    h, w = smart_resize(height, width, *IMAGE_PIXELS)
    return (1, h // PATCH, w // PATCH)


def video_grid(height: int, width: int, seconds: float):
    frames = max(4, math.floor(seconds * VIDEO_FPS / FRAME_FACTOR) * FRAME_FACTOR)
    lo, hi = VIDEO_FRAME_PIXELS
    hi = max(min(hi, VIDEO_TOTAL_PIXELS / frames * FRAME_FACTOR), int(lo * 1.05))
    h, w = smart_resize(height, width, lo, hi)
    return (frames // FRAME_FACTOR, h // PATCH, w // PATCH)


CASES = {
    "image 448x448": image_grid(448, 448),  # (1, 32, 32)
    "image 1280x1280": image_grid(1280, 1280),  # (1, 92, 92): 1288×1288
    "video 10s 640x360": video_grid(360, 640, 10),  # (10, 26, 46): 20 frames of 364×644
}



def reference(config: dict, use_bf16: bool):
    import torch
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniVisionEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniVisionEncoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        tower = Qwen2_5OmniVisionEncoder(Qwen2_5OmniVisionEncoderConfig(**config))
    tower = tower.to(dtype=dtype).eval()
    weights = {k: v.float().cpu().numpy() for k, v in tower.state_dict().items()}

    def run(pixels: np.ndarray, grid) -> np.ndarray:
        with torch.no_grad():
            out = tower(torch.from_numpy(pixels).to(device=device, dtype=dtype),
                        grid_thw=torch.tensor([grid], device=device))
        out = getattr(out, "pooler_output", out)  # transformers 4.x returns the tensor itself
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run, weights, f"torch {device} ({tower.config._attn_implementation})"


def ours(config: dict, weights: dict, dtype):
    encoder = VisionEncoder(VisionEncoderConfig(**config))
    params = OmniModel.sanitize({k: mx.array(v) for k, v in weights.items()})  # Conv3d → Linear
    encoder.load_weights([(k, v.astype(dtype)) for k, v in params.items()], strict=True)
    mx.eval(encoder.parameters())

    def run(pixels: np.ndarray, grid) -> mx.array:
        out = encoder(mx.array(pixels), [grid])
        mx.eval(out)
        return out

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--size", default="3b", choices=list(OUT_HIDDEN))
    ap.add_argument("--bf16", action="store_true", help="both sides in bfloat16 (default float32)")
    ap.add_argument("--tiny", action="store_true", help="the 2-block test-fixture config (smoke test)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    config = {**(TINY if a.tiny else FULL), "out_hidden_size": OUT_HIDDEN[a.size]}
    ref_run, weights, ref_device = reference(config, a.bf16)
    ours_run = ours(config, weights, mx.bfloat16 if a.bf16 else mx.float32)
    device = a.device_name or str(mx.default_device())
    dtype = "bf16" if a.bf16 else "fp32"
    print(f"device: {device} (mlx {mx.default_device()}, {ref_device}), {a.size}"
          f"{' tiny' if a.tiny else ''}, {dtype}")
    print(f"{'input':>18} | {'grid':>12} | {'patches':>7} | {'ours ms':>9} | {'transformers ms':>15} | "
          f"{'speed-up':>8} | max rel diff")
    rows = []
    for name in a.cases:
        grid = CASES[name]
        pixels = np.random.default_rng(0).normal(size=(math.prod(grid), 3 * 2 * PATCH**2)).astype(np.float32)
        want = ref_run(pixels, grid).float().cpu().numpy()
        got = np.asarray(ours_run(pixels, grid).astype(mx.float32))
        diff = float(np.abs(got - want).max() / np.abs(want).max())
        t_ours = timed(lambda: ours_run(pixels, grid), a.repeats)
        t_ref = timed(lambda: ref_run(pixels, grid), a.repeats)
        rows.append({"input": name, "grid_thw": list(grid), "patches": math.prod(grid),
                     "tokens": math.prod(grid) // MERGE**2, "ours_ms": t_ours * 1e3,
                     "transformers_ms": t_ref * 1e3, "speedup": t_ref / t_ours, "max_rel_diff": diff})
        print(f"{name:>18} | {str(grid):>12} | {math.prod(grid):7d} | {t_ours * 1e3:9.1f} | "
              f"{t_ref * 1e3:15.1f} | {t_ref / t_ours:7.2f}x | {diff:.1e}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": device, "reference": ref_device, "size": a.size,
                                     "tiny": a.tiny, "dtype": dtype, "repeats": a.repeats, "rows": rows},
                                    indent=2))


if __name__ == "__main__":
    main()
