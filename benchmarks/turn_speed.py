"""One spoken turn end to end at full Qwen2.5-Omni size (random weights, forced lengths).

The workload: a 10 s audio question, 128 reply tokens, 500 codec tokens (10 s of speech),
streamed with `stream(..., speak=True)` and a 4-bit Thinker. Each variant sets how Token2Wav
renders the stream:

- `reference`: the reference's windows (72 frames), 10-point RK4, DiT in float32, in line;
- `long`: the landed default before the overlap: 24 then 216-frame chunks, bf16 DiT, in line;
- `overlap`, `overlap48`: windows on their own stream while decoding goes on (24 or 48-frame
  first chunk);
- `rk4-6`, `fast`, `fast24`, `fastest`, `fast-inline`: cheaper ODE solvers
  (`omni_edge.models.solvers`), overlapped unless `-inline`;
- `inline48`, `overlap48-compiled`, `fastest-compiled`: A/B rows: windows in line, or each
  one-token decode step as one compiled graph (`compile_decode=True`; `--compile-decode` turns
  it on for every row). Each row records its `compile_decode`.

For each it prints the first chunk (when, and how long it is), the glitch-free start (the
earliest playback start that never stalls) and the stalls of a player that starts at 150 ms
buffered, the whole turn, the real-time
factor, Thinker and Talker tok/s and peak memory, and what the variant does to the audio: the
relative RMS difference between its streamed waveform and the offline float32 10-point
Token2Wav of the same codes and noise (random weights: a measure of drift, not of quality).
`--transformers` runs transformers' own `generate()` (bf16, Token2Wav in float32 as it
insists) on the same prompt, lengths and speaker in the same run, for the ratio.

    python benchmarks/turn_speed.py --size 3b --transformers --out benchmarks/results/turn_3b_h100.json
    python benchmarks/turn_speed.py --summarize benchmarks/results/turn_*_h100.json
"""

import argparse
import gc
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
from omni_edge.demo.tokenizer import write_standin_tokenizer
from omni_edge.loading import Voices
from omni_edge.models.omni import OmniModel
from omni_edge.processing.chat_template import OMNI_CHAT_TEMPLATE
from omni_edge.processing.prompt import Processor
from omni_edge.speech.voice import with_speech_system_prompt
from omni_edge.turn_graphs import SIZES, published_config  # 3B/7B as published, and a tiny one

VARIANTS = {  # SpeechOptions for each row
    # the reference's streaming: 72-frame windows, float32 DiT, each window in line, RK4 x 10
    "reference": dict(first_chunk_frames=None, chunk_frames=None, dit_dtype="float32",
                      overlap=False),
    # the landed default before this change: 24 then 216-frame windows, bf16 DiT, in line
    "long": dict(first_chunk_frames=24, chunk_frames=216, dit_dtype="bfloat16", overlap=False),
    # windows rendered on their own stream while decoding goes on (the default), bf16 DiT
    "overlap": dict(first_chunk_frames=24, chunk_frames=216, dit_dtype="bfloat16"),
    "overlap48": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16"),
    # cheaper ODE solvers (omni_edge.models.solvers)
    "rk4-6": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16", solver="rk4-6"),
    "fast": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16", solver="fast"),
    "fast24": dict(first_chunk_frames=24, chunk_frames=216, dit_dtype="bfloat16", solver="fast"),
    "fastest": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16",
                    solver="fastest"),
    "fast-inline": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16",
                        solver="fast", overlap=False),
    # A/B rows of the default (overlap48): windows in line, and decode steps compiled
    "inline48": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16", overlap=False),
    "overlap48-compiled": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16",
                               compile_decode=True),
    "fastest-compiled": dict(first_chunk_frames=48, chunk_frames=216, dit_dtype="bfloat16",
                             solver="fastest", compile_decode=True),
}
SPEAKER_BOS = 151870
THINKER_IDS = {  # as the published config.json writes them
    "audio_token_index": 151646, "image_token_index": 151655, "video_token_index": 151656,
    "audio_start_token_id": 151647, "audio_end_token_id": 151648,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "bos_token_id": 151644, "eos_token_id": 151645, "pad_token_id": 151643,
    "user_token_id": 872, "position_id_per_seconds": 25, "seconds_per_chunk": 2,
}
CLIP_SECONDS = 10


def config(size: str) -> dict:
    """The published config.json of `size` (turn_graphs), with the special-token ids it writes."""
    cfg = published_config(size)
    cfg["thinker_config"].update(THINKER_IDS)
    if size == "tiny":  # the stand-in tokenizer's special tokens sit at the published ids
        cfg["thinker_config"]["text_config"]["vocab_size"] = 151936
    return cfg


