"""The listening loop: microphone blocks → (echo canceller) → VAD endpointer → user turns; each
reply generated on a worker thread and played through the session's one output stream;
barge-in stops both and keeps what was heard."""

import json
import queue
import threading
from typing import Callable, List, Optional, TextIO

import numpy as np

from .audio_io import INPUT_RATE
from .turns import BLOCK, BLOCK_S, Endpointer

ECHO_TAIL_S = 0.3  # half-duplex: the microphone stays deaf this long after the speaker stops
TURN_GAP_S = 0.3  # silence between replies in the --save file
EVENTS = ("speech_start", "speech_end", "turn", "reply_start", "reply_end", "barge_in")


class EventLog:
    """`--log`: one JSON object a line, {"t": input-clock seconds, "event": NAME, ...}."""

    def __init__(self, path: Optional[str] = None):
        self.file = open(path, "w", encoding="utf-8") if path else None
        self.events: List[dict] = []

    def __call__(self, t: float, event: str, **fields):
        assert event in EVENTS, event
        record = {"t": round(t, 3), "event": event, **fields}
        self.events.append(record)
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


class Worker(threading.Thread):
    """The process's one generation thread for voice sessions. MLX streams are per thread and a
    lazy array made on one thread can't be evaluated on another, so every call into a session
    (replies, the cut after a barge-in, reset, the warm-up) runs here, in order. It never ends:
    a thread that used MLX and exits while Python shuts down aborts the process (MLX frees its
    per-thread compile cache, which needs the interpreter), so it stays parked on its queue."""

    _shared: Optional["Worker"] = None
    _lock = threading.Lock()

    def __init__(self):
        super().__init__(daemon=True, name="omni-edge-replies")
        self.jobs: queue.Queue = queue.Queue()
        self.start()

    @classmethod
    def shared(cls) -> "Worker":
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def run(self):
        while True:
            self.jobs.get()()

    def call(self, fn):
        """Run `fn()` here and wait for it; its result or its exception comes back."""
        done, box = threading.Event(), {}

        def job():
            try:
                box["value"] = fn()
            except BaseException as err:  # handed back to the caller
                box["error"] = err
            finally:
                done.set()

        self.jobs.put(job)
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")


class Reply:
    """One reply, run on the Worker: text to `out`, audio to the player (as long as the reply
    isn't cut), everything generated kept for --save."""

    def __init__(self, session, content, player, out: TextIO):
        self.session, self.content, self.player, self.out = session, content, player, out
        self.epoch = player.epoch
        self.turns_before = len(session.messages)
        self.stop_asked, self.finished = threading.Event(), threading.Event()
        self.audio: List[np.ndarray] = []
        self.text = ""  # what was generated of the reply's text
        self.error: Optional[str] = None

    def is_alive(self) -> bool:
        return not self.finished.is_set()

    def join(self):
        self.finished.wait()

    def run(self):
        events = None
        self.player.begin()
        try:
            events = self.session.send(self.content)
            for event in events:
                if self.stop_asked.is_set():
                    break
                if event.type == "text":
                    self.text += event.text
                    print(event.text, end="", flush=True, file=self.out)
                elif event.type == "audio":
                    self.audio.append(event.audio)
                    self.player.write_for(self.epoch, event.audio, getattr(event, "next_in_s", None))
                else:
                    print(file=self.out, flush=True)
        except Exception as err:  # a bad turn is reported, the session listens on
            self.error = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
            print(f"\nerror: {self.error}", file=self.out, flush=True)
        finally:
            if events is not None:
                events.close()
            self.player.finish()
            self.finished.set()

    def stop(self):
        self.stop_asked.set()


