"""Footprint presets: each component's error against the unquantized (float32) model on the 3B
fixture, what each preset writes, the speaker encodings computed at conversion, the progress
bar, and the bad inputs (unknown preset, bits a component can't take)."""

import json

import mlx.core as mx
import numpy as np
import pytest

from omni_edge import load
from omni_edge.cli import main as cli_main
from omni_edge.convert.mlx import convert
from omni_edge.convert.presets import PRESETS, resolve
from omni_edge.memory import model_bytes

# Relative RMS error of each component's output, bounds ≈1.5x what the fixture measured (run
# with -s to print; README, "Memory"). The Thinker's ×10 q/k (sharpened attention) inflates its
# error; the DiT's blocks add little to the fixture's mel, so its 8-bit error is small here.
BOUNDS = {
    ("thinker", 8): 0.03, ("thinker", 4): 0.4,   # measured 1.8e-2, 0.28
    ("audio", 8): 0.008, ("audio", 4): 0.13,     # 5.1e-3, 8.5e-2
    ("vision", 8): 0.008, ("vision", 4): 0.14,   # 5.4e-3, 9.1e-2
    ("talker", 8): 0.01, ("talker", 4): 0.17,    # 6.9e-3, 0.12
    ("mel", "float16"): 1e-3, ("mel", 8): 1.5e-5,  # 5.8e-4, 9.9e-6
    ("wave", "float16"): 3e-3, ("wave", 8): 1e-5,  # 1.9e-3 (BigVGAN in float16 too), 6.4e-6
}


@pytest.fixture(scope="module")
def converted(fixture_3b, tmp_path_factory):
    """The float32 reference and two settings that change every component at once (each
    component is measured on its own inputs, so one conversion per setting suffices)."""
    root = tmp_path_factory.mktemp("presets")
    common = dict(dtype="float32", progress=False, q_group_size=32)  # the fixture is 32 wide
    return {
        "ref": convert(str(fixture_3b), str(root / "ref"), **common),
        8: convert(str(fixture_3b), str(root / "q8"), q_bits=8, audio_bits=8, vision_bits=8,
                   talker_bits=8, token2wav_bits=8, **common),
        4: convert(str(fixture_3b), str(root / "q4"), q_bits=4, audio_bits=4, vision_bits=4,
                   talker_bits=4, token2wav_dtype="float16", **common),
    }


def rel(a, b) -> float:
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def outputs(model) -> dict:
    """Each component's output on fixed inputs."""
    rng = np.random.default_rng(0)
    th = model.config.thinker_config
    ids = mx.array(rng.integers(0, 1000, (1, 24)))
    mel = mx.array(rng.standard_normal((th.audio_config.num_mel_bins, 300)).astype(np.float32))
    v = th.vision_config
    patches = mx.array(rng.standard_normal((16, 3 * v.temporal_patch_size * v.patch_size ** 2)),
                       dtype=mx.float32)
    embeds = mx.array(rng.standard_normal((1, 12, model.talker.cfg.embedding_size)), dtype=mx.float32)
    codes = mx.array(rng.integers(0, 100, 30))
    noise = mx.array(rng.standard_normal((60, 80)).astype(np.float32))
    voice = model.voices["Chelsie"]
    return {
        "thinker": model.thinker(ids),
        "audio": model.thinker.audio_tower([mel]),
        "vision": model.thinker.visual(patches, [(1, 4, 4)]),
        "talker": model.talker(embeds),
        "mel": model.token2wav.sample_mel(codes, mx.array(voice["cond"]), mx.array(voice["ref_mel"]), noise),
        "wave": model.token2wav(codes, "Chelsie", noise),
    }


@pytest.fixture(scope="module")
def errors(converted):
    ref = outputs(load(str(converted["ref"])))
    errs = {}
    for setting in (8, 4):
        out = outputs(load(str(converted[setting])))
        for part in ref:
            key = (part, setting if part not in ("mel", "wave") or setting == 8 else "float16")
            errs[key] = rel(out[part], ref[part])
    print("\nrelative RMS error vs float32:", {f"{p}@{s}": f"{e:.2e}" for (p, s), e in errs.items()})
    return errs


