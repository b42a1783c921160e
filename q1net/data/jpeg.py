"""JPEG round trips through Pillow's libjpeg-turbo, the encoder the paper's labels mean."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, JpegPresets

Subsampling = Literal["4:4:4", "4:2:2", "4:2:0"]
QUALITY_MIN, QUALITY_MAX = 1, 100  # the IJG quality scale the network predicts


def jpeg_encode(
    pixels: np.ndarray, quality: int | str, subsampling: Subsampling = "4:2:0", qtables: list[list[int]] | None = None
) -> bytes:
    """JPEG bytes of `pixels` (H, W, 3) or (H, W) uint8 at IJG `quality`, with one of Pillow's named presets, or with
    explicit quantisation tables (`qtables`: luma and chroma, 64 steps each, natural order; `quality` is then ignored)."""
    if qtables is not None:
        options: dict[str, object] = {"qtables": qtables, "subsampling": subsampling}
    elif isinstance(quality, str):
        if quality not in JpegPresets.presets:
            raise ValueError(f"unknown JPEG preset {quality!r}; Pillow has {', '.join(JpegPresets.presets)}")
        options = {"quality": quality}  # a preset fixes its own tables and subsampling
    elif QUALITY_MIN <= quality <= QUALITY_MAX:
        options = {"quality": int(quality), "subsampling": subsampling}
    else:
        raise ValueError(f"JPEG quality must be in {QUALITY_MIN}..{QUALITY_MAX}, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def jpeg_roundtrip(pixels: np.ndarray, quality: int | str, subsampling: Subsampling = "4:2:0") -> np.ndarray:
    """Encode `pixels` as `jpeg_encode` does and decode them again."""
    with Image.open(io.BytesIO(jpeg_encode(pixels, quality, subsampling))) as decoded:
        return np.asarray(decoded)
