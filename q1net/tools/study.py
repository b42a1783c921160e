"""`q1net study`: which training settings change how fast Q1Net learns (issue #12; findings in docs/TRAINING.md).

Each candidate is configs/study/<name>.yaml: one change to configs/study/base.yaml. Every run
trains for the same number of patches with the same seeds, data stream and validation set,
checks validation at the same patch counts, and logs to W&B (group "study") and to CSV.
`report` reads the CSVs and plots, against patches seen on a log axis, the validation image
MAE (the network alone, uncalibrated, median of the blocks above tau; at the run's best tau, so
that runs whose confidences sit on other scales compare fairly), the validation patch MAE and the
training patch MAE; and it tabulates the end of each run, with the share of solid-colour
patches whose confidence passes tau (the confidence head should pass none).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from q1net.tools.runs import final_checkpoint_callback, train_in_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "study"


def candidates(configs: Path = CONFIGS) -> tuple[str, ...]:
    """ "base" and every other YAML's stem in `configs`."""
    return tuple(sorted(path.stem for path in configs.glob("*.yaml")))


CANDIDATES = candidates()
STEPS_KEYS = {"OneCycleLR": "total_steps", "CosineAnnealingLR": "T_max"}  # schedules fitted to the run's length
CURVES = (  # (CSV column, panel title), drawn against patches seen
    ("val/image_mae_best_tau", "validation image MAE (best tau)"),
    ("val/patch_mae", "validation patch MAE"),
    ("train/patch_mae", "training patch MAE (running mean of 5 logs)"),
)


@dataclass(frozen=True)
class Setup:
    out: Path  # runs/<name>/ for each candidate
    patches: int = 409_600  # training patches per run
    evals: int = 8  # validations per run, evenly spaced
    threads: int = 1  # torch threads per run (OMP_NUM_THREADS)
    names: tuple[str, ...] = CANDIDATES
    configs: Path = CONFIGS  # base.yaml and the candidates

    def candidate_configs(self, name: str) -> list[Path]:
        if name not in candidates(self.configs):
            raise ValueError(f"unknown study candidate {name!r}; known: {', '.join(candidates(self.configs))}")
        base = self.configs / "base.yaml"
        return [base] if name == "base" else [base, self.configs / f"{name}.yaml"]


def merged(configs: list[Path]) -> dict:
    """The YAMLs merged as LightningCLI merges them (later files win, dictionaries key by key)."""

    def merge(into: dict, update: dict) -> dict:
        for key, value in update.items():
            into[key] = merge(dict(into.get(key) or {}), value) if isinstance(value, dict) and isinstance(into.get(key), dict) else value
        return into

    result: dict = {}
    for path in configs:
        result = merge(result, yaml.safe_load(path.read_text()))
    return result


def run_config(name: str, setup: Setup) -> Path:
    """The run's own YAML, read last: its length, validation points, folders and loggers."""
    folder = setup.out / "runs" / name
    config = merged(setup.candidate_configs(name))
    steps = max(1, setup.patches // config["data"]["batch_size"])
    interval = max(1, steps // setup.evals)
    overrides: dict = {
        "trainer": {
            "max_steps": steps,
            "val_check_interval": interval,
            "default_root_dir": str(folder),
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {"project": "q1net", "name": f"study-{name}", "group": "study", "save_dir": str(folder)},
                },
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder), "name": "csv"}},
            ],
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(folder / "checkpoints"), "save_last": True, "every_n_train_steps": interval},
                },
                final_checkpoint_callback(folder),
            ],
        }
    }
    scheduler = config["model"]["init_args"].get("scheduler")
    if scheduler and scheduler["class_path"].rsplit(".", 1)[-1] in STEPS_KEYS:
        key = STEPS_KEYS[scheduler["class_path"].rsplit(".", 1)[-1]]
        fitted = scheduler | {"init_args": scheduler["init_args"] | {key: steps}}
        overrides["model"] = {"init_args": {"scheduler": fitted}}
    path = folder / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(overrides))
    return path


def run_study(setup: Setup) -> None:
    """Train every candidate of `setup` that has not finished (q1net.tools.runs.train_in_folder), one after the other."""
    for name in setup.names:
        configs = [*setup.candidate_configs(name), run_config(name, setup)]
        train_in_folder(name, configs, setup.out / "runs" / name, env={"OMP_NUM_THREADS": str(setup.threads)})
        print(f"study: {name} done", flush=True)


def read_metrics(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as (step, value) pairs, over all its CSV logs (a resumed run writes a new one)."""
    series: dict[str, dict[int, float]] = {}
    for path in sorted((folder / "csv").glob("version_*/metrics.csv")):
        with path.open() as file:
            for row in csv.DictReader(file):
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        series.setdefault(key, {})[int(row["step"])] = float(value)
    return {key: sorted(values.items()) for key, values in series.items()}


def report(setup: Setup, into: Path) -> dict:
    """curves.png, results.json and results.md in `into`, from the runs of `setup` that have logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    figure, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4.5))
    for name in setup.names:
        folder = setup.out / "runs" / name
        metrics = read_metrics(folder)
        if not metrics:
            continue
        batch = merged(setup.candidate_configs(name))["data"]["batch_size"]
        for axis, (key, title) in zip(axes, CURVES, strict=True):
            points = metrics.get(key, [])
            if key.startswith("train/") and len(points) > 5:  # a running mean of 5 logs: the per-step figure is noisy
                values = np.convolve([v for _, v in points], np.ones(5) / 5, mode="valid")
                points = list(zip([s for s, _ in points][4:], values, strict=True))
            axis.plot([(step + 1) * batch for step, _ in points], [value for _, value in points], label=name, lw=2 if name == "base" else 1)
            axis.set(xscale="log", yscale="log", xlabel="training patches seen", title=title)
        last = {key: values[-1][1] for key, values in metrics.items()}
        rows.append(
            {
                "run": name,
                "patches": (max(step for step, _ in metrics["val/image_mae"]) + 1) * batch if "val/image_mae" in metrics else 0,
                "image_mae_best_tau": last.get("val/image_mae_best_tau"),
                "best_tau": last.get("val/best_tau"),
                "image_mae_tau": last.get("val/image_mae"),
                "patch_mae": last.get("val/patch_mae"),
                "solid_above_tau": last.get("val/solid_above_tau"),
            }
        )
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    into.mkdir(parents=True, exist_ok=True)
    figure.savefig(into / "curves.png", dpi=90)
    plt.close(figure)
    result = {"patches_per_run": setup.patches, "runs": rows}
    (into / "results.json").write_text(json.dumps(result, indent=2))
    (into / "results.md").write_text(markdown(rows))
    return result


def markdown(rows: list[dict]) -> str:
    def show(value: float | None, digits: int = 2) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    lines = [
        "| run | patches | image MAE, best tau | best tau | image MAE, the run's tau | patch MAE | solid colours above tau |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["image_mae_best_tau"] if r["image_mae_best_tau"] is not None else math.inf):
        lines.append(
            f"| {r['run']} | {r['patches']:,} | {show(r['image_mae_best_tau'])} | {show(r['best_tau'], 1)} | {show(r['image_mae_tau'])} | "
            f"{show(r['patch_mae'])} | {show(100 * r['solid_above_tau'] if r['solid_above_tau'] is not None else None, 1)}% |"
        )
    return "\n".join(lines) + "\n"
