"""TMRoPE: rotary embeddings over 3-axis (time, height, width) position ids."""

from typing import List, Tuple

import mlx.core as mx


def inv_freq(head_dim: int, theta: float) -> mx.array:
    return 1.0 / (theta ** (mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim))


def mrope_cos_sin(
    position_ids: mx.array, head_dim: int, theta: float, mrope_section: List[int]
) -> Tuple[mx.array, mx.array]:
    """cos/sin tables for `position_ids` of shape [3, B, L] (or [3, L]).

    Frequency f takes its position from the axis whose `mrope_section` span holds f, in
    both halves of the half-split layout; computed in float32 as the reference does.
    Returns two arrays of shape [B, 1, L, head_dim] that broadcast over heads.
    """
    if position_ids.ndim == 2:
        position_ids = position_ids[:, None]
    freqs = position_ids.astype(mx.float32)[..., None] * inv_freq(head_dim, theta)  # (3, B, L, D/2)
    bounds = [0]
    for s in mrope_section:
        bounds.append(bounds[-1] + s)
    freqs = mx.concatenate(
        [freqs[axis, ..., bounds[axis] : bounds[axis + 1]] for axis in range(3)], axis=-1
    )  # (B, L, D/2)
    emb = mx.concatenate([freqs, freqs], axis=-1)[:, None]  # (B, 1, L, D)
    return mx.cos(emb), mx.sin(emb)


def rotate_half(x: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_mrope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate x [B, H, L, D]; cos/sin are cast to x's dtype first, as the reference does."""
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    return x * cos + rotate_half(x) * sin


def text_position_ids(length: int, start: int = 0) -> mx.array:
    """Positions of plain text: the same running index on all three axes, shape [3, L]."""
    return mx.broadcast_to(mx.arange(start, start + length)[None], (3, length))
