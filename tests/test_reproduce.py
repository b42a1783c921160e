"""`q1net reproduce` end to end on tiny folders, the Table 2 peers, and the whole-crop data mode."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from q1net.data.datamodule import PatchDataModule
from q1net.data.patches import PatchSampler, patch_sobel, sobel_magnitude
from q1net.data.sources import SyntheticSource
from q1net.nets.peers import PEERS, PeerNetwork, centre_crop
from q1net.tools.reproduce import ROWS

PAPER_PARAMETERS = {"jqe_like": 217_000, "qest_like": 213_000}


@pytest.mark.parametrize("arch", sorted(PEERS))
def test_peers_take_their_crop_and_answer_on_the_quality_scale(arch):
    net = PeerNetwork(arch).eval()
    with torch.no_grad():
        out = net(torch.full((2, 3, net.input_size, net.input_size), 128.0))
    assert out.shape == (2, 1) and ((out >= 0) & (out <= 100)).all()
    if arch in PAPER_PARAMETERS:  # built from the paper's description: its parameter count within 1 %
        assert abs(sum(p.numel() for p in net.parameters()) - PAPER_PARAMETERS[arch]) < 0.01 * PAPER_PARAMETERS[arch]


def test_centre_crop_is_on_the_coding_grid():
    image = np.arange(300 * 410 * 3, dtype=np.uint32).reshape(300, 410, 3).astype(np.uint8)
    crop = centre_crop(image, 224)
    top, left = (300 - 224) // 2 // 16 * 16, (410 - 224) // 2 // 16 * 16
    assert crop.shape == (3, 224, 224) and np.array_equal(crop, image[top : top + 224, left : left + 224].transpose(2, 0, 1))
    assert centre_crop(image[:100, :100], 224).shape == (3, 224, 224)  # small images are padded


def test_whole_crop_mode_gives_one_coded_crop_per_sample():
    images = [SyntheticSource(count=1, size=320, seed=1).load(0)]
    batch = PatchSampler(crop_size=256, patches_per_crop=1, whole_crop=True).batch(images, 3, np.random.default_rng(0))
    assert batch.patches.shape == (3, 3, 256, 256) and batch.patches.dtype == np.uint8
    with pytest.raises(ValueError, match="smaller than one 256x256 crop"):
        PatchSampler(crop_size=256, whole_crop=True).sample(images[0][:200], np.random.default_rng(0))
    module = PatchDataModule(
        SyntheticSource(2, 288, 0), SyntheticSource(1, 288, 1), batch_size=4, crop_size=224, crop_input=True, val_patches=4
    )
    module.setup("fit")
    crops, qualities = next(iter(module.train_dataloader()))
    assert crops.shape == (4, 3, 224, 224) and qualities.shape == (4,)


def test_patch_sobel_is_the_mean_sobel_magnitude_of_the_luma(photo):
    patches = np.stack([photo[:16, :16], photo[40:56, 8:24], np.full((16, 16, 3), 90, np.uint8)]).transpose(0, 3, 1, 2)
    expected = [
        sobel_magnitude(p.transpose(1, 2, 0).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).mean() for p in patches
    ]
    np.testing.assert_allclose(patch_sobel(patches), expected, rtol=1e-5)
    assert patch_sobel(patches)[2] == 0  # a flat block has no edges: Q1-Sobel drops it first


def test_rows_cover_both_tables():
    assert {row.name for row in ROWS if row.table == 3} == {
        "Q1-Regressor",
        "Q1-Classifier",
        "Q1-LambdaQ",
        "Q1-Lambda1",
        "Q1-Light",
        "Q1-Heavy",
        "Q1-No-BB",
        "Q1-Sobel",
        "Q1-Softmax",
        "Baseline",
    }
    assert {row.name for row in ROWS if row.table == 2} == {"MobileNetV2", "EfficientNet-B0", "ShuffleNet V2", "JQE-like", "Q-EST-like"}


def write_folder(folder, count, seed):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(SyntheticSource(count=count, size=288, seed=seed).load(i)).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow  # 90 s: rows trained, evaluated and tabulated end to end (make test-full)
def test_reproduce_trains_evaluates_and_writes_one_table(tmp_path):
    train, val, test = (write_folder(tmp_path / name, n, seed) for name, n, seed in (("train", 3, 0), ("val", 1, 1), ("test", 1, 2)))
    out = tmp_path / "out"
    tiny = [
        "--data.batch_size=32",
        "--data.val_patches=32",
        "--data.val_images=1",
        "--data.val_image_qualities=2",
        "--data.val_image_size=256",
    ]
    command = [sys.executable, "-m", "q1net.cli", "reproduce", "--budget", "0.1", "--quality-step", "50"]
    command += ["--train", str(train), "--val", str(val), "--test", str(test), "--out", str(out)]
    command += ["--rows", "Baseline,Q1-Sobel,Q1-Softmax,JQE-like", *(f"--train-arg={arg}" for arg in tiny)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert [r["row"] for r in report["rows"]] == ["Q1-Sobel", "Q1-Softmax", "Baseline", "JQE-like"]  # in the paper's order
    assert report["qualities"] == [1, 51]
    for row in report["rows"]:
        assert row["steps"] > 0 and row["images"] == 2 and np.isfinite(row["mae"]) and row["ms_per_image"] > 0
    assert report["rows"][0]["threshold"] is not None  # Q1-Sobel's threshold, grid-searched on val
    table = (out / "table.md").read_text()
    assert "| 3 | Baseline |" in table and "| 0.40 | 0.39 |" in table and "| 2 | JQE-like |" in table
    # one training run serves Q1-Regressor and Q1-Sobel (and the classifier both of its rows); runs are W&B-grouped
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["baseline", "classifier", "jqe_like", "regressor"]
    assert all((out / "runs" / name / "final.ckpt").is_file() for name in ("baseline", "jqe_like"))
    final = torch.load(out / "runs" / "baseline" / "final.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == report["rows"][2]["steps"]  # the evaluated weights are those the budget ended with
    assert report["group"].startswith("reproduce-") and list(out.glob("wandb/offline-run-*"))  # the table's run, beside the others
