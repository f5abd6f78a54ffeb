"""The model benchmark runs end to end at a tiny size and writes every documented key."""

from __future__ import annotations

import json

import pytest

from mused_fm.bench.__main__ import main

KEYS = {"samples_per_s", "reference_samples_per_s", "ratio", "achieved_flops", "matmul_peak_flops", "fraction_of_peak"}


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_model_benchmark_writes_its_figures(tmp_path, capsys, device):
    out = tmp_path / "bench.json"
    argv = [
        "model",
        "--json",
        str(out),
        "--batch",
        "4",
        "--dim",
        "32",
        "--depth",
        "2",
        "--heads",
        "4",
        "--rounds",
        "1",
        "--hcp-rounds",
        "1",
        "--volume-channels",
        "2,2,2,2",
        "--device",
        device,
    ]
    result = main(argv)
    written = json.loads(out.read_text())
    assert written.keys() >= KEYS and written["ratio"] == result["ratio"]
    assert all(result[k] > 0 for k in KEYS)
    assert result["ratio"] == pytest.approx(result["samples_per_s"] / result["reference_samples_per_s"])
    assert result["fraction_of_peak"] == pytest.approx(result["achieved_flops"] / result["matmul_peak_flops"])
    assert result["achieved_flops"] == pytest.approx(result["flops_per_sample"] * result["samples_per_s"])
    assert result["hcp"]["tokens"] == 392 and result["hcp"]["samples_per_s"] > 0
    assert result["precision"] == ("bfloat16" if device == "cuda" else "float32")
    assert "ratio" in capsys.readouterr().out