class Listener:
    """Runs the conversation on the input clock (the seconds of microphone audio consumed).

    `source.read()` gives 16 kHz mono audio; `echo` (an EchoCanceller or None) cleans it;
    `barge_in` lets user speech interrupt a reply (off in half-duplex mode, where the microphone
    is ignored while the reply plays); `typed` is a queue of typed lines (None ends the input);
    with `ptt`, an empty line starts and ends a recording instead of the VAD; `eof_quits`: the
    end of the typed input ends the session."""

    def __init__(self, session, source, player, endpointer: Endpointer, log: EventLog,
                 out: TextIO, echo=None, barge_in: bool = True, typed: Optional[queue.Queue] = None,
                 ptt: bool = False, parse_line: Optional[Callable] = None,
                 eof_quits: bool = False):
        self.session, self.source, self.player, self.ep = session, source, player, endpointer
        self.log, self.out, self.echo, self.barge_in = log, out, echo, barge_in
        self.typed, self.ptt, self.parse_line, self.eof_quits = typed, ptt, parse_line, eof_quits
        self.samples = 0  # input clock, in 16 kHz samples
        self.buffer = np.zeros(0, np.float32)
        self.reply: Optional[Reply] = None
        self.reply_base = 0  # player.played when the reply began
        self.sounding = False  # reply_start logged, reply_end not yet
        self.quiet_until = 0.0  # half-duplex: deaf until then
        self.recording: Optional[List[np.ndarray]] = None  # push-to-talk
        self.speech: List[np.ndarray] = []  # what was heard of every reply, for --save
        self.quit = False
        self.worker = Worker.shared()

    @property
    def t(self) -> float:
        return self.samples / INPUT_RATE

    def run(self):
        try:
            while not self.quit and not self._finished():
                self.step()
        finally:
            if self.reply is not None:
                self._interrupt(log=False)
            self._settle()

    def step(self):
        """Read and handle the next bit of input; typed lines between blocks."""
        audio = self.source.read()
        if self.echo is not None:
            audio = self.echo.process(audio)
        self.buffer = np.concatenate([self.buffer, audio])
        while len(self.buffer) >= BLOCK:
            block, self.buffer = self.buffer[:BLOCK], self.buffer[BLOCK:]
            self.samples += BLOCK
            self.player.tick(BLOCK_S)
            self._watch_reply()
            self._hear(block)
        if self.source.ended and (self.ep.active or self.recording is not None):
            self._utterance_events(self.ep.flush())
            self._ptt_stop()
        self._typed()

    def _finished(self) -> bool:
        return self.source.ended and not self.ep.active and self.recording is None \
            and self.reply is None

    # --- hearing the user -------------------------------------------------------------
    def _hear(self, block: np.ndarray):
        if self.ptt:
            if self.recording is not None:
                self.recording.append(block)
            return
        if not self.barge_in and self._replying():
            self.quiet_until = self.t + ECHO_TAIL_S
            return
        if self.t < self.quiet_until:
            if not self.ep.active:
                self.ep.reset()
            return
        self._utterance_events(self.ep.feed(block, self.t))

    def _utterance_events(self, events):
        for kind, value in events:
            if kind == "speech_start":
                self.log(value, "speech_start")
                if self._replying():
                    self._interrupt()
            else:
                self.log(value.end, "speech_end", seconds=round(value.end - value.start, 3))
                if value.turn:
                    self._start_turn([{"type": "audio", "audio": value.audio,
                                       "sampling_rate": INPUT_RATE}],
                                     "audio", len(value.audio) / INPUT_RATE)

    # --- replies ------------------------------------------------------------------------
    def _replying(self) -> bool:
        return self.reply is not None

    def _start_turn(self, content, kind: str, seconds: float = 0.0):
        if self._replying():
            self._interrupt()
        self._settle()
        self.log(self.t, "turn", input=kind, seconds=round(seconds, 3))
        self.reply_base = self.player.played
        self.reply = Reply(self.session, content, self.player, self.out)
        self.worker.jobs.put(self.reply.run)

    def _watch_reply(self):
        if self.reply is None:
            return
        if not self.sounding and self.player.played > self.reply_base:
            self.sounding = True
            self.log(self.t, "reply_start")
        if not self.reply.is_alive() and not self.player.busy:
            self.log(self.t, "reply_end", heard_s=round(self._heard() / self.player.sample_rate, 3))
            self._keep(self.reply, None)
            self.reply, self.sounding = None, False

    def _heard(self) -> int:
        return self.player.played - self.reply_base

    def _interrupt(self, log: bool = True):
        """Barge-in: the sound stops now, the generation at its next event."""
        reply = self.reply
        heard = self.player.cut() - self.reply_base
        reply.stop()
        if log:
            self.log(self.t, "barge_in", heard_s=round(heard / self.player.sample_rate, 3))
            if self.sounding:
                self.log(self.t, "reply_end", heard_s=round(heard / self.player.sample_rate, 3),
                         interrupted=True)
        self.pending_cut = (reply, heard)
        self.reply, self.sounding = None, False

    def _settle(self):
        """Before the next turn: the stopped reply's thread is done and the conversation
        keeps what was heard of it."""
        pending = getattr(self, "pending_cut", None)
        if pending is None:
            return
        reply, heard = pending
        reply.join()
        self.pending_cut = None
        if len(self.session.messages) > reply.turns_before:
            # the turn is in the conversation (a turn stopped before its first token is not,
            # and the reply before it must stay whole)
            self.worker.call(lambda: self.session.keep_heard(heard))
        self._keep(reply, heard)

    def _keep(self, reply: Reply, heard: Optional[int]):
        audio = np.concatenate(reply.audio) if reply.audio else np.zeros(0, np.float32)
        audio = audio[:heard] if heard is not None else audio
        if len(audio):
            if self.speech:
                self.speech.append(np.zeros(int(TURN_GAP_S * self.player.sample_rate), np.float32))
            self.speech.append(audio)

    # --- typed lines ----------------------------------------------------------------------
    def _typed(self):
        while self.typed is not None:
            try:
                line = self.typed.get_nowait()
            except queue.Empty:
                return
            if line is None:  # the typed input ended (Ctrl-D at a terminal: leave)
                self.typed = None
                self.quit = self.quit or self.eof_quits
                return
            self._line(line)

    def _line(self, line: str):
        if self.ptt and not line.strip():
            return self._ptt_start() if self.recording is None else self._ptt_stop()
        try:
            action, content = self.parse_line(line)
        except ValueError as err:
            print(f"error: {err}", file=self.out, flush=True)
            return
        if action == "quit":
            self.quit = True
        elif action == "reset":
            if self._replying():
                self._interrupt()
            self._settle()
            self.worker.call(self.session.reset)
            print("(conversation cleared)", file=self.out, flush=True)
        elif action == "send":
            self._start_turn(content, "text")

    def _ptt_start(self):
        self.recording = []
        self.log(self.t, "speech_start")
        if self._replying():
            self._interrupt()
        print("(recording: press Enter to send)", file=self.out, flush=True)

    def _ptt_stop(self):
        if self.recording is None:
            return
        audio = np.concatenate(self.recording) if self.recording else np.zeros(0, np.float32)
        self.recording = None
        self.log(self.t, "speech_end", seconds=round(len(audio) / INPUT_RATE, 3))
        if len(audio) >= BLOCK:
            self._start_turn([{"type": "audio", "audio": audio, "sampling_rate": INPUT_RATE}],
                             "audio", len(audio) / INPUT_RATE)


def read_lines(stream, lines: queue.Queue):
    """The typed-line thread: each line into `lines`, then None at the end of input."""
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)

