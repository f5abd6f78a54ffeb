"""CLIP features of stimuli as CLIP-MUSED uses them, computed once per distinct stimulus and cached.

Shape legend: N stimuli, T vision tokens (197 for ViT-B/16 at 224 px), W vision width (768),
P projection width (512), K reduced low-level width.

- low-level (llv): the first vision layer's output (hidden_states[1], N x T x W) flattened, clipped
  at +-1.5 and L2-normalised (the paper), then reduced to K dims and L2-normalised again.
- high-level (hlv): the mean of the projected image and text embeddings, clipped at +-1.5 and
  L2-normalised (the paper; raw embeddings are averaged, as in the official code).

Why the llv reduction is fitted, not random: first-layer CLIP features of different images share
a large common part (position embeddings, CLS), so their cosine similarities sit in a narrow band.
A random projection or sketch adds noise of about 1/sqrt(K) to every similarity, which is of the
order of that band: on such features (tests/test_clip_features.py, 3000 dims to 64) a Gaussian
random projection keeps r = 0.71 of the similarity structure, a fitted basis 0.9996. An uncentered
PCA fitted on the stimuli (the basis that best preserves their Gram matrix) keeps it: the manifest
records the Pearson r between the similarity matrices before and after reduction, measured on
stimuli held out from the fit. The basis (K x T*W, float16)
is stored in the output's clip/ folder so that later packs into the same output reuse it.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mused_fm.data import storage
from mused_fm.errors import InputError

__all__ = ["ClipFeaturizer", "ClipStore", "LlvBasis", "postprocess", "similarity_fidelity"]

logger = logging.getLogger(__name__)
CLIP_VALUE = 1.5


def postprocess(x_NF: torch.Tensor, clip_value: float = CLIP_VALUE) -> torch.Tensor:
    """Clip every entry at +-clip_value, then L2-normalise each row (the paper's feature post-processing)."""
    return torch.nn.functional.normalize(x_NF.float().clamp(-clip_value, clip_value), dim=-1)


def similarity_fidelity(full_NF: np.ndarray, reduced_NK: np.ndarray) -> float:
    """Pearson r between the off-diagonal cosine similarities of two feature sets of the same stimuli."""
    a, b = (
        torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=-1) for x in (full_NF, reduced_NK)
    )
    rows, cols = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    sa, sb = (a @ a.T)[rows, cols], (b @ b.T)[rows, cols]
    return float(torch.corrcoef(torch.stack([sa, sb]))[0, 1])


