"""The `omni-edge` command: convert (MLX, Core ML), generate, chat and demo, a thin layer over the
Python API."""

import argparse
import sys

from .convert.coreml.cli import add_parser as _add_convert_coreml

DEFAULT_MAX_TOKENS = 256


def _add_convert(sub):
    from .convert.presets import PRESETS

    p = sub.add_parser("convert", help="convert a Hugging Face Qwen2.5-Omni checkpoint to MLX")
    p.add_argument("--hf-path", required=True, help="local checkpoint directory or hub repo id")
    p.add_argument("--mlx-path", required=True, help="output directory (must not exist)")
    p.add_argument("--preset", help="footprint preset: " + "; ".join(
        f"{name}: {preset.about}" for name, preset in PRESETS.items()))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="float type of the Thinker, Talker and encoders")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize: --preset q4")
    p.add_argument("--q-bits", type=int, help="Thinker bits: 4 or 8 (0 or 16: float)")
    p.add_argument("--q-group-size", type=int, default=64, choices=[32, 64, 128])
    p.add_argument("--talker-bits", type=int, help="Talker bits (4, 8; 0 or 16 keeps it in float)")
    p.add_argument("--audio-bits", type=int, help="audio encoder bits (4, 8; 0 or 16: float)")
    p.add_argument("--vision-bits", type=int, help="vision encoder bits (4, 8; 0 or 16: float)")
    p.add_argument("--token2wav-bits", type=int, help="DiT block bits (8; 0 or 16: float)")
    p.add_argument("--token2wav-dtype", help="Token2Wav float type: float32 (the reference's), "
                   "float16 or bfloat16")
    p.add_argument("--revision", help="hub revision when --hf-path is a repo id")
    p.add_argument("--force", action="store_true", help="overwrite an existing --mlx-path")
    p.set_defaults(func=run_convert)


