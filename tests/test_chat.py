"""Multi-turn chat: the cache carries over (a turn feeds only its new tokens and gives what a
fresh cache over the whole history gives), interruption keeps the session usable, and
`omni-edge chat --no-play --save` streams text and speech headless."""

import io
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from omni_edge.chat import ChatSession
from omni_edge.cli.chat import parse_line
from omni_edge.decode import generate_step
from omni_edge.loading import load

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_PER_CODE = 480


@pytest.fixture(scope="module")
def model_dir(demo_model_dir):
    return demo_model_dir


@pytest.fixture(scope="module")
def model(model_dir):
    return load(model_dir)


def reply_ids(events) -> list:
    return [e for e in events if e.type == "done"][0].token_ids


def common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_second_turn_feeds_only_new_tokens_and_equals_a_fresh_cache(model):
    session = ChatSession(model, max_tokens=6)
    reply_ids(session.send("Name a river."))
    first_prompt = model.processor.prepare(session.messages[:1]).input_ids
    held = list(session.ids)
    assert held[:len(first_prompt)] == first_prompt and len(held) > len(first_prompt)
    assert session.cache[0].offset == len(held)

    second = reply_ids(session.send("And a mountain?"))
    prompt_ids = model.processor.prepare(session.messages[:-1]).input_ids
    reused = common_prefix(held, prompt_ids)
    assert reused >= len(first_prompt)  # at least the whole first turn's prompt was not re-fed
    assert session.ids[:len(prompt_ids)] == prompt_ids

    fresh = list(generate_step(model, prompt_ids, max_tokens=len(second)))
    assert second == fresh


def test_turns_accumulate_in_the_messages_and_reset_clears(model):
    session = ChatSession(model, max_tokens=3, system="Be brief.")
    list(session.send("Hi"))
    list(session.send("Again"))
    roles = [m["role"] for m in session.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    session.reset()
    assert [m["role"] for m in session.messages] == ["system"] and session.cache[0].offset == 0


def test_interrupted_turn_leaves_the_session_usable(model):
    session = ChatSession(model, max_tokens=12)
    events = session.send("Tell me a long story.")
    next(e for e in events if e.type == "text")
    events.close()  # what Ctrl-C in the CLI does
    assert session.cache[0].offset == len(session.ids)
    assert session.messages[-1]["role"] == "assistant"
    again = reply_ids(session.send("Go on."))
    assert len(again) > 0


def test_spoken_turns_keep_the_talker_rows_for_the_whole_conversation(model):
    session = ChatSession(model, max_tokens=4, speak=True, max_codec_tokens=30)
    for text in ("Hello.", "Say it again."):
        events = list(session.send(text))
        done = events[-1]
        audio = [e for e in events if e.type == "audio"]
        assert done.codec_ids and sum(len(a.audio) for a in audio) == SAMPLES_PER_CODE * len(done.codec_ids)
        assert session.rows[0].shape[0] == len(session.ids) == session.cache[0].offset


def test_parse_line():
    assert parse_line("  hello ") == ("send", [{"type": "text", "text": "hello"}])
    assert parse_line("") == ("skip", None)
    assert parse_line("/quit")[0] == "quit" and parse_line("/reset")[0] == "reset"
    assert parse_line('/audio "my clip.wav" what is this?') == ("send", [
        {"type": "audio", "audio": "my clip.wav"}, {"type": "text", "text": "what is this?"}])
    with pytest.raises(ValueError, match="needs a file"):
        parse_line("/audio")
    with pytest.raises(ValueError, match="unknown command"):
        parse_line("/dance")


class RecordingPlayer:
    made = []

    def __init__(self, sample_rate, jitter_ms):
        self.chunks, self.closed, self.underruns = [], False, 0
        RecordingPlayer.made.append(self)

    def write(self, chunk, ahead_s=None):
        assert ahead_s is not None and ahead_s >= 0  # the renderer's estimate reaches the player
        self.chunks.append(np.array(chunk))

    def close(self, wait=True):
        self.closed = True


def chat_args(model_dir, save=None, **kw):
    base = dict(model=model_dir, system=None, text_only=False, no_play=False, save=save,
                jitter_ms=150, voice="Chelsie", talker_temp=0.9, talker_top_k=40, talker_top_p=0.8,
                talker_repetition_penalty=1.05, max_codec_tokens=30, first_chunk_frames=None,
                chunk_frames=None, dit_dtype="float32",
                token2wav_steps=None, solver="reference", no_overlap=False, max_tokens=4, temp=0.0, top_p=1.0, top_k=0, min_p=0.0,
                repetition_penalty=1.0, seed=0, max_context=None, truncate=False,
                max_kv_size=None, kv_bits=None, compile_decode=False, low_memory=False)
    return Namespace(**{**base, **kw})


def test_chat_plays_and_saves_every_sample(model_dir, tmp_path):
    from omni_edge.cli.chat import chat

    RecordingPlayer.made.clear()
    out = io.StringIO()
    save = tmp_path / "session.wav"
    chat(chat_args(model_dir, save=str(save)), stdin=io.StringIO("Hello\n/bogus\nMore\n"),
         stdout=out, player_factory=RecordingPlayer)
    text = out.getvalue()
    assert "unknown command" in text and text.count("first audio after") == 2
    turns = [p for p in RecordingPlayer.made if p.chunks]
    assert len(turns) == 2 and all(p.closed for p in RecordingPlayer.made)
    played = [np.concatenate(p.chunks) for p in turns]
    saved, rate = sf.read(save, dtype="float32")
    gap = np.zeros(int(0.3 * rate), np.float32)
    np.testing.assert_array_equal(saved, np.concatenate([played[0], gap, played[1]]))


def test_cli_chat_headless_streams_text_and_saves_speech(model_dir, tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "omni_edge.cli", "chat", "--model", model_dir, "--no-play",
         "--save", "out.wav", "--max-tokens", "4", "--max-codec-tokens", "30", "--seed", "0"],
        input="Hello there\n/reset\nAnd now?\n", cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr
    assert "conversation cleared" in done.stdout and done.stdout.count("first audio after") == 2
    data, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 24000 and len(data) > 0 and np.isfinite(data).all()
    assert not list(tmp_path.glob("*.partial"))


def test_cli_chat_without_portaudio_says_how_to_fix(model_dir, tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    blocker = tmp_path / "sitecustomize.py"  # make `import sounddevice` fail as without the extra
    blocker.write_text("import sys\nsys.modules['sounddevice'] = None\n")
    done = subprocess.run(
        [sys.executable, "-m", "omni_edge.cli", "chat", "--model", model_dir],
        input="Hello\n", cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), path])))
    assert done.returncode == 2
    assert "omni-edge[voice]" in done.stderr and "--no-play" in done.stderr
    assert "Traceback" not in done.stderr


