"""`q1net reproduce`: the paper's Tables 2 and 3 on this machine, at a given training budget.

Every network is trained for the same wall-clock budget on the same photos
(`q1net train` with configs/reproduce/base.yaml and the row's config; W&B runs
grouped under one name), then evaluated with one protocol on the test folder:
each image JPEG-coded at the chosen qualities (Pillow's libjpeg-turbo, 4:2:0),
decoded, and predicted by the network alone (no lattice verifier; Q1 models
on 16 x 16 blocks, peers on one MCU-aligned centre crop). Thresholds (tau, the
Sobel and softmax ones) are grid-searched on the validation folder, never on
test. Q1-Sobel and Q1-Softmax reuse the Q1-Regressor and Q1-Classifier
training runs, as in the paper, and differ only in the block filter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from q1net.data.patches import patch_sobel
from q1net.data.sources import FolderSource, ImageSource
from q1net.predictor.inference import ImageEvidence
from q1net.tools.evaluate import Answers, BlockScores, Condition, score_source, summarise, tune_tau
from q1net.tools.runs import final_checkpoint_callback, train_in_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "reproduce"
Filter = Literal["confidence", "none", "sobel"]
THRESHOLD_GRIDS: dict[str, tuple[float, ...]] = {  # searched on validation images
    "confidence": tuple(np.arange(50.0, 99.51, 0.5)),  # Q1Net's confidence, and the classifier's softmax score x 100
    "sobel": tuple(np.arange(0.0, 60.1, 2.0)),  # mean Sobel magnitude of a block's luma
}


@dataclass(frozen=True)
class Row:
    """One line of the table: how it is trained and filtered, and the paper's figures."""

    name: str
    config: str  # configs/reproduce/<config>.yaml
    block_filter: Filter | None  # Q1 rows: which score keeps blocks; None: a whole-crop peer
    paper_mae: float
    paper_sde: float
    paper_ms: float  # Adreno 660 GPU, TFLite
    paper_params: str
    table: int  # the paper's table


ROWS = (
    Row("Q1-Regressor", "regressor", "none", 1.28, 5.79, 9, "125 K", 3),
    Row("Q1-Classifier", "classifier", "none", 1.68, 7.69, 10, "125 K", 3),
    Row("Q1-LambdaQ", "lambda_q", "confidence", 0.39, 0.38, 10, "125 K", 3),
    Row("Q1-Lambda1", "lambda_1", "confidence", 0.36, 0.39, 10, "125 K", 3),
    Row("Q1-Light", "light", "confidence", 0.44, 0.44, 7, "71 K", 3),
    Row("Q1-Heavy", "heavy", "confidence", 0.26, 0.29, 19, "280 K", 3),
    Row("Q1-No-BB", "no_bb", "confidence", 0.87, 0.89, 5, "49 K", 3),
    Row("Q1-Sobel", "regressor", "sobel", 0.46, 0.50, 14, "125 K", 3),
    Row("Q1-Softmax", "classifier", "confidence", 0.52, 0.67, 10, "125 K", 3),
    Row("Baseline", "baseline", "confidence", 0.40, 0.39, 10, "125 K", 3),
    Row("MobileNetV2", "mobilenet_v2", None, 1.16, 1.43, 7, "2.32 M", 2),
    Row("EfficientNet-B0", "efficientnet_b0", None, 2.24, 2.29, 12, "4.13 M", 2),
    Row("ShuffleNet V2", "shufflenet_v2", None, 2.04, 2.29, 11, "3.71 M", 2),
    Row("JQE-like", "jqe_like", None, 1.60, 1.49, 6, "217 K", 2),
    Row("Q-EST-like", "qest_like", None, 1.22, 1.34, 6, "213 K", 2),
)


@dataclass(frozen=True)
class Setup:
    train: str
    val: str
    test: str
    budget_minutes: float  # wall-clock training time of each run
    out: Path  # runs/, results.json and table.md go here
    quality_step: int = 1  # test and validation qualities 1, 1 + step, ... up to 100
    group: str = ""  # W&B group; a dated name by default
    rows: tuple[str, ...] = ()  # only these rows, by name or config (all when empty)
    train_args: tuple[str, ...] = ()  # more `q1net train` arguments for every run (e.g. --data.batch_size=64)

    @property
    def condition(self) -> Condition:
        return Condition(quality_step=self.quality_step)


