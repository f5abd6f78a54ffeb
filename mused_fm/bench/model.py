"""Model benchmark: fwd+bwd throughput of the flagship model against a `transformers` encoder.

    python -m mused_fm.bench model --json docs/bench_model.json

NSD path: batch 64 of 10 ROI tokens (268 features) + 2 subject tokens through the flagship trunk
(24 layers, D=512, 8 heads, MLP 2048) and the NSD head, with the CLIP-MUSED loss. Reference: a
`transformers` BertModel of the same shape (24 x 512, 8 heads, intermediate 2048, SDPA) fed 12
embeddings per sample through `inputs_embeds`, timed in the same process, in alternation.
Achieved FLOP/s are counted by torch's FlopCounterMode on one step of each model (the flagship
skips work the reference does: its last block computes only the two readout tokens), and compared
with the device's measured matmul rate (fp32 on CPU, bf16 on GPU).
HCP path: one cropped 111x127x111 volume through the 3D-CNN tokenizer (392 tokens) and the trunk.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable

import torch

from mused_fm.bench.common import time_interleaved
from mused_fm.bench.targets import Target
from mused_fm.config import recipe_from_dict
from mused_fm.flops import count_flops, matmul_peak_flops
from mused_fm.losses import clip_mused_loss
from mused_fm.machine import device_info
from mused_fm.model import build_model
from mused_fm.subject_ids import global_id

logger = logging.getLogger(__name__)

NSD_SUBJECTS = [f"subj0{i}" for i in range(1, 9)]
TARGETS = (
    Target("fraction_of_peak", ">=", 0.7, "flagship NSD fwd+bwd, share of the measured matmul peak"),
    Target("ratio", ">=", 1.25, "flagship samples/s over the same-shape BertModel's"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=64, help="NSD samples per step (default 64)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per model, alternating")
    parser.add_argument("--hcp-rounds", type=int, default=3, help="timed HCP steps (0 skips the HCP path)")
    parser.add_argument("--volume-channels", default="32,64,128,256", help="3D-CNN stage widths (HCP path)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _recipe(args: argparse.Namespace):
    channels = [int(c) for c in args.volume_channels.split(",")]
    return recipe_from_dict(
        {
            "model": {"dim": args.dim, "depth": args.depth, "heads": args.heads, "volume_channels": channels},
            "data": {
                "datasets": {
                    "nsd": {
                        "subjects": NSD_SUBJECTS,
                        "input": "roi",
                        "num_rois": 10,
                        "roi_dim": 268,
                        "num_classes": 80,
                    },
                    "hcp": {
                        "subjects": ["100610"],
                        "input": "volume",
                        "volume_shape": [111, 127, 111],
                        "num_classes": 64,
                    },
                }
            },
        },
        source="bench",
    )


def _reference_encoder(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=args.dim,
        num_hidden_layers=args.depth,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.dim,
        attn_implementation="sdpa",
    )
    return BertModel(config, add_pooling_layer=False).to(device).train()


def training_step(model, autocast, bold, rows, dataset, labels, clip_llv, clip_hlv, weights) -> Callable[[], None]:
    """One fwd+bwd of the model with the full CLIP-MUSED loss (no optimizer step)."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            out = model(bold, rows, dataset)
            loss = clip_mused_loss(out, labels, clip_llv, clip_hlv, weights).total
        loss.backward()

    return step


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 matmul is ~250x slower on CPU
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    recipe = _recipe(args)
    torch.manual_seed(0)
    model = build_model(recipe).to(device).train()
    reference = _reference_encoder(args, device)
    B, weights = args.batch, recipe.loss.for_dataset("nsd")

    bold = torch.randn(B, 10, 268, device=device)
    rows = model.subject_rows([global_id("nsd", NSD_SUBJECTS[i % 8]) for i in range(B)]).to(device)
    labels = (torch.rand(B, 80, device=device) < 0.1).to(torch.uint8)
    clip_llv, clip_hlv = torch.randn(B, 1024, device=device), torch.randn(B, 512, device=device)
    embeds = torch.randn(B, 12, args.dim, device=device)  # 10 ROI + 2 subject tokens

    ours = training_step(model, autocast, bold, rows, "nsd", labels, clip_llv, clip_hlv, weights)

    def ref() -> None:
        reference.zero_grad(set_to_none=True)
        with autocast:
            loss = reference(inputs_embeds=embeds).last_hidden_state.float().pow(2).mean()
        loss.backward()

    peak = matmul_peak_flops(device, dtype)
    flops = {"ours": count_flops(ours), "ref": count_flops(ref)}
    logger.info("timing %d alternating fwd+bwd steps of each model (batch %d)", args.rounds, B)
    seconds = time_interleaved({"ours": ours, "ref": ref}, device, rounds=args.rounds)
    result = {
        "samples_per_s": B / seconds["ours"],
        "reference_samples_per_s": B / seconds["ref"],
        "ratio": seconds["ref"] / seconds["ours"],
        "achieved_flops": flops["ours"] / seconds["ours"],
        "reference_achieved_flops": flops["ref"] / seconds["ref"],
        "matmul_peak_flops": peak,
        "fraction_of_peak": flops["ours"] / seconds["ours"] / peak,
        "reference_fraction_of_peak": flops["ref"] / seconds["ref"] / peak,
        "flops_per_sample": flops["ours"] / B,
        "reference_flops_per_sample": flops["ref"] / B,
        "precision": str(dtype).removeprefix("torch."),
        "shape": {"batch": B, "tokens": 12, "dim": args.dim, "depth": args.depth, "heads": args.heads},
        "reference": "transformers.BertModel(inputs_embeds), SDPA attention, same shape",
        **device_info(device),
    }
    if args.hcp_rounds > 0:
        result["hcp"] = _hcp_path(model, recipe, device, autocast, peak, args.hcp_rounds)
    return result


