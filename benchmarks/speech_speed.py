"""Speech-side speed at full Qwen2.5-Omni size (random weights, forced lengths).

1. Talker decode tok/s: our Talker loop (the reference's hand-off and sampling: temperature
   0.9, top-k 40, top-p 0.8, repetition penalty 1.05; and plain greedy) against mlx-lm's own
   `qwen2` model at the 3B Talker's dimensions, greedy, same run. Stop codes are suppressed
   until `--codes` are out so every run decodes the same number of tokens.
2. Token2Wav real-time factor (compute seconds / audio seconds) for `--codes` codec tokens
   (500 = 10 s of speech), fp32 and bf16: ours vs transformers' `Qwen2_5OmniToken2WavModel`
   on the same card (CUDA when torch sees one, else CPU), same run.

    python benchmarks/speech_speed.py --codes 500 --out benchmarks/results/speech_h100.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generate_step as mlx_lm_generate_step
from mlx_lm.models import qwen2

from omni_edge.config import BigVGANConfig, DiTConfig, TalkerConfig, Token2WavConfig
from omni_edge.models.talker import Talker
from omni_edge.models.token2wav import Token2Wav
from omni_edge.options import SpeechOptions
from omni_edge.speech.talker import ThinkerTrace, talker_codes
from timing import timed  # benchmarks/ is the script's own folder

TALKER_3B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, embedding_size=2048, head_dim=64, mrope_section=[16, 16, 0])
PROMPT_ROWS = 128
REF_MEL_FRAMES = 300


def talker_model(codes: int):
    cfg = TalkerConfig(**TALKER_3B)
    talker = Talker(cfg)
    talker.set_dtype(mx.bfloat16)
    mx.eval(talker.parameters())
    E = cfg.embedding_size
    thinker = SimpleNamespace(embed=lambda ids: mx.random.normal((ids.shape[0], E)).astype(mx.bfloat16) * 0.02)
    model = SimpleNamespace(talker=talker, thinker=thinker, config=SimpleNamespace(
        token2wav_config=SimpleNamespace(dit_config=SimpleNamespace(num_embeds=8193))))
    rows = PROMPT_ROWS + codes
    trace = ThinkerTrace(list(range(PROMPT_ROWS)), mx.random.normal((rows, E)).astype(mx.bfloat16) * 0.02,
                         mx.random.normal((rows, E)).astype(mx.bfloat16), list(range(codes + 1)))
    return model, trace


def time_talker(model, trace, opts) -> float:
    first, n = None, 0
    for _ in talker_codes(model, trace, {"bos_token": 1}, opts):
        n += 1
        first = first or time.perf_counter()
    return (n - 1) / (time.perf_counter() - first)


def time_mlx_lm(model, codes: int) -> float:
    prompt = mx.random.randint(0, 8000, (PROMPT_ROWS,))
    first, n = None, 0
    for _ in mlx_lm_generate_step(prompt, model, max_tokens=codes):
        n += 1
        first = first or time.perf_counter()
    return (n - 1) / (time.perf_counter() - first)


def bench_talker(codes: int, repeats: int) -> dict:
    model, trace = talker_model(codes)
    args = qwen2.ModelArgs(model_type="qwen2", hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
                           num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
                           vocab_size=8448, tie_word_embeddings=False)
    ref = qwen2.Model(args)
    ref.set_dtype(mx.bfloat16)
    mx.eval(ref.parameters())
    sampled = SpeechOptions(max_codec_tokens=codes, min_codec_tokens=codes)
    greedy = SpeechOptions(talker_temperature=0.0, talker_repetition_penalty=1.0,
                           max_codec_tokens=codes, min_codec_tokens=codes)
    runs = {"ours_sampled": [], "ours_greedy": [], "mlx_lm_greedy": []}
    time_talker(model, trace, SpeechOptions(max_codec_tokens=16, min_codec_tokens=16))
    time_mlx_lm(ref, 16)
    for _ in range(repeats):
        runs["ours_sampled"].append(time_talker(model, trace, sampled))
        runs["ours_greedy"].append(time_talker(model, trace, greedy))
        runs["mlx_lm_greedy"].append(time_mlx_lm(ref, codes))
    med = {k: statistics.median(v) for k, v in runs.items()}
    paired = statistics.median(a / b for a, b in zip(runs["ours_greedy"], runs["mlx_lm_greedy"]))
    return {"tok_s": med, "greedy_ratio_vs_mlx_lm": paired, "runs": runs}


def token2wav_cfg() -> Token2WavConfig:
    return Token2WavConfig(dit_config=DiTConfig(), bigvgan_config=BigVGANConfig())


def ours_token2wav(dtype, codes, voice, noise):
    model = Token2Wav(token2wav_cfg())
    model.set_dtype(dtype)
    mx.eval(model.parameters())

    def run():
        mx.eval(model(codes, voice, noise=noise))

    return run


def reference_token2wav(use_bf16: bool, codes, voice, noise):
    import torch
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniToken2WavConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniToken2WavModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    model = Qwen2_5OmniToken2WavModel(Qwen2_5OmniToken2WavConfig()).to(device=device, dtype=dtype).eval()
    code = torch.tensor([codes], device=device)
    cond = torch.tensor(np.asarray(voice["cond"]), device=device, dtype=dtype)
    ref_mel = torch.tensor(np.asarray(voice["ref_mel"]), device=device, dtype=dtype)

    def run():
        with torch.no_grad():
            model(code, cond, ref_mel)
        if device == "cuda":
            torch.cuda.synchronize()

    return run, device



def bench_token2wav(n_codes: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8193, size=n_codes).tolist()
    voice = {"cond": rng.standard_normal((1, 192)).astype(np.float32),
             "ref_mel": rng.standard_normal((1, REF_MEL_FRAMES, 80)).astype(np.float32) - 5}
    noise = mx.array(rng.standard_normal((2 * n_codes, 80)).astype(np.float32))
    seconds = n_codes * 480 / 24000
    rows = {}
    for name, dtype, bf16 in (("fp32", mx.float32, False), ("bf16", mx.bfloat16, True)):
        ours = timed(ours_token2wav(dtype, codes, voice, noise), repeats)
        run, device = reference_token2wav(bf16, codes, voice, noise)
        ref = timed(run, repeats)
        rows[name] = {"ours_rtf": ours / seconds, "transformers_rtf": ref / seconds,
                      "speedup": ref / ours, "torch_device": device}
    return {"audio_seconds": seconds, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", choices=["talker", "token2wav"])
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    device = a.device_name or str(mx.default_device())
    result = {"device": device, "codes": a.codes}
    print(f"device: {device}, {a.codes} codec tokens ({a.codes * 480 / 24000:.1f} s of speech)")
    if a.skip != "talker":
        t = bench_talker(a.codes, a.repeats)
        result["talker"] = t
        tok = t["tok_s"]
        print(f"talker decode tok/s (3B dims, bf16): ours sampled {tok['ours_sampled']:.1f}, ours greedy "
              f"{tok['ours_greedy']:.1f}, mlx-lm qwen2 greedy {tok['mlx_lm_greedy']:.1f} "
              f"(paired ratio {t['greedy_ratio_vs_mlx_lm']:.3f})", flush=True)
    if a.skip != "token2wav":
        w = bench_token2wav(a.codes, a.repeats)
        result["token2wav"] = w
        for name, r in w["rows"].items():
            print(f"token2wav {name}: RTF ours {r['ours_rtf']:.3f}, transformers ({r['torch_device']}) "
                  f"{r['transformers_rtf']:.3f}, speed-up {r['speedup']:.2f}x", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
