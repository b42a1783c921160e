"""The declipper: a clipped block read back onto its table's lattice, and only onto the true table's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from q1net.forensics.clipping import Declipper
from q1net.forensics.dct import BLOCK, LEVEL_SHIFT, PIXEL_MAX, dct_matrix
from q1net.forensics.quant_tables import ijg_luma_table

PAPER, INK = PIXEL_MAX - LEVEL_SHIFT - 2, 96 - LEVEL_SHIFT  # near-white paper, grey ink: ringing overshoots white


def inked_blocks(count: int, seed: int = 0) -> np.ndarray:
    """(count, 8, 8) level-shifted blocks of paper crossed by a stroke of ink (a vertical or horizontal bar)."""
    rng = np.random.default_rng(seed)
    blocks = np.full((count, BLOCK, BLOCK), PAPER, dtype=np.float64)
    for block in blocks:
        start = int(rng.integers(0, BLOCK - 2))
        width = int(rng.integers(1, 4))
        if rng.random() < 0.5:
            block[:, start : start + width] = INK
        else:
            block[start : start + width] = INK
    return blocks


def coded(blocks: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """What a JPEG decoder gives for `blocks` at IJG `quality` (quantised, rounded, clipped) and the true levels' coefficients."""
    d = dct_matrix().astype(np.float64)
    steps = ijg_luma_table(quality).reshape(BLOCK, BLOCK).astype(np.float64)
    quantised = np.round(d @ blocks @ d.T / steps) * steps
    decoded = np.clip(np.round(d.T @ quantised @ d), -LEVEL_SHIFT, PIXEL_MAX - LEVEL_SHIFT)
    return decoded, quantised.reshape(len(blocks), -1)


def off_lattice(coefficients: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Mean distance of the AC coefficients from the table's lattice, in steps."""
    ratio = coefficients[..., 1:] / table[1:]
    return (ratio - torch.round(ratio)).abs().mean()


@pytest.mark.parametrize("quality", [10, 30, 50])
def test_the_true_table_recovers_the_coded_block_and_fits_best(quality: int) -> None:
    decoded, truth = coded(inked_blocks(48), quality)
    seen = torch.from_numpy(decoded).float()
    high, low = seen >= PIXEL_MAX - LEVEL_SHIFT, seen <= -LEVEL_SHIFT
    assert high.flatten(1).any(dim=1).float().mean() > 0.5  # most blocks really are clipped
    tables = torch.from_numpy(np.stack([ijg_luma_table(q) for q in (quality - 5, quality, quality + 5)])).float()

    declipped = Declipper()(seen, high, low, tables)  # (3, N, 64)

    on_lattice = torch.round(declipped[1] / tables[1]) * tables[1]
    recovered = (on_lattice == torch.from_numpy(truth).float()).all(dim=1)
    assert recovered.float().mean() >= 0.95
    distances = [off_lattice(declipped[t], tables[t]) for t in range(len(tables))]
    assert distances[1] < 0.5 * min(distances[0], distances[2])


def test_unclipped_samples_are_kept() -> None:
    decoded, _ = coded(inked_blocks(8, seed=1), 50)
    seen = torch.from_numpy(decoded).float()
    high, low = seen >= PIXEL_MAX - LEVEL_SHIFT, seen <= -LEVEL_SHIFT
    tables = torch.from_numpy(ijg_luma_table(50)[None]).float()
    d = torch.from_numpy(dct_matrix())
    samples = d.T @ Declipper()(seen, high, low, tables).reshape(1, -1, BLOCK, BLOCK) @ d
    free = high | low
    assert torch.allclose(samples[0][~free], seen[~free], atol=1e-3)
    assert (samples[0][high] >= seen[high] - 1e-3).all()
