"""The DCT-lattice verifier: which quantisation table explains a decoded JPEG's luma coefficients, and how surely.

On the coding grid, a decoded JPEG's luma coefficient at frequency f is s_f * k plus
rounding noise (std `SIGMA`; `SIGMA_DC` for DC), where s_f is the quantiser step. For a
candidate step s the likelihood of a coefficient c is

    p(c | s) = (1 - eps) * sum_k P(k | s) N(c - s k; SIGMA) + eps * p0(c)

with P(k | s) the mass a Laplacian of the frequency's scale puts in the k-th quantisation
bin (uniform for DC), and p0 the same Laplacian, unquantised, blurred by the noise: the
"no lattice" model, also the outlier part. Summed over blocks, this scores each of the
100 IJG tables; the best is the lattice's quality, and its lead over p0, in nats per unit
of evidence, is the `strength`: about 1 at quality 100, tens below, at or under 0 for
images never JPEG-coded, resized or filtered after coding.

What counts as evidence (issue #13: flat content must not look like a lattice):
- AC coefficients of flat blocks (every AC within FLAT_AC of 0) fit every table and are
  left out; the Laplacian scale is the noise-deconvolved one, so a frequency whose
  coefficients are all noise is as well explained by p0 as by any lattice;
- DC coefficients that repeat (a solid area's blocks all share one) count once together:
  a block's DC weight is one over the number of blocks with the same DC.
The evidence counts each non-flat block once and each flat one by its DC weight; under
MIN_EVIDENCE there is no lattice answer at all.

Tables whose score is within TIE_NATS of the best are `plausible`: the qualities the
pixels cannot tell apart (on a flat-ish image several share every step that has a
non-zero coefficient); their lowest and highest bound the answer's range.

When each step's own maximum-likelihood value over 1..255 fits much better than any one IJG
table (`misfit`, nats per unit of evidence, over MISFIT_MAX: another encoder's or custom
tables), those steps answer instead. (Mixing IJG steps per frequency is not the comparison:
a table twice an IJG table's steps sits on that table's lattice, and Annex K scaled by
another law often is; only the free steps show it.) They are read as their IJG-equivalent
quality (q1net.forensics.quant_tables); the range is then every IJG quality that could be
the whole table's equivalent, whatever the steps the pixels do not pin down turn out to be
(each at most the smallest clear coefficient seen at its frequency). Where one IJG table fits
but some known steps lie clearly off it, by a step or so (`off_table`: tens of nats better each),
the table is another encoder's of IJG's shape, and its equivalent can be any that the known
steps' scale allows (`scaled_equivalents`). The steps answer too when they are two to four
times the best IJG table's (`coarser_lattice`): a table about twice an IJG table's
steps fits that table's lattice with only a prior's penalty (misfit 1.3 on a validation photo
under Annex K scaled to an equivalent of 12, read 23), but one coding with the finer table would
have left its odd levels, the commonest, and there are none. Where the steps are whole multiples
of the table's (`sublattice`: coded at 10, then at 30, they are three times 30's), a first, coarser
coding seen through its lattice fits as well as one coding with the coarse table; the answer is the
coarse table's either way, and the pixels cannot tell whether it was two codings (the rules flag none on that
alone; the answer's note names both, q1net.predictor.rules).

Double coding (q1 then q2 > q1 on the same grid) leaves coefficients on q2's lattice but
only at the points s2 * round(s1 j / s2) that q1's levels reach: `double_gain` is how much
better that model fits than the best single table (the per-frequency estimate, so that
another encoder's table coded once is not mistaken for two IJG codings), in nats per unit
of evidence, and `first_quality` the q1 that fits best. It is the positive evidence the
recompression flag needs.

Everything is written as fixed-shape tensor operations (no data-dependent control flow,
no sort, median, erfc or scatter), so the same module runs in PyTorch, ONNX Runtime and
ExecuTorch (q1net.predictor.program).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from q1net.forensics.clipping import Declipper
from q1net.forensics.ops import (
    FAR,
    at_least,
    exp_,
    first_true,
    last_true,
    log_add_exp,
    log_sum_exp,
    log_sum_exp_terms,
    max_abs_difference,
    round_,
    select,
    take,
)
from q1net.forensics.quant_tables import IJG_LUMA_TABLES, IJG_QUALITIES, STEP_MAX, possible_equivalents, scaled_equivalents

SIGMA = 0.3  # std of an AC luma coefficient around its lattice point (pixel and RGB rounding), measured on val images
# DC: in a flat block all 64 pixels round the same way, so the DC coefficient (8 x the mean) can be
# off its lattice point by up to 8 x 0.5; the worst case's std, 8 / sqrt(12), keeps flat images
# (quality 1-2, where every AC coefficient is zero) from reading as another table by chance.
SIGMA_DC = 8 / math.sqrt(12)
OUTLIER_SHARE = 0.05  # eps: coefficients off the lattice (noise, clipping we missed)
DC_RANGE = 2048.0  # DC coefficients of 8-bit samples span [-1024, 1024)
SCALE_FLOOR = 0.01  # smallest (noise-deconvolved) Laplacian scale of a frequency
FLAT_AC = 1.0  # a block whose every AC coefficient is within this of 0 is flat: no AC evidence
DC_SAME = 1.0  # DC coefficients this close are the same observation (a solid area's blocks)
MIN_EVIDENCE = 4.0  # less evidence (non-flat blocks, flat ones by their DC weights): no lattice answer
TIE_NATS = 5.0  # tables this close to the best log-likelihood are plausible too
STRENGTH_MIN = 0.5  # nats per unit of evidence over "no lattice" from which the evidence is strong
# A lattice confirms a grid phase the detector was unsure of only from this strength: smooth never-coded or resized
# images can fit the all-ones table of quality 100 by up to ~1.1 (test and val photos), quality 99 already reads 4.
CONFIRM_STRENGTH = 2.0
MISFIT_MAX = 5.0  # nats per unit of evidence: IJG-coded val photos (q5..100) reach 3.2, scaled Annex K tables start at 7.3
# Known steps near the best IJG table's but off it (within NEAR_STEP_SHARE of its step: no multiple, no divisor) that fit
# this many nats better, summed, show another encoder's table near an IJG table's (`off_table_lead`). IJG-coded photos
# reach 29 (training photos at 1..100 and enlarged at 1..10, 3,449 images; validation 19: steps of 120-255 at qualities
# 1..5 read one off); Annex K scaled by another law, one step off IJG 38's at a few frequencies: 28-120 a step, and
# 280-300 in all on validation photos.
NEAR_STEP_SHARE = 0.25
OFF_TABLE_NATS = 50.0
IJG_MATCH_SHARE = 0.75  # share of the known steps on an IJG table's from which the estimate is that table
# Estimated steps between these many times the best table's (on IJG_MATCH_SHARE of the known ones): a coarser lattice, near
# its every second to fourth point. Further out, steps clamped at 255 (a first coding at 1..3 seen through a fine table's
# lattice: coded at 1, then at 90, the steps are 85..128 times 90's) are no whole multiples of the table's either.
COARSER_RATIOS = (1.5, 4.5)
KNOWN_MIN_NONZERO = 8  # an estimated step is known when this many blocks quantise to a clear non-zero level
DC_KNOWN_MIN_STEP = math.ceil(5 * SIGMA_DC)  # smaller DC steps drown in the flat-block rounding noise
# A non-zero level is clear from this |coefficient| on (about 8 noise std: noise around a zero level, as 4:2:2 or
# 4:2:0 colour rounding leaves on luma, reaches 1 often). Clear levels make a step known, and an unknown step is
# at most its frequency's second-smallest clear |coefficient| plus CEILING_NOISE (one outlier bounds nothing).
CLEAR_AC = 4.0
CEILING_NOISE = 2.0
FINE_STEP = 4  # AC steps below this get the lattice points either side of the nearest too (at 4 they are 6.7 SIGMA away)
AC_SHIFTS = (-1, 0, 1)  # lattice points around the nearest: the next ones are 1.5 steps of 1 = 5 SIGMA away at least
DC_SHIFTS = tuple(range(-14, 15))  # 6 SIGMA_DC / step 1 either side: the smallest DC step reaches this far
DOUBLE_LEVELS = (-1, 0, 1)  # first-coding levels around c / s1 tried by the double model
DETAIL_BLOCKS = 64  # the most textured blocks: the screen of the tables and the per-step estimate
DOUBLE_BLOCKS = 32  # the most textured of those: the double model (a detection and the first coding's quality)
SCREEN_TABLES = 12  # tables scored on every block after the screen
DECLIP_BLOCKS = 32  # the most textured clipped blocks, read back to each table's lattice (q1net.forensics.clipping)
DECLIP_MIN_SEEN = 0.25  # share of a clipped block's samples that must be seen unclipped for it to count
LOG_EPS, LOG_KEEP = math.log(OUTLIER_SHARE), math.log(1 - OUTLIER_SHARE)
# From this DC step on, the lattice points beyond the nearest either side weigh under 2^-32 of the nearest (at least
# 1.5 steps away against half a step): below float32's resolution, so three points give every bit of the full sum.
DC_NEAR_STEP = math.ceil(SIGMA_DC * math.sqrt(32 * math.log(2)))
NEAR_SHIFTS = (-1, 0, 1)
# Numerical Recipes' erfcc: log(erfcx(z)) = log(t) + sum_i ERFCC[i] t^i, t = 1 / (1 + z / 2)
ERFCC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def log_erfcx(z: torch.Tensor) -> torch.Tensor:
    """log(exp(z^2) erfc(z)) for z >= 0, by Numerical Recipes' erfcc (relative error under 1.2e-7): no erfc operator needed."""
    t = 1.0 / (1.0 + 0.5 * z)
    poly = t * ERFCC[-1]
    for coefficient in ERFCC[-2:0:-1]:  # Horner's rule, innermost first
        poly.add_(coefficient).mul_(t)
    return torch.log(t).add_(poly.add_(ERFCC[0]))


