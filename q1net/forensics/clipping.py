"""Clipped blocks: samples the decoder pushed to 0 or 255, and the block each table would have had before that.

A decoded block is the inverse DCT of s * k plus rounding noise, then clipped to 0..255 in
each of R, G and B. Where ringing overshoots white paper or black ink the clipped samples
moved by up to tens of levels, so the block's coefficients leave its table's lattice and the
lattice fit cannot read them as they are. On text and line art on white nearly every block
with an edge is clipped, and those edges are the evidence (issue #13).

What is known of a clipped sample is one side: a channel at 255 was at least 255 before the
decoder clipped it, so the luma was at least what is seen (at most, for a channel at 0; a
sample with both is free). For a candidate table, alternating projections find a block both
on its lattice and consistent with the samples seen: take the DCT, move it onto the table's
lattice, take the inverse DCT, put back every sample that was not clipped and keep the
clipped ones on their side. ZEROING_ROUNDS rounds first only zero the coefficients under half
a step (a level chosen while the clipped samples are still far off would stick), then
DECLIP_ROUNDS rounds round to the lattice. The rounds start from the samples as seen: a start
further out (the clipped samples at their clip level) let fine wrong tables find a lattice
point near it on photos with a few clipped samples. The true table's block comes back onto its
lattice; a wrong table's cannot, with only the clipped samples free. Measured on paper-and-ink blocks at
IJG qualities 10..70 (tests/test_clipping.py): the true table recovers the coded levels of
95-100% of blocks and sits 5-30x nearer its lattice than the tables 5 qualities either side;
at 90 the steps are too fine to tell apart this way. Images never coded fit the all-ones
table of quality 100 as well as any, as unclipped blocks do.
"""

from __future__ import annotations

import torch

from q1net.forensics.dct import BLOCK, PIXEL_MAX, block_dct, luma
from q1net.forensics.ops import FAR, at_least, round_

ZEROING_ROUNDS = 3  # first rounds only zero the coefficients under half a step: no non-zero level is chosen yet
DECLIP_ROUNDS = 6  # then rounds onto the lattice


def block_at(pixels: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """(R, C, 8, 8): the block of grid phase (dy, dx) in each of the (R, C, side, side) regions (their first at that phase)."""
    offsets = torch.arange(BLOCK, device=pixels.device)
    return pixels.index_select(2, dy + offsets).index_select(3, dx + offsets)


def clipped_samples(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, 3, 8, 8) RGB blocks -> their level-shifted luma, and which samples have a channel at 255 (the luma was at
    least what is seen) and at 0 (at most); both: free. Each (R, 8, 8)."""
    return luma(blocks)[:, 0], (blocks >= PIXEL_MAX).any(dim=1), (blocks <= 0).any(dim=1)


class Declipper(torch.nn.Module):
    """Each candidate table's unclipped version of (N, 8, 8) luma blocks: (T, N, 64) coefficients, natural order.

    Blocks are rows of 64 samples and the 2-D DCT one 64 x 64 matrix (the Kronecker product of the 1-D one), so a
    round is two large matrix products; a sample's bounds (itself when unclipped, one side when clipped, none when
    free) are fixed before the rounds."""

    def __init__(self, rounds: int = DECLIP_ROUNDS, zeroing_rounds: int = ZEROING_ROUNDS) -> None:
        super().__init__()
        self.rounds, self.zeroing_rounds = rounds, zeroing_rounds
        forward_2d = block_dct()
        self.register_buffer("forward_2d", forward_2d, persistent=False)  # rows @ it: coefficients
        self.register_buffer("inverse_2d", forward_2d.T.contiguous(), persistent=False)

    def forward(self, seen: torch.Tensor, high: torch.Tensor, low: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """`seen` luma (N, 8, 8), `high` and `low` from `clipped_samples`, candidate `tables` (T, 64)."""
        steps = tables[:, None, :]  # (T, 1, 64)
        seen = seen.flatten(1)
        unbounded = torch.full_like(seen, FAR)
        floor = torch.where(low.flatten(1), -unbounded, seen)  # at 255: at least what is seen; at 0: at most; both: free
        ceiling = torch.where(high.flatten(1), unbounded, seen)
        block, half = seen.expand(len(tables), -1, -1), steps / 2  # (T, N, 64)
        for step in range(self.zeroing_rounds + self.rounds):
            c = block @ self.forward_2d
            on_lattice = c.mul_(at_least(c.abs(), half)) if step < self.zeroing_rounds else round_(c.div_(steps)).mul_(steps)
            block = torch.minimum(torch.maximum(on_lattice @ self.inverse_2d, floor), ceiling)  # the delegates take these
        return block @ self.forward_2d
