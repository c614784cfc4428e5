"""The vision encoder: a ViT over 2×14×14 patches with 2-D rotary positions and windowed
attention, whose 2×2 patch groups are merged into Thinker tokens."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.activations import swiglu

from ..config import VisionEncoderConfig
from .rope import rotate_half

ROPE_THETA = 10000.0
NORM_EPS = 1e-6

Grid = Tuple[int, int, int]


@dataclass
class Segments:
    """How one attention pass splits the sequence into segments that attend only within
    themselves: one batch per distinct segment length, each as (rows [n, length] of sequence
    positions, or None for the whole sequence reshaped, and the length). `restore` puts the
    concatenated batch outputs back in sequence order (None: they already are)."""

    batches: List[Tuple[Optional[mx.array], int]]
    restore: Optional[mx.array]


@dataclass
class Layout:
    """Everything one call derives from grid_thw; the sequence is in window order."""

    order: mx.array  # patch rows of the input, in window order
    restore: mx.array  # merged tokens back in input order
    cos: mx.array  # (N, 1, head_dim) float32
    sin: mx.array
    windows: Segments
    frames: Segments


def plan_segments(lengths: np.ndarray) -> Segments:
    """Attention batches for back-to-back segments of `lengths` rows, grouped by length so that
    no batch needs padding or a mask (a dense block-diagonal mask costs N² at ~8000 patches;
    padding every window to 64 rows wastes ~16% of a large image's window attention)."""
    starts = np.cumsum(lengths) - lengths
    if lengths.min() == lengths.max():
        return Segments([(None, int(lengths[0]))], None)
    batches, restore, offset = [], np.empty(int(lengths.sum()), np.int64), 0
    for length in np.unique(lengths):
        rows = starts[lengths == length][:, None] + np.arange(length)  # (n, length)
        restore[rows.reshape(-1)] = offset + np.arange(rows.size)
        batches.append((mx.array(rows.astype(np.int32)), int(length)))
        offset += rows.size
    return Segments(batches, mx.array(restore.astype(np.int32)))


def window_order(grid: Sequence[Grid], merge: int, window: int) -> Tuple[np.ndarray, np.ndarray]:
    """Merged tokens (input-order indices) in window order, and each window's token count.

    Each frame's merged grid is split into window×window tiles, row-major, tokens row-major
    within a tile; tiles on the bottom and right edges may be partial."""
    order, lengths, base = [], [], 0
    for t, h, w in grid:
        gh, gw = h // merge, w // merge
        ph, pw = -(-gh // window) * window, -(-gw // window) * window
        index = np.full((t, ph, pw), -1)
        index[:, :gh, :gw] = base + np.arange(t * gh * gw).reshape(t, gh, gw)
        tiles = index.reshape(t, ph // window, window, pw // window, window)
        tiles = tiles.transpose(0, 1, 3, 2, 4).reshape(-1, window * window)  # (t·tiles, window²)
        order.append(tiles[tiles >= 0])
        lengths.append((tiles >= 0).sum(axis=1))
        base += t * gh * gw
    return np.concatenate(order), np.concatenate(lengths)


def patch_positions(grid: Sequence[Grid], merge: int) -> np.ndarray:
    """(row, column) of every patch in input order [N, 2]: each merge×merge group is
    contiguous, and every frame of a video repeats the same positions."""
    out = []
    for t, h, w in grid:
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grouped = [a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)
                   for a in (rows, cols)]
        out.append(np.tile(np.stack(grouped, axis=-1), (t, 1)))
    return np.concatenate(out)


def rope_tables(positions: np.ndarray, head_dim: int) -> Tuple[mx.array, mx.array]:
    """cos/sin [N, 1, head_dim] in float32: a quarter of the head's frequencies turn with the
    row, a quarter with the column, both halves of the half-split layout alike."""
    half = head_dim // 2
    inv_freq = 1.0 / ROPE_THETA ** (np.arange(0, half, 2, dtype=np.float32) / half)
    freqs = mx.array(positions, dtype=mx.float32)[:, :, None] * mx.array(inv_freq)  # (N, 2, hd/4)
    emb = freqs.reshape(freqs.shape[0], 1, half)  # (N, 1, hd/2): rows' block, then columns'
    emb = mx.concatenate([emb, emb], axis=-1)  # (N, 1, hd)
    return mx.cos(emb), mx.sin(emb)


@mx.compile
def rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotary in float32, cast back to x's dtype (as the reference does in bf16)."""
    xf = x.astype(mx.float32)
    return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)


def attend(q: mx.array, k: mx.array, v: mx.array, segments: Segments, scale: float) -> mx.array:
    """Attention of q, k, v [N, H, hd] within each segment only: [N, H·hd]."""
    _, H, hd = q.shape
    outs = []
    for rows, length in segments.batches:

        def split(x):  # (n, H, length, hd)
            x = x.reshape(-1, length, H, hd) if rows is None else x[rows]
            return x.transpose(0, 2, 1, 3)

        out = mx.fast.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
        outs.append(out.transpose(0, 2, 1, 3).reshape(-1, H * hd))  # (n·length, D)
    out = mx.concatenate(outs) if len(outs) > 1 else outs[0]
    return out if segments.restore is None else out[segments.restore]


class VisionAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.scale = (dim // n_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def __call__(self, x: mx.array, layout: Layout, segments: Segments) -> mx.array:
        N = x.shape[0]
        q = self.q(x).reshape(N, self.n_heads, -1)  # (N, H, hd)
        k = self.k(x).reshape(N, self.n_heads, -1)
        v = self.v(x).reshape(N, self.n_heads, -1)
        q, k = rotate(q, layout.cos, layout.sin), rotate(k, layout.cos, layout.sin)
        return self.proj(attend(q, k, v, segments, self.scale))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim)
        self.up_proj = nn.Linear(dim, hidden_dim)
        self.down_proj = nn.Linear(hidden_dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionEncoderConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.hidden_size, eps=NORM_EPS)
        self.norm2 = nn.RMSNorm(cfg.hidden_size, eps=NORM_EPS)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads)
        self.mlp = VisionMLP(cfg.hidden_size, cfg.intermediate_size)

    def __call__(self, x: mx.array, layout: Layout, segments: Segments) -> mx.array:
        h = x + self.attn(self.norm1(x), layout, segments)
        return h + self.mlp(self.norm2(h))


