"""From an image to one quality level: find the grid, score blocks, check the lattice, decide.

Steps, each measured once per image into an `Evidence`:
1. the coding grid's phase (q1net.forensics.grid), so cropped images are read on their grid;
2. the CNN on n x n blocks of that grid (the published rule, below), its
   qualities read through the weights' calibration (q1net.predictor.calibration);
3. the DCT-lattice fit (q1net.forensics.lattice) on the same grid;
4. for JPEG files, the header's own luma table.
`combine` then turns evidence into one answer (`method` says which evidence decided):
- "hybrid" (default): a strong lattice answers, choosing among its plausible
  qualities the one nearest the CNN's; a weak lattice (never JPEG-coded,
  resized, filtered, tiny) leaves the CNN's answer. When the CNN sees a clearly
  lower quality than the lattice or the header (more than AGREE_LEVELS, with at
  least MIN_SUPPORT of the blocks voting: on mostly flat images a handful of
  flat blocks look heavily compressed), the
  image was coded again at a higher quality: the CNN's lower answer stands and
  `recompressed` is set. When no single IJG table fits (another encoder's
  tables, or a JPEG coded again at a higher quality, whose coefficients mix two
  lattices and read as an in-between quality) the lower of the two answers
  stands: the first, stronger compression is what the CNN sees.
- "cnn": the CNN alone (what the mobile exports compute); "lattice": the lattice alone.

The published rule (REFERENCE.md): n x n blocks spread uniformly on the 8x8
grid, run as one batch, keep predictions whose confidence is strictly above
tau, answer the median of the kept qualities.

When no block passes tau the published code answers 100. That hides the
failure and is wrong for most such images (flat, tiny or heavily filtered
ones are not all near-lossless). Here the answer is instead the median
quality of the most confident quarter of the blocks, and the result says so
with `fallback=True`, so a caller can treat it as a low-confidence answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from threadpoolctl import ThreadpoolController

from q1net.data.geometry import GEOMETRY, PatchGeometry
from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN
from q1net.forensics.grid import GridPhase, detect_grid
from q1net.forensics.lattice import LatticeFit, fit_lattice, lattice_coefficients
from q1net.forensics.quant_tables import ijg_equivalent_quality
from q1net.models.q1net import Q1Network
from q1net.predictor.calibration import Calibration
from q1net.predictor.engines import Engine, EngineName, make_engine
from q1net.predictor.images import MAX_PIXELS_DEFAULT, Decoded, conversion_notes, jpeg_luma_table, read_image, to_rgb_array
from q1net.predictor.weights import DEFAULT_PRETRAINED, load_net_file, load_weights, pretrained_path

TAU_DEFAULT = 96.0  # confidence threshold found by grid search in the paper
TAU_GRID = tuple(np.round(np.arange(80.0, 99.51, 0.5), 2))  # the thresholds tune-tau and training's validation search
BLOCKS_DEFAULT = 16  # blocks per side: 16 x 16 = 256 patches
FALLBACK_SHARE = 0.25  # with nothing above tau, the median of this most-confident share
MIN_SUPPORT = 0.1  # share of blocks voting from which the CNN may overrule a strong lattice
AGREE_LEVELS = 12.0  # CNN below the lattice/header by more than this: recompressed (CNN's max test error is about 9)
# numpy's BLAS (OpenBLAS) threads spin for a while after each product and take the cores that the
# lattice fit and the network run on next; its products here are small, so it runs on one thread
# while an image is read (measured: a 2 MP predict 67 -> 47 ms on 2 cores).
BLAS = ThreadpoolController()
Method = Literal["hybrid", "cnn", "lattice"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass(frozen=True)
class BlockSample:
    """Patches cut on the coding grid: (N, 3, P, P) uint8 with their top-left corners."""

    patches: np.ndarray
    rows: np.ndarray  # (ny,) patch top rows
    cols: np.ndarray  # (nx,) patch left columns


def sample_blocks(image: np.ndarray, blocks: int = BLOCKS_DEFAULT, geometry: PatchGeometry = GEOMETRY) -> BlockSample:
    """Up to `blocks` x `blocks` patches of `image` (H, W, 3) uint8, row-major over the grid."""
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    height, width = image.shape[:2]
    rows, cols = geometry.aligned_starts(height, blocks), geometry.aligned_starts(width, blocks)
    if not len(rows) or not len(cols):
        raise ValueError(f"image of {width}x{height} is smaller than one {geometry.patch}x{geometry.patch} patch")
    windows = sliding_window_view(image, (geometry.patch, geometry.patch), axis=(0, 1))  # (h, w, 3, P, P)
    patches = windows[rows[:, None], cols[None, :]].reshape(-1, image.shape[2], geometry.patch, geometry.patch)
    return BlockSample(np.ascontiguousarray(patches), rows, cols)


@dataclass(frozen=True)
class Decision:
    quality: float
    blocks_used: int
    fallback: bool  # nothing passed tau: see the module docstring
    kept: np.ndarray = field(repr=False)  # (N,) bool, the blocks that voted

    @property
    def support(self) -> float:
        """Share of the sampled blocks that voted; 0 on a fallback."""
        return 0.0 if self.fallback else self.blocks_used / len(self.kept)


def decide(quality: np.ndarray, confidence: np.ndarray | None, tau: float = TAU_DEFAULT) -> Decision:
    """The tau rule: median quality of blocks with confidence > tau (all blocks when there is no confidence)."""
    if confidence is None:
        kept = np.ones(len(quality), bool)
        return Decision(on_scale(np.median(quality)), len(quality), False, kept)
    kept = confidence > tau
    fallback = not kept.any()
    if fallback:
        share = max(1, int(np.ceil(FALLBACK_SHARE * len(confidence))))
        kept = np.zeros(len(confidence), bool)
        kept[np.argsort(-confidence, kind="stable")[:share]] = True
    return Decision(on_scale(np.median(quality[kept])), int(kept.sum()), fallback, kept)


def on_scale(quality: float) -> float:
    """The IJG scale is 1..100; the sigmoid head can say 0.6 for a block coded at 1."""
    return float(np.clip(quality, QUALITY_MIN, QUALITY_MAX))


@torch.no_grad()
def score_patches(net: Q1Network, engine: Engine, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-patch (quality, confidence) of a Q1Network run by `engine` on (N, 3, P, P) uint8 patches."""
    quality, confidence = net.quality_confidence(engine(patches))
    return quality.numpy(), None if confidence is None else confidence.numpy()


