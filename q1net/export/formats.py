"""Export a trained Q1Net: one function per format, each writing the model and its metadata JSON.

The network alone (for apps that want only it; the tau rule, the median and the
calibration are then the app's, METADATA["postprocess"]):
- ONNX: the batched net, (B, 3, 16, 16) -> (B, alpha), dynamic batch, one file.
- ExecuTorch XNNPACK / portable: the batched net with a dynamic batch (CPU).
- ExecuTorch Vulkan: the mosaic form (q1net.export.mosaic), batch 1, fp32 or fp16,
  so that every convolution runs inside the Vulkan delegate.
The whole predictor (issue #14): q1net.predictor.program.Q1Program, the very module
`Predictor` runs, from regions of pixels to the answer; for Vulkan its network is the
mosaic form and only that module is delegated, the rules run on the CPU kernels.
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
from q1net.export import VulkanDelegate
from q1net.export.mosaic import MosaicNetwork, MosaicQ1Net
from q1net.nets.onnx import example_patches, network_onnx
from q1net.nets.q1net import Q1Network
from q1net.predictor.program import ANSWER_FIELDS, Q1Program, cut_regions

Backend = Literal["xnnpack", "vulkan", "portable"]


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

    out = network_onnx(net, out)
    model = onnx.load(str(out))
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
    passes: tuple = ()  # edge-dialect passes applied before partitioning: the portable parity run applies them too


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
        example, batch = example_patches()
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


# ---- the whole predictor ----------------------------------------------------------------

CUTTING_RULE = (
    "Cut n x n regions of 24 x 24 pixels (n = regions_per_side): region (i, j) is image[rows[i]:rows[i] + 24, "
    "cols[j]:cols[j] + 24], row-major, as uint8 RGB in NCHW order (3, 24, 24). Along a side of L pixels, with "
    "A = max(1, (L - 24) // 8 + 1), start i is 8 * floor((2i + 1) * A / (2n)) for i = 0 .. n-1 (multiples of 8, "
    "the centres of n equal cells; they repeat on sides shorter than 8n + 16). A side shorter than 24 pixels is "
    "padded first by repeating its last row or column. Pass rows and cols (int64) as well."
)


HYBRID_OUTPUTS = (  # shape None: (blocks, blocks)
    {"name": "answer", "shape": None, "meaning": "answer_fields, in order"},
    {"name": "block_quality", "shape": None},
    {"name": "block_confidence", "shape": None},
    {"name": "block_vote", "shape": None, "meaning": "1 where the block voted"},
    {"name": "table_steps", "shape": [64], "meaning": "estimated luma steps, natural order"},
    {"name": "table_known", "shape": [64], "meaning": "1 where the pixels pin the step down"},
)


def hybrid_program(net: Q1Network, tau: float, calibration, blocks: int = 16, backend: Backend | None = None) -> Q1Program:
    """The predictor as one module; for Vulkan with the batch-1 mosaic net in the network slot."""
    network = MosaicNetwork(net, blocks) if backend == "vulkan" else None
    return Q1Program(net, tau, calibration, blocks, network=network).eval()


def hybrid_inputs(program: Q1Program) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Example (regions, rows, cols) of the program's fixed shapes, from a synthetic picture."""
    from q1net.data.sources import SyntheticSource

    pixels = SyntheticSource(count=1, size=8 * program.per_side + 16, seed=0).load(0)
    return tuple(torch.from_numpy(a) for a in cut_regions(pixels, per_side=program.per_side))


def hybrid_layout(program: Q1Program) -> dict:
    n, side, blocks = program.per_side, program.geometry.side, program.blocks
    return {
        "regions_per_side": n,
        "blocks_per_side": blocks,
        "tensors": [
            {"name": "regions", "shape": [n * n, 3, side, side], "dtype": "uint8"},
            {"name": "rows", "shape": [n], "dtype": "int64"},
            {"name": "cols", "shape": [n], "dtype": "int64"},
        ],
        "cutting_rule": CUTTING_RULE,
    }


