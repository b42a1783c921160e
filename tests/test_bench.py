"""The benchmark's pieces run and its report is complete; no timing is asserted (that is what `make bench` is for)."""

import numpy as np
import pytest

from q1net.predictor.engines import make_engine
from q1net.predictor.inference import Predictor
from q1net.tools.bench import ENGINES, markdown, network_gflop, paired_ratio, ratios, stage_times, timed, timed_in_turn
from q1net.tools.program_profile import markdown_lines, program_section


def test_network_flops_are_counted():
    net = Predictor.from_pretrained(engine="torch").net
    assert 3.5 < network_gflop(net, 256) < 4.5  # about 7.6 M multiply-adds a 16x16 patch
    assert np.isclose(network_gflop(net, 512), 2 * network_gflop(net, 256))


def test_stage_times_cover_every_stage(photo):
    predictor = Predictor.from_pretrained(engine="torch", blocks=4)
    runners = {"torch": make_engine(predictor.net, "torch")}
    stages = stage_times(predictor, runners, photo, repeats=1, compiled=predictor.program.locate)  # any runner of locate
    assert set(stages) == {"grid", "sampling", "network_torch", "post", "lattice", "compiled_stage"}
    assert all(np.isfinite(v) and v >= 0 for v in stages.values())
    assert timed(lambda: None, 2) >= 0


def fake_results() -> dict:
    stage = {"decode": 0.02, "grid": 0.001, "sampling": 0.001, "post": 0.0001, "lattice": 0.004, "compiled_stage": 0.003}
    stage |= {f"network_{e}": 0.01 for e in ENGINES}
    latency = [{"size": s, "pixels": 1, "file": f} | stage for s in ("0.5MP", "2MP", "12MP") for f in ("png", "jpeg")]
    network = {"onnxruntime_speedup": 1.25}
    blocks = [{"blocks": b, "patches": b * b, "sampling": 0.001} | {f"network_{e}": 0.01 * b for e in ENGINES} | network for b in (4, 16)]
    return {
        "machine": {"date": "2026-11-25", "cpu": "test cpu", "cores": 2, "python": "3.11", "versions": {"torch": "x"}},
        "latency": latency,
        "blocks": blocks,
        "network_gflop": 3.9,
        "compile_seconds": 41.0,
        "throughput": [
            {"file": f, "workers": w, "images": 12, "wall_s": 6.0, "start_s": 2.0, "images_per_s": 2.0}
            | {"steady_images_per_s": 2.75 * w, "peak_mb": 900.0}
            for f in ("png", "jpeg")
            for w in (1, 2)
        ],
        "training": {"data_one_stream": 3000.0, "data_workers": 2, "data_all_workers": 6000.0, "train_step": 1500.0},
        "peak_mb": {"latency": 800.0, "training": 700.0},
        "program": {
            "regions": 256,
            "patches": 256,
            "engine": "onnxruntime",
            "eager": {"seconds": 0.2, "top": [{"operator": "aten::exp", "ms": 40.0, "calls": 28}]},
            "compiled": {"seconds": 0.16, "over_eager": 0.8},
            "onnxruntime": {"seconds": 0.15, "top": [{"operator": "Conv", "ms": 38.0}], "export_seconds": 31.0, "over_eager": 0.93},
            "xnnpack": {
                "whole_seconds": 0.14,
                "network_seconds": 0.028,
                "detect_seconds": 0.01,
                "detect_fit_seconds": 0.09,
                "grid_module_seconds": 0.008,
                "lattice_module_seconds": 0.07,
                "declipper_module_seconds": 0.02,
                "whole_over_network": 5.0,
            },
            "vulkan": {
                "network": {
                    "delegates": 1,
                    "delegated_operators": 40,
                    "portable_operators": 700,
                    "portable_by_type": {"aten_exp_default": 30},
                },
                "all": {
                    "delegates": 9,
                    "delegated_operators": 600,
                    "portable_operators": 140,
                    "portable_by_type": {"aten_topk_default": 5},
                },
            },
        },
    }


