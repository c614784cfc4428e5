"""Our Thinker against transformers' on the fixture checkpoints, in float32, same run."""

import copy

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fixtures import load_reference_thinker, reference_tokenizer  # noqa: E402

from omni_edge import load  # noqa: E402
from omni_edge.convert.mlx import convert  # noqa: E402
from omni_edge.generate import generate_step  # noqa: E402
from omni_edge.models.thinker import Thinker  # noqa: E402

LOGITS_RTOL = 1e-5
GREEDY_TOKENS = 40
MESSAGES = [
    {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
    {"role": "user", "content": [{"type": "text", "text": "What does TMRoPE rotate, and why?"}]},
]


@pytest.fixture(scope="module")
def pair(fixture_dir, tmp_path_factory):
    """(our model loaded from the converted fixture, the transformers thinker)."""
    out = convert(str(fixture_dir), str(tmp_path_factory.mktemp("conv") / "fp32"), dtype="float32")
    return load(str(out)), load_reference_thinker(fixture_dir), fixture_dir


def rel_err(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def ref_logits(ref, ids, position_ids=None) -> np.ndarray:
    with torch.no_grad():
        kw = {} if position_ids is None else {"position_ids": torch.tensor(np.asarray(position_ids))[:, None]}
        return ref(input_ids=torch.tensor([ids]), **kw).logits[0].numpy()


def test_prompt_ids_match_transformers_tokenizer(pair):
    model, _, path = pair
    ref_ids = reference_tokenizer(path).apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert model.processor.encode(MESSAGES) == list(ref_ids)
    # a plain string gets the default system prompt, as the template injects it
    assert model.processor.render("hi").startswith("<|im_start|>system\nYou are a helpful assistant.")


def test_logits_match(pair):
    model, ref, _ = pair
    ids = model.processor.encode(MESSAGES)
    ours = model.thinker(mx.array([ids]))[0]
    assert rel_err(ours, ref_logits(ref, ids)) <= LOGITS_RTOL


def test_general_tmrope_path_matches_with_distinct_axes(pair):
    """Three different position axes (as images/audio produce) through the general rotary."""
    model, ref, _ = pair
    ids = model.processor.encode(MESSAGES)
    L = len(ids)
    pos = np.stack([np.arange(L), np.arange(L) // 3 + 5, (np.arange(L) * 7) % 11]).astype(np.int64)
    ref_out = ref_logits(ref, ids, pos)
    ours = model.thinker(mx.array([ids]), position_ids=mx.array(pos))[0]
    assert rel_err(ours, ref_out) <= LOGITS_RTOL
    # the axes matter: plain text positions give clearly different logits
    assert rel_err(model.thinker(mx.array([ids]))[0], ref_out) > 100 * LOGITS_RTOL


def test_wrong_rotary_would_be_caught(pair):
    """The fixture's sharpened attention makes a rotary bug visible far above the tolerance."""
    model, ref, _ = pair
    ids = model.processor.encode(MESSAGES)
    ref_out = ref_logits(ref, ids)
    doubled = mx.broadcast_to(mx.arange(len(ids))[None] * 2, (3, len(ids)))
    assert rel_err(model.thinker(mx.array([ids]), position_ids=doubled)[0], ref_out) > 100 * LOGITS_RTOL
    cfg = copy.deepcopy(model.config.thinker_config)
    cfg.text_config.rope_theta = 1e4
    wrong = Thinker(cfg)
    wrong.update(model.thinker.parameters())
    assert rel_err(wrong(mx.array([ids]))[0], ref_out) > 100 * LOGITS_RTOL


def test_greedy_ids_match(pair):
    model, ref, _ = pair
    ids = model.processor.encode(MESSAGES)
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False)
    ref_new = out[0, len(ids):].tolist()
    assert len(ref_new) == GREEDY_TOKENS and len(set(ref_new)) > 5
    eos = model.config.thinker_config.eos_token_id
    assert eos not in ref_new  # min_new_tokens only masks EOS; it was never the argmax
    ours = list(generate_step(model, ids, max_tokens=GREEDY_TOKENS))
    assert ours == ref_new


def test_greedy_ids_depend_on_prompt(pair):
    model, _, _ = pair
    a = list(generate_step(model, model.processor.encode("alpha"), max_tokens=8))
    b = list(generate_step(model, model.processor.encode("omega"), max_tokens=8))
    assert a != b


def test_chunked_prefill_and_cache_equal_one_pass(pair):
    model, _, _ = pair
    ids = model.processor.encode(MESSAGES)
    whole = list(generate_step(model, ids, max_tokens=12))
    assert list(generate_step(model, ids, max_tokens=12, prefill_step_size=7)) == whole
    # decode-by-decode logits equal the logits of one full forward pass
    full = np.asarray(model.thinker(mx.array([ids + whole[:-1]]))[0])
    cache = model.thinker.make_cache()
    model.thinker(mx.array([ids]), cache=cache)
    for i, tok in enumerate(whole[:-1]):
        step = np.asarray(model.thinker(mx.array([[tok]]), cache=cache)[0, -1])
        assert rel_err(step, full[len(ids) + i]) <= LOGITS_RTOL


def test_sampling_options(pair):
    model, _, _ = pair
    from omni_edge import generate

    a = generate(model, "hello", max_tokens=16, temperature=0.8, top_p=0.9, top_k=50, min_p=0.02, seed=3)
    b = generate(model, "hello", max_tokens=16, temperature=0.8, top_p=0.9, top_k=50, min_p=0.02, seed=3)
    c = generate(model, "hello", max_tokens=16, temperature=0.8, top_p=0.9, top_k=50, min_p=0.02, seed=4)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    greedy = generate(model, "hello", max_tokens=16).token_ids
    penalized = generate(model, "hello", max_tokens=16, repetition_penalty=5.0).token_ids
    assert len(set(penalized)) >= len(set(greedy))
    assert penalized != greedy or len(set(greedy)) == 16


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from omni_edge.sampling import make_repetition_penalty

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 50)).astype(np.float32)
    seen = [3, 7, 7, 12, 49, 0]
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([seen]), torch.tensor(logits)).numpy()
    ours = make_repetition_penalty(1.3)(mx.array(seen), mx.array(logits))
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6)


def test_streamed_text_adds_up_to_the_result(pair):
    from omni_edge import stream

    model, _, _ = pair
    events = list(stream(model, MESSAGES, max_tokens=24))
    deltas, done = events[:-1], events[-1]
    assert done.type == "done" and all(e.type == "text" for e in deltas)
    assert all(e.text for e in deltas)
    assert "".join(e.text for e in deltas) == done.text == model.processor.tokenizer.decode(done.token_ids)
    assert done.stats.generation_tokens == len(done.token_ids) and done.stats.prompt_tokens > 0