class PatchEmbed(nn.Module):
    """The checkpoint's Conv3d with kernel == stride, as the Linear it is (the converter
    flattens its weight to [hidden, C·2·14·14] in the processor's patch vector order)."""

    def __init__(self, cfg: VisionEncoderConfig):
        super().__init__()
        in_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        self.proj = nn.Linear(in_dim, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.proj(x.astype(self.proj.weight.dtype))


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionEncoderConfig):
        super().__init__()
        self.width = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = nn.RMSNorm(cfg.hidden_size, eps=NORM_EPS)
        self.mlp = [nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, cfg.out_hidden_size)]

    def __call__(self, x: mx.array) -> mx.array:
        x = self.ln_q(x).reshape(-1, self.width)  # (N/4, 4·D): each merge group's patches side by side
        for layer in self.mlp:
            x = layer(x)
        return x


class VisionEncoder(nn.Module):
    """`thinker.visual`: image and video patches → embeddings at the Thinker's width."""

    def __init__(self, cfg: VisionEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = [VisionBlock(cfg) for _ in range(cfg.depth)]
        self.merger = PatchMerger(cfg)
        self.full_attention = set(cfg.fullatt_block_indexes)

    def __call__(self, pixel_values: mx.array, grid_thw: Sequence[Sequence[int]]) -> mx.array:
        """Embeddings [Σ t·h·w/4, out_hidden_size] for the patches of one or more images or
        videos, concatenated in the processor's layout ([Σ t·h·w, C·2·14·14]), with `grid_thw`
        their (t, h, w) patch grids; rows come in input order, one per 2×2 patch group.

        Attention stays within 8×8-patch windows of one frame, except in the
        `fullatt_block_indexes` blocks, where it spans one whole frame."""
        grid = self._check(pixel_values, grid_thw)
        if not grid:
            return mx.zeros((0, self.cfg.out_hidden_size), dtype=self.patch_embed.proj.weight.dtype)
        layout = self.layout(grid)
        x = self.patch_embed(pixel_values[layout.order])  # (N, D), window order
        for i, block in enumerate(self.blocks):
            x = block(x, layout, layout.frames if i in self.full_attention else layout.windows)
        return self.merger(x)[layout.restore]

    def layout(self, grid: Sequence[Grid]) -> Layout:
        cfg = self.cfg
        merge, unit = cfg.spatial_merge_size, cfg.spatial_merge_size**2
        window = cfg.window_size // merge // cfg.patch_size  # in merged tokens
        tokens, window_lengths = window_order(grid, merge, window)
        order = (tokens[:, None] * unit + np.arange(unit)).reshape(-1)  # patches in window order
        cos, sin = rope_tables(patch_positions(grid, merge)[order], cfg.hidden_size // cfg.num_heads)
        # Windows never straddle frames, so each frame stays contiguous in window order.
        frames = np.repeat([h * w for _, h, w in grid], [t for t, _, _ in grid])
        return Layout(
            order=mx.array(order.astype(np.int32)),
            restore=mx.array(np.argsort(tokens).astype(np.int32)),
            cos=cos, sin=sin,
            windows=plan_segments(window_lengths * unit),
            frames=plan_segments(frames),
        )

    def _check(self, pixel_values: mx.array, grid_thw) -> List[Grid]:
        cfg, merge = self.cfg, self.cfg.spatial_merge_size
        patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        grid = [tuple(int(v) for v in g) for g in np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)]
        for i, (t, h, w) in enumerate(grid):
            if t < 1 or h < merge or w < merge or h % merge or w % merge:
                raise ValueError(
                    f"grid_thw[{i}] = {(t, h, w)} is not a patch grid: t must be >= 1 and h, w "
                    f"positive multiples of spatial_merge_size {merge} (pass the image processor's "
                    "image_grid_thw / video_grid_thw)"
                )
        n_patches = sum(t * h * w for t, h, w in grid)
        if pixel_values.ndim != 2 or pixel_values.shape[1] != patch_dim or pixel_values.shape[0] != n_patches:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; grid_thw {grid} needs "
                f"[{n_patches}, {patch_dim}] (Σ t·h·w patches of C·{cfg.temporal_patch_size}·"
                f"{cfg.patch_size}·{cfg.patch_size} values, the image processor's pixel_values)"
            )
        return grid
