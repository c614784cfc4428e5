"""A projection, not a measurement: one spoken turn of Qwen2.5-Omni on Apple chips.

No Apple hardware was used. Each graph of the turn (Thinker prefill and decode step, Talker
prefill and step, audio encoder, every DiT evaluation and BigVGAN window the streaming schedule
runs) is counted from the real model graph at full size (`omni_edge.costs`: FLOPs, bytes,
kernels) and timed on each chip with a roofline:

    time = max(FLOPs / GPU throughput, bytes / memory bandwidth) / efficiency + kernels x launch

from the published figures in `benchmarks/apple_chips.json` (sources cited there). The
efficiency of each graph comes from `--calibration FILE`, measured times of the same graphs on
an H200 written by `--measure` (the H200's own roofline and launch cost are divided out); a
graph the H200 runs launch-bound tells nothing about its arithmetic and keeps the default.
The turn is then replayed as the runtime schedules it today (Token2Wav windows block both
decoders; with a preset's `overlap` they render on their own queue) for each preset (solver,
time points or evaluations, share of evaluations with CFG, window sizes), giving decode tok/s,
Token2Wav RTF, the glitch-free start and the turn time. The decode figures are checked against
mlx-lm-omni's published M4 Pro numbers.

The JSON's `rows` (a contract): one per chip, {chip, bandwidth_gbs, fp32_tflops, bf16_native,
max_memory_gb, fits_in_memory, presets: {name: {decode_tok_s, talker_tok_s, token2wav_rtf,
turn_s, first_chunk_s, first_chunk_audio_s, glitch_free_start_s, stalls, stall_s}}}.

    python benchmarks/apple_projection.py --size 3b --out benchmarks/results/apple_3b.json
    python benchmarks/apple_projection.py --measure --size 3b --out benchmarks/results/graphs_3b_h200.json
    python benchmarks/apple_projection.py --size 3b --calibration benchmarks/results/graphs_3b_h200.json
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from omni_edge import costs

HERE = Path(__file__).resolve().parent
CHIPS_FILE = HERE / "apple_chips.json"
SOLVERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}  # velocity evaluations per step
PRESETS = {
    "reference": dict(solver="rk4", points=10, cfg_fraction=1.0, first_chunk_frames=24, chunk_frames=216),
    "reference, overlapped": dict(solver="rk4", points=10, cfg_fraction=1.0, first_chunk_frames=24,
                                  chunk_frames=216, overlap=True),  # item 3's first lever
    "fast": dict(solver="midpoint", points=6, cfg_fraction=0.5, first_chunk_frames=24,
                 chunk_frames=216),  # a placeholder until the solver presets land
}
WORKLOAD = dict(audio_in_s=10.0, prompt_tokens=300, reply_tokens=128, codes=500)
SETTINGS = dict(thinker_bits=4, talker_bits=8, dit_dtype="bfloat16")
# Assumptions, for graphs without a readable calibration: the share of peak GPU throughput and of
# peak memory bandwidth a graph reaches.
DEFAULT_COMPUTE_EFFICIENCY = 0.6
DEFAULT_BANDWIDTH_EFFICIENCY = 0.85
APPLE_LAUNCH_US = 5.0  # an assumption: one MLX kernel dispatch on Metal
MEMORY_SHARE = 0.75  # an assumption: the share of RAM macOS lets the GPU wire by default
PLAYER_START_S = 0.15  # the player: starts once 150 ms are buffered
# The streaming Token2Wav schedule (omni_edge/streaming.py): mel frames, 2 per code.
BLOCK, PAST, FUTURE, BASE_CHUNK, VOCODER_CONTEXT = 24, 48, 24, 72, 20
SAMPLES_PER_FRAME, SAMPLE_RATE = 240, 24000
LAUNCH_BOUND = 0.2  # H200 time left after launches below this share: efficiency unreadable


def check_presets(presets: dict) -> dict:
    """Presets as data → {name: {evaluations, cfg_evaluations, first_chunk_frames, chunk_frames}}."""
    if not isinstance(presets, dict) or not presets:
        raise ValueError("presets must be a non-empty dict of name -> settings, e.g. "
                         f"{json.dumps({'reference': PRESETS['reference']})}")
    out = {}
    for name, p in presets.items():
        p = dict(p)
        if "evaluations" in p:
            evaluations = p.pop("evaluations")
        else:
            solver, points = p.pop("solver", "rk4"), p.pop("points", p.pop("steps", 10))
            if solver not in SOLVERS:
                raise ValueError(f"preset {name!r}: unknown solver {solver!r}; choose one of: "
                                 f"{', '.join(SOLVERS)}")
            if not isinstance(points, int) or points < 2:
                raise ValueError(f"preset {name!r}: points must be an integer >= 2 (time points "
                                 f"from 0 to 1, one step = 2 points), got {points!r}")
            evaluations = SOLVERS[solver] * (points - 1)
        if not isinstance(evaluations, int) or evaluations < 1:
            raise ValueError(f"preset {name!r}: evaluations per window must be an integer >= 1, "
                             f"got {evaluations!r}")
        fraction = p.pop("cfg_fraction", 1.0)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"preset {name!r}: cfg_fraction (share of evaluations with CFG) must "
                             f"lie in [0, 1], got {fraction}")
        windows = {}
        for key, default in (("first_chunk_frames", BASE_CHUNK), ("chunk_frames", BASE_CHUNK)):
            frames = p.pop(key, default)
            if not isinstance(frames, int) or frames <= VOCODER_CONTEXT or frames % BLOCK:
                raise ValueError(f"preset {name!r}: {key} must be a positive multiple of the DiT "
                                 f"block ({BLOCK} frames), e.g. 24, 72 or 216; got {frames!r}")
            windows[key] = frames
        overlap = p.pop("overlap", False)
        if not isinstance(overlap, bool):
            raise ValueError(f"preset {name!r}: overlap must be true or false, got {overlap!r}")
        if p:
            raise ValueError(f"preset {name!r}: unknown settings {sorted(p)}; known: solver, points, "
                             "evaluations, cfg_fraction, first_chunk_frames, chunk_frames, overlap")
        out[name] = dict(evaluations=evaluations, cfg_evaluations=round(fraction * evaluations),
                         overlap=overlap, **windows)
    return out


def chunk_start(i: int, first: int, later: int) -> int:
    """Window i's first mel frame, as streaming.StreamingToken2Wav lays them out: the first
    chunk, then doubling up to the later size."""
    return sum(first if j == 0 else min(later, first << j) for j in range(i))


def windows(codes: int, first: int, later: int) -> list:
    """The Token2Wav windows of an utterance of `codes` codes streamed as StreamingToken2Wav
    runs them: after which code each runs (None: at the end), the DiT and vocoder frames, and
    the samples it emits from which start sample."""
    out, state = [], {"tail": 0, "emitted": 0}

    def run(w, frames, final, after):
        start, end = chunk_start(w, first, later), (frames if final else chunk_start(w + 1, first, later))
        dit = min(end + FUTURE, frames) - max(0, start - PAST)
        context = state["tail"]
        vocoder = context + end - start
        state["tail"] = min(2 * VOCODER_CONTEXT, vocoder)
        skip = max(0, context - VOCODER_CONTEXT) * SAMPLES_PER_FRAME
        samples = vocoder * SAMPLES_PER_FRAME - skip - (0 if final else VOCODER_CONTEXT * SAMPLES_PER_FRAME)
        out.append(dict(after_code=after, dit_frames=dit, vocoder_frames=vocoder,
                        start_sample=state["emitted"], samples=samples))
        state["emitted"] += samples

    w = 0
    for n in range(1, codes + 1):
        while 2 * n > chunk_start(w + 1, first, later) + FUTURE:
            run(w, 2 * n, False, n)
            w += 1
    if codes and w == 0:  # the utterance fits the first window: one shot
        out.append(dict(after_code=None, dit_frames=2 * codes, vocoder_frames=2 * codes,
                        start_sample=0, samples=2 * codes * SAMPLES_PER_FRAME))
    elif codes:
        run(w, 2 * codes, True, None)
    return out


def graph_shapes(workload: dict, presets: dict) -> dict:
    """Every graph of the turn: key -> (graph name, shape)."""
    p, codes = workload["prompt_tokens"], workload["codes"]
    shapes = {"audio_encoder": ("audio_encoder", dict(seconds=workload["audio_in_s"])),
              "thinker_prefill": ("thinker_prefill", dict(tokens=p)),
              "thinker_decode": ("thinker_decode", dict(context=p + workload["reply_tokens"] // 2)),
              "talker_prefill": ("talker_prefill", dict(tokens=p)),
              "talker_step": ("talker_step", dict(context=p + codes // 2))}
    for preset in presets.values():
        for win in windows(codes, preset["first_chunk_frames"], preset["chunk_frames"]):
            for cfg in (True, False):
                shapes[dit_key(win["dit_frames"], cfg)] = ("dit_eval", dict(frames=win["dit_frames"], cfg=cfg))
            shapes[f"bigvgan_window@{win['vocoder_frames']}"] = (
                "bigvgan_window", dict(frames=win["vocoder_frames"]))
    return shapes


def dit_key(frames: int, cfg: bool) -> str:
    return f"dit_eval@{frames}{'+cfg' if cfg else ''}"


def count_graphs(size: str, settings: dict, shapes: dict) -> tuple:
    """({key: cost}, GB of weights the model holds)."""
    model = costs.build(size, **settings)
    weights = sum(p.nbytes for _, p in tree_flatten(model.parameters())) / 1e9
    return {key: costs.graph_cost(model, name, **shape).to_dict() for key, (name, shape) in shapes.items()}, weights


def roofline_terms(cost: dict, tflops, bandwidth_gbs: float) -> tuple:
    """(compute, memory) seconds at full throughput: `tflops` is one number or {dtype: TFLOP/s}."""
    peak = tflops if isinstance(tflops, dict) else {}
    compute = sum(f / (peak.get(dt, peak.get("float32", 0)) if peak else tflops) / 1e12
                  for dt, f in cost["flops_by_dtype"].items())
    return compute, cost["bytes"] / (bandwidth_gbs * 1e9)


def roofline(cost: dict, tflops, bandwidth_gbs: float) -> float:
    return max(roofline_terms(cost, tflops, bandwidth_gbs))


def calibrate(calibration: dict, reference: dict) -> dict:
    """Efficiency per graph key from measured times on `reference`, its roofline and launches
    divided out; None where the measured time is mostly launches. The launch cost is fitted from
    the launch-bound graphs themselves (median of measured minus default-efficiency roofline, per
    kernel), falling back to the reference's published figure when none is."""
    graphs = calibration["graphs"]
    ideal, default = {}, {}
    for key, g in graphs.items():
        compute, memory = roofline_terms(g["cost"], reference["tflops"], reference["bandwidth_gbs"])
        ideal[key] = max(compute, memory)
        default[key] = max(compute / DEFAULT_COMPUTE_EFFICIENCY, memory / DEFAULT_BANDWIDTH_EFFICIENCY)
    implied = {k: max(0.0, g["seconds"] - default[k]) / max(1, g["cost"]["kernels"]) for k, g in graphs.items()}
    bound = [implied[k] for k, g in graphs.items() if default[k] < LAUNCH_BOUND * g["seconds"]]
    launch = statistics.median(bound) if bound else reference["launch_us"] * 1e-6
    out = {}
    for key, g in graphs.items():
        work = g["seconds"] - g["cost"]["kernels"] * launch
        readable = work > LAUNCH_BOUND * g["seconds"]
        out[key] = dict(measured_s=g["seconds"], roofline_s=ideal[key], launch_s=g["cost"]["kernels"] * launch,
                        efficiency=min(1.0, max(0.01, ideal[key] / work)) if readable else None,
                        # similar values across graphs say the kernel counts are right
                        implied_launch_us=implied[key] * 1e6, fitted_launch_us=launch * 1e6)
    return out


