"""`q1net study` end to end at a tiny budget: candidates layered on a base, trained alike, plotted and tabulated."""

import json

import numpy as np
import yaml

from q1net.tools.study import Setup, merged, read_metrics, report, run_config, run_study

BASE = {
    "seed_everything": 0,
    "trainer": {"log_every_n_steps": 1, "enable_progress_bar": False},
    "model": {
        "class_path": "q1net.models.modules.Q1Net",
        "init_args": {"k": 2, "compile": False, "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}}},
    },
    "data": {
        "train_source": {"class_path": "q1net.data.sources.SyntheticSource", "init_args": {"count": 3, "size": 64, "seed": 0}},
        "val_source": {"class_path": "q1net.data.sources.SyntheticSource", "init_args": {"count": 1, "size": 64, "seed": 1}},
        "batch_size": 16,
        "crop_size": 32,
        "patches_per_crop": 2,
        "val_patches": 32,
        "val_images": 1,
        "val_image_qualities": 2,
        "val_image_size": 64,
    },
}
ONECYCLE = {
    "model": {
        "init_args": {"scheduler": {"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.01, "total_steps": 999}}}
    },
    "data": {"batch_size": 8},
}


def test_candidates_train_alike_and_report(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "base.yaml").write_text(yaml.safe_dump(BASE))
    (configs / "onecycle.yaml").write_text(yaml.safe_dump(ONECYCLE))
    setup = Setup(tmp_path / "out", patches=64, evals=2, names=("base", "onecycle"), configs=configs)

    layered = merged(setup.candidate_configs("onecycle"))
    assert layered["data"]["batch_size"] == 8 and layered["data"]["crop_size"] == 32  # later files win key by key
    own = yaml.safe_load(run_config("onecycle", setup).read_text())
    assert own["trainer"]["max_steps"] == 8 and own["trainer"]["val_check_interval"] == 4  # the same patches at half the batch
    assert own["model"]["init_args"]["scheduler"]["init_args"]["total_steps"] == 8  # the schedule fits the run

    run_study(setup)
    for name in setup.names:
        assert (setup.out / "runs" / name / "final.ckpt").is_file()
        metrics = read_metrics(setup.out / "runs" / name)
        assert len(metrics["val/image_mae_best_tau"]) == 2 and "val/solid_above_tau" in metrics
    run_study(setup)  # finished runs are not trained again
    assert (setup.out / "runs" / "base" / "train.log").read_text().count("Seed set to 0") == 1

    result = report(setup, tmp_path / "report")
    assert [row["run"] for row in result["runs"]] == ["base", "onecycle"] and all(row["patches"] == 64 for row in result["runs"])
    assert (tmp_path / "report" / "curves.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == result
    assert "| onecycle | 64 |" in (tmp_path / "report" / "results.md").read_text()


def test_confidence_distributions_measure_each_kind(tmp_path):
    from q1net.data.sources import SyntheticSource
    from q1net.predictor.weights import load_weights, pretrained_path
    from q1net.tools.confidence import KINDS, distributions, patches_of

    photos = SyntheticSource(count=2, size=96, seed=5)
    patches, truth = patches_of("gradient", photos, np.array([10, 90]), per_quality=3)
    assert patches.shape == (6, 3, 16, 16) and list(truth) == [10, 10, 10, 90, 90, 90]
    table = distributions({"shipped": str(pretrained_path())}, photos, tmp_path, qualities=2, per_quality=4)
    row = table["shipped"]
    assert row["tau"] == load_weights(pretrained_path()).tau and all(0.0 <= row[f"{kind}_above_tau"] <= 1.0 for kind in KINDS)
    assert (tmp_path / "confidence.png").stat().st_size > 0 and "shipped" in (tmp_path / "confidence.json").read_text()
