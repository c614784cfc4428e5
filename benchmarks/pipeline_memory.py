"""The whole pipeline at full Qwen2.5-Omni size, for memory: write a random checkpoint in the
published layout (bf16, ≤5 GB shards, as the hub ships it), convert it with each preset (time,
peak resident memory, size on disk per component), load it, run one spoken turn through the
Python API (peak memory per stage: load, prefill, decode, Token2Wav) and one through the CLI
(wall time, peak resident memory), and a 30-turn text chat (memory after every turn).

Every measurement runs in its own process, so each peak is its own. Resident memory (RSS) is
the process's; "MLX peak" is MLX's allocator (on a GPU, device memory; on Apple silicon the
same unified memory the RSS counts). Random weights: sizes and memory are real, the speech is not.

    python benchmarks/pipeline_memory.py --size tiny                      # a quick CPU check
    python benchmarks/pipeline_memory.py --size 3b --work /tmp/omni-bench \\
        --out benchmarks/results/pipeline_memory_3b_h200.json
    # a run longer than one command may take: the same --work and --out, --reuse, in parts
    python benchmarks/pipeline_memory.py --size 7b --presets q4,q4-small --reuse ...
    python benchmarks/pipeline_memory.py --size 7b --presets q4-min --reuse ...
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import turn_speed  # noqa: E402  (the published-layout configs of the other benchmarks)

GB = 1e9
SHARD_BYTES = 5 * 10**9  # the hub's shards (transformers' default max_shard_size)
CLIP_SECONDS, TEXT_TOKENS, CODES, CHAT_TURNS = 10, 128, 500, 30
CHAT_MAX_CONTEXT = 4096  # ~12 of the 30 turns fit: the rest of the chat drops its oldest turns
# A smoke test. q4-min is left out on CPU: MLX's CPU backend runs float16 quantized matmuls
# (the 8-bit DiT blocks in a float16 Token2Wav) in software, ~50x slower than float ones.
TINY_WORKLOAD = dict(clip_seconds=2, text_tokens=16, codes=60, chat_turns=5, chat_max_context=512,
                     presets="q4,q4-small")
PRESETS = ("q4", "q4-small", "q4-min")
TINY_VISION = {"hidden_size": 64, "depth": 2, "intermediate_size": 128, "num_heads": 2,
               "fullatt_block_indexes": [1]}
PARTS = {"Thinker LLM": ("thinker.model.", "thinker.lm_head."),
         "audio encoder": ("thinker.audio_tower.",), "vision encoder": ("thinker.visual.",),
         "Talker": ("talker.",),
         "ECAPA": ("token2wav.code2wav_dit_model.input_embed.spk_encoder.",),
         "Token2Wav": ("token2wav.",)}


def config(size: str) -> dict:
    cfg = turn_speed.config(size)
    if size == "tiny":
        cfg["thinker_config"]["vision_config"].update(TINY_VISION)
    return cfg


# ------------------------------------------------------------------ the random checkpoint


def _safetensors_header(names, shapes) -> bytes:
    header, offset = {}, 0
    for name in names:
        n = 2 * int(np.prod(shapes[name]))
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    return raw + b" " * (-len(raw) % 8)


def _values(name: str, shape, pool: np.ndarray, rng, cfg) -> np.ndarray:
    """bf16 bits of a tensor: norms 1, biases and snake parameters 0, weights N(0, 0.02)."""
    from omni_edge.config import OmniConfig
    from omni_edge.models.dit import default_inv_freq

    n = int(np.prod(shape))
    if name.endswith("rotary_embed.inv_freq"):
        dit = OmniConfig.from_dict(cfg).token2wav_config.dit_config
        values = np.array(default_inv_freq(dit.head_dim, dit.rope_theta), np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    if name.endswith(".bias") or ".act." in name:
        return np.zeros(n, np.uint16)
    if len(shape) == 1:
        return np.full(n, 0x3F80, np.uint16)  # 1.0
    start = int(rng.integers(0, pool.size - 1))
    return np.resize(np.roll(pool, -start), n)  # random values, reused: speed, not statistics


def write_checkpoint(size: str, out: Path) -> dict:
    """The published file layout: bf16 shards ≤5 GB + index, configs, tokenizer, spk_dict.pt."""
    from omni_edge.convert.speakers import write_torch_pickle
    from omni_edge.demo.checkpoint import GENERATION_CONFIG, PREPROCESSOR_CONFIG, published_tensor_shapes
    from omni_edge.demo.tokenizer import write_standin_tokenizer

    cfg = config(size)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    shapes = published_tensor_shapes(cfg)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).view(np.uint32) >> 16
    pool = pool.astype(np.uint16)
    shards, current, used = [], [], 0
    for name in shapes:
        n = 2 * int(np.prod(shapes[name]))
        if current and used + n > SHARD_BYTES:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += n
    shards.append(current)
    weight_map, total = {}, 0
    for i, names in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header = _safetensors_header(names, shapes)
        with open(out / filename, "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header)
            for name in names:
                f.write(_values(name, shapes[name], pool, rng, cfg).tobytes())
                weight_map[name] = filename
        total += (out / filename).stat().st_size
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    write_standin_tokenizer(out)
    voice = turn_speed.voice()
    write_torch_pickle({"Chelsie": voice, "Ethan": {**voice, "bos_token": voice["bos_token"] + 1}},
                       out / "spk_dict.pt")
    return {"seconds": time.perf_counter() - start, "gb": total / GB, "shards": len(shards),
            "largest_shard_gb": max((out / f).stat().st_size for f in set(weight_map.values())) / GB}


# ------------------------------------------------------------------ measuring


def run_measured(cmd, log: Path) -> dict:
    """Run `cmd`; its wall time, its own peak RSS, exit status and the last JSON line it printed."""
    start = time.perf_counter()
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    row = {"seconds": wall, "rc": rc, "peak_rss_gb": usage.ru_maxrss * _rss_unit() / GB}
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    if lines:
        row.update(json.loads(lines[-1]))
    if rc:
        row["error"] = log.with_suffix(".err").read_text().strip().splitlines()[-3:]
    return row


def _rss_unit() -> int:
    return 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def part_sizes(model_dir: Path) -> dict:
    from omni_edge.convert.hub import safetensors_header, weight_shards

    sizes = dict.fromkeys(PARTS, 0)
    for path, names in weight_shards(model_dir):
        header = safetensors_header(path)
        for name in names:
            part = next(p for p, prefixes in PARTS.items() if name.startswith(prefixes))
            start, end = header[name]["data_offsets"]
            sizes[part] += end - start
    return {p: n / GB for p, n in sizes.items()}


def disk_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GB


# ------------------------------------------------------------------ workers (own process)


def _self_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _rss_unit() / GB


def worker_api(model_dir: str, clip: str, text_tokens: int, codes: int,
               low_memory: bool = False, solver: str = "reference", stages: bool = True) -> dict:
    import mlx.core as mx

    import omni_edge

    mx.reset_peak_memory()
    text_only = omni_edge.load(model_dir, speech=False)
    row = {"text_only_load_gb": mx.get_active_memory() / GB}
    del text_only
    mx.clear_cache()
    mx.reset_peak_memory()
    start = time.perf_counter()
    model = omni_edge.load(model_dir, keep_encoders=not low_memory)
    row.update(load_s=time.perf_counter() - start, load_gb=mx.get_active_memory() / GB,
               load_peak_gb=mx.get_peak_memory() / GB, load_rss_gb=_self_rss_gb())
    messages = [{"role": "user", "content": [{"type": "audio", "audio": clip}]}]
    peaks = {"prefill": 0.0, "decode": 0.0, "token2wav": 0.0}
    mx.reset_peak_memory()
    first, start = True, time.perf_counter()
    for event in omni_edge.stream(model, messages, speak=True, max_tokens=text_tokens,
                                  max_codec_tokens=codes, min_codec_tokens=codes, seed=0,
                                  solver=solver):
        stage = "prefill" if first else "token2wav" if event.type == "audio" else "decode"
        first = False
        peaks[stage] = max(peaks[stage], mx.get_peak_memory() / GB)
        mx.reset_peak_memory()
        if event.type == "done":
            s = event.stats
            row.update(text_tokens=s.generation_tokens, codec_tokens=s.codec_tokens,
                       audio_s=s.audio_seconds, turn_s=time.perf_counter() - start)
    row.update({f"{k}_peak_gb": v for k, v in peaks.items()}, turn_peak_gb=max(peaks.values()))
    row.update(after_turn_gb=mx.get_active_memory() / GB, rss_gb=_self_rss_gb(),
               encoders_loaded=[n for n in ("audio_tower", "visual")
                                if type(getattr(model.thinker, n)).__name__ != "OnDemand"])
    if not low_memory and stages:  # the same stages, whatever is kept between them
        row["transient_gb"] = transients(model, clip, solver)
    return row


def transients(model, clip: str, solver: str = "reference") -> dict:
    """Each stage's own working memory (peak minus what was held before it), run alone on the
    loaded model: what a spoken turn's peak adds to the weights, stage by stage."""
    import mlx.core as mx

    from omni_edge.processing.audio import prepare_audio
    from omni_edge.streaming import StreamingToken2Wav

    def measure(fn) -> float:
        mx.eval(fn())  # warm: compiled graphs and kernels
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        out = fn()
        mx.eval(out)
        return (mx.get_peak_memory() - base) / GB

    mel = mx.array(prepare_audio(clip)[0])
    thinker = model.thinker
    tokens = mx.zeros((1, 300), dtype=mx.int32)
    dit = model.token2wav.code2wav_dit_model
    voice = model.voices[next(iter(model.voices))]
    stream = StreamingToken2Wav(model.token2wav, next(iter(model.voices)))
    codes = mx.zeros((144,), dtype=mx.int32)  # a 216-frame window with its 72 frames of context
    noise = mx.zeros((288, 80))
    window = lambda lazy=True: dit.sample(codes, mx.array(voice["cond"]),  # noqa: E731
                                          mx.array(voice["ref_mel"]), noise,
                                          speaker=stream.speaker, lazy=lazy, solver=solver)
    vocoder_mel = mx.zeros((1, 80, 256))
    return {
        "audio_encoder": measure(lambda: thinker.audio_tower([mel.astype(mx.bfloat16)])),
        "thinker_prefill_300": measure(lambda: thinker.model(thinker.embed(tokens), thinker.make_cache())),
        "dit_window_288": measure(window),
        # evaluated per solver stage (small graphs) instead of queued whole
        "dit_window_288_stepwise": measure(lambda: window(lazy=False)),
        "bigvgan_window_256": measure(lambda: model.token2wav.code2wav_bigvgan_model(vocoder_mel)),
    }


