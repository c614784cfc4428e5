"""Sound in and out for the listening loop: the microphone (or a file streamed as one) as 16 kHz
mono blocks, and one output stream for the whole session."""

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf
import soxr

from ..playback import INSTALL_HINT, Player, PlaybackError

INPUT_RATE = 16000  # what the VAD and the audio encoder read
MIC_HINT = ("or pass --mic-file FILE to listen to a recording instead of the microphone")


class AudioInputError(ValueError):
    """The microphone or the --mic-file can't be used; the message names the fix."""


def import_sounddevice():
    try:
        import sounddevice
    except ImportError as e:
        raise AudioInputError(f"listening needs the sounddevice package: {INSTALL_HINT}; "
                              f"{MIC_HINT}") from e
    except OSError as e:  # sounddevice loads PortAudio when imported
        raise AudioInputError(f"sounddevice can't load the PortAudio library ({e}): "
                              f"{INSTALL_HINT}; {MIC_HINT}") from e
    return sounddevice


def describe_devices(sd) -> str:
    lines = []
    for i, d in enumerate(sd.query_devices()):
        ways = [f"{d['max_input_channels']} in"] * bool(d["max_input_channels"])
        ways += [f"{d['max_output_channels']} out"] * bool(d["max_output_channels"])
        lines.append(f"  {i}: {d['name']} ({', '.join(ways)}, {d['default_samplerate']:.0f} Hz)")
    return "\n".join(lines) or "  (none)"


def find_device(sd, name: Optional[str], kind: str) -> Optional[int]:
    """The index of the `kind` ("input"/"output") device named `name` (an index, or part of a
    name, case-insensitive); None for the system default."""
    if name is None:
        return None
    devices = list(sd.query_devices())
    key = f"max_{kind}_channels"
    if name.strip().isdigit() and int(name) < len(devices) and devices[int(name)][key]:
        return int(name)
    found = [i for i, d in enumerate(devices) if name.lower() in d["name"].lower() and d[key]]
    if len(found) == 1:
        return found[0]
    why = "matches several" if found else "matches no"
    raise AudioInputError(f"--{kind}-device {name!r} {why} {kind} device; the devices are:\n"
                          f"{describe_devices(sd)}")


class Rechunker:
    """Mixes down and resamples a stream of [frames, channels] blocks to 16 kHz mono."""

    def __init__(self, rate: float):
        self.rate = rate
        self.stream = soxr.ResampleStream(rate, INPUT_RATE, 1, dtype="float32") \
            if rate != INPUT_RATE else None

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        mono = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block.astype(np.float32)
        return self.stream.resample_chunk(mono, last=last) if self.stream else mono


class MicrophoneSource:
    """The microphone through sounddevice's blocking input stream at the device's own rate and
    channels. `read()` waits for the next ~32 ms and returns it as 16 kHz mono."""

    ended = False

    def __init__(self, device: Optional[str] = None, sd=None, read_s: float = 0.032):
        sd = sd or import_sounddevice()
        index = find_device(sd, device, "input")
        try:
            info = sd.query_devices(index, "input")
        except (ValueError, sd.PortAudioError) as e:
            raise AudioInputError(f"no microphone found ({e}); the devices are:\n"
                                  f"{describe_devices(sd)}\nplug one in, {MIC_HINT}") from e
        rate, channels = float(info["default_samplerate"]), int(info["max_input_channels"])
        self.frames = max(1, round(rate * read_s))
        self.rechunk = Rechunker(rate)
        try:
            self.stream = sd.InputStream(samplerate=rate, channels=channels, dtype="float32",
                                         device=index, latency="high")
        except sd.PortAudioError as e:
            raise AudioInputError(f"can't open the microphone {info['name']!r} ({e}); check the "
                                  f"sound settings and the app's microphone permission, {MIC_HINT}")
        self.name, self.started = info["name"], False

    def read(self) -> Optional[np.ndarray]:
        if not self.started:  # from the first read: nothing stale from the model's loading
            self.stream.start()
            self.started = True
        data, _overflowed = self.stream.read(self.frames)
        return self.rechunk(np.asarray(data))

    def close(self):
        self.stream.stop()
        self.stream.close()


def read_mic_file(path: str) -> np.ndarray:
    """The whole of `path` as 16 kHz mono float32, or a clear error."""
    p = Path(path)
    if not p.is_file():
        raise AudioInputError(f"--mic-file {path!r} " + ("is not a file" if p.exists() else
                              "does not exist") + "; pass a wav, flac, ogg or mp3 recording")
    try:
        samples, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioInputError(f"--mic-file {path!r} can't be read as audio ({e}); pass a wav, "
                              "flac, ogg or mp3 recording (convert others with ffmpeg)") from e
    if samples.size == 0:
        raise AudioInputError(f"--mic-file {path!r} holds no samples; record something first")
    if not np.isfinite(samples).all() or not np.abs(samples).max() > 0:
        raise AudioInputError(f"--mic-file {path!r} holds no audio (only silence or invalid "
                              "samples); pass a recording of speech")
    return Rechunker(rate)(samples, last=True)


