"""The weights inside the package: loadable without unpickling, documented, and right on a real photo."""

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from q1net import Predictor
from q1net.data.jpeg import jpeg_roundtrip
from q1net.nets.q1net import count_parameters
from q1net.predictor.weights import load_weights, pretrained_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph that ships with matplotlib, shrunk 2x so its own JPEG grid is gone."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return np.asarray(rgb.reduce(2))  # 2x2 box average


def test_shipped_file_is_small_safetensors_with_its_meta():
    path = pretrained_path()
    assert path.suffix == ".safetensors" and path.stat().st_size < 1_000_000
    loaded = load_weights(path)
    assert loaded.net.config.as_dict() == {"k": 8, "alpha": 2, "bottlenecks": True, "head": "sigmoid"}
    assert count_parameters(loaded.net, with_bn_statistics=True) == 125_234
    assert 50 <= loaded.tau < 100 and "Q1Net" in loaded.meta["recipe"]["text"]
    assert (ROOT / loaded.meta["recipe"]["config"]).read_text() == loaded.meta["recipe"]["text"]  # the committed recipe


def test_model_card_names_the_shipped_file_by_hash():
    digest = hashlib.sha256(pretrained_path().read_bytes()).hexdigest()
    assert digest in (ROOT / "docs/MODEL_CARD.md").read_text()


def test_predictor_uses_the_shipped_tau():
    predictor = Predictor.from_pretrained()
    assert predictor.tau == load_weights(pretrained_path()).tau


def test_quality_37_saved_as_png_is_read_within_1(photo, tmp_path):
    """The issue's acceptance check, through the command line as a user runs it."""
    png = tmp_path / "q37.png"
    buffer = io.BytesIO()
    Image.fromarray(jpeg_roundtrip(photo, 37)).save(buffer, format="PNG")
    png.write_bytes(buffer.getvalue())
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "q1net.cli", "predict", str(png), "--format", "csv"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    quality = float(result.stdout.splitlines()[1].split(",")[1])
    assert abs(quality - 37) <= 1, quality
