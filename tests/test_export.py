"""Export to ONNX and ExecuTorch: delegation structure, numeric parity, and a parity check that can fail."""

import json

import numpy as np
import onnx
import pytest
import torch

from q1net.data.sources import SyntheticSource
from q1net.export.formats import export_onnx, export_pte
from q1net.export.mosaic import MosaicQ1Net, from_mosaic, to_mosaic
from q1net.export.parity import ParityError
from q1net.export.run import Target, export_target
from q1net.nets.q1net import create_model
from q1net.predictor.calibration import Calibration


def trained_like(name="q1net_baseline", **kwargs):
    """A net with non-trivial BN statistics, as after training."""
    torch.manual_seed(0)
    net = create_model(name, **kwargs)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def images():
    source = SyntheticSource(count=2, size=64, seed=5)
    return [source.load(i) for i in range(2)]


@pytest.mark.parametrize("name", ["q1net_baseline", "q1net_regressor", "q1net_no_bb"])
@pytest.mark.parametrize(("blocks", "count"), [(3, 9), (3, 5), (1, 1)])
def test_mosaic_form_equals_the_batched_net(name, blocks, count):
    net = trained_like(name)
    patches = torch.rand(count, 3, 16, 16) * 255
    with torch.no_grad():
        expected = net(patches)
        got = from_mosaic(MosaicQ1Net(net, blocks).eval()(to_mosaic(patches, blocks)), count)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_mosaic_refuses_the_classifier_and_overfull_mosaics():
    with pytest.raises(ValueError, match="sigmoid heads"):
        MosaicQ1Net(create_model("q1net_classifier"), 2)
    with pytest.raises(ValueError, match="do not fit"):
        to_mosaic(torch.zeros(5, 3, 16, 16), 2)


@pytest.mark.parametrize("fp16", [False, True])
def test_vulkan_program_is_one_delegate_with_nothing_outside(tmp_path, fp16):
    path = export_pte(trained_like(), tmp_path / "v.pte", "vulkan", fp16=fp16, tau=96.0, blocks=2)
    structure = json.loads((tmp_path / "v.pte.json").read_text())["program"]
    assert structure["delegates"] == ["VulkanBackend"]
    assert structure["operators"] == []  # no compute operator left on the CPU
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(path.read_bytes()).program.execution_plan[0]
    assert [d.id for d in plan.delegates] == ["VulkanBackend"] and list(plan.operators) == []


@pytest.mark.slow  # 90 s: lowers three batched programs to show why the mosaic exists
def test_batched_programs_would_leave_convs_outside_vulkan():
    """Why the mosaic exists: at batch != 1 the Vulkan partitioner keeps convolutions on the CPU."""
    from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(trained_like(k=2), (torch.rand(4, 3, 16, 16),))
    plan = to_edge_transform_and_lower(program, partitioner=[VulkanPartitioner()]).to_executorch().executorch_program.execution_plan[0]
    assert any("convolution" in op.name for op in plan.operators)


def test_onnx_is_one_checked_file_with_dynamic_batch_and_metadata(tmp_path):
    import onnxruntime

    net = trained_like()
    path = export_onnx(net, tmp_path / "q.onnx", tau=95.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.json"]  # no external data file
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert json.loads({p.key: p.value for p in model.metadata_props}["q1net"])["tau"] == 95.0
    session = onnxruntime.InferenceSession(str(path))
    for batch in (1, 7, 300):
        x = torch.rand(batch, 3, 16, 16) * 255
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"patches": x.numpy()})[0], net(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("target", [Target("onnx"), Target("pte", "xnnpack"), Target("pte", "vulkan")], ids=lambda t: t.name)
def test_export_target_passes_parity(tmp_path, images, target):
    calibration = Calibration((0.0, 50.0, 100.0), (0.0, 45.0, 100.0))
    row = export_target(trained_like(), target, tmp_path, 96.0, images, blocks=2, calibration=calibration)
    assert row["max_abs_diff"] <= 1e-4 and row["image_answer_diff"] <= 1e-3  # 0..1 scale
    meta = json.loads((tmp_path / f"{target.name}.json").read_text())
    assert meta["parity"]["max_abs_diff"] == row["max_abs_diff"] and meta["output_order"] == ["confidence", "quality"]
    assert Calibration.from_dict(meta["calibration"]) == calibration and "calibration" in meta["postprocess"]
    if target.backend == "vulkan":
        assert (tmp_path / target.name.replace(".pte", ".bpte")).stat().st_size > 0
        assert any("not run here" in note for note in row["notes"])


def test_parity_check_fails_on_perturbed_weights(tmp_path, images, monkeypatch):
    """The check can fail: the exported file comes from perturbed weights, the reference does not."""
    import q1net.export.run as run

    net = trained_like()
    real_export = run.export_onnx

    def export_perturbed(exported_net, path, tau):
        perturbed = trained_like()
        with torch.no_grad():
            perturbed.fc.bias.add_(0.5)
        return real_export(perturbed, path, tau)

    monkeypatch.setattr(run, "export_onnx", export_perturbed)
    with pytest.raises(ParityError, match=r"max \|diff\| .* over the tolerance"):
        export_target(net, Target("onnx"), tmp_path, 96.0, images, blocks=2)


def test_cli_export_prints_the_table_and_refuses_missing_format(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from q1net.predictor.weights import save_weights

    root = Path(__file__).resolve().parents[1]
    weights = tmp_path / "w.safetensors"
    save_weights(trained_like(), weights, {"tau": 96.0})
    env = os.environ | {"PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "q1net.cli", "export", "--checkpoint", str(weights), "--out", str(tmp_path / "out")]
    result = subprocess.run([*command, "--format", "onnx", "--blocks", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    header, row = result.stdout.strip().splitlines()[-2:]
    assert header.split()[:2] == ["network", "size"] and row.startswith("q1net.onnx")
    assert subprocess.run(command, capture_output=True, text=True, env=env, timeout=600).returncode == 2
