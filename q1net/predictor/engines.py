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

The forensic stage (grid detection and the lattice fit, `Q1Program.locate`: hundreds of element-wise
operators that eager torch runs one at a time) has an engine of its own, "compiled": compiled ahead of time
by Inductor (torch.export, then AOTInductor: fused C++ loops) into a package in the same cache, built on
first use (35-45 s here, once per q1net source, torch version and block count) and loaded in milliseconds
after. On a 2 MP photo's 256 regions it takes 11-19 ms against 20-45 eager (2 threads; `make bench`),
and the network runs on ONNX Runtime beside it. "auto" uses it when its package is already in the cache
(`--engine compiled` builds it once), and otherwise the eager stage: a one-image `q1net predict` should
not wait for a compiler. (The whole program exported to ONNX Runtime ran at 0.98-1.11x the eager one,
and torch.compile of the whole program, network included, compiled for minutes and ran slower.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from q1net import __version__
from q1net.atomic import write_atomically
from q1net.environment import environment
from q1net.forensics.grid import GridPhase
from q1net.forensics.lattice import LatticeFit
from q1net.nets.q1net import Q1Network
from q1net.predictor.program import Q1Program

EngineName = Literal["auto", "torch", "onnxruntime", "compiled"]
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "compiled")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the q1net sources a compiled stage is built from
UNUSED_DAYS = 30  # a compiled stage not loaded for this long is removed when another one is built
LOG = logging.getLogger(__name__)  # the one-off builds are announced here: a first predict otherwise waits in silence
Located = tuple[GridPhase, LatticeFit, torch.Tensor, torch.Tensor]  # Q1Program.locate's answer


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
        LOG.info("exporting the network to ONNX for ONNX Runtime, once for these weights (20-30 s here): %s", path)
        write_atomically(path, lambda temporary: network_onnx(net, temporary))  # a parallel worker sees no file or a whole one
    return path


def make_engine(net: Q1Network, engine: EngineName = "auto", device: torch.device | None = None) -> Engine:
    """The network's engine; "auto" (and "compiled") is ONNX Runtime on CPU (faster there) and PyTorch elsewhere."""
    device = device or torch.device("cpu")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "torch" or (engine == "auto" and device.type != "cpu"):
        return TorchEngine(net, device)
    if device.type != "cpu":
        raise ValueError(f"the {engine} engine runs on the CPU, not {device}")
    try:
        return OnnxEngine(cached_onnx(net), torch.get_num_threads())
    except Exception as error:
        if engine != "auto":
            raise
        warnings.warn(f"ONNX Runtime unavailable ({type(error).__name__}: {error}); using PyTorch", stacklevel=2)
        return TorchEngine(net, device)


class Locator(nn.Module):
    """`Q1Program.locate` with its answer as a flat tuple of tensors, the outputs AOTInductor packages hold."""

    def __init__(self, program: Q1Program) -> None:
        super().__init__()
        self.program = program

    def forward(self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
        phase, fit, read_once, found = self.program.locate(regions, rows, cols)
        return (*phase, *fit, read_once, found)


def located(outputs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> Located:
    """`Locator`'s flat outputs as `Q1Program.locate` answers them."""
    phase_end = len(GridPhase._fields)
    fit_end = phase_end + len(LatticeFit._fields)
    return GridPhase(*outputs[:phase_end]), LatticeFit(*outputs[phase_end:fit_end]), outputs[fit_end], outputs[fit_end + 1]


def sources_digest(program: Q1Program) -> str:
    """A name for the compiled stage: every q1net source file (any edit may change what `locate` computes), the torch
    version, the CPU's vector instructions the C++ was built for (a cache shared with an older CPU must not load
    AVX-512 code), and the program's shapes (regions and blocks per side)."""
    build = (torch.__version__, torch.backends.cpu.get_cpu_capability(), __version__, program.per_side, program.blocks)
    digest = hashlib.sha256("|".join(map(str, build)).encode())
    for source in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(source.relative_to(PACKAGE_ROOT).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:24]


def locator_path(program: Q1Program) -> Path:
    return cache_dir() / "compiled" / f"locate-{sources_digest(program)}.pt2"


def cached_locator(program: Q1Program) -> Path:
    """The program's forensic stage compiled by AOTInductor, in the cache; built on first use (about 40 s here)."""
    path = locator_path(program)
    if not path.is_file():
        LOG.info("compiling grid detection and the lattice fit, once for this q1net and torch (35-45 s here): %s", path)
        n, side = program.per_side, program.geometry.side
        starts = torch.from_numpy(program.geometry.starts(n * side, n))  # any values: the stage's shapes are fixed
        example = (torch.zeros(n * n, 3, side, side, dtype=torch.uint8), starts, starts)
        with torch.no_grad():
            exported = torch.export.export(Locator(program).eval(), example)
        from torch._inductor import aoti_compile_and_package

        write_atomically(path, lambda temporary: aoti_compile_and_package(exported, package_path=temporary))
        remove_unused(path.parent, keep=path)
    return path


def remove_unused(folder: Path, keep: Path) -> None:
    """Remove the compiled stages in `folder` not loaded for UNUSED_DAYS (`make_locator` touches a package it loads):
    every q1net source, torch version or block count builds its own, and an upgrade leaves the old ones behind."""
    cutoff = time.time() - UNUSED_DAYS * 86400
    for package in folder.glob("locate-*.pt2"):
        with contextlib.suppress(OSError):  # another process may be removing it, or the cache may be read-only
            if package != keep and package.stat().st_mtime < cutoff:
                package.unlink()


def load_package(path: Path) -> Callable[..., list[torch.Tensor]]:
    """An AOTInductor package loaded into this process, leaving nothing on disk. The loader extracts the package's
    shared library into a new folder under TMPDIR and removes it only when it is destroyed, which never happens in
    a process ended by a signal or os._exit (`q1net predict --workers`'s pool workers): 3.4 MB left in /tmp every
    time. The library is read while loading, so it is extracted into a folder of ours, removed once loaded."""
    from torch._inductor import aoti_load_package

    with tempfile.TemporaryDirectory(prefix="q1net-load-") as scratch, environment(TMPDIR=scratch):
        return aoti_load_package(str(path))


class CompiledLocator:
    """A loaded package of `cached_locator`, called as `Q1Program.locate` is."""

    def __init__(self, package: Callable[..., list[torch.Tensor]]) -> None:
        self.package = package

    def __call__(self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> Located:
        return located(self.package(regions, rows, cols))


def make_locator(
    program: Q1Program, engine: EngineName = "auto", device: torch.device | None = None
) -> CompiledLocator | Callable[..., Located]:
    """What runs the program's forensic stage: the compiled package ("compiled", or "auto" when it is already in
    the cache, on CPU), else the eager `program.locate`."""
    device = device or torch.device("cpu")
    if device.type != "cpu" or engine not in ("auto", "compiled"):
        return program.locate
    if engine == "auto" and not locator_path(program).is_file():
        return program.locate
    try:
        path = cached_locator(program)
        compiled = load_package(path)
        with contextlib.suppress(OSError):  # a read-only cache is still used
            os.utime(path)  # last used now: `remove_unused` keeps it
    except Exception as error:
        if engine == "compiled":
            raise
        warnings.warn(f"the compiled stage is unusable ({type(error).__name__}: {error}); running it eagerly", stacklevel=2)
        return program.locate
    return CompiledLocator(compiled)


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
