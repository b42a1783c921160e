"""Patch geometry: the one place that knows JPEG block, ring and MCU sizes.

A Q1Net input is one 8x8 coding block plus a 4-pixel ring of its neighbours
(paper, Sec. 2.3). Everything else (sampler, predictor, exporters, checkpoint
meta) reads these numbers from here or from the meta written from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PatchGeometry:
    block: int = 8  # JPEG DCT block side
    ring: int = 4  # neighbour pixels kept around the block
    mcu: int = 16  # 4:2:0 minimum coded unit: crops aligned to it encode exactly
    edge_margin: int = 2  # pixels at a crop's border that chroma upsampling may change

    @property
    def patch(self) -> int:
        return self.block + 2 * self.ring

    def aligned_starts(self, length: int, count: int) -> np.ndarray:
        """`count` patch starts spread uniformly over a side of `length` pixels.

        Starts sit on the coding grid (block origin 8i, patch start 8i - ring) when
        the side holds at least one such patch; a side too short for that but at
        least one patch long gets a single start at 0. Returns fewer than `count`
        starts when the side has fewer grid positions, none when it is shorter
        than a patch.
        """
        if length < self.patch:
            return np.zeros(0, dtype=np.int64)
        first_block, last_block = 1, (length - self.patch + self.ring) // self.block
        if last_block < first_block:
            return np.zeros(1, dtype=np.int64)
        available = last_block - first_block + 1
        if count >= available:
            blocks = np.arange(first_block, last_block + 1)
        else:  # the centre block of each of `count` equal cells
            blocks = first_block + (np.arange(count) * 2 + 1) * available // (2 * count)
        return blocks.astype(np.int64) * self.block - self.ring

    def as_dict(self) -> dict[str, int]:
        return asdict(self) | {"patch": self.patch}


GEOMETRY = PatchGeometry()


@dataclass(frozen=True)
class RegionGeometry:
    """What the predictor cuts from an image: squares at multiples of 8 that hold a patch and a block at every grid phase.

    A region starting at a multiple of 8 holds, for each of the 64 grid phases, the 16x16
    patch around one coding block (at offset (phase + ring) mod 8) and one whole 8x8 block:
    everything grid detection, the CNN and the lattice read, whatever the phase turns out
    to be. This is the input contract of the exported programs (q1net.predictor.program):
    an app cuts `per_side` x `per_side` regions with `starts` and needs nothing else.
    """

    patch: PatchGeometry = GEOMETRY
    per_side: int = 16  # regions along each side: 256, as many as the paper's blocks

    @property
    def side(self) -> int:
        return self.patch.patch + self.patch.block  # 24: a patch at any of the 8 phases

    def starts(self, length: int, count: int) -> np.ndarray:
        """`count` region starts along a side of `length` pixels: multiples of 8, the centres of `count` equal cells.

        With A = (length - side) // 8 + 1 possible starts, start i is 8 floor((2i + 1) A / (2 count)):
        distinct when A >= count, repeating (never skipping one) when the side is shorter.
        A side shorter than a region gets one start at 0 (the image is padded to a region).
        """
        available = max(1, (length - self.side) // self.patch.block + 1)
        return (self.patch.block * ((2 * np.arange(count) + 1) * available // (2 * count))).astype(np.int64)

    def patch_offset(self, phase: int) -> int:
        """Where, inside a region, the patch around a coding block of grid phase `phase` (0..7) starts."""
        return (phase + self.patch.ring) % self.patch.block


REGIONS = RegionGeometry()
