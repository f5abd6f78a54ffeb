"""`accelerate launch` as a launcher (issue 17): two CPU ranks through torchrun with DeepSpeed still the engine,
for training and adaptation; an Accelerate flag that disagrees with the recipe stops the run, naming both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mused_fm.config import load_recipe
from mused_fm.errors import RecipeError
from mused_fm.train.accelerate_env import accelerate_conflicts, check_accelerate_env

from train_helpers import ROOT, child_env, free_port, pack_cohort, write_recipe

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
FLAGS = ["--use_deepspeed", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]


def _launch(script: str, *args, zero_stage: int = 2, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [ACCELERATE, "launch", *FLAGS, "--zero_stage", str(zero_stage), "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), str(ROOT / "launch" / f"{script}.py"), *map(str, args)]
    env = child_env(HF_HOME=str(home), WANDB_MODE="disabled")  # no accelerate config file of the user's
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_and_adapt_under_accelerate_launch_on_two_cpu_ranks(tmp_path):
    cohort = pack_cohort(tmp_path / "cohort")
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run)  # ZeRO-2, fp32 on CPU, 6 steps
    proc = _launch("train", recipe, home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["zero_stage"] == 2  # DeepSpeed's engine on the two ranks
    assert (run / "export" / "model.safetensors").is_file()

    out = tmp_path / "adapt"
    args = ["--checkpoint", run / "export", "--shards", cohort["nsd"], "--subjects", "nsd/subj04", "--out", out]
    proc = _launch("adapt_subject", *args, "train.max_steps=4", "train.num_workers=0", home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "export" / "registry.json").is_file()
    assert json.loads((out / "export" / "registry.json").read_text())["subjects"][-1] == "nsd/subj04"

    # A flag that disagrees with the recipe stops every rank before training, naming both values and the key.
    proc = _launch("train", recipe, f"run.out_dir={tmp_path / 'run3'}", zero_stage=3, home=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "ACCELERATE_DEEPSPEED_ZERO_STAGE=3 against the recipe's deepspeed.zero_optimization.stage = 2" in proc.stderr
    assert not (tmp_path / "run3" / "metrics.jsonl").exists()


def test_each_accelerate_setting_is_held_to_the_recipe(monkeypatch):
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")  # ZeRO-2, no accumulation, clip 1.0, eager
    for name in list(__import__("os").environ):
        if name.startswith("ACCELERATE_"):
            monkeypatch.delenv(name)
    agreeing = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1",
        "ACCELERATE_GRADIENT_CLIPPING": "1.0",
        "ACCELERATE_MIXED_PRECISION": "no",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
        "ACCELERATE_DYNAMO_BACKEND": "NO",
    }
    for name, value in agreeing.items():
        monkeypatch.setenv(name, value)
    assert accelerate_conflicts(recipe, "fp32") == []
    check_accelerate_env(recipe)  # fp32 on this CPU: accepted
    assert accelerate_conflicts(recipe, "bf16") == [
        "accelerate's ACCELERATE_MIXED_PRECISION=no against the recipe's train.precision = bf16"
    ]
    for name, value, key in (
        ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4", "train.grad_accum_steps = 1"),
        ("ACCELERATE_GRADIENT_CLIPPING", "0.5", "train.grad_clip = 1.0"),
        ("ACCELERATE_MIXED_PRECISION", "fp16", "train.precision = fp32"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu", "offload_optimizer.device = none"),
        ("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR", "train.compile = False"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(RecipeError, match=rf"{name}={value} against the recipe's .*{key.split(' = ')[0]}"):
            check_accelerate_env(recipe)
        assert key in accelerate_conflicts(recipe, "fp32")[0]
        monkeypatch.setenv(name, agreeing[name])
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json")
    with pytest.raises(RecipeError, match=r"move those keys under `deepspeed:` in the recipe"):
        check_accelerate_env(recipe)
