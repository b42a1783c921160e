"""What the confidence head says about flat, smooth and textured patches (issue #12, docs/TRAINING.md).

The paper's confidence means "this block's quality can be read". Solid colours and gentle
gradients look the same at every quality, so a head that means it gives them confidences well
below tau, and textured blocks confidences above it. `distributions` measures that for any
weights: each kind of patch coded at qualities spread over 1..100, through the network alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from q1net.data.geometry import GEOMETRY
from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN, jpeg_roundtrip
from q1net.data.patches import LUMA_WEIGHTS, smooth_image
from q1net.data.sources import ImageSource
from q1net.predictor.inference import Predictor

CROP = 32  # each smooth patch is the aligned block of a crop this size, coded on its own (as validation does)
TEXTURED_STD = 10.0  # a photo patch is textured when its luma's std is at least this
KINDS = ("solid", "gradient", "textured")


def patches_of(kind: str, photos: ImageSource, qualities: np.ndarray, per_quality: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, P, P) uint8 patches of `kind` coded at each of `qualities`, and each one's quality."""
    rng, g = np.random.default_rng([seed, KINDS.index(kind)]), GEOMETRY
    start = g.block - g.ring
    patches, truth = [], []
    for quality in qualities:
        if kind == "textured":
            for index in range(len(photos)):
                decoded = jpeg_roundtrip(photos.load(index), int(quality))
                rows = np.arange(start, decoded.shape[0] - g.patch, g.block)
                cols = np.arange(start, decoded.shape[1] - g.patch, g.block)
                grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
                candidates = [decoded[r : r + g.patch, c : c + g.patch] for r, c in grid[rng.permutation(len(grid))[: 8 * per_quality]]]
                textured = [p for p in candidates if (p @ LUMA_WEIGHTS).std() >= TEXTURED_STD][: max(1, per_quality // len(photos))]
                patches += textured
                truth += [quality] * len(textured)
        else:
            for _ in range(per_quality):
                decoded = jpeg_roundtrip(smooth_image(rng, CROP, solid=kind == "solid"), int(quality))
                patches.append(decoded[start : start + g.patch, start : start + g.patch])
                truth.append(quality)
    return np.stack(patches).transpose(0, 3, 1, 2), np.array(truth)


def confidences(predictor: Predictor, patches: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        _, confidence = predictor.net.quality_confidence(predictor.net(torch.from_numpy(patches).float()))
    return confidence.numpy()


def distributions(weights: dict[str, str], photos: ImageSource, out: Path, qualities: int = 20, per_quality: int = 16) -> dict:
    """For each named weights file: confidence histograms of solid, gradient and textured patches (confidence.png)
    and the share of each above the weights' tau (confidence.json); returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = np.unique(np.linspace(QUALITY_MIN, QUALITY_MAX, qualities).round().astype(int))
    samples = {kind: patches_of(kind, photos, levels, per_quality)[0] for kind in KINDS}
    columns = min(3, len(weights))
    rows = -(-len(weights) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for axis in axes.flat[len(weights) :]:
        axis.set_visible(False)
    table, bins = {}, np.linspace(0, 100, 51)
    for axis, (name, path) in zip(axes.flat, weights.items(), strict=False):  # spare axes are hidden
        predictor = Predictor.from_checkpoint(path, method="cnn")
        scores = {kind: confidences(predictor, patches) for kind, patches in samples.items()}
        table[name] = (
            {"tau": predictor.tau}
            | {f"{kind}_above_tau": float((score > predictor.tau).mean()) for kind, score in scores.items()}
            | {f"{kind}_median": float(np.median(score)) for kind, score in scores.items()}
        )
        for kind, score in scores.items():
            axis.hist(score, bins=bins, alpha=0.55, label=f"{kind} ({len(score)})")
        axis.axvline(predictor.tau, color="black", lw=1, ls="--", label=f"tau {predictor.tau:g}")
        axis.set(title=name, xlabel="confidence", ylabel="patches", yscale="log")
        axis.legend(fontsize=7)
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "confidence.png", dpi=90)
    plt.close(figure)
    (out / "confidence.json").write_text(json.dumps(table, indent=2))
    return table
