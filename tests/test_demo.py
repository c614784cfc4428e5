"""`omni-edge demo` runs the whole pipeline offline and leaves what it promises."""

import soundfile as sf

from omni_edge.cli import main as cli_main


def test_demo_runs_end_to_end(tmp_path, capsys):
    cli_main(["demo", "--dir", str(tmp_path), "--max-tokens", "4"])
    out = capsys.readouterr().out
    assert "RANDOM" in out and "done: text, audio in and speech out work" in out
    assert (tmp_path / "mlx-random" / "config.json").is_file()
    data, rate = sf.read(tmp_path / "demo-reply.wav")
    assert rate == 24000 and len(data) > 0 and len(data) % 480 == 0
