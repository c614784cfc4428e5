"""`omni-edge convert`: a Hugging Face Qwen2.5-Omni checkpoint to MLX."""



def add_parser(sub):
    p = sub.add_parser("convert", help="convert a Hugging Face Qwen2.5-Omni checkpoint to MLX")
    p.add_argument("--hf-path", required=True, help="local checkpoint directory or hub repo id")
    p.add_argument("--mlx-path", required=True, help="output directory (must not exist)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="float type of the Thinker, Talker and encoders (Token2Wav stays float32)")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize linear layers")
    p.add_argument("--q-bits", type=int, default=4, choices=[4, 8], help="Thinker bits")
    p.add_argument("--q-group-size", type=int, default=64, choices=[32, 64, 128])
    p.add_argument("--talker-bits", type=int, choices=[0, 4, 8, 16],
                   help="Talker bits (default 8; 0 or 16 keeps it in float)")
    p.add_argument("--audio-bits", type=int, choices=[0, 4, 8, 16],
                   help="audio encoder bits (default 8)")
    p.add_argument("--vision-bits", type=int, choices=[0, 4, 8, 16],
                   help="vision encoder bits (default 8)")
    p.add_argument("--revision", help="hub revision when --hf-path is a repo id")
    p.add_argument("--force", action="store_true", help="overwrite an existing --mlx-path")
    p.set_defaults(func=run)


def run(args):
    from ..convert.mlx import convert

    out = convert(args.hf_path, args.mlx_path, dtype=args.dtype, quantize=args.quantize,
                  q_bits=args.q_bits, q_group_size=args.q_group_size,
                  talker_bits=args.talker_bits, audio_bits=args.audio_bits,
                  vision_bits=args.vision_bits, force=args.force, revision=args.revision)
    print(f"[omni-edge] wrote {out}")
