"""Streaming Token2Wav: codec ids arrive a few at a time, 24 kHz audio leaves in chunks.

The reference's 50 Hz streaming code2wav (spec §8.8; Qwen's vLLM fork `Qwen2Code2wav.fast_forward`,
vllm-omni `Qwen2_5OmniToken2WavModel.process_chunk`). Mel frames are cut into chunks of 3 DiT
blocks (72 frames). Window i samples frames [chunk start − 48, chunk end + 24) from its slice of
one shared noise buffer, with the same RK4/CFG sampler as the offline path; it only sees its
window, so its mel differs slightly from an offline run near the window edges. The chunk's
frames are then vocoded after the last 40 frames already vocoded; 20 frames (4800 samples) of
audio are dropped on each inner side, because BigVGAN near an edge of its input has not seen the
neighbours yet. Each window emits [chunk start − 20, chunk end − 20) frames of audio; the
first starts at 0 and the last runs to the end, so every sample is emitted exactly once.

A window can be queued and collected apart (`submit`, then `PendingChunk.result`), so a caller
can decode while the GPU renders it.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import mlx.core as mx
import numpy as np

from .models.solvers import Solver, get_solver
from .models.token2wav import Token2Wav

CHUNK_BLOCKS = 3  # new mel frames per window: 3 DiT blocks (72 frames)
PAST_BLOCKS = 2  # DiT context before a chunk: the look-back layers reach 2 blocks (48 frames)
FUTURE_BLOCKS = 1  # and after it: the look-ahead layer reaches 1 block (24 frames)
VOCODER_CONTEXT_FRAMES = 20  # audio this close to an inner edge of BigVGAN's input is redone
MAX_FRAMES = 30000  # the reference's noise buffer: 300 s of mel at 100 frames/s
MEL_REPEATS = 2  # the chunk rules are the reference's 50 Hz ones: 2 mel frames per code

AudioChunk = Tuple[np.ndarray, int]  # (float32 samples, index of the first one)


@dataclass
class PendingChunk:
    """A window's audio, queued for evaluation (`mx.async_eval`) but maybe not rendered yet."""

    audio: mx.array  # [samples] float32, lazily evaluated
    start_sample: int

    def result(self) -> AudioChunk:
        """Wait for the window and return (float32 samples, index of the first one)."""
        return np.array(self.audio, dtype=np.float32), self.start_sample


