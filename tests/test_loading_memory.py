"""Load only what is used: speech=False, encoders loaded on first use (also from a thread), the
fit-in-memory check before any weight is read, and the wired-limit context manager."""

import threading

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
import numpy as np
import pytest

from omni_edge import generate, load
from omni_edge.convert.mlx import convert
from omni_edge.demo.checkpoint import write_demo_checkpoint
from omni_edge.loading import _parts, _tensor_bytes
from omni_edge.memory import GB, LIMIT_ENV, RUNTIME_HEADROOM, ModelTooLargeError, model_bytes, wired_limit
from omni_edge.models.omni import OnDemand
from omni_edge.speech.voice import SpeechError

CLIP = (0.3 * np.sin(np.linspace(0, 900, 16000))).astype(np.float32)
AUDIO_TURN = [{"role": "user", "content": [
    {"type": "audio", "audio": CLIP, "sampling_rate": 16000}, {"type": "text", "text": "What?"}]}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading")
    write_demo_checkpoint(root / "hf")
    return convert(str(root / "hf"), str(root / "mlx"), dtype="float32", progress=False)


def stored(model_dir, prefix) -> dict:
    tensors = _tensor_bytes(model_dir)
    out = {}
    for shard in {p for k, (p, _) in tensors.items() if k.startswith(prefix)}:
        out.update({k[len(prefix):]: v for k, v in mx.load(str(shard)).items() if k.startswith(prefix)})
    return out


def test_text_only_load_has_no_speech_parts_and_says_how_to_speak(model_dir):
    full, text = load(str(model_dir)), load(str(model_dir), speech=False)
    names = [k for k, _ in tree_flatten(text.parameters())]
    assert names and not any(k.startswith(("talker", "token2wav")) for k in names)
    assert model_bytes(text) < model_bytes(full) - model_bytes(full.token2wav)
    # the same text as the full model (greedy)
    assert generate(text, "Hello", max_tokens=8).token_ids == generate(full, "Hello", max_tokens=8).token_ids
    with pytest.raises(SpeechError, match=r"speech=False .* omni_edge.load\(path\) to speak"):
        generate(text, "Hello", speak=True, max_tokens=4)


def test_encoders_load_on_first_use_with_the_stored_weights(model_dir):
    model = load(str(model_dir))
    th = model.thinker
    assert isinstance(th.audio_tower, OnDemand) and isinstance(th.visual, OnDemand)
    before = model_bytes(model)
    generate(model, "Hi", max_tokens=2)  # text needs neither encoder
    assert isinstance(th.audio_tower, OnDemand)
    generate(model, AUDIO_TURN, max_tokens=2)
    assert not isinstance(th.audio_tower, OnDemand) and isinstance(th.visual, OnDemand)
    assert model_bytes(model) > before  # now counted in the model
    for name, w in stored(model_dir, "thinker.audio_tower.").items():
        np.testing.assert_array_equal(np.array(dict(tree_flatten(
            th.audio_tower.parameters()))[name]), np.array(w))


def test_encoders_not_kept_are_freed_after_each_use_and_give_the_same_reply(model_dir):
    kept, freed = load(str(model_dir)), load(str(model_dir), keep_encoders=False)
    held = model_bytes(freed)
    encoder = sum(n for k, (_, n) in _tensor_bytes(model_dir).items()
                  if k.startswith("thinker.audio_tower."))
    for turn in range(2):  # the second use reads the weights again
        expected = generate(kept, AUDIO_TURN, max_tokens=4).token_ids
        assert generate(freed, AUDIO_TURN, max_tokens=4).token_ids == expected, turn
        assert isinstance(freed.thinker.audio_tower, OnDemand)
        mx.eval(freed.parameters())  # would materialize anything the release left behind
        assert model_bytes(freed) == held
    for model, kept_after in ((freed, False), (load(str(model_dir)), True)):
        mx.clear_cache()
        before = mx.get_active_memory()
        generate(model, AUDIO_TURN, max_tokens=2)
        mx.clear_cache()
        grew = mx.get_active_memory() - before
        assert grew > 0.9 * encoder if kept_after else grew < encoder / 2, (kept_after, grew, encoder)


def test_encoders_freed_after_use_serve_threads_at_once(model_dir):
    """As the server and the voice loop run turns: on worker threads, here two at a time, so
    one thread's release must not zero the weights another is encoding with."""
    expected = generate(load(str(model_dir)), AUDIO_TURN, max_tokens=3).token_ids
    freed = load(str(model_dir), keep_encoders=False)
    out, errors = {}, []

    def turn(key):
        try:
            out[key] = generate(freed, AUDIO_TURN, max_tokens=3).token_ids
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    workers = [threading.Thread(target=turn, args=(k,)) for k in "abcd"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not errors and out == dict.fromkeys("abcd", expected)
    assert isinstance(freed.thinker.audio_tower, OnDemand)


def test_a_dropped_model_is_freed_at_once(model_dir):
    import weakref

    model = load(str(model_dir))
    generate(model, AUDIO_TURN, max_tokens=2)  # one encoder loaded, one still a stand-in
    gone = [weakref.ref(model.thinker), weakref.ref(model.thinker.model)]
    del model  # no reference cycle: freed now, not at the next garbage collection
    assert [ref() for ref in gone] == [None, None]


def test_first_use_from_a_thread(model_dir):
    model = load(str(model_dir))
    expected = load(str(model_dir))
    out = {}
    worker = threading.Thread(target=lambda: out.update(ids=generate(model, AUDIO_TURN, max_tokens=3).token_ids))
    worker.start()
    worker.join()
    assert out["ids"] == generate(expected, AUDIO_TURN, max_tokens=3).token_ids
    assert not isinstance(model.thinker.audio_tower, OnDemand)


def test_on_demand_builds_once_under_concurrent_first_use():
    parent, built, barrier = nn.Module(), [], threading.Barrier(8)
    parent.part = OnDemand(parent, "part", lambda: built.append(1) or nn.Linear(2, 2))

    def use():
        barrier.wait()
        parent.part(mx.ones((1, 2)))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [1] and isinstance(parent.part, nn.Linear)


def test_a_model_too_large_is_refused_before_loading_with_the_sizes(model_dir, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "0.5")
    with pytest.raises(ModelTooLargeError) as err:
        load(str(model_dir))
    msg = str(err.value)
    eager, later = _parts(_tensor_bytes(model_dir), True, False)
    assert f"Thinker LLM {eager['Thinker LLM'] / GB:.2f} GB" in msg
    assert f"audio encoder {later['audio encoder'] / GB:.2f} GB" in msg
    assert "can give 0.50 GB" in msg and "--preset q4-small" in msg and "speech=False" in msg
    load(str(model_dir), check_memory=False)  # the escape hatch


def test_an_encoder_that_does_not_fit_is_refused_and_the_model_goes_on(model_dir, monkeypatch):
    eager, _ = _parts(_tensor_bytes(model_dir), True, True)
    monkeypatch.setenv(LIMIT_ENV, str((sum(eager.values()) + RUNTIME_HEADROOM + 1) / GB))
    model = load(str(model_dir), speaker_encoder=True)  # fits, just
    with pytest.raises(ModelTooLargeError, match="audio encoder"):
        generate(model, AUDIO_TURN, max_tokens=2)
    assert isinstance(model.thinker.audio_tower, OnDemand)
    assert generate(model, "Hi", max_tokens=2).token_ids


def test_bad_memory_limit_setting(model_dir, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=f"{LIMIT_ENV} must be a number of GB, got 'lots'"):
        load(str(model_dir))


def test_wired_limit_sets_and_restores_on_metal_and_frees_the_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 123})
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: calls.append(n) or 7)
    with pytest.raises(RuntimeError):
        with wired_limit():
            mx.eval(mx.ones((1024, 1024)) * 2)
            raise RuntimeError("a turn that fails")
    assert calls == [123, 7]  # set, then restored even though the turn failed
    assert mx.get_cache_memory() == 0


def test_wired_limit_warns_when_the_model_is_near_the_limit(monkeypatch, capsys):
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 10_000})
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: 0)
    with wired_limit(nn.Linear(64, 64)):  # 16.6 kB of weights
        pass
    assert "close to the 0.00 GB Metal can keep resident" in capsys.readouterr().err
    with wired_limit(nn.Linear(4, 4)):
        pass
    assert capsys.readouterr().err == ""


def test_wired_limit_off_metal_only_frees_the_cache(monkeypatch):
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: pytest.fail("no wired limit off Metal"))
    with wired_limit():
        mx.eval(mx.ones((512, 512)) + 1)
    assert mx.get_cache_memory() == 0
