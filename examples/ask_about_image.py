"""Ask a question about an image (or, with --video, a video clip) and print the answer as it
streams. Bad input (a missing or corrupt file) prints the reason and exits with status 2."""

import argparse
import sys

import omni_edge


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="converted dir, HF dir or hub repo id")
    parser.add_argument("--image", help="the image file (jpg, png, ...)")
    parser.add_argument("--video", help="or a video file (mp4, mov, webm, mkv)")
    parser.add_argument("--question", default="What is in this picture?")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    if bool(args.image) == bool(args.video):
        parser.error("give one of --image FILE or --video FILE")

    print(f"Loading {args.model}")
    model = omni_edge.load(args.model)
    kind, path = ("image", args.image) if args.image else ("video", args.video)
    print(f"Asking {args.question!r} about {path}")
    messages = [{"role": "user", "content": [{"type": kind, kind: path},
                                             {"type": "text", "text": args.question}]}]
    try:
        print("Answer: ", end="", flush=True)
        for event in omni_edge.stream(model, messages, max_tokens=args.max_tokens):
            if event.type == "text":
                print(event.text, end="", flush=True)
        print()
    except (ValueError, FileNotFoundError) as e:
        print(f"\ncan't use {path}: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
