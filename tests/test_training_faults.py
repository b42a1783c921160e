"""Training survives SIGKILL (resume from the last checkpoint) and is repeatable with a fixed seed."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from test_train_cli import ROOT, TINY, q1net_train

FAST = [arg for arg in TINY if not arg.startswith(("--trainer.max_steps", "--trainer.val_check_interval"))]


def config(tmp_path: Path, every: int) -> Path:
    """The baseline with a CSV logger (losses readable from a test) and a checkpoint every `every` steps."""
    overrides = {
        "trainer": {
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "logs"), "name": "run"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(tmp_path / "checkpoints"),
                        "every_n_train_steps": every,
                        "save_last": True,
                        "save_top_k": -1,
                    },
                }
            ],
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
        }
    }
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def logged_losses(tmp_path: Path) -> dict[int, float]:
    """Step -> training loss, as the latest run's CSV logger wrote them."""
    latest = max((tmp_path / "logs" / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with (latest / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")}


def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path):
    args = ["--config", str(ROOT / "configs/q1net.yaml"), "--config", str(config(tmp_path, every=5)), *FAST]
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "q1net.cli", "train", *args, "--trainer.max_steps=100000"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wanted = tmp_path / "checkpoints" / "epoch=0-step=10.ckpt"
    deadline = time.monotonic() + 300
    while not wanted.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # no chance to clean up or save anything more
    process.wait(timeout=60)
    assert wanted.exists() and process.returncode == -signal.SIGKILL
    # Lightning writes the step-10 file before it replaces last.ckpt, so the kill may land between the two:
    # last.ckpt then still holds step 5, which is as good a place to resume from.
    killed_at = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert killed_at >= 5 and killed_at % 5 == 0

    resumed = q1net_train([*args, f"--trainer.max_steps={killed_at + 5}", "--ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == killed_at + 5
    assert sorted(logged_losses(tmp_path)) == list(range(killed_at, killed_at + 5))  # it went on from the checkpoint


def test_fixed_seed_gives_the_same_losses(tmp_path):
    losses = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        args = ["--config", str(ROOT / "configs/q1net.yaml"), "--config", str(config(folder, every=1000)), *FAST, "--trainer.max_steps=6"]
        result = q1net_train(args, folder)
        assert result.returncode == 0, result.stderr[-3000:]
        losses.append(logged_losses(folder))
    assert len(losses[0]) == 6 and losses[0] == losses[1]
