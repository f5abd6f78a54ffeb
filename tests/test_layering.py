"""Dependencies point one way: every import of the library, the shard tools and the launchers, read with ast.

Layers, bottom up (a module may import its own package and any lower layer, nothing at its level or above):
    0  errors (the named errors)
    1  small shared modules: subject_ids, files, log, machine, flops, distributed
    2  config, entry (how entry points end)
    3  data, model, metrics, stats, recipe_reference (the README's recipe table, from config)
    4  losses (reads the model's outputs), evaluate, predict
    5  train (the only package that imports deepspeed), baselines, token_reliance
    6  adapt, compare, report, shards_tools
    7  bench (it times the shard tools, the model and the loader)
    8  launch/
Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {
    "mused_fm.errors": 0,
    "mused_fm.subject_ids": 1, "mused_fm.files": 1, "mused_fm.log": 1,
    "mused_fm.machine": 1, "mused_fm.flops": 1, "mused_fm.distributed": 1,
    "mused_fm.config": 2, "mused_fm.entry": 2,
    "mused_fm.data": 3, "mused_fm.model": 3, "mused_fm.metrics": 3, "mused_fm.stats": 3, "mused_fm.recipe_reference": 3,
    "mused_fm.losses": 4, "mused_fm.evaluate": 4, "mused_fm.predict": 4,
    "mused_fm.train": 5, "mused_fm.baselines": 5, "mused_fm.token_reliance": 5,
    "mused_fm.adapt": 6, "mused_fm.compare": 6, "mused_fm.report": 6, "shards_tools": 6,
    "mused_fm.bench": 7,
    "launch": 8,
}  # fmt: skip
# Edges the architecture names explicitly, with the reason printed when one appears.
FORBIDDEN = {
    ("mused_fm.train", "mused_fm.bench"): "the trainer depends on its benchmarks",
    ("mused_fm.train", "mused_fm.report"): "the trainer depends on the report",
    ("mused_fm.evaluate", "mused_fm.train"): "evaluation (and so the report) loads the trainer",
    ("mused_fm.data", "mused_fm.model"): "the data pipeline knows the model",
    ("mused_fm.model", "mused_fm.data"): "the model knows the data pipeline",
    ("mused_fm.adapt", "mused_fm.report"): "adaptation pulls in the report and matplotlib",
    ("shards_tools", "mused_fm.model"): "the shard tools know the model",
    ("shards_tools", "mused_fm.train"): "the shard tools know the trainer",
}


def _unit(module: str) -> str | None:
    """The layer unit a dotted module belongs to (its package under mused_fm, or a top-level name)."""
    parts = module.split(".")
    for n in (2, 1):
        name = ".".join(parts[:n])
        if name in LAYER:
            return name
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from mused_fm import machine` imports the module mused_fm.machine
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _sources() -> list[Path]:
    """Every source file except the package marker mused_fm/__init__.py (it imports nothing of the project)."""
    files = sorted(p for top in ("mused_fm", "shards_tools", "launch") for p in (ROOT / top).rglob("*.py"))
    return [p for p in files if p != ROOT / "mused_fm" / "__init__.py"]


def _edges() -> list[tuple[str, int, str, str, str]]:
    """(file, line, importer unit, imported unit, imported module) for imports between project units."""
    edges = []
    for path in _sources():
        here = _unit(_module_name(path))
        assert here is not None, f"{path.relative_to(ROOT)} belongs to no layer: add its package to LAYER"
        for line, module in _imports(path):
            there = _unit(module)
            if there is not None and there != here:
                edges.append((str(path.relative_to(ROOT)), line, here, there, module))
    return edges


def test_every_import_points_down():
    upward = [
        f"{f}:{line}: {here} (layer {LAYER[here]}) imports {module} (layer {LAYER[there]})"
        for f, line, here, there, module in _edges()
        if LAYER[there] >= LAYER[here]
    ]
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


@pytest.mark.parametrize(("importer", "imported"), list(FORBIDDEN))
def test_named_forbidden_edges_are_absent(importer, imported):
    hits = [
        f"{f}:{line} imports {module}"
        for f, line, here, there, module in _edges()
        if (here, there) == (importer, imported)
    ]
    assert not hits, f"{FORBIDDEN[importer, imported]}:\n" + "\n".join(hits)


def test_deepspeed_is_imported_only_by_the_engine():
    users = sorted(
        f"{path.relative_to(ROOT)}:{line}"
        for path in _sources()
        for line, module in _imports(path)
        if module == "deepspeed" or module.startswith("deepspeed.")
    )
    assert users and all(u.startswith("mused_fm/train/engine.py:") for u in users), users


def test_the_walker_sees_lazy_imports(tmp_path):
    """The check must fail on an import hidden inside a function, or it proves nothing."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from mused_fm.bench.common import environment\n    import deepspeed\n")
    assert [m for _, m in _imports(source)] == [
        "mused_fm.bench.common",
        "mused_fm.bench.common.environment",
        "deepspeed",
    ]
    assert _unit("mused_fm.bench.common.environment") == "mused_fm.bench"
