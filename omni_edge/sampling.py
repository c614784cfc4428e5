"""Sampling for the Thinker and the Talker, always on float32 logits as the reference does
(transformers upcasts the last position's logits before its processors and warpers)."""

from typing import Callable, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

Processor = Callable[[mx.array, mx.array], mx.array]  # (seen ids, logits [1, V]) -> logits


def make_repetition_penalty(penalty: float) -> Processor:
    """The reference's penalty: every id seen so far, prompt included, has its logit divided
    by `penalty` when positive and multiplied when negative."""
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")

    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        seen = logits[:, tokens]
        logits[:, tokens] = mx.where(seen < 0, seen * penalty, seen / penalty)
        return logits

    return apply


def make_min_tokens(stop_ids, n: int) -> Processor:
    """Keep the `stop_ids` from being sampled for the first `n` steps (benchmarks force reply
    lengths so, as transformers' min_new_tokens)."""
    stop = mx.array(sorted(stop_ids))
    steps = [0]

    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        if steps[0] < n:
            logits[:, stop] = -mx.inf
        steps[0] += 1
        return logits

    return apply


def make_thinker_sampler(temperature: float, top_p: float = 1.0, top_k: int = 0,
                         min_p: float = 0.0) -> Callable[[mx.array], mx.array]:
    """mlx-lm's sampler (greedy at temperature 0) on float32 log-probabilities."""
    sampler = make_sampler(temperature, top_p=top_p, min_p=min_p, top_k=top_k)

    def sample(logits: mx.array) -> mx.array:
        logits = logits.astype(mx.float32)
        return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    return sample


def process(logits: mx.array, tokens: mx.array, processors: Sequence[Processor]) -> mx.array:
    """`logits` [1, V] in float32 through each processor in turn."""
    logits = logits.astype(mx.float32)
    for processor in processors:
        logits = processor(tokens, logits)
    return logits


def make_talker_sampler(temperature: float, top_k: int, top_p: float, suppress: Sequence[int]):
    """The reference's warpers in its order (temperature, top-k, top-p) over float32 logits;
    the ids in `suppress` are never sampled. Top-k picks its candidates with a partition, and
    top-p sorts only those, not the whole codebook."""
    suppress = mx.array(list(suppress))

    def sample(logits: mx.array) -> mx.array:  # logits [1, V]
        logits = logits.astype(mx.float32)
        logits[:, suppress] = -mx.inf
        if temperature == 0:
            return mx.argmax(logits, axis=-1)
        logits = logits / temperature
        vocab = logits.shape[-1]
        if 0 < top_k < vocab:
            candidates = mx.argpartition(-logits, kth=top_k - 1, axis=-1)[:, :top_k]  # [1, k]
        else:
            candidates = mx.broadcast_to(mx.arange(vocab), logits.shape)
        values = mx.take_along_axis(logits, candidates, axis=-1)
        if 0 < top_p < 1:
            order = mx.argsort(values, axis=-1)  # ascending, over the candidates only
            values = mx.take_along_axis(values, order, axis=-1)
            candidates = mx.take_along_axis(candidates, order, axis=-1)
            drop = mx.cumsum(mx.softmax(values, axis=-1), axis=-1) <= 1 - top_p
            drop[:, -1] = False  # always keep the most likely code
            values = mx.where(drop, -mx.inf, values)
        pick = mx.random.categorical(values)  # [1]
        return mx.take_along_axis(candidates, pick[:, None], axis=-1)[:, 0]

    return sample
