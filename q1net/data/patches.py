"""Labelled JPEG patches from uncompressed images, made the cheap exact way.

JPEG codes each MCU on its own, so encoding a crop whose corner and size are
multiples of the MCU gives the same decoded pixels as encoding the whole image,
except within `edge_margin` pixels of the crop's border, where chroma
upsampling sees other neighbours (REFERENCE.md, "Exactness fact";
tests/test_patches.py checks it bit for bit). One encode of a small crop then
yields many patches at one quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from q1net.data.geometry import GEOMETRY, PatchGeometry
from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN, Subsampling, jpeg_roundtrip

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as JPEG's YCbCr
SMOOTH_SLOPE_MAX = 1.0  # grey levels per pixel: the steepest "gentle gradient" of smooth_image


def smooth_image(rng: np.random.Generator, size: int, solid: bool | None = None) -> np.ndarray:
    """A `size` square (size, size, 3) uint8 of content no quality can be read from: a solid colour or a gentle gradient.

    `solid` None draws either, half and half.

    Photos rarely hold enough of it for the confidence head to learn that such
    blocks say nothing (and near-flat photo patches are often rejected): without
    it the head gave a solid grey block a confidence just under tau.
    """
    colour = rng.uniform(0, 255, 3)
    if rng.uniform() < 0.5 if solid is None else solid:
        return np.broadcast_to(np.round(colour).astype(np.uint8), (size, size, 3)).copy()
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    ramp = np.cos(angle) * xx + np.sin(angle) * yy  # (size, size), one level per pixel
    slopes = rng.uniform(-SMOOTH_SLOPE_MAX, SMOOTH_SLOPE_MAX, 3)
    return np.clip(np.round(colour + ramp[..., None] * slopes), 0, 255).astype(np.uint8)


def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """|grad| of (..., H, W) float arrays by the 3x3 Sobel operator (valid region, 2 px smaller)."""
    windows = sliding_window_view(gray, (3, 3), axis=(-2, -1))
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    gx = np.einsum("...ijkl,kl->...ij", windows, kx)
    gy = np.einsum("...ijkl,kl->...ij", windows, kx.T)
    return np.hypot(gx, gy)


def patch_sobel(patches: np.ndarray) -> np.ndarray:
    """(N,) mean Sobel magnitude of the luma of (N, 3, P, P) uint8 patches: Q1-Sobel's block confidence."""
    gray = np.einsum("nchw,c->nhw", patches.astype(np.float32), LUMA_WEIGHTS)
    return sobel_magnitude(gray).mean(axis=(1, 2))


@dataclass(frozen=True)
class PatchBatch:
    """Patches as (N, 3, P, P) uint8 with their JPEG quality labels (N,) int."""

    patches: np.ndarray
    qualities: np.ndarray

    @staticmethod
    def concatenate(parts: list[PatchBatch]) -> PatchBatch:
        return PatchBatch(np.concatenate([p.patches for p in parts]), np.concatenate([p.qualities for p in parts]))


