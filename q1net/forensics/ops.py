"""Tensor operations written so that every exporter and runtime takes them (ONNX Runtime, ExecuTorch portable and XNNPACK).

Indexing by a computed 0-d tensor (`table[best]`) makes torch.export read the index as a
Python number, which ExecuTorch cannot lower; `take` gathers instead. ONNX Runtime has no
Where on booleans, and an exported logaddexp may be expanded as written and overflow.
"""

from __future__ import annotations

import torch


def take(values: torch.Tensor, index: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """`values` at a 0-d tensor `index` along `dim`, that dimension dropped: a gather, not a Python number."""
    return values.index_select(dim, index.reshape(1)).squeeze(dim)


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True of a 1-D bool tensor (0 when none): argmax of a strictly decreasing score."""
    order = torch.arange(mask.shape[-1], 0, -1, dtype=torch.float32, device=mask.device)
    return torch.argmax(mask.float() * order, dim=-1)


def last_true(mask: torch.Tensor) -> torch.Tensor:
    order = torch.arange(1, mask.shape[-1] + 1, dtype=torch.float32, device=mask.device)
    return torch.argmax(mask.float() * order, dim=-1)


def log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(exp(a) + exp(b)) without overflow, spelled out."""
    high = torch.maximum(a, b)
    return high + torch.log1p(torch.exp(-(a - b).abs()))


def log_sum_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log sum exp over `dim` without overflow (finite inputs), spelled out like log_add_exp."""
    high = x.amax(dim=dim, keepdim=True)
    return (high + torch.log(torch.exp(x - high).sum(dim=dim, keepdim=True))).squeeze(dim)


def max_abs_difference(values: torch.Tensor) -> torch.Tensor:
    """(N, N) largest |difference| between the rows of (N, K) `values`, a column at a time: the (N, N) running maximum
    stays in the cache, where the (N, N, K) differences at once would not (7x slower on 256 x 63)."""
    columns = values.T.contiguous()
    largest = (columns[0][:, None] - columns[0][None, :]).abs()
    for column in columns[1:]:
        largest = torch.maximum(largest, (column[:, None] - column[None, :]).abs())
    return largest
