"""The OpenAI-compatible server over real HTTP on a loopback port, driven by the official
`openai` client (and raw HTTP for what a client library would refuse to send): text, audio in,
audio out, streamed speech, transcriptions, speech, bad requests, auth, the queue, cancellation,
the time limit and a fuzz pass over the OpenAPI schema."""

import base64
import contextlib
import http.client
import io
import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from omni_edge import generate  # noqa: E402
from omni_edge.cli import main as cli_main  # noqa: E402
from omni_edge.server.app import create_app  # noqa: E402
from omni_edge.speech.voice import with_speech_system_prompt  # noqa: E402
from omni_edge.tasks import speak_text  # noqa: E402

from test_chat import model, model_dir  # noqa: E402,F401  (the demo checkpoint, once per module)
from test_tasks import wav_bytes  # noqa: E402

SAMPLE_RATE = 24000
SAMPLES_PER_CODE = 480
CODES = 40  # bounds the random Talker's speech (it never ends on its own)
WAIT_S = 60  # bound on waiting for the server to reach a state


@contextlib.contextmanager
def running(app):
    """Serve `app` with uvicorn on a free loopback port, on a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def base(model):  # noqa: F811
    app = create_app(model, "demo", max_queue=4, max_body_mb=1, time_limit=120)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=WAIT_S)


def request(base: str, method: str, path: str, body=None, headers=None):
    """(status, headers, body bytes) of one raw HTTP request."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data,
                 headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return out


def health(base: str) -> dict:
    return json.loads(request(base, "GET", "/health")[2])


def user(text: str) -> list:
    return [{"role": "user", "content": text}]


def qwen(text: str) -> list:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def test_models_and_health(client, base):
    assert [m.id for m in client.models.list().data] == ["demo"]
    assert health(base)["status"] == "ok"


def test_text_equals_generate_with_greedy_sampling(client, model):  # noqa: F811
    reply = client.chat.completions.create(model="demo", messages=user("Name a river."),
                                           max_tokens=8, temperature=0)
    expected = generate(model, qwen("Name a river."), max_tokens=8)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.prompt_tokens == expected.stats.prompt_tokens


def test_a_resent_conversation_reuses_the_cached_prefix(client, model):  # noqa: F811
    first = client.chat.completions.create(model="demo", messages=user("Hi!"), max_tokens=5)
    history = user("Hi!") + [{"role": "assistant", "content": first.choices[0].message.content},
                             {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model="demo", messages=history, max_tokens=5)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    expected = generate(model, [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                                for m in history], max_tokens=5)
    assert second.choices[0].message.content == expected.text


def test_stop_sequences_cut_the_text(client):
    full = client.chat.completions.create(model="demo", messages=user("Count."), max_tokens=12)
    text = full.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = client.chat.completions.create(model="demo", messages=user("Count."), max_tokens=12,
                                         stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_audio_in(client, model):  # noqa: F811
    clip = wav_bytes()
    content = [{"type": "input_audio",
                "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}},
               {"type": "text", "text": "What is this sound?"}]
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}],
                                           max_tokens=6)
    expected = generate(model, [{"role": "user", "content": [
        {"type": "audio", "audio": clip}, {"type": "text", "text": "What is this sound?"}]}],
        max_tokens=6)
    assert reply.choices[0].message.content == expected.text


def test_image_data_url_in_and_local_paths_refused_without_the_flag(client, base, model, tmp_path):  # noqa: F811
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.arange(56 * 56 * 3, dtype=np.uint8).reshape(56, 56, 3)).save(png, "PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}],
                                           max_tokens=4)
    expected = generate(model, [{"role": "user", "content": [
        {"type": "image", "image": url}, {"type": "text", "text": "What?"}]}], max_tokens=4)
    assert reply.choices[0].message.content == expected.text

    path = tmp_path / "photo.png"
    path.write_bytes(png.getvalue())
    local = [{"type": "image_url", "image_url": {"url": str(path)}}]
    status, _, body = request(base, "POST", "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": local}]})
    assert status == 400 and json.loads(body)["error"]["code"] == "local_file_refused"


def test_video_data_url_in_and_the_temporary_file_is_removed(client, model, tmp_path):  # noqa: F811
    import tempfile
    from pathlib import Path

    from media import write_clip

    clip = write_clip(tmp_path / "clip.mp4", "mpeg4", seconds=1.0)
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    spooled = set(Path(tempfile.gettempdir()).glob("*.mp4"))
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What?"}]
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}],
                                           max_tokens=4)
    expected = generate(model, [{"role": "user", "content": [
        {"type": "video", "video": str(clip)}, {"type": "text", "text": "What?"}]}], max_tokens=4)
    assert reply.choices[0].message.content == expected.text
    assert set(Path(tempfile.gettempdir()).glob("*.mp4")) == spooled