class StreamingToken2Wav:
    """Chunked `Token2Wav` for one utterance: `push` codec ids as the Talker makes them, get back
    the audio that is final; `finish` flushes the rest. The chunks tile the utterance: 480 samples
    per code, `start_sample` contiguous. An utterance that fits the first window (≤ first chunk +
    24 frames) is decoded in one shot and equals `Token2Wav(codes, voice, noise=noise[:N])`.

    `noise` [frames, 80] is the starting point of every frame (drawn once when None);
    `first_chunk_frames` (a multiple of the DiT block, 24) gives an earlier first chunk; every
    window keeps its full context, so it costs one more window, not accuracy. `chunk_frames`
    (default the reference's 72) sets the later chunks: a window's cost is set by its DiT call
    count, not its length, so longer chunks mean fewer windows per second of speech; the chunks
    double from the first up to it (24, 48, 96, 192, 216), so the audio already out covers
    the time the next window takes. Each window costs `dit_calls_per_window` DiT calls (batch 2
    where guided).

    `solver`: a preset name (`solvers.SOLVERS`: "reference", "fast", ...) or a `Solver`;
    `steps` / `guidance` override its own."""

    def __init__(self, model: Token2Wav, voice, noise: Optional[mx.array] = None,
                 steps: Optional[int] = None, guidance: Optional[float] = None,
                 first_chunk_frames: Optional[int] = None, max_frames: int = MAX_FRAMES,
                 chunk_frames: Optional[int] = None, solver: Union[str, Solver, None] = None):
        dit = model.code2wav_dit_model
        if dit.cfg.repeats != MEL_REPEATS:
            raise ValueError(f"streaming needs a 50 Hz codec ({MEL_REPEATS} mel frames per code); "
                             f"this DiT repeats codes {dit.cfg.repeats}x")
        self.model, self.solver = model, get_solver(solver, steps, guidance)
        spk = model.voice(voice)
        self.voice = {"cond": mx.array(spk["cond"]), "ref_mel": mx.array(spk["ref_mel"])}
        self.speaker = model.speaker_encoding(voice, self.solver)  # kept per named voice
        block = dit.cfg.block_size
        self.chunk, self.past = CHUNK_BLOCKS * block, PAST_BLOCKS * block
        self.future = FUTURE_BLOCKS * block
        self.first_chunk = _chunk_size(first_chunk_frames, self.chunk, block, "first_chunk_frames")
        self.later_chunk = _chunk_size(chunk_frames, self.chunk, block, "chunk_frames")
        self.hop = model.code2wav_bigvgan_model.samples_per_frame
        self.table = dit.text_embed.codec_embed.weight.shape[0]
        self.noise = _noise_buffer(noise, max_frames, dit.cfg.mel_dim)
        self.codes: List[int] = []
        self.window = 0  # the next window to run
        self.tail = None  # the last 2 * VOCODER_CONTEXT_FRAMES mel frames vocoded [1, 80, ≤40]
        self.emitted = 0  # samples emitted so far
        self.dit_calls = 0
        self.finished = False

    @property
    def dit_calls_per_window(self) -> int:
        return self.solver.evaluations

    @property
    def frames(self) -> int:
        return MEL_REPEATS * len(self.codes)

    def chunk_size(self, i: int) -> int:
        """Mel frames in window i's chunk: the first, then doubling up to the later size, so
        the audio already out covers the time each longer window takes."""
        if i == 0:
            return self.first_chunk
        return min(self.later_chunk, max(self.first_chunk << i, self.first_chunk))

    def chunk_start(self, i: int) -> int:
        """The first mel frame of window i's chunk."""
        return sum(self.chunk_size(j) for j in range(i))

    def push(self, codes) -> List[AudioChunk]:
        """Append codec ids; run every window whose chunk and future context are complete."""
        return [p.result() for p in self.submit(codes)]

    def finish(self) -> List[AudioChunk]:
        """Flush: the final window keeps its tail; a short utterance is decoded in one shot."""
        return [p.result() for p in self.submit(final=True)]

    def submit(self, codes=(), final: bool = False) -> List[PendingChunk]:
        """`push` (or with `final`, `finish`) without waiting: every complete window is queued
        for evaluation and returned pending; `result()` waits for it. Later windows may be
        queued before earlier ones are collected."""
        self._check_open()
        out = self._append(codes)
        if final:
            self.finished = True
            if self.codes:
                out.append(self._one_shot() if self.window == 0 else self._run_window(True))
        return out

    def _append(self, codes) -> List[PendingChunk]:
        codes = [int(c) for c in codes]
        if codes and (min(codes) < 0 or max(codes) >= self.table):
            raise ValueError(f"codec ids must lie in [0, {self.table}), got min {min(codes)} and "
                             f"max {max(codes)}; they index the DiT's codebook")
        if self.frames + MEL_REPEATS * len(codes) > self.noise.shape[0]:
            frames = self.noise.shape[0]
            raise ValueError(f"the utterance outgrew the noise buffer ({frames} frames = "
                             f"{frames // MEL_REPEATS} codes); pass a longer noise or max_frames")
        self.codes.extend(codes)
        out = []
        # Strictly more frames than the window needs, as the reference: with exactly that many
        # the utterance may end here, and then this window must be the final one.
        while self.frames > self.chunk_start(self.window + 1) + self.future:
            out.append(self._run_window(final=False))
        return out

    def _one_shot(self) -> PendingChunk:
        audio = self.model.code2wav_bigvgan_model(self._sample(0, self.frames))[0]
        return self._emit(audio)

    def _run_window(self, final: bool) -> PendingChunk:
        start = self.chunk_start(self.window)
        end = self.frames if final else self.chunk_start(self.window + 1)
        lo, hi = max(0, start - self.past), min(end + self.future, self.frames)
        mel = self._sample(lo, hi)[:, :, start - lo: end - lo]  # (1, mel_dim, end - start)
        self.window += 1
        return self._vocode(mel, final)

    def _sample(self, lo: int, hi: int) -> mx.array:
        """The DiT's mel [1, mel_dim, hi - lo] of frames [lo, hi), seeing only those frames."""
        codes = mx.array(self.codes[lo // MEL_REPEATS: hi // MEL_REPEATS])
        mel = self.model.sample_mel(codes, self.voice["cond"], self.voice["ref_mel"],
                                    self.noise[lo:hi], speaker=self.speaker, lazy=True,
                                    solver=self.solver)
        self.dit_calls += self.dit_calls_per_window
        return mel

    def _vocode(self, mel: mx.array, final: bool) -> PendingChunk:
        """Vocode the chunk after the previous tail; keep the audio no later window will redo."""
        context = 0 if self.tail is None else self.tail.shape[2]
        if self.tail is not None:
            mel = mx.concatenate([self.tail, mel], axis=2)  # (1, mel_dim, context + chunk)
        audio = self.model.code2wav_bigvgan_model(mel)[0]
        self.tail = mel[:, :, -2 * VOCODER_CONTEXT_FRAMES:]
        first = max(0, context - VOCODER_CONTEXT_FRAMES) * self.hop
        last = audio.shape[0] - (0 if final else VOCODER_CONTEXT_FRAMES * self.hop)
        return self._emit(audio[first:last])

    def _emit(self, audio: mx.array) -> PendingChunk:
        chunk = PendingChunk(audio.astype(mx.float32), self.emitted)
        mx.async_eval(*[a for a in (chunk.audio, self.tail) if a is not None])
        self.emitted += chunk.audio.shape[0]
        return chunk

    def _check_open(self):
        if self.finished:
            raise ValueError("this stream is finished; start a new StreamingToken2Wav for the "
                             "next utterance")


def _chunk_size(frames: Optional[int], default: int, block: int, name: str) -> int:
    """Chunks must start on DiT block boundaries, or the windows' blocks would not line up with
    the offline run's; and each must outlast the vocoder overlap to emit anything."""
    if frames is None:
        return default
    if frames <= 0 or frames % block or frames <= VOCODER_CONTEXT_FRAMES:
        raise ValueError(f"{name} must be a positive multiple of the DiT block ({block} frames), "
                         f"e.g. {block} or {default}; got {frames}")
    return frames


def _noise_buffer(noise, max_frames: int, mel_dim: int) -> mx.array:
    """One starting noise for the whole utterance [frames, mel_dim], drawn once when None."""
    if noise is None:
        noise = mx.random.normal((max_frames, mel_dim))
    noise = (noise if isinstance(noise, mx.array) else mx.array(noise)).astype(mx.float32)
    if noise.ndim == 3 and noise.shape[0] == 1:
        noise = noise[0]
    if noise.ndim != 2 or noise.shape[1] != mel_dim:
        raise ValueError(f"noise must be [frames, {mel_dim}] or [1, frames, {mel_dim}], "
                         f"got {list(noise.shape)}")
    mx.eval(noise)
    return noise
