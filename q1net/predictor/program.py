"""The whole predictor from pixels as one torch module: what `Predictor` runs and what `q1net export` lowers.

Input, the contract an app follows (q1net.data.geometry.RegionGeometry; `cut_regions` is the host's way):
- `regions` (n*n, 3, 24, 24) uint8 RGB, row-major: region (i, j) is the image's 24x24
  square at (rows[i], cols[j]); n = `per_side` (16);
- `rows`, `cols` (n,) int64: the starts, multiples of 8 given by RegionGeometry.starts
  (a side shorter than 24 pixels is first padded by repeating its last row or column).
Starts repeat only on small images; a repeated row or column is read once.

What it computes, in order (each piece is its own module, and this is the only copy of the rules):
1. the grid phase from all regions (q1net.forensics.grid);
2. the DCT lattice (q1net.forensics.lattice) on one block in each of the `blocks` x `blocks`
   regions spread over the image (the CNN's), at that phase; an unsure phase is confirmed
   when the lattice is strong on it (CONFIRM_STRENGTH), else the grid is not found, the
   lattice is not used and the origin is assumed;
3. the CNN on the patch around each of those blocks on the grid, its qualities read
   through the weights' calibration (q1net.predictor.calibration), flat patches set aside;
4. the tau rule and the hybrid combine (q1net.predictor.rules).
Output: `ANSWER` (a float vector, names in ANSWER_FIELDS), the per-block quality,
confidence and vote (blocks x blocks), and the estimated luma table with its known mask
(64 each). Header fields (a JPEG file's own table) stay with the host.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from q1net.data.geometry import REGIONS, RegionGeometry
from q1net.forensics.clipping import block_at, clipped_samples
from q1net.forensics.dct import block_dct, luma
from q1net.forensics.grid import GridDetector, GridPhase
from q1net.forensics.lattice import Clipped, LatticeFit, LatticeVerifier
from q1net.nets.q1net import Q1Network
from q1net.predictor.calibration import Calibration
from q1net.predictor.rules import Verdict, Vote, combine, flat_patches, vote

ANSWER_FIELDS = (
    "quality",  # the best single estimate, 1..100
    "quality_low",  # the inclusive range the evidence allows
    "quality_high",
    "determined",  # 1: usable evidence and a range of at most DETERMINED_WIDTH levels
    "method",  # the evidence that decided: 0 CNN, 1 lattice
    "recompressed",  # 1: the pixels show two codings
    "confidence",  # median confidence of the voting blocks
    "blocks_used",  # blocks that voted
    "blocks_sampled",  # distinct blocks read (fewer than blocks x blocks on small images)
    "blocks_informative",  # of those, the ones that are not flat
    "has_confidence",  # 1: the net has a confidence head (0 for a plain regressor: every informative block votes)
    "fallback",  # 1: no informative block passed tau
    "cnn_quality",  # the CNN's answer
    "lattice_quality",  # the lattice's answer (best IJG table, or the IJG-equivalent of another table)
    "lattice_low",
    "lattice_high",
    "lattice_strength",  # nats per unit of evidence over "no lattice"
    "lattice_found",  # 1: enough evidence for a lattice answer
    "lattice_ijg",  # 1: one IJG table explains the coefficients
    "lattice_table",  # the IJG table that fits best (on a sublattice, the finer table whose lattice the steps sit on)
    "lattice_sublattice",  # 1: the steps are whole multiples of that table's: one coarse coding or two, the pixels cannot tell
    "first_quality",  # the earlier coding the double lattice fits best
    "double_gain",  # nats per unit of evidence the double lattice gains over one table
    "grid_dy",  # the grid phase the blocks were read on
    "grid_dx",
    "grid_sure",  # 1: the grid was found (detected, or confirmed by a strong lattice)
    "grid_z",  # lead of the detector's best phase, in standard errors
)


class Evidence(NamedTuple):
    """What one image shows, measured once; any tau or method is applied to it afterwards (`Q1Program.decide`)."""

    phase: GridPhase  # the detector's answer
    grid_found: torch.Tensor  # bool: detected, or confirmed by a strong lattice at the candidate phase
    dy: torch.Tensor  # the phase the blocks were read on (the origin when the grid was not found)
    dx: torch.Tensor
    lattice: LatticeFit
    quality: torch.Tensor  # (B,) the CNN's per-block qualities, calibrated
    confidence: torch.Tensor | None  # (B,) and confidences (None for a plain regressor)
    read_once: torch.Tensor  # (B,) bool: not a repeat of another block (small images repeat regions)
    informative: torch.Tensor  # (B,) bool: read once and not flat
    patches: torch.Tensor  # (B, 3, P, P) uint8: what the CNN read


def cut_regions(
    pixels: np.ndarray, geometry: RegionGeometry = REGIONS, per_side: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The program's input from an (H, W, 3) uint8 image: (n*n, 3, 24, 24) regions and their row and column starts."""
    side, n = geometry.side, per_side or geometry.per_side
    height, width = pixels.shape[:2]
    if height < side or width < side:  # a side shorter than a region: repeat its last row or column
        pixels = np.pad(pixels, ((0, max(0, side - height)), (0, max(0, side - width)), (0, 0)), mode="edge")
    rows, cols = geometry.starts(height, n), geometry.starts(width, n)
    # every 24x24 window as a view (H - 23, W - 23, 3, 24, 24), channels first, and one gather of the n x n of them:
    # 0.3 ms on a 2 MP photo, where indexing the pixels by rows and columns and transposing took 4.6
    windows = sliding_window_view(pixels, (side, side), axis=(0, 1))
    return np.ascontiguousarray(windows[rows[:, None], cols[None, :]]).reshape(n * n, 3, side, side), rows, cols


