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

from q1net.data.images import find_images, load_rgb

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


class GraphicsSource(ImageSource):
    """Seeded synthetic hard cases for the honest-answer checks (issue #13): content that is not a photograph.

    Kinds, in turn: solid colours, gentle gradients, pages of text, line art, screenshots (flat panels,
    buttons, text and a photo thumbnail) and photos with large flat areas. Solid colours and gradients
    hold almost no evidence of a JPEG quality; text, line art and screenshots do, at their edges.
    Image `i` is the same on every call.
    """

    KINDS = ("solid", "gradient", "text", "line_art", "screenshot", "flat_photo")

    def __init__(self, count: int = 36, size: int = 384, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> None:
        unknown = set(kinds) - set(self.KINDS)
        if unknown:
            raise ValueError(f"unknown graphics kinds {sorted(unknown)}; known: {', '.join(self.KINDS)}")
        self.count, self.size, self.seed, self.kinds = count, size, seed, tuple(kinds)

    def __len__(self) -> int:
        return self.count

    def kind(self, index: int) -> str:
        return self.kinds[index % len(self.kinds)]

    def name(self, index: int) -> str:
        return f"{self.kind(index)}_{self.seed}_{index:03d}"

    @staticmethod
    def kind_of_name(name: str) -> str:
        """The kind of an image from its `name`."""
        return name.rsplit("_", 2)[0]

    def load(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        return getattr(self, f"_{self.kind(index)}")(rng, self.size)

    @staticmethod
    def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(low, high, 3))

    def _solid(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.broadcast_to(np.array(self._colour(rng), np.uint8), (size, size, 3)).copy()

    def _gradient(self, rng: np.random.Generator, size: int) -> np.ndarray:
        start, end = np.array(self._colour(rng), np.float32), np.array(self._colour(rng), np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        along = np.cos(angle) * xx + np.sin(angle) * yy
        t = (along - along.min()) / (along.max() - along.min())  # 0 at one corner, 1 at the opposite one
        return np.round(start + t[..., None] * (end - start)).astype(np.uint8)

    def _page(self, rng: np.random.Generator, size: int, background: tuple[int, int, int]) -> tuple[Image.Image, object]:
        from PIL import ImageDraw

        image = Image.new("RGB", (size, size), background)
        return image, ImageDraw.Draw(image)

    def _words(self, rng: np.random.Generator, count: int) -> str:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return " ".join("".join(rng.choice(list(letters), rng.integers(2, 9))) for _ in range(count))

    def _text(self, rng: np.random.Generator, size: int) -> np.ndarray:
        from PIL import ImageFont

        background = (255, 255, 255) if rng.uniform() < 0.5 else self._colour(rng, 200, 256)
        image, draw = self._page(rng, size, background)
        font_size = int(rng.integers(10, 24))
        font = ImageFont.load_default(size=font_size)
        ink = self._colour(rng, 0, 90)
        for top in range(int(rng.integers(4, 12)), size - font_size, int(font_size * 1.5)):
            draw.text((int(rng.integers(4, 20)), top), self._words(rng, 12), fill=ink, font=font)
        return np.asarray(image)

    def _line_art(self, rng: np.random.Generator, size: int) -> np.ndarray:
        image, draw = self._page(rng, size, (255, 255, 255) if rng.uniform() < 0.5 else self._colour(rng, 180, 256))
        for _ in range(int(rng.integers(15, 40))):
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
            colour, width = self._colour(rng, 0, 200), int(rng.integers(1, 5))
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.line((x0, y0, x1, y1), fill=colour, width=width)
            elif shape == 1:
                draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour, width=width)
            else:
                draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour, width=width)
        return np.asarray(image)

    def _screenshot(self, rng: np.random.Generator, size: int) -> np.ndarray:
        from PIL import ImageFont

        image, draw = self._page(rng, size, self._colour(rng, 220, 256))
        draw.rectangle((0, 0, size, size // 10), fill=self._colour(rng, 30, 120))  # title bar
        draw.rectangle((0, size // 10, size // 4, size), fill=self._colour(rng, 200, 245))  # side panel
        font = ImageFont.load_default(size=int(rng.integers(11, 16)))
        for row in range(6):
            top = size // 10 + 10 + row * size // 8
            draw.text((8, top), self._words(rng, 2), fill=(20, 20, 20), font=font)
            button = (size // 4 + 16, top, size // 4 + 16 + int(rng.integers(60, 140)), top + 22)
            draw.rectangle(button, fill=self._colour(rng, 40, 220), outline=(90, 90, 90))
            draw.text((button[0] + 6, top + 4), self._words(rng, 1), fill=(255, 255, 255), font=font)
        thumbnail = SyntheticSource(count=1, size=size // 3, seed=int(rng.integers(1 << 30))).load(0)
        image.paste(Image.fromarray(thumbnail), (size - size // 3 - 8, size - size // 3 - 8))
        return np.asarray(image)

    def _flat_photo(self, rng: np.random.Generator, size: int) -> np.ndarray:
        photo = SyntheticSource(count=1, size=size, seed=int(rng.integers(1 << 30))).load(0).copy()
        flat = self._colour(rng)
        cut = int(rng.uniform(0.4, 0.75) * size)
        if rng.uniform() < 0.5:
            photo[:cut] = flat  # a sky, a wall, a studio backdrop
        else:
            photo[:, :cut] = flat
        return photo
