"""`omni-edge bench` on the demo checkpoint: the table and the JSON a user shares, and clear
errors for bad input before any model loads."""

import json

from cli_run import run_cli

def test_bench_runs_on_the_demo_checkpoint(demo_model_dir, tmp_path):
    done = run_cli(["bench", "--model", demo_model_dir, "--presets", "reference,default",
                    "--audio-seconds", "1", "--text-tokens", "4", "--codes", "30",
                    "--repeats", "1", "--out", "mine.json", "--low-memory"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| reference |" in done.stdout and "| default |" in done.stdout
    result = json.loads((tmp_path / "mine.json").read_text())
    rows = {r["preset"]: r for r in result["rows"]}
    assert set(rows) == {"reference", "default"} and result["machine"]["mlx"]
    assert result["low_memory"] is True  # encoders freed after each use: said in what is shared
    for r in rows.values():
        assert r["codec_tokens"] == 30 and r["text_tokens"] == 4  # lengths forced
        assert r["audio_s"] == 30 / 50
        assert 0 < r["first_chunk_s"] <= r["glitch_free_start_s"] + 1e-9 <= r["turn_s"]
        assert r["peak_memory_gb"] > 0 and r["stalls"] >= 0
    assert rows["reference"]["speech"]["overlap"] is False and rows["default"]["speech"]["overlap"]
    assert not list(tmp_path.glob("*.partial"))


def test_bench_bad_input_fails_before_loading(tmp_path):
    done = run_cli(["bench", "--model", str(tmp_path / "nowhere"), "--presets", "turbo"], tmp_path)
    assert done.returncode == 2 and "unknown preset(s) turbo" in done.stderr
    assert "reference" in done.stderr and "Traceback" not in done.stderr
    done = run_cli(["bench", "--model", str(tmp_path / "nowhere"), "--codes", "0"], tmp_path)
    assert done.returncode == 2 and "codes must be positive" in done.stderr
