"""Synthetic listening scenes for the voice tests: espeak-ng speech, silence and noise, a fake
sounddevice (a microphone fed from a scene, a speaker whose sound can leak back into it) and a
scripted chat session."""

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import soxr

RATE = 16000
OUT_RATE = 24000


def say(text: str, rate: int = RATE) -> np.ndarray:
    """`text` spoken by espeak-ng at `rate` Hz (float32 mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "say.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        audio, r = sf.read(path, dtype="float32")
    loud = np.flatnonzero(np.abs(audio) > 0.01 * np.abs(audio).max())
    audio = audio[loud[0]:loud[-1] + 1]  # the speech itself, without espeak's silent edges
    return soxr.resample(audio, r, rate).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def scene(*parts, noise: float = 0.003, seed: int = 0):
    """Concatenate parts (arrays, or seconds of silence); returns (audio, [(start, end)] of
    each array part in seconds) with white noise of std `noise` over all of it."""
    chunks, spans, t = [], [], 0
    for part in parts:
        a = silence(part) if isinstance(part, (int, float)) else part
        if not isinstance(part, (int, float)):
            spans.append((t / RATE, (t + len(a)) / RATE))
        chunks.append(a)
        t += len(a)
    audio = np.concatenate(chunks)
    audio = audio + noise * np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    return audio.astype(np.float32), spans


class FakeClock:
    """time.monotonic/sleep that jump instead of waiting."""

    def __init__(self):
        self.now, self.slept = 100.0, 0.0

    def monotonic(self):
        return self.now

    def sleep(self, s):
        self.now += s
        self.slept += s


class Room:
    """A fake sounddevice module: the microphone plays `mic` (at `mic_rate` with `channels`),
    the speaker's output is pulled in step with it and leaks back into the microphone `delay_s`
    later at `echo_gain` (0: headphones). `speed` times real time (a little wall time per read,
    so the reply threads keep up)."""

    class PortAudioError(Exception):
        pass

    def __init__(self, mic: np.ndarray, mic_rate: int = RATE, channels: int = 1,
                 echo_gain: float = 0.0, delay_s: float = 0.08, speed: float = 8.0, devices=None):
        self.mic = mic if mic.ndim == 2 else mic[:, None].repeat(channels, axis=1)
        self.mic_rate, self.channels, self.speed = mic_rate, channels, speed
        self.echo_gain, self.delay = echo_gain, int(delay_s * OUT_RATE)
        self.pos = 0
        self.output = None
        self.played = []  # every block the speaker was given (24 kHz)
        self.devices = devices if devices is not None else [
            {"name": "Fake Mic", "max_input_channels": channels, "max_output_channels": 0,
             "default_samplerate": mic_rate},
            {"name": "Fake Speakers", "max_input_channels": 0, "max_output_channels": 2,
             "default_samplerate": OUT_RATE}]

    def query_devices(self, device=None, kind=None):
        if kind is None:
            return self.devices
        if device is None:
            found = [d for d in self.devices if d[f"max_{kind}_channels"]]
            if not found:
                raise self.PortAudioError("Error querying device -1")
            return found[0]
        return self.devices[device]

    def InputStream(self, samplerate, channels, dtype, device=None, latency=None):
        assert (samplerate, channels, dtype) == (self.mic_rate, self.channels, "float32")
        return SimpleNamespace(start=lambda: None, stop=lambda: None, close=lambda: None,
                               read=self.read)

    def output_stream(self, samplerate, channels, dtype, callback, blocksize, **_):
        assert (samplerate, channels) == (OUT_RATE, 1)
        self.output = callback
        return SimpleNamespace(start=lambda: None, stop=lambda: None, close=lambda: None)

    def read(self, frames: int):
        time.sleep(frames / self.mic_rate / self.speed)
        block = self.mic[self.pos:self.pos + frames]
        block = np.pad(block, ((0, frames - len(block)), (0, 0)))
        self.pos += frames
        n_out = round(frames * OUT_RATE / self.mic_rate)
        if self.output is not None:
            out = np.zeros((n_out, 1), np.float32)
            self.output(out, n_out, None, None)
            self.played.append(out[:, 0].copy())
        if self.echo_gain and self.played:
            heard = np.concatenate(self.played)
            end = len(heard) - self.delay
            leak = heard[max(0, end - n_out):max(0, end)]
            leak = np.pad(leak, (n_out - len(leak), 0))
            block = block + self.echo_gain * soxr.resample(leak, OUT_RATE, self.mic_rate)[:frames, None]
        return block.astype(np.float32), False

    def sound(self) -> np.ndarray:
        return np.concatenate(self.played) if self.played else np.zeros(0, np.float32)


class ScriptedSession:
    """A ChatSession stand-in: each `send` runs `reply(content)` (a generator of events);
    it records what was sent, whether each turn's generator was closed early, and the
    `keep_heard` calls; a turn whose reply said something joins `messages`."""

    def __init__(self, reply):
        self.reply, self.sent, self.closed_early, self.messages = reply, [], [], []
        self.lock = threading.Lock()

    def send(self, content):
        self.sent.append(content)
        finished = said = False
        try:
            for event in self.reply(content):
                if not said and event.type == "text" and event.text:  # a token: the turn is kept
                    said = True
                    self.messages += [{"role": "user", "content": content},
                                      {"role": "assistant", "content": [{"type": "text", "text": ""}]}]
                yield event
            finished = True
        finally:
            self.closed_early.append(not finished)

    def keep_heard(self, samples):
        self.heard = getattr(self, "heard", []) + [samples]

    def reset(self):
        self.resets = getattr(self, "resets", 0) + 1


def text(s):
    return SimpleNamespace(type="text", text=s, token_id=0)


def audio(samples):
    return SimpleNamespace(type="audio", audio=np.asarray(samples, np.float32), start_sample=0)


def done(codes=0):
    return SimpleNamespace(type="done", codec_ids=[0] * codes, text="", token_ids=[])
