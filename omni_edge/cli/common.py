"""What the `omni-edge` subcommands share: the generation and speech flags mapped once onto
`GenerationOptions`/`SpeechOptions`, loading, and the stats lines."""

import sys

from ..models.solvers import SOLVERS
from ..options import (CHUNK_FRAMES, DIT_DTYPES, FIRST_CHUNK_FRAMES, MAX_CODEC_TOKENS,
                       TALKER_REPETITION_PENALTY, TALKER_TEMPERATURE, TALKER_TOP_K, TALKER_TOP_P,
                       SpeechOptions)

DEFAULT_MAX_TOKENS = 256
MODEL_HELP = "converted dir, HF dir or hub repo id"
LOW_MEMORY_HELP = ("free the audio and vision encoders' weights after each use: a lower peak "
                   "(0.37 GB less for the 3B at q4-min), read again for each turn with media")


def add_model_options(p):
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--low-memory", action="store_true", help=LOW_MEMORY_HELP)


def add_generation_options(p):
    p.add_argument("--max-tokens", "-m", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--temp", type=float, default=0.0, help="temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-context", type=int, help="context size (default: the model's)")
    p.add_argument("--max-kv-size", type=int,
                   help="a rotating KV cache of this many positions (bounds memory)")
    p.add_argument("--kv-bits", type=int, choices=[4, 8], help="quantize the KV cache")
    p.add_argument("--compile-decode", action="store_true",
                   help="run each one-token decode step as one compiled graph (experimental: "
                        "slower than op by op on MLX's CUDA backend so far)")


def add_speech_options(p):
    p.add_argument("--voice", default="Chelsie", help="voice of the speech (see the model's speakers)")
    p.add_argument("--talker-temp", type=float, default=TALKER_TEMPERATURE,
                   help="Talker temperature (0 = greedy)")
    p.add_argument("--talker-top-k", type=int, default=TALKER_TOP_K)
    p.add_argument("--talker-top-p", type=float, default=TALKER_TOP_P)
    p.add_argument("--talker-repetition-penalty", type=float, default=TALKER_REPETITION_PENALTY)
    p.add_argument("--max-codec-tokens", type=int, default=MAX_CODEC_TOKENS,
                   help="bound on the speech length (50 codec tokens per second)")
    p.add_argument("--first-chunk-frames", type=int, default=FIRST_CHUNK_FRAMES,
                   help="mel frames (multiple of 24) in the first audio window; smaller starts "
                        "the speech sooner (the reference uses 72)")
    p.add_argument("--chunk-frames", type=int, default=CHUNK_FRAMES,
                   help="mel frames (multiple of 24) in the later audio windows; larger means "
                        "fewer windows (the reference uses 72)")
    p.add_argument("--dit-dtype", choices=DIT_DTYPES,
                   help="the Token2Wav DiT's compute type (default: as converted; bfloat16 is "
                        "~2.5x faster per window on an H100 and drifts ~0.1%% from float32)")
    p.add_argument("--solver", default="reference", choices=list(SOLVERS),
                   help="Token2Wav's ODE solver preset (reference: RK4 on 10 time points, "
                        "guided every evaluation; fast: midpoint on 6; see README)")
    p.add_argument("--token2wav-steps", type=int,
                   help="override the solver's ODE time points (fewer is faster)")
    p.add_argument("--no-overlap", action="store_true",
                   help="render each audio window in line (decoding waits for it)")


def generation_options(args) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p,
                top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, max_context=args.max_context, max_kv_size=args.max_kv_size,
                kv_bits=args.kv_bits, compile_decode=args.compile_decode)


def speech_options(args) -> SpeechOptions:
    return SpeechOptions(
        voice=args.voice, talker_temperature=args.talker_temp, talker_top_k=args.talker_top_k,
        talker_top_p=args.talker_top_p, talker_repetition_penalty=args.talker_repetition_penalty,
        max_codec_tokens=args.max_codec_tokens, first_chunk_frames=args.first_chunk_frames,
        chunk_frames=args.chunk_frames, solver=args.solver, token2wav_steps=args.token2wav_steps,
        dit_dtype=args.dit_dtype, overlap=not args.no_overlap,
        compile_decode=args.compile_decode)


def load_model(args, speech: bool = True):
    """The model of --model; without `speech`, no Talker or Token2Wav is loaded."""
    from ..loading import load

    return load(args.model, speech=speech, keep_encoders=not args.low_memory)


def print_stats(stats, out=None):
    out = out or sys.stdout
    print("=" * 10, file=out)
    print(f"Prompt: {stats.prompt_tokens} tokens, {stats.prompt_tps:.1f} tokens-per-sec", file=out)
    print(f"Generation: {stats.generation_tokens} tokens, "
          f"{stats.generation_tps:.1f} tokens-per-sec", file=out)
    if stats.codec_tokens:
        print(f"Speech: {stats.codec_tokens} codec tokens at {stats.talker_tps:.1f} tokens-per-sec, "
              f"{stats.audio_seconds:.2f} s of audio in {stats.speech_seconds:.2f} s; first chunk "
              f"{stats.first_audio_seconds * 1000:.0f} ms at {stats.time_to_first_audio:.2f} s, "
              f"glitch-free from {stats.glitch_free_start_s:.2f} s", file=out)
    print(f"Peak memory: {stats.peak_memory_gb:.3f} GB", file=out)
