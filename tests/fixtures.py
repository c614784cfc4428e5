"""Tiny random Qwen2.5-Omni checkpoints that look on disk like `Qwen/Qwen2.5-Omni-3B` / `-7B`.

`build_fixture(out_dir, kind)` writes a complete model directory: sharded safetensors with
`model.safetensors.index.json` under the published 4.x tensor names, `config.json` in the
published layout (`rope_theta` + `rope_scaling`, DiT `dim/depth/heads` aliases), the
generation / preprocessor configs, the stand-in tokenizer files and `spk_dict.pt`.

The weights are made "peaky" (omni_spec.md §0): with plain std-0.02 init, attention is almost
uniform and the audio / DiT paths barely move the outputs, so a port with a position or layout
bug would still match.  Attention q/k projections are scaled ×10, the audio convs ×30 and the
DiT `proj_out` ×30, and the BigVGAN trunk is set to unit gain so the waveform follows the mel;
biases, norm weights and SnakeBeta parameters are randomised so a port that drops or swaps one
of them can't pass either.

Test-only: needs torch and transformers (5.x reads this layout through its legacy-config paths).
"""

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

from omni_edge.demo.tokenizer import SPECIAL_TOKENS, write_standin_tokenizer

KINDS = ("3b", "7b")
SEED = 0

THINKER_VOCAB = {"3b": 151936, "7b": 152064}
THINKER_HIDDEN = 64
THINKER_MROPE = [2, 3, 3]  # sums to head_dim / 2 = 8
TALKER_HEAD_DIM = {"3b": 16, "7b": 24}  # 3b: heads*head_dim == hidden; 7b: 48 != 32
TALKER_MROPE = {"3b": [4, 4, 0], "7b": [4, 4, 4]}  # the 3B's [16,16,0] shape, the 7B's 3 bands
DIT_HEAD_DIM = 16
DIT_ROPE_THETA = 10000.0
# Only the "7b" fixture writes the DiT block fields; see `dit_config`.
DIT_EXPLICIT_LOOK = {"look_ahead_layers": [1], "look_backward_layers": [0, 2]}
# Stage i has initial // 2**(i+1) channels: 32 would leave the 6th stage with 0, 128 leaves 2.
BIGVGAN_INITIAL_CHANNEL = 128

QK_SCALE = 10.0
AUDIO_CONV_SCALE = 30.0
DIT_PROJ_OUT_SCALE = 30.0
# Module-name suffix -> weight factor (biases untouched).
WEIGHT_ONLY_SCALES = {
    "audio_tower.conv1": AUDIO_CONV_SCALE,
    "audio_tower.conv2": AUDIO_CONV_SCALE,
    "code2wav_dit_model.proj_out": DIT_PROJ_OUT_SCALE,
}
VOCODER_POST_GAIN = 0.3
BIAS_STD = 0.02
NORM_WEIGHT_STD = 0.1
SNAKE_STD = 0.1

MAX_SHARD_BYTES = 40_000_000  # the two ~39 MB fp32 vocab x 64 tables land in different shards
SPEAKER_BOS = {"Chelsie": 151870, "Ethan": 151871}
REF_MEL_FRAMES = 40
MEL_DIM = 80

# In memory (transformers 5) -> on disk (published 4.x names); first match wins.
DISK_RENAMES = (
    ("thinker.model.language_model.", "thinker.model."),
    ("thinker.model.audio_tower.", "thinker.audio_tower."),
    ("thinker.model.visual.", "thinker.visual."),
)
DIT_INV_FREQ_KEY = "token2wav.code2wav_dit_model.rotary_embed.inv_freq"
# Stored on disk, but a non-persistent buffer in transformers 5: recomputed, and the stored
# (bf16-rounded) value is dropped without being reported as unexpected.
NON_PERSISTENT_ON_DISK = (DIT_INV_FREQ_KEY,)

