"""Composition of the Qwen2.5-Omni parts, with attribute names mirroring the checkpoint keys."""

from typing import Dict

import mlx.core as mx
import mlx.nn as nn

from ..config import OmniConfig
from .talker import Talker
from .thinker import Thinker
from .token2wav import Token2Wav

# Checkpoint prefixes of the parts this runtime builds; tensors under other prefixes are
# converted and stored, but not loaded.
IMPLEMENTED_PREFIXES = ("thinker.model.", "thinker.lm_head.", "thinker.audio_tower.",
                        "thinker.visual.", "talker.", "token2wav.")

# Quantizable component prefixes, in the order a key is matched against them.
COMPONENTS = ("thinker.audio_tower", "thinker.visual", "thinker", "talker", "token2wav")
# 2-D `.weight` tensors that are not Linear/Embedding weights, or must stay in float.
NOT_QUANTIZED = ("patch_embed", "audio_bos_eos_token")


class OmniModel(nn.Module):
    def __init__(self, config: OmniConfig):
        super().__init__()
        self.config = config
        self.thinker = Thinker(config.thinker_config)
        if config.has_speech:
            self.talker = Talker(config.talker_config)
            self.token2wav = Token2Wav(config.token2wav_config)

    @staticmethod
    def component(key: str) -> str:
        return next(c for c in COMPONENTS + ("",) if key.startswith(c))

    @staticmethod
    def is_quantizable(key: str, shape) -> bool:
        """Linear and embedding weights of every part but Token2Wav (kept in float32)."""
        return (
            key.endswith(".weight")
            and len(shape) == 2
            and not key.startswith("token2wav")
            and not any(n in key for n in NOT_QUANTIZED)
        )

    @staticmethod
    def sanitize(weights: Dict[str, mx.array]) -> Dict[str, mx.array]:
        """PyTorch → MLX layouts. Only called on Hugging Face checkpoints, never on our output."""
        out = {}
        for k, w in weights.items():
            if w.ndim == 3 and k.endswith(".weight") and _is_conv(k):
                # Conv1d [out, in, k] → [out, k, in]; ConvTranspose1d [in, out, k] → [out, k, in].
                w = w.transpose(1, 2, 0) if _is_transposed_conv(k) else w.transpose(0, 2, 1)
            elif k.endswith("patch_embed.proj.weight") and w.ndim == 5:
                w = w.reshape(w.shape[0], -1)  # Conv3d with kernel == stride is a Linear
            out[k] = w
        return out


def _is_transposed_conv(key: str) -> bool:
    return "code2wav_bigvgan_model.ups." in key


def _is_conv(key: str) -> bool:
    return (
        "audio_tower.conv" in key
        or "code2wav_bigvgan_model" in key
        or "spk_encoder" in key
    )