class LlvBasis:
    """Uncentered PCA basis (K x F): reduce(x) = normalise(x @ basis.T), zero-padded to `dim`."""

    def __init__(self, basis_KF: np.ndarray, dim: int) -> None:
        self.basis, self.dim = basis_KF.astype(np.float32), dim

    @classmethod
    def fit(cls, full_NF: np.ndarray, dim: int) -> LlvBasis:
        """Top right singular vectors of the stimuli's features, through their N x N Gram matrix."""
        x = torch.as_tensor(full_NF, dtype=torch.float64)
        eigvals, eigvecs = torch.linalg.eigh(x @ x.T)  # ascending; Gram = U S^2 U^T
        keep = min(dim, int((eigvals > eigvals.max() * 1e-10).sum()))
        u, s = eigvecs[:, -keep:].flip(1), eigvals[-keep:].flip(0).sqrt()
        return cls(((u / s).T @ x).numpy(), dim)  # V^T = S^-1 U^T X, (keep, F)

    def reduce(self, full_NF: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(full_NF, dtype=torch.float32) @ torch.from_numpy(self.basis).T
        out = torch.zeros(x.shape[0], self.dim)
        out[:, : x.shape[1]] = torch.nn.functional.normalize(x, dim=-1)
        return out.numpy()


class ClipFeaturizer:
    """A `transformers` CLIP (local folder or hub id) computing full llv and hlv features in batches."""

    def __init__(self, model: str | Path, batch_size: int = 32, device: str | torch.device = "cpu") -> None:
        from transformers import AutoProcessor, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(str(model)).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(str(model))
        except (OSError, ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(
                f"--clip-model {str(model)!r} does not load as a transformers CLIP model ({first}). Pass a folder "
                "written by CLIPModel.save_pretrained with its processor (the simulated cohort has RAW/clip), or a "
                "hub id such as openai/clip-vit-base-patch16 on a machine that can download it."
            ) from None
        # A local folder is named by its absolute path: the same model given relative to another working
        # directory must not look like another model to an output that is being extended.
        self.name = str(Path(model).resolve()) if Path(model).exists() else str(model)
        self.batch_size, self.device = batch_size, torch.device(device)
        vision = self.model.config.vision_config
        self.llv_full_dim = ((vision.image_size // vision.patch_size) ** 2 + 1) * vision.hidden_size
        self.hlv_dim = self.model.config.projection_dim

    @torch.no_grad()
    def encode(
        self, images: Sequence[np.ndarray], texts: Sequence[str | Sequence[str]], seeds: Sequence | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(full llv (N, T*W), hlv (N, P)), post-processed, for images (H x W x 3 uint8) with their text.

        A text may be a list of candidate captions: the paper's choice is then made within the same
        forward pass, a seeded pick (seeds[i]) among the captions whose CLIP similarity to the image
        is at least half the best one's.
        """
        if len(images) != len(texts):
            raise InputError(f"{len(images)} images but {len(texts)} texts; give one text per stimulus.")
        llv, hlv = [], []
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            pixels = self.processor(images=list(images[start:stop]), return_tensors="pt")["pixel_values"]
            vision = self.model.vision_model(pixel_values=pixels.to(self.device), output_hidden_states=True)
            llv.append(postprocess(vision.hidden_states[1].flatten(1).cpu()))
            image = self.model.visual_projection(vision.pooler_output)  # (n, P)
            groups = [[t] if isinstance(t, str) else list(t) for t in texts[start:stop]]
            tokens = self.processor(
                text=[c for g in groups for c in g], return_tensors="pt", padding=True, truncation=True
            ).to(self.device)
            text = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text = getattr(text, "pooler_output", text)  # (all candidates, P)
            chosen, offset = [], 0
            for i, group in enumerate(groups):
                options, offset = text[offset : offset + len(group)], offset + len(group)
                if len(group) > 1:
                    sims = torch.nn.functional.cosine_similarity(options, image[i : i + 1]).cpu().numpy()
                    eligible = np.flatnonzero(sims >= sims.max() / 2) if sims.max() > 0 else [int(sims.argmax())]
                    rng = np.random.default_rng(seeds[start + i] if seeds is not None else 0)
                    options = options[[int(rng.choice(eligible))]]
                chosen.append(options[0])
            hlv.append(postprocess(((image + torch.stack(chosen)) / 2).cpu()))
        return torch.cat(llv).numpy(), torch.cat(hlv).numpy()


def _same_model(stored: str, given: str) -> bool:
    """The model an output was packed with, given now: the same id, or folders that resolve to one path."""
    return stored == given or (Path(stored).exists() and Path(stored).resolve() == Path(given).resolve())


class ClipStore:
    """Cached, reduced features of an output's stimuli under OUT/clip/ (spec.json, llv_basis.npy, features.npz)."""

    def __init__(
        self, out_url: str, featurizer: ClipFeaturizer, llv_dim: int, fit_samples: int = 2048, seed: int = 0
    ) -> None:
        self.root = storage.join(out_url, "clip")
        self.featurizer, self.llv_dim, self.fit_samples, self.seed = featurizer, llv_dim, fit_samples, seed
        self.spec: dict | None = None
        self.basis: LlvBasis | None = None
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._saved = 0
        if storage.exists(storage.join(self.root, "spec.json")):
            self.spec = json.loads(storage.read_bytes(storage.join(self.root, "spec.json")))
            if not _same_model(self.spec["model"], featurizer.name) or self.spec["llv"]["dim"] != llv_dim:
                raise InputError(
                    f"{self.root} holds features of {self.spec['model']} with --llv-dim {self.spec['llv']['dim']}; "
                    f"this pack asks for {featurizer.name} with {llv_dim}. Use the same settings, or a new --out."
                )
            basis = np.load(io.BytesIO(storage.read_bytes(storage.join(self.root, "llv_basis.npy"))))
            self.basis = LlvBasis(basis, llv_dim)
            if storage.exists(storage.join(self.root, "features.npz")):  # absent if stopped right after the fit
                with np.load(io.BytesIO(storage.read_bytes(storage.join(self.root, "features.npz")))) as f:
                    self.cache = dict(zip(f["ids"].tolist(), zip(f["llv"], f["hlv"], strict=True), strict=True))
            self._saved = len(self.cache)

    def features(self, ids: Sequence[str], load: Callable[[str], tuple], fit_exclude=frozenset()) -> dict[str, tuple]:
        """{id: (llv (K,), hlv (P,))} for stimulus ids; `load(id)` gives (image, text or candidate captions).

        Args:
            fit_exclude: ids the llv basis must not be fitted on (test stimuli), if others remain.
        """
        missing = sorted(set(ids) - set(self.cache))
        if missing and self.basis is None:
            pool = [i for i in missing if i not in fit_exclude] or missing
            order = np.random.default_rng(self.seed).permutation(len(pool))
            fit_ids = [pool[i] for i in order[: self.fit_samples]]
            llv_full, hlv = self._encode(fit_ids, load)
            self._fit(llv_full)
            self._add(fit_ids, llv_full, hlv)  # the fit sample is encoded once
            self._save_cache()
            missing = sorted(set(missing) - set(fit_ids))
        step = 8 * self.featurizer.batch_size
        # A bar on a terminal (tqdm turns itself off otherwise); log lines for batch logs.
        with tqdm(total=len(missing), desc="CLIP features", unit="stimulus", disable=None) as bar:
            for start in range(0, len(missing), step):
                chunk = missing[start : start + step]
                self._add(chunk, *self._encode(chunk, load))
                bar.update(len(chunk))
                logger.info("CLIP features: %d / %d new stimuli", min(start + step, len(missing)), len(missing))
                if (start // step) % 16 == 15:  # an interrupted run keeps what it computed
                    self._save_cache()
        if len(self.cache) != self._saved:
            self._save_cache()
        return {i: self.cache[i] for i in ids}

    def _encode(self, ids: list[str], load: Callable) -> tuple[np.ndarray, np.ndarray]:
        images, texts = zip(*(load(i) for i in ids), strict=True)
        seeds = [[self.seed, zlib.crc32(i.encode())] for i in ids]  # per stimulus: the same choice in every run
        return self.featurizer.encode(images, texts, seeds)

    def _add(self, ids: list[str], llv_full: np.ndarray, hlv: np.ndarray) -> None:
        for i, llv, h in zip(ids, self.basis.reduce(llv_full), hlv, strict=True):
            self.cache[i] = (llv.astype(np.float16), h.astype(np.float16))

    def _fit(self, llv_full: np.ndarray) -> None:
        # The fidelity is measured on stimuli the basis has not seen; with under 20 there are too few
        # to spare, and it is measured on the fitted ones (the spec says which).
        held = len(llv_full) // 5 if len(llv_full) >= 20 else 0
        fit, test = (llv_full[held:], llv_full[:held]) if held else (llv_full, llv_full)
        # Round to the stored precision now, so this run and later runs reduce with the same numbers.
        self.basis = LlvBasis(LlvBasis.fit(fit, self.llv_dim).basis.astype(np.float16), self.llv_dim)
        r = similarity_fidelity(test, self.basis.reduce(test))
        self.spec = {
            "model": self.featurizer.name,
            "llv": {
                "layer": "vision hidden_states[1] (first transformer layer), flattened",
                "full_dim": self.featurizer.llv_full_dim,
                "dim": self.llv_dim,
                "reduction": "uncentered PCA fitted on the stimuli",
                "fit_stimuli": len(fit),
                "fidelity_r": r,
                "fidelity_stimuli": len(test),
                "fidelity_held_out": bool(held),
            },
            "hlv": {"layer": "mean of projected image and text embeddings", "dim": self.featurizer.hlv_dim},
            "postprocess": f"clip at +-{CLIP_VALUE}, L2-normalise",
            "batch_size": self.featurizer.batch_size,  # float results depend slightly on batching and device
            "device": str(self.featurizer.device),
        }
        logger.info(
            "llv reduction %d -> %d dims: similarity r = %.4f on %d held-out stimuli",
            self.featurizer.llv_full_dim,
            self.llv_dim,
            r,
            len(test),
        )
        buf = io.BytesIO()
        np.save(buf, self.basis.basis.astype(np.float16), allow_pickle=False)
        storage.write_bytes(storage.join(self.root, "llv_basis.npy"), buf.getvalue())
        storage.write_json(storage.join(self.root, "spec.json"), self.spec)

    def _save_cache(self) -> None:
        ids = sorted(self.cache)
        buf = io.BytesIO()
        np.savez(
            buf,
            ids=np.array(ids),
            llv=np.stack([self.cache[i][0] for i in ids]),
            hlv=np.stack([self.cache[i][1] for i in ids]),
        )
        storage.write_bytes(storage.join(self.root, "features.npz"), buf.getvalue())
        self._saved = len(ids)
