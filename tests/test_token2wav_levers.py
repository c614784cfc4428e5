"""Token2Wav speed levers on the fixtures: float16 DiT and BigVGAN (error against float32),
compiled graphs (same output, fewer kernels), the voice's ECAPA encoding kept per voice, and the
DiT's block masks built once per length."""

import mlx.core as mx
import numpy as np
import pytest

from omni_edge import load
from omni_edge.convert.mlx import convert
from omni_edge.kernels import count_kernels, primitives
from omni_edge.models import dit as dit_module
from omni_edge.models.dit import Conditions
from omni_edge.streaming import StreamingToken2Wav

VOICE = "Chelsie"
CODES = 40
# Measured max |fp16 - fp32| / max |fp32| (3b / 7b fixture, these 40 codes): the DiT's mel
# 7.4e-4 / 8.4e-4, BigVGAN alone (from the fp32 mel) 4.0e-3 / 2.7e-3 (100 codes: mel 1.3e-3 /
# 9.6e-4, vocoder 4.3e-3 / 2.4e-3, the whole Token2Wav 3.5e-3 / 3.0e-3; bfloat16 for comparison
# 1.3e-2 / 7.8e-3 on the mel). Bounds: about 4x.
FP16_MEL_TOL = 5e-3
FP16_WAV_TOL = 1.5e-2
COMPILED_TOL = 1e-5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = {}

    def get(fixture):
        if fixture not in cache:
            cache[fixture] = str(convert(str(fixture), str(tmp_path_factory.mktemp("lev") / "fp32"),
                                         dtype="float32"))
        return cache[fixture]

    return get


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 8193, size=CODES).tolist()
    return codes, mx.array(rng.standard_normal((2 * CODES, 80)).astype(np.float32))


def rel(a, ref) -> float:
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def mel_of(t2w, codes, noise):
    spk = t2w.voice(VOICE)
    return t2w.sample_mel(codes, mx.array(spk["cond"]), mx.array(spk["ref_mel"]), noise)


def test_float16_dit_and_bigvgan_error(fixture_dir, converted, inputs):
    codes, noise = inputs
    fp32 = load(converted(fixture_dir)).token2wav
    mel32 = mel_of(fp32, codes, noise)
    wav32 = np.array(fp32.code2wav_bigvgan_model(mel32)[0])
    fp16 = load(converted(fixture_dir)).token2wav
    fp16.set_dtype(mx.float16)
    mel16 = mel_of(fp16, codes, noise)
    assert mel16.dtype == mx.float32  # the sampler's state stays float32
    wav16 = fp16.code2wav_bigvgan_model(mel32)[0]
    assert wav16.dtype == mx.float32
    mel_err, wav_err = rel(mel16, mel32), rel(wav16, wav32)
    print(f"\nfloat16: mel {mel_err:.1e}, vocoder {wav_err:.1e}")
    assert np.isfinite(np.array(mel16)).all() and np.isfinite(np.array(wav16)).all()
    assert 0 < mel_err <= FP16_MEL_TOL and 0 < wav_err <= FP16_WAV_TOL


def test_compiled_bigvgan_matches_eager_with_fewer_kernels(fixture_3b, converted, inputs):
    t2w = load(converted(fixture_3b)).token2wav
    vocoder = t2w.code2wav_bigvgan_model
    mel = mx.array(np.random.default_rng(2).uniform(-11, -1, (1, 80, 2 * CODES)).astype(np.float32))
    vocoder.compiled = False
    eager = vocoder(mel)
    eager_kernels = count_kernels(vocoder.forward(mel))
    vocoder.compiled = True
    compiled = vocoder(mel)
    compiled_kernels = count_kernels(vocoder(mel))
    print(f"\nBigVGAN window kernels: eager {eager_kernels}, compiled {compiled_kernels}")
    assert rel(compiled, eager) <= COMPILED_TOL
    # measured on the CPU backend: 1957 -> 1093 (with mx.pad's edge mode instead of the
    # gathers, 2611 -> 1457); an anti-aliased SnakeBeta is 8 kernels once compiled
    assert compiled_kernels < 0.7 * eager_kernels
    fused = [name for name in primitives(vocoder(mel)) if name.startswith("Compiled")]
    assert any("Sin" in name and "Divide" in name for name in fused)  # SnakeBeta in one kernel


