"""A bf16-converted model against the float32 transformers reference, and sampling that reads
float32 logits whatever the model's dtype (transformers upcasts before its processors)."""

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fixtures import load_reference_thinker  # noqa: E402

from omni_edge import load  # noqa: E402
from omni_edge.convert.mlx import convert  # noqa: E402
from omni_edge.decode import generate_step  # noqa: E402
from omni_edge.sampling import make_repetition_penalty, make_talker_sampler, process  # noqa: E402

# Measured: bf16 weights and activations put the logits within 2.0e-2 (3B-shaped fixture) and
# 1.6e-2 (7B-shaped) of the float32 reference, relative to its largest logit; 1.5x room.
BF16_LOGITS_RTOL = 3e-2
GREEDY_PREFIX = 4  # greedy ids equal to the float32 reference's for at least this many tokens
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Name three rivers, please."}]}]


@pytest.fixture(scope="module")
def pair(fixture_dir, tmp_path_factory):
    out = convert(str(fixture_dir), str(tmp_path_factory.mktemp("conv") / "bf16"), dtype="bfloat16")
    return load(str(out)), load_reference_thinker(fixture_dir)


def reference_logits(ref, ids) -> np.ndarray:
    with torch.no_grad():
        return ref(input_ids=torch.tensor([ids])).logits[0].numpy()


def test_bf16_logits_near_the_float32_reference(pair):
    model, ref = pair
    assert model.thinker.model.embed_tokens.weight.dtype == mx.bfloat16
    ids = model.processor.encode(MESSAGES)
    ours = np.asarray(model.thinker(mx.array([ids]))[0].astype(mx.float32))
    want = reference_logits(ref, ids)
    err = np.abs(ours - want).max() / np.abs(want).max()
    assert err <= BF16_LOGITS_RTOL, err
    assert err > 1e-5  # it really ran in bf16: float32 would be within 1e-5


def test_bf16_greedy_prefix_matches_the_float32_reference(pair):
    model, ref = pair
    ids = model.processor.encode(MESSAGES)
    ours = list(generate_step(model, ids, max_tokens=GREEDY_PREFIX))
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor([ids]), max_new_tokens=GREEDY_PREFIX,
                           do_sample=False, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert ours == out[0, len(ids):].tolist()


def test_penalty_reads_float32_logits_of_a_bf16_model(pair):
    """The repetition penalty on a bf16 model's logits equals the float64 computation on the
    upcast logits; run on bf16 (as before), it rounds each result to 8 bits and is off ~100x
    past this tolerance."""
    model, _ = pair
    ids = model.processor.encode(MESSAGES)
    logits = model.thinker(mx.array([ids]))[:, -1, :]
    assert logits.dtype == mx.bfloat16
    seen = mx.array(ids[-12:], dtype=mx.uint32)
    ours = np.asarray(process(logits, seen, [make_repetition_penalty(1.3)]))
    want = np.asarray(logits.astype(mx.float32)).astype(np.float64)
    cols = np.asarray(seen)
    want[0, cols] = np.where(want[0, cols] < 0, want[0, cols] * 1.3, want[0, cols] / 1.3)
    assert np.abs(ours - want).max() <= 1e-6 * np.abs(want).max()


def test_talker_sampler_upcasts_before_temperature():
    """Greedy over bf16 logits picks the float32 argmax of logits / temperature; two codes a
    bf16 step apart stay apart after a temperature that bf16 arithmetic would merge."""
    logits = mx.zeros((1, 64), dtype=mx.bfloat16)
    logits[0, 5] = 1.0
    logits[0, 9] = 1.0078125  # the next bf16 value after 1.0
    pick = make_talker_sampler(0.0, 40, 0.8, suppress=[0])(logits)
    assert int(pick.item()) == 9
    sampled = {int(make_talker_sampler(1e-3, 2, 1.0, suppress=[0])(logits).item()) for _ in range(20)}
    assert sampled == {9}  # at T=1e-3 the gap is 7.8 nats: 9 nearly always
