"""Photos packed into one file of lossless PNG crops: how training data travels where only a few MiB may go.

A GPU machine lent for a run takes at most 64 MiB of files along (issue #12), and the
training photos are about 150 MB. `pack_photos` keeps, from every photo, crops spread
over it (MCU-aligned squares, so their JPEG coding is exact, q1net.data.patches) until
the file would pass its byte budget, each stored as PNG bytes: lossless, and smaller
than compressed raw arrays. `PackedSource` reads them back as an ImageSource.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from q1net.data.geometry import GEOMETRY
from q1net.data.sources import ImageSource


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def crop_corners(height: int, width: int, crop: int) -> list[tuple[int, int]]:
    """The corners of the non-overlapping `crop`-px squares of an image (MCU-aligned), in an order that spreads them:
    the first few are far apart (van der Corput order over the row-major grid)."""
    step = -(-crop // GEOMETRY.mcu) * GEOMETRY.mcu  # the crop side rounded up to whole MCUs
    corners = [(top, left) for top in range(0, height - crop + 1, step) for left in range(0, width - crop + 1, step)]

    def radical_inverse(index: int) -> float:
        value, weight = 0.0, 0.5
        while index:
            value, index, weight = value + weight * (index & 1), index >> 1, weight / 2
        return value

    return [corners[i] for i in sorted(range(len(corners)), key=radical_inverse)]


def pack_photos(source: ImageSource, out: str | os.PathLike[str], crop: int | None = 256, max_bytes: int = 48 << 20) -> dict:
    """Write `source`'s images (whole with `crop` None, else crops of `crop` px) as PNGs into a zip at `out`, within `max_bytes`.

    Crops are taken a round at a time (one more per photo each round) so that every photo is
    represented before any has many; packing stops before the budget would be passed.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = [source.load(i) for i in range(len(source))]
    entries: list[tuple[str, bytes]] = []
    total, rounds = 0, 0
    while True:
        added = 0
        for index, pixels in enumerate(images):
            if crop is None:
                if rounds:
                    continue
                part = pixels
            else:
                corners = crop_corners(*pixels.shape[:2], crop)
                if len(corners) <= rounds:
                    continue
                top, left = corners[rounds]
                part = np.ascontiguousarray(pixels[top : top + crop, left : left + crop])
            data = png_bytes(part)
            if total + len(data) > max_bytes:
                return _write(out, entries)
            entries.append((f"{index:04d}_{rounds:02d}_{source.name(index).replace('/', '_')}.png", data))
            total, added = total + len(data), added + 1
        if not added or crop is None:
            return _write(out, entries)
        rounds += 1


def _write(out: Path, entries: list[tuple[str, bytes]]) -> dict:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for name, data in entries:
            archive.writestr(name, data)
    return {"images": len(entries), "bytes": out.stat().st_size}


class PackedSource(ImageSource):
    """The images of a file written by `pack_photos`, in its order."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{path}: packed photos not found (make gpu-data writes them)")
        with zipfile.ZipFile(self.path) as archive:
            self.names = sorted(archive.namelist())
        if not self.names:
            raise FileNotFoundError(f"{path}: no images in the packed file")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> np.ndarray:
        with zipfile.ZipFile(self.path) as archive, Image.open(io.BytesIO(archive.read(self.names[index]))) as image:
            return np.asarray(image.convert("RGB"))

    def name(self, index: int) -> str:
        return self.names[index]
