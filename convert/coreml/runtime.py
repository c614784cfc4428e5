"""What an app computes around the packages, in numpy: M-RoPE tables, attention masks, the
prefill chunk layout and where the BigVGAN windows go.

The README describes the same rules for an iOS app; the tests drive the exported programs with
these functions (the tables are checked against transformers' rotary embedding).
"""

from typing import Sequence

import numpy as np

# Masked slots get a large finite value, not -inf: a padded query row that saw only masked slots
# would otherwise turn into NaN, and 0 x NaN leaks into every later query through the cache.
MASK_VALUE = -1e4


def rope_tables(positions, mrope_section: Sequence[int], theta: float, head_dim: int):
    """cos, sin [1, T, head_dim] for TMRoPE positions [3, T] (temporal, height, width).

    Frequency f uses axis k where mrope_section's k-th band holds f, in both halves of the head
    (transformers' `rotate_half` layout)."""
    positions = np.asarray(positions, np.float64)
    if positions.ndim == 1:
        positions = np.broadcast_to(positions, (3, positions.shape[0]))
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    axis = np.repeat(np.arange(len(mrope_section)), mrope_section)  # [head_dim / 2]
    angles = positions[axis, :].T * inv_freq  # [T, head_dim / 2]
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float32)
    return np.cos(angles)[None], np.sin(angles)[None]


def attention_mask(query_slots, context: int, dead_slots=()):
    """Additive mask [1, 1, T, context]: query t sees the live slots up to query_slots[t].

    Slots are cache positions; `dead_slots` (e.g. left padding) are hidden from every query but
    the one sitting on them, so no row is empty."""
    query_slots = np.asarray(query_slots)
    slots = np.arange(context)
    live = slots[None, :] <= query_slots[:, None]
    dead = np.zeros(context, bool)
    dead[list(dead_slots)] = True
    live &= ~dead[None, :] | (slots[None, :] == query_slots[:, None])
    return np.where(live, 0.0, MASK_VALUE).astype(np.float32)[None, None]


def vocoder_calls(ready: int, emitted: int, final: bool, window: int, context: int):
    """The BigVGAN calls that emit mel frames [emitted, ...) once `ready` frames exist.

    Each call is (start, emit_start, emit_end): vocode mel[start : start + window] (frames past
    `ready` padded by repeating the last one) and keep the samples of frames [emit_start,
    emit_end). Emitted audio is at least `context` frames from a window edge that is not the
    utterance's, so it equals a full-length BigVGAN run; only the last frames of an utterance
    shorter than the window see padding."""
    calls = []
    while True:
        start = max(0, min(emitted - context, ready - window))
        real_end = min(ready, start + window)
        end = real_end if final and real_end == ready else real_end - context
        if end <= emitted:
            return calls
        calls.append((start, emitted, end))
        emitted = end


def prefill_layout(prompt_len: int, chunk: int):
    """How a prompt fills the cache with fixed-size prefill chunks.

    Returns (chunks, shift, dead): each chunk is (first_slot, token indices, -1 for padding);
    token i lives in slot i + shift; `dead` slots hold padding and stay masked. A prompt of at least
    one chunk needs no padding: its last chunk ends on its last token and re-writes slots an
    earlier chunk wrote (with the same keys and values). A shorter prompt is left-padded."""
    if prompt_len < 1:
        raise ValueError("the prompt is empty")
    if prompt_len < chunk:
        pad = chunk - prompt_len
        return [(0, np.concatenate([np.full(pad, -1), np.arange(prompt_len)]))], pad, list(range(pad))
    starts = list(range(0, prompt_len - chunk + 1, chunk))
    if starts[-1] + chunk < prompt_len:
        starts.append(prompt_len - chunk)
    return [(s, np.arange(s, s + chunk)) for s in starts], 0, []
