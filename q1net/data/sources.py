"""Where uncompressed training images come from: a folder, DIV2K, or a procedural generator.

Every source is a sized, indexable collection of (H, W, 3) uint8 arrays with a
name per image, so the patch sampler does not care where pixels come from.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from q1net.predictor.images import find_images, load_rgb

LOSSLESS_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


class ImageSource(ABC):
    """A fixed, ordered collection of uncompressed RGB images."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> np.ndarray:
        """Image `index` as an (H, W, 3) uint8 array."""

    @abstractmethod
    def name(self, index: int) -> str: ...


class FolderSource(ImageSource):
    """Every lossless image below `root` (recursive, sorted).

    JPEG files are accepted with a warning: they carry a compression history of
    their own, so a label "compressed at q" would be wrong for them.
    """

    def __init__(self, root: str, allow_jpeg: bool = False, every: int = 1) -> None:
        """`every` n keeps every n-th image in sorted order (2: half the folder, for data-size studies)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root}: image folder not found")
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        found = find_images(self.root, LOSSLESS_SUFFIXES | JPEG_SUFFIXES)[::every]
        jpegs = [p for p in found if p.suffix.lower() in JPEG_SUFFIXES]
        self.paths = found if allow_jpeg else [p for p in found if p not in jpegs]
        if jpegs:
            effect = "used; their labels are only approximate" if allow_jpeg else "skipped (allow_jpeg: true uses them)"
            warnings.warn(f"{root}: {len(jpegs)} JPEG files carry a compression history of their own: {effect}", stacklevel=2)
        if not self.paths:
            raise FileNotFoundError(f"{root}: no lossless images (PNG, BMP, TIFF, PPM) found")

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        return load_rgb(self.paths[index])

    def name(self, index: int) -> str:
        return str(self.paths[index].relative_to(self.root))


DIV2K_SPLITS: dict[str, range] = {
    "train": range(1, 701),
    "val": range(701, 801),
    "test": range(801, 901),
}


class DIV2KSource(ImageSource):
    """DIV2K high-resolution PNGs with the paper's 700/100/100 split.

    `root` is the folder that `q1net data div2k` fills: it holds
    DIV2K_train_HR/0001.png ... 0800.png and DIV2K_valid_HR/0801.png ... 0900.png.
    """

    def __init__(self, root: str, split: Literal["train", "val", "test"] = "train") -> None:
        self.root, self.split = Path(root), split
        self.paths = [self._path(number) for number in DIV2K_SPLITS[split]]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{root}: {len(missing)} DIV2K {split} images missing (first: {missing[0]}); run `q1net data div2k --root {root}`"
            )

    def _path(self, number: int) -> Path:
        folder = "DIV2K_train_HR" if number <= 800 else "DIV2K_valid_HR"
        return self.root / folder / f"{number:04d}.png"

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        return load_rgb(self.paths[index])

    def name(self, index: int) -> str:
        return self.paths[index].name


class SyntheticSource(ImageSource):
    """Seeded dead-leaves images: occluding textured discs, blur and sensor noise.

    Dead leaves reproduce the edge and scale statistics of photographs, which is
    what a JPEG-artefact detector has to see; image `i` is the same on every call.
    """

    def __init__(
        self,
        count: int = 64,
        size: int = 256,
        seed: int = 0,
        discs: int = 300,
        min_radius: float = 2.0,
        max_radius: float = 80.0,
        max_blur: float = 1.5,
        max_noise: float = 4.0,
    ) -> None:
        self.count, self.size, self.seed, self.discs = count, size, seed, discs
        self.min_radius, self.max_radius = min_radius, max_radius
        self.max_blur, self.max_noise = max_blur, max_noise

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"dead_leaves_{self.seed}_{index:05d}"

    def load(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        size = self.size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        canvas = np.empty((size, size, 3), np.float32)
        canvas[:] = rng.uniform(0, 255, 3)
        covered = np.zeros((size, size), bool)
        # radii with density ~ r^-3 (scale invariance), drawn by inverse CDF
        lo, hi = self.min_radius**-2, self.max_radius**-2
        radii = (lo - rng.uniform(0, 1, self.discs) * (lo - hi)) ** -0.5
        for radius in radii:  # front to back: a disc only paints what is still uncovered
            cy, cx = rng.uniform(-radius, size + radius, 2)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & ~covered
            if not disc.any():
                continue
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            angle, period = rng.uniform(0, np.pi), rng.uniform(3, 40)
            amplitude = rng.uniform(0, 40) * (rng.uniform() < 0.6)
            grating = amplitude * np.sin((np.cos(angle) * xx[disc] + np.sin(angle) * yy[disc]) * 2 * np.pi / period)
            canvas[disc] = colour + grating[:, None]
            covered |= disc
            if covered.all():
                break
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, self.max_blur)))
        noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(0, self.max_noise), (size, size, 3))
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


class ConcatSource(ImageSource):
    """Several sources as one (photos and synthetic images mixed): image i of the whole is image j of one part."""

    def __init__(self, sources: list[ImageSource]) -> None:
        if not sources:
            raise ValueError("ConcatSource needs at least one source")
        self.sources = sources
        self.offsets = np.cumsum([0] + [len(source) for source in sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[ImageSource, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[part], index - int(self.offsets[part])

    def load(self, index: int) -> np.ndarray:
        source, inner = self._locate(index)
        return source.load(inner)

    def name(self, index: int) -> str:
        source, inner = self._locate(index)
        return source.name(inner)
