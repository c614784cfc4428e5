"""The audio encoder against transformers' `Qwen2_5OmniAudioEncoder` on the fixture checkpoints."""


import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")

from fixtures import built, converted_component, load_reference_thinker  # noqa: E402

from omni_edge.models import audio_encoder  # noqa: E402
from omni_edge.models.audio_encoder import AudioEncoder, num_audio_tokens  # noqa: E402

PREFIX = "thinker.audio_tower."
RTOL = 1e-5
BF16_RTOL = 2e-2
MEL_BINS = 128
CHUNK = 200  # 2 · n_window mel frames
CASES = {
    "one_full_chunk": [200],
    "chunks_and_odd_tail": [731],
    "one_frame": [1],
    "three_frames": [3],
    "three_clips": [51, 403, 1000],  # odd chunk tails: conv2 reads past each chunk end
}


@pytest.fixture(scope="module")
def setup(fixture_dir, tmp_path_factory):
    """(converted audio-tower weights without the prefix, audio config, reference audio tower)."""
    weights, cfg = converted_component(fixture_dir, tmp_path_factory.mktemp("conv"), PREFIX,
                                       lambda c: c.thinker_config.audio_config)
    return weights, cfg, load_reference_thinker(fixture_dir).model.audio_tower


@pytest.fixture(scope="module")
def encoder(setup):
    weights, cfg, _ = setup
    return built(AudioEncoder, cfg, weights)


def clips(lengths, seed=0):
    """Random log-mel-like clips [mel, n] (real log-mels lie roughly in [-1.5, 1.5])."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 0.6, (MEL_BINS, n)).clip(-1.5, 1.5).astype(np.float32) for n in lengths]


def ours(enc, feats) -> np.ndarray:
    return np.asarray(enc([mx.array(f) for f in feats]).astype(mx.float32))


def reference(tower, feats) -> np.ndarray:
    lens = torch.tensor([f.shape[1] for f in feats])
    with torch.no_grad():
        out = tower(input_features=torch.from_numpy(np.concatenate(feats, axis=1)),
                    feature_lens=lens, aftercnn_lens=(lens - 1) // 2 + 1)
    return out.last_hidden_state.numpy()


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("lengths", list(CASES.values()), ids=list(CASES))
def test_matches_reference(encoder, setup, lengths):
    feats = clips(lengths)
    got, want = ours(encoder, feats), reference(setup[2], feats)
    n_tokens = sum(num_audio_tokens(n) for n in lengths)
    assert got.shape == want.shape == (n_tokens, setup[1].output_dim)
    if n_tokens:
        assert rel_err(got, want) <= RTOL


def test_token_counts():
    # 1 frame encodes to nothing; 25 tokens per second of 100 mel frames.
    frames = (1, 2, 3, 4, 5, 200, 731, 3000)
    assert [num_audio_tokens(n) for n in frames] == [0, 0, 1, 1, 1, 50, 183, 750]


def test_attention_stays_within_chunks(encoder, setup):
    """Editing the second chunk of a clip moves only that chunk's tokens (50 per full chunk)."""
    base = clips([731], seed=1)
    edited = [base[0].copy()]
    edited[0][:, CHUNK:2 * CHUNK] = clips([CHUNK], seed=2)[0]
    second = slice(50, 100)
    for run in (lambda f: ours(encoder, f), lambda f: reference(setup[2], f)):
        a, b = run(base), run(edited)
        moved = np.abs(a - b).max(axis=1) / np.abs(a).max()
        assert moved[second].min() > 1e-3
        assert moved[:50].max() == 0.0 and moved[100:].max() == 0.0


def test_positions_that_do_not_restart_per_chunk_fail(encoder, setup, monkeypatch):
    feats = clips([731])
    want = reference(setup[2], feats)
    n_chunks, table = -(-731 // CHUNK), audio_encoder.sinusoids

    def running_positions(length, dim):  # chunk c at positions c·length … as one long sequence
        full = table(n_chunks * length, dim)
        return mx.stack([full[c * length:(c + 1) * length] for c in range(n_chunks)])  # (C, T', D)

    monkeypatch.setattr(audio_encoder, "sinusoids", running_positions)
    assert rel_err(ours(encoder, feats), want) > 100 * RTOL


def test_parameters_are_the_checkpoint_tensors(setup):
    weights, cfg, _ = setup
    params = dict(tree_flatten(AudioEncoder(cfg).parameters()))
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    assert shapes == {k: tuple(v.shape) for k, v in weights.items()}
    assert len(params) == 4 + 15 * cfg.encoder_layers + 5
    assert not any("posit" in k or "sinus" in k for k in params)


def test_bfloat16_follows_the_weights(setup):
    weights, cfg, tower = setup
    enc = AudioEncoder(cfg)
    enc.load_weights([(k, v.astype(mx.bfloat16)) for k, v in weights.items()], strict=True)
    feats = clips(CASES["three_clips"])
    out = enc([mx.array(f) for f in feats])
    assert out.dtype == mx.bfloat16
    assert rel_err(np.asarray(out.astype(mx.float32)), reference(tower, feats)) <= BF16_RTOL


def test_rejects_bad_shapes(encoder):
    with pytest.raises(ValueError, match="expected \\[128, n_frames\\]"):
        encoder([mx.zeros((80, 100))])
    with pytest.raises(ValueError, match="n_frames >= 1"):
        encoder([mx.zeros((MEL_BINS, 0))])
    assert encoder([]).shape == (0, encoder.cfg.output_dim)
