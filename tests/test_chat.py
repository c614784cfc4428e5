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
from omni_edge.chat_cli import parse_line
from omni_edge.generate import generate_step
from omni_edge.loading import load
from omni_edge.speech import TalkerOptions

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_PER_CODE = 480


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from omni_edge.convert.mlx import convert
    from omni_edge.demo.checkpoint import write_demo_checkpoint

    root = tmp_path_factory.mktemp("chat")
    write_demo_checkpoint(root / "hf")
    return str(convert(str(root / "hf"), str(root / "mlx"), dtype="float32"))


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
    session = ChatSession(model, max_tokens=4, speak=True, talker=TalkerOptions(max_codec_tokens=30))
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

    def __init__(self, sample_rate):
        self.chunks, self.closed = [], False
        RecordingPlayer.made.append(self)

    def write(self, chunk):
        self.chunks.append(np.array(chunk))

    def close(self, wait=True):
        self.closed = True


def chat_args(model_dir, save=None, **kw):
    base = dict(model=model_dir, system=None, text_only=False, no_play=False, save=save,
                jitter_ms=150, voice="Chelsie", talker_temp=0.9, talker_top_k=40, talker_top_p=0.8,
                talker_repetition_penalty=1.05, max_codec_tokens=30, first_chunk_frames=None,
                chunk_frames=None, dit_dtype="float32",
                token2wav_steps=10, max_tokens=4, temp=0.0, top_p=1.0, top_k=0, min_p=0.0,
                repetition_penalty=1.0, seed=0, max_context=None, truncate=False)
    return Namespace(**{**base, **kw})


def test_chat_plays_and_saves_every_sample(model_dir, tmp_path):
    from omni_edge.chat_cli import chat

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
