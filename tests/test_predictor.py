"""The Predictor API and the predict / evaluate / tune-tau commands, with a small net saved by the test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegPresets

from q1net import Predictor
from q1net.data.jpeg import jpeg_roundtrip
from q1net.data.sources import SyntheticSource
from q1net.forensics.quant_tables import ijg_equivalent_quality, ijg_luma_table
from q1net.predictor.inference import read_input
from q1net.predictor.weights import WeightsError, load_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    source = SyntheticSource(count=2, size=96, seed=11)
    for i in range(2):
        Image.fromarray(jpeg_roundtrip(source.load(i), 37)).save(folder / f"q37_{i}.png")
    (folder / "sub").mkdir()
    Image.fromarray(source.load(0)).save(folder / "sub" / "clean.png")
    return folder


def q1net(*args, cwd=None):
    env = os.environ | {"PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-m", "q1net.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_weights_round_trip_with_their_meta(weights):
    loaded = load_weights(weights)
    assert loaded.net.config.k == 4 and loaded.tau == 50.0 and loaded.meta["geometry"]["patch"] == 16


def test_predict_accepts_paths_pil_images_and_arrays(weights, images):
    predictor = Predictor.from_checkpoint(weights)
    path = images / "q37_0.png"
    by_path = predictor.predict(path)
    by_image = predictor.predict(Image.open(path))
    by_array = predictor.predict(np.asarray(Image.open(path)))
    assert by_path.quality == by_image.quality == by_array.quality
    assert by_path.source == str(path) and by_image.source is None
    assert by_path.blocks_sampled == 10 * 10  # a 96-px side holds 10 grid positions
    assert 1 <= by_path.blocks_used <= by_path.blocks_sampled


def test_batch_equals_one_by_one_and_grids_are_returned(weights, images):
    predictor = Predictor.from_checkpoint(weights, blocks=4)
    paths = sorted(images.glob("*.png"))
    batch = predictor.predict_batch(paths, return_blocks=True)
    assert [p.quality for p in batch] == [predictor.predict(p).quality for p in paths]
    first = batch[0]
    assert first.block_quality.shape == first.block_confidence.shape == first.block_kept.shape == (4, 4)
    assert first.block_kept.sum() == first.blocks_used


def test_pixel_conversion_rules():
    gray16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 257
    np.testing.assert_array_equal(read_input(gray16).pixels[:, :, 0], np.arange(64).reshape(8, 8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    assert read_input(rgba).pixels.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="not an image"):
        read_input(np.zeros((8, 8, 5), np.uint8))


def test_missing_or_foreign_weights_are_named(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        Predictor.from_checkpoint(tmp_path / "none.ckpt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match=r"junk\.safetensors"):
        Predictor.from_checkpoint(junk)


@pytest.mark.parametrize("style", ["table", "json", "csv"])
def test_cli_formats(weights, images, style):
    result = q1net("predict", images, "--checkpoint", weights, "--format", style, "--blocks", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    if style == "json":
        rows = [json.loads(line) for line in lines]
        fields = {"path", "quality", "quality_low", "quality_high", "determined", "confidence", "blocks_used", "blocks_sampled", "seconds"}
        assert len(rows) == 3 and set(rows[0]) >= fields
        assert rows[0]["blocks_sampled"] == 16
    elif style == "csv":
        assert lines[0].startswith("path,quality,quality_low,quality_high,determined,confidence") and len(lines) == 4
    else:
        assert "quality" in lines[0] and len(lines) == 4 and "sub/clean.png" in result.stdout


def test_cli_bad_files_are_named_the_rest_predicted_exit_1(weights, images, tmp_path):
    (tmp_path / "text.png").write_text("hello")
    Image.fromarray(np.zeros((15, 15, 3), np.uint8)).save(tmp_path / "small.png")
    result = q1net(
        "predict",
        tmp_path / "text.png",
        images / "q37_0.png",
        tmp_path / "small.png",
        tmp_path / "gone.png",
        "--checkpoint",
        weights,
        "--format",
        "json",
    )
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert "text.png: not a recognised image format" in errors[0] and "small.png" in errors[1] and "gone.png" in errors[2]
    assert json.loads(result.stdout)["path"].endswith("q37_0.png")


def test_cli_usage_errors_exit_2(weights, images):
    assert q1net("predict", images, "--blocks", "0").returncode == 2
    assert q1net("predict", images, "--checkpoint", "/nonexistent.ckpt").returncode == 2
    assert q1net("frobnicate").returncode == 2


def test_cli_heatmap_file_and_folder(weights, images, tmp_path):
    one = tmp_path / "one.png"
    assert q1net("predict", images / "q37_0.png", "--checkpoint", weights, "--heatmap", one).returncode == 0
    width, height = Image.open(one).size
    assert width > height > 96  # the photo beside its block grid, with a colour bar and a title
    result = q1net("predict", images, "--checkpoint", weights, "--heatmap", tmp_path / "maps")
    assert result.returncode == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["clean_heatmap.png", "q37_0_heatmap.png", "q37_1_heatmap.png"]


def test_evaluate_writes_summary_and_pictures(weights, images, tmp_path):
    out = tmp_path / "eval"
    result = q1net(
        "evaluate",
        images,
        "--checkpoint",
        weights,
        "--quality-min",
        "40",
        "--quality-max",
        "42",
        "--blocks",
        "4",
        "--out",
        out,
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    row = report["results"][0]
    assert row["images"] == 3 * 3 and set(row["per_quality_mae"]) == {"40", "41", "42"}
    assert row["mae"] >= 0 and row["sde_abs"] >= 0 and 0 <= row["exact_fraction"] <= 1
    assert json.loads((out / "summary.json").read_text()) == report
    assert row["method"] == "hybrid" and set(row["by_method"]) == {"hybrid", "cnn", "lattice"}
    assert row["by_method"]["hybrid"]["mae"] == row["mae"] and row["by_method"]["hybrid"]["decided_by_lattice"] > 0.5
    assert Image.open(out / "confusion.png").size[0] > 100 and (out / "per_quality.png").is_file()


def test_evaluate_block_sweep_and_tune_tau(weights, images):
    sweep = q1net(
        "evaluate", images, "--checkpoint", weights, "--quality-min", "50", "--quality-max", "50", "--blocks", "2,4", "--format", "json"
    )
    assert [row["blocks"] for row in json.loads(sweep.stdout)["results"]] == [2, 4]
    tuned = q1net(
        "tune-tau", images, "--checkpoint", weights, "--quality-min", "50", "--quality-max", "51", "--blocks", "4", "--format", "json"
    )
    result = json.loads(tuned.stdout)
    assert result["tau"] == min(result["sweep"], key=lambda r: (r["mae"], -r["tau"]))["tau"]


def test_a_cnn_only_evaluation_reports_the_cnn_alone(weights, images):
    result = q1net(
        "evaluate", images, "--checkpoint", weights, "--quality-min", "40", "--quality-max", "40", "--blocks", "2",
        "--method", "cnn", "--no-calibration", "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)["results"]
    assert row["method"] == "cnn" and row["calibrated"] is False and set(row["by_method"]) == {"cnn", "hybrid", "lattice"}


def test_evaluate_logs_to_an_offline_wandb_run(weights, images, tmp_path):
    result = q1net(
        "evaluate", images, "--checkpoint", weights, "--quality-min", "60", "--quality-max", "60", "--blocks", "2", "--wandb", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    pictures = {p.name.split("_")[0] for p in runs[0].rglob("media/images/**/*.png")}
    assert pictures == {"confusion", "per"}, pictures


def test_cli_methods_grid_and_table(weights, images):
    png = images / "q37_0.png"
    hybrid = json.loads(q1net("predict", png, "--checkpoint", weights, "--format", "json").stdout)
    assert hybrid["method"] == "lattice" and hybrid["quality"] == hybrid["lattice_quality"] == 37 and hybrid["grid"] == [0, 0]
    assert hybrid["header_quality"] is None and not hybrid["recompressed"] and "table" not in hybrid
    cnn = json.loads(q1net("predict", png, "--checkpoint", weights, "--format", "json", "--method", "cnn").stdout)
    assert cnn["method"] == "cnn" and cnn["quality"] == cnn["cnn_quality"] and cnn["lattice_quality"] == 37  # measured, not used
    shown = q1net("predict", png, "--checkpoint", weights, "--show-table")
    rows = shown.stdout.strip().splitlines()[2:]
    assert shown.returncode == 0 and len(rows) == 8 and rows[0].split()[0] == str(ijg_luma_table(37)[0])


def test_evaluate_preset_and_recompression_conditions(weights, images):
    preset = json.loads(q1net("evaluate", images, "--checkpoint", weights, "--preset", "web_high", "--format", "json").stdout)
    row = preset["results"][0]
    assert preset["condition"]["preset"] == "web_high" and row["images"] == 3
    assert set(row["per_quality_mae"]) == {str(ijg_equivalent_quality(JpegPresets.presets["web_high"]["quantization"][0]))}
    again = q1net(
        "evaluate", images, "--checkpoint", weights, "--quality-min", "30", "--quality-max", "30", "--recompress", "90", "--format", "json"
    )
    row = json.loads(again.stdout)["results"][0]
    assert again.returncode == 0 and set(row["per_quality_mae"]) == {"30"}  # truth: min(q, Q2)
    assert q1net("evaluate", images, "--preset", "nonsense").returncode == 2