Q_K_SUFFIXES = (
    ".self_attn.q_proj",  # thinker text, talker, audio tower
    ".self_attn.k_proj",
    ".attn.q",  # vision blocks
    ".attn.k",
    ".attn.to_q",  # DiT
    ".attn.to_k",
)

PREPROCESSOR_CONFIG = {
    "chunk_length": 300,
    "dither": 0.0,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": 16000,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_pixels": 12845056,
    "merge_size": 2,
    "min_pixels": 3136,
    "patch_size": 14,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "temporal_patch_size": 2,
    "processor_class": "Qwen2_5OmniProcessor",
}

GENERATION_CONFIG = {"_from_model_config": True}


# --------------------------------------------------------------------------- config.json


def _rope(theta: float, mrope_section: List[int]) -> dict:
    """Published rope fields (transformers 5 would write `rope_parameters` instead)."""
    return {"rope_theta": theta, "rope_scaling": {"type": "default", "mrope_section": list(mrope_section)}}


def text_config(kind: str) -> dict:
    """Thinker Qwen2 decoder: hidden 64, 3 layers, 4 heads (2 kv), head_dim 16."""
    return {
        "model_type": "qwen2_5_omni_text",
        "vocab_size": THINKER_VOCAB[kind],
        "hidden_size": THINKER_HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "max_window_layers": 3,
        "rms_norm_eps": 1e-6,
        **_rope(1000000.0, THINKER_MROPE),
        "sliding_window": 32768,
        "use_sliding_window": False,
        "use_cache": True,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
    }


def audio_config() -> dict:
    """Whisper-style audio encoder: d_model 32, 2 layers, 4 heads, ffn 64."""
    return {
        "model_type": "qwen2_5_omni_audio_encoder",
        "num_mel_bins": 128,
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "max_source_positions": 1500,
        "n_window": 100,
        "output_dim": THINKER_HIDDEN,
        "activation_function": "gelu",
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "scale_embedding": False,
        "initializer_range": 0.02,
    }


def vision_config() -> dict:
    """Windowed ViT: depth 2 (block 1 full attention), hidden 32, 2 heads."""
    return {
        "model_type": "qwen2_5_omni_vision_encoder",
        "depth": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 48,
        "hidden_act": "silu",
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "out_hidden_size": THINKER_HIDDEN,
        "tokens_per_second": 25,
        "initializer_range": 0.02,
    }


def thinker_config(kind: str) -> dict:
    """Thinker: text + audio + vision, with the published special token ids."""
    return {
        "model_type": "qwen2_5_omni_thinker",
        "text_config": text_config(kind),
        "audio_config": audio_config(),
        "vision_config": vision_config(),
        "audio_token_index": SPECIAL_TOKENS["<|AUDIO|>"],
        "image_token_index": SPECIAL_TOKENS["<|IMAGE|>"],
        "video_token_index": SPECIAL_TOKENS["<|VIDEO|>"],
        "audio_start_token_id": SPECIAL_TOKENS["<|audio_bos|>"],
        "audio_end_token_id": SPECIAL_TOKENS["<|audio_eos|>"],
        "vision_start_token_id": SPECIAL_TOKENS["<|vision_bos|>"],
        "vision_end_token_id": SPECIAL_TOKENS["<|vision_eos|>"],
        "vision_token_id": SPECIAL_TOKENS["<|vision_pad|>"],
        "bos_token_id": SPECIAL_TOKENS["<|im_start|>"],
        "eos_token_id": SPECIAL_TOKENS["<|im_end|>"],
        "pad_token_id": SPECIAL_TOKENS["<|endoftext|>"],
        "user_token_id": 872,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
    }


