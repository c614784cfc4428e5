"""`omni-edge bench`: the measurement a user runs on their own machine. One spoken turn per
speech preset on a fixed workload (an audio question, a reply forced to a length, speech forced
to a length), warmed up first, and what a listener would hear of it."""

import platform
import time
from dataclasses import asdict
from typing import List

import mlx.core as mx
import numpy as np

from .generate import stream
from .options import SPEECH_PRESETS as PRESETS
from .options import SpeechOptions

QUESTION_RATE = 16000


def question(seconds: float) -> np.ndarray:
    """A stand-in spoken question: a gliding tone with a syllable-rate envelope (its content
    does not matter; its length sets the audio encoder's and the prefill's work)."""
    t = np.arange(int(QUESTION_RATE * seconds)) / QUESTION_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * (180 + 40 * np.sin(t)) * t)).astype(np.float32)


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "mlx": getattr(mx, "__version__", "?"), "device": str(mx.default_device())}
    if platform.system() == "Darwin":
        import subprocess

        done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                              text=True)
        info["chip"] = done.stdout.strip() or info["processor"]
        info["memory_gb"] = round(int(subprocess.run(["sysctl", "-n", "hw.memsize"],
                                                     capture_output=True, text=True).stdout or 0)
                                  / 2**30, 1)
    return info


def one_turn(model, clip: np.ndarray, speech: SpeechOptions, text_tokens: int, codes: int) -> dict:
    messages = [{"role": "user", "content": [{"type": "audio", "audio": clip,
                                              "sampling_rate": QUESTION_RATE}]}]
    start = time.perf_counter()
    for event in stream(model, messages, speak=True, speech=speech, max_tokens=text_tokens,
                        min_tokens=text_tokens, max_codec_tokens=codes, min_codec_tokens=codes,
                        seed=0):
        if event.type == "done":
            s = event.stats
            return {"turn_s": time.perf_counter() - start, "first_chunk_s": s.time_to_first_audio,
                    "first_chunk_audio_s": s.first_audio_seconds,
                    "glitch_free_start_s": s.glitch_free_start_s, "stalls": s.stalls,
                    "stall_s": s.stall_s, "player_start_s": s.player_start_s,
                    "player_stalls": s.player_stalls, "rtf": s.real_time_factor,
                    "thinker_tok_s": s.generation_tps, "talker_tok_s": s.talker_tps,
                    "text_tokens": s.generation_tokens, "codec_tokens": s.codec_tokens,
                    "audio_s": s.audio_seconds, "peak_memory_gb": s.peak_memory_gb}
    raise AssertionError("stream() ended without a Done event")


def check(presets: List[str], audio_seconds: float, text_tokens: int, codes: int, repeats: int):
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise ValueError(f"unknown preset(s) {', '.join(unknown) or '(none given)'}; presets "
                         f"are {', '.join(PRESETS)}")
    for name, value in (("audio_seconds", audio_seconds), ("text_tokens", text_tokens),
                        ("codes", codes), ("repeats", repeats)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def bench(model, presets: List[str], audio_seconds: float = 10.0, text_tokens: int = 128,
          codes: int = 500, repeats: int = 2, progress=print) -> List[dict]:
    """For each preset: a short warm-up turn (kernels are compiled on first use), then the best
    of `repeats` timed turns."""
    check(presets, audio_seconds, text_tokens, codes, repeats)
    clip = question(audio_seconds)
    rows = []
    for name in presets:
        speech = PRESETS[name]
        progress(f"[bench] {name}: warm-up")
        one_turn(model, clip[:QUESTION_RATE], speech, min(8, text_tokens), min(60, codes))
        runs = []
        for i in range(repeats):
            runs.append(one_turn(model, clip, speech, text_tokens, codes))
            progress(f"[bench] {name}: run {i + 1}/{repeats}: {runs[-1]['turn_s']:.2f} s")
        best = min(runs, key=lambda r: r["turn_s"])
        rows.append({"preset": name, "speech": asdict(speech), **best, "runs": runs})
    return rows


def table(rows: List[dict]) -> str:
    head = ("| preset | turn s | first chunk | glitch-free start s | stalls (150 ms player) | "
            "RTF | Thinker tok/s | Talker tok/s | peak GB |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['turn_s']:.2f} | {r['first_chunk_s']:.2f} s "
                     f"({r['first_chunk_audio_s'] * 1000:.0f} ms) | {r['glitch_free_start_s']:.2f} | "
                     f"{r['stalls']} ({r['stall_s']:.2f} s) | {r['rtf']:.2f} | "
                     f"{r['thinker_tok_s']:.1f} | {r['talker_tok_s']:.1f} | "
                     f"{r['peak_memory_gb']:.2f} |")
    return "\n".join(lines)
