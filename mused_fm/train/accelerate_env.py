"""`accelerate launch` as a launcher: its settings against the recipe, before any rank joins the group.

    accelerate launch --use_deepspeed --zero_stage 2 --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no launch/train.py recipes/demo.yaml ...

Accelerate starts the ranks through torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, which
init_distributed reads as from any launcher) and puts its flags in ACCELERATE_* variables. Training does not
go through an Accelerator object: DeepSpeed stays the engine, configured from the recipe, which stays the
single source of truth. A flag whose setting the recipe also holds must agree with it, or the run stops
before training naming both values and the key to change; a flag that agrees is accepted. Every rank runs
the check on the same environment, so all of them stop alike.
"""

from __future__ import annotations

import os

import torch

from mused_fm.config import BaseRecipe
from mused_fm.errors import RecipeError
from mused_fm.train.engine import resolve_precision

__all__ = ["accelerate_conflicts", "check_accelerate_env"]

# ACCELERATE_MIXED_PRECISION -> the trainer's precision (the recipe has no fp16 or fp8 path).
_PRECISION = {"no": "fp32", "bf16": "bf16"}


def _offload(recipe: BaseRecipe, part: str) -> str:
    zero = recipe.deepspeed.get("zero_optimization", {})
    return str((zero.get(f"offload_{part}") or {}).get("device", "none")).lower()


def accelerate_conflicts(recipe: BaseRecipe, precision: str) -> list[str]:
    """Each Accelerate setting in the environment that disagrees with the recipe, as a sentence.

    Args:
        precision: the trainer's resolved precision (fp32 or bf16) for this device.
    """
    env = os.environ
    t = recipe.train
    checks = [  # (variable, Accelerate's value as the recipe would write it, the recipe's value, recipe key)
        ("ACCELERATE_DEEPSPEED_ZERO_STAGE", lambda v: int(v), recipe.zero_stage, "deepspeed.zero_optimization.stage"),
        ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", lambda v: int(v), t.grad_accum_steps, "train.grad_accum_steps"),
        ("ACCELERATE_GRADIENT_CLIPPING", lambda v: float(v), float(t.grad_clip), "train.grad_clip"),
        ("ACCELERATE_MIXED_PRECISION", lambda v: _PRECISION.get(v, v), precision, "train.precision"),
        (
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
            str.lower,
            _offload(recipe, "optimizer"),
            "deepspeed.zero_optimization.offload_optimizer.device",
        ),
        (
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
            str.lower,
            _offload(recipe, "param"),
            "deepspeed.zero_optimization.offload_param.device",
        ),
        ("ACCELERATE_DYNAMO_BACKEND", lambda v: v.lower() != "no", t.compile, "train.compile"),
    ]
    problems = []
    for variable, read, ours, key in checks:
        if variable not in env:
            continue
        try:
            theirs = read(env[variable].strip())
        except ValueError:
            problems.append(f"{variable}={env[variable]!r} is not a value {key} can take")
            continue
        if theirs != ours:
            problems.append(f"accelerate's {variable}={env[variable]} against the recipe's {key} = {ours}")
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        problems.append(
            f"accelerate's ACCELERATE_DEEPSPEED_CONFIG_FILE={env['ACCELERATE_DEEPSPEED_CONFIG_FILE']}: the recipe is "
            "the DeepSpeed config here; move those keys under `deepspeed:` in the recipe"
        )
    return problems


def check_accelerate_env(recipe: BaseRecipe) -> None:
    """Stop with a named error when `accelerate launch`'s settings disagree with the recipe (on the precision
    the trainer will use here: init_distributed picks CUDA where there is one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problems = accelerate_conflicts(recipe, resolve_precision(recipe, device))
    if problems:
        raise RecipeError(
            "the accelerate launch settings disagree with the recipe, which is the single source of truth: "
            + "; ".join(problems)
            + ". Change the recipe key (e.g. as an override after the recipe) or the accelerate flag so they agree."
        )
