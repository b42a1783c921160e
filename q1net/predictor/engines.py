"""Where the network runs: PyTorch or ONNX Runtime, picked for speed, same answers.

On this project's 2-core CPU, ONNX Runtime runs a 256-block batch faster than
PyTorch eager (about 19-22 against 27-42 ms; `make bench` measures it on yours),
with outputs equal within 1e-3 on the 0..100 scale, 1e-5 of the sigmoid's range
(3.4e-4 at most on a 2 MP photo's blocks). "auto" therefore uses ONNX Runtime on CPU
and PyTorch on a GPU. The ONNX file is exported once per set of weights and
kept in a cache folder (Q1NET_CACHE, else $XDG_CACHE_HOME/q1net, else
~/.cache/q1net), named by a hash of the weights, written atomically so that
parallel workers can share it; any failure to export falls back to PyTorch
with a warning.

Only the network changes engine: the rest of the program (grid, lattice, rules) runs eagerly in
every case. The whole program exported to ONNX Runtime was measured against that, the two taking
turns on a 2 MP photo's 256 regions (`make bench`, program section): 1.11x the eager time (80.6
against 72.5 ms, 2026-12-03 05:33; 0.90x before the eager program stopped page-faulting its
intermediates, q1net.predictor.heap), besides a one-off export of about 30 s per set of weights;
torch.compile took minutes to compile and ran slower. So "auto" keeps the eager program.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from q1net import __version__
from q1net.nets.q1net import Q1Network

EngineName = Literal["auto", "torch", "onnxruntime"]
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime")


class Engine(Protocol):
    name: str

    def __call__(self, patches: np.ndarray) -> torch.Tensor:
        """Raw net outputs (N, alpha) for (N, 3, P, P) uint8 patches."""
        ...


class TorchEngine:
    name = "torch"

    def __init__(self, net: Q1Network, device: torch.device) -> None:
        self.net, self.device = net.eval().to(device), device

    @torch.no_grad()
    def __call__(self, patches: np.ndarray) -> torch.Tensor:
        return self.net(torch.from_numpy(patches).to(device=self.device, dtype=torch.float32)).cpu()


class OnnxEngine:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Workers spin between the network's layers but stop when a batch is done: the lattice fit and the
        # next image's decoding run on these same cores next (spinning on: a 2 MP predict 120 ms instead of 78 here).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, patches: np.ndarray) -> torch.Tensor:
        (outputs,) = self.session.run(None, {self.input: patches.astype(np.float32)})
        return torch.from_numpy(outputs)


def cache_dir() -> Path:
    root = os.environ.get("Q1NET_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "q1net")
    return Path(root)


def weights_digest(net: Q1Network) -> str:
    """A name for these exact weights, architecture and exporter (torch and q1net versions)."""
    digest = hashlib.sha256(f"{net.config.as_dict()}|{torch.__version__}|{__version__}".encode())
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_onnx(net: Q1Network) -> Path:
    """The net as ONNX in the cache, exported on first use."""
    from q1net.nets.onnx import network_onnx

    path = cache_dir() / "onnx" / f"q1net-{weights_digest(net)}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            exported = network_onnx(net, Path(scratch) / path.name)
            os.replace(exported, path)  # atomic: a parallel worker sees no file or a whole one
    return path


def make_engine(net: Q1Network, engine: EngineName = "auto", device: torch.device | None = None) -> Engine:
    """The engine asked for; "auto" is ONNX Runtime on CPU (faster there) and PyTorch elsewhere."""
    device = device or torch.device("cpu")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "torch" or (engine == "auto" and device.type != "cpu"):
        return TorchEngine(net, device)
    if device.type != "cpu":
        raise ValueError(f"the onnxruntime engine runs on the CPU, not {device}")
    try:
        return OnnxEngine(cached_onnx(net), torch.get_num_threads())
    except Exception as error:
        if engine == "onnxruntime":
            raise
        warnings.warn(f"ONNX Runtime unavailable ({type(error).__name__}: {error}); using PyTorch", stacklevel=2)
        return TorchEngine(net, device)


def program_runner(path: Path):
    """An exported program (q1net.predictor.program, written by `q1net export`) run by its runtime here:
    ONNX Runtime for .onnx, the ExecuTorch runtime for .pte (XNNPACK and portable kernels; the pip runtime
    has no Vulkan backend). Returns (regions, rows, cols) tensors -> the program's output tensors."""
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(torch.from_numpy(o) for o in session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)}))

        return run_onnx
    if path.suffix == ".pte":
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(path)).load_method("forward")
        return lambda *inputs: tuple(method.execute(list(inputs)))
    raise ValueError(f"{path}: not an exported program (.onnx or .pte)")
