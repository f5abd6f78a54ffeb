"""CPU twins of the GPU-only paths (issue 16): each runs here the code a GPU run takes there.

- fused Adam(W): the DeepSpeed config asks for torch's fused kernel on CUDA; on CPU (torch has a fused CPU
  kernel too) the same config goes through DeepSpeed to torch.optim.AdamW(fused=True) and steps like foreach;
- train.compile: compiled trunk blocks give the eager model's outputs and gradients, with its state-dict keys;
- the attention kernel: scaled_dot_product_attention picks a fused kernel, which the trainer logs once;
- pinned memory: the loader is asked for page-locked batches on CUDA only.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from mused_fm.config import load_recipe
from mused_fm.errors import RecipeError
from mused_fm.model.transformer import Trunk, sdpa_backend
from mused_fm.train.engine import deepspeed_config

from conftest import make_batch
from train_helpers import ROOT

DEMO = ROOT / "recipes" / "demo.yaml"


def test_fused_adamw_on_cuda_goes_through_deepspeed_to_torch():
    import deepspeed

    from mused_fm.train.engine import init_distributed

    recipe = load_recipe(DEMO, ["train.weight_decay=0.01"])
    assert "fused" not in deepspeed_config(recipe, "fp32", device=torch.device("cpu"))["optimizer"]["params"]
    config = deepspeed_config(recipe, "bf16", device=torch.device("cuda"))
    assert config["optimizer"]["params"]["fused"] is True
    init_distributed()  # a world of one, as `python launch/train.py` runs
    runs = {}
    for fused in (True, False):
        cfg = copy.deepcopy({**config, "bf16": {"enabled": False}})  # the CUDA config, on this CPU in fp32
        if not fused:
            cfg["optimizer"]["params"].pop("fused")
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))
        engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
        inner = getattr(optimizer, "optimizer", optimizer)  # ZeRO wraps torch's optimizer
        assert type(inner) is torch.optim.AdamW and bool(inner.defaults.get("fused")) is fused
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            loss = engine(x).square().mean()
            engine.backward(loss)
            engine.step()
        runs[fused] = [p.detach().clone() for p in engine.module.parameters()]
    for a, b in zip(runs[True], runs[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_trunk_blocks_match_the_eager_model(tiny_model):
    compiled = copy.deepcopy(tiny_model)
    compiled.trunk.compile_blocks()
    assert compiled.state_dict().keys() == tiny_model.state_dict().keys()  # checkpoints and exports unchanged
    batch = make_batch(tiny_model, "nsd", ["nsd/subj01", "nsd/subj02", "nsd/subj01"])
    outs = {}
    for name, model in (("eager", tiny_model), ("compiled", compiled)):
        model.train()
        model.zero_grad()
        out = model(batch["bold"], batch["rows"], "nsd")
        (out.logits.sum() + out.z_hlv.square().mean()).backward()
        outs[name] = (
            out.logits.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= 1  # really compiled, not an eager fallback
    torch.testing.assert_close(outs["compiled"][0], outs["eager"][0], rtol=1e-4, atol=1e-5)
    assert outs["compiled"][1].keys() == outs["eager"][1].keys()
    for name, grad in outs["eager"][1].items():
        torch.testing.assert_close(outs["compiled"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_compile_with_zero3_is_refused_by_name(tiny_recipe):
    from mused_fm.config import recipe_from_dict, recipe_to_dict

    raw = recipe_to_dict(tiny_recipe)
    raw["train"]["compile"] = True
    raw["deepspeed"] = {"zero_optimization": {"stage": 3}}
    with pytest.raises(RecipeError, match=r"train\.compile is not supported with ZeRO-3"):
        recipe_from_dict(raw, source="t")
    raw["deepspeed"] = {"zero_optimization": {"stage": 2}}
    assert recipe_from_dict(raw, source="t").train.compile is True


def test_attention_takes_a_fused_kernel_and_the_probe_names_it():
    backend = sdpa_backend(16, torch.float32, torch.device("cpu"))
    assert backend in {"flash_attention", "efficient_attention"}  # torch's CPU flash kernel, not the math path
    trunk = Trunk(32, 1, 2)
    x = torch.randn(2, 12, 32)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, backend.upper())]):  # the trunk runs under that kernel alone
        fused = trunk(x)
    with sdpa_kernel([SDPBackend.MATH]):
        torch.testing.assert_close(fused, trunk(x), rtol=1e-5, atol=1e-5)


def test_the_loader_pins_batches_only_when_asked(monkeypatch):
    from mused_fm.data import pipeline

    seen = {}

    class Recording:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)

        def with_epoch(self, n):
            return self

    monkeypatch.setattr(pipeline.wds, "WebLoader", Recording)
    stream = dataclasses.make_dataclass("S", [("name", str), ("url", str)])("nsd", "x")
    stream.shard_urls = lambda split: ["x/a.tar"]
    for pin in (True, False):
        pipeline.train_loader(stream, "train", 4, 1, 0, num_workers=0, pin_memory=pin)
        assert seen["pin_memory"] is pin


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_as_its_cpu_twin(tmp_path):
    """`make gpu-check GPU_CHECK_DEVICE=cpu`: the script the GPU machine runs, every stage at tiny sizes."""
    import json
    import subprocess
    import sys

    from train_helpers import child_env

    # The GPU machine's python3 has no nibabel, boto, s3fs, wandb, matplotlib or PyAV: the check must not need them.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'nibabel', 'botocore', 's3fs', 'wandb', 'matplotlib', 'av', 'moto'}:\n"
        "            raise ImportError(f'{name} is not on the GPU machine')\n"
        "sys.meta_path.insert(0, Absent())\n"
    )
    env = child_env(GPU_CHECK_DEVICE="cpu", PYTHON=sys.executable, OUT=str(tmp_path), TMPDIR=str(tmp_path))
    env["PYTHONPATH"] = f"{blocker}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert result["measured"] and result["reduced"] and result["facts"]["device"] == "cpu"
    assert [r["batch"] for r in result["throughput"]["nsd"]] == [8, 32] and result["throughput"]["hcp"]["batch"] >= 1
    train = result["train"]
    assert train["samples_per_s"] > 0 and 0 <= train["data_wait"] < 1
    assert train["resume"]["to_step"] > train["resume"]["from_step"] and train["resume"]["no_step_twice"]
    assert train["zero3"]["exported"]
    assert result["adapt"]["frozen_identical"] and result["adapt"]["new_rows"] == 1
    assert result["export_eval"]["agrees"]
    assert "mfu_best" not in result and set(result["twin_figures"]) == {"mfu_best", "epoch_seconds", "data_wait"}
    assert "token-only adaptation: frozen weights bit-identical" in proc.stdout


def test_sync_batchnorm_keeps_the_model_and_its_checkpoints(tiny_model):
    """On several GPUs the volume tokenizer's BatchNorms become SyncBatchNorms: same parameters, buffers and
    state-dict keys (a plain model loads the checkpoint), the same outputs where no peer shares statistics."""
    from mused_fm.model.tokenizers import sync_batchnorm

    synced = copy.deepcopy(tiny_model)
    n = sync_batchnorm(synced.tokenizers)
    assert n == sum(isinstance(m, torch.nn.BatchNorm3d) for m in tiny_model.modules()) > 0
    assert not any(type(m) is torch.nn.BatchNorm3d for m in synced.modules())
    state = synced.state_dict()
    assert state.keys() == tiny_model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in tiny_model.state_dict().items())
    copy.deepcopy(tiny_model).load_state_dict(state, strict=True)  # a plain model takes the synced one's weights
    batch = make_batch(tiny_model, "hcp", ["hcp/100610", "hcp/100610"])
    for model in (tiny_model, synced):
        model.eval()
    torch.testing.assert_close(
        synced(batch["bold"], batch["rows"], "hcp").logits, tiny_model(batch["bold"], batch["rows"], "hcp").logits
    )
