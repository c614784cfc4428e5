"""Live speech playback: 24 kHz float32 chunks to the sound card through sounddevice, as they
arrive, behind a small jitter buffer."""

import collections
import threading
import warnings
from typing import Callable, Optional

import numpy as np

SAMPLE_RATE = 24000
DEFAULT_JITTER_MS = 150
DEFAULT_BLOCKSIZE = 0  # 0 lets PortAudio pick (possibly varying) block sizes: its advice
DRAIN_MARGIN_S = 2.0  # how long close() waits past the queued audio's own length
AHEAD_MARGIN = 1.25  # buffer this much more than the producer expects to need
INSTALL_HINT = (
    'pip install "omni-edge[voice]"; on Linux also install PortAudio (apt-get install '
    "libportaudio2), on macOS it comes with the sounddevice wheel. Or pass --no-play to "
    "skip playback and only write the wav"
)


class PlaybackError(RuntimeError):
    """Audio can't be played on this machine (no sounddevice, no PortAudio, no output device)."""


def _open_sounddevice_stream(**kwargs):
    try:
        import sounddevice
    except ImportError as e:
        raise PlaybackError(f"audio playback needs the sounddevice package: {INSTALL_HINT}") from e
    except OSError as e:  # sounddevice loads PortAudio when imported
        raise PlaybackError(f"sounddevice can't load the PortAudio library ({e}): "
                            f"{INSTALL_HINT}") from e
    try:
        return sounddevice.OutputStream(**kwargs)
    except sounddevice.PortAudioError as e:
        raise PlaybackError(f"can't open an audio output device ({e}); check the sound "
                            "settings, or pass --no-play to skip playback") from e


class Player:
    """Plays mono float32 chunks as they are written.

    Playback starts once the queued audio covers the time the producer expects until its next
    chunk (`write(chunk, ahead_s=...)`, with a margin), and never with less than `jitter_ms`
    (the floor; or at `close()` with less), so a producer that renders in windows does not
    stutter. When the queue runs dry mid-playback the sound card gets silence, `.underruns`
    counts the event, and playback resumes once that much is queued again. `stream_factory` replaces `sounddevice.OutputStream` (same
    keyword arguments; the result needs `start()`, `stop()` and `close()`)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, jitter_ms: float = DEFAULT_JITTER_MS,
                 blocksize: int = DEFAULT_BLOCKSIZE, stream_factory: Optional[Callable] = None):
        if jitter_ms < 0:
            raise ValueError(f"jitter_ms must be >= 0, got {jitter_ms}")
        self.sample_rate = sample_rate
        self.jitter_samples = max(1, round(sample_rate * jitter_ms / 1000))
        self.need_samples = self.jitter_samples  # the floor, raised by the producer's estimate
        self.underruns = 0
        self._chunks = collections.deque()
        self._head = 0  # samples of _chunks[0] already played
        self._queued = 0
        self._lock = threading.Lock()
        self._drained = threading.Event()
        self._playing = self._started = self._closed = False
        open_stream = stream_factory or _open_sounddevice_stream
        self._stream = open_stream(samplerate=sample_rate, channels=1, dtype="float32",
                                   callback=self._callback, blocksize=blocksize)

    @property
    def queued_samples(self) -> int:
        return self._queued

    @property
    def started(self) -> bool:
        return self._started

    def write(self, chunk: np.ndarray, ahead_s: Optional[float] = None):
        """Queue a mono chunk, shape (n,) or (n, 1); it is copied. `ahead_s`: the producer's
        estimate of the seconds until its next chunk (AudioChunk.next_in_s)."""
        audio = np.array(chunk, dtype=np.float32)
        if audio.ndim == 2 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.ndim != 1:
            raise ValueError(f"Player plays mono audio, shape (n,) or (n, 1); got {audio.shape}")
        with self._lock:
            if self._closed:
                raise ValueError("write() on a closed Player")
            if audio.size:
                self._chunks.append(audio)
                self._queued += audio.size
            if ahead_s is not None and ahead_s >= 0:
                self.need_samples = max(self.jitter_samples,
                                        round(ahead_s * AHEAD_MARGIN * self.sample_rate))
            start = not self._started and self._queued >= self.need_samples
            self._started |= start
        if start:
            self._stream.start()

    def close(self, wait: bool = True):
        """With `wait`, play what is queued, then stop; without, drop it and stop now."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not wait:
                self._chunks.clear()
                self._queued = self._head = 0
            remaining = self._queued
            if remaining == 0:
                self._drained.set()
            start = not self._started and remaining > 0
            self._started |= start
        try:
            if start:
                self._stream.start()
            timeout = remaining / self.sample_rate + DRAIN_MARGIN_S
            if remaining and not self._drained.wait(timeout):
                warnings.warn(f"playback stalled: {self._queued / self.sample_rate:.2f} s of "
                              "audio were not played")
            if self._started:
                self._stream.stop()
        finally:
            self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(wait=exc_type is None)  # an exception (Ctrl-C too) stops the sound at once

    def _callback(self, outdata, frames, time_info, status):
        """PortAudio's thread asks for `frames` samples: copy under a short lock, never raise."""
        out = outdata[:, 0]
        with self._lock:
            if not self._playing and (self._queued >= self.need_samples
                                      or (self._closed and self._queued)):
                self._playing = True
            n = self._pop_into(out) if self._playing else 0
            if self._playing and n < frames and not self._closed:
                self.underruns += 1
                self._playing = False
            if self._closed and self._queued == 0:
                self._drained.set()
        outdata[n:] = 0

    def _pop_into(self, out: np.ndarray) -> int:
        """Move up to len(out) queued samples into `out`; returns how many."""
        n = 0
        while n < len(out) and self._chunks:
            head = self._chunks[0]
            take = min(len(out) - n, len(head) - self._head)
            out[n:n + take] = head[self._head:self._head + take]
            n += take
            self._head += take
            if self._head == len(head):
                self._chunks.popleft()
                self._head = 0
        self._queued -= n
        return n
