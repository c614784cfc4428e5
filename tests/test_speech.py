"""Speech end to end: Token2Wav against transformers from the same codes and noise, the
speak=True API and `omni-edge generate --speak`."""

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from fixtures import load_reference_model  # noqa: E402

from omni_edge import generate, load  # noqa: E402
from omni_edge.cli import main as cli_main  # noqa: E402
from omni_edge.convert.mlx import convert  # noqa: E402

N_CODES = 40  # 80 mel frames: several 24-frame DiT blocks


@pytest.fixture(scope="module")
def setup(fixture_dir, tmp_path_factory):
    out = convert(str(fixture_dir), str(tmp_path_factory.mktemp("conv") / "fp32"), dtype="float32")
    return load(str(out)), fixture_dir, out


def test_token2wav_matches_transformers_from_the_same_codes_and_noise(setup, monkeypatch):
    model, fixture, _ = setup
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8193, size=N_CODES)
    noise = rng.standard_normal((1, 30000, 80)).astype(np.float32)
    voice = model.voices["Ethan"]
    ref = load_reference_model(fixture).token2wav.eval()
    # 5.24 draws randn([1, N, 80]) (4.57.6 drew 30000 frames and sliced): both are noise[:, :N]
    monkeypatch.setattr(torch, "randn", lambda shape, **k: torch.tensor(noise[:, : shape[1]]))
    with torch.no_grad():
        expected = ref(torch.tensor(codes)[None], torch.tensor(voice["cond"]),
                       torch.tensor(voice["ref_mel"])).reshape(-1).numpy()
    ours = np.asarray(model.token2wav(codes.tolist(), "Ethan", noise=mx.array(noise[0, : 2 * N_CODES])))
    assert ours.shape == expected.shape == (N_CODES * 480,)
    peak = np.abs(expected).max()
    assert peak > 1e-3
    assert np.abs(ours - expected).max() <= 1e-4 * peak
    # the same codes in another voice sound different
    other = np.asarray(model.token2wav(codes.tolist(), "Chelsie", noise=mx.array(noise[0, : 2 * N_CODES])))
    assert np.abs(other - ours).max() > 1e-2 * peak


def test_token2wav_bad_input(setup):
    model, _, _ = setup
    with pytest.raises(ValueError, match="unknown voice 'Zoe'.*Chelsie"):
        model.token2wav([1, 2, 3], "Zoe")
    with pytest.raises(ValueError, match=r"codec ids must lie in \[0, 8194\)"):
        model.token2wav([1, 8300], "Chelsie")
    with pytest.raises(ValueError, match="no codes"):
        model.token2wav([], "Chelsie")


def test_generate_speaks(setup):
    model, _, _ = setup
    result = generate(model, "Say hi.", speak=True, voice="Ethan", max_tokens=6, max_codec_tokens=20,
                      talker_temperature=0.0, seed=1)
    assert result.audio.dtype == np.float32 and result.sample_rate == 24000
    assert len(result.codec_ids) > 0 and result.audio.shape == (480 * len(result.codec_ids),)
    assert all(0 <= c < 8194 for c in result.codec_ids)
    assert result.stats.codec_tokens == len(result.codec_ids) and result.stats.audio_seconds > 0
    again = generate(model, "Say hi.", speak=True, voice="Ethan", max_tokens=6, max_codec_tokens=20,
                     talker_temperature=0.0, seed=1)
    assert again.codec_ids == result.codec_ids and np.array_equal(again.audio, result.audio)


def test_cli_speak_writes_a_24khz_wav(setup, tmp_path, capsys):
    _, _, out = setup
    wav = tmp_path / "reply.wav"
    cli_main(["generate", "--model", str(out), "--prompt", "hello", "--max-tokens", "4",
              "--speak", str(wav), "--voice", "Chelsie", "--max-codec-tokens", "12"])
    data, rate = sf.read(wav)
    assert rate == 24000 and data.ndim == 1 and len(data) % 480 == 0 and len(data) > 0
    assert "Speech:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli_main(["generate", "--model", str(out), "--prompt", "hello", "--speak", str(tmp_path / "x.wav"),
                  "--voice", "Nobody"])
    assert exc.value.code == 2 and "Nobody" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
