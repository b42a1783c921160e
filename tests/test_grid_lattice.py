"""Grid-phase detection, the DCT-lattice fit, header tables and the hybrid rule, on images made here."""

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, JpegPresets

from q1net.data.jpeg import jpeg_encode, jpeg_roundtrip
from q1net.data.sources import SyntheticSource
from q1net.forensics.dct import BLOCK, unclipped_blocks
from q1net.forensics.grid import detect_grid
from q1net.forensics.lattice import TIE_NATS, LatticeFit, estimate_table, fit_lattice, ijg_table_scores, lattice_coefficients
from q1net.forensics.quant_tables import IJG_LUMA_TABLES, ijg_equivalent_quality, ijg_luma_table
from q1net.predictor.images import read_image
from q1net.predictor.inference import AGREE_LEVELS, Verdict, combine


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A 256x256 dead-leaves picture with film-grain noise: edges, flats and fine texture."""
    clean = SyntheticSource(count=1, size=256, seed=5).load(0).astype(np.float32)
    grain = np.random.default_rng(5).normal(0, 3, clean.shape)
    return np.clip(np.round(clean + grain), 0, 255).astype(np.uint8)


def decoded_header(data: bytes) -> np.ndarray:
    return read_image(io.BytesIO(data)).jpeg_luma_table


@pytest.mark.parametrize("quality", [1, 10, 37, 50, 75, 95, 99, 100])
def test_ijg_tables_are_libjpeg_turbos(scene, quality):
    table = decoded_header(jpeg_encode(scene, quality))
    np.testing.assert_array_equal(table, ijg_luma_table(quality))
    assert ijg_equivalent_quality(table) == quality


def test_ijg_equivalent_quality_of_other_tables():
    assert len({tuple(t) for t in IJG_LUMA_TABLES}) == 100  # every level has its own luma table
    assert ijg_equivalent_quality(ijg_luma_table(60) * 1.005) == 60  # nearest in log-step (one level is ~2.5% here)
    known = np.zeros(64, bool)
    known[:10] = True
    assert ijg_equivalent_quality(np.where(known, ijg_luma_table(80), 255), known) == 80  # unknown steps are ignored
    with pytest.raises(ValueError):
        ijg_equivalent_quality(np.ones(64), np.zeros(64, bool))


@pytest.mark.parametrize(("quality", "dy", "dx"), [(20, 3, 5), (75, 7, 1), (95, 0, 6), (100, 5, 0)])
def test_grid_phase_of_shifted_crops(scene, quality, dy, dx):
    decoded = jpeg_roundtrip(scene, quality)[dy:, dx:]
    phase = detect_grid(decoded)
    assert phase.sure and (phase.dy, phase.dx) == ((8 - dy) % 8, (8 - dx) % 8), phase


def test_no_grid_in_an_image_never_coded_or_resized(scene):
    assert not detect_grid(scene).sure
    resized = np.asarray(Image.fromarray(jpeg_roundtrip(scene, 50)).resize((200, 200), Image.BICUBIC))
    phase = detect_grid(resized)
    assert not phase.sure and (phase.dy, phase.dx) == (0, 0)
    assert not detect_grid(scene[:12, :40]).sure  # too small to hold one block at every phase


@pytest.mark.parametrize("quality", [3, 24, 37, 61, 88, 97, 100])
def test_lattice_finds_the_ijg_quality(scene, quality):
    decoded = jpeg_roundtrip(scene, quality)[2:, 3:]
    fit = fit_lattice(lattice_coefficients(decoded, detect_grid(decoded)))
    assert fit.quality == quality and fit.strong and fit.ijg and quality in fit.plausible


@pytest.mark.parametrize("quality", [8, 45, 92])
def test_lattice_reads_a_grayscale_jpeg(scene, quality):
    data = io.BytesIO()
    Image.fromarray(scene).convert("L").save(data, format="JPEG", quality=quality)
    pixels = read_image(data).pixels  # gray, repeated into R, G and B
    fit = fit_lattice(lattice_coefficients(pixels, detect_grid(pixels)))
    assert fit.quality == quality and fit.strong and fit.ijg


@pytest.mark.parametrize(
    "coded",
    [lambda s, q: jpeg_roundtrip(s, q)[5:, 2:], lambda s, q: jpeg_roundtrip(jpeg_roundtrip(s, q), 90)],
    ids=["shifted", "recompressed-at-90"],
)
@pytest.mark.parametrize("quality", [1, 6, 30, 52, 77, 91, 98, 100])
def test_screening_gives_the_answer_scoring_every_table_gives(scene, coded, quality):
    pixels = coded(scene, quality)
    coefficients = lattice_coefficients(pixels, detect_grid(pixels))
    screened, _, _ = ijg_table_scores(coefficients)
    every, _, _ = ijg_table_scores(coefficients, screen=False)
    assert screened.argmax() == every.argmax()
    assert np.array_equal(screened >= screened.max() - TIE_NATS, every >= every.max() - TIE_NATS)  # the same plausible set
    kept = np.isfinite(screened)
    np.testing.assert_allclose(screened[kept], every[kept], rtol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (9, 7), (8, 8), (17, 9), (40, 33)])
def test_clipped_blocks_match_a_block_by_block_check(height, width):
    rng = np.random.default_rng(height * width)
    levels = np.array([0, 1, 128, 254, 255], np.uint8)
    pixels = rng.choice(levels, size=(height, width, 3), p=[0.01, 0.3, 0.38, 0.3, 0.01])
    for dy, dx in [(0, 0), (3, 5), (7, 7)]:
        rows, cols = max(0, (height - dy) // BLOCK), max(0, (width - dx) // BLOCK)
        expected = np.array(
            [
                [
                    not np.isin(pixels[dy + BLOCK * r : dy + BLOCK * (r + 1), dx + BLOCK * c : dx + BLOCK * (c + 1)], [0, 255]).any()
                    for c in range(cols)
                ]
                for r in range(rows)
            ],
            bool,
        ).reshape(rows, cols)
        np.testing.assert_array_equal(unclipped_blocks(pixels, dy, dx), expected)


def test_lattice_is_weak_without_jpeg(scene):
    assert not fit_lattice(lattice_coefficients(scene, detect_grid(scene))).strong
    small = scene[:12, :30]  # three blocks: under MIN_BLOCKS
    assert fit_lattice(lattice_coefficients(small, detect_grid(small))) is None


def test_lattice_estimates_a_custom_table(scene):
    steps = np.clip(np.arange(64) // 2 + 3, 1, 255)  # no IJG quality has this table
    data = io.BytesIO()
    Image.fromarray(scene).save(data, format="JPEG", qtables=[steps.tolist(), steps.tolist()], subsampling=0)
    decoded = read_image(data)
    np.testing.assert_array_equal(decoded.jpeg_luma_table, steps)
    estimated, known, _ = estimate_table(lattice_coefficients(decoded.pixels, detect_grid(decoded.pixels)))
    assert known.sum() >= 20
    np.testing.assert_array_equal(estimated[known], steps[known])
    fit = fit_lattice(lattice_coefficients(decoded.pixels, detect_grid(decoded.pixels)))
    assert not fit.ijg and fit.quality == ijg_equivalent_quality(steps, known)


def test_pillow_preset_is_read_as_its_ijg_equivalent(scene):
    data = jpeg_encode(scene, "web_high")
    header = decoded_header(data)
    np.testing.assert_array_equal(header, np.array(JpegPresets.presets["web_high"]["quantization"][0]))
    pixels = read_image(io.BytesIO(data)).pixels
    fit = fit_lattice(lattice_coefficients(pixels, detect_grid(pixels)))
    assert abs(fit.quality - ijg_equivalent_quality(header)) <= 2


def fit(quality: int, strength: float = 50.0, plausible: tuple[int, ...] | None = None) -> LatticeFit:
    return LatticeFit(quality, strength, plausible or (quality,), 256, 0.0)


def test_hybrid_rule():
    assert combine(41.3, fit(40), None) == Verdict(40.0, "lattice", False)  # strong lattice answers
    assert combine(41.3, fit(40, strength=0.1), None) == Verdict(41.3, "cnn", False)  # weak lattice: the CNN stands
    assert combine(41.3, None, None) == Verdict(41.3, "cnn", False)
    assert combine(95.2, fit(96, plausible=(93, 94, 95, 96)), None).quality == 95  # the CNN picks among ties
    low = 90 - AGREE_LEVELS - 5
    assert combine(low, fit(90), None) == Verdict(low, "cnn", True)  # pixels show an earlier, lower quality
    assert combine(low, fit(90), None, cnn_support=0.05) == Verdict(90.0, "lattice", False)  # unless few blocks voted
    assert combine(30.0, fit(30), 95) == Verdict(30.0, "lattice", True)  # header 95, pixels 30
    mixed = replace(fit(46), ijg=False)  # two lattices mixed (30 then 90) read as 46
    assert combine(40.0, mixed, None) == Verdict(40.0, "cnn", False) and combine(47.0, mixed, None).quality == 46
    assert combine(41.3, fit(40), None, "cnn") == Verdict(41.3, "cnn", False)
    assert combine(70.0, fit(40), None, "lattice") == Verdict(40.0, "lattice", False)


def test_recompressed_jpeg_file_is_flagged(scene, tmp_path):
    from q1net import Predictor

    path = tmp_path / "again.jpg"
    path.write_bytes(jpeg_encode(jpeg_roundtrip(scene, 30), 95))
    result = Predictor.from_pretrained().predict(path)
    assert result.header_quality == 95 and result.recompressed and abs(result.quality - 30) <= 2


def test_lattice_confirms_a_phase_the_detector_is_unsure_of(scene):
    """A mostly blank image: every phase scores alike, but the lattice is strong on the top-scoring one."""
    from q1net import Predictor

    mostly_white = scene.copy()
    mostly_white[48:, :] = 255
    mostly_white[:, 48:] = 255
    decoded = jpeg_roundtrip(mostly_white, 60)[3:, 5:]
    detected = detect_grid(decoded)
    assert not detected.sure and detected.best == (5, 3)
    result = Predictor.from_pretrained().predict(decoded)
    assert result.grid == (5, 3) and result.grid_sure and result.quality == 60 and result.method == "lattice"
