"""The DeepSpeed trainer with real ranks: `deepspeed --num_gpus 2 launch/train.py RECIPE`, on CPU.

Each run trains a tiny model on the simulated cohort packed by the real packers (NSD-like ROI shards
and HCP-like volume shards together), so the data path, mixing, checkpoints, export and validation
are the ones users run. Every launch has a timeout: a rank hang fails the test instead of CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mused_fm.config import load_recipe
from mused_fm.data import storage
from mused_fm.model import MusedModel, build_model

from train_helpers import ROOT, child_env, deepspeed_run, free_port, metrics, pack_cohort, run_launcher, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    return pack_cohort(tmp_path_factory.mktemp("cohort"))


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def assert_run_dir(run: Path, max_steps: int, world_size: int, stage: int) -> None:
    """What a run directory holds (README: what a run leaves), with the values this run must have."""
    for name in ("config.yaml", "metrics.jsonl", "run_info.json", "registry.json", "checkpoints/latest"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run_info.json").read_text())
    assert (info["world_size"], info["zero_stage"], info["precision"]) == (world_size, stage, "fp32")
    records = metrics(run)
    steps = [r["step"] for r in records if "split" not in r]
    assert steps == list(range(1, max_steps + 1))  # log_every=1: each step exactly once
    assert all(
        np.isfinite(r["loss"]) and r["samples_per_s"] > 0 and 0 <= r["data_wait"] <= 1
        for r in records
        if "split" not in r
    )
    val = [r for r in records if r.get("split") == "val"]
    assert [r["step"] for r in val] == [s for s in range(1, max_steps + 1) if s % 3 == 0 or s == max_steps]
    assert set(val[-1]["datasets"]) == {"nsd", "hcp"}
    assert set(val[-1]["subjects"]) == {"nsd/subj01", "nsd/subj02", "nsd/subj03", "hcp/100610", "hcp/102311"}
    model = MusedModel.from_pretrained(run / "export")
    assert model.registry.ids == json.loads((run / "registry.json").read_text())["subjects"]
    assert MusedModel.from_pretrained(run / "best").registry == model.registry


def test_two_ranks_zero2_local_shards_both_datasets_and_wandb_offline(cohort, tmp_path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run)
    env = child_env(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path / "wandb_home"),
        WANDB_CACHE_DIR=str(tmp_path),
        WANDB_CONFIG_DIR=str(tmp_path),
        WANDB_DATA_DIR=str(tmp_path),
    )
    started = time.time()
    proc = deepspeed_run(recipe, "log.wandb.mode=offline", env=env)
    assert_ok(proc)
    assert_run_dir(run, max_steps=6, world_size=2, stage=2)
    # DeepSpeed's CPU allreduce buffers (66 MB per rank in /dev/shm) are not left behind
    shm = Path("/dev/shm")
    left = [p for p in shm.glob("deepspeed_allreduce_buffer_*") if p.stat().st_mtime >= started] if shm.is_dir() else []
    assert not left
    # wandb: one offline run, written by rank 0 only, inside the run directory
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    # the export holds what the engine trained: it differs from a fresh initialisation
    # (the trainer seeds the initial weights with run.seed, so the same seed rebuilds the step-0 model)
    weights = load_file(str(run / "export" / "model.safetensors"))
    torch.manual_seed(load_recipe(run / "config.yaml").run.seed)
    start = build_model(load_recipe(run / "config.yaml"), json.loads((run / "registry.json").read_text())["subjects"])
    moved = [k for k, v in start.state_dict().items() if v.is_floating_point() and not torch.equal(weights[k], v)]
    assert {"trunk.blocks.0.attn.qkv.weight", "heads.nsd.out.weight", "tokenizers.hcp.proj.weight"} <= set(moved)
    # the registry follows the recipe's subject list, then the manifest's (hcp lists none)
    assert json.loads((run / "registry.json").read_text())["subjects"] == [
        "nsd/subj01",
        "nsd/subj02",
        "nsd/subj03",
        "hcp/100610",
        "hcp/102311",
    ]


def test_two_ranks_zero3_from_s3_global_rsa_and_overrides(cohort, tmp_path, s3_bucket):
    """Shards streamed from a real S3 protocol server; the ZeRO stage and RSA scope come from overrides."""
    for name in ("nsd", "hcp"):
        for path in cohort[name].rglob("*"):
            if path.is_file():
                storage.write_bytes(f"s3://{s3_bucket}/{name}/{path.relative_to(cohort[name])}", path.read_bytes())
    run = tmp_path / "run"
    urls = {"nsd": f"s3://{s3_bucket}/nsd", "hcp": f"s3://{s3_bucket}/hcp"}
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run, urls=urls)
    proc = deepspeed_run(
        recipe, "deepspeed.zero_optimization.stage=3", "loss.rsa_scope=global", "train.num_workers=1", "train.lr=0.002"
    )
    assert_ok(proc)
    assert_run_dir(run, max_steps=6, world_size=2, stage=3)
    assert (run / "config.yaml").read_text().count("rsa_scope: global") == 1
    lrs = [r["lr"] for r in metrics(run) if "lr" in r]
    # train.lr=0.002 reached DeepSpeed's optimizer (the recipe says 1e-3); warmup then cosine to 0
    assert 0.0015 < max(lrs) <= 0.002 and lrs[-1] == pytest.approx(0.0, abs=1e-9)

    # independent reference for the export: DeepSpeed's own consolidation of the ZeRO-3 partitions
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ref = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag="step6")
    exported = load_file(str(run / "export" / "model.safetensors"))
    for key, value in ref.items():
        assert torch.equal(exported[key.removeprefix("model.")], value.float()), key


def test_kill_and_rerun_resumes_without_repeating_steps(cohort, tmp_path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run, train={"max_steps": 40, "save_every": 4, "eval_every": 20})
    proc = deepspeed_run(recipe, popen=True)
    deadline = time.monotonic() + 240
    while not list((run / "checkpoints").glob("step*/complete.json")):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint written within 240 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait(timeout=30)
    killed_at = max(r["step"] for r in metrics(run))
    complete = [int(p.parent.name.removeprefix("step")) for p in (run / "checkpoints").glob("step*/complete.json")]
    saved = max(complete)  # the newest checkpoint every rank finished: what a rerun resumes from
    assert saved < 40

    again = deepspeed_run(recipe)
    assert_ok(again)
    assert f"resuming from {run}/checkpoints/step{saved}" in again.stderr + again.stdout
    steps = [r["step"] for r in metrics(run) if "split" not in r]
    assert steps == list(range(1, 41)), f"killed after step {killed_at}, checkpoint at {saved}"


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed-hostfile"])
def test_two_nodes_on_loopback(cohort, tmp_path, launcher):
    """The multi-node paths: two launchers (node ranks 0 and 1, one process each) rendezvous over TCP.

    deepspeed-hostfile: the DeepSpeed launcher reading a two-node hostfile, started on each node
    (--no_ssh, as on clusters without passwordless ssh); torchrun: one agent per node.
    """
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run, train={"max_steps": 3, "eval_every": 3})
    port = str(free_port())
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    bin_dir = Path(sys.executable).parent

    def command(node: int) -> list[str]:
        if launcher == "torchrun":
            return [
                str(bin_dir / "torchrun"),
                "--nnodes",
                "2",
                "--node_rank",
                str(node),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
            ]
        return [
            str(bin_dir / "deepspeed"),
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--node_rank",
            str(node),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
        ]

    nodes = [
        subprocess.Popen(
            [*command(node), str(ROOT / "launch" / "train.py"), str(recipe)],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert json.loads((run / "run_info.json").read_text())["world_size"] == 2
    assert [r["step"] for r in metrics(run) if "split" not in r] == [1, 2, 3]


def test_corrupt_shard_is_skipped_and_named(cohort, tmp_path):
    """One process; a training shard of subj02 cut short: the run goes on, names it and counts it."""
    shards = tmp_path / "nsd"
    subprocess.run(["cp", "-r", str(cohort["nsd"]), str(shards)], check=True)
    manifest = json.loads((shards / "manifest.json").read_text())
    bad = next(s["name"] for s in manifest["shards"] if s["subject"] == "nsd/subj02" and s["split"] == "train")
    data = (shards / bad).read_bytes()
    (shards / bad).write_bytes(data[: int(len(data) * 0.6)])  # a partial copy: its last record is cut
    run = tmp_path / "run"
    recipe = write_recipe(
        tmp_path / "r.yaml", cohort, run, urls={"nsd": str(shards)}, train={"max_steps": 12, "eval_every": 100}
    )
    proc = run_launcher("train", str(recipe), timeout=300)
    assert_ok(proc)
    assert bad.split("/")[-1] in proc.stderr
    assert sum(r.get("skipped_records", 0) for r in metrics(run)) >= 1


def test_empty_url_is_a_clear_error():
    proc = run_launcher("train", str(ROOT / "recipes" / "nsd_hcp.yaml"), "data.datasets.nsd.url=", timeout=120)
    assert proc.returncode == 2
    assert "data.datasets.nsd.url is empty" in proc.stderr
    assert "shards_tools pack-nsd" in proc.stderr


def test_resuming_with_other_subjects_is_an_error_naming_them(tmp_path):
    """A run directory's token table belongs to its subjects: a recipe that changes them is refused by name."""
    from mused_fm.model import SubjectRegistry
    from mused_fm.train.loop import _registry

    SubjectRegistry(["nsd/subj01", "nsd/subj02"]).save(tmp_path / "registry.json")
    assert _registry(tmp_path, ["nsd/subj01", "nsd/subj02"]).ids == ["nsd/subj01", "nsd/subj02"]
    with pytest.raises(ValueError, match=r"new: \['nsd/subj03'\], gone: \['nsd/subj02'\].*adapt_subject"):
        _registry(tmp_path, ["nsd/subj01", "nsd/subj03"])


