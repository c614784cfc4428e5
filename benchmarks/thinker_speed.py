"""Thinker prefill/decode speed vs mlx-lm's own qwen2 model at the same dimensions.

Random full-size weights (speed does not depend on their values), lengths forced (no EOS).
Both decoders run through their own generate_step, alternating, each measured `--repeats`
times. Decode on MLX's CUDA backend is launch-bound and its speed swings between runs (60 to 150
tok/s for the same 3B model on an H100, both decoders swinging together), so each ratio is the
median over runs of ours / mlx-lm measured back to back, and the JSON keeps every run.
Prefill is the time to the first token of a `--prompt-tokens` prompt.
`--summarize FILE` reprints the table of a saved JSON.

    python benchmarks/thinker_speed.py --sizes 3b 7b --out benchmarks/results/thinker_speed.json
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step as mlx_lm_generate_step
from mlx_lm.models import qwen2

from omni_edge.config import ThinkerConfig
from omni_edge.generate import generate_step
from omni_edge.models.thinker import Thinker
from omni_edge.turn_graphs import GROUP_SIZE, TEXT, quantizable

SIZES = {  # the published thinker text configs (turn_graphs.TEXT), and a small stand-in
    "3b": TEXT["3b"], "7b": TEXT["7b"],
    "tiny": dict(vocab_size=151936, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
}
MODES = {"bf16": None, "8bit": 8, "4bit": 4}


def build(kind: str, size: str, bits):
    dims = SIZES[size]
    if kind == "omni-edge":
        text = {**dims, "rope_theta": 1e6, "rope_scaling": {"mrope_section": [16, 24, 24]}}
        if dims["hidden_size"] // dims["num_attention_heads"] != 128:
            text["rope_scaling"] = {"mrope_section": [8, 12, 12]}
        cfg = ThinkerConfig.from_dict({"text_config": text,
                                       "vision_config": {"hidden_size": 1280, "out_hidden_size": 1}})
        model = Thinker(cfg)
    else:
        args = qwen2.ModelArgs(model_type="qwen2", rms_norm_eps=1e-6, tie_word_embeddings=False, **dims)
        model = qwen2.Model(args)
    model.set_dtype(mx.bfloat16)
    if bits:  # as the turn graphs quantize (not the Thinker's 1176-wide vision patch embedding)
        nn.quantize(model, group_size=GROUP_SIZE, bits=bits, class_predicate=quantizable)
    mx.eval(model.parameters())
    return model


def run_once(kind, model, prompt, gen_tokens, compile_decode=False):
    if kind == "omni-edge":
        steps = generate_step(SimpleNamespace(thinker=model), prompt, max_tokens=gen_tokens,
                              compile_decode=compile_decode)
    else:
        steps = (t for t, _ in mlx_lm_generate_step(mx.array(prompt), model, max_tokens=gen_tokens))
    start = time.perf_counter()
    first = None
    n = 0
    for _ in steps:
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return {"prefill_tps": len(prompt) / (first - start), "decode_tps": (n - 1) / (end - first)}


def bench(size, mode, prompt_len, gen_tokens, repeats, compile_decode=False):
    prompt = mx.random.randint(0, 150000, (prompt_len,)).tolist()
    models = {k: build(k, size, MODES[mode]) for k in ("omni-edge", "mlx-lm")}
    for kind, model in models.items():  # warm-up: kernels compiled, allocator primed
        run_once(kind, model, prompt, gen_tokens, compile_decode)
    runs = {k: {"prefill_tps": [], "decode_tps": []} for k in models}
    for _ in range(repeats):
        for kind, model in models.items():
            for key, value in run_once(kind, model, prompt, gen_tokens, compile_decode).items():
                runs[kind][key].append(value)
    del models
    mx.clear_cache()
    return summarize({"size": size, "mode": mode, "prompt_tokens": prompt_len,
                      "gen_tokens": gen_tokens, "compile_decode": compile_decode, "runs": runs})


def summarize(row: dict) -> dict:
    runs = row["runs"]
    ours, ref = ({k: statistics.median(v) for k, v in runs[kind].items()} for kind in ("omni-edge", "mlx-lm"))
    paired = {k: statistics.median(a / b for a, b in zip(runs["omni-edge"][k], runs["mlx-lm"][k]))
              for k in ("prefill_tps", "decode_tps")}
    return {**row, "omni_edge": ours, "mlx_lm": ref,
            "prefill_ratio": paired["prefill_tps"], "decode_ratio": paired["decode_tps"]}


def print_row(r: dict):
    o, m = r["omni_edge"], r["mlx_lm"]
    print(f"{r['size']:5} {r['mode']:5} | {o['prefill_tps']:9.1f} / {m['prefill_tps']:9.1f} ({r['prefill_ratio']:.3f})"
          f"      | {o['decode_tps']:7.1f} / {m['decode_tps']:7.1f} ({r['decode_ratio']:.3f})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["3b", "7b"], choices=list(SIZES))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--compile-decode", action="store_true",
                    help="our one-token decode steps as one compiled graph, for the A/B")
    ap.add_argument("--device-name", default=None, help="card name for the table, e.g. 'NVIDIA H100'")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summarize", type=Path, help="reprint the table of a saved JSON and exit")
    a = ap.parse_args()
    header = f"{'size':5} {'mode':5} | {'prefill tok/s ours / mlx-lm (ratio)':36} | decode tok/s ours / mlx-lm (ratio)"
    if a.summarize:
        saved = json.loads(a.summarize.read_text())
        rows = [summarize(r) for r in saved["rows"]]
        print(f"device: {saved['device']}, mlx {saved['mlx']}\n{header}")
        for r in rows:
            print_row(r)
        if a.out:
            a.out.write_text(json.dumps({**saved, "rows": rows}, indent=2))
        return
    device = a.device_name or f"{mx.default_device()} ({platform.machine()})"
    rows = []
    print(f"device: {device}, mlx {mx.__version__}, prompt {a.prompt_tokens}, gen {a.gen_tokens}, "
          f"compiled decode {a.compile_decode}\n{header}")
    for size in a.sizes:
        for mode in a.modes:
            rows.append(bench(size, mode, a.prompt_tokens, a.gen_tokens, a.repeats,
                              a.compile_decode))
            print_row(rows[-1])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": device, "mlx": mx.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
