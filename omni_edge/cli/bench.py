"""`omni-edge bench`: one spoken turn per speech preset on this machine, as a table and a JSON
to share."""

import json
import os
from pathlib import Path

from .common import add_model_options, load_model


def add_parser(sub):
    p = sub.add_parser("bench", help="time a spoken turn per speech preset on this machine",
                       description="A fixed workload (an audio question, a forced-length reply "
                                   "and speech), warmed up, then timed; prints a table and "
                                   "writes a JSON to share.")
    add_model_options(p)
    p.add_argument("--presets", default="reference,default",
                   help="comma-separated speech presets (omni_edge.bench.PRESETS)")
    p.add_argument("--audio-seconds", type=float, default=10.0, help="length of the question")
    p.add_argument("--text-tokens", type=int, default=128, help="reply tokens (forced)")
    p.add_argument("--codes", type=int, default=500, help="codec tokens, 50 per second (forced)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="omni-edge-bench.json", help="the JSON written")
    p.set_defaults(func=run)


def run(args):
    from ..bench import bench, check, machine, table

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    check(presets, args.audio_seconds, args.text_tokens, args.codes, args.repeats)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise FileNotFoundError(f"--out {args.out}: its folder does not exist")
    model = load_model(args)
    rows = bench(model, presets, args.audio_seconds, args.text_tokens, args.codes, args.repeats)
    print(table(rows))
    result = {"machine": machine(), "model": str(args.model), "low_memory": args.low_memory,
              "workload": {"audio_in_s": args.audio_seconds, "text_tokens": args.text_tokens,
                           "codec_tokens": args.codes, "repeats": args.repeats}, "rows": rows}
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"[bench] wrote {out}")
