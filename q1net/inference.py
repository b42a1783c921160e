"""From an image to one quality level: sample blocks, score them, keep the confident, take the median.

The published rule (REFERENCE.md): n x n blocks spread uniformly on the 8x8
grid, run as one batch, keep predictions whose confidence is strictly above
tau, answer the median of the kept qualities.

When no block passes tau the published code answers 100. That hides the
failure and is wrong for most such images (flat, tiny or heavily filtered
ones are not all near-lossless). Here the answer is instead the median
quality of the most confident quarter of the blocks, and the result says so
with `fallback=True`, so a caller can treat it as a low-confidence answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from q1net.data.geometry import GEOMETRY, PatchGeometry

TAU_DEFAULT = 96.0  # confidence threshold found by grid search in the paper
BLOCKS_DEFAULT = 16  # blocks per side: 16 x 16 = 256 patches
FALLBACK_SHARE = 0.25  # with nothing above tau, the median of this most-confident share


@dataclass(frozen=True)
class BlockSample:
    """Patches cut on the coding grid: (N, 3, P, P) uint8 with their top-left corners."""

    patches: np.ndarray
    rows: np.ndarray  # (ny,) patch top rows
    cols: np.ndarray  # (nx,) patch left columns


def sample_blocks(image: np.ndarray, blocks: int = BLOCKS_DEFAULT, geometry: PatchGeometry = GEOMETRY) -> BlockSample:
    """Up to `blocks` x `blocks` patches of `image` (H, W, 3) uint8, row-major over the grid."""
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    height, width = image.shape[:2]
    rows, cols = geometry.aligned_starts(height, blocks), geometry.aligned_starts(width, blocks)
    if not len(rows) or not len(cols):
        raise ValueError(f"image of {width}x{height} is smaller than one {geometry.patch}x{geometry.patch} patch")
    windows = sliding_window_view(image, (geometry.patch, geometry.patch), axis=(0, 1))  # (h, w, 3, P, P)
    patches = windows[rows[:, None], cols[None, :]].reshape(-1, image.shape[2], geometry.patch, geometry.patch)
    return BlockSample(np.ascontiguousarray(patches), rows, cols)


@dataclass(frozen=True)
class Decision:
    quality: float
    blocks_used: int
    fallback: bool  # nothing passed tau: see the module docstring
    kept: np.ndarray = field(repr=False)  # (N,) bool, the blocks that voted


def decide(quality: np.ndarray, confidence: np.ndarray | None, tau: float = TAU_DEFAULT) -> Decision:
    """The tau rule: median quality of blocks with confidence > tau (all blocks when there is no confidence)."""
    if confidence is None:
        kept = np.ones(len(quality), bool)
        return Decision(float(np.median(quality)), len(quality), False, kept)
    kept = confidence > tau
    fallback = not kept.any()
    if fallback:
        share = max(1, int(np.ceil(FALLBACK_SHARE * len(confidence))))
        kept = np.zeros(len(confidence), bool)
        kept[np.argsort(-confidence, kind="stable")[:share]] = True
    return Decision(float(np.median(quality[kept])), int(kept.sum()), fallback, kept)


@torch.no_grad()
def score_patches(net: torch.nn.Module, patches: np.ndarray, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """Per-patch (quality, confidence) of a Q1Network for (N, 3, P, P) uint8 patches."""
    inputs = torch.from_numpy(patches).to(device=device, dtype=torch.float32)
    quality, confidence = net.quality_confidence(net(inputs))
    return quality.cpu().numpy(), None if confidence is None else confidence.cpu().numpy()
