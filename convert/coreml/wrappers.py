"""Trace-friendly fixed-shape wrappers around transformers' Qwen2.5-Omni encoder modules.

The audio and vision encoders, the DiT and BigVGAN are traced from the reference modules: their
weights and sub-blocks (convs, norms, MLPs, AdaLN, AMP blocks) are used as they are, and only the
parts that depend on run-time lengths are replaced. Index lists (windows, chunk lengths, block
masks, rotary tables) are precomputed for the fixed shape and stored as buffers, so the trace has
no data-dependent Python control flow. Attention is written out with an additive mask, which
covers the reference's per-chunk / per-window splits and the padding of short windows at once.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import MASK_VALUE


def _attention(q, k, v, bias):
    """q/k/v [B, H, T, hd]; bias additive, broadcastable to [B, H, T, S]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


# ---------------------------------------------------------------------------------------- audio


class AudioChunkEncoder(nn.Module):
    """`Qwen2_5OmniAudioEncoder` on a batch of 200-frame mel chunks.

    input_features [B, mel, 2·n_window] (a clip's tail chunk zero-padded), frame_mask
    [B, 2·n_window] (1 for real frames) -> [B, n_window / 2, output_dim]. Per chunk this is
    exact: the reference restarts positions and attention in every chunk, and its stride-2
    average pool never pairs frames of two chunks (a full chunk has an even number of post-conv
    frames). The valid outputs of a chunk of L frames are the first ((L - 1) // 2 + 1) // 2."""

    def __init__(self, tower, chunk_frames: int):
        super().__init__()
        self.tower = tower
        self.heads = tower.config.encoder_attention_heads
        table = tower.positional_embedding.positional_embedding
        self.register_buffer("positions", table[: chunk_frames // 2].clone())

    def forward(self, input_features, frame_mask):
        t = self.tower
        mask = frame_mask.unsqueeze(1)
        x = F.gelu(t.conv1(input_features * mask)) * mask
        x = F.gelu(t.conv2(x)).transpose(1, 2) + self.positions  # [B, T/2, d]
        # a post-conv frame is real iff its centre (every other input frame) is
        bias = ((1.0 - frame_mask[:, ::2]) * MASK_VALUE)[:, None, None, :]
        for layer in t.layers:
            x = x + self._attend(layer.self_attn, layer.self_attn_layer_norm(x), bias)
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        b, n, d = x.shape
        x = x.reshape(b, n // 2, 2, d).mean(dim=2)  # the reference's AvgPool1d(2, 2)
        return t.proj(t.ln_post(x))

    def _attend(self, attn, x, bias):
        b, n, d = x.shape
        split = lambda y: y.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        out = _attention(split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x)), bias)
        return attn.out_proj(out.transpose(1, 2).reshape(b, n, d))


# ---------------------------------------------------------------------------------------- vision


class VisionImageEncoder(nn.Module):
    """`Qwen2_5OmniVisionEncoder` for one image size: pre-patchified pixels [grid_h·grid_w, C·2·p·p]
    (the processor's patch order) -> merged tokens [grid_h·grid_w / 4, out_hidden], in the
    processor's token order. The window permutation, the rotary tables and the windows of that
    grid are constants: equal windows attend as a batch, unequal ones (a grid that doesn't divide
    into whole windows) through a block-diagonal mask."""

    def __init__(self, visual, grid_h: int, grid_w: int):
        super().__init__()
        from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

        self.visual = visual
        cfg = visual.config
        self.heads, self.full_blocks = cfg.num_heads, set(cfg.fullatt_block_indexes)
        unit, n = cfg.spatial_merge_size ** 2, grid_h * grid_w
        grid = torch.tensor([[1, grid_h, grid_w]])
        window_index, cu = get_vision_window_index(grid, cfg.spatial_merge_size, cfg.window_size,
                                                   cfg.patch_size)
        patch_index = (window_index[:, None] * unit + torch.arange(unit)).reshape(-1)  # whole groups
        position_ids = get_vision_position_ids(grid, cfg.spatial_merge_size)
        cos, sin = visual.rotary_pos_emb(torch.zeros(1), position_ids)
        sizes = cu[1:] - cu[:-1]
        self.window = int(sizes[0]) if bool((sizes == sizes[0]).all()) else None
        window_of = torch.bucketize(torch.arange(n), cu[1:].long(), right=True)
        self.register_buffer("patch_index", patch_index)
        self.register_buffer("token_order", torch.argsort(window_index))
        self.register_buffer("cos", cos[patch_index].float()[:, None, :])  # [N, 1, hd]
        self.register_buffer("sin", sin[patch_index].float()[:, None, :])
        self.register_buffer("window_bias", None if self.window else torch.where(
            window_of[:, None] == window_of[None, :], 0.0, MASK_VALUE))  # [N, N]
        weight = visual.patch_embed.proj.weight  # Conv3d with kernel = stride: a linear map
        self.register_buffer("patch_weight", weight.reshape(cfg.hidden_size, -1).clone())
        self.n = n

    def forward(self, pixel_patches):
        x = F.linear(pixel_patches, self.patch_weight)[self.patch_index]  # [N, hidden], window order
        for i, block in enumerate(self.visual.blocks):
            x = x + self._attend(block.attn, block.norm1(x), i not in self.full_blocks)
            x = x + block.mlp(block.norm2(x))
        return self.visual.merger(x)[self.token_order]

    def _attend(self, attn, x, windowed: bool):
        d = x.shape[-1]
        split = lambda y: y.reshape(self.n, self.heads, d // self.heads)  # noqa: E731
        q, k, v = split(attn.q(x)), split(attn.k(x)), split(attn.v(x))
        q = q * self.cos + _rotate_half(q) * self.sin
        k = k * self.cos + _rotate_half(k) * self.sin
        groups = self.n // self.window if windowed and self.window else 1
        batch = lambda y: y.reshape(groups, -1, self.heads, y.shape[-1]).transpose(1, 2)  # noqa: E731
        bias = self.window_bias if windowed and not self.window else None
        out = _attention(batch(q), batch(k), batch(v), bias)  # [groups, heads, N/groups, hd]
        return attn.proj(out.transpose(1, 2).reshape(self.n, d))


# ---------------------------------------------------------------------------------------- DiT


class DiTWindow(nn.Module):
    """One classifier-free-guided velocity of `Qwen2_5OmniToken2WavDiTModel` on a fixed window.

    noisy_mel [1, N, mel], time [1], codes [1, N / repeats] (int32), condition [2, enc_dim +
    enc_emb_dim] (row 0: the voice's ECAPA output and x-vector, row 1: ECAPA of silence and
    zeros; the speakers sidecar holds both per voice), frame_mask [1, N] (1 for real frames: a
    shorter window is padded at the end), guidance [1] -> velocity [1, N, mel] =
    cond + (cond - uncond) · guidance, the reference's `ode_function`. The ODE loop stays in the
    app. The speaker encoder runs once per voice at export time instead of at every step."""

    def __init__(self, dit, frames: int, inv_freq=None):
        super().__init__()
        cfg = dit.config
        self.dit, self.frames, self.heads = dit, frames, cfg.num_attention_heads
        self.enc_dim, self.repeats = cfg.enc_dim, cfg.repeats
        inv = dit.rotary_embed.inv_freq if inv_freq is None else inv_freq
        freqs = torch.arange(frames, dtype=torch.float32)[:, None] * inv.float()[None]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos())  # [N, hd]
        self.register_buffer("sin", emb.sin())
        block = torch.arange(frames) // dit.block_size
        diff = block[None, :] - block[:, None]
        masks = [torch.where((diff >= -layer.look_backward_block) & (diff <= layer.look_ahead_block),
                             0.0, MASK_VALUE) for layer in dit.transformer_blocks]
        self.register_buffer("block_bias", torch.stack(masks))  # [layers, N, N]
        self.register_buffer("uncond_code", dit.text_embed.codec_embed.weight[0].clone())

    def forward(self, noisy_mel, time, codes, condition, frame_mask, guidance):
        dit, n = self.dit, self.frames
        t = dit.time_embed(time)  # [1, D]: the same for the guided and the null row
        code = dit.text_embed.codec_embed(codes)  # [1, M, E]
        code = code[:, :, None, :].expand(1, code.shape[1], self.repeats, -1).reshape(1, n, -1)
        code = torch.cat([code, self.uncond_code.expand(1, n, -1)], dim=0)
        cond = condition[:, None, :].expand(2, n, condition.shape[1])
        x = torch.cat([noisy_mel.expand(2, n, noisy_mel.shape[2]), cond[..., : self.enc_dim], code,
                       cond[..., self.enc_dim:]], dim=-1)
        h = dit.input_embed.proj(x)
        key_bias = ((1.0 - frame_mask) * MASK_VALUE)[:, None, None, :]  # [1, 1, 1, N]
        for i, layer in enumerate(dit.transformer_blocks):
            h = self._block(layer, h, t, self.block_bias[i] + key_bias)
        v = dit.proj_out(dit.norm_out(h, t))  # [2, N, mel]
        return v[:1] + (v[:1] - v[1:]) * guidance

    def _block(self, layer, h, t, bias):
        norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = layer.attn_norm(h, emb=t)
        h = h + gate_msa.unsqueeze(1) * self._attend(layer.attn, norm, bias)
        norm = layer.ff_norm(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return h + gate_mlp.unsqueeze(1) * layer.ff(norm)

    def _rope_head0(self, x):
        # The checkpoint's rotary pairs are interleaved and rotate head 0 only; reordering both
        # q and k of that head the same way leaves their dot products unchanged.
        x0 = x[:, :1]
        x0 = torch.cat([x0[..., 0::2], x0[..., 1::2]], dim=-1)
        x0 = x0 * self.cos + _rotate_half(x0) * self.sin
        return torch.cat([x0, x[:, 1:]], dim=1)

    def _attend(self, attn, x, bias):
        b, n, _ = x.shape
        split = lambda y: y.reshape(b, n, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k = self._rope_head0(split(attn.to_q(x))), self._rope_head0(split(attn.to_k(x)))
        out = _attention(q, k, split(attn.to_v(x)), bias)
        return attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1))


def voice_condition(dit, cond: torch.Tensor, ref_mel: torch.Tensor) -> torch.Tensor:
    """[2, enc_dim + enc_emb_dim]: the guided and the null row of the DiT's speaker columns."""
    encoder = dit.input_embed.spk_encoder
    with torch.no_grad():
        guided = torch.cat([encoder(ref_mel), cond], dim=-1)
        null = torch.cat([encoder(torch.zeros_like(ref_mel)), torch.zeros_like(cond)], dim=-1)
    return torch.cat([guided, null], dim=0)


# ---------------------------------------------------------------------------------------- BigVGAN


class BigVGANWindow(nn.Module):
    """`Qwen2_5OmniToken2WavBigVGANModel` on a fixed mel window [1, mel, W] -> waveform
    [1, W · samples_per_frame], clamped to ±1 as the reference."""

    def __init__(self, vocoder):
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel):
        v = self.vocoder
        x = v.conv_pre(v.process_mel_spectrogram(mel))
        blocks = v.num_residual_blocks
        for i in range(v.num_upsample_layers):
            x = v.ups[i][0](x)
            x = sum(v.resblocks[i * blocks + j](x) for j in range(blocks)) / blocks
        x = v.conv_post(v.activation_post(x))
        return torch.clamp(x, -1.0, 1.0).reshape(1, -1)


def samples_per_frame(upsample_rates: Sequence[int]) -> int:
    out = 1
    for r in upsample_rates:
        out *= r
    return out