def efficiency_for(key: str, calibrated: dict):
    """The key's own efficiency, else the median of its graph family's, else None (defaults)."""
    if calibrated.get(key, {}).get("efficiency"):
        return calibrated[key]["efficiency"]
    family = [c["efficiency"] for k, c in calibrated.items()
              if k.split("@")[0] == key.split("@")[0] and c["efficiency"]]
    return statistics.median(family) if family else None


def chip_times(chip: dict, counted: dict, calibrated: dict, launch_us: float) -> dict:
    times = {}
    for key, c in counted.items():
        compute, memory = roofline_terms(c, chip["fp32_tflops"], chip["bandwidth_gbs"])
        eff = efficiency_for(key, calibrated)
        work = (max(compute, memory) / eff if eff else
                max(compute / DEFAULT_COMPUTE_EFFICIENCY, memory / DEFAULT_BANDWIDTH_EFFICIENCY))
        times[key] = work + c["kernels"] * launch_us * 1e-6
    return times


def simulate(times: dict, workload: dict, preset: dict) -> dict:
    """The turn: prefill, then Thinker + Talker in lockstep (one code per reply token), the Talker
    alone after the reply; each window runs once its codes are in. As the runtime does today, a
    window blocks both decoders; with the preset's `overlap` it renders on its own queue while
    decoding goes on (ideal overlap: the two share the GPU without slowing each other)."""
    codes, reply = workload["codes"], workload["reply_tokens"]
    wins = windows(codes, preset["first_chunk_frames"], preset["chunk_frames"])
    n_cfg, n_plain = preset["cfg_evaluations"], preset["evaluations"] - preset["cfg_evaluations"]

    def window_s(w):
        return (n_cfg * times[dit_key(w["dit_frames"], True)] + n_plain * times[dit_key(w["dit_frames"], False)]
                + times[f"bigvgan_window@{w['vocoder_frames']}"])

    t = times["audio_encoder"] + times["thinker_prefill"] + times["talker_prefill"]
    arrivals, render, free = [], 0.0, 0.0  # free: when the render queue is next idle

    def run(w):
        nonlocal t, render, free
        render += window_s(w)
        if preset.get("overlap"):
            free = max(t, free) + window_s(w)
            arrivals.append((free, w))
        else:
            t += window_s(w)
            arrivals.append((t, w))

    pending = list(wins)
    for n in range(1, codes + 1):
        t += times["talker_step"] + (times["thinker_decode"] if n <= reply else 0.0)
        while pending and pending[0]["after_code"] == n:
            run(pending.pop(0))
    for w in pending:  # the final window (or the one-shot utterance)
        run(w)
    audio_s = codes * 2 * SAMPLES_PER_FRAME / SAMPLE_RATE
    return dict(decode_tok_s=1.0 / times["thinker_decode"], talker_tok_s=1.0 / times["talker_step"],
                token2wav_rtf=render / audio_s, turn_s=max(t, arrivals[-1][0]), first_chunk_s=arrivals[0][0],
                first_chunk_audio_s=arrivals[0][1]["samples"] / SAMPLE_RATE,
                glitch_free_start_s=max(a - w["start_sample"] / SAMPLE_RATE for a, w in arrivals),
                **player(arrivals))


