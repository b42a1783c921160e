"""`make bench`'s program section: where the whole-predictor program (q1net.predictor.program) spends its time, eager
and in each exported form, on the regions of one decoded photo (256 at the default 16 x 16).

- eager: what `Predictor` runs (the program, its network on the predictor's engine) in all, and its top operators
  by self time (torch.profiler); the same with grid detection and the lattice fit compiled (`--engine compiled`);
- ONNX Runtime: the program exported whole (`q1net export --program hybrid --format onnx`), in all and by operator
  type (ONNX Runtime's own profile), taking turns with eager (their paired ratio), and the export's one-off seconds;
- ExecuTorch XNNPACK: the whole-predictor program beside the network-only program on the same patches, its
  first stages exported alone (grid detection; detection and the lattice fit), and the forensic modules alone on
  the arguments they get in the program (the grid detector, the lattice verifier, its declipper), all taking turns;
- ExecuTorch Vulkan: how much of the program its delegates take, lowered either way (the network alone; every
  operator the partitioner supports): operators in them, and those left to the portable kernels, by type. Its
  kernels do not run here (the pip runtime has no Vulkan backend).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from q1net.tools.bench import paired_ratio, timed_in_turn

TOP = 10  # operators listed per engine


def engines_in_turn(predictor, inputs: tuple[torch.Tensor, ...], scratch: Path, repeats: int) -> dict:
    """The program as `Predictor.gather` runs it (eager, the network on its engine, then the rules), the same with its
    grid and lattice stage compiled, and exported whole to ONNX Runtime (the torch thread count), taking turns: the
    paired ratios are what `--engine auto` weighs against each one-off cost (q1net.predictor.engines). Eager and ONNX
    Runtime with their top operators (torch.profiler; ONNX Runtime's own profile, by operator type)."""
    import onnxruntime

    from q1net.export.formats import export_hybrid_onnx
    from q1net.predictor.engines import make_locator

    program = predictor.program
    locator = make_locator(program, "compiled")

    @torch.no_grad()
    def eager() -> None:
        program.decide(program.evidence(*inputs, predictor.network))

    @torch.no_grad()
    def compiled() -> None:
        program.decide(program.evidence(*inputs, predictor.network, locator))

    start = time.perf_counter()
    path = export_hybrid_onnx(program, scratch / "program.onnx")
    export_seconds = time.perf_counter() - start
    feeds = {name: tensor.numpy() for name, tensor in zip(("regions", "rows", "cols"), inputs, strict=True)}

    def session(profiling: bool) -> onnxruntime.InferenceSession:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        options.enable_profiling = profiling
        if profiling:
            options.profile_file_prefix = str(scratch / "ort-profile")
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    plain = session(False)
    times = timed_in_turn({"eager": eager, "compiled": compiled, "onnxruntime": lambda: plain.run(None, feeds)}, repeats)
    return {
        "eager": {"seconds": statistics.median(times["eager"]), "top": eager_top(eager, repeats)},
        "compiled": {"seconds": statistics.median(times["compiled"]), "over_eager": paired_ratio(times["compiled"], times["eager"])},
        "onnxruntime": {
            "seconds": statistics.median(times["onnxruntime"]),
            "top": onnx_runtime_top(session(True), feeds, repeats),
            "export_seconds": export_seconds,
            "over_eager": paired_ratio(times["onnxruntime"], times["eager"]),
        },
    }


def eager_top(run, repeats: int) -> list[dict]:
    """The top operators of `run` by self time per call (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for _ in range(repeats):
            run()
    events = sorted(profiled.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
    return [{"operator": e.key, "ms": e.self_cpu_time_total / 1000 / repeats, "calls": e.count // repeats} for e in events]


def onnx_runtime_top(profiled, feeds: dict, repeats: int) -> list[dict]:
    """The top operator types of a profiling ONNX Runtime session over `repeats` + 1 runs, ms per run."""
    for _ in range(repeats + 1):
        profiled.run(None, feeds)
    by_type: Counter = Counter()
    for event in json.loads(Path(profiled.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_type[event["args"]["op_name"]] += event["dur"]
    return [{"operator": name, "ms": micros / 1000 / (repeats + 1)} for name, micros in by_type.most_common(TOP)]


class FirstStages(nn.Module):
    """The program's grid detection, and with `fit` the lattice fit after it, as a program of its own: what the whole
    program spends before the network, timed alone in a runtime. Returns every tensor the stages give the rest."""

    def __init__(self, program, fit: bool) -> None:
        super().__init__()
        self.program, self.fit = program, fit

    def forward(self, regions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
        phase, read_once = self.program.detect(regions, rows, cols)
        return (*phase, read_once, *self.program.fit(regions, phase, read_once)) if self.fit else (*phase, read_once)


class Flattened(nn.Module):
    """`module` called with arguments given as the leaves of `spec` and its answer as a flat tuple: a program's
    inputs and outputs are tensors, not the NamedTuples the forensic modules take and give."""

    def __init__(self, module: nn.Module, spec: TreeSpec) -> None:
        super().__init__()
        self.module, self.spec = module, spec

    def forward(self, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tree_flatten(self.module(*tree_unflatten(list(leaves), self.spec)))[0])


def forensic_modules(program, inputs: tuple[torch.Tensor, ...]) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """The grid detector, the lattice verifier and its declipper, each `Flattened` with the arguments it gets in one
    eager run of the program's forensic stage on `inputs` (recorded by forward pre-hooks)."""
    modules = {"grid": program.grid, "lattice": program.lattice, "declipper": program.lattice.declip}
    recorded: dict[str, tuple] = {}

    def record(name: str, _module: nn.Module, args: tuple) -> None:
        recorded.setdefault(name, args)

    hooks = [module.register_forward_pre_hook(partial(record, name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            program.locate(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    parts = {}
    for name, module in modules.items():
        leaves, spec = tree_flatten(recorded[name])
        parts[name] = (Flattened(module, spec), tuple(leaves))
    return parts


def xnnpack_pte(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: Path) -> Path:
    """`module` lowered to ExecuTorch with XNNPACK taking what it supports, written to `out`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(module.eval(), inputs)
    out.write_bytes(to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    return out


def xnnpack(program, inputs: tuple[torch.Tensor, ...], patches: np.ndarray, scratch: Path, repeats: int) -> dict:
    """Seconds of the XNNPACK whole-predictor program, of its first stages alone (`FirstStages`), of its forensic
    modules alone (`forensic_modules`: `{name}_module_seconds`) and of the network-only XNNPACK program on the same
    patches."""
    from q1net.export.formats import export_pte, lower_hybrid, write_hybrid_pte
    from q1net.export.parity import pte_runner
    from q1net.predictor.engines import program_runner

    whole = program_runner(write_hybrid_pte(program, lower_hybrid(program, "xnnpack"), scratch / "program_xnnpack.pte"))
    detect = program_runner(xnnpack_pte(FirstStages(program, fit=False), inputs, scratch / "detect_xnnpack.pte"))
    fit = program_runner(xnnpack_pte(FirstStages(program, fit=True), inputs, scratch / "detect_fit_xnnpack.pte"))
    network = pte_runner(export_pte(program.net, scratch / "network_xnnpack.pte", "xnnpack"))
    batch = torch.from_numpy(patches).float()
    programs = {name: partial(run, *inputs) for name, run in (("whole", whole), ("detect", detect), ("detect_fit", fit))}
    for name, (module, arguments) in forensic_modules(program, inputs).items():
        programs[f"{name}_module"] = partial(program_runner(xnnpack_pte(module, arguments, scratch / f"{name}_xnnpack.pte")), *arguments)
    times = timed_in_turn(programs | {"network": partial(network, batch)}, repeats)
    seconds = {f"{name}_seconds": statistics.median(series) for name, series in times.items()}
    return seconds | {"whole_over_network": paired_ratio(times["whole"], times["network"])}


def vulkan_partition(predictor) -> dict:
    """The Vulkan whole-predictor program's operators, lowered each way (q1net.export.VULKAN_DELEGATES): in
    the delegate(s), and left to the portable kernels by type."""
    from executorch.devtools.backend_debug import get_delegation_info

    from q1net.export import VULKAN_DELEGATES
    from q1net.export.formats import hybrid_program, lower_hybrid

    program = hybrid_program(predictor.net.cpu(), predictor.tau, predictor.calibration, predictor.blocks, "vulkan")
    partitions = {}
    for scope in VULKAN_DELEGATES:
        info = get_delegation_info(lower_hybrid(program, "vulkan", scope).manager.exported_program().graph_module)
        left = Counter({name: b.non_delegated for name, b in info.delegation_by_operator.items() if b.non_delegated})
        partitions[scope] = {
            "delegates": info.num_delegated_subgraphs,
            "delegated_operators": info.num_delegated_nodes,
            "portable_operators": info.num_non_delegated_nodes,
            "portable_by_type": dict(left.most_common()),
        }
    return partitions


def program_section(scratch: str, pixels: np.ndarray, repeats: int = 5) -> dict:
    """Every figure of the module docstring for the regions of `pixels` ((H, W, 3) uint8), 16 x 16 blocks."""
    from q1net.predictor.inference import BLAS, Predictor
    from q1net.predictor.program import cut_regions

    BLAS.limit(limits=1, user_api="blas")  # as Predictor.gather runs
    predictor = Predictor.from_pretrained()
    program = predictor.program
    inputs = tuple(torch.from_numpy(a) for a in cut_regions(pixels, per_side=program.per_side))
    with torch.no_grad():
        patches = program.evidence(*inputs, predictor.network).patches.numpy()
    folder = Path(scratch)
    return {
        "program": {
            "regions": len(inputs[0]),
            "patches": len(patches),
            "engine": predictor.engine.name,
            **engines_in_turn(predictor, inputs, folder, repeats),
            "xnnpack": xnnpack(program, inputs, patches, folder, repeats),
            "vulkan": vulkan_partition(predictor),
        }
    }


def markdown_lines(section: dict) -> list[str]:
    """The program section as markdown lines (ms per run)."""
    x, ort = section["xnnpack"], section["onnxruntime"]
    lines = [
        "",
        f"The whole-predictor program on {section['regions']} regions ({section['patches']} patches), ms per image: "
        f"eager (network on {section['engine']}) {1000 * section['eager']['seconds']:.1f}; grid and lattice compiled "
        f"(`--engine compiled`) {1000 * section['compiled']['seconds']:.1f} ({section['compiled']['over_eager']:.2f}x eager, "
        "taking turns); ONNX Runtime, exported whole "
        f"{1000 * ort['seconds']:.1f} ({ort['over_eager']:.2f}x eager, taking turns; the export {ort['export_seconds']:.0f} s "
        f"once); ExecuTorch XNNPACK, whole {1000 * x['whole_seconds']:.1f} against "
        f"the network alone {1000 * x['network_seconds']:.1f} ({x['whole_over_network']:.2f}x); its first stages exported "
        f"alone: grid detection {1000 * x['detect_seconds']:.1f}, detection and the lattice fit {1000 * x['detect_fit_seconds']:.1f}; "
        f"its modules alone: the grid detector {1000 * x['grid_module_seconds']:.1f}, the lattice verifier "
        f"{1000 * x['lattice_module_seconds']:.1f}, of which its declipper {1000 * x['declipper_module_seconds']:.1f}.",
        *(
            f"Vulkan program, delegating {scope}: {v['delegated_operators']} operators in {v['delegates']} delegate(s), "
            f"{v['portable_operators']} on the portable kernels ("
            + ", ".join(f"{name} {count}" for name, count in v["portable_by_type"].items())
            + ")."
            for scope, v in section["vulkan"].items()
        ),
        "",
        "| eager operator | ms | calls | ONNX Runtime operator type | ms |",
        "|---|---:|---:|---|---:|",
    ]
    for mine, theirs in zip(section["eager"]["top"], section["onnxruntime"]["top"], strict=False):
        lines.append(f"| {mine['operator']} | {mine['ms']:.1f} | {mine['calls']} | {theirs['operator']} | {theirs['ms']:.1f} |")
    return lines
