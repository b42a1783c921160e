"""Pictures for dashboards and reports: the paper's confusion matrix (Fig. 4) and patch galleries (Fig. 2c)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN

GALLERY_ZOOM = 8  # a 16x16 patch shown as 128x128


def confusion_matrix(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(100, 100) counts: row = true quality, column = predicted quality rounded and clipped to 1..100."""
    levels = QUALITY_MAX - QUALITY_MIN + 1
    rows = np.asarray(true, np.int64) - QUALITY_MIN
    cols = np.clip(np.rint(predicted), QUALITY_MIN, QUALITY_MAX).astype(np.int64) - QUALITY_MIN
    matrix = np.zeros((levels, levels), np.int64)
    np.add.at(matrix, (rows, cols), 1)
    return matrix


def _figure_image(figure: plt.Figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def confusion_image(matrix: np.ndarray, title: str = "Q1Net confusion matrix") -> Image.Image:
    """The matrix as a heat map, true quality down, predicted across, as in Fig. 4."""
    figure, axes = plt.subplots(figsize=(6, 5.4))
    extent = (QUALITY_MIN - 0.5, QUALITY_MAX + 0.5, QUALITY_MAX + 0.5, QUALITY_MIN - 0.5)
    shown = axes.imshow(matrix, cmap="viridis", extent=extent, interpolation="nearest")
    axes.set(xlabel="predicted quality", ylabel="true quality", title=title)
    figure.colorbar(shown, ax=axes, label="images")
    return _figure_image(figure)


def error_by_quality_image(qualities: np.ndarray, mean_abs_error: np.ndarray, title: str = "error per quality") -> Image.Image:
    """Mean |error| against the true quality, one bar a level."""
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.bar(qualities, mean_abs_error, width=1.0, color="tab:blue")
    axes.set(xlabel="true quality", ylabel="mean |error|", title=title, xlim=(QUALITY_MIN - 1, QUALITY_MAX + 1))
    return _figure_image(figure)


def zoom_patch(patch: np.ndarray) -> Image.Image:
    """A (3, P, P) uint8 patch enlarged with nearest neighbours so its blocking stays visible."""
    image = Image.fromarray(np.ascontiguousarray(patch.transpose(1, 2, 0)))
    return image.resize((image.width * GALLERY_ZOOM, image.height * GALLERY_ZOOM), Image.NEAREST)


def heatmap_image(pixels: np.ndarray, result, title: str) -> Image.Image:
    """The photo beside its n x n grid of sampled blocks, each cell filled with the block's quality on one colour scale.

    Blocks that voted are shown at full strength; the others (below tau, flat, or read twice on a
    small image) are greyed and crossed. `result` is a Prediction made with return_blocks; `title`
    states the answer, its range and the method.
    """
    quality, kept = result.block_quality, result.block_kept
    figure, (photo, grid) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    photo.imshow(pixels, interpolation="lanczos")
    centre = GALLERY_ZOOM  # a patch's centre: its block's middle, 8 px in
    ys, xs = np.meshgrid(result.block_rows + centre, result.block_cols + centre, indexing="ij")
    photo.scatter(xs[kept], ys[kept], s=6, c="white", edgecolors="black", linewidths=0.3)
    photo.set(title="image (white: blocks that voted)", xticks=[], yticks=[])
    scale = {"cmap": "viridis", "vmin": QUALITY_MIN, "vmax": QUALITY_MAX, "interpolation": "nearest"}
    shown = grid.imshow(np.clip(quality, QUALITY_MIN, QUALITY_MAX), **scale)
    grid.imshow(np.where(kept, np.nan, 1.0), cmap="Greys", vmin=0, vmax=1.6, alpha=0.75, interpolation="nearest")
    rows, cols = np.nonzero(~kept)
    grid.scatter(cols, rows, marker="x", s=12, c="black", linewidths=0.6)
    grid.set(title=f"{kept.sum()} of {kept.size} blocks voted (crossed: did not)", xlabel="block column", ylabel="block row")
    grid.xaxis.get_major_locator().set_params(integer=True)
    grid.yaxis.get_major_locator().set_params(integer=True)
    figure.colorbar(shown, ax=grid, fraction=0.046, pad=0.04, label="block quality")
    figure.suptitle(title)
    return _figure_image(figure)
