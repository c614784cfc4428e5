"""The vision encoder against transformers' `Qwen2_5OmniVisionEncoder` on the fixture checkpoints.

The fixture's vision tower (depth 2, hidden 32, 2 heads, block 1 full attention, window 112 px =
4×4 merged tokens = 8×8 patches) is small, but every grid below has several windows per frame,
most of them partial, so the window order, the per-window attention and the per-frame full
attention all move the output."""


import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")

from fixtures import built, converted_component, load_reference_thinker  # noqa: E402
from transformers import vision_utils  # noqa: E402

from omni_edge.models import vision_encoder  # noqa: E402
from omni_edge.models.vision_encoder import VisionEncoder  # noqa: E402

PREFIX = "thinker.visual."
RTOL = 1e-5
BF16_RTOL = 2e-2
PATCH_DIM = 3 * 2 * 14 * 14
CASES = {
    "partial_windows": [(1, 10, 14)],  # 5×7 merged tokens: windows of 16, 12, 4 and 3 tokens
    "video": [(2, 10, 12)],  # two temporal patch groups (4 frames)
    "several": [(1, 10, 14), (2, 6, 18), (1, 16, 16)],  # the last one has only full windows
    "one_token": [(1, 2, 2)],
}
GRIDS = [g for grids in CASES.values() for g in grids] + [(1, 8, 8), (3, 22, 12), (1, 2, 30)]


@pytest.fixture(scope="module")
def setup(fixture_dir, tmp_path_factory):
    """(converted vision-tower weights without the prefix, vision config, reference tower)."""
    weights, cfg = converted_component(fixture_dir, tmp_path_factory.mktemp("conv"), PREFIX,
                                       lambda c: c.thinker_config.vision_config)
    return weights, cfg, load_reference_thinker(fixture_dir).model.visual


@pytest.fixture(scope="module")
def encoder(setup):
    weights, cfg, _ = setup
    return built(VisionEncoder, cfg, weights)


def patches(grids, seed=0) -> np.ndarray:
    """Random normalized-pixel-like patches [Σ t·h·w, 1176]."""
    n = sum(t * h * w for t, h, w in grids)
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, PATCH_DIM)).astype(np.float32)


def ours(enc, pixels, grids) -> np.ndarray:
    return np.asarray(enc(mx.array(pixels), grids).astype(mx.float32))


