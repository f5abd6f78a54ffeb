"""A tiny CLIP that loads offline through the same code path as a real checkpoint.

    build_tiny_clip("RAW/clip", corpus=["a dog on a sofa", ...], seed=0)
    CLIPModel.from_pretrained("RAW/clip"); AutoProcessor.from_pretrained("RAW/clip")

No weights can be downloaded here, so the simulated cohort and the tests carry this stand-in: a BPE
tokenizer trained in-process on the cohort's words (with CLIP's special tokens), a CLIPModel built
from a small config with seeded random weights, and a CLIPImageProcessor of matching size, saved
together in one folder. The packers load it exactly as they load openai/clip-vit-base-patch16.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["build_tiny_clip"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tiny_clip(
    out_dir: str | Path,
    corpus: Iterable[str],
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    projection_dim: int = 16,
    vocab_size: int = 4000,
) -> Path:
    """Write a tiny CLIPModel, tokenizer and image processor to `out_dir`; returns the folder."""
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

    out = Path(out_dir)
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
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out
