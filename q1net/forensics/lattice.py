"""The DCT-lattice verifier: which IJG quantisation table explains a decoded JPEG's luma coefficients.

On the coding grid, a decoded JPEG's luma coefficient at frequency f is
s_f * k plus rounding noise (std `SIGMA`; `SIGMA_DC` for DC), where s_f is the quantiser step.
For a candidate step s the likelihood of a coefficient c is

    p(c | s) = (1 - eps) * sum_k P(k | s) N(c - s k; SIGMA) + eps * p0(c)

with P(k | s) the mass a Laplacian of the frequency's scale puts in the k-th
quantisation bin (uniform for DC), and p0 the same Laplacian, unquantised,
blurred by the noise: the "no lattice" model, also the outlier part. The sum
of log p over blocks and frequencies scores each of the 100 IJG tables at
once; the best is the lattice's quality. Its lead over p0, in nats per block,
is the `strength` of the evidence: about 1 for quality 100, tens below, and
at or below 0 for images never JPEG-coded, resized or filtered after coding.

Tables whose score is within `TIE_NATS` of the best are all `plausible`: on
a flat image several qualities share the steps of every frequency that has a
non-zero coefficient, and the CNN chooses among them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from q1net.forensics.dct import BLOCK, block_coefficients, cut_blocks, spread, to_luma, unclipped_blocks
from q1net.forensics.grid import GridPhase
from q1net.forensics.quant_tables import IJG_LUMA_TABLES, IJG_QUALITIES, STEP_MAX, ijg_equivalent_quality

SIGMA = 0.3  # std of an AC luma coefficient around its lattice point (pixel and RGB rounding), measured on val images
# DC: in a flat block all 64 pixels round the same way, so the DC coefficient (8 x the mean) can be
# off its lattice point by up to 8 x 0.5; the worst case's std, 8 / sqrt(12), keeps flat images
# (quality 1-2, where every AC coefficient is zero) from reading as another table by chance.
SIGMA_DC = 8 / math.sqrt(12)
OUTLIER_SHARE = 0.05  # eps: coefficients off the lattice (noise, clipping we missed)
DC_RANGE = 2048.0  # DC coefficients of 8-bit samples span [-1024, 1024)
SCALE_FLOOR = 0.1  # smallest Laplacian scale of a frequency (all-zero frequencies)
LATTICE_BLOCKS = 256  # unclipped blocks the fit reads, spread over the image
MIN_BLOCKS = 4  # fewer unclipped blocks: no lattice evidence at all
TIE_NATS = 5.0  # tables this close to the best log-likelihood are plausible too
STRENGTH_MIN = 0.5  # nats per block over "no lattice" from which the evidence is strong (see q1net.predictor.inference)
REACH = 6.0  # lattice points further than this many noise stds from a coefficient add nothing
MISFIT_MAX = 8.0  # nats per block: IJG-coded images stay below 3 on val, other encoders' tables start near 20
KNOWN_MIN_NONZERO = 8  # an estimated step is known when this many blocks quantise to a non-zero level
DC_KNOWN_MIN_STEP = math.ceil(5 * SIGMA_DC)  # smaller DC steps drown in the flat-block rounding noise
# Screening: every table is first scored on SCREEN_BLOCKS of the blocks; only tables within SCREEN_NATS
# of that screen's best are scored on all of them. A table that far behind on an eighth of the blocks
# would need the rest to favour it by as much again to come back within TIE_NATS: on the
# val photos at every condition the answers are the same as scoring every table (as tests/test_grid_lattice.py checks).
SCREEN_BLOCKS = 32
SCREEN_NATS = 50.0
SCREEN_MISFIT_MAX = MISFIT_MAX / 2  # a screen misfit above this: maybe not an IJG table, score every table on every block


@dataclass(frozen=True)
class LatticeFit:
    quality: int  # IJG quality of the best-scoring table
    strength: float  # nats per block of the best table over "no lattice"
    plausible: tuple[int, ...]  # qualities within TIE_NATS of the best, ascending
    blocks: int  # blocks the fit read
    misfit: float  # nats per block that mixing IJG steps per frequency gains over the best IJG table
    ijg: bool = True  # False: not an IJG table; `quality` is the IJG-equivalent of the estimated steps
    steps: np.ndarray | None = field(default=None, repr=False)  # (64,) estimated luma steps, when estimated
    known: np.ndarray | None = field(default=None, repr=False)  # (64,) which estimated steps the pixels pin down

    @property
    def strong(self) -> bool:
        return self.strength >= STRENGTH_MIN


def lattice_coefficients(pixels: np.ndarray, phase: GridPhase, blocks: int = LATTICE_BLOCKS) -> np.ndarray:
    """(N, 64) luma DCT coefficients of up to `blocks` unclipped coding blocks on the grid at `phase`, spread evenly."""
    rows, cols = np.nonzero(unclipped_blocks(pixels, phase.dy, phase.dx))  # row-major, like the blocks
    pick = spread(len(rows), blocks)
    rows, cols = rows[pick], cols[pick]
    return block_coefficients(to_luma(cut_blocks(pixels, phase.dy + BLOCK * rows, phase.dx + BLOCK * cols)))


def _log_no_lattice(c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log p0: Laplace(0, scale) convolved with N(0, SIGMA^2), in closed form, in log space; uniform for DC."""
    sigma = SIGMA
    gauss_log = -(c**2) / (2 * sigma**2)
    base = sigma**2 / (2 * scale**2)

    def log_term(z: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        # log(exp(exponent) * erfc(z)), through erfcx where z >= 0 so nothing under- or overflows
        return torch.where(
            z < 0, exponent + torch.log(torch.erfc(z.clamp(max=0))), gauss_log + torch.log(torch.special.erfcx(z.clamp(min=0)))
        )

    z_minus = (sigma**2 / scale - c) / (sigma * math.sqrt(2))
    z_plus = (sigma**2 / scale + c) / (sigma * math.sqrt(2))
    log_p0 = torch.logaddexp(log_term(z_minus, base - c / scale), log_term(z_plus, base + c / scale)) - torch.log(4 * scale)
    log_p0[:, 0] = -math.log(DC_RANGE)
    return log_p0


def _log_lattice(c: torch.Tensor, steps: torch.Tensor, scale: torch.Tensor, dc: bool, shifts: range) -> torch.Tensor:
    """log sum_k P(k | s) N(c - s k; sigma) over the lattice points `shifts` away from round(c / s).

    `dc`: all columns are DC (uniform level prior, SIGMA_DC) or all are AC (Laplacian bins, SIGMA).
    """
    nearest = torch.round(c / steps)
    sigma = SIGMA_DC if dc else SIGMA
    log_norm = -math.log(sigma * math.sqrt(2 * math.pi))
    ratio = steps / scale
    log_zero_bin = torch.log(-torch.expm1(-ratio / 2))
    log_bin_width = math.log(0.5) + torch.log(-torch.expm1(-ratio))  # a Laplacian's mass in bin k != 0, times exp((|k| - 1/2) s / b)
    terms = []
    for shift in shifts:
        level = nearest + shift if shift else nearest
        if dc:
            log_prior = torch.log(steps / DC_RANGE)
        else:
            size = level.abs()
            log_prior = torch.where(size == 0, log_zero_bin, log_bin_width - (size - 0.5) * ratio)
        terms.append(log_prior + log_norm - 0.5 * ((c - steps * level) / sigma) ** 2)
    return terms[0] if len(terms) == 1 else torch.stack(terms).logsumexp(dim=0)


def _step_log_likelihood(
    c: torch.Tensor, steps: torch.Tensor, scale: torch.Tensor, is_dc: torch.Tensor, log_p0: torch.Tensor
) -> torch.Tensor:
    """Sum over blocks of log p(c | s) for columns of `c` (N, P) paired with `steps` (P,).

    Each coefficient takes the lattice points within REACH noise stds: only the
    nearest one for AC steps of 4 and up, a few for smaller AC steps, more for small DC steps.
    """
    log_lattice = torch.empty_like(c)
    fine = steps < 2 * REACH * SIGMA  # a second lattice point can be within REACH stds
    parts = ((is_dc, True, SIGMA_DC), (~is_dc & fine, False, SIGMA), (~is_dc & ~fine, False, 0.0))  # 0: the nearest point only
    for part, dc, reach in parts:  # three large tensor operations
        if part.any():
            width = math.ceil(REACH * reach / float(steps[part].min()))
            log_lattice[:, part] = _log_lattice(c[:, part], steps[part], scale[part], dc, range(-width, width + 1))
    return torch.logaddexp(log_lattice + math.log(1 - OUTLIER_SHARE), log_p0 + math.log(OUTLIER_SHARE)).sum(dim=0)


def _pairs(tables: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct (frequency, step) pairs of `tables` (T, 64) and each table's 64 indices into them."""
    frequency = np.broadcast_to(np.arange(64), tables.shape)
    keys = frequency * (STEP_MAX + 1) + tables
    unique, inverse = np.unique(keys, return_inverse=True)
    return (
        torch.from_numpy(unique // (STEP_MAX + 1)),
        torch.from_numpy((unique % (STEP_MAX + 1)).astype(np.float32)),
        torch.from_numpy(inverse.reshape(tables.shape)),
    )


IJG_PAIRS = _pairs(IJG_LUMA_TABLES)  # 100 tables share about 4,800 (frequency, step) pairs


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the fit: its tensors are small, and after a parallel op torch's OpenMP
    workers spin for a while on the core the network runs on next (measured: ONNX Runtime 26 ms after a fit on
    two threads, 19 after one on a single thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pair_log_likelihoods(coefficients: np.ndarray, frequency: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, float]:
    c = torch.from_numpy(np.asarray(coefficients, np.float32))
    scale = c.abs().mean(dim=0).clamp(min=SCALE_FLOOR)  # ML Laplacian scale of each frequency
    log_p0 = _log_no_lattice(c, scale)
    pair = _step_log_likelihood(c[:, frequency], steps, scale[frequency], frequency == 0, log_p0[:, frequency])
    return pair, float(log_p0.double().sum())


def _best_per_frequency(pair: torch.Tensor, frequency: torch.Tensor) -> torch.Tensor:
    """(64,) highest log-likelihood among each frequency's candidate steps."""
    return torch.full((64,), -math.inf, dtype=pair.dtype).scatter_reduce(0, frequency, pair, reduce="amax")


ALL_STEPS = np.broadcast_to(np.arange(1, STEP_MAX + 1)[:, None], (STEP_MAX, 64))
ALL_PAIRS = _pairs(ALL_STEPS)


@torch.no_grad()
@one_thread()
def estimate_table(coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-frequency ML quantiser steps (64,) from on-grid coefficients, which are known, and the total log-likelihood.

    A step is known when at least KNOWN_MIN_NONZERO blocks quantise to a non-zero
    level at it; a frequency whose coefficients are all zero only bounds its step.
    """
    frequency, steps, index = ALL_PAIRS
    pair, _ = _pair_log_likelihoods(coefficients, frequency, steps)
    best = ALL_STEPS[pair[index].numpy().argmax(axis=0), np.arange(64)]
    levels = np.round(np.asarray(coefficients) / best)
    known = (levels != 0).sum(axis=0) >= KNOWN_MIN_NONZERO
    known[0] &= best[0] >= DC_KNOWN_MIN_STEP
    return best.astype(int), known, float(_best_per_frequency(pair.double(), frequency).sum())


def _ijg_tables(coefficients: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(100,) log-likelihood of each IJG table, "no lattice"'s, and the misfit per block, every pair on every block."""
    frequency, steps, index = IJG_PAIRS
    pair, no_lattice = _pair_log_likelihoods(coefficients, frequency, steps)
    pair = pair.double()
    table = pair[index].sum(dim=1).numpy()
    return table, no_lattice, float((_best_per_frequency(pair, frequency).sum() - table.max()) / len(coefficients))


def ijg_table_scores(coefficients: np.ndarray, screen: bool = True) -> tuple[np.ndarray, float, float]:
    """(100,) log-likelihood of each IJG table, "no lattice"'s, and the misfit per block.

    With `screen`, tables far behind on the screen's blocks are not scored on the
    rest (-inf). The misfit needs every pair on every block; it is then measured
    on the screen, and only when that reads well under MISFIT_MAX (an IJG-coded
    image) is the screening taken; otherwise everything is scored on every block.
    """
    screened = coefficients[spread(len(coefficients), SCREEN_BLOCKS)]
    if not screen or len(screened) == len(coefficients):
        return _ijg_tables(coefficients)
    table, _, misfit = _ijg_tables(screened)
    if misfit > SCREEN_MISFIT_MAX:
        return _ijg_tables(coefficients)
    frequency, steps, index = IJG_PAIRS
    candidates = np.flatnonzero(table >= table.max() - SCREEN_NATS)
    used = torch.from_numpy(np.unique(index[candidates].numpy()))
    used_pair, no_lattice = _pair_log_likelihoods(coefficients, frequency[used], steps[used])
    pair = torch.zeros(len(frequency), dtype=torch.float64)
    pair[used] = used_pair.double()
    table = np.full(len(IJG_QUALITIES), -math.inf)
    table[candidates] = pair[index[candidates]].sum(dim=1).numpy()
    return table, no_lattice, misfit


@torch.no_grad()
@one_thread()
def fit_lattice(coefficients: np.ndarray, estimate: bool = False) -> LatticeFit | None:
    """The quality whose table best explains (N, 64) on-grid luma coefficients; None with too few blocks.

    IJG tables are scored directly (after screening, above). When mixing IJG steps per frequency fits much
    better than any one IJG table (`misfit` over MISFIT_MAX: another encoder's or
    custom tables), or with `estimate`, every step is estimated on its own and the
    answer is the estimated table's IJG-equivalent quality (q1net.forensics.quant_tables).
    """
    if len(coefficients) < MIN_BLOCKS:
        return None
    blocks = len(coefficients)
    table, no_lattice, misfit = ijg_table_scores(coefficients)
    best = int(table.argmax())
    fit = LatticeFit(
        quality=int(IJG_QUALITIES[best]),
        strength=float((table[best] - no_lattice) / blocks),
        plausible=tuple(int(q) for q in IJG_QUALITIES[table >= table[best] - TIE_NATS]),
        blocks=blocks,
        misfit=misfit,
    )
    if not (estimate or misfit > MISFIT_MAX):
        return fit
    table_steps, known, log_likelihood = estimate_table(coefficients)
    fit = replace(fit, steps=table_steps, known=known)
    if misfit <= MISFIT_MAX or not known.any():
        return fit
    quality = ijg_equivalent_quality(table_steps, known)
    return replace(fit, quality=quality, plausible=(quality,), strength=(log_likelihood - no_lattice) / blocks, ijg=False)
