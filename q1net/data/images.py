"""Reading images into the 8-bit RGB arrays the network sees.

The conversions keep the decoded JPEG samples intact wherever they can:
- 16-bit samples are mapped back with round(v / 257), which undoes the usual
  8->16-bit widening (v * 257) exactly;
- alpha is dropped, not composited: compositing would change the very pixels
  that carry the JPEG fingerprint;
- palette images are expanded through their palette, grayscale is repeated
  over three channels, CMYK goes through Pillow's conversion.
EXIF orientation is ignored on purpose: the 8x8 coding grid lives in the stored
orientation, and turning the image could move the grid off the origin for
sides that are not multiples of 8. Quality does not depend on orientation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

MAX_PIXELS_DEFAULT = 100_000_000  # refuse larger images before decoding them (Pillow's own hard stop is 2 x 89.5 M)


class ImageReadError(Exception):
    """An input that cannot be turned into pixels; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str] | BinaryIO, problem: str) -> None:
        name = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else "<image in memory>"
        super().__init__(f"{name}: {problem}")
        self.path, self.problem = path, problem


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 array of `image`'s colour samples (see the module docstring)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        wide = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGB", "L"):
        rgb = image
    elif mode in ("RGBA", "RGBX", "RGBa"):
        rgb = image.convert("RGB")  # drops alpha, keeps the samples
    elif mode in ("LA", "La"):
        rgb = image.getchannel("L")
    else:  # P, PA, 1, CMYK, YCbCr, LAB, HSV
        rgb = image.convert("RGBA" if mode in ("P", "PA") else "RGB").convert("RGB")
    array = np.asarray(rgb)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (H, W, 3) uint8
    jpeg_luma_table: np.ndarray | None = None  # (64,) natural order: a JPEG file's own luma quantisation table
    notes: tuple[str, ...] = ()  # what the conversion did that a user should know (first frame only, alpha ignored, ...)
    codec: str | None = None  # another lossy codec the file was coded with (`lossy_codec`): its quality is not a JPEG one


LOSSY_FORMATS = {"JPEG2000": "JPEG 2000", "AVIF": "AVIF", "HEIF": "HEIF"}  # Pillow formats that are lossy (as usually written)


def webp_is_lossy(head: bytes) -> bool:
    """A WebP file's image chunk, read from its first bytes: "VP8 " is lossy, "VP8L" lossless (RIFF chunks after the header)."""
    offset = 12
    while offset + 8 <= len(head):
        fourcc, size = head[offset : offset + 4], int.from_bytes(head[offset + 4 : offset + 8], "little")
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc == b"VP8 "
        offset += 8 + size + (size & 1)
    return True  # no image chunk in reach (an animation's frames come later): say lossy, the cautious answer


def lossy_codec(image: Image.Image, head: bytes) -> str | None:
    """The lossy codec other than JPEG that `image` (whose file starts with `head`) was coded with, if any."""
    if image.format == "WEBP":
        return "WebP (lossy)" if webp_is_lossy(head) else None
    return LOSSY_FORMATS.get(image.format or "")


def file_head(path: str | os.PathLike[str] | BinaryIO, size: int = 1 << 16) -> bytes:
    """The first `size` bytes of a file, by path or from a seekable file object (its position kept)."""
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as file:
            return file.read(size)
    position = path.tell()
    path.seek(0)
    head = path.read(size)
    path.seek(position)
    return head


def conversion_notes(image: Image.Image) -> tuple[str, ...]:
    """The rules of `to_rgb_array` (and first-frame reading) that applied to `image`, in words."""
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated: first of {frames} frames read")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("16-bit samples mapped to 8 bits as round(v / 257)")
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        notes.append("transparency ignored")
    if image.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return tuple(notes)


def jpeg_luma_table(image: Image.Image) -> np.ndarray | None:
    """The luma quantisation table a JPEG's header declares (Pillow reports it in natural order); None otherwise."""
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    return np.array(tables[0], dtype=np.int64) if tables and 0 in tables and len(tables[0]) == 64 else None


def load_rgb(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Decode the image at `path` (its first frame) to (H, W, 3) uint8, or raise ImageReadError."""
    return read_image(path, max_pixels).pixels


def read_image(path: str | os.PathLike[str] | BinaryIO, max_pixels: int = MAX_PIXELS_DEFAULT) -> Decoded:
    """The pixels of the image at `path` or in a binary file object (its first frame) and, for JPEG, the header's luma table."""
    try:
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ImageReadError(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels decides below
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageReadError(path, f"{width}x{height} is over the {max_pixels}-pixel limit")
                image.load()
                codec = lossy_codec(image, file_head(path)) if image.format in ("WEBP", *LOSSY_FORMATS) else None
                return Decoded(to_rgb_array(image), jpeg_luma_table(image), conversion_notes(image), codec)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(path, f"cannot decode ({error})") from None


IMAGE_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".webp", ".jpg", ".jpeg", ".gif"})


def iter_images(root: str | os.PathLike[str], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> Iterator[Path]:
    """Image files below `root`, sorted, following no directory twice (symlink loops are safe), as they are found."""
    seen: set[tuple[int, int]] = set()  # folders only: bounded by the tree's folders, not its files
    for directory, subdirs, files in os.walk(root, followlinks=True):
        stat = os.stat(directory)
        if (stat.st_dev, stat.st_ino) in seen:
            subdirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subdirs.sort()
        yield from (Path(directory, name) for name in sorted(files) if Path(name).suffix.lower() in suffixes)


def find_images(root: str | os.PathLike[str], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[Path]:
    """`iter_images` as a list."""
    return list(iter_images(root, suffixes))
