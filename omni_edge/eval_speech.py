"""`omni-edge eval-speech`: how well the model's own speech can be understood, per speech preset
and per converted model, with no other model. The model speaks a fixed set of sentences (its
Thinker forced to say exactly them, so the Talker reads their states), then transcribes its own
speech through its audio input under an ASR prompt; the word error rate of each preset is
reported beside the reference sampler's on the same model."""

import re
import time
from dataclasses import asdict, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from .events import SPEECH_SAMPLE_RATE
from .options import SPEECH_PRESETS
from .tasks import speak_text, transcribe

# Harvard sentences (IEEE 1969 recommended practice for speech quality measurements; public
# domain): phonetically balanced, short, and plain to transcribe.
SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
)


def normalize(text: str) -> str:
    """Lower case, no punctuation, one space between words ("It's" -> "its")."""
    text = text.lower().replace("'", "")
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (jiwer: edits over reference words) after `normalize`; an empty hypothesis
    counts every reference word as deleted."""
    import jiwer

    refs = [normalize(r) for r in references]
    if not all(refs):
        raise ValueError("every reference sentence needs at least one word")
    hyps = [normalize(h) or "<empty>" for h in hypotheses]  # jiwer refuses empty strings
    return float(jiwer.wer(refs, hyps))


MAX_CODEC_TOKENS = 1000  # 20 s: far past any of the sentences, so a Talker that never ends stops


def speak(model, sentence: str, preset: str, voice: str, seed: int,
          max_codec_tokens: int = MAX_CODEC_TOKENS) -> np.ndarray:
    speech = replace(SPEECH_PRESETS[preset], max_codec_tokens=max_codec_tokens)
    audio = []
    for event in speak_text(model, sentence, voice, speech=speech, seed=seed):
        if event.type == "audio":
            audio.append(event.audio)
    return np.concatenate(audio) if audio else np.zeros(0, np.float32)


def evaluate(model, presets: Sequence[str], sentences: Sequence[str] = SENTENCES,
             voice: str = "Chelsie", seed: int = 0, label: str = "",
             max_codec_tokens: int = MAX_CODEC_TOKENS, progress=print) -> List[dict]:
    """One row per preset: WER over `sentences`, its difference from the "reference" preset's
    on this model (when it is among `presets`), and what was heard."""
    check(presets, sentences)
    rows: Dict[str, dict] = {}
    for preset in presets:
        heard, seconds, start = [], 0.0, time.perf_counter()
        for sentence in sentences:
            audio = speak(model, sentence, preset, voice, seed, max_codec_tokens)
            seconds += len(audio) / SPEECH_SAMPLE_RATE
            heard.append(transcribe(model, audio, language="English",
                                    sampling_rate=SPEECH_SAMPLE_RATE) if len(audio) else "")
        rows[preset] = {"model": label, "preset": preset, "wer": word_error_rate(sentences, heard),
                        "speech_s": seconds, "wall_s": time.perf_counter() - start,
                        "speech": _plain(asdict(SPEECH_PRESETS[preset])),
                        "heard": list(heard)}
        progress(f"[eval-speech] {label or 'model'} {preset}: WER {rows[preset]['wer']:.3f}")
    base = rows.get("reference")
    for row in rows.values():
        row["wer_vs_reference"] = row["wer"] - base["wer"] if base else None
    return list(rows.values())


def check(presets: Sequence[str], sentences: Optional[Sequence[str]] = None):
    unknown = [p for p in presets if p not in SPEECH_PRESETS]
    if unknown or not presets:
        raise ValueError(f"unknown preset(s) {', '.join(unknown) or '(none given)'}; presets "
                         f"are {', '.join(SPEECH_PRESETS)}")
    if sentences is not None and not [s for s in sentences if normalize(s)]:
        raise ValueError("no sentences to speak: give at least one line with words")


def table(rows: List[dict]) -> str:
    lines = ["| model | preset | WER | vs reference | speech s |", "|---|---|---|---|---|"]
    for r in rows:
        delta = "-" if r["wer_vs_reference"] is None else f"{r['wer_vs_reference']:+.3f}"
        lines.append(f"| {r['model']} | {r['preset']} | {r['wer']:.3f} | {delta} | "
                     f"{r['speech_s']:.1f} |")
    return "\n".join(lines)


def _plain(options: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
            for k, v in options.items()}
