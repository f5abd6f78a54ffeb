"""Rewrite the benchmark sections of docs/BENCHMARKS.md from the benchmarks' JSON; keep everything else.

    python -m mused_fm.bench doc --doc docs/BENCHMARKS.md --json-dir docs

Each benchmark's generated section lies between two marker lines, each alone on its line:

    <!-- bench:model:begin -->
    ...
    <!-- bench:model:end -->

The text between them is rewritten from `bench_model.json` in --json-dir: the command, the figures as
the benchmark prints them, each target met or not, and the machine and date the figures were taken
on. Everything outside the markers, marker lines included, is hand-written and kept byte for byte.
A missing, repeated or misspelled marker is an error, never a section appended at the end: that
would land after the training sections, under the wrong heading, and nobody would notice.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import ModuleType

from mused_fm.bench import gpu, loader, model, pack
from mused_fm.data import storage
from mused_fm.errors import InputError, MissingFileError

__all__ = ["BENCHMARKS", "MarkerError", "render_section", "update_doc", "update_text"]

# The benchmarks, in the order `make bench` runs them; __main__ builds its subcommands from this.
# Each module has add_arguments(parser), run(args) -> dict, report(dict) -> str and TARGETS.
BENCHMARKS: dict[str, ModuleType] = {"model": model, "loader": loader, "pack": pack, "gpu": gpu}

_MARKER = re.compile(r"^<!-- bench:([^:\s]+):(begin|end) -->\r?$", re.MULTILINE)
# Anything that starts like a marker: a near miss (missing space, capital) must not pass silently.
_LOOKS_LIKE_MARKER = re.compile(r"^[ \t]*<!--\s*bench\s*:.*$", re.MULTILINE | re.IGNORECASE)


class MarkerError(InputError):
    """The doc's bench markers are missing, repeated, out of order or malformed."""


def marker(name: str, edge: str) -> str:
    return f"<!-- bench:{name}:{edge} -->"