def test_ratios_and_table():
    results = fake_results()
    results["ratios"] = ratios(results)
    assert results["ratios"]["dataloader_over_train_step"] == 4.0
    assert results["ratios"]["onnxruntime_speedup_over_eager"] == 1.25
    assert results["ratios"]["verifier_over_network"] == 0.4  # lattice 4 ms against the network's 10
    # grid and lattice: the compiled 3 ms beat eager 1 + 4; with the rules, against the network's 10
    assert np.isclose(results["ratios"]["grid_lattice_rules_over_network"], (0.003 + 0.0001) / 0.01)
    assert np.isclose(results["ratios"]["predict_overhead_over_decode"], (0.001 + 0.01 + 0.0001 + 0.003) / 0.02)
    assert np.isclose(results["ratios"]["cnn_only_overhead_over_decode"], (0.001 + 0.001 + 0.01 + 0.0001) / 0.02)
    table = markdown(results)
    assert (
        "test cpu, 2 cores" in table
        and "| 12MP | jpeg |" in table
        and "| 16 | 256 |" in table
        and "| png | 1 | 12 | 6.0 | 2.0 | 2.00 | 2.75 | 900 |" in table
        and "| jpeg | 2 | 12 | 6.0 | 2.0 | 2.00 | 5.50 | 900 |" in table
    )
    assert results["ratios"]["folder_jpeg_images_per_s"] == 5.5  # the JPEG folder with the most workers
    assert table.count("| predict_overhead_over_decode |") == 1
    assert results["ratios"]["network_over_decode"] == 0.5  # the network alone, 10 ms, against a 20 ms decode
    assert "The network on 256 patches: 3.90 GFLOP (a multiply-add is two), 24 GFLOP/s" in table  # 160 ms at 16 blocks
    assert results["ratios"]["program_ms"] == 150.0 and results["ratios"]["xnnpack_program_over_network"] == 5.0
    assert "its first stages exported alone: grid detection 10.0, detection and the lattice fit 90.0;" in table
    assert "its modules alone: the grid detector 8.0, the lattice verifier 70.0, of which its declipper 20.0." in table
    assert "| aten::exp | 40.0 | 28 | Conv | 38.0 |" in table and "(0.93x eager, taking turns; the export 31 s once)" in table
    assert "grid and lattice compiled (`--engine compiled`) 160.0 (0.80x eager, taking turns)" in table
    assert "built once in 41 s" in table and "| 2MP | png | 20.0 | 1.0 | 1.0 |" in table
    assert "delegating network: 40 operators in 1 delegate(s), 700 on the portable kernels (aten_exp_default 30)" in table
    assert "delegating all: 600 operators in 9 delegate(s), 140 on the portable kernels (aten_topk_default 5)" in table


def test_functions_take_turns_and_ratios_pair_rounds():
    calls = []
    times = timed_in_turn({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "a", "b", "b"] * 3 and all(len(series) == 3 for series in times.values())  # an untimed call, a timed one
    assert paired_ratio([2.0, 9.0, 4.0], [1.0, 3.0, 1.0]) == 3.0  # the median of 2, 3, 4: drift between rounds cancels


@pytest.mark.slow
def test_program_section_profiles_every_form(photo, tmp_path):
    """Eager and ONNX Runtime top operators, XNNPACK whole against the network alone, the Vulkan partition."""
    section = program_section(str(tmp_path), photo, repeats=1)["program"]
    assert section["regions"] == 256 and section["patches"] == 256
    assert section["eager"]["top"] and section["onnxruntime"]["top"] and section["compiled"]["over_eager"] > 0
    assert section["onnxruntime"]["over_eager"] > 0 and section["onnxruntime"]["export_seconds"] > 0
    xnnpack = section["xnnpack"]
    modules = ("grid_module", "lattice_module", "declipper_module")
    assert all(xnnpack[f"{name}_seconds"] > 0 for name in ("whole", "network", "detect", "detect_fit", *modules))
    network, everything = section["vulkan"]["network"], section["vulkan"]["all"]
    assert network["delegates"] == 1 and everything["delegates"] > 1
    assert everything["delegated_operators"] > network["delegated_operators"]
    assert everything["portable_operators"] < network["portable_operators"]
    for partition in (network, everything):
        assert partition["portable_operators"] == sum(partition["portable_by_type"].values())
    assert "ONNX Runtime operator type" in "\n".join(markdown_lines(section))
