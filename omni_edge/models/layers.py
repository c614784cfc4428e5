"""The Qwen2 decoder with TMRoPE shared by the Thinker and the Talker."""

from typing import Any, List, Optional, Union

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention

from .rope import apply_mrope, mrope_cos_sin

# Rotary input of one forward pass: an int/array offset when all three position axes are
# equal (plain text, and every decode step), else the (cos, sin) tables of general positions.
Rope = Union[int, mx.array, tuple]


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.theta = cfg.rope_theta
        self.scale = self.head_dim**-0.5
        width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, width, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_width, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_width, bias=True)
        self.o_proj = nn.Linear(width, cfg.hidden_size, bias=False)

    def rotate(self, x: mx.array, rope: Rope) -> mx.array:
        if isinstance(rope, tuple):
            return apply_mrope(x, *rope)
        # Equal position axes make TMRoPE plain RoPE, which has a fused kernel.
        return mx.fast.rope(
            x, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=rope
        )

    def __call__(self, x: mx.array, mask, cache: Optional[Any], rope: Rope) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, L, hd)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = self.rotate(q, rope), self.rotate(k, rope)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        # mx.fast.rms_norm normalizes in float32 and casts back before the weight
        # multiply, which is the reference's order.
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x, mask, cache, rope: Rope):
        h = x + self.self_attn(self.input_layernorm(x), mask, cache, rope)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    """embed_tokens → layers → norm. `embed_dim` differs from hidden_size in the Talker,
    whose embeddings live at the Thinker's width and are projected in by the caller."""

    def __init__(self, cfg, vocab_size: int, embed_dim: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim or cfg.hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def rope_for(self, position_ids: Optional[mx.array], cache, rope_delta) -> Rope:
        if position_ids is not None:
            return mrope_cos_sin(
                position_ids, self.cfg.head_dim, self.cfg.rope_theta, self.cfg.mrope_section
            )
        offset = cache[0].offset if cache is not None else 0
        return offset + rope_delta

    def __call__(
        self,
        h: mx.array,
        cache: Optional[List[Any]] = None,
        position_ids: Optional[mx.array] = None,
        rope_delta: int = 0,
    ) -> mx.array:
        """Run hidden states h [B, L, hidden] through the layers; returns the normed output."""
        rope = self.rope_for(position_ids, cache, rope_delta)
        mask = create_attention_mask(h, cache[0] if cache is not None else None)
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cache[i] if cache is not None else None, rope)
        return self.norm(h)
