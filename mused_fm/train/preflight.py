"""What every training entry point (train, adapt) checks on every rank before the rendezvous: the same
environment gives every rank the same verdict, so a mistake stops all of them alike, before any collective."""

from __future__ import annotations

from mused_fm.config import BaseRecipe
from mused_fm.train.accelerate_env import check_accelerate_env
from mused_fm.train.run_log import resolve_wandb_mode

__all__ = ["preflight"]


def preflight(recipe: BaseRecipe) -> None:
    """Named errors for W&B online logging without a login and for `accelerate launch` flags that disagree
    with the recipe."""
    resolve_wandb_mode(recipe.log.wandb.mode)
    check_accelerate_env(recipe)