def test_compiled_dit_step_matches_eager_with_fewer_kernels(fixture_3b, converted, inputs):
    dit = load(converted(fixture_3b)).token2wav.code2wav_dit_model
    rng = np.random.default_rng(5)
    y = mx.array(rng.standard_normal((1, 2 * CODES, 80)).astype(np.float32))
    feats = mx.array(rng.standard_normal((2, 2 * CODES, dit.input_embed.proj.weight.shape[1] - 80))
                     .astype(np.float32))
    t0, t1 = mx.array(0.2), mx.array(0.5)
    eager_v = dit.guided_velocity(y, t0, Conditions(feats, True), 0.5)
    eager_kernels = count_kernels(eager_v)
    step = dit._compiled_step("euler", True, 0.5)(y, t0, t1, feats)
    compiled_kernels = count_kernels(step)
    print(f"\nDiT evaluation kernels: eager {eager_kernels}, compiled {compiled_kernels}")
    assert rel(step, y + (t1 - t0) * eager_v) <= COMPILED_TOL
    assert compiled_kernels < 0.7 * eager_kernels  # measured on the CPU backend: 278 -> 151


def test_voice_encoding_is_kept_per_voice(fixture_3b, converted, inputs, monkeypatch):
    codes, noise = inputs
    t2w = load(converted(fixture_3b)).token2wav
    dit = t2w.code2wav_dit_model
    calls = []
    original = dit.speaker_encoding
    monkeypatch.setattr(dit, "speaker_encoding",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    for _ in range(3):
        st = StreamingToken2Wav(t2w, VOICE, noise=noise)
        st.push(codes[:5])
    assert len(calls) == 1  # three utterances, one ECAPA run
    t2w(codes[:5], VOICE, noise=noise[:10])  # offline, same voice and guidance: kept too
    assert len(calls) == 1
    StreamingToken2Wav(t2w, "Ethan", noise=noise)
    StreamingToken2Wav(t2w, VOICE, noise=noise, guidance=0.0)  # no CFG: one row, not two
    assert len(calls) == 3
    spk = t2w.voice(VOICE)
    StreamingToken2Wav(t2w, dict(spk), noise=noise)  # an unnamed voice is not kept
    StreamingToken2Wav(t2w, dict(spk), noise=noise)
    assert len(calls) == 5
    kept = t2w.speaker_encoding(VOICE)
    before = len(calls)
    t2w.set_dtype(mx.float16)  # new weights: computed again, in the new dtype
    assert t2w.speaker_encoding(VOICE).dtype == mx.float16 and kept.dtype == mx.float32
    assert len(calls) == before + 1


def test_block_masks_built_once_per_length(fixture_7b, converted, monkeypatch):
    dit = load(converted(fixture_7b)).token2wav.code2wav_dit_model
    built = []
    original = dit_module.block_mask
    monkeypatch.setattr(dit_module, "block_mask",
                        lambda *a: built.append(a) or original(*a))
    reaches = {(b.back, b.ahead) for b in dit.transformer_blocks}
    assert len(dit.transformer_blocks) > len(reaches)  # else the test shows nothing
    rng = np.random.default_rng(0)
    feats = mx.array(rng.standard_normal((1, 50, dit.input_embed.proj.weight.shape[1] - 80))
                     .astype(np.float32))
    for _ in range(2):
        dit.velocity(mx.zeros((1, 50, 80)), 0.3, Conditions(feats, False))
    assert len(built) == len(reaches)  # once per reach, for both calls
    assert {a[0] for a in built} == {50}
