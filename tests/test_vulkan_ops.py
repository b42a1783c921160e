"""The Vulkan export's rewrite of operators its partitioner lacks (q1net.export.vulkan_ops): same values, delegated."""

from __future__ import annotations

import torch
from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner
from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import to_edge_transform_and_lower
from executorch.runtime import Runtime

from q1net.export.vulkan_ops import VulkanOperators


class LatticeLike(torch.nn.Module):
    """maximum, reciprocal and sums as the lattice uses them, beside operators on integers and a last-dimension sum
    (Vulkan takes it as written) left as they are."""

    def forward(self, a: torch.Tensor, b: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
        high = torch.maximum(a, b)
        return (
            high + torch.exp(-(a - b).abs()),
            1.0 / (1.0 + b.abs()),
            torch.maximum(k, k.flip(0)),
            (a * b).sum(dim=0),
            a.reshape(8, 8, 63).mean(dim=(0, 1)),
            b.sum(dim=1),
        )


def inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(64, 63, generator=generator) * 40 for _ in range(2))
    b[0, :8] = a[0, :8]  # ties
    b[1, :8] = -0.0
    a[1, :8] = 0.0
    return a, b, torch.arange(10, dtype=torch.int64)


def left_outside(manager) -> dict[str, int]:
    info = get_delegation_info(manager.exported_program().graph_module)
    return {name: b.non_delegated for name, b in info.delegation_by_operator.items() if b.non_delegated}


def test_maximum_reciprocal_and_sums_of_floats_go_into_the_vulkan_delegate():
    exported = torch.export.export(LatticeLike(), inputs())
    plain = left_outside(to_edge_transform_and_lower(exported, partitioner=[VulkanPartitioner()]))
    rewritten = left_outside(to_edge_transform_and_lower(exported, transform_passes=[VulkanOperators()], partitioner=[VulkanPartitioner()]))
    assert plain.get("aten_maximum_default") == 2 and plain.get("aten_reciprocal_default") == 1
    assert plain.get("aten_sum_dim_int_list") == 1 and plain.get("aten_mean_dim") == 1
    assert rewritten.get("aten_maximum_default") == 1  # the integers' maximum stays as written
    assert not {"aten_reciprocal_default", "aten_sum_dim_int_list", "aten_mean_dim"} & set(rewritten)


def test_the_rewritten_program_gives_the_values_of_the_program_as_written_bit_for_bit(tmp_path):
    exported = torch.export.export(LatticeLike(), inputs())
    outputs = []
    for passes in ([], [VulkanOperators()]):
        path = tmp_path / f"{len(passes)}.pte"
        path.write_bytes(to_edge_transform_and_lower(exported, transform_passes=passes).to_executorch().buffer)
        outputs.append(Runtime.get().load_program(str(path)).load_method("forward").execute(list(inputs())))
    for written, rewritten, eager in zip(*outputs, LatticeLike()(*inputs()), strict=True):
        assert torch.equal(rewritten, written)
        torch.testing.assert_close(rewritten, eager, rtol=1e-5, atol=1e-5)  # the portable kernels sum in another order
