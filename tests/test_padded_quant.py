"""Linear layers whose input width no group size divides (the published vision MLP reads 3420
features) are quantized zero-padded: the padding changes nothing but the bytes."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from omni_edge import load
from omni_edge.convert.mlx import convert
from omni_edge.models.padded import PaddedQuantizedLinear, pad_columns, padded_width


@pytest.mark.parametrize("width,group,bits", [(3420, 64, 4), (3420, 128, 8), (48, 32, 4)])
def test_padded_layer_equals_the_unpadded_product(width, group, bits):
    rng = np.random.default_rng(0)
    w = mx.array(rng.standard_normal((40, width)).astype(np.float32) * 0.02)
    b = mx.array(rng.standard_normal(40).astype(np.float32))
    x = mx.array(rng.standard_normal((3, 5, width)).astype(np.float32))
    layer = PaddedQuantizedLinear(width, 40, True, group, bits)
    q, scales, biases = mx.quantize(pad_columns(w, group), group_size=group, bits=bits)
    layer.update({"weight": q, "scales": scales, "biases": biases, "bias": b})
    assert padded_width(width, group) % group == 0 and q.shape[-1] * 32 // bits == padded_width(width, group)
    # the padded product over the quantized weight's first `width` columns
    dequant = mx.dequantize(q, scales, biases, group_size=group, bits=bits)[:, :width]
    np.testing.assert_allclose(np.array(layer(x)), np.array(x @ dequant.T + b), rtol=1e-4, atol=1e-4)
    # ...and it is the float layer up to quantization error
    rel = float(mx.linalg.norm(layer(x) - (x @ w.T + b)) / mx.linalg.norm(x @ w.T + b))
    assert rel < (0.02 if bits == 8 else 0.2)


def test_vision_mlp_whose_width_no_group_divides_is_stored_quantized(fixture_3b, tmp_path):
    # the fixture's vision MLP is 48 wide: 32-wide groups don't divide it, as 64 doesn't divide 3420
    ref = load(str(convert(str(fixture_3b), str(tmp_path / "f32"), dtype="float32", progress=False)))
    out = convert(str(fixture_3b), str(tmp_path / "q8"), dtype="float32", progress=False,
                  q_group_size=32, q_bits=8, vision_bits=8)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert "thinker.visual.blocks.0.mlp.down_proj.scales" in index
    model = load(str(out))
    v = model.config.thinker_config.vision_config
    patches = mx.array(np.random.default_rng(1).standard_normal(
        (16, 3 * v.temporal_patch_size * v.patch_size ** 2)).astype(np.float32))
    got, want = model.thinker.visual(patches, [(1, 4, 4)]), ref.thinker.visual(patches, [(1, 4, 4)])
    down = model.thinker.visual.blocks[0].mlp.down_proj  # the encoder loaded on first use above
    assert isinstance(down, PaddedQuantizedLinear) and isinstance(down, nn.QuantizedLinear)
    rel = float(mx.linalg.norm(got - want) / mx.linalg.norm(want))
    assert 0 < rel < 0.01, rel
