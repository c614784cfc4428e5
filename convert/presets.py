"""Footprint presets for `convert`: bits per component and Token2Wav's float type.

Each preset's error against the unquantized model is measured in tests/test_convert_presets.py
and its size at full 3B/7B size in benchmarks/pipeline_memory.py (README, "Memory")."""

from dataclasses import dataclass, field
from typing import Dict, Optional

THINKER, AUDIO, VISION, TALKER, TOKEN2WAV = (
    "thinker", "thinker.audio_tower", "thinker.visual", "talker", "token2wav")
FLAG = {THINKER: "--q-bits", AUDIO: "--audio-bits", VISION: "--vision-bits",
        TALKER: "--talker-bits", TOKEN2WAV: "--token2wav-bits"}
Q_BITS = (4, 8)
FLOAT_BITS = (0, 16)  # keep the component in float
# Token2Wav quantizes only its DiT's transformer blocks (72% of its weights), and only to 8 bits:
# the mel it renders is what is heard, and no measurement on real weights backs 4 bits.
TOKEN2WAV_BITS = (8,)
TOKEN2WAV_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Preset:
    bits: Dict[str, int]
    token2wav_dtype: str = "float32"
    about: str = ""
    dtype: str = "bfloat16"


PRESETS = {
    "bf16": Preset({THINKER: 0, AUDIO: 0, VISION: 0, TALKER: 0, TOKEN2WAV: 0},
                   about="no quantization; Token2Wav in float32 as the reference"),
    "q8": Preset({THINKER: 8, AUDIO: 8, VISION: 8, TALKER: 8, TOKEN2WAV: 0},
                 about="8-bit everywhere but Token2Wav (float32)"),
    "q4": Preset({THINKER: 4, AUDIO: 8, VISION: 8, TALKER: 8, TOKEN2WAV: 0},
                 about="what -q gives: 4-bit Thinker, 8-bit encoders and Talker, float32 Token2Wav"),
    "q4-small": Preset({THINKER: 4, AUDIO: 4, VISION: 4, TALKER: 8, TOKEN2WAV: 0}, "float16",
                       about="4-bit Thinker and encoders, 8-bit Talker, float16 Token2Wav"),
    "q4-min": Preset({THINKER: 4, AUDIO: 4, VISION: 4, TALKER: 4, TOKEN2WAV: 8}, "float16",
                     about="the smallest: 4-bit Talker too, 8-bit DiT blocks, float16 Token2Wav"),
}
DEFAULT_QUANTIZED = "q4"  # what plain -q means


@dataclass
class Plan:
    """The resolved choice: bits per component (only quantized ones) and Token2Wav's float type."""

    bits: Dict[str, int] = field(default_factory=dict)
    token2wav_dtype: str = "float32"

    def section(self, group_size: int) -> Optional[dict]:
        """The config.json `quantization` entry (mlx-lm's keys, plus bits per component)."""
        if not self.bits:
            return None
        return {"group_size": group_size, "bits": self.bits.get(THINKER, 0), "mode": "affine",
                "components": {c: {"bits": b, "group_size": group_size}
                               for c, b in self.bits.items()}}


def _check_bits(component: str, value: int) -> int:
    allowed = TOKEN2WAV_BITS if component == TOKEN2WAV else Q_BITS
    if value in allowed + FLOAT_BITS:
        return value
    options = ", ".join(map(str, allowed))
    why = (" (its DiT blocks take 8 bits at most; for a smaller Token2Wav use "
           "--token2wav-dtype float16)" if component == TOKEN2WAV else "")
    raise ValueError(f"{FLAG[component]} {value}: {component} can be quantized to {options} bits "
                     f"or kept in float with 0 or 16{why}; pass one of those")


def resolve(preset: Optional[str] = None, quantize: bool = False, q_bits: Optional[int] = None,
            talker_bits=None, audio_bits=None, vision_bits=None, token2wav_bits=None,
            token2wav_dtype: Optional[str] = None) -> Plan:
    """A preset (or -q's default, or none) with the explicit per-component values on top."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} does not exist; choose one of: "
                         + ", ".join(f"{n} ({p.about})" for n, p in PRESETS.items()))
    name = preset or (DEFAULT_QUANTIZED if quantize else "bf16")
    base = PRESETS[name]
    bits = dict(base.bits)
    for component, value in ((THINKER, q_bits), (TALKER, talker_bits), (AUDIO, audio_bits),
                             (VISION, vision_bits), (TOKEN2WAV, token2wav_bits)):
        if value is not None:
            bits[component] = _check_bits(component, value)
    if token2wav_dtype is not None and token2wav_dtype not in TOKEN2WAV_DTYPES:
        raise ValueError(f"--token2wav-dtype {token2wav_dtype!r} is not supported; choose one of "
                         f"{', '.join(TOKEN2WAV_DTYPES)}")
    return Plan({c: b for c, b in bits.items() if b not in FLOAT_BITS},
                token2wav_dtype or base.token2wav_dtype)
