"""Parity of exported programs with the PyTorch net, on patches of real JPEG-coded images.

Every runtime this machine has is run: onnxruntime for .onnx, the ExecuTorch
runtime for XNNPACK and portable programs. The pip ExecuTorch runtime has no
Vulkan backend, so a Vulkan program is checked twice without Vulkan kernels:
the mosaic module against the batched net in PyTorch, and the very same
exported mosaic graph lowered without delegation and run by the portable
runtime. A bundled program (.bpte) carries inputs and expected outputs so the
check can be repeated on a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from q1net.data.jpeg import jpeg_roundtrip
from q1net.export.mosaic import from_mosaic, to_mosaic
from q1net.nets.q1net import QUALITY_SCALE, Q1Network
from q1net.predictor.program import origin_patches
from q1net.predictor.rules import vote

# Upstream ExecuTorch tolerances, for unit-scale outputs: differences are measured on the
# sigmoid's 0..1 scale (outputs / 100), not on the 0..100 quality scale the net reports.
FP32_ATOL, FP16_ATOL = 1e-4, 2e-2
PARITY_QUALITIES = (10, 50, 90)


class ParityError(Exception):
    pass


@dataclass
class ParityReport:
    runtime: str
    max_abs_diff: float
    tolerance: float
    image_quality_diff: float  # largest |difference| of image-level answers
    answers: np.ndarray = field(repr=False)  # the runtime's image-level answers, one per batch

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def parity_images(images: list[np.ndarray], blocks: int) -> list[torch.Tensor]:
    """Per image and quality in PARITY_QUALITIES: its sampled blocks as (N, 3, 16, 16) float32."""
    batches = []
    for pixels in images:
        for quality in PARITY_QUALITIES:
            batches.append(torch.from_numpy(origin_patches(jpeg_roundtrip(pixels, quality), blocks)).float())
    return batches


def _image_answers(net: Q1Network, outputs: list[torch.Tensor], tau: float) -> np.ndarray:
    answers = []
    for output in outputs:
        quality, confidence = net.quality_confidence(output)
        answers.append(float(vote(quality, confidence, torch.ones(len(quality), dtype=torch.bool), tau).quality))
    return np.array(answers)


def compare(net: Q1Network, runtime: str, run, batches: list[torch.Tensor], tau: float, tolerance: float) -> ParityReport:
    """Run `run(batch) -> outputs` on every batch and compare with the PyTorch net."""
    with torch.no_grad():
        expected = [net.eval()(batch) for batch in batches]
        got = [torch.as_tensor(run(batch)).float() for batch in batches]
    scale = QUALITY_SCALE if net.config.head == "sigmoid" else 1.0
    diff = max(float((g - e).abs().max()) / scale for g, e in zip(got, expected, strict=True))
    answers = _image_answers(net, got, tau)
    return ParityReport(runtime, diff, tolerance, float(np.abs(answers - _image_answers(net, expected, tau)).max()), answers)


def onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"patches": batch.numpy()})[0]


def pte_runner(path: Path):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return lambda batch: method.execute([batch.contiguous()])[0]


def mosaic_runner(module, blocks: int):
    """Run a mosaic-form callable (eager module or loaded program) on batched patches."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        return from_mosaic(torch.as_tensor(module(to_mosaic(batch, blocks))), len(batch))

    return run


def portable_program(exported: torch.export.ExportedProgram, path: Path, passes: tuple = ()) -> Path:
    """An exported graph (the Vulkan export's mosaic) lowered with no delegate, runnable by the pip runtime; `passes`:
    the edge-dialect passes its lowering applied (q1net.export.formats.LoweredProgram), so that their rewrite is run."""
    from executorch.exir import to_edge_transform_and_lower

    path.write_bytes(to_edge_transform_and_lower(exported, transform_passes=list(passes)).to_executorch().buffer)
    return path


def write_bundled_program(manager, module: torch.nn.Module, blocks: int, batches: list[torch.Tensor], path: Path) -> Path:
    """A .bpte: the lowered program (`manager`) plus test inputs and `module`'s outputs, to rerun parity on a device."""
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    cases = []
    with torch.no_grad():
        for batch in batches[:3]:
            mosaic = to_mosaic(batch, blocks)
            cases.append(MethodTestCase(inputs=[mosaic], expected_outputs=[module(mosaic)]))
    bundled = BundledProgram(manager, [MethodTestSuite("forward", cases)])
    path.write_bytes(serialize_from_bundled_program_to_flatbuffer(bundled))
    return path