def speech_request(**extra):
    return dict(model="demo", messages=user("Say something."), max_tokens=30,
                modalities=["text", "audio"], extra_body={"max_codec_tokens": CODES,
                                                          "talker_temperature": 0, **extra})


def test_spoken_reply_is_a_24khz_wav_with_its_transcript(client, model):  # noqa: F811
    reply = client.chat.completions.create(audio={"voice": "Ethan", "format": "wav"},
                                           **speech_request())
    message = reply.choices[0].message
    assert message.content is None
    audio, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)))
    assert rate == SAMPLE_RATE and len(audio) > 0 and len(audio) % SAMPLES_PER_CODE == 0
    # speech runs under the speech system prompt, so the text is that prompt's greedy reply
    expected = generate(model, with_speech_system_prompt(qwen("Say something.")), max_tokens=30)
    assert message.audio.transcript == expected.text
    assert message.audio.expires_at > time.time()

    # the next turn may refer to the spoken reply by its id alone, as OpenAI's clients do
    history = user("Say something.") + [{"role": "assistant", "audio": {"id": message.audio.id}},
                                        {"role": "user", "content": "Again."}]
    again = client.chat.completions.create(model="demo", messages=history, max_tokens=3)
    assert again.usage.prompt_tokens > reply.usage.prompt_tokens


def part(audio, name: str):
    """A field of `delta.audio`: typed in recent openai clients, a dict in older ones."""
    return audio.get(name) if isinstance(audio, dict) else getattr(audio, name, None)


def test_streamed_speech_arrives_while_the_text_is_written(client):
    kinds, pcm, text = [], b"", ""
    # a 24-frame first window rendered in line comes after 25 codes, deterministically before
    # the 30-token reply ends (overlapped, it would race the text on a slow CPU)
    windows = dict(first_chunk_frames=24, overlap=False)
    whole = client.chat.completions.create(audio={"voice": "Chelsie", "format": "pcm16"},
                                           **speech_request(**windows))
    spoken = len(base64.b64decode(whole.choices[0].message.audio.data)) // 2
    for chunk in client.chat.completions.create(audio={"voice": "Chelsie", "format": "pcm16"},
                                                stream=True, stream_options={"include_usage": True},
                                                **speech_request(**windows)):
        if not chunk.choices:
            kinds.append("usage")
            continue
        audio = chunk.choices[0].delta.audio
        if part(audio, "data"):
            pcm += base64.b64decode(part(audio, "data"))
            kinds.append("audio")
        elif part(audio, "transcript"):
            text += part(audio, "transcript")
            kinds.append("text")
    assert len(pcm) // 2 == spoken > 0
    last_text = max(i for i, k in enumerate(kinds) if k == "text")
    assert kinds.index("audio") < last_text  # the speech started before the text ended
    assert text == whole.choices[0].message.audio.transcript and kinds[-1] == "usage"


def test_transcriptions_json_and_text(client, model):  # noqa: F811
    from omni_edge.tasks import transcribe

    clip = wav_bytes()
    expected = transcribe(model, clip, language="English")
    result = client.audio.transcriptions.create(model="demo", file=("q.wav", clip, "audio/wav"),
                                                language="English")
    assert result.text == expected
    text = client.audio.transcriptions.create(model="demo", file=("q.wav", clip, "audio/wav"),
                                              language="English", response_format="text")
    assert text.strip() == expected


def test_speech_streams_the_exact_text_as_wav_pcm_and_flac(client, model):  # noqa: F811
    events = list(speak_text(model, "Good morning.", "Ethan", talker_temperature=0,
                             max_codec_tokens=CODES))
    samples = sum(len(e.audio) for e in events if e.type == "audio")
    extra = {"max_codec_tokens": CODES, "talker_temperature": 0}
    with client.audio.speech.with_streaming_response.create(
            model="demo", input="Good morning.", voice="Ethan", response_format="pcm",
            extra_body=extra) as response:
        pcm = b"".join(response.iter_bytes())
    assert len(pcm) // 2 == samples > 0
    for fmt in ("wav", "flac"):
        data = client.audio.speech.create(model="demo", input="Good morning.", voice="Ethan",
                                          response_format=fmt, extra_body=extra).read()
        if fmt == "wav":  # the streamed header's sizes say 'unknown': read the samples raw
            assert data[:4] == b"RIFF" and len(data) - 44 == 2 * samples
            continue
        audio, rate = sf.read(io.BytesIO(data))
        assert rate == SAMPLE_RATE and len(audio) == samples


BAD_CHAT = [
    (b"{not json", "json_invalid"),
    ({"model": "demo"}, "missing"),
    ({"messages": user("x"), "max_tokens": -1}, "greater_than_equal"),
    ({"messages": user("x"), "modalities": ["text", "audio"], "audio": {"voice": "Bob"}},
     "unknown_voice"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
     "remote_url_refused"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"noise" * 99).decode(),
                                                "format": "wav"}}]}]}, "invalid_input"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]}, None),
    ({"messages": user("x"), "n": 3}, None),
    ({"messages": user("x"), "tools": [{"type": "function", "function": {"name": "f"}}]}, None),
    ({"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]},
     "invalid_input"),
]