def _hcp_path(model, recipe, device, autocast, peak: float, rounds: int) -> dict:
    volume = torch.randn(1, 111, 127, 111, device=device)
    row = model.subject_rows(["hcp/100610"]).to(device)
    labels = torch.zeros(1, 64, dtype=torch.uint8, device=device)
    clip_llv, clip_hlv = torch.randn(1, 1024, device=device), torch.randn(1, 512, device=device)
    weights = recipe.loss.for_dataset("hcp")
    step = training_step(model, autocast, volume, row, "hcp", labels, clip_llv, clip_hlv, weights)
    flops = count_flops(step)
    seconds = time_interleaved({"hcp": step}, device, rounds=rounds, warmup=1)["hcp"]
    return {
        "samples_per_s": 1 / seconds,
        "seconds_per_sample": seconds,
        "tokens": model.tokenizers["hcp"].num_tokens,
        "flops_per_sample": flops,
        "achieved_flops": flops / seconds,
        "fraction_of_peak": flops / seconds / peak,
        "volume_shape": [111, 127, 111],
        "volume_channels": list(recipe.model.volume_channels),
    }


def report(result: dict) -> str:
    lines = [
        f"device {result['device']} ({result.get('gpu') or result.get('cpu_model', '')}), "
        f"{result['threads']} threads, {result['precision']}",
        f"matmul peak             {result['matmul_peak_flops'] / 1e9:8.1f} GFLOP/s",
        f"flagship NSD fwd+bwd    {result['samples_per_s']:8.2f} samples/s  "
        f"{result['achieved_flops'] / 1e9:6.1f} GFLOP/s  {100 * result['fraction_of_peak']:5.1f}% of peak",
        f"BertModel same shape    {result['reference_samples_per_s']:8.2f} samples/s  "
        f"{result['reference_achieved_flops'] / 1e9:6.1f} GFLOP/s  "
        f"{100 * result['reference_fraction_of_peak']:5.1f}% of peak",
        f"ratio                   {result['ratio']:8.3f}",
    ]
    if "hcp" in result:
        h = result["hcp"]
        lines.append(
            f"HCP volume fwd+bwd      {h['samples_per_s']:8.3f} samples/s  ({h['tokens']} tokens, "
            f"{h['flops_per_sample'] / 1e9:.0f} GFLOP/sample, {100 * h['fraction_of_peak']:.1f}% of peak)"
        )
    return "\n".join(lines)