def voice() -> dict:
    rng = np.random.default_rng(0)
    return {"cond": rng.standard_normal((1, 192)).astype(np.float32),
            "ref_mel": (rng.standard_normal((1, 300, 80)) - 5).astype(np.float32),
            "bos_token": SPEAKER_BOS}


def processor(size: str) -> Processor:
    tok_dir = Path(tempfile.mkdtemp())
    write_standin_tokenizer(tok_dir)
    cfg = OmniConfig.from_dict(config(size)).thinker_config
    return Processor(load_tokenizer(tok_dir), OMNI_CHAT_TEMPLATE, cfg)


def build(size: str, q_bits: int) -> OmniModel:
    model = OmniModel(OmniConfig.from_dict(config(size)))
    for part in (model.thinker, model.talker):
        part.set_dtype(mx.bfloat16)
    if q_bits:
        nn.quantize(model.thinker.model, group_size=64, bits=q_bits)
        nn.quantize(model.thinker.lm_head, group_size=64, bits=q_bits)
    mx.eval(model.parameters())
    model.processor = processor(size)
    model.voices = Voices({"Chelsie": voice()})
    model.token2wav.voices = model.voices
    return model


def messages(clip):
    return [{"role": "user", "content": [{"type": "audio", "audio": clip}]}]


def turn(model, clip, text_tokens: int, codes: int, variant: dict, noise) -> dict:
    start = time.perf_counter()
    audio = []
    for event in stream(model, messages(clip), speak=True, max_tokens=text_tokens,
                        max_codec_tokens=codes, min_codec_tokens=codes, seed=0, noise=noise,
                        **variant):
        if event.type == "audio":
            audio.append(event.audio)
        if event.type == "done":
            s = event.stats
            return {"total_s": time.perf_counter() - start, "ttft_s": s.time_to_first_token,
                    "ttfa_s": s.time_to_first_audio, "first_chunk_s": s.first_audio_seconds,
                    "glitch_free_start_s": s.glitch_free_start_s, "stalls": s.stalls,
                    "stall_s": s.stall_s, "rtf": s.real_time_factor,
                    "thinker_tok_s": s.generation_tps, "talker_tok_s": s.talker_tps,
                    "text_tokens": s.generation_tokens, "codec_tokens": s.codec_tokens,
                    "audio_s": s.audio_seconds, "peak_memory_gb": s.peak_memory_gb,
                    "_codes": event.codec_ids, "_audio": np.concatenate(audio)}


def drift(model, codes, noise, streamed: np.ndarray) -> float:
    """Relative RMS difference from the offline float32 10-point Token2Wav of the same codes."""
    t2w = model.token2wav
    t2w.set_dtype(mx.float32)
    offline = np.array(t2w(codes, "Chelsie", noise[:2 * len(codes)]))
    return float(np.sqrt(np.mean((streamed - offline) ** 2) / np.mean(offline ** 2)))


def run_ours(size: str, q_bits: int, variants, repeats: int, text_tokens: int, codes: int,
             save, compile_decode: bool = False) -> list:
    model = build(size, q_bits)
    clip = (0.3 * np.sin(np.linspace(0, 8000, 16000 * CLIP_SECONDS))).astype(np.float32)
    noise = mx.random.normal((30000, 80), key=mx.random.key(1))
    rows = []
    for name in variants:
        v = {"compile_decode": compile_decode, **VARIANTS[name]}
        model.token2wav.code2wav_dit_model.set_dtype(getattr(mx, v["dit_dtype"]))
        turn(model, clip[:16000], 8, 60, v, noise)  # warm-up: compiles this variant's kernels
        runs = [turn(model, clip, text_tokens, codes, v, noise) for _ in range(repeats)]
        best = min(runs, key=lambda r: r["total_s"])
        err = drift(model, best.pop("_codes"), noise, best.pop("_audio"))
        for r in runs:
            r.pop("_codes", None), r.pop("_audio", None)
        impl = "omni-edge compiled" if v["compile_decode"] else "omni-edge"
        rows.append({"size": size, "impl": impl, "variant": name, **v,
                     "thinker": f"{q_bits}-bit" if q_bits else "bf16", **best,
                     "audio_drift": err, "runs": runs})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), flush=True)
        save(rows[-1:])
    del model
    gc.collect()
    mx.clear_cache()
    return rows


