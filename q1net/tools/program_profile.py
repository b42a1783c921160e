"""`make bench`'s program section: where the whole-predictor program (q1net.predictor.program) spends its time, eager
and in each exported form, on the regions of one decoded photo (256 at the default 16 x 16).

- eager: what `Predictor` runs (the program, its network on the predictor's engine) in all, and its top operators
  by self time (torch.profiler);
- ONNX Runtime: the program exported whole (`q1net export --program hybrid --format onnx`), in all and by operator
  type (ONNX Runtime's own profile);
- ExecuTorch XNNPACK: the whole-predictor program beside the network-only program on the same patches, the
  two taking turns;
- ExecuTorch Vulkan: how much of the program its delegate takes (operators in it, and those left to the
  portable kernels, by type). Its kernels do not run here (the pip runtime has no Vulkan backend).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from q1net.tools.bench import paired_ratio, timed, timed_in_turn

TOP = 10  # operators listed per engine


def eager(predictor, inputs: tuple[torch.Tensor, ...], repeats: int) -> dict:
    """Seconds of the program as `Predictor.gather` runs it (evidence, network on its engine, then the rules), and the
    top operators by self time per run."""
    from torch.profiler import ProfilerActivity, profile

    program = predictor.program

    @torch.no_grad()
    def run() -> None:
        program.decide(program.evidence(*inputs, predictor.network))

    seconds = timed(run, repeats)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for _ in range(repeats):
            run()
    events = sorted(profiled.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
    top = [{"operator": e.key, "ms": e.self_cpu_time_total / 1000 / repeats, "calls": e.count // repeats} for e in events]
    return {"seconds": seconds, "top": top}


def onnx_runtime(program, inputs: tuple[torch.Tensor, ...], scratch: Path, repeats: int) -> dict:
    """Seconds of the program exported whole to ONNX on ONNX Runtime (the torch thread count), and its top operator types."""
    import onnxruntime

    from q1net.export.formats import export_hybrid_onnx

    path = export_hybrid_onnx(program, scratch / "program.onnx")
    feeds = {name: tensor.numpy() for name, tensor in zip(("regions", "rows", "cols"), inputs, strict=True)}

    def session(profiling: bool) -> onnxruntime.InferenceSession:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        options.enable_profiling = profiling
        if profiling:
            options.profile_file_prefix = str(scratch / "ort-profile")
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    plain = session(False)
    seconds = timed(lambda: plain.run(None, feeds), repeats)
    profiled = session(True)
    for _ in range(repeats + 1):
        profiled.run(None, feeds)
    by_type: Counter = Counter()
    for event in json.loads(Path(profiled.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_type[event["args"]["op_name"]] += event["dur"]
    runs = repeats + 1
    top = [{"operator": name, "ms": micros / 1000 / runs} for name, micros in by_type.most_common(TOP)]
    return {"seconds": seconds, "top": top}


def xnnpack(program, inputs: tuple[torch.Tensor, ...], patches: np.ndarray, scratch: Path, repeats: int) -> dict:
    """Seconds of the XNNPACK whole-predictor program and of the network-only XNNPACK program on the same patches."""
    from q1net.export.formats import export_pte, lower_hybrid, write_hybrid_pte
    from q1net.export.parity import pte_runner
    from q1net.predictor.engines import program_runner

    whole = program_runner(write_hybrid_pte(program, lower_hybrid(program, "xnnpack"), scratch / "program_xnnpack.pte"))
    network = pte_runner(export_pte(program.net, scratch / "network_xnnpack.pte", "xnnpack"))
    batch = torch.from_numpy(patches).float()
    times = timed_in_turn({"whole": lambda: whole(*inputs), "network": lambda: network(batch)}, repeats)
    return {
        "whole_seconds": statistics.median(times["whole"]),
        "network_seconds": statistics.median(times["network"]),
        "whole_over_network": paired_ratio(times["whole"], times["network"]),
    }


def vulkan_partition(predictor) -> dict:
    """The Vulkan whole-predictor program's operators: in the delegate(s), and left to the portable kernels by type."""
    from executorch.devtools.backend_debug import get_delegation_info

    from q1net.export.formats import hybrid_program, lower_hybrid

    program = hybrid_program(predictor.net.cpu(), predictor.tau, predictor.calibration, predictor.blocks, "vulkan")
    info = get_delegation_info(lower_hybrid(program, "vulkan").manager.exported_program().graph_module)
    left = Counter({name: b.non_delegated for name, b in info.delegation_by_operator.items() if b.non_delegated})
    return {
        "delegates": info.num_delegated_subgraphs,
        "delegated_operators": info.num_delegated_nodes,
        "portable_operators": info.num_non_delegated_nodes,
        "portable_by_type": dict(left.most_common()),
    }


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
            "eager": eager(predictor, inputs, repeats),
            "onnxruntime": onnx_runtime(program, inputs, folder, repeats),
            "xnnpack": xnnpack(program, inputs, patches, folder, repeats),
            "vulkan": vulkan_partition(predictor),
        }
    }


def markdown_lines(section: dict) -> list[str]:
    """The program section as markdown lines (ms per run)."""
    x, v = section["xnnpack"], section["vulkan"]
    lines = [
        "",
        f"The whole-predictor program on {section['regions']} regions ({section['patches']} patches), ms per image: "
        f"eager (network on {section['engine']}) {1000 * section['eager']['seconds']:.1f}; ONNX Runtime, exported whole "
        f"{1000 * section['onnxruntime']['seconds']:.1f}; ExecuTorch XNNPACK, whole {1000 * x['whole_seconds']:.1f} against "
        f"the network alone {1000 * x['network_seconds']:.1f} ({x['whole_over_network']:.2f}x).",
        f"Vulkan program: {v['delegated_operators']} operators in {v['delegates']} delegate(s), {v['portable_operators']} on the "
        "portable kernels (" + ", ".join(f"{name} {count}" for name, count in v["portable_by_type"].items()) + ").",
        "",
        "| eager operator | ms | calls | ONNX Runtime operator type | ms |",
        "|---|---:|---:|---|---:|",
    ]
    for mine, theirs in zip(section["eager"]["top"], section["onnxruntime"]["top"], strict=False):
        lines.append(f"| {mine['operator']} | {mine['ms']:.1f} | {mine['calls']} | {theirs['operator']} | {theirs['ms']:.1f} |")
    return lines
