"""The Thinker's decode loop: prefill in chunks, then one token per step, the next step queued
before the current token reaches Python."""

from typing import Iterator, List, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

from .compiled_step import decoder_pass, prepare
from .options import PREFILL_STEP
from .sampling import process

CLEAR_CACHE_EVERY = 256
KV_GROUP_SIZE = 64
# Generation runs on its own stream, one per thread, so it works from any thread (as mlx-lm 0.32).
GENERATION_STREAM = mx.new_thread_local_stream(mx.default_device())


def quantize_cache(cache: list, bits: int, group_size: int = KV_GROUP_SIZE):
    """Replace each float KV cache of the list by its quantized copy, in place (the caller's
    list, e.g. a chat's, then holds the quantized ones)."""
    head_dim = next((c.keys.shape[-1] for c in cache if getattr(c, "keys", None) is not None), 0)
    if head_dim % group_size:
        group_size = 32
    if head_dim % group_size:
        raise ValueError(f"kv_bits needs attention heads a multiple of 32 wide; this model's are "
                         f"{head_dim} (the published models' are 128): leave kv_bits unset")
    for i, c in enumerate(cache):
        if type(c) is KVCache:  # a rotating or an already quantized cache stays as it is
            cache[i] = c.to_quantized(group_size=group_size, bits=bits)


def generate_step(
    model,
    prompt_ids: List[int],
    *,
    max_tokens: int,
    sampler=None,
    logits_processors=(),
    cache=None,
    prefill_step_size: int = PREFILL_STEP,
    input_embeddings: Optional[mx.array] = None,
    capture: Optional[list] = None,
    position_ids: Optional[np.ndarray] = None,
    rope_delta: int = 0,
    seen_ids: Optional[List[int]] = None,
    forced_ids: Optional[List[int]] = None,
    kv_bits: Optional[int] = None,
    compile_decode: bool = False,
) -> Iterator[int]:
    """Yield Thinker tokens after `prompt_ids` (whose embeddings may be given, [L, H], when
    the prompt holds media), fed after whatever `cache` already holds. Logits reach the
    processors and the sampler in float32.

    `position_ids` [3, L] are the prompt's TMRoPE positions when they are not sequential
    (images, video); decoding then continues at cache offset + `rope_delta`. `seen_ids` are
    the ids the repetition penalty reads besides the prompt (earlier turns).
    With a `capture` list, each forward pass appends its (input embeddings, final normed
    hidden states), [L, H] each: what the Talker reads, taken from the pass that made them.
    `forced_ids` replace sampling: the loop feeds and yields exactly those ids (the Thinker
    "says" a given text, so the Talker reads its states); `max_tokens` still bounds it.
    `kv_bits` quantizes the (float) caches after the prompt's prefill, as mlx-lm does.
    With `compile_decode`, each one-token step on plain KV caches runs the layers as one
    compiled graph (`compiled_step`); the other passes are built op by op."""
    thinker = model.thinker
    cache = cache if cache is not None else thinker.make_cache()
    sampler = sampler or (lambda logits: mx.argmax(logits, axis=-1))
    prompt = mx.array(prompt_ids, dtype=mx.uint32)
    embeds = input_embeddings
    positions = mx.array(position_ids)[:, None] if position_ids is not None else None  # (3, 1, L)
    tokens = mx.array(list(seen_ids or []) + list(prompt_ids), dtype=mx.uint32)
    forced = list(forced_ids) if forced_ids is not None else None
    if forced is not None:
        max_tokens = min(max_tokens, len(forced))

    def forward(ids: mx.array, emb: Optional[mx.array], pos=None, ahead: int = 1) -> mx.array:
        h = emb[None] if emb is not None else thinker.embed(ids[None])
        hidden = decoder_pass(thinker.model, h, cache, pos, rope_delta,
                              compiled=compile_decode, ahead=ahead)
        if capture is not None:
            capture.append((h[0], hidden[0]))
        return hidden

    def captured() -> list:
        return list(capture[-1]) if capture is not None else []

    def step(ids: mx.array, n: int, emb: Optional[mx.array] = None, pos=None) -> mx.array:
        nonlocal tokens
        with mx.stream(GENERATION_STREAM):
            hidden = forward(ids, emb, pos, max_tokens - n)
            if forced is not None:
                return mx.array([forced[n]], dtype=mx.uint32)
            logits = process(thinker.logits(hidden[:, -1, :]), tokens, logits_processors)
            y = sampler(logits)
            if logits_processors:
                tokens = mx.concatenate([tokens, y.astype(mx.uint32)])
            return y

    with mx.stream(GENERATION_STREAM):
        while prompt.size > prefill_step_size:
            n = prefill_step_size
            forward(prompt[:n], embeds[:n] if embeds is not None else None,
                    positions[..., :n] if positions is not None else None)
            mx.eval([c.state for c in cache] + captured())  # prefill chunks' logits: never computed
            prompt = prompt[n:]
            embeds = embeds[n:] if embeds is not None else None
            positions = positions[..., n:] if positions is not None else None
            mx.clear_cache()
    if max_tokens < 1:
        return
    y = step(prompt, 0, embeds, positions)
    mx.async_eval(y, *captured())
    if kv_bits:
        quantize_cache(cache, kv_bits)
    if compile_decode:  # buffers that hold the whole reply (up to AHEAD): one trace for it
        with mx.stream(GENERATION_STREAM):
            prepare(thinker.model, cache, max_tokens)
    for n in range(max_tokens):
        if n + 1 < max_tokens:
            next_y = step(y, n + 1)
            mx.async_eval(next_y, *captured())
        yield y.item()
        if n % CLEAR_CACHE_EVERY == CLEAR_CACHE_EVERY - 1:
            mx.clear_cache()
        if n + 1 < max_tokens:
            y = next_y
