import numpy as np
import pytest

from q1net.predictor.inference import decide, sample_blocks


def test_tau_is_strict_and_the_answer_is_the_median_of_the_kept():
    quality = np.array([10.0, 20.0, 30.0, 40.0, 90.0])
    confidence = np.array([96.0, 97.0, 99.0, 98.0, 50.0])
    decision = decide(quality, confidence, tau=96.0)
    assert decision.blocks_used == 3 and not decision.fallback  # 96.0 itself is not above tau
    assert decision.quality == 30.0
    assert decision.kept.tolist() == [False, True, True, True, False]


def test_nothing_above_tau_falls_back_to_the_most_confident_quarter():
    quality = np.arange(1.0, 9.0)  # 8 blocks
    confidence = np.array([10, 20, 30, 40, 50, 60, 95, 90], float)
    decision = decide(quality, confidence, tau=96.0)
    assert decision.fallback and decision.blocks_used == 2
    assert decision.quality == np.median([7.0, 8.0])


def test_regressor_without_confidence_uses_every_block():
    decision = decide(np.array([3.0, 1.0, 2.0]), None)
    assert decision.quality == 2.0 and decision.blocks_used == 3 and not decision.fallback


def test_blocks_sit_on_the_coding_grid_row_major():
    image = np.arange(200 * 120 * 3, dtype=np.uint32).reshape(200, 120, 3).astype(np.uint8)
    sample = sample_blocks(image, blocks=4)
    assert sample.patches.shape == (16, 3, 16, 16)
    assert (sample.rows % 8 == 4).all() and (sample.cols % 8 == 4).all()
    np.testing.assert_array_equal(
        sample.patches[5], image[sample.rows[1] : sample.rows[1] + 16, sample.cols[1] : sample.cols[1] + 16].transpose(2, 0, 1)
    )


@pytest.mark.parametrize(
    ("height", "width", "expected"), [(16, 16, 1), (17, 9, None), (15, 40, None), (20, 20, 1), (9, 17, None), (33, 50, 2 * 4)]
)
def test_small_and_odd_sized_images(height, width, expected):
    image = np.zeros((height, width, 3), np.uint8)
    if expected is None:
        with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
            sample_blocks(image)
    else:
        assert len(sample_blocks(image, blocks=16).patches) == expected


def test_blocks_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        sample_blocks(np.zeros((64, 64, 3), np.uint8), blocks=0)
