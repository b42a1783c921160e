"""The luma plane and its 8x8 block DCT: the domain where JPEG quantises, shared by grid detection and the lattice fit.

Written as tensor operations (a DCT is a convolution with the 64 basis images) so the
same code runs in PyTorch and inside the exported programs.
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


def dct_basis() -> torch.Tensor:
    """(64, 1, 8, 8) basis images: convolving a luma plane with them gives each 8x8 window's coefficients, natural order."""
    d = torch.from_numpy(dct_matrix())
    return (d[:, None, :, None] * d[None, :, None, :]).reshape(BLOCK * BLOCK, 1, BLOCK, BLOCK)


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
