"""From an image to one quality level and the range its pixels allow: the host around the program.

`Predictor` reads an image (q1net.data.images), cuts the regions the program reads
(q1net.predictor.program.cut_regions), gathers the program's evidence with the network on
the fastest engine here (q1net.predictor.engines), and applies the program's rules: the
very module `q1net export` lowers, so a phone and `q1net predict` compute the same answer.
The host adds what only a file can tell:
- a JPEG's own luma table, read as its IJG-equivalent (`header_quality`). When the pixels'
  determined range lies more than HEADER_MARGIN levels under it, the file was coded again
  at a higher quality after an earlier, lower one: `recompressed`. So too when the pixels'
  steps are whole multiples of a finer IJG table's (one coarse coding or two, which pixels
  alone cannot tell) and the header's quality lies as far above their whole range;
- another lossy codec (WebP, JPEG 2000): its quality is not a JPEG one, so a JPEG quality
  is `determined` only where a JPEG lattice was found in the pixels, and `notes` say so.
Method "hybrid" (default) weighs the CNN against the DCT lattice; "cnn" is the network
alone (the paper's method); "lattice" the lattice alone (q1net.predictor.rules).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image
from threadpoolctl import ThreadpoolController

from q1net.data.geometry import GEOMETRY
from q1net.data.images import MAX_PIXELS_DEFAULT, Decoded, conversion_notes, jpeg_luma_table, read_image, to_rgb_array
from q1net.forensics.quant_tables import ijg_equivalent_quality
from q1net.nets.q1net import Q1Network
from q1net.predictor.calibration import Calibration
from q1net.predictor.engines import Engine, EngineName, make_engine, make_locator, program_runner
from q1net.predictor.heap import keep_freed_memory
from q1net.predictor.program import ANSWER_FIELDS, Evidence, Q1Program, answer_tensors, cut_regions, spread_index
from q1net.predictor.rules import METHOD_CODES, earlier_coding_possible
from q1net.predictor.weights import DEFAULT_PRETRAINED, WeightsError, load_net_file, load_weights, pretrained_path

TAU_DEFAULT = 96.0  # confidence threshold found by grid search in the paper
TAU_GRID = tuple(np.round(np.arange(80.0, 99.51, 0.5), 2))  # the thresholds tune-tau and training's validation search
BLOCKS_DEFAULT = 16  # blocks per side: 16 x 16 = 256 patches
HEADER_MARGIN = 5.0  # the pixels' range this far under the header's quality: coded again at a higher quality
# numpy's BLAS (OpenBLAS) threads spin for a while after each product and take the cores that the
# lattice fit and the network run on next; its products here are small, so it runs on one thread
# while an image is read (measured: a 2 MP predict 67 -> 47 ms on 2 cores).
BLAS = ThreadpoolController()
Method = Literal["hybrid", "cnn", "lattice"]
METHODS: tuple[str, ...] = get_args(Method)
METHOD_NAMES = {code: name for name, code in METHOD_CODES.items()}


@dataclass(frozen=True)
class ImageEvidence:
    """What one image shows, measured once: the program's evidence and what the file itself says."""

    evidence: Evidence | None  # None when an exported program answered (`outputs`)
    rows: np.ndarray  # (n,) region starts in the image (the program's input)
    cols: np.ndarray
    header_quality: int | None = None  # IJG-equivalent quality of a JPEG file's own luma table
    codec: str | None = None  # another lossy codec the file was coded with (q1net.data.images)
    notes: tuple[str, ...] = ()  # from reading the image (q1net.data.images.conversion_notes)
    outputs: tuple[torch.Tensor, ...] | None = None  # an exported program's answer (ProgramPredictor)


ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's answer and the range of qualities its pixels allow. `fallback` means no block passed tau."""

    quality: float  # the best single estimate
    quality_low: int  # the inclusive IJG qualities consistent with the evidence
    quality_high: int
    determined: bool  # False: the range is wide or no evidence was usable (flat, tiny, graphic, no grid found)
    confidence: float | None  # median confidence of the blocks that voted (None for a plain regressor)
    blocks_used: int
    blocks_sampled: int
    fallback: bool
    method: str  # which evidence decided: "cnn" or "lattice"
    cnn_quality: float
    lattice_quality: int | None
    lattice_strength: float | None  # nats per unit of evidence over "no lattice"; strong from q1net.forensics.lattice.STRENGTH_MIN
    grid: tuple[int, int]  # (dy, dx) of the coding grid the blocks were read on
    grid_sure: bool  # False: no grid was found and (0, 0) was assumed
    header_quality: int | None  # JPEG files: the header table's IJG-equivalent quality
    recompressed: bool  # the pixels show two codings, or an earlier, lower quality than the header
    source: str | None = None  # the path, when the input was one
    notes: tuple[str, ...] = ()  # what reading the image did that matters, why an answer is undetermined, readings the pixels cannot tell
    table: list[int | None] | None = None  # estimated luma steps (natural order, None = not pinned down), on request
    block_quality: np.ndarray | None = field(default=None, repr=False)  # (n, n) grid, with return_blocks
    block_confidence: np.ndarray | None = field(default=None, repr=False)
    block_kept: np.ndarray | None = field(default=None, repr=False)  # (n, n) bool: the blocks that voted
    block_rows: np.ndarray | None = field(default=None, repr=False)  # patch top rows (n,)
    block_cols: np.ndarray | None = field(default=None, repr=False)  # patch left columns (n,)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.source,
            "quality": round(self.quality, 2),
            "quality_low": self.quality_low,
            "quality_high": self.quality_high,
            "determined": self.determined,
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
    """Pixels (H, W, 3) uint8, and a JPEG's header table, from a path, a PIL image or an array (rules: q1net.data.images)."""
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


