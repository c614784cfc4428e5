"""Composition of the Qwen2.5-Omni parts, with attribute names mirroring the checkpoint keys."""

import threading
import weakref
from typing import Callable, Dict, Optional

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
# Token2Wav's only quantizable layers: the DiT's transformer blocks (its embeddings, proj_out,
# which sets the DiT's compute dtype, and BigVGAN's convolutions stay in float).
TOKEN2WAV_QUANTIZABLE = "token2wav.code2wav_dit_model.transformer_blocks."
NO_SPEECH = ("this model was loaded with speech=False (no Talker, no Token2Wav), so it cannot "
             "speak; load it with omni_edge.load(path) to speak")


class OmniModel(nn.Module):
    def __init__(self, config: OmniConfig, speech: bool = True):
        super().__init__()
        self.config = config
        self.thinker = Thinker(config.thinker_config)
        # Why the model can't speak, for the error a speech request raises; None when it can.
        self.speech_error = None if speech else NO_SPEECH
        if config.has_speech and speech:
            self.talker = Talker(config.talker_config)
            self.token2wav = Token2Wav(config.token2wav_config)

    @staticmethod
    def component(key: str) -> str:
        return next(c for c in COMPONENTS + ("",) if key.startswith(c))

    @staticmethod
    def is_quantizable(key: str, shape) -> bool:
        """Linear and embedding weights of every part; in Token2Wav, the DiT's blocks only."""
        return (
            key.endswith(".weight")
            and len(shape) == 2
            and (not key.startswith("token2wav") or key.startswith(TOKEN2WAV_QUANTIZABLE))
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


class OnDemand(nn.Module):
    """Stands in for a child module (`parent.name`) until first used: then `build()` loads the
    real module, which takes its place in `parent`, so later calls go straight to it.

    With `release`, the real module is used once per call instead: the call's output is
    evaluated, `release()` frees the module's weights and the stand-in stays, so the weights
    are held only while they run (read again on the next call)."""

    def __init__(self, parent: nn.Module, name: str, build: Callable[[], nn.Module],
                 release: Optional[Callable[[], None]] = None):
        super().__init__()
        # Plain attributes, not children: the stand-in holds no parameters. The parent is held
        # weakly: a cycle would keep a dropped model's memory until the garbage collector runs.
        object.__setattr__(self, "_target", (weakref.ref(parent), name, build, threading.RLock(),
                                             release))

    def load(self) -> nn.Module:
        parent, name, build, lock, release = object.__getattribute__(self, "_target")
        parent = parent()
        if parent is None:
            raise RuntimeError(f"the model that held {name!r} is gone")
        with lock:
            current = getattr(parent, name)
            if current is self:
                current = build()
                if release is None:
                    setattr(parent, name, current)
        return current

    def __call__(self, *args, **kwargs):
        *_, lock, release = object.__getattribute__(self, "_target")
        if release is None:
            return self.load()(*args, **kwargs)
        with lock:  # one call at a time: another thread's release would zero these weights
            out = self.load()(*args, **kwargs)
            mx.eval(out)  # computed now: nothing lazy still needs the weights
            release()
        return out

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        return getattr(self.load(), key)


class SpeakerTable(nn.Module):
    """Stands in for the DiT's ECAPA encoder with the voices' encodings computed at conversion:
    a reference mel (or the all-zero mel of its length, the unconditional half) gives the stored
    encoding, so the ECAPA weights need not be loaded."""

    def __init__(self, voices: Dict[str, dict], encodings: Dict[str, mx.array]):
        super().__init__()
        entries = [(mx.array(voices[name]["ref_mel"])[0], mx.array(enc))
                   for name, enc in encodings.items()]
        mx.eval(entries)  # evaluated here: a lazy slice would need this thread's stream later
        object.__setattr__(self, "_entries", entries)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel [B, T, mel_dim] → the stored encodings [B, enc_dim]."""
        return mx.stack([self._row(mel[i]) for i in range(mel.shape[0])])

    def _row(self, mel: mx.array) -> mx.array:
        entries = object.__getattribute__(self, "_entries")
        silent = not mx.any(mel).item()
        for ref, enc in entries:
            if ref.shape != mel.shape:
                continue
            if silent:
                return enc[1]
            if mx.array_equal(ref.astype(mel.dtype), mel).item():
                return enc[0]
        raise ValueError(
            "this voice is not one of the model's own, and its speaker encoder (ECAPA) was not "
            "loaded because the voices' encodings were computed at conversion; to use another "
            "voice, load the model with omni_edge.load(path, speaker_encoder=True)")
