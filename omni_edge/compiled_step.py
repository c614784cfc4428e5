"""One decode position through a `Decoder` (Thinker or Talker) as a single compiled graph.

Built op by op, a decode step costs Python ~20 ops per layer; compiled, it is one call whose
graph is traced once per KV buffer length. The step runs over the caches' whole preallocated
buffers: the new keys/values are written at an array offset and a mask hides the positions
after it, so the traced shapes change only when a buffer grows. The mlx-lm `KVCache`s keep
owning the buffers (their keys/values/offset are set after each step), so prefill, `trim`,
`to_quantized` and `state` work on them as before.
"""

import threading
from typing import Any, List

import mlx.core as mx
from mlx_lm.models.cache import KVCache

# Buffer lengths stay multiples of mlx-lm's KVCache step; a full buffer grows by up to AHEAD
# positions at once, since each new length traces the step again.
STEP = KVCache.step
AHEAD = 1024
# Tracing is not thread-safe (the compile cache is shared): one thread builds a step at a time.
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


def _body(decoder):
    def step(h, offset, position, keys, values):
        """h [B, 1, hidden] at `offset` ([1] int32; rope at `position`) over buffers
        [B, Hkv, S, D] → (normed hidden [B, 1, hidden], updated keys, updated values)."""
        mask = mx.arange(keys[0].shape[2]) <= offset  # (S,): this position and those before
        slots = [_Slot(k, v, offset) for k, v in zip(keys, values)]
        for layer, slot in zip(decoder.layers, slots):
            h = layer(h, mask, slot, position)
        return decoder.norm(h), [s.keys for s in slots], [s.values for s in slots]

    return step


class CompiledStep:
    """The compiled decode step of one Decoder; its weights are the compiled function's
    implicit inputs, so the function sees the decoder's current parameters on every call."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.body = _body(decoder)  # the uncompiled graph, for counting its kernels
        self.fn = mx.compile(self.body, inputs=decoder)

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


def compilable(h: mx.array, cache) -> bool:
    """Whether the step of `h` can be the compiled one: one position of one row, after a
    prefill, on plain float KV caches (quantized and rotating caches stay on the op path)."""
    return (cache is not None and h.shape[0] == 1 and h.shape[1] == 1
            and all(type(c) is KVCache and c.keys is not None for c in cache)
            and len({c.keys.shape[2] for c in cache}) == 1
            and len({c.offset for c in cache}) == 1)


def reserve(cache: List[Any], n: int):
    """Grow every buffer of plain, filled KV caches, ahead of time, to hold `n` more positions
    (at most AHEAD), rounded up to STEP. Other caches, and buffers long enough, stay as they are."""
    if not all(type(c) is KVCache and c.keys is not None for c in cache):
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


def step_for(decoder) -> CompiledStep:
    """The decoder's CompiledStep, made on first use and kept on the decoder."""
    with _LOCK:
        step = getattr(decoder, "_compiled_step", None)
        if step is None:
            step = CompiledStep(decoder)
            decoder._compiled_step = step  # a plain attribute: not a parameter, never saved
    return step
