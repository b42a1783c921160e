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


def heatmap_image(
    pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray, quality: np.ndarray, kept: np.ndarray, ring: int, block: int
) -> Image.Image:
    """`pixels` with each sampled coding block filled by its predicted quality; voting blocks outlined white.

    `quality` and `kept` are (len(rows), len(cols)) grids; the block of a patch
    starting at (r, c) is the `block`-sized square at (r + ring, c + ring).
    """
    from PIL import ImageDraw

    colours = (matplotlib.colormaps["viridis"](np.clip(quality, QUALITY_MIN, QUALITY_MAX) / QUALITY_MAX)[..., :3] * 255).astype(np.uint8)
    base = Image.fromarray(pixels).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            box = (int(left) + ring, int(top) + ring, int(left) + ring + block - 1, int(top) + ring + block - 1)
            outline = (255, 255, 255, 255) if kept[i, j] else (0, 0, 0, 160)
            draw.rectangle(box, fill=(*colours[i, j], 170), outline=outline)
    return Image.alpha_composite(base, overlay).convert("RGB")
