"""IJG quantisation tables: the one place that knows how a quality level becomes quantiser steps.

The base luma table is Table K.1 of the JPEG standard (ITU-T T.81, Annex K); the
scaling from quality 1..100 to steps is libjpeg's `jpeg_quality_scaling`,
which libjpeg-turbo, and so Pillow, use with `quality=`.

"IJG-equivalent quality" of any luma table (another encoder's, Pillow's presets,
custom `qtables`) is defined here as the IJG quality whose luma table is closest
to it in mean squared log-step over the 64 frequencies (over the known ones, for
a table estimated from pixels). Log steps because quantisation error grows with
the step: a step of 2 against 1 is as far as 40 against 20.
"""

from __future__ import annotations

import numpy as np
import torch

from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN
from q1net.forensics.ops import take

IJG_LUMA_BASE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ]
).reshape(64)  # natural (row-major) order, as Pillow's `Image.quantization` reports tables
IJG_CHROMA_BASE = np.array(
    [
        [17, 18, 24, 47, 99, 99, 99, 99],
        [18, 21, 26, 66, 99, 99, 99, 99],
        [24, 26, 56, 99, 99, 99, 99, 99],
        [47, 66, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
    ]
).reshape(64)  # Table K.2
STEP_MAX = 255  # baseline JPEG's 8-bit steps


def ijg_scale(quality: int) -> int:
    """libjpeg's percentage scaling of the base tables for `quality` (1..100)."""
    if not QUALITY_MIN <= quality <= QUALITY_MAX:
        raise ValueError(f"IJG quality must be in {QUALITY_MIN}..{QUALITY_MAX}, got {quality}")
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def ijg_luma_table(quality: int) -> np.ndarray:
    """The 64 luma steps (natural order) libjpeg uses at `quality`."""
    return ijg_table(IJG_LUMA_BASE, quality)


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    return np.clip((base * ijg_scale(quality) + 50) // 100, 1, STEP_MAX)


OTHER_TABLES = ("annex_k", "flat")


def other_encoder_tables(family: str, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """(luma, chroma) tables of another encoder at a nominal `quality`, for tests and `q1net evaluate --tables`.

    - "annex_k": the standard's Annex K tables scaled by a smooth law (2 ** ((50 - q) / 16)) and rounded
      down, as encoders that do not use libjpeg's scaling do: IJG's shape, steps between IJG's levels;
    - "flat": IJG's table at `quality` with its steps pulled halfway toward the smallest one, the flatter
      high frequencies many cameras use.
    """
    if family == "annex_k":
        scale = 2.0 ** ((50 - quality) / 16)
        return tuple(np.clip(np.floor(base * scale), 1, STEP_MAX).astype(int) for base in (IJG_LUMA_BASE, IJG_CHROMA_BASE))
    if family == "flat":
        tables = (ijg_table(IJG_LUMA_BASE, quality), ijg_table(IJG_CHROMA_BASE, quality))
        return tuple(np.round(t.min() + (t - t.min()) * 0.5).astype(int) for t in tables)
    raise ValueError(f"unknown table family {family!r}; known: {', '.join(OTHER_TABLES)}")


IJG_QUALITIES = np.arange(QUALITY_MIN, QUALITY_MAX + 1)
IJG_LUMA_TABLES = np.stack([ijg_luma_table(int(q)) for q in IJG_QUALITIES])  # (100, 64), row q - 1
LOG_IJG_TABLES = np.log(IJG_LUMA_TABLES).astype(np.float32)
COMPLETION_LEVELS = 12  # unknown steps of an estimated table are completed from IJG tables this close (possible_equivalents)
AFFINE_MIN_KNOWN = 4  # known steps from which a table's flatness (affine_completion's offset) is fitted
# Relative RMS residual of that fit within which the affine completion is trusted: scaled and flattened tables fit
# within 0.06-0.09 (rounding), Pillow's Photoshop-like presets 0.10-0.24, and trusting them (at 0.3) read web_medium
# 5 levels high on the validation photos; a table of another shape (steps rising in raster order) misses by 0.46.
AFFINE_MISFIT_MAX = 0.1


def ijg_distances(log_steps: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(..., 100) mean squared log-step distance of tables (..., 64) (as logs) to each IJG table, over the `known` frequencies."""
    tables = torch.from_numpy(LOG_IJG_TABLES).to(log_steps.dtype)
    weight = known.to(log_steps.dtype)[..., None, :]
    return ((tables - log_steps[..., None, :]) ** 2 * weight).sum(dim=-1) / weight.sum(dim=-1).clamp(min=1.0)


def equivalent_index(distance: torch.Tensor) -> torch.Tensor:
    """Index of the nearest IJG table in (..., 100) distances; ties go to the higher quality."""
    return distance.shape[-1] - 1 - torch.argmin(torch.flip(distance, dims=[-1]), dim=-1)


def ijg_equivalent_quality(table: np.ndarray, known: np.ndarray | None = None) -> int:
    """The IJG quality whose luma table is closest to `table` in mean squared log-step (see module docstring).

    `known` masks the frequencies to compare (steps estimated from pixels can be
    unknown where every coefficient quantised to zero). Ties go to the higher quality.
    """
    table = np.asarray(table, float).reshape(64)
    known = np.ones(64, bool) if known is None else np.asarray(known, bool).reshape(64)
    if not known.any():
        raise ValueError("no known quantiser step to compare")
    distance = ijg_distances(torch.from_numpy(np.log(table)), torch.from_numpy(known))
    return int(IJG_QUALITIES[int(equivalent_index(distance))])


def whole_table_equivalents(log_tables: torch.Tensor) -> torch.Tensor:
    """(K,) IJG-equivalent indices of (K, 64) whole tables (as logs)."""
    tables = torch.from_numpy(LOG_IJG_TABLES).to(log_tables.dtype)
    return equivalent_index(((tables[None, :, :] - log_tables[:, None, :]) ** 2).mean(dim=-1))


def table_k1(like: torch.Tensor) -> torch.Tensor:
    """(64,) Table K.1 (IJG's luma base table, natural order) as a tensor of `like`'s dtype."""
    return torch.from_numpy(IJG_LUMA_BASE.astype(np.float32)).to(like.dtype)


def affine_completion(log_steps: torch.Tensor, known: torch.Tensor, log_ceiling: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """(64,) log steps: the `known` ones, the rest from the table a + b * Table K.1 that fits the known ones best
    (least squares on relative error), never above `log_ceiling`.

    Camera and phone tables are Table K.1 scaled (a = 0, the IJG shape) or flattened at high frequencies (a > 0):
    pixels rarely show their high-frequency steps, and completing those from the IJG shape reads a flatter table
    many levels low. Fewer than AFFINE_MIN_KNOWN known steps, a fit that is not increasing, or known steps that follow
    no such shape (relative residual over AFFINE_MISFIT_MAX) are completed from `fallback` (log steps) instead.
    """
    base = table_k1(log_steps)
    steps = torch.exp(log_steps)
    weight = known.to(steps.dtype) / steps**2  # relative error: equivalents are read in log steps
    total = weight.sum().clamp(min=1e-12)
    base_mean, step_mean = (weight * base).sum() / total, (weight * steps).sum() / total
    spread = (weight * (base - base_mean) ** 2).sum()
    slope = (weight * (base - base_mean) * (steps - step_mean)).sum() / spread.clamp(min=1e-12)
    offset = step_mean - slope * base_mean
    misfit = torch.sqrt((weight * (offset + slope * base - steps) ** 2).sum() / known.sum().clamp(min=1))  # relative RMS
    fitted = (known.sum() >= AFFINE_MIN_KNOWN) & (slope > 0) & (spread > 0) & (misfit <= AFFINE_MISFIT_MAX)
    completed = torch.where(fitted, torch.log((offset + slope * base).clamp(min=1.0, max=float(STEP_MAX))), fallback)
    return torch.where(known, log_steps, torch.minimum(completed, log_ceiling))


def possible_equivalents(log_steps: torch.Tensor, known: torch.Tensor, log_ceiling: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The IJG-equivalent index of a table of which only the `known` steps (as logs) are pinned down, and the (100,)
    bool mask of the equivalents the whole table can have.

    The estimate completes the unknown steps by `affine_completion`. The mask holds every equivalent from the IJG
    shape's to the affine one's, and those of completions from each IJG table within COMPLETION_LEVELS of the known
    steps' own equivalent (other encoders' tables follow IJG's shape loosely, not as far as a table many levels away),
    never above `log_ceiling` (the most each step can be, from the non-zero coefficients seen at its frequency).
    """
    tables = torch.from_numpy(LOG_IJG_TABLES).to(log_steps.dtype)  # (100, 64)
    around = equivalent_index(ijg_distances(log_steps, known))
    completed = torch.where(known[None, :], log_steps[None, :], torch.minimum(tables, log_ceiling[None, :]))  # (completion, 64)
    completed = torch.cat([completed, affine_completion(log_steps, known, log_ceiling, take(tables, around))[None]])
    nearest = whole_table_equivalents(completed)  # (completion + 1,)
    index = torch.arange(len(tables))
    estimate, ijg_shaped = nearest[-1], take(nearest, around)
    between = (index >= torch.minimum(estimate, ijg_shaped)) & (index <= torch.maximum(estimate, ijg_shaped))
    near = ((index - around).abs() <= COMPLETION_LEVELS).float()
    # every near completion's equivalent (a product, not index_put: several completions share an equivalent)
    reached = ((nearest[:-1, None] == index[None, :]).float() * near[:, None]).amax(dim=0) > 0
    return estimate, reached | between


def scaled_equivalents(steps: torch.Tensor, known: torch.Tensor, log_ceiling: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The IJG-equivalent indices (low, high) of Table K.1 scaled by the least and the most the `known` steps allow.

    A table of IJG's shape is Table K.1 times a scale, each step rounded by its encoder's rule (up, down or to the
    nearest: off by less than 1), so every known step bounds the scale to (step +- 1) / K.1 (a step at STEP_MAX, where
    baseline JPEG clamps them, from below only). Its unknown steps (never above `log_ceiling`) can be that table's at
    any scale within all the bounds, and its equivalent any between the two ends' (where the bounds contradict each
    other the table is not that shape, and the ends still bracket it).
    """
    base = table_k1(steps)
    least = torch.where(known, (steps - 1) / base, torch.zeros_like(base)).max()
    most = torch.where(known & (steps < STEP_MAX), (steps + 1) / base, torch.full_like(base, float(STEP_MAX))).min()
    scales = torch.stack([torch.minimum(least, most), torch.maximum(least, most)])  # (2,)
    completed = torch.minimum(torch.log((scales[:, None] * base[None, :]).clamp(min=1.0, max=float(STEP_MAX))), log_ceiling[None, :])
    completed = torch.where(known[None, :], torch.log(steps)[None, :], completed)  # (2, 64)
    ends = whole_table_equivalents(completed)
    return ends.min(), ends.max()
