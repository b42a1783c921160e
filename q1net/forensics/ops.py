"""Tensor operations written so that every exporter and runtime takes them (ONNX Runtime, ExecuTorch portable and XNNPACK).

Indexing by a computed 0-d tensor (`table[best]`) makes torch.export read the index as a
Python number, which ExecuTorch cannot lower; `take` gathers instead. ONNX Runtime has no
Where on booleans, and an exported logaddexp may be expanded as written and overflow.

Chains of element-wise steps on large intermediates run in place (`exp_`, `add_`, ...): the
values are the same bit for bit, and eager torch then neither allocates nor first-touches a
fresh buffer a step (log_add_exp on 1 M values: 5.6 -> 3.1 ms here). The exporters turn them
back into plain operators.
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


# Infinity in the programs' tensors: ExecuTorch's Vulkan serializer writes a delegate's constants as JSON, which has
# no Infinity (flatc: "cannot parse value starting with: Infinity"). Far beyond any log-likelihood, step or sample here.
FAR = 1e30
EXP_FLOOR = -87.0  # e^-87 = 1.6e-38, just above the smallest normal float32: exp of less is denormal or 0


def exp_(x: torch.Tensor) -> torch.Tensor:
    """exp in place, arguments under EXP_FLOOR taken as EXP_FLOOR. Every sum here holds a term of 1 or adds to a
    finite log, next to which e^-87 is as good as 0; torch's vectorised exp takes a slow path for such arguments
    (611 K values of -600 and less: 7.5 ms, against 0.9 ms floored)."""
    return x.clamp_(min=EXP_FLOOR).exp_()


# Half of float32's integer range: adding 1.5 * 2^23 to |x| < 2^22 lands on [2^23, 2^24), where floats are the integers,
# so the addition itself rounds x half to even, as torch.round does, and subtracting it back is exact.
ROUNDING_OFFSET = 1.5 * 2**23


def round_(x: torch.Tensor) -> torch.Tensor:
    """torch.round in place for |x| < 2^22 (every level, step ratio and coefficient here is under 2^14), bit for bit, as an
    addition and a subtraction: the XNNPACK and Vulkan delegates take those, and have no round (ExecuTorch then runs it
    on the portable kernels, a plain loop, and splits the delegate around it)."""
    return x.add_(ROUNDING_OFFSET).sub_(ROUNDING_OFFSET)


def at_least(x: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """(x >= bound) as 1.0 / 0.0 from operators the delegates take (comparisons and bool selects run on the portable
    kernels): bound - x is exact in sign, and its ceiling clamped to [0, 1] is 1 exactly where it is positive."""
    return (bound - x).clamp_(0.0, 1.0).ceil_().neg_().add_(1.0)


def select(keep: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.where by a 1.0 / 0.0 `keep` (`at_least`), exact for finite `a` and `b` (a * 1 + b * 0 is a)."""
    return a * keep + b * (1.0 - keep)


def log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(exp(a) + exp(b)) without overflow, spelled out. The smaller term's share x = e^-|a - b| is in (0, 1], where
    log(1 + x) is within 6e-8 of log1p(x): torch's log1p takes a slow path for small x (1 M shares spread over
    e^-90..1: 9.5 ms, log(1 + x) 0.8 ms), and the ONNX exporter writes log1p as log(1 + x) anyway."""
    return torch.maximum(a, b).add_(exp_((a - b).abs_().neg_()).add_(1.0).log_())


def log_sum_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log sum exp over `dim` without overflow (finite inputs), spelled out like log_add_exp."""
    high = x.amax(dim=dim, keepdim=True)
    return exp_(x - high).sum(dim=dim, keepdim=True).log_().add_(high).squeeze(dim)


def log_sum_exp_terms(terms: list[torch.Tensor]) -> torch.Tensor:
    """log sum exp of a few same-shaped tensors, term by term: `log_sum_exp` of their stack over dim 0 (up to the order
    of the sum's float additions) without the stack's copy, in maximum, exp and add, which the delegates take (amax and
    sum over a dim they do not)."""
    high = terms[0]
    for term in terms[1:]:
        high = torch.maximum(high, term)
    total = exp_(terms[0] - high)
    for term in terms[1:]:
        total = total.add_(exp_(term - high))
    return total.log_().add_(high)


def max_abs_difference(values: torch.Tensor) -> torch.Tensor:
    """(N, N) largest |difference| between the rows of (N, K) `values`, a column at a time: the (N, N) running maximum
    stays in the cache, where the (N, N, K) differences at once would not (7x slower on 256 x 63).

    The columns are taken as a product with the identity, exact (each value times 1, plus zeros): Inductor
    computes a transposed copy inside the kernel that reads it, gathering each column's values at a stride
    per vector of the output, and a product is a buffer of its own (compiled: 1.38 -> 0.53 ms on 256 x 63)."""
    columns = torch.eye(values.shape[1], dtype=values.dtype, device=values.device) @ values.T
    largest = (columns[0][:, None] - columns[0][None, :]).abs()
    for column in columns[1:]:
        largest = torch.maximum(largest, (column[:, None] - column[None, :]).abs())
    return largest
