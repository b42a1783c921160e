"""`q1net train`: LightningCLI over the LightningModules (Q1 heads and Table 2 peers) and the patch DataModule."""

from __future__ import annotations

import sys
import warnings

from lightning import LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

from q1net.data.datamodule import PatchDataModule
from q1net.tracking import choose_wandb_mode

SUBCOMMANDS = ("fit", "validate", "test")


def train(argv: list[str]) -> int:
    """Run LightningCLI; `q1net train --config c.yaml` means `q1net train fit --config c.yaml`."""
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help", "--print_config"):
        argv = ["fit", *argv]
    mode = choose_wandb_mode()
    # `args` is the command line minus `q1net train`; sys.argv stays whole, for DDP's launcher re-runs it on each rank
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    cli = LightningCLI(
        LightningModule,
        PatchDataModule,
        subclass_mode_model=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    trainer = cli.trainer
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.last_model_path:
        print(f"checkpoint: {trainer.checkpoint_callback.last_model_path}")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            hint = f" (upload later: wandb sync {logger.experiment.dir.rsplit('/files', 1)[0]})" if mode == "offline" else ""
            print(f"W&B run ({mode}): {logger.experiment.dir}{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(train(sys.argv[1:]))
