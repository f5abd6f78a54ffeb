"""Everything that touches DeepSpeed: process group, config from the recipe, engine, checkpoints, export.

This is the one module that imports deepspeed. The rest of the trainer sees an `Engine` with
forward/backward/step, checkpoint save/load and a full fp32 state dict.

DeepSpeed facts this module is built around (measured with the pinned DeepSpeed on CPU and GPU):
- batch keys are derived from train.* (train_batch_size = micro x accumulation x world, by DeepSpeed);
- weight surgery and freezing happen before `deepspeed.initialize`; only trainable parameters go to
  the optimizer;
- save/load_checkpoint are collectives: every rank calls them;
- exporting from a ZeRO-1 checkpoint silently drops frozen parameters, so the export here reads the
  live fp32 master weights (`safe_get_full_fp32_param`) and falls back to the module's own tensors
  for frozen parameters and buffers, then checks that every key of the model is present.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pickle
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mused_fm.config import BaseRecipe
from mused_fm.distributed import DistInfo, barrier
from mused_fm.errors import CheckpointError
from mused_fm.train.checkpoints import newest_complete, record_complete

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

import deepspeed
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils import safe_get_full_fp32_param
from deepspeed.utils.tensor_fragment import fragment_address

__all__ = ["DEEPSPEED_VERSION", "Engine", "deepspeed_config", "init_distributed", "resolve_precision"]

logger = logging.getLogger(__name__)
DEEPSPEED_VERSION = deepspeed.__version__


def _single_node_store(world_size: int, rank: int) -> torch.distributed.TCPStore | None:
    """A rendezvous store on 127.0.0.1 for a job whose ranks all run on this host; None otherwise.

    torch's default (env://) store listens on every interface of rank 0's host, which a single-node job does
    not need: here rank 0 binds the listening socket to loopback itself and hands it to the store. Jobs
    started by torchrun (or accelerate, through it) use the store of torchrun's agent instead, and
    multi-node jobs need a reachable address: both keep the default.
    """
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")
    if os.environ.get("TORCHELASTIC_RUN_ID") or local is None or int(local) != world_size:
        return None
    timeout = datetime.timedelta(minutes=10)
    port = int(os.environ["MASTER_PORT"])
    if rank != 0:
        return torch.distributed.TCPStore("127.0.0.1", port, world_size, False, timeout)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))  # port 0 (a world of one): any free port
    listener.listen(128)
    port = listener.getsockname()[1]
    return torch.distributed.TCPStore("127.0.0.1", port, world_size, True, timeout, master_listen_fd=listener.fileno())


def _unlink_shm_buffer() -> None:
    """Remove this rank's name of DeepSpeed's CPU allreduce buffer once every rank has mapped it.

    On CPU, DeepSpeed's shm comm op creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>
    (66 MB) in init_distributed, maps every rank's, and never unlinks them: each run on a new port left
    66 MB per rank in /dev/shm (17 GB after a day of tests here). The mappings outlive the name, so after a
    barrier (every rank has opened every other's) the name can go; a later run on the same port then cannot
    open a stale buffer either. Worlds of one are left alone: they all use port 0, so they share one name
    (one file, never more), and several of them start at once (the comparison's workers): unlinking there
    raced another process's creation of the same name and crashed it in the op (measured: a segfault).
    """
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
    path = Path("/dev/shm") / f"{name}{os.environ.get('MASTER_PORT', '')}_{torch.distributed.get_rank()}"
    torch.distributed.barrier()  # on every rank, whatever it finds: a rank that skipped it would hang the others
    path.unlink(missing_ok=True)  # absent: another shm layout, or the op was not built


def init_distributed() -> DistInfo:
    """Join the process group set up by the deepspeed launcher, torchrun or a hostfile launch.

    A plain `python launch/train.py` is a world of one on a loopback store, so the same code path runs.
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "0")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store = _single_node_store(world_size, rank)
        if store is not None:
            if backend == "gloo":
                os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pair sockets on loopback too
            torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    deepspeed.init_distributed(dist_backend=backend, verbose=False)  # wraps the group above when there is one
    if backend == "gloo" and torch.distributed.get_world_size() > 1:
        _unlink_shm_buffer()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # ranks on one host share its cores, not 2x oversubscribe
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
    return DistInfo(torch.distributed.get_rank(), local_rank, torch.distributed.get_world_size(), device)


def resolve_precision(recipe: BaseRecipe, device: torch.device) -> str:
    """train.precision, with auto = bf16 on GPU and fp32 on CPU (bf16 matmul is ~250x slower there)."""
    precision = recipe.train.precision
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def deepspeed_config(
    recipe: BaseRecipe, precision: str, total_steps: int | None = None, device: torch.device | None = None
) -> dict[str, Any]:
    """The DeepSpeed config of a recipe: the pass-through `deepspeed:` keys plus the derived ones.

    train_batch_size is left to DeepSpeed (micro x accumulation x world size), so the same recipe
    runs on 2 CPU ranks and on 64 GPUs. On CUDA the optimizer is torch's fused Adam(W) (one kernel for all
    parameters; DeepSpeed passes `fused` through to torch.optim), elsewhere torch's default (foreach).
    """
    t = recipe.train
    optimizer = {"adamw": "AdamW", "adam": "Adam"}[t.optimizer]
    config = {
        **recipe.deepspeed,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "gradient_clipping": t.grad_clip,
        "optimizer": {
            "type": optimizer,
            # torch's Adam(W): no FusedAdam/CPUAdam build; decoupled decay for AdamW, L2 for Adam.
            "params": {
                "lr": t.lr,
                "betas": list(t.betas),
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
                "adam_w_mode": t.optimizer == "adamw",
                **({"fused": True} if device is not None and device.type == "cuda" else {}),
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total_steps or t.max_steps,
                "warmup_min_ratio": 0.0,
                "warmup_num_steps": max(1, t.warmup_steps),  # DeepSpeed refuses 0; 1 step is no warmup
                "cos_min_ratio": t.min_lr_ratio,
                "warmup_type": "linear",
            },
        },
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,  # progress is ours (rank 0 only)
        "wall_clock_breakdown": False,
    }
    # The stage the recipe resolves to, written out: DeepSpeed's own default (0) must never apply.
    config["zero_optimization"] = {**recipe.deepspeed.get("zero_optimization", {}), "stage": recipe.zero_stage}
    return config


# The only non-container types DeepSpeed's checkpoints hold (ZeRO 0-3, fp32 and bf16). Anything else in a
# checkpoint file is refused: a pickle that names other callables could run code when loaded.
_CHECKPOINT_TYPES = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with torch.load(weights_only=True) (DeepSpeed passes False)."""

    def load(self, path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(_CHECKPOINT_TYPES):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path} holds objects a checkpoint never needs ({str(err).splitlines()[0][:300]}); refusing to "
                "load it. Move the step directory aside if you did not write it."
            ) from None


class Engine:
    """A DeepSpeed engine around `module`, with the checkpoint and export conventions of a run."""

    def __init__(self, module: nn.Module, recipe: BaseRecipe, dist: DistInfo, total_steps: int | None = None) -> None:
        self.dist = dist
        self.precision = resolve_precision(recipe, dist.device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.stage = recipe.zero_stage
        self.config = deepspeed_config(recipe, self.precision, total_steps, dist.device)
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("nothing to train: every parameter of the model is frozen.")
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, model_parameters=trainable, config=self.config
        )
        if type(self.engine.checkpoint_engine) is TorchCheckpointEngine:  # the engine DeepSpeed uses by default
            self.engine.checkpoint_engine = _WeightsOnlyCheckpointEngine(self.engine._config)

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def save_checkpoint(self, directory: str | Path, step: int, client_state: dict) -> None:
        """Collective: every rank writes its ZeRO partition under directory/step{step}/; then rank 0 marks
        it complete (checkpoints.py), after all ranks have written."""
        self.engine.save_checkpoint(str(directory), tag=f"step{step}", client_state=client_state)
        barrier()
        if self.dist.is_main:
            record_complete(Path(directory), step)
        barrier()

    def load_latest(self, directory: str | Path) -> dict | None:
        """Collective: load the newest complete, intact checkpoint; None when there is none."""
        # Rank 0 decides for all: a rank that cannot see the files (node-local out_dir) must fail, not
        # skip this collective and start from step 0 while the others resume.
        chosen = [newest_complete(Path(directory)) if self.dist.is_main else None]
        torch.distributed.broadcast_object_list(chosen, src=0)
        step = chosen[0]
        if step is None:
            if self.dist.is_main and any(Path(directory).glob("step*")):
                logger.warning("%s holds no complete checkpoint: starting from step 0", directory)
            return None
        try:
            path, client_state = self.engine.load_checkpoint(str(directory), tag=f"step{step}")
        except Exception as err:
            if "world size" not in str(err):
                raise
            raise CheckpointError(
                f"{directory}: {err}\nResume with the number of ranks that wrote the checkpoint, or convert it "
                "with DeepSpeed's ds_to_universal, or start a new run from the export."
            ) from err
        if path is None:
            raise CheckpointError(
                f"{directory}/step{step} could not be loaded; move it aside to resume from the one before it."
            )
        return client_state

    # ----------------------------------------------------------------------------------------
    # Export
    # ----------------------------------------------------------------------------------------

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective: the whole model in fp32 on the CPU, on rank 0 (None elsewhere).

        Trainable parameters come from the optimizer's fp32 masters (exact under bf16 and in every
        ZeRO stage); frozen parameters (ZeRO-3: gathered) and buffers from the module itself, which
        is what ZeRO-1's checkpoint export would silently drop.
        """
        state: dict[str, torch.Tensor] = {}
        for name, param in self.module.named_parameters():
            value = safe_get_full_fp32_param(param) if param.requires_grad else None
            if value is None:
                gather = deepspeed.zero.GatheredParameters([param]) if self.stage == 3 else contextlib.nullcontext()
                with gather:
                    value = param.detach().clone()
            state[name] = value.detach().float().cpu()
        for name, buffer in self.module.named_buffers():
            state[name] = (buffer.float() if buffer.is_floating_point() else buffer).detach().cpu().clone()
        expected = set(self.module.state_dict())
        missing = expected - set(state)
        if missing:
            raise RuntimeError(f"export lacks {sorted(missing)}: refusing to write an incomplete model.")
        return state if self.dist.is_main else None
