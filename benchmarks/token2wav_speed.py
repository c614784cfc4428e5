"""Token2Wav cost per streaming window, per solver preset, window size and dtype (random
weights at full Qwen2.5-Omni size; the 3B and 7B share one Token2Wav).

A steady-state window renders `chunk` new mel frames: the DiT samples chunk + 48 past + 24
future frames with the preset's solver, BigVGAN vocodes the 40 frames of context plus the chunk
(streaming.py). For each (dtype, preset, chunk) it prints the DiT and BigVGAN milliseconds
(median after a warm-up) and their sum, the window's cost; the window's real-time factor
(compute time / audio time; < 1 is faster than real time); the DiT's and BigVGAN's FLOP per
second of speech and the DiT's TFLOP/s achieved; and once per dtype the kernels per DiT
evaluation and per BigVGAN window, eager and compiled (graph nodes from `mx.export_to_dot`,
views left out; on this device's backend: on the CPU the fast ops (rope, attention, norms)
decompose into many nodes, on a GPU each is one kernel).

    python benchmarks/token2wav_speed.py --size tiny                      # a quick CPU check
    python benchmarks/token2wav_speed.py --size 3b --dtype float32 bfloat16 float16 \\
        --out benchmarks/results/token2wav_3b_h200.json
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from omni_edge.config import BigVGANConfig, DiTConfig, Token2WavConfig
from omni_edge.kernels import count_kernels
from omni_edge.models.dit import Conditions
from omni_edge.models.solvers import SOLVERS, flops_per_speech_second, get_solver
from omni_edge.models.token2wav import Token2Wav, token2wav_flops_per_speech_second
from omni_edge.streaming import PAST_BLOCKS, FUTURE_BLOCKS, VOCODER_CONTEXT_FRAMES

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed  # noqa: E402  (benchmarks/ is the script's own folder)

SIZES = {
    "3b": (DiTConfig(), BigVGANConfig()),
    "tiny": (DiTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                       look_ahead_layers=[1], look_backward_layers=[0, 2]),
             BigVGANConfig(upsample_initial_channel=64)),
}
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
MS_PER_FRAME = 10.0  # 100 mel frames a second


def build(size: str, dtype) -> Token2Wav:
    dit_cfg, vocoder_cfg = SIZES[size]
    model = Token2Wav(Token2WavConfig(dit_config=dit_cfg, bigvgan_config=vocoder_cfg))
    if dtype != mx.float32:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    rng = np.random.default_rng(0)
    model.voices = {"bench": {"cond": rng.standard_normal((1, 192)).astype(np.float32),
                              "ref_mel": (rng.standard_normal((1, 300, 80)) - 5).astype(np.float32)}}
    return model


def kernel_counts(model: Token2Wav, chunk: int) -> dict:
    """Kernels per DiT evaluation (a guided one, batch 2) and per BigVGAN window of `chunk`."""
    dit, vocoder = model.code2wav_dit_model, model.code2wav_bigvgan_model
    block = dit.cfg.block_size
    frames = chunk + (PAST_BLOCKS + FUTURE_BLOCKS) * block
    width = dit.input_embed.proj.weight.shape[1] - dit.cfg.mel_dim
    y, feats = mx.random.normal((1, frames, dit.cfg.mel_dim)), mx.random.normal((2, frames, width))
    t0, t1 = mx.array(0.1), mx.array(0.2)
    mel = mx.random.uniform(-11, -1, (1, dit.cfg.mel_dim, chunk + 2 * VOCODER_CONTEXT_FRAMES))
    mx.eval(y, feats, t0, t1, mel)
    dit_eager = count_kernels(dit.guided_velocity(y, t0, Conditions(feats, True), 0.5))
    dit_compiled = count_kernels(dit._compiled_step("euler", True, 0.5)(y, t0, t1, feats))
    mode = vocoder.compiled
    vocoder.compiled = True
    voc_compiled = count_kernels(vocoder(mel))
    vocoder.compiled = mode
    return {"dit_eval_eager": dit_eager, "dit_eval_compiled": dit_compiled,
            "bigvgan_window_eager": count_kernels(vocoder.forward(mel)),
            "bigvgan_window_compiled": voc_compiled}


def vocoder_ms(model: Token2Wav, chunk: int, repeats: int) -> float:
    """One BigVGAN window: 40 frames of context and the chunk (the same for every preset)."""
    mel = mx.random.uniform(-11, -1, (1, model.code2wav_dit_model.cfg.mel_dim,
                                      chunk + 2 * VOCODER_CONTEXT_FRAMES))
    mx.eval(mel)
    return 1000 * timed(lambda: mx.eval(model.code2wav_bigvgan_model(mel)), repeats)


def window(model: Token2Wav, preset: str, chunk: int, repeats: int, voc_ms: float) -> dict:
    dit = model.code2wav_dit_model
    block = dit.cfg.block_size
    frames = chunk + (PAST_BLOCKS + FUTURE_BLOCKS) * block
    solver = get_solver(preset)
    rng = np.random.default_rng(1)
    codes = mx.array(rng.integers(0, dit.cfg.num_embeds, frames // dit.cfg.repeats))
    noise = mx.array(rng.standard_normal((frames, dit.cfg.mel_dim)).astype(np.float32))
    spk = model.voices["bench"]
    cond, ref_mel = mx.array(spk["cond"]), mx.array(spk["ref_mel"])
    speaker = model.speaker_encoding("bench", solver)

    def sample():
        return model.sample_mel(codes, cond, ref_mel, noise, speaker=speaker, lazy=True,
                                solver=solver)

    dit_s = timed(lambda: mx.eval(sample()), repeats)
    window_s = dit_s + voc_ms / 1000
    flops = flops_per_speech_second(dit.cfg, solver, chunk)
    cfg = Token2WavConfig(dit_config=dit.cfg, bigvgan_config=model.code2wav_bigvgan_model.cfg)
    vocoder_flops = token2wav_flops_per_speech_second(cfg, solver, chunk)["bigvgan"]
    audio_s = chunk * MS_PER_FRAME / 1000
    return {"preset": preset, "chunk_frames": chunk, "window_frames": frames,
            "dit_evaluations": solver.evaluations, "dit_ms": 1000 * dit_s,
            "bigvgan_ms": voc_ms, "window_ms": 1000 * window_s,
            "rtf": window_s / audio_s, "dit_tflop_per_speech_s": flops / 1e12,
            "bigvgan_tflop_per_speech_s": vocoder_flops / 1e12,
            "dit_tflop_s_achieved": flops * audio_s / dit_s / 1e12}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--preset", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    ap.add_argument("--chunk-frames", nargs="+", type=int, default=[24, 72, 216])
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    block = SIZES[args.size][0].block_size
    bad = [c for c in args.chunk_frames if c < 1 or c % block]
    if bad:
        ap.error(f"--chunk-frames must be positive multiples of the DiT block ({block}); got {bad}")
    result = {"size": args.size, "device": str(mx.default_device()), "machine": platform.machine(),
              "mlx": mx.__version__, "kernels": {}, "rows": []}
    print(f"{'dtype':9s} {'preset':9s} {'chunk':>5s} {'evals':>5s} {'DiT ms':>9s} "
          f"{'BigVGAN ms':>10s} {'window ms':>9s} {'RTF':>7s} {'TFLOP/s sp':>10s} {'TFLOP/s':>8s}")
    for name in args.dtype:
        model = build(args.size, DTYPES[name])
        result["kernels"][name] = kernel_counts(model, 72)
        voc = {chunk: vocoder_ms(model, chunk, args.repeats) for chunk in args.chunk_frames}
        for preset in args.preset:
            for chunk in args.chunk_frames:
                row = {"dtype": name, **window(model, preset, chunk, args.repeats, voc[chunk])}
                result["rows"].append(row)
                print(f"{name:9s} {preset:9s} {chunk:5d} {row['dit_evaluations']:5d} "
                      f"{row['dit_ms']:9.1f} {row['bigvgan_ms']:10.1f} {row['window_ms']:9.1f} "
                      f"{row['rtf']:7.3f} {row['dit_tflop_per_speech_s']:10.2f} "
                      f"{row['dit_tflop_s_achieved']:8.3f}", flush=True)
    print("\nkernels (72-frame chunk: DiT window 144 frames, BigVGAN window 112 frames)")
    for name, k in result["kernels"].items():
        print(f"{name:9s} DiT evaluation {k['dit_eval_eager']} eager -> {k['dit_eval_compiled']} "
              f"compiled; BigVGAN window {k['bigvgan_window_eager']} -> "
              f"{k['bigvgan_window_compiled']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
