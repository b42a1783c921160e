"""Exported programs: ONNX and ExecuTorch files of the network and of the whole predictor, with their parity checks.

Names the CLI offers as choices live here, free of imports, so that building its parser does not load the exporters.
"""

from typing import Literal, get_args

# What the whole predictor's Vulkan program delegates: the network's mosaic module alone (its graph checked here on the
# portable kernels), or every operator the Vulkan partitioner takes (numerics only checkable on a Vulkan device).
VulkanDelegate = Literal["network", "all"]
VULKAN_DELEGATES: tuple[str, ...] = get_args(VulkanDelegate)
