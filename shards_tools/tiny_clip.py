"""A tiny CLIP that loads offline through the same code path as a real checkpoint.

    build_tiny_clip("RAW/clip", corpus=["a dog on a sofa", ...], seed=0)
    CLIPModel.from_pretrained("RAW/clip"); AutoProcessor.from_pretrained("RAW/clip")

No weights can be downloaded here, so the simulated cohort and the tests carry this stand-in: a
word-level tokenizer built in-process on the cohort's words (with CLIP's special tokens), a CLIPModel
built from a small config with seeded weights, and a CLIPImageProcessor of matching size, saved
together in one folder. The packers load it exactly as they load openai/clip-vit-base-patch16.

Given image-caption pairs, the model is then trained as CLIP was (Radford et al. 2021): the symmetric
contrastive (InfoNCE) loss between the image and text embeddings of a batch, with a learnt temperature,
seeded and in process (a few hundred steps, seconds on 2 cores). Like the real model, its image and text
embeddings then share a space in which images of similar content lie close; with random weights (no
pairs) they carry no semantics at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

__all__ = ["build_tiny_clip", "clip_alignment", "train_contrastive"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CACHE_VERSION = 1  # bump when the training changes: cached models of the old recipe are then not reused


def build_tiny_clip(
    out_dir: str | Path,
    corpus: Iterable[str],
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    projection_dim: int = 16,
    vocab_size: int = 4000,
    pairs: tuple[np.ndarray, list[list[str]]] | None = None,
    steps: int = 600,
) -> Path:
    """Write a tiny CLIPModel, tokenizer and image processor to `out_dir`; returns the folder.

    Args:
        pairs: (images (N, H, W, 3) uint8, captions: N lists of strings): train the model contrastively on
            them for `steps` steps first; None leaves the seeded random weights.

    A trained model is cached under $MUSED_FM_CACHE (default ~/.cache/mused_fm)/tiny_clip/<key>, the key a
    hash of every input, so the tests' many cohorts of one preset and seed train it once.
    """
    args = (list(corpus), seed, image_size, patch_size, width, projection_dim, vocab_size, steps)
    if pairs is None:
        return _build(Path(out_dir), *args, None)
    cached = _cache_dir(args, pairs)
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            _build(Path(tmp) / "clip", *args, pairs)
            try:
                os.replace(Path(tmp) / "clip", cached)  # appears whole or not at all
            except OSError:
                if not cached.exists():  # not a concurrent builder that got there first
                    raise
    shutil.copytree(cached, out_dir, dirs_exist_ok=True)
    return Path(out_dir)


def _cache_dir(args: tuple, pairs: tuple[np.ndarray, list[list[str]]]) -> Path:
    import transformers

    digest = hashlib.sha256(repr((CACHE_VERSION, transformers.__version__, torch.__version__, args)).encode())
    digest.update(np.ascontiguousarray(pairs[0]).tobytes())
    digest.update(repr(pairs[1]).encode())
    root = Path(os.environ.get("MUSED_FM_CACHE") or Path.home() / ".cache" / "mused_fm")
    return root / "tiny_clip" / digest.hexdigest()[:24]


def _build(out, corpus, seed, image_size, patch_size, width, projection_dim, vocab_size, steps, pairs) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
        PreTrainedTokenizerFast,
    )

    out.mkdir(parents=True, exist_ok=True)
    # A word-level vocabulary in sorted order: byte-identical for the same corpus (BPE training breaks
    # ties between equally frequent merges differently from run to run).
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in corpus for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))})
    vocab = {token: i for i, token in enumerate([BOS, EOS, *words[: max(vocab_size - 2, 0)]])}
    bos_id, eos_id = vocab[BOS], vocab[EOS]
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    word_level.normalizer, word_level.pre_tokenizer = normalizer, pre
    word_level.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos_id), (EOS, eos_id)]
    )
    max_len = 32
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=max_len,
    )
    trunk = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = CLIPTextConfig(
        vocab_size=word_level.get_vocab_size(),
        max_position_embeddings=max_len,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        **trunk,
    )
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **trunk)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    if pairs is not None:
        train_contrastive(model, processor, *pairs, seed=seed, steps=steps)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def train_contrastive(
    model, processor, images: np.ndarray, captions: list[list[str]], seed: int, steps: int, batch_size: int = 64
) -> list[float]:
    """CLIP's symmetric InfoNCE on (image, one of its captions) pairs, in place; returns the loss per step.

    Images are preprocessed once (N, 3, S, S); each step draws a batch of distinct images and one caption
    of each, both from a generator seeded with `seed`, so the weights are a function of the inputs.
    """
    if len(images) != len(captions) or len(images) < 2:
        raise ValueError(f"{len(images)} images and {len(captions)} caption lists; need matching, at least 2.")
    rng = np.random.default_rng(seed)
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]  # (N, 3, S, S)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
        texts = [captions[i][int(rng.integers(len(captions[i])))] for i in idx]
        tokens = processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        out = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=pixels[idx],
            return_loss=True,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


def clip_alignment(
    clip_dir: str | Path,
    images: np.ndarray,
    captions: list[list[str]],
    labels_NK: np.ndarray,
    lowlevel_NF: np.ndarray,
    seed: int = 0,
    max_stimuli: int = 500,
) -> dict[str, float]:
    """How much the CLIP's features mean, on (up to `max_stimuli` of) the stimuli, as packers compute them.

    hlv_label_r: r between the high-level feature's cosine similarity matrix and the stimuli's label
    similarity (cosine of the multi-hot vectors); llv_image_r: r between the low-level feature's and the
    images' low-level statistics' (cosine of the standardised statistics). The `_shuffled` twins pair the
    features with another stimulus's labels or statistics (one seeded permutation): the negative control,
    near 0 whatever the model.
    """
    from shards_tools.clip_features import ClipFeaturizer, similarity_fidelity

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=min(max_stimuli, len(images)), replace=False))
    llv, hlv = ClipFeaturizer(clip_dir).encode(images[chosen], [captions[i] for i in chosen], seeds=chosen)
    labels, stats = labels_NK[chosen].astype(np.float64), lowlevel_NF[chosen].astype(np.float64)
    perm = rng.permutation(len(chosen))
    return {  # similarity_fidelity: r between two feature sets' off-diagonal cosine similarities
        "stimuli": len(chosen),
        "hlv_label_r": similarity_fidelity(hlv, labels),
        "hlv_label_r_shuffled": similarity_fidelity(hlv, labels[perm]),
        "llv_image_r": similarity_fidelity(llv, stats),
        "llv_image_r_shuffled": similarity_fidelity(llv, stats[perm]),
    }
