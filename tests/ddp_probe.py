"""A callback for tests/test_ddp.py: every rank writes a digest of each training patch it is given."""

import hashlib
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PatchDigests(Callback):
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        patches, _ = batch
        digests = [hashlib.sha1(patch.cpu().numpy().tobytes()).hexdigest() for patch in patches]
        with (self.folder / f"rank{trainer.global_rank}.txt").open("a") as file:
            file.write("".join(f"{digest}\n" for digest in digests))
