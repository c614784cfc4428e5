"""One generation at a time: a worker thread runs queued jobs in order and hands their events
to the event loop. A full queue refuses new jobs; a cancelled job (its client went away) or one
past its time limit is closed between two events, which frees the model for the next."""

import asyncio
import queue
import threading
import time
from typing import Callable, Iterator, Optional

DISCONNECT_POLL_S = 0.25


class QueueFull(Exception):
    pass


class TimeLimit(Exception):
    pass


class ClientGone(Exception):
    pass


class Job:
    """A generation: `work()` returns the iterator of its events, run on the worker thread."""

    def __init__(self, work: Callable[[], Iterator], loop: asyncio.AbstractEventLoop):
        self.work, self.loop = work, loop
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()

    def put(self, kind: str, value=None):
        self.loop.call_soon_threadsafe(self.items.put_nowait, (kind, value))

    async def get(self, request=None):
        """The next ("event", e), ("error", exc) or ("end", None); with a `request`, a client
        that disconnects while it waits cancels the job (raises ClientGone)."""
        if request is None:
            return await self.items.get()
        getter = asyncio.ensure_future(self.items.get())
        while True:
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if done:
                return getter.result()
            if await request.is_disconnected():
                getter.cancel()
                self.cancel()
                raise ClientGone

    async def events(self, request=None):
        """The job's events; its error is raised. Leaving early cancels the job."""
        try:
            while True:
                kind, value = await self.get(request)
                if kind == "event":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            self.cancel()


class Worker:
    """Runs jobs one by one on its own thread. At most `max_queue` jobs wait behind the running
    one; `time_limit` seconds bound a job's run (checked between events)."""

    def __init__(self, max_queue: int, time_limit: float):
        self.max_queue, self.time_limit = max_queue, time_limit
        self.jobs: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.waiting = 0
        self.running: Optional[Job] = None
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "timed_out": 0}
        self.thread = threading.Thread(target=self._loop, name="omni-edge-generation", daemon=True)
        self.thread.start()

    def submit(self, work: Callable[[], Iterator]) -> Job:
        with self.lock:
            if self.waiting >= self.max_queue:
                raise QueueFull
            self.waiting += 1
        job = Job(work, asyncio.get_running_loop())
        self.jobs.put(job)
        return job

    def status(self) -> dict:
        with self.lock:
            return {"queued": self.waiting, "busy": self.running is not None, **self.counts}

    def close(self):
        self.jobs.put(None)
        self.thread.join(timeout=self.time_limit)

    def _loop(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            with self.lock:
                self.waiting -= 1
                self.running = job
            outcome = self._run(job)
            with self.lock:
                self.running = None
                self.counts[outcome] += 1

    def _run(self, job: Job) -> str:
        if job.cancelled.is_set():
            job.put("end")
            return "cancelled"
        deadline = time.monotonic() + self.time_limit
        events, outcome = None, "completed"
        try:
            events = job.work()
            for event in events:
                if job.cancelled.is_set():
                    outcome = "cancelled"
                    break
                if time.monotonic() > deadline:
                    raise TimeLimit(f"the request ran past the server's time limit of "
                                    f"{self.time_limit:g} s; ask for fewer tokens")
                job.put("event", event)
        except TimeLimit as err:
            outcome = "timed_out"
            job.put("error", err)
        except Exception as err:  # handed to the request, which turns it into its error reply
            outcome = "failed"
            job.put("error", err)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
            job.put("end")
        return outcome
