"""`omni-edge convert`: a Hugging Face Qwen2.5-Omni checkpoint to MLX."""



def add_parser(sub):
    from ..convert.presets import PRESETS

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
    p.add_argument("--no-vision", action="store_true",
                   help="leave out the vision encoder: sound and text only, images and video "
                        "refused (0.38 GB less at q4-min)")
    p.add_argument("--revision", help="hub revision when --hf-path is a repo id")
    p.add_argument("--force", action="store_true", help="overwrite an existing --mlx-path")
    p.set_defaults(func=run)


def run(args):
    from ..convert.mlx import convert

    out = convert(args.hf_path, args.mlx_path, dtype=args.dtype, quantize=args.quantize,
                  q_bits=args.q_bits, q_group_size=args.q_group_size,
                  talker_bits=args.talker_bits, audio_bits=args.audio_bits,
                  vision_bits=args.vision_bits, force=args.force, revision=args.revision,
                  preset=args.preset, token2wav_bits=args.token2wav_bits,
                  token2wav_dtype=args.token2wav_dtype, vision=not args.no_vision)
    print(f"[omni-edge] wrote {out}")
