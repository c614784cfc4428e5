"""The BigVGAN vocoder (`token2wav.code2wav_bigvgan_model`): log-mel [B, 80, T] → 24 kHz waveform.

Runs channels-last ([B, T, C]) throughout, in float32 (as converted; from bfloat16 weights too)
or, after `set_dtype(mx.float16)`, in float16 for Apple GPUs, with the mel scaling, sin² and
the waveform in float32.
On a GPU the whole forward is one compiled graph (per input length), which fuses each
anti-aliased SnakeBeta (up ×2, sin², down ×2) into a few kernels.
"""

import math
from functools import lru_cache
from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import BigVGANConfig

# Anti-aliased activation: up ×2, SnakeBeta, down ×2, both with one Kaiser-windowed sinc filter.
FILTER_TAPS = 12
FILTER_CUTOFF = 0.25  # 0.5 / ratio
FILTER_HALF_WIDTH = 0.3  # 0.6 / ratio
UPSAMPLE_GAIN = 2.0  # = the ratio: a transposed conv spreads each sample over 2 outputs
SNAKE_EPS = 1e-9
# process_mel_spectrogram: amplitude → dB, floored at MIN_DB, shifted by REF_DB, scaled to [-1, 1].
MIN_DB = -115.0
REF_DB = 20.0
CONV_PRE_KERNEL = 7
CONV_POST_KERNEL = 7


@lru_cache(maxsize=None)
def kaiser_sinc_filter(taps: int = FILTER_TAPS, cutoff: float = FILTER_CUTOFF,
                       half_width: float = FILTER_HALF_WIDTH) -> np.ndarray:
    """The low-pass taps [taps] (float32, sum 1) of the reference's `kaiser_sinc_filter1d`.

    A read-only numpy array, not an mx.array: on the module MLX would count it as a parameter."""
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    t = np.arange(-half, half) + 0.5 if taps % 2 == 0 else np.arange(taps) - half
    h = 2 * cutoff * np.kaiser(taps, beta) * np.sinc(2 * cutoff * t)
    h = (h / h.sum()).astype(np.float32)
    h.flags.writeable = False
    return h


def edge_pad(x: mx.array, left: int, right: int) -> mx.array:
    """Pad the time axis of x [B, T, C] by replicating its edge samples, as the reference does:
    one gather with constant indices (`mx.pad(mode="edge")` takes 4-6 kernels)."""
    return mx.take(x, mx.array(_edge_index(x.shape[1], left, right)), axis=1)


@lru_cache(maxsize=64)
def _edge_index(n: int, left: int, right: int) -> np.ndarray:
    return np.clip(np.arange(-left, n + right), 0, n - 1).astype(np.int32)


