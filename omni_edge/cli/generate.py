"""`omni-edge generate`: answer one prompt, streaming the text (and speaking it with --speak)."""

import sys

from .common import (add_generation_options, add_model_options, add_speech_options,
                     generation_options, load_model, print_stats, speech_options)


def add_parser(sub):
    p = sub.add_parser("generate", help="answer one prompt, streaming the text")
    add_model_options(p)
    p.add_argument("--prompt", "-p", help="the user's text ('-' reads stdin)")
    p.add_argument("--audio", "-a", action="append", default=[], metavar="FILE",
                   help="an audio file (wav, flac, ogg, mp3) sent before the text; repeatable")
    p.add_argument("--image", "-i", action="append", default=[], metavar="FILE",
                   help="an image (jpg, png, webp, ...) sent before the text; repeatable")
    p.add_argument("--video", "-v", action="append", default=[], metavar="FILE",
                   help="a video (mp4, mov, webm, mkv) sent before the text; repeatable")
    p.add_argument("--use-audio-in-video", action="store_true",
                   help="also listen to each video's sound track")
    p.add_argument("--system", help="system prompt (default: the chat template's)")
    p.add_argument("--speak", metavar="OUT.wav", help="also speak the reply into this 24 kHz wav")
    p.add_argument("--play", action="store_true",
                   help="also play the speech as it streams (needs omni-edge[voice])")
    p.add_argument("--jitter-ms", type=float, default=150,
                   help="the least audio buffered before playback starts (with --play)")
    p.add_argument("--truncate", action="store_true",
                   help="drop the oldest prompt tokens instead of failing on an over-long prompt")
    add_speech_options(p)
    add_generation_options(p)
    p.set_defaults(func=run)


def user_content(args) -> list:
    """Images, then videos, then audio clips, then the text, as one user message."""
    if not (args.prompt or args.audio or args.image or args.video):
        raise ValueError("give --prompt TEXT and/or media: --audio FILE, --image FILE, --video FILE")
    content = [{"type": "image", "image": path} for path in args.image]
    content += [{"type": "video", "video": path} for path in args.video]
    content += [{"type": "audio", "audio": path} for path in args.audio]
    if args.prompt:
        text = sys.stdin.read() if args.prompt == "-" else args.prompt
        content.append({"type": "text", "text": text})
    return content


def run(args):
    from ..generate import stream
    from ..wavfile import save_wav

    if args.play and not args.speak:
        raise ValueError("--play plays the speech: add --speak OUT.wav")
    if args.jitter_ms < 0:
        raise ValueError(f"--jitter-ms must be >= 0, got {args.jitter_ms}")
    messages = [{"role": "user", "content": user_content(args)}]
    if args.system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": args.system}]})
    speech = speech_options(args)
    player = None
    if args.play:  # open the sound card first: if it can't play, say so before the slow part
        from ..playback import Player

        player = Player(jitter_ms=args.jitter_ms)
    model = load_model(args, speech=bool(args.speak))
    options = dict(generation_options(args), truncate=args.truncate,
                   use_audio_in_video=args.use_audio_in_video, speak=bool(args.speak))
    audio = []
    try:
        for event in stream(model, messages, speech=speech, **options):
            if event.type == "text":
                print(event.text, end="", flush=True)
            elif event.type == "audio":
                audio.append(event.audio)
                if player is not None:
                    player.write(event.audio, ahead_s=event.next_in_s)
            else:
                print()
                print_stats(event.stats)
    finally:
        if player is not None:
            player.close()
            print(f"Playback: {player.underruns} underrun(s)")
    if args.speak:
        save_wav(args.speak, audio)
        print(f"Speech written to {args.speak}")
