"""The rules that turn evidence into one answer and the range the pixels allow, as fixed-shape tensor operations.

The published rule (REFERENCE.md): n x n blocks spread uniformly on the 8x8 grid, run as
one batch, keep predictions whose confidence is strictly above tau, answer the median of
the kept qualities. Here, as well:
- flat patches (every channel within FLAT_RANGE levels over the whole 16x16 patch) never
  vote: they look the same at every quality, and a network may still trust them;
- when no block passes tau the published code answers 100. That hides the failure and is
  wrong for most such images, so the answer is instead the median quality of the most
  confident quarter of the informative blocks, with `fallback` set;
- the range of a CNN answer is the 10th to 90th percentile of the voting blocks' qualities;
  when that spans more than DETERMINED_WIDTH (undetermined anyway), every voter's quality.
`combine` then weighs the CNN against the DCT lattice (q1net.forensics.lattice), the
"hybrid" method:
- a strong lattice answers with its most likely table, the CNN choosing only among the tables
  as good as tied with it (CHOICE_NATS), and its plausible set is the range; another encoder's
  table answers with its IJG-equivalent quality, and its range also reaches the CNN's answer
  (the steps the pixels leave unknown make the equivalent uncertain: finer high frequencies
  than IJG's read low); an IJG table whose lattice fits but off which some known steps clearly lie
  (`off_table`: Annex K scaled by another law, one step off here and there) answers, and the range
  also spans every equivalent the known steps' scale allows;
- recompression needs positive evidence of two codings (issue #13): the lattice's double
  model (coefficients on the second table's lattice only where the first one's levels land)
  gaining DOUBLE_GAIN_MIN nats per unit of evidence, or a CNN backed by MIN_SUPPORT of the
  sampled blocks whose whole range lies more than AGREE_LEVELS below the lattice's. Not when
  the per-frequency steps are no IJG table's (not even seen through the finer lattice) and
  their own equivalents reach the CNN's range: one coding with a coarse camera table whose
  lattice an IJG table comes near, which the CNN then answers. Otherwise the first, lower
  quality answers. Not on a sublattice alone (the lattice's steps whole multiples of a finer IJG
  table's): one coding with that coarse table (Annex K at 4x and 8x Table K.1, 2x and 4x IJG 25's)
  and a first coding under it seen through the finer table's lattice (coded at 10, then at 30: 3x
  IJG 30's steps) leave the same coefficients, the pixels cannot tell them apart, and the answer
  (the coarse table's) is the same either way: no flag, and the host's note names both;
- a weak lattice leaves the CNN's answer; it is `determined` only on a grid that was found,
  and without a found grid the range is the whole scale (the blocks were read on a guess).
  Nor when the lattice had evidence enough on that grid and stayed weak: the coefficients sit
  on no table's lattice clearly, and the network's reading then rests on blocks that look alike
  at many qualities (smooth gradients coded at 85..100 read determined at 91..95, their truth
  outside; no coded photo of the validation set, 910 aligned and cropped at 1..100, was affected);
- a strong IJG lattice with the CNN reading EARLIER_LEVELS or more under it (MIN_SUPPORT of the
  sampled blocks voting), but not far enough to flag, still answers, undetermined: the last
  coding's lattice can hide an earlier, lower one (coded at 85, then at 90: the lattice reads 90,
  the CNN 83), so the range reaches down to the CNN's voters, and no higher than the lattice allows;
- an undetermined answer of one coding spans every reading: the CNN voters' range and the
  lattice's plausible set (issue #13: gradients coded at 1 that a lattice read at 6..23, and
  at 85..100 whose voters stopped at 98). A determined answer's range is left as it is.
An answer is `determined` when it rests on usable evidence and its range spans at most
DETERMINED_WIDTH levels. The median and percentiles come from `topk` over the whole vector,
which sorts it; nothing here needs sort, median or a data-dependent shape.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN
from q1net.forensics.lattice import LatticeFit
from q1net.forensics.ops import FAR, first_true, last_true, take

FLAT_RANGE = 3.0  # a patch whose channels each span at most this many levels is flat: it never votes
FALLBACK_SHARE = 0.25  # with nothing above tau, the median of this most-confident share of the informative blocks
RANGE_PERCENTILES = (0.1, 0.9)  # a CNN answer's range: these percentiles of the voting blocks' qualities
# Share of the sampled blocks voting from which the CNN may speak for a recompression or an earlier coding (val:
# double-coded photos vote with 0.53 and more; a screenshot the stage-2 network misread, 0.22; generated graphics of
# seed 1 came 5 levels under a strong IJG lattice with 41% and more 10 times of 1,224, one of them a gradient coded at
# 94 whose lattice read 99, determined, with 46% voting).
MIN_SUPPORT = 0.4
# The CNN's whole range this far under the lattice's: an earlier, lower coding (the stage-2 CNN's largest test error was
# about 9; the shipped stage 4's, photos at every third quality, 3.3; every validation flag stayed as it was but one).
AGREE_LEVELS = 12.0
# The CNN's median this far under a strong IJG lattice's answer, not far enough to speak for two codings: an earlier,
# lower coding that the last one's lattice hides may lie under it (val, coded at 64 then 75: lattice 75, CNN 67-71).
# Set with the shipped network (stage 4) on single-coded validation photos (3,250: aligned, cropped, 4:2:2, 4:4:4, grey,
# Annex K, flatter tables, enlarged 5x): 5 levels under, 2 (enlarged, coded at 100, where the CNN reads 95 at most);
# 4 under, 16, all at 100. Coded at q, then at 60, 75 or 90: 9 more determined answers with the first coding outside
# their range are caught than at 6 levels and half the blocks voting (the stage-2 network's, whose readings spread wider).
EARLIER_LEVELS = 5.0
DOUBLE_GAIN_MIN = 0.5  # nats per unit of evidence the double lattice must gain to show two codings
DETERMINED_WIDTH = 10.0  # widest range (levels) of a determined answer
# Tables this close to the lattice's best are as good as tied (exact ties: steps where every level is 0, as quality 1's
# and 2's; and float order across engines): the CNN chooses among them. A table further below is less likely, and the
# CNN no longer overrules it (val, photos enlarged 5x: quality 46 read 47 three times, 0.8-2.1 nats under 46, the
# CNN at 47-48; no other validation answer moved).
CHOICE_NATS = 0.5
METHOD_CODES = {"cnn": 0.0, "lattice": 1.0}


class Vote(NamedTuple):
    quality: torch.Tensor  # median quality of the voting blocks
    low: torch.Tensor  # range: RANGE_PERCENTILES of the voting blocks' qualities, or when that is wider than
    high: torch.Tensor  # DETERMINED_WIDTH (an undetermined answer) the lowest and highest of them
    confidence: torch.Tensor  # median confidence of the voting blocks (0 for a plain regressor)
    kept: torch.Tensor  # (N,) bool: the blocks that voted
    informative: torch.Tensor  # (N,) bool: the blocks that could vote (sampled once, not flat)
    fallback: torch.Tensor  # bool: no block passed tau
    support: torch.Tensor  # voting share of the sampled blocks (0 on a fallback or without any informative one)


def flat_patches(patches: torch.Tensor) -> torch.Tensor:
    """(N,) bool for (N, 3, P, P) patches: every channel spans at most FLAT_RANGE levels."""
    spread = patches.float().amax(dim=(2, 3)) - patches.float().amin(dim=(2, 3))  # (N, 3)
    return spread.amax(dim=1) <= FLAT_RANGE


def sorted_where(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`values` ascending with the masked-out ones last (FAR), and how many are in."""
    big = torch.full_like(values, FAR)
    ordered = torch.topk(torch.where(mask, values, big), values.shape[0], largest=False).values
    return ordered, mask.sum()


