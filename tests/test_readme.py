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
    """Every field of every recipe type and section has a docstring, and every section is in the reference."""
    import dataclasses

    from mused_fm.recipe_reference import GROUPS, field_docs, reference, sections

    classes = [cls for cls, _ in GROUPS]
    classes += [section for cls in classes for _, section, _ in sections(cls)]
    undocumented = {
        f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls) if f.name not in field_docs(cls)
    }
    assert not undocumented, f"fields without a docstring in mused_fm/config.py: {sorted(undocumented)}"
    text = reference()
    for cls, _ in GROUPS:
        for name, _, _ in sections(cls, own_only=True):
            assert f"**`{name}`**" in text, name
    for key in (
        "`adapt.fractions`",
        "`adapt.methods`",
        "`data.datasets.<name>.url`",
        "`deepspeed`",
        "`log.wandb.mode`",
    ):
        assert key in text, key


def test_reference_check_fails_when_the_section_drifts(tmp_path):
    from mused_fm.recipe_reference import main

    readme = (ROOT / "README.md").read_text()
    stale = readme.replace("| `model.depth` | int | `24` |", "| `model.depth` | int | `12` |")
    assert stale != readme, "the reference lost its model.depth row"
    (tmp_path / "README.md").write_text(stale)
    assert main(["--check", str(tmp_path / "README.md")]) == 1
    main(["--write", str(tmp_path / "README.md")])
    assert (tmp_path / "README.md").read_text() == readme  # --write puts it back, the rest untouched
