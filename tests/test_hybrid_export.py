"""The whole predictor as exported programs (issue #14): the same answers as `q1net predict` on small generated
images, through ONNX Runtime and the ExecuTorch runtime, and the network in one VulkanBackend delegate (or every
operator Vulkan supports in many)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from q1net import Predictor
from q1net.data.sources import GraphicsSource, SyntheticSource
from q1net.export import VULKAN_DELEGATES
from q1net.export.formats import hybrid_program, lower_hybrid, write_hybrid_pte
from q1net.export.hybrid import HybridTarget, export_hybrid, parity_cases, vulkan_partition
from q1net.export.parity import ParityError
from q1net.predictor.program import ANSWER_FIELDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained()


@pytest.fixture(scope="module")
def cases() -> list[np.ndarray]:
    """Generated pictures (a photo-like one, a page of text) at a low, a middle and a high quality, aligned and cropped."""
    pictures = [SyntheticSource(count=1, size=200, seed=3).load(0), GraphicsSource(count=1, size=192, seed=2, kinds=("text",)).load(0)]
    return parity_cases(pictures, (8, 55, 93))


def expected_answers(predictor: Predictor, cases: list[np.ndarray]) -> list[tuple[float, str]]:
    results = [predictor.predict(pixels) for pixels in cases]
    return [(result.quality, result.method) for result in results]


def test_hybrid_onnx_answers_as_predict_does(predictor, cases, tmp_path):
    row = export_hybrid(predictor, HybridTarget("onnx"), tmp_path, cases, expected_answers(predictor, cases))
    assert row["images"] == len(cases) == 12 and row["quality_within"] == 1.0 and row["method_agrees"] == 1.0
    meta = json.loads((tmp_path / "q1net_hybrid.onnx.json").read_text())
    assert meta["input"]["tensors"][0] == {"name": "regions", "shape": [256, 3, 24, 24], "dtype": "uint8"}
    assert meta["outputs"]["answer_fields"][:4] == ["quality", "quality_low", "quality_high", "determined"]
    assert "8 * floor((2i + 1) * A / (2n))" in meta["input"]["cutting_rule"] and meta["parity"]["quality_within"] == 1.0


def test_predict_with_the_program_prints_the_same_rows(predictor, cases, tmp_path):
    program = export_hybrid(predictor, HybridTarget("onnx"), tmp_path / "exports", cases[:1], expected_answers(predictor, cases[:1]))
    assert program["quality_within"] == 1.0
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, pixels in enumerate(cases[::3]):
        Image.fromarray(pixels).save(folder / f"case{index}.png")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "q1net.cli", "predict", str(folder), "--format", "json"]
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    exported = subprocess.run(
        [*command, "--program", str(tmp_path / "exports" / "q1net_hybrid.onnx")], capture_output=True, text=True, env=env, timeout=600
    )
    assert plain.returncode == exported.returncode == 0, exported.stderr[-2000:]
    fields = ("path", "quality", "quality_low", "quality_high", "determined", "method", "recompressed", "grid", "grid_sure")
    rows = [[{k: json.loads(line)[k] for k in fields} for line in run.stdout.splitlines()] for run in (plain, exported)]
    assert len(rows[0]) == 4 and rows[0] == rows[1]


@pytest.mark.slow
def test_hybrid_xnnpack_program_answers_as_predict_does(predictor, cases, tmp_path):
    row = export_hybrid(predictor, HybridTarget("pte", "xnnpack"), tmp_path, cases[:4], expected_answers(predictor, cases[:4]))
    assert row["quality_within"] == 1.0 and row["method_agrees"] == 1.0


@pytest.mark.slow
def test_hybrid_vulkan_program_holds_the_network_in_one_delegate(predictor):
    program = hybrid_program(predictor.net.cpu(), predictor.tau, predictor.calibration, predictor.blocks, "vulkan")
    lowered = lower_hybrid(program, "vulkan")
    assert lowered.structure["delegates"] == ["VulkanBackend"]

    def convolutions(graph) -> list:
        return [node for node in graph.nodes if node.op == "call_function" and "conv" in str(node.target)]

    # every convolution is the network's (the grid detector's DCT is a matrix product) and the delegate holds them all
    written = convolutions(lowered.exported.graph)
    network = [node for node in written if "MosaicQ1Net" in str(node.meta.get("nn_module_stack"))]
    assert len(network) == len(written) >= 1 and not convolutions(lowered.manager.exported_program().graph)


def test_vulkan_partition_is_checked_against_what_it_was_lowered_for(tmp_path):
    def lowered(scope: str, delegates: list[str]) -> SimpleNamespace:
        return SimpleNamespace(structure={"vulkan_delegate": scope, "delegates": delegates})

    path = tmp_path / HybridTarget("pte", "vulkan", "all").name
    assert path.name == "q1net_hybrid_vulkan_all.pte" and HybridTarget("pte", "vulkan").name == "q1net_hybrid_vulkan.pte"
    assert "one VulkanBackend delegate" in vulkan_partition(lowered("network", ["VulkanBackend"]), path)
    assert "3 VulkanBackend delegates" in vulkan_partition(lowered("all", ["VulkanBackend"] * 3), path)
    for scope, delegates in (("network", ["VulkanBackend"] * 2), ("all", ["VulkanBackend"]), ("all", ["VulkanBackend", "XnnpackBackend"])):
        with pytest.raises(ParityError, match=path.name):
            vulkan_partition(lowered(scope, delegates), path)


@pytest.mark.slow
def test_hybrid_vulkan_program_can_delegate_every_operator_vulkan_supports(predictor, tmp_path):
    """Lowered with every operator the partitioner takes, the program serialises (no infinite constant: Vulkan's
    serialiser writes JSON) and leaves far fewer operators to the portable kernels than the network-only one."""
    program = hybrid_program(predictor.net.cpu(), predictor.tau, predictor.calibration, predictor.blocks, "vulkan")
    network, everything = (lower_hybrid(program, "vulkan", scope) for scope in VULKAN_DELEGATES)

    def outside(lowered) -> int:
        graph = lowered.manager.exported_program().graph
        return sum(node.op == "call_function" and "executorch_call_delegate" not in str(node.target) for node in graph.nodes)

    delegates = everything.structure["delegates"]
    assert len(delegates) > 1 and set(delegates) == {"VulkanBackend"}
    assert outside(everything) * 4 < outside(network)
    path = write_hybrid_pte(program, everything, tmp_path / HybridTarget("pte", "vulkan", "all").name)
    assert path.stat().st_size > 0
    assert json.loads(path.with_suffix(".pte.json").read_text())["program"]["vulkan_delegate"] == "all"


def test_the_readme_lists_the_answer_fields_in_the_programs_order():
    """App developers index `answer` by the README's list: it must be the program's, in order and in number."""
    text = " ".join((ROOT / "README.md").read_text().split())
    listed = text.split("Outputs: `answer` (", 1)[1].split("), then", 1)[0]
    count, names = listed.split(" floats, in the order of `answer_fields` in the `.json`: ", 1)
    fields = re.sub(r" \([^)]*\)", "", names).split(", ")  # without the explanations in brackets
    assert int(count) == len(ANSWER_FIELDS) and fields == list(ANSWER_FIELDS)
