"""`omni-edge eval-speech`: the word error rate of the model's own speech, per speech preset and
per converted model, transcribed by the model itself."""

import json
import os
from pathlib import Path

from .common import MODEL_HELP


def add_parser(sub):
    p = sub.add_parser("eval-speech", help="word error rate of the model's speech per preset",
                       description="The model speaks fixed sentences (its Thinker forced to say "
                                   "them), then transcribes its own speech; WER per speech preset "
                                   "and per --model, beside the reference sampler's.")
    p.add_argument("--model", required=True, action="append",
                   help=f"{MODEL_HELP}; repeat to compare conversions (4-bit, 8-bit, bf16)")
    p.add_argument("--presets", default="reference,default,fast",
                   help="comma-separated speech presets (omni_edge.options.SPEECH_PRESETS)")
    p.add_argument("--sentences", help="a text file, one sentence a line (default: 8 Harvard "
                                       "sentences)")
    p.add_argument("--voice", default="Chelsie")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-codec-tokens", type=int, default=1000,
                   help="bound on each sentence's speech (50 codec tokens per second)")
    p.add_argument("--out", default="omni-edge-eval-speech.json", help="the JSON written")
    p.set_defaults(func=run)


def read_sentences(path):
    from ..eval_speech import SENTENCES

    if path is None:
        return list(SENTENCES)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--sentences {path}: no such file (one sentence a line)")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def run(args):
    from ..eval_speech import check, evaluate, table
    from ..loading import load

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    sentences = read_sentences(args.sentences)
    check(presets, sentences)
    if args.max_codec_tokens < 1:
        raise ValueError(f"--max-codec-tokens must be at least 1, got {args.max_codec_tokens}")
    rows = []
    for path in args.model:
        rows += evaluate(load(path), presets, sentences, args.voice, args.seed, label=path,
                         max_codec_tokens=args.max_codec_tokens)
    print(table(rows))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps({"sentences": sentences, "rows": rows}, indent=2))
    os.replace(tmp, out)
    print(f"[eval-speech] wrote {out}")
