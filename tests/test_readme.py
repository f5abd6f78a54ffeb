"""The README's Python example runs as written (from the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block.replace('"recipes/', f'"{ROOT}/recipes/'), "README.md", "exec"), {})
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_readme_recipe_reference_is_generated_from_the_code():
    from mused_fm.recipe_reference import main

    assert main(["--check", str(ROOT / "README.md")]) == 0, "run: python -m mused_fm.recipe_reference --write README.md"


def test_every_recipe_key_is_documented():
    import dataclasses

    from mused_fm.recipe_reference import SECTIONS, _field_docs

    undocumented = [
        f"{cls.__name__}.{f.name}"
        for _, cls, _, _ in SECTIONS
        for f in dataclasses.fields(cls)
        if f.name not in _field_docs(cls)
    ]
    assert not undocumented, f"fields without a docstring in mused_fm/config.py: {undocumented}"


def test_reference_check_fails_when_the_section_drifts(tmp_path):
    from mused_fm.recipe_reference import main

    stale = (ROOT / "README.md").read_text().replace("| `model.depth` | `24` |", "| `model.depth` | `12` |")
    (tmp_path / "README.md").write_text(stale)
    assert main(["--check", str(tmp_path / "README.md")]) == 1
