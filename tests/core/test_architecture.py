"""The house rules of DESIGN.md, read from the source: imports flow one way.

cli -> experiment / evaluate / predict -> train -> model, data, baseline, config -> core. Inside a
system no two modules import each other, directly or through others (imports inside functions count:
a lazy import is still a dependency); core never imports a system; a system never imports another
system, the CLI or the demo.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from detectlab import SYSTEMS

SRC = Path(__file__).resolve().parents[2] / "src" / "detectlab"
#: modules that must stay below training and the protocol
LOW = ("config", "data", "model", "baseline", "synthetic")
HIGH = ("train", "experiment", "evaluate", "predict")
#: Import cycles that exist today and are being removed (issue 11, item 9): each system's entry must
#: become empty; the test fails on any cycle not listed here, and on a listed one that is gone.
KNOWN_CYCLES: dict[str, set[frozenset[str]]] = {
    "adversarial": set(),
    "seizure": set(),
    "violence": set(),
    "fluid": set(),
    "lesions": set(),
}
#: Upward imports that exist today and are being removed with the cycles (same rule: must become empty).
KNOWN_UPWARD: dict[str, list[str]] = {s: ["train -> experiment"] for s in SYSTEMS}
KNOWN_UPWARD["adversarial"] = []
KNOWN_UPWARD["seizure"] = []
KNOWN_UPWARD["violence"] = []
KNOWN_UPWARD["fluid"] = []
KNOWN_UPWARD["lesions"] = []


def _imports(path: Path, package: str) -> set[str]:
    """Every detectlab module `path` imports (absolute or relative, at any depth of the file)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("detectlab"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("detectlab"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _graph(system: str) -> dict[str, set[str]]:
    pkg = SRC / system
    mods = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    g: dict[str, set[str]] = {}
    for m in mods:
        deps = set()
        for imp in _imports(pkg / f"{m}.py", f"detectlab.{system}"):
            parts = imp.split(".")
            if len(parts) >= 3 and parts[1] == system and parts[2] in mods and parts[2] != m:
                deps.add(parts[2])
        g[m] = deps
    return g


def _cycles(g: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: set[frozenset[str]] = set()
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_lazy_two_module_cycle(tmp_path):
    """Fault caught: a checker that ignores imports inside functions (the cycles of this codebase were
    lazy ones) or that only sees direct self-imports would pass every system."""
    pkg = tmp_path / "detectlab" / "x"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from detectlab.x.b import g\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("def h():\n    from .a import f\n")
    g = {m: {imp.split(".")[2] for imp in _imports(pkg / f"{m}.py", "detectlab.x")
             if imp.split(".")[:2] == ["detectlab", "x"] and len(imp.split(".")) > 2} - {m}
         for m in ("a", "b", "c")}
    assert _cycles(g) == {frozenset({"a", "b", "c"})}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == set()


@pytest.mark.parametrize("system", SYSTEMS)
def test_no_import_cycle_inside_a_system(system):
    """Fault caught: two modules of a system importing each other (e.g. experiment <-> train,
    which made the configuration and data preparation impossible to use without the protocol)."""
    assert _cycles(_graph(system)) == KNOWN_CYCLES[system]


@pytest.mark.parametrize("system", SYSTEMS)
def test_lower_layers_do_not_import_the_protocol(system):
    """Fault caught: config, data, model, baseline or synthetic importing train, experiment, evaluate or
    predict (the upward dependency that creates cycles and drags the whole protocol into a reader)."""
    g = _graph(system)
    bad = sorted(f"{m} -> {d}" for m in LOW if m in g for d in g[m] if d in HIGH)
    bad += sorted(f"train -> {d}" for d in g.get("train", ()) if d in ("experiment", "evaluate", "predict"))
    assert bad == KNOWN_UPWARD[system]


def test_core_and_systems_keep_to_their_side():
    """Fault caught: core importing a system, a system importing another system, or anything but the
    CLI importing the CLI or the demo (demo.py used to import cli.py, which imports demo.py)."""
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        pkg = "detectlab." + ".".join(rel[:-1]) if len(rel) > 1 else "detectlab"
        here = rel[0] if len(rel) > 1 else path.stem
        for imp in _imports(path, pkg):
            parts = imp.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if here == "core" and target in SYSTEMS:
                bad.append(f"{path.relative_to(SRC)} imports {imp}")
            if here in SYSTEMS and target in SYSTEMS and target != here:
                bad.append(f"{path.relative_to(SRC)} imports {imp}")
            if target in ("cli", "demo") and here not in ("cli", "__main__"):
                bad.append(f"{path.relative_to(SRC)} imports {imp}")
    assert bad == []