def player(arrivals: list) -> dict:
    """Stalls of a player that starts once PLAYER_START_S is buffered and waits for late chunks."""
    buffered, clock = 0.0, None
    for a, w in arrivals:
        buffered += w["samples"] / SAMPLE_RATE
        if buffered >= PLAYER_START_S:
            clock = a
            break
    clock = arrivals[-1][0] if clock is None else clock
    stalls, stall_s = 0, 0.0
    for a, w in arrivals:
        if a > clock + 1e-12:
            stalls, stall_s, clock = stalls + 1, stall_s + a - clock, a
        clock += w["samples"] / SAMPLE_RATE
    return dict(stalls=stalls, stall_s=stall_s)


def speech_flops(counted: dict, workload: dict, preset: dict) -> float:
    """DiT + BigVGAN FLOPs per second of speech."""
    total = 0.0
    for w in windows(workload["codes"], preset["first_chunk_frames"], preset["chunk_frames"]):
        total += (preset["cfg_evaluations"] * counted[dit_key(w["dit_frames"], True)]["flops"]
                  + (preset["evaluations"] - preset["cfg_evaluations"])
                  * counted[dit_key(w["dit_frames"], False)]["flops"]
                  + counted[f"bigvgan_window@{w['vocoder_frames']}"]["flops"])
    return total / (workload["codes"] * 2 * SAMPLES_PER_FRAME / SAMPLE_RATE)


