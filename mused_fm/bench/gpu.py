"""GPU check: what a first run on a GPU must show, in a few minutes on one GPU (`make gpu-check`).

    python -m mused_fm.bench gpu --json docs/bench_gpu.json          # on a GPU machine (bf16)
    python -m mused_fm.bench gpu --device cpu --reduced --json X     # its CPU twin (CI): tiny sizes, fp32

1. device facts (name, memory, CUDA, torch, DeepSpeed);
2. flagship fwd+bwd throughput at the NSD shape (10 ROI tokens of 268) for several micro-batches, and the
   HCP volume path (111x127x111) at the largest batch that fits: samples/s, FLOP/s, MFU against the
   datasheet's dense bf16 peak (the measured matmul rate where the GPU is not in the table);
3. a flagship training run on shards written here by the project's writer at the paper's shapes (random
   arrays: speed does not depend on them), streamed from local disk by the real loader: samples/s, data-wait
   share, MFU, peak memory; then a resume of that run and a ZeRO-3 run of a few steps;
4. token-only adaptation of a subject held out of that run, every frozen weight bit-identical afterwards;
5. the run's export evaluated in fp32 on the CPU against the same export evaluated on the device in the
   run's precision: agreement within bf16 tolerance.
Shape legend: B batch, R ROIs, F features per ROI.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mused_fm.bench.model import training_step
from mused_fm.bench.targets import Target
from mused_fm.config import recipe_from_dict
from mused_fm.data.schema import make_sample
from mused_fm.data.writer import DatasetInfo, DatasetWriter
from mused_fm.flops import count_flops, matmul_peak_flops
from mused_fm.machine import device_info
from mused_fm.model import build_model, load_export
from mused_fm.subject_ids import global_id

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), matched against the device name.
DATASHEET_BF16 = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "A100": 312.0e12, "L40S": 362.05e12}
SIZES = {
    "full": {
        "model": {"dim": 512, "depth": 24, "heads": 8, "volume_channels": [32, 64, 128, 256]},
        "roi": (10, 268),
        "volume": (111, 127, 111),
        "batches": (64, 512, 4096),
        "hcp_batches": (1, 2, 4, 8, 16, 32, 64),
        "samples": {"nsd": 4096, "hcp": 192},  # per subject
        "steps": 300,
        "micro_batch": 64,
        "zero3_steps": 10,
        "adapt_steps": 40,
        "workers": -1,
    },
    "reduced": {
        "model": {"dim": 32, "depth": 2, "heads": 2, "volume_channels": [4, 8, 8, 8]},
        "roi": (10, 16),
        "volume": (24, 28, 24),
        "batches": (8, 32),
        "hcp_batches": (1, 2, 4),
        "samples": {"nsd": 96, "hcp": 48},
        "steps": 6,
        "micro_batch": 8,
        "zero3_steps": 2,
        "adapt_steps": 4,
        "workers": 0,
    },
}
NSD_TRAINED, NSD_HELD_OUT, HCP_SUBJECTS = ["subj01", "subj02", "subj03"], "subj04", ["100610", "102311"]
TARGETS = (
    Target("mfu_best", ">=", 0.40, "flagship NSD fwd+bwd at its best micro-batch, MFU against the datasheet bf16 peak"),
    Target("data_wait", "<=", 0.05, "data-wait share of the flagship training run"),
    Target("epoch_seconds", "<=", 10.0, "an epoch of eight NSD subjects (240,000 samples) at the best samples/s"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reduced", action="store_true", help="tiny sizes: the CPU twin that CI runs")
    parser.add_argument("--workdir", help="where shards and runs go (default: a new temporary folder)")


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    size = SIZES["reduced" if args.reduced else "full"]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mused-gpu-check-"))
    result: dict = {"measured": True, "reduced": bool(args.reduced), "facts": facts(device), "workdir": str(work)}
    peak, peak_source = _peak(device)
    result["peak_flops"], result["peak_source"] = peak, peak_source
    started = time.monotonic()
    result["throughput"] = throughput(size, device, peak)
    best = max(result["throughput"]["nsd"], key=lambda r: r["samples_per_s"])
    urls = write_shards(work / "shards", size)
    result["train"] = train_runs(size, urls, work / "runs", device)
    # The targets' figures: at top level only from a GPU at full size (the CPU twin's would read as misses).
    figures = {"mfu_best": best["mfu"], "epoch_seconds": 240_000 / best["samples_per_s"]}
    figures["data_wait"] = result["train"]["data_wait"]
    if device.type == "cuda" and not args.reduced:
        result.update(figures)
    else:
        result["twin_figures"] = figures
    export = work / "runs" / "flagship" / "export"
    result["adapt"] = adapt_held_out(size, export, urls["nsd"], work / "adapt")
    result["export_eval"] = export_agreement(export, urls["nsd"], device)
    result["seconds"] = time.monotonic() - started
    return result


def facts(device: torch.device) -> dict:
    from mused_fm.train.engine import DEEPSPEED_VERSION  # the one module that imports deepspeed

    info = {**device_info(device), "deepspeed": DEEPSPEED_VERSION, "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}")
    return info


def _peak(device: torch.device) -> tuple[float, str]:
    """The FLOP/s MFU is measured against: the datasheet's dense bf16 peak, else a measured matmul rate."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in DATASHEET_BF16.items():  # "H100 PCIe" before "H100"
            if key in name:
                return flops, f"datasheet dense bf16 ({key})"
        return matmul_peak_flops(device, torch.bfloat16), "measured bf16 matmul (GPU not in the datasheet table)"
    return matmul_peak_flops(device, torch.float32), "measured fp32 matmul (CPU)"


