"""The code keeps one direction: no import cycles among the runtime modules (imports inside
functions count), and no runtime module grows past the size a reader can hold."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"omni_edge": ROOT / "omni_edge", "omni_edge.convert": ROOT / "convert"}
MAX_LINES = 420  # "at most ~400 lines" per runtime module


def modules() -> dict:
    """module name -> path, for omni_edge and the convert/ package shipped inside it."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if name.startswith("omni_edge.convert") and package == "omni_edge":
                continue  # an installed layout would put it here; the checkout's is convert/
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: set) -> set:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(edges: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    edges = graph()
    # package __init__ files re-export their children; a child importing its parent package
    # would be the cycle, and is counted
    assert cycles(edges) == []


def test_the_checker_sees_a_cycle_through_a_function_level_import():
    edges = graph()
    assert "omni_edge.turn" in edges["omni_edge.generate"]
    edges["omni_edge.decode"] = edges["omni_edge.decode"] | {"omni_edge.generate"}
    assert any("omni_edge.generate" in c for c in cycles(edges))
    # and imports inside functions are read (cli.chat imports ChatSession inside chat())
    assert "omni_edge.chat" in edges["omni_edge.cli.chat"]


def test_runtime_modules_stay_small():
    big = {name: n for name, path in modules().items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_lower_layers_do_not_import_upper_ones():
    """models/ knows nothing of prompts, generation, chat or the CLI; processing/ nothing of
    generation; nothing below the CLI imports it."""
    edges = graph()
    upper = ("omni_edge.generate", "omni_edge.turn", "omni_edge.chat", "omni_edge.cli",
             "omni_edge.speech", "omni_edge.processing", "omni_edge.decode")
    for name, targets in edges.items():
        if name.startswith("omni_edge.models"):
            assert not [t for t in targets if t.startswith(upper)], name
        if name.startswith("omni_edge.processing"):
            assert not [t for t in targets if t.startswith(upper[:5]) or t == "omni_edge.decode"], name
        if not name.startswith(("omni_edge.cli", "omni_edge.demo")) and name != "omni_edge":
            assert not [t for t in targets if t.startswith("omni_edge.cli")], name
