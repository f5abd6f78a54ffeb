"""Model contracts: shapes, gradient coverage, subject-row isolation, baselines, export round trip."""

from __future__ import annotations

import pytest
import torch

from mused_fm.config import recipe_from_dict
from mused_fm.losses import clip_mused_loss
from mused_fm.model import MusedModel, SubjectRegistry, UnknownSubjectError, build_model
from mused_fm.model.tokenizers import VolumeTokenizer
from mused_fm.model.transformer import Trunk

from conftest import TINY, make_batch

NSD_IDS = ["nsd/subj01", "nsd/subj03", "nsd/subj01", "nsd/subj03"]  # subj02 absent from the batch
HCP_IDS = ["hcp/100610", "hcp/100610", "hcp/100610"]  # 102311 absent


def loss_of(model, recipe, dataset, ids, seed=0):
    batch = make_batch(model, dataset, ids, seed)
    out = model(batch["bold"], batch["rows"], dataset)
    return clip_mused_loss(
        out, batch["labels"], batch["clip_llv"], batch["clip_hlv"], recipe.loss.for_dataset(dataset)
    ).total


def test_named_outputs_have_the_expected_shapes(tiny_model):
    for dataset, ids, classes in (("nsd", NSD_IDS, 11), ("hcp", HCP_IDS, 6)):
        batch = make_batch(tiny_model, dataset, ids)
        out = tiny_model(batch["bold"], batch["rows"], dataset)
        B = len(ids)
        assert out.logits.shape == (B, classes)
        assert out.z_llv.shape == out.z_hlv.shape == (B, 24)


def test_hcp_volume_gives_392_tokens():
    tokenizer = VolumeTokenizer((111, 127, 111), dim=16, channels=(2, 2, 2, 2))
    assert tokenizer.grid == (7, 8, 7) and tokenizer.num_tokens == 392
    assert tokenizer(torch.randn(1, 111, 127, 111)).shape == (1, 392, 16)


def test_every_parameter_receives_gradient(tiny_model, tiny_recipe):
    loss = loss_of(tiny_model, tiny_recipe, "nsd", NSD_IDS) + loss_of(tiny_model, tiny_recipe, "hcp", HCP_IDS)
    loss.backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("mode", ["two", "one"])
def test_only_the_batch_subjects_token_rows_receive_gradient(tiny_recipe, mode):
    tiny_recipe.model.subject_tokens = mode
    model = build_model(tiny_recipe)
    loss_of(model, tiny_recipe, "nsd", NSD_IDS).backward()
    grad = model.subject_tokens.table.grad
    rows = {sid: model.registry.rows([sid]).item() for sid in model.registry.ids}
    used = [rows["nsd/subj01"], rows["nsd/subj03"]]
    unused = [r for sid, r in rows.items() if sid not in NSD_IDS]
    assert all(grad[r].abs().sum() > 0 for r in used)
    assert all(grad[r].abs().sum() == 0 for r in unused)


def test_subject_token_modes_are_the_papers_baselines(tiny_recipe):
    shapes = {}
    for mode in ("two", "one", "none"):
        tiny_recipe.model.subject_tokens = mode
        tokens = build_model(tiny_recipe).subject_tokens
        shapes[mode] = {n: tuple(p.shape) for n, p in tokens.named_parameters()}
    assert shapes["two"] == {"table": (5, 2, 24)}  # CLIP-MUSED: (n_subjects, 2, D)
    assert shapes["one"] == {"table": (5, 1, 24), "shared": (1, 2, 24)}  # MS-EMB
    assert shapes["none"] == {"shared": (1, 2, 24)}  # MS-SMODEL


@pytest.mark.parametrize("mode", ["two", "one", "none"])
def test_every_mode_can_be_flop_counted_under_no_grad(tiny_recipe, mode):
    """The trainer counts FLOPs under no_grad before step 0 (train/loop.py); mode none once crashed there."""
    from mused_fm.flops import count_flops

    tiny_recipe.model.subject_tokens = mode
    model = build_model(tiny_recipe).eval()
    batch = make_batch(model, "nsd", ["nsd/subj01"] * 2)
    with torch.no_grad():
        assert count_flops(lambda: model(batch["bold"], batch["rows"], "nsd")) > 0


def test_without_subject_tokens_the_subject_does_not_matter(tiny_recipe):
    tiny_recipe.model.subject_tokens = "none"
    model = build_model(tiny_recipe).eval()
    batch = make_batch(model, "nsd", ["nsd/subj01"] * 3)
    same = model(batch["bold"], batch["rows"], "nsd").logits
    other = model(batch["bold"], model.subject_rows(["nsd/subj02"] * 3), "nsd").logits
    torch.testing.assert_close(same, other)
    tiny_recipe.model.subject_tokens = "two"
    model = build_model(tiny_recipe).eval()
    assert not torch.allclose(
        model(batch["bold"], batch["rows"], "nsd").logits,
        model(batch["bold"], model.subject_rows(["nsd/subj02"] * 3), "nsd").logits,
    )


def test_readout_path_equals_the_full_trunk():
    torch.manual_seed(0)
    trunk = Trunk(dim=24, depth=3, heads=3).double()
    x = torch.randn(4, 9, 24, dtype=torch.float64)
    torch.testing.assert_close(trunk(x, num_readout=2), trunk(x)[:, :2])