def _model_recipe(size: dict, urls: dict[str, str] | None = None, **sections) -> dict:
    R, F = size["roi"]
    nsd = {"input": "roi", "num_rois": R, "roi_dim": F, "num_classes": 80, "subjects": NSD_TRAINED}
    hcp = {"input": "volume", "volume_shape": list(size["volume"]), "num_classes": 16, "subjects": HCP_SUBJECTS}
    if urls:
        nsd["url"], hcp["url"] = urls["nsd"], urls["hcp"]
    return {"model": dict(size["model"]), "data": {"datasets": {"nsd": nsd, "hcp": hcp}}, **sections}


def _timed(step, device: torch.device, rounds: int = 3, warmup: int = 3) -> float:
    """Median seconds of `step` after `warmup` calls (a compiled model compiles over its first few)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(size: dict, device: torch.device, peak: float) -> dict:
    """fwd+bwd with the CLIP-MUSED loss (no optimizer step), bf16 autocast on CUDA, fp32 on CPU."""
    recipe = recipe_from_dict(_model_recipe(size), source="gpu-check")
    torch.manual_seed(0)
    model = build_model(recipe).to(device).train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step_of(dataset: str, B: int, net: torch.nn.Module = model):
        spec = model.datasets[dataset]
        shape = (spec.num_rois, spec.roi_dim) if spec.input == "roi" else tuple(spec.volume_shape)
        names = NSD_TRAINED if dataset == "nsd" else HCP_SUBJECTS
        bold = torch.randn(B, *shape, device=device)
        rows = net.subject_rows([global_id(dataset, names[i % len(names)]) for i in range(B)]).to(device)
        labels = (torch.rand(B, spec.num_classes, device=device) < 0.1).to(torch.uint8)
        llv, hlv = torch.randn(B, 64, device=device), torch.randn(B, 32, device=device)
        return training_step(net, autocast, bold, rows, dataset, labels, llv, hlv, recipe.loss.for_dataset(dataset))

    def measure(dataset: str, B: int, net: torch.nn.Module = model, flops: int | None = None) -> dict:
        step = step_of(dataset, B, net)
        flops = flops or count_flops(step)  # counted eagerly: a compiled step does the same work
        seconds = _timed(step, device)
        row = {"batch": B, "samples_per_s": B / seconds, "flops_per_s": flops / seconds, "mfu": flops / seconds / peak}
        logger.info(
            "%s fwd+bwd, batch %d: %.0f samples/s, MFU %.1f%%", dataset, B, row["samples_per_s"], 100 * row["mfu"]
        )
        return row

    result = {"nsd": [measure("nsd", B) for B in size["batches"]], "hcp": None}
    # train.compile's default: compiled trunk blocks against eager at the best NSD batch (on when faster).
    eager = max(result["nsd"], key=lambda r: r["samples_per_s"])
    compiled_model = copy.deepcopy(model)
    compiled_model.trunk.compile_blocks()
    flops = round(eager["flops_per_s"] * eager["batch"] / eager["samples_per_s"])
    compiled = measure("nsd", eager["batch"], compiled_model, flops)
    result["compiled"] = {**compiled, "speedup": compiled["samples_per_s"] / eager["samples_per_s"]}
    del compiled_model
    for B in size["hcp_batches"]:  # the largest HCP batch that fits
        try:
            result["hcp"] = measure("hcp", B)
        except torch.OutOfMemoryError:
            break
        finally:
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return result


def write_shards(out: Path, size: dict) -> dict[str, str]:
    """NSD-shaped ROI shards (three trained subjects and one held out) and HCP-shaped volume shards, written by
    the project's writer with random arrays: train, val and test splits, one stimulus per sample."""
    rng = np.random.default_rng(0)
    R, F = size["roi"]
    volume = size["volume"]
    common = {"clip": {}, "llv_dim": 64, "hlv_dim": 32}
    infos = {
        "nsd": DatasetInfo(
            dataset="nsd",
            kind="roi",
            classes=[f"c{i}" for i in range(80)],
            rois=[{"name": f"r{i}"} for i in range(R)],
            roi_dim=F,
            **common,
        ),
        "hcp": DatasetInfo(
            dataset="hcp", kind="volume", classes=[f"w{i}" for i in range(16)], volume_shape=list(volume), **common
        ),
    }
    subjects = {"nsd": [*NSD_TRAINED, NSD_HELD_OUT], "hcp": HCP_SUBJECTS}
    urls = {}
    for name, info in infos.items():
        url = str(out / name)
        writer = DatasetWriter(url, info, maxcount=256, tool="mused_fm.bench gpu")
        n = size["samples"][name]
        mask = np.ones(int(np.prod(volume)), dtype=bool)  # the whole box: the largest input a volume can be
        for subject in subjects[name]:
            sid = global_id(name, subject)
            with writer.subject(sid, {"gpu_check": 1}) as sub:
                if name == "hcp":
                    sub.save_preproc({"mask": mask.reshape(volume), "std": np.ones(volume, np.float32)})
                for i in range(n):
                    split = "test" if i % 8 == 0 else "val" if i % 8 == 1 else "train"
                    shape = (R, F) if name == "nsd" else (mask.size,)
                    bold = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
                    llv, hlv = (_unit(rng, d) for d in (64, 32))
                    labels = (rng.random(len(info.classes)) < 0.1).astype(np.uint8)
                    sub.add(make_sample(sid, "s01", i, f"{name}{i:05d}", split, bold, llv, hlv, labels))
        writer.finish()
        urls[name] = url
    return urls


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float16)


