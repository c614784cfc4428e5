"""A spoken chat at full Qwen2.5-Omni size (random weights): does a turn get slower as the
conversation grows? Turn 1 asks about a 10 s audio clip; turns 2..N are short text questions.
Each turn's reply is forced to the same lengths. For every turn it prints the time to the first
audio chunk, the glitch-free start, the Thinker tokens fed, and the Talker rows fed (the chat
keeps both caches, so neither should grow with the history).

    python benchmarks/chat_speed.py --size 3b --turns 10 --out benchmarks/results/chat_3b_h200.json
    python benchmarks/chat_speed.py --size tiny --turns 4      # a quick check on a CPU
"""

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from omni_edge import ChatSession
from omni_edge.models.talker import Talker

from turn_speed import CLIP_SECONDS, SIZES, build


def run(size: str, turns: int, text_tokens: int, codes: int, q_bits: int) -> list:
    model = build(size, q_bits)
    clip = (0.3 * np.sin(np.linspace(0, 8000, 16000 * CLIP_SECONDS))).astype(np.float32)
    noise = mx.random.normal((30000, 80), key=mx.random.key(1))
    options = dict(speak=True, max_tokens=text_tokens, max_codec_tokens=codes,
                   min_codec_tokens=codes, seed=0, noise=noise, dit_dtype="bfloat16")
    fed = []
    real_call = Talker.__call__

    def counting(self, x, *args, **kwargs):  # rows fed to the Talker's first call per turn
        fed.append(x.shape[1])
        return real_call(self, x, *args, **kwargs)

    Talker.__call__ = counting

    def conversation(n: int) -> list:
        chat = ChatSession(model, **options)
        rows = []
        for i in range(n):
            content = ([{"type": "audio", "audio": clip}, {"type": "text", "text": "What is this?"}]
                       if i == 0 else f"Tell me more, part {i}.")
            fed.clear()
            start = time.perf_counter()
            for event in chat.send(content):
                if event.type == "done":
                    s = event.stats
                    rows.append({"turn": i + 1, "total_s": time.perf_counter() - start,
                                 "ttfa_s": s.time_to_first_audio,
                                 "glitch_free_start_s": s.glitch_free_start_s,
                                 "stalls": s.stalls, "thinker_tokens_fed": s.prompt_tokens,
                                 "talker_rows_fed": fed[0] if fed else 0,
                                 "context_tokens": chat.cache[0].offset})
            print(json.dumps(rows[-1]), flush=True)
        return rows

    conversation(2)  # warm-up: compiles the shapes of a first and a later turn
    return conversation(turns)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", choices=sorted(SIZES))
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--codes", type=int, default=100)
    ap.add_argument("--q-bits", type=int, default=4, choices=[0, 4, 8])
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = run(a.size, a.turns, a.text_tokens, a.codes, a.q_bits)
    first, last = rows[0], rows[-1]
    print(f"\nturn 1: first audio {first['ttfa_s']:.3f} s, glitch-free {first['glitch_free_start_s']:.3f} s; "
          f"turn {last['turn']}: {last['ttfa_s']:.3f} s, {last['glitch_free_start_s']:.3f} s "
          f"(ratio {last['ttfa_s'] / first['ttfa_s']:.2f}); Talker rows fed {first['talker_rows_fed']}"
          f" -> {last['talker_rows_fed']}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": a.device_name or str(mx.default_device()),
                                     "workload": {"turns": a.turns, "text_tokens": a.text_tokens,
                                                  "codec_tokens": a.codes, "clip_s": CLIP_SECONDS},
                                     "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
