"""One LightningDataModule for all three heads: an endless seeded patch stream and fixed validation sets."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from q1net.data.geometry import GEOMETRY
from q1net.data.jpeg import QUALITY_MAX, QUALITY_MIN, Subsampling, jpeg_roundtrip
from q1net.data.patches import PatchBatch, PatchSampler, smooth_image
from q1net.data.sources import ImageSource

Batch = tuple[torch.Tensor, torch.Tensor]
VAL_CROP, VAL_PATCHES_PER_CROP = 64, 16  # validation patches are cut the same way whatever the training crops
SOLID_VAL_COLOURS = 16  # solid-colour validation patches: this many colours at each validation image quality


def _as_tensors(batch: PatchBatch) -> Batch:
    return torch.from_numpy(batch.patches), torch.from_numpy(batch.qualities)


@dataclass(frozen=True)
class QualityWarmup:
    """Quality band that widens linearly from `start_band` extreme levels to the full range over `steps`."""

    steps: int
    start_band: int
    levels: int

    def band(self, step: int) -> int | None:
        if step >= self.steps:
            return None
        return self.start_band + (self.levels // 2 - self.start_band) * step // self.steps


class PatchStream(IterableDataset):
    """Endless batches of freshly coded patches; every (rank, worker) stream has its own seed and images.

    Images are dealt out to streams round-robin when there are at least as many
    images as streams, so ranks and workers never cut the same crop; with fewer
    images all streams share them and differ by seed only.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        sampler: PatchSampler,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        offset: int,
        warmup: QualityWarmup | None = None,
    ) -> None:
        self.images, self.sampler, self.batch_size = images, sampler, batch_size
        self.seed, self.rank, self.world_size, self.offset = seed, rank, world_size, offset
        self.warmup = warmup

    def __iter__(self):
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        stream, streams = self.rank * workers + worker_id, self.world_size * workers
        images = self.images[stream::streams] if len(self.images) >= streams else self.images
        rng = np.random.default_rng([self.seed, self.offset, stream])
        for count in itertools.count():
            step = self.offset + count * workers  # this stream's share of the global steps
            band = self.warmup.band(step) if self.warmup else None
            yield _as_tensors(self.sampler.batch(images, self.batch_size, rng, band))


class PatchDataModule(LightningDataModule):
    """Patches for Q1Net training, as published (REFERENCE.md, "Training data").

    Train: an endless stream of patches from `train_source`, each crop coded at a
    uniform random quality. Validation: `val_patches` patches and, for the
    image-level score, `val_images` whole images of `val_source` coded at
    `val_image_qualities` levels spread over the range; both fixed by `val_seed`.
    A resumed run continues the stream from a new offset instead of repeating it.
    With `quality_warmup_steps`, the first steps draw qualities only from the
    `quality_warmup_band` lowest and highest levels, widening to the full range
    (PatchSampler.draw_quality says why). `smooth_share` of the training crops are
    solid colours and gentle gradients (PatchSampler). `crop_input` makes every sample one
    whole `crop_size` crop instead of patches (the Table 2 peers; set
    patches_per_crop to 1).
    """

    def __init__(
        self,
        train_source: ImageSource,
        val_source: ImageSource,
        batch_size: int = 2048,
        crop_size: int = 64,
        patches_per_crop: int = 16,
        quality_min: int = QUALITY_MIN,
        quality_max: int = QUALITY_MAX,
        subsampling: Subsampling = "4:2:0",
        all_shifts: bool = True,
        min_sobel: float = 0.0,
        smooth_share: float = 0.0,
        crop_input: bool = False,
        quality_warmup_steps: int = 0,
        quality_warmup_band: int = 5,
        num_workers: int = 0,
        seed: int = 0,
        val_patches: int = 4096,
        val_images: int = 4,
        val_image_qualities: int = 25,
        val_image_size: int = 512,
        val_seed: int = 1234,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train_source", "val_source"])
        self.train_source, self.val_source = train_source, val_source
        self.sampler = PatchSampler(
            crop_size=crop_size,
            patches_per_crop=patches_per_crop,
            quality_min=quality_min,
            quality_max=quality_max,
            subsampling=subsampling,
            all_shifts=all_shifts,
            min_sobel=min_sobel,
            whole_crop=crop_input,
            smooth_share=smooth_share,
        )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        levels = quality_max - quality_min + 1
        self.warmup = QualityWarmup(quality_warmup_steps, quality_warmup_band, levels) if quality_warmup_steps else None
        self.val_patches, self.val_images, self.val_image_qualities = val_patches, val_images, val_image_qualities
        self.val_image_size, self.val_seed = val_image_size, val_seed
        self.geometry = GEOMETRY
        self.train_images: list[np.ndarray] = []
        self.val_set: Batch | None = None
        self.image_val_set: list[tuple[np.ndarray, int]] = []
        self.solid_val_set: torch.Tensor | None = None  # (N, 3, P, P) coded solid colours: no block of them should vote
        self._stream_offset = 0

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self.train_images:
            self.train_images = [self.train_source.load(i) for i in range(len(self.train_source))]
        if self.val_set is None:
            self._build_validation()

    def _build_validation(self) -> None:
        rng = np.random.default_rng(self.val_seed)
        images = [self.val_source.load(i) for i in range(len(self.val_source))]
        # fixed crops and no smooth content: runs with other crop or smooth settings validate on the same patches
        sampler = replace(self.sampler, smooth_share=0.0)
        if not sampler.whole_crop:  # the Table 2 peers' samples are whole crops of their own size
            sampler = replace(sampler, crop_size=VAL_CROP, patches_per_crop=VAL_PATCHES_PER_CROP)
        self.val_set = _as_tensors(sampler.batch(images, self.val_patches, rng))
        qualities = np.unique(np.linspace(self.sampler.quality_min, self.sampler.quality_max, self.val_image_qualities).round().astype(int))
        solid = [smooth_image(rng, VAL_CROP, solid=True) for _ in range(SOLID_VAL_COLOURS)]
        coded = [jpeg_roundtrip(image, int(q), self.sampler.subsampling) for image in solid for q in qualities]
        g = self.geometry
        start, end = g.block - g.ring, g.block - g.ring + g.patch  # one aligned patch of each
        self.solid_val_set = torch.from_numpy(np.stack([c[start:end, start:end].transpose(2, 0, 1) for c in coded]))
        self.image_val_set = []
        for image in images[: self.val_images]:
            side = self.val_image_size
            crop = image[: side // g.mcu * g.mcu, : side // g.mcu * g.mcu]  # grid at the origin, as published
            crop = np.ascontiguousarray(crop)
            self.image_val_set += [(jpeg_roundtrip(crop, int(q), self.sampler.subsampling), int(q)) for q in qualities]

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank()
        stream = PatchStream(
            self.train_images, self.sampler, self.batch_size, self.seed, rank, world_size, self._stream_offset, self.warmup
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        patches, qualities = self.val_set
        chunks = [(patches[i : i + self.batch_size], qualities[i : i + self.batch_size]) for i in range(0, len(qualities), self.batch_size)]
        return DataLoader(chunks, batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def state_dict(self) -> dict[str, int]:
        # where to pick the stream up after a resume: the step the checkpoint was taken at
        return {"stream_offset": self.trainer.global_step if self.trainer is not None else self._stream_offset}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._stream_offset = int(state_dict["stream_offset"])
