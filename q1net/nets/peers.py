"""The paper's Table 2 peers: whole-crop regressors that read one 224x224 or 256x256 centre crop.

MobileNetV2, EfficientNet-B0 and ShuffleNet V2 come from torchvision (random
initialisation, one output); JQE-like and Q-EST-like are built from the
paper's description of them ("mainly dilated and standard convolution
layers", max- and average-pooling, about 217 K and 213 K parameters). Every
peer ends in a sigmoid x 100, like the Q1 heads, and is trained with L1 on the
quality (the paper: "regression networks").

The crop is centred and snapped to the 16-pixel MCU grid (`centre_crop`), so
the peers see coding blocks where training put them: the DataModule's
`crop_input` mode codes MCU-aligned crops of the same size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.models as tv
from torch import nn

from q1net.data.geometry import GEOMETRY
from q1net.nets.q1net import QUALITY_SCALE

PIXEL_SCALE = 255.0


@dataclass(frozen=True)
class Peer:
    build: Callable[[], nn.Module]  # backbone: (B, 3, S, S) in 0..1 -> (B, 1)
    input_size: int  # the paper's input side for this peer


STEM_WIDTH = 32


def _regressor(blocks: list[nn.Module], width: int, pool: nn.Module) -> nn.Module:
    """A stride-2 stem, the design's blocks, a global pool and one linear output."""
    stem = [nn.Conv2d(3, STEM_WIDTH, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*stem, *blocks, pool, nn.Flatten(), nn.Linear(width, 1))


def _jqe_like() -> nn.Module:
    """Dilated 3x3 convolutions with max-pooling between them (Uchida et al.'s quality-map design, as a regressor)."""
    layers = [(STEM_WIDTH, 48, 2), (48, 56, 4), (56, 112, 2), (112, 120, 1)]  # (in, out, dilation): 217 K parameters
    blocks = [
        module
        for cin, cout, dilation in layers
        for module in (nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    ]
    return _regressor(blocks, layers[-1][1], nn.AdaptiveMaxPool2d(1))


def _qest_like() -> nn.Module:
    """Plain 3x3 convolutions with batch norm and average pooling (Kim et al.'s Q-EST design, as a regressor)."""
    widths = [STEM_WIDTH, 56, 72, 88, 128]  # 213 K parameters
    blocks = [
        module
        for cin, cout in itertools.pairwise(widths)
        for module in (nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.AvgPool2d(2))
    ]
    return _regressor(blocks, widths[-1], nn.AdaptiveAvgPool2d(1))


PEERS: dict[str, Peer] = {
    "mobilenet_v2": Peer(lambda: tv.mobilenet_v2(weights=None, num_classes=1), 224),
    "efficientnet_b0": Peer(lambda: tv.efficientnet_b0(weights=None, num_classes=1), 256),
    "shufflenet_v2": Peer(lambda: tv.shufflenet_v2_x1_0(weights=None, num_classes=1), 224),
    "jqe_like": Peer(_jqe_like, 256),
    "qest_like": Peer(_qest_like, 256),
}


class PeerNetwork(nn.Module):
    """A peer backbone with the Q1 heads' output: (B, 3, S, S) in 0..255 -> (B, 1) quality in 0..100."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        if arch not in PEERS:
            raise ValueError(f"unknown peer {arch!r}; known: {', '.join(PEERS)}")
        self.arch, self.input_size = arch, PEERS[arch].input_size
        self.backbone = PEERS[arch].build()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.backbone(x / PIXEL_SCALE)) * QUALITY_SCALE


def centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The (3, size, size) centre of (H, W, 3) `pixels`, its corner snapped to the MCU grid; smaller images are edge-padded."""
    mcu = GEOMETRY.mcu
    height, width = pixels.shape[:2]
    padded = np.pad(pixels, ((0, max(0, size - height)), (0, max(0, size - width)), (0, 0)), mode="edge")
    top = max(0, (height - size) // 2) // mcu * mcu
    left = max(0, (width - size) // 2) // mcu * mcu
    return np.ascontiguousarray(padded[top : top + size, left : left + size].transpose(2, 0, 1))
