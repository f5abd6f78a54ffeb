"""Planted ground truth of the simulated cohort: category sets, images drawn from categories, captions.

A category set gives every class a prevalence (a few frequent classes, a tail of rare ones), a
prototype colour and a grating (orientation, spatial frequency). A stimulus is a multi-hot vector of
1-4 classes; its image draws one textured blob per object instance on a random background, so the
image's low-level statistics (colour, contrast, orientation energy, fine detail, layout) depend on
its classes but also vary for reasons that have nothing to do with them (background, position,
phase, noise). Subjects' brains respond to both the class vector and `lowlevel_features(image)`
(brain.py), so a decoder can learn semantics from fMRI. Captions mention the image's classes with
varying relevance, as COCO captions do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOWLEVEL_NAMES",
    "WORDNET_SYNSETS",
    "Categories",
    "captions_for",
    "lowlevel_features",
    "make_categories",
    "render",
    "sample_labels",
    "standardize",
    "synset_word",
]

# WordNet classes of the simulated movie, most frequent first (real WordNetFeatures.hdf5 has 859 columns).
WORDNET_SYNSETS = (
    "person.n.01",
    "face.n.01",
    "building.n.01",
    "tree.n.01",
    "sky.n.01",
    "car.n.01",
    "hand.n.01",
    "water.n.01",
    "text.n.01",
    "road.n.01",
    "dog.n.01",
    "furniture.n.01",
    "horse.n.01",
    "boat.n.01",
    "bird.n.01",
    "food.n.01",
    "musical_instrument.n.01",
    "mountain.n.01",
    "cat.n.01",
    "airplane.n.01",
)

LOWLEVEL_NAMES = (
    "mean_r",
    "mean_g",
    "mean_b",
    "contrast",
    "edge_0",
    "edge_45",
    "edge_90",
    "edge_135",
    "fine_detail",
    "left_minus_right",
    "top_minus_bottom",
    "saturation",
)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Categories:
    names: tuple[str, ...]
    prevalence: np.ndarray  # (K,) probability that a stimulus contains the class
    colors: np.ndarray  # (K, 3) prototype RGB in [0, 1]
    orientations: np.ndarray  # (K,) grating orientation in radians
    frequencies: np.ndarray  # (K,) grating cycles per image width


def synset_word(synset: str) -> str:
    """'musical_instrument.n.01' -> 'musical instrument' (the name a caption or a CLIP prompt uses)."""
    return synset.split(".")[0].replace("_", " ")


def make_categories(names: tuple[str, ...] | list[str], rng: np.random.Generator) -> Categories:
    """Classes in the order given, most frequent first: prevalence 0.55 / rank^0.9 (55%, 30%, ... ~4% for rank 20)."""
    k = len(names)
    hues = (np.arange(k) / k + rng.uniform(0, 1)) % 1.0
    hues = hues[rng.permutation(k)]
    sat, val = rng.uniform(0.55, 0.9, k), rng.uniform(0.55, 0.95, k)
    return Categories(
        names=tuple(names),
        prevalence=0.55 / np.arange(1, k + 1) ** 0.9,
        colors=_hsv_to_rgb(hues, sat, val),
        orientations=rng.permutation(np.linspace(0, np.pi, k, endpoint=False)),
        frequencies=rng.uniform(2.0, 9.0, k),
    )


def sample_labels(cats: Categories, n: int, rng: np.random.Generator, max_labels: int = 4) -> np.ndarray:
    """(n, K) uint8 multi-hot with 1..max_labels classes per row, drawn by prevalence."""
    k = len(cats.names)
    labels = (rng.uniform(size=(n, k)) < cats.prevalence).astype(np.uint8)
    p = cats.prevalence / cats.prevalence.sum()
    for row in labels:
        on = np.flatnonzero(row)
        if on.size == 0:
            row[rng.choice(k, p=p)] = 1
        elif on.size > max_labels:
            row[rng.choice(on, on.size - max_labels, replace=False)] = 0
    return labels


def render(
    cats: Categories, labels_K: np.ndarray, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """Draw one image: returns (H, W, 3) uint8 and boxes (class, x0, y0, w, h) in [0, 1] image units."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width  # (H, W) each, in [0, 1)
    base = rng.uniform(0.25, 0.75, 3).astype(np.float32)
    img = base + (yy[..., None] - 0.5) * rng.uniform(-0.4, 0.4)  # (H, W, 3) background with a vertical gradient
    boxes = []
    for k in np.flatnonzero(labels_K):
        n_inst = rng.choice([1, 1, 1, 2, 3])
        for _ in range(n_inst):
            r = rng.uniform(0.14, 0.3) / np.sqrt(n_inst)
            ry = r * rng.uniform(0.7, 1.4)
            cx, cy = rng.uniform(r, 1 - r), rng.uniform(ry, 1 - ry)
            d = np.sqrt(((xx - cx) / r) ** 2 + ((yy - cy) / ry) ** 2)
            alpha = np.clip((1.0 - d) * 5.0, 0.0, 1.0)[..., None]  # soft-edged ellipse
            along = xx * np.cos(cats.orientations[k]) + yy * np.sin(cats.orientations[k])
            grating = 0.5 + 0.5 * np.cos(2 * np.pi * cats.frequencies[k] * along + rng.uniform(0, 2 * np.pi))
            obj = cats.colors[k] * (0.5 + 0.5 * grating[..., None])
            img = img * (1 - alpha) + obj * alpha
            x0, y0 = max(cx - r, 0.0), max(cy - ry, 0.0)
            boxes.append((int(k), x0, y0, min(cx + r, 1.0) - x0, min(cy + ry, 1.0) - y0))
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), boxes


