"""Quantized linear layers whose input width no quantization group size divides (the vision
MLP's down-projection reads 3420 features; MLX groups are 32, 64 or 128 wide). Conversion
stores the weight zero-padded to the next multiple of the group size; the layer pads its input
with zeros to match, so the padded columns multiply zeros and the output is the unpadded one."""

import mlx.core as mx
import mlx.nn as nn


def padded_width(width: int, group_size: int) -> int:
    return -(-width // group_size) * group_size


def pad_columns(w: mx.array, group_size: int) -> mx.array:
    """`w` [out, in] with zero columns appended up to a multiple of `group_size`."""
    extra = padded_width(w.shape[-1], group_size) - w.shape[-1]
    return mx.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, extra)]) if extra else w


class PaddedQuantizedLinear(nn.QuantizedLinear):
    def __init__(self, input_dims: int, output_dims: int, bias: bool, group_size: int, bits: int):
        super().__init__(padded_width(input_dims, group_size), output_dims, bias, group_size, bits)
        self.input_dims = input_dims

    def __call__(self, x: mx.array) -> mx.array:
        extra = self.weight.shape[-1] * 32 // self.bits - self.input_dims
        return super().__call__(mx.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)]))


def needs_padding(module: nn.Module, group_size: int) -> bool:
    return isinstance(module, nn.Linear) and module.weight.shape[-1] % group_size != 0


def use_padded_layers(module: nn.Module, quantized_params) -> int:
    """Replace each float `nn.Linear` of `module` that is stored quantized (`quantized_params(path)`
    gives its (bits, group_size), or None) but whose width the group size doesn't divide by a
    `PaddedQuantizedLinear`; returns how many were replaced."""
    replaced = []
    for path, m in module.named_modules():
        params = quantized_params(path) if isinstance(m, nn.Linear) else None
        if params and needs_padding(m, params[1]):
            out_dims, in_dims = m.weight.shape
            replaced.append((path, PaddedQuantizedLinear(in_dims, out_dims, "bias" in m,
                                                          params[1], params[0])))
    if replaced:
        from mlx.utils import tree_unflatten

        module.update_modules(tree_unflatten(replaced))
    return len(replaced)
