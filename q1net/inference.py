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

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from q1net.data.geometry import GEOMETRY, PatchGeometry
from q1net.images import load_rgb, to_rgb_array
from q1net.models.q1net import Q1Network
from q1net.weights import DEFAULT_PRETRAINED, load_checkpoint, load_weights, pretrained_path

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


ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's answer. `fallback` means no block passed tau (see the module docstring)."""

    quality: float
    confidence: float | None  # median confidence of the blocks that voted (None for a plain regressor)
    blocks_used: int
    blocks_sampled: int
    fallback: bool
    source: str | None = None  # the path, when the input was one
    block_quality: np.ndarray | None = field(default=None, repr=False)  # (ny, nx) grid, with return_blocks
    block_confidence: np.ndarray | None = field(default=None, repr=False)
    block_kept: np.ndarray | None = field(default=None, repr=False)  # (ny, nx) bool: the blocks that voted
    block_rows: np.ndarray | None = field(default=None, repr=False)  # patch top rows (ny,)
    block_cols: np.ndarray | None = field(default=None, repr=False)  # patch left columns (nx,)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.source,
            "quality": round(self.quality, 2),
            "confidence": None if self.confidence is None else round(self.confidence, 2),
            "blocks_used": self.blocks_used,
            "blocks_sampled": self.blocks_sampled,
            "fallback": self.fallback,
        }


def to_pixels(image: ImageInput) -> np.ndarray:
    """An (H, W, 3) uint8 array from a path, a PIL image or an array (see q1net.images for the rules)."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            if image.dtype == np.uint8:
                array = image if image.ndim == 3 else image[:, :, None]
                return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3])
            if image.dtype == np.uint16:
                return to_pixels(np.clip(np.round(image / 257.0), 0, 255).astype(np.uint8))
        raise ValueError(f"array of shape {image.shape} and dtype {image.dtype} is not an image (want HxW[x1|3|4], uint8 or uint16)")
    if isinstance(image, Image.Image):
        return to_rgb_array(image)
    return load_rgb(image)


class Predictor:
    """Q1Net's image-level answer: `Predictor.from_pretrained().predict("img.png").quality`."""

    def __init__(self, net: Q1Network, tau: float = TAU_DEFAULT, blocks: int = BLOCKS_DEFAULT, device: str = "cpu") -> None:
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
        self.net = net.eval().to(self.device)
        self.tau, self.blocks = tau, blocks

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_PRETRAINED, *, tau: float | None = None, **kwargs: object) -> Predictor:
        """The weights shipped inside the package (trained on real photos; docs/MODEL_CARD.md)."""
        loaded = load_weights(pretrained_path(name))
        return cls(loaded.net, tau=loaded.tau if tau is None else tau, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, tau: float | None = None, **kwargs: object) -> Predictor:
        """A Lightning training checkpoint (.ckpt) or a safetensors file written by q1net."""
        loaded = load_weights(path) if os.fspath(path).endswith(".safetensors") else load_checkpoint(path)
        return cls(loaded.net, tau=(loaded.tau or TAU_DEFAULT) if tau is None else tau, **kwargs)

    def predict(self, image: ImageInput, return_blocks: bool = False) -> Prediction:
        """One image: a path, a PIL image or an (H, W[, C]) uint8/uint16 array."""
        return self.predict_batch([image], return_blocks)[0]

    def predict_batch(self, images: list[ImageInput], return_blocks: bool = False) -> list[Prediction]:
        """Several images, their blocks scored in one forward pass."""
        scored = self.score_blocks([to_pixels(image) for image in images])
        return [
            self._decide(sample, quality, confidence, image, return_blocks)
            for image, (sample, quality, confidence) in zip(images, scored, strict=True)
        ]

    def score_blocks(self, images: list[np.ndarray]) -> list[tuple[BlockSample, np.ndarray, np.ndarray | None]]:
        """Per image: its sampled blocks and their (quality, confidence), all images in one forward pass."""
        samples = [sample_blocks(pixels, self.blocks) for pixels in images]
        quality, confidence = score_patches(self.net, np.concatenate([s.patches for s in samples]), self.device)
        bounds = np.cumsum([0] + [len(s.patches) for s in samples])
        return [
            (sample, quality[a:b], None if confidence is None else confidence[a:b])
            for sample, a, b in zip(samples, bounds[:-1], bounds[1:], strict=True)
        ]

    def _decide(
        self, sample: BlockSample, quality: np.ndarray, confidence: np.ndarray | None, image: ImageInput, return_blocks: bool
    ) -> Prediction:
        decision = decide(quality, confidence, self.tau)
        grid = (len(sample.rows), len(sample.cols))
        blocks = {}
        if return_blocks:
            blocks = {
                "block_quality": quality.reshape(grid),
                "block_confidence": None if confidence is None else confidence.reshape(grid),
                "block_kept": decision.kept.reshape(grid),
                "block_rows": sample.rows,
                "block_cols": sample.cols,
            }
        return Prediction(
            quality=decision.quality,
            confidence=None if confidence is None else float(np.median(confidence[decision.kept])),
            blocks_used=decision.blocks_used,
            blocks_sampled=len(quality),
            fallback=decision.fallback,
            source=os.fsdecode(image) if isinstance(image, (str, os.PathLike)) else None,
            **blocks,
        )
