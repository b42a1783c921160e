"""`python -m q1net.tools.gpu_train`: the best recipe on one GPU machine in minutes, with nothing to install there.

The GPU machine lent to some sessions (issue #12) has torch, lightning, pillow, numpy,
safetensors, onnx and onnxruntime but no jsonargparse, no wandb and no network, and takes
at most 64 MiB of files along. So this runs Lightning directly from the recipe's YAML
(the same keys `q1net train` reads; class paths instantiated here, no LightningCLI), logs
to CSV, and reads the photos packed by `make gpu-data` (q1net.data.packed). The learning
rate follows a cosine over the wall-clock budget, so the schedule ends when time does
whatever the machine's speed. At the end it tunes tau and the calibration on the
validation photos (the network alone, as `q1net tune-tau`), scores the weights it started
from the same way, and writes to OUT:
- q1net_gpu.safetensors: the packed weights (tau, calibration, recipe);
- summary.json: validation MAE before and after, patches seen, minutes, steps;
- metrics.csv: the run's log.
The same code runs on a CPU at a tiny budget in the default test suite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from q1net.data.datamodule import PatchDataModule
from q1net.data.packed import PackedSource
from q1net.predictor.weights import load_net_file, pack_checkpoint
from q1net.tools.evaluate import Condition, score_network, tune_calibration, tune_tau


def instantiate(spec: dict, *args: object) -> object:
    """A `{class_path, init_args}` spec as LightningCLI writes it, built with `args` first."""
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(*args, **spec.get("init_args", {}))


class TimeCosine(torch.optim.lr_scheduler.LRScheduler):
    """Cosine from the base rate to `floor` times it over `seconds` of wall clock, from the first step."""

    def __init__(self, optimizer: torch.optim.Optimizer, seconds: float, floor: float = 0.01) -> None:
        self.seconds, self.floor, self.start = seconds, floor, None
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        self.start = self.start or time.monotonic()
        done = min(1.0, (time.monotonic() - self.start) / self.seconds)
        factor = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * done))
        return [base * factor for base in self.base_lrs]


class PatchesSeen(Callback):
    """Counts the training patches, for the summary."""

    def __init__(self) -> None:
        self.patches = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.patches += len(batch[1])


def build(config: dict, packed: Path, seconds: float):
    """The LightningModule and DataModule of `config` (a recipe YAML), on the packed photos."""
    data = dict(config["data"])
    data |= {"train_source": PackedSource(str(packed / "train.zip")), "val_source": PackedSource(str(packed / "val.zip"))}
    datamodule = PatchDataModule(**data)
    model = dict(config["model"]["init_args"])
    optimizer = model.pop("optimizer")
    model["optimizer"] = lambda parameters: instantiate(optimizer, parameters)
    model["scheduler"] = lambda built: TimeCosine(built, seconds)
    module, name = config["model"]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**model), datamodule


def validation_mae(net, packed: Path, quality_step: int = 1) -> dict:
    """The network alone on the validation photos at every `quality_step`-th quality: tau grid-searched, calibration
    fitted (as tune-tau)."""
    scores = score_network(net, PackedSource(str(packed / "val.zip")), Condition(quality_step=quality_step))
    tau, _ = tune_tau(scores)
    calibration, report = tune_calibration(scores, tau)
    return {"tau": tau, "calibration": calibration, "mae": report["mae"], "mae_calibrated_held_out": report["mae_calibrated_held_out"]}


def run(
    config_path: Path, packed: Path, out: Path, minutes: float, init: str | None, accelerator: str = "auto", quality_step: int = 1
) -> dict:
    config = yaml.safe_load(config_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    seconds = 60 * minutes
    if init is not None:
        config["model"]["init_args"]["init_weights"] = init
    module, datamodule = build(config, packed, seconds)
    counter = PatchesSeen()
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_time={"seconds": seconds},
        max_steps=-1,
        logger=CSVLogger(str(out), name="csv"),
        callbacks=[counter],
        enable_checkpointing=False,
        enable_progress_bar=False,
        **config.get("trainer", {}),
    )
    start = time.monotonic()
    trainer.fit(module, datamodule)
    trained_s = time.monotonic() - start
    net = module.net.eval()
    device = next(net.parameters()).device
    after = validation_mae(net, packed, quality_step)
    checkpoint = out / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    pack_checkpoint(checkpoint, out / "q1net_gpu.safetensors", after["tau"], str(config_path), after["calibration"])
    checkpoint.unlink()
    before = validation_mae(load_net_file(init).net.to(device), packed, quality_step) if init else None
    metrics = sorted((out / "csv").glob("version_*/metrics.csv"))
    if metrics:
        shutil.copy(metrics[-1], out / "metrics.csv")
    summary = {
        "config": str(config_path),
        "init": init,
        "minutes_training": trained_s / 60,
        "steps": trainer.global_step,
        "patches": counter.patches,
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "validation": {
            "after": {key: value for key, value in after.items() if key != "calibration"},
            "before": None if before is None else {key: value for key, value in before.items() if key != "calibration"},
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m q1net.tools.gpu_train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/release/q1net_k8_photos_gpu.yaml", help="the recipe (LightningCLI keys)")
    parser.add_argument("--packed", default=".gpu", help="folder with train.zip and val.zip (make gpu-data)")
    parser.add_argument("--out", required=True, help="where the weights, summary.json and metrics.csv go")
    parser.add_argument("--minutes", type=float, default=7.0, help="training wall clock (the tuning after it takes about a minute)")
    parser.add_argument("--init", default="q1net/weights_data/q1net_k8_photos.safetensors", help="weights to start from ('' for none)")
    parser.add_argument("--accelerator", default="auto", help="auto, gpu or cpu")
    parser.add_argument("--quality-step", type=int, default=1, help="validate at qualities 1, 1 + N, ... (default every level)")
    args = parser.parse_args(argv)
    summary = run(
        Path(args.config), Path(args.packed), Path(args.out), args.minutes, args.init or None, args.accelerator, args.quality_step
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
