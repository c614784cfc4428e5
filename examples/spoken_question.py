"""Ask a spoken question (an audio file) and save the spoken answer as a 24 kHz wav."""

import argparse
import sys

import soundfile as sf

import omni_edge


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="converted dir, HF dir or hub repo id")
    parser.add_argument("--audio", required=True, help="the question: wav, flac, ogg or mp3")
    parser.add_argument("--out", default="answer.wav", help="where to write the spoken answer")
    parser.add_argument("--voice", default="Chelsie")
    parser.add_argument("--play", action="store_true", help="also play it (needs omni-edge[voice])")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-codec-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()

    print(f"Loading {args.model}")
    model = omni_edge.load(args.model)
    print(f"Asking the question in {args.audio} (voice {args.voice})")
    messages = [{"role": "user", "content": [{"type": "audio", "audio": args.audio}]}]
    result = omni_edge.generate(model, messages, speak=True, voice=args.voice, seed=args.seed,
                                max_tokens=args.max_tokens, max_codec_tokens=args.max_codec_tokens)
    print(f"Answer: {result.text}")
    sf.write(args.out, result.audio, result.sample_rate, subtype="FLOAT")
    print(f"Wrote {len(result.audio) / result.sample_rate:.2f} s of speech to {args.out}")
    if args.play:
        from omni_edge.playback import Player, PlaybackError

        print("Playing the answer")
        try:
            with Player(sample_rate=result.sample_rate) as player:
                player.write(result.audio)
        except PlaybackError as e:
            sys.exit(f"Can't play: {e}")


if __name__ == "__main__":
    main()
