"""The program's input contract (regions) and the rules that turn block scores into an answer and a range."""

import numpy as np
import pytest
import torch

from q1net.data.geometry import REGIONS
from q1net.predictor.program import cut_regions, first_of_repeats, origin_patches
from q1net.predictor.rules import FLAT_RANGE, flat_patches, vote

ALL = torch.ones(5, dtype=torch.bool)


def test_tau_is_strict_and_the_answer_is_the_median_of_the_kept():
    quality = torch.tensor([10.0, 20.0, 30.0, 40.0, 90.0])
    confidence = torch.tensor([96.0, 97.0, 99.0, 98.0, 50.0])
    result = vote(quality, confidence, ALL, tau=96.0)
    assert int(result.kept.sum()) == 3 and not result.fallback  # 96.0 itself is not above tau
    assert float(result.quality) == 30.0 and result.kept.tolist() == [False, True, True, True, False]
    # the 10th and 90th percentiles (22..38) span more than 10 levels: undetermined, so every voter's quality
    assert (float(result.low), float(result.high)) == (20.0, 40.0)
    narrow = vote(torch.tensor([50.0, 52.0, 53.0, 54.0, 56.0, 90.0]), None, torch.tensor([True] * 5 + [False]), tau=96.0)
    assert (float(narrow.low), float(narrow.high)) == (50.0, 56.0)  # 10th and 90th percentiles (50.8, 55.2), rounded outward
    assert float(result.confidence) == 98.0 and float(result.support) == pytest.approx(0.6)


def test_nothing_above_tau_falls_back_to_the_most_confident_quarter():
    quality = torch.arange(1.0, 9.0)  # 8 blocks
    confidence = torch.tensor([10, 20, 30, 40, 50, 60, 95, 90], dtype=torch.float32)
    result = vote(quality, confidence, torch.ones(8, dtype=torch.bool), tau=96.0)
    assert result.fallback and int(result.kept.sum()) == 2 and float(result.support) == 0.0
    assert float(result.quality) == np.median([7.0, 8.0])


def test_flat_patches_never_vote_and_nothing_informative_allows_every_quality():
    informative = torch.tensor([True, True, False, False, False])
    confidence = torch.full((5,), 99.0)
    result = vote(torch.tensor([50.0, 52.0, 9.0, 9.0, 9.0]), confidence, informative, tau=96.0)
    assert float(result.quality) == 51.0 and result.kept.tolist() == [True, True, False, False, False]
    nothing = vote(torch.tensor([9.0] * 5), confidence, torch.zeros(5, dtype=torch.bool), tau=96.0)
    assert nothing.fallback and (float(nothing.low), float(nothing.high)) == (1.0, 100.0) and not nothing.informative.any()


def test_regressor_without_confidence_uses_every_informative_block():
    result = vote(torch.tensor([3.0, 1.0, 2.0, 50.0, 50.0]), None, torch.tensor([True, True, True, False, False]), 96.0)
    assert float(result.quality) == 2.0 and int(result.kept.sum()) == 3 and not result.fallback


def test_flat_means_every_channel_within_a_few_levels():
    patches = torch.full((3, 3, 16, 16), 120, dtype=torch.uint8)
    patches[1, 2, 0, 0] = 120 + int(FLAT_RANGE)  # still flat
    patches[2, 0, 5, 5] = 120 + int(FLAT_RANGE) + 1
    assert flat_patches(patches).tolist() == [True, True, False]


def test_regions_sit_at_multiples_of_8_and_hold_every_phase():
    image = np.random.default_rng(0).integers(0, 256, (203, 317, 3), np.uint8)
    regions, rows, cols = cut_regions(image)
    n, side = REGIONS.per_side, REGIONS.side
    assert regions.shape == (n * n, 3, side, side) and regions.dtype == np.uint8
    assert (rows % 8 == 0).all() and (cols % 8 == 0).all() and rows[-1] + side <= 203 and cols[-1] + side <= 317
    expected = [image[r : r + side, c : c + side].transpose(2, 0, 1) for r in rows for c in cols]  # row-major, channels first
    np.testing.assert_array_equal(regions, np.stack(expected))
    assert regions.flags.c_contiguous
    patches = origin_patches(image, 4)  # on a grid at the origin each patch starts 4 px before a block (8i - 4)
    assert patches.shape == (16, 3, 16, 16)


@pytest.mark.parametrize(("length", "expected"), [(24, [0]), (40, [0, 8, 16]), (1000, None)])
def test_region_starts_spread_and_repeat_only_on_short_sides(length, expected):
    starts = REGIONS.starts(length, 16)
    assert len(starts) == 16 and starts.min() >= 0 and starts.max() + REGIONS.side <= max(length, REGIONS.side)
    if expected is not None:
        assert sorted(set(starts.tolist())) == expected
        assert first_of_repeats(torch.from_numpy(starts)).sum() == len(expected)
    else:
        assert len(set(starts.tolist())) == 16 and np.all(np.diff(starts) > 0)


def test_images_smaller_than_a_region_are_padded():
    image = np.random.default_rng(1).integers(0, 256, (17, 20, 3), np.uint8)
    regions, rows, cols = cut_regions(image)
    assert set(rows.tolist()) == {0} and set(cols.tolist()) == {0}
    np.testing.assert_array_equal(regions[0, :, :17, :20], image.transpose(2, 0, 1))
    np.testing.assert_array_equal(regions[0, :, 17:, :20], np.repeat(image[-1:].transpose(2, 0, 1), 7, axis=1))
