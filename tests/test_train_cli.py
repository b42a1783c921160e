"""`q1net train` for real: LightningCLI, W&B offline files, checkpoints and resume."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from q1net import Predictor
from q1net.predictor.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE_BASE = ROOT / "configs/reproduce/base.yaml"  # parsed under every reproduce row
CONFIGS = sorted(path for path in (ROOT / "configs").rglob("*.yaml") if path != REPRODUCE_BASE)

TINY = [
    "--trainer.max_steps=6",
    "--trainer.val_check_interval=3",
    "--trainer.log_every_n_steps=1",
    "--model.init_args.compile=false",
    "--data.batch_size=32",
    "--data.val_patches=64",
    "--data.val_images=1",
    "--data.val_image_qualities=2",
    "--data.val_image_size=64",
    "--data.train_source.init_args.count=3",
    "--data.train_source.init_args.size=96",
    "--data.val_source.init_args.size=96",
]


def q1net_train(args, cwd, extra_path=None):
    path = os.pathsep.join(str(p) for p in (ROOT, extra_path) if p)
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": path}
    env.pop("WANDB_API_KEY", None)
    command = [sys.executable, "-m", "q1net.cli", "train", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "model",
    [
        "q1net.models.modules.Q1Net",
        pytest.param("q1net.models.modules.Q1Regressor", marks=pytest.mark.slow),  # the heads train in-process in test_modules
        pytest.param("q1net.models.modules.Q1Classifier", marks=pytest.mark.slow),
    ],
)
def test_fit_writes_checkpoint_and_offline_wandb_run_then_resumes(tmp_path, model):
    args = ["--config", str(ROOT / "configs/q1net.yaml"), f"--model={model}", *TINY]
    if model.endswith("Q1Net"):
        args.append("--model.init_args.lam=0.5")
    first = q1net_train(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "runs/q1net/checkpoints/last.ckpt"
    assert last.is_file() and f"checkpoint: {last}" in first.stdout
    assert "W&B run (offline)" in first.stdout
    runs = list((tmp_path / "runs/q1net/wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert (tmp_path / "runs/q1net/config.yaml").is_file() or list(tmp_path.rglob("config.yaml"))

    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 6
    assert checkpoint["q1net"]["geometry"]["patch"] == 16 and checkpoint["q1net"]["net"]["k"] == 8
    assert checkpoint["datamodule_hyper_parameters"]["batch_size"] == 32

    packed = tmp_path / "packed.safetensors"
    pack = subprocess.run(
        [sys.executable, "-m", "q1net.cli", "pack", last, packed, "--tau", "90", "--recipe", ROOT / "configs/q1net.yaml"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert pack.returncode == 0, pack.stderr
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    from_ckpt, from_pack = Predictor.from_checkpoint(last).predict(image), Predictor.from_checkpoint(packed).predict(image)
    assert from_pack.quality == from_ckpt.quality
    assert load_weights(packed).meta["tau"] == 90 and "Q1Net" in load_weights(packed).meta["recipe"]["text"]

    resumed = q1net_train([*args, "--trainer.max_steps=9", "--ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 9


def test_images_are_logged_to_wandb(tmp_path):
    result = q1net_train(["--config", str(ROOT / "configs/q1net.yaml"), *TINY], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    media = list(tmp_path.rglob("media/images/val/*.png"))
    assert any(p.name.startswith("confusion_matrix") for p in media)
    assert any(p.name.startswith("patches") for p in media)


def printed_config(args: list[str], cwd, monkeypatch) -> str:
    """What `q1net train ... --print_config` prints, parsed in this process (a subprocess each costs ~8 s of imports)."""
    from q1net.train import train

    monkeypatch.chdir(cwd)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        train(args)
    assert done.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_every_config_parses(config, tmp_path, monkeypatch):
    """Every YAML resolves into a full LightningCLI config (data configs on top of the baseline)."""
    content, baseline = yaml.safe_load(config.read_text()), str(ROOT / "configs/q1net.yaml")
    if config.parent.name == "study":  # as q1net study layers them: base, candidate, the run's own file
        from q1net.tools.study import Setup, run_config

        setup = Setup(tmp_path)
        args = [arg for path in (*setup.candidate_configs(config.stem), run_config(config.stem, setup)) for arg in ("--config", str(path))]
    elif config.parent == REPRODUCE_BASE.parent:  # as q1net reproduce layers them: base, row, the run's own file
        from q1net.tools.reproduce import ROWS, Setup, run_config

        row = next(row for row in ROWS if row.config == config.stem)
        run = run_config(row, Setup("train", "val", "test", 1.0, tmp_path))
        args = ["--config", str(REPRODUCE_BASE), "--config", str(config), "--config", str(run)]
    elif "model" not in content:  # a data config goes on top of the baseline
        args = ["--config", baseline, "--data", str(config)]
    elif "data" not in content:  # a head variant goes on top of the baseline
        args = ["--config", baseline, "--config", str(config)]
    else:
        args = ["--config", str(config)]
    printed = yaml.safe_load(printed_config(["fit", *args, "--print_config"], tmp_path, monkeypatch))
    assert printed["model"]["class_path"].startswith("q1net.models.modules.")
    assert "train_source" in printed["data"]
