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
    vocab_size: int = 400,
) -> Path:
    """Write a tiny CLIPModel, tokenizer and image processor to `out_dir`; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
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
    bpe = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.decoder = decoders.BPEDecoder(suffix="</w>")
    bpe.train_from_iterator(
        list(corpus),
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], end_of_word_suffix="</w>"),
    )
    bos_id, eos_id = bpe.token_to_id(BOS), bpe.token_to_id(EOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos_id), (EOS, eos_id)]
    )
    max_len = 32
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=max_len
    )
    text = CLIPTextConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_len,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out