def _line_no(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _sections(text: str, doc: str) -> dict[str, tuple[int, int]]:
    """name -> (start, stop) of the text between its begin line and its end line, checked."""
    for m in _LOOKS_LIKE_MARKER.finditer(text):
        if not _MARKER.match(m.group()):
            raise MarkerError(
                f"{doc}:{_line_no(text, m.start())}: malformed bench marker {m.group().strip()!r}; expected "
                f"exactly {marker('NAME', 'begin')!r} or {marker('NAME', 'end')!r} alone on the line, NAME one of "
                f"{', '.join(BENCHMARKS)}."
            )
    found: dict[tuple[str, str], list[re.Match]] = {}
    for m in _MARKER.finditer(text):
        if m.group(1) not in BENCHMARKS:
            raise MarkerError(
                f"{doc}:{_line_no(text, m.start())}: unknown benchmark {m.group(1)!r} in "
                f"{m.group().strip()!r}; expected one of {', '.join(BENCHMARKS)}."
            )
        found.setdefault((m.group(1), m.group(2)), []).append(m)
    sections, lines = {}, []
    for name in dict.fromkeys(name for name, _ in found):
        begins, ends = found.get((name, "begin"), []), found.get((name, "end"), [])
        for edge, hits in (("begin", begins), ("end", ends)):
            if len(hits) != 1:
                where = f"at lines {', '.join(str(_line_no(text, h.start())) for h in hits)}" if hits else "nowhere"
                raise MarkerError(
                    f"{doc}: {marker(name, edge)!r} appears {len(hits)} times ({where}); expected once, "
                    f"paired with {marker(name, 'end' if edge == 'begin' else 'begin')!r}."
                )
        begin, end = begins[0], ends[0]
        if end.start() < begin.start():
            raise MarkerError(
                f"{doc}: {marker(name, 'end')!r} (line {_line_no(text, end.start())}) comes before "
                f"{marker(name, 'begin')!r} (line {_line_no(text, begin.start())}); swap them."
            )
        # The section starts after the begin line's newline and stops where the end line starts.
        sections[name] = (begin.end() + 1, end.start())
        lines.append((begin.start(), end.start(), name))
    for (_, first_end, a), (second_begin, _, b) in itertools.pairwise(sorted(lines)):
        if second_begin < first_end:
            raise MarkerError(f"{doc}: the {b!r} section starts inside the {a!r} section; close {a!r} first.")
    return sections


def update_text(text: str, rendered: dict[str, str], doc: str = "<doc>") -> str:
    """`text` with the section of each benchmark in `rendered` replaced; the rest is kept byte for byte.

    Args:
        text: the whole doc.
        rendered: benchmark name -> the new section text (from render_section), without the markers.
        doc: the doc's path, for error messages.

    Raises:
        MarkerError: a benchmark in `rendered` has no markers, or any bench marker in `text` is malformed,
            unknown, repeated, unpaired, or out of order.
    """
    sections = _sections(text, doc)
    missing = [name for name in rendered if name not in sections]
    if missing:
        lines = "\n".join(f"    {marker(name, 'begin')}\n    {marker(name, 'end')}" for name in missing)
        raise MarkerError(
            f"{doc}: no markers for the {', '.join(missing)} benchmark section(s). Add, each alone on its "
            f"line under the benchmark's heading:\n{lines}\nthen rerun `python -m mused_fm.bench doc`."
        )
    newline = "\r\n" if "\r\n" in text else "\n"
    out, cursor = [], 0
    for name, (start, stop) in sorted(sections.items(), key=lambda item: item[1]):
        if name not in rendered:
            continue
        out += [text[cursor:start], rendered[name].rstrip("\n").replace("\n", newline), newline]
        cursor = stop
    out.append(text[cursor:])
    return "".join(out)


def _when(date: str | None) -> str:
    if not date:
        return "on an unrecorded date"
    try:
        return datetime.strptime(date, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return str(date)


_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "amx_tile": "AMX"}


def _cpu(env: dict) -> str:
    """e.g. "AMD EPYC (2 cores, 2 threads; AVX2, no AVX-512, no AMX)"."""
    details = [
        f"{env[key]} {label}" for key, label in (("cpu_cores", "cores"), ("cpu_threads", "threads")) if env.get(key)
    ]
    if env.get("cpu_usable") and env["cpu_usable"] != env.get("cpu_threads"):
        details.append(f"{env['cpu_usable']} usable")
    features = env.get("cpu_features") or {}
    isa = ", ".join(label if features[key] else f"no {label}" for key, label in _FEATURES.items() if key in features)
    inner = "; ".join(part for part in (", ".join(details), isa) if part)
    cpu = env.get("cpu_model") or "unknown CPU"
    return f"{cpu} ({inner})" if inner else cpu


def _machine(env: dict) -> str:
    """One sentence: date, commit, CPU, RAM, GPU, software; fields the JSON lacks are left out."""
    parts = [_cpu(env)]
    if env.get("ram_bytes"):
        parts.append(f"{env['ram_bytes'] / 2**30:.1f} GiB RAM")
    gpus = Counter(env.get("gpus") or [])
    cuda = f" (CUDA {env['cuda']})" if env.get("cuda") else ""
    parts.append(", ".join(f"{n} x {gpu}" for gpu, n in gpus.items()) + cuda if gpus else "no GPU")
    software = []
    if env.get("torch"):
        software.append(f"torch {env['torch']}" + (f" ({env['torch_blas']})" if env.get("torch_blas") else ""))
    software += [
        f"{label} {env[key]}" for key, label in (("deepspeed", "DeepSpeed"), ("python", "Python")) if env.get(key)
    ]
    if env.get("os"):
        software.append(env["os"])
    commit = f" at commit {env['commit']}" if env.get("commit") else ""
    return f"Taken {_when(env.get('date'))}{commit}, on {', '.join(parts)}; {', '.join(software)}."


def render_section(name: str, result: dict, source: str) -> str:
    """The generated section of one benchmark, without its markers.

    Args:
        name: a key of BENCHMARKS.
        result: the benchmark's JSON, as loaded.
        source: where the JSON was read from, as the doc should name it (e.g. "docs/bench_model.json").
    """
    module = BENCHMARKS[name]
    env = result.get("environment")
    generated = (
        f"<!-- generated by `python -m mused_fm.bench doc` from {source}; edits between the markers are lost -->"
    )
    lines = [generated, ""]
    if env and env.get("command"):
        lines += [f"    {env['command']}", ""]
    lines += ["```", module.report(result), "```", ""]
    if module.TARGETS:
        lines += ["Targets:", *(f"- {target.describe(result)}" for target in module.TARGETS), ""]
    if env:
        lines.append(_machine(env))
    else:
        lines.append(
            f"Command, machine and date: not recorded in `{source}`, which was written before the benchmarks "
            "recorded them (`make bench` does)."
        )
    return "\n".join(lines) + "\n"


def _display(path: Path) -> str:
    """`path` relative to the working directory when it lies under it, as the Makefile names it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else Path(relative).as_posix()


def _load(name: str, path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError(
            f"{path}: no such file; the {name} section of the doc is rendered from it. Run "
            f"`python -m mused_fm.bench {name} --json {path}` (or `make bench`) first."
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc}); rerun `python -m mused_fm.bench {name} --json {path}`."
        ) from exc


def update_doc(doc: str | os.PathLike, json_dir: str | os.PathLike) -> bool:
    """Rewrite every benchmark section of `doc` from `json_dir`/bench_NAME.json; True if the doc changed.

    The doc is replaced atomically (temp file + rename), so an error or a crash leaves the old one whole.
    """
    doc, json_dir = Path(doc), Path(json_dir)
    text = doc.read_bytes().decode("utf-8")  # bytes, not read_text: keep \r\n exactly as it is
    rendered = {}
    for name in BENCHMARKS:
        path = json_dir / f"bench_{name}.json"
        result = _load(name, path)
        try:
            rendered[name] = render_section(name, result, _display(path))
        except KeyError as exc:
            raise InputError(
                f"{path}: no {exc.args[0]!r}, which the {name} report prints; the JSON is from an older or partial "
                f"run. Rerun `python -m mused_fm.bench {name} --json {path}`."
            ) from exc
    new = update_text(text, rendered, str(doc))
    if new == text:
        return False
    storage.write_bytes(str(doc), new.encode("utf-8"))
    return True