@pytest.mark.parametrize("key", list(BOUNDS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_component_error_is_bounded_and_real(errors, key):
    assert 0 < errors[key] <= BOUNDS[key], errors[key]


@pytest.mark.parametrize("part", ["thinker", "audio", "vision", "talker"])
def test_four_bits_err_more_than_eight(errors, part):
    assert errors[(part, 4)] > 2 * errors[(part, 8)]


def test_each_setting_writes_what_it_says(converted):
    cfg = json.loads((converted[4] / "config.json").read_text())
    comps = cfg["quantization"]["components"]
    assert {c: v["bits"] for c, v in comps.items()} == {
        "thinker": 4, "thinker.audio_tower": 4, "thinker.visual": 4, "talker": 4}
    assert cfg["omni_edge"]["token2wav_dtype"] == "float16"
    index = json.loads((converted[8] / "model.safetensors.index.json").read_text())["weight_map"]
    dit_block = "token2wav.code2wav_dit_model.transformer_blocks.0.attn.to_q"
    assert f"{dit_block}.scales" in index
    # proj_out sets the DiT's compute dtype; BigVGAN is convolutions: both stay in float
    assert "token2wav.code2wav_dit_model.proj_out.scales" not in index
    for name in ("ref", 8, 4):
        assert (converted[name] / "speaker_encodings.safetensors").is_file()


def test_smaller_settings_load_smaller(converted):
    sizes = {k: model_bytes(load(str(v))) for k, v in converted.items()}
    assert sizes[4] < sizes[8] < sizes["ref"]


def test_stored_speaker_encoding_equals_the_ecapa_at_run_time(converted):
    stored = load(str(converted["ref"]))
    ecapa = load(str(converted["ref"]), speaker_encoder=True)
    dit_a, dit_b = (m.token2wav.code2wav_dit_model for m in (stored, ecapa))
    assert type(dit_a.input_embed.spk_encoder).__name__ == "SpeakerTable"
    assert type(dit_b.input_embed.spk_encoder).__name__ == "ECAPA"
    mel = mx.array(stored.voices["Ethan"]["ref_mel"])
    np.testing.assert_allclose(np.array(dit_a.speaker_encoding(mel)),
                               np.array(dit_b.speaker_encoding(mel)), rtol=1e-5, atol=1e-6)
    # ...and a voice of one's own is refused without the ECAPA, with the fix
    with pytest.raises(ValueError, match="speaker_encoder=True"):
        dit_a.speaker_encoding(mel + 1)


def test_presets_resolve_as_documented():
    assert resolve("q4-small").bits == {"thinker": 4, "thinker.audio_tower": 4,
                                        "thinker.visual": 4, "talker": 8}
    assert resolve("q4-small").token2wav_dtype == "float16"
    assert resolve(quantize=True).bits == resolve("q4").bits  # plain -q
    assert resolve("q4", talker_bits=0).bits.get("talker") is None  # one component overridden
    assert resolve().bits == {} and resolve().token2wav_dtype == "float32"
    assert set(PRESETS) == {"bf16", "q8", "q4", "q4-small", "q4-min"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="tiny"), r"--preset 'tiny' does not exist; choose one of: bf16"),
    (dict(token2wav_bits=4), r"--token2wav-bits 4: token2wav can be quantized to 8 bits"),
    (dict(audio_bits=3), r"--audio-bits 3: thinker.audio_tower can be quantized to 4, 8 bits"),
    (dict(q_bits=6), r"--q-bits 6"),
    (dict(token2wav_dtype="int8"), r"--token2wav-dtype 'int8' is not supported; choose one of float32"),
])
def test_bad_preset_and_bits_are_refused_before_anything_is_written(fixture_3b, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        convert(str(fixture_3b), str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_bad_preset_is_a_clear_error(fixture_3b, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["convert", "--hf-path", str(fixture_3b), "--mlx-path", str(tmp_path / "o"),
                  "--preset", "q2"])
    assert exit_.value.code == 2
    assert "--preset 'q2' does not exist" in capsys.readouterr().err


def test_progress_bar_counts_tensors(fixture_3b, tmp_path, capsys):
    convert(str(fixture_3b), str(tmp_path / "o"), preset="q4-min")
    err = capsys.readouterr().err
    n = len(json.loads((fixture_3b / "model.safetensors.index.json").read_text())["weight_map"])
    assert f"{n}/{n}" in err and "tensor" in err


def test_a_model_converted_without_encodings_loads_its_ecapa(converted, tmp_path):
    import shutil

    old = shutil.copytree(converted["ref"], tmp_path / "old")
    (old / "speaker_encodings.safetensors").unlink()
    dit = load(str(old)).token2wav.code2wav_dit_model
    assert type(dit.input_embed.spk_encoder).__name__ == "ECAPA"
    mel = mx.array(load(str(converted["ref"])).voices["Chelsie"]["ref_mel"])
    assert dit.speaker_encoding(mel + 1).shape[0] == 2  # any voice, as before
