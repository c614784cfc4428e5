"""Shared pytest fixtures: tiny random Qwen2.5-Omni checkpoints in the published on-disk layout.

`fixture_3b` / `fixture_7b` are built once per session (see tests/fixtures.py); `fixture_dir`
runs a test on both.  They skip when torch or transformers is missing.
"""

import pytest

FIXTURE_KINDS = ("3b", "7b")


def _build(tmp_path_factory, kind: str):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from fixtures import build_fixture

    return build_fixture(tmp_path_factory.mktemp(f"qwen2_5_omni_{kind}"), kind)


@pytest.fixture(scope="session")
def fixture_3b(tmp_path_factory):
    """A Qwen2.5-Omni-3B-shaped checkpoint dir (talker attention width == hidden, mrope [4,4,0])."""
    return _build(tmp_path_factory, "3b")


@pytest.fixture(scope="session")
def fixture_7b(tmp_path_factory):
    """A Qwen2.5-Omni-7B-shaped checkpoint dir (talker attention width 48 != hidden 32)."""
    return _build(tmp_path_factory, "7b")


@pytest.fixture(scope="session", params=FIXTURE_KINDS)
def fixture_dir(request):
    """Each fixture checkpoint dir in turn."""
    return request.getfixturevalue(f"fixture_{request.param}")


def pytest_sessionfinish(session, exitstatus):
    """In CI (CI=true) a skipped test is a failure: a reference that failed to install, or a
    missing tool, must not let the suite pass by skipping what it was meant to check."""
    import os

    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and exitstatus == 0:
        reasons = sorted({str(r.longrepr[-1]) if isinstance(r.longrepr, tuple) else str(r.longrepr)
                          for r in skipped})
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped, which CI counts as failures: "
                            + "; ".join(reasons), red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """The demo checkpoint (tiny random weights, published layout) converted to MLX float32."""
    from omni_edge.convert.mlx import convert
    from omni_edge.demo.checkpoint import write_demo_checkpoint

    root = tmp_path_factory.mktemp("demo_model")
    write_demo_checkpoint(root / "hf")
    return str(convert(str(root / "hf"), str(root / "mlx"), dtype="float32"))
