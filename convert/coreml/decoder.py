"""Thinker and Talker decoders as stateful Core ML programs, built as MIL from the checkpoint.

Built directly with the MIL builder rather than traced: the KV cache must be written at a slot
the app chooses at run time (`cache_offset`), which a torch trace would freeze into a constant,
and a builder graph is a handful of ops the test suite's interpreter can check one by one. The
weights come straight from the safetensors shards, so no torch model of the decoder is built.

Each function takes `inputs_embeds` (the app gathers them from the embedding sidecar and adds
audio/vision features), the M-RoPE `position_cos`/`position_sin` (the app computes TMRoPE
positions), an additive `attention_mask` over the cache slots and `cache_offset`, the first slot
its keys and values go to. The cache is two fp16 states [layers, kv_heads, context, head_dim]
(Core ML states are fp16 only), so slots are the app's to lay out: the mask says which slots
each query sees.
"""

from dataclasses import dataclass
from typing import Dict

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from ...config import TalkerConfig, TextConfig

OPSET = ct.target.iOS18
MIL_DTYPES = {np.float16: types.fp16, np.float32: types.fp32}


@dataclass(frozen=True)
class DecoderSpec:
    """Shapes of one Qwen2 decoder and what its package exposes."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    input_dim: int  # width of inputs_embeds (the Talker projects it to `hidden`)
    input_proj: bool  # the Talker's thinker_to_talker_proj
    hidden_output: bool  # the Thinker returns its final normed hidden states (Talker hand-off)
    head_name: str  # checkpoint name of the output projection

    @classmethod
    def thinker(cls, cfg: TextConfig) -> "DecoderSpec":
        return cls(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                   cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size,
                   cfg.rms_norm_eps, cfg.hidden_size, False, True, "lm_head")

    @classmethod
    def talker(cls, cfg: TalkerConfig) -> "DecoderSpec":
        return cls(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                   cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size,
                   cfg.rms_norm_eps, cfg.embedding_size, True, False, "codec_head")

    def cache_shape(self, context: int):
        return (self.layers, self.kv_heads, context, self.head_dim)

    def weight_shapes(self) -> Dict[str, tuple]:
        """Checkpoint name (below `model.` or the top module) -> shape, for every tensor in the
        package; the embedding table is a sidecar."""
        q, kv, h = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden
        layer = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
                 "self_attn.q_proj.weight": (q, h), "self_attn.q_proj.bias": (q,),
                 "self_attn.k_proj.weight": (kv, h), "self_attn.k_proj.bias": (kv,),
                 "self_attn.v_proj.weight": (kv, h), "self_attn.v_proj.bias": (kv,),
                 "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (self.intermediate, h),
                 "mlp.up_proj.weight": (self.intermediate, h),
                 "mlp.down_proj.weight": (h, self.intermediate)}
        shapes = {f"layers.{i}.{k}": v for i in range(self.layers) for k, v in layer.items()}
        shapes.update({"norm.weight": (h,), self.head_name + ".weight": (self.vocab, h)})
        if self.input_proj:
            shapes.update({"thinker_to_talker_proj.weight": (h, self.input_dim),
                           "thinker_to_talker_proj.bias": (h,)})
        return shapes

    def parameter_count(self) -> int:
        return sum(int(np.prod(s)) for s in self.weight_shapes().values())


def weight_names(spec: DecoderSpec):
    return list(spec.weight_shapes())


class _Graph:
    """Emits the decoder's ops for one function (`tokens` query positions)."""

    def __init__(self, spec: DecoderSpec, weights: Dict[str, np.ndarray], dtype, context: int,
                 tokens: int):
        self.spec, self.w, self.dtype = spec, weights, dtype
        self.context, self.tokens = context, tokens

    def linear(self, x, name: str, bias: bool = False, out_name=None):
        b = self.w[name + ".bias"] if bias else None
        kw = {"name": out_name} if out_name else {}
        return mb.linear(x=x, weight=self.w[name + ".weight"], bias=b, **kw)

    def rms_norm(self, x, name: str):
        # In float32 as the reference does: Qwen's residual stream squares past the fp16 range.
        x32 = x if self.dtype == np.float32 else mb.cast(x=x, dtype="fp32")
        var = mb.reduce_mean(x=mb.mul(x=x32, y=x32), axes=[-1], keep_dims=True)
        normed = mb.mul(x=x32, y=mb.rsqrt(x=var, epsilon=np.float32(self.spec.eps)))
        if self.dtype != np.float32:
            normed = mb.cast(x=normed, dtype="fp16")
        return mb.mul(x=normed, y=self.w[name + ".weight"])

    def rope(self, x, cos, sin):
        half = self.spec.head_dim // 2
        x1 = mb.slice_by_index(x=x, begin=[0, 0, 0], end=[0, 0, half], end_mask=[True, True, False])
        x2 = mb.slice_by_index(x=x, begin=[0, 0, half], end=[0, 0, 0], end_mask=[True, True, True])
        rotated = mb.concat(values=[mb.mul(x=x2, y=self.dtype(-1)), x1], axis=-1)
        return mb.add(x=mb.mul(x=x, y=cos), y=mb.mul(x=rotated, y=sin))

    def heads(self, x, n):  # [1, T, n*hd] -> [n, T, hd]
        x = mb.reshape(x=x, shape=[self.tokens, n, self.spec.head_dim])
        return mb.transpose(x=x, perm=[1, 0, 2])

    def write_cache(self, name: str, layer: int, update, offset):
        """Write `update` [kv, T, hd] at slots [offset, offset+T) of `layer`; return the layer's
        whole cache [kv, context, hd] in the compute dtype.

        The state is read once per call and each layer's write chains on the previous one:
        coremltools' common-subexpression pass merges repeated `read_state`s, which would drop
        every layer's write but the last."""
        s = self.spec
        if self.dtype != np.float16:
            update = mb.cast(x=update, dtype="fp16")
        zero = np.zeros(1, np.int32)
        begin = mb.concat(values=[np.array([layer], np.int32), zero, offset, zero], axis=0)
        end = mb.add(x=begin, y=np.array([1, s.kv_heads, self.tokens, s.head_dim], np.int32))
        cache = mb.slice_update(x=self.cache[name], update=mb.expand_dims(x=update, axes=[0]),
                                begin=begin, end=end)
        self.cache[name] = mb.coreml_update_state(state=self.states[name], value=cache)
        layer_cache = mb.slice_by_index(x=cache, begin=[layer, 0, 0, 0],
                                        end=[layer + 1, s.kv_heads, self.context, s.head_dim])
        layer_cache = mb.reshape(x=layer_cache, shape=[s.kv_heads, self.context, s.head_dim])
        return layer_cache if self.dtype == np.float16 else mb.cast(x=layer_cache, dtype="fp32")

    def attention(self, x, i: int, cos, sin, mask, offset):
        s, p = self.spec, f"layers.{i}.self_attn."
        q = self.rope(self.heads(self.linear(x, p + "q_proj", True), s.heads), cos, sin)
        k = self.rope(self.heads(self.linear(x, p + "k_proj", True), s.kv_heads), cos, sin)
        v = self.heads(self.linear(x, p + "v_proj", True), s.kv_heads)
        keys = self.write_cache("key_cache", i, k, offset)
        values = self.write_cache("value_cache", i, v, offset)
        # Query heads sharing a kv head ride along the query axis: [kv, rep*T, hd].
        rep = s.heads // s.kv_heads
        q = mb.reshape(x=q, shape=[s.kv_heads, rep * self.tokens, s.head_dim])
        out = mb.scaled_dot_product_attention(query=q, key=keys, value=values, attn_mask=mask)
        out = mb.reshape(x=out, shape=[s.heads, self.tokens, s.head_dim])
        out = mb.transpose(x=out, perm=[1, 0, 2])  # [T, heads, hd]
        return self.linear(mb.reshape(x=out, shape=[1, self.tokens, s.heads * s.head_dim]), p + "o_proj")

    def mlp(self, x, i: int):
        p = f"layers.{i}.mlp."
        gate = mb.silu(x=self.linear(x, p + "gate_proj"))
        return self.linear(mb.mul(x=gate, y=self.linear(x, p + "up_proj")), p + "down_proj")

    def __call__(self, inputs_embeds, position_cos, position_sin, attention_mask, cache_offset,
                 key_cache, value_cache):
        s = self.spec
        self.states = {"key_cache": key_cache, "value_cache": value_cache}
        self.cache = {k: mb.read_state(input=v) for k, v in self.states.items()}
        h = inputs_embeds
        if s.input_proj:
            h = self.linear(h, "thinker_to_talker_proj", True)
        cos = mb.reshape(x=position_cos, shape=[1, self.tokens, s.head_dim])
        sin = mb.reshape(x=position_sin, shape=[1, self.tokens, s.head_dim])
        mask = mb.reshape(x=attention_mask, shape=[self.tokens, self.context])
        mask = mb.tile(x=mask, reps=[s.heads // s.kv_heads, 1])  # [rep*T, context]
        for i in range(s.layers):
            p = f"layers.{i}."
            h = mb.add(x=h, y=self.attention(self.rms_norm(h, p + "input_layernorm"), i, cos, sin,
                                             mask, cache_offset))
            h = mb.add(x=h, y=self.mlp(self.rms_norm(h, p + "post_attention_layernorm"), i))
        if not s.hidden_output:  # only the last position is normed and projected
            return self.linear(self.rms_norm(self.last(h), "norm"), s.head_name, out_name="logits")
        normed = self.rms_norm(h, "norm")
        hidden = mb.identity(x=normed, name="hidden_states")
        return self.linear(self.last(normed), s.head_name, out_name="logits"), hidden

    def last(self, x):  # [1, T, d] -> [1, 1, d]
        return mb.slice_by_index(x=x, begin=[0, self.tokens - 1, 0], end=[0, 0, 0],
                                 end_mask=[True, True, True])


def build_program(spec: DecoderSpec, weights: Dict[str, np.ndarray], *, context: int, tokens: int,
                  dtype=np.float16):
    """The MIL program of one function: `tokens` query positions over a `context`-slot cache."""
    mil_dtype = MIL_DTYPES[dtype]
    graph = _Graph(spec, {k: v.astype(dtype, copy=False) for k, v in weights.items()}, dtype, context,
                   tokens)
    specs = [
        mb.TensorSpec((1, tokens, spec.input_dim), dtype=mil_dtype),
        mb.TensorSpec((1, tokens, spec.head_dim), dtype=mil_dtype),
        mb.TensorSpec((1, tokens, spec.head_dim), dtype=mil_dtype),
        mb.TensorSpec((1, 1, tokens, context), dtype=mil_dtype),
        mb.TensorSpec((1,), dtype=types.int32),
        mb.StateTensorSpec(spec.cache_shape(context), dtype=types.fp16),
        mb.StateTensorSpec(spec.cache_shape(context), dtype=types.fp16),
    ]

    @mb.program(input_specs=specs, opset_version=OPSET)
    def program(inputs_embeds, position_cos, position_sin, attention_mask, cache_offset,
                key_cache, value_cache):
        return graph(inputs_embeds, position_cos, position_sin, attention_mask, cache_offset,
                     key_cache, value_cache)

    return program


def convert_program(program, dtype=np.float16) -> "ct.models.MLModel":
    precision = ct.precision.FLOAT16 if dtype == np.float16 else ct.precision.FLOAT32
    return ct.convert(program, convert_to="mlprogram", minimum_deployment_target=OPSET,
                      compute_precision=precision, skip_model_load=True)


def cache_bytes(spec: DecoderSpec, context: int, dtype_bytes: int = 2) -> int:
    """Memory the two fp16 cache states take at run time."""
    return 2 * int(np.prod(spec.cache_shape(context))) * dtype_bytes

