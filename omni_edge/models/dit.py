"""The Token2Wav flow-matching DiT (`token2wav.code2wav_dit_model`): codec codes + a voice →
mel-spectrogram velocity, and the sampler that integrates it from noise to a mel (solvers.py)."""

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import DiTConfig
from .ecapa import ECAPA
from .solvers import Solver, get_solver, increment, time_grid

FREQ_EMBED_DIM = 256
TIME_SCALE = 1000.0
MAX_PERIOD = 10000.0
LAYER_NORM_EPS = 1e-6
MAX_CACHED_MASKS = 48  # per DiT: a streaming utterance uses 2-4 lengths, 3 reaches each


def gelu_tanh(x: mx.array) -> mx.array:
    """In float32: x**3 overflows float16 from |x| = 40."""
    y = x.astype(mx.float32)
    y = 0.5 * y * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))
    return y.astype(x.dtype)


def layer_norm(x: mx.array) -> mx.array:
    """LayerNorm without affine parameters (both DiT norms are modulated instead)."""
    return mx.fast.layer_norm(x, None, None, LAYER_NORM_EPS)


def default_inv_freq(head_dim: int, theta: float) -> mx.array:
    return 1.0 / (theta ** (mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim))


def block_mask(n: int, block_size: int, back: int, ahead: int) -> mx.array:
    """[n, n] boolean, True = attend: a frame sees its own block, `back` blocks before it
    and `ahead` blocks after it. A constant made from numpy, so it is safe to build inside
    `mx.compile`."""
    return mx.array(_block_mask(n, block_size, back, ahead))


@lru_cache(maxsize=32)
def _block_mask(n: int, block_size: int, back: int, ahead: int) -> np.ndarray:
    blocks = np.arange(n) // block_size
    diff = blocks[None, :] - blocks[:, None]  # (n, n): key block - query block
    return (diff >= -back) & (diff <= ahead)


