"""Q1Net: a block-wise confidence-aware CNN for JPEG quality prediction.

Kim & Yang, "Quality Level Prediction of Image Compression using Block-wise
Confidence-aware CNN" (Samsung, 2021), Fig. 3; details as in REFERENCE.md.
Written from the paper's description; no code or weights of the authors'.

Input: (B, 3, 16, 16) float RGB in 0..255, no normalisation. Every CBR is an
unpadded 3x3 conv, so a 16x16 patch shrinks 16 -> 14 -> ... -> 4 -> 2 before
global average pooling: the net sees exactly one coding block and its ring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

QUALITY_SCALE = 100.0  # sigmoid heads output 0..100, the IJG quality range (m in eq. 1)
Head = Literal["sigmoid", "logits"]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # Keras momentum 0.9


class CBR(nn.Sequential):
    """Unpadded 3x3 conv -> BN -> ReLU: shrinks each side by 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, bias=False), _bn(out_channels), nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    """Residual 1x1 -> 3x3 (same) -> 1x1 block that keeps `channels` and the spatial size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            _bn(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _bn(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            _bn(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)

    def start_as_identity(self) -> None:
        """Zero the last BN's scale, so the block passes its input through until training grows it (Goyal et al., 2017).

        Measured here (docs/TRAINING.md): with the default init the 25-conv stack of 8..64
        channels stays at the median answer for hundreds of steps even on quality 1-5 against
        96-100; starting each block as the identity, the network begins as the 7-conv net
        underneath and learns the extremes within 200 steps.
        """
        nn.init.zeros_(self.body[-1].weight)


@dataclass(frozen=True)
class Q1NetConfig:
    """Architecture arguments, saved with every checkpoint so it can be rebuilt exactly."""

    k: int = 8  # channel width unit
    alpha: int = 2  # output units: 2 = (confidence, quality), 1 = quality, 100 = classes
    bottlenecks: bool = True
    head: Head = "sigmoid"  # sigmoid x 100 for regression heads, raw logits for the classifier

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Q1Network(nn.Module):
    """The Fig. 3 stack: CBR/BB pairs at widths k, 2k, 4k, 8k, 4k, 2k, then conv, GAP, dense."""

    widths = (1, 2, 4, 8, 4, 2)  # multiples of k, one CBR (+ BB) each

    def __init__(self, config: Q1NetConfig = Q1NetConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_channels = 3
        for multiple in self.widths:
            channels = multiple * config.k
            layers.append(CBR(in_channels, channels))
            if config.bottlenecks:
                layers.append(Bottleneck(channels))
            in_channels = channels
        layers += [nn.Conv2d(in_channels, config.k, 3, bias=True), nn.ReLU(inplace=True)]  # (B, k, 2, 2)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # keepdim mean: stays inside the Vulkan delegate
        self.fc = nn.Linear(config.k, config.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 16, 16) in 0..255 -> (B, alpha): 0..100 for sigmoid heads, logits otherwise."""
        x = self.pool(self.features(x)).flatten(1)  # (B, k)
        x = self.fc(x)
        return torch.sigmoid(x) * QUALITY_SCALE if self.config.head == "sigmoid" else x

    def start_bottlenecks_as_identity(self) -> None:
        """Initialise every bottleneck as the identity (Bottleneck.start_as_identity): an init, not an architecture change."""
        for module in self.modules():
            if isinstance(module, Bottleneck):
                module.start_as_identity()

    def quality_confidence(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-patch (quality, confidence) from `forward`'s outputs; confidence is None for a plain regressor.

        Output order for alpha = 2 (as published): 0 = confidence, 1 = quality.
        The classifier's quality is its arg-max class (1..100) and its
        confidence the winning softmax probability x 100 (Q1-Softmax).
        """
        if self.config.head == "logits":
            probabilities = outputs.softmax(dim=1)
            confidence, index = probabilities.max(dim=1)
            return (index + 1).to(outputs.dtype), confidence * QUALITY_SCALE
        if self.config.alpha == 2:
            return outputs[:, 1], outputs[:, 0]
        return outputs[:, 0], None


def count_parameters(net: nn.Module, with_bn_statistics: bool = False) -> int:
    """Trainable parameters; with BN running mean/var too, as the paper's Table 3 counts them."""
    total = sum(p.numel() for p in net.parameters())
    if with_bn_statistics:
        total += sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    return total


# ---- registry and builders -------------------------------------------------------------

_MODELS: dict[str, Callable[..., Q1Network]] = {}


def register_model(builder: Callable[..., Q1Network]) -> Callable[..., Q1Network]:
    _MODELS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **overrides: object) -> Q1Network:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name](**overrides)


def _build(defaults: Q1NetConfig, overrides: dict[str, object]) -> Q1Network:
    unknown = set(overrides) - set(defaults.as_dict())
    if unknown:
        raise TypeError(f"unknown Q1Net arguments: {sorted(unknown)}")
    return Q1Network(Q1NetConfig(**(defaults.as_dict() | overrides)))


@register_model
def q1net_baseline(**overrides: object) -> Q1Network:
    """Baseline Q1Net (k=8, alpha=2): quality and confidence, 125 K parameters."""
    return _build(Q1NetConfig(), overrides)


@register_model
def q1net_regressor(**overrides: object) -> Q1Network:
    """Q1-Regressor: one sigmoid output, the quality."""
    return _build(Q1NetConfig(alpha=1), overrides)


@register_model
def q1net_classifier(**overrides: object) -> Q1Network:
    """Q1-Classifier: 100 logits, one per quality level."""
    return _build(Q1NetConfig(alpha=100, head="logits"), overrides)


@register_model
def q1net_light(**overrides: object) -> Q1Network:
    """Q1-Light (k=6): 71 K parameters."""
    return _build(Q1NetConfig(k=6), overrides)


@register_model
def q1net_heavy(**overrides: object) -> Q1Network:
    """Q1-Heavy (k=12): 280 K parameters."""
    return _build(Q1NetConfig(k=12), overrides)


@register_model
def q1net_no_bb(**overrides: object) -> Q1Network:
    """Q1-No-BB: the baseline without bottleneck blocks, 49 K parameters."""
    return _build(Q1NetConfig(bottlenecks=False), overrides)
