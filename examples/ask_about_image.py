"""Ask a question about an image. Image input is not implemented yet: until it is, this prints
why and exits with status 2; it will work unchanged once images land."""

import argparse
import sys

import omni_edge


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="converted dir, HF dir or hub repo id")
    parser.add_argument("--image", required=True, help="the image file (jpg, png, ...)")
    parser.add_argument("--question", default="What is in this picture?")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    print(f"Loading {args.model}")
    model = omni_edge.load(args.model)
    print(f"Asking {args.question!r} about {args.image}")
    messages = [{"role": "user", "content": [{"type": "image", "image": args.image},
                                             {"type": "text", "text": args.question}]}]
    try:
        result = omni_edge.generate(model, messages, max_tokens=args.max_tokens)
    except NotImplementedError as e:
        print(f"Image input is not available in this version of omni-edge: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Answer: {result.text}")


if __name__ == "__main__":
    main()