@lru_cache(maxsize=4)
def _time_freqs(half: int) -> np.ndarray:
    freqs = np.exp(np.arange(half, dtype=np.float32) * np.float32(-math.log(MAX_PERIOD) / (half - 1)))
    return freqs.astype(np.float32)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.time_mlp = [nn.Linear(FREQ_EMBED_DIM, dim), nn.SiLU(), nn.Linear(dim, dim)]

    def __call__(self, t: mx.array, dtype) -> mx.array:
        """t [B] in [0, 1] → [B, dim]; the sinusoid is computed in float32."""
        freqs = mx.array(_time_freqs(FREQ_EMBED_DIM // 2))  # a constant: no kernels per call
        angles = (TIME_SCALE * t.astype(mx.float32))[:, None] * freqs[None]  # (B, half)
        h = mx.concatenate([mx.sin(angles), mx.cos(angles)], axis=-1).astype(dtype)
        for layer in self.time_mlp:
            h = layer(h)
        return h


class CodecEmbedding(nn.Module):
    def __init__(self, num_embeds: int, dim: int, repeats: int):
        super().__init__()
        self.repeats = repeats
        self.codec_embed = nn.Embedding(num_embeds + 1, dim)

    def __call__(self, codes: mx.array) -> mx.array:
        """codes [B, M] → [B, M * repeats, dim], each code repeated in place (c0 c0 c1 c1 …)."""
        # Out-of-table ids (e.g. the talker's mask token) read row 0, as vllm-omni does.
        size = self.codec_embed.weight.shape[0]
        codes = mx.where((codes < 0) | (codes >= size), 0, codes)
        return mx.repeat(self.codec_embed(codes), self.repeats, axis=1)


class InputEmbedding(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        width = cfg.mel_dim + cfg.enc_dim + cfg.emb_dim + cfg.enc_emb_dim
        self.proj = nn.Linear(width, cfg.hidden_size)
        self.spk_encoder = ECAPA(cfg)


class RotaryEmbedding(nn.Module):
    """Holds `inv_freq`: the checkpoint stores bf16-rounded values, which the model was trained
    with, so they are loaded as a parameter rather than recomputed."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.inv_freq = default_inv_freq(head_dim, theta)

    def __call__(self, x: mx.array) -> mx.array:
        """Interleaved (adjacent-pair) rotation of x [B, H, N, head_dim] at positions 0..N-1."""
        periods = 1.0 / self.inv_freq.astype(mx.float32)  # mx.fast.rope takes 1 / inv_freq
        return mx.fast.rope(x, x.shape[-1], traditional=True, base=None, scale=1.0, offset=0,
                            freqs=periods)


class AdaLayerNormZero(nn.Module):
    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, dim * chunks)

    def __call__(self, temb: mx.array) -> list:
        """temb [B, dim] → `chunks` modulation vectors, each [B, 1, dim]."""
        return mx.split(self.linear(nn.silu(temb))[:, None], self.chunks, axis=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, inner = cfg.num_attention_heads, cfg.num_attention_heads * cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.to_q = nn.Linear(cfg.hidden_size, inner)
        self.to_k = nn.Linear(cfg.hidden_size, inner)
        self.to_v = nn.Linear(cfg.hidden_size, inner)
        self.to_out = [nn.Linear(inner, cfg.hidden_size)]

    @staticmethod
    def rotate(x: mx.array, rope: RotaryEmbedding) -> mx.array:
        """Rotary positions on head 0 only: the checkpoint was trained that way."""
        return mx.concatenate([rope(x[:, :1]), x[:, 1:]], axis=1)

    def __call__(self, x: mx.array, rope: RotaryEmbedding, mask: mx.array) -> mx.array:
        B, N, _ = x.shape
        q, k, v = (p(x).reshape(B, N, self.heads, -1).transpose(0, 2, 1, 3)  # (B, H, N, hd)
                   for p in (self.to_q, self.to_k, self.to_v))
        q, k = self.rotate(q, rope), self.rotate(k, rope)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.to_out[0](out.transpose(0, 2, 1, 3).reshape(B, N, -1))  # (B, N, hidden)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        # Indices follow the checkpoint's ff.ff.{0,3}; 1 and 2 were GELU and dropout.
        self.ff = [nn.Linear(dim, dim * mult), nn.Identity(), nn.Identity(),
                   nn.Linear(dim * mult, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.ff[3](gelu_tanh(self.ff[0](x)))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, back: int, ahead: int):
        super().__init__()
        self.back, self.ahead = back, ahead
        self.attn_norm = AdaLayerNormZero(cfg.hidden_size, 6)
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg.hidden_size, cfg.ff_mult)

    def __call__(self, h, temb, rope, mask: mx.array):
        """mask: `block_mask` of h's length with this block's reach (built once per length)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(temb)
        h = h + gate_msa * self.attn(layer_norm(h) * (1 + scale_msa) + shift_msa, rope, mask)
        return h + gate_mlp * self.ff(layer_norm(h) * (1 + scale_mlp) + shift_mlp)


class Memo:
    """Work kept by a module (compiled functions, masks per length); it lives and dies with its
    module (a global cache keyed by id() would keep every DiT ever built alive). A plain object,
    so MLX does not take it for a child module or a parameter."""

    def __init__(self):
        self.functions = {}
        self.masks = {}
        self.speakers = {}


@dataclass
class Conditions:
    """Everything but the noisy mel and the time, computed once per utterance: the
    [speaker encoding, code embedding, x-vector] features [B', N, ·] (B' = 2B with CFG)."""

    features: mx.array
    apply_cfg: bool


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimestepEmbedding(cfg.hidden_size)
        self.text_embed = CodecEmbedding(cfg.num_embeds, cfg.emb_dim, cfg.repeats)
        self.input_embed = InputEmbedding(cfg)
        self.rotary_embed = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.transformer_blocks = [
            DiTBlock(cfg, int(i in cfg.look_backward_layers), int(i in cfg.look_ahead_layers))
            for i in range(cfg.num_hidden_layers)
        ]
        self.norm_out = AdaLayerNormZero(cfg.hidden_size, 2)
        self.proj_out = nn.Linear(cfg.hidden_size, cfg.mel_dim)
        self._memo = Memo()

    @property
    def dtype(self):
        return self.proj_out.weight.dtype

    def sanitize(self, weights: dict) -> dict:
        """Converted DiT weights (prefix stripped) → loadable: a checkpoint without the rotary
        `inv_freq` (transformers 5 doesn't save it) gets the computed one."""
        key = "rotary_embed.inv_freq"
        if key not in weights:
            weights = {**weights, key: default_inv_freq(self.cfg.head_dim, self.cfg.rope_theta)}
        return weights

    def speaker_encoding(self, ref_mel: mx.array, apply_cfg: bool = True) -> mx.array:
        """The ECAPA encoding of ref_mel [B, T, mel_dim] → [B', enc_dim]; with CFG the batch
        doubles with the encoding of an all-zero mel (which is not zero). It depends on the
        voice only, so a streaming caller computes it once per utterance."""
        ref_mel = ref_mel.astype(self.dtype)
        if apply_cfg:
            ref_mel = mx.concatenate([ref_mel, mx.zeros_like(ref_mel)])
        return self.input_embed.spk_encoder(ref_mel)

    def conditions(self, codes, spk_cond, ref_mel, apply_cfg: bool = True,
                   speaker: Optional[mx.array] = None) -> Conditions:
        """codes [B, M], spk_cond [B, enc_emb_dim] (x-vector), ref_mel [B, T, mel_dim]
        (or its `speaker_encoding`, given as `speaker`).

        With CFG the batch doubles; the second half is unconditional: code id 0, zero x-vector,
        and the speaker encoding of an all-zero mel."""
        spk_cond = spk_cond.astype(self.dtype)
        code_embed = self.text_embed(codes)  # (B, N, emb_dim)
        if apply_cfg:
            code_embed = mx.concatenate([code_embed, self.text_embed(mx.zeros_like(codes))])
            spk_cond = mx.concatenate([spk_cond, mx.zeros_like(spk_cond)])
        B, N, _ = code_embed.shape
        if speaker is None:
            speaker = self.speaker_encoding(ref_mel, apply_cfg)
        speaker = speaker.astype(self.dtype)[:, None]  # (B', 1, enc_dim)
        features = mx.concatenate([
            mx.broadcast_to(speaker, (B, N, speaker.shape[-1])),
            code_embed,
            mx.broadcast_to(spk_cond[:, None], (B, N, spk_cond.shape[-1])),
        ], axis=-1)  # (B', N, enc_dim + emb_dim + enc_emb_dim)
        return Conditions(features, apply_cfg)

    def velocity(self, x: mx.array, t, cond: Conditions) -> mx.array:
        """x [B, N, mel_dim] noisy mel, t a scalar or [B] → velocity [B', N, mel_dim]."""
        x = x.astype(self.dtype)
        if cond.apply_cfg:
            x = mx.concatenate([x, x])
        t = (t if isinstance(t, mx.array) else mx.array(t)).astype(mx.float32).reshape(-1)
        if t.shape[0] not in (1, x.shape[0]):
            t = mx.concatenate([t, t])  # one time per input row, shared by its CFG twin
        temb = self.time_embed(t, self.dtype)  # (B' or 1, hidden)
        h = self.input_embed.proj(mx.concatenate([x, cond.features], axis=-1))  # (B', N, hidden)
        for block in self.transformer_blocks:
            mask = self.mask(h.shape[1], block.back, block.ahead)
            h = block(h, temb, self.rotary_embed, mask)
        scale, shift = self.norm_out(temb)  # the final norm is scale-first
        return self.proj_out(layer_norm(h) * (1 + scale) + shift)

    def __call__(self, x, t, codes, spk_cond, ref_mel, apply_cfg: bool = True) -> mx.array:
        """One forward pass: the velocity [2B (CFG) or B, N, mel_dim] (conditional rows first)."""
        return self.velocity(x, t, self.conditions(codes, spk_cond, ref_mel, apply_cfg))

    def mask(self, n: int, back: int, ahead: int) -> mx.array:
        """`block_mask` for n frames, built once per length and reach, not once per block."""
        key = (n, back, ahead)
        if key not in self._memo.masks:
            if len(self._memo.masks) >= MAX_CACHED_MASKS:
                self._memo.masks.pop(next(iter(self._memo.masks)))  # the oldest
            self._memo.masks[key] = block_mask(n, self.cfg.block_size, back, ahead)
        return self._memo.masks[key]

    def guided_velocity(self, y: mx.array, t, cond: Conditions, guidance: float) -> mx.array:
        """The ODE right-hand side in float32: g + (g - u) * guidance from one batched call."""
        v = self.velocity(y, t, cond).astype(mx.float32)
        if not cond.apply_cfg:
            return v
        g, u = mx.split(v, 2)
        return g + (g - u) * guidance

    def _compiled_step(self, method: str, guided: bool, guidance: float):
        """One whole solver interval (its 1-4 DiT evaluations and their combination) compiled
        into one graph: fewer, fused kernels. The weights are compile inputs, so a later
        `update`/`set_dtype` is seen. `features` are the guided (2B-row) conditions; an unguided
        interval reads their conditional half."""
        key = (method, guided, float(guidance))
        if key not in self._memo.functions:
            def step(y, t0, t1, features):
                if not guided:
                    features = features[: y.shape[0]]
                cond = Conditions(features, guided)
                f = lambda t, x: self.guided_velocity(x, t, cond, guidance)  # noqa: E731
                return y + increment(method, f, t0, t1, y)

            self._memo.functions[key] = mx.compile(step, inputs=self.state)
        return self._memo.functions[key]

    def sample(self, codes, spk_cond, ref_mel, noise: Optional[mx.array] = None,
               steps: Optional[int] = None, guidance: Optional[float] = None,
               sway: Optional[float] = None, speaker: Optional[mx.array] = None,
               lazy: bool = False, solver: Union[str, Solver, None] = None) -> mx.array:
        """Integrate from noise [B, N, mel_dim] (N = M * repeats) to a mel [B, mel_dim, N] with
        `solver` (a preset name or a `Solver`; default the reference: the RK4 3/8 rule on 10
        swayed time points, guided throughout). `steps`, `guidance` and `sway` override the
        solver's own.

        `speaker` is `speaker_encoding(ref_mel)` when the caller has it. By default each step
        is evaluated as it is built (small graphs); `lazy` returns the whole integration as one
        unevaluated graph, for a caller that schedules it (a streaming window)."""
        solver = get_solver(solver, steps, guidance)
        codes, spk_cond, ref_mel = _batched(codes, spk_cond, ref_mel, self.cfg.mel_dim)
        shape = (codes.shape[0], codes.shape[1] * self.cfg.repeats, self.cfg.mel_dim)
        y = _initial_noise(noise, shape)
        any_cfg = any(solver.guided(i) for i in range(solver.intervals))
        cond = self.conditions(codes, spk_cond, ref_mel, any_cfg, speaker)
        if not lazy:
            mx.eval(cond.features)
        times = time_grid(solver.steps, solver.sway if sway is None else sway)
        for i in range(solver.intervals):
            step = self._compiled_step(solver.method, solver.guided(i), solver.guidance)
            y = step(y, times[i], times[i + 1], cond.features)
            if not lazy:
                mx.eval(y)  # one small graph per step
        return y.transpose(0, 2, 1)


def _batched(codes, spk_cond, ref_mel, mel_dim: int) -> Tuple[mx.array, mx.array, mx.array]:
    """Accept unbatched inputs: codes [M], spk_cond [D], ref_mel [T, mel_dim]."""
    codes = mx.array(codes)
    codes = codes[None] if codes.ndim == 1 else codes
    spk_cond = mx.array(spk_cond, dtype=mx.float32).reshape(codes.shape[0], -1)
    ref_mel = mx.array(ref_mel, dtype=mx.float32)
    ref_mel = ref_mel[None] if ref_mel.ndim == 2 else ref_mel
    if ref_mel.shape[-1] != mel_dim:
        raise ValueError(
            f"ref_mel must be [T, {mel_dim}] or [B, T, {mel_dim}], got {list(ref_mel.shape)}")
    return codes, spk_cond, ref_mel


def _initial_noise(noise: Optional[mx.array], shape: tuple) -> mx.array:
    if noise is None:
        return mx.random.normal(shape)
    noise = mx.array(noise).astype(mx.float32)
    noise = noise[None] if noise.ndim == 2 else noise
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {list(shape[1:])} or {list(shape)} "
                         f"(frames = codes * repeats), got {list(noise.shape)}")
    return noise
