"""Echo: through loudspeakers the microphone hears the reply. WebRTC's echo canceller (AEC3, as
livekit's AudioProcessingModule ships it, with wheels for macOS arm64 and Linux) removes it
from the microphone signal before the VAD reads it, given what the speaker played.

Measured (benchmarks/voice_latency.py --echo-cases): an espeak-ng reply mixed back into the
microphone 20-150 ms late at gain 0.1-0.6 was never taken for speech after cancellation (without
it, within 0.25 s of the reply's start), while a user talking over it was still found, 0.1-0.8 s
after they began (the louder the echo, the later). aec-audio-processing builds WebRTC from
source (no wheels), so it was not kept; speexdsp's canceller is older than AEC3."""

import collections
import threading

import numpy as np
import soxr

from .audio_io import INPUT_RATE

FRAME = INPUT_RATE // 100  # the canceller works on 10 ms frames
FULL_SCALE = 32767


def aec_available() -> bool:
    try:
        from livekit import rtc  # noqa: F401
    except ImportError:
        return False
    return True


class EchoCanceller:
    """`played(block)` (from the output thread) gives what the speaker played at `rate`;
    `process(samples)` (16 kHz microphone audio) returns the cleaned signal, in whole 10 ms
    frames (a remainder waits for the next call)."""

    def __init__(self, rate: int):
        try:
            from livekit import rtc
        except ImportError as e:
            raise ValueError('echo cancellation needs the livekit package: pip install '
                             '"omni-edge[voice]", or pass --no-aec') from e
        self.rtc = rtc
        self.apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=True,
                                             high_pass_filter=True)
        self.apm.set_stream_delay_ms(0)  # AEC3 estimates the speaker-to-microphone delay itself
        # a low-delay resampler: the reference must not arrive after its echo (soxr's HQ filter
        # delays it by ~20 ms, and the canceller then missed echoes that came back that soon)
        self.resample = soxr.ResampleStream(rate, INPUT_RATE, 1, dtype="float32", quality="LQ")
        self.pending = collections.deque()  # played blocks at `rate`, from the output thread
        self.lock = threading.Lock()
        self.far = np.zeros(0, np.float32)
        self.near = np.zeros(0, np.float32)

    def played(self, block: np.ndarray):
        with self.lock:
            self.pending.append(block)

    def _frame(self, samples: np.ndarray):
        pcm = (np.clip(samples, -1, 1) * FULL_SCALE).astype(np.int16)
        return self.rtc.AudioFrame(pcm.tobytes(), INPUT_RATE, 1, FRAME)

    def process(self, samples: np.ndarray) -> np.ndarray:
        with self.lock:
            blocks, self.pending = list(self.pending), collections.deque()
        if blocks:
            far = self.resample.resample_chunk(np.concatenate(blocks))
            self.far = np.concatenate([self.far, far])
        self.near = np.concatenate([self.near, samples.astype(np.float32)])
        n = len(self.near) // FRAME
        out = np.empty(n * FRAME, np.float32)
        for i in range(n):
            ref, self.far = self.far[:FRAME], self.far[FRAME:]
            self.apm.process_reverse_stream(self._frame(np.pad(ref, (0, FRAME - len(ref)))))
            frame = self._frame(self.near[i * FRAME:(i + 1) * FRAME])
            self.apm.process_stream(frame)
            out[i * FRAME:(i + 1) * FRAME] = np.frombuffer(bytes(frame.data), np.int16) / FULL_SCALE
        self.near = self.near[n * FRAME:]
        return out
