"""One decode position through a `Decoder` (Thinker or Talker) as a single compiled graph.

Built op by op, a decode step costs Python ~20 ops per layer; compiled, it is one call whose
graph is traced once per KV buffer length. The step runs over the caches' whole preallocated
buffers: the new keys/values are written at an array offset and a mask hides the positions
after it, so the traced shapes change only when a buffer grows. The mlx-lm `KVCache`s keep
owning the buffers (their keys/values/offset are set after each step), so prefill, `trim`,
`to_quantized` and `state` work on them as before. Inside the step each layer's q/k/v and
gate/up projections are one matmul each (`fuse`: the weights concatenated along the output
axis, the layers' own weights becoming views of them, so nothing is held twice).
"""

import copy
import threading
import weakref
from types import SimpleNamespace
from typing import Any, List

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.activations import swiglu
from mlx_lm.models.cache import KVCache

# Buffer lengths stay multiples of mlx-lm's KVCache step; a full buffer grows by up to AHEAD
# positions at once, since each new length traces the step again.
STEP = KVCache.step
AHEAD = 1024
# While tracing, MLX puts its tracers into the step's module copies, which every thread shares:
# one thread calls (and so may trace) a step at a time.
_LOCK = threading.Lock()


class _Slot:
    """A KV cache as Attention sees it inside the compiled step: the new position is written
    at an array offset and the whole buffer is returned (the mask hides what follows)."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array):
        self.keys, self.values, self.offset = keys, values, offset

    def update_and_fetch(self, k: mx.array, v: mx.array):
        self.keys = mx.slice_update(self.keys, k, self.offset, axes=(2,))
        self.values = mx.slice_update(self.values, v, self.offset, axes=(2,))
        return self.keys, self.values


def fuse(modules: list):
    """One projection doing the work of `modules` (Linear or QuantizedLinear of one input):
    their arrays concatenated along the output axis (exact). Each module's arrays become views
    of the fused ones, so the weights are held once."""
    first = modules[0]
    fused = copy.copy(first)  # the same kind of layer (group size, bits, mode), fused arrays
    for key in [k for k, v in first.items() if isinstance(v, mx.array)]:
        whole = mx.concatenate([m[key] for m in modules], axis=0)
        ends = np.cumsum([m[key].shape[0] for m in modules]).tolist()
        parts = [whole[start:end] for start, end in zip([0] + ends, ends)]
        mx.eval(whole, *parts)  # evaluated before any thread can see them
        fused[key] = whole
        for m, part in zip(modules, parts):
            m[key] = part
    return fused


def _layer_parts(layer) -> dict:
    """What the compiled step reads of a layer: shallow copies of its modules (the compiler
    puts its tracers into these while tracing, never into the model another thread may be
    running) and the fused projections."""
    attn, mlp = layer.self_attn, layer.mlp
    return {"input_layernorm": copy.copy(layer.input_layernorm),
            "qkv": fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
            "o_proj": copy.copy(attn.o_proj),
            "post_attention_layernorm": copy.copy(layer.post_attention_layernorm),
            "gate_up": fuse([mlp.gate_proj, mlp.up_proj]),
            "down_proj": copy.copy(mlp.down_proj)}


def _arrays(module) -> list:
    return [v for _, v in tree_flatten(module.parameters())]


def _heads(attn) -> SimpleNamespace:
    """The head layout and rotary base of an Attention (no arrays: no reference to the model)."""
    return SimpleNamespace(n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads,
                           head_dim=attn.head_dim, scale=attn.scale, theta=attn.theta)


def _rotate(x, heads, position):
    return mx.fast.rope(x, heads.head_dim, traditional=False, base=heads.theta, scale=1.0,
                        offset=position)


def _layer(heads, parts: dict, h, mask, slot, position):
    """DecoderLayer.__call__ for one position, with fused q/k/v and gate/up projections."""
    B, D = h.shape[0], heads.head_dim
    q_width, kv_width = heads.n_heads * D, heads.n_kv_heads * D
    qkv = parts["qkv"](parts["input_layernorm"](h))
    q, k, v = mx.split(qkv, [q_width, q_width + kv_width], axis=-1)
    q = q.reshape(B, heads.n_heads, 1, D)  # (B, H, 1, hd): one position
    k = k.reshape(B, heads.n_kv_heads, 1, D)
    v = v.reshape(B, heads.n_kv_heads, 1, D)
    k, v = slot.update_and_fetch(_rotate(k, heads, position), v)
    out = mx.fast.scaled_dot_product_attention(_rotate(q, heads, position), k, v,
                                               scale=heads.scale, mask=mask)
    h = h + parts["o_proj"](out.reshape(B, 1, q_width))
    gate, up = mx.split(parts["gate_up"](parts["post_attention_layernorm"](h)), 2, axis=-1)
    return h + parts["down_proj"](swiglu(gate, up))


def _body(heads: list, tree: dict):
    def step(h, offset, position, keys, values):
        """h [B, 1, hidden] at `offset` ([1] int32; rope at `position`) over buffers
        [B, Hkv, S, D] → (normed hidden [B, 1, hidden], updated keys, updated values)."""
        mask = mx.arange(keys[0].shape[2]) <= offset  # (S,): this position and those before
        slots = [_Slot(k, v, offset) for k, v in zip(keys, values)]
        for layer_heads, parts, slot in zip(heads, tree["layers"], slots):
            h = _layer(layer_heads, parts, h, mask, slot, position)
        return tree["norm"](h), [s.keys for s in slots], [s.values for s in slots]

    return step


class CompiledStep:
    """The compiled decode step of one Decoder, with its q/k/v and gate/up projections fused
    (7 matmuls a layer become 4). Its weights, the arrays of `tree`, are the compiled
    function's implicit inputs; `refresh` rebuilds the layers whose weights were replaced."""

    def __init__(self, decoder):
        # The decoder keeps its step; the step only a weak reference to it (no cycle: a
        # dropped model is freed at once).
        self.decoder = weakref.ref(decoder)
        self.tree = {"layers": [_layer_parts(layer) for layer in decoder.layers],
                     "norm": copy.copy(decoder.norm)}
        self.sources = [_arrays(layer) for layer in decoder.layers] + [_arrays(decoder.norm)]
        heads = [_heads(layer.self_attn) for layer in decoder.layers]
        self.body = _body(heads, self.tree)  # the uncompiled graph, for counting kernels
        self.fn = mx.compile(self.body, inputs=self.tree)

    def refresh(self):
        """Rebuild what was made of weights replaced since (loaded again, cast)."""
        decoder = self.decoder()
        with _LOCK:
            for i, layer in enumerate(decoder.layers):
                if any(a is not b for a, b in zip(_arrays(layer), self.sources[i])):
                    self.tree["layers"][i] = _layer_parts(layer)
                    self.sources[i] = _arrays(layer)
            if any(a is not b for a, b in zip(_arrays(decoder.norm), self.sources[-1])):
                self.tree["norm"], self.sources[-1] = copy.copy(decoder.norm), _arrays(decoder.norm)

    def __call__(self, h: mx.array, cache: List[Any], rope_delta: int = 0,
                 ahead: int = 1) -> mx.array:
        """The normed hidden state [B, 1, hidden] of `h` [B, 1, hidden] fed after what `cache`
        holds, advancing the caches by one position; `ahead` is how many more steps are
        expected (a full buffer grows to cover up to AHEAD of them)."""
        if cache[0].offset >= cache[0].keys.shape[2]:
            reserve(cache, ahead)
        offset = cache[0].offset
        where = mx.array([offset], dtype=mx.int32)
        position = mx.array(offset + rope_delta, dtype=mx.int32)
        with _LOCK:
            hidden, keys, values = self.fn(h, where, position, [c.keys for c in cache],
                                           [c.values for c in cache])
        for c, k, v in zip(cache, keys, values):
            c.keys, c.values, c.offset = k, v, offset + 1
        return hidden