def quantile(ordered: torch.Tensor, count: torch.Tensor, fraction: float) -> torch.Tensor:
    """Linear-interpolation quantile of the first `count` of `ordered` (numpy's default); the middle one for the median."""
    position = fraction * (count - 1).clamp(min=0).float()
    below = torch.floor(position).long()
    above = torch.ceil(position).long()
    weight = position - below.float()
    return take(ordered, below) * (1 - weight) + take(ordered, above) * weight


def on_scale(quality: torch.Tensor) -> torch.Tensor:
    """The IJG scale is 1..100; the sigmoid head can say 0.6 for a block coded at 1."""
    return quality.clamp(QUALITY_MIN, QUALITY_MAX)


def vote(
    quality: torch.Tensor, confidence: torch.Tensor | None, informative: torch.Tensor, tau: float, sampled: torch.Tensor | None = None
) -> Vote:
    """The tau rule over the informative blocks (see the module docstring); every informative block votes without a confidence.

    `support` is the voting share of the `sampled` blocks (default: of the informative ones).
    """
    count = informative.sum()
    if confidence is None:
        kept, fallback = informative, torch.zeros((), dtype=torch.bool, device=quality.device)
        confidence = torch.zeros_like(quality)
    else:
        passed = informative & (confidence > tau)
        fallback = ~passed.any()
        share = torch.ceil(FALLBACK_SHARE * count.float()).clamp(min=1.0)
        ranked = torch.topk(torch.where(informative, confidence, torch.full_like(confidence, -FAR)), confidence.shape[0]).indices
        rank = torch.zeros_like(ranked).index_put((ranked,), torch.arange(confidence.shape[0], device=ranked.device))
        most_confident = informative & (rank.float() < share)
        kept = (fallback & most_confident) | (~fallback & passed)  # bool selects: ONNX Runtime has no Where on booleans
    # with no informative block at all the answer rests on every block, flagged as a fallback without support
    nothing = count == 0
    kept = nothing | kept
    fallback = fallback | nothing
    ordered, used = sorted_where(quality, kept)
    confidences, _ = sorted_where(confidence, kept)
    denominator = count if sampled is None else sampled
    support = torch.where(fallback, quality.new_zeros(()), used.float() / denominator.float().clamp(min=1.0))
    whole_scale = (torch.full_like(support, QUALITY_MIN), torch.full_like(support, QUALITY_MAX))  # nothing to read: any quality
    low, high = (on_scale(quantile(ordered, used, fraction)) for fraction in RANGE_PERCENTILES)
    wide = high - low > DETERMINED_WIDTH  # undetermined anyway: the range is every voter's quality, the honest span
    low = torch.where(wide, on_scale(quantile(ordered, used, 0.0)), low)
    high = torch.where(wide, on_scale(quantile(ordered, used, 1.0)), high)
    return Vote(
        quality=on_scale(quantile(ordered, used, 0.5)),
        low=torch.where(nothing, whole_scale[0], torch.floor(low)),
        high=torch.where(nothing, whole_scale[1], torch.ceil(high)),
        confidence=quantile(confidences, used, 0.5),
        kept=kept,
        informative=informative & ~nothing,
        fallback=fallback,
        support=support,
    )