def test_cache_trim_matches_mlx_lm(model):
    """The session trims the cache when a re-rendered history diverges from what was fed."""
    session = ChatSession(model, max_tokens=3)
    list(session.send("One"))
    n = len(session.ids)
    session._trim(n - 2)
    assert session.cache[0].offset == n - 2 == len(session.ids)
    k = session.cache[0].state[0]
    assert k.shape[2] >= n - 2
    mx.eval(k)


def write_tone(path, seconds=1.0, hz=300.0):
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16000)
    return str(path)


def test_media_are_processed_once_and_a_vanished_file_is_no_error(model, tmp_path, monkeypatch):
    import omni_edge.processing.audio as audio_mod

    clip = write_tone(tmp_path / "q.wav")
    calls = []
    real = audio_mod.prepare_audio
    monkeypatch.setattr(audio_mod, "prepare_audio", lambda *a, **k: calls.append(a) or real(*a, **k))
    session = ChatSession(model, max_tokens=3)
    list(session.send([{"type": "audio", "audio": clip}, {"type": "text", "text": "What is it?"}]))
    assert len(calls) == 1
    os.remove(clip)  # the file is gone; the conversation still holds what it said
    second = reply_ids(session.send("And then?"))
    third = reply_ids(session.send("Once more."))
    assert len(calls) == 1 and second and third
    # the turns equal a fresh cache over the whole conversation (the clip's features included)
    prompt_ids = model.processor.prepare(session.messages[:-1], media=session.media).input_ids
    assert session.ids[:len(prompt_ids)] == prompt_ids


