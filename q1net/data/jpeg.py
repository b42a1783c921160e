"""JPEG round trips through Pillow's libjpeg-turbo, the encoder the paper's labels mean."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

Subsampling = Literal["4:4:4", "4:2:2", "4:2:0"]
QUALITY_MIN, QUALITY_MAX = 1, 100  # the IJG quality scale the network predicts


def jpeg_roundtrip(pixels: np.ndarray, quality: int, subsampling: Subsampling = "4:2:0") -> np.ndarray:
    """Encode `pixels` (H, W, 3) or (H, W) uint8 at IJG `quality` and decode them again."""
    if not QUALITY_MIN <= quality <= QUALITY_MAX:
        raise ValueError(f"JPEG quality must be in {QUALITY_MIN}..{QUALITY_MAX}, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality), subsampling=subsampling)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)
