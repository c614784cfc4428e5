"""The compiled one-token decode step (`omni_edge.compiled_step`) gives what the op-by-op
step gives: Thinker logits and greedy ids, Talker logits and codes, a chat's next turn; it
crosses KV buffer growths; quantized and rotating caches stay on the op path; a compiled step
launches fewer kernels; its fused projections share the weights and follow new ones."""

from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from omni_edge import compiled_step, costs, generate
from omni_edge.chat import ChatSession
from omni_edge.config import ThinkerConfig
from omni_edge.convert.mlx import convert
from omni_edge.decode import generate_step
from omni_edge.loading import load
from omni_edge.models.thinker import Thinker
from omni_edge.speech.talker import TalkerSession

RTOL = 1e-5
PROMPT = 240  # the reply crosses position 256, a buffer boundary
STEPS = 44


@pytest.fixture(scope="module")
def model(fixture_dir, tmp_path_factory):
    """Each fixture model (the 7B-shaped Talker's attention is wider than its hidden size)."""
    out = convert(str(fixture_dir), str(tmp_path_factory.mktemp("conv") / "fp32"), dtype="float32")
    return load(str(out))


@pytest.fixture
def calls(monkeypatch):
    """How many steps ran compiled; buffers grow 16 positions ahead (so runs cross growths)."""
    seen = []
    real = compiled_step.CompiledStep.__call__

    def spy(self, h, cache, *args):
        seen.append(cache[0].keys.shape[2])
        return real(self, h, cache, *args)

    monkeypatch.setattr(compiled_step.CompiledStep, "__call__", spy)
    monkeypatch.setattr(compiled_step, "AHEAD", 16)
    return seen


def relative(a, b) -> float:
    a, b = np.array(a), np.array(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def thinker_run(model, prompt, compile_decode, **kw):
    logits = []

    def record(tokens, x):
        logits.append(x)
        return x

    cache = kw.pop("cache", None) or model.thinker.make_cache()
    ids = list(generate_step(model, prompt, max_tokens=STEPS, logits_processors=[record],
                             cache=cache, compile_decode=compile_decode, **kw))
    mx.eval(logits)
    return ids, logits, cache


def test_thinker_steps_equal_the_op_path_across_a_buffer_growth(model, calls):
    prompt = (np.arange(PROMPT) * 7919 % 1000 + 10).tolist()
    ids, logits, cache = thinker_run(model, prompt, True, rope_delta=3)
    assert len(calls) == STEPS - 1 and len(set(calls)) == 2  # 256, then grown to 512 at 256
    plain_ids, plain_logits, plain_cache = thinker_run(model, prompt, False, rope_delta=3)
    assert len(calls) == STEPS - 1  # the op path never runs the compiled step
    assert ids == plain_ids
    assert max(relative(a, b) for a, b in zip(logits, plain_logits)) < RTOL
    # the caches hold the same positions: mlx-lm's view of them is intact
    for c, p in zip(cache, plain_cache):
        assert c.offset == p.offset == PROMPT + STEPS - 1
        assert relative(c.state[0][..., :c.offset, :], p.state[0][..., :p.offset, :]) < RTOL


def test_spoken_reply_and_its_talker_logits_equal_the_op_path(model, calls, monkeypatch):
    logits = []
    real = TalkerSession._logits

    def record(self, x, positions):
        out = real(self, x, positions)
        logits.append(out)
        return out

    monkeypatch.setattr(TalkerSession, "_logits", record)
    monkeypatch.setattr(compiled_step, "STEP", 16)  # growths every few steps, in both models
    options = dict(max_tokens=12, min_tokens=12, speak=True, talker_temperature=0.0, seed=0,
                   min_codec_tokens=40, max_codec_tokens=40)
    runs = []
    for compile_decode in (True, False):
        logits.clear()
        result = generate(model, "Hello there. " * 24, compile_decode=compile_decode, **options)
        runs.append((result.token_ids, result.codec_ids, mx.stack([x[0] for x in logits])))
    assert len(runs[0][1]) == 40 and len(set(calls)) >= 3  # a ~250-row prompt: both grow
    assert runs[0][:2] == runs[1][:2]
    assert relative(runs[0][2], runs[1][2]) < RTOL


def test_chat_turns_after_compiled_steps_equal_the_op_path(model, calls):
    replies = {}
    for compile_decode in (True, False):
        session = ChatSession(model, max_tokens=20, min_tokens=20, compile_decode=compile_decode)
        replies[compile_decode] = [generate_ids(session, text)
                                   for text in ("Name a river.", "And a mountain?", "Why?")]
        assert session.cache[0].offset == len(session.ids)
    assert calls and replies[True] == replies[False]


def generate_ids(session, text):
    return [e for e in session.send(text) if e.type == "done"][0].token_ids


def wide_heads_thinker():
    """A 2-layer Thinker with 32-wide heads, so its KV cache can be quantized."""
    mx.random.seed(3)
    text = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                rope_scaling={"mrope_section": [4, 6, 6]})
    thinker = Thinker(ThinkerConfig.from_dict({"text_config": text, "vision_config": {
        "hidden_size": 32, "out_hidden_size": 128, "depth": 1, "num_heads": 2}}))
    mx.eval(thinker.parameters())
    return thinker


