"""Adding unseen subjects: only `subject_tokens.new` trains, every other tensor stays bit-identical.

Contract: after model.add_subjects(ids) and freeze_for_new_subjects(model), any number of
optimizer steps (AdamW with weight decay and momentum, BatchNorm modules of a model in train mode)
change `subject_tokens.new` and nothing else; old subjects' outputs never change; an export folds
the added rows into a plain (N+k)-row model.
"""

from __future__ import annotations

import pytest
import torch

from mused_fm.losses import clip_mused_loss
from mused_fm.model import MusedModel, assert_unchanged, build_model, freeze_for_new_subjects, snapshot
from mused_fm.model.freeze import num_trainable, trainable_summary, unfreeze

from conftest import make_batch

D = 24  # TINY model width
NEW_IDS = ["nsd/subj09", "hcp/200000"]
NSD_MIX = ["nsd/subj01", "nsd/subj09", "nsd/subj02", "nsd/subj09"]  # old and new subjects in one batch
HCP_MIX = ["hcp/100610", "hcp/200000", "hcp/200000"]
OLD_BATCHES = (("nsd", ["nsd/subj01", "nsd/subj03", "nsd/subj02"]), ("hcp", ["hcp/100610", "hcp/102311"]))


def loss_of(model, recipe, dataset, ids, seed=0):
    batch = make_batch(model, dataset, ids, seed)
    out = model(batch["bold"], batch["rows"], dataset)
    return clip_mused_loss(
        out, batch["labels"], batch["clip_llv"], batch["clip_hlv"], recipe.loss.for_dataset(dataset)
    ).total


@torch.no_grad()
def outputs(model, dataset, ids, seed=3):
    batch = make_batch(model, dataset, ids, seed)
    out = model(batch["bold"], batch["rows"], dataset)
    return torch.cat([out.logits, out.z_llv, out.z_hlv], dim=1)


def model_in_mode(recipe, mode):
    recipe.model.subject_tokens = mode
    torch.manual_seed(0)
    return build_model(recipe)


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]


@pytest.mark.parametrize(("mode", "tokens_per_subject"), [("two", 2), ("one", 1)])
def test_training_new_tokens_changes_nothing_else(tiny_recipe, mode, tokens_per_subject):
    model = model_in_mode(tiny_recipe, mode)
    model.add_subjects(NEW_IDS)
    params = freeze_for_new_subjects(model)
    assert params == [model.subject_tokens.new]
    assert model.subject_tokens.new.shape == (2, tokens_per_subject, D)
    assert num_trainable(model) == tokens_per_subject * D * len(NEW_IDS)
    assert trainable_summary(model).startswith(f"trainable: subject_tokens.new (2, {tokens_per_subject}, {D}) = ")
    before = snapshot(model)

    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    assert model.trunk.training and model.trunk.blocks[0].mlp.drop.training  # dropout follows the flag
    assert batch_norms(model) and not any(bn.training for bn in batch_norms(model))  # BatchNorm does not
    for step in range(4):
        opt.zero_grad()
        if step < 2:
            loss = loss_of(model, tiny_recipe, "nsd", NSD_MIX, step) + loss_of(model, tiny_recipe, "hcp", HCP_MIX, step)
        else:  # old subjects only: `new` still gets a (zero) gradient, momentum keeps moving it
            loss = sum(loss_of(model, tiny_recipe, dataset, ids, step) for dataset, ids in OLD_BATCHES)
        loss.backward()
        assert model.subject_tokens.new.grad is not None
        opt.step()

    assert_unchanged(before, model)
    assert not torch.equal(before["subject_tokens.new"], model.subject_tokens.new.detach())


def test_assert_unchanged_names_every_changed_tensor(tiny_model):
    before = snapshot(tiny_model)
    with torch.no_grad():
        tiny_model.trunk.blocks[0].attn.proj.weight[3, 5] += 0.25
    tiny_model.train()  # not frozen: BatchNorm running statistics move
    batch = make_batch(tiny_model, "hcp", ["hcp/100610"] * 3)
    tiny_model(batch["bold"], batch["rows"], "hcp")
    with pytest.raises(ValueError) as err:
        assert_unchanged(before, tiny_model)
    message = str(err.value)
    assert "trunk.blocks.0.attn.proj.weight (max abs change 0.25)" in message
    assert "tokenizers.hcp.stages.0.norm1.running_mean (max abs change " in message
    assert "tokenizers.hcp.stages.1.norm2.running_var (max abs change " in message
    assert "tokenizers.hcp.stages.0.norm1.num_batches_tracked (max abs change 1)" in message
    assert "tokenizers.nsd" not in message and "subject_tokens.table" not in message
    assert_unchanged(before, tiny_model, allowed=("trunk.blocks.0.attn.proj.weight", "tokenizers.hcp"))


