"""A tiny random-weight Qwen2.5-Omni checkpoint in the published Hugging Face on-disk layout.

`omni-edge demo` runs on a fresh offline machine with no weights: it writes this checkpoint,
converts it with the ordinary converter and runs the whole pipeline on it.  Every file a hub
snapshot has is written (sharded safetensors + index, config.json in the published layout,
generation/preprocessor configs, a stand-in tokenizer, spk_dict.pt), so the demo exercises the
same code paths as a real model.  The weights are random: the output is noise, not speech.

Only numpy, safetensors.numpy and json are used (no torch, no transformers).
"""

import json
import re
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from safetensors.numpy import save_file

from omni_edge.config import OmniConfig

WEIGHT_STD = 0.02
# Near-uniform attention hides position bugs (spec §0), so the demo/fixture sharpens it.
QK_SCALE = 10.0
QK_WEIGHT = re.compile(r"\.(self_attn\.[qk]_proj|attn\.(q|k|to_q|to_k))\.weight$")
SNAKE_PARAM = re.compile(r"\.act\.(alpha|beta)$")
DIT_FREQ_EMBED_DIM = 256  # fixed inside transformers' DiTTimestepEmbedding
BIGVGAN_PRE_POST_KERNEL = 7
SPEAKERS = {"Chelsie": 151870, "Ethan": 151871}
SPEAKER_REF_FRAMES = 40
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"
INDEX_NAME = "model.safetensors.index.json"
THINKER_ONLY = "qwen2_5_omni_thinker"


def _mrope(section):
    return {"type": "default", "mrope_section": section}


# The multimodal token ids and TMRoPE timing both the thinker and the talker configs carry.
_MULTIMODAL_IDS = {
    "audio_token_index": 151646, "image_token_index": 151655, "video_token_index": 151656,
    "audio_start_token_id": 151647, "audio_end_token_id": 151648,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "position_id_per_seconds": 25, "seconds_per_chunk": 2,
}

DEMO_CONFIG = {
    "architectures": ["Qwen2_5OmniForConditionalGeneration"],
    "model_type": "qwen2_5_omni",
    "enable_audio_output": True,
    "enable_talker": True,
    "torch_dtype": "float32",
    "thinker_config": {
        "model_type": "qwen2_5_omni_thinker",
        "text_config": {
            "model_type": "qwen2_5_omni_text",
            "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rope_scaling": _mrope([2, 3, 3]),
            "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2,
            "tie_word_embeddings": False,
        },
        "audio_config": {
            "model_type": "qwen2_5_omni_audio_encoder",
            "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64, "num_mel_bins": 128, "n_window": 100,
            "max_source_positions": 1500, "output_dim": 64,
            "activation_function": "gelu", "scale_embedding": False,
        },
        "vision_config": {
            "model_type": "qwen2_5_omni_vision_encoder",
            "depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 48,
            "out_hidden_size": 64, "in_channels": 3, "patch_size": 14,
            "temporal_patch_size": 2, "spatial_merge_size": 2, "window_size": 112,
            "fullatt_block_indexes": [1], "hidden_act": "silu", "tokens_per_second": 25,
        },
        **_MULTIMODAL_IDS,
        "bos_token_id": 151644, "eos_token_id": 151645, "pad_token_id": 151643,
        "tie_word_embeddings": False,
    },
    "talker_config": {
        "model_type": "qwen2_5_omni_talker",
        "vocab_size": 8448, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "embedding_size": 64, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rope_scaling": _mrope([4, 4, 0]), "use_sliding_window": False,
        "tie_word_embeddings": False,
        "tts_text_start_token_id": 151860, "tts_text_end_token_id": 151861,
        "tts_text_pad_token_id": 151859, "tts_codec_start_token_id": 8293,
        "tts_codec_end_token_id": 8294, "tts_codec_pad_token_id": 8292,
        "tts_codec_mask_token_id": 8296, **_MULTIMODAL_IDS, "spatial_merge_size": 2,
    },
    "token2wav_config": {
        "model_type": "qwen2_5_omni_token2wav",
        "dit_config": {
            "model_type": "qwen2_5_omni_dit",
            "dim": 32, "depth": 3, "heads": 2, "head_dim": 16, "ff_mult": 2,
            "emb_dim": 16, "num_embeds": 8193, "mel_dim": 80, "repeats": 2,
            "enc_emb_dim": 24, "enc_dim": 16, "enc_channels": [16, 16, 16, 16, 48],
            "enc_kernel_sizes": [5, 3, 3, 3, 1], "enc_dilations": [1, 2, 3, 4, 1],
            "enc_attention_channels": 8, "enc_res2net_scale": 2, "enc_se_channels": 8,
            # The 22-layer defaults (look-ahead layer 10, look-back 20) don't fit 3 layers.
            "block_size": 24, "look_ahead_layers": [1], "look_backward_layers": [0, 2],
            "dropout": 0.1,
        },
        "bigvgan_config": {
            "model_type": "qwen2_5_omni_bigvgan",
            # 6 stages halve the channels 6 times: 64 is the smallest width that keeps >= 1.
            "mel_dim": 80, "upsample_initial_channel": 64,
            "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "upsample_rates": [5, 3, 2, 2, 2, 2],
            "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
        },
    },
}