def patches_on_grid(picked: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, geometry: RegionGeometry = REGIONS) -> torch.Tensor:
    """The patch around the block of grid phase (dy, dx) in each of the (B, 3, 24, 24) `picked` regions."""
    g = geometry.patch
    offsets = torch.arange(g.patch, device=picked.device)
    return picked.index_select(2, (dy + g.ring) % g.block + offsets).index_select(3, (dx + g.ring) % g.block + offsets)


def origin_patches(pixels: np.ndarray, blocks: int) -> np.ndarray:
    """(blocks^2, 3, P, P) uint8: the patches the program's CNN reads on an image whose grid is at the origin."""
    per_side = max(REGIONS.per_side, blocks)
    regions, _, _ = cut_regions(pixels, per_side=per_side)
    picked = spread_index(blocks, per_side)
    chosen = torch.from_numpy(regions)[(picked[:, None] * per_side + picked[None, :]).flatten()]
    zero = torch.zeros((), dtype=torch.long)
    return patches_on_grid(chosen, zero, zero).numpy()


def first_of_repeats(starts: torch.Tensor) -> torch.Tensor:
    """(n,) bool: each start that differs from the one before it (starts repeat only in a run)."""
    return torch.cat([torch.ones(1, dtype=torch.bool, device=starts.device), starts[1:] != starts[:-1]])


