"""`omni-edge chat`: an interactive, multi-turn conversation that speaks while it streams."""

import functools
import shlex
import sys
from typing import Callable, List, Optional

import numpy as np

from ..events import SPEECH_SAMPLE_RATE
from ..voice import add_listen_options, run_listen, wants_listen
from .common import (add_generation_options, add_model_options, add_speech_options,
                     generation_options, load_model, speech_options)

TURN_GAP_S = 0.3  # silence between the turns' speech in the --save file
MEDIA_COMMANDS = {"/audio": "question.wav", "/image": "photo.jpg", "/video": "clip.mp4"}
HELP = ("Type a message and press Enter. /audio FILE, /image FILE or /video FILE [+audio] send a "
        "file (with an optional question; +audio also listens to the video's sound), /reset "
        "forgets the conversation, /quit or Ctrl-D leaves; Ctrl-C stops a reply.")


def parse_line(line: str):
    """A typed line → ("quit" | "reset" | "help" | "skip", None) or ("send", content)."""
    text = line.strip()
    if not text:
        return "skip", None
    if not text.startswith("/"):
        return "send", [{"type": "text", "text": text}]
    word, _, rest = text.partition(" ")
    if word in ("/quit", "/exit"):
        return "quit", None
    if word in ("/reset", "/help"):
        return word[1:], None
    if word in MEDIA_COMMANDS:
        kind = word[1:]
        parts = shlex.split(rest)
        if not parts:
            raise ValueError(f"{word} needs a file: {word} {MEDIA_COMMANDS[word]} [text]")
        content = [{"type": kind, kind: parts[0]}]
        if kind == "video" and parts[0] and len(parts) > 1 and parts[1] == "+audio":
            content[0]["use_audio_in_video"] = True
            parts = parts[1:]
        if len(parts) > 1:
            content.append({"type": "text", "text": " ".join(parts[1:])})
        return "send", content
    raise ValueError(f"unknown command {word}; {HELP}")


def add_parser(sub):
    p = sub.add_parser("chat", help="talk with the model: multi-turn, speaking as it streams",
                       description=HELP)
    add_model_options(p)
    p.add_argument("--system", help="system prompt (speech needs the default one)")
    p.add_argument("--text-only", action="store_true", help="reply in text only, no speech")
    p.add_argument("--no-play", action="store_true", help="don't play the speech (headless)")
    p.add_argument("--save", metavar="OUT.wav", help="write all of the session's speech here")
    p.add_argument("--jitter-ms", type=float, default=150,
                   help="the least audio buffered before playback starts")
    add_listen_options(p)  # issue 14: omni-edge chat --listen (omni_edge/voice)
    add_speech_options(p)
    add_generation_options(p)
    p.set_defaults(func=chat)


def session_options(args) -> dict:
    """ChatSession's keywords from the flags (a conversation that outgrows the context drops
    its oldest turns)."""
    return dict(generation_options(args), speak=not args.text_only, speech=speech_options(args))


def chat(args, stdin=None, stdout=None, player_factory: Optional[Callable] = None):
    """Run the conversation loop. `player_factory(sample_rate=...)` replaces the sound card
    (tests); playback problems are reported before the model loads."""
    from ..chat import ChatSession
    from ..playback import Player
    from ..wavfile import save_wav

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if wants_listen(args):  # issue 14: the microphone is the input (omni_edge/voice)
        return run_listen(args, lambda: load_model(args), session_options(args), parse_line,
                          save_wav, stdin=stdin, stdout=stdout)
    if args.jitter_ms < 0:
        raise ValueError(f"--jitter-ms is the least audio buffered before playback, >= 0; got "
                         f"{args.jitter_ms}")
    play = not args.text_only and not args.no_play
    player_factory = functools.partial(player_factory or Player, sample_rate=SPEECH_SAMPLE_RATE,
                                       jitter_ms=args.jitter_ms)
    if play:
        player_factory().close()  # fail now, with the install hint
    model = load_model(args, speech=not args.text_only)
    session = ChatSession(model, system=args.system, **session_options(args))
    speech: List[np.ndarray] = []
    print(HELP, file=stdout)
    try:
        while True:
            print("> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line:
                break
            try:
                action, content = parse_line(line)
            except ValueError as err:
                print(f"error: {err}", file=stdout)
                continue
            if action == "quit":
                break
            if action == "reset":
                session.reset()
                print("(conversation cleared)", file=stdout)
            elif action == "help":
                print(HELP, file=stdout)
            elif action == "send":
                _turn(session, content, stdout, player_factory if play else None, speech)
    finally:
        if args.save:
            save_wav(args.save, speech)
            print(f"(speech saved to {args.save})", file=stdout)


def _turn(session, content, stdout, player_factory, speech: list):
    """One reply: text to stdout, audio to the player and the session's recording."""
    player = player_factory() if player_factory else None
    events = session.send(content)
    audio = []
    interrupted = False
    try:
        for event in events:
            if event.type == "text":
                print(event.text, end="", flush=True, file=stdout)
            elif event.type == "audio":
                audio.append(event.audio)
                if player is not None:
                    player.write(event.audio, ahead_s=event.next_in_s)
            else:
                stats = event.stats
                line = f"[{stats.generation_tokens} tokens, {stats.generation_tps:.1f} tok/s"
                if stats.codec_tokens:
                    line += (f"; {stats.audio_seconds:.1f} s of speech, first audio after "
                             f"{stats.time_to_first_audio:.2f} s, glitch-free from "
                             f"{stats.glitch_free_start_s:.2f} s")
                print(f"\n{line}]", file=stdout)
    except KeyboardInterrupt:
        interrupted = True
        print("\n(stopped)", file=stdout)
    except (ValueError, FileNotFoundError) as err:
        print(f"\nerror: {err}", file=stdout)
    finally:
        events.close()
        if player is not None:
            player.close(wait=not interrupted)
            if player.underruns:
                print(f"(playback ran dry {player.underruns} time(s))", file=stdout)
    if audio:
        if speech:
            speech.append(np.zeros(int(TURN_GAP_S * SPEECH_SAMPLE_RATE), np.float32))
        speech.extend(audio)
