"""The audio encoder: Whisper-style convs + transformer over 2 s chunks, pooled to 25 tokens/s."""

import math
from functools import lru_cache
from typing import List, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import AudioEncoderConfig

MAX_TIMESCALE = 10000.0
LAYER_NORM_EPS = 1e-5


def conv_output_length(n_frames: int) -> int:
    """Frames after conv2 (kernel 3, stride 2, padding 1)."""
    return (n_frames - 1) // 2 + 1


def num_audio_tokens(n_frames: int) -> int:
    """Embeddings a clip of `n_frames` valid mel frames encodes to (AvgPool(2, 2) after conv2)."""
    return (conv_output_length(n_frames) - 2) // 2 + 1


@lru_cache(maxsize=16)
def sinusoids(length: int, dim: int) -> mx.array:
    """Whisper's position table [length, dim]: the sin block, then the cos block.

    Computed here rather than stored on the module, where MLX would count it as a parameter."""
    increment = math.log(MAX_TIMESCALE) / (dim // 2 - 1)
    inv_timescales = mx.exp(-increment * mx.arange(dim // 2, dtype=mx.float32))
    scaled_time = mx.arange(length, dtype=mx.float32)[:, None] * inv_timescales[None, :]
    table = mx.concatenate([mx.sin(scaled_time), mx.cos(scaled_time)], axis=1)
    mx.eval(table)
    return table


class AudioAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.scale = (dim // n_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, L, hd)
        k = self.k_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))  # (B, L, D)


class AudioEncoderLayer(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        dim = cfg.d_model
        self.self_attn = AudioAttention(dim, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        h = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        return h + self.fc2(nn.gelu(self.fc1(self.final_layer_norm(h))))


class AudioEncoder(nn.Module):
    """`thinker.audio_tower`: log-mel clips → embeddings at the Thinker's width."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.chunk_frames = 2 * cfg.n_window
        dim = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.layers = [AudioEncoderLayer(cfg) for _ in range(cfg.encoder_layers)]
        self.ln_post = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.proj = nn.Linear(dim, cfg.output_dim)
        # In the checkpoint, but the reference never uses it: the audio bos/eos tokens
        # are ordinary text embeddings.
        self.audio_bos_eos_token = nn.Embedding(2, cfg.output_dim)

    def __call__(self, features: Sequence[mx.array]) -> mx.array:
        """Embeddings [Σ tokens, output_dim] for log-mel clips, each [num_mel_bins, n_frames]
        of valid frames only; clip i gives `num_audio_tokens(n_i)` rows, in clip order.

        Every 2 s chunk of every clip goes through the encoder in one batch; attention stays
        within a chunk, as in the reference's block-diagonal mask."""
        lengths = self._check(features)
        if not lengths:
            return mx.zeros((0, self.cfg.output_dim), dtype=self.conv1.weight.dtype)
        chunks, chunk_lens = self._chunk(features, lengths)  # (C, T, mel)
        h = self._encode(chunks, chunk_lens)  # (C, T', D)
        h = self._pool(h, chunk_lens, lengths)  # (Σ tokens, D)
        return self.proj(self.ln_post(h))

    def _check(self, features: Sequence[mx.array]) -> List[int]:
        mel = self.cfg.num_mel_bins
        for i, f in enumerate(features):
            if f.ndim != 2 or f.shape[0] != mel or f.shape[1] < 1:
                raise ValueError(
                    f"audio clip {i} has shape {tuple(f.shape)}; expected [{mel}, n_frames] with "
                    "n_frames >= 1 (one log-mel array per clip, valid frames only)"
                )
        return [int(f.shape[1]) for f in features]

    def _chunk(self, features, lengths) -> Tuple[mx.array, List[int]]:
        """Split every clip into `chunk_frames`-frame chunks (the tail keeps the remainder),
        zero-padded to the longest chunk: (C, T, mel) channels-last, and each chunk's length."""
        size, dtype = self.chunk_frames, self.conv1.weight.dtype
        chunks, chunk_lens = [], []
        for f, n in zip(features, lengths):
            k = -(-n // size)
            padded = mx.pad(f.T.astype(dtype), [(0, k * size - n), (0, 0)])  # (k·size, mel)
            chunks.append(padded.reshape(k, size, -1))  # (k, size, mel)
            chunk_lens += [size] * (k - 1) + [n - size * (k - 1)]
        return mx.concatenate(chunks, axis=0)[:, : max(chunk_lens)], chunk_lens

    def _encode(self, x: mx.array, chunk_lens: List[int]) -> mx.array:
        """Convs, per-chunk positions, and the transformer layers over a batch of chunks."""
        frames = mx.array(chunk_lens)[:, None]  # (C, 1)
        valid = mx.arange(x.shape[1])[None, :] < frames  # (C, T)
        # Zeroing the padded frames makes conv2 read zeros past each chunk's end, as the reference.
        x = nn.gelu(self.conv1(x)) * valid[..., None].astype(x.dtype)
        x = nn.gelu(self.conv2(x))  # (C, T', D)
        x = x + sinusoids(x.shape[1], x.shape[2]).astype(x.dtype)
        # Key-padding mask: each chunk attends only to its own valid post-conv frames.
        keys = mx.arange(x.shape[1])[None, :] < (frames - 1) // 2 + 1  # (C, T')
        mask = keys[:, None, None, :]  # (C, 1, 1, T')
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def _pool(self, x: mx.array, chunk_lens: List[int], lengths: List[int]) -> mx.array:
        """Gather the valid frames of each clip and average adjacent pairs (AvgPool(2, 2),
        per clip, an odd trailing frame dropped): (Σ tokens, D)."""
        C, T, D = x.shape
        valid = np.concatenate([c * T + np.arange(conv_output_length(n))
                                for c, n in enumerate(chunk_lens)])  # flat rows, clip order
        starts = np.cumsum([0] + [conv_output_length(n) for n in lengths[:-1]])
        first = np.concatenate([s + 2 * np.arange(num_audio_tokens(n))
                                for s, n in zip(starts, lengths)]).astype(np.int64)
        flat = x.reshape(C * T, D)  # (C·T', D)
        return (flat[mx.array(valid[first])] + flat[mx.array(valid[first + 1])]) / 2
