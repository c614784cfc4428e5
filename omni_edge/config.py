"""Configuration dataclasses for every Qwen2.5-Omni part, read from the published config.json layout."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

MODEL_TYPE = "qwen2_5_omni"
THINKER_MODEL_TYPE = "qwen2_5_omni_thinker"


class ConfigError(ValueError):
    """A config.json that can't describe a Qwen2.5-Omni model."""


def _from_dict(cls, d: Dict[str, Any], where: str, **built):
    """Build dataclass `cls` from `d` (plus already-built sub-configs): unknown keys are
    ignored, `cls.ALIASES` maps published alias names onto field names, and a missing
    required key is an error naming it."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(d).__name__}")
    d = {**d, **built}
    for alias, name in getattr(cls, "ALIASES", {}).items():
        if name not in d and alias in d:
            d[name] = d[alias]
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in d and d[f.name] is not None:
            kwargs[f.name] = d[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(
                f"config.json is missing the required key '{where}.{f.name}'; "
                "re-download config.json from the model repo"
            )
    return cls(**kwargs)


def _rope(d: Dict[str, Any], where: str, default_theta: float) -> Dict[str, Any]:
    """Read rope theta and mrope_section from the published (`rope_theta` +
    `rope_scaling`) or the transformers 5 (`rope_parameters`) layout."""
    scaling = d.get("rope_scaling") or {}
    params = d.get("rope_parameters") or {}
    theta = d.get("rope_theta", params.get("rope_theta", default_theta))
    section = scaling.get("mrope_section", params.get("mrope_section"))
    if section is None:
        raise ConfigError(
            f"config.json is missing '{where}.rope_scaling.mrope_section' (TMRoPE needs it)"
        )
    return {"rope_theta": float(theta), "mrope_section": [int(s) for s in section]}


def _check_rope(cfg, where: str):
    if sum(cfg.mrope_section) * 2 != cfg.head_dim:
        raise ConfigError(
            f"{where}: mrope_section {cfg.mrope_section} must sum to head_dim/2 "
            f"= {cfg.head_dim // 2}"
        )


@dataclass
class TextConfig:
    """The Thinker's Qwen2 decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mrope_section: List[int]
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    head_dim: Optional[int] = None

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads


@dataclass
class AudioEncoderConfig:
    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    max_source_positions: int = 1500
    n_window: int = 100
    output_dim: int = 3584


@dataclass
class VisionEncoderConfig:
    # The transformers class default hidden_size (3584) is wrong for the checkpoints,
    # so hidden_size is required rather than defaulted.
    hidden_size: int
    out_hidden_size: int
    depth: int = 32
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: List[int] = field(default_factory=lambda: [7, 15, 23, 31])
    ALIASES = {"num_attention_heads": "num_heads", "num_hidden_layers": "depth"}


@dataclass
class ThinkerConfig:
    text_config: TextConfig
    audio_config: AudioEncoderConfig
    vision_config: VisionEncoderConfig
    audio_token_index: int = 151646
    image_token_index: int = 151655
    video_token_index: int = 151656
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    bos_token_id: int = 151644
    eos_token_id: int = 151645
    pad_token_id: int = 151643

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "thinker_config"):
        if "text_config" not in d:
            raise ConfigError(f"config.json is missing the required key '{where}.text_config'")
        text = dict(d["text_config"])
        text.update(_rope(text, f"{where}.text_config", 1e6))
        # Transformers 4.x ties the lm_head on text_config's flag, 5.x on thinker_config's:
        # the head is tied only when both agree it is (the published checkpoints are untied).
        text["tie_word_embeddings"] = bool(
            text.get("tie_word_embeddings", False) and d.get("tie_word_embeddings", False)
        )
        cfg = _from_dict(
            cls, d, where,
            text_config=_from_dict(TextConfig, text, f"{where}.text_config"),
            audio_config=_from_dict(AudioEncoderConfig, d.get("audio_config") or {},
                                    f"{where}.audio_config"),
            vision_config=_from_dict(VisionEncoderConfig, d.get("vision_config") or {},
                                     f"{where}.vision_config"),
        )
        _check_rope(cfg.text_config, f"{where}.text_config")
        return cfg