def _train_recipe(size: dict, urls: dict[str, str], out: Path, steps: int, stage: int = 2):
    train = {
        "max_steps": steps,
        "micro_batch_size": size["micro_batch"],
        "warmup_steps": 1,
        "save_every": max(1, steps // 2),
        "eval_every": steps,
        "log_every": max(1, steps // 10),
        "num_workers": size["workers"],
    }
    raw = _model_recipe(
        size,
        urls,
        run={"name": out.name, "out_dir": str(out)},
        train=train,
        deepspeed={"zero_optimization": {"stage": stage}},
        log={"wandb": {"mode": "disabled"}},
    )
    return recipe_from_dict(raw, source="gpu-check")


def _window_medians(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "samples_per_s" in r][1:] or [
        r for r in records if "samples_per_s" in r
    ]
    return {k: statistics.median(r[k] for r in steps) for k in ("samples_per_s", "data_wait", "mfu")}


def train_runs(size: dict, urls: dict[str, str], out: Path, device: torch.device) -> dict:
    """The flagship run, its resume (more steps, same directory) and a ZeRO-3 run; rank-0 figures."""
    from mused_fm.train.loop import train

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    steps = size["steps"]
    run = out / "flagship"
    started = time.monotonic()
    train(_train_recipe(size, urls, run, steps))
    seconds = time.monotonic() - started
    result = {**_window_medians(run), "steps": steps, "seconds": seconds}
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    result["mfu_note"] = "the trainer's MFU: against a measured matmul rate, not the datasheet"

    more = max(2, steps // 10)
    train(_train_recipe(size, urls, run, steps + more))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "loss" in r]  # training records; validations share their steps
    result["resume"] = {"from_step": steps, "to_step": max(logged), "no_step_twice": len(logged) == len(set(logged))}
    zero3 = out / "zero3"
    started = time.monotonic()
    train(_train_recipe(size, urls, zero3, size["zero3_steps"], stage=3))
    result["zero3"] = {
        "steps": size["zero3_steps"],
        "seconds": time.monotonic() - started,
        "exported": (zero3 / "export" / "model.safetensors").is_file(),
    }
    return result


def adapt_held_out(size: dict, export: Path, nsd_url: str, out: Path) -> dict:
    """Token-only adaptation of the held-out NSD subject; then every weight but its new token row compared."""
    from mused_fm.adapt import adapt, load_adapt_recipe

    held = global_id("nsd", NSD_HELD_OUT)
    overrides = [
        f"adapt.checkpoint={export}",
        f"adapt.shards=[{nsd_url}]",
        f"adapt.subjects=[{held}]",
        f"adapt.out={out}",
        f"train.max_steps={size['adapt_steps']}",
        "train.num_workers=0",
        "log.wandb.mode=disabled",
    ]
    started = time.monotonic()
    adapt(load_adapt_recipe(ROOT / "recipes" / "new_subject.yaml", overrides))
    base, added = load_export(export).state_dict(), load_export(out / "export").state_dict()
    changed = [k for k in base if k != "subject_tokens.table" and not torch.equal(base[k], added[k])]
    table_old, table_new = base["subject_tokens.table"], added["subject_tokens.table"]
    rows_kept = torch.equal(table_new[: len(table_old)], table_old)
    return {
        "seconds": time.monotonic() - started,
        "frozen_identical": not changed and rows_kept,
        "changed": changed[:5],
        "new_rows": int(len(table_new) - len(table_old)),
    }


def export_agreement(export: Path, nsd_url: str, device: torch.device) -> dict:
    """Test-split probabilities of the export: fp32 on the CPU against the device in the run's precision."""
    from mused_fm.distributed import DistInfo
    from mused_fm.evaluate import evaluate_streams, open_for_model

    probs = {}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for where, dev, dt in (("cpu_fp32", torch.device("cpu"), torch.float32), ("device", device, dtype)):
        model = load_export(export).to(dev).eval()
        stream = open_for_model(model, nsd_url)
        stream.subjects = [s for s in stream.subjects if s in model.registry]

        def forward(bold, rows, dataset, model=model, dt=dt, dev=dev):
            with torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32):
                return model(bold.float(), rows, dataset)

        metrics = evaluate_streams(forward, {"nsd": stream}, "test", 256, DistInfo.single(dev))
        probs[where] = metrics["datasets"]["nsd"]["mAP"]
    return {
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "map_cpu_fp32": probs["cpu_fp32"],
        "map_device": probs["device"],
        "abs_difference": abs(probs["cpu_fp32"] - probs["device"]),
        "agrees": abs(probs["cpu_fp32"] - probs["device"]) <= 0.02,
    }


def report(result: dict) -> str:
    if not result.get("measured"):
        return f"not measured yet: {result.get('reason', 'no GPU run has happened')}\nrun: {result.get('command')}"
    f = result["facts"]
    lines = [
        f"device {f.get('gpu', f.get('cpu_model', f['device']))}; torch {f['torch']}, CUDA {f.get('cuda')}, "
        f"DeepSpeed {f['deepspeed']}{'; reduced sizes (CPU twin)' if result['reduced'] else ''}",
        f"peak for MFU: {result['peak_flops'] / 1e12:.1f} TFLOP/s ({result['peak_source']})",
    ]
    for row in result["throughput"]["nsd"]:
        lines.append(
            f"NSD fwd+bwd batch {row['batch']:>5}: {row['samples_per_s']:>10,.0f} samples/s, MFU {row['mfu']:.1%}"
        )
    c = result["throughput"].get("compiled")
    if c:
        lines.append(
            f"NSD compiled batch {c['batch']:>5}: {c['samples_per_s']:>10,.0f} samples/s, {c['speedup']:.2f}x eager"
        )
    hcp = result["throughput"]["hcp"]
    if hcp:
        lines.append(
            f"HCP fwd+bwd batch {hcp['batch']:>5}: {hcp['samples_per_s']:>10,.1f} samples/s, MFU {hcp['mfu']:.1%}"
        )
    t = result["train"]
    memory = f"{t['peak_memory_gib']:.1f} GiB" if t["peak_memory_gib"] is not None else "n/a (CPU)"
    lines += [
        f"training {t['steps']} steps: {t['samples_per_s']:,.0f} samples/s, data wait {t['data_wait']:.1%}, "
        f"trainer MFU {t['mfu']:.1%}, peak memory {memory}, {t['seconds']:.0f} s",
        f"resume: step {t['resume']['from_step']} -> {t['resume']['to_step']}; ZeRO-3 {t['zero3']['steps']} steps: "
        f"{'exported' if t['zero3']['exported'] else 'NO EXPORT'}",
        f"token-only adaptation: frozen weights {'bit-identical' if result['adapt']['frozen_identical'] else 'CHANGED'}"
        f", {result['adapt']['new_rows']} new row(s)",
        f"export test mAP: CPU fp32 {result['export_eval']['map_cpu_fp32']:.4f}, device "
        f"{result['export_eval']['precision']} {result['export_eval']['map_device']:.4f} "
        f"({'agree' if result['export_eval']['agrees'] else 'DISAGREE'})",
        f"epoch of 240,000 NSD samples at the best batch: "
        f"{result.get('epoch_seconds', result.get('twin_figures', {}).get('epoch_seconds', float('nan'))):.1f} s; "
        f"whole check "
        f"{result['seconds']:.0f} s",
    ]
    return "\n".join(lines)