def talker_config(kind: str) -> dict:
    """Talker decoder: hidden 32, 2 layers, 2 heads (1 kv); head_dim per kind."""
    return {
        "model_type": "qwen2_5_omni_talker",
        "vocab_size": 8448,
        "embedding_size": THINKER_HIDDEN,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": TALKER_HEAD_DIM[kind],
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-6,
        **_rope(1000000.0, TALKER_MROPE[kind]),
        "sliding_window": 32768,
        "use_sliding_window": False,
        "use_cache": True,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "audio_token_index": SPECIAL_TOKENS["<|AUDIO|>"],
        "image_token_index": SPECIAL_TOKENS["<|IMAGE|>"],
        "video_token_index": SPECIAL_TOKENS["<|VIDEO|>"],
        "audio_start_token_id": SPECIAL_TOKENS["<|audio_bos|>"],
        "audio_end_token_id": SPECIAL_TOKENS["<|audio_eos|>"],
        "vision_start_token_id": SPECIAL_TOKENS["<|vision_bos|>"],
        "vision_end_token_id": SPECIAL_TOKENS["<|vision_eos|>"],
        "tts_text_start_token_id": 151860,
        "tts_text_end_token_id": 151861,
        "tts_text_pad_token_id": 151859,
        "tts_codec_start_token_id": 8293,
        "tts_codec_end_token_id": 8294,
        "tts_codec_pad_token_id": 8292,
        "tts_codec_mask_token_id": 8296,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "spatial_merge_size": 2,
    }


def dit_config(kind: str) -> dict:
    """Token2Wav DiT: hidden 32, 3 layers, 2 heads x 16, small ECAPA speaker encoder.

    Like the published file, it carries the `dim/depth/heads` aliases and omits `block_size`,
    `look_ahead_layers`, `look_backward_layers` and `rope_theta`.  With the omission,
    transformers (and a port that hard-codes the reference values) use block 24, look-ahead
    [10], look-back [0, 20]: in a 3-layer DiT that means layer 0 looks back one block and no
    layer looks ahead.  A 22-layer DiT would be too slow for a fixture, so the "3b" fixture keeps
    the published omission and the "7b" fixture writes look-ahead [1] / look-back [0, 2]
    explicitly, which exercises both block masks.
    """
    cfg = {
        "model_type": "qwen2_5_omni_dit",
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "dim": 32,
        "depth": 3,
        "heads": 2,
        "head_dim": DIT_HEAD_DIM,
        "ff_mult": 2,
        "emb_dim": 16,
        "num_embeds": 8193,
        "mel_dim": MEL_DIM,
        "repeats": 2,
        "max_position_embeddings": 32768,
        "dropout": 0.1,
        "enc_emb_dim": 24,
        "enc_dim": 16,
        "enc_channels": [16, 16, 16, 16, 48],
        "enc_kernel_sizes": [5, 3, 3, 3, 1],
        "enc_dilations": [1, 2, 3, 4, 1],
        "enc_attention_channels": 8,
        "enc_res2net_scale": 2,
        "enc_se_channels": 8,
    }
    if kind == "7b":
        cfg.update(DIT_EXPLICIT_LOOK)
    return cfg


def bigvgan_config() -> dict:
    """BigVGAN vocoder with the real upsampling (240x, so 480 samples per codec token)."""
    return {
        "model_type": "qwen2_5_omni_bigvgan",
        "mel_dim": MEL_DIM,
        "upsample_initial_channel": BIGVGAN_INITIAL_CHANNEL,
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "upsample_rates": [5, 3, 2, 2, 2, 2],
        "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
    }


def published_config(kind: str) -> dict:
    """The whole config.json document for a fixture kind, in the published layout."""
    if kind not in KINDS:
        raise ValueError(f"unknown fixture kind {kind!r}; use one of {KINDS}")
    return {
        "architectures": ["Qwen2_5OmniForConditionalGeneration"],
        "model_type": "qwen2_5_omni",
        "enable_audio_output": True,
        "enable_talker": True,
        "thinker_config": thinker_config(kind),
        "talker_config": talker_config(kind),
        "token2wav_config": {
            "model_type": "qwen2_5_omni_token2wav",
            "dit_config": dit_config(kind),
            "bigvgan_config": bigvgan_config(),
        },
        "torch_dtype": "float32",
    }


