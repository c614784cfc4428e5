"""Token2Wav solver presets: names and bad input, their cost (DiT evaluations, FLOP per second of
speech counted independently from a built DiT's layers), their drift from the reference sampler's
offline output on both fixtures, and streaming with a preset."""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from omni_edge import load
from omni_edge.config import BigVGANConfig, DiTConfig, Token2WavConfig
from omni_edge.models import bigvgan
from omni_edge.convert.mlx import convert
from omni_edge.models.dit import DiT
from omni_edge.models.solvers import (SOLVERS, Solver, dit_flops_per_frame,
                                      flops_per_speech_second, get_solver)
from omni_edge.models.token2wav import token2wav_flops_per_speech_second
from omni_edge.streaming import StreamingToken2Wav

VOICE = "Ethan"
CODES = 60  # 120 mel frames: two streaming windows with a 24-frame first chunk
DRIFT_CODES = 40
# Measured max |preset - reference| / max |reference| of the offline waveform, 3b / 7b fixture
# (40 codes): rk4-6 1.3e-3 / 6.8e-4, rk4-4 9.7e-3 / 4.4e-3, fast 3.6e-2 / 3.1e-2, fastest
# 6.4e-2 / 7.7e-2 (60 codes: within 20% of these). The bounds leave about 2x headroom. These
# are random weights: the real model's drift, and what a listener hears of it, is for
# eval-speech to measure.
DRIFT_BOUND = {"reference": 0.0, "rk4-6": 3e-3, "rk4-4": 2e-2, "fast": 8e-2, "fastest": 0.15}
FAST_BUDGET = 1.2e12  # FLOP per second of speech (issue 13)


@pytest.fixture(scope="module")
def t2w_cases(tmp_path_factory):
    cache = {}

    def case(fixture):
        if fixture not in cache:
            out = convert(str(fixture), str(tmp_path_factory.mktemp("solvers") / "fp32"),
                          dtype="float32")
            rng = np.random.default_rng(3)
            cache[fixture] = {
                "t2w": load(str(out)).token2wav,
                "codes": rng.integers(0, 8193, size=CODES).tolist(),
                "noise": mx.array(rng.standard_normal((400, 80)).astype(np.float32)),
            }
        return cache[fixture]

    return case


def rel(a, ref) -> float:
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def test_presets_by_name_and_bad_input():
    assert get_solver() is SOLVERS["reference"] is get_solver("reference")
    ref = SOLVERS["reference"]
    assert (ref.method, ref.steps, ref.guidance, ref.sway) == ("rk4", 10, 0.5, -1.0)
    assert ref.evaluations == 36 and ref.row_evaluations == 72  # 9 intervals x 4, CFG doubles
    fastest = SOLVERS["fastest"]  # midpoint, 4 intervals, the first 2 guided
    assert fastest.evaluations == 8 and fastest.row_evaluations == 2 * 2 * 2 + 2 * 2
    assert get_solver("fast", steps=4).steps == 4 and get_solver("fast", steps=4).name == "fast+"
    assert not any(get_solver(guidance=0.0).guided(i) for i in range(9))
    with pytest.raises(ValueError, match="unknown Token2Wav solver 'turbo'.*reference, rk4-6"):
        get_solver("turbo")
    with pytest.raises(ValueError, match="unknown solver method 'heun'; choose one of: rk4"):
        Solver("heun")
    for steps in (0, 1):
        with pytest.raises(ValueError, match="steps must be an integer >= 2"):
            Solver(steps=steps)
    with pytest.raises(ValueError, match=r"cfg_intervals must lie in \[0, 3\]"):
        Solver(steps=4, cfg_intervals=5)
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        Solver(guidance=-1.0)
    with pytest.raises(TypeError, match="preset name"):
        get_solver(3)


def test_flops_per_frame_counted_from_the_built_layers():
    """The formula against the layers of a built DiT: every Linear applied per frame costs
    2 x its weight size; attention adds 2 x 2 x frames x inner per layer (QK^T and AV)."""
    cfg = DiTConfig(hidden_size=96, num_hidden_layers=3, num_attention_heads=3, head_dim=16,
                    ff_mult=3, emb_dim=40, enc_emb_dim=24, enc_dim=16,
                    look_ahead_layers=[1], look_backward_layers=[0, 2])
    dit, frames = DiT(cfg), 120
    per_frame = ("input_embed.proj", "to_q", "to_k", "to_v", "to_out", "ff.ff", "proj_out")
    linear_weights = sum(m.weight.size for name, m in dit.named_modules()
                         if isinstance(m, nn.Linear) and any(p in name for p in per_frame))
    attention = cfg.num_hidden_layers * 2 * 2 * frames * cfg.num_attention_heads * cfg.head_dim
    assert dit_flops_per_frame(cfg, frames) == 2 * linear_weights + attention


