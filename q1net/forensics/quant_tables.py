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


def possible_equivalents(log_steps: torch.Tensor, known: torch.Tensor, log_ceiling: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The IJG-equivalent index of a table of which only the `known` steps (as logs) are pinned down, and the (100,)
    bool mask of the equivalents the whole table can have.

    The unknown steps are completed with the steps of an IJG table, but never above `log_ceiling` (the most each can
    be, from the non-zero coefficients seen at its frequency: other encoders' tables are often finer than IJG's at
    high frequencies). The estimate completes them from the table of the known steps' own equivalent; the mask
    completes them in turn from each IJG table within COMPLETION_LEVELS of it (other encoders' tables follow IJG's
    shape loosely, not as far as a table many levels away), and every equivalent of such a table is possible.
    """
    tables = torch.from_numpy(LOG_IJG_TABLES).to(log_steps.dtype)  # (100, 64)
    around = equivalent_index(ijg_distances(log_steps, known))
    completed = torch.where(known[None, :], log_steps[None, :], torch.minimum(tables, log_ceiling[None, :]))  # (completion, 64)
    nearest = equivalent_index(((tables[None, :, :] - completed[:, None, :]) ** 2).mean(dim=-1))  # (completion,)
    near = (torch.arange(len(tables)) - around).abs() <= COMPLETION_LEVELS
    return take(nearest, around), torch.zeros(len(tables), dtype=torch.bool).index_put((nearest,), near)