def worker_chat(model_dir: str, turns: int, max_context: int) -> dict:
    """A text chat of `turns` turns whose conversation outgrows `max_context` about a third of
    the way in: memory should climb with the KV cache, then stay flat while old turns drop."""
    import mlx.core as mx

    import omni_edge

    model = omni_edge.load(model_dir, speech=False)
    chat = omni_edge.ChatSession(model, max_tokens=32, max_context=max_context)
    active, tokens = [], []
    for i in range(turns):
        for _ in chat.send(f"Turn {i}: tell me one more thing about rivers."):
            pass
        active.append(mx.get_active_memory() / GB)
        tokens.append(chat.cache[0].offset)
    return {"turns": turns, "max_context": max_context, "dropped_turns": chat.dropped_turns,
            "active_gb": active, "context_tokens": tokens,
            "first_gb": active[0], "last_gb": active[-1], "rss_gb": _self_rss_gb()}


# ------------------------------------------------------------------ the run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", choices=["3b", "7b", "tiny"])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--work", type=Path, help="folder for the checkpoints (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the converted models")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the random checkpoint in --work, and reuse it (appending to --out) "
                         "when it is there: a run split over several commands")
    ap.add_argument("--convert-only", action="store_true", help="measure the conversions only")
    ap.add_argument("--chat-turns", type=int, default=CHAT_TURNS)
    ap.add_argument("--chat-max-context", type=int, default=CHAT_MAX_CONTEXT)
    ap.add_argument("--text-tokens", type=int, default=TEXT_TOKENS)
    ap.add_argument("--codes", type=int, default=CODES)
    ap.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS)
    ap.add_argument("--low-memory", action="store_true",
                    help="also time the API turn with load(keep_encoders=False) (api_turn_low_memory)")
    ap.add_argument("--solver", default="reference",
                    help="Token2Wav solver of the turns (memory per DiT evaluation is the same for "
                         "all; a cheaper one makes a CPU run shorter)")
    ap.add_argument("--no-stages", action="store_true",
                    help="skip measuring each stage's working memory alone (slow on a CPU)")
    ap.add_argument("--device-name")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", choices=["api", "chat"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--clip", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.size == "tiny" and not a.worker:
        for k, v in TINY_WORKLOAD.items():
            if getattr(a, k) == ap.get_default(k):
                setattr(a, k, v)
    if a.worker == "api":
        return print(json.dumps(worker_api(a.model, a.clip, a.text_tokens, a.codes, a.low_memory,
                                           a.solver, not a.no_stages)))
    if a.worker == "chat":
        return print(json.dumps(worker_chat(a.model, a.chat_turns, a.chat_max_context)))

    import tempfile

    import mlx.core as mx

    work = a.work or Path(tempfile.mkdtemp(prefix="omni-bench-"))
    hf = work / f"hf-{a.size}"
    earlier = json.loads(a.out.read_text()) if a.reuse and a.out and a.out.is_file() else None
    if a.reuse and (hf / "model.safetensors.index.json").is_file() and earlier:
        checkpoint = earlier["checkpoint"]  # a run split in parts (one command's time limit)
    else:
        shutil.rmtree(hf, ignore_errors=True)
        checkpoint, earlier = write_checkpoint(a.size, hf), None
    result = {"device": a.device_name or str(mx.default_device()), "size": a.size,
              "workload": {"audio_in_s": a.clip_seconds, "text_tokens": a.text_tokens,
                           "solver": a.solver,
                           "codec_tokens": a.codes, "chat_turns": a.chat_turns},
              "checkpoint": checkpoint, "presets": earlier["presets"] if earlier else []}
    print(f"checkpoint: {json.dumps(result['checkpoint'])}", flush=True)
    clip = work / "question.wav"
    t = np.arange(int(16000 * a.clip_seconds)) / 16000
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    env_cmd = [sys.executable]
    me = str(Path(__file__).resolve())
    for preset in a.presets.split(","):
        out = work / f"{a.size}-{preset}"
        shutil.rmtree(out, ignore_errors=True)
        row = {"preset": preset}
        row["convert"] = run_measured(env_cmd + ["-m", "omni_edge.cli", "convert", "--hf-path", str(hf),
                                                 "--mlx-path", str(out), "--preset", preset],
                                      work / f"{preset}-convert.log")
        if row["convert"]["rc"] == 0:
            row.update(disk_gb=disk_gb(out), parts_gb=part_sizes(out))
        if row["convert"]["rc"] == 0 and not a.convert_only:
            api = env_cmd + [me, "--worker", "api", "--model", str(out), "--clip", str(clip),
                             "--text-tokens", str(a.text_tokens), "--codes", str(a.codes),
                             "--solver", a.solver]
            row["api_turn"] = run_measured(api, work / f"{preset}-api.log")
            if a.low_memory:
                row["api_turn_low_memory"] = run_measured(api + ["--low-memory"],
                                                          work / f"{preset}-api-low-memory.log")
            row["cli_turn"] = run_measured(env_cmd + [
                "-m", "omni_edge.cli", "generate", "--model", str(out), "--audio", str(clip),
                "--speak", str(work / "reply.wav"), "--max-tokens", str(a.text_tokens),
                "--max-codec-tokens", str(a.codes), "--solver", a.solver]
                + (["--low-memory"] if a.low_memory else []), work / f"{preset}-cli.log")
            if a.chat_turns:
                row["chat"] = run_measured(env_cmd + [me, "--worker", "chat", "--model", str(out),
                                                      "--chat-turns", str(a.chat_turns),
                                                      "--chat-max-context", str(a.chat_max_context)],
                                         work / f"{preset}-chat.log")
        result["presets"].append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=2))
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
    if not a.reuse:
        shutil.rmtree(hf, ignore_errors=True)
    table(result)