def reference(tower, pixels, grids) -> np.ndarray:
    with torch.no_grad():
        out = tower(torch.from_numpy(pixels), grid_thw=torch.tensor(grids))
    return out.pooler_output.numpy()


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("grids", list(CASES.values()), ids=list(CASES))
def test_matches_reference(encoder, setup, grids):
    pixels = patches(grids)
    got, want = ours(encoder, pixels, grids), reference(setup[2], pixels, grids)
    assert got.shape == want.shape == (sum(t * h * w for t, h, w in grids) // 4, setup[1].out_hidden_size)
    assert rel_err(got, want) <= RTOL


def test_fixture_exercises_windows(setup):
    """Several windows per frame, partial ones among them, and a block of each kind."""
    cfg = setup[1]
    assert cfg.depth == 2 and list(cfg.fullatt_block_indexes) == [1] and cfg.window_size == 112
    _, lengths = vision_encoder.window_order(CASES["partial_windows"], 2, 4)
    assert lengths.tolist() == [16, 12, 4, 3]


@pytest.mark.parametrize("grid", GRIDS)
def test_index_computations_match_reference(grid):
    """Window order, window lengths and rotary positions, integer-exact."""
    thw = torch.tensor([grid])
    want_index, want_cu = vision_utils.get_vision_window_index(thw, 2, 112, 14)
    tokens, lengths = vision_encoder.window_order([grid], 2, 4)
    assert tokens.tolist() == want_index.tolist()
    assert np.concatenate([[0], np.cumsum(lengths * 4)]).tolist() == want_cu.tolist()
    want_pos = vision_utils.get_vision_position_ids(thw, 2)
    assert vision_encoder.patch_positions([grid], 2).tolist() == want_pos.tolist()


def test_attention_stays_within_frames(encoder, setup):
    """Editing a video's second temporal patch group moves only that group's tokens."""
    grids = CASES["video"]
    base = patches(grids, seed=1)
    edited = base.copy()
    frame = 10 * 12
    edited[frame:] = patches([(1, 10, 12)], seed=2)
    for run in (lambda p: ours(encoder, p, grids), lambda p: reference(setup[2], p, grids)):
        a, b = run(base), run(edited)
        moved = np.abs(a - b).max(axis=1) / np.abs(a).max()
        assert moved[: frame // 4].max() == 0.0
        assert moved[frame // 4:].min() > 1e-3


def test_wrong_attention_layouts_fail(encoder, setup, monkeypatch):
    """Each of these bugs moves the output far past the tolerance, so the parity test can fail."""
    grids = CASES["several"]
    pixels = patches(grids)
    want = reference(setup[2], pixels, grids)
    order, positions = vision_encoder.window_order, vision_encoder.patch_positions
    layout, segments = encoder.layout, vision_encoder.plan_segments

    def raster_windows(grid, merge, window):  # the same window sizes over unpermuted tokens
        tokens, lengths = order(grid, merge, window)
        return np.arange(tokens.size), lengths

    def per_input(grid):
        lay = layout(grid)
        lay.frames = segments(np.array([t * h * w for t, h, w in grid]))
        return lay

    bugs = {
        "full attention in every block": (encoder, "full_attention", {0, 1}),
        "windows without the reorder": (vision_encoder, "window_order", raster_windows),
        "rows and columns swapped": (vision_encoder, "patch_positions", lambda g, m: positions(g, m)[:, ::-1]),
        "full attention across a video's frames": (encoder, "layout", per_input),
    }
    for name, (target, attr, value) in bugs.items():
        with monkeypatch.context() as m:
            m.setattr(target, attr, value)
            err = rel_err(ours(encoder, pixels, grids), want)
        assert err > 100 * RTOL, name


def test_parameters_are_the_checkpoint_tensors(setup):
    weights, cfg, _ = setup
    params = dict(tree_flatten(VisionEncoder(cfg).parameters()))
    assert {k: tuple(v.shape) for k, v in params.items()} == {k: tuple(v.shape) for k, v in weights.items()}
    assert len(params) == 1 + 16 * cfg.depth + 5
    assert weights["patch_embed.proj.weight"].shape == (cfg.hidden_size, PATCH_DIM)


def test_bfloat16_follows_the_weights(setup):
    weights, cfg, tower = setup
    enc = VisionEncoder(cfg)
    enc.load_weights([(k, v.astype(mx.bfloat16)) for k, v in weights.items()], strict=True)
    grids = CASES["several"]
    pixels = patches(grids)
    out = enc(mx.array(pixels), grids)
    assert out.dtype == mx.bfloat16
    assert rel_err(np.asarray(out.astype(mx.float32)), reference(tower, pixels, grids)) <= BF16_RTOL


def test_rejects_bad_inputs(encoder):
    with pytest.raises(ValueError, match=r"needs \[140, 1176\]"):
        encoder(mx.zeros((139, PATCH_DIM)), [(1, 10, 14)])
    with pytest.raises(ValueError, match=r"needs \[140, 1176\]"):
        encoder(mx.zeros((140, 588)), [(1, 10, 14)])
    with pytest.raises(ValueError, match="multiples of spatial_merge_size 2"):
        encoder(mx.zeros((135, PATCH_DIM)), [(1, 9, 15)])
    with pytest.raises(ValueError, match="t must be >= 1"):
        encoder(mx.zeros((0, PATCH_DIM)), [(0, 4, 4)])
    assert encoder(mx.zeros((0, PATCH_DIM)), []).shape == (0, encoder.cfg.out_hidden_size)