def run_config(row: Row, setup: Setup) -> Path:
    """The per-run YAML that `q1net train` reads after base.yaml and the row's config."""
    folder = setup.out / "runs" / row.config
    overrides = {
        "trainer": {
            "max_time": f"00:00:{int(setup.budget_minutes):02d}:{round(60 * (setup.budget_minutes % 1)):02d}",
            "default_root_dir": str(folder),
            "enable_progress_bar": False,  # train.log keeps the metrics, not a progress bar per step
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {
                    "project": "q1net",
                    "name": row.config,
                    "group": setup.group,
                    "job_type": "train",
                    "save_dir": str(folder),
                },
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(folder / "checkpoints"), "save_last": True, "every_n_train_steps": 200},
                },
                final_checkpoint_callback(folder),
            ],
        },
        "data": {
            "train_source": {"class_path": "q1net.data.sources.FolderSource", "init_args": {"root": setup.train}},
            "val_source": {"class_path": "q1net.data.sources.FolderSource", "init_args": {"root": setup.val}},
        },
    }
    path = folder / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(overrides))
    return path


def train_row(row: Row, setup: Setup) -> Path:
    """Train one run to its budget (q1net.tools.runs.train_in_folder: finished runs are reused, interrupted ones resume
    with the time they had already spent, which Lightning's Timer keeps in the checkpoint)."""
    folder = setup.out / "runs" / row.config
    configs = [CONFIGS / "base.yaml", CONFIGS / f"{row.config}.yaml", run_config(row, setup)]
    return train_in_folder(row.name, configs, folder, setup.train_args)


def _filtered(scores: BlockScores, block_filter: Filter) -> BlockScores:
    """`scores` with each block's confidence replaced by the row's filter score (none: every block votes)."""
    if block_filter == "confidence":
        return scores

    def filtered(found: ImageEvidence) -> ImageEvidence:
        score = None if block_filter == "none" else torch.from_numpy(patch_sobel(found.evidence.patches.numpy()))
        return replace(found, evidence=found.evidence._replace(confidence=score))

    return replace(scores, evidence=[filtered(found) for found in scores.evidence])


def score_q1(checkpoint: Path, setup: Setup, val: ImageSource, test: ImageSource) -> dict[str, BlockScores]:
    """The network's block scores on every validation and test image (16 x 16 blocks, network alone)."""
    from q1net.predictor.inference import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, method="cnn", engine="torch")
    return {name: score_source(predictor, source, setup.condition) for name, source in (("val", val), ("test", test))}


def evaluate_q1(row: Row, raw: dict[str, BlockScores], parameters: int) -> dict[str, object]:
    """The row's block filter on `raw` scores, its threshold grid-searched on the validation images."""
    scored = {name: _filtered(scores, row.block_filter) for name, scores in raw.items()}
    threshold = None
    if row.block_filter != "none":
        threshold, _ = tune_tau(scored["val"], THRESHOLD_GRIDS[row.block_filter])
    answers = scored["test"].predictions(-np.inf if threshold is None else threshold, "cnn")
    seconds = float(np.median(scored["test"].seconds))
    if row.block_filter == "sobel":
        patches = scored["test"].evidence[0].evidence.patches.numpy()
        start = time.perf_counter()
        patch_sobel(patches)
        seconds += time.perf_counter() - start
    return summarise(np.array(scored["test"].true), answers) | {
        "threshold": threshold,
        "ms_per_image": 1000 * seconds,
        "parameters": parameters,
    }


