"""Honest answers (issue #13): a range with every answer, undetermined where the pixels cannot tell, recompression only
on positive evidence, other encoders' tables read at their IJG-equivalent, other codecs noted."""

import io

import numpy as np
import pytest
from PIL import Image

from q1net import Predictor
from q1net.data.jpeg import jpeg_encode
from q1net.data.sources import GraphicsSource, SyntheticSource
from q1net.forensics.quant_tables import ijg_equivalent_quality, other_encoder_tables


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return SyntheticSource(count=1, size=320, seed=21).load(0)


def jpeg_file(tmp_path, pixels: np.ndarray, name: str, **options) -> str:
    path = tmp_path / name
    Image.fromarray(pixels).save(path, format="JPEG", **options)
    return str(path)


@pytest.mark.parametrize("quality", [15, 60, 80, 95])
def test_a_solid_colour_jpeg_is_undetermined_and_never_called_recompressed(predictor, tmp_path, quality):
    grey = np.full((400, 600, 3), (128, 131, 126), np.uint8)
    result = predictor.predict(jpeg_file(tmp_path, grey, f"grey{quality}.jpg", quality=quality))
    assert not result.determined and not result.recompressed and result.header_quality == quality
    assert (result.quality_low, result.quality_high) == (1, 100) and result.blocks_used == 0
    assert any("no informative block" in note for note in result.notes)
    assert result.lattice_strength is None or result.lattice_strength < 0.5  # one DC value is not a lattice


def test_a_rectangle_on_a_flat_background_with_other_tables_is_not_flagged(predictor, tmp_path):
    picture = np.full((384, 512, 3), 236, np.uint8)
    picture[100:260, 140:380] = (30, 60, 200)
    luma, chroma = other_encoder_tables("flat", 70)
    result = predictor.predict(jpeg_file(tmp_path, picture, "rectangle.jpg", qtables=[luma.tolist(), chroma.tolist()]))
    assert not result.recompressed
    if result.determined:  # the rectangle's edges hold evidence; if it is used, it must cover the table's equivalent
        assert result.quality_low <= ijg_equivalent_quality(luma) <= result.quality_high


@pytest.mark.parametrize(("quality", "subsampling"), [(80, "4:2:2"), (30, "4:2:0"), (92, "4:4:4")])
def test_a_photo_coded_once_with_scaled_annex_k_tables_reads_at_their_equivalent(predictor, photo, quality, subsampling):
    luma, chroma = other_encoder_tables("annex_k", quality)
    data = jpeg_encode(photo, quality, subsampling, [luma.tolist(), chroma.tolist()])
    result = predictor.predict(Image.open(io.BytesIO(data)))
    truth = ijg_equivalent_quality(luma)
    assert abs(result.quality - truth) <= 2 and not result.recompressed and result.quality_low <= truth <= result.quality_high


@pytest.mark.parametrize("quality", [43, 52])
def test_annex_k_steps_one_off_an_ijg_tables_widen_the_range_to_their_equivalent(predictor, photo, quality):
    """Annex K scaled by another law at 43 (52) has IJG 38's (56's) steps at most visible frequencies and one off it at a
    few: that IJG table fits, and its range alone (38..38) missed the whole table's equivalent (37; 55)."""
    luma, chroma = other_encoder_tables("annex_k", quality)
    result = predictor.predict(Image.open(io.BytesIO(jpeg_encode(photo, quality, "4:2:2", [luma.tolist(), chroma.tolist()]))))
    truth = ijg_equivalent_quality(luma)
    assert result.quality_low <= truth <= result.quality_high and result.determined and abs(result.quality - truth) <= 1


@pytest.mark.parametrize(("quality", "subsampling"), [(60, "4:2:0"), (75, "4:2:2"), (90, "4:2:2")])
def test_flatter_camera_tables_read_at_their_equivalent_and_are_never_called_recompressed(predictor, photo, quality, subsampling):
    """Tables finer than IJG's at high frequencies: where those coefficients all quantise to zero the pixels cannot
    pin their steps down; completed by the known steps' own flatness they read at the whole table's equivalent."""
    luma, chroma = other_encoder_tables("flat", quality)
    data = jpeg_encode(photo, quality, subsampling, [luma.tolist(), chroma.tolist()])
    result = predictor.predict(Image.open(io.BytesIO(data)))
    truth = ijg_equivalent_quality(luma)
    assert not result.recompressed and result.method == "lattice" and abs(result.quality - truth) <= 2
    assert result.quality_low <= truth <= result.quality_high


