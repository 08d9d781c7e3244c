"""The layers of docs/architecture.md, read from the code's imports (AST, function-level imports included): no
import cycle between modules, and every import goes down the layer list (a network knows nothing about diffusion,
the math knows no network)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyramid_dm"
# docs/architecture.md's list, lowest first; siblings of one rank may not import each other unless listed in SIDEWAYS
RANK = {
    "errors": -1,
    **dict.fromkeys(
        ["registry", "compat", "images", "config", "flops", "checkpoints", "checkpoint_io", "signals", "views"], 0
    ),
    **dict.fromkeys(["diffusion", "nets", "data"], 1),
    "stages": 2,
    "engine": 3,
    **dict.fromkeys(["models", "loggers", "resume", "pipelines"], 4),
    **dict.fromkeys(["eval", "callbacks"], 5),
    **dict.fromkeys(["commands", "cli", "bench"], 6),
    "__main__": 7,
}
SIDEWAYS = {("callbacks", "eval"), ("bench", "cli")}
# inside the math: its sub-packages, lowest first (the package's own __init__ gathers them all)
DIFFUSION_RANK = {"schedules": 0, "parameterization": 1, "training": 2, "samplers": 2, "guidance": 2, "pyramid": 3}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert not sorted({layer(m) for m in MODULES if m != "pyramid_dm"} - set(RANK))


def test_no_import_cycle_even_through_function_level_imports():
    assert cycles(GRAPH) == []


def test_imports_go_down_the_layer_list():
    bad = []
    for a, targets in GRAPH.items():
        for b in targets:
            la, lb = layer(a), layer(b)
            if a == "pyramid_dm" or la == lb or (la, lb) in SIDEWAYS:
                continue
            if RANK[la] <= RANK[lb]:
                bad.append(f"{a} -> {b}")
    assert not bad, bad


def sublayer(module: str) -> str | None:
    """The sub-package of ``pyramid_dm.diffusion`` a module is in (None: the package itself)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "diffusion" else None


def test_the_math_sub_packages_import_downward_only():
    mods = [m for m in MODULES if m.startswith("pyramid_dm.diffusion.")]
    assert sorted({sublayer(m) for m in mods}) == sorted(DIFFUSION_RANK)
    bad = [
        f"{a} -> {b}"
        for a in mods
        for b in GRAPH[a]
        if b.startswith("pyramid_dm.diffusion.")
        and sublayer(a) != sublayer(b)
        and DIFFUSION_RANK[sublayer(a)] <= DIFFUSION_RANK[sublayer(b)]
    ]
    assert not bad, bad


def test_the_checks_notice_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert RANK[layer("pyramid_dm.diffusion.x")] <= RANK[layer("pyramid_dm.nets.y")]  # math -> nets is refused
