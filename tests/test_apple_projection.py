"""The cost counter (omni_edge.costs) and the Apple projection (benchmarks/apple_projection.py).

Expected FLOPs and bytes are worked out here from the published layer shapes, not read from the
counter; the streaming schedule is checked against StreamingToken2Wav itself.
"""

import importlib.util
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from omni_edge import costs
from omni_edge.streaming import StreamingToken2Wav

ROOT = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("apple_projection", ROOT / "benchmarks" / "apple_projection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ap = _load_script()
SMALL = dict(audio_in_s=1.0, prompt_tokens=16, reply_tokens=8, codes=40)


def thinker_params(hidden, inter, layers, heads, kv_heads, vocab, head_dim=128):
    """Weights one Thinker decode step reads: every layer's linears and the lm_head."""
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    return layers * (attn + 3 * hidden * inter) + vocab * hidden


# ---- counting --------------------------------------------------------------------------------

def test_thinker_decode_flops_and_bytes_follow_the_published_shapes():
    n = thinker_params(2048, 11008, 36, 16, 2, 151936)
    bf16 = costs.graph_cost(costs.build("3b", thinker_bits=0), "thinker_decode", context=300)
    q4 = costs.graph_cost(costs.build("3b", thinker_bits=4), "thinker_decode", context=300)
    # 2 FLOPs per weight, plus attention over 301 positions (36 layers x 16 heads x 4 x 301 x 128)
    attention = 36 * 16 * 4 * 301 * 128
    assert bf16.total_flops == pytest.approx(2 * n + attention, rel=0.01)
    assert q4.total_flops == pytest.approx(bf16.total_flops, rel=1e-5)  # + one dequantized row
    kv = 36 * 2 * 2 * 301 * 128 * 2  # both caches, bf16
    assert bf16.weight_bytes == pytest.approx(2 * n + kv, rel=0.01)
    # 4 bits per weight plus a bf16 scale and bias per group of 64
    assert q4.weight_bytes == pytest.approx(n * (0.5 + 4 / 64) + kv, rel=0.01)
    assert 300 < q4.kernels < 1200  # ~20 kernels a layer, not thousands of fallback ops


def test_dit_evaluation_flops_and_cfg():
    model = costs.build("3b")
    frames, hidden, depth, heads = 288, 1024, 22, 16
    per_row = depth * (4 * hidden * hidden + 2 * hidden * 2 * hidden) + 912 * hidden + hidden * 80
    attention = depth * heads * 4 * frames * frames * 64
    with_cfg = costs.graph_cost(model, "dit_eval", frames=frames, cfg=True)
    without = costs.graph_cost(model, "dit_eval", frames=frames, cfg=False)
    assert with_cfg.total_flops == pytest.approx(2 * (2 * frames * per_row + attention), rel=0.02)
    assert without.total_flops == pytest.approx(with_cfg.total_flops / 2, rel=0.02)
    assert set(with_cfg.flops) == {"float32"}
    bf16 = costs.graph_cost(costs.build("3b", dit_dtype="bfloat16"), "dit_eval", frames=frames)
    assert "bfloat16" in bf16.flops and bf16.weight_bytes == pytest.approx(with_cfg.weight_bytes / 2, rel=0.01)


def test_a_hollow_7b_model_allocates_nothing():
    mx.clear_cache()
    before = mx.get_active_memory()
    model = costs.build("7b", thinker_bits=0)
    nominal = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
    assert nominal > 15e9  # a 7B in bf16 ...
    assert mx.get_active_memory() - before < 50e6  # ... that holds a few kB
    assert costs.graph_cost(model, "thinker_decode", context=16).total_flops > 1.3e10


def test_fused_fast_ops_and_compiled_elementwise_chains_are_one_kernel_each():
    x = mx.zeros((4, 256))
    w = mx.ones((256,))
    mx.eval(x, w)
    norm = costs.count(lambda: mx.fast.rms_norm(x, w, 1e-6))
    assert norm.kernels == 1 and norm.total_flops == 4 * 4 * 256

    def chain():
        return mx.exp(x) * 2 + mx.sin(x)

    eager, fused = costs.count(chain), costs.count(chain, compiled=True)
    assert eager.total_flops == fused.total_flops == 4 * 4 * 256  # exp, multiply, sin, add
    assert eager.kernels == 4 and fused.kernels == 1
    # reads x once (and the scalar 2), writes the result; nothing in between
    assert fused.bytes == pytest.approx(2 * x.nbytes, abs=16)
    assert eager.bytes > 3 * x.nbytes
    matmul = costs.count(lambda: x @ mx.zeros((256, 64)))
    assert matmul.total_flops == 2 * 4 * 256 * 64


def test_the_runtimes_compiled_functions_fuse_and_nothing_else():
    from omni_edge.models import bigvgan, layers

    compiled = layers.swiglu
    with costs.compiled_regions() as fenced:
        assert {"omni_edge.models.layers.swiglu", "omni_edge.models.bigvgan.upsample2",
                "omni_edge.models.bigvgan.downsample2"} <= set(fenced)
    assert layers.swiglu is compiled  # put back
    a, b = mx.zeros((1, 8, 64)), mx.zeros((1, 8, 64))
    mx.eval(a, b)
    assert costs.count(lambda: layers.swiglu(a, b)).kernels == 1  # silu(a) * b, compiled
    assert costs.count(lambda: a * mx.sigmoid(a) * b).kernels == 3  # the same, eager
    # BigVGAN: its filters are compiled, its SnakeBeta is not (yet): between the two extremes
    model = costs.build("tiny")
    fn, whole = costs.graph(model, "bigvgan_window", frames=24)
    assert not whole
    as_run, all_fused = costs.count(fn), costs.count(fn, compiled=True)
    assert as_run.kernels > all_fused.kernels and as_run.bytes > all_fused.bytes
    assert as_run.total_flops == pytest.approx(all_fused.total_flops, rel=0.03)  # CSE differs
    assert bigvgan.upsample2 is not None


def test_bad_arguments_to_the_counter():
    with pytest.raises(ValueError, match="3b, 7b, tiny"):
        costs.build("13b")
    with pytest.raises(ValueError, match="thinker_bits"):
        costs.build("tiny", thinker_bits=3)
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        costs.build("tiny", dit_dtype="int8")
    with pytest.raises(ValueError, match="dit_eval"):
        costs.graph(costs.build("tiny"), "dit")


# ---- the streaming schedule ----------------------------------------------------------------

@pytest.mark.parametrize("codes,first,later", [(150, 24, 216), (90, 24, 72), (100, 72, 72), (10, 24, 216)])
def test_window_schedule_matches_streaming_token2wav(codes, first, later):
    model = costs.build("tiny", materialize=True).token2wav
    rng = np.random.default_rng(0)
    voice = {"cond": rng.standard_normal((1, 192)).astype(np.float32),
             "ref_mel": rng.standard_normal((1, 30, 80)).astype(np.float32)}
    stream = StreamingToken2Wav(model, voice, steps=2, first_chunk_frames=first, chunk_frames=later,
                                max_frames=2 * codes)
    dit_frames, seen = [], []
    sample = stream._sample
    stream._sample = lambda lo, hi: (dit_frames.append(hi - lo), sample(lo, hi))[1]
    for n in range(1, codes + 1):
        seen += [(n, start, len(audio)) for audio, start in stream.push([n % 50])]
    seen += [(None, start, len(audio)) for audio, start in stream.finish()]
    planned = ap.windows(codes, first, later)
    assert [(w["after_code"], w["start_sample"], w["samples"]) for w in planned] == seen
    assert [w["dit_frames"] for w in planned] == dit_frames
    assert sum(w["samples"] for w in planned) == codes * 480


def test_turn_simulation_by_hand():
    """60 codes, 48-frame first window then 72-frame ones: window 0 runs after code 37 (74
    frames > 48 + 24) and emits 28 frames (48 minus the 20 the vocoder keeps back); window 1
    would need 144 frames, so the final window emits the rest."""

    class Times(dict):
        def __missing__(self, key):  # each DiT evaluation and each vocoder call: 0.25 s
            return 0.25

    times = Times(audio_encoder=0.0, thinker_prefill=0.0, talker_prefill=0.0, thinker_decode=1e-3,
                  talker_step=0.01)
    preset = dict(evaluations=1, cfg_evaluations=1, first_chunk_frames=48, chunk_frames=72)
    r = ap.simulate(times, dict(codes=60, reply_tokens=0), preset)
    first = 37 * 0.01 + 0.5
    final = first + 23 * 0.01 + 0.5
    audio0 = 28 * 240 / 24000
    assert r["first_chunk_s"] == pytest.approx(first)
    assert r["first_chunk_audio_s"] == pytest.approx(audio0)
    assert r["turn_s"] == pytest.approx(final)
    assert r["glitch_free_start_s"] == pytest.approx(max(first, final - audio0))
    assert r["token2wav_rtf"] == pytest.approx(1.0 / 1.2)
    # the 150 ms player starts with window 0; the rest is due 0.28 s later, comes 0.73 s later
    assert (r["stalls"], r["stall_s"]) == (1, pytest.approx(final - first - audio0))
    # rendering on its own queue: the codes after 37 keep coming while window 0 renders
    r = ap.simulate(times, dict(codes=60, reply_tokens=0), {**preset, "overlap": True})
    assert r["first_chunk_s"] == pytest.approx(first)
    assert r["turn_s"] == pytest.approx(first + 0.5)  # the final window waits for window 0 only
    assert r["glitch_free_start_s"] == pytest.approx(first + 0.5 - audio0)


def test_player_stalls_when_a_chunk_is_late():
    chunks = [(1.0, {"samples": 24000 // 5}), (1.5, {"samples": 24000})]  # 200 ms at 1 s, next at 1.5 s
    assert ap.player(chunks) == {"stalls": 1, "stall_s": pytest.approx(0.3)}


# ---- the projection ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return ap.project("tiny", workload=SMALL, cross=False)


def test_projection_json_has_one_row_per_chip(tiny):
    chips = [c["name"] for c in ap.load_chips()["chips"]]
    for name in ("M1", "M2", "M3", "M4", "M2 Pro", "M4 Pro", "M2 Max", "M3 Max", "M4 Max", "A17 Pro"):
        assert name in chips
    assert [r["chip"] for r in tiny["rows"]] == chips
    for row in tiny["rows"]:
        assert set(row["presets"]) == {"reference", "reference, overlapped", "fast"}
        for p in row["presets"].values():
            assert p["turn_s"] >= p["glitch_free_start_s"] > 0 and p["decode_tok_s"] > 0
    json.dumps(tiny)
    table = ap.markdown(tiny)
    assert "Projection, not a measurement" in table
    assert len([line for line in table.splitlines() if line.startswith("| M")]) == len(chips) - 1
    assert "| M1¹ |" in table  # flagged: no bf16 hardware


def test_every_chip_cites_its_sources():
    for chip in ap.load_chips()["chips"]:
        for what in ("bandwidth", "tflops"):
            src = chip["sources"][what]
            assert src["url"].startswith("https://") and src["says"]


def test_faster_chips_project_faster_turns(tiny):
    rows = {r["chip"]: r["presets"]["reference"] for r in tiny["rows"]}
    assert rows["M4 Max"]["turn_s"] < rows["M4 Pro"]["turn_s"] < rows["M4"]["turn_s"]
    fast = {r["chip"]: r["presets"]["fast"] for r in tiny["rows"]}
    assert fast["M1"]["token2wav_rtf"] < rows["M1"]["token2wav_rtf"]
    for r in tiny["rows"]:  # overlapping never delays anything
        blocking, overlapped = r["presets"]["reference"], r["presets"]["reference, overlapped"]
        assert overlapped["turn_s"] <= blocking["turn_s"] + 1e-9
        assert overlapped["glitch_free_start_s"] <= blocking["glitch_free_start_s"] + 1e-9


def test_reference_preset_costs_what_the_issue_estimates():
    """The issue: 36 evaluations x 2 (CFG) x ~370 MFLOP per frame, ~3.5 TFLOP per second of
    speech with 216-frame windows, plus BigVGAN; the 'fast' placeholder stays under 1.2."""
    presets = ap.check_presets(ap.PRESETS)
    shapes = ap.graph_shapes(dict(ap.WORKLOAD), presets)
    counted, weights_gb = ap.count_graphs("3b", dict(ap.SETTINGS), {k: v for k, v in shapes.items()
                                                                  if v[0] in ("dit_eval", "bigvgan_window")})
    # 4-bit Thinker + 8-bit Talker and encoders + bf16 DiT + fp32 BigVGAN: about 5 GB
    assert 4.0 < weights_gb < 6.0
    assert 3.5 < ap.speech_flops(counted, ap.WORKLOAD, presets["reference"]) / 1e12 < 5.0
    assert ap.speech_flops(counted, ap.WORKLOAD, presets["fast"]) / 1e12 < 1.2


def test_calibration_divides_out_the_reference_roofline_and_launches():
    ref = {"tflops": {"float32": 50.0}, "bandwidth_gbs": 1000.0, "launch_us": 99.0}
    compute_bound = {"flops_by_dtype": {"float32": 5e12}, "bytes": 1e9, "kernels": 100}  # 0.1 s at peak
    tiny = {"flops_by_dtype": {"float32": 5e6}, "bytes": 1e3, "kernels": 100}
    cal = {"graphs": {"dit_eval@48+cfg": {"seconds": 0.2 + 100 * 10e-6, "cost": compute_bound},
                      "thinker_decode": {"seconds": 100 * 10e-6, "cost": tiny},  # 10 µs a launch
                      "talker_step": {"seconds": 200 * 10e-6, "cost": {**tiny, "kernels": 200}}}}
    out = ap.calibrate(cal, ref)
    assert out["thinker_decode"]["fitted_launch_us"] == pytest.approx(10.0, rel=1e-3)  # not the 99
    assert out["dit_eval@48+cfg"]["efficiency"] == pytest.approx(0.5, rel=1e-3)
    assert out["thinker_decode"]["efficiency"] is None  # launch-bound: unreadable
    chip = {"fp32_tflops": 10.0, "bandwidth_gbs": 100.0}
    times = ap.chip_times(chip, {"dit_eval@96+cfg": compute_bound}, out, launch_us=2.0)
    assert times["dit_eval@96+cfg"] == pytest.approx(0.5 / 0.5 + 100 * 2e-6, rel=1e-3)  # the family's


def test_measure_then_project_with_the_calibration(tmp_path):
    presets = {"reference": ap.PRESETS["reference"]}
    data = ap.measure("tiny", dict(ap.SETTINGS), presets, SMALL, repeats=1, device="this CPU")
    assert all(g["seconds"] > 0 and g["cost"]["kernels"] > 0 for g in data["graphs"].values())
    path = tmp_path / "graphs.json"
    path.write_text(json.dumps(data))
    calibration = ap.load_calibration(path, "tiny", dict(ap.SETTINGS))
    result = ap.project("tiny", presets=presets, workload=SMALL, calibration=calibration, cross=False)
    assert set(result["calibrated"]) == set(data["graphs"])
    assert "calibrated on this CPU" in ap.markdown(result)


def test_decode_crosscheck_against_mlx_lm_omni():
    """Bytes per step set decode speed: the projection must land near the published M4 Pro
    numbers for all four weight formats, with one consistent ratio."""
    rows = ap.crosscheck(ap.load_chips(), {}, ap.APPLE_LAUNCH_US)
    assert len(rows) == 4
    ratios = [r["ratio"] for r in rows]
    for r in rows:
        assert r["ratio"] == pytest.approx(r["projected_tok_s"] / r["tok_s"])
    assert 0.6 < min(ratios) and max(ratios) < 1.4 and max(ratios) / min(ratios) < 1.25


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,message", [
    ({"solver": "dopri5"}, "euler, midpoint, heun, rk4"),
    ({"points": 1}, "points must be an integer >= 2"),
    ({"evaluations": 0}, "evaluations per window must be an integer >= 1"),
    ({"chunk_frames": 100}, "multiple of the DiT block"),
    ({"first_chunk_frames": 0}, "multiple of the DiT block"),
    ({"cfg_fraction": 1.5}, r"cfg_fraction .* \[0, 1\]"),
    ({"window": 72}, "unknown settings"),
    ({"overlap": "yes"}, "overlap must be true or false"),
])
def test_bad_presets_are_refused(preset, message):
    with pytest.raises(ValueError, match=message):
        ap.check_presets({"mine": preset})
    with pytest.raises(ValueError, match="non-empty dict"):
        ap.check_presets({})


def test_bad_calibration_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="--measure"):
        ap.load_calibration(tmp_path / "missing.json", "3b", ap.SETTINGS)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a file written by --measure"):
        ap.load_calibration(bad, "3b", ap.SETTINGS)
    other = tmp_path / "7b.json"
    other.write_text(json.dumps({"size": "7b", "settings": ap.SETTINGS, "graphs": {}}))
    with pytest.raises(ValueError, match="measured at size '7b'"):
        ap.load_calibration(other, "3b", ap.SETTINGS)


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps({"quick": {"solver": "rk5"}}))
    with pytest.raises(SystemExit, match="error: preset 'quick': unknown solver 'rk5'"):
        ap.main(["--size", "tiny", "--presets", str(presets)])
    with pytest.raises(SystemExit, match="--measure writes its times to --out"):
        ap.main(["--size", "tiny", "--measure"])


def test_cli_writes_the_json_and_prints_the_table(tmp_path, capsys):
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps({"two-step euler": {"solver": "euler", "points": 3, "chunk_frames": 72}}))
    out = tmp_path / "projection.json"
    ap.main(["--size", "tiny", "--presets", str(presets), "--codes", "40", "--reply-tokens", "8",
             "--markdown", "--out", str(out)])
    table = capsys.readouterr().out
    assert "two-step euler: turn" in table and "| M4 Max |" in table
    result = json.loads(out.read_text())
    assert result["presets"]["two-step euler"]["evaluations"] == 2
    assert result["workload"]["codes"] == 40 and len(result["rows"]) == len(ap.load_chips()["chips"])
    with pytest.raises(SystemExit, match="--codes and --reply-tokens must be >= 1"):
        ap.main(["--size", "tiny", "--codes", "0"])
