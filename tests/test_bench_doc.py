"""docs/BENCHMARKS.md regeneration: only the text between bench markers changes, from the JSON alone.

Fake benchmark results stand in for real runs, so nothing here runs a benchmark.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest

from mused_fm.bench.__main__ import main
from mused_fm.bench.doc import BENCHMARKS, MarkerError, render_section, update_text
from mused_fm.bench.targets import Target

REPO = Path(__file__).resolve().parents[1]

MODEL = {
    "device": "cpu",
    "cpu_model": "Test CPU",
    "threads": 3,
    "precision": "float32",
    "matmul_peak_flops": 1e11,
    "samples_per_s": 20.0,
    "achieved_flops": 8e10,
    "fraction_of_peak": 0.8,
    "reference_samples_per_s": 25.0,
    "reference_achieved_flops": 9e10,
    "reference_fraction_of_peak": 0.9,
    "ratio": 0.8,
}
LOADER = {"samples_per_s": 12345.0, "train_samples_per_s": 20.0, "ratio_to_training": 617.25}  # run with --no-s3
PACK = {
    name: {
        "samples": 7,
        "pack_s": 1.5,
        "samples_per_s": 4.7,
        "bytes_per_sample": size,
        "read_inputs_s": 0.25,
        "llv_fidelity_r": 0.99,
    }
    for name, size in (("nsd", 40_000.0), ("hcp", 9000.0), ("bids", 5000.0))
}
GPU = {"measured": False, "reason": "no GPU yet", "command": "bash scripts/gpu_check.sh"}
RESULTS = {"model": MODEL, "loader": LOADER, "pack": PACK, "gpu": GPU}
ENV = {
    "date": "2031-02-03T04:05:06Z",
    "command": "python -m mused_fm.bench model --rounds 2",
    "commit": "abc123",
    "cpu_model": "Test CPU",
    "cpu_cores": 4,
    "cpu_threads": 8,
    "cpu_usable": 6,
    "cpu_features": {"avx2": True, "avx512f": False, "amx_tile": False},
    "ram_bytes": 16 * 2**30,
    "gpus": ["Fake GPU", "Fake GPU"],
    "cuda": "12.8",
    "torch": "9.9",
    "torch_blas": "MKL",
    "deepspeed": "0.1",
    "python": "3.99",
    "os": "Linux 1",
}


def section(name: str, inside: str = "stale figures\n") -> str:
    return f"<!-- bench:{name}:begin -->\n{inside}<!-- bench:{name}:end -->\n"


# Hand-written text around the sections: non-ASCII, trailing spaces, a marker quoted inline, no final newline.
DOC = (
    "# Benchmarks ✓\n\nProse about `<!-- bench:NAME:begin -->` markers.  \n\n## Model\n\n"
    + section("model")
    + "\nWhy the model is slow.\n\n## Loader\n"
    + section("loader")
    + "## Pack\n\n"
    + section("pack", "")
    + "\n## GPU\n\n"
    + section("gpu")
    + "\n## Training (by hand)\n\n| figure | value |\n| --- | --- |"
)


def outside(text: str) -> str:
    """`text` with the inside of every section removed: what must survive byte for byte."""
    return re.sub(r"(<!-- bench:(\w+):begin -->\r?\n).*?(<!-- bench:\2:end -->)", r"\1\3", text, flags=re.S)


def rendered(results: dict = RESULTS) -> dict[str, str]:
    return {name: render_section(name, result, f"docs/bench_{name}.json") for name, result in results.items()}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_outside_is_kept_byte_for_byte_and_inside_is_replaced(newline):
    text = DOC.replace("\n", newline)
    new = update_text(text, rendered())
    assert outside(new) == outside(text)
    assert "stale figures" not in new
    for name, result in RESULTS.items():
        assert BENCHMARKS[name].report(result).replace("\n", newline) in new
    assert new.count("\r\n") == new.count("\n") if newline == "\r\n" else "\r" not in new
    assert update_text(new, rendered()) == new  # a second run changes nothing


def test_a_subset_of_sections_leaves_the_others_alone():
    new = update_text(DOC, {"model": rendered()["model"]})
    assert "stale figures" in new.split("## Loader")[1] and "stale figures" not in new.split("## Loader")[0]


LOADER_END, LOADER_BEGIN, MODEL_END = (
    f"<!-- bench:{n}:{e} -->\n" for n, e in (("loader", "end"), ("loader", "begin"), ("model", "end"))
)
BAD_DOCS = {
    "missing": (DOC.replace(section("pack", ""), ""), r"(?s)<doc>: no markers for the pack .*bench:pack:begin"),
    "unpaired": (DOC.replace(LOADER_END, ""), r"'<!-- bench:loader:end -->' appears 0 times \(nowhere\)"),
    "repeated": (DOC + "\n" + section("model"), r"'<!-- bench:model:begin -->' appears 2 times \(at lines 7, 32\)"),
    "reversed": (DOC.replace(section("loader"), LOADER_END + LOADER_BEGIN), r"end -->' \(line 14\) comes before"),
    "unknown": (DOC + "\n" + section("modle"), r"<doc>:32: unknown benchmark 'modle'.*one of model, loader, pack, gpu"),
    "malformed": (DOC.replace("<!-- bench:pack:begin -->", "<!--bench:pack:begin-->"), r"<doc>:19: malformed"),
    "overlapping": (
        DOC.replace(MODEL_END, "").replace(LOADER_BEGIN, LOADER_BEGIN + MODEL_END),
        r"the 'loader' section starts inside the 'model' section",
    ),
}


@pytest.mark.parametrize(("text", "match"), BAD_DOCS.values(), ids=BAD_DOCS.keys())
def test_bad_markers_are_named_errors(text, match):
    with pytest.raises(MarkerError, match=match):
        update_text(text, rendered())


def test_target_lines_follow_the_json():
    text = update_text(DOC, rendered())
    assert "- `fraction_of_peak` >= 0.7 (flagship NSD fwd+bwd, share of the measured matmul peak): met (0.8)" in text
    assert "- `ratio` >= 1.25 (flagship samples/s over the same-shape BertModel's): **not met** (0.8)" in text
    assert "- `samples_per_s` >= 10,000 (local shards, samples/s on one core): met (12,345)" in text
    assert "- `s3_ratio_to_local` >= 0.5 (S3 samples/s over local): not measured (no `s3_ratio_to_local`" in text
    assert "- `nsd.bytes_per_sample` <= 32,000 (" in text and ": **not met** (40,000)" in text


def test_targets_include_the_threshold_and_reject_non_numbers():
    target = Target("a.b", ">=", 2)
    assert target.met({"a": {"b": 2}}) is True and target.met({"a": {"b": 1.99}}) is False
    assert target.met({"a": {}}) is None and target.met({"a": 3}) is None
    assert Target("x", "<=", 1).met({"x": float("nan")}) is False
    assert target.describe({"a": {"b": 1}}, markdown=False) == "a.b >= 2: not met (1)"
    with pytest.raises(ValueError, match=r"target 'a.b': expected a number .* got 'fast'"):
        target.met({"a": {"b": "fast"}})


def test_section_names_the_command_machine_and_date():
    text = render_section("model", {**MODEL, "environment": ENV}, "docs/bench_model.json")
    assert "\n    python -m mused_fm.bench model --rounds 2\n" in text
    assert text.endswith(
        "Taken 2031-02-03 04:05 UTC at commit abc123, on Test CPU (4 cores, 8 threads, 6 usable; AVX2, no AVX-512, "
        "no AMX), 16.0 GiB RAM, 2 x Fake GPU (CUDA 12.8); torch 9.9 (MKL), DeepSpeed 0.1, Python 3.99, Linux 1.\n"
    )
    legacy = render_section("model", MODEL, "docs/bench_model.json")
    assert "Command, machine and date: not recorded in `docs/bench_model.json`" in legacy


def write_jsons(folder: Path, results: dict = RESULTS) -> None:
    for name, result in results.items():
        (folder / f"bench_{name}.json").write_text(json.dumps({**result, "environment": ENV}))


def test_cli_rewrites_the_doc_from_the_json(tmp_path, capsys):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_bytes(DOC.encode())
    write_jsons(tmp_path)
    assert main(["doc", "--doc", str(doc), "--json-dir", str(tmp_path)])["changed"] is True
    new = doc.read_bytes().decode()
    assert outside(new) == outside(DOC) and new.count("Taken 2031-02-03 04:05 UTC") == 4
    assert main(["doc", "--doc", str(doc), "--json-dir", str(tmp_path)])["changed"] is False
    assert "already up to date" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # the atomic write's temp is gone


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("json", r"bench_pack.json: no such file.*python -m mused_fm.bench pack --json"),
        ("marker", r"no markers for the loader benchmark section"),
        ("key", r"bench_model.json: no 'ratio', which the model report prints"),
    ],
)
def test_cli_errors_leave_the_doc_untouched(tmp_path, damage, match):
    doc = tmp_path / "BENCHMARKS.md"
    text = DOC.replace(section("loader"), "") if damage == "marker" else DOC
    doc.write_bytes(text.encode())
    write_jsons(
        tmp_path, {**RESULTS, "model": {k: v for k, v in MODEL.items() if k != "ratio"}} if damage == "key" else RESULTS
    )
    if damage == "json":
        (tmp_path / "bench_pack.json").unlink()
    with pytest.raises(SystemExit, match=match):
        main(["doc", "--doc", str(doc), "--json-dir", str(tmp_path)])
    assert doc.read_bytes() == text.encode()


def test_benchmark_json_records_command_machine_and_date(tmp_path, monkeypatch, capsys):
    def add_arguments(parser):
        parser.add_argument("--n", type=int, default=1)

    fake = types.SimpleNamespace(
        __doc__="Fake benchmark.",
        add_arguments=add_arguments,
        run=lambda args: {"n": args.n},
        report=lambda result: f"n {result['n']}",
        TARGETS=(Target("n", ">=", 2),),
    )
    monkeypatch.setitem(BENCHMARKS, "fake", fake)
    out = tmp_path / "fake.json"
    main(["fake", "--n", "3", "--json", str(out)])
    env = json.loads(out.read_text())["environment"]
    assert env["command"] == f"python -m mused_fm.bench fake --n 3 --json {out}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["date"])
    assert env["torch"] and env["cpu_threads"] >= 1 and isinstance(env["gpus"], list)
    assert capsys.readouterr().out == "n 3\ntarget n >= 2: met (3)\n"


def test_committed_doc_is_what_the_committed_json_renders():
    """docs/BENCHMARKS.md matches docs/bench_*.json: fix with `python -m mused_fm.bench doc`."""
    results = {name: json.loads((REPO / f"docs/bench_{name}.json").read_text()) for name in BENCHMARKS}
    text = (REPO / "docs/BENCHMARKS.md").read_text()
    assert update_text(text, rendered(results), "docs/BENCHMARKS.md") == text
