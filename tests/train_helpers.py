"""A packed simulated cohort and a launcher for real multi-rank training runs in tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from shards_tools.__main__ import main as shards_cli
from shards_tools.synth import synth

ROOT = Path(__file__).resolve().parents[1]
NSD_SUBJECTS = ["subj01", "subj02", "subj03"]
HCP_SUBJECTS = ["100610", "102311"]


def pack_cohort(out: Path) -> dict[str, Path]:
    """The 'test' preset packed by the real packers: NSD-like ROI shards and HCP-like volume shards."""
    raw = out / "raw"
    synth(raw, preset="test", seed=0)
    common = ["--clip-model", str(raw / "clip"), "--llv-dim", "32", "--maxcount", "60"]
    nsd, hcp = out / "shards" / "nsd", out / "shards" / "hcp"
    assert (
        shards_cli(
            [
                "pack-nsd",
                "--root",
                str(raw / "nsd"),
                "--subjects",
                ",".join([*NSD_SUBJECTS, "subj04"]),
                "--roi-dim",
                "8",
                "--out",
                str(nsd),
                *common,
            ]
        )
        == 0
    )
    assert (
        shards_cli(
            ["pack-hcp", "--root", str(raw / "hcp"), "--subjects", ",".join(HCP_SUBJECTS), "--out", str(hcp), *common]
        )
        == 0
    )
    return {"raw": raw, "nsd": nsd, "hcp": hcp}


def write_recipe(
    path: Path, cohort: dict[str, Path], out_dir: Path, urls: dict[str, str] | None = None, **sections
) -> Path:
    """A tiny two-dataset recipe; input shapes come from the local manifests, URLs default to them."""
    urls = {"nsd": str(cohort["nsd"]), "hcp": str(cohort["hcp"]), **(urls or {})}
    nsd = json.loads((cohort["nsd"] / "manifest.json").read_text())["info"]
    hcp = json.loads((cohort["hcp"] / "manifest.json").read_text())["info"]
    recipe = {
        "run": {"name": "t", "out_dir": str(out_dir)},
        "model": {"dim": 32, "depth": 2, "heads": 4, "head_hidden": 32, "volume_channels": [4, 8, 8, 8]},
        "data": {
            "datasets": {
                "nsd": {
                    "url": urls["nsd"],
                    "subjects": NSD_SUBJECTS,
                    "input": "roi",
                    "num_rois": len(nsd["rois"]),
                    "roi_dim": nsd["roi_dim"],
                    "num_classes": 0,
                },
                "hcp": {"url": urls["hcp"], "input": "volume", "volume_shape": hcp["volume_shape"], "num_classes": 0},
            }
        },
        "train": {
            "micro_batch_size": 8,
            "lr": 1e-3,
            "warmup_steps": 2,
            "max_steps": 6,
            "save_every": 3,
            "eval_every": 3,
            "log_every": 1,
            "num_workers": 0,
        },
        "deepspeed": {"zero_optimization": {"stage": 2}},
        "log": {"wandb": {"mode": "disabled"}},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_launcher(name: str, *args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python launch/NAME.py ARGS` in one process, output captured; a hang fails after `timeout` s."""
    command = [sys.executable, str(ROOT / "launch" / f"{name}.py"), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env.update(extra)
    return env


def deepspeed_run(
    recipe: Path,
    *overrides: str,
    ranks: int = 2,
    timeout: int = 300,
    env: dict | None = None,
    popen: bool = False,
    script: Path = ROOT / "launch" / "train.py",
):
    """`deepspeed --num_gpus N launch/train.py RECIPE OVERRIDES`, real ranks; a hang fails after `timeout` s."""
    launcher = Path(sys.executable).with_name("deepspeed")
    cmd = [
        str(launcher),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        str(script),
        str(recipe),
        *overrides,
    ]
    if popen:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env or child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    return subprocess.run(cmd, cwd=ROOT, env=env or child_env(), capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