def one_process_run(recipe: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_launcher("train", recipe, *overrides, timeout=timeout)


def test_resume_skips_unfinished_and_damaged_checkpoints(cohort, tmp_path):
    """`latest` naming a step never finished, a truncated checkpoint file, a torn metrics line: the rerun
    takes the newest complete, intact checkpoint, says why it skipped the others, and repeats no step."""
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run)  # 6 steps, checkpoints at 3 and 6
    assert_ok(one_process_run(recipe))
    ckpt = run / "checkpoints"
    (ckpt / "latest").write_text("step9")  # a save killed after `latest` moved on
    (ckpt / "step9").mkdir()
    states = next((ckpt / "step6").glob("*model_states.pt"))
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])  # a torn copy
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "lo')  # the last line of a killed run
    again = one_process_run(recipe)
    assert_ok(again)
    log = again.stderr + again.stdout
    assert f"not resuming from {ckpt}/step9: no complete.json" in log
    assert f"not resuming from {ckpt}/step6: files changed or damaged since the save: {states.name}" in log
    assert f"resuming from {ckpt}/step3" in log
    assert [r["step"] for r in metrics(run) if "split" not in r] == list(range(1, 7))


class _Planted:
    """Pickles as a call of os.system: what a tampered checkpoint file could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_never_runs_code_from_a_checkpoint(cohort, tmp_path):
    """Even with its completeness record rewritten to match, a planted pickle is refused, not executed."""
    from mused_fm.train.checkpoints import record_complete

    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run)
    assert_ok(one_process_run(recipe))
    marker = tmp_path / "code_ran"
    states = next((run / "checkpoints" / "step6").glob("*model_states.pt"))
    state = torch.load(states, weights_only=False)
    torch.save({**state, "planted": _Planted(marker)}, states)
    record_complete(run / "checkpoints", 6)
    again = one_process_run(recipe, "train.max_steps=8")
    assert again.returncode == 2, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{states} holds objects a checkpoint never needs" in again.stderr
    assert not marker.exists()


def test_a_second_run_in_the_same_directory_fails_at_once(cohort, tmp_path):
    from mused_fm.train.run_lock import RunLock

    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run)
    held = RunLock(run)  # a first run still writing (here: this test process)
    try:
        began = time.monotonic()
        second = one_process_run(recipe, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"{run} is being written by another run (pid {os.getpid()}" in second.stderr
        assert time.monotonic() - began < 60
        assert not (run / "metrics.jsonl").exists()  # it wrote nothing
    finally:
        held.release()
    assert_ok(one_process_run(recipe))  # the lock goes with its holder


def test_a_run_whose_loss_stays_non_finite_stops_and_exports_nothing(cohort, tmp_path):
    run = tmp_path / "run"
    train = {"lr": 1e38, "warmup_steps": 1, "max_steps": 40, "save_every": 40, "eval_every": 40, "log_every": 5}
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run, train=train)  # an lr that overflows fp32 weights
    proc = one_process_run(recipe)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the loss has been NaN or infinite for the last" in proc.stderr
    assert not (run / "export").exists() and not (run / "best").exists()


def test_num_workers_is_per_dataset_and_rank_and_auto_fits_the_cores(monkeypatch):
    import mused_fm.train.loop as loop

    assert loop.workers_per_dataset(2, 2) == 2  # an explicit count is per dataset and per rank
    monkeypatch.setattr(loop, "cpu_usable", lambda: 2)
    monkeypatch.setenv("LOCAL_SIZE", "2")
    assert loop.workers_per_dataset(-1, 2) == 0  # 2 cores, 2 ranks: each rank loads in its own process
    monkeypatch.setattr(loop, "cpu_usable", lambda: 96)
    monkeypatch.setenv("LOCAL_SIZE", "8")
    assert loop.workers_per_dataset(-1, 2) == 4  # 12 cores a rank: capped at 4 per dataset
    assert loop.workers_per_dataset(-1, 3) == 3


def test_damaged_validation_and_test_shards_are_skipped_and_counted(cohort, tmp_path):
    """Training validates past a torn val shard, and launch/evaluate.py scores past a torn test shard."""
    shards = tmp_path / "nsd"
    shutil.copytree(cohort["nsd"], shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    torn = {}
    for split in ("val", "test"):
        shard = next(s for s in manifest["shards"] if s["split"] == split and s["subject"] == "nsd/subj01")
        path = shards / shard["name"]
        path.write_bytes(path.read_bytes()[:700])
        torn[split] = shard
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", cohort, run, urls={"nsd": str(shards)})
    proc = one_process_run(recipe)
    assert_ok(proc)
    assert f"{torn['val']['name']}: {torn['val']['count']} of its" in proc.stderr
    out = tmp_path / "eval.json"
    proc = run_launcher("evaluate", "--checkpoint", run, "--shards", shards, "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["datasets"]["nsd"]["n_skipped"] == torn["test"]["count"]
    assert torn["test"]["name"] in proc.stderr