def _add_generation_options(p):
    p.add_argument("--max-tokens", "-m", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--temp", type=float, default=0.0, help="temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-context", type=int, help="context size (default: the model's)")
    p.add_argument("--truncate", action="store_true",
                   help="drop the oldest prompt tokens instead of failing on an over-long prompt")


def _add_generate(sub):
    p = sub.add_parser("generate", help="answer one prompt, streaming the text")
    p.add_argument("--model", required=True, help="converted dir, HF dir or hub repo id")
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
    _add_talker_options(p)
    _add_generation_options(p)
    p.set_defaults(func=run_generate)


def _add_talker_options(p):
    p.add_argument("--voice", default="Chelsie", help="voice of the speech (see the model's speakers)")
    p.add_argument("--talker-temp", type=float, default=0.9, help="Talker temperature (0 = greedy)")
    p.add_argument("--talker-top-k", type=int, default=40)
    p.add_argument("--talker-top-p", type=float, default=0.8)
    p.add_argument("--talker-repetition-penalty", type=float, default=1.05)
    p.add_argument("--max-codec-tokens", type=int, default=4096,
                   help="bound on the speech length (50 codec tokens per second)")
    p.add_argument("--first-chunk-frames", type=int, default=24,
                   help="mel frames (multiple of 24) in the first audio window; smaller starts "
                        "the speech sooner (the reference uses 72)")
    p.add_argument("--chunk-frames", type=int, default=216,
                   help="mel frames (multiple of 24) in the later audio windows; larger means "
                        "fewer windows (the reference uses 72)")
    p.add_argument("--dit-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the Token2Wav DiT's compute type (float32 as the reference; bfloat16 is "
                        "~2.5x faster per window on an H100 and drifts ~0.1%% from it)")
    p.add_argument("--token2wav-steps", type=int, default=10,
                   help="ODE time points per audio window (10 = the reference; fewer is faster)")


def _add_chat(sub):
    p = sub.add_parser("chat", help="talk with the model: multi-turn, speaking as it streams",
                       description="Type a message and press Enter. /audio, /image or /video "
                                   "FILE [text] sends a file, /reset forgets the conversation, "
                                   "/quit (or Ctrl-D) leaves; Ctrl-C stops the current reply.")
    p.add_argument("--model", required=True, help="converted dir, HF dir or hub repo id")
    p.add_argument("--system", help="system prompt (speech needs the default one)")
    p.add_argument("--text-only", action="store_true", help="reply in text only, no speech")
    p.add_argument("--no-play", action="store_true", help="don't play the speech (headless)")
    p.add_argument("--save", metavar="OUT.wav", help="write all of the session's speech here")
    p.add_argument("--jitter-ms", type=float, default=150, help="playback buffer before sound starts")
    _add_talker_options(p)
    _add_generation_options(p)
    p.set_defaults(func=run_chat)


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the whole pipeline on a tiny random-weight model (offline)")
    p.add_argument("--dir", help="keep the demo checkpoint here (default: a temporary folder)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.set_defaults(func=run_demo)


def generation_kwargs(args) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p,
                top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, max_context=args.max_context, truncate=args.truncate)


def print_stats(stats, out=None):
    out = out or sys.stdout
    print("=" * 10, file=out)
    print(f"Prompt: {stats.prompt_tokens} tokens, {stats.prompt_tps:.1f} tokens-per-sec", file=out)
    print(f"Generation: {stats.generation_tokens} tokens, "
          f"{stats.generation_tps:.1f} tokens-per-sec", file=out)
    print(f"Peak memory: {stats.peak_memory_gb:.3f} GB", file=out)


def run_convert(args):
    from .convert.mlx import convert

    out = convert(args.hf_path, args.mlx_path, dtype=args.dtype, quantize=args.quantize,
                  q_bits=args.q_bits, q_group_size=args.q_group_size,
                  talker_bits=args.talker_bits, audio_bits=args.audio_bits,
                  vision_bits=args.vision_bits, force=args.force, revision=args.revision,
                  preset=args.preset, token2wav_bits=args.token2wav_bits,
                  token2wav_dtype=args.token2wav_dtype)
    print(f"[omni-edge] wrote {out}")


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


def run_generate(args):
    from .generate import stream

    messages = [{"role": "user", "content": user_content(args)}]
    if args.system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": args.system}]})
    model = load_for_speech(args)
    kwargs = generation_kwargs(args)
    kwargs["use_audio_in_video"] = args.use_audio_in_video
    if args.speak:
        kwargs.update(speak=True, voice=args.voice, talker_temperature=args.talker_temp,
                      talker_top_k=args.talker_top_k, talker_top_p=args.talker_top_p,
                      talker_repetition_penalty=args.talker_repetition_penalty,
                      max_codec_tokens=args.max_codec_tokens,
                      first_chunk_frames=args.first_chunk_frames,
                      chunk_frames=args.chunk_frames, token2wav_steps=args.token2wav_steps)
    audio = []
    for event in stream(model, messages, **kwargs):
        if event.type == "text":
            print(event.text, end="", flush=True)
        elif event.type == "audio":
            audio.append(event.audio)
        else:
            print()
            print_stats(event.stats)
    if args.speak:
        write_wav(args.speak, audio, event.stats)


def save_wav(path: str, chunks: list):
    """Write the speech next to its final name first, so a failure leaves no partial file."""
    import os

    import numpy as np
    import soundfile as sf

    from .speech import SAMPLE_RATE

    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    tmp = f"{path}.partial"
    try:
        sf.write(tmp, wav, SAMPLE_RATE, format="WAV", subtype="FLOAT")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_for_speech(args):
    """The model of `args.model`, its DiT in `args.dit_dtype` when it speaks."""
    import mlx.core as mx

    from .loading import load

    model = load(args.model)
    if args.dit_dtype != "float32" and getattr(model, "token2wav", None) is not None:
        model.token2wav.code2wav_dit_model.set_dtype(getattr(mx, args.dit_dtype))
    return model


def write_wav(path: str, chunks: list, stats):
    save_wav(path, chunks)
    print(f"Speech: {stats.codec_tokens} codec tokens at {stats.talker_tps:.1f} tokens-per-sec, "
          f"{stats.audio_seconds:.2f} s of audio in {stats.speech_seconds:.2f} s -> {path}")


def run_chat(args):
    from .chat_cli import chat

    chat(args)


def run_demo(args):
    from .demo.run import run_demo as demo

    demo(args.dir, max_tokens=args.max_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    _add_convert_coreml(sub)
    _add_generate(sub)
    _add_chat(sub)
    _add_demo(sub)
    return parser


def main(argv=None):
    from .playback import PlaybackError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError,
            PlaybackError) as err:
        print(f"omni-edge {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
