"""`omni-edge convert-coreml`: the parser and the entry point, a thin layer over `export.export`.

Imports nothing heavy, so a missing coremltools/torch is reported with the install command."""

import sys

from . import check_backends
from . import options as o


def add_parser(subparsers):
    p = subparsers.add_parser(
        "convert-coreml", help="export Core ML packages (iOS 18+) for iPhone and glasses prototyping",
        description="Export a Hugging Face Qwen2.5-Omni checkpoint to one .mlpackage per component "
                    "plus manifest.json. Needs the coreml extra: pip install \"omni-edge[coreml]\".")
    p.add_argument("--hf-path", required=True, help="local checkpoint directory or hub repo id")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --force)")
    p.add_argument("--components", default=",".join(o.COMPONENTS),
                   help=f"comma-separated subset of {','.join(o.COMPONENTS)} (default: all)")
    p.add_argument("--bits", type=int, default=4,
                   help="Thinker weights: 4 (int4, blocks of 32), 8 (int8 per channel) or 16 (float16)")
    p.add_argument("--talker-bits", type=int, default=o.DEFAULT_TALKER_BITS,
                   help="Talker weights: 4, 8 or 16 (default 8)")
    p.add_argument("--compression", default="linear", help="linear (quantization) or palettize")
    p.add_argument("--context", type=int, default=o.DEFAULT_CONTEXT,
                   help="Thinker KV-cache slots (default 2048)")
    p.add_argument("--talker-context", type=int, default=o.DEFAULT_TALKER_CONTEXT,
                   help="Talker KV-cache slots (default 4096)")
    p.add_argument("--prefill-chunk", type=int, default=o.DEFAULT_PREFILL_CHUNK,
                   help="query positions of the prefill function (default 64); "
                        "contexts are multiples of it")
    p.add_argument("--precision", default="float16",
                   help="compute precision of the encoders and decoders: float16 or float32")
    p.add_argument("--token2wav-precision", default="float32",
                   help="compute precision of the DiT and BigVGAN (default float32, as the reference)")
    p.add_argument("--audio-batches", default=",".join(map(str, o.DEFAULT_AUDIO_BATCHES)),
                   help="enumerated audio-encoder batch sizes")
    p.add_argument("--image-sizes", default="448x448",
                   help="vision functions, HEIGHTxWIDTH in pixels (multiples of 28), comma-separated")
    p.add_argument("--dit-frames", type=int, help="DiT window in mel frames (default: the streaming "
                   "chunk with its context, 144)")
    p.add_argument("--vocoder-frames", type=int, help="BigVGAN window in mel frames (default 112)")
    p.add_argument("--revision", help="hub revision when --hf-path is a repo id")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(func=main)
    return p


def main(args):
    try:
        check_backends()
    except ImportError as err:
        print(f"omni-edge convert-coreml: error: {err}", file=sys.stderr)
        sys.exit(2)
    from .export import export

    out = export(args.hf_path, args.out, args.components, force=args.force, revision=args.revision,
                 bits=args.bits, talker_bits=args.talker_bits, compression=args.compression,
                 context=args.context, talker_context=args.talker_context,
                 prefill_chunk=args.prefill_chunk, precision=args.precision,
                 token2wav_precision=args.token2wav_precision, audio_batches=args.audio_batches,
                 image_sizes=args.image_sizes, dit_frames=args.dit_frames,
                 vocoder_frames=args.vocoder_frames)
    print(f"[omni-edge] wrote {out} (see {out}/manifest.json)")
