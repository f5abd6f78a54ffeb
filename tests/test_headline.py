"""The README's headline path as typed: pack into shards/nsd and shards/hcp, then `launch/train.py
recipes/nsd_hcp.yaml` from that directory with no URL overrides and no W&B login (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mused_fm.errors import RecipeError
from mused_fm.train.run_log import resolve_wandb_mode, wandb_login_present

from train_helpers import ROOT, child_env, pack_cohort

pytestmark = pytest.mark.slow


def _no_login_env(home) -> dict[str, str]:
    """The environment of a machine where nobody ran `wandb login`: no key, no netrc, W&B files under `home`."""
    env = child_env(HOME=str(home), WANDB_DIR=str(home / "wandb"), WANDB_CACHE_DIR=str(home / "cache"))
    env.update(WANDB_CONFIG_DIR=str(home / "config"), WANDB_DATA_DIR=str(home / "data"), WANDB_SILENT="true")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        env.pop(name, None)
    return env


def test_headline_command_trains_from_the_readme_pack_outputs_and_logs_offline(tmp_path):
    cohort = pack_cohort(tmp_path)  # tmp_path/shards/nsd and tmp_path/shards/hcp, as the README packs them
    nsd = json.loads((cohort["nsd"] / "manifest.json").read_text())["info"]
    hcp = json.loads((cohort["hcp"] / "manifest.json").read_text())["info"]
    fit_cpu = [  # the flagship's size and step count cut to CPU; the input shapes are the test cohort's
        "model.dim=32",
        "model.depth=1",
        "model.heads=2",
        "model.volume_channels=[4,8,8,8]",
        f"data.datasets.nsd.roi_dim={nsd['roi_dim']}",
        f"data.datasets.nsd.num_rois={len(nsd['rois'])}",
        "data.datasets.nsd.num_classes=0",
        f"data.datasets.hcp.volume_shape=[{','.join(map(str, hcp['volume_shape']))}]",
        "train.max_steps=4",
        "train.micro_batch_size=8",
        "train.eval_every=2",
        "train.save_every=2",
        "train.num_workers=0",
    ]
    home = tmp_path / "home"
    home.mkdir()
    command = [sys.executable, str(ROOT / "launch" / "train.py"), str(ROOT / "recipes" / "nsd_hcp.yaml"), *fit_cpu]
    proc = subprocess.run(command, cwd=tmp_path, env=_no_login_env(home), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "nsd_hcp"  # the recipe's out_dir, relative to where the command ran
    assert (run / "export" / "model.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 4
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    assert f"wandb sync {offline[0].parent}" in proc.stderr  # where it went and how to upload it

    # Without the shards, the error names the folder and the pack command that writes it.
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    proc = subprocess.run(command, cwd=elsewhere, env=_no_login_env(home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "data.datasets.nsd.url is 'shards/nsd', which does not exist" in proc.stderr
    assert "python -m shards_tools pack-nsd ... --out shards/nsd" in proc.stderr


def test_wandb_auto_is_online_with_a_login_and_offline_without(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_login_present() and resolve_wandb_mode("auto") == "offline"
    with pytest.raises(RecipeError, match=r"log\.wandb\.mode is online but there is no W&B login.*wandb login"):
        resolve_wandb_mode("online")
    (tmp_path / "netrc").write_text(
        "machine api.wandb.ai\n  login user\n  password abc123\n"
    )  # what `wandb login` writes
    os.chmod(tmp_path / "netrc", 0o600)
    assert wandb_login_present() and resolve_wandb_mode("auto") == "online" == resolve_wandb_mode("online")
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "abc123")
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment's off switch wins
    assert resolve_wandb_mode("auto") == "disabled" == resolve_wandb_mode("online")
    assert resolve_wandb_mode("offline") == "disabled"
