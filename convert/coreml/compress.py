"""Weight compression through `coremltools.optimize.coreml`: linear quantization or palettization.

4-bit is linear-symmetric int4 per block of 32 input channels (`constexpr_blockwise_shift_scale`
with one fp16 scale per block); 8-bit is int8 per output channel. Palettization keeps a
per-channel-group lookup table (`constexpr_lut_to_dense`). Norm weights, biases and the small
tensors below `WEIGHT_THRESHOLD` elements stay float.
"""

from typing import Optional

import coremltools as ct
import coremltools.optimize.coreml as cto

from .options import BITS, MODES
BLOCK_SIZE = 32
PALETTE_GROUP_SIZE = 32
WEIGHT_THRESHOLD = 256


def config(bits: int, mode: str = "linear",
           block_size: int = BLOCK_SIZE) -> Optional[cto.OptimizationConfig]:
    """The OptimizationConfig for `bits` (None: keep float16)."""
    if bits not in BITS:
        raise ValueError(f"--bits must be one of {', '.join(map(str, BITS))}, got {bits}")
    if mode not in MODES:
        raise ValueError(f"--compression must be one of {', '.join(MODES)}, got {mode!r}")
    if bits == 16:
        return None
    if mode == "palettize":
        op = cto.OpPalettizerConfig(nbits=bits, mode="uniform", granularity="per_grouped_channel",
                                    group_size=PALETTE_GROUP_SIZE, weight_threshold=WEIGHT_THRESHOLD)
    elif bits == 4:
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=block_size, weight_threshold=WEIGHT_THRESHOLD)
    else:
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                         granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD)
    return cto.OptimizationConfig(global_config=op)


def compress(model: "ct.models.MLModel", bits: int, mode: str = "linear") -> "ct.models.MLModel":
    cfg = config(bits, mode)
    if cfg is None:
        return model
    if mode == "palettize":
        return cto.palettize_weights(model, cfg)
    return cto.linear_quantize_weights(model, cfg)


def describe(bits: int, mode: str = "linear") -> dict:
    """The manifest's `compression` entry."""
    if bits == 16:
        return {"weights": "float16"}
    if mode == "palettize":
        return {"weights": f"palettized {bits}-bit", "op": "constexpr_lut_to_dense",
                "granularity": "per_grouped_channel", "group_size": PALETTE_GROUP_SIZE}
    if bits == 4:
        return {"weights": "int4", "op": "constexpr_blockwise_shift_scale", "mode": "linear_symmetric",
                "granularity": "per_block", "block_size": BLOCK_SIZE}
    return {"weights": "int8", "op": "constexpr_blockwise_shift_scale", "mode": "linear_symmetric",
            "granularity": "per_channel"}
