"""Player: every sample played once and in order, the jitter buffer, underruns, draining, and
a clear error without sounddevice. A fake output stream stands in for PortAudio: the test pulls
blocks through the callback as PortAudio's thread would."""

import sys
import threading
import time
import types

import numpy as np
import pytest

from omni_edge.playback import Player, PlaybackError

RATE = 24000
THRESHOLD = 3600  # 150 ms at 24 kHz


class FakeStream:
    def __init__(self, samplerate, channels, dtype, callback, blocksize):
        assert (samplerate, channels, dtype) == (RATE, 1, "float32")
        self.callback = callback
        self.started = self.stopped = self.closed = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def close(self):
        self.closed = True

    def pull(self, frames: int) -> np.ndarray:
        out = np.full((frames, 1), np.nan, np.float32)  # PortAudio hands over an unwritten buffer
        self.callback(out, frames, None, None)
        assert not np.isnan(out).any(), "the callback left samples unwritten"
        return out[:, 0].copy()


def make_player(**kwargs):
    streams = []

    def factory(**stream_kwargs):
        streams.append(FakeStream(**stream_kwargs))
        return streams[0]

    player = Player(stream_factory=factory, **kwargs)
    return player, streams[0]


def ramp(start: int, n: int) -> np.ndarray:
    """Distinct nonzero samples (exact in float32), so order and silence are both visible."""
    return np.arange(start, start + n, dtype=np.float32)


CHUNK_SIZES = (1, 479, 480, 4800, 24000, 7)


