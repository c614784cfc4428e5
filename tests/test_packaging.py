"""The distribution ships every subpackage, and convert/ as omni_edge.convert."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(("omni_edge",) + p.parent.relative_to(ROOT / "omni_edge").parts).rstrip(".")
        for p in (ROOT / "omni_edge").rglob("__init__.py")
    } | {"omni_edge.convert", "omni_edge.convert.coreml"}
    assert set(setup["packages"]) == on_disk
    assert setup["package-dir"]["omni_edge.convert"] == "convert"


def test_runtime_never_imports_torch():
    """No runtime module imports torch (the README's first command, run by CI before torch is
    installed, proves the whole demo runs without it). The Core ML exporter (convert/coreml,
    the `coreml` extra) traces the reference modules, so it may."""
    import ast

    offenders = []
    for path in list((ROOT / "omni_edge").rglob("*.py")) + list((ROOT / "convert").rglob("*.py")):
        if "coreml" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "torch"]
    assert offenders == []