GENERATION_CONFIG = {"_from_model_config": True, "transformers_version": "4.52.4"}
PREPROCESSOR_CONFIG = {
    "processor_class": "Qwen2_5OmniProcessor",
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400,
    "chunk_length": 300, "n_samples": 4800000, "nb_max_frames": 30000, "dither": 0.0,
    "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
    "image_processor_type": "Qwen2VLImageProcessor",
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

Shapes = Dict[str, Tuple[int, ...]]


def _linear(s: Shapes, name: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
    s[f"{name}.weight"] = (out_dim, in_dim)
    if bias:
        s[f"{name}.bias"] = (out_dim,)


def _conv(s: Shapes, name: str, out_ch: int, in_ch: int, kernel: int, bias: bool = True) -> None:
    s[f"{name}.weight"] = (out_ch, in_ch, kernel)  # Conv1d [out, in, k]
    if bias:
        s[f"{name}.bias"] = (out_ch,)


def _layer_norm(s: Shapes, name: str, dim: int) -> None:
    s[f"{name}.weight"] = s[f"{name}.bias"] = (dim,)


def _qwen2_decoder(s: Shapes, prefix: str, cfg, embed_dim: int) -> None:
    h, hd = cfg.hidden_size, cfg.head_dim
    s[f"{prefix}.embed_tokens.weight"] = (cfg.vocab_size, embed_dim)
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}.layers.{i}"
        s[f"{p}.input_layernorm.weight"] = (h,)
        _linear(s, f"{p}.self_attn.q_proj", cfg.num_attention_heads * hd, h)
        _linear(s, f"{p}.self_attn.k_proj", cfg.num_key_value_heads * hd, h)
        _linear(s, f"{p}.self_attn.v_proj", cfg.num_key_value_heads * hd, h)
        _linear(s, f"{p}.self_attn.o_proj", h, cfg.num_attention_heads * hd, bias=False)
        s[f"{p}.post_attention_layernorm.weight"] = (h,)
        _linear(s, f"{p}.mlp.gate_proj", cfg.intermediate_size, h, bias=False)
        _linear(s, f"{p}.mlp.up_proj", cfg.intermediate_size, h, bias=False)
        _linear(s, f"{p}.mlp.down_proj", h, cfg.intermediate_size, bias=False)
    s[f"{prefix}.norm.weight"] = (h,)


def _audio_tower(s: Shapes, p: str, a) -> None:
    d = a.d_model
    _conv(s, f"{p}.conv1", d, a.num_mel_bins, 3)
    _conv(s, f"{p}.conv2", d, d, 3)
    s[f"{p}.audio_bos_eos_token.weight"] = (2, a.output_dim)
    for i in range(a.encoder_layers):
        lp = f"{p}.layers.{i}"
        _linear(s, f"{lp}.self_attn.k_proj", d, d, bias=False)
        for proj in ("v_proj", "q_proj", "out_proj"):
            _linear(s, f"{lp}.self_attn.{proj}", d, d)
        _layer_norm(s, f"{lp}.self_attn_layer_norm", d)
        _linear(s, f"{lp}.fc1", a.encoder_ffn_dim, d)
        _linear(s, f"{lp}.fc2", d, a.encoder_ffn_dim)
        _layer_norm(s, f"{lp}.final_layer_norm", d)
    _layer_norm(s, f"{p}.ln_post", d)
    _linear(s, f"{p}.proj", a.output_dim, d)


def _vision_tower(s: Shapes, p: str, v) -> None:
    h, patch = v.hidden_size, v.patch_size
    s[f"{p}.patch_embed.proj.weight"] = (h, v.in_channels, v.temporal_patch_size, patch, patch)
    for i in range(v.depth):
        bp = f"{p}.blocks.{i}"
        s[f"{bp}.norm1.weight"] = s[f"{bp}.norm2.weight"] = (h,)
        for proj in ("q", "k", "v", "proj"):
            _linear(s, f"{bp}.attn.{proj}", h, h)
        _linear(s, f"{bp}.mlp.gate_proj", v.intermediate_size, h)
        _linear(s, f"{bp}.mlp.up_proj", v.intermediate_size, h)
        _linear(s, f"{bp}.mlp.down_proj", h, v.intermediate_size)
    merged = h * v.spatial_merge_size ** 2
    s[f"{p}.merger.ln_q.weight"] = (h,)
    _linear(s, f"{p}.merger.mlp.0", merged, merged)
    _linear(s, f"{p}.merger.mlp.2", v.out_hidden_size, merged)


def _ecapa(s: Shapes, p: str, d) -> None:
    ch, ks = d.enc_channels, d.enc_kernel_sizes
    _conv(s, f"{p}.blocks.0.conv", ch[0], d.mel_dim, ks[0])
    for i in range(1, len(ch) - 1):
        bp, c = f"{p}.blocks.{i}", ch[i]
        _conv(s, f"{bp}.tdnn1.conv", c, ch[i - 1], 1)
        for j in range(d.enc_res2net_scale - 1):
            part = c // d.enc_res2net_scale
            _conv(s, f"{bp}.res2net_block.blocks.{j}.conv", part, part, ks[i])
        _conv(s, f"{bp}.tdnn2.conv", c, c, 1)
        _conv(s, f"{bp}.se_block.conv1", d.enc_se_channels, c, 1)
        _conv(s, f"{bp}.se_block.conv2", c, d.enc_se_channels, 1)
    last = ch[-1]
    _conv(s, f"{p}.mfa.conv", last, last, ks[-1])
    _conv(s, f"{p}.asp.tdnn.conv", d.enc_attention_channels, last * 3, 1)
    _conv(s, f"{p}.asp.conv", last, d.enc_attention_channels, 1)
    _conv(s, f"{p}.fc", d.enc_dim, last * 2, 1)


def _dit(s: Shapes, p: str, d) -> None:
    dim, inner = d.hidden_size, d.num_attention_heads * d.head_dim
    _linear(s, f"{p}.time_embed.time_mlp.0", dim, DIT_FREQ_EMBED_DIM)
    _linear(s, f"{p}.time_embed.time_mlp.2", dim, dim)
    s[f"{p}.text_embed.codec_embed.weight"] = (d.num_embeds + 1, d.emb_dim)
    _linear(s, f"{p}.input_embed.proj", dim, d.mel_dim + d.enc_dim + d.enc_emb_dim + d.emb_dim)
    _ecapa(s, f"{p}.input_embed.spk_encoder", d)
    s[f"{p}.rotary_embed.inv_freq"] = (d.head_dim // 2,)
    for i in range(d.num_hidden_layers):
        bp = f"{p}.transformer_blocks.{i}"
        _linear(s, f"{bp}.attn_norm.linear", 6 * dim, dim)
        for proj in ("to_q", "to_k", "to_v"):
            _linear(s, f"{bp}.attn.{proj}", inner, dim)
        _linear(s, f"{bp}.attn.to_out.0", dim, inner)
        _linear(s, f"{bp}.ff.ff.0", dim * d.ff_mult, dim)
        _linear(s, f"{bp}.ff.ff.3", dim, dim * d.ff_mult)
    _linear(s, f"{p}.norm_out.linear", 2 * dim, dim)
    _linear(s, f"{p}.proj_out", d.mel_dim, dim)


def _bigvgan(s: Shapes, p: str, g) -> None:
    c0 = g.upsample_initial_channel
    _conv(s, f"{p}.conv_pre", c0, g.mel_dim, BIGVGAN_PRE_POST_KERNEL)
    for stage, kernel in enumerate(g.upsample_kernel_sizes):
        c_in, c_out = c0 // 2 ** stage, c0 // 2 ** (stage + 1)
        s[f"{p}.ups.{stage}.0.weight"] = (c_in, c_out, kernel)  # ConvTranspose1d [in, out, k]
        s[f"{p}.ups.{stage}.0.bias"] = (c_out,)
    n_kernels = len(g.resblock_kernel_sizes)
    for j in range(len(g.upsample_rates) * n_kernels):
        rp, c = f"{p}.resblocks.{j}", c0 // 2 ** (j // n_kernels + 1)
        k = g.resblock_kernel_sizes[j % n_kernels]
        for group in ("convs1", "convs2"):
            for n in range(3):  # transformers hard-codes three dilations per group
                _conv(s, f"{rp}.{group}.{n}", c, c, k)
        for n in range(6):
            s[f"{rp}.activations.{n}.act.alpha"] = s[f"{rp}.activations.{n}.act.beta"] = (c,)
    c_last = c0 // 2 ** len(g.upsample_rates)
    s[f"{p}.activation_post.act.alpha"] = s[f"{p}.activation_post.act.beta"] = (c_last,)
    _conv(s, f"{p}.conv_post", 1, c_last, BIGVGAN_PRE_POST_KERNEL, bias=False)


def published_tensor_shapes(config: dict) -> Shapes:
    """Every tensor name and shape (PyTorch on-disk layout) a published checkpoint with this
    config.json holds, in module order.  Non-persistent buffers are left out; the DiT's
    `rotary_embed.inv_freq` is a stored buffer and is included."""
    if config.get("model_type") == THINKER_ONLY:
        raise ValueError("published_tensor_shapes describes full Qwen2.5-Omni checkpoints "
                         f"(model_type qwen2_5_omni), not {THINKER_ONLY!r} ones")
    cfg = OmniConfig.from_dict(config)
    th = cfg.thinker_config
    s: Shapes = {}
    _qwen2_decoder(s, "thinker.model", th.text_config, th.text_config.hidden_size)
    if not th.text_config.tie_word_embeddings:
        _linear(s, "thinker.lm_head", th.text_config.vocab_size, th.text_config.hidden_size,
                bias=False)
    _audio_tower(s, "thinker.audio_tower", th.audio_config)
    _vision_tower(s, "thinker.visual", th.vision_config)
    if cfg.has_speech:
        tk = cfg.talker_config
        _linear(s, "talker.thinker_to_talker_proj", tk.hidden_size, tk.embedding_size)
        _qwen2_decoder(s, "talker.model", tk, tk.embedding_size)
        _linear(s, "talker.codec_head", tk.vocab_size, tk.hidden_size, bias=False)
        _dit(s, "token2wav.code2wav_dit_model", cfg.token2wav_config.dit_config)
        _bigvgan(s, "token2wav.code2wav_bigvgan_model", cfg.token2wav_config.bigvgan_config)
    return s


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def _dit_inv_freq(dim: int, theta: float) -> np.ndarray:
    # The published checkpoint stores this buffer after a bfloat16 round trip.
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return bf16_round(np.float32(1.0) / np.power(np.float32(theta), exponent))


def _init_tensor(name: str, shape, rng: np.random.Generator, cfg: OmniConfig) -> np.ndarray:
    if name.endswith("rotary_embed.inv_freq"):
        dit = cfg.token2wav_config.dit_config
        return _dit_inv_freq(dit.head_dim, dit.rope_theta)
    if name.endswith(".bias") or SNAKE_PARAM.search(name):
        return np.zeros(shape, np.float32)  # snake alpha/beta are log-scale: 0 means 1
    if len(shape) == 1:
        return np.ones(shape, np.float32)  # every 1-D weight left is a norm scale
    scale = WEIGHT_STD * (QK_SCALE if QK_WEIGHT.search(name) else 1.0)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)


def _split_shards(names, shapes: Shapes, shards: int):
    """Cut the name list into `shards` contiguous runs of roughly equal bytes."""
    sizes = [4 * int(np.prod(shapes[n])) for n in names]
    total, groups, acc = sum(sizes), [[] for _ in range(shards)], 0
    for name, size in zip(names, sizes):
        groups[min(shards - 1, acc * shards // total)].append(name)
        acc += size
    return [g for g in groups if g]


def _write_json(path: Path, doc) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _write_speakers(out: Path, cfg: OmniConfig, rng: np.random.Generator) -> None:
    from omni_edge.convert.speakers import write_torch_pickle

    dit = cfg.token2wav_config.dit_config
    voices = {name: {"cond": rng.standard_normal((1, dit.enc_emb_dim), dtype=np.float32),
                     "ref_mel": rng.standard_normal((1, SPEAKER_REF_FRAMES, dit.mel_dim),
                                                    dtype=np.float32),
                     "bos_token": bos}
              for name, bos in SPEAKERS.items()}
    write_torch_pickle(voices, out / "spk_dict.pt")


def write_demo_checkpoint(out_dir, config: dict = DEMO_CONFIG, seed: int = 0,
                          shards: int = 2) -> Path:
    """Write a random-weight checkpoint with `config` into `out_dir` in the hub file layout
    (float32 shards + index, config/generation/preprocessor JSON, tokenizer, spk_dict.pt)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = OmniConfig.from_dict(config)
    shapes = published_tensor_shapes(config)
    rng = np.random.default_rng(seed)
    groups = _split_shards(list(shapes), shapes, shards)
    weight_map, total = {}, 0
    for k, names in enumerate(groups, start=1):
        filename = SHARD_NAME.format(k, len(groups))
        tensors = {n: _init_tensor(n, shapes[n], rng, cfg) for n in names}
        save_file(tensors, str(out / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, filename))
        total += sum(t.nbytes for t in tensors.values())
    _write_json(out / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", GENERATION_CONFIG)
    _write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)

    from omni_edge.demo.tokenizer import write_standin_tokenizer

    write_standin_tokenizer(out)
    if cfg.has_speech:
        _write_speakers(out, cfg, rng)
    return out
