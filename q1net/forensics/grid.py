"""Where the 8x8 coding grid lies: detect its phase from the pixels of a cropped or shifted JPEG.

On the true grid every luma DCT coefficient of a decoded JPEG is an integer
multiple of an integer step, plus rounding noise, so it sits near an integer;
on any other of the 64 phases the blocks straddle two coding blocks and the
coefficients spread. The score of a phase is the mean of cos(2 pi c) over the
coefficients of many blocks: about exp(-2 pi^2 sigma^2) ~ 0.2 on the true grid,
about 0 elsewhere, at every quality. Flat or clipped blocks add the same to
every phase and so do not move the choice.

How sure the detector is: the lead of the best phase over the runner-up, in
units of the score's standard error without any lattice (cos of a uniform
phase has variance 1/2, over n coefficients). The runner-up, not the median,
because on a heavily compressed image the neighbouring phases still see many
flat blocks and score high too. Below `SURE_Z` the grid is taken to start at
the origin, the usual case for images that were never cropped, and the result
says the phase was assumed; the top-scoring phase is kept as `best`, which
the lattice verifier can still confirm (q1net.predictor.inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from q1net.forensics.dct import BLOCK, block_coefficients, block_grid, cut_blocks, spread, to_luma

GRID_BLOCKS = 256  # block positions scored at each of the 64 phases
RETRY_FACTOR = 4  # an unsure answer is retried once with this many times the blocks (z grows with their root)
SURE_Z = 5.0  # lead (in standard errors) from which the detected phase is trusted


@dataclass(frozen=True)
class GridPhase:
    """Offset (dy, dx) in 0..7 of the first coding block's top-left pixel, and how sure the detector is."""

    dy: int
    dx: int
    z: float  # lead of the best phase over the runner-up, in standard errors
    sure: bool  # False: nothing stood out, (dy, dx) = (0, 0) assumed
    best: tuple[int, int] = (0, 0)  # the top-scoring phase even when unsure: a candidate for the lattice to confirm


ORIGIN = GridPhase(0, 0, 0.0, False)


def phase_scores(pixels: np.ndarray, blocks: int = GRID_BLOCKS) -> tuple[np.ndarray, int]:
    """(8, 8) integer-lattice score of every grid phase (see the module docstring), and coefficients per phase.

    Each anchor's 15x15 neighbourhood holds its 8x8 block at all 64 phases, so only
    those pixels are converted to luma, never the whole image.
    """
    height, width = pixels.shape[:2]
    tops, lefts = block_grid(height - BLOCK + 1, width - BLOCK + 1)  # anchors that fit at every phase
    pick = spread(len(tops), blocks)
    tops, lefts = tops[pick], lefts[pick]
    regions = to_luma(cut_blocks(pixels, tops, lefts, 2 * BLOCK - 1))  # (N, 15, 15)
    shifted = sliding_window_view(regions, (BLOCK, BLOCK), axis=(1, 2))  # (N, dy, dx, 8, 8)
    coefficients = block_coefficients(shifted.reshape(-1, BLOCK, BLOCK)).reshape(len(tops), BLOCK, BLOCK, -1)
    return np.cos(2 * np.pi * coefficients).mean(axis=(0, 3)), len(tops) * coefficients.shape[-1]


def detect_grid(pixels: np.ndarray, blocks: int = GRID_BLOCKS) -> GridPhase:
    """The coding grid's phase in (H, W, 3) uint8 `pixels`; ORIGIN when the image is too small or shows none."""
    if min(pixels.shape[:2]) < 2 * BLOCK - 1:
        return ORIGIN
    phase = _detect(pixels, blocks)
    anchors = ((pixels.shape[0] - BLOCK + 1) // BLOCK) * ((pixels.shape[1] - BLOCK + 1) // BLOCK)
    return phase if phase.sure or anchors <= blocks else _detect(pixels, RETRY_FACTOR * blocks)


def _detect(pixels: np.ndarray, blocks: int) -> GridPhase:
    scores, coefficients = phase_scores(pixels, blocks)
    order = np.argsort(scores.ravel())
    best, runner_up = int(order[-1]), int(order[-2])
    z = float((scores.flat[best] - scores.flat[runner_up]) / np.sqrt(0.5 / coefficients))
    if z < SURE_Z:
        return GridPhase(0, 0, z, False, (best // BLOCK, best % BLOCK))
    return GridPhase(best // BLOCK, best % BLOCK, z, True, (best // BLOCK, best % BLOCK))
