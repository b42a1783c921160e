"""The GPU campaign's code path (q1net.tools.gpu_train) on the CPU at a tiny budget: packed photos in, packed weights out."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from q1net.data.packed import PackedSource, crop_corners, pack_photos
from q1net.data.sources import FolderSource, SyntheticSource
from q1net.nets.q1net import create_model
from q1net.predictor.weights import load_weights, save_weights
from q1net.tools.gpu_train import main

TINY = {
    "trainer": {"log_every_n_steps": 1, "val_check_interval": 2, "check_val_every_n_epoch": None},
    "model": {
        "class_path": "q1net.models.modules.Q1Net",
        "init_args": {"k": 2, "compile": False, "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}}},
    },
    "data": {
        "batch_size": 16, "crop_size": 32, "patches_per_crop": 2, "num_workers": 0, "val_patches": 32,
        "val_images": 1, "val_image_qualities": 2, "val_image_size": 64, "smooth_share": 0.1,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for split, count, size in (("train", 3, 96), ("val", 2, 64)):
        (root / split).mkdir()
        for i in range(count):
            Image.fromarray(SyntheticSource(count=count, size=size, seed=len(split)).load(i)).save(root / split / f"{i}.png")
    return root


def test_packing_keeps_every_photo_within_the_budget(folders, tmp_path):
    source = FolderSource(str(folders / "train"))
    written = pack_photos(source, tmp_path / "all.zip", crop=32)
    packed = PackedSource(str(tmp_path / "all.zip"))
    assert written["images"] == len(packed) == 3 * 9  # 96 px: a 3x3 grid of 32-px crops each
    assert {name.split("_")[0] for name in packed.names} == {"0000", "0001", "0002"}
    assert packed.load(0).shape == (32, 32, 3)
    np.testing.assert_array_equal(packed.load(0), source.load(0)[:32, :32])  # lossless, MCU-aligned
    small = pack_photos(source, tmp_path / "small.zip", crop=32, max_bytes=written["bytes"] // 3)
    assert small["bytes"] <= written["bytes"] // 3 and small["images"] >= 3  # a crop of every photo before a second of any
    assert sorted(crop_corners(100, 40, 32)) == [(0, 0), (32, 0), (64, 0)] and crop_corners(100, 40, 32)[:2] == [(0, 0), (64, 0)]


def test_campaign_trains_tunes_and_packs_on_the_cpu(folders, tmp_path):
    packed, out = tmp_path / "packed", tmp_path / "out"
    pack_photos(FolderSource(str(folders / "train")), packed / "train.zip", crop=32)
    pack_photos(FolderSource(str(folders / "val")), packed / "val.zip", crop=None)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    start = tmp_path / "start.safetensors"
    save_weights(create_model("q1net_baseline", k=2), start, {"tau": 90.0})
    argv = [
        "--config",
        str(config),
        "--packed",
        str(packed),
        "--out",
        str(out),
        "--minutes",
        "0.05",
        "--init",
        str(start),
        "--accelerator",
        "cpu",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] >= 1 and summary["patches"] == 16 * summary["steps"]
    assert set(summary["validation"]["after"]) == {"tau", "mae", "mae_calibrated_held_out"} and summary["validation"]["before"]
    shipped = load_weights(out / "q1net_gpu.safetensors")
    assert shipped.tau == summary["validation"]["after"]["tau"] and shipped.meta["recipe"]["text"] == config.read_text()
    assert (out / "metrics.csv").stat().st_size > 0
