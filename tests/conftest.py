"""Shared fixtures: small photo-like images made on the fly (no data set is needed)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from q1net.data.sources import SyntheticSource
from q1net.nets.q1net import create_model
from q1net.predictor.weights import save_weights

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach the network
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("Q1NET_CACHE", tempfile.mkdtemp(prefix="q1net-cache-"))  # ONNX exports of test nets stay out of ~/.cache


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A tiny random Q1Net (k=4) packed as q1net weights, tau 50: fast enough for every CLI test."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(create_model("q1net_baseline", k=4), path, {"tau": 50.0, "recipe": "test"})
    return path


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A 208x200 textured RGB image (odd-sized on purpose: not a multiple of the MCU)."""
    return SyntheticSource(count=1, size=208, seed=7).load(0)[:203, :197]


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return [SyntheticSource(count=4, size=160, seed=3).load(i) for i in range(4)]
