"""CLIP features follow the paper's recipe; the llv reduction keeps the similarity structure; cache works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shards_tools.clip_features import ClipFeaturizer, ClipStore, LlvBasis, postprocess, similarity_fidelity
from shards_tools.tiny_clip import build_tiny_clip

WORDS = ["a dog on a sofa", "two cats and a person", "a red car on the street", "a bowl of fruit on a table"]


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    return ClipFeaturizer(build_tiny_clip(tmp_path_factory.mktemp("clip"), WORDS * 4, seed=3), batch_size=4)


def stimuli(n: int, seed: int = 0) -> dict[str, tuple[np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    return {f"img{i:03d}": (rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8), WORDS[i % 4]) for i in range(n)}


def test_features_follow_the_papers_recipe(featurizer):
    data = stimuli(6)
    images, texts = zip(*data.values(), strict=True)
    llv, hlv = featurizer.encode(images, texts)
    assert llv.shape == (6, 17 * 32) and hlv.shape == (6, 16)
    model, processor = featurizer.model, featurizer.processor
    with torch.no_grad():  # independent reference through the public API, one stimulus at a time
        for i in (0, 5):
            inputs = processor(images=[images[i]], text=[texts[i]], return_tensors="pt", padding=True)
            image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
            text = model.get_text_features(input_ids=inputs["input_ids"]).pooler_output
            mean = ((image + text) / 2).clamp(-1.5, 1.5)
            np.testing.assert_allclose(hlv[i], (mean / mean.norm()).numpy()[0], rtol=1e-4, atol=1e-6)
            first = model.vision_model(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states[1]
            full = first.flatten(1).clamp(-1.5, 1.5)
            np.testing.assert_allclose(llv[i], (full / full.norm()).numpy()[0], rtol=1e-4, atol=1e-6)


def test_fitted_reduction_keeps_similarities_where_a_random_one_does_not():
    rng = np.random.default_rng(0)
    # A shared component plus a low-rank per-stimulus part and noise, like first-layer CLIP tokens.
    shared, factors = rng.standard_normal((1, 3000)), rng.standard_normal((40, 3000))
    full = (
        shared + 0.5 * rng.standard_normal((300, 40)) @ factors / np.sqrt(40) + 0.05 * rng.standard_normal((300, 3000))
    )
    full = postprocess(torch.tensor(full)).numpy()
    fit, held = full[:240], full[240:]
    reduced = LlvBasis.fit(fit, 64).reduce(held)
    assert reduced.shape == (60, 64)
    assert similarity_fidelity(held, reduced) > 0.999  # measured 0.9996
    random = held @ rng.standard_normal((3000, 64))
    assert similarity_fidelity(held, random) < 0.8  # what a random projection of the same width keeps: 0.71


def test_basis_narrower_than_dim_is_zero_padded():
    x = np.random.default_rng(0).standard_normal((5, 30))
    basis = LlvBasis.fit(x, 12)
    assert basis.basis.shape == (5, 30)  # rank 5
    out = basis.reduce(x)
    assert out.shape == (5, 12) and np.all(out[:, 5:] == 0)
    assert similarity_fidelity(x, out) == pytest.approx(1.0, abs=1e-9)  # full rank: exact


def test_store_caches_and_resumes(featurizer, tmp_path):
    data = stimuli(30)
    calls = []

    def load(i):
        calls.append(i)
        return data[i]

    store = ClipStore(str(tmp_path), featurizer, llv_dim=24, fit_samples=20, seed=1)
    first = store.features(list(data)[:25], load)
    assert len(first) == 25 and first["img003"][0].shape == (24,) and first["img003"][0].dtype == np.float16
    assert -1.0 <= store.spec["llv"]["fidelity_r"] <= 1.0 and store.spec["llv"]["fidelity_stimuli"] == 4
    calls.clear()
    again = ClipStore(str(tmp_path), featurizer, llv_dim=24, fit_samples=20, seed=1)  # a later pack
    more = again.features(list(data), load)
    assert sorted(calls) == [f"img{i:03d}" for i in range(25, 30)]  # only the new stimuli are computed
    for i in first:
        np.testing.assert_array_equal(more[i][0], first[i][0])
    with pytest.raises(ValueError, match=r"with --llv-dim 24; this pack asks for .* with 32"):
        ClipStore(str(tmp_path), featurizer, llv_dim=32)


def test_caption_choice_is_the_papers_and_seeded(featurizer):
    image = stimuli(1)["img000"][0]
    picks = {}
    for seed in range(6):
        _, hlv = featurizer.encode([image], [WORDS], seeds=[seed])
        picks[seed] = hlv[0]
    singles = {w: featurizer.encode([image], [w])[1][0] for w in WORDS}  # each caption alone
    with torch.no_grad():
        inputs = featurizer.processor(images=[image], text=WORDS, return_tensors="pt", padding=True)
        image_emb = featurizer.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_emb = featurizer.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    sims = torch.nn.functional.cosine_similarity(text_emb, image_emb).numpy()
    eligible = {WORDS[i] for i in np.flatnonzero(sims >= sims.max() / 2)} if sims.max() > 0 else {WORDS[sims.argmax()]}
    for hlv in picks.values():  # every pick is one of the eligible captions, as the paper chooses
        chosen = [w for w, single in singles.items() if np.allclose(single, hlv, atol=1e-5)]
        assert len(chosen) == 1 and chosen[0] in eligible
    np.testing.assert_array_equal(
        featurizer.encode([image], [WORDS], seeds=[3])[1], featurizer.encode([image], [WORDS], seeds=[3])[1]
    )


def test_a_path_that_is_not_a_clip_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"--clip-model '.*nothing' does not load as a transformers CLIP model"):
        ClipFeaturizer(tmp_path / "nothing")


def test_clip_features_command_caches_for_later_packs(featurizer, tmp_path):
    from PIL import Image

    from shards_tools.__main__ import main as cli

    lines = ["stimulus\timage\ttext"]
    for i, (image, text) in enumerate(stimuli(12).values()):
        Image.fromarray(image).save(tmp_path / f"s{i}.png")
        lines.append(f"s{i}\ts{i}.png\t{text}")
    (tmp_path / "stimuli.tsv").write_text("\n".join(lines) + "\n")
    argv = [
        "clip-features",
        "--stimuli",
        str(tmp_path / "stimuli.tsv"),
        "--clip-model",
        featurizer.name,
        "--out",
        str(tmp_path / "out"),
        "--llv-dim",
        "8",
    ]
    assert cli(argv) == 0
    with np.load(tmp_path / "out/clip/features.npz") as f:
        assert sorted(f["ids"].tolist()) == sorted(f"s{i}" for i in range(12))
        assert f["llv"].shape == (12, 8) and f["hlv"].dtype == np.float16
    store = ClipStore(str(tmp_path / "out"), featurizer, llv_dim=8)  # a pack into the same output reuses them
    assert store.features(["s3"], lambda i: pytest.fail("recomputed a cached stimulus"))["s3"][0].shape == (8,)


def test_store_resumes_after_an_interruption(featurizer, tmp_path):
    data = stimuli(30)
    store = ClipStore(str(tmp_path), featurizer, llv_dim=16, fit_samples=20, seed=2)
    calls = []

    def crash_after_fit(i):
        if len(calls) >= 20:  # the fit sample is encoded, then the run dies
            raise KeyboardInterrupt
        calls.append(i)
        return data[i]

    with pytest.raises(KeyboardInterrupt):
        store.features(list(data), crash_after_fit)
    resumed = ClipStore(str(tmp_path), featurizer, llv_dim=16, fit_samples=20, seed=2)
    assert len(resumed.cache) == 20  # the fit sample's features were saved with the basis
    out = resumed.features(list(data), lambda i: data[i])
    assert len(out) == 30