def test_freeze_keeps_modules_with_buffers_in_eval_until_unfrozen(tiny_model):
    tiny_model.add_subjects(["nsd/subj09"])
    freeze_for_new_subjects(tiny_model)
    assert tiny_model.keep_eval and all(".norm" in name for name in tiny_model.keep_eval)
    tiny_model.eval().train()
    assert not any(bn.training for bn in batch_norms(tiny_model)) and tiny_model.training
    unfreeze(tiny_model)
    tiny_model.train()
    assert all(bn.training for bn in batch_norms(tiny_model))
    assert num_trainable(tiny_model) == sum(p.numel() for p in tiny_model.parameters())


def test_adding_subjects_leaves_old_subjects_outputs_unchanged(tiny_model):
    tiny_model.eval()
    old_ids = list(tiny_model.registry.ids)
    reference = {dataset: outputs(tiny_model, dataset, ids) for dataset, ids in OLD_BATCHES}
    table = tiny_model.subject_tokens.table.detach().clone()
    tiny_model.add_subjects(NEW_IDS)
    assert tiny_model.registry.ids == [*old_ids, *NEW_IDS]
    assert torch.equal(tiny_model.subject_tokens.table, table)
    for dataset, ids in OLD_BATCHES:
        assert torch.equal(outputs(tiny_model, dataset, ids), reference[dataset])
    # Frozen, too: the trunk's readout slice is made contiguous, otherwise torch's matmul picks its
    # kernel by the weight's requires_grad (even under no_grad) and the last bit moves.
    freeze_for_new_subjects(tiny_model)
    for dataset, ids in OLD_BATCHES:
        assert torch.equal(outputs(tiny_model, dataset, ids), reference[dataset])


def test_new_rows_start_at_the_mean_of_their_dataset(tiny_recipe):
    model = build_model(tiny_recipe, ["nsd/subj01", "nsd/subj02", "hcp/100610"])
    table = model.subject_tokens.table.detach().clone()
    model.add_subjects(["nsd/subj09", "hcp/200000"])
    new = model.subject_tokens.new.detach()
    torch.testing.assert_close(new[0], table[:2].mean(0), rtol=0, atol=0)
    torch.testing.assert_close(new[1], table[2], rtol=0, atol=0)
    only_nsd = build_model(tiny_recipe, ["nsd/subj01", "nsd/subj02"])
    only_nsd.add_subjects(["hcp/200000"])  # no known hcp subject: the mean of all rows
    torch.testing.assert_close(only_nsd.subject_tokens.new[0], only_nsd.subject_tokens.table.mean(0))
    only_nsd.add_subjects(["hcp/300000"], init="random")
    assert not torch.equal(only_nsd.subject_tokens.new[0], only_nsd.subject_tokens.new[1])


