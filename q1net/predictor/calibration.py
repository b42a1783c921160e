"""A monotone map from the CNN's quality to the true one, fitted on validation images like tau.

Why: a network trained on a small budget answers with a bias that depends on the
quality (the shipped one, on the validation photos: about +1.4 levels at 11..30,
-1 above 80), and most of its error is that bias. A piecewise-linear map,
knots every KNOT_STEP levels, fitted for least absolute error on validation
images' answers and pulled toward the identity where they are few, removes it.

The map is non-decreasing, so applying it to every block before the median is
applying it to the median (exactly for an odd count of voting blocks; for an
even count, wherever the map is straight between the two middle ones): the tau
rule, the per-block heatmaps and the image's answer all read the same
calibrated scale, and an app using an exported network applies it to its
median (the export's metadata carries it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from q1net.nets.q1net import QUALITY_SCALE

KNOT_STEP = 5.0  # levels between knots: 21 knots on 0..100
PRIOR_WEIGHT = 1.0  # images' worth of pull toward the identity at every knot
FIT_ROUNDS = 20  # reweighted least squares rounds toward least absolute error
RESIDUAL_FLOOR = 0.05  # levels: caps an exact image's weight in those rounds


@dataclass(frozen=True)
class Calibration:
    """y = np.interp(quality, knots, values): knots increasing on 0..100, values non-decreasing."""

    knots: tuple[float, ...] = (0.0, QUALITY_SCALE)
    values: tuple[float, ...] = (0.0, QUALITY_SCALE)

    def __post_init__(self) -> None:
        knots, values = np.asarray(self.knots, float), np.asarray(self.values, float)
        if knots.ndim != 1 or len(knots) < 2 or knots.shape != values.shape:
            raise ValueError(f"calibration needs two or more knots and one value each, got {len(knots)} and {len(values)}")
        if not (np.isfinite(knots).all() and np.isfinite(values).all()):
            raise ValueError("calibration knots and values must be finite numbers")
        if np.any(np.diff(knots) <= 0) or np.any(np.diff(values) < 0):
            raise ValueError("calibration knots must increase and its values must not decrease")

    @property
    def is_identity(self) -> bool:
        return bool(np.allclose(self.values, self.knots))

    def __call__(self, quality: np.ndarray) -> np.ndarray:
        return self.apply(torch.as_tensor(np.asarray(quality, np.float64))).numpy()

    def apply(self, quality: torch.Tensor) -> torch.Tensor:
        """The map on a tensor, as numpy's interp (flat beyond the end knots), written as a sum of clamped ramps:
        fixed-shape operations the exported programs run too."""
        knots = torch.tensor(self.knots, dtype=quality.dtype, device=quality.device)
        values = torch.tensor(self.values, dtype=quality.dtype, device=quality.device)
        slopes = torch.diff(values) / torch.diff(knots)
        ramps = torch.clamp(quality[..., None], knots[:-1], knots[1:]) - knots[:-1]
        return values[0] + (ramps * slopes).sum(dim=-1)

    def as_dict(self) -> dict[str, list[float]]:
        return {"knots": [round(k, 4) for k in self.knots], "values": [round(v, 4) for v in self.values]}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration:
        """From `as_dict`'s form; None (weights packed before calibration existed) is the identity."""
        if data is None:
            return cls()
        try:
            return cls(tuple(map(float, data["knots"])), tuple(map(float, data["values"])))
        except (KeyError, TypeError) as error:
            raise ValueError(f"calibration must be {{'knots': [...], 'values': [...]}}, got {data!r}") from error


def _hat_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """(N, K) weights of each knot in the linear interpolation at x."""
    index = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
    t = (np.clip(x, knots[0], knots[-1]) - knots[index]) / (knots[index + 1] - knots[index])
    basis = np.zeros((len(x), len(knots)))
    basis[np.arange(len(x)), index] = 1 - t
    basis[np.arange(len(x)), index + 1] = t
    return basis


def fit_calibration(predicted: np.ndarray, true: np.ndarray, step: float = KNOT_STEP, prior: float = PRIOR_WEIGHT) -> Calibration:
    """The map minimising the mean |map(predicted) - true| (reweighted least squares), near the identity where data is thin."""
    predicted, true = np.asarray(predicted, float), np.asarray(true, float)
    knots = np.linspace(0.0, QUALITY_SCALE, math.floor(QUALITY_SCALE / step) + 1)
    basis, weights = _hat_basis(predicted, knots), np.ones(len(predicted))
    values = knots
    for _ in range(FIT_ROUNDS):
        normal = basis.T @ (basis * weights[:, None]) + prior * np.eye(len(knots))
        values = np.linalg.solve(normal, basis.T @ (weights * true) + prior * knots)
        weights = 1.0 / np.maximum(np.abs(basis @ values - true), RESIDUAL_FLOOR)
    return Calibration(tuple(knots), tuple(np.maximum.accumulate(values)))
