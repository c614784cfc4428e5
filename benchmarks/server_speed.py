"""The server's overhead: time to the first audio byte over HTTP against `stream()` in-process,
and queued throughput with several clients (random weights at full size, forced lengths).

The server runs in this process on a loopback port (uvicorn on a thread, as `omni-edge serve`
runs it) over the same model object `stream()` uses; the client is a raw HTTP connection that
reads the server-sent events and stops at the first `delta.audio.data`. Runs alternate between
the two paths; each HTTP run starts from an empty prompt cache, so both prefill the same
prompt (a `warm` row shows a resent conversation reusing the cache). Overhead = median HTTP
time − median in-process time (the issue's target: ≤ 20 ms).

Throughput: `--clients` clients send a whole spoken reply each at once (non-streamed); the
server queues them and runs one at a time. Compared with the same replies run back to back
in-process: the ratio is what queueing and HTTP cost.

    python benchmarks/server_speed.py --size 3b --out benchmarks/results/server_3b_h200.json
    python benchmarks/server_speed.py --size tiny          # a quick check of the script on CPU
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from turn_speed import SIZES, build  # noqa: E402

from omni_edge import stream  # noqa: E402
from omni_edge.server.app import create_app  # noqa: E402

VOICE = "Chelsie"  # the one voice turn_speed's model carries


def prompt(i: int) -> str:
    return f"Request {i}: tell me a long story about rivers and mountains."


def options(text_tokens: int, codes: int) -> dict:
    return {"max_tokens": text_tokens, "max_codec_tokens": codes, "seed": 0}


def in_process_first_audio(model, i: int, text_tokens: int, codes: int) -> float:
    start = time.perf_counter()
    events = stream(model, prompt(i), speak=True, voice=VOICE, **options(text_tokens, codes))
    for event in events:
        if event.type == "audio":
            elapsed = time.perf_counter() - start
            events.close()
            return elapsed
    raise RuntimeError("the reply ended without audio; raise --text-tokens")


def chat_body(i: int, text_tokens: int, codes: int, stream_it: bool) -> bytes:
    return json.dumps({"model": "bench", "messages": [{"role": "user", "content": prompt(i)}],
                       "modalities": ["text", "audio"], "audio": {"voice": VOICE, "format": "pcm16"},
                       "stream": stream_it, **options(text_tokens, codes)}).encode()


def http_first_audio(port: int, i: int, text_tokens: int, codes: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", chat_body(i, text_tokens, codes, True),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    try:
        for line in response:
            if line.startswith(b"data: {") and b'"data"' in line:
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("audio", {}).get("data"):
                    return time.perf_counter() - start
        raise RuntimeError("the stream ended without audio; raise --text-tokens")
    finally:
        conn.close()  # the server cancels the rest of the reply


def http_whole(port: int, i: int, text_tokens: int, codes: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("POST", "/v1/chat/completions", chat_body(i, text_tokens, codes, False),
                 {"Content-Type": "application/json"})
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def run_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    server.thread = thread
    return server, server.servers[0].sockets[0].getsockname()[1]


def idle(app):
    """Wait until the server has dropped the reply a closed stream cancelled."""
    while app.state.omni.worker.status()["busy"]:
        time.sleep(0.005)


def first_audio_rows(model, app, port: int, runs: int, text_tokens: int, codes: int) -> list:
    in_process_first_audio(model, 0, text_tokens, codes)  # warm-up: compile the kernels
    http_first_audio(port, 0, text_tokens, codes)
    local, remote, warm = [], [], []
    for i in range(1, runs + 1):
        idle(app)
        local.append(in_process_first_audio(model, i, text_tokens, codes))
        app.state.omni.cache.reset()  # both paths prefill the whole prompt
        remote.append(http_first_audio(port, i, text_tokens, codes))
    for _ in range(runs):
        idle(app)
        warm.append(http_first_audio(port, runs, text_tokens, codes))
    rows = [{"path": "stream() in-process", "first_audio_ms": 1e3 * statistics.median(local)},
            {"path": "HTTP (SSE)", "first_audio_ms": 1e3 * statistics.median(remote)},
            {"path": "HTTP, resent prompt (cache)", "first_audio_ms": 1e3 * statistics.median(warm)}]
    rows[1]["overhead_ms"] = rows[1]["first_audio_ms"] - rows[0]["first_audio_ms"]
    for row, raw in zip(rows, (local, remote, warm)):
        row["runs_ms"] = [1e3 * r for r in raw]
    return rows


def throughput_rows(model, app, port: int, clients: int, text_tokens: int, codes: int) -> list:
    idle(app)
    start = time.perf_counter()
    audio_s = 0.0
    for i in range(clients):
        for event in stream(model, prompt(100 + i), speak=True, voice=VOICE,
                            **options(text_tokens, codes)):
            if event.type == "done":
                audio_s += event.stats.audio_seconds
    sequential = time.perf_counter() - start

    replies = [None] * clients

    def client(i):
        replies[i] = http_whole(port, 100 + i, text_tokens, codes)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = time.perf_counter() - start
    served = sum(1 for r in replies if r and r.get("choices"))
    return [{"path": f"{clients} replies back to back, in-process", "wall_s": sequential,
             "replies_per_min": 60 * clients / sequential, "audio_s_per_s": audio_s / sequential},
            {"path": f"{clients} HTTP clients at once, queued", "wall_s": queued, "served": served,
             "replies_per_min": 60 * served / queued, "audio_s_per_s": audio_s / queued,
             "vs_in_process": sequential / queued}]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", choices=sorted(SIZES))
    ap.add_argument("--q-bits", type=int, default=4, choices=[0, 4, 8], help="Thinker bits (0 = bf16)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--codes", type=int, default=250, help="codec tokens per reply (50 per second)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    model = build(a.size, a.q_bits if a.size != "tiny" else 0)
    app = create_app(model, "bench", max_queue=a.clients, time_limit=3600)
    server, port = run_server(app)
    rows = first_audio_rows(model, app, port, a.runs, a.text_tokens, a.codes)
    rows += throughput_rows(model, app, port, a.clients, a.text_tokens, a.codes)
    server.should_exit = True
    server.thread.join()  # the worker stops with the server, before the interpreter does

    print(f"{'path':40} {'first audio ms':>15} {'overhead ms':>12} {'wall s':>8} "
          f"{'replies/min':>12} {'audio s/s':>10}")
    for r in rows:
        print(f"{r['path']:40} {r.get('first_audio_ms', float('nan')):15.1f} "
              f"{r.get('overhead_ms', float('nan')):12.1f} {r.get('wall_s', float('nan')):8.2f} "
              f"{r.get('replies_per_min', float('nan')):12.2f} {r.get('audio_s_per_s', float('nan')):10.2f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({
            "device": a.device_name or str(mx.default_device()), "size": a.size,
            "thinker": f"{a.q_bits}-bit" if a.q_bits and a.size != "tiny" else "bf16",
            "workload": {"text_tokens": a.text_tokens, "codec_tokens": a.codes,
                         "clients": a.clients, "runs": a.runs}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