def load_chips(path: Path = CHIPS_FILE) -> dict:
    return json.loads(Path(path).read_text())


def load_calibration(path, size: str, settings: dict) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--calibration {path} does not exist; write it on the reference GPU "
                                f"with: python benchmarks/apple_projection.py --measure --size {size} --out {path}")
    try:
        data = json.loads(path.read_text())
        graphs = data["graphs"]
        assert all("seconds" in g and "cost" in g for g in graphs.values())
    except (json.JSONDecodeError, KeyError, AssertionError, AttributeError, TypeError):
        raise ValueError(f"--calibration {path} is not a file written by --measure (it needs a "
                         "'graphs' object of {seconds, cost} entries); re-run --measure") from None
    if data.get("size") != size or data.get("settings") != settings:
        raise ValueError(f"--calibration {path} was measured at size {data.get('size')!r} with "
                         f"{data.get('settings')}, not size {size!r} with {settings}; measure with "
                         "the same --size, --thinker-bits, --talker-bits and --dit-dtype")
    return data


def crosscheck(chips: dict, calibrated: dict, launch_us: float, context: int = 128) -> list:
    """Projected Thinker decode tok/s on the M4 Pro against mlx-lm-omni's published numbers."""
    ref = chips["mlx_lm_omni_m4_pro"]
    chip = next(c for c in chips["chips"] if c["name"] == "M4 Pro")
    rows = []
    for r in ref["decode_tok_s"]:
        model = costs.build(r["size"], thinker_bits=r["thinker_bits"])
        cost = costs.graph_cost(model, "thinker_decode", context=context).to_dict()
        t = chip_times(chip, {"thinker_decode": cost}, calibrated, launch_us)["thinker_decode"]
        rows.append({**r, "projected_tok_s": 1.0 / t, "ratio": (1.0 / t) / r["tok_s"]})
    return rows