def lowlevel_features(images_NHW3: np.ndarray) -> np.ndarray:
    """(N, F) float32 low-level statistics of uint8 images, F = len(LOWLEVEL_NAMES); not standardised."""
    x = images_NHW3.astype(np.float32) / 255.0  # (N, H, W, 3)
    lum = x @ LUMA  # (N, H, W)
    gy, gx = np.gradient(lum, axis=(1, 2))
    energy = gx**2 + gy**2
    angle = np.mod(np.arctan2(gy, gx) + np.pi / 8, np.pi)  # orientation bins centred on 0, 45, 90, 135 deg
    bins = np.minimum((angle / (np.pi / 4)).astype(int), 3)
    edges = np.stack([(energy * (bins == b)).mean(axis=(1, 2)) for b in range(4)], axis=1)  # (N, 4)
    lap = 4 * lum - sum(np.roll(lum, s, axis=a) for s in (1, -1) for a in (1, 2))
    half_w, half_h = lum.shape[2] // 2, lum.shape[1] // 2
    feats = [
        x.mean(axis=(1, 2)),  # (N, 3)
        lum.std(axis=(1, 2))[:, None],
        np.sqrt(edges),
        np.abs(lap).mean(axis=(1, 2))[:, None],
        (lum[:, :, :half_w].mean(axis=(1, 2)) - lum[:, :, half_w:].mean(axis=(1, 2)))[:, None],
        (lum[:, :half_h].mean(axis=(1, 2)) - lum[:, half_h:].mean(axis=(1, 2)))[:, None],
        (x.max(axis=3) - x.min(axis=3)).mean(axis=(1, 2))[:, None],
    ]
    return np.concatenate(feats, axis=1).astype(np.float32)


def standardize(features_NF: np.ndarray) -> np.ndarray:
    """z-score each feature over the stimulus set (the brain model weighs standardised statistics)."""
    mu, sd = features_NF.mean(axis=0), features_NF.std(axis=0)
    return ((features_NF - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


ADJECTIVES = ("small", "large", "old", "bright", "dark", "colorful", "busy", "quiet")
TONES = ("warm", "cool", "muted", "vivid", "pale")
PLACES = ("in a kitchen", "on a street", "in a park", "near the water", "in a living room", "at night", "outside")


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _join(words: list[str]) -> str:
    items = [_a(w) for w in words]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def captions_for(names: list[str], rng: np.random.Generator, n: int = 5, shuffle: bool = True) -> list[str]:
    """n captions, from all classes named to none: two name every class, two name one, one names none.

    Unshuffled, the first caption names every class (a site's single caption per image).
    """
    names = list(names)
    one = [names[i] for i in rng.integers(0, len(names), 2)]
    adj, place, tone = rng.choice(ADJECTIVES, 3), rng.choice(PLACES, 3), rng.choice(TONES)
    order = [names[i] for i in rng.permutation(len(names))]
    caps = [
        f"a photo of {_join(order)} {place[0]}",
        f"{_join(names)} in a {adj[0]} scene",
        f"{_a(adj[1] + ' ' + one[0])} {place[1]}",
        f"there is {_a(one[1])} in this picture",
        f"{_a(adj[2])} picture taken {place[2]} with {tone} colors",
    ]
    order = rng.permutation(len(caps)) if shuffle else np.arange(len(caps))
    return [caps[i] for i in order[:n]]


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(K,) hue, saturation, value in [0, 1] -> (K, 3) RGB."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[i, np.arange(len(h))].astype(np.float32)
