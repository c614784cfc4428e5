"""Token2Wav (`token2wav.*`): codec codes + a voice → mel (the DiT's flow-matching sampler) →
24 kHz waveform (BigVGAN)."""

from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn

from ..config import Token2WavConfig
from .bigvgan import BigVGAN, flops_per_frame
from .dit import DiT, Memo
from .solvers import MEL_FRAMES_PER_SECOND, SOLVERS, Solver, flops_per_speech_second, get_solver

# The reference sampler's settings (the "reference" preset).
NUM_STEPS = SOLVERS["reference"].steps
GUIDANCE_SCALE = SOLVERS["reference"].guidance
SWAY_COEFFICIENT = SOLVERS["reference"].sway
VOCODER_TAIL_FRAMES = 40  # mel frames BigVGAN re-reads before each streaming chunk (streaming.py)


def token2wav_flops_per_speech_second(cfg: Token2WavConfig, solver="reference",
                                      chunk_frames: Optional[int] = 216) -> dict:
    """FLOP per second of speech of the DiT (`solvers.flops_per_speech_second`) and of BigVGAN
    (its convolutions on each chunk and the 40 frames of context before it), for streaming
    windows of `chunk_frames` new frames (None: one offline pass)."""
    dit = flops_per_speech_second(cfg.dit_config, solver, chunk_frames)
    seen = 1.0 if chunk_frames is None else (chunk_frames + VOCODER_TAIL_FRAMES) / chunk_frames
    vocoder = MEL_FRAMES_PER_SECOND * seen * flops_per_frame(cfg.bigvgan_config)
    return {"dit": dit, "bigvgan": vocoder, "total": dit + vocoder}


class Token2Wav(nn.Module):
    """Runs in float32, as the reference does. `set_dtype(mx.bfloat16)` or `mx.float16` makes
    the DiT and BigVGAN compute in that type (the sampler's state, time grid and CFG combination
    stay float32, and so do the waveform and the activations' sin²).

    `solver` (every sampling call): a preset name from `SOLVERS` or a `Solver`."""

    def __init__(self, cfg: Token2WavConfig):
        super().__init__()
        self.code2wav_dit_model = DiT(cfg.dit_config)
        self.code2wav_bigvgan_model = BigVGAN(cfg.bigvgan_config)
        self._memo = Memo()

    def sample_mel(self, codes, cond, ref_mel, noise: Optional[mx.array] = None,
                   steps: Optional[int] = None, guidance: Optional[float] = None,
                   sway: Optional[float] = None, speaker: Optional[mx.array] = None,
                   lazy: bool = False, solver: Union[str, Solver, None] = None) -> mx.array:
        """codes [M] or [1, M], the voice's x-vector `cond` [1, D] and reference mel
        `ref_mel` [1, T, 80] → mel [1, 80, 2M] (natural log). `noise` [2M, 80] or [1, 2M, 80]
        fixes the starting point; by default it is drawn with `mx.random.normal`. `steps`,
        `guidance`, `sway`, `speaker`, `lazy` and `solver` as in `DiT.sample`."""
        return self.code2wav_dit_model.sample(codes, cond, ref_mel, noise, steps, guidance, sway,
                                              speaker, lazy, solver)

    def __call__(self, codes, voice, noise: Optional[mx.array] = None,
                 steps: Optional[int] = None, guidance: Optional[float] = None,
                 solver: Union[str, Solver, None] = None) -> mx.array:
        """The waveform [M * 480] (24 kHz, float32 in [-1, 1]) of codec ids `codes` [M] spoken
        by `voice`: a name from the model's speakers file, or a dict with "cond" and "ref_mel"."""
        solver = get_solver(solver, steps, guidance)
        spk = self.voice(voice)
        codes = mx.array(codes).reshape(-1)
        table = self.code2wav_dit_model.text_embed.codec_embed.weight.shape[0]
        if codes.size == 0:
            raise ValueError("token2wav got no codes; there is nothing to synthesize")
        if int(codes.min().item()) < 0 or int(codes.max().item()) >= table:
            raise ValueError(f"codec ids must lie in [0, {table}), got min {codes.min().item()} "
                             f"and max {codes.max().item()}; they index the DiT's codebook")
        cond, ref_mel = mx.array(spk["cond"]), mx.array(spk["ref_mel"])
        speaker = self.speaker_encoding(voice, solver)
        mel = self.sample_mel(codes, cond, ref_mel, noise, speaker=speaker, solver=solver)
        return self.code2wav_bigvgan_model(mel)[0]

    def speaker_encoding(self, voice, solver: Union[str, Solver, None] = None) -> mx.array:
        """The DiT's ECAPA encoding of the voice's reference mel (doubled for guidance when the
        solver guides any step), evaluated. A named voice's is kept per (name, guidance, weights):
        it depends on nothing else, so every utterance in that voice reuses it."""
        solver = get_solver(solver)
        dit = self.code2wav_dit_model
        guided = any(solver.guided(i) for i in range(solver.intervals))
        spk = self.voice(voice)
        # Kept with what it was computed from: new weights (load_weights, set_dtype) or a new
        # voice under the same name are new arrays, and miss.
        encoder = dit.input_embed.spk_encoder  # ECAPA, or the table of stored encodings
        fc = getattr(encoder, "fc", None)
        sources = (fc.weight if fc is not None else encoder, spk["ref_mel"])
        dtype = dit.text_embed.codec_embed.weight.dtype
        key = (voice, guided, dtype) if isinstance(voice, str) else None
        hit = self._memo.speakers.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], sources)):
            return hit[1]
        ref_mel = mx.array(spk["ref_mel"])
        encoding = dit.speaker_encoding(ref_mel[None] if ref_mel.ndim == 2 else ref_mel, guided)
        encoding = encoding.astype(dtype)  # stored encodings are float32 whatever the DiT's type
        mx.eval(encoding)
        if key is not None:
            self._memo.speakers[key] = (sources, encoding)
        return encoding

    def voice(self, voice) -> dict:
        if isinstance(voice, dict):
            return voice
        voices = getattr(self, "voices", None)
        if voices is None:
            raise ValueError(f"this Token2Wav has no named voices; pass {voice!r} as a dict "
                             "with 'cond' and 'ref_mel'")
        return voices[voice]  # loading.Voices: an unknown name lists the voices