@pytest.fixture(scope="module")
def wide_heads():
    return SimpleNamespace(thinker=wide_heads_thinker())


@pytest.mark.parametrize("cache_kind", ["kv_bits", "max_kv_size"])
def test_quantized_and_rotating_caches_stay_on_the_op_path(wide_heads, calls, cache_kind):
    prompt = list(range(5, 70))
    runs = []
    for compile_decode in (True, False):
        if cache_kind == "kv_bits":
            kw = dict(kv_bits=8)
        else:
            kw = dict(cache=wide_heads.thinker.make_cache(max_kv_size=32))
        runs.append(thinker_run(wide_heads, prompt, compile_decode, **kw))
    assert not calls
    assert runs[0][0] == runs[1][0]
    assert max(relative(a, b) for a, b in zip(runs[0][1], runs[1][1])) == 0


def test_a_compiled_step_launches_fewer_kernels():
    """Counted as `omni_edge.costs` counts the published models' graphs: a compiled step has
    4 matmuls a layer, not 7, and its bias and residual adds fuse with their neighbours."""
    thinker = wide_heads_thinker()
    nn.quantize(thinker.model, group_size=64, bits=4)
    decoder, compiled_cache, cache = thinker.model, thinker.make_cache(), thinker.make_cache()
    x = mx.random.normal((1, 300, 128))
    mx.eval(decoder(x, cache), decoder(x, compiled_cache))
    h = mx.zeros((1, 1, 128))
    plain = costs.count(lambda: decoder(h, cache))
    body = compiled_step.step_for(decoder).body
    keys, values = [c.keys for c in compiled_cache], [c.values for c in compiled_cache]

    def step():
        hidden, k, v = body(h, mx.array([300]), mx.array(300), keys, values)
        return [hidden, *k, *v]

    compiled = costs.count(step, compiled=True)
    assert compiled.kernels < plain.kernels


def test_fused_projections_share_the_weights_and_follow_new_ones(calls):
    """The fused q/k/v and gate/up arrays are the weights' only copy (the layers hold views of
    them), and weights replaced after a compiled run are fused again before the next one."""
    model = SimpleNamespace(thinker=wide_heads_thinker())
    layer = model.thinker.model.layers[0]
    q = np.array(layer.self_attn.q_proj.weight)
    prompt = list(range(5, 40))
    thinker_run(model, prompt, True)
    assert np.array_equal(np.array(layer.self_attn.q_proj.weight), q)
    fused = compiled_step.step_for(model.thinker.model).tree["layers"][0]["qkv"]
    assert np.array_equal(np.array(fused.weight[: q.shape[0]]), q)
    layer.self_attn.q_proj.weight = mx.random.normal(q.shape, key=mx.random.key(9)) * 0.2
    layer.mlp.up_proj.weight = layer.mlp.up_proj.weight * -1.5
    compiled, plain = thinker_run(model, prompt, True), thinker_run(model, prompt, False)
    assert compiled[0] == plain[0]
    assert max(relative(a, b) for a, b in zip(compiled[1], plain[1])) < RTOL


def test_tracing_leaves_the_model_alone(monkeypatch):
    """The compiler traces with tracers in place of the step's weights: they must go into the
    step's own copies, never into the model, which another thread may be running meanwhile."""
    thinker = wide_heads_thinker()
    decoder, cache = thinker.model, thinker.make_cache()
    mx.eval(decoder(mx.zeros((1, 20, 128)), cache))
    step = compiled_step.step_for(decoder)
    weights = [v for _, v in tree_flatten(decoder.parameters())]
    untouched = []
    real = compiled_step._layer

    def spy(*args):
        now = [v for _, v in tree_flatten(decoder.parameters())]
        untouched.append(all(a is b for a, b in zip(now, weights)))
        return real(*args)

    monkeypatch.setattr(compiled_step, "_layer", spy)
    mx.eval(step(mx.zeros((1, 1, 128)), cache))
    assert untouched and all(untouched)
