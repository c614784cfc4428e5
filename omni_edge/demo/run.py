"""`omni-edge demo`: the whole pipeline on a tiny random-weight checkpoint, offline, no torch."""

import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

DEMO_PROMPT = "Say hello to the people trying omni-edge."


def _step(name: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"[demo] {name}: {time.perf_counter() - start:.2f} s")
    return result


def run_demo(directory: Optional[str] = None, max_tokens: int = 24):
    from ..convert.mlx import convert
    from ..generate import Done, stream
    from ..loading import load
    from .checkpoint import write_demo_checkpoint

    print("[demo] The weights are RANDOM: the output is gibberish by design. This shows the "
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
        print(f"[demo] prompt: {DEMO_PROMPT!r}\n[demo] reply: ", end="")
        for event in stream(model, DEMO_PROMPT, max_tokens=max_tokens):
            if isinstance(event, Done):
                s = event.stats
                print(f"\n[demo] token ids: {event.token_ids[:12]}{' ...' if len(event.token_ids) > 12 else ''}"
                      " (random weights pick ids anywhere in the vocabulary; many have no text)")
                print(f"[demo] text: {s.prompt_tokens} prompt tokens at {s.prompt_tps:.0f} tok/s, "
                      f"{s.generation_tokens} tokens at {s.generation_tps:.0f} tok/s, "
                      f"first token {s.time_to_first_token * 1000:.0f} ms, "
                      f"peak memory {s.peak_memory_gb:.3f} GB")
            else:
                print(event.text, end="", flush=True)
        print("[demo] done: text generation works. Next: omni-edge convert --hf-path "
              "Qwen/Qwen2.5-Omni-3B --mlx-path omni-3b-4bit -q")
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
