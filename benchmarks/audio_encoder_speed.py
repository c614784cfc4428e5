"""Audio preprocessing + encoder at full Qwen2.5-Omni size: ours vs transformers, same run.

Ours: `log_mel` (numpy, on the clip itself) + the MLX `AudioEncoder`. Reference: transformers'
`WhisperFeatureExtractor` (as the Qwen processor calls it: padded to 300 s) + its
`Qwen2_5OmniAudioEncoder`, on CUDA when torch sees a GPU, else CPU. Random weights, 3B or 7B
config values (the encoder is the same except its output width). Median of `--repeats` after
one warm-up; prints a table and writes JSON.

    python benchmarks/audio_encoder_speed.py --seconds 10 60 --out benchmarks/results/audio_encoder.json
"""

import argparse
import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from omni_edge.config import AudioEncoderConfig
from omni_edge.models.audio_encoder import AudioEncoder
from omni_edge.processing.audio import log_mel
from timing import timed  # benchmarks/ is the script's own folder

SR = 16000
OUTPUT_DIM = {"3b": 2048, "7b": 3584}


def clip(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(0)
    return (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t / seconds)) + 0.05 * rng.normal(size=t.size)).astype(np.float32)



def ours(size: str, dtype):
    encoder = AudioEncoder(AudioEncoderConfig(output_dim=OUTPUT_DIM[size]))
    encoder.set_dtype(dtype)
    mx.eval(encoder.parameters())

    def run(audio):
        mx.eval(encoder([mx.array(log_mel(audio))]))

    return run


def reference(size: str, use_bf16: bool):
    import torch
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    encoder = Qwen2_5OmniAudioEncoder(Qwen2_5OmniAudioEncoderConfig(output_dim=OUTPUT_DIM[size]))
    encoder = encoder.to(device=device, dtype=dtype).eval()
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=SR, hop_length=160, n_fft=400,
                                        chunk_length=300, padding_value=0.0, dither=0.0)

    def run(audio):
        f = extractor(audio, sampling_rate=SR, padding="max_length", truncation=True,
                      return_attention_mask=True, return_tensors="pt")
        n = int(f["attention_mask"].sum())
        feats = f["input_features"][0, :, :n].to(device=device, dtype=dtype)
        with torch.no_grad():
            encoder(feats, feature_lens=torch.tensor([n], device=device),
                    aftercnn_lens=torch.tensor([(n - 1) // 2 + 1], device=device))
        if device == "cuda":
            torch.cuda.synchronize()

    return run, device


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", nargs="+", type=float, default=[10, 60])
    ap.add_argument("--size", default="3b", choices=list(OUTPUT_DIM))
    ap.add_argument("--bf16", action="store_true", help="both sides in bfloat16 (default float32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    ours_run = ours(a.size, mx.bfloat16 if a.bf16 else mx.float32)
    ref_run, ref_device = reference(a.size, a.bf16)
    device = a.device_name or str(mx.default_device())
    dtype = "bf16" if a.bf16 else "fp32"
    print(f"device: {device} (mlx {mx.default_device()}, torch {ref_device}), {a.size}, {dtype}")
    print(f"{'clip':>6} | {'ours ms':>9} | {'transformers ms':>15} | speed-up")
    rows = []
    for seconds in a.seconds:
        audio = clip(seconds)
        t_ours = timed(lambda: ours_run(audio), a.repeats)
        t_ref = timed(lambda: ref_run(audio), a.repeats)
        rows.append({"seconds": seconds, "ours_ms": t_ours * 1e3, "transformers_ms": t_ref * 1e3,
                     "speedup": t_ref / t_ours})
        print(f"{seconds:5.0f}s | {t_ours * 1e3:9.1f} | {t_ref * 1e3:15.1f} | {t_ref / t_ours:.2f}x", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": device, "size": a.size, "dtype": dtype, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