@dataclass
class TalkerConfig:
    """The Talker: a Qwen2 decoder over codec tokens fed by the Thinker's states."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    embedding_size: int
    mrope_section: List[int]
    head_dim: Optional[int] = None
    vocab_size: int = 8448
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tts_text_start_token_id: int = 151860
    tts_text_end_token_id: int = 151861
    tts_text_pad_token_id: int = 151859
    tts_codec_start_token_id: int = 8293
    tts_codec_end_token_id: int = 8294
    tts_codec_pad_token_id: int = 8292
    tts_codec_mask_token_id: int = 8296
    audio_token_index: int = 151646
    image_token_index: int = 151655
    video_token_index: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    spatial_merge_size: int = 2

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "talker_config"):
        d = {**d, **_rope(d, where, 1e6)}
        cfg = _from_dict(cls, d, where)
        _check_rope(cfg, where)
        return cfg


@dataclass
class DiTConfig:
    """The Token2Wav flow-matching DiT. The published JSON names the size fields
    dim/depth/heads and omits the block/look-ahead fields, which take the reference values."""

    hidden_size: int = 1024
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    ff_mult: int = 2
    emb_dim: int = 512
    head_dim: int = 64
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    block_size: int = 24
    look_ahead_layers: List[int] = field(default_factory=lambda: [10])
    look_backward_layers: List[int] = field(default_factory=lambda: [0, 20])
    repeats: int = 2
    num_embeds: int = 8193
    mel_dim: int = 80
    enc_emb_dim: int = 192
    enc_dim: int = 128
    enc_channels: List[int] = field(default_factory=lambda: [256, 256, 256, 256, 768])
    enc_kernel_sizes: List[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    enc_dilations: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    enc_attention_channels: int = 64
    enc_res2net_scale: int = 2
    enc_se_channels: int = 64
    ALIASES = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads"}


@dataclass
class BigVGANConfig:
    mel_dim: int = 80
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: List[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: List[List[int]] = field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    )
    upsample_rates: List[int] = field(default_factory=lambda: [5, 3, 2, 2, 2, 2])
    upsample_kernel_sizes: List[int] = field(default_factory=lambda: [11, 7, 4, 4, 4, 4])


@dataclass
class Token2WavConfig:
    dit_config: DiTConfig
    bigvgan_config: BigVGANConfig

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "token2wav_config"):
        return cls(
            dit_config=_from_dict(DiTConfig, d.get("dit_config") or {}, f"{where}.dit_config"),
            bigvgan_config=_from_dict(
                BigVGANConfig, d.get("bigvgan_config") or {}, f"{where}.bigvgan_config"
            ),
        )


@dataclass
class OmniConfig:
    thinker_config: ThinkerConfig
    talker_config: Optional[TalkerConfig] = None
    token2wav_config: Optional[Token2WavConfig] = None
    enable_audio_output: bool = True
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def has_speech(self) -> bool:
        return self.talker_config is not None and self.token2wav_config is not None

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "config.json") -> "OmniConfig":
        model_type = d.get("model_type")
        if model_type == THINKER_MODEL_TYPE:
            # A thinker-only checkpoint (e.g. a fine-tune): text, audio and vision in, no speech.
            return cls(thinker_config=ThinkerConfig.from_dict(d, "<root>"),
                       enable_audio_output=False, raw=d)
        if model_type != MODEL_TYPE:
            raise ConfigError(
                f"{source} has model_type {model_type!r}, not '{MODEL_TYPE}': "
                "this is not a Qwen2.5-Omni checkpoint (use mlx-lm for plain LLMs)"
            )
        if "thinker_config" not in d:
            raise ConfigError(f"{source} is missing the required key 'thinker_config'")
        talker = d.get("talker_config")
        t2w = d.get("token2wav_config")
        speech = bool(d.get("enable_audio_output", True)) and talker is not None and t2w is not None
        return cls(
            thinker_config=ThinkerConfig.from_dict(d["thinker_config"]),
            talker_config=TalkerConfig.from_dict(talker) if speech else None,
            token2wav_config=Token2WavConfig.from_dict(t2w) if speech else None,
            enable_audio_output=speech,
            raw=d,
        )

    @classmethod
    def from_file(cls, path) -> "OmniConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: a Qwen2.5-Omni model directory must hold config.json"
            )
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); re-download it") from None
        return cls.from_dict(d, str(path))