def hybrid_metadata(program: Q1Program, structure: dict | None = None) -> dict:
    blocks = program.blocks
    return (
        metadata(program.net, program.tau, hybrid_layout(program))
        | {
            "method": program.method,
            "calibration": None if program.calibration.is_identity else program.calibration.as_dict(),
            "outputs": {
                "tensors": [
                    tensor | {"shape": [len(ANSWER_FIELDS)] if tensor["name"] == "answer" else tensor["shape"] or [blocks, blocks]}
                    for tensor in HYBRID_OUTPUTS
                ],
                "answer_fields": list(ANSWER_FIELDS),
                "method_codes": {"0": "cnn", "1": "lattice"},
            },
            "value_range": "uint8 RGB samples 0..255, as decoded, no normalisation",
            "output_order": [tensor["name"] for tensor in HYBRID_OUTPUTS],
            "postprocess": "none: the answer is complete (header fields, from a JPEG file's own tables, are the host's)",
        }
        | ({"program": structure} if structure else {})
    )


def export_hybrid_onnx(program: Q1Program, out: str | os.PathLike[str]) -> Path:
    """The whole predictor as one self-contained .onnx, checked by onnx.checker, its metadata in its props and beside it."""
    import onnx

    out = Path(out)
    names = [tensor["name"] for tensor in HYBRID_OUTPUTS]
    with torch.no_grad():
        exported = torch.onnx.export(
            program, hybrid_inputs(program), dynamo=True, external_data=False, input_names=["regions", "rows", "cols"], output_names=names
        )
    exported.save(str(out), external_data=False)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = hybrid_metadata(program, {"runs": "every operator on ONNX Runtime's execution provider"})
    onnx.helper.set_model_props(model, {"q1net": json.dumps(meta)})
    onnx.save(model, str(out))
    write_metadata(out, meta)
    return out


def lower_hybrid(program: Q1Program, backend: Backend, vulkan_delegate: VulkanDelegate = "network") -> LoweredProgram:
    """The whole predictor as an ExecuTorch program. XNNPACK takes what it can of it (the network and much of the
    arithmetic); Vulkan takes the network's mosaic module in one delegate and leaves the rest to the CPU kernels, or
    with `vulkan_delegate="all"` every operator its partitioner supports (many delegates)."""
    from executorch.exir import to_edge_transform_and_lower

    passes: tuple = ()
    if backend == "vulkan":
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        from q1net.export.vulkan_ops import VulkanOperators

        scope = {"network": {"nn_module_allowlist": [MosaicQ1Net.__name__]}, "all": {}}[vulkan_delegate]
        partitioners = [VulkanPartitioner(**scope)]
        # delegating everything: the operators Vulkan lacks, written as ones it takes (outside the network's delegate
        # they would only add operators)
        passes = (VulkanOperators(),) if vulkan_delegate == "all" else ()
    elif backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners = [XnnpackPartitioner()]
    else:
        partitioners = []
    with torch.no_grad():
        exported = torch.export.export(program, hybrid_inputs(program))
    manager = to_edge_transform_and_lower(exported, transform_passes=list(passes), partitioner=partitioners).to_executorch()
    plan = manager.executorch_program.execution_plan[0]
    structure = {
        "backend": backend,
        **({"vulkan_delegate": vulkan_delegate} if backend == "vulkan" else {}),
        "delegates": [d.id for d in plan.delegates],
        "operators": sorted({o.name for o in plan.operators}),
        "runs": {
            "vulkan": "the network (its mosaic form) in one VulkanBackend delegate; grid detection, the lattice, the tau rule "
            "and the hybrid combine on ExecuTorch's CPU (portable) kernels"
            if vulkan_delegate == "network"
            else "every operator the Vulkan partitioner supports in VulkanBackend delegates (the network, most of grid "
            "detection, the lattice and the rules); integer, boolean and unsupported operators on the portable kernels",
            "xnnpack": "XNNPACK delegates for the network and the arithmetic it supports; the rest on the portable kernels",
            "portable": "every operator on the portable kernels",
        }[backend],
    }
    return LoweredProgram(exported, manager, hybrid_layout(program), structure, passes)


def write_hybrid_pte(program: Q1Program, lowered: LoweredProgram, out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    out.write_bytes(lowered.manager.buffer)
    write_metadata(out, hybrid_metadata(program, lowered.structure))
    return out
