"""Token2Wav (`token2wav.*`): codec codes + a voice → mel (the DiT's flow-matching sampler) →
24 kHz waveform (BigVGAN)."""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import Token2WavConfig
from .bigvgan import BigVGAN
from .dit import DiT

NUM_STEPS = 10
GUIDANCE_SCALE = 0.5
SWAY_COEFFICIENT = -1.0


class Token2Wav(nn.Module):
    """Runs in float32, as the reference does. `set_dtype(mx.bfloat16)` makes the DiT compute in
    bfloat16 (the sampler's state, time grid and CFG combination stay float32); BigVGAN keeps
    computing in float32 from bf16-rounded weights."""

    def __init__(self, cfg: Token2WavConfig):
        super().__init__()
        self.code2wav_dit_model = DiT(cfg.dit_config)
        self.code2wav_bigvgan_model = BigVGAN(cfg.bigvgan_config)

    def sample_mel(self, codes, cond, ref_mel, noise: Optional[mx.array] = None,
                   steps: int = NUM_STEPS, guidance: float = GUIDANCE_SCALE,
                   sway: float = SWAY_COEFFICIENT, speaker: Optional[mx.array] = None,
                   lazy: bool = False) -> mx.array:
        """codes [M] or [1, M], the voice's x-vector `cond` [1, D] and reference mel
        `ref_mel` [1, T, 80] → mel [1, 80, 2M] (natural log). `noise` [2M, 80] or [1, 2M, 80]
        fixes the starting point; by default it is drawn with `mx.random.normal`. `speaker`
        and `lazy` as in `DiT.sample`."""
        return self.code2wav_dit_model.sample(codes, cond, ref_mel, noise, steps, guidance, sway,
                                              speaker, lazy)

    def __call__(self, codes, voice, noise: Optional[mx.array] = None,
                 steps: int = NUM_STEPS, guidance: float = GUIDANCE_SCALE) -> mx.array:
        """The waveform [M * 480] (24 kHz, float32 in [-1, 1]) of codec ids `codes` [M] spoken
        by `voice`: a name from the model's speakers file, or a dict with "cond" and "ref_mel"."""
        spk = self.voice(voice)
        codes = mx.array(codes).reshape(-1)
        table = self.code2wav_dit_model.text_embed.codec_embed.weight.shape[0]
        if codes.size == 0:
            raise ValueError("token2wav got no codes; there is nothing to synthesize")
        if int(codes.min().item()) < 0 or int(codes.max().item()) >= table:
            raise ValueError(f"codec ids must lie in [0, {table}), got min {codes.min().item()} "
                             f"and max {codes.max().item()}; they index the DiT's codebook")
        cond, ref_mel = mx.array(spk["cond"]), mx.array(spk["ref_mel"])
        mel = self.sample_mel(codes, cond, ref_mel, noise, steps, guidance)
        return self.code2wav_bigvgan_model(mel)[0]

    def voice(self, voice) -> dict:
        if isinstance(voice, dict):
            return voice
        voices = getattr(self, "voices", {})
        if voice not in voices:
            raise ValueError(f"unknown voice {voice!r}; this model has: {', '.join(voices) or 'none'}")
        return voices[voice]
