"""The CNN's quality calibration: its fit, its rules, and how it travels with the weights and through the commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from q1net import Predictor
from q1net.nets.q1net import create_model
from q1net.predictor.calibration import Calibration, fit_calibration
from q1net.predictor.rules import vote
from q1net.predictor.weights import WeightsError, load_weights, pack_checkpoint, save_weights

ROOT = Path(__file__).resolve().parents[1]
SHIFTED = Calibration((0.0, 50.0, 100.0), (0.0, 40.0, 100.0))  # reads 50 as 40: far from the identity, easy to check


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(create_model("q1net_baseline", k=4), path, {"tau": 50.0})
    return path


def test_identity_by_default_and_for_weights_without_one(weights):
    assert Calibration().is_identity and Calibration.from_dict(None) == Calibration()
    assert np.allclose(Calibration()(np.array([0.0, 37.5, 100.0])), [0.0, 37.5, 100.0])
    assert load_weights(weights).calibration.is_identity


def test_fit_removes_a_quality_dependent_bias():
    rng = np.random.default_rng(0)
    true = rng.integers(1, 101, 3000).astype(float)
    bias = np.where(true < 50, 1.5, -1.0)  # the shape the shipped net shows: high at low qualities, low at high ones
    predicted = true + bias + rng.laplace(0, 0.3, true.size)
    calibration = fit_calibration(predicted, true)
    assert np.all(np.diff(calibration.values) >= 0)
    before, after = np.abs(predicted - true).mean(), np.abs(calibration(predicted) - true).mean()
    assert after < 0.5 * before, (before, after)


def test_fit_stays_near_the_identity_where_there_is_no_data():
    predicted = np.linspace(40, 60, 200)
    calibration = fit_calibration(predicted, predicted + 2.0)
    assert abs(calibration(np.array([50.0]))[0] - 52.0) < 0.2
    assert abs(calibration(np.array([5.0]))[0] - 5.0) < 0.5 and abs(calibration(np.array([95.0]))[0] - 95.0) < 0.5


@pytest.mark.parametrize(
    "bad",
    [
        {"knots": [0, 100], "values": [50, 40]},  # decreasing: would reorder the blocks
        {"knots": [0, 0, 100], "values": [0, 1, 100]},
        {"knots": [0, 100], "values": [0]},
        {"knots": [0, 100], "values": [0, float("nan")]},
        {"knots": [0, 100]},
        [0, 100],
    ],
)
def test_malformed_calibrations_are_refused(bad):
    with pytest.raises(ValueError):
        Calibration.from_dict(bad)


def test_calibrating_blocks_then_taking_the_median_calibrates_the_median():
    rng = np.random.default_rng(1)
    quality, confidence = rng.uniform(0, 100, 255), rng.uniform(80, 100, 255)
    calibration = Calibration((0.0, 30.0, 60.0, 100.0), (0.0, 35.0, 55.0, 100.0))
    everyone = torch.ones(255, dtype=torch.bool)
    confidence = torch.from_numpy(confidence)
    calibrated = vote(calibration.apply(torch.from_numpy(quality)), confidence, everyone, 90.0).quality
    assert float(calibrated) == pytest.approx(
        float(calibration(np.array(float(vote(torch.from_numpy(quality), confidence, everyone, 90.0).quality))))
    )


def test_packed_calibration_is_applied_unless_turned_off(weights, tmp_path):
    packed = tmp_path / "calibrated.safetensors"
    pack_checkpoint(weights, packed, 50.0, calibration=SHIFTED)
    assert load_weights(packed).calibration == SHIFTED
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    raw = Predictor.from_checkpoint(packed, calibrate=False, method="cnn").predict(image, return_blocks=True)
    calibrated = Predictor.from_checkpoint(packed, method="cnn").predict(image, return_blocks=True)
    assert np.allclose(calibrated.block_quality, SHIFTED(raw.block_quality))
    kept = calibrated.block_kept.ravel()
    assert calibrated.cnn_quality == pytest.approx(float(np.clip(np.median(calibrated.block_quality.ravel()[kept]), 1, 100)))
    assert not np.allclose(calibrated.block_quality, raw.block_quality)


def test_weights_with_a_broken_calibration_name_the_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    save_weights(create_model("q1net_baseline", k=4), path, {"tau": 50.0, "calibration": {"knots": [0, 100], "values": [9, 1]}})
    with pytest.raises(WeightsError, match=r"broken\.safetensors: calibration"):
        load_weights(path)


def q1net(*args):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "q1net.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_tune_tau_writes_what_pack_ships(weights, tmp_path):
    from PIL import Image

    from q1net.data.jpeg import jpeg_roundtrip
    from q1net.data.sources import SyntheticSource

    folder = tmp_path / "val"
    folder.mkdir()
    source = SyntheticSource(count=2, size=64, seed=3)
    for i in range(2):
        Image.fromarray(source.load(i)).save(folder / f"{i}.png")
    tuned = tmp_path / "tuned.json"
    result = q1net(
        "tune-tau", folder, "--checkpoint", weights, "--quality-min", "30", "--quality-max", "33", "--blocks", "2", "--out", tuned
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(tuned.read_text())
    assert set(written) >= {"tau", "calibration", "calibration_mae", "sweep"} and "calibration at tau" in result.stdout
    assert written["calibration_mae"]["mae_calibrated"] <= written["calibration_mae"]["mae"] + 1e-9

    packed = tmp_path / "packed.safetensors"
    result = q1net("pack", weights, packed, "--tuned", tuned)
    assert result.returncode == 0, result.stderr
    loaded = load_weights(packed)
    assert loaded.tau == written["tau"] and loaded.calibration == Calibration.from_dict(written["calibration"])
    image = jpeg_roundtrip(source.load(0), 31)
    assert Predictor.from_checkpoint(packed).calibration == loaded.calibration and Predictor.from_checkpoint(packed).predict(image)

    (tmp_path / "junk.json").write_text("{not json")
    refused = q1net("pack", weights, tmp_path / "never.safetensors", "--tuned", tmp_path / "junk.json")
    assert refused.returncode == 2 and "junk.json" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never.safetensors").exists()
