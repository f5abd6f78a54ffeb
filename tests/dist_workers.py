"""Functions run in spawned processes by the distributed tests (importable, so `spawn` can find them)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def global_rsa_rank(rank: int, world: int, port: int, batches: dict, state: dict, recipe_dict: dict, out: str) -> None:
    """One rank of the global-RSA check: its half of each batch, loss, backward, gradients averaged."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from mused_fm.config import recipe_from_dict
        from mused_fm.model import build_model
        from mused_fm.train.objective import Objective

        recipe = recipe_from_dict(recipe_dict)
        model = build_model(recipe).double()
        model.load_state_dict(state)
        objective = Objective(model, recipe.loss)
        mine = {name: {k: v.chunk(world)[rank] for k, v in b.items()} for name, b in batches.items()}
        loss, _ = objective(mine)
        loss.backward()
        grads = {}
        for name, p in objective.named_parameters():  # what DeepSpeed's data-parallel reduction does
            g = p.grad.clone()
            dist.all_reduce(g)
            grads[name] = g / world
        losses = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            torch.save({"loss": torch.stack(losses).mean(), "grads": grads}, out)
    finally:
        dist.destroy_process_group()
