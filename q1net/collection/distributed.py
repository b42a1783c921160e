"""A collection on many processes, GPUs or machines: Lightning's `Trainer.predict`, one journal.

Every rank runs the same command (Lightning starts the local ones; torchrun or SLURM start
them on many machines). The entries of the inputs (files, whole shards) are dealt round-robin
over every data-loading worker of every rank, each of which reads and decodes its own; the
rank predicts (the network on its GPU where there is one) and its `JournalWriter` commits the
rows of each worker to a chunk folder of its own (q1net.collection.journal), so each folder
holds increasing indices. When every rank is done, rank 0 merges the parts into the output in
input order: the same rows as a single-process run. A killed run resumes like one, with any
number of processes.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from q1net.collection.inputs import Item, iter_items
from q1net.collection.journal import Done, Journal
from q1net.collection.pipeline import Options, answer, decode, finish

BATCH_IMAGES = 8  # images a rank's predict_step takes at once
Decodedish = object  # q1net.data.images.Decoded, or the one-line error of an item that cannot be read


class CollectionDataset(IterableDataset):
    """(worker, item, pixels or error) for the entries of one rank's data-loading worker, not yet done."""

    def __init__(self, names: list[str], done: Done, max_pixels: int, rank: int, world: int) -> None:
        self.names, self.done, self.max_pixels, self.rank, self.world = names, done, max_pixels, rank, world

    def __iter__(self) -> Iterator[tuple[int, Item, Decodedish]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slots, slot = self.world * workers, self.rank * workers + worker
        for item in iter_items(self.names, keep=lambda entry: entry % slots == slot):
            if item.index not in self.done:
                yield worker, dataclasses.replace(item, data=None), decode(item, self.max_pixels)


def as_list(batch: list) -> list:
    return batch


class CollectionDataModule(L.LightningDataModule):
    """The inputs of a run, less what its journal already holds, split over ranks and their loading workers."""

    def __init__(
        self, names: list[str], journal: Journal, run: dict[str, object], restart: bool, max_pixels: int, num_workers: int = 2
    ) -> None:
        super().__init__()
        self.names, self.journal, self.run, self.restart, self.max_pixels = names, journal, run, restart, max_pixels
        self.num_workers, self.complete = num_workers, False

    def setup(self, stage: str) -> None:
        if self.trainer.is_global_zero:  # the process group is up here: the other ranks wait in the barrier
            self.journal.prepare(self.run, self.restart)
        self.trainer.strategy.barrier()
        self.complete = self.journal.complete

    def transfer_batch_to_device(self, batch: list, device: torch.device, dataloader_idx: int) -> list:
        return batch  # pixels stay in host memory: the predictor cuts its regions there and moves only the network's input

    def predict_dataloader(self) -> DataLoader:
        names, done = ([], Done(np.zeros(0, dtype=np.int64))) if self.complete else (self.names, self.journal.done())
        dataset = CollectionDataset(names, done, self.max_pixels, self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(dataset, batch_size=BATCH_IMAGES, num_workers=self.num_workers, collate_fn=as_list)


class CollectionModule(L.LightningModule):
    """The predictor of one rank, on the rank's device: a batch of decoded items in, (worker, index, row) out."""

    def __init__(self, load: Callable[..., object], options: Options) -> None:
        super().__init__()
        self.load, self.options, self.predictor = load, options, None

    def on_predict_start(self) -> None:
        self.predictor = self.load(device=str(self.device))

    def predict_step(self, batch: list[tuple[int, Item, Decodedish]]) -> list[tuple[int, int, dict]]:
        return [(worker, item.index, answer(self.predictor, item, decoded, self.options, None)) for worker, item, decoded in batch]


class JournalWriter(BasePredictionWriter):
    """Each rank's rows into the journal (a chunk folder per loading worker); rank 0 merges them when all are done."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(write_interval="batch")
        self.journal, self.writers, self.predicted, self.start = journal, {}, 0, time.perf_counter()
        self.report: dict[str, object] | None = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        for worker, index, row in prediction:
            if worker not in self.writers:
                self.writers[worker] = self.journal.writer(f"rank{trainer.global_rank}-worker{worker}")
            self.writers[worker].add(index, row)
            self.predicted += 1
            if row.get("error"):
                print(f"q1net: {row['error']}", file=sys.stderr)

    def on_predict_end(self, trainer, pl_module) -> None:
        for writer in self.writers.values():
            writer.flush()
        predicted = int(trainer.strategy.reduce(torch.tensor(float(self.predicted)), reduce_op="sum"))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if trainer.datamodule.complete:
                print(f"q1net: {self.journal.out} is complete; add --restart to predict again", file=sys.stderr)
            else:
                self.report = finish(self.journal, time.perf_counter() - self.start, predicted)
        trainer.strategy.barrier()


def parse_devices(text: str | None) -> int | str | list[int]:
    """--devices as Lightning takes it: 2, "auto", or "0,1" (a list of indices)."""
    if text is None:
        return "auto"
    if text.isdigit():
        return int(text)
    return [int(part) for part in text.split(",")] if "," in text else text


def run_distributed(
    names: list[str],
    journal: Journal,
    load: Callable[..., object],
    options: Options,
    run: dict[str, object],
    restart: bool,
    max_pixels: int,
    devices: str | None = None,
    num_nodes: int = 1,
    accelerator: str | None = None,
    loader_workers: int = 2,
    quiet: bool = False,
) -> dict[str, object] | None:
    """`Trainer.predict` over `names` into `journal`; the summary on the rank that merged (None on the others).
    `journal.check` comes first on every process, so that a refused resume stops them all alike."""
    journal.check(run, restart)
    trainer = L.Trainer(
        accelerator=accelerator or "auto",
        devices=parse_devices(devices),
        num_nodes=num_nodes,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not quiet,
        enable_model_summary=False,
        callbacks=[writer := JournalWriter(journal)],
    )
    data = CollectionDataModule(names, journal, run, restart, max_pixels, num_workers=loader_workers)
    trainer.predict(CollectionModule(load, options), datamodule=data, return_predictions=False)
    return writer.report
