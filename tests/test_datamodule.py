import numpy as np
import torch

from q1net.data.datamodule import PatchDataModule, PatchStream
from q1net.data.patches import PatchSampler
from q1net.data.sources import SyntheticSource


def make_datamodule(**overrides):
    settings = dict(batch_size=64, val_patches=100, val_images=2, val_image_qualities=3, val_image_size=96)
    return PatchDataModule(SyntheticSource(count=6, size=96, seed=0), SyntheticSource(count=2, size=96, seed=1), **(settings | overrides))


def first_batch(stream):
    return next(iter(stream))


def test_stream_is_seeded_and_endless(photos):
    sampler = PatchSampler()
    a = PatchStream(photos, sampler, 32, seed=5, rank=0, world_size=1, offset=0)
    b = PatchStream(photos, sampler, 32, seed=5, rank=0, world_size=1, offset=0)
    torch.testing.assert_close(first_batch(a), first_batch(b))
    batches = iter(a)
    shapes = {tuple(next(batches)[0].shape) for _ in range(20)}
    assert shapes == {(32, 3, 16, 16)}
    resumed = PatchStream(photos, sampler, 32, seed=5, rank=0, world_size=1, offset=1000)
    assert not torch.equal(first_batch(a)[0], first_batch(resumed)[0])


def test_ranks_draw_from_disjoint_images():
    """Under DDP every rank gets its own images, so no two ranks cut the same patch."""
    noise = np.random.default_rng(0).integers(0, 3, (64, 64, 3), np.uint8)
    images = [np.full((64, 64, 3), value, np.uint8) + noise for value in (10, 90, 170, 250)]
    sampler = PatchSampler()
    seen = []
    for rank in range(2):
        patches, _ = first_batch(PatchStream(images, sampler, 256, seed=0, rank=rank, world_size=2, offset=0))
        seen.append({int(v) // 40 for v in patches.float().mean(dim=(1, 2, 3))})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_workers_get_different_streams():
    datamodule = make_datamodule(num_workers=2)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = iter(loader)
    first, second = next(batches), next(batches)  # one from each worker
    assert not torch.equal(first[0], second[0])
    del batches


def test_validation_sets_are_fixed():
    a, b = make_datamodule(), make_datamodule(seed=99)
    a.setup("fit")
    b.setup("fit")
    torch.testing.assert_close(a.val_set, b.val_set)
    assert len(a.image_val_set) == 2 * 3
    assert {q for _, q in a.image_val_set} == {1, 50, 100}
    assert [len(batch[1]) for batch in a.val_dataloader()] == [64, 36]


def test_resume_offset_round_trips_through_state_dict():
    datamodule = make_datamodule()
    datamodule.load_state_dict({"stream_offset": 1234})
    assert datamodule._stream_offset == 1234
    assert datamodule.state_dict() == {"stream_offset": 1234}


def test_quality_warmup_widens_the_band_to_the_full_range():
    from q1net.data.datamodule import QualityWarmup

    warmup = QualityWarmup(steps=100, start_band=5, levels=100)
    assert [warmup.band(s) for s in (0, 50, 99, 100, 5000)] == [5, 27, 49, None, None]
    stream = PatchStream([np.random.default_rng(0).integers(0, 256, (96, 96, 3), np.uint8)], PatchSampler(), 64, 0, 0, 1, 0, warmup)
    first = next(iter(stream))[1]
    assert set(first.tolist()) <= set(range(1, 6)) | set(range(96, 101))
    late = PatchStream(stream.images, PatchSampler(), 64, 0, 0, 1, offset=100, warmup=warmup)
    assert not set(next(iter(late))[1].tolist()) <= set(range(1, 6)) | set(range(96, 101))
