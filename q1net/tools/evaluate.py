"""The paper's evaluation protocol on any folder of lossless images.

Each image is JPEG-coded at every quality of a range (Pillow's libjpeg-turbo),
decoded, and its quality predicted from the pixels. Conditions beyond the
paper: a random grid offset (the decoded image is cropped by 1..7 pixels at
the top and left, so the coding grid no longer starts at the origin), 4:4:4
or 4:2:2 chroma, grayscale, one of Pillow's named presets or another encoder's
tables (scored against their IJG-equivalent quality, q1net.forensics.quant_tables),
photos enlarged before coding (large, smooth images), and recompression (coded
at q, decoded, coded again at Q2: scored against min(q, Q2), the strongest
compression the pixels went through). `pair_table` codes twice over a grid of
quality pairs and reports how often two codings are flagged.

Evidence (grid, block scores, lattice fit) is measured once per image; tau,
the median rule and every method are then applied to it, so tuning tau needs
no second pass and one run reports CNN-only, lattice-only and hybrid alike.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from PIL import Image

from q1net.data.images import Decoded, read_image
from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN, Subsampling, jpeg_encode, jpeg_roundtrip
from q1net.data.patches import LUMA_WEIGHTS
from q1net.data.sources import ImageSource
from q1net.forensics.quant_tables import ijg_equivalent_quality, other_encoder_tables
from q1net.nets.q1net import Q1Network
from q1net.predictor.calibration import Calibration, fit_calibration
from q1net.predictor.inference import METHODS, TAU_DEFAULT, TAU_GRID, ImageEvidence, Method, Prediction, Predictor
from q1net.predictor.program import Q1Program, cut_regions
from q1net.predictor.rules import vote

GridOffset = Literal["none", "random"]
IMAGES_PER_FORWARD = 16  # images whose blocks share one forward pass


@dataclass(frozen=True)
class Condition:
    """How test images are made from the lossless originals."""

    quality_min: int = QUALITY_MIN
    quality_max: int = QUALITY_MAX
    quality_step: int = 1  # every level by default; q1net reproduce may take every n-th
    subsampling: Subsampling = "4:2:0"
    grid_offset: GridOffset = "none"
    grayscale: bool = False
    seed: int = 0  # for the random grid offsets
    preset: str | None = None  # a Pillow preset (e.g. web_high) instead of the quality range
    recompress: int | None = None  # Q2: code again at this quality after the first decode
    tables: str | None = None  # another encoder's tables at each quality (q1net.forensics.quant_tables.OTHER_TABLES)
    upscale: float | None = None  # enlarge the original (bicubic) before coding: large, smooth photos
    quality_list: tuple[int, ...] | None = None  # these qualities instead of the range

    @property
    def qualities(self) -> list[int | str]:
        if self.preset:
            return [self.preset]
        return list(self.quality_list) if self.quality_list else list(range(self.quality_min, self.quality_max + 1, self.quality_step))

    def make(self, pixels: np.ndarray, quality: int | str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """`pixels` coded at `quality` under this condition and decoded, as (H, W, 3) uint8, and the true quality.

        The truth is the IJG quality, or the IJG-equivalent of the luma table actually used (presets, other
        encoders' tables), or after a recompression the lower of the two codings'.
        """
        if self.upscale:
            height, width = pixels.shape[:2]
            size = (round(width * self.upscale), round(height * self.upscale))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC))
        if self.grayscale:
            pixels = np.asarray(np.round(pixels.astype(np.float32) @ LUMA_WEIGHTS), np.uint8)
        qtables = None
        if self.tables is not None and not isinstance(quality, str):
            luma, chroma = other_encoder_tables(self.tables, quality)
            qtables = [luma.tolist()] if self.grayscale else [luma.tolist(), chroma.tolist()]
        decoded = read_image(io.BytesIO(jpeg_encode(pixels, quality, self.subsampling, qtables)))
        named = isinstance(quality, str) or qtables is not None
        true = ijg_equivalent_quality(decoded.jpeg_luma_table) if named and decoded.jpeg_luma_table is not None else quality
        decoded = decoded.pixels
        if self.recompress is not None:
            decoded = jpeg_roundtrip(decoded, self.recompress, self.subsampling)
            true = min(true, self.recompress)
        if self.grid_offset == "random":
            dy, dx = rng.integers(1, 8, 2)
            decoded = decoded[dy:, dx:]
        return np.ascontiguousarray(decoded), int(true)


@dataclass
class BlockScores:
    """Every test image's evidence: enough to apply any tau and any method afterwards (Predictor.resolve)."""

    predictor: Predictor
    names: list[str] = field(default_factory=list)
    true: list[int] = field(default_factory=list)
    evidence: list[ImageEvidence] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # grid, lattice, network and decision time per image

    def predictions(self, tau: float, method: Method = "hybrid") -> Answers:
        """Every image's answer under `tau` and `method`."""
        return Answers.of([self.predictor.resolve(found, tau, method) for found in self.evidence])


@dataclass(frozen=True)
class Answers:
    """Per-image answers as arrays, for summaries."""

    quality: np.ndarray
    low: np.ndarray
    high: np.ndarray
    determined: np.ndarray
    fallback: np.ndarray
    by_lattice: np.ndarray
    recompressed: np.ndarray

    @classmethod
    def points(cls, quality: np.ndarray) -> Answers:
        """Bare point answers (a whole-crop peer network): each its own range, determined, never a fallback or a flag."""
        quality = np.asarray(quality, float)
        no = np.zeros(len(quality), bool)
        return cls(quality, quality, quality, ~no, no, no, no)

    @classmethod
    def of(cls, predictions: list[Prediction]) -> Answers:
        columns = zip(
            *(
                (p.quality, p.quality_low, p.quality_high, p.determined, p.fallback, p.method == "lattice", p.recompressed)
                for p in predictions
            ),
            strict=True,
        )
        return cls(*(np.array(column) for column in columns))


@dataclass
class NetworkScores:
    """The network alone on images whose grid is at the origin (no grid detection, no lattice): what tune_tau and
    tune_calibration need, and fast on a GPU (the training campaign, q1net.tools.gpu_train)."""

    names: list[str] = field(default_factory=list)
    true: list[int] = field(default_factory=list)
    blocks: list[tuple] = field(default_factory=list)  # per image: (qualities, confidences, informative), as the program scores them

    def predictions(self, tau: float, method: Method = "cnn") -> Answers:
        if method != "cnn":
            raise ValueError("network scores hold the network alone: method must be cnn")
        return Answers.points(np.array([float(vote(*block, tau).quality) for block in self.blocks]))


@torch.no_grad()
def score_network(net: Q1Network, source: ImageSource, condition: Condition, calibration: Calibration | None = None) -> NetworkScores:
    """Every image of `source` coded at every quality of `condition` (grid at the origin), scored by `net` on its device."""
    if condition.grid_offset != "none":
        raise ValueError("the network alone reads blocks on a grid at the origin: no grid offset")
    device = next(net.parameters()).device
    program = Q1Program(net, tau=TAU_DEFAULT, calibration=calibration).to(device)
    rng, scores = np.random.default_rng(condition.seed), NetworkScores()
    for index in range(len(source)):
        image = source.load(index)
        for quality in condition.qualities:
            pixels, true = condition.make(image, quality, rng)
            regions, rows, cols = (torch.from_numpy(a).to(device) for a in cut_regions(pixels, per_side=program.per_side))
            scores.blocks.append(tuple(None if t is None else t.cpu() for t in program.network_alone(regions, rows, cols)))
            scores.names.append(source.name(index))
            scores.true.append(true)
    return scores


def score_source(predictor: Predictor, source: ImageSource, condition: Condition, progress: bool = False) -> BlockScores:
    """Code every image of `source` at every quality of `condition` and gather the predictor's evidence."""
    from tqdm import tqdm

    rng = np.random.default_rng(condition.seed)
    scores = BlockScores(predictor)
    jobs = [(i, q) for i in range(len(source)) for q in condition.qualities]
    cache: dict[int, np.ndarray] = {}  # only the images the current chunk needs
    bar = tqdm(total=len(jobs), disable=not progress, unit="image", desc="evaluate")
    for start in range(0, len(jobs), IMAGES_PER_FORWARD):
        chunk = jobs[start : start + IMAGES_PER_FORWARD]
        cache = {i: cache[i] if i in cache else source.load(i) for i in sorted({i for i, _ in chunk})}
        made = [condition.make(cache[i], q, rng) for i, q in chunk]
        begin = time.perf_counter()
        evidence = predictor.gather([Decoded(pixels) for pixels, _ in made])
        seconds = (time.perf_counter() - begin) / len(chunk)
        for (index, _), (_, true), found in zip(chunk, made, evidence, strict=True):
            scores.names.append(source.name(index))
            scores.true.append(true)
            scores.evidence.append(found)
            scores.seconds.append(seconds)
        bar.update(len(chunk))
    bar.close()
    return scores


HEADLINE = (
    "mae",
    "sde_abs",
    "sde",
    "max_abs_error",
    "exact_fraction",
    "decided_by_lattice",
    "coverage",
    "median_width",
    "determined_fraction",
    "flagged_fraction",
)


def summarise_methods(scores: BlockScores, tau: float, primary: Method) -> tuple[dict[str, object], Answers]:
    """The full summary under `primary`, the headline figures under every method, and `primary`'s answers."""
    true = np.array(scores.true)
    by_method = {}
    for method in METHODS:
        answers = scores.predictions(tau, method)
        summary = summarise(true, answers)
        by_method[method] = {key: summary[key] for key in HEADLINE}
        if method == primary:
            full, primary_answers = summary, answers
    return full | {"method": primary, "by_method": by_method}, primary_answers


def summarise(true: np.ndarray, answers: Answers) -> dict[str, object]:
    """MAE and both SDE conventions, max |e|, exact-after-rounding share, per-quality MAE, and how honest the ranges are:
    coverage (the truth inside [quality_low, quality_high]), the median width, the determined share, and the share
    flagged as recompressed (false flags, on images coded once)."""
    true, predicted = np.asarray(true, float), np.asarray(answers.quality, float)
    error = predicted - true
    levels = np.unique(true).astype(int)
    inside = (answers.low <= true) & (true <= answers.high)
    return {
        "images": len(true),
        "mae": float(np.abs(error).mean()),
        "sde_abs": float(np.abs(error).std()),  # std of |e|: the published evaluator's "SDE"
        "sde": float(error.std()),  # std of e: the usual meaning
        "bias": float(error.mean()),
        "max_abs_error": float(np.abs(error).max()),
        "exact_fraction": float((np.rint(predicted) == true).mean()),
        "fallback_fraction": float(np.mean(answers.fallback)),
        "decided_by_lattice": float(np.mean(answers.by_lattice)),
        "coverage": float(inside.mean()),
        "median_width": float(np.median(answers.high - answers.low)),
        "determined_fraction": float(np.mean(answers.determined)),
        "flagged_fraction": float(np.mean(answers.recompressed)),
        "determined_mae": float(np.abs(error[answers.determined]).mean()) if answers.determined.any() else None,
        "determined_max_abs_error": float(np.abs(error[answers.determined]).max()) if answers.determined.any() else None,
        "per_quality_mae": {int(q): float(np.abs(error[true == q]).mean()) for q in levels},
    }


CLOSE_LEVELS = 2  # "read right" for the hard-cases condition: within this many levels ...
CLOSE_UP_TO = 95  # ... at qualities up to this (above it text and line art can stay undetermined)


def by_kind(scores: BlockScores, answers: Answers, kind_of) -> dict[str, dict[str, float]]:
    """The ranges' honesty and the share read within CLOSE_LEVELS (qualities up to CLOSE_UP_TO, and of the answers called
    determined) per kind of image;
    `kind_of` maps an image name to its kind (GraphicsSource.kind_of_name)."""
    true, kinds = np.array(scores.true, float), np.array([kind_of(name) for name in scores.names])
    close_all = np.abs(answers.quality - true) <= CLOSE_LEVELS
    inside = (answers.low <= true) & (true <= answers.high)
    table = {}
    for kind in dict.fromkeys(kinds):
        mine = kinds == kind
        close = mine & (true <= CLOSE_UP_TO)
        table[str(kind)] = {
            "images": int(mine.sum()),
            "within_2_up_to_95": float(close_all[close].mean()) if close.any() else None,
            "coverage": float(inside[mine].mean()),
            "median_width": float(np.median((answers.high - answers.low)[mine])),
            "determined_fraction": float(answers.determined[mine].mean()),
            "determined_within_2": float(close_all[mine & answers.determined].mean()) if (mine & answers.determined).any() else None,
            "flagged_fraction": float(answers.recompressed[mine].mean()),
        }
    return table


def tune_tau(scores: BlockScores, grid: tuple[float, ...] = TAU_GRID) -> tuple[float, list[dict[str, float]]]:
    """The tau of `grid` with the lowest CNN-only MAE on `scores` (the paper's grid search), and the whole sweep."""
    sweep = []
    for tau in grid:
        answers = scores.predictions(tau, "cnn")
        sweep.append(
            {
                "tau": float(tau),
                "mae": float(np.abs(answers.quality - np.array(scores.true)).mean()),
                "fallback_fraction": float(answers.fallback.mean()),
            }
        )
    best = min(sweep, key=lambda row: (row["mae"], -row["tau"]))
    return best["tau"], sweep


def tune_calibration(scores: BlockScores, tau: float) -> tuple[Calibration, dict[str, float]]:
    """The calibration of the CNN-only answers at `tau`, and its MAE before, after, and on images it was not fitted to.

    `scores` must hold uncalibrated qualities. The held-out figure fits once per image
    without that image's codings (leave one image out): what to expect on new photos.
    """
    predicted = scores.predictions(tau, "cnn").quality
    true, names = np.array(scores.true, float), np.array(scores.names)
    calibration = fit_calibration(predicted, true)
    held_out = np.empty_like(predicted)
    for name in np.unique(names):
        mine = names == name
        held_out[mine] = fit_calibration(predicted[~mine], true[~mine])(predicted[mine])
    report = {
        "mae": float(np.abs(predicted - true).mean()),
        "mae_calibrated": float(np.abs(calibration(predicted) - true).mean()),
        "mae_calibrated_held_out": float(np.abs(held_out - true).mean()),
    }
    return calibration, report


def pair_table(predictor: Predictor, source: ImageSource, qualities: tuple[int, ...], base: Condition, progress: bool = False) -> dict:
    """Recompression flags over every pair (q1, q2) of `qualities`, q1 != q2, both orders: coded at q1, decoded,
    coded at q2. Each cell: the share of images flagged as recompressed, and the hybrid MAE against min(q1, q2)."""
    cells = []
    for second in qualities:
        condition = replace(base, recompress=second, quality_list=tuple(q for q in qualities if q != second), preset=None)
        scores = score_source(predictor, source, condition, progress)
        answers = scores.predictions(predictor.tau, "hybrid")
        firsts = np.tile(np.array(condition.qualities), len(source))  # score_source goes image by image, quality by quality
        for first in condition.qualities:
            mine = firsts == first
            error = np.abs(answers.quality[mine] - np.array(scores.true)[mine])
            cells.append(
                {
                    "first": first,
                    "second": second,
                    "images": int(mine.sum()),
                    "flagged": float(answers.recompressed[mine].mean()),
                    "mae": float(error.mean()),
                }
            )
    return {"qualities": list(qualities), "cells": cells}
