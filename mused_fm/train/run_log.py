"""What a run writes about itself, on global rank 0 only: metrics.jsonl, run_info.json, wandb, progress.

metrics.jsonl holds one JSON object per logged training step ({"step", "loss", ...}) and one per
evaluation ({"step", "split", "datasets", "subjects"}). On resume, records after the checkpoint's
step are dropped before appending, so no step appears twice.

Progress: a tqdm bar on a terminal, a plain line every log_every steps otherwise (cluster logs).
Nothing from the environment is logged: credentials live in AWS_* variables and never reach here.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from mused_fm.config import BaseRecipe, recipe_to_dict
from mused_fm.errors import RecipeError
from mused_fm.files import dumps_json, json_safe, write_text
from mused_fm.machine import device_info, git_commit

__all__ = ["RunLog", "resolve_wandb_mode", "run_info", "wandb_login_present"]

logger = logging.getLogger("mused_fm.train")
METRICS = "metrics.jsonl"


def _version() -> str:
    try:
        return importlib.metadata.version("mused-fm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_info(world_size: int, stage: int, precision: str, device: torch.device, deepspeed: str) -> dict[str, Any]:
    devices = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if device.type == "cuda"
        else [device_info(device).get("cpu_model", platform.machine())]
    )
    return {
        "world_size": world_size,
        "zero_stage": stage,
        "precision": precision,
        "device": device.type,
        "devices": devices,
        "torch": torch.__version__,
        "deepspeed": deepspeed,
        "mused_fm": _version(),
        "git_commit": git_commit() or "unknown",
        "python": platform.python_version(),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def wandb_login_present() -> bool:
    """A W&B API key where wandb looks for one: WANDB_API_KEY, or a netrc entry for the W&B host (what
    `wandb login` writes; NETRC or ~/.netrc, the host from WANDB_BASE_URL, default api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(mode: str) -> str:
    """The W&B mode a run uses: online, offline or disabled. Called on every rank before the rendezvous, so a
    recipe that asks for online logging without a login stops before training, on all ranks alike."""
    if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return "disabled"
    if mode == "auto":
        return "online" if wandb_login_present() else "offline"
    if mode == "online" and not wandb_login_present():
        raise RecipeError(
            "log.wandb.mode is online but there is no W&B login (no WANDB_API_KEY, no api.wandb.ai entry in "
            "~/.netrc): run `wandb login`, or set log.wandb.mode=auto (offline without a login, synced later with "
            "`wandb sync`) or log.wandb.mode=disabled."
        )
    return mode


class RunLog:
    """Rank-0 writer of a run's records; on other ranks every method does nothing."""

    def __init__(self, out_dir: Path, recipe: BaseRecipe, is_main: bool, resume_step: int, total_steps: int) -> None:
        self.out_dir, self.is_main, self.total_steps = out_dir, is_main, total_steps
        self.path = out_dir / METRICS
        self.wandb = None
        self.bar = None
        if not is_main:
            return
        self._truncate_after(resume_step)
        mode = resolve_wandb_mode(recipe.log.wandb.mode)
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=recipe.log.wandb.project,
                entity=recipe.log.wandb.entity or None,
                mode=mode,
                name=recipe.run.name,
                dir=str(out_dir),
                config=recipe_to_dict(recipe),
                id=self._wandb_id(),
                resume="allow",
            )
            if mode == "offline":
                logger.info(
                    "W&B logs offline to %s; upload them later with `wandb sync %s`",
                    self.wandb_dir,
                    self.wandb_dir,
                )
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=resume_step, desc=recipe.run.name, dynamic_ncols=True)

    @property
    def wandb_dir(self) -> Path | None:
        """The W&B run's own directory (offline-run-... or run-...), what `wandb sync` takes."""
        return Path(self.wandb.dir).parent.resolve() if self.wandb is not None else None

    def _wandb_id(self) -> str:
        """One wandb run per run directory, kept across resumes (stored beside the metrics)."""
        path = self.out_dir / "wandb_id.txt"
        if not path.exists():
            write_text(path, uuid.uuid4().hex[:12] + "\n")
        return path.read_text().strip()

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept, torn = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill: the step is redone after the checkpoint
                torn += int(bool(line.strip()))
                continue
            if record["step"] <= step:
                kept.append(line)
        if torn:
            logger.warning("%s: dropped %d unreadable line(s) written by the interrupted run", self.path, torn)
        write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = json_safe(record)
        with self.path.open("a") as f:
            f.write(dumps_json(record, indent=None))
        if self.wandb is not None:
            self.wandb.log(_flatten(record), step=record["step"])

    def progress(self, step: int, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        text = (
            f"loss {record['loss']:.4f} | {record['samples_per_s']:.0f} samples/s | data wait "
            f"{100 * record['data_wait']:.0f}% | MFU {100 * record['mfu']:.1f}% | lr {record['lr']:.2e}"
        )
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(text, refresh=True)
        else:
            logger.info("step %d/%d | %s", step, self.total_steps, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def _flatten(record: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, int | float) and key != "step":
            out[name] = value
    return out