@pytest.mark.parametrize("quality", [3, 8])
def test_a_coarse_camera_table_coded_once_reads_as_one_coding(predictor, photo, quality):
    """Flat tables at qualities 3..8 leave steps of 100..211 that an IJG table of 35..75 comes near on a few frequencies:
    read as two codings until the steps' own equivalent (one coding, as the CNN reads it) was weighed."""
    luma, chroma = other_encoder_tables("flat", quality)
    result = predictor.predict(Image.open(io.BytesIO(jpeg_encode(photo, quality, "4:2:2", [luma.tolist(), chroma.tolist()]))))
    truth = ijg_equivalent_quality(luma)
    assert not result.recompressed and abs(result.quality - truth) <= 2 and result.quality_low <= truth <= result.quality_high


def test_coded_twice_is_flagged_with_the_first_quality(predictor, photo):
    data = jpeg_encode(np.asarray(Image.open(io.BytesIO(jpeg_encode(photo, 40)))), 75)
    result = predictor.predict(Image.open(io.BytesIO(data)))
    assert result.recompressed and result.quality_low <= 40 <= result.quality_high and abs(result.quality - 40) <= 2


def test_single_coded_photos_are_not_flagged(predictor, photo):
    flagged = [q for q in range(5, 101, 5) if predictor.predict(np.asarray(Image.open(io.BytesIO(jpeg_encode(photo, q))))).recompressed]
    assert flagged == []


def test_text_is_read_from_its_edges(predictor):
    text = GraphicsSource(count=3, size=384, seed=4, kinds=("text",)).load(0)
    results = [predictor.predict(np.asarray(Image.open(io.BytesIO(jpeg_encode(text, q))))) for q in (30, 70, 90)]
    for quality, result in zip((30, 70, 90), results, strict=True):
        assert result.quality_low <= quality <= result.quality_high and not result.recompressed


@pytest.mark.parametrize("quality", [97, 100])
def test_a_smooth_gradient_coded_high_is_not_a_determined_wrong_answer(predictor, quality):
    """Its blocks look alike from 85 to 100: the network read 91..95 as determined, while the lattice, with evidence
    enough on the found grid, fitted no table (strength about 0)."""
    gradient = GraphicsSource(count=2, size=384, seed=1, kinds=("gradient",)).load(1)
    result = predictor.predict(np.asarray(Image.open(io.BytesIO(jpeg_encode(gradient, quality)))))
    assert result.grid_sure and result.lattice_strength is not None and result.lattice_strength < 0.5 and result.method == "cnn"
    assert not result.determined and result.quality_low <= quality <= result.quality_high


def test_a_webp_file_says_so_and_is_not_a_determined_jpeg_quality(predictor, photo, tmp_path):
    path = tmp_path / "photo.webp"
    Image.fromarray(photo).save(path, quality=70)
    result = predictor.predict(path)
    assert any("WebP (lossy)" in note for note in result.notes) and not result.determined
    lossless = tmp_path / "lossless.webp"
    Image.fromarray(photo).save(lossless, lossless=True)
    assert not any("WebP" in note for note in predictor.predict(lossless).notes)


def test_every_output_format_carries_the_range(predictor, photo):
    result = predictor.predict(np.asarray(Image.open(io.BytesIO(jpeg_encode(photo, 62)))))
    row = result.as_dict()
    assert row["quality_low"] <= 62 <= row["quality_high"] and row["determined"] is True and row["quality"] == 62


def test_evaluate_hard_cases_reports_each_kind(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "q1net.cli", "evaluate", "--content", "graphics", "--count", "6", "--quality-min", "40"]
    command += ["--quality-max", "90", "--quality-step", "50", "--out", str(tmp_path / "eval")]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(root)}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(report["by_kind"]) == set(GraphicsSource.KINDS) and report["results"][0]["images"] == 12
    assert all(kind["flagged_fraction"] == 0.0 for kind in report["by_kind"].values())
    assert "text: within 2 (q <= 95)" in result.stdout and (tmp_path / "eval" / "confusion.png").exists()
