"""Train only the tokens of added subjects: freeze the rest, and check bit for bit that nothing else moved.

    model.add_subjects(["nsd/subj09"])
    params = freeze_for_new_subjects(model)        # [subject_tokens.new]; call before building the optimizer
    logger.info(trainable_summary(model))          # "trainable: subject_tokens.new (1, 2, 512) = 1024 of ..."
    before = snapshot(model)
    ...AdamW(params), model.train(), steps...
    assert_unchanged(before, model)                # every other parameter and buffer bit-identical

Freezing parameters is not enough. In train mode BatchNorm updates its running statistics
whatever requires_grad says. So freeze_for_new_subjects lists every module that owns buffers in
`model.keep_eval`, and MusedModel.train keeps those modules in eval mode. Dropout still follows
the flag. The frozen BatchNorm then normalises with the statistics of pretraining, which is also
what it does at inference.

Pass only the returned parameters to the optimizer (DeepSpeed: model_parameters=params). Torch
optimizers skip parameters whose grad is None, but an explicit list keeps parameter groups and
schedules honest, and it is the list DeepSpeed expects.

Under ZeRO-3 a parameter's local shape is (0,) (the data lives in ds_tensor). Run these checks on
the plain model, or on a consolidated fp32 export.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from mused_fm.model.mused import MusedModel

__all__ = [
    "assert_unchanged",
    "freeze_for_new_subjects",
    "num_trainable",
    "snapshot",
    "train_only",
    "trainable_summary",
    "unfreeze",
]


def freeze_for_new_subjects(model: MusedModel) -> list[nn.Parameter]:
    """Freeze everything except `subject_tokens.new` and return the trainable parameters ([new]).

    Trainable afterwards: k * S * D values (S = 2 tokens per subject in mode two, 1 in mode one).
    Modules that own buffers (BatchNorm) stay in eval mode through model.train() (`keep_eval`).
    Stale gradients of the frozen parameters are dropped, so an optimizer that holds them anyway
    skips them.
    """
    tokens = model.subject_tokens
    if tokens.new is None:
        if tokens.table is None:
            raise ValueError(
                "subject token mode 'none' has no per-subject parameters: a subject added with "
                "model.add_subjects is used as it is, there is nothing to train."
            )
        raise ValueError(
            "the model has no added subjects (subject_tokens.new is None); call model.add_subjects([...]) "
            "first (a model loaded from an export has its subjects folded into subject_tokens.table)."
        )
    return train_only(model, [tokens.new])


def train_only(model: MusedModel, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Make exactly `params` trainable; every module with buffers and no trainable parameter stays in eval.

    Returns the trainable parameters in model order (what the optimizer gets).
    """
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) not in chosen:
            p.grad = None
    model.keep_eval = tuple(
        name
        for name, module in model.named_modules()
        if next(module.buffers(recurse=False), None) is not None
        and not any(p.requires_grad for p in module.parameters(recurse=False))
    )
    model.train(model.training)  # apply keep_eval now
    return [p for p in model.parameters() if p.requires_grad]


def unfreeze(model: MusedModel) -> None:
    """Undo freeze_for_new_subjects: every parameter trainable, every module follows train()/eval()."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.keep_eval = ()
    model.train(model.training)


def num_trainable(model: nn.Module) -> int:
    """Number of trainable values (requires_grad) in the model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_summary(model: MusedModel) -> str:
    """One line for the log: which parameters train, how many values, and which modules stay in eval."""
    trainable = [f"{n} {tuple(p.shape)}" for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    count = num_trainable(model)
    listed = ", ".join(trainable[:4]) + (f", ... ({len(trainable)} tensors)" if len(trainable) > 4 else "")
    line = f"trainable: {listed or 'nothing'} = {count:,} of {total:,} parameters ({count / total:.4%})"
    if model.keep_eval:
        names = ", ".join(model.keep_eval[:3]) + (", ..." if len(model.keep_eval) > 3 else "")
        line += f"; kept in eval mode: {len(model.keep_eval)} modules with buffers ({names})"
    return line


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(itertools.chain(model.named_parameters(), model.named_buffers()))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of every parameter and buffer (BatchNorm running statistics included), by name."""
    return {name: t.detach().to("cpu", copy=True) for name, t in _tensors(model).items()}


def assert_unchanged(
    before: dict[str, torch.Tensor], model: nn.Module, allowed: tuple[str, ...] = ("subject_tokens.new",)
) -> None:
    """Raise a ValueError naming every parameter or buffer that differs from `before` (torch.equal).

    Args:
        before: snapshot(model) taken before training.
        allowed: names (or name prefixes up to a '.') that may change.
    """
    now = _tensors(model)
    problems = []
    for name in [*before, *(n for n in now if n not in before)]:
        if any(name == a or name.startswith(a + ".") for a in allowed):
            continue
        if name not in now:
            problems.append(f"{name} (gone from the model)")
        elif name not in before:
            problems.append(f"{name} (not in the snapshot)")
        else:
            old, new = before[name], now[name].detach().cpu()
            if old.shape != new.shape or old.dtype != new.dtype:
                problems.append(f"{name} ({tuple(old.shape)} {old.dtype} -> {tuple(new.shape)} {new.dtype})")
            elif not torch.equal(old, new):
                change = (new.double() - old.double()).abs().max().item()
                problems.append(f"{name} (max abs change {change:.3g})")
    if problems:
        raise ValueError(
            f"{len(problems)} tensors outside {list(allowed)} changed: {', '.join(problems)}. Freeze with "
            "freeze_for_new_subjects(model) before training and give the optimizer only the parameters it returns."
        )
