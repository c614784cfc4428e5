"""A small numpy interpreter for the MIL programs inside saved `.mlpackage`s (test-only).

Core ML can't execute on Linux, so the tests reload each saved program with coremltools' own
proto loader and run it here, op by op, to compare with the reference modules. Only the ops our
graphs use are implemented; an unknown op fails loudly. Arithmetic runs in float32 and every
fp16-typed result is rounded to fp16, which is how Core ML's GPU/ANE store fp16 activations.
Quantized weights are dequantized here from their stored integers, scales and offsets (not with
coremltools' value inference), so a wrong block size or scale layout shows up as an error.
"""

from pathlib import Path
from typing import Dict, Optional

import numpy as np
from coremltools.converters.mil.frontend.milproto import load as milproto
from coremltools.converters.mil.mil import types
from coremltools.models.utils import load_spec

WEIGHTS_DIR = Path("Data") / "com.apple.CoreML" / "weights"


def load_program(package):
    """The pymil Program stored in `package` (with its weight file)."""
    spec = load_spec(str(package))
    return milproto.load(spec, spec.specificationVersion, str(Path(package) / WEIGHTS_DIR))


def _is_state(var) -> bool:
    return not isinstance(var, (tuple, list)) and types.is_state(var.sym_type)


def _gelu(x, mode="EXACT"):
    if mode == "EXACT":
        from math import erf, sqrt

        return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float32])(x / sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    raise NotImplementedError(f"gelu mode {mode}")


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _slices(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    rank = len(shape)
    stride = np.ones(rank, np.int64) if stride is None else stride
    begin_mask = [False] * rank if begin_mask is None else begin_mask
    end_mask = [False] * rank if end_mask is None else end_mask
    out = []
    for i in range(rank):
        b = None if begin_mask[i] else int(begin[i])
        e = None if end_mask[i] else int(end[i])
        s = int(stride[i])
        if squeeze_mask is not None and squeeze_mask[i]:
            out.append(int(begin[i]))
        else:
            out.append(slice(b, e, s))
    return tuple(out)


def _blockwise(data, scale, offset):
    """constexpr_blockwise_shift_scale: (data - offset) * scale, one scale per block."""
    data = data.astype(np.float32)
    if offset is not None:
        data = data - _expand_blocks(offset.astype(np.float32), data.shape)
    return data * _expand_blocks(scale.astype(np.float32), data.shape)


def _expand_blocks(x, shape):
    for axis, (n, m) in enumerate(zip(shape, x.shape)):
        if n % m:
            raise ValueError(f"block layout: axis {axis} of {shape} is not a multiple of {m}")
        x = np.repeat(x, n // m, axis=axis)
    return x


def _lut_to_dense(indices, lut):
    """constexpr_lut_to_dense (iOS18): lut [*blocks, 2**nbits, vector]; indices per element."""
    indices = indices.astype(np.int64)
    lut = lut.astype(np.float32)
    if lut.shape[-1] != 1:
        raise NotImplementedError("vector palettization is not used by our graphs")
    blocks = lut.shape[:-2]
    out = np.empty(indices.shape, np.float32)
    sizes = [n // b for n, b in zip(indices.shape, blocks)]
    for pos in np.ndindex(*blocks):
        sl = tuple(slice(p * s, (p + 1) * s) for p, s in zip(pos, sizes))
        out[sl] = lut[pos][:, 0][indices[sl]]
    return out


def _conv(x, weight, bias, strides, pad, dilations, groups):
    """Convolution over NC + spatial dims by im2col (grouped; our graphs use 1-D)."""
    spatial = x.ndim - 2
    pad = np.asarray(pad).reshape(spatial, 2)
    x = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pad])
    n, c = x.shape[:2]
    out_c, in_per_group = weight.shape[:2]
    kernel = weight.shape[2:]
    out_sizes = [(x.shape[2 + d] - dilations[d] * (kernel[d] - 1) - 1) // strides[d] + 1
                 for d in range(spatial)]
    cols = []
    for k in np.ndindex(*kernel):
        sl = tuple(slice(k[d] * dilations[d], k[d] * dilations[d] + strides[d] * (out_sizes[d] - 1) + 1,
                         strides[d]) for d in range(spatial))
        cols.append(x[(slice(None), slice(None)) + sl])  # [n, c, *out]
    cols = np.stack(cols, axis=2)  # [n, c, K, *out]
    out_per_group = out_c // groups
    cols = cols.reshape(n, groups, in_per_group * cols.shape[2], -1)  # channel-major, then tap
    w = weight.reshape(groups, out_per_group, -1)
    y = np.einsum("gok,ngkt->ngot", w, cols, optimize=True).reshape((n, out_c) + tuple(out_sizes))
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * spatial)
    return y


def _conv_transpose_1d(x, weight, bias, stride, pad, groups):
    """weight [in, out/groups, k] as MIL stores it."""
    n, c, t = x.shape
    in_per_group = c // groups
    out_per_group, k = weight.shape[1], weight.shape[2]
    full = (t - 1) * stride + k
    xg = x.reshape(n, groups, in_per_group, t)
    wg = weight.reshape(groups, in_per_group, out_per_group, k)
    contrib = np.einsum("ngit,giok->ngotk", xg, wg, optimize=True)
    contrib = contrib.reshape(n, groups * out_per_group, t, k)
    y = np.zeros((n, out_per_group * groups, full), np.float32)
    for j in range(k):
        y[:, :, j:j + stride * (t - 1) + 1:stride] += contrib[..., j]
    y = y[:, :, pad[0]:full - pad[1]]
    if bias is not None:
        y = y + bias.reshape(1, -1, 1)
    return y


def _pad(x, pad, mode, constant_val):
    pad = np.asarray(pad).reshape(-1, 2)
    widths = [(0, 0)] * (x.ndim - len(pad)) + [tuple(p) for p in pad]
    if mode == "constant":
        return np.pad(x, widths, constant_values=constant_val)
    return np.pad(x, widths, mode={"replicate": "edge", "reflect": "reflect"}[mode])


class Interpreter:
    """Runs the functions of one saved package; `state` carries Core ML state buffers."""

    def __init__(self, package):
        self.program = load_program(package)
        self.functions = list(self.program.functions)

    def new_state(self, function: Optional[str] = None) -> Dict[str, np.ndarray]:
        """Zero-filled state buffers, as `MLModel.makeState()` gives them."""
        func = self.program.functions[function or self.functions[0]]
        return {name: np.zeros(var.shape, np.float32) for name, var in func.inputs.items()
                if types.is_state(var.sym_type)}

    def run(self, inputs: Dict[str, np.ndarray], function: Optional[str] = None,
            state: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        func = self.program.functions[function or self.functions[0]]
        env: Dict[str, np.ndarray] = {}
        for name, var in func.inputs.items():
            if types.is_state(var.sym_type):
                continue
            if name not in inputs:
                raise KeyError(f"missing input {name}")
            value = np.asarray(inputs[name])
            fixed = [d if isinstance(d, (int, np.integer)) else None for d in var.shape]
            if len(value.shape) != len(fixed) or any(
                    f is not None and f != n for f, n in zip(fixed, value.shape)):
                raise ValueError(f"input {name} has shape {value.shape}, the program wants {var.shape}")
            env[name] = self._typed(value, var.dtype)
        self.state = state if state is not None else {}
        for op in func.operations:
            self._execute(op, env)
        return {v.name: env[v.name] for v in func.outputs}

    # ------------------------------------------------------------------ internals

    def _typed(self, value, dtype):
        if dtype == types.fp16:
            return np.asarray(value, np.float32).astype(np.float16).astype(np.float32)
        if dtype == types.fp32:
            return np.asarray(value, np.float32)
        if dtype == types.bool:
            return np.asarray(value, bool)
        if types.is_int(dtype):
            return np.asarray(value).astype(np.int64)
        raise NotImplementedError(f"dtype {dtype}")

    def _val(self, var, env):
        if var is None:
            return None
        if isinstance(var, (tuple, list)):
            return [self._val(v, env) for v in var]
        if var.name in env:
            return env[var.name]
        if var.val is None:
            raise KeyError(f"{var.name} has no value yet")
        value = var.val
        if isinstance(value, (np.bool_, bool)):
            return bool(value)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            return value.astype(np.float32)
        return value

    def _execute(self, op, env):
        kind = op.op_type
        if kind == "const":
            return
        impl = getattr(self, "op_" + kind, None)
        if impl is None:
            raise NotImplementedError(f"MIL op {kind} is not in the test interpreter")
        args = {name: None if _is_state(var) else self._val(var, env) for name, var in op.inputs.items()}
        result = impl(op, env, **args)
        results = result if isinstance(result, tuple) else (result,)
        for var, value in zip(op.outputs, results):
            if types.is_state(var.sym_type):
                continue
            env[var.name] = self._typed(value, var.dtype)

    # constexpr (weights)
    def op_constexpr_blockwise_shift_scale(self, op, env, data, scale, offset=None):
        return _blockwise(data, scale, offset)

    def op_constexpr_lut_to_dense(self, op, env, indices, lut, vector_axis=None):
        return _lut_to_dense(indices, lut)

    # state
    def op_read_state(self, op, env, input):
        return self.state[op.inputs["input"].name].copy()

    def op_coreml_update_state(self, op, env, state, value):
        name = op.inputs["state"].name
        self.state[name] = self._typed(value, types.fp16)
        return self.state[name]

    # elementwise
    def op_add(self, op, env, x, y): return x + y
    def op_sub(self, op, env, x, y): return x - y
    def op_mul(self, op, env, x, y): return x * y
    def op_pow(self, op, env, x, y): return np.power(x, y)
    def op_greater_equal(self, op, env, x, y): return x >= y
    def op_select(self, op, env, cond, a, b): return np.where(cond, a, b)
    def op_exp(self, op, env, x): return np.exp(x)
    def op_log(self, op, env, x, epsilon=0.0): return np.log(x + epsilon)
    def op_sin(self, op, env, x): return np.sin(x)
    def op_cos(self, op, env, x): return np.cos(x)
    def op_rsqrt(self, op, env, x, epsilon=1e-12): return 1.0 / np.sqrt(x + epsilon)
    def op_silu(self, op, env, x): return x / (1.0 + np.exp(-x))
    def op_gelu(self, op, env, x, mode="EXACT"): return _gelu(x, mode)
    def op_clip(self, op, env, x, alpha, beta): return np.clip(x, alpha, beta)
    def op_identity(self, op, env, x): return x
    def op_cast(self, op, env, x, dtype): return x

    # reductions and normalisation
    def op_reduce_mean(self, op, env, x, axes=None, keep_dims=False):
        return x.mean(axis=None if axes is None else tuple(int(a) for a in axes), keepdims=keep_dims)

    def op_layer_norm(self, op, env, x, axes, gamma=None, beta=None, epsilon=1e-5):
        axes = tuple(int(a) for a in axes)
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + epsilon)
        return y * (1 if gamma is None else gamma) + (0 if beta is None else beta)

    # linear algebra
    def op_linear(self, op, env, x, weight, bias=None):
        y = x @ weight.T
        return y if bias is None else y + bias

    def op_scaled_dot_product_attention(self, op, env, query, key, value, attn_mask=None):
        scores = np.matmul(query, np.swapaxes(key, -1, -2)) / np.sqrt(query.shape[-1])
        if attn_mask is not None:
            scores = np.where(attn_mask, scores, -np.inf) if attn_mask.dtype == bool else scores + attn_mask
        return np.matmul(_softmax(scores, -1), value)

    def op_conv(self, op, env, x, weight, bias=None, strides=None, pad_type="valid", pad=None,
                dilations=None, groups=1):
        spatial = x.ndim - 2
        strides = [1] * spatial if strides is None else [int(s) for s in strides]
        dilations = [1] * spatial if dilations is None else [int(d) for d in dilations]
        if pad_type != "custom":
            if pad_type != "valid":
                raise NotImplementedError(f"conv pad_type {pad_type}")
            pad = [0] * (2 * spatial)
        return _conv(x, weight, bias, strides, pad, dilations, int(groups))

    def op_conv_transpose(self, op, env, x, weight, bias=None, strides=None, pad_type="valid",
                          pad=None, dilations=None, groups=1, output_shape=None):
        if x.ndim != 3 or (dilations is not None and any(int(d) != 1 for d in dilations)):
            raise NotImplementedError("only undilated 1-D conv_transpose")
        pad = [0, 0] if pad_type != "custom" else [int(p) for p in pad]
        return _conv_transpose_1d(x, weight, bias, int(strides[0]), pad, int(groups))

    # shapes
    def op_reshape(self, op, env, x, shape): return x.reshape([int(s) for s in shape])
    def op_transpose(self, op, env, x, perm): return np.transpose(x, [int(p) for p in perm])
    def op_expand_dims(self, op, env, x, axes):
        for a in sorted(int(a) if a >= 0 else int(a) + x.ndim + len(axes) for a in axes):
            x = np.expand_dims(x, a)
        return x

    def op_concat(self, op, env, values, axis, interleave=False):
        if interleave:
            raise NotImplementedError("interleaved concat")
        return np.concatenate(values, axis=int(axis))

    def op_split(self, op, env, x, num_splits=None, split_sizes=None, axis=0):
        if split_sizes is not None:
            return tuple(np.split(x, np.cumsum(split_sizes)[:-1], axis=int(axis)))
        return tuple(np.split(x, int(num_splits), axis=int(axis)))

    def op_tile(self, op, env, x, reps): return np.tile(x, [int(r) for r in reps])

    def op_slice_by_index(self, op, env, x, begin, end, stride=None, begin_mask=None, end_mask=None,
                          squeeze_mask=None):
        return x[_slices(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)]

    def op_slice_update(self, op, env, x, update, begin, end, stride=None, begin_mask=None,
                        end_mask=None, squeeze_mask=None):
        out = x.copy()
        out[_slices(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)] = update
        return out

    def op_gather(self, op, env, x, indices, axis=0, batch_dims=0, validate_indices=False):
        if batch_dims:
            raise NotImplementedError("gather with batch_dims")
        return np.take(x, indices.astype(np.int64), axis=int(axis))

    def op_pad(self, op, env, x, pad, mode="constant", constant_val=0.0):
        return _pad(x, pad, mode, constant_val)