def fixture_kind(path) -> str:
    """"3b" or "7b": which kind of fixture the checkpoint dir `path` holds."""
    config = json.loads((Path(path) / "config.json").read_text())
    vocab = config["thinker_config"]["text_config"]["vocab_size"]
    return {v: k for k, v in THINKER_VOCAB.items()}[vocab]


def hf_config(kind: str) -> Qwen2_5OmniConfig:
    """The transformers config object that reading `published_config(kind)` gives."""
    return Qwen2_5OmniConfig.from_dict(published_config(kind))


# --------------------------------------------------------------------------- weights


def _normal_(tensor: torch.Tensor, mean: float, std: float) -> None:
    with torch.no_grad():
        tensor.normal_(mean, std)


def _randomise_affine(model: nn.Module) -> None:
    """Give biases, norm weights and SnakeBeta alpha/beta random values (init leaves them 0/1)."""
    for module in model.modules():
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
        if is_norm and getattr(module, "weight", None) is not None:
            _normal_(module.weight, 1.0, NORM_WEIGHT_STD)
        if type(module).__name__.endswith("SnakeBeta"):
            _normal_(module.alpha, 0.0, SNAKE_STD)
            _normal_(module.beta, 0.0, SNAKE_STD)
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            _normal_(bias, 0.0, BIAS_STD)


def _scale_(module: nn.Module, factor: float, with_bias: bool = True) -> None:
    with torch.no_grad():
        module.weight.mul_(factor)
        if with_bias and module.bias is not None:
            module.bias.mul_(factor)


def _make_peaky(model: nn.Module) -> None:
    """omni_spec.md §0: sharpen attention and make the audio / DiT paths move the outputs."""
    for name, module in model.named_modules():
        if name.endswith(Q_K_SUFFIXES):
            _scale_(module, QK_SCALE)
        for suffix, factor in WEIGHT_ONLY_SCALES.items():
            if name.endswith(suffix):
                _scale_(module, factor, with_bias=False)


def _effective_fan_in(conv: nn.Module) -> float:
    """Inputs that feed one output sample (a transposed conv spreads its kernel over `stride`)."""
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose1d):
        return w.shape[0] * w.shape[2] / conv.stride[0]
    return w.shape[1] * w.shape[2]


def _set_gain_(conv: nn.Module, gain: float) -> None:
    with torch.no_grad():
        conv.weight.mul_(gain / (conv.weight.std() * math.sqrt(_effective_fan_in(conv))))


def _make_vocoder_audible(model: nn.Module) -> None:
    """Unit-gain BigVGAN trunk so the waveform follows the mel, not the biases.

    With std-0.02 init, conv_pre and the 6 upsampling convs shrink the signal ~1e-6-fold, so the
    random biases dominate: changing 2/3 of a code sequence moved the mel by 1.2% but the
    waveform by 1e-5 (relative).  At unit gain (conv_post 0.3: |wav| < 1, no clamping) it
    moves the waveform by 0.75%.
    """
    vocoder = model.token2wav.code2wav_bigvgan_model
    for conv in [vocoder.conv_pre] + [up[0] for up in vocoder.ups]:
        _set_gain_(conv, 1.0)
    _set_gain_(vocoder.conv_post, VOCODER_POST_GAIN)


