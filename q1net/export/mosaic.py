"""Q1Net as a batch-1 network over a mosaic of patches, for ExecuTorch's Vulkan backend.

Vulkan delegates 2-D convolution only at batch size 1 (REFERENCE.md). So the n x n
patches of an image are laid out as one (1, 3, 16n, 16n) image, patch (r, c) at
rows 16r.. and columns 16c.., and this module computes exactly what `Q1Network`
computes for the (n*n, 3, 16, 16) batch:

- an unpadded 3x3 conv only shrinks each tile's valid region from the bottom
  and right, so the top-left part of every tile stays exact layer after layer;
- the bottleneck's padded ("same") 3x3 conv would read the neighbour tile where
  the per-patch net reads zero padding: its input is multiplied by a constant
  0/1 mask of the valid regions first, which is the zero padding;
- global average pooling becomes a 2x2 average with stride 16 (one window a
  tile), and the dense layer a 1x1 conv.

Output: (1, alpha, n, n), sigmoid x 100, channel 0 = confidence and 1 = quality
for the baseline. Only conv, batch norm, relu, mul, add, avg_pool2d and sigmoid
are used: all inside the Vulkan delegate.
"""

from __future__ import annotations

import torch
from torch import nn

from q1net.data.geometry import GEOMETRY
from q1net.nets.q1net import CBR, QUALITY_SCALE, Bottleneck, Q1Network


def valid_mask(tiles: int, tile: int, valid: int, size: int) -> torch.Tensor:
    """(1, 1, size, size) with 1 where a position is in the top-left `valid` x `valid` part of its tile."""
    inside = (torch.arange(size) % tile) < valid
    inside &= torch.arange(size) < tiles * tile
    return (inside[:, None] & inside[None, :]).float()[None, None]


class MaskedBottleneck(nn.Module):
    """A Bottleneck whose same-padded 3x3 conv sees zeros outside each tile's valid region."""

    def __init__(self, block: Bottleneck, mask: torch.Tensor) -> None:
        super().__init__()
        self.pre = block.body[:3]  # 1x1 conv, BN, ReLU
        self.conv3 = block.body[3]
        self.post = block.body[4:]  # BN, ReLU, 1x1 conv, BN
        self.act = block.act
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.post(self.conv3(self.pre(x) * self.mask)) + x)


class MosaicQ1Net(nn.Module):
    """Batch-1 mosaic form of a trained `Q1Network` (see the module docstring); weights are shared, not copied."""

    def __init__(self, net: Q1Network, blocks: int) -> None:
        super().__init__()
        if net.config.head != "sigmoid":
            raise ValueError("the mosaic form supports sigmoid heads (Q1Net, Q1-Regressor), not the classifier")
        tile = GEOMETRY.patch
        self.blocks, self.tile = blocks, tile
        size, valid = blocks * tile, tile
        layers: list[nn.Module] = []
        for layer in net.features:
            if isinstance(layer, CBR | nn.Conv2d):
                size, valid = size - 2, valid - 2  # unpadded 3x3
            if isinstance(layer, Bottleneck):
                layer = MaskedBottleneck(layer, valid_mask(blocks, tile, valid, size))
            layers.append(layer)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(kernel_size=valid, stride=tile)  # one window on each tile's valid region
        linear = net.fc
        self.fc = nn.Conv2d(linear.in_features, linear.out_features, 1)
        with torch.no_grad():
            self.fc.weight.copy_(linear.weight[:, :, None, None])
            self.fc.bias.copy_(linear.bias)

    def forward(self, mosaic: torch.Tensor) -> torch.Tensor:
        """(1, 3, 16n, 16n) in 0..255 -> (1, alpha, n, n) in 0..100."""
        return torch.sigmoid(self.fc(self.pool(self.features(mosaic)))) * QUALITY_SCALE


def to_mosaic(patches: torch.Tensor, blocks: int) -> torch.Tensor:
    """(n*n, 3, P, P) patches, row-major, -> (1, 3, nP, nP); missing patches are left as zeros."""
    count, channels, tile, _ = patches.shape
    if count > blocks * blocks:
        raise ValueError(f"{count} patches do not fit a {blocks}x{blocks} mosaic")
    padded = torch.zeros(blocks * blocks, channels, tile, tile, dtype=patches.dtype)
    padded[:count] = patches
    return padded.view(blocks, blocks, channels, tile, tile).permute(2, 0, 3, 1, 4).reshape(1, channels, blocks * tile, blocks * tile)


def from_mosaic(outputs: torch.Tensor, count: int) -> torch.Tensor:
    """(1, alpha, n, n) mosaic outputs -> (count, alpha), in the patches' row-major order."""
    return outputs[0].flatten(1).T[:count]


class MosaicNetwork(nn.Module):
    """A batch of n*n patches through the batch-1 mosaic net: what `Q1Program`'s network slot takes for the
    Vulkan export, so that the whole network runs inside one VulkanBackend delegate."""

    def __init__(self, net: Q1Network, blocks: int) -> None:
        super().__init__()
        self.mosaic, self.blocks = MosaicQ1Net(net, blocks), blocks

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(n*n, 3, P, P) -> (n*n, alpha), as the batched net."""
        n, (_, channels, tile, _) = self.blocks, patches.shape
        mosaic = patches.reshape(n, n, channels, tile, tile).permute(2, 0, 3, 1, 4).reshape(1, channels, n * tile, n * tile)
        return self.mosaic(mosaic)[0].flatten(1).T