def project(size: str, settings: dict = SETTINGS, presets: dict = PRESETS, workload: dict = WORKLOAD,
            chips: dict = None, calibration: dict = None, launch_us: float = APPLE_LAUNCH_US,
            cross: bool = True) -> dict:
    """The projection as JSON: one row per chip (the contract), each with every preset."""
    chips = chips or load_chips()
    presets = check_presets(presets)
    counted, weights_gb = count_graphs(size, settings, graph_shapes(workload, presets))
    reference = chips["reference_devices"]["h200"]
    calibrated = calibrate(calibration, reference) if calibration else {}
    device = calibration.get("device") if calibration else None
    rows = []
    for chip in chips["chips"]:
        times = chip_times(chip, counted, calibrated, launch_us)
        rows.append({"chip": chip["name"], "bandwidth_gbs": chip["bandwidth_gbs"],
                     "fp32_tflops": chip["fp32_tflops"], "bf16_native": chip["bf16_native"],
                     "max_memory_gb": chip["max_memory_gb"],
                     "fits_in_memory": weights_gb <= MEMORY_SHARE * chip["max_memory_gb"],
                     "presets": {name: simulate(times, workload, p) for name, p in presets.items()}})
    return {"projection": True, "size": size, "settings": settings, "workload": workload,
            "weights_gb": weights_gb,
            "presets": presets, "launch_us": launch_us,
            "default_efficiency": {"compute": DEFAULT_COMPUTE_EFFICIENCY,
                                   "bandwidth": DEFAULT_BANDWIDTH_EFFICIENCY},
            "calibrated": calibrated, "calibration_device": device, "speech_tflop_per_s": {
                name: speech_flops(counted, workload, p) / 1e12 for name, p in presets.items()},
            "graphs": counted, "rows": rows,
            "crosscheck": crosscheck(chips, calibrated, launch_us) if cross else []}