def _check_embeddings(model: nn.Module) -> None:
    """No embedding row may be all zeros (padding_idx init) and the lm_head must be untied."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            zero_rows = (module.weight.abs().sum(-1) == 0).sum().item()
            assert zero_rows == 0, f"{name} has {zero_rows} all-zero rows"
    thinker = model.thinker
    head, embed = thinker.lm_head.weight, thinker.get_input_embeddings().weight
    assert head.data_ptr() != embed.data_ptr() and not torch.equal(head, embed), "thinker lm_head is tied"


def build_model(kind: str) -> Qwen2_5OmniForConditionalGeneration:
    """The seeded, peaky, fp32 in-memory model whose weights `build_fixture` writes."""
    config = hf_config(kind)
    torch.manual_seed(SEED)
    model = Qwen2_5OmniForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        _randomise_affine(model)
        _make_peaky(model)
        _make_vocoder_audible(model)
    _check_embeddings(model)
    return model


def to_disk_name(name: str) -> str:
    """transformers 5 in-memory parameter name -> published on-disk name."""
    for old, new in DISK_RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def dit_inv_freq(head_dim: int = DIT_HEAD_DIM, theta: float = DIT_ROPE_THETA) -> torch.Tensor:
    """The DiT rotary inv_freq as the published checkpoints store it: float32, bf16-rounded."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return inv_freq.to(torch.bfloat16).to(torch.float32)


def on_disk_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every tensor of the published checkpoint, under its on-disk name, fp32 and contiguous."""
    state = {
        to_disk_name(name): t.detach().to(torch.float32).contiguous().clone()
        for name, t in model.state_dict().items()
    }
    state[DIT_INV_FREQ_KEY] = dit_inv_freq()
    return state


def _shard_groups(names: Iterable[str], state: Dict[str, torch.Tensor]) -> List[List[str]]:
    """Greedy size-based sharding in state-dict order, as save_pretrained does."""
    groups: List[List[str]] = [[]]
    size = 0
    for name in names:
        nbytes = state[name].numel() * state[name].element_size()
        if groups[-1] and size + nbytes > MAX_SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def write_sharded_safetensors(state: Dict[str, torch.Tensor], out_dir: Path) -> Tuple[int, dict]:
    """Write `model-0000i-of-0000n.safetensors` shards and `model.safetensors.index.json`."""
    groups = _shard_groups(state.keys(), state)
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: state[k] for k in group}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in group})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(out_dir / "model.safetensors.index.json", index)
    return len(groups), index


# --------------------------------------------------------------------------- other files


def _write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def speaker_dict(enc_emb_dim: int) -> Dict[str, dict]:
    """`spk_dict.pt` content: per voice an x-vector `cond`, a reference mel and a bos id."""
    gen = torch.Generator().manual_seed(SEED + 1)
    speakers = {}
    for name, bos in SPEAKER_BOS.items():
        speakers[name] = {
            "cond": torch.randn(1, enc_emb_dim, generator=gen),
            "ref_mel": torch.randn(1, REF_MEL_FRAMES, MEL_DIM, generator=gen) - 5.0,
            "bos_token": bos,
        }
    return speakers


def build_fixture(out_dir, kind: str) -> Path:
    """Write a tiny random Qwen2.5-Omni-{3B,7B}-shaped checkpoint into `out_dir`; return the path."""
    config = published_config(kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(kind)
    write_sharded_safetensors(on_disk_state_dict(model), out)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", GENERATION_CONFIG)
    _write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    write_standin_tokenizer(out)
    enc_emb_dim = config["token2wav_config"]["dit_config"]["enc_emb_dim"]
    torch.save(speaker_dict(enc_emb_dim), out / "spk_dict.pt")
    return out


# --------------------------------------------------------------------------- references


def stored_dit_inv_freq(path) -> torch.Tensor:
    """The DiT rotary inv_freq stored in the checkpoint dir `path` (bf16-rounded values)."""
    from safetensors import safe_open

    index = json.loads((Path(path) / "model.safetensors.index.json").read_text())
    with safe_open(str(Path(path) / index["weight_map"][DIT_INV_FREQ_KEY]), "pt") as f:
        return f.get_tensor(DIT_INV_FREQ_KEY)


def use_stored_dit_inv_freq(model: Qwen2_5OmniForConditionalGeneration, path) -> None:
    """Put the checkpoint's inv_freq back into the DiT rotary embedding.

    transformers <= 4.57 loaded it (a persistent buffer); 5.x recomputes the exact values and
    drops the stored ones.  On these fixtures that moves the DiT velocity by only ~5e-7
    (relative, 120 frames), but the port reads the stored values, so the reference should too.
    """
    rotary = model.token2wav.code2wav_dit_model.rotary_embed
    stored = stored_dit_inv_freq(path).to(rotary.inv_freq.device)
    rotary.inv_freq.copy_(stored)
    rotary.original_inv_freq.copy_(stored)


def load_reference_model(path, stored_inv_freq: bool = True, **kwargs) -> Qwen2_5OmniForConditionalGeneration:
    """The full transformers model (thinker, talker, token2wav), fp32, eval, from a fixture dir.

    With `stored_inv_freq` (default) the DiT uses the checkpoint's bf16-rounded inv_freq, as the
    release (4.x) code does and as omni_spec.md §0 prescribes for a port.
    """
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32, **kwargs)
    if stored_inv_freq and model.has_talker:
        use_stored_dit_inv_freq(model, path)
    return model.eval()


def load_reference_thinker(path, **kwargs) -> nn.Module:
    """The transformers thinker (`Qwen2_5OmniThinkerForConditionalGeneration`), fp32, eval."""
    return load_reference_model(path, **kwargs).thinker.eval()


def reference_tokenizer(path):
    """transformers' tokenizer for a fixture dir (Qwen2Tokenizer over the stand-in files)."""
    return AutoTokenizer.from_pretrained(str(path))



