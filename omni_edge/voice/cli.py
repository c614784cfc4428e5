"""`omni-edge chat --listen`: the flags (`add_listen_options`) and the session (`run_listen`)."""

import argparse
import dataclasses
import queue
import sys
import threading
import time
from typing import Callable, Optional

import numpy as np

from ..playback import SAMPLE_RATE
from .audio_io import INPUT_RATE, FileSource, MicrophoneSource, describe_devices, import_sounddevice, open_player
from .echo import EchoCanceller, aec_available
from .listener import EventLog, Listener, read_lines
from .turns import (HANGOVER_S, MAX_UTTERANCE_S, MIN_SPEECH_S, PRE_ROLL_S, THRESHOLD, Endpointer,
                    SileroVAD, TurnOptions)

HELP = ("Listening: speak, and pause to let it answer; talking over a reply interrupts it{barge}. "
        "Typed lines still work (/reset, /quit, /audio FILE ...); Ctrl-C or /quit leaves.")
PTT_HELP = ("Push-to-talk: press Enter to start speaking and Enter again to send; typed lines "
            "still work; Ctrl-C or /quit leaves.")


class _ListDevices(argparse.Action):
    """--list-devices prints the sound devices and exits, before --model is asked for."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            print(describe_devices(import_sounddevice()))
        except ValueError as err:
            parser.exit(2, f"error: {err}\n")
        parser.exit()


def add_listen_options(p):
    g = p.add_argument_group("listening (--listen: the microphone is the input)")
    g.add_argument("--listen", action="store_true",
                   help="talk to it: each utterance is a turn, replies are spoken as they stream")
    g.add_argument("--ptt", action="store_true",
                   help="push-to-talk instead of voice detection: Enter starts and stops (noisy rooms)")
    g.add_argument("--mic-file", metavar="FILE",
                   help="use this recording as the microphone, streamed in real time")
    g.add_argument("--log", metavar="FILE.jsonl",
                   help='write events as JSON lines {"t": input-clock seconds, "event": ...}')
    g.add_argument("--list-devices", action=_ListDevices, help="list sound devices and exit")
    g.add_argument("--input-device", help="microphone: index or part of its name")
    g.add_argument("--output-device", help="speaker: index or part of its name")
    g.add_argument("--barge-in", action="store_true",
                   help="let speech interrupt a reply even without echo cancellation (headphones)")
    g.add_argument("--no-aec", action="store_true",
                   help="no echo cancellation: half-duplex (the microphone is ignored while a "
                        "reply plays) unless --barge-in")
    g.add_argument("--hangover-ms", type=float, default=HANGOVER_S * 1000,
                   help="silence that ends a turn")
    g.add_argument("--min-speech-ms", type=float, default=MIN_SPEECH_S * 1000,
                   help="shorter speech (a cough, a click) is no turn")
    g.add_argument("--max-utterance-s", type=float, default=MAX_UTTERANCE_S,
                   help="a turn ends here even without a pause")
    g.add_argument("--pre-roll-ms", type=float, default=PRE_ROLL_S * 1000,
                   help="audio kept from before the detected start")
    g.add_argument("--vad-threshold", type=float, default=THRESHOLD,
                   help="speech probability (0-1) that counts as speech")


def wants_listen(args) -> bool:
    """Whether `omni-edge chat` listens: --listen, or a flag that only makes sense so."""
    listen = bool(getattr(args, "listen", False) or getattr(args, "mic_file", None)
                  or getattr(args, "ptt", False))
    if not listen and getattr(args, "log", None):
        raise ValueError("--log records a listening session; add --listen (or --mic-file FILE)")
    return listen


def turn_options(args) -> TurnOptions:
    return TurnOptions(threshold=args.vad_threshold, hangover_s=args.hangover_ms / 1000,
                       min_speech_s=args.min_speech_ms / 1000,
                       max_utterance_s=args.max_utterance_s, pre_roll_s=args.pre_roll_ms / 1000)


def echo_mode(aec: bool, barge_in: bool, play: bool) -> str:
    """"none" (nothing plays), "aec", "headphones" (--barge-in, no AEC) or "half-duplex"."""
    if not play:
        return "none"
    if aec and aec_available():
        return "aec"
    return "headphones" if barge_in else "half-duplex"


def open_audio(mic_file: Optional[str] = None, input_device: Optional[str] = None,
               output_device: Optional[str] = None, play: bool = True, aec: bool = True,
               barge_in: bool = False, jitter_ms: float = 150, sd=None,
               output_stream_factory: Optional[Callable] = None, clock=time):
    """The input source, the session's player, the echo canceller (or None) and the echo mode;
    every error is raised here, before a model is needed. `sd` replaces the sounddevice
    module, `output_stream_factory` the output stream and `clock` the time module (tests)."""
    mode = echo_mode(aec, barge_in, play)
    source = FileSource(mic_file, clock) if mic_file else MicrophoneSource(input_device, sd=sd)
    try:
        echo = EchoCanceller(SAMPLE_RATE) if mode == "aec" else None
        player = open_player(play, output_device, jitter_ms, on_play=echo.played if echo else None,
                             stream_factory=output_stream_factory)
    except BaseException:
        source.close()
        raise
    return source, player, echo, mode


def _is_terminal(stream) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def warm_up(session):
    """One throwaway spoken turn (1 s of quiet audio, a few tokens, one audio window) with
    `session`'s options, so the first real turn does not pay for compiling kernels."""
    from ..chat import ChatSession

    options = dict(vars(session.options), max_tokens=3)
    speech = dataclasses.replace(session.speech, max_codec_tokens=30, min_codec_tokens=0)
    quiet = 0.01 * np.random.default_rng(0).standard_normal(INPUT_RATE).astype(np.float32)
    for _ in ChatSession(session.model, speech=speech, **options).send(
            [{"type": "audio", "audio": quiet, "sampling_rate": INPUT_RATE}]):
        pass