def log_no_lattice(c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log p0 of (N, 64) coefficients: Laplace(0, scale) convolved with N(0, SIGMA^2), in log space; uniform for DC.

    p0(c) = e^(-c^2 / 2 sigma^2) / (4 b) [erfcx(z-) + erfcx(z+)], z-+ = (sigma^2 / b -+ c) / (sigma sqrt 2). For
    z < 0, erfc(z) = 2 - erfc(-z) and e^(z^2) erfc(z) = 2 e^(z^2) - erfcx(-z).
    """
    sigma = SIGMA
    gauss_log = -(c**2) / (2 * sigma**2)

    def log_term(z: torch.Tensor) -> torch.Tensor:
        positive = log_erfcx(z.abs())
        squared = z.square()
        negative = exp_(positive - squared).neg_().add_(2).log_().add_(squared)  # exp(-z^2) erfcx(|z|) = erfc(|z|), in (0, 1]
        return select(at_least(z, 0.0), positive, negative)

    z_minus = (sigma**2 / scale - c) / (sigma * math.sqrt(2))
    z_plus = (sigma**2 / scale + c) / (sigma * math.sqrt(2))
    log_p0 = log_add_exp(log_term(z_minus), log_term(z_plus)).add_(gauss_log).sub_(torch.log(4 * scale))
    return torch.cat([torch.full_like(log_p0[..., :1], -math.log(DC_RANGE)), log_p0[..., 1:]], dim=-1)


def level_priors(ratio: torch.Tensor, log_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(k | s) of a Laplacian's quantisation bins at the step-to-scale `ratio` s / b, with the noise's norm and
    `log_share` (a mixture's) added, as two tensors of the steps' small shape: level 0's, and how far that is above
    the line the levels k != 0 are on, -|k| s / b plus a constant (a bin k != 0 holds exp(-(|k| - 1/2) s / b)
    (1 - e^(-s / b)) / 2)."""
    log_norm = -math.log(SIGMA * math.sqrt(2 * math.pi)) + log_share
    zero = torch.log(-torch.expm1(-ratio / 2)).add_(log_norm)
    away = torch.log(-torch.expm1(-ratio)).add_(ratio / 2).add_(math.log(0.5) + log_norm)
    return zero, zero - away


def log_level_terms(
    level: torch.Tensor, miss: torch.Tensor, ratio: torch.Tensor, priors: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """log P(k | s) N(miss; SIGMA) for whole levels k whose lattice point misses the coefficient by `miss`, `priors`
    from `level_priors`: fused passes over the large tensor, the constants in the small ones. Level 0 is told from
    the others by min(|k|, 1), a clamp, not by a comparison and a select (both slow here)."""
    size = level.abs()
    zero, above_line = priors
    log_prior = torch.addcmul(zero, size, ratio, value=-1.0).addcmul_(size.clamp(max=1.0), above_line, value=-1.0)
    return log_prior.addcmul_(miss, miss, value=-0.5 / SIGMA**2)


def log_lattice_ac(
    c: torch.Tensor, steps: torch.Tensor, scale: torch.Tensor, shifts: tuple[int, ...], log_share: float = 0.0
) -> torch.Tensor:
    """log sum_k P(k | s) N(c - s k; SIGMA) over the lattice points `shifts` away from round(c / s), plus `log_share`
    (the lattice's share of a mixture); (N, P) for pairs (P,)."""
    nearest = round_(c / steps)
    ratio = steps / scale
    priors = level_priors(ratio, log_share)
    terms = []
    for shift in shifts:
        level = nearest + shift if shift else nearest
        terms.append(log_level_terms(level, torch.addcmul(c, steps, level, value=-1.0), ratio, priors))  # c - s k
    return terms[0] if len(terms) == 1 else log_sum_exp_terms(terms)


def log_mixture_ac(
    c: torch.Tensor, steps: torch.Tensor, scale: torch.Tensor, shifts: tuple[int, ...], log_p0: torch.Tensor
) -> torch.Tensor:
    """log p(c | s): the lattice (`log_lattice_ac`) with share 1 - eps, "no lattice" (`log_p0`) with eps."""
    return log_add_exp(log_lattice_ac(c, steps, scale, shifts, LOG_KEEP), log_p0 + LOG_EPS)


def log_lattice_dc(c: torch.Tensor, steps: torch.Tensor, shifts: tuple[int, ...] = DC_SHIFTS) -> torch.Tensor:
    """log (s / DC_RANGE) sum_k N(c - s k; SIGMA_DC): DC levels are uniform a priori; (N, P) for (N, 1) DC and steps (P,).
    The sum runs over the lattice points `shifts` away from the nearest (NEAR_SHIFTS from DC_NEAR_STEP on)."""
    nearest = round_(c / steps)
    log_norm = -math.log(SIGMA_DC * math.sqrt(2 * math.pi))
    levels = nearest + torch.tensor(shifts, dtype=nearest.dtype).reshape(-1, *[1] * nearest.dim())  # (K, N, P)
    terms = (steps * levels).neg_().add_(c).div_(SIGMA_DC).square_().mul_(-0.5)  # -((c - s k) / sigma)^2 / 2
    return torch.log(steps / DC_RANGE) + log_norm + log_sum_exp(terms, dim=0)


def log_mixture_dc(c: torch.Tensor, steps: torch.Tensor, log_p0: torch.Tensor, shifts: tuple[int, ...] = DC_SHIFTS) -> torch.Tensor:
    """log p(c | s) of DC coefficients: the lattice (`log_lattice_dc`) with share 1 - eps, "no lattice" (`log_p0`) with eps."""
    return log_add_exp(log_lattice_dc(c, steps, shifts).add_(LOG_KEEP), log_p0 + LOG_EPS)


class LatticeFit(NamedTuple):
    """The verifier's answer, as tensors (scalars are 0-d). Qualities are on the IJG 1..100 scale."""

    found: torch.Tensor  # bool: enough evidence for any lattice answer
    quality: torch.Tensor  # best IJG table, or the estimated table's IJG-equivalent when not `ijg`
    quality_low: torch.Tensor  # the range the pixels allow
    quality_high: torch.Tensor
    strength: torch.Tensor  # nats per unit of evidence over "no lattice"
    ijg: torch.Tensor  # bool: one IJG table explains the coefficients
    misfit: torch.Tensor
    evidence: torch.Tensor  # non-flat blocks, and flat ones by their DC weights
    plausible: torch.Tensor  # (100,) bool over IJG qualities
    tables: torch.Tensor  # (100,) log-likelihood of each IJG table (-FAR: screened out)
    steps: torch.Tensor  # (64,) per-frequency ML steps, natural order
    known: torch.Tensor  # (64,) bool: steps the pixels pin down
    first_quality: torch.Tensor  # the earlier, lower quality the double model fits best
    first_plausible: torch.Tensor  # (100,) bool: first qualities within TIE_NATS of it
    double_gain: torch.Tensor  # nats per unit of evidence the double model gains over one table
    single_low: torch.Tensor  # the lowest IJG-equivalent one coding with the estimated steps can have
    scaled_low: torch.Tensor  # the equivalents of Table K.1 at the least and the most scale the known steps allow
    scaled_high: torch.Tensor  # (`scaled_equivalents`)
    off_table: torch.Tensor  # bool: known steps near the best IJG table's but off it fit clearly better (`off_table_lead`)
    steps_ijg: torch.Tensor  # bool: the estimated steps the pixels pin down are one IJG table's (a first IJG coding's)
    table_quality: torch.Tensor  # the best IJG table's quality
    sublattice: torch.Tensor  # bool: the steps are whole multiples of that table's (`coarser_lattice`)

    @property
    def strong(self) -> torch.Tensor:
        return self.found & (self.strength >= STRENGTH_MIN)

    @property
    def confirms(self) -> torch.Tensor:
        """Strong enough to confirm a grid phase the detector was unsure of."""
        return self.found & (self.strength >= CONFIRM_STRENGTH)


def textured(c: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """(N,) bool: usable blocks with an AC coefficient of FLAT_AC or more."""
    return usable & (c[:, 1:].abs().amax(dim=1) >= FLAT_AC)


def coarser_lattice(steps: torch.Tensor, known: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coarser, whole), bools: on IJG_MATCH_SHARE of the `known` (64,) per-frequency `steps` (at least two) they are
    COARSER_RATIOS times the IJG `table`'s: the coefficients sit at or near every second (to fourth) point of its
    lattice only, which one coding with that table cannot leave (its first levels are its commonest, a Laplacian's
    bins); `whole`: whole multiples at every known step, as a first, coarser coding seen through the table's lattice
    leaves them (or one coding with a table that many times it: the pixels cannot tell the two apart). A table near
    such multiples but off them at one known step (Annex K at nominal 4: 117, 80, 88, 88 against IJG 27's 30, 20, 22,
    22) is one coding."""
    share = IJG_MATCH_SHARE * known.sum()
    ratio = steps / table
    coarse = (((ratio >= COARSER_RATIOS[0]) & (ratio <= COARSER_RATIOS[1]) & known).sum() >= share) & (known.sum() >= 2)
    # exact however division rounds; no `all` kernel in ExecuTorch (`ratio` is spent: rounded in place)
    whole = ~((steps != round_(ratio) * table) & known).any()
    return coarse, coarse & whole


def off_table_lead(by_step: torch.Tensor, steps: torch.Tensor, known: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Nats by which the `known` estimated `steps` (64,) that lie near the IJG `table`'s but off it (within
    NEAR_STEP_SHARE of its step) fit better than the table's own, from the (STEP_MAX, 64) `step_log_likelihoods`.

    Annex K scaled by another law can share every step with an IJG table but for a few one off it (38 where IJG 32 has
    37): the best IJG table fits within MISFIT_MAX per unit of evidence, yet each such step is tens of nats better."""
    near = known & (steps != table) & ((steps - table).abs() <= NEAR_STEP_SHARE * table)
    rows = torch.stack([steps, table]).long() - 1  # (2, 64) into the steps 1..STEP_MAX
    own, tables = by_step.gather(0, rows)
    return ((own - tables) * near.float()).sum()


def same_values(values: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: rows of (N, K) `values` (blocks' coefficients) all within DC_SAME of each other: one observation."""
    return max_abs_difference(values) < DC_SAME


def once_per_repeat(same: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) weights: 1 / the number of masked rows the `same_values` (N, N) matrix pairs with each masked row, 0 off the mask."""
    return mask.float() / (same.float() * mask.float()[None, :]).sum(dim=1).clamp(min=1.0)


class Clipped(NamedTuple):
    """The lattice's blocks as `q1net.forensics.clipping.clipped_samples` reads them, and which clipped ones may be read."""

    seen: torch.Tensor  # (N, 8, 8) level-shifted luma
    high: torch.Tensor  # (N, 8, 8) bool: a channel at 255
    low: torch.Tensor  # (N, 8, 8) bool: a channel at 0
    usable: torch.Tensor  # (N,) bool: clipped and read once


class LatticeVerifier(nn.Module):
    """(N, 64) on-grid luma DCT coefficients, an (N,) usable mask (unclipped blocks read once) and the same blocks'
    samples (`Clipped`) -> LatticeFit."""

    def __init__(self) -> None:
        super().__init__()
        self.declip = Declipper()
        self.register_buffer("tables", torch.from_numpy(IJG_LUMA_TABLES.astype(np.float32)), persistent=False)
        self.register_buffer("steps", torch.arange(1, STEP_MAX + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("table_rows", torch.from_numpy(IJG_LUMA_TABLES.astype(np.int64) - 1), persistent=False)  # into steps

    @staticmethod
    def weights(c: torch.Tensor, usable: torch.Tensor, same_ac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) AC weights (usable and not flat, one over the count of such blocks with the same AC coefficients,
        `same_ac` = same_values(c[:, 1:])) and DC weights (usable, one over the count of usable blocks with the same DC).

        Repeated blocks are one observation: the edge of a drawn rectangle repeats the same coefficients block after
        block, and any step that divides them would fit them all.
        """
        return once_per_repeat(same_ac, textured(c, usable)), once_per_repeat(same_values(c[:, :1]), usable)

    @staticmethod
    def scales(c: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
        """(..., 64) Laplacian scale per frequency of (..., N, 64) coefficients, with the rounding noise taken out:
        E c^2 = 2 b^2 + sigma^2."""
        second = (c**2 * ac[:, None]).sum(dim=-2) / ac.sum().clamp(min=1.0)
        return torch.sqrt(torch.clamp(second - SIGMA**2, min=0.0) / 2).clamp(min=SCALE_FLOOR)

    def step_log_likelihoods(
        self, c: torch.Tensor, scale: torch.Tensor, log_p0: torch.Tensor, ac: torch.Tensor, dc: torch.Tensor
    ) -> torch.Tensor:
        """(STEP_MAX, 64): the weighted sum over blocks of log p(c | s) for every step 1..STEP_MAX at every frequency,
        dense: the per-frequency estimate's search, and every IJG table's score gathered from it."""
        small, large = self.steps[: DC_NEAR_STEP - 1], self.steps[DC_NEAR_STEP - 1 :]
        dc_ll = torch.cat(
            [log_mixture_dc(c[:, :1], part, log_p0[:, :1], shifts) for part, shifts in ((small, DC_SHIFTS), (large, NEAR_SHIFTS))],
            dim=1,
        )  # (N, STEP_MAX)
        columns, p0, b = c[:, 1:, None], log_p0[:, 1:, None], scale[1:, None]  # (N, 63, 1)
        fine, coarse = self.steps[: FINE_STEP - 1], self.steps[FINE_STEP - 1 :]
        ac_ll = torch.cat(
            [
                (ac @ log_mixture_ac(columns, part, b, shifts, p0).flatten(1)).reshape(63, -1)  # weighted sum over blocks
                for part, shifts in ((fine, AC_SHIFTS), (coarse, (0,)))
            ],
            dim=1,
        )  # (63, STEP_MAX)
        return torch.cat([(dc_ll * dc[:, None]).sum(dim=0)[:, None], ac_ll.T], dim=1)

    def table_log_likelihoods(
        self, tables: torch.Tensor, c: torch.Tensor, scale: torch.Tensor, log_p0: torch.Tensor, ac: torch.Tensor, dc: torch.Tensor
    ) -> torch.Tensor:
        """(T,) weighted log-likelihood of whole tables (T, 64) on every block, dense (for a few tables)."""
        steps = tables[None]  # (1, T, 64)
        coefficient = c[:, None, :]  # (N, 1, 64)
        ac_ll = log_mixture_ac(coefficient[..., 1:], steps[..., 1:], scale[None, None, 1:], AC_SHIFTS, log_p0[:, None, 1:])  # (N, T, 63)
        dc_ll = log_mixture_dc(coefficient[..., 0], steps[..., 0], log_p0[:, None, 0])  # (N, T)
        return (ac_ll.sum(dim=2) * ac[:, None]).sum(dim=0) + (dc_ll * dc[:, None]).sum(dim=0)

    def forward(self, c: torch.Tensor, usable: torch.Tensor, clipped: Clipped) -> LatticeFit:
        c = c.float()
        same_ac = same_values(c[:, 1:])
        ac, dc = self.weights(c, usable, same_ac)
        scale = self.scales(c, ac)
        log_p0 = log_no_lattice(c, scale)
        top = torch.topk(c[:, 1:].abs().sum(dim=1) * ac + dc * 1e-3, min(DETAIL_BLOCKS, len(c))).indices
        c_top, p0_top, ac_top, dc_top = c[top], log_p0[top], ac[top], dc[top]
        by_step = self.step_log_likelihoods(c_top, scale, p0_top, ac_top, dc_top)
        steps, known, ceiling, estimated_ll = self.estimate(by_step, c_top, ac_top, dc_top)

        # Clipped blocks, read back to the lattice of each IJG table and of the per-frequency estimate (the last row)
        declipped_all, declipped_evidence = self.declipped_log_ratios(c, clipped, torch.cat([self.tables, steps[None]]), same_ac)
        declipped, declipped_estimate = declipped_all[:-1], declipped_all[-1]
        # a textured block counts once; flat ones by their share of a DC value; clipped ones as read by the declipper
        evidence = torch.maximum(ac, dc).sum() + declipped_evidence
        # "no lattice" on the clipped blocks is the all-ones table of quality 100 (the last): it absorbs any block
        no_lattice = (log_p0[:, 0] * dc).sum() + (log_p0[:, 1:] * ac[:, None]).sum() + declipped[-1]
        per_unit = evidence.clamp(min=1.0)

        # Screening: every table on the most textured blocks (they hold the non-zero levels that tell tables apart),
        # then the SCREEN_TABLES best of them on every block. A table outside those that ties with the screen's best
        # counts as plausible: the range stays honest when more tables tie than were scored in full.
        top_unit = (torch.maximum(ac_top, dc_top).sum() + declipped_evidence).clamp(min=1.0)  # the estimate's blocks
        unclipped_screen = by_step.gather(0, self.table_rows).sum(dim=1)
        screen = unclipped_screen + declipped
        scored = torch.topk(screen, SCREEN_TABLES).indices
        table = torch.full((len(IJG_QUALITIES),), -FAR).index_put(
            (scored,), self.table_log_likelihoods(self.tables[scored], c, scale, log_p0, ac, dc) + declipped[scored]
        )
        best = torch.argmax(table)
        unscored_close = (screen >= screen.max() - TIE_NATS) & (table <= -FAR)
        plausible = (table >= take(table, best) - TIE_NATS) | unscored_close

        # "no lattice" on the same blocks as the estimate, and the estimate's lead over the best IJG table on them
        estimated_over = (p0_top[:, 0] * dc_top).sum() + (p0_top[:, 1:] * ac_top[:, None]).sum() + declipped[-1]
        estimated_ll = estimated_ll + declipped_estimate
        log_steps, log_ceiling = torch.log(steps), torch.log(ceiling)
        equivalent, equivalent_set = possible_equivalents(log_steps, known, log_ceiling)
        scaled_low, scaled_high = scaled_equivalents(steps, known, log_ceiling)
        misfit = (estimated_ll - screen.max()) / top_unit
        best_table = take(self.tables, best)
        coarser, sublattice = coarser_lattice(steps, known, best_table)
        ijg = ((misfit <= MISFIT_MAX) & ~coarser) | ~known.any()
        quality_index = torch.where(ijg, best, equivalent)
        allowed = (ijg & plausible) | (~ijg & equivalent_set)  # a bool select: ONNX Runtime has no Where on booleans
        strength = torch.where(ijg, (take(table, best) - no_lattice) / per_unit, (estimated_ll - estimated_over) / top_unit)

        # Double coding: a first IJG coding, then a second one on the same grid. Either lattice can fit best alone (the
        # first when the second is much finer), so both sides are searched: earlier tables under the best one, and
        # finer tables over it. The baseline is the better of the best IJG table and the per-frequency estimate (the
        # best single table there is): another encoder's table coded once is that estimate, and no pair of IJG
        # codings improves on it much; two IJG codings leave gaps that no single table explains.
        # (The blocks come sorted, most textured first: the double model reads the first DOUBLE_BLOCKS.)
        c_double, p0_double, ac_double = c_top[:DOUBLE_BLOCKS], p0_top[:DOUBLE_BLOCKS], ac_top[:DOUBLE_BLOCKS]
        double_unit = torch.maximum(ac_double, dc_top[:DOUBLE_BLOCKS]).sum()  # the double model reads unclipped blocks only
        # One batch of 101 pairs (first, second): row t < best is (table t, best), t > best (best, table t), t = best the
        # best table alone; the last row the per-frequency estimate alone.
        index = torch.arange(len(IJG_QUALITIES))
        before = (index < best)[:, None]
        first_tables = torch.cat([torch.where(before | (index == best)[:, None], self.tables, best_table), steps[None]])
        second_tables = torch.cat([torch.where(before, best_table, self.tables), steps[None]])
        scores = self.double_scores(c_double, scale, p0_double, ac_double, first_tables, second_tables)
        pair_scores = scores[:-1]
        earlier = torch.where(index < best, pair_scores, -FAR)
        finer = torch.where(index > best, pair_scores, -FAR)
        baseline = torch.maximum(take(pair_scores, best), scores[-1])
        by_first = torch.maximum(earlier, torch.where(index == best, finer.max(), -FAR))  # (100,) over the first coding's quality
        first = torch.argmax(by_first)
        first_score = take(by_first, first)
        first_plausible = by_first >= first_score - TIE_NATS
        double_read = (first_score > -FAR) & (double_unit >= MIN_EVIDENCE)  # as little evidence as a lattice answer needs
        double_gain = torch.where(double_read, (first_score - baseline) / double_unit.clamp(min=1.0), torch.zeros(()))
        qualities = torch.from_numpy(IJG_QUALITIES.astype(np.float32))
        return LatticeFit(
            found=evidence >= MIN_EVIDENCE,
            quality=take(qualities, quality_index),
            quality_low=take(qualities, first_true(allowed)),
            quality_high=take(qualities, last_true(allowed)),
            strength=strength,
            ijg=ijg,
            misfit=misfit,
            evidence=evidence,
            plausible=allowed,
            tables=table,
            steps=steps,
            known=known,
            first_quality=take(qualities, first),
            first_plausible=first_plausible,
            double_gain=double_gain.clamp(min=0.0),
            single_low=take(qualities, first_true(equivalent_set)),
            scaled_low=take(qualities, scaled_low),
            scaled_high=take(qualities, scaled_high),
            off_table=off_table_lead(by_step, steps, known, best_table) >= OFF_TABLE_NATS,
            steps_ijg=self.matches_an_ijg_table(steps, known, best_table),
            table_quality=take(qualities, best),
            sublattice=sublattice,
        )

    def matches_an_ijg_table(self, steps: torch.Tensor, known: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """bool: the `known` steps (at least two) are, on IJG_MATCH_SHARE of them, one IJG table's as seen through the
        `last` table's lattice (a first coding's step is read as a multiple of the second's: within half of it, plus
        one) or the last table's own (where only the second coding left levels). A coarse lattice near a finer IJG
        table's is then a first IJG coding under it; otherwise one coding with another encoder's table."""
        own = (steps - last).abs() <= 1
        close = (((self.tables - steps[None, :]).abs() <= last[None, :] / 2 + 1) | own[None, :]) & known[None, :]
        share = close.sum(dim=1).float() / known.sum().clamp(min=1)
        return (share >= IJG_MATCH_SHARE).any() & (known.sum() >= 2)

    def declipped_log_ratios(
        self, c: torch.Tensor, clipped: Clipped, tables: torch.Tensor, same_ac: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) each of `tables`' (T, 64) AC log-likelihood ratio over "no lattice" on its own unclipped version of the
        DECLIP_BLOCKS most textured clipped blocks (q1net.forensics.clipping), and the evidence those blocks hold.

        A clipped sample is free: a block counts by its share of samples seen as they were (under DECLIP_MIN_SEEN: not
        at all). Free samples let any table fit, and the coarsest fit best: a gradient to pure red is all free.
        """
        seen_share = 1 - (clipped.high | clipped.low).flatten(1).float().mean(dim=1)
        weight = once_per_repeat(same_ac, textured(c, clipped.usable) & (seen_share >= DECLIP_MIN_SEEN)) * seen_share
        top = torch.topk(c[:, 1:].abs().sum(dim=1) * weight, min(DECLIP_BLOCKS, len(c))).indices
        weight = weight[top]
        coefficients = self.declip(clipped.seen[top], clipped.high[top], clipped.low[top], tables)  # (T, B, 64)
        scale = self.scales(c[top], weight)
        log_p0 = log_no_lattice(coefficients, scale)[..., 1:]
        ratio = log_mixture_ac(coefficients[..., 1:], tables[:, None, 1:], scale[1:], AC_SHIFTS, log_p0).sub_(log_p0).sum(dim=2)
        return (ratio * weight).sum(dim=1), weight.sum()

    @staticmethod
    def estimate(by_step: torch.Tensor, c: torch.Tensor, ac: torch.Tensor, dc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-frequency ML steps over 1..255 (64,) from `step_log_likelihoods`, which are known, the most each unknown
        one can be (FAR: no bound), and the total log-likelihood of that table."""
        best = torch.argmax(by_step, dim=0)
        steps = (best + 1).float()
        levels = round_(c / steps[None, :])
        weight = torch.cat([dc[:, None] > 0, (ac[:, None] > 0).expand(-1, 63)], dim=1)
        clear = (levels != 0) & (c.abs() >= CLEAR_AC) & weight  # a level rounding noise cannot make
        known = clear.sum(dim=0) >= KNOWN_MIN_NONZERO
        known = known & torch.cat([steps[:1] >= DC_KNOWN_MIN_STEP, torch.ones(63, dtype=torch.bool)])
        magnitudes = torch.where(clear, c.abs(), torch.full_like(c, FAR))
        second = torch.topk(magnitudes, min(2, len(c)), dim=0, largest=False).values[-1]
        return steps, known, second + CEILING_NOISE, by_step.amax(dim=0).sum()

    def double_scores(
        self, c: torch.Tensor, scale: torch.Tensor, log_p0: torch.Tensor, ac: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> torch.Tensor:
        """(T,) AC log-likelihood of "first coded with table `first`[t], then with `second`[t]" (both (T, 64)).

        A first-coding level j at step s1 lands on s2 * round(s1 j / s2); its prior is the Laplacian bin mass at s1.
        With `first` = `second` this is the single table's AC likelihood under the same approximations.
        The DC is the second table's either way and is left out.
        """
        s1, s2 = first[:, 1:, None], second[:, 1:, None]  # (T, 63, 1)
        coefficient, ratio = c[:, 1:].T, s1 / scale[1:, None]  # (63, N), (T, 63, 1)
        nearest = round_(coefficient / s1)  # (T, 63, N)
        priors = level_priors(ratio, LOG_KEEP)
        terms = []
        for shift in DOUBLE_LEVELS:
            level = nearest + shift if shift else nearest
            landed = round_((s1 * level).div_(s2)).mul_(s2)  # s2 * round(s1 j / s2)
            terms.append(log_level_terms(level, landed.neg_().add_(coefficient), ratio, priors))
        ll = log_add_exp(log_sum_exp_terms(terms), log_p0[:, 1:].T + LOG_EPS)  # (T, 63, N)
        return (ll @ ac).sum(dim=1)
