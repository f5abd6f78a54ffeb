"""The tiny offline CLIP loads and runs through the same transformers classes as a real checkpoint."""

from __future__ import annotations

import numpy as np
import torch

from shards_tools.tiny_clip import build_tiny_clip

WORDS = ["a dog on a sofa", "two cats and a person", "a red car on the street", "a bowl of fruit on a table"]


def test_tiny_clip_loads_through_the_auto_classes(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel

    folder = build_tiny_clip(tmp_path / "clip", WORDS * 4, seed=3)
    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("a dog on a sofa")["input_ids"]
    assert ids[0] == model.config.text_config.bos_token_id and ids[-1] == model.config.text_config.eos_token_id
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "CLIPProcessor"

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(40, 48 + i, 3), dtype=np.uint8) for i in range(3)]  # any size
    inputs = processor(images=images, text=WORDS[:3], return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    with torch.no_grad():
        first = model.vision_model(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states[1]
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert first.shape == (3, 17, 32)  # (32 / 8)^2 patches + CLS, width 32: the tiny twin of 197 x 768
    assert image.shape == text.pooler_output.shape == (3, 16)

    # Seeded: the same seed gives the same weights.
    again = CLIPModel.from_pretrained(build_tiny_clip(tmp_path / "again", WORDS * 4, seed=3))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_tiny_clip_is_byte_identical_for_the_same_corpus(tmp_path):
    a = build_tiny_clip(tmp_path / "a", WORDS * 4, seed=1)
    b = build_tiny_clip(tmp_path / "b", WORDS * 4, seed=1)
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_contrastive_training_gives_the_features_the_stimuli_content(tmp_path, monkeypatch):
    """Trained on the cohort's image-caption pairs, the high-level feature's similarity follows the stimuli's
    label similarity; with random weights, and against shuffled labels (the negative control), it does not.
    Each trained build gets its own empty cache, so both really train: seeded training gives one model."""
    from safetensors.numpy import load_file

    from shards_tools.synth.nsd import make_stimuli
    from shards_tools.synth.presets import get_preset
    from shards_tools.tiny_clip import clip_alignment

    stim = make_stimuli(get_preset("test").nsd, seed=0)  # 160 images, 12 classes, 5 captions each
    corpus = [c for caps in stim.captions for c in caps]
    args = (stim.images, stim.captions, stim.labels, stim.lowlevel)
    random = clip_alignment(build_tiny_clip(tmp_path / "random", corpus, seed=0), *args)
    built = {}
    for name in ("trained", "again"):
        monkeypatch.setenv("MUSED_FM_CACHE", str(tmp_path / f"cache-{name}"))
        built[name] = build_tiny_clip(tmp_path / name, corpus, seed=0, pairs=stim.images_and_captions)
        assert any((tmp_path / f"cache-{name}" / "tiny_clip").iterdir())  # trained here, not copied
    weights = [load_file(str(built[n] / "model.safetensors")) for n in ("trained", "again")]
    assert weights[0].keys() == weights[1].keys() and all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    trained = clip_alignment(built["trained"], *args)
    assert trained["hlv_label_r"] > 0.2 > abs(random["hlv_label_r"]) + 0.1
    assert abs(trained["hlv_label_r_shuffled"]) < 0.1 and abs(trained["llv_image_r_shuffled"]) < 0.1
    assert trained["llv_image_r"] > 0.3  # the first layer is a near-linear map of the pixels
