"""`omni-edge generate`: answer one prompt, streaming the text (and speaking it with --speak)."""

import sys

from .common import (MODEL_HELP, add_generation_options, add_speech_options, generation_options,
                     load_model, print_stats, speech_options)


def add_parser(sub):
    p = sub.add_parser("generate", help="answer one prompt, streaming the text")
    p.add_argument("--model", required=True, help=MODEL_HELP)
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

    messages = [{"role": "user", "content": user_content(args)}]
    if args.system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": args.system}]})
    speech = speech_options(args)
    model = load_model(args)
    options = dict(generation_options(args), truncate=args.truncate,
                   use_audio_in_video=args.use_audio_in_video, speak=bool(args.speak))
    audio = []
    for event in stream(model, messages, speech=speech, **options):
        if event.type == "text":
            print(event.text, end="", flush=True)
        elif event.type == "audio":
            audio.append(event.audio)
        else:
            print()
            print_stats(event.stats)
    if args.speak:
        save_wav(args.speak, audio)
        print(f"Speech written to {args.speak}")