def markdown(result: dict) -> str:
    """The README table, labelled as a projection: one line per chip, three columns per preset."""
    s, w = result["settings"], result["workload"]
    names = list(result["rows"][0]["presets"]) if result["rows"] else []
    head = ["chip", "GB/s", "FP32 TFLOP/s", "decode tok/s"] + [
        f"{n}: {col}" for n in names for col in ("Token2Wav RTF", "glitch-free start", "turn")]
    lines = [f"**Projection, not a measurement**: Qwen2.5-Omni-{result['size'].upper()}, "
             f"{str(s['thinker_bits']) + '-bit' if s['thinker_bits'] else 'bf16'} Thinker, DiT "
             f"{s['dit_dtype']}; {w['audio_in_s']:g} s audio question, {w['reply_tokens']} reply tokens, "
             f"{w['codes']} codes ({w['codes'] / 50:g} s of speech); {result['weights_gb']:.1f} GB of weights; "
             + (f"calibrated on {result['calibration_device']}" if result["calibrated"]
                else "uncalibrated (default efficiencies)") + f", {result['launch_us']:g} µs per kernel launch.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        marks = ("" if row["bf16_native"] else "¹") + ("" if row["fits_in_memory"] else "²")
        cells = [row["chip"] + marks, f"{row['bandwidth_gbs']:g}",
                 f"{row['fp32_tflops']:g}", f"{row['presets'][names[0]]['decode_tok_s']:.0f}"]
        for n in names:
            p = row["presets"][n]
            cells += [f"{p['token2wav_rtf']:.2f}", f"{p['glitch_free_start_s']:.1f} s", f"{p['turn_s']:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "¹ no bf16 hardware: bf16 graphs may run slower than projected. "
              f"² the weights exceed {MEMORY_SHARE:.0%} of the chip's largest memory option."]
    return "\n".join(lines)


def print_report(result: dict):
    print(f"graphs of the turn ({result['size']}, counted): GFLOP, GB moved, kernels")
    for key, c in result["graphs"].items():
        print(f"  {key:28} {c['flops'] / 1e9:10.2f} {c['bytes'] / 1e9:8.3f} {c['kernels']:6d}")
    print()
    print(markdown(result))
    if result["calibrated"]:
        fitted = next(iter(result["calibrated"].values()))["fitted_launch_us"]
        print(f"\ncalibration ({result['calibration_device']}, {fitted:.1f} µs per launch fitted): graph, "
              "measured ms, roofline ms, launches ms, efficiency, implied µs per launch")
        for key, c in result["calibrated"].items():
            eff = f"{c['efficiency']:.2f}" if c["efficiency"] else "launch-bound"
            print(f"  {key:28} {c['measured_s'] * 1e3:9.2f} {c['roofline_s'] * 1e3:9.3f} "
                  f"{c['launch_s'] * 1e3:9.2f}  {eff:>12}  {c['implied_launch_us']:6.1f}")
    print("\nDiT + BigVGAN TFLOP per second of speech: " + ", ".join(
        f"{k} {v:.2f}" for k, v in result["speech_tflop_per_s"].items()))
    for r in result["crosscheck"]:
        bits = f"{r['thinker_bits']}-bit" if r["thinker_bits"] else "bf16"
        print(f"cross-check M4 Pro {r['size']} {bits}: projected {r['projected_tok_s']:.1f} tok/s, "
              f"mlx-lm-omni {r['tok_s']:.1f} (ratio {r['ratio']:.2f})")


def measure(size: str, settings: dict, presets: dict, workload: dict, repeats: int,
            device: str = None) -> dict:
    """Time every graph of the turn on this machine (random weights) and count it too."""
    shapes = graph_shapes(workload, check_presets(presets))
    counted, _ = count_graphs(size, settings, shapes)
    model = costs.build(size, **settings, materialize=True)
    graphs = {}
    for key, (name, shape) in shapes.items():
        fn, _ = costs.graph(model, name, materialize=True, **shape)
        mx.eval(fn())  # warm-up: compiles
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            mx.eval(fn())
            runs.append(time.perf_counter() - start)
        graphs[key] = {"seconds": statistics.median(runs), "runs": runs, "cost": counted[key]}
        print(f"{key:28} {graphs[key]['seconds'] * 1e3:9.2f} ms  {counted[key]['kernels']:5d} kernels", flush=True)
    return {"device": device or str(mx.default_device()), "size": size, "settings": settings,
            "workload": workload, "graphs": graphs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", choices=costs.SIZES)
    ap.add_argument("--thinker-bits", type=int, default=SETTINGS["thinker_bits"], choices=[0, 4, 8])
    ap.add_argument("--talker-bits", type=int, choices=[0, 4, 8],
                    help="default: 8 when the Thinker is quantized, else 0 (bf16), as the converter")
    ap.add_argument("--dit-dtype", default=SETTINGS["dit_dtype"], choices=costs.FLOAT_DTYPES)
    ap.add_argument("--presets", type=Path, help="JSON file: {name: {solver, points, cfg_fraction, "
                    "first_chunk_frames, chunk_frames, overlap}} (default: the reference sampler, "
                    "blocking and overlapped, and a fast placeholder)")
    ap.add_argument("--calibration", type=Path, help="graph times written by --measure on the H200")
    ap.add_argument("--reply-tokens", type=int, default=WORKLOAD["reply_tokens"])
    ap.add_argument("--codes", type=int, default=WORKLOAD["codes"], help="codec tokens (50 per second)")
    ap.add_argument("--measure", action="store_true", help="time every graph here and write --out")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device-name", help="with --measure: the machine's name, e.g. 'NVIDIA H200'")
    ap.add_argument("--launch-us", type=float, default=APPLE_LAUNCH_US,
                    help="per-kernel launch cost on Apple GPUs (an assumption)")
    ap.add_argument("--no-crosscheck", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print only the README table")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    talker_bits = a.talker_bits if a.talker_bits is not None else (8 if a.thinker_bits else 0)
    settings = dict(thinker_bits=a.thinker_bits, talker_bits=talker_bits, dit_dtype=a.dit_dtype)
    workload = {**WORKLOAD, "reply_tokens": a.reply_tokens, "codes": a.codes}
    try:
        if a.codes < 1 or a.reply_tokens < 1:
            raise ValueError(f"--codes and --reply-tokens must be >= 1, got {a.codes} and {a.reply_tokens}")
        presets = json.loads(a.presets.read_text()) if a.presets else PRESETS
        if a.measure:
            if not a.out:
                raise ValueError("--measure writes its times to --out FILE; pass one")
            result = measure(a.size, settings, presets, workload, a.repeats, a.device_name)
        else:
            calibration = load_calibration(a.calibration, a.size, settings) if a.calibration else None
            result = project(a.size, settings, presets, workload, calibration=calibration,
                             launch_us=a.launch_us, cross=not a.no_crosscheck and a.size != "tiny")
            print(markdown(result) if a.markdown else "", end="\n" if a.markdown else "")
            if not a.markdown:
                print_report(result)
    except (ValueError, FileNotFoundError, OSError) as err:
        sys.exit(f"error: {err}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
