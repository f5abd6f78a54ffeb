"""Shared fixtures: tiny recipes and models with distinct dimension sizes, so a swapped axis fails."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch

from mused_fm.config import Recipe, recipe_from_dict
from mused_fm.model import MusedModel, build_model

# D=24 with 3 heads (K=8); NSD-like: 5 ROIs x 7 features, 11 classes; HCP-like: a 13x10x9 volume,
# two stride-2 stages -> 7x5x5 = 175 tokens, 6 classes. Three NSD and two HCP subjects.
TINY = {
    "model": {"dim": 24, "depth": 2, "heads": 3, "head_hidden": 20, "volume_channels": [4, 6]},
    "data": {
        "datasets": {
            "nsd": {
                "subjects": ["subj01", "subj02", "subj03"],
                "input": "roi",
                "num_rois": 5,
                "roi_dim": 7,
                "num_classes": 11,
            },
            "hcp": {"subjects": ["100610", "102311"], "input": "volume", "volume_shape": [13, 10, 9], "num_classes": 6},
        }
    },
    "loss": {"weights": {"hcp": {"llv": 0.1}}},
    "train": {"micro_batch_size": 8},
}


@pytest.fixture
def tiny_recipe() -> Recipe:
    return recipe_from_dict(TINY, source="tiny")


@pytest.fixture
def tiny_model(tiny_recipe: Recipe) -> MusedModel:
    torch.manual_seed(0)
    return build_model(tiny_recipe)


def make_batch(model: MusedModel, dataset: str, subject_ids: list[str], seed: int = 0) -> dict:
    """Random inputs, labels and CLIP features (F=9 low, 5 high) for one dataset of a model."""
    gen = torch.Generator().manual_seed(seed)
    spec = model.datasets[dataset]
    shape = (spec.num_rois, spec.roi_dim) if spec.input == "roi" else tuple(spec.volume_shape)
    B = len(subject_ids)
    return {
        "bold": torch.randn(B, *shape, generator=gen),
        "rows": model.subject_rows(subject_ids, dataset),
        "labels": (torch.rand(B, spec.num_classes, generator=gen) < 0.3).to(torch.uint8),
        "clip_llv": torch.randn(B, 9, generator=gen),
        "clip_hlv": torch.randn(B, 5, generator=gen),
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip themselves on machines without CUDA (their CPU twins run everywhere)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def raw(tmp_path_factory):
    """The `test` preset's simulated release with its tiny CLIP, written once per session. Read-only: a
    test that changes a file copies the release first (modules may define their own `raw`)."""
    from shards_tools.synth import synth

    out = tmp_path_factory.mktemp("raw")
    synth(out, preset="test", seed=0)
    return out


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 protocol server (moto) on loopback, port chosen by the OS."""
    from shards_tools.s3_server import local_s3_server

    with local_s3_server() as server:
        yield server.endpoint


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch) -> str:
    """A fresh, empty bucket; the AWS variables point s3fs (here and in child processes) at moto."""
    import urllib.request
    import uuid

    import s3fs

    from shards_tools.s3_server import client_env

    for key, value in client_env(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).close()
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"mused-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return bucket
