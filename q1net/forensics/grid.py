"""Where the 8x8 coding grid lies: its phase, from the luma of regions cut at multiples of 8 (q1net.data.geometry).

Two statistics, both over every region:
- the lattice score: on the true grid every luma DCT coefficient of a decoded JPEG is an
  integer multiple of an integer step, plus rounding noise, so it sits near an integer;
  on any other of the 64 phases the blocks straddle two coding blocks and the coefficients
  spread. A phase scores the mean of cos(2 pi c) over its coefficients: about
  exp(-2 pi^2 sigma^2) ~ 0.2 on the true grid, about 0 elsewhere, at every quality. Flat or
  clipped blocks add the same to every phase and so do not move the choice;
- blockiness: the mean |luma step| across each of the 8 column (and row) phases of block
  borders. Heavy compression makes most blocks flat, so on a smooth image the lattice score
  sees little, but the borders carry every luma step (issue #13: large photos at quality
  1..10, cropped). Each direction gives its own phase.
How sure each is: the lead of the best phase over the runner-up in standard errors (for the
lattice score, cos of a uniform phase has variance 1/2 over n coefficients; for blockiness,
the spread of the per-region leads). The lattice score decides when it leads by SURE_Z;
otherwise blockiness proposes its phase when both directions lead by BLOCKY_Z, else the
lattice score's top phase is the candidate. An unsure phase is confirmed only by a strong
DCT lattice on it (q1net.predictor.program); unconfirmed, the grid is not found.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from q1net.data.geometry import REGIONS
from q1net.forensics.dct import BLOCK, sliding_dct
from q1net.forensics.ops import take

SURE_Z = 5.0  # lead (in standard errors) from which the lattice score's phase is trusted
BLOCKY_Z = 8.0  # lead from which blockiness proposes a phase in each direction
# Regions whose coefficients are taken at once. (64, 128, 128) floats are 4 MB, which malloc keeps for the next
# chunk and image; from 128 regions (8 MB) on, and all 256 of the default 16 x 16 at once (17 MB), the buffer went
# back to the kernel and was page-faulted in again each time (detection on a 2 MP photo 21-23 -> 10.6 ms here).
REGION_CHUNK = 64


class GridPhase(NamedTuple):
    """Tensors: the phase (dy, dx) in 0..7 of the first coding block's top-left pixel, and how sure the detector is."""

    dy: torch.Tensor
    dx: torch.Tensor
    z: torch.Tensor  # lead of the lattice score's best phase over its runner-up, in standard errors
    sure: torch.Tensor  # bool: the lattice score stood out; otherwise (dy, dx) is only a candidate to confirm
    blocky_z: torch.Tensor  # the weaker direction's blockiness lead


def lead(values: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the largest of `values` along `dim` and the gap to the second largest (topk: no sort needed)."""
    top = torch.topk(values, 2, dim=dim)
    return top.indices.select(dim, 0), top.values.select(dim, 0) - top.values.select(dim, 1)


class GridDetector(nn.Module):
    """(R, 1, side, side) level-shifted luma regions and (R,) float weights (0 for repeated regions) -> GridPhase."""

    def __init__(self) -> None:
        super().__init__()
        offsets = 2 * BLOCK  # every phase twice in each direction: the four blocks of a region at that phase
        sliding = sliding_dct(offsets)  # (8 offsets, offsets + 7), (k, y) rows
        # its transpose a buffer of its own: XNNPACK runs a product only by a constant, and a transposed view is not one
        self.register_buffer("sliding", sliding, persistent=False)
        self.register_buffer("sliding_t", sliding.T.contiguous(), persistent=False)
        # (l, x) columns -> x's phase: a product averages the cosines over l and both x of a phase
        column_phase = (torch.arange(BLOCK * offsets) % BLOCK)[:, None] == torch.arange(BLOCK)[None, :]
        self.register_buffer("column_phase", column_phase.float() / column_phase.sum(dim=0), persistent=False)
        borders = torch.zeros(BLOCK, REGIONS.side - 1)  # which luma steps (between columns j and j+1) sit on phase p's borders
        for p in range(BLOCK):
            borders[p, torch.arange(REGIONS.side - 1) % BLOCK == (p - 1) % BLOCK] = 1.0
        self.register_buffer("borders", borders / borders.sum(dim=1, keepdim=True), persistent=False)

    def integer_like(self, luma: torch.Tensor) -> torch.Tensor:
        """(R, 8, 8): each region's mean cos(2 pi c) over the coefficients of its four blocks at each phase.

        The DCT of the 8x8 block at every offset (y, x) < 16 of a region's 23 x 23 window is two matrix products
        (`sliding_dct`); offset (y, x) is the block of phase (y mod 8, x mod 8). (A convolution with the 64 basis
        images did the same sums in another order: 2.4 ms against 0.7 here on a 2 MP photo's regions.)"""
        span = self.sliding.shape[1]
        per_chunk = []
        for chunk in luma.split(REGION_CHUNK):
            coefficients = self.sliding @ chunk[:, 0, :span, :span] @ self.sliding_t  # (r, (k, y), (l, x))
            by_column_phase = coefficients.mul_(2 * math.pi).cos_() @ self.column_phase  # (r, (k, y), x mod 8)
            per_chunk.append(by_column_phase.reshape(len(chunk), -1, BLOCK, BLOCK).mean(dim=1))  # mean over (k, y div 8)
        return torch.cat(per_chunk)

    def forward(self, luma: torch.Tensor, weight: torch.Tensor) -> GridPhase:
        per_region = self.integer_like(luma)
        count = weight.sum().clamp(min=1.0)
        scores = (per_region * weight[:, None, None]).sum(dim=0).flatten() / count  # (64,)
        best, gap = lead(scores)
        z = gap / torch.sqrt(0.5 / (count * 4 * 64))
        sure = z >= SURE_Z

        columns = self.blockiness((luma[:, 0, :, 1:] - luma[:, 0, :, :-1]).abs().mean(dim=1), weight)  # steps across columns
        rows = self.blockiness((luma[:, 0, 1:, :] - luma[:, 0, :-1, :]).abs().mean(dim=2), weight)
        blocky_z = torch.minimum(rows[1], columns[1])
        blocky = ~sure & (blocky_z >= BLOCKY_Z)
        dy = torch.where(blocky, rows[0], best // BLOCK)
        dx = torch.where(blocky, columns[0], best % BLOCK)
        return GridPhase(dy, dx, z, sure, blocky_z)

    def blockiness(self, steps: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best border phase of (R, side - 1) mean luma steps, and its lead in standard errors of the per-region leads."""
        per_phase = steps @ self.borders.T  # (R, 8): mean step on each phase's borders
        total = (per_phase * weight[:, None]).sum(dim=0)
        best, _ = lead(total)
        second = torch.topk(total, 2).indices[1]
        gaps = take(per_phase, best, dim=1) - take(per_phase, second, dim=1)  # (R,)
        count = weight.sum().clamp(min=2.0)
        mean = (gaps * weight).sum() / count
        spread = torch.sqrt(((gaps - mean) ** 2 * weight).sum() / (count - 1)).clamp(min=1e-6)
        return best, mean / (spread / torch.sqrt(count))