def listen(session, *, mic_file: Optional[str] = None, input_device: Optional[str] = None,
           output_device: Optional[str] = None, play: bool = True, aec: bool = True,
           barge_in: bool = False, options: TurnOptions = TurnOptions(), log: Optional[str] = None,
           jitter_ms: float = 150, out=None, typed=None, ptt: bool = False,
           parse_line: Optional[Callable] = None, opened=None, warm: bool = True,
           **devices) -> Listener:
    """Talk with `session` (a ChatSession with speak=True) until Ctrl-C, `/quit` or, with
    `mic_file`, the file's end once the last reply ended. Returns the Listener (its `.speech`,
    the replies as heard; `log.events`). `typed`: a text stream of typed lines
    (`parse_line` reads them); `opened`: what `open_audio` returned, when already opened;
    `warm`: run a throwaway turn first (`warm_up`)."""
    vad = SileroVAD()
    source, player, echo, mode = opened or open_audio(
        mic_file, input_device, output_device, play, aec, barge_in, jitter_ms, **devices)
    out = out or sys.stdout
    events = EventLog(log)
    try:
        lines = None
        if typed is not None:
            lines = queue.Queue()
            threading.Thread(target=read_lines, args=(typed, lines), daemon=True).start()
        barge = mode != "half-duplex"
        print(PTT_HELP if ptt else HELP.format(barge="" if barge else (
            " (not while it speaks: no echo cancellation; --barge-in with headphones)")),
            file=out, flush=True)
        print(f"(input: {source.name}; echo: {mode})", file=out, flush=True)
        listener = Listener(session, source, player, Endpointer(vad, options), events, out,
                            echo=echo, barge_in=barge, typed=lines, ptt=ptt, parse_line=parse_line,
                            eof_quits=_is_terminal(typed))
        if warm:  # on the session's generation thread, as every later call
            print("(warming up)", file=out, flush=True)
            listener.worker.call(lambda: warm_up(session))
        try:
            listener.run()
        except KeyboardInterrupt:  # Ctrl-C leaves; the reply stops, the speech is kept
            print("\n(stopped)", file=out, flush=True)
        return listener
    finally:
        source.close()
        player.close(wait=False)
        events.close()


def run_listen(args, load_model: Callable, options: dict, parse_line: Callable,
               save_wav: Callable, stdin=None, stdout=None, **devices):
    """`omni-edge chat --listen`: everything that can fail on this machine (the microphone, the
    file, the speaker, the VAD) fails before the model loads."""
    from ..chat import ChatSession

    if args.ptt and args.mic_file:
        raise ValueError("--ptt listens to the microphone; drop it with --mic-file")
    turns = turn_options(args)
    SileroVAD()
    play = bool(options.get("speak")) and not args.no_play
    opened = open_audio(args.mic_file, args.input_device, args.output_device, play,
                        not args.no_aec, args.barge_in, args.jitter_ms, **devices)
    try:
        session = ChatSession(load_model(), system=args.system, **options)
    except BaseException:
        opened[0].close()
        opened[1].close(wait=False)
        raise
    listener = listen(session, options=turns, log=args.log, out=stdout, typed=stdin or sys.stdin,
                      ptt=args.ptt, parse_line=parse_line, opened=opened)
    if args.save:
        save_wav(args.save, listener.speech)
        print(f"(speech saved to {args.save})", file=stdout or sys.stdout, flush=True)
    return listener
