"""The BigVGAN vocoder against transformers' `Qwen2_5OmniToken2WavBigVGANModel` on the fixtures."""


import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")

from fixtures import built, converted_component, load_reference_model  # noqa: E402

from omni_edge.models import bigvgan  # noqa: E402
from omni_edge.models.bigvgan import BigVGAN  # noqa: E402
from omni_edge.models.omni import OmniModel  # noqa: E402

PREFIX = "token2wav.code2wav_bigvgan_model."
RTOL = 1e-4  # of the waveform's peak (omni_spec.md §0: token2wav outputs at ≤ 1e-4)
PIECE_RTOL = 1e-5
FRAMES = 30
SAMPLES_PER_FRAME = 240


@pytest.fixture(scope="module")
def setup(fixture_dir, tmp_path_factory):
    """(converted vocoder weights without the prefix, BigVGAN config, reference vocoder)."""
    weights, cfg = converted_component(fixture_dir, tmp_path_factory.mktemp("conv"), PREFIX,
                                       lambda c: c.token2wav_config.bigvgan_config)
    return weights, cfg, load_reference_model(fixture_dir).token2wav.code2wav_bigvgan_model


@pytest.fixture(scope="module")
def vocoder(setup):
    weights, cfg, _ = setup
    return built(BigVGAN, cfg, weights)


@pytest.fixture(scope="module")
def mel():
    """Two log-mel-like clips [2, 80, T] (natural log; real ones span about -11…-1)."""
    return np.random.default_rng(0).uniform(-11.0, -1.0, (2, 80, FRAMES)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_wav(setup, mel):
    with torch.no_grad():
        return setup[2](torch.from_numpy(mel)).numpy()  # (2, T·240)


@pytest.fixture
def eager():
    """Run without mx.compile, so monkeypatched module constants take effect."""
    mx.disable_compile()
    yield
    mx.enable_compile()


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_matches_reference(vocoder, mel, reference_wav):
    wav = vocoder(mx.array(mel))
    assert wav.shape == (2, FRAMES * SAMPLES_PER_FRAME) == reference_wav.shape
    assert wav.dtype == mx.float32 and vocoder.samples_per_frame == SAMPLES_PER_FRAME
    assert np.abs(reference_wav).max() > 0.05  # the fixture's waveform is audible, not ~0
    assert rel_err(wav, reference_wav) <= RTOL


def test_parameter_keys_are_the_converted_keys(vocoder, setup):
    keys = {k for k, _ in tree_flatten(vocoder.parameters())}
    assert keys == set(setup[0])
    assert "ups.0.0.weight" in keys and "conv_post.bias" not in keys
    assert not any("filter" in k for k in keys)


def test_filter_equals_reference_buffer(setup):
    ref = setup[2].activation_post
    for buf in (ref.upsample.filter, ref.downsample.filter):
        np.testing.assert_allclose(bigvgan.kaiser_sinc_filter(), buf.numpy().reshape(-1),
                                   rtol=1e-6, atol=1e-8)


def test_activation_pieces_match_reference(setup):
    ref = setup[2].resblocks[0].activations[1]
    channels = ref.act.alpha.shape[0]
    x = np.random.default_rng(1).normal(0.0, 2.0, (2, channels, 17)).astype(np.float32)
    ours_x = mx.array(x.transpose(0, 2, 1))  # (B, T, C)
    alpha, beta = mx.array(ref.act.alpha.detach().numpy()), mx.array(ref.act.beta.detach().numpy())
    with torch.no_grad():
        up = ref.upsample(torch.from_numpy(x))
        cases = {
            "upsample": (bigvgan.upsample2(ours_x), up),
            "snake": (bigvgan.snake_beta(ours_x, alpha, beta), ref.act(torch.from_numpy(x))),
            "downsample": (bigvgan.downsample2(ours_x), ref.downsample(torch.from_numpy(x))),
            "activation": (bigvgan.anti_aliased_snake(ours_x, alpha, beta),
                           ref(torch.from_numpy(x))),
        }
    for name, (got, want) in cases.items():
        want = want.numpy().transpose(0, 2, 1)
        assert got.shape == want.shape, name
        assert rel_err(got, want) <= PIECE_RTOL, name


def test_conv_transpose_layout(setup, vocoder):
    """The converter's ConvTranspose1d rule ([in, out, k] → [out, k, in]) against torch."""
    rng = np.random.default_rng(2)
    for c_in, c_out, k, stride in [(6, 3, 11, 5), (4, 2, 7, 3), (3, 5, 4, 2)]:
        conv = torch.nn.ConvTranspose1d(c_in, c_out, k, stride, padding=(k - stride) // 2)
        w = OmniModel.sanitize({PREFIX + "ups.0.0.weight": mx.array(conv.weight.detach().numpy())})
        ours = nn.ConvTranspose1d(c_in, c_out, k, stride, padding=(k - stride) // 2)
        ours.load_weights([("weight", w[PREFIX + "ups.0.0.weight"]),
                           ("bias", mx.array(conv.bias.detach().numpy()))], strict=True)
        x = rng.normal(size=(2, c_in, 9)).astype(np.float32)
        with torch.no_grad():
            want = conv(torch.from_numpy(x)).numpy()
        got = ours(mx.array(x.transpose(0, 2, 1))).transpose(0, 2, 1)
        assert got.shape == want.shape and rel_err(got, want) <= PIECE_RTOL
    for ref_up, (our_up,) in zip(setup[2].ups, vocoder.ups):  # the converted fixture stages
        x = rng.normal(size=(1, ref_up[0].in_channels, 8)).astype(np.float32)
        with torch.no_grad():
            want = ref_up[0](torch.from_numpy(x)).numpy()
        got = our_up(mx.array(x.transpose(0, 2, 1))).transpose(0, 2, 1)
        assert rel_err(got, want) <= PIECE_RTOL


def zero_pad(x, left, right):
    return mx.pad(x, [(0, 0), (left, right), (0, 0)])


@pytest.mark.parametrize("name, value", [("edge_pad", zero_pad), ("UPSAMPLE_GAIN", 1.0)],
                         ids=["zero_padding", "no_upsample_gain"])
def test_wrong_variants_are_caught(vocoder, mel, reference_wav, eager, monkeypatch, name, value):
    monkeypatch.setattr(bigvgan, name, value)
    assert rel_err(vocoder(mx.array(mel)), reference_wav) > 10 * RTOL


def test_rejects_a_wrong_shape(vocoder, mel):
    with pytest.raises(ValueError, match="expected \\[batch, 80, frames\\]"):
        vocoder(mx.array(mel[0]))