def test_every_sample_arrives_once_in_order_written_ahead():
    player, stream = make_player()
    signal = ramp(1, sum(CHUNK_SIZES))
    edges = np.cumsum((0,) + CHUNK_SIZES)
    for a, b in zip(edges[:-1], edges[1:]):
        player.write(signal[a:b])
    played = np.concatenate([stream.pull(441) for _ in range(len(signal) // 441 + 1)])
    np.testing.assert_array_equal(played[:len(signal)], signal)
    assert not played[len(signal):].any() and player.underruns == 1  # ran dry at the very end


def test_every_sample_arrives_once_in_order_interleaved():
    """Writes and pulls interleave with odd sizes; the only extra samples are silence."""
    player, stream = make_player()
    signal = ramp(1, sum(CHUNK_SIZES) * 2)
    sizes = CHUNK_SIZES + CHUNK_SIZES[::-1]
    edges = np.cumsum((0,) + sizes)
    played = []
    for (a, b), pull in zip(zip(edges[:-1], edges[1:]), (1, 333, 480, 1024, 7, 40000) * 2):
        player.write(signal[a:b])
        played += [stream.pull(pull), stream.pull(pull // 2 + 1)]
    closer = threading.Thread(target=player.close)
    closer.start()
    while closer.is_alive():
        played.append(stream.pull(512))
    played = np.concatenate(played)
    np.testing.assert_array_equal(played[played != 0], signal)
    assert player.underruns > 0 and stream.stopped and stream.closed


def test_playback_waits_for_the_jitter_buffer():
    player, stream = make_player()
    player.write(ramp(1, THRESHOLD - 1))
    assert not stream.started and player.queued_samples == THRESHOLD - 1
    assert not stream.pull(480).any()  # a callback before the threshold plays silence
    assert player.queued_samples == THRESHOLD - 1 and player.underruns == 0
    player.write(ramp(THRESHOLD, 1))
    assert stream.started
    np.testing.assert_array_equal(stream.pull(480), ramp(1, 480))

    player, stream = make_player(jitter_ms=50)
    player.write(ramp(1, 1199))
    assert not stream.started
    player.write(ramp(1200, 1))
    assert stream.started


def test_underrun_plays_silence_then_rebuffers():
    player, stream = make_player()
    player.write(ramp(1, THRESHOLD))
    out = stream.pull(4000)  # 400 samples short
    np.testing.assert_array_equal(out[:THRESHOLD], ramp(1, THRESHOLD))
    assert not out[THRESHOLD:].any() and player.underruns == 1
    assert not stream.pull(480).any() and player.underruns == 1  # one event, not one per block
    player.write(ramp(5000, 1000))  # below the threshold: still silent while it refills
    assert not stream.pull(480).any() and player.queued_samples == 1000
    player.write(ramp(6000, THRESHOLD))
    np.testing.assert_array_equal(stream.pull(1000), ramp(5000, 1000))
    assert player.underruns == 1


def test_close_drains_what_is_queued_below_the_threshold():
    player, stream = make_player()
    player.write(ramp(1, 1000))
    assert not stream.started
    closer = threading.Thread(target=player.close)
    closer.start()
    played = []
    for _ in range(1000):
        if not closer.is_alive():
            break
        played.append(stream.pull(256))
    closer.join(timeout=5)
    assert not closer.is_alive()
    played = np.concatenate(played)
    np.testing.assert_array_equal(played[played != 0], ramp(1, 1000))
    assert stream.started and stream.stopped and stream.closed and player.underruns == 0
    with pytest.raises(ValueError, match="closed"):
        player.write(ramp(1, 10))


def test_close_without_wait_drops_the_queue():
    player, stream = make_player()
    player.write(ramp(1, 10 * THRESHOLD))
    player.close(wait=False)  # returns without any callback having run
    assert player.queued_samples == 0 and stream.stopped and stream.closed
    assert not stream.pull(480).any()


def test_context_manager_drains_then_stops_at_an_exception():
    player, stream = make_player()
    played = []

    def pump():  # PortAudio's thread: pulls blocks until the stream is closed
        while not stream.closed:
            played.append(stream.pull(256))
            time.sleep(0.0005)

    puller = threading.Thread(target=pump)
    puller.start()
    with player:
        player.write(ramp(1, 100))
    puller.join(timeout=5)
    played = np.concatenate(played)
    np.testing.assert_array_equal(played[played != 0], ramp(1, 100))
    assert stream.stopped and stream.closed

    player, stream = make_player()
    with pytest.raises(KeyboardInterrupt), player:
        player.write(ramp(1, 10 * THRESHOLD))
        raise KeyboardInterrupt
    assert player.queued_samples == 0 and stream.closed


def test_mono_shapes():
    player, stream = make_player(jitter_ms=0)
    player.write(ramp(1, 5)[:, None])
    np.testing.assert_array_equal(stream.pull(5), ramp(1, 5))
    with pytest.raises(ValueError, match="mono"):
        player.write(np.zeros((4, 2), np.float32))


def test_missing_sounddevice_says_how_to_fix_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(PlaybackError) as err:
        Player()
    message = str(err.value)
    assert 'pip install "omni-edge[voice]"' in message
    assert "libportaudio2" in message and "--no-play" in message
    make_player()  # an injected stream never imports sounddevice


def test_missing_portaudio_says_how_to_fix_it(monkeypatch, tmp_path):
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PlaybackError, match="PortAudio library not found") as err:
        Player()
    assert "apt-get install libportaudio2" in str(err.value) and "--no-play" in str(err.value)


def test_default_stream_is_sounddevice_output_stream(monkeypatch):
    opened = []

    class PortAudioError(Exception):
        pass

    def output_stream(**kwargs):
        opened.append(FakeStream(**kwargs))
        return opened[-1]

    fake = types.SimpleNamespace(OutputStream=output_stream, PortAudioError=PortAudioError)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    player = Player(jitter_ms=0)
    player.write(ramp(1, 3))
    np.testing.assert_array_equal(opened[0].pull(3), ramp(1, 3))

    def no_device(**kwargs):
        raise PortAudioError("Error querying device -1")

    fake.OutputStream = no_device
    with pytest.raises(PlaybackError, match="Error querying device -1.*--no-play"):
        Player()


def test_playback_waits_for_what_the_producer_expects_to_need():
    """With the producer expecting its next chunk in 0.4 s, 150 ms buffered is not enough:
    playback starts once 1.25 x 0.4 s = 500 ms is queued, never below the floor."""
    player, stream = make_player(jitter_ms=150)
    player.write(ramp(1, 4800), ahead_s=0.4)  # 200 ms
    assert not stream.started
    player.write(ramp(4801, 7200), ahead_s=0.4)  # 500 ms in all
    assert stream.started
    assert np.array_equal(stream.pull(12000), ramp(1, 12000))
    player, stream = make_player(jitter_ms=150)
    player.write(ramp(1, 3600), ahead_s=0.01)  # expects little: the 150 ms floor holds
    assert stream.started


def test_negative_jitter_floor_is_an_error():
    with pytest.raises(ValueError, match="jitter_ms"):
        make_player(jitter_ms=-1)
