"""Shared fixtures: small photo-like images made on the fly (no data set is needed)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

from q1net.data.sources import SyntheticSource

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach the network
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("Q1NET_CACHE", tempfile.mkdtemp(prefix="q1net-cache-"))  # ONNX exports of test nets stay out of ~/.cache


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A 208x200 textured RGB image (odd-sized on purpose: not a multiple of the MCU)."""
    return SyntheticSource(count=1, size=208, seed=7).load(0)[:203, :197]


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return [SyntheticSource(count=4, size=160, seed=3).load(i) for i in range(4)]