class FileSource:
    """`--mic-file`: a recording streamed in real time (by `clock`), ~32 ms per `read()`; after
    its end, silence, so the session's clock keeps running while the last reply plays."""

    def __init__(self, path: str, clock=time, read_s: float = 0.032):
        self.audio = read_mic_file(path)
        self.clock, self.step = clock, round(INPUT_RATE * read_s)
        self.pos, self.start = 0, None
        self.name = path

    @property
    def ended(self) -> bool:
        return self.pos >= len(self.audio)

    def read(self) -> np.ndarray:
        if self.start is None:
            self.start = self.clock.monotonic()
        due = self.start + (self.pos + self.step) / INPUT_RATE
        wait = due - self.clock.monotonic()
        if wait > 0:
            self.clock.sleep(wait)
        block = self.audio[self.pos:self.pos + self.step]
        self.pos += self.step
        return np.pad(block, (0, self.step - len(block)))

    def close(self):
        pass


class SessionPlayer(Player):
    """One output stream for the whole session, running from the start (silence between
    replies), so the echo canceller hears every block played. `cut()` drops what is queued at
    once (barge-in); `played` counts the samples of audio that went out; `on_play(block)` sees
    every block the sound card gets, silence included."""

    def __init__(self, stream_factory: Optional[Callable] = None, device=None,
                 on_play: Optional[Callable] = None, **kwargs):
        self.played, self.epoch, self.on_play, self._flush = 0, 0, on_play, False
        if stream_factory is None and device is not None:
            def stream_factory(**kw):
                from ..playback import _open_sounddevice_stream
                return _open_sounddevice_stream(device=device, **kw)
        super().__init__(stream_factory=stream_factory, **kwargs)
        self._started = True
        self._stream.start()

    def begin(self):
        """A new reply: its start waits for the jitter floor again, until its producer says."""
        with self._lock:
            self.need_samples = self.jitter_samples

    def write_for(self, epoch: int, chunk: np.ndarray, ahead_s=None) -> bool:
        """Queue `chunk` (`ahead_s`: see Player.write) unless the reply it belongs to
        (`epoch`) was cut meanwhile."""
        with self._lock:
            if epoch != self.epoch:
                return False
            self._flush = False
        self.write(chunk, ahead_s)
        return True

    def finish(self):
        """The reply is complete: play its tail even if shorter than the jitter buffer."""
        with self._lock:
            self._flush = True

    def cut(self) -> int:
        """Stop the sound now: drop the queue; returns the samples played so far."""
        with self._lock:
            self.epoch += 1
            self._chunks.clear()
            self._queued = self._head = 0
            self._playing = False
            return self.played

    @property
    def busy(self) -> bool:
        return self._queued > 0

    def tick(self, seconds: float):
        """Called by the loop after each input block; a real sound card needs nothing."""

    def _callback(self, outdata, frames, time_info, status):
        out = outdata[:, 0]
        with self._lock:
            if not self._playing and self._queued and (self._queued >= self.need_samples
                                                       or self._flush or self._closed):
                self._playing = True
            n = self._pop_into(out) if self._playing else 0
            if self._playing and n < frames:
                self.underruns += not (self._flush or self._closed)
                self._playing = False
            self.played += n
            if self._closed and self._queued == 0:
                self._drained.set()
        outdata[n:] = 0
        if self.on_play is not None:
            self.on_play(out.copy())


class _PulledStream:
    """An output stream nobody plays: the loop pulls its blocks on the input clock."""

    def __init__(self, samplerate, callback, **_):
        self.rate, self.callback = samplerate, callback

    def pull(self, frames: int):
        self.callback(np.zeros((frames, 1), np.float32), frames, None, None)

    def start(self):
        pass

    stop = close = start


class VirtualPlayer(SessionPlayer):
    """`--no-play`: replies 'play' on the input clock, as a sound card would, so the log's
    reply_start/reply_end and barge-in during playback mean the same as with sound."""

    def __init__(self, **kwargs):
        super().__init__(stream_factory=_PulledStream, **kwargs)
        self._owed = 0.0

    def tick(self, seconds: float):
        self._owed += seconds * self.sample_rate
        frames = int(self._owed)
        self._owed -= frames
        if frames:
            self._stream.pull(frames)


def open_player(play: bool, device: Optional[str], jitter_ms: float, on_play=None,
                stream_factory=None) -> SessionPlayer:
    if not play:
        return VirtualPlayer(jitter_ms=jitter_ms)
    if stream_factory is None and device is not None:
        sd = import_sounddevice()
        try:
            device = find_device(sd, device, "output")
        except AudioInputError as e:
            raise PlaybackError(str(e)) from e
    return SessionPlayer(stream_factory=stream_factory, device=device, on_play=on_play,
                         jitter_ms=jitter_ms)
