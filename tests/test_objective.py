"""The training objective: every dataset in every step, and loss.rsa_scope=global across real ranks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.multiprocessing as mp

from mused_fm.config import recipe_from_dict
from mused_fm.model import build_model
from mused_fm.train.objective import Objective

from conftest import TINY, make_batch
from dist_workers import global_rsa_rank
from train_helpers import free_port

SUBJECTS = {"nsd": ["nsd/subj01", "nsd/subj02", "nsd/subj03"] * 2, "hcp": ["hcp/100610", "hcp/102311"] * 2}


def _recipe(scope: str) -> dict:
    recipe = copy.deepcopy(TINY)
    recipe["model"]["volume_norm"] = "group"  # BatchNorm statistics are per rank by design; not under test here
    recipe["loss"]["rsa_scope"] = scope
    return recipe


def _batches(model) -> dict:
    out = {}
    for i, (name, ids) in enumerate(SUBJECTS.items()):
        b = make_batch(model, name, ids, seed=i)
        out[name] = {
            "bold": b["bold"].double(),
            "subject_row": b["rows"],
            "labels": b["labels"],
            "clip_llv": b["clip_llv"].double(),
            "clip_hlv": b["clip_hlv"].double(),
        }
    return out


def _two_ranks(scope: str, tmp_path) -> tuple[dict, dict, dict]:
    recipe = _recipe(scope)
    torch.manual_seed(0)
    model = build_model(recipe_from_dict(recipe)).double()
    batches = _batches(model)
    out = tmp_path / f"{scope}.pt"
    mp.start_processes(
        global_rsa_rank,
        args=(2, free_port(), batches, model.state_dict(), recipe, str(out)),
        nprocs=2,
        start_method="spawn",
    )
    return torch.load(out, weights_only=True), model, batches


@pytest.mark.slow
def test_global_rsa_on_two_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    dist_result, model, batches = _two_ranks("global", tmp_path)
    objective = Objective(model, recipe_from_dict(_recipe("global")).loss)  # world of one: gather is identity
    loss, _ = objective(batches)
    loss.backward()
    assert dist_result["loss"].item() == pytest.approx(loss.item(), rel=1e-12)
    for name, p in objective.named_parameters():
        torch.testing.assert_close(dist_result["grads"][name], p.grad, rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.slow
def test_local_rsa_on_two_ranks_differs_from_the_whole_batch(tmp_path):
    """The check above can fail: per-rank similarity matrices give another loss."""
    dist_result, model, batches = _two_ranks("local", tmp_path)
    loss, _ = Objective(model, recipe_from_dict(_recipe("local")).loss)(batches)
    assert abs(dist_result["loss"].item() - loss.item()) > 1e-6


def test_every_parameter_gets_a_gradient_from_one_mixed_step(tiny_model):
    """Each micro-step holds a batch of every dataset, so no parameter sits out (ZeRO needs that)."""
    objective = Objective(tiny_model, recipe_from_dict(TINY).loss)
    batches = {
        name: {**b, "subject_row": b.pop("rows")}
        for name, b in ((n, make_batch(tiny_model, n, ids[:3])) for n, ids in SUBJECTS.items())
    }
    loss, terms = objective(batches)
    loss.backward()
    assert set(terms) == {"nsd", "hcp"}
    silent = [n for n, p in objective.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent
    expected = (3 * terms["nsd"].total + 3 * terms["hcp"].total) / 6  # weighted by each dataset's share
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