def evaluate_peer(checkpoint: Path, setup: Setup, test: ImageSource) -> dict[str, object]:
    """One centre crop per test image through the peer, images batched as in `score_source`."""
    from q1net.models.modules import PeerRegressor

    module = PeerRegressor.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).eval()  # our own run's file
    rng = np.random.default_rng(setup.condition.seed)
    true, predicted, seconds = [], [], []
    for index in range(len(test)):
        image = test.load(index)
        made = [setup.condition.make(image, quality, rng) for quality in setup.condition.qualities]
        start = time.perf_counter()
        predicted += module.predict_pixels([pixels for pixels, _ in made]).tolist()
        seconds.append((time.perf_counter() - start) / len(made))
        true += [label for _, label in made]
    parameters = sum(p.numel() for p in module.net.parameters())
    return summarise(np.array(true), Answers.points(np.clip(predicted, 1, 100))) | {
        "threshold": None,
        "ms_per_image": 1000 * float(np.median(seconds)),
        "parameters": parameters,
    }


def _parameters(checkpoint: Path) -> int:
    from q1net.predictor.weights import load_net_file

    return sum(p.numel() for p in load_net_file(checkpoint).net.parameters())


def reproduce(setup: Setup) -> dict[str, object]:
    """Train every run the rows need, evaluate every row, write OUT/results.json and OUT/table.md."""
    setup = replace(setup, group=setup.group or f"reproduce-{datetime.now(UTC):%Y%m%d-%H%M}")
    rows = [row for row in ROWS if not setup.rows or row.name in setup.rows or row.config in setup.rows]
    val, test = FolderSource(setup.val), FolderSource(setup.test)
    results, raw = [], {}  # raw: block scores per Q1 training run, shared by the rows that filter them differently
    for row in rows:
        checkpoint = train_row(row, setup)
        if row.block_filter is None:
            figures = evaluate_peer(checkpoint, setup, test)
        else:
            if row.config not in raw:
                raw[row.config] = score_q1(checkpoint, setup, val, test)
            figures = evaluate_q1(row, raw[row.config], _parameters(checkpoint))
        steps = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
        results.append({"row": row.name, "table": row.table, "config": row.config, "steps": steps} | figures)
        print(f"{row.name}: MAE {figures['mae']:.2f} after {steps} steps", flush=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "budget_minutes": setup.budget_minutes,
        "group": setup.group,
        "qualities": setup.condition.qualities,
        "folders": {"train": setup.train, "val": setup.val, "test": setup.test},
        "rows": results,
    }
    setup.out.mkdir(parents=True, exist_ok=True)
    (setup.out / "results.json").write_text(json.dumps(report, indent=2))
    (setup.out / "table.md").write_text(markdown(report))
    log_to_wandb(report, setup.out)
    return report


def markdown(report: dict) -> str:
    """One table, this machine's figures beside the paper's."""
    paper = {row.name: row for row in ROWS}
    lines = [
        f"Budget {report['budget_minutes']:g} min of training per network on this machine; test images x "
        f"{len(report['qualities'])} qualities; SDE is the std of |e|, as the published evaluator. "
        "Paper: DIV2K test, Tables 2 and 3, times on a phone GPU (Adreno 660).",
        "",
        "| table | method | steps | MAE | SDE | ms / image (CPU) | parameters | paper MAE | paper SDE | paper ms | paper parameters |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        p = paper[r["row"]]
        lines.append(
            f"| {r['table']} | {r['row']} | {r['steps']} | {r['mae']:.2f} | {r['sde_abs']:.2f} | {r['ms_per_image']:.1f} | "
            f"{r['parameters'] / 1000:.0f} K | {p.paper_mae:.2f} | {p.paper_sde:.2f} | {p.paper_ms:g} | {p.paper_params} |"
        )
    return "\n".join(lines) + "\n"


def log_to_wandb(report: dict, folder: Path) -> None:
    """The table as one W&B run in the training runs' group (offline unless a key is configured), files under `folder`."""
    import wandb

    from q1net.tracking import choose_wandb_mode

    choose_wandb_mode()
    columns = ["row", "table", "steps", "mae", "sde_abs", "ms_per_image", "parameters"]
    run = wandb.init(
        project="q1net",
        group=report["group"],
        job_type="reproduce-table",
        name="table",
        config={"budget_minutes": report["budget_minutes"]},
        dir=str(folder),
    )
    run.log({"reproduction": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in report["rows"]])})
    run.finish()
