"""Export a trained Q1Net: one function per format, each writing the model and its metadata JSON.

- ONNX: the batched net, (B, 3, 16, 16) -> (B, alpha), dynamic batch, one file.
- ExecuTorch XNNPACK / portable: the batched net with a dynamic batch (CPU).
- ExecuTorch Vulkan: the mosaic form (q1net.export.mosaic), batch 1, fp32 or fp16,
  so that every convolution runs inside the Vulkan delegate.
The tau filter and the median stay outside every program (METADATA["postprocess"]).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from q1net import __version__
from q1net.data.geometry import GEOMETRY
from q1net.export.mosaic import MosaicQ1Net
from q1net.models.q1net import Q1Network

Backend = Literal["xnnpack", "vulkan", "portable"]
EXAMPLE_BATCH = 32  # dynamic-batch exports need an example of 16 or more (ENVIRONMENT.md)
MAX_BATCH = 4096


def output_names(net: Q1Network) -> list[str]:
    if net.config.alpha == 2:
        return ["confidence", "quality"]
    return ["quality"] if net.config.alpha == 1 else [f"logit_q{q}" for q in range(1, net.config.alpha + 1)]


def metadata(net: Q1Network, tau: float | None, layout: dict, extra: dict | None = None) -> dict:
    """What an app or a later run needs to use an exported file."""
    from importlib.metadata import version

    return {
        "q1net_version": __version__,
        "net": net.config.as_dict(),
        "geometry": GEOMETRY.as_dict(),
        "input": layout,
        "value_range": "RGB samples as float32 0..255, no normalisation",
        "output_order": output_names(net),
        "tau": tau,
        "postprocess": "keep blocks whose confidence is strictly above tau; answer the median of their qualities; "
        "if none passes, the median quality of the most confident quarter of the blocks, flagged low-confidence; "
        "then, when this file has a `calibration`, read the answer through it: np.interp(answer, knots, values)",
        "versions": {name: version(name) for name in ("torch", "executorch", "onnx", "onnxruntime")},
    } | (extra or {})


def write_metadata(model_path: Path, meta: dict) -> Path:
    path = model_path.with_suffix(model_path.suffix + ".json")
    path.write_text(json.dumps(meta, indent=2))
    return path


def batched_layout(patch: int) -> dict:
    return {"name": "patches", "shape": ["batch", 3, patch, patch], "dtype": "float32", "layout": "NCHW, one row-major block grid"}


def mosaic_layout(blocks: int, patch: int) -> dict:
    side = blocks * patch
    return {
        "name": "mosaic",
        "shape": [1, 3, side, side],
        "dtype": "float32",
        "layout": f"NCHW; patch (r, c) of the {blocks}x{blocks} block grid at rows {patch}r.. and columns {patch}c..; unused tiles zero",
        "output_shape": [1, "alpha", blocks, blocks],
    }


def export_onnx(net: Q1Network, out: str | os.PathLike[str], tau: float | None = None) -> Path:
    """One self-contained .onnx file with a dynamic batch, checked by onnx.checker, metadata in its props."""
    import onnx

    out = Path(out)
    example = torch.rand(EXAMPLE_BATCH, 3, GEOMETRY.patch, GEOMETRY.patch) * 255
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(
        net.eval(),
        (example,),
        dynamo=True,
        external_data=False,
        input_names=["patches"],
        output_names=["outputs"],
        dynamic_shapes={"x": {0: batch}},
        verbose=False,
    )
    program.save(str(out), external_data=False)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = metadata(net, tau, batched_layout(GEOMETRY.patch))
    onnx.helper.set_model_props(model, {"q1net": json.dumps(meta)})
    onnx.save(model, str(out))
    write_metadata(out, meta)
    return out


@dataclass
class LoweredProgram:
    """One torch.export + ExecuTorch lowering, shared by the .pte, the bundled .bpte and the portable parity run."""

    exported: torch.export.ExportedProgram  # before lowering: the graph the portable runtime can run
    manager: object  # executorch.exir.ExecutorchProgramManager
    layout: dict
    structure: dict  # backend, fp16, delegate ids and operators left outside them


def lower(net: Q1Network, backend: Backend = "xnnpack", fp16: bool = False, blocks: int = 16) -> LoweredProgram:
    """The ExecuTorch program: batched for XNNPACK/portable, the batch-1 mosaic for Vulkan."""
    from executorch.exir import to_edge_transform_and_lower

    net = net.eval()
    if backend == "vulkan":
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        module, side = MosaicQ1Net(net, blocks).eval(), blocks * GEOMETRY.patch
        exported = torch.export.export(module, (torch.rand(1, 3, side, side) * 255,))
        partitioners = [VulkanPartitioner({"force_fp16": True} if fp16 else {})]
        layout = mosaic_layout(blocks, GEOMETRY.patch)
    else:
        if fp16:
            raise ValueError("fp16 is offered for the Vulkan backend only")
        example = torch.rand(EXAMPLE_BATCH, 3, GEOMETRY.patch, GEOMETRY.patch) * 255
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        exported = torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})
        if backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioners = [XnnpackPartitioner()]
        else:
            partitioners = []
        layout = batched_layout(GEOMETRY.patch)
    manager = to_edge_transform_and_lower(exported, partitioner=partitioners).to_executorch()
    plan = manager.executorch_program.execution_plan[0]
    structure = {
        "backend": backend,
        "fp16": fp16,
        "delegates": [d.id for d in plan.delegates],
        "operators": [o.name for o in plan.operators],
    }
    return LoweredProgram(exported, manager, layout, structure)


def write_pte(net: Q1Network, program: LoweredProgram, out: str | os.PathLike[str], tau: float | None = None) -> Path:
    out = Path(out)
    out.write_bytes(program.manager.buffer)
    write_metadata(out, metadata(net, tau, program.layout, {"program": program.structure}))
    return out


def export_pte(
    net: Q1Network,
    out: str | os.PathLike[str],
    backend: Backend = "xnnpack",
    fp16: bool = False,
    tau: float | None = None,
    blocks: int = 16,
) -> Path:
    """Lower (see `lower`) and write the .pte with its metadata JSON."""
    return write_pte(net, lower(net, backend, fp16, blocks), out, tau)
