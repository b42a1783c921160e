"""Operators ExecuTorch's Vulkan partitioner has no kernel for, rewritten exactly from ones it has.

The partitioner (executorch/backends/vulkan/op_registry.py, ExecuTorch 1.4.1) takes `minimum`
but not `maximum`, `div` but not `reciprocal`, and sums and means over one or two dimensions
only with `keepdim=True` (over the last dimension alone, either way). Each operator left on the portable
kernels splits a delegate in two, with a copy out of the GPU and back. max(a, b) is
-min(-a, -b), 1 / x a division, and a sum without its kept dimensions the sum with them,
squeezed: negation is exact and the reduction the same, so every form gives the same values
bit for bit (the undelegated graph's parity is checked like every other program's,
q1net.export.hybrid). The lattice's log-sum-exps and the declipper use `maximum` about a
hundred times.
"""

from __future__ import annotations

import torch
from executorch.exir.dialects._ops import ops as exir_ops
from executorch.exir.pass_base import ExportPass

FLOATS = (torch.float32, torch.float16)  # negation and division of integers or booleans are another matter
REDUCTIONS = (exir_ops.edge.aten.sum.dim_IntList, exir_ops.edge.aten.mean.dim)


def dropped_dims(args: tuple, kwargs: dict, ndim: int) -> list[int] | None:
    """The dimensions a sum or mean reduces and drops, where Vulkan takes it only kept (one or two of them, not the last
    alone); None otherwise."""
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if keepdim or not dims or len(dims) > 2:
        return None
    dims = sorted(d % ndim for d in dims)
    return None if dims == [ndim - 1] else dims


class VulkanOperators(ExportPass):
    """An edge-dialect pass for `to_edge_transform_and_lower`: maximum and reciprocal of floats as minimum and div, sums
    and means of floats with their dimensions kept, then squeezed."""

    def call_operator(self, op, args, kwargs, meta):
        if op in REDUCTIONS and meta["val"].dtype in FLOATS:
            dims = dropped_dims(args, kwargs, args[0].to_tensor().dim())
            if dims is not None:
                rest = {k: v for k, v in kwargs.items() if k not in ("dim", "keepdim")}
                kept = super().call_operator(op, (args[0], dims, True), rest, meta)
                return super().call_operator(exir_ops.edge.aten.squeeze_copy.dims, (kept, dims), {}, meta)
        if op == exir_ops.edge.aten.maximum.default and meta["val"].dtype in FLOATS:
            neg = exir_ops.edge.aten.neg.default
            a = super().call_operator(neg, (args[0],), {}, meta)
            b = super().call_operator(neg, (args[1],), {}, meta)
            smaller = super().call_operator(exir_ops.edge.aten.minimum.default, (a, b), {}, meta)
            return super().call_operator(neg, (smaller,), {}, meta)
        if op == exir_ops.edge.aten.reciprocal.default and meta["val"].dtype in FLOATS:
            (x,) = args
            one = super().call_operator(exir_ops.edge.aten.full_like.default, (x, 1.0), {}, meta)
            return super().call_operator(exir_ops.edge.aten.div.Tensor, (one, x), {}, meta)
        return super().call_operator(op, args, kwargs, meta)
