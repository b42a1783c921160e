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
