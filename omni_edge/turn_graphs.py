"""The graphs of one spoken turn at the published Qwen2.5-Omni sizes, for counting and timing.

A model is built from the published config and quantized as the converter does. For counting,
every parameter is replaced by a zero-stride view of one scalar (`hollow`), so a 7B model costs a
few kB and no weight is ever materialized; for timing (`materialize=True`) the weights are random.
Each graph builder returns a no-argument function that builds its graph once more, and whether
the runtime compiles that graph; `omni_edge.costs` counts them.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from .config import OmniConfig
from .models.omni import NOT_QUANTIZED, OmniModel

GROUP_SIZE = 64
MROPE = [16, 24, 24]
TEXT = {  # the Thinker's published text configs (omni_spec.md §2)
    "3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4),
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}
TALKER = {
    "3b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
               head_dim=64, intermediate_size=4864, mrope=[16, 16, 0]),
    "7b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=12, num_key_value_heads=4,
               head_dim=128, intermediate_size=18944, mrope=MROPE),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=16, intermediate_size=64, mrope=[4, 4, 0]),
}
TINY_PARTS = dict(  # a few-kB model whose graphs trace and run on a CPU in seconds
    audio=dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128),
    vision=dict(hidden_size=32, depth=2, num_heads=2, intermediate_size=64, fullatt_block_indexes=[1]),
    dit=dict(dim=64, depth=4, heads=2, look_ahead_layers=[1], look_backward_layers=[0, 2]),
    bigvgan=dict(upsample_initial_channel=64))
SIZES = tuple(TEXT)
FLOAT_DTYPES = ("float32", "bfloat16", "float16")

def published_config(size: str) -> dict:
    """The config.json of Qwen2.5-Omni-3B/7B in the published layout (or a tiny stand-in)."""
    if size not in TEXT:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    tiny = TINY_PARTS if size == "tiny" else {}
    text, talker = TEXT[size], dict(TALKER[size])
    hidden = text["hidden_size"]
    mrope = MROPE if text["hidden_size"] // text["num_attention_heads"] == 128 else [2, 3, 3]
    return {
        "model_type": "qwen2_5_omni", "enable_audio_output": True,
        "thinker_config": {
            "text_config": {**text, "rope_theta": 1e6, "tie_word_embeddings": False,
                            "rope_scaling": {"type": "default", "mrope_section": mrope}},
            "audio_config": {"output_dim": hidden, **tiny.get("audio", {})},
            "vision_config": {"hidden_size": 1280, "out_hidden_size": hidden, **tiny.get("vision", {})}},
        "talker_config": {**{k: v for k, v in talker.items() if k != "mrope"}, "embedding_size": hidden,
                          "rope_theta": 1e6, "rope_scaling": {"type": "default", "mrope_section": talker["mrope"]}},
        "token2wav_config": {"dit_config": tiny.get("dit", {"dim": 1024, "depth": 22, "heads": 16}),
                             "bigvgan_config": tiny.get("bigvgan", {})},
    }


def build(size: str, thinker_bits: int = 4, talker_bits: int = 8, dit_dtype: str = "float32",
          materialize: bool = False) -> OmniModel:
    """The model as the converter writes it: Thinker, Talker and encoders in bf16 (or quantized:
    the Thinker to `thinker_bits`, the Talker to `talker_bits`, the encoders to 8 bits whenever
    the Thinker is quantized), Token2Wav in float32 with the DiT in `dit_dtype`. Weights are
    random when `materialize`, else zero-stride views (shapes and dtypes only)."""
    for name, bits in (("thinker_bits", thinker_bits), ("talker_bits", talker_bits)):
        if bits not in (0, 4, 8):
            raise ValueError(f"{name} must be 0 (bf16), 4 or 8, got {bits}")
    if dit_dtype not in FLOAT_DTYPES:
        raise ValueError(f"dit_dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dit_dtype!r}")
    model = OmniModel(OmniConfig.from_dict(published_config(size)))
    model.thinker.set_dtype(mx.bfloat16)
    model.talker.set_dtype(mx.bfloat16)
    model.token2wav.code2wav_dit_model.set_dtype(getattr(mx, dit_dtype))
    encoder_bits = 8 if thinker_bits else 0
    for part, bits in ((model.thinker.audio_tower, encoder_bits), (model.thinker.visual, encoder_bits),
                       (model.thinker, thinker_bits), (model.talker, talker_bits)):
        if bits:  # the encoders first: the Thinker's pass then skips their quantized layers
            nn.quantize(part, GROUP_SIZE, bits, class_predicate=quantizable)
    if materialize:
        mx.eval(model.parameters())
    else:
        hollow(model)
    return model


def quantizable(path: str, module) -> bool:
    return (hasattr(module, "to_quantized") and not hasattr(module, "scales")
            and module.weight.shape[-1] % GROUP_SIZE == 0
            and not any(n in path for n in NOT_QUANTIZED))


def zeros(shape, dtype, materialize: bool) -> mx.array:
    """Zeros of `shape`: real ones, or an evaluated zero-stride view of one element."""
    out = mx.zeros(shape, dtype) if materialize else mx.broadcast_to(mx.zeros((), dtype), shape)
    mx.eval(out)
    return out


def hollow(module: nn.Module) -> nn.Module:
    """Replace every parameter by a zero-stride view of the same shape and dtype (lazy random
    initializers are dropped before they ever run)."""
    params = tree_map(lambda p: zeros(p.shape, p.dtype, False), module.parameters())
    module.update(params)
    return module


def _decoder_step(decoder, width: int, dtype, length: int, context: int, materialize: bool,
                  embeddings: bool):
    """`length` new positions after `context` cached ones, through the Thinker (token ids) or the
    Talker (embeddings at the Thinker's width)."""
    cfg = decoder.cfg.text_config if hasattr(decoder.cfg, "text_config") else decoder.cfg
    cache = decoder.make_cache()
    kv = (1, cfg.num_key_value_heads, context + length, cfg.head_dim)
    if context:
        for c in cache:
            c.keys, c.values = zeros(kv, mx.bfloat16, materialize), zeros(kv, mx.bfloat16, materialize)
    x = (zeros((1, length, width), dtype, materialize) if embeddings
         else zeros((1, length), mx.int32, materialize))

    def step():
        for c in cache:  # every call writes the same slots: one step, repeatable
            c.offset = context
        return decoder(x, cache)

    return step


def thinker_decode(model, context: int, materialize: bool = False):
    return _decoder_step(model.thinker, 0, None, 1, context, materialize, False), False


def thinker_prefill(model, tokens: int, materialize: bool = False):
    return _decoder_step(model.thinker, 0, None, tokens, 0, materialize, False), False


def talker_step(model, context: int, materialize: bool = False):
    E = model.talker.cfg.embedding_size
    return _decoder_step(model.talker, E, mx.bfloat16, 1, context, materialize, True), False


def talker_prefill(model, tokens: int, materialize: bool = False):
    E = model.talker.cfg.embedding_size
    return _decoder_step(model.talker, E, mx.bfloat16, tokens, 0, materialize, True), False


def dit_eval(model, frames: int, cfg: bool = True, materialize: bool = False):
    """One guided velocity of the DiT over a window of `frames` mel frames (batch 2 with CFG),
    compiled as the sampler runs it."""
    dit = model.token2wav.code2wav_dit_model
    c = dit.cfg
    width = c.enc_dim + c.emb_dim + c.enc_emb_dim
    y = zeros((1, frames, c.mel_dim), mx.float32, materialize)
    features = zeros((2 if cfg else 1, frames, width), dit.dtype, materialize)
    t0, t1 = mx.array(0.5, dtype=mx.float32), mx.array(0.6, dtype=mx.float32)
    # the sampler's own compiled interval, Euler: exactly one (guided) DiT evaluation
    step = dit._compiled_step("euler", cfg, 0.5)
    return (lambda: step(y, t0, t1, features)), True


def bigvgan_window(model, frames: int, materialize: bool = False):
    vocoder = model.token2wav.code2wav_bigvgan_model
    mel = zeros((1, vocoder.cfg.mel_dim, frames), mx.float32, materialize)
    return (lambda: vocoder(mel)), False  # only its filters are compiled


def audio_encoder(model, seconds: float, materialize: bool = False):
    tower = model.thinker.audio_tower
    frames = int(round(seconds * 100))  # 10 ms log-mel hop
    mel = zeros((tower.cfg.num_mel_bins, frames), mx.bfloat16, materialize)
    return (lambda: tower([mel])), False


def vision_encoder(model, pixels: int, materialize: bool = False):
    """One square image of `pixels`² (a multiple of 28), as `thinker.visual` sees it."""
    visual = model.thinker.visual
    side = pixels // visual.cfg.patch_size
    grid = (1, side, side)
    patches = zeros((side * side, 3 * visual.cfg.temporal_patch_size * visual.cfg.patch_size ** 2),
                    mx.bfloat16, materialize)
    return (lambda: visual(patches, [grid])), False


GRAPHS = {"thinker_decode": thinker_decode, "thinker_prefill": thinker_prefill,
          "talker_step": talker_step, "talker_prefill": talker_prefill, "dit_eval": dit_eval,
          "bigvgan_window": bigvgan_window, "audio_encoder": audio_encoder,
          "vision_encoder": vision_encoder}


def graph(model, name: str, materialize: bool = False, **shape):
    """(function, compiled) of graph `name` at `shape` (e.g. context=300, frames=288)."""
    if name not in GRAPHS:
        raise ValueError(f"unknown graph {name!r}; choose one of: {', '.join(GRAPHS)}")
    return GRAPHS[name](model, materialize=materialize, **shape)
