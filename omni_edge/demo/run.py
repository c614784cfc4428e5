"""`omni-edge demo`: the whole pipeline on a tiny random-weight checkpoint, offline, no torch."""

import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

DEMO_PROMPT = "Say hello to the people trying omni-edge."
DEMO_CLIP_SECONDS = 2.0


def _step(name: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"[demo] {name}: {time.perf_counter() - start:.2f} s")
    return result


def _clip() -> np.ndarray:
    """A 2 s rising tone at 44.1 kHz, standing in for a spoken question (resampled on load)."""
    t = np.arange(int(DEMO_CLIP_SECONDS * 44100)) / 44100
    return (0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t)).astype(np.float32)


def _show(result):
    s = result.stats
    ids = result.token_ids
    print(f"[demo] reply: {result.text!r}")
    print(f"[demo] token ids: {ids[:12]}{' ...' if len(ids) > 12 else ''} (random weights pick ids "
          "anywhere in the vocabulary; many have no text)")
    print(f"[demo] {s.prompt_tokens} prompt tokens at {s.prompt_tps:.0f} tok/s, {s.generation_tokens} "
          f"tokens at {s.generation_tps:.0f} tok/s, first token {s.time_to_first_token * 1000:.0f} ms, "
          f"peak memory {s.peak_memory_gb:.3f} GB")


def run_demo(directory: Optional[str] = None, max_tokens: int = 24):
    from ..convert.mlx import convert
    from ..generate import generate
    from ..loading import load
    from ..wavfile import save_wav
    from .checkpoint import write_demo_checkpoint

    print("[demo] The weights are RANDOM: text and speech are noise by design. This shows the "
          "pipeline runs end to end on this machine; use a real checkpoint for real answers.")
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="omni-edge-demo-"))
    hf_dir, mlx_dir = root / "hf-random", root / "mlx-random"
    try:
        _step(f"write a random checkpoint in the published layout ({hf_dir})",
              lambda: write_demo_checkpoint(hf_dir))
        _step(f"convert it with omni-edge convert, 4-bit ({mlx_dir})",
              lambda: convert(str(hf_dir), str(mlx_dir), quantize=True, q_bits=4,
                              q_group_size=32, force=True))
        model = _step("load", lambda: load(str(mlx_dir)))
        print(f"[demo] voices: {', '.join(model.voices) or 'none'}")
        print(f"[demo] text in, text out: {DEMO_PROMPT!r}")
        _show(generate(model, DEMO_PROMPT, max_tokens=max_tokens))
        question = [{"role": "user", "content": [
            {"type": "audio", "audio": _clip(), "sampling_rate": 44100},
            {"type": "text", "text": "What did you hear?"}]}]
        print(f"[demo] audio in ({DEMO_CLIP_SECONDS:.0f} s clip at 44.1 kHz), text out")
        _show(generate(model, question, max_tokens=max_tokens))
        print("[demo] text in, speech out (voice Chelsie)")
        spoken = generate(model, DEMO_PROMPT, max_tokens=8, speak=True, max_codec_tokens=50, seed=0)
        _show(spoken)
        wav = root / "demo-reply.wav"
        save_wav(str(wav), [spoken.audio])
        st = spoken.stats
        print(f"[demo] speech: {st.codec_tokens} codec tokens, {st.audio_seconds:.2f} s of audio -> {wav}")
        if directory is None:
            print("[demo] (the demo folder is temporary; pass --dir DIR to keep the checkpoint and wav)")
        print("[demo] done: text, audio in and speech out work. Next: omni-edge convert --hf-path "
              "Qwen/Qwen2.5-Omni-3B --mlx-path omni-3b-4bit -q")
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