def reference_processor(path):
    """transformers' Qwen2_5OmniProcessor for a fixture dir, without its video processor
    (which needs torchvision, not installed here): text, audio and images go through the
    reference code unchanged."""
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, WhisperFeatureExtractor
    from transformers.processing_utils import ProcessorMixin

    from omni_edge.processing.chat_template import OMNI_CHAT_TEMPLATE

    class NoVideoProcessor(Qwen2_5OmniProcessor):
        attributes = ["image_processor", "feature_extractor", "tokenizer"]

        def __init__(self, image_processor, feature_extractor, tokenizer, chat_template=None):
            ProcessorMixin.__init__(self, image_processor, feature_extractor, tokenizer,
                                    chat_template=chat_template)
            self.video_processor = None
            for name in ("image_token", "audio_token", "video_token", "vision_bos_token",
                         "vision_eos_token", "audio_bos_token", "audio_eos_token"):
                setattr(self, name, getattr(tokenizer, name, None))

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=300,
        padding_value=0.0, dither=0.0, return_attention_mask=True)
    return NoVideoProcessor(Qwen2VLImageProcessor(), feature_extractor, reference_tokenizer(path),
                            chat_template=OMNI_CHAT_TEMPLATE)


def converted_weights(model_dir, prefix: str) -> dict:
    """The tensors under `prefix` in a converted model directory, with the prefix stripped
    (what one component's `load_weights(strict=True)` takes)."""
    import mlx.core as mx

    weights = {}
    for shard in sorted(Path(model_dir).glob("model-*.safetensors")):
        weights.update({k[len(prefix):]: v for k, v in mx.load(str(shard)).items() if k.startswith(prefix)})
    return weights


def converted_component(model_dir, out_root, prefix: str, config_of):
    """Convert `model_dir` to float32 under `out_root`: (the tensors under `prefix`, prefix
    stripped, and the component's config, `config_of(OmniConfig)`)."""
    from omni_edge.config import OmniConfig
    from omni_edge.convert.mlx import convert

    out = convert(str(model_dir), str(Path(out_root) / "fp32"), dtype="float32")
    return converted_weights(out, prefix), config_of(OmniConfig.from_file(Path(out) / "config.json"))


def built(cls, cfg, weights: dict):
    """`cls(cfg)` with `weights` loaded (strictly) and evaluated."""
    import mlx.core as mx

    module = cls(cfg)
    module.load_weights(list(weights.items()), strict=True)
    mx.eval(module.parameters())
    return module