def test_bigvgan_flops_counted_from_the_built_convolutions():
    """Each conv of a built BigVGAN: 2 x its weight size per output sample (per input sample for
    a transposed conv), at its stage's samples per frame."""
    cfg = BigVGANConfig(upsample_initial_channel=48, upsample_rates=[3, 2],
                        upsample_kernel_sizes=[7, 4])
    vocoder = bigvgan.BigVGAN(cfg)
    total = 2 * vocoder.conv_pre.weight.size
    samples, per_stage = 1, len(vocoder.resblocks) // len(vocoder.ups)
    for s, (up,) in enumerate(vocoder.ups):
        total += 2 * up.weight.size * samples
        samples *= cfg.upsample_rates[s]
        for block in vocoder.resblocks[s * per_stage: (s + 1) * per_stage]:
            total += 2 * samples * sum(c.weight.size for c in block.convs1 + block.convs2)
    total += 2 * vocoder.conv_post.weight.size * samples
    assert bigvgan.flops_per_frame(cfg) == total


def test_flops_per_speech_second_at_full_size():
    cfg = DiTConfig()  # the 3B and 7B share this Token2Wav
    ref_216 = flops_per_speech_second(cfg, "reference", 216)
    ref_72 = flops_per_speech_second(cfg, "reference", 72)
    # issue 13's estimate from ~370 MFLOP a frame: 3.5 and 5.3 TFLOP per second of speech
    assert 3.3e12 < ref_216 < 4.0e12 and 5.0e12 < ref_72 < 6.0e12
    assert flops_per_speech_second(cfg, "fast", 216) <= FAST_BUDGET
    # offline: no window overlap, 100 frames a second
    assert flops_per_speech_second(cfg, "reference", None) == 72 * 100 * dit_flops_per_frame(
        cfg, 100)
    # BigVGAN adds ~0.2 TFLOP per second of speech (1.9 GFLOP a frame, 40 context frames a window)
    t2w = token2wav_flops_per_speech_second(Token2WavConfig(cfg, BigVGANConfig()), "fast", 216)
    assert t2w["dit"] == flops_per_speech_second(cfg, "fast", 216)
    assert 0.15e12 < t2w["bigvgan"] < 0.3e12 and t2w["total"] == t2w["dit"] + t2w["bigvgan"]
    assert token2wav_flops_per_speech_second(Token2WavConfig(cfg, BigVGANConfig()), "fastest",
                                             216)["total"] <= FAST_BUDGET
    with pytest.raises(ValueError, match="multiple of the DiT block"):
        flops_per_speech_second(cfg, "fast", 100)
    with pytest.raises(ValueError, match="unknown Token2Wav solver"):
        flops_per_speech_second(cfg, "nope", 216)


@pytest.mark.parametrize("preset", list(SOLVERS))
def test_drift_from_the_reference_offline_output(fixture_dir, t2w_cases, preset):
    s = t2w_cases(fixture_dir)
    codes, noise = s["codes"][:DRIFT_CODES], s["noise"][: 2 * DRIFT_CODES]
    if "reference" not in s:
        s["reference"] = np.array(s["t2w"](codes, VOICE, noise=noise))
    got = np.array(s["t2w"](codes, VOICE, noise=noise, solver=preset))
    drift = rel(got, s["reference"])
    print(f"\n{Path(fixture_dir).name} {preset}: drift {drift:.2e}")
    assert np.isfinite(got).all() and got.shape == (DRIFT_CODES * 480,)
    assert drift <= DRIFT_BOUND[preset]
    if preset != "reference":
        assert drift > 0  # a cheaper preset really ran a different sampler


def test_streaming_with_a_preset(fixture_3b, t2w_cases):
    s = t2w_cases(fixture_3b)
    t2w, noise = s["t2w"], s["noise"]
    short = s["codes"][:40]  # one window: exactly the offline output of the same preset
    st = StreamingToken2Wav(t2w, VOICE, noise=noise, solver="fast")
    (audio, start), = st.push(short) + st.finish()
    assert start == 0 and np.array_equal(audio, np.array(t2w(short, VOICE, noise=noise[:80],
                                                                solver="fast")))
    assert st.dit_calls == SOLVERS["fast"].evaluations == 10
    # several windows, queued before any is collected
    st = StreamingToken2Wav(t2w, VOICE, noise=noise, solver=SOLVERS["fastest"],
                            first_chunk_frames=24)
    pending = st.submit(s["codes"]) + st.submit(final=True)
    # 120 frames: the first window emits 24 - 20 frames, the second 48, the final one the rest
    assert len(pending) == 3 and st.dit_calls == 3 * SOLVERS["fastest"].evaluations
    chunks = [p.result() for p in pending]
    assert [c[1] for c in chunks] == [0, 4 * 240, 52 * 240]
    audio = np.concatenate([a for a, _ in chunks])
    offline = np.array(t2w(s["codes"], VOICE, noise=noise[: 2 * CODES], solver="fastest"))
    assert rel(audio, offline) <= 1e-5  # as the reference preset's windows
    with pytest.raises(ValueError, match="unknown Token2Wav solver 'rk2'"):
        StreamingToken2Wav(t2w, VOICE, noise=noise, solver="rk2")
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        StreamingToken2Wav(t2w, VOICE, noise=noise, steps=1)