def spread_index(count: int, total: int) -> torch.Tensor:
    """`count` of `total` positions, the centres of `count` equal cells (RegionGeometry.starts' rule on indices)."""
    return torch.from_numpy((2 * np.arange(count) + 1) * total // (2 * count))


class Q1Program(nn.Module):
    """Regions -> the predictor's answer (module docstring). `network` replaces `net` for running the patches
    (the Vulkan export passes the batch-1 mosaic form); it must compute what `net` computes."""

    def __init__(
        self,
        net: Q1Network,
        tau: float,
        calibration: Calibration | None = None,
        blocks: int = 16,
        per_side: int | None = None,
        method: str = "hybrid",
        network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.net, self.network = net.eval(), (network or net).eval()
        self.tau, self.method = tau, method
        self.calibration = calibration or Calibration()
        self.geometry = REGIONS
        self.per_side = max(per_side or REGIONS.per_side, blocks)
        self.blocks = blocks
        self.grid, self.lattice = GridDetector(), LatticeVerifier()
        picked = spread_index(blocks, self.per_side)
        self.register_buffer("picked", picked, persistent=False)  # the CNN's region rows (and columns) among per_side
        self.register_buffer("cnn_regions", (picked[:, None] * self.per_side + picked[None, :]).flatten(), persistent=False)
        self.register_buffer("block_dct", block_dct(), persistent=False)

    def locate(
        self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[GridPhase, LatticeFit, torch.Tensor, torch.Tensor]:
        """The grid phase, the lattice fit on it, which blocks are read once, and whether the grid was found (no network needed)."""
        phase, read_once = self.detect(regions, rows, cols)
        fit = self.fit(regions, phase, read_once)
        return phase, fit, read_once, phase.sure | fit.confirms

    def detect(self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[GridPhase, torch.Tensor]:
        """The grid detector on every region read once: the phase, and which of the CNN's blocks are read once."""
        first_rows, first_cols = first_of_repeats(rows), first_of_repeats(cols)
        weight = (first_rows[:, None] & first_cols[None, :]).flatten().float()  # (R,)
        read_once = (first_rows[self.picked][:, None] & first_cols[self.picked][None, :]).flatten()  # (B,)
        return self.grid(luma(regions), weight), read_once

    def fit(self, regions: torch.Tensor, phase: GridPhase, read_once: torch.Tensor) -> LatticeFit:
        """The lattice on the CNN's blocks at the detected phase (clipped ones read back by the declipper)."""
        picked = regions.index_select(0, self.cnn_regions)
        seen, high, low = clipped_samples(block_at(picked, phase.dy, phase.dx))
        clipped = (high | low).flatten(1).any(dim=1)  # a sample at 0 or 255: the block left its lattice
        coefficients = seen.flatten(1) @ self.block_dct  # (B, 64)
        return self.lattice(coefficients, read_once & ~clipped, Clipped(seen, high, low, read_once & clipped))

    def evidence(self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, network=None, locate=None) -> Evidence:
        """Grid, lattice and CNN evidence from the regions (`network`: another runner of the same net, e.g. ONNX Runtime;
        `locate`: another runner of `locate`, e.g. compiled)."""
        phase, fit, read_once, found = (locate or self.locate)(regions, rows, cols)
        zero = torch.zeros_like(phase.dy)
        dy, dx = torch.where(found, phase.dy, zero), torch.where(found, phase.dx, zero)
        patches = self.patches_on_grid(regions.index_select(0, self.cnn_regions), dy, dx)
        quality, confidence, informative = self.score(patches, read_once, network)
        return Evidence(phase, found, dy, dx, fit, quality, confidence, read_once, informative, patches.to(torch.uint8))

    def patches_on_grid(self, picked: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        return patches_on_grid(picked, dy, dx, self.geometry)

    def score(self, patches: torch.Tensor, read_once: torch.Tensor, network=None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The CNN on (B, 3, P, P) patches: calibrated qualities, confidences, and which blocks are informative (read once, not flat)."""
        quality, confidence = self.net.quality_confidence((network or self.network)(patches.float()))
        return self.calibration.apply(quality.float()), confidence, read_once & ~flat_patches(patches)

    def network_alone(
        self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`score` on the blocks of a grid at the origin, no detection or lattice: the paper's protocol on aligned images
        (training's validation)."""
        read_once = (first_of_repeats(rows)[self.picked][:, None] & first_of_repeats(cols)[self.picked][None, :]).flatten()
        zero = torch.zeros((), dtype=torch.long, device=regions.device)
        return self.score(self.patches_on_grid(regions.index_select(0, self.cnn_regions), zero, zero), read_once)

    def decide(self, evidence: Evidence, tau: float | None = None, method: str | None = None) -> tuple[Vote, Verdict]:
        cnn = vote(evidence.quality, evidence.confidence, evidence.informative, self.tau if tau is None else tau, evidence.read_once.sum())
        return cnn, combine(cnn, evidence.lattice, evidence.grid_found, method or self.method)

    def forward(self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(answer, block quality, block confidence, block vote, table steps, table known): see the module docstring."""
        evidence = self.evidence(regions, rows, cols)
        cnn, verdict = self.decide(evidence)
        return answer_tensors(evidence, cnn, verdict, self.blocks)


def answer_tensors(evidence: Evidence, cnn: Vote, verdict: Verdict, blocks: int) -> tuple[torch.Tensor, ...]:
    fit, phase = evidence.lattice, evidence.phase
    fields = {
        "quality": verdict.quality,
        "quality_low": verdict.low,
        "quality_high": verdict.high,
        "determined": verdict.determined,
        "method": verdict.method,
        "recompressed": verdict.recompressed,
        "confidence": cnn.confidence,
        "blocks_used": (cnn.kept & evidence.informative).sum(),
        "blocks_sampled": evidence.read_once.sum(),
        "blocks_informative": evidence.informative.sum(),
        "has_confidence": torch.tensor(evidence.confidence is not None),
        "fallback": cnn.fallback,
        "cnn_quality": cnn.quality,
        "lattice_quality": fit.quality,
        "lattice_low": fit.quality_low,
        "lattice_high": fit.quality_high,
        "lattice_strength": fit.strength,
        "lattice_found": fit.found,
        "lattice_ijg": fit.ijg,
        "lattice_table": fit.table_quality,
        "lattice_sublattice": fit.sublattice,
        "first_quality": fit.first_quality,
        "double_gain": fit.double_gain,
        "grid_dy": evidence.dy,
        "grid_dx": evidence.dx,
        "grid_sure": evidence.grid_found,
        "grid_z": phase.z,
    }
    answer = torch.stack([fields[name].float().reshape(()) for name in ANSWER_FIELDS])
    confidence = evidence.confidence if evidence.confidence is not None else torch.zeros_like(evidence.quality)
    grid = (blocks, blocks)
    voted = (cnn.kept & evidence.informative).float().reshape(grid)
    return answer, evidence.quality.reshape(grid), confidence.reshape(grid), voted, fit.steps, fit.known.float()
