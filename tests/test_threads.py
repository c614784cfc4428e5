"""Generation from worker threads: a thread gives the main thread's greedy ids, and threads
running at once on one model don't corrupt each other (each has its own MLX stream)."""

import threading

import pytest

from omni_edge import generate, stream


@pytest.fixture(scope="module")
def model(demo_model_dir):
    from omni_edge.loading import load

    return load(demo_model_dir)


def in_threads(jobs):
    results, errors = {}, []

    def run(key, job):
        try:
            results[key] = job()
        except BaseException as err:  # report it in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def test_worker_thread_gives_the_main_threads_greedy_ids(model):
    want = generate(model, "Count to five.", max_tokens=12).token_ids
    got = in_threads({"worker": lambda: generate(model, "Count to five.", max_tokens=12).token_ids})
    assert got["worker"] == want


def test_threads_at_once_each_get_their_own_reply(model):
    prompts = {"a": "Count to five.", "b": "Name a colour.", "c": "Say hi."}
    want = {k: generate(model, p, max_tokens=10).token_ids for k, p in prompts.items()}
    assert len({tuple(v) for v in want.values()}) == 3  # distinct replies, so a mix-up shows
    got = in_threads({k: (lambda p=p: generate(model, p, max_tokens=10).token_ids)
                      for k, p in prompts.items()})
    assert got == want


def test_spoken_reply_on_a_thread_equals_the_main_threads(model):
    def spoken():
        events = list(stream(model, "Hello.", max_tokens=4, speak=True, talker_temperature=0.0,
                             max_codec_tokens=30, seed=0))
        return events[-1].codec_ids

    assert in_threads({"worker": spoken})["worker"] == spoken()


def test_compiled_decode_on_a_thread_equals_op_by_op(model):
    """The opt-in compiled step (compile_decode) traced and run on a worker thread's stream, as
    the server and the voice loop would run it: the same spoken reply as op by op."""
    def spoken(compile_decode):
        events = list(stream(model, "Hello.", max_tokens=6, speak=True, talker_temperature=0.0,
                             max_codec_tokens=30, seed=0, compile_decode=compile_decode))
        return events[-1].token_ids, events[-1].codec_ids

    want = spoken(False)
    decoders = (model.thinker.model, model.talker.model)
    assert [getattr(d, "_compiled_step", None) for d in decoders] == [None, None]
    got = in_threads({"a": lambda: spoken(True), "b": lambda: spoken(True)})
    assert got == {"a": want, "b": want}
    assert all(getattr(d, "_compiled_step", None) for d in decoders)  # the compiled path ran
