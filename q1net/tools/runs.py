"""Training runs that other tools start: a stack of YAML configs trained in a folder of its own, once.

`q1net reproduce` and `q1net study` both train many configurations, each in its own
folder, and both must survive an interruption: a finished run (its FINAL checkpoint
exists) is reused, an interrupted one resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

FINAL = "final.ckpt"  # in each run's folder: the weights the run ended with


class FinalCheckpoint(Callback):
    """Saves the weights a run ends with: when a time budget stops it, Lightning's `save_last` still holds
    the last periodic checkpoint (up to `every_n_train_steps` earlier, or none at all)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.save_checkpoint(self.path)


def final_checkpoint_callback(folder: Path) -> dict:
    """The FinalCheckpoint entry of a run's `trainer.callbacks` config."""
    return {"class_path": f"{__name__}.FinalCheckpoint", "init_args": {"path": str(folder / FINAL)}}


def train_in_folder(name: str, configs: list[Path], folder: Path, train_args: tuple[str, ...] = (), env: dict | None = None) -> Path:
    """Train `configs` (later files override earlier ones) unless `folder` holds a finished run; resume an interrupted one.

    The run's output goes to folder/train.log; returns its FINAL checkpoint.
    """
    last, final = folder / "checkpoints" / "last.ckpt", folder / FINAL
    if final.is_file():
        return final
    command = [sys.executable, "-m", "q1net.cli", "train", *(arg for path in configs for arg in ("--config", str(path))), *train_args]
    if last.is_file():
        command.append("--ckpt_path=last")
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.log").open("a") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}))
    if result.returncode != 0 or not final.is_file():
        raise RuntimeError(f"{name}: training failed (exit {result.returncode}); see {folder / 'train.log'}")
    return final