def _plain(cache: List[Any]) -> bool:
    """Plain float mlx-lm KV caches that a prefill filled (not quantized, not rotating)."""
    return all(type(c) is KVCache and c.keys is not None for c in cache)


def compilable(h: mx.array, cache) -> bool:
    """Whether the step of `h` can be the compiled one: one position of one row, after a
    prefill, on plain float KV caches (quantized and rotating caches stay on the op path)."""
    return (cache is not None and h.shape[0] == 1 and h.shape[1] == 1 and _plain(cache)
            and len({c.keys.shape[2] for c in cache}) == 1
            and len({c.offset for c in cache}) == 1)


def decoder_pass(decoder, h: mx.array, cache, positions=None, rope_delta: int = 0, *,
                 compiled: bool = False, ahead: int = 1) -> mx.array:
    """`decoder(h, cache, positions, rope_delta)`, or with `compiled`, the compiled step when
    this pass is one it can take (`compilable`, sequential positions)."""
    if compiled and positions is None and compilable(h, cache):
        return step_for(decoder)(h, cache, rope_delta, ahead)
    return decoder(h, cache, positions, rope_delta)


def reserve(cache: List[Any], n: int):
    """Grow every buffer of plain, filled KV caches, ahead of time, to hold `n` more positions
    (at most AHEAD), rounded up to STEP. Other caches, and buffers long enough, stay as they are."""
    if not _plain(cache):
        return
    offset = cache[0].offset
    need = offset + max(1, min(n, AHEAD))
    if all(c.keys.shape[2] >= need for c in cache):
        return
    size = -(-need // STEP) * STEP
    for c in cache:
        c.keys, c.values = _grown(c.keys, offset, size), _grown(c.values, offset, size)


def _grown(buffer: mx.array, offset: int, size: int) -> mx.array:
    B, H, _, D = buffer.shape
    pad = mx.zeros((B, H, size - offset, D), buffer.dtype)
    return mx.concatenate([buffer[..., :offset, :], pad], axis=2)


def prepare(decoder, cache: List[Any], n: int):
    """Before `n` steps on plain KV caches: the decoder's step made (or its fused projections
    refreshed) and the buffers grown to hold the steps (up to AHEAD), so a reply traces once."""
    if _plain(cache):
        step_for(decoder).refresh()
        reserve(cache, n)


def step_for(decoder) -> CompiledStep:
    """The decoder's CompiledStep, made on first use and kept on the decoder."""
    with _LOCK:
        step = getattr(decoder, "_compiled_step", None)
        if step is None:
            step = CompiledStep(decoder)
            decoder._compiled_step = step  # a plain attribute: not a parameter, never saved
    return step
