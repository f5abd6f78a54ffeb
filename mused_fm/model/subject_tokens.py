"""Per-subject learnable tokens prepended to the fMRI tokens: x_llv(s) and x_hlv(s) of CLIP-MUSED.

Shape legend: B batch, N subjects of the trained table, k added subjects, S tokens per subject
(2 in mode two, 1 in mode one), D width.

Modes (the paper's baselines are switches of the same table):
  two   table (N, 2, D): subject s gets its own low- and high-level token (CLIP-MUSED).
  one   table (N, 1, D) added to two shared tokens (1, 2, D): one subject embedding (MS-EMB).
  none  two shared tokens (1, 2, D), no subject information (MS-SMODEL).
The output is always two tokens per sample, so z_llv / z_hlv are read at positions 0 and 1.

Unseen subjects are added as a separate parameter `new` (k, S, D) after the trained `table`
(N, S, D), and the rows used are cat([table, new])[rows]:
  - `table` can be frozen while `new` trains. Training a masked (N+k)-row table instead lets
    AdamW's weight decay and momentum move rows that get no gradient.
  - The cat happens on every forward, whichever subjects the batch holds, so `new` is in every
    rank's graph (a rank whose batch has no new subject gets zero gradient rows, not a missing
    gradient, which would desynchronise DeepSpeed/DDP collectives).
  - `merge_new()` and `fold_new_rows()` fold `new` into one (N+k)-row `table`, the layout of a
    plain model; loading accepts either layout (see `_load_from_state_dict`).
Mode none has no per-subject parameter, so adding a subject there adds no rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = ["SubjectTokens", "fold_new_rows"]


class SubjectTokens(nn.Module):
    def __init__(self, num_subjects: int, dim: int, mode: Literal["two", "one", "none"] = "two") -> None:
        super().__init__()
        if mode not in ("two", "one", "none"):
            raise ValueError(f"subject token mode must be 'two', 'one' or 'none', got {mode!r}.")
        if num_subjects < 1:
            raise ValueError(f"SubjectTokens needs at least one subject, got {num_subjects}.")
        self.mode = mode
        self.table: nn.Parameter | None = None
        self.new: nn.Parameter | None = None
        self.shared: nn.Parameter | None = None
        if mode in ("two", "one"):
            self.table = nn.Parameter(torch.empty(num_subjects, 2 if mode == "two" else 1, dim))  # (N, S, D)
        if mode in ("one", "none"):
            self.shared = nn.Parameter(torch.empty(1, 2, dim))  # (1, 2, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.table, self.new, self.shared):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def num_subjects(self) -> int:
        """Rows of the full table, trained and added (0 in mode none)."""
        if self.table is None:
            return 0
        return self.table.shape[0] + (0 if self.new is None else self.new.shape[0])

    def full_table(self) -> torch.Tensor | None:
        """(N + k, S, D): the trained rows, then the added ones; None in mode none."""
        if self.table is None or self.new is None:
            return self.table
        return torch.cat([self.table, self.new])

    def forward(self, subject_row_B: torch.Tensor) -> torch.Tensor:
        """Two tokens per sample, (B, 2, D), for the given rows of the (full) table."""
        if self.mode == "two":
            return self.full_table()[subject_row_B]
        batch = subject_row_B.shape[0]
        if self.mode == "one":
            return self.shared + self.full_table()[subject_row_B]  # (B, 1, D) broadcast over both tokens
        # A copy, not an expand() view: a view of a leaf made under no_grad requires grad but has no
        # grad_fn, which FlopCounterMode's module hooks (the trainer's FLOP count) reject.
        return self.shared.repeat(batch, 1, 1)

    # ----------------------------------------------------------------------------------------
    # Adding subjects
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def add_rows(self, init_kSD: torch.Tensor, keep_rows: Sequence[int] | None = None) -> None:
        """Keep rows `keep_rows` of the full table (ascending; default all), then append `init_kSD` as new rows.

        Kept rows stay in the parameter they were in (`table` or `new`), so a trained row never
        becomes trainable; dropped rows (a subject re-initialised with replace=True) disappear and
        the rows after them shift down. `table` and `new` become new Parameter objects whenever they
        change: call this before building the optimizer.
        """
        if self.table is None:
            raise ValueError("subject token mode 'none' has no per-subject rows to add.")
        n_table = self.table.shape[0]
        keep = list(range(self.num_subjects)) if keep_rows is None else list(keep_rows)
        if keep != sorted(set(keep)) or (keep and not 0 <= keep[0] <= keep[-1] < self.num_subjects):
            raise ValueError(f"keep_rows must be ascending, unique rows < {self.num_subjects}, got {keep}.")
        if tuple(init_kSD.shape[1:]) != tuple(self.table.shape[1:]):
            raise ValueError(
                f"new subject rows must have shape (k, {', '.join(map(str, self.table.shape[1:]))}), "
                f"got {tuple(init_kSD.shape)}."
            )
        keep_table = [r for r in keep if r < n_table]
        keep_new = [r - n_table for r in keep if r >= n_table]
        if len(keep_table) < n_table:
            self.table = nn.Parameter(self.table[keep_table].clone(), requires_grad=self.table.requires_grad)
        parts = [] if self.new is None else [self.new[keep_new]]
        new = torch.cat([*parts, init_kSD.to(self.table)])  # (k, S, D)
        self.new = nn.Parameter(new.clone()) if new.shape[0] else None

    @torch.no_grad()
    def merge_new(self) -> None:
        """Fold `new` into `table` (N + k rows), the layout of a plain model.

        The merged table keeps the old table's requires_grad (frozen stays frozen: the old rows
        must not start training by accident). It is a new Parameter: an optimizer built before
        holds stale ones.
        """
        if self.table is None or self.new is None:
            return
        self.table = nn.Parameter(torch.cat([self.table, self.new]), requires_grad=self.table.requires_grad)
        self.new = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Accept `table` (+ `new`) split at any row: re-split the incoming rows as this module holds them.

        So a plain export (one (N+k)-row table) loads into a model with `new`, and a checkpoint
        with `new` loads into a plain (N+k)-row model. Row counts that do not add up are left to
        the usual size-mismatch error.
        """
        table_key, new_key = prefix + "table", prefix + "new"
        if self.table is not None and table_key in state_dict:
            rows = [state_dict[table_key], *([state_dict[new_key]] if new_key in state_dict else [])]
            if sum(r.shape[0] for r in rows) == self.num_subjects and all(
                r.shape[1:] == self.table.shape[1:] for r in rows
            ):
                full = torch.cat(rows) if len(rows) > 1 else rows[0]  # (N + k, S, D)
                n_table = self.table.shape[0]
                state_dict[table_key] = full[:n_table]
                state_dict.pop(new_key, None)
                if self.new is not None:
                    state_dict[new_key] = full[n_table:]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def fold_new_rows(state: dict[str, torch.Tensor], prefix: str = "subject_tokens.") -> dict[str, torch.Tensor]:
    """A copy of a state dict with `<prefix>new` folded into `<prefix>table` (as after merge_new)."""
    state = dict(state)
    new = state.pop(prefix + "new", None)
    if new is not None:
        state[prefix + "table"] = torch.cat([state[prefix + "table"], new])
    return state
