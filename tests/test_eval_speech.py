"""`omni-edge eval-speech`: the word error rate is computed right (worked by hand), and the
whole loop (forced speech, self-transcription, WER per preset) runs on the demo checkpoint."""

import json

import pytest
from cli_run import run_cli

from omni_edge.eval_speech import normalize, word_error_rate

def test_normalize():
    assert normalize("It's easy, to tell -- the DEPTH of a well!") == "its easy to tell the depth of a well"


def test_word_error_rate_by_hand():
    refs = ["the birch canoe slid", "glue the sheet"]
    # one substitution (canoe -> canoes), one deletion (slid), one insertion (blue): 3 / 7 words
    hyps = ["The birch canoes.", "glue the blue sheet"]
    assert word_error_rate(refs, hyps) == pytest.approx(3 / 7)
    assert word_error_rate(refs, refs) == 0.0
    assert word_error_rate(["one two"], [""]) == 1.0  # nothing heard: every word deleted
    with pytest.raises(ValueError, match="at least one word"):
        word_error_rate(["..."], ["x"])



def test_eval_speech_runs_on_the_demo_checkpoint(demo_model_dir, tmp_path):
    (tmp_path / "s.txt").write_text("Hello there.\n\nGood night.\n")
    done = run_cli(["eval-speech", "--model", demo_model_dir, "--presets", "reference,fast",
                    "--sentences", "s.txt", "--max-codec-tokens", "20", "--out", "wer.json"],
                   tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "wer.json").read_text())
    assert result["sentences"] == ["Hello there.", "Good night."]
    rows = {r["preset"]: r for r in result["rows"]}
    assert set(rows) == {"reference", "fast"}
    for r in rows.values():  # random weights say nothing intelligible: the WER is real and high
        assert r["wer"] == pytest.approx(word_error_rate(result["sentences"], r["heard"]))
        assert r["speech_s"] > 0 and len(r["heard"]) == 2
    assert rows["reference"]["wer_vs_reference"] == 0.0
    assert rows["fast"]["speech"]["solver"] == "fast"
    assert "| reference |" in done.stdout


def test_eval_speech_bad_input(tmp_path):
    done = run_cli(["eval-speech", "--model", "x", "--presets", "nope"], tmp_path)
    assert done.returncode == 2 and "unknown preset(s) nope" in done.stderr
    done = run_cli(["eval-speech", "--model", "x", "--sentences", "missing.txt"], tmp_path)
    assert done.returncode == 2 and "missing.txt" in done.stderr
