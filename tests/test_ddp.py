"""Training under Lightning's DDP, for real: 2 CPU processes talking over gloo."""

import csv

from test_train_cli import ROOT, q1net_train
from test_training_faults import FAST, config

STEPS, BATCH = 4, 32


def test_two_process_ddp_shards_the_data_and_reduces_the_metrics(tmp_path):
    args = ["--config", str(ROOT / "configs/q1net.yaml"), "--config", str(config(tmp_path, every=1000)), *FAST]
    args += [
        f"--trainer.max_steps={STEPS}",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=2",
        f"--data.batch_size={BATCH}",
    ]
    args += ["--data.train_source.init_args.count=4", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    args += ["--trainer.callbacks+=ddp_probe.PatchDigests", f"--trainer.callbacks.init_args.folder={tmp_path}"]
    result = q1net_train(args, tmp_path, extra_path=ROOT / "tests")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr and "Starting with 2 processes" in result.stderr
    seen = [(tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert [len(digests) for digests in seen] == [STEPS * BATCH] * 2  # each rank trained on its own full batches
    assert not set(seen[0]) & set(seen[1])  # and no patch went to both ranks
    with next((tmp_path / "logs" / "run").glob("version_*/metrics.csv")).open() as file:
        validations = [row for row in csv.DictReader(file) if row.get("val/loss")]
    assert len(validations) == STEPS // 2  # one reduced value per validation, written once (rank 0)