def check_size(pixels: np.ndarray) -> None:
    """Images need one 16x16 patch; smaller ones are refused with the usual one-line error."""
    height, width = pixels.shape[:2]
    if height < GEOMETRY.patch or width < GEOMETRY.patch:
        raise ValueError(f"image of {width}x{height} is smaller than one {GEOMETRY.patch}x{GEOMETRY.patch} patch")


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
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
        self.net = net.eval().to(self.device)
        self.engine: Engine = make_engine(self.net, engine, self.device)  # ONNX Runtime on CPU unless told otherwise
        self.tau, self.blocks, self.method, self.max_pixels = tau, blocks, method, max_pixels
        self.calibration = calibration or Calibration()  # identity unless the weights carry a tuned one
        self.program = Q1Program(net.cpu(), tau, self.calibration, blocks, method=method).eval()
        self.locate = make_locator(self.program, engine, self.device)  # the grid and lattice: compiled when cached
        self.net.to(self.device)
        keep_freed_memory()  # the program's intermediates stay in the heap from one image to the next

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
        """Several images. `show_table` reports the 64 luma steps estimated from the pixels too."""
        evidence = self.gather([read_input(image, self.max_pixels) for image in images])
        return [
            self.resolve(
                found,
                source=os.fsdecode(image) if isinstance(image, (str, os.PathLike)) else None,
                return_blocks=return_blocks,
                show_table=show_table,
            )
            for image, found in zip(images, evidence, strict=True)
        ]

    def network(self, patches: torch.Tensor) -> torch.Tensor:
        """The net's outputs for (N, 3, P, P) patches (whole 0..255 values), on this predictor's engine."""
        return self.engine(patches.to(torch.uint8).numpy())

    @torch.no_grad()
    def gather(self, images: list[Decoded]) -> list[ImageEvidence]:
        """Per image: the program's evidence (grid, lattice, CNN blocks) and the file's own header and codec."""
        found = []
        with BLAS.limit(limits=1, user_api="blas"):
            for image in images:
                check_size(image.pixels)
                regions, rows, cols = cut_regions(image.pixels, per_side=self.program.per_side)
                pieces = (torch.from_numpy(a) for a in (regions, rows, cols))
                evidence = self.program.evidence(*pieces, network=self.network, locate=self.locate)
                header = None if image.jpeg_luma_table is None else ijg_equivalent_quality(image.jpeg_luma_table)
                found.append(ImageEvidence(evidence, rows, cols, header, image.codec, image.notes))
        return found

    @torch.no_grad()
    def resolve(
        self,
        found: ImageEvidence,
        tau: float | None = None,
        method: Method | None = None,
        source: str | None = None,
        return_blocks: bool = False,
        show_table: bool = False,
    ) -> Prediction:
        """The answer `found` gives under `tau` and `method` (the predictor's own by default)."""
        cnn, verdict = self.program.decide(found.evidence, tau, method)
        outputs = answer_tensors(found.evidence, cnn, verdict, self.blocks)
        return prediction(outputs, found, self.program.picked.numpy(), source, return_blocks, show_table)