def run_transformers(size: str, text_tokens: int, codes: int) -> dict:
    """transformers' Qwen2_5OmniForConditionalGeneration.generate on the same prompt."""
    import torch
    import transformers
    from transformers import LogitsProcessor, LogitsProcessorList, Qwen2_5OmniConfig
    from transformers import Qwen2_5OmniForConditionalGeneration

    class SpokenCodesOnly(LogitsProcessor):
        """Random weights sample any of the Talker's 8448 ids; Token2Wav reads 8194."""

        def __call__(self, input_ids, scores):
            scores[:, 8193:] = -float("inf")
            return scores

    torch.manual_seed(0)
    cfg = Qwen2_5OmniConfig(**config(size))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = Qwen2_5OmniForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    v = voice()
    model.speaker_map = {"Chelsie": {"cond": torch.tensor(v["cond"][0]),
                                     "ref_mel": torch.tensor(v["ref_mel"][0]),
                                     "bos_token": SPEAKER_BOS}}
    proc = processor(size)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    clip = (0.3 * np.sin(np.linspace(0, 8000, 16000 * CLIP_SECONDS))).astype(np.float32)

    def once(seconds: int, n_text: int, n_codes: int) -> float:
        inputs = proc.prepare(with_speech_system_prompt(messages(clip[:16000 * seconds])))
        feats = torch.tensor(inputs.audio_features[0])[None].to(dev)
        kwargs = dict(
            input_ids=torch.tensor([inputs.input_ids]).to(dev), input_features=feats,
            feature_attention_mask=torch.ones(feats.shape[0], feats.shape[2], dtype=torch.long).to(dev),
            attention_mask=torch.ones(1, len(inputs.input_ids), dtype=torch.long).to(dev),
            speaker="Chelsie", thinker_max_new_tokens=n_text, thinker_min_new_tokens=n_text,
            talker_max_new_tokens=n_codes, talker_min_new_tokens=n_codes,
            talker_logits_processor=LogitsProcessorList([SpokenCodesOnly()]))
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            ids, wav = model.generate(**kwargs)
        sync()
        return (time.perf_counter() - start, ids.shape[1] - len(inputs.input_ids),
                wav.numel() / 24000)

    once(1, 8, 60)  # warm-up
    total, n_text, audio_s = once(CLIP_SECONDS, text_tokens, codes)
    row = {"size": size, "impl": f"transformers {transformers.__version__}", "variant": "bf16",
           "total_s": total, "ttfa_s": total, "rtf": total / audio_s, "text_tokens": n_text,
           "audio_s": audio_s}
    print(json.dumps(row), flush=True)
    model = None  # free the GPU memory before the next size
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return row


def summarize(paths):
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    device = {json.loads(Path(p).read_text())["device"] for p in paths}
    print(f"device: {', '.join(sorted(device))}")
    print(f"{'size':4} {'impl':22} {'variant':10} {'total s':>8} {'1st chunk':>12} {'glitch-free':>11} "
          f"{'stalls':>11} {'RTF':>6} {'thinker':>8} {'talker':>7} {'drift':>6} {'vs tf':>6}")
    for r in rows:
        ref = next((x for x in rows if x["size"] == r["size"] and x["impl"].startswith("transformers")), None)
        ratio = f"{ref['total_s'] / r['total_s']:.1f}x" if ref else "-"
        first = f"{r['ttfa_s']:.2f}s/{r.get('first_chunk_s', 0) * 1000:.0f}ms"
        stalls = f"{r.get('stalls', 0)} ({r.get('stall_s', 0):.2f}s)" if "stalls" in r else "-"
        print(f"{r['size']:4} {r['impl']:22} {r['variant']:10} {r['total_s']:8.2f} {first:>12} "
              f"{r.get('glitch_free_start_s', r['ttfa_s']):11.2f} {stalls:>11} {r['rtf']:6.2f} "
              f"{r.get('thinker_tok_s', 0):8.1f} {r.get('talker_tok_s', 0):7.1f} "
              f"{r.get('audio_drift', float('nan')):6.3f} {ratio:>6}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", choices=sorted(SIZES))
    ap.add_argument("--variants", default="long,overlap,fast")
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--codes", type=int, default=500)
    ap.add_argument("--q-bits", type=int, default=4, choices=[0, 4, 8], help="Thinker bits (0 = bf16)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--transformers", action="store_true", help="also run transformers' generate()")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--compile-decode", action="store_true",
                    help="every row's one-token decode steps as one compiled graph")
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summarize", nargs="+", metavar="JSON")
    a = ap.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    device = a.device_name or str(mx.default_device())
    rows = []

    def save(new_rows):  # after every variant, so a run cut short keeps what it measured
        rows.extend(new_rows)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps({"device": device, "workload": {
                "audio_in_s": CLIP_SECONDS, "text_tokens": a.text_tokens, "codec_tokens": a.codes},
                "rows": rows}, indent=2))

    if a.transformers:
        try:
            save([run_transformers(a.size, a.text_tokens, a.codes)])
        except Exception as err:  # keep our rows when the reference can't run
            print(f"transformers run failed: {type(err).__name__}: {err}", flush=True)
    if not a.skip_ours:
        run_ours(a.size, a.q_bits, a.variants.split(","), a.repeats, a.text_tokens, a.codes, save,
                 compile_decode=a.compile_decode)
    if a.out:
        summarize([a.out])


if __name__ == "__main__":
    main()