def train_new_tokens(model, recipe, steps=2):
    opt = torch.optim.AdamW(freeze_for_new_subjects(model), lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        (loss_of(model, recipe, "nsd", NSD_MIX, step) + loss_of(model, recipe, "hcp", HCP_MIX, step)).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize(("mode", "tokens_per_subject"), [("two", 2), ("one", 1)])
def test_export_folds_new_subjects_into_a_plain_model(tiny_recipe, tmp_path, mode, tokens_per_subject):
    model = model_in_mode(tiny_recipe, mode)
    model.add_subjects(NEW_IDS)
    model = train_new_tokens(model, tiny_recipe)
    unfreeze(model)  # requires_grad as in the loaded model, so the same matmul kernels run (see above)
    batches = [*OLD_BATCHES, ("nsd", NSD_MIX), ("hcp", HCP_MIX)]
    reference = [outputs(model, dataset, ids) for dataset, ids in batches]
    model.save_pretrained(tmp_path / "export")
    loaded = MusedModel.from_pretrained(tmp_path / "export").eval()
    assert loaded.registry == model.registry and loaded.registry.ids[-2:] == NEW_IDS
    assert loaded.subject_tokens.new is None and loaded.subject_tokens.table.shape == (7, tokens_per_subject, D)
    for (dataset, ids), expected in zip(batches, reference, strict=True):
        assert torch.equal(outputs(loaded, dataset, ids), expected)

    model.merge_new_subjects()  # in memory: the same plain layout
    assert model.subject_tokens.new is None
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for (dataset, ids), expected in zip(batches, reference, strict=True):
        assert torch.equal(outputs(model, dataset, ids), expected)


def test_state_dict_with_new_rows_loads_into_either_layout(tiny_model, tiny_recipe):
    tiny_model.add_subjects(NEW_IDS)
    trained = train_new_tokens(tiny_model, tiny_recipe)
    unfreeze(trained)  # requires_grad as in the fresh models below
    state = trained.state_dict()
    assert {"subject_tokens.table", "subject_tokens.new"} <= state.keys()
    reference = outputs(trained, "hcp", HCP_MIX)

    same_layout = model_in_mode(tiny_recipe, "two")
    same_layout.add_subjects(NEW_IDS)
    same_layout.load_state_dict(state, strict=True)
    plain = MusedModel(trained.config, trained.datasets, trained.registry)  # one (N+k)-row table
    plain.load_state_dict(state, strict=True)
    for model in (same_layout, plain):
        assert torch.equal(outputs(model.eval(), "hcp", HCP_MIX), reference)
    same_layout.load_state_dict(plain.state_dict(), strict=True)  # and a plain state dict back into `new`
    assert torch.equal(same_layout.subject_tokens.new, trained.subject_tokens.new)


def test_merging_keeps_the_old_rows_frozen(tiny_model):
    tiny_model.add_subjects(NEW_IDS)
    new = tiny_model.subject_tokens.new.detach().clone()
    freeze_for_new_subjects(tiny_model)
    tiny_model.merge_new_subjects()
    table = tiny_model.subject_tokens.table
    assert table.shape == (7, 2, D) and torch.equal(table[5:], new) and not table.requires_grad
    assert num_trainable(tiny_model) == 0
    tiny_model.merge_new_subjects()  # nothing to merge: a no-op
    assert tiny_model.subject_tokens.table is table


def test_replace_reinitialises_a_known_subject_as_new(tiny_model):
    tiny_model.eval()
    table = tiny_model.subject_tokens.table.detach().clone()
    others = ["nsd/subj01", "nsd/subj03", "hcp/100610"]
    reference = outputs(tiny_model, "nsd", others[:2])
    tiny_model.add_subjects(["nsd/subj02"], replace=True)
    assert tiny_model.registry.ids == ["nsd/subj01", "nsd/subj03", "hcp/100610", "hcp/102311", "nsd/subj02"]
    assert tiny_model.subject_tokens.table.shape == (4, 2, D)
    torch.testing.assert_close(tiny_model.subject_tokens.new[0], table[[0, 2]].mean(0), rtol=0, atol=0)
    assert torch.equal(outputs(tiny_model, "nsd", others[:2]), reference)
    assert num_trainable(tiny_model) == sum(p.numel() for p in tiny_model.parameters())  # not frozen yet
    assert len(freeze_for_new_subjects(tiny_model)) == 1 and num_trainable(tiny_model) == 2 * D


def test_named_errors(tiny_model):
    with pytest.raises(
        ValueError, match=r"subjects \['nsd/subj02'\] are already in the model's registry \(rows \[1\]\)"
    ):
        tiny_model.add_subjects(["nsd/subj09", "nsd/subj02"])
    with pytest.raises(
        ValueError,
        match=r"subjects \['bold5000/sub-01'\] belong to datasets \['bold5000'\] that the model has no tokenizer "
        r"and head for; its datasets are \['hcp', 'nsd'\]",
    ):
        tiny_model.add_subjects(["nsd/subj09", "bold5000/sub-01"])
    with pytest.raises(ValueError, match=r"listed more than once: \['nsd/subj09'\]"):
        tiny_model.add_subjects(["nsd/subj09", "nsd/subj09"])
    with pytest.raises(ValueError, match=r"init must be 'mean' or 'random'"):
        tiny_model.add_subjects(["nsd/subj09"], init="zeros")
    assert len(tiny_model.registry) == 5 and tiny_model.subject_tokens.new is None  # failed calls change nothing
    with pytest.raises(ValueError, match=r"call model\.add_subjects"):
        freeze_for_new_subjects(tiny_model)


def test_mode_none_adds_subjects_without_parameters(tiny_recipe, tmp_path):
    model = model_in_mode(tiny_recipe, "none").eval()
    names = [n for n, _ in model.named_parameters()]
    model.add_subjects(NEW_IDS)
    assert [n for n, _ in model.named_parameters()] == names and model.registry.ids[-2:] == NEW_IDS
    with pytest.raises(ValueError, match=r"mode 'none' has no per-subject parameters"):
        freeze_for_new_subjects(model)
    model.save_pretrained(tmp_path / "export")
    loaded = MusedModel.from_pretrained(tmp_path / "export").eval()
    assert loaded.registry == model.registry
    assert torch.equal(outputs(loaded, "hcp", HCP_MIX), outputs(model, "hcp", HCP_MIX))