@dataclass(frozen=True)
class Evidence:
    """What one image shows, measured once; any tau or method is applied to it afterwards."""

    phase: GridPhase
    sample: BlockSample  # rows and cols in the image's own coordinates
    quality: np.ndarray  # (N,) the CNN's per-block qualities, calibrated (q1net.predictor.calibration)
    confidence: np.ndarray | None  # (N,) and confidences (None for a plain regressor)
    lattice: LatticeFit | None  # None when not computed or too few usable blocks
    header_quality: int | None  # IJG-equivalent quality of a JPEG file's own luma table
    notes: tuple[str, ...] = ()  # from reading the image (q1net.predictor.images.conversion_notes)


@dataclass(frozen=True)
class Verdict:
    quality: float
    method: str  # the evidence that decided: "cnn" or "lattice"
    recompressed: bool


def combine(
    cnn_quality: float, lattice: LatticeFit | None, header_quality: int | None, method: Method = "hybrid", cnn_support: float = 1.0
) -> Verdict:
    """One answer from the CNN's, the lattice's and the header's evidence (rules in the module docstring).

    `cnn_support` is the share of sampled blocks that voted (0 on a fallback): below MIN_SUPPORT
    the CNN's answer rests on a few, often flat, blocks and may not overrule a strong lattice.
    """
    if method == "lattice" and lattice is not None:
        return Verdict(float(lattice.quality), "lattice", header_quality is not None and lattice.quality < header_quality - AGREE_LEVELS)
    strong = lattice is not None and lattice.strong
    lattice_quality = min(lattice.plausible, key=lambda q: abs(q - cnn_quality)) if strong else None
    trusted = cnn_support >= MIN_SUPPORT
    seen_again = trusted and lattice_quality is not None and cnn_quality < lattice_quality - AGREE_LEVELS
    mixed = trusted and lattice_quality is not None and not lattice.ijg and cnn_quality < lattice_quality  # module docstring
    if method == "cnn" or lattice_quality is None or seen_again or mixed:
        quality, decided_by = cnn_quality, "cnn"
    else:
        quality, decided_by = float(lattice_quality), "lattice"
    recompressed = seen_again or (header_quality is not None and quality < header_quality - AGREE_LEVELS)
    return Verdict(quality, decided_by, recompressed)


ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's answer. `fallback` means no block passed tau (see the module docstring)."""

    quality: float
    confidence: float | None  # median confidence of the blocks that voted (None for a plain regressor)
    blocks_used: int
    blocks_sampled: int
    fallback: bool
    method: str  # which evidence decided: "cnn" or "lattice"
    cnn_quality: float
    lattice_quality: int | None
    lattice_strength: float | None  # nats per block over "no lattice"; strong from q1net.forensics.lattice.STRENGTH_MIN
    grid: tuple[int, int]  # (dy, dx) of the coding grid
    grid_sure: bool  # False: no grid stood out and (0, 0) was assumed
    header_quality: int | None  # JPEG files: the header table's IJG-equivalent quality
    recompressed: bool  # the pixels show an earlier, lower quality than the lattice or header
    source: str | None = None  # the path, when the input was one
    notes: tuple[str, ...] = ()  # what reading the image did that matters (first frame only, alpha ignored, ...)
    table: list[int | None] | None = None  # estimated luma steps (natural order, None = not pinned down), on request
    block_quality: np.ndarray | None = field(default=None, repr=False)  # (ny, nx) grid, with return_blocks
    block_confidence: np.ndarray | None = field(default=None, repr=False)
    block_kept: np.ndarray | None = field(default=None, repr=False)  # (ny, nx) bool: the blocks that voted
    block_rows: np.ndarray | None = field(default=None, repr=False)  # patch top rows (ny,)
    block_cols: np.ndarray | None = field(default=None, repr=False)  # patch left columns (nx,)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.source,
            "quality": round(self.quality, 2),
            "confidence": None if self.confidence is None else round(self.confidence, 2),
            "blocks_used": self.blocks_used,
            "blocks_sampled": self.blocks_sampled,
            "fallback": self.fallback,
            "method": self.method,
            "cnn_quality": round(self.cnn_quality, 2),
            "lattice_quality": self.lattice_quality,
            "lattice_strength": None if self.lattice_strength is None else round(self.lattice_strength, 2),
            "grid": list(self.grid),
            "grid_sure": self.grid_sure,
            "header_quality": self.header_quality,
            "recompressed": self.recompressed,
            "notes": list(self.notes),
        } | ({} if self.table is None else {"table": self.table})


