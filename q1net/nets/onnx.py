"""A network as one self-contained ONNX graph with a dynamic batch: what ONNX Runtime runs, in the predictor and in exports.

The predictor's engine keeps such a file in its cache (q1net.predictor.engines); `q1net export`
writes the same graph with the app's metadata beside it (q1net.export.formats).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from q1net.data.geometry import GEOMETRY

EXAMPLE_BATCH = 32  # dynamic-batch exports need an example of 16 or more (ENVIRONMENT.md)
MAX_BATCH = 4096


def example_patches() -> tuple[torch.Tensor, torch.export.Dim]:
    """An example batch of (EXAMPLE_BATCH, 3, P, P) patches in 0..255 and the batch dimension an export lets vary."""
    return torch.rand(EXAMPLE_BATCH, 3, GEOMETRY.patch, GEOMETRY.patch) * 255, torch.export.Dim("batch", min=1, max=MAX_BATCH)


def network_onnx(net: nn.Module, out: str | os.PathLike[str]) -> Path:
    """`net` on (B, 3, P, P) patches as one .onnx file (input "patches", output "outputs"), checked by onnx.checker."""
    import onnx

    out = Path(out)
    example, batch = example_patches()
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
    onnx.checker.check_model(onnx.load(str(out)))
    return out
