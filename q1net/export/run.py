"""`q1net export`: write a format, check it against PyTorch with every runtime here, report one table row."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from q1net.export.formats import export_onnx, export_pte, lower, write_metadata, write_pte
from q1net.export.mosaic import MosaicQ1Net
from q1net.export.parity import (
    FP16_ATOL,
    FP32_ATOL,
    PARITY_QUALITIES,
    ParityError,
    ParityReport,
    compare,
    mosaic_runner,
    onnx_runner,
    parity_images,
    portable_program,
    pte_runner,
    write_bundled_program,
)
from q1net.nets.q1net import Q1Network
from q1net.predictor.calibration import Calibration

TIMING_RUNS = 5


@dataclass(frozen=True)
class Target:
    format: str  # onnx | pte
    backend: str | None = None  # xnnpack | vulkan | portable for pte
    fp16: bool = False

    @property
    def name(self) -> str:
        if self.format == "onnx":
            return "q1net.onnx"
        return f"q1net_{self.backend}_{'fp16' if self.fp16 else 'fp32'}.pte"


ALL_TARGETS = (Target("onnx"), Target("pte", "xnnpack"), Target("pte", "vulkan"), Target("pte", "vulkan", fp16=True))


def _median_ms(run, batch: torch.Tensor) -> float:
    run(batch)  # warm-up
    times = []
    for _ in range(TIMING_RUNS):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def export_target(
    net: Q1Network, target: Target, out_dir: Path, tau: float, images: list[np.ndarray], blocks: int, calibration: Calibration | None = None
) -> dict:
    """Export `target` into `out_dir`, check parity, and return its table row. Raises ParityError on a mismatch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / target.name
    batches = parity_images(images, blocks)
    true = np.tile(PARITY_QUALITIES, len(images))
    notes: list[str] = []
    if target.format == "onnx":
        export_onnx(net, path, tau)
        run = onnx_runner(path)
        report = compare(net, "onnxruntime", run, batches, tau, FP32_ATOL)
        ms = _median_ms(run, batches[0])
    elif target.backend in ("xnnpack", "portable"):
        export_pte(net, path, target.backend, tau=tau)
        run = pte_runner(path)
        report = compare(net, f"executorch {target.backend}", run, batches, tau, FP32_ATOL)
        ms = _median_ms(run, batches[0])
    else:
        program = lower(net, "vulkan", target.fp16, blocks)  # once: the .pte, the .bpte and the portable check share it
        write_pte(net, program, path, tau)
        mosaic = MosaicQ1Net(net, blocks).eval()
        eager = compare(net, "mosaic (PyTorch)", mosaic_runner(mosaic, blocks), batches, tau, FP32_ATOL)
        portable = portable_program(program.exported, out_dir / f".{target.name}.portable.pte")
        graph = compare(net, "mosaic graph (executorch portable)", mosaic_runner(pte_runner(portable), blocks), batches[:1], tau, FP32_ATOL)
        portable.unlink()
        report = eager
        report.runtime = f"{eager.runtime} + {graph.runtime}"
        report.max_abs_diff = max(eager.max_abs_diff, graph.max_abs_diff)
        bundled = write_bundled_program(program.manager, mosaic, blocks, batches, path.with_suffix(".bpte"))
        notes.append(f"Vulkan kernels not run here (the pip runtime has no Vulkan backend): rerun {bundled.name} on a device")
        if target.fp16:
            notes.append(f"fp16 tolerance on a device: {FP16_ATOL}")
        ms = float("nan")
    row = _row(target, path, report, notes, ms, true)
    meta_path = path.with_suffix(path.suffix + ".json")
    calibrated = {} if calibration is None or calibration.is_identity else {"calibration": calibration.as_dict()}
    write_metadata(path, json.loads(meta_path.read_text()) | calibrated | {"parity": row})
    if not report.passed:
        raise ParityError(f"{path.name}: max |diff| {report.max_abs_diff:.3g} over the tolerance {report.tolerance:g} ({report.runtime})")
    return row


def _row(target: Target, path: Path, report: ParityReport, notes: list[str], ms: float, true: np.ndarray) -> dict:
    return {
        "format": target.name,
        "size_kb": round(path.stat().st_size / 1024, 1),
        "runtime": report.runtime,
        "max_abs_diff": report.max_abs_diff,
        "tolerance": report.tolerance,
        "image_answer_diff": report.image_quality_diff,
        "image_mae": float(np.abs(report.answers - true).mean()),
        "ms_per_image": None if np.isnan(ms) else round(ms, 2),
        "notes": notes,
    }
