"""The luma plane and its 8x8 block DCT: the domain where JPEG quantises, shared by grid detection and the lattice fit."""

from __future__ import annotations

import functools

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
DCT_2D = np.kron(DCT, DCT)  # (64, 64): the 2-D DCT of a row-major flattened block, D @ B @ D.T, as one matrix


def to_luma(pixels: np.ndarray) -> np.ndarray:
    """Float32 luma of (..., 3) uint8 RGB samples, level-shifted as the encoder sees it.

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


def spread(count: int, most: int) -> np.ndarray:
    """Indices of at most `most` of `count` items, evenly spaced from the first to the last (all when they fit)."""
    if count <= most:
        return np.arange(count)
    return np.linspace(0, count - 1, most).round().astype(int)


def cut_blocks(plane: np.ndarray, tops: np.ndarray, lefts: np.ndarray, size: int = BLOCK) -> np.ndarray:
    """(N, size, size[, C]) squares of a (H, W[, C]) plane at the given top-left corners, without Python loops."""
    offsets = np.arange(size)
    return plane[(tops[:, None] + offsets)[:, :, None], (lefts[:, None] + offsets)[:, None, :]]


def unclipped_blocks(pixels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(rows, cols) bool over the whole blocks of the grid at (dy, dx): no sample at 0 or 255 in the block.

    Clipped samples left the quantisation lattice. Written as whole-array passes
    over contiguous memory (numpy reduces short trailing axes slowly): about
    4 ms for 2 MP on one core.
    """
    rows, cols = max(0, (pixels.shape[0] - dy) // BLOCK), max(0, (pixels.shape[1] - dx) // BLOCK)
    region = pixels[dy : dy + rows * BLOCK, dx : dx + cols * BLOCK]
    clipped = (region - np.uint8(1)) >= PIXEL_MAX - 1  # 0 wraps to 255: true for 0 and 255 only
    channels = [clipped[..., c] for c in range(clipped.shape[2])] if clipped.ndim == 3 else [clipped]
    per_pixel = functools.reduce(np.logical_or, channels)  # any channel, one strided pass each
    per_row_of_blocks = per_pixel.reshape(rows, BLOCK, cols * BLOCK).any(axis=1)
    return per_row_of_blocks.reshape(rows, cols, BLOCK).view(np.uint64)[..., 0] == 0  # 8 flags read as one word


def block_coefficients(blocks: np.ndarray) -> np.ndarray:
    """(N, 64) DCT coefficients (natural order) of (N, 8, 8) luma blocks: one matrix product."""
    return blocks.reshape(len(blocks), BLOCK * BLOCK) @ DCT_2D.T
