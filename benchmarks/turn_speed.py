"""One spoken turn end to end at full Qwen2.5-Omni-3B size (random weights, forced lengths).

The brief's workload: a 10 s audio question, 128 reply tokens, 500 codec tokens (10 s of
speech), streamed with `stream(..., speak=True)`. Prints time to first token and to first
audio, the whole turn's time and real-time factor, Thinker and Talker tok/s and peak memory,
and writes JSON. (transformers bf16 on an H100 takes 35.8 s for this turn and plays nothing
until the end, per the project brief.)

    python benchmarks/turn_speed.py --out benchmarks/results/turn_h100.json
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.tokenizer_utils import load as load_tokenizer

from omni_edge import stream
from omni_edge.config import OmniConfig
from omni_edge.demo.tokenizer import OMNI_CHAT_TEMPLATE, write_standin_tokenizer
from omni_edge.loading import Voices
from omni_edge.models.omni import OmniModel
from omni_edge.processing.prompt import Processor

MROPE = {"type": "default", "mrope_section": [16, 24, 24]}
CONFIG_3B = {  # omni_spec.md §2, in the published layout
    "model_type": "qwen2_5_omni", "enable_audio_output": True,
    "thinker_config": {
        "text_config": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008,
                        "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
                        "rope_theta": 1e6, "rope_scaling": MROPE, "tie_word_embeddings": False},
        "audio_config": {"output_dim": 2048},
        "vision_config": {"hidden_size": 1280, "out_hidden_size": 2048},
    },
    "talker_config": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                      "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 4864,
                      "embedding_size": 2048, "rope_theta": 1e6,
                      "rope_scaling": {"type": "default", "mrope_section": [16, 16, 0]}},
    "token2wav_config": {"dit_config": {"dim": 1024, "depth": 22, "heads": 16},
                         "bigvgan_config": {}},
}


def build(q_bits):
    model = OmniModel(OmniConfig.from_dict(CONFIG_3B))
    for part in (model.thinker, model.talker):
        part.set_dtype(mx.bfloat16)
    if q_bits:
        nn.quantize(model.thinker.model, group_size=64, bits=q_bits)
        nn.quantize(model.thinker.lm_head, group_size=64, bits=q_bits)
    mx.eval(model.parameters())
    tok_dir = Path(tempfile.mkdtemp())
    write_standin_tokenizer(tok_dir)
    model.processor = Processor(load_tokenizer(tok_dir), OMNI_CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    voice = {"cond": rng.standard_normal((1, 192)).astype(np.float32),
             "ref_mel": (rng.standard_normal((1, 300, 80)) - 5).astype(np.float32), "bos_token": 151870}
    model.voices = Voices({"Chelsie": voice})
    model.token2wav.voices = model.voices
    return model


def turn(model, clip, args):
    messages = [{"role": "user", "content": [{"type": "audio", "audio": clip}]}]
    start = time.perf_counter()
    first_audio_event = None
    for event in stream(model, messages, speak=True, max_tokens=args.text_tokens,
                        max_codec_tokens=args.codes, min_codec_tokens=args.codes, seed=0):
        if event.type == "audio" and first_audio_event is None:
            first_audio_event = time.perf_counter() - start
        if event.type == "done":
            s = event.stats
            return {"total_s": time.perf_counter() - start, "ttft_s": s.time_to_first_token,
                    "ttfa_s": s.time_to_first_audio, "rtf": s.real_time_factor,
                    "thinker_tok_s": s.generation_tps, "talker_tok_s": s.talker_tps,
                    "text_tokens": s.generation_tokens, "codec_tokens": s.codec_tokens,
                    "audio_s": s.audio_seconds, "peak_memory_gb": s.peak_memory_gb}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--codes", type=int, default=500)
    ap.add_argument("--q-bits", type=int, default=0, choices=[0, 4, 8], help="quantize the Thinker")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    clip = (0.3 * np.sin(np.linspace(0, 8000, 160000))).astype(np.float32)  # 10 s at 16 kHz
    model = build(a.q_bits)
    turn(model, clip[:16000], argparse.Namespace(text_tokens=8, codes=60))  # warm-up
    runs = [turn(model, clip, a) for _ in range(a.repeats)]
    best = min(runs, key=lambda r: r["total_s"])
    device = a.device_name or str(mx.default_device())
    print(f"device: {device}; thinker {'bf16' if not a.q_bits else f'{a.q_bits}-bit'}")
    for k, v in best.items():
        print(f"  {k:15} {v:.3f}" if isinstance(v, float) else f"  {k:15} {v}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": device, "q_bits": a.q_bits, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
