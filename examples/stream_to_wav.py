"""Stream a spoken answer to a text prompt: print the text as it arrives and append each audio
chunk to a wav as it arrives (and play it with --play)."""

import argparse
import contextlib
import sys

import soundfile as sf

import omni_edge

SPEECH_SAMPLE_RATE = 24000  # every AudioChunk is 24 kHz mono float32


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="converted dir, HF dir or hub repo id")
    parser.add_argument("--prompt", default="Tell me a short story about a lighthouse.")
    parser.add_argument("--out", default="stream.wav", help="the wav the speech is appended to")
    parser.add_argument("--voice", default="Chelsie")
    parser.add_argument("--play", action="store_true", help="also play it (needs omni-edge[voice])")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-codec-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()

    player = contextlib.nullcontext()
    if args.play:  # open the sound card first: if it can't play, say so before the slow part
        from omni_edge.playback import Player, PlaybackError
        try:
            player = Player(sample_rate=SPEECH_SAMPLE_RATE)
        except PlaybackError as e:
            sys.exit(f"Can't play: {e}")
    print(f"Loading {args.model}")
    model = omni_edge.load(args.model)
    print(f"Streaming the answer to {args.prompt!r} into {args.out}")
    options = dict(speak=True, voice=args.voice, seed=args.seed, max_tokens=args.max_tokens,
                   max_codec_tokens=args.max_codec_tokens)
    with sf.SoundFile(args.out, "w", SPEECH_SAMPLE_RATE, 1, subtype="FLOAT") as wav, player:
        for event in omni_edge.stream(model, args.prompt, **options):
            if event.type == "text":
                print(event.text, end="", flush=True)
            elif event.type == "audio":
                wav.write(event.audio)
                if args.play:
                    player.write(event.audio)
            elif event.type == "done":
                print(f"\n[{event.finish_reason}] {event.stats.audio_seconds:.2f} s of speech "
                      f"-> {args.out}")


if __name__ == "__main__":
    main()
