import numpy as np
import pytest

from q1net.data.geometry import GEOMETRY
from q1net.data.jpeg import jpeg_roundtrip
from q1net.data.patches import PatchSampler, sobel_magnitude


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
@pytest.mark.parametrize("quality", [3, 37, 75, 100])
def test_crop_coding_is_bit_exact_with_whole_image_coding(photo, quality, subsampling):
    """The exactness fact the sampler relies on: MCU-aligned crops decode like the whole image."""
    g, crop = GEOMETRY, 48
    whole = jpeg_roundtrip(photo, quality, subsampling)
    m = g.edge_margin
    compared = 0
    for top in range(0, photo.shape[0] - crop + 1, g.mcu):
        for left in range(0, photo.shape[1] - crop + 1, g.mcu):
            part = jpeg_roundtrip(np.ascontiguousarray(photo[top : top + crop, left : left + crop]), quality, subsampling)
            np.testing.assert_array_equal(part[m : crop - m, m : crop - m], whole[top + m : top + crop - m, left + m : left + crop - m])
            compared += 1
    assert compared >= 90


def test_crop_border_does_differ_so_the_margin_matters(photo):
    whole = jpeg_roundtrip(photo, 30)
    part = jpeg_roundtrip(np.ascontiguousarray(photo[16:64, 16:64]), 30)
    assert not np.array_equal(part, whole[16:64, 16:64])


def test_sampled_patches_equal_patches_of_the_whole_coded_image(photo):
    """End to end: every sampled patch is found in the whole image coded at its label."""
    sampler = PatchSampler(crop_size=64, patches_per_crop=32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = sampler.sample(photo, rng)
        quality = int(batch.qualities[0])
        whole = jpeg_roundtrip(photo, quality).transpose(2, 0, 1)
        for patch in batch.patches:
            windows = np.lib.stride_tricks.sliding_window_view(whole, (16, 16), axis=(1, 2))
            assert (windows == patch[:, None, None]).all(axis=(0, 3, 4)).any()


def test_all_shifts_cover_every_grid_phase_and_aligned_mode_keeps_one():
    image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), np.uint8)
    rng = np.random.default_rng(2)
    shifted = PatchSampler(all_shifts=True)
    starts = shifted._patch_starts(rng, 64, 4000)
    assert set(starts % 8) == set(range(8))
    assert starts.min() >= GEOMETRY.edge_margin and starts.max() + GEOMETRY.patch <= 64 - GEOMETRY.edge_margin
    aligned = PatchSampler(all_shifts=False)._patch_starts(rng, 64, 500)
    assert set(aligned % 8) == {GEOMETRY.block - GEOMETRY.ring}  # block origin on the grid, 4-px ring
    batch = shifted.sample(image, rng)
    assert batch.patches.shape == (16, 3, 16, 16) and batch.patches.dtype == np.uint8


def test_quality_range_and_flat_rejection():
    rng = np.random.default_rng(3)
    flat = np.full((128, 128, 3), 120, np.uint8)
    flat[:, 64:] = np.random.default_rng(4).integers(0, 256, (128, 64, 3))  # right half busy
    sampler = PatchSampler(quality_min=40, quality_max=45, min_sobel=5.0, patches_per_crop=8)
    batch = sampler.batch([flat], 400, rng)
    assert set(np.unique(batch.qualities)) <= set(range(40, 46)) and len(batch.qualities) == 400
    gray = batch.patches.astype(np.float32).mean(axis=1)
    assert all(sobel_magnitude(g).mean() > 0 for g in gray)  # no flat patch made it through
    with pytest.raises(ValueError, match=r"inside 1\.\.100"):
        PatchSampler(quality_min=0)
    with pytest.raises(ValueError, match="multiple"):
        PatchSampler(crop_size=60)


def test_sobel_is_zero_on_flat_and_positive_on_edges():
    assert sobel_magnitude(np.full((8, 8), 9.0, np.float32)).max() == 0
    step = np.zeros((8, 8), np.float32)
    step[:, 4:] = 100
    assert sobel_magnitude(step).max() == pytest.approx(400)


def test_aligned_starts_on_small_and_odd_sides():
    g = GEOMETRY
    assert list(g.aligned_starts(15, 16)) == []
    assert list(g.aligned_starts(16, 16)) == [0]  # too short for a ring-aligned patch: one at 0
    assert list(g.aligned_starts(20, 16)) == [4]
    assert list(g.aligned_starts(100, 16)) == [4, 12, 20, 28, 36, 44, 52, 60, 68, 76, 84]  # all grid positions
    spread = g.aligned_starts(2000, 16)
    assert len(spread) == 16 and (spread % 8 == 4).all() and spread[-1] + 16 <= 2000
    assert np.all(np.diff(spread) > 0)


def test_quality_band_draws_only_the_extremes_then_everything():
    sampler, rng = PatchSampler(), np.random.default_rng(0)
    banded = {sampler.draw_quality(rng, band=3) for _ in range(2000)}
    assert banded == {1, 2, 3, 98, 99, 100}
    assert len({sampler.draw_quality(rng, band=50) for _ in range(5000)}) == 100
    assert len({sampler.draw_quality(rng) for _ in range(5000)}) == 100
