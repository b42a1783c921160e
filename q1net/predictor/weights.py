"""Loading and saving trained nets without unpickling code.

Shipped weights are safetensors files whose metadata holds everything needed to
use them: the architecture, the patch geometry, tau and the recipe. Training
checkpoints are read with `torch.load(weights_only=True)`, which refuses any
pickled object that is not plain data.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from q1net import __version__
from q1net.data.geometry import GEOMETRY
from q1net.nets.q1net import Q1NetConfig, Q1Network
from q1net.predictor.calibration import Calibration

PRETRAINED = {"q1net_k8_photos": "q1net_k8_photos.safetensors"}  # name -> file in q1net/weights_data/
DEFAULT_PRETRAINED = "q1net_k8_photos"


class WeightsError(Exception):
    """Weights that cannot be used; the message names the file and what is wrong."""


@dataclass
class LoadedNet:
    net: Q1Network
    meta: dict = field(default_factory=dict)  # net config, geometry, tau, calibration, version, recipe, metrics

    @property
    def tau(self) -> float | None:
        return self.meta.get("tau")

    @property
    def calibration(self) -> Calibration:
        """The tuned quality map (q1net.predictor.calibration); the identity for checkpoints and older weights."""
        return Calibration.from_dict(self.meta.get("calibration"))


def _check_geometry(path: str | os.PathLike[str], geometry: dict | None) -> None:
    if geometry is not None and geometry != GEOMETRY.as_dict():
        raise WeightsError(f"{os.fsdecode(path)}: trained for patch geometry {geometry}, this q1net uses {GEOMETRY.as_dict()}")


def _check_version(path: str | os.PathLike[str], version: str | None) -> None:
    if version is not None and version != __version__:
        warnings.warn(f"{os.fsdecode(path)}: written by q1net {version}, this is q1net {__version__}", stacklevel=3)


def _build(path: str | os.PathLike[str], config: dict, state_dict: dict[str, torch.Tensor]) -> Q1Network:
    try:
        net = Q1Network(Q1NetConfig(**config))
    except TypeError as error:
        raise WeightsError(f"{os.fsdecode(path)}: unknown network settings {config} ({error})") from None
    try:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shapes that differ: name the first few
        sizes = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise WeightsError(f"{os.fsdecode(path)}: weights do not fit {config}: {'; '.join(sizes[:2])}") from None
    if missing or unexpected:
        raise WeightsError(f"{os.fsdecode(path)}: weights do not fit {config}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net.eval()


def save_weights(net: Q1Network, path: str | os.PathLike[str], meta: dict) -> None:
    """Write `net` as safetensors with `meta` (JSON-able) and the architecture in the file's metadata."""
    full = {"net": net.config.as_dict(), "geometry": GEOMETRY.as_dict(), "q1net_version": __version__} | meta
    tensors = {name: tensor.detach().contiguous() for name, tensor in net.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={"q1net": json.dumps(full)})


def load_weights(path: str | os.PathLike[str]) -> LoadedNet:
    """A net from a safetensors file written by `save_weights`."""
    try:
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as file:
            metadata = file.metadata() or {}
        state_dict = load_file(os.fspath(path))
    except FileNotFoundError:
        raise WeightsError(f"{os.fsdecode(path)}: no such file") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{os.fsdecode(path)}: not a safetensors weights file ({error})") from None
    if "q1net" not in metadata:
        raise WeightsError(f"{os.fsdecode(path)}: safetensors file without q1net metadata")
    meta = json.loads(metadata["q1net"])
    _check_geometry(path, meta.get("geometry"))
    _check_version(path, meta.get("q1net_version"))
    try:
        Calibration.from_dict(meta.get("calibration"))
    except ValueError as error:
        raise WeightsError(f"{os.fsdecode(path)}: {error}") from None
    return LoadedNet(_build(path, meta["net"], state_dict), meta)


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedNet:
    """A net from a Lightning training checkpoint, read with weights_only=True (no code is unpickled)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{os.fsdecode(path)}: no such file") from None
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling refused"
        raise WeightsError(f"{os.fsdecode(path)}: refused, the checkpoint holds more than plain data ({first_line})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise WeightsError(f"{os.fsdecode(path)}: not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "q1net" not in checkpoint:
        raise WeightsError(f"{os.fsdecode(path)}: not a q1net training checkpoint (no state_dict / q1net entry)")
    meta = dict(checkpoint["q1net"])
    _check_geometry(path, meta.get("geometry"))
    _check_version(path, meta.get("version"))
    prefix = "net."
    state_dict = {name[len(prefix) :]: tensor for name, tensor in checkpoint["state_dict"].items() if name.startswith(prefix)}
    meta["global_step"] = checkpoint.get("global_step")
    return LoadedNet(_build(path, meta["net"], state_dict), meta)


def load_net_file(path: str | os.PathLike[str]) -> LoadedNet:
    """Safetensors weights written by q1net, or a Lightning training checkpoint (anything else)."""
    return load_weights(path) if os.fspath(path).endswith(".safetensors") else load_checkpoint(path)


def pretrained_path(name: str = DEFAULT_PRETRAINED) -> Path:
    if name not in PRETRAINED:
        raise WeightsError(f"unknown pretrained weights {name!r}; shipped: {', '.join(PRETRAINED)}")
    return Path(str(resources.files("q1net") / "weights_data" / PRETRAINED[name]))


def pack_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tau: float,
    recipe: str | None = None,
    calibration: Calibration | None = None,
) -> dict:
    """A shippable safetensors file with tau, the calibration and the recipe in its metadata.

    `checkpoint` is a training checkpoint, or weights packed before (to ship them with a
    new tau or calibration: their step, training version and recipe are kept).
    """
    loaded = load_net_file(checkpoint)
    earlier = loaded.meta
    meta = {"tau": tau, "global_step": earlier.get("global_step"), "trained_with": earlier.get("trained_with", earlier.get("version"))}
    if calibration is not None and not calibration.is_identity:
        meta["calibration"] = calibration.as_dict()
    if recipe is not None:
        meta["recipe"] = {"config": os.fsdecode(recipe), "text": Path(recipe).read_text()}
    elif "recipe" in earlier:
        meta["recipe"] = earlier["recipe"]
    save_weights(loaded.net, out, meta)
    return meta