def read_input(image: ImageInput, max_pixels: int = MAX_PIXELS_DEFAULT) -> Decoded:
    """Pixels (H, W, 3) uint8, and a JPEG's header table, from a path, a PIL image or an array (rules: q1net.predictor.images)."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            if image.dtype == np.uint8:
                array = image if image.ndim == 3 else image[:, :, None]
                return Decoded(np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]))
            if image.dtype == np.uint16:
                return read_input(np.clip(np.round(image / 257.0), 0, 255).astype(np.uint8))
        raise ValueError(f"array of shape {image.shape} and dtype {image.dtype} is not an image (want HxW[x1|3|4], uint8 or uint16)")
    if isinstance(image, Image.Image):
        return Decoded(to_rgb_array(image), jpeg_luma_table(image), conversion_notes(image))
    return read_image(image, max_pixels)


class Predictor:
    """Q1Net's image-level answer: `Predictor.from_pretrained().predict("img.png").quality`."""

    def __init__(
        self,
        net: Q1Network,
        tau: float = TAU_DEFAULT,
        blocks: int = BLOCKS_DEFAULT,
        device: str = "cpu",
        method: Method = "hybrid",
        max_pixels: int = MAX_PIXELS_DEFAULT,
        engine: EngineName = "auto",
        calibration: Calibration | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
        self.net = net.eval().to(self.device)
        self.engine = make_engine(self.net, engine, self.device)  # q1net.predictor.engines: ONNX Runtime on CPU unless told otherwise
        self.tau, self.blocks, self.method, self.max_pixels = tau, blocks, method, max_pixels
        self.calibration = calibration or Calibration()  # identity unless the weights carry a tuned one

    @classmethod
    def from_pretrained(
        cls, name: str = DEFAULT_PRETRAINED, *, tau: float | None = None, calibrate: bool = True, **kwargs: object
    ) -> Predictor:
        """The weights shipped inside the package (trained on real photos; docs/MODEL_CARD.md).

        `calibrate=False` reads the network's own answers (the published method), without the weights' tuned calibration.
        """
        loaded = load_weights(pretrained_path(name))
        return cls(loaded.net, tau=loaded.tau if tau is None else tau, calibration=loaded.calibration if calibrate else None, **kwargs)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], *, tau: float | None = None, calibrate: bool = True, **kwargs: object
    ) -> Predictor:
        """A Lightning training checkpoint (.ckpt) or a safetensors file written by q1net."""
        loaded = load_net_file(path)
        tau = (loaded.tau or TAU_DEFAULT) if tau is None else tau
        return cls(loaded.net, tau=tau, calibration=loaded.calibration if calibrate else None, **kwargs)

    def predict(self, image: ImageInput, return_blocks: bool = False, show_table: bool = False) -> Prediction:
        """One image: a path, a PIL image or an (H, W[, C]) uint8/uint16 array."""
        return self.predict_batch([image], return_blocks, show_table)[0]

    def predict_batch(self, images: list[ImageInput], return_blocks: bool = False, show_table: bool = False) -> list[Prediction]:
        """Several images, their blocks scored in one forward pass. `show_table` estimates every luma step too."""
        evidence = self.gather([read_input(image, self.max_pixels) for image in images], estimate_table=show_table)
        return [
            self.resolve(found, source=os.fsdecode(image) if isinstance(image, (str, os.PathLike)) else None, return_blocks=return_blocks)
            for image, found in zip(images, evidence, strict=True)
        ]

    def gather(self, images: list[Decoded], estimate_table: bool = False) -> list[Evidence]:
        """Per image: grid phase, lattice fit, header quality and CNN block scores (all images in one forward pass)."""
        with BLAS.limit(limits=1, user_api="blas"):
            located = [self._locate(image.pixels, estimate_table) for image in images]
            samples = [self._sample(image.pixels, phase) for image, (phase, _) in zip(images, located, strict=True)]
            quality, confidence = score_patches(self.net, self.engine, np.concatenate([s.patches for s in samples]))
        quality = self.calibration(quality)  # per block: the median of calibrated blocks is the calibrated median
        bounds = np.cumsum([0] + [len(s.patches) for s in samples])
        evidence = []
        for image, (phase, lattice), sample, a, b in zip(images, located, samples, bounds[:-1], bounds[1:], strict=True):
            header = None if image.jpeg_luma_table is None else ijg_equivalent_quality(image.jpeg_luma_table)
            found = Evidence(phase, sample, quality[a:b], None if confidence is None else confidence[a:b], lattice, header, image.notes)
            evidence.append(found)
        return evidence

    def _locate(self, pixels: np.ndarray, estimate_table: bool) -> tuple[GridPhase, LatticeFit | None]:
        """The grid phase and the lattice fit on it. An unsure detector's best phase is kept when the lattice is strong there."""
        phase = detect_grid(pixels)
        if self.method == "cnn":
            return phase, None
        lattice = fit_lattice(lattice_coefficients(pixels, phase), estimate=estimate_table)
        if not phase.sure and phase.best != (phase.dy, phase.dx):
            candidate = replace(phase, dy=phase.best[0], dx=phase.best[1], sure=True)
            fit = fit_lattice(lattice_coefficients(pixels, candidate), estimate=estimate_table)
            if fit is not None and fit.strong and (lattice is None or fit.strength > lattice.strength):
                return candidate, fit
        return phase, lattice

    def _sample(self, pixels: np.ndarray, phase: GridPhase) -> BlockSample:
        """Blocks on the grid at `phase` (the image cropped to start on it), in the image's coordinates."""
        cropped = sample_blocks(pixels[phase.dy :, phase.dx :], self.blocks)
        return BlockSample(cropped.patches, cropped.rows + phase.dy, cropped.cols + phase.dx)

    def resolve(
        self,
        evidence: Evidence,
        tau: float | None = None,
        method: Method | None = None,
        source: str | None = None,
        return_blocks: bool = False,
    ) -> Prediction:
        """The answer `evidence` gives under `tau` and `method` (the predictor's own by default)."""
        decision = decide(evidence.quality, evidence.confidence, self.tau if tau is None else tau)
        lattice = evidence.lattice
        verdict = combine(decision.quality, lattice, evidence.header_quality, method or self.method, decision.support)
        sample, confidence = evidence.sample, evidence.confidence
        blocks = {}
        if return_blocks:
            grid = (len(sample.rows), len(sample.cols))
            blocks = {
                "block_quality": evidence.quality.reshape(grid),
                "block_confidence": None if confidence is None else confidence.reshape(grid),
                "block_kept": decision.kept.reshape(grid),
                "block_rows": sample.rows,
                "block_cols": sample.cols,
            }
        table = None
        if lattice is not None and lattice.steps is not None:
            table = [int(step) if known else None for step, known in zip(lattice.steps, lattice.known, strict=True)]
        return Prediction(
            quality=verdict.quality,
            confidence=None if confidence is None else float(np.median(confidence[decision.kept])),
            blocks_used=decision.blocks_used,
            blocks_sampled=len(evidence.quality),
            fallback=decision.fallback,
            method=verdict.method,
            cnn_quality=decision.quality,
            lattice_quality=None if lattice is None else lattice.quality,
            lattice_strength=None if lattice is None else lattice.strength,
            grid=(evidence.phase.dy, evidence.phase.dx),
            grid_sure=evidence.phase.sure,
            header_quality=evidence.header_quality,
            recompressed=verdict.recompressed,
            source=source,
            notes=evidence.notes,
            table=table,
            **blocks,
        )
