"""The luma plane and its 8x8 block DCT: the domain where JPEG quantises, shared by grid detection and the lattice fit."""

from __future__ import annotations

import numpy as np

from q1net.data.geometry import GEOMETRY
from q1net.data.patches import LUMA_WEIGHTS

BLOCK = GEOMETRY.block
LEVEL_SHIFT = 128.0  # JPEG codes samples minus 128
PIXEL_MAX = 255


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """The orthonormal DCT-II matrix JPEG's FDCT computes (Annex A.3.3): coefficients = D @ block @ D.T."""
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.sqrt(2.0 / n) * np.cos((2 * x + 1) * k * np.pi / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


DCT = dct_matrix()


def luma_plane(pixels: np.ndarray) -> np.ndarray:
    """(H, W) float32 luma of (H, W, 3) uint8 RGB, level-shifted as the encoder sees it.

    The BT.601 weights sum to 1, so JPEG's chroma cancels: this recovers the
    decoder's luma up to the rounding of R, G and B (std about 0.2).
    """
    return pixels.astype(np.float32) @ LUMA_WEIGHTS - LEVEL_SHIFT


def block_grid(height: int, width: int, dy: int = 0, dx: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (tops, lefts) of every whole 8x8 block of a grid whose origin is at (dy, dx)."""
    tops = np.arange(dy, height - BLOCK + 1, BLOCK)
    lefts = np.arange(dx, width - BLOCK + 1, BLOCK)
    top, left = np.meshgrid(tops, lefts, indexing="ij")
    return top.ravel(), left.ravel()


def cut_blocks(plane: np.ndarray, tops: np.ndarray, lefts: np.ndarray) -> np.ndarray:
    """(N, 8, 8) blocks of a (H, W[, C]) plane at the given top-left corners, without Python loops."""
    offsets = np.arange(BLOCK)
    return plane[(tops[:, None] + offsets)[:, :, None], (lefts[:, None] + offsets)[:, None, :]]


def unclipped(pixels: np.ndarray, tops: np.ndarray, lefts: np.ndarray) -> np.ndarray:
    """(N,) bool: blocks with no sample at 0 or 255, whose luma is still on the quantisation lattice."""
    blocks = cut_blocks(pixels, tops, lefts)
    return ~((blocks == 0) | (blocks == PIXEL_MAX)).any(axis=tuple(range(1, blocks.ndim)))  # works for zero blocks too


def block_coefficients(luma: np.ndarray, tops: np.ndarray, lefts: np.ndarray) -> np.ndarray:
    """(N, 64) DCT coefficients (natural order) of the 8x8 luma blocks at the given corners."""
    blocks = cut_blocks(luma, tops, lefts)
    return (DCT @ blocks @ DCT.T).reshape(len(tops), BLOCK * BLOCK)
