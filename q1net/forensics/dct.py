"""The luma plane and its 8x8 block DCT: the domain where JPEG quantises, shared by grid detection and the lattice fit.

Written as matrix products (a block's DCT is one 64 x 64 product, every offset's in a window two
banded ones) so the same code runs in PyTorch and inside the exported programs.
"""

from __future__ import annotations

import numpy as np
import torch

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


def sliding_dct(offsets: int) -> torch.Tensor:
    """(8 offsets, offsets + 7): row (k, y) takes frequency k of the 8 samples from y, so `S @ window @ S.T` is the
    DCT of the 8x8 block at every offset (y, x) of a window, (k, y) by (l, x): two products, not 64 filters."""
    d = torch.from_numpy(dct_matrix())
    rows = torch.zeros(BLOCK, offsets, offsets + BLOCK - 1)
    for y in range(offsets):
        rows[:, y, y : y + BLOCK] = d
    return rows.reshape(BLOCK * offsets, offsets + BLOCK - 1)


def block_dct() -> torch.Tensor:
    """(64, 64): a row of an 8x8 block's 64 samples (row-major) times it gives the block's coefficients, natural order
    (the Kronecker product of the 1-D DCT; orthonormal, so its transpose is the inverse)."""
    d = torch.from_numpy(dct_matrix())
    return torch.kron(d, d).T.contiguous()


def luma(pixels: torch.Tensor) -> torch.Tensor:
    """(R, 1, H, W) float luma of (R, 3, H, W) RGB samples, level-shifted as the encoder sees it.

    The BT.601 weights sum to 1, so JPEG's chroma cancels: this recovers the
    decoder's luma up to the rounding of R, G and B (std about 0.2).
    """
    weights = torch.from_numpy(LUMA_WEIGHTS).to(pixels.device)
    return (pixels.float() * weights[None, :, None, None]).sum(dim=1, keepdim=True) - LEVEL_SHIFT