class Verdict(NamedTuple):
    quality: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    method: torch.Tensor  # METHOD_CODES: the evidence that decided
    recompressed: torch.Tensor  # bool: the pixels show two codings
    determined: torch.Tensor  # bool


def nearest_allowed(allowed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The IJG quality of the (100,) `allowed` mask nearest to `target` (the lower on a tie)."""
    qualities = torch.arange(QUALITY_MIN, QUALITY_MAX + 1, dtype=torch.float32)
    distance = torch.where(allowed, (qualities - target).abs(), torch.full_like(qualities, FAR))
    return take(qualities, torch.argmin(distance))


def first_true_quality(allowed: torch.Tensor) -> torch.Tensor:
    """The lowest IJG quality of a (100,) mask (QUALITY_MIN when empty)."""
    return QUALITY_MIN + first_true(allowed).float()


def last_true_quality(allowed: torch.Tensor) -> torch.Tensor:
    return QUALITY_MIN + last_true(allowed).float()


def earlier_coding_possible(
    by_ijg_lattice: torch.Tensor | bool,
    cnn_quality: torch.Tensor | float,
    cnn_support: torch.Tensor | float,
    lattice_quality: torch.Tensor | float,
) -> torch.Tensor | bool:
    """Whether an IJG lattice's answer may hide an earlier, lower coding (module docstring): tensors in the program,
    plain numbers where the host words the answer's note."""
    return by_ijg_lattice & (cnn_support >= MIN_SUPPORT) & (cnn_quality <= lattice_quality - EARLIER_LEVELS)


def combine(cnn: Vote, fit: LatticeFit, grid_found: torch.Tensor, method: str = "hybrid") -> Verdict:
    """One answer and its range from the CNN's vote and the lattice fit (rules in the module docstring)."""
    strong = fit.strong & grid_found  # a lattice on a phase nobody confirmed says nothing
    cnn_voice = ~cnn.fallback & (cnn.support >= MIN_SUPPORT)
    double = strong & (fit.double_gain >= DOUBLE_GAIN_MIN)
    # against the lattice's own answer: on a sublattice (steps whole multiples of a finer IJG table's) that is the coarse
    # table's equivalent, which one coding with that table and a first coding under the finer one share
    cnn_far_under = strong & cnn_voice & (cnn.high < fit.quality_low - AGREE_LEVELS)
    # that shows an earlier coding only when no single table explains both: the estimated steps' own equivalents reach
    # down to the CNN when the coefficients sit on a coarse camera table's lattice that an IJG table comes near; then
    # that one coding is the answer, and the CNN reads it
    one_coarse_table = cnn_far_under & ~fit.steps_ijg & (cnn.high >= fit.single_low - AGREE_LEVELS)
    cnn_lower = cnn_far_under & ~one_coarse_table
    recompressed = double | cnn_lower
    cnn_determined = grid_found & ~cnn.fallback & (cnn.high - cnn.low <= DETERMINED_WIDTH)
    if method == "cnn":
        return Verdict(cnn.quality, cnn.low, cnn.high, torch.tensor(METHOD_CODES["cnn"]), recompressed, cnn_determined)
    as_good = fit.plausible & (fit.tables >= fit.tables.max() - CHOICE_NATS)  # the best table and those tied with it
    lattice_quality = torch.where(fit.ijg, nearest_allowed(as_good, cnn.quality), fit.quality)
    # an IJG table answers, but steps the pixels pin down lie clearly off it: another encoder's table of IJG's shape
    # near that table, scaled by its own law, whose whole-table equivalent is any the known steps' scale allows
    off_table = fit.ijg & fit.off_table
    table_low = torch.where(off_table, torch.minimum(fit.quality_low, fit.scaled_low), fit.quality_low)
    table_high = torch.where(off_table, torch.maximum(fit.quality_high, fit.scaled_high), fit.quality_high)
    lattice_determined = strong & (table_high - table_low <= DETERMINED_WIDTH)
    if method == "lattice":
        return Verdict(lattice_quality, table_low, table_high, torch.tensor(METHOD_CODES["lattice"]), double, lattice_determined)
    first_quality = torch.where(double, nearest_allowed(fit.first_plausible, cnn.quality), cnn.quality)  # the earlier coding's
    # the double model and the CNN both read the first coding: its range spans both (the CNN only when it has a voice)
    first_low = torch.where(
        double,
        torch.where(cnn_voice, torch.minimum(first_true_quality(fit.first_plausible), cnn.low), first_true_quality(fit.first_plausible)),
        cnn.low,
    )
    first_high = torch.where(
        double,
        torch.where(cnn_voice, torch.maximum(last_true_quality(fit.first_plausible), cnn.high), last_true_quality(fit.first_plausible)),
        cnn.high,
    )
    by_lattice = strong & ~recompressed & ~one_coarse_table
    # another encoder's table: its unknown steps leave its IJG-equivalent uncertain, and the CNN's reading is evidence too
    widen = by_lattice & ~fit.ijg & cnn_voice
    lattice_low = torch.where(widen, torch.minimum(fit.quality_low, torch.floor(cnn.quality)), table_low)
    lattice_high = torch.where(widen, torch.maximum(fit.quality_high, torch.ceil(cnn.quality)), table_high)
    quality = torch.where(recompressed, first_quality, torch.where(by_lattice, lattice_quality, cnn.quality))
    low = torch.where(recompressed, first_low, torch.where(by_lattice, lattice_low, cnn.low))
    high = torch.where(recompressed, first_high, torch.where(by_lattice, lattice_high, cnn.high))
    decided_by_lattice = by_lattice | double
    lattice_read = fit.found & grid_found  # the lattice had evidence on the grid the blocks were read on
    earlier = earlier_coding_possible(by_lattice & fit.ijg, cnn.quality, cnn.support, lattice_quality)  # support is 0 on a fallback
    determined = ((strong & (high - low <= DETERMINED_WIDTH)) | (~lattice_read & cnn_determined)) & ~earlier
    # undetermined and coded once: the range spans every reading, the lattice's plausible set and the CNN's voters
    span = ~determined & ~recompressed & ~earlier
    reading_low = torch.minimum(cnn.low, torch.where(lattice_read, fit.quality_low, cnn.low))
    reading_high = torch.maximum(cnn.high, torch.where(lattice_read, fit.quality_high, cnn.high))
    low = torch.where(span, torch.minimum(low, reading_low), low)
    high = torch.where(span, torch.maximum(high, reading_high), high)
    low = torch.where(earlier, torch.minimum(low, cnn.low), low)  # the earlier coding: as low as the CNN's voters, not above the lattice
    # no grid found: blocks read on an assumed grid say nothing about the range; any quality is possible
    low = torch.where(grid_found, low, torch.full_like(low, QUALITY_MIN))
    high = torch.where(grid_found, high, torch.full_like(high, QUALITY_MAX))
    method_code = torch.where(decided_by_lattice, torch.tensor(METHOD_CODES["lattice"]), torch.tensor(METHOD_CODES["cnn"]))
    return Verdict(quality, low, high, method_code, recompressed, determined)