@pytest.mark.parametrize("body, code", BAD_CHAT)
def test_bad_chat_requests_are_4xx_in_openai_shape(base, body, code):
    status, _, raw = request(base, "POST", "/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert 400 <= status < 500 and error["message"] and set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    assert health(base)["status"] == "ok"


def test_other_bad_requests_and_the_server_answers_afterwards(base, client):
    assert request(base, "POST", "/v1/chat/completions", b"x" * (2 << 20))[0] == 413
    status, _, raw = request(base, "POST", "/v1/audio/speech", {"input": "hi", "voice": "Bob"})
    assert status == 400 and json.loads(raw)["error"]["param"] == "voice"
    assert request(base, "POST", "/v1/audio/speech", {"input": "", "voice": "Ethan"})[0] == 400
    with pytest.raises(openai.BadRequestError, match="could not be decoded"):
        client.audio.transcriptions.create(model="demo", file=("q.wav", b"garbage", "audio/wav"))
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.transcriptions.create(model="demo", file=("q.wav", wav_bytes(), "audio/wav"),
                                           response_format="srt")
    assert request(base, "GET", "/v1/nothing")[0] == 404
    reply = client.chat.completions.create(model="demo", messages=user("still there?"), max_tokens=2)
    assert reply.choices[0].message.content


def test_queued_clients_are_served_in_order_and_a_disconnect_frees_the_model(base, client, model):  # noqa: F811
    prompts = [f"Question number {i}." for i in range(4)]
    expected = [generate(model, qwen(p), max_tokens=6).text for p in prompts]
    before = health(base)

    host, port = base.removeprefix("http://").split(":")
    blocker = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    blocker.request("POST", "/v1/chat/completions", json.dumps(
        {"messages": user("Talk forever."), "max_tokens": 100000, "stream": True}),
        {"Content-Type": "application/json"})
    stream = blocker.getresponse()
    assert stream.status == 200 and stream.readline().startswith(b"data: ")

    finished, answers = [], {}

    def ask(i):
        reply = client.chat.completions.create(model="demo", messages=user(prompts[i]), max_tokens=6)
        answers[i] = reply.choices[0].message.content
        finished.append(i)

    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=ask, args=(i,)))
        threads[-1].start()
        wait_for(lambda: health(base)["queued"] == i + 1, f"request {i} to be queued")
    status, headers, raw = request(base, "POST", "/v1/chat/completions",
                                   {"messages": user("one too many"), "max_tokens": 2})
    assert status == 429 and int(headers["retry-after"]) > 0
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"

    stream.close()
    blocker.close()  # the client goes away: its generation is cancelled
    for thread in threads:
        thread.join(WAIT_S)
    assert finished == [0, 1, 2, 3]
    assert [answers[i] for i in range(4)] == expected
    wait_for(lambda: not health(base)["busy"], "the worker to finish its bookkeeping")
    after = health(base)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"] + 4


def test_the_time_limit_ends_a_request_with_a_4xx(model):  # noqa: F811
    with running(create_app(model, "demo", time_limit=1e-9)) as url:
        status, _, raw = request(url, "POST", "/v1/chat/completions",
                                 {"messages": user("Hi"), "max_tokens": 50})
        assert status == 408 and json.loads(raw)["error"]["code"] == "timeout"
        wait_for(lambda: health(url)["timed_out"] == 1, "the time-out to be counted")


def test_an_api_key_is_required_when_set(model):  # noqa: F811
    with running(create_app(model, "demo", api_key="sekret")) as url:
        anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        keyed = openai.OpenAI(base_url=f"{url}/v1", api_key="sekret", max_retries=0)
        assert [m.id for m in keyed.models.list().data] == ["demo"]
        assert health(url)["status"] == "ok"


def test_serve_refuses_a_public_address_without_a_key(model_dir, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delenv("OMNI_EDGE_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["serve", "--model", model_dir, "--host", "0.0.0.0"])
    assert exit_info.value.code == 2 and "--api-key" in capsys.readouterr().err


def test_fuzzing_the_openapi_schema_gives_no_5xx(model):  # noqa: F811
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings

    app = create_app(model, "demo", time_limit=0.05, max_body_mb=1)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures = []
    operations = [op.ok() for op in schema.get_all_operations()]
    modes = schemathesis.GenerationMode
    for operation, mode in [(op, mode) for op in operations for mode in modes
                            if op.method.upper() == "POST" or mode == modes.POSITIVE]:

        @settings(max_examples=15, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # no shrinking: keep it quick
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call()
            if response.status_code >= 500:
                failures.append((case.method, case.path, mode.value, response.status_code,
                                 response.text[:200]))

        check()
    assert failures == []
