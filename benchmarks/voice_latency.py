"""Latency a user feels in `omni-edge chat --listen`: from the end of the user's speech to the
first sound of the reply, through the same path as the CLI (a file streamed in real time as the
microphone, Silero VAD, the endpointer, ChatSession with speech, the session's player on the
input clock as under --no-play).

The row splits it into:
- hangover: the silence that ends the turn (`--hangover-ms`, the CLI's default);
- encode+prefill: from the turn to the first reply token (log-mel, audio encoder, Thinker
  prefill: the reply's time to first token);
- first audio: from the first token to the first audio chunk (Talker hand-off and the first
  Token2Wav window);
- to sound: the rest until the first sample plays: the player waits for its jitter floor
  (150 ms), longer when the renderer's `next_in_s` says the next window is far, so playback
  never stalls (plus a 32 ms input block of resolution);
- glitch-free total: hangover + the reply's `glitch_free_start_s` (speech/timeline.py: the
  earliest playback start from the turn that never runs dry), what a player that waits just
  long enough would give.

Random weights at the published sizes (as benchmarks/turn_speed.py builds them: 4-bit Thinker,
bf16 Talker) or `--size tiny` as a quick check on a CPU. The question is espeak-ng speech (or
`--speech FILE`); lengths are forced (`--codes` of speech).

    python benchmarks/voice_latency.py --size tiny --out benchmarks/results/voice_latency_tiny_cpu.json
    python benchmarks/voice_latency.py --size 3b --speech benchmarks/results/voice_question.wav \\
        --out benchmarks/results/voice_latency_3b_h200.json

`--vad-cases` prints the VAD measurements behind the endpointer's defaults (onset, coverage and
false positives of Silero and of an energy threshold on espeak-ng speech in noise, longest pause
inside a sentence); `--echo-cases` the echo canceller's (a reply leaking back into the
microphone, with and without a user talking over it).
"""

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from turn_speed import build  # noqa: E402

from omni_edge.chat import ChatSession  # noqa: E402
from omni_edge.cli.chat import parse_line  # noqa: E402
from omni_edge.voice.audio_io import FileSource, VirtualPlayer  # noqa: E402
from omni_edge.voice.listener import EventLog, Listener  # noqa: E402
from omni_edge.voice.turns import BLOCK, Endpointer, SileroVAD, TurnOptions, first_speech  # noqa: E402

RATE = 16000
QUESTION = "What is the capital of France, and what is it famous for?"


def espeak(text: str, rate: int = RATE, voice: str = "en") -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: pass --speech FILE (a spoken question)")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["espeak-ng", "-v", voice, "-w", f"{d}/s.wav", text], check=True)
        audio, r = sf.read(f"{d}/s.wav", dtype="float32")
    return soxr.resample(audio, r, rate).astype(np.float32)


def noisy(audio: np.ndarray, level: float = 0.003, seed: int = 0) -> np.ndarray:
    return (audio + level * np.random.default_rng(seed).standard_normal(len(audio))).astype(np.float32)


class Recorded(ChatSession):
    """ChatSession that keeps each reply's stats."""

    def send(self, content):
        for event in super().send(content):
            if event.type == "done":
                self.stats = getattr(self, "stats", []) + [event.stats]
            yield event


