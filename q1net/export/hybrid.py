"""`q1net export` of the whole predictor (issue #14): the program files, and their parity with `q1net predict`.

Each file is the very module `Predictor` runs (q1net.predictor.program), lowered: ONNX
(run here by ONNX Runtime), ExecuTorch XNNPACK (run by the pip ExecuTorch runtime) and
ExecuTorch Vulkan (the network in one VulkanBackend delegate; the pip runtime has no
Vulkan backend, so here the same exported graph runs undelegated on the portable kernels).
Parity is the answer a user sees: on every case image the program's quality must equal
`Predictor.predict`'s within PARITY_LEVELS on QUALITY_SHARE of the images, and its method
on METHOD_SHARE of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from q1net.export.formats import export_hybrid_onnx, hybrid_program, lower_hybrid, write_hybrid_pte, write_metadata
from q1net.export.parity import ParityError, portable_program
from q1net.predictor.engines import program_runner
from q1net.predictor.inference import ImageEvidence, Predictor, prediction
from q1net.predictor.program import cut_regions

PARITY_LEVELS = 0.5  # the program's quality within this of q1net predict's ...
QUALITY_SHARE = 0.995  # ... on at least this share of the images
METHOD_SHARE = 0.99  # and the same method on at least this share
PORTABLE_CASES = 3  # images the undelegated Vulkan graph runs on (its convolutions are ~400x slower than XNNPACK's)


@dataclass(frozen=True)
class HybridTarget:
    format: str  # onnx | pte
    backend: str | None = None  # xnnpack | vulkan for pte
    vulkan_delegate: str = "network"  # for vulkan (q1net.export.VulkanDelegate)

    @property
    def name(self) -> str:
        if self.format == "onnx":
            return "q1net_hybrid.onnx"
        return f"q1net_hybrid_{self.backend}{'_all' if self.backend == 'vulkan' and self.vulkan_delegate == 'all' else ''}.pte"


HYBRID_TARGETS = (HybridTarget("onnx"), HybridTarget("pte", "xnnpack"), HybridTarget("pte", "vulkan"), HybridTarget("pte", "vulkan", "all"))


def answers(run, predictor: Predictor, cases: list[np.ndarray]) -> tuple[list[tuple[float, str]], float]:
    """(quality, method) of every case image through a program runner, and the median ms per image."""
    rows, times = [], []
    for pixels in cases:
        regions, rows_, cols = cut_regions(pixels, per_side=predictor.program.per_side)
        start = time.perf_counter()
        outputs = run(torch.from_numpy(regions), torch.from_numpy(rows_), torch.from_numpy(cols))
        times.append(time.perf_counter() - start)
        found = ImageEvidence(None, rows_, cols, outputs=tuple(torch.as_tensor(o) for o in outputs))
        result = prediction(found.outputs, found, predictor.program.picked.numpy())
        rows.append((result.quality, result.method))
    return rows, 1000 * float(np.median(times))


def vulkan_partition(lowered, path: Path) -> str:
    """What the Vulkan program's delegates hold, checked against what it was lowered for; ParityError otherwise."""
    delegates = lowered.structure["delegates"]
    if lowered.structure["vulkan_delegate"] == "network":
        if delegates != ["VulkanBackend"]:
            raise ParityError(f"{path.name}: the network should be one VulkanBackend delegate, found {delegates}")
        return "the network is one VulkanBackend delegate"
    if len(delegates) < 2 or set(delegates) != {"VulkanBackend"}:
        raise ParityError(f"{path.name}: Vulkan should take more than the network, found delegates {delegates}")
    return f"{len(delegates)} VulkanBackend delegates take every operator the partitioner supports; their numerics need a device"


def compare(got: list[tuple[float, str]], expected: list[tuple[float, str]]) -> dict:
    quality = np.array([g[0] for g in got]) - np.array([e[0] for e in expected])
    return {
        "images": len(got),
        "quality_within": float(np.mean(np.abs(quality) <= PARITY_LEVELS)),
        "method_agrees": float(np.mean([g[1] == e[1] for g, e in zip(got, expected, strict=True)])),
        "max_quality_diff": float(np.abs(quality).max()),
    }


def export_hybrid(
    predictor: Predictor, target: HybridTarget, out_dir: Path, cases: list[np.ndarray], expected: list[tuple[float, str]]
) -> dict:
    """Write `target`, run it on `cases` with this machine's runtime, compare with `expected` (Predictor's answers).
    Returns its table row; raises ParityError when the shares are not met."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / target.name
    program = hybrid_program(predictor.net.cpu(), predictor.tau, predictor.calibration, predictor.blocks, target.backend)
    notes: list[str] = []
    if target.format == "onnx":
        export_hybrid_onnx(program, path)
        runtime, run, checked = "onnxruntime", program_runner(path), cases
    else:
        lowered = lower_hybrid(program, target.backend, target.vulkan_delegate)
        write_hybrid_pte(program, lowered, path)
        if target.backend == "vulkan":
            notes.append(f"Vulkan kernels not run here (the pip runtime has no Vulkan backend); {vulkan_partition(lowered, path)}")
            portable = portable_program(lowered.exported, out_dir / f".{target.name}.portable.pte", lowered.passes)
            runtime, run, checked = "its graph undelegated (executorch portable)", program_runner(portable), cases[:PORTABLE_CASES]
        else:
            runtime, run, checked = f"executorch {target.backend}", program_runner(path), cases
    got, ms = answers(run, predictor, checked)
    if target.backend == "vulkan":
        (out_dir / f".{target.name}.portable.pte").unlink()
        ms = float("nan")
    parity = compare(got, expected[: len(checked)])
    row = {
        "format": target.name,
        "size_kb": round(path.stat().st_size / 1024, 1),
        "runtime": runtime,
        "ms_per_image": None if np.isnan(ms) else round(ms, 1),
        "notes": notes,
    } | parity
    meta = json.loads(path.with_suffix(path.suffix + ".json").read_text())
    write_metadata(path, meta | {"parity": row})
    if parity["quality_within"] < QUALITY_SHARE or parity["method_agrees"] < METHOD_SHARE:
        raise ParityError(
            f"{path.name}: quality within {PARITY_LEVELS} on {parity['quality_within']:.1%}, method agrees on "
            f"{parity['method_agrees']:.1%} of {parity['images']} images ({runtime})"
        )
    return row


def parity_cases(images: list[np.ndarray], qualities: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Each image coded at each quality, decoded, as it is and cropped by 1..7 px at the top and left (grid off the origin)."""
    from q1net.data.jpeg import jpeg_roundtrip

    rng, cases = np.random.default_rng(seed), []
    for pixels in images:
        for quality in qualities:
            decoded = jpeg_roundtrip(pixels, quality)
            dy, dx = rng.integers(1, 8, 2)
            cases += [decoded, np.ascontiguousarray(decoded[dy:, dx:])]
    return cases
