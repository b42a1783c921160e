"""The paper's evaluation protocol on any folder of lossless images.

Each image is JPEG-coded at every quality of a range (Pillow's libjpeg-turbo),
decoded, and its quality predicted from the pixels. Conditions beyond the
paper: a random grid offset (the decoded image is cropped by 1..7 pixels at
the top and left, so the coding grid no longer starts at the origin), 4:4:4
chroma, and grayscale.

Blocks are scored once per image; tau and the median rule are then applied
to the stored block scores, so tuning tau needs no second pass of the net.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN, Subsampling, jpeg_roundtrip
from q1net.data.patches import LUMA_WEIGHTS
from q1net.data.sources import ImageSource
from q1net.inference import Predictor, decide

GridOffset = Literal["none", "random"]
TAU_GRID = tuple(np.round(np.arange(80.0, 99.51, 0.5), 2))  # the grid tune-tau searches
IMAGES_PER_FORWARD = 16  # images whose blocks share one forward pass


@dataclass(frozen=True)
class Condition:
    """How test images are made from the lossless originals."""

    quality_min: int = QUALITY_MIN
    quality_max: int = QUALITY_MAX
    subsampling: Subsampling = "4:2:0"
    grid_offset: GridOffset = "none"
    grayscale: bool = False
    seed: int = 0  # for the random grid offsets

    @property
    def qualities(self) -> range:
        return range(self.quality_min, self.quality_max + 1)

    def make(self, pixels: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
        """`pixels` coded at `quality` under this condition, decoded, as (H, W, 3) uint8."""
        if self.grayscale:
            gray = np.asarray(np.round(pixels.astype(np.float32) @ LUMA_WEIGHTS), np.uint8)
            decoded = np.repeat(jpeg_roundtrip(gray, quality)[:, :, None], 3, axis=2)
        else:
            decoded = jpeg_roundtrip(pixels, quality, self.subsampling)
        if self.grid_offset == "random":
            dy, dx = rng.integers(1, 8, 2)
            decoded = decoded[dy:, dx:]
        return np.ascontiguousarray(decoded)


@dataclass
class BlockScores:
    """Every test image's block scores: enough to apply any tau afterwards."""

    names: list[str] = field(default_factory=list)
    true: list[int] = field(default_factory=list)
    quality: list[np.ndarray] = field(default_factory=list)
    confidence: list[np.ndarray | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # network + decision time per image

    def predictions(self, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """(predicted qualities, fallback flags) of all test images under `tau`."""
        decisions = [decide(q, c, tau) for q, c in zip(self.quality, self.confidence, strict=True)]
        return np.array([d.quality for d in decisions]), np.array([d.fallback for d in decisions])


def score_source(predictor: Predictor, source: ImageSource, condition: Condition, progress: bool = False) -> BlockScores:
    """Code every image of `source` at every quality of `condition` and score the blocks."""
    from tqdm import tqdm

    rng = np.random.default_rng(condition.seed)
    scores = BlockScores()
    jobs = [(i, q) for i in range(len(source)) for q in condition.qualities]
    cache: dict[int, np.ndarray] = {}  # only the images the current chunk needs
    bar = tqdm(total=len(jobs), disable=not progress, unit="image", desc="evaluate")
    for start in range(0, len(jobs), IMAGES_PER_FORWARD):
        chunk = jobs[start : start + IMAGES_PER_FORWARD]
        cache = {i: cache[i] if i in cache else source.load(i) for i in sorted({i for i, _ in chunk})}
        images = [condition.make(cache[i], q, rng) for i, q in chunk]
        begin = time.perf_counter()
        scored = predictor.score_blocks(images)
        seconds = (time.perf_counter() - begin) / len(chunk)
        for (index, quality), (_, block_quality, block_confidence) in zip(chunk, scored, strict=True):
            scores.names.append(source.name(index))
            scores.true.append(quality)
            scores.quality.append(block_quality)
            scores.confidence.append(block_confidence)
            scores.seconds.append(seconds)
        bar.update(len(chunk))
    bar.close()
    return scores


def summarise(true: np.ndarray, predicted: np.ndarray, fallback: np.ndarray | None = None) -> dict[str, object]:
    """MAE and both SDE conventions, max |e|, exact-after-rounding share, and per-quality MAE."""
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    error = predicted - true
    levels = np.unique(true).astype(int)
    return {
        "images": len(true),
        "mae": float(np.abs(error).mean()),
        "sde_abs": float(np.abs(error).std()),  # std of |e|: the published evaluator's "SDE"
        "sde": float(error.std()),  # std of e: the usual meaning
        "bias": float(error.mean()),
        "max_abs_error": float(np.abs(error).max()),
        "exact_fraction": float((np.rint(predicted) == true).mean()),
        "fallback_fraction": None if fallback is None else float(np.mean(fallback)),
        "per_quality_mae": {int(q): float(np.abs(error[true == q]).mean()) for q in levels},
    }


def tune_tau(scores: BlockScores, grid: tuple[float, ...] = TAU_GRID) -> tuple[float, list[dict[str, float]]]:
    """The tau of `grid` with the lowest MAE on `scores` (the paper's grid search), and the whole sweep."""
    sweep = []
    for tau in grid:
        predicted, fallback = scores.predictions(tau)
        sweep.append(
            {"tau": float(tau), "mae": float(np.abs(predicted - np.array(scores.true)).mean()), "fallback_fraction": float(fallback.mean())}
        )
    best = min(sweep, key=lambda row: (row["mae"], -row["tau"]))
    return best["tau"], sweep
