"""The model card (README.md) every export carries, in the form Hugging Face model cards use.

YAML front matter (library name, tags, datasets, metrics when known), then: the datasets and subjects, the
input spaces and shapes, the classes, the key settings of the model and its training loss, the test
metrics when an eval.json is known (launch/evaluate.py rewrites the card with them), how to load the export
and how to add a subject. Written from the export's own config.json, so the card never disagrees with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from mused_fm.model.mused import MusedModel

__all__ = ["CARD_NAME", "model_card"]

CARD_NAME = "README.md"
# What each input kind is and which tool writes its shards.
INPUTS = {
    "roi": "{num_rois} ROI tokens of {roi_dim} features (per-ROI PCA scores; `pack-nsd`, or `pack-bids --atlas`)",
    "volume": "a cropped volume of {shape} voxels in MNI space, 3D-CNN tokens (`pack-hcp`, or `pack-bids`)",
}


def model_card(model: MusedModel, config: dict, metrics: dict | None = None) -> str:
    """The card's text. `config`: the export's config.json; `metrics`: eval.json's form, or None."""
    datasets = list(model.datasets)
    front = {
        "library_name": "mused-fm",
        "tags": ["fmri", "neuroscience", "brain-decoding", "clip-mused", "multi-subject", "pytorch"],
        "datasets": datasets,
    }
    if metrics:
        front["metrics"] = ["mAP", "AUC", "hamming"]
    m = config["model"]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# MUSED-FM model: {', '.join(datasets)}",
        "",
        "A subject-token Transformer (CLIP-MUSED, Zhou et al., ICLR 2024) for semantic decoding of fMRI: each "
        "subject has a learned low- and high-level token; a shared trunk and one multi-label head per dataset "
        "decode what the subject saw. Trained with MUSED-FM.",
        "",
        "## Subjects",
        "",
        "| dataset | subjects |",
        "| --- | --- |",
        *(
            f"| {d} | {', '.join(s.split('/', 1)[1] for s in model.registry.ids if s.startswith(d + '/'))} |"
            for d in datasets
        ),
        "",
        "## Inputs and classes",
        "",
    ]
    for name, ds in model.datasets.items():
        shape = "x".join(map(str, ds.volume_shape))
        what = INPUTS[ds.input].format(num_rois=ds.num_rois, roi_dim=ds.roi_dim, shape=shape)
        names = model.class_names_of(name)
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        lines.append(f"- **{name}**: {what}; {ds.num_classes} classes: {shown}.")
    lines += [
        "",
        "## Model and training",
        "",
        f"- Trunk: {m['depth']} pre-LN blocks, width {m['dim']}, {m['heads']} heads, MLP ratio {m['mlp_ratio']}; "
        f"subject tokens `{m['subject_tokens']}`; head hidden width {m['head_hidden']} (0: linear).",
    ]
    loss = config.get("loss")
    if loss:
        weights = "; ".join(
            f"{d}: orth {w['orth']:g}, RSA llv {w['llv']:g}, RSA hlv {w['hlv']:g}"
            for d, w in (loss.get("weights") or {}).items()
        )
        lines.append(f"- Loss: BCE + {weights or 'the default weights'} (RSA scope `{loss.get('rsa_scope')}`).")
    lines += ["", "## Test metrics", ""]
    if metrics:
        lines += ["| dataset | mAP | AUC | Hamming | mAP, subject mean | n |", "| --- | --- | --- | --- | --- | --- |"]
        for name, d in metrics.get("datasets", {}).items():
            mean = d.get("subject_mean", {}).get("mAP")
            lines.append(
                f"| {name} | {_f(d.get('mAP'))} | {_f(d.get('AUC'))} | {_f(d.get('hamming'))} | {_f(mean)} | "
                f"{d.get('n', '')} |"
            )
    else:
        lines.append(
            "Not measured with this export yet: `python launch/evaluate.py --checkpoint THIS_DIR --shards URL "
            "--split test --json eval.json` measures them and adds them here."
        )
    subject = model.registry.ids[0] if model.registry.ids else "nsd/subj01"
    dataset = subject.split("/", 1)[0]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from mused_fm.model import MusedModel",
        "",
        'model = MusedModel.from_pretrained("THIS_DIR").eval()',
        f'model.predict(bold, ["{subject}"], "{dataset}", top_k=5)   # class names with probabilities',
        "```",
        "",
        "`python launch/predict.py --checkpoint THIS_DIR --shards URL --out predictions.jsonl` writes them for a "
        "whole split; `python launch/evaluate.py` scores it.",
        "",
        "## Add a subject",
        "",
        "Pack the new subject into the same shard output as the others, then fit only its two tokens:",
        "",
        "```bash",
        f"python launch/adapt_subject.py --checkpoint THIS_DIR --shards URL --subjects {dataset}/NEW --out OUT",
        "```",
        "",
    ]
    return "\n".join(lines)


def _f(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"