def prediction(
    outputs: tuple[torch.Tensor, ...],
    found: ImageEvidence,
    picked: np.ndarray,
    source: str | None = None,
    return_blocks: bool = False,
    show_table: bool = False,
) -> Prediction:
    """A Prediction from the program's outputs (q1net.predictor.program.answer_tensors, or an exported program's) and what
    the host knows of the file: its header, its codec, how it was read. `picked`: the CNN's region rows and columns."""
    answer = dict(zip(ANSWER_FIELDS, outputs[0].tolist(), strict=True))
    block_quality, block_confidence, block_vote, steps, known = (t.numpy() for t in outputs[1:])
    low, high, determined = int(answer["quality_low"]), int(answer["quality_high"]), bool(answer["determined"])
    method = METHOD_NAMES[answer["method"]]
    notes = list(found.notes)
    recompressed = bool(answer["recompressed"])
    if found.codec is not None:
        notes.append(f"{found.codec} file: not a JPEG quality unless a JPEG lattice is found")
        determined = determined and method == "lattice"
    # steps whole multiples of a finer IJG table's: one coarse coding or two, the pixels cannot tell (q1net.predictor.rules);
    # the file's header can: a table far finer than the whole range was the second coding's, else the coarse one was last
    sublattice = method == "lattice" and bool(answer["lattice_sublattice"])
    if recompressed:
        notes.append(f"recompressed: the pixels show an earlier coding at about {answer['quality']:.0f}")
    elif found.header_quality is not None and (determined or sublattice) and high < found.header_quality - HEADER_MARGIN:
        recompressed = True
        notes.append(f"recompressed: header says {found.header_quality}, the pixels {low}..{high}")
    elif sublattice and found.header_quality is None:
        notes.append(
            f"one coding or two: the steps are whole multiples of IJG {answer['lattice_table']:.0f}'s, which one coding at "
            f"about {answer['quality']:.0f} leaves, and one at about {answer['quality']:.0f} followed by one at "
            f"{answer['lattice_table']:.0f} as well; the pixels cannot tell which"
        )
    if not determined:
        notes.append(undetermined_reason(answer, low, high))
    has_confidence = bool(answer["has_confidence"])
    blocks = {}
    if return_blocks:
        g = GEOMETRY
        blocks = {
            "block_quality": block_quality,
            "block_confidence": block_confidence if has_confidence else None,
            "block_kept": block_vote > 0,
            "block_rows": found.rows[picked] + (int(answer["grid_dy"]) + g.ring) % g.block,
            "block_cols": found.cols[picked] + (int(answer["grid_dx"]) + g.ring) % g.block,
        }
    table = [int(step) if ok else None for step, ok in zip(steps.tolist(), known.tolist(), strict=True)] if show_table else None
    lattice_found = bool(answer["lattice_found"])
    return Prediction(
        quality=answer["quality"],
        quality_low=low,
        quality_high=high,
        determined=determined,
        confidence=answer["confidence"] if has_confidence else None,
        blocks_used=int(answer["blocks_used"]),
        blocks_sampled=int(answer["blocks_sampled"]),
        fallback=bool(answer["fallback"]),
        method=method,
        cnn_quality=answer["cnn_quality"],
        lattice_quality=int(answer["lattice_quality"]) if lattice_found else None,
        lattice_strength=answer["lattice_strength"] if lattice_found else None,
        grid=(int(answer["grid_dy"]), int(answer["grid_dx"])),
        grid_sure=bool(answer["grid_sure"]),
        header_quality=found.header_quality,
        recompressed=recompressed,
        source=source,
        notes=tuple(notes),
        table=table,
        **blocks,
    )


