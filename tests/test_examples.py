"""Every script in examples/ runs against a tiny random checkpoint (torch-free), so none rots."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_PER_CODE = 480
LIMITS = ["--max-tokens", "4", "--max-codec-tokens", "20", "--seed", "0"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from omni_edge.convert.mlx import convert
    from omni_edge.demo.checkpoint import write_demo_checkpoint

    root = tmp_path_factory.mktemp("examples")
    write_demo_checkpoint(root / "hf")
    mlx_dir = convert(str(root / "hf"), str(root / "mlx"), quantize=True, q_bits=4, q_group_size=32)
    return str(mlx_dir)


def run_example(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)],
                          cwd=cwd, env=dict(os.environ, PYTHONPATH=path), capture_output=True,
                          text=True, timeout=120)


def check_wav(path: Path):
    data, rate = sf.read(path, dtype="float32")
    assert rate == 24000 and data.ndim == 1
    assert 0 < len(data) <= 20 * SAMPLES_PER_CODE and len(data) % SAMPLES_PER_CODE == 0
    assert np.isfinite(data).all()


def test_spoken_question(model_dir, tmp_path):
    t = np.arange(16000) / 16000  # a 1 s tone
    sf.write(tmp_path / "question.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    done = run_example("spoken_question.py", "--model", model_dir, "--audio", "question.wav",
                       "--out", "reply.wav", *LIMITS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Wrote" in done.stdout and "reply.wav" in done.stdout
    check_wav(tmp_path / "reply.wav")


def test_stream_to_wav(model_dir, tmp_path):
    done = run_example("stream_to_wav.py", "--model", model_dir, "--prompt", "Say hello.",
                       "--out", "streamed.wav", *LIMITS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Streaming" in done.stdout and "streamed.wav" in done.stdout
    check_wav(tmp_path / "streamed.wav")


def test_ask_about_image(model_dir, tmp_path):
    from PIL import Image

    Image.fromarray((np.arange(60 * 80 * 3) % 251).astype(np.uint8).reshape(60, 80, 3)).save(
        tmp_path / "photo.png")
    done = run_example("ask_about_image.py", "--model", model_dir, "--image", "photo.png",
                       "--max-tokens", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Answer: " in done.stdout


def test_ask_about_a_broken_image_says_why(model_dir, tmp_path):
    (tmp_path / "photo.png").write_bytes(b"not a png")
    done = run_example("ask_about_image.py", "--model", model_dir, "--image", "photo.png",
                       "--max-tokens", "4", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "photo.png" in done.stderr and "Traceback" not in done.stderr


def test_every_example_is_tested():
    tested = {"spoken_question.py", "stream_to_wav.py", "ask_about_image.py",
              "voice_assistant.py"}  # tests/test_voice_session.py runs it on a --mic-file
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == tested