def test_talker_cache_is_reused_across_spoken_turns(model, monkeypatch):
    """A spoken second turn feeds the Talker only the rows after the first turn's prompt and
    gives the codes a Talker re-fed the whole conversation gives (greedy)."""
    from omni_edge.models.talker import Talker
    from omni_edge.speech.talker import TalkerState

    options = dict(max_tokens=4, speak=True, talker_temperature=0.0, max_codec_tokens=20, seed=0)
    fed_rows = []
    real_call = Talker.__call__

    def spy(self, x, *args, **kwargs):
        fed_rows.append(x.shape[1])
        return real_call(self, x, *args, **kwargs)

    monkeypatch.setattr(Talker, "__call__", spy)
    reused, fresh = ChatSession(model, **options), ChatSession(model, **options)
    first = [list(s.send("Hello.")) for s in (reused, fresh)]
    assert first[0][-1].codec_ids == first[1][-1].codec_ids
    held = len(reused.talker.prompt_ids)
    fresh.talker = TalkerState(model.talker.make_cache())  # forget: re-feed everything
    fed_rows.clear()
    again = list(reused.send("Say it again."))
    reused_prefill = fed_rows[0]
    fed_rows.clear()
    redo = list(fresh.send("Say it again."))
    whole_prefill = fed_rows[0]
    assert again[-1].codec_ids == redo[-1].codec_ids and again[-1].codec_ids
    assert reused_prefill == whole_prefill - held and held > 0


def test_keep_heard_cuts_the_reply_to_what_was_spoken(model):
    session = ChatSession(model, max_tokens=10, min_tokens=10, speak=True, max_codec_tokens=40,
                          min_codec_tokens=40, seed=0)
    events = list(session.send("Tell me about rivers."))
    reply = events[-1].token_ids
    assert len(reply) == 10 and len(events[-1].codec_ids) == 40
    start = session._reply_start
    session.keep_heard(13 * SAMPLES_PER_CODE + 100)  # 13 of 40 codes played: 3 of 10 tokens
    assert session.ids == session.ids[:start] + reply[:3] and len(session.ids) == start + 3
    assert session.cache[0].offset == len(session.ids) == session.rows[0].shape[0]
    text = session.messages[-1]["content"][0]["text"]
    assert text == model.processor.tokenizer.decode(reply[:3])
    assert reply_ids(session.send("Go on."))  # the next turn works from there
    with pytest.raises(ValueError, match="samples"):
        session.keep_heard(-1)


def test_long_chat_drops_oldest_turns_and_stays_bounded(model):
    import warnings

    session = ChatSession(model, max_tokens=4, max_context=160, system="Be brief.")
    offsets = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(30):
            reply_ids(session.send(f"Turn number {i}: say something."))
            offsets.append(session.cache[0].offset)
    assert session.dropped_turns > 0 and max(offsets) < 160
    assert session.messages[0]["content"][0]["text"] == "Be brief."
    assert sum("outgrew" in str(w.message) for w in caught) == 1  # said once
    with pytest.raises(ValueError, match="does not fit"):
        list(session.send("x " * 400))


def test_unknown_options_name_the_valid_ones(model):
    from omni_edge import stream

    with pytest.raises(ValueError, match="talker_temprature.*talker_temperature"):
        ChatSession(model, talker_temprature=0.5)
    with pytest.raises(ValueError, match="max_token\\b.*max_tokens"):
        list(stream(model, "hi", max_token=3))
    # talker sampling is a ChatSession option now (it used to be rejected)
    assert ChatSession(model, speak=True, talker_temperature=0.0).speech.talker_temperature == 0.0


def test_kv_cache_options(model):
    """A rotating cache keeps the session going past its size; a quantized one is refused
    clearly on heads too narrow to quantize (the demo's are 16 wide); bad values fail."""
    from omni_edge import generate, stream

    with pytest.raises(ValueError, match="16.*leave kv_bits unset"):
        generate(model, "Count to five.", max_tokens=6, kv_bits=8)
    rotating = ChatSession(model, max_tokens=4, max_kv_size=160)
    for i in range(8):
        assert reply_ids(rotating.send(f"Turn {i}, a few more words here."))
        assert rotating.cache[0].offset == len(rotating.ids) < 160
    assert rotating.dropped_turns > 0
    with pytest.raises(ValueError, match="max_kv_size=16"):
        list(stream(model, "a fairly long message " * 4, max_kv_size=16))
    with pytest.raises(ValueError, match="kv_bits"):
        ChatSession(model, kv_bits=3)
    # one long reply through a rotating cache: it keeps generating past its size
    long = generate(model, "Hi", max_tokens=90, min_tokens=90, max_kv_size=64)
    assert len(long.token_ids) == 90