def undetermined_reason(answer: dict[str, float], low: int, high: int) -> str:
    """Why an answer is not determined, in words, for `notes`."""
    if not answer["blocks_informative"]:
        return "undetermined: no informative block (flat or tiny content)"
    if not answer["grid_sure"]:
        return "undetermined: no JPEG grid found (never JPEG-coded, resized or filtered after coding)"
    if answer["fallback"]:
        return "undetermined: no block passed tau"
    by_ijg_lattice = answer["method"] == METHOD_CODES["lattice"] and bool(answer["lattice_ijg"]) and not answer["recompressed"]
    support = answer["blocks_used"] / max(answer["blocks_sampled"], 1)
    if earlier_coding_possible(by_ijg_lattice, answer["cnn_quality"], support, answer["quality"]):  # as the program decided
        return (
            f"undetermined: the last coding's table is quality {answer['quality']:.0f}, the network reads about "
            f"{answer['cnn_quality']:.0f}: an earlier, lower coding may lie under it ({low}..{high})"
        )
    return f"undetermined: the pixels allow {low}..{high}"


class ProgramPredictor:
    """`q1net predict --program FILE`: an exported program (`q1net export`) run by its runtime on this machine, with the
    host's part (reading, cutting the regions, the file's header and codec) done as Predictor does it. Tau and the
    method are the program's own."""

    def __init__(self, path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS_DEFAULT) -> None:
        path = Path(path)
        meta_path = path.with_suffix(path.suffix + ".json")
        try:
            meta = json.loads(meta_path.read_text())
            contract = meta["input"]
            self.per_side, self.blocks = int(contract["regions_per_side"]), int(contract["blocks_per_side"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise WeightsError(f"{meta_path}: not the metadata of an exported q1net program ({error})") from None
        if meta.get("outputs", {}).get("answer_fields") != list(ANSWER_FIELDS):
            raise WeightsError(f"{path}: its answer layout is not this q1net's (export it again with this version)")
        try:
            self.run = program_runner(path)
        except Exception as error:  # the runtimes raise their own types for unreadable or foreign files
            raise WeightsError(f"{path}: cannot load the program ({type(error).__name__}: {error})") from None
        self.tau, self.method, self.max_pixels = meta.get("tau"), meta.get("method", "hybrid"), max_pixels
        self.picked = spread_index(self.blocks, self.per_side).numpy()

    def predict(self, image: ImageInput, return_blocks: bool = False, show_table: bool = False) -> Prediction:
        [found] = self.gather([read_input(image, self.max_pixels)])
        return self.resolve(
            found,
            source=os.fsdecode(image) if isinstance(image, (str, os.PathLike)) else None,
            return_blocks=return_blocks,
            show_table=show_table,
        )

    def gather(self, images: list[Decoded]) -> list[ImageEvidence]:
        found = []
        for image in images:
            check_size(image.pixels)
            regions, rows, cols = cut_regions(image.pixels, per_side=self.per_side)
            outputs = self.run(torch.from_numpy(regions), torch.from_numpy(rows), torch.from_numpy(cols))
            header = None if image.jpeg_luma_table is None else ijg_equivalent_quality(image.jpeg_luma_table)
            found.append(ImageEvidence(None, rows, cols, header, image.codec, image.notes, tuple(torch.as_tensor(o) for o in outputs)))
        return found

    def resolve(self, found: ImageEvidence, source: str | None = None, return_blocks: bool = False, show_table: bool = False) -> Prediction:
        return prediction(found.outputs, found, self.picked, source, return_blocks, show_table)