def table(result: dict):
    print(f"\n{result['size']} on {result['device']}: checkpoint {result['checkpoint']['gb']:.2f} GB "
          f"in {result['checkpoint']['shards']} shards (largest {result['checkpoint']['largest_shard_gb']:.2f} GB)")
    print(f"{'preset':9} {'conv s':>6} {'conv RSS':>8} {'disk GB':>7} {'load GB':>7} {'text GB':>7} "
          f"{'prefill':>7} {'decode':>6} {'t2w':>6} {'API RSS':>7} {'CLI s':>6} {'CLI RSS':>7} {'chat 1→N GB':>12}")
    for r in result["presets"]:
        api, cli, chat = r.get("api_turn", {}), r.get("cli_turn", {}), r.get("chat", {})
        print(f"{r['preset']:9} {r['convert']['seconds']:6.1f} {r['convert']['peak_rss_gb']:8.2f} "
              f"{r.get('disk_gb', 0):7.2f} {api.get('load_gb', 0):7.2f} {api.get('text_only_load_gb', 0):7.2f} "
              f"{api.get('prefill_peak_gb', 0):7.2f} {api.get('decode_peak_gb', 0):6.2f} "
              f"{api.get('token2wav_peak_gb', 0):6.2f} {api.get('rss_gb', 0):7.2f} "
              f"{cli.get('seconds', 0):6.1f} {cli.get('peak_rss_gb', 0):7.2f} "
              f"{chat.get('first_gb', 0):5.2f}→{chat.get('last_gb', 0):5.2f}")
        low = r.get("api_turn_low_memory")
        if low and not low.get("rc"):
            print(f"  --low-memory (encoders freed after use): prefill {low['prefill_peak_gb']:.2f}, "
                  f"decode {low['decode_peak_gb']:.2f}, t2w {low['token2wav_peak_gb']:.2f}, "
                  f"turn peak {low['turn_peak_gb']:.2f} GB")
        for what in ("convert", "api_turn", "api_turn_low_memory", "cli_turn", "chat"):
            if r.get(what, {}).get("rc"):
                print(f"  {what} failed: {r[what].get('error')}")


if __name__ == "__main__":
    main()
