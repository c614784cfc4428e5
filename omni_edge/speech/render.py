"""Rendering the audio windows while decoding goes on.

Token2Wav windows are compute-bound and decoding is bandwidth- and launch-bound, so they can
share the GPU: with `overlap`, a window's graph is queued on a stream of its own (a separate
command queue on Metal, a separate CUDA stream on NVIDIA) and a waiter thread collects its audio
when it is done, while the decode loop keeps queueing steps. Without, each window is evaluated
in line and decoding waits for it (the reference's behaviour)."""

import queue
import threading
import time
from typing import Iterator, List, Optional, Tuple

import mlx.core as mx
import numpy as np

RENDER_STREAM = mx.new_thread_local_stream(mx.default_device())
Piece = Tuple[np.ndarray, int]  # (float32 samples, start sample)


class Renderer:
    """Feeds codes to a `StreamingToken2Wav` and hands back the
    rendered pieces: `push(code)` then `ready()` (never blocks) as decoding goes, `finish()`
    then `rest()` (blocks) at the end. It also learns how long a window takes, from queueing to
    audio, for `eta()`."""

    def __init__(self, vocoder, overlap: bool):
        self.vocoder, self.overlap = vocoder, overlap
        self.done: "queue.Queue" = queue.Queue()
        self.window_s: Optional[float] = None  # the last window's latency, queued → audio
        self.code_s: Optional[float] = None  # seconds per code, a moving average
        self.last_push: Optional[float] = None
        self.error: Optional[BaseException] = None
        if overlap:
            self.jobs: "queue.Queue" = queue.Queue()
            self.waiter = threading.Thread(target=self._wait, name="omni-edge-render", daemon=True)
            self.waiter.start()

    def eta(self) -> float:
        """Seconds until the next window's audio is expected: the codes it still lacks at the
        measured code rate, plus the measured window latency (0 before anything is measured)."""
        st = self.vocoder
        frames = st.chunk_start(st.window + 1) + st.future + 1  # push() runs it past this many
        missing = max(0, -(-frames // 2) - len(st.codes))
        return missing * (self.code_s or 0.0) + (self.window_s or 0.0)

    def push(self, codes: List[int]):
        now = time.perf_counter()
        if self.last_push is not None:
            step = (now - self.last_push) / max(1, len(codes))
            self.code_s = step if self.code_s is None else 0.8 * self.code_s + 0.2 * step
        self.last_push = now
        if not self.overlap:
            start = time.perf_counter()
            for piece in self.vocoder.push(codes):
                self._arrived(start, piece)
            return
        with mx.stream(RENDER_STREAM):
            pending = self.vocoder.submit(codes)  # queued (mx.async_eval), not waited for
        for piece in pending:
            self.jobs.put((time.perf_counter(), piece))

    def finish(self):
        if not self.overlap:
            start = time.perf_counter()
            for piece in self.vocoder.finish():
                self._arrived(start, piece)
            return
        with mx.stream(RENDER_STREAM):
            pending = self.vocoder.submit(final=True)
        for piece in pending:
            self.jobs.put((time.perf_counter(), piece))
        self.jobs.put(None)
        self.waiter.join()
        if self.error is not None:
            raise self.error

    def close(self):
        """Stop the waiter without rendering the rest (the turn was interrupted)."""
        if self.overlap and self.waiter.is_alive():
            self.jobs.put(None)
            self.waiter.join()

    def ready(self) -> Iterator[Piece]:
        while True:
            try:
                yield self.done.get_nowait()
            except queue.Empty:
                return

    def rest(self) -> Iterator[Piece]:
        yield from self.ready()

    def _arrived(self, queued: float, piece):
        if not isinstance(piece, tuple):  # a PendingChunk
            mx.eval(piece.audio)  # waits with the GIL released, so decoding goes on meanwhile
            piece = piece.result()
        audio, at = piece
        self.window_s = time.perf_counter() - queued
        self.done.put((np.array(audio, dtype=np.float32), at))

    def _wait(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self._arrived(*job)  # np.array waits for the queued graph
            except BaseException as err:  # surfaces in finish()
                self.error = err
                return