def test_attention_probabilities_are_what_sdpa_applies():
    torch.manual_seed(0)
    trunk = Trunk(dim=24, depth=2, heads=3).double().eval()
    x = torch.randn(4, 9, 24, dtype=torch.float64)
    probs_BHNL = trunk.readout_attention(x, num_readout=2)
    assert probs_BHNL.shape == (4, 3, 2, 9)
    torch.testing.assert_close(probs_BHNL.sum(-1), torch.ones(4, 3, 2, dtype=torch.float64))
    # Independent check: probabilities @ v through the out-projection equals the block's SDPA output.
    h = trunk.blocks[0](x)
    last = trunk.blocks[-1]
    v_BHLK = torch.nn.functional.linear(last.norm1(h), last.attn.qkv.weight[48:], last.attn.qkv.bias[48:])
    v_BHLK = v_BHLK.view(4, 9, 3, 8).transpose(1, 2)
    manual = last.attn.proj((probs_BHNL @ v_BHLK).transpose(1, 2).reshape(4, 2, 24))
    torch.testing.assert_close(manual, last.attn(last.norm1(h), num_queries=2))


def test_model_readout_attention_covers_readout_and_dataset_tokens(tiny_model):
    batch = make_batch(tiny_model, "nsd", NSD_IDS)
    attn = tiny_model.readout_attention(batch["bold"], batch["rows"], "nsd")
    assert attn.shape == (len(NSD_IDS), 2, 2 + tiny_model.tokenizers["nsd"].num_tokens)
    torch.testing.assert_close(attn.sum(-1), torch.ones(len(NSD_IDS), 2))


def test_single_subject_training_steps_without_nan():
    delta = {
        "model": TINY["model"],
        "data": {"datasets": {"nsd": {**TINY["data"]["datasets"]["nsd"], "subjects": ["subj01"]}}},
    }
    recipe = recipe_from_dict(delta)
    torch.manual_seed(0)
    model = build_model(recipe)
    assert model.registry.ids == ["nsd/subj01"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = loss_of(model, recipe, "nsd", ["nsd/subj01"] * 6, seed=0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the same batch five times: the loss must fall


def test_named_errors(tiny_model):
    with pytest.raises(UnknownSubjectError, match=r"'nsd/subj09' \(in shard-000003\.tar\) is not in the model"):
        tiny_model.subject_rows(["nsd/subj01", "nsd/subj09"], where="shard-000003.tar")
    with pytest.raises(ValueError, match=r"not of dataset 'nsd'"):
        tiny_model.subject_rows(["hcp/100610"], "nsd")
    with pytest.raises(ValueError, match=r"bold of shape \(B, 5, 7\), got \(2, 5, 8\)"):
        tiny_model(torch.randn(2, 5, 8), tiny_model.subject_rows(["nsd/subj01"] * 2), "nsd")
    with pytest.raises(ValueError, match=r"no dataset 'bold5000'"):
        tiny_model(torch.randn(2, 5, 7), tiny_model.subject_rows(["nsd/subj01"] * 2), "bold5000")


def test_build_model_needs_subjects_and_class_counts(tiny_recipe):
    with pytest.raises(ValueError, match=r"no subjects"):
        build_model(recipe_from_dict({"data": {"datasets": {"nsd": {}}}}))
    tiny_recipe.data.datasets["hcp"].num_classes = 0
    with pytest.raises(ValueError, match=r"data\.datasets\.hcp\.num_classes is 0"):
        build_model(tiny_recipe)
    with pytest.raises(ValueError, match=r"datasets \['bids'\] that the recipe's data\.datasets"):
        build_model(tiny_recipe, ["nsd/subj01", "bids/sub-01"])


def test_registry():
    reg = SubjectRegistry(["nsd/subj01", "hcp/100610"])
    assert reg.rows(["hcp/100610", "nsd/subj01"]).tolist() == [1, 0]
    assert reg.datasets() == ["nsd", "hcp"]
    grown = reg.extended(["nsd/subj08"])
    assert grown.rows(["nsd/subj01", "nsd/subj08"]).tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"listed more than once: \['nsd/subj01'\]"):
        SubjectRegistry(["nsd/subj01", "nsd/subj01"])
    with pytest.raises(ValueError, match=r"'<dataset>/<name>'"):
        SubjectRegistry(["subj01"])


def test_save_pretrained_reloads_to_identical_outputs(tiny_model, tmp_path):
    tiny_model.train()
    for dataset, ids in (("nsd", NSD_IDS), ("hcp", HCP_IDS)):  # move BatchNorm running statistics
        batch = make_batch(tiny_model, dataset, ids, seed=1)
        tiny_model(batch["bold"], batch["rows"], dataset)
    tiny_model.eval()
    tiny_model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "README.md",  # the model card
        "config.json",
        "model.safetensors",
        "registry.json",
    ]
    loaded = MusedModel.from_pretrained(tmp_path / "export").eval()
    assert loaded.registry == tiny_model.registry
    for dataset, ids in (("nsd", NSD_IDS), ("hcp", HCP_IDS)):
        batch = make_batch(tiny_model, dataset, ids, seed=2)
        a = tiny_model(batch["bold"], batch["rows"], dataset)
        b = loaded(batch["bold"], batch["rows"], dataset)
        for name in ("logits", "z_llv", "z_hlv"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_from_pretrained_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        MusedModel.from_pretrained(tmp_path)


def test_a_truncated_export_is_a_named_error(tiny_model, tmp_path):
    from mused_fm.errors import CheckpointError

    tiny_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors cannot be read .* damaged or incomplete"):
        MusedModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"format": ')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        MusedModel.from_pretrained(tmp_path)