@dataclass(frozen=True)
class PatchSampler:
    """Draws a random MCU-aligned crop, JPEG-codes it at a random quality, cuts patches from it.

    With `all_shifts` a patch may start at any of the 8x8 grid phases, so the
    network learns to read blocks wherever the grid falls; without it every patch
    is one coding block plus its ring. `min_sobel` rejects near-flat patches
    (mean Sobel magnitude of the uncompressed luma below it; 0 keeps all).
    With `whole_crop` the one "patch" is the whole coded crop, `crop_size` square:
    the input of the paper's Table 2 peers (q1net.nets.peers). `smooth_share`
    of the crops are `smooth_image`s instead of crops of the images (never rejected
    as flat): what the confidence head must learn to distrust.
    """

    crop_size: int = 64
    patches_per_crop: int = 16
    quality_min: int = QUALITY_MIN
    quality_max: int = QUALITY_MAX
    subsampling: Subsampling = "4:2:0"
    all_shifts: bool = True
    min_sobel: float = 0.0
    whole_crop: bool = False
    smooth_share: float = 0.0
    geometry: PatchGeometry = GEOMETRY

    def __post_init__(self) -> None:
        g = self.geometry
        if self.crop_size % g.mcu:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of the {g.mcu}-pixel MCU")
        if not self.whole_crop and self.crop_size < g.patch + 2 * g.edge_margin + g.block:
            raise ValueError(f"crop_size {self.crop_size} is too small for one patch at every grid phase")
        if not QUALITY_MIN <= self.quality_min <= self.quality_max <= QUALITY_MAX:
            raise ValueError(f"quality range {self.quality_min}..{self.quality_max} is not inside 1..100")
        if not 0 <= self.smooth_share < 1:
            raise ValueError(f"smooth_share must be in [0, 1), got {self.smooth_share}")

    def _patch_starts(self, rng: np.random.Generator, crop: int, count: int) -> np.ndarray:
        """`count` patch starts along one crop side, each at a uniformly drawn grid phase."""
        g = self.geometry
        phase = rng.integers(0, g.block, count) if self.all_shifts else np.full(count, g.block - g.ring)
        lowest = g.edge_margin
        highest = crop - g.edge_margin - g.patch
        # starts = block_index * 8 + phase, inside [lowest, highest]
        first = -(-(lowest - phase) // g.block)
        last = (highest - phase) // g.block
        return (rng.integers(first, last + 1) * g.block + phase).astype(np.int64)

    def draw_quality(self, rng: np.random.Generator, band: int | None = None) -> int:
        """A uniform quality; with `band`, only from the `band` lowest or highest levels of the range.

        Training starts on the easy extremes and widens the band (see
        PatchDataModule.quality_warmup_steps): on the full range at once, the
        network first settles on the median and can stay there for long.
        """
        low, high = self.quality_min, self.quality_max
        if band is None or 2 * band >= high - low + 1:
            return int(rng.integers(low, high + 1))
        level = int(rng.integers(0, 2 * band))
        return low + level if level < band else high - (level - band)

    def sample(self, image: np.ndarray, rng: np.random.Generator, band: int | None = None, reject_flat: bool = True) -> PatchBatch:
        """Patches from one crop of `image` (H, W, 3) uint8; fewer than asked if flat ones were rejected (`reject_flat`)."""
        g = self.geometry
        height, width = image.shape[:2]
        crop_h = min(self.crop_size, height // g.mcu * g.mcu)
        crop_w = min(self.crop_size, width // g.mcu * g.mcu)
        if min(crop_h, crop_w) < g.patch + 2 * g.edge_margin + g.block:
            raise ValueError(f"image of {width}x{height} is too small for patch sampling")
        top = rng.integers(0, (height - crop_h) // g.mcu + 1) * g.mcu
        left = rng.integers(0, (width - crop_w) // g.mcu + 1) * g.mcu
        clean = image[top : top + crop_h, left : left + crop_w]
        quality = self.draw_quality(rng, band)
        if self.whole_crop:
            if (crop_h, crop_w) != (self.crop_size, self.crop_size):
                raise ValueError(f"image of {width}x{height} is smaller than one {self.crop_size}x{self.crop_size} crop")
            decoded = jpeg_roundtrip(clean, quality, self.subsampling)
            return PatchBatch(np.ascontiguousarray(decoded.transpose(2, 0, 1)[None]), np.array([quality], np.int64))

        rejecting = reject_flat and self.min_sobel > 0
        draws = self.patches_per_crop * (2 if rejecting else 1)
        ys, xs = self._patch_starts(rng, crop_h, draws), self._patch_starts(rng, crop_w, draws)
        if rejecting:
            gray = clean.astype(np.float32) @ LUMA_WEIGHTS
            edges = sliding_window_view(sobel_magnitude(gray), (g.patch - 2, g.patch - 2))
            busy = edges[ys, xs].mean(axis=(1, 2)) >= self.min_sobel
            ys, xs = ys[busy], xs[busy]
        ys, xs = ys[: self.patches_per_crop], xs[: self.patches_per_crop]

        decoded = jpeg_roundtrip(clean, quality, self.subsampling)
        windows = sliding_window_view(decoded, (g.patch, g.patch), axis=(0, 1))  # (h, w, 3, P, P)
        patches = np.ascontiguousarray(windows[ys, xs])
        return PatchBatch(patches, np.full(len(patches), quality, np.int64))

    def batch(self, images: list[np.ndarray], size: int, rng: np.random.Generator, band: int | None = None) -> PatchBatch:
        """`size` patches drawn crop by crop from randomly chosen `images` (and `smooth_image`s, `smooth_share` of the crops)."""
        parts, have = [], 0
        while have < size:
            if self.smooth_share and rng.uniform() < self.smooth_share:
                part = self.sample(smooth_image(rng, self.crop_size), rng, band, reject_flat=False)
            else:
                part = self.sample(images[rng.integers(len(images))], rng, band)
            parts.append(part)
            have += len(part.qualities)
        whole = PatchBatch.concatenate(parts)
        return PatchBatch(whole.patches[:size], whole.qualities[:size])
