"""Weights are never unpickled: crafted checkpoints are refused, mismatches say what differs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from q1net import __version__
from q1net.data.geometry import GEOMETRY
from q1net.nets.q1net import create_model
from q1net.predictor.weights import WeightsError, load_checkpoint, load_weights, save_weights

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this would run a shell command (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoint_dict(net: torch.nn.Module, version: str = __version__) -> dict:
    state = {f"net.{name}": tensor for name, tensor in net.state_dict().items()}
    return {"state_dict": state, "q1net": {"version": version, "net": net.config.as_dict(), "geometry": GEOMETRY.as_dict()}}


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint_dict(create_model("q1net_baseline", k=4)) | {"callbacks": Payload(marker)}, evil)
    with pytest.raises(WeightsError, match=r"evil\.ckpt: refused, the checkpoint holds more than plain data"):
        load_checkpoint(evil)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cli = subprocess.run(
        [sys.executable, "-m", "q1net.cli", "predict", str(evil), "--checkpoint", str(evil)], capture_output=True, text=True, env=env
    )
    assert cli.returncode == 2 and "refused" in cli.stderr and "Traceback" not in cli.stderr
    assert not marker.exists()


def test_another_version_is_named(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save(checkpoint_dict(create_model("q1net_baseline", k=4), version="0"), path)
    with pytest.warns(UserWarning, match=r"old\.ckpt: written by q1net 0, this is q1net"):
        assert load_checkpoint(path).net.config.k == 4


def test_weights_that_do_not_fit_their_config_say_what_differs(tmp_path):
    path = tmp_path / "mixed.ckpt"
    saved = checkpoint_dict(create_model("q1net_baseline", k=4))
    saved["q1net"]["net"]["k"] = 8
    torch.save(saved, path)
    with pytest.raises(WeightsError, match=r"mixed\.ckpt: weights do not fit"):
        load_checkpoint(path)
    saved["q1net"]["geometry"] = GEOMETRY.as_dict() | {"ring": 2}
    torch.save(saved, path)
    with pytest.raises(WeightsError, match="trained for patch geometry"):
        load_checkpoint(path)


def test_safetensors_carry_no_code(tmp_path):
    path = tmp_path / "net.safetensors"
    save_weights(create_model("q1net_baseline", k=4), path, {"tau": 90.0})
    assert b"\x80\x04" not in path.read_bytes()[:16]  # not a pickle stream
    assert load_weights(path).tau == 90.0