def one_turn(session, speech: np.ndarray, options: TurnOptions, jitter_ms: float) -> dict:
    scene = noisy(np.concatenate([np.zeros(RATE // 2, np.float32), speech,
                                  np.zeros(RATE // 2, np.float32)]))
    with tempfile.TemporaryDirectory() as d:
        sf.write(f"{d}/mic.wav", scene, RATE)
        log = EventLog()
        listener = Listener(session, FileSource(f"{d}/mic.wav"), VirtualPlayer(jitter_ms=jitter_ms),
                            Endpointer(SileroVAD(), options), log, io.StringIO(),
                            parse_line=parse_line)
        listener.run()
    names = [e["event"] for e in log.events]
    if names.count("turn") != 1 or "reply_start" not in names:
        raise SystemExit(f"expected one turn and its reply, got {names}: is --speech one question?")
    t = {e["event"]: e["t"] for e in log.events}
    s = session.stats[-1]
    return {"hangover_s": t["turn"] - t["speech_end"], "encode_prefill_s": s.time_to_first_token,
            "first_audio_s": s.time_to_first_audio - s.time_to_first_token,
            "to_sound_s": t["reply_start"] - t["turn"] - s.time_to_first_audio,
            "total_s": t["reply_start"] - t["speech_end"],
            # the "Speech that never stalls" measure: the earliest start that never runs dry
            "glitch_free_total_s": t["turn"] - t["speech_end"] + s.glitch_free_start_s,
            "speech_in_s": len(speech) / RATE}


def latency(a) -> dict:
    speech = espeak(QUESTION) if a.speech is None else FileSource(a.speech).audio
    model = build(a.size, a.q_bits)
    options = TurnOptions(hangover_s=a.hangover_ms / 1000)
    session = Recorded(model, speak=True, max_tokens=a.text_tokens, seed=0,
                       max_codec_tokens=a.codes, min_codec_tokens=a.codes)
    list(session.send([{"type": "audio", "audio": speech, "sampling_rate": RATE}]))  # warm-up
    runs = []
    for _ in range(a.turns):
        session.reset()
        runs.append(one_turn(session, speech, options, a.jitter_ms))
        print(json.dumps({k: round(v, 3) for k, v in runs[-1].items()}), flush=True)
    row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"size": a.size, "thinker": f"{a.q_bits}-bit" if a.q_bits else "bf16",
            "hangover_ms": a.hangover_ms, "codes": a.codes, **row, "runs": runs}


def vad_cases():
    """Silero against an energy threshold on espeak-ng speech in white and brown noise."""
    speech = espeak(QUESTION)
    loud = np.flatnonzero(np.abs(speech) > 0.01 * np.abs(speech).max())
    onset, offset = RATE + loud[0], RATE + loud[-1]
    print(f"{'SNR dB':>6} {'noise':6} {'VAD':7} {'onset ms':>8} {'speech found':>12} "
          f"{'noise as speech':>15} {'CPU ms/block':>12}")
    rng = np.random.default_rng(0)
    for snr in (30, 10, 5, 0):
        for kind in ("white", "brown"):
            x = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
            n = rng.standard_normal(len(x))
            if kind == "brown":  # a fan's rumble: integrated noise, its drift removed
                n = np.cumsum(n)
                n -= np.convolve(n, np.ones(400) / 400, "same")
            x = (x + n * np.sqrt(np.mean(speech ** 2) / np.mean(n ** 2) / 10 ** (snr / 10))).astype(np.float32)
            blocks = [x[i:i + BLOCK] for i in range(0, len(x) - BLOCK + 1, BLOCK)]
            vad = SileroVAD()
            start = time.process_time()
            silero = np.array([vad(b) for b in blocks])
            cpu = (time.process_time() - start) / len(blocks) * 1000
            rms = np.array([np.sqrt(np.mean(b ** 2)) for b in blocks])
            energy = (rms > 3 * np.median(rms[:RATE // BLOCK])).astype(float)
            at = np.arange(len(blocks)) * BLOCK
            for name, p in (("silero", silero), ("energy", energy)):
                hit = first_speech(p)
                ms = (hit * BLOCK - onset) / RATE * 1000 if hit is not None else float("nan")
                inside = (p[(at >= onset) & (at < offset)] >= 0.5).mean()
                outside = (p[(at + BLOCK < onset) | (at > offset + 0.3 * RATE)] >= 0.5).mean()
                print(f"{snr:6} {kind:6} {name:7} {ms:8.0f} {inside:12.2f} {outside:15.3f} "
                      f"{cpu if name == 'silero' else 0:12.2f}")
    for text in ("Well, I was thinking, maybe we could go to the park, or the beach.",
                 "First, take the red one. Then, after that, take the blue one."):
        said, vad = noisy(espeak(text)), SileroVAD()
        p = np.array([vad(said[i:i + BLOCK]) for i in range(0, len(said) - BLOCK + 1, BLOCK)])
        idx = np.flatnonzero(p >= 0.5)
        gaps = np.diff(idx) - 1
        print(f"longest pause inside {text[:30]!r}...: {gaps.max() * BLOCK / RATE * 1000:.0f} ms")


def echo_cases():
    from omni_edge.voice.echo import EchoCanceller

    reply = espeak("Sure. The capital of France is Paris, a city on the Seine with a long "
                   "history, many museums and beautiful parks.", 24000, "en-us+f3")
    user = espeak("Stop, tell me about Germany instead.")
    print(f"{'delay ms':>8} {'gain':>5} {'echo, raw':>10} {'echo, AEC':>10} {'user found':>10}")
    for delay in (20, 80, 150):
        for gain in (0.1, 0.3, 0.6):
            found = []
            for aec, talk in ((False, False), (True, False), (True, True)):
                canceller = EchoCanceller(24000) if aec else None
                far = np.concatenate([np.zeros(24000, np.float32), reply, np.zeros(24000, np.float32)])
                far16 = soxr.resample(far, 24000, RATE).astype(np.float32)
                d = int(delay * RATE / 1000)
                mic = np.zeros(len(far16), np.float32)
                mic[d:] = gain * far16[:len(mic) - d]
                if talk:
                    mic[int(2.5 * RATE):int(2.5 * RATE) + len(user)] += user[:len(mic) - int(2.5 * RATE)]
                mic = noisy(mic, 0.002)
                out, vad, probs = [], SileroVAD(), []
                for i in range(0, len(mic) - 479, 480):  # 20 ms of microphone per call
                    if canceller:
                        canceller.played(far[i * 3 // 2:(i + 480) * 3 // 2])
                        out.append(canceller.process(mic[i:i + 480]))
                    else:
                        out.append(mic[i:i + 480])
                clean = np.concatenate(out)
                probs = [vad(clean[i:i + BLOCK]) for i in range(0, len(clean) - BLOCK + 1, BLOCK)]
                hit = first_speech(probs)
                found.append(f"{hit * BLOCK / RATE:.2f} s" if hit is not None else "never")
            print(f"{delay:8} {gain:5} {found[0]:>10} {found[1]:>10} {found[2]:>10}")
    print("(the reply starts at 1.00 s; the user at 2.50 s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", choices=["tiny", "3b", "7b"])
    ap.add_argument("--q-bits", type=int, default=4, choices=[0, 4, 8], help="Thinker bits (0 = bf16)")
    ap.add_argument("--speech", help="the spoken question (default: espeak-ng)")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--hangover-ms", type=float, default=TurnOptions.hangover_s * 1000)
    ap.add_argument("--jitter-ms", type=float, default=150)
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--codes", type=int, default=100, help="speech per reply (50 codes a second)")
    ap.add_argument("--device-name")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--vad-cases", action="store_true")
    ap.add_argument("--echo-cases", action="store_true")
    a = ap.parse_args()
    if a.vad_cases or a.echo_cases:
        return vad_cases() if a.vad_cases else echo_cases()
    import mlx.core as mx

    row = latency(a)
    print(f"{'size':5} {'thinker':7} {'hangover':>8} {'enc+prefill':>11} {'1st audio':>9} "
          f"{'to sound':>8} {'total s':>7} {'glitch-free total s':>19}")
    print(f"{row['size']:5} {row['thinker']:7} {row['hangover_s']:8.3f} {row['encode_prefill_s']:11.3f} "
          f"{row['first_audio_s']:9.3f} {row['to_sound_s']:8.3f} {row['total_s']:7.3f} "
          f"{row['glitch_free_total_s']:19.3f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": a.device_name or str(mx.default_device()),
                                     "rows": [row]}, indent=2))


if __name__ == "__main__":
    main()