@mx.compile
def upsample2(x: mx.array) -> mx.array:
    """[B, T, C] → [B, 2T, C]: the reference's replicate pad 5, depthwise transposed conv
    (stride 2, taps ×2), crop 15, written as its two 6-tap phases over shifted slices of x
    (on MLX's CPU backend 5-20x faster than a grouped or a per-channel transposed conv).

    Even outputs: y[2m] = 2 Σ_j f[2j+1] x[m+2-j]; odd: y[2m+1] = 2 Σ_j f[2j] x[m+3-j]."""
    f = kaiser_sinc_filter()
    B, T, C = x.shape
    half = len(f) // 2
    # The phases read x[m-3 .. m+3]: xp[i] = x[i-3].
    xp = edge_pad(x, half // 2, half // 2)
    even = sum(float(UPSAMPLE_GAIN * f[2 * j + 1]) * xp[:, half - 1 - j: half - 1 - j + T]
               for j in range(half))
    odd = sum(float(UPSAMPLE_GAIN * f[2 * j]) * xp[:, half - j: half - j + T] for j in range(half))
    return mx.stack([even, odd], axis=2).reshape(B, 2 * T, C)  # (B, T, 2, C) interleaved


@mx.compile
def downsample2(x: mx.array) -> mx.array:
    """[B, L, C] → [B, ⌈L/2⌉, C]: replicate pad 5 left / 6 right, depthwise conv with the taps,
    stride 2: y[m] = Σ_k f[k] xp[2m+k], read as pairs (xp[2i], xp[2i+1]) of the padded input."""
    f = kaiser_sinc_filter()
    B, L, C = x.shape
    T, half = (L + 1) // 2, len(f) // 2
    # One more sample on the right than the reference for even L (never read) pairs them up.
    xp = edge_pad(x, half - 1, half + 1 + L % 2)
    pairs = xp.reshape(B, -1, 2, C)  # (B, T+6, 2, C)
    return sum(float(f[2 * j]) * pairs[:, j: j + T, 0] + float(f[2 * j + 1]) * pairs[:, j: j + T, 1]
               for j in range(half))


def snake_beta(x: mx.array, alpha: mx.array, beta: mx.array) -> mx.array:
    """x + sin²(x·e^α) / (e^β + ε), per channel; α and β are stored as logs. In float32 (ε and
    a small e^β underflow float16), returned in x's dtype."""
    y, alpha, beta = (a.astype(mx.float32) for a in (x, alpha, beta))
    return (y + mx.square(mx.sin(y * mx.exp(alpha))) / (mx.exp(beta) + SNAKE_EPS)).astype(x.dtype)


def anti_aliased_snake(x: mx.array, alpha: mx.array, beta: mx.array) -> mx.array:
    return downsample2(snake_beta(upsample2(x), alpha, beta))


def compiled_by_default() -> bool:
    """Compile the whole forward on a GPU; on the CPU backend a compiled sin runs ~2.5x slower
    than the eager one, which outweighs the fusion (a 112-frame window: 2.1 s vs 1.6 s)."""
    return mx.default_device() == mx.gpu


class Memo:
    """The compiled forward, kept off the module tree (a plain object, not a parameter)."""

    def __init__(self):
        self.forward = None


def process_mel_spectrogram(mel: mx.array) -> mx.array:
    """Natural-log mel amplitude → the vocoder's input range [-1, 1], as the reference."""
    min_level = math.exp(MIN_DB / 20.0 * math.log(10))
    db = 20 * mx.log10(mx.maximum(mx.exp(mel), min_level)) - REF_DB
    return mx.clip(2 * ((db - MIN_DB) / -MIN_DB) - 1, -1.0, 1.0)


def flops_per_frame(cfg: BigVGANConfig) -> float:
    """Multiply-adds x 2 of the convolutions per mel frame (each output sample of a conv costs
    in x out x kernel; a transposed conv's input sample does). The anti-aliased activations'
    filters and sin² add about 60 FLOP per sample and channel, < 1%, and are left out."""
    ch, samples = cfg.upsample_initial_channel, 1
    total = 2 * cfg.mel_dim * ch * CONV_PRE_KERNEL
    for s, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        c_in, c_out = ch // 2**s, ch // 2**(s + 1)
        total += 2 * c_in * c_out * kernel * samples  # per input sample
        samples *= rate
        for k, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
            total += samples * 2 * len(dilations) * 2 * c_out * c_out * k  # convs1 and convs2
    return total + samples * 2 * (ch // 2**len(cfg.upsample_rates)) * CONV_POST_KERNEL


class SnakeBeta(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = mx.zeros((channels,))
        self.beta = mx.zeros((channels,))


class AntiAliasedActivation(nn.Module):
    """`TorchActivation1d(SnakeBeta)`: keys `act.alpha`, `act.beta`; the filter is not a key."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)

    def __call__(self, x: mx.array) -> mx.array:
        return anti_aliased_snake(x, self.act.alpha, self.act.beta)


class AMPBlock(nn.Module):
    """Three (act, dilated conv, act, conv) residual units; activations alternate 2k, 2k+1."""

    def __init__(self, channels: int, kernel_size: int, dilations: List[int]):
        super().__init__()
        self.convs1 = [nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                 padding=d * (kernel_size - 1) // 2) for d in dilations]
        self.convs2 = [nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                       for _ in dilations]
        self.activations = [AntiAliasedActivation(channels) for _ in range(2 * len(dilations))]

    def __call__(self, x: mx.array) -> mx.array:
        for k, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            h = conv1(self.activations[2 * k](x))
            x = x + conv2(self.activations[2 * k + 1](h))
        return x


class BigVGAN(nn.Module):
    """`token2wav.code2wav_bigvgan_model`: `ups[s][0]` is stage s's ConvTranspose1d, and
    `resblocks[3s:3s+3]` are its three parallel AMP blocks (kernels 3, 7, 11), averaged."""

    def __init__(self, cfg: BigVGANConfig, compiled: Optional[bool] = None):
        super().__init__()
        self.cfg = cfg
        self.compiled = compiled  # None: compiled_by_default()
        self._memo = Memo()
        self.samples_per_frame = math.prod(cfg.upsample_rates)  # 240
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.mel_dim, ch, CONV_PRE_KERNEL, padding=CONV_PRE_KERNEL // 2)
        self.ups = [[nn.ConvTranspose1d(ch // 2**s, ch // 2**(s + 1), k, stride=r,
                                        padding=(k - r) // 2)]
                    for s, (r, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))]
        self.resblocks = [AMPBlock(ch // 2**(s + 1), k, d)
                          for s in range(len(self.ups))
                          for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)]
        out_ch = ch // 2**len(self.ups)
        self.activation_post = AntiAliasedActivation(out_ch)
        self.conv_post = nn.Conv1d(out_ch, 1, CONV_POST_KERNEL, padding=CONV_POST_KERNEL // 2,
                                   bias=False)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel [B, mel_dim, T] natural-log amplitude (as the DiT emits it, channels-first like
        the reference) → waveform [B, T·samples_per_frame] float32 in [-1, 1]."""
        self._check(mel)
        compiled = compiled_by_default() if self.compiled is None else self.compiled
        if not compiled:
            return self.forward(mel)
        if self._memo.forward is None:  # the weights are inputs: later updates are seen
            self._memo.forward = mx.compile(self.forward, inputs=self.state)
        return self._memo.forward(mel)

    def forward(self, mel: mx.array) -> mx.array:
        x = process_mel_spectrogram(mel.astype(mx.float32)).transpose(0, 2, 1)  # (B, T, mel)
        # float16 weights compute in float16; bfloat16 ones (too coarse here) in float32
        x = self.conv_pre(x.astype(mx.float16 if self.conv_pre.weight.dtype == mx.float16
                                   else mx.float32))
        n = len(self.resblocks) // len(self.ups)
        for s, (up,) in enumerate(self.ups):
            x = up(x)  # (B, r_s·T_s, C_s / 2); no activation before it
            x = sum(block(x) for block in self.resblocks[s * n: (s + 1) * n]) / n
        x = self.conv_post(self.activation_post(x))  # (B, T·240, 1)
        return mx.clip(x[..., 0].astype(mx.float32), -1.0, 1.0)

    def _check(self, mel: mx.array):
        if mel.ndim != 3 or mel.shape[1] != self.cfg.mel_dim or mel.shape[2] < 1:
            raise ValueError(
                f"BigVGAN got a mel of shape {tuple(mel.shape)}; expected [batch, "
                f"{self.cfg.mel_dim}, frames] (channels-first natural-log mel, e.g. mel[None] "
                "for a single [mel, frames] array)"
            )
