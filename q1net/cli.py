"""The `q1net` command: a thin layer that parses arguments and calls the API.

Exit codes: 0 all inputs done, 1 some inputs failed (each named on stderr in one
line, the others still processed), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from q1net.atomic import write_atomically

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + 2  # SIGINT, as shells report a process it ended


def fail(message: str) -> None:
    print(f"q1net: {message}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    from functools import partial

    from q1net.collection.journal import Journal, JournalError
    from q1net.collection.pipeline import Options, run_to_journal, run_to_terminal
    from q1net.data.images import MAX_PIXELS_DEFAULT
    from q1net.predictor.weights import WeightsError

    options = Options(Path(args.heatmap) if args.heatmap else None, args.show_table)
    load = partial(load_predictor, args, args.blocks)
    try:
        journal = Journal(args.out, args.chunk_rows) if args.out else None
        if args.devices or args.num_nodes > 1 or args.accelerator:
            if journal is None or args.heatmap:
                fail("--devices, --num-nodes and --accelerator need --out, and take no --heatmap")
                return EXIT_USAGE
            from q1net.collection.distributed import run_distributed

            load(device="cpu")  # the weights are checked before any rank starts
            lightning = {"devices": args.devices, "num_nodes": args.num_nodes, "accelerator": args.accelerator}
            lightning |= {"loader_workers": args.loader_workers, "quiet": args.quiet}
            max_pixels = args.max_pixels or MAX_PIXELS_DEFAULT
            report = run_distributed(args.paths, journal, load, options, run_settings(args), args.restart, max_pixels, **lightning)
            return EXIT_SOME_FAILED if report and report.get("failed") else EXIT_OK
        predictor = load()  # also checks the weights before any worker starts
        if journal is None:
            failed = run_to_terminal(predictor, load, args.paths, args.format, args.workers, options, args.quiet)
        else:
            settings = run_settings(args)
            report = run_to_journal(predictor, load, args.paths, journal, args.workers, options, args.quiet, settings, args.restart)
            failed = report.get("failed", 0)
    except (WeightsError, JournalError) as error:
        fail(str(error))
        return EXIT_USAGE
    return EXIT_SOME_FAILED if failed else EXIT_OK


def run_settings(args: argparse.Namespace) -> dict[str, object]:
    """What makes a run's rows what they are: a resumed run must have the same (q1net.collection.journal)."""
    names = ("paths", "blocks", "tau", "checkpoint", "method", "no_calibration", "engine", "max_pixels", "show_table", "heatmap", "program")
    return {name: getattr(args, name) for name in names} | {"version": __import__("q1net").__version__}


def add_condition_arguments(parser: argparse.ArgumentParser) -> None:
    from q1net.forensics.quant_tables import OTHER_TABLES

    parser.add_argument("root", nargs="?", default=None, help="folder of lossless images (searched recursively); not with --content")
    parser.add_argument(
        "--content",
        choices=("graphics",),
        default=None,
        help="generated hard cases instead of a folder (solid colours, gradients, text, ...)",
    )
    parser.add_argument("--count", type=positive_int, default=36, help="images of --content (default 36)")
    parser.add_argument("--quality-min", type=int, default=1)
    parser.add_argument("--quality-max", type=int, default=100)
    parser.add_argument("--quality-step", type=positive_int, default=1, help="qualities min, min+N, ... (default every level)")
    parser.add_argument("--subsampling", choices=("4:2:0", "4:2:2", "4:4:4"), default="4:2:0")
    parser.add_argument(
        "--grid-offset", choices=("none", "random"), default="none", help="random: crop 1..7 px so the grid is off the origin"
    )
    parser.add_argument("--grayscale", action="store_true", help="code grayscale JPEGs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random grid offsets")
    parser.add_argument("--preset", default=None, help="code with a Pillow preset (web_high, ...) instead of the quality range")
    parser.add_argument("--recompress", type=int, default=None, metavar="Q2", help="decode and code again at Q2 (truth: min(q, Q2))")
    parser.add_argument("--tables", choices=OTHER_TABLES, default=None, help="another encoder's tables (truth: their IJG-equivalent)")
    parser.add_argument("--upscale", type=float, default=None, metavar="F", help="enlarge each image F times (bicubic) before coding")
    parser.add_argument("--checkpoint", default=None, help="a training .ckpt or .safetensors instead of the shipped weights")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    add_engine_argument(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text", help="json: print the summary as JSON on stdout")


def add_method_argument(parser: argparse.ArgumentParser) -> None:
    from q1net.predictor.inference import METHODS

    parser.add_argument(
        "--method", choices=METHODS, default="hybrid", help="hybrid (default): lattice verifier with the CNN; cnn: the network alone"
    )
    parser.add_argument(
        "--no-calibration", action="store_true", help="the network's own qualities, without the weights' tuned calibration (as published)"
    )


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    from q1net.predictor.engines import ENGINES

    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="auto (default): the network on ONNX Runtime on CPU (PyTorch on GPU), grid and lattice compiled once "
        "'compiled' has built them (about 40 s, once), else eager; or force one",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_blocks(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q1net", description="JPEG quality level (1..100) from pixels alone (Q1Net).")
    parser.add_argument("--version", action="version", version=f"q1net {__import__('q1net').__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train a model (LightningCLI: [fit|validate|test] --config FILE ...)")

    predict = commands.add_parser(
        "predict", help="predict the JPEG quality of images: files, folders (recursive), list files (.txt), tar shards (.tar)"
    )
    predict.add_argument("paths", nargs="+", metavar="PATH")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table", help="table (default), JSON lines or CSV")
    predict.add_argument("--blocks", type=positive_int, default=16, help="blocks per side: N x N patches are scored (default 16)")
    predict.add_argument("--tau", type=float, default=None, help="confidence threshold (default: the weights' tuned tau)")
    predict.add_argument("--checkpoint", default=None, help="a training .ckpt or .safetensors instead of the shipped weights")
    predict.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    predict.add_argument("--heatmap", default=None, metavar="OUT", help="write block heat maps: a .png for one input, else a folder")
    add_method_argument(predict)
    add_engine_argument(predict)
    predict.add_argument("--workers", type=positive_int, default=1, help="processes predicting in parallel (default 1)")
    predict.add_argument("--max-pixels", type=positive_int, default=None, help="refuse images with more pixels (default 100 M)")
    predict.add_argument("--show-table", action="store_true", help="estimate and print the 64 luma quantiser steps from the pixels")
    predict.add_argument(
        "--program", default=None, metavar="FILE", help="run an exported program (.onnx, .pte from q1net export) instead of the weights"
    )
    predict.add_argument(
        "--out", default=None, metavar="FILE", help="write the rows to FILE (.parquet, .jsonl, .csv), resumable: run again to continue"
    )
    predict.add_argument("--restart", action="store_true", help="with --out: start over instead of continuing an unfinished run")
    predict.add_argument(
        "--chunk-rows", type=positive_int, default=256, help="with --out: rows committed at once (a kill loses at most these; default 256)"
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    predict.add_argument("--devices", default=None, help="Lightning's Trainer.predict on N devices (an int, 'auto' or a list); needs --out")
    predict.add_argument("--num-nodes", type=positive_int, default=1, help="machines of a Lightning run (torchrun, SLURM); needs --out")
    predict.add_argument("--accelerator", default=None, help="cpu, gpu or auto for the Lightning run (default: auto)")
    predict.add_argument("--loader-workers", type=int, default=2, help="decoding processes per Lightning rank (default 2)")

    evaluate = commands.add_parser("evaluate", help="the paper's protocol: code lossless images at every quality, predict")
    add_condition_arguments(evaluate)
    evaluate.add_argument(
        "--blocks", type=parse_blocks, default=[16], help="blocks per side, or a comma list (4,8,12,16,20,24 gives Table 4)"
    )
    evaluate.add_argument("--tau", type=float, default=None, help="confidence threshold (default: the weights' tuned tau)")
    add_method_argument(evaluate)
    evaluate.add_argument("--out", default=None, help="folder for summary.json, confusion.png, per_quality.png")
    evaluate.add_argument(
        "--pairs",
        type=parse_blocks,
        default=None,
        metavar="Q,Q,...",
        help="also code twice at each pair of these qualities: flags by pair",
    )
    evaluate.add_argument("--wandb", action="store_true", help="log the summary and pictures to a W&B run (offline without a key)")

    tune = commands.add_parser("tune-tau", help="grid-search tau on validation images (the paper's way), then fit the calibration at it")
    add_condition_arguments(tune)
    tune.add_argument("--blocks", type=positive_int, default=16, help="blocks per side")
    tune.add_argument("--out", default=None, help="write tau, the calibration and the sweep as JSON here (for q1net pack --tuned)")

    from q1net.export import VULKAN_DELEGATES

    export = commands.add_parser("export", help="export to ONNX / ExecuTorch (.pte, Vulkan or XNNPACK) and check parity")
    export.add_argument("--format", choices=("onnx", "pte"), default=None, help="one format (or --all)")
    export.add_argument(
        "--backend", choices=("xnnpack", "vulkan", "portable"), default="xnnpack", help="ExecuTorch backend for --format pte"
    )
    export.add_argument("--fp16", action="store_true", help="fp16 Vulkan program")
    export.add_argument(
        "--vulkan-delegate",
        choices=VULKAN_DELEGATES,
        default="network",
        help="hybrid Vulkan program: the network alone in the Vulkan delegate (checked here), or every operator Vulkan supports",
    )
    export.add_argument("--all", action="store_true", help="every network program (ONNX, XNNPACK, Vulkan fp32/fp16) and every hybrid one")
    export.add_argument("--checkpoint", default=None, help="a training .ckpt or .safetensors instead of the shipped weights")
    export.add_argument("--out", default="exports", help="output folder (default exports/)")
    export.add_argument("--blocks", type=positive_int, default=16, help="blocks per side of the Vulkan mosaic (default 16)")
    export.add_argument("--images", default=None, help="folder of lossless images for the parity check (default: built-in synthetic)")
    export.add_argument("--program", choices=("network", "hybrid"), default="network", help="the network alone, or the whole predictor")
    export.add_argument("--parity-images", type=positive_int, default=None, help="use only the first N images of --images")
    export.add_argument(
        "--parity-qualities", type=parse_blocks, default=[10, 50, 90], help="qualities of the hybrid parity check (default 10,50,90)"
    )

    bench = commands.add_parser("bench", help="measure latency, throughput, training speed and memory; write OUT/results.{json,md}")
    bench.add_argument("--out", default="bench", help="output folder (default bench/)")
    bench.add_argument("--workers", type=positive_int, default=None, help="worker processes to compare with 1 (default: every core)")

    reproduce = commands.add_parser("reproduce", help="train and evaluate the paper's Table 2 and 3 networks at one budget")
    reproduce.add_argument("--budget", type=float, required=True, help="minutes of training per network")
    reproduce.add_argument("--train", required=True, help="folder of lossless training images")
    reproduce.add_argument("--val", required=True, help="folder of lossless validation images (thresholds are tuned here)")
    reproduce.add_argument("--test", required=True, help="folder of lossless test images (the table's figures)")
    reproduce.add_argument("--out", default="runs/reproduce", help="runs, results.json and table.md (default runs/reproduce)")
    reproduce.add_argument("--quality-step", type=positive_int, default=1, help="evaluate qualities 1, 1+N, ... (default every level)")
    reproduce.add_argument("--rows", default="", help="comma list of rows (names or config names); default all")
    reproduce.add_argument("--group", default="", help="W&B group of the runs (default reproduce-DATE)")
    reproduce.add_argument("--train-arg", action="append", default=[], help="extra `q1net train` argument for every run (repeatable)")

    study = commands.add_parser("study", help="the training study: candidate recipes trained alike, their learning curves plotted")
    study.add_argument("--runs", default="", help="comma list of candidates, configs/study/<name>.yaml or base (default all)")
    study.add_argument("--patches", type=positive_int, default=409_600, help="training patches per run (default 409,600)")
    study.add_argument("--evals", type=positive_int, default=8, help="validations per run (default 8)")
    study.add_argument("--threads", type=positive_int, default=1, help="torch threads per run (default 1)")
    study.add_argument("--out", default="runs/study", help="the runs' folders (default runs/study)")
    study.add_argument("--report", default="docs/training", help="curves.png, results.md and results.json go here")
    study.add_argument("--report-only", action="store_true", help="train nothing; plot the runs that have logs")
    study.add_argument(
        "--confidence",
        default=None,
        metavar="PHOTOS",
        help="also the confidence distributions of solid, gradient and textured patches (textured: from these photos) "
        "for the shipped weights and each finished run",
    )

    pack = commands.add_parser("pack", help="turn a training checkpoint into a safetensors weights file with tau and recipe")
    pack.add_argument("checkpoint", help="a training .ckpt, or a .safetensors to ship again with a new tau or calibration")
    pack.add_argument("out", help="the .safetensors file to write")
    tuned = pack.add_mutually_exclusive_group(required=True)
    tuned.add_argument("--tuned", default=None, help="the JSON `q1net tune-tau --out` wrote: its tau and calibration")
    tuned.add_argument("--tau", type=float, default=None, help="a confidence threshold alone (no calibration)")
    pack.add_argument("--recipe", default=None, help="the training config, embedded in the weights' metadata")

    data = commands.add_parser("data", help="fetch data sets").add_subparsers(dest="dataset", required=True)
    div2k = data.add_parser("div2k", help="download and unpack DIV2K high-resolution PNGs")
    div2k.add_argument("--root", required=True, help="folder to fill (DIV2K_train_HR/, DIV2K_valid_HR/)")
    div2k.add_argument("--base-url", default=None, help="mirror to download from instead of the official host")
    div2k.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX", help="pin an archive's SHA-256 (repeatable)")
    pack = data.add_parser("pack", help="pack a folder's photos as PNG crops into one zip within a byte budget (GPU runs)")
    pack.add_argument("root", help="folder of lossless images")
    pack.add_argument("out", help="the .zip to write")
    pack.add_argument("--crop", type=positive_int, default=None, help="crop side in pixels, a multiple of 16 (default: whole images)")
    pack.add_argument("--max-mb", type=float, default=44.0, help="byte budget in MiB (default 44)")
    return parser


def load_predictor(args: argparse.Namespace, blocks: int, device: str | None = None):
    """The predictor the arguments ask for (`device` overrides --device: a Lightning rank's own)."""
    from q1net.predictor.inference import Predictor, ProgramPredictor

    if getattr(args, "program", None):
        return ProgramPredictor(args.program, **({"max_pixels": args.max_pixels} if getattr(args, "max_pixels", None) else {}))

    options = {"blocks": blocks, "device": device or args.device, "tau": getattr(args, "tau", None)}
    options["method"] = getattr(args, "method", "hybrid")
    options["calibrate"] = not getattr(args, "no_calibration", False)
    if getattr(args, "max_pixels", None):
        options["max_pixels"] = args.max_pixels
    if getattr(args, "engine", None):
        options["engine"] = args.engine
    return Predictor.from_checkpoint(args.checkpoint, **options) if args.checkpoint else Predictor.from_pretrained(**options)


def condition_of(args: argparse.Namespace):
    from q1net.tools.evaluate import Condition

    names = (
        "quality_min",
        "quality_max",
        "quality_step",
        "subsampling",
        "grid_offset",
        "grayscale",
        "seed",
        "preset",
        "recompress",
        "tables",
        "upscale",
    )
    return Condition(**{name: getattr(args, name) for name in names})


def source_of(args: argparse.Namespace):
    """The evaluation images: a folder, or generated hard cases (--content)."""
    from q1net.data.sources import FolderSource, GraphicsSource

    if (args.root is None) == (args.content is None):
        raise ValueError("give a folder of images or --content, one of the two")
    return GraphicsSource(count=args.count, seed=args.seed) if args.content else FolderSource(args.root)


def run_evaluate(args: argparse.Namespace) -> int:
    from q1net.plots import confusion_image, confusion_matrix, error_by_quality_image
    from q1net.predictor.weights import WeightsError
    from q1net.tools.evaluate import by_kind, pair_table, score_source, summarise_methods

    try:
        source, condition = source_of(args), condition_of(args)
        rows = []
        for blocks in args.blocks:
            predictor = load_predictor(args, blocks)
            scores = score_source(predictor, source, condition, progress=sys.stderr.isatty())
            summary, answers = summarise_methods(scores, predictor.tau, args.method)
            calibrated = not predictor.calibration.is_identity
            rows.append(
                {"blocks": blocks, "tau": predictor.tau, "calibrated": calibrated, "seconds_per_image": float(np.mean(scores.seconds))}
                | summary
            )
    except (WeightsError, FileNotFoundError, ValueError) as error:
        fail(str(error))
        return EXIT_USAGE
    report = {"root": args.root or args.content, "condition": vars(condition), "checkpoint": args.checkpoint or "shipped", "results": rows}
    if args.content:
        report["by_kind"] = by_kind(scores, answers, type(source).kind_of_name)
    if args.pairs:
        report["pairs"] = pair_table(load_predictor(args, args.blocks[0]), source, tuple(args.pairs), condition, sys.stderr.isatty())
    pictures = {}
    if len(rows) == 1:
        true, title = np.array(scores.true), Path(args.root).name if args.root else args.content
        per_quality = rows[0]["per_quality_mae"]
        pictures = {
            "confusion.png": confusion_image(confusion_matrix(true, answers.quality), f"{title}: {len(true)} images"),
            "per_quality.png": error_by_quality_image(np.array(list(per_quality)), np.array(list(per_quality.values()))),
        }
    if args.out:
        out = Path(args.out)
        write_atomically(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
        for name, picture in pictures.items():
            write_atomically(out / name, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
    if args.wandb:
        log_to_wandb(report, pictures)
    if args.format == "json":
        print(json.dumps(report))
    else:
        print(
            f"{'blocks':>6} {'method':>8} {'MAE':>7} {'SDE|e|':>7} {'SDE(e)':>7} {'max|e|':>7} {'exact':>6} {'lattice':>7} "
            f"{'covered':>7} {'width':>5} {'determ.':>7} {'flagged':>7} {'ms/img':>7}  ({len(scores.true)} images)"
        )
        for row in rows:
            for method, figures in row["by_method"].items():
                print(
                    f"{row['blocks']:>6} {method:>8} {figures['mae']:>7.3f} {figures['sde_abs']:>7.3f} {figures['sde']:>7.3f} "
                    f"{figures['max_abs_error']:>7.2f} {figures['exact_fraction']:>6.1%} {figures['decided_by_lattice']:>7.1%} "
                    f"{figures['coverage']:>7.1%} {figures['median_width']:>5.1f} {figures['determined_fraction']:>7.1%} "
                    f"{figures['flagged_fraction']:>7.1%} {1000 * row['seconds_per_image']:>7.1f}"
                )
        for kind, figures in report.get("by_kind", {}).items():
            close = "n/a" if figures["within_2_up_to_95"] is None else f"{figures['within_2_up_to_95']:.1%}"
            print(
                f"{kind:>12}: within 2 (q <= 95) {close}, covered {figures['coverage']:.1%}, width {figures['median_width']:.0f}, "
                f"determined {figures['determined_fraction']:.1%}, flagged {figures['flagged_fraction']:.1%}"
            )
    return EXIT_OK


def log_to_wandb(report: dict, pictures: dict) -> None:
    import wandb

    from q1net.tracking import choose_wandb_mode

    choose_wandb_mode()
    run = wandb.run or wandb.init(project="q1net", job_type="evaluate", config={"root": report["root"], **report["condition"]})
    for row in report["results"]:
        run.log({f"eval/{key}": value for key, value in row.items() if isinstance(value, (int, float))})
    run.log({f"eval/{name.removesuffix('.png')}": wandb.Image(picture) for name, picture in pictures.items()})


def run_tune_tau(args: argparse.Namespace) -> int:
    from q1net.predictor.weights import WeightsError
    from q1net.tools.evaluate import score_source, tune_calibration, tune_tau

    try:
        raw_cnn = argparse.Namespace(**vars(args), no_calibration=True, method="cnn")  # tau and the calibration are tuned afresh below
        predictor = load_predictor(raw_cnn, args.blocks)
        scores = score_source(predictor, source_of(args), condition_of(args), progress=sys.stderr.isatty())
    except (WeightsError, FileNotFoundError, ValueError) as error:
        fail(str(error))
        return EXIT_USAGE
    best, sweep = tune_tau(scores)
    calibration, report = tune_calibration(scores, best)
    tuned = {"tau": best, "calibration": calibration.as_dict(), "calibration_mae": report, "sweep": sweep}
    if args.out:
        write_atomically(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(tuned, indent=2)))
    if args.format == "json":
        print(json.dumps(tuned))
    else:
        for row in sweep:
            print(f"tau {row['tau']:5.1f}  MAE {row['mae']:.3f}  fallback {row['fallback_fraction']:.1%}")
        print(f"best tau: {best}")
        print(
            f"calibration at tau {best}: CNN MAE {report['mae']:.3f} -> {report['mae_calibrated']:.3f} "
            f"({report['mae_calibrated_held_out']:.3f} on images left out of the fit)"
        )
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from q1net.data.sources import FolderSource, SyntheticSource
    from q1net.export.hybrid import HYBRID_TARGETS, HybridTarget
    from q1net.export.run import ALL_TARGETS, Target
    from q1net.predictor.weights import WeightsError

    if not args.all and args.format is None:
        fail("export: give --format onnx|pte or --all")
        return EXIT_USAGE
    if args.format == "pte" and args.program == "hybrid" and args.backend not in ("xnnpack", "vulkan"):
        fail("export: the hybrid program is lowered for --backend xnnpack or vulkan")
        return EXIT_USAGE
    network_targets = () if args.program == "hybrid" else (Target(args.format, args.backend if args.format == "pte" else None, args.fp16),)
    backend = args.backend if args.format == "pte" else None
    hybrid_targets = (HybridTarget(args.format, backend, args.vulkan_delegate),) if args.program == "hybrid" else ()
    if args.all:
        network_targets, hybrid_targets = ALL_TARGETS, HYBRID_TARGETS
    try:
        predictor = load_predictor(argparse.Namespace(checkpoint=args.checkpoint, device="cpu"), args.blocks)
        source = FolderSource(args.images) if args.images else SyntheticSource(count=3, size=256, seed=2024)
        images = [source.load(i) for i in range(min(args.parity_images or len(source), len(source)))]
    except (WeightsError, FileNotFoundError) as error:
        fail(str(error))
        return EXIT_USAGE
    failures = export_networks(args, predictor, network_targets, images[:3]) if network_targets else 0
    if hybrid_targets:
        failures += export_hybrids(args, predictor, hybrid_targets, images)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def export_networks(args: argparse.Namespace, predictor, targets, images) -> int:
    """The network-only programs: their table (parity of raw outputs), and the count of parity failures."""
    from q1net.export.parity import ParityError
    from q1net.export.run import export_target

    print(
        f"{'network':<26} {'size KB':>8} {'max|diff|':>10} {'image MAE':>9} {'ms/image':>9}  checked with (|diff| on the 0..1 output scale)"
    )
    failures = 0
    for target in targets:
        try:
            row = export_target(predictor.net, target, Path(args.out), predictor.tau, images, args.blocks, predictor.calibration)
        except ParityError as error:
            fail(f"parity failed: {error}")
            failures += 1
            continue
        ms = "n/a" if row["ms_per_image"] is None else f"{row['ms_per_image']:.1f}"
        print(f"{row['format']:<26} {row['size_kb']:>8.1f} {row['max_abs_diff']:>10.2e} {row['image_mae']:>9.2f} {ms:>9}  {row['runtime']}")
        for note in row["notes"]:
            print(f"{'':<26} note: {note}")
    return failures


def export_hybrids(args: argparse.Namespace, predictor, targets, images) -> int:
    """The whole-predictor programs: their table (answers against q1net predict's), and the count of parity failures."""
    from q1net.export.hybrid import PARITY_LEVELS, export_hybrid, parity_cases
    from q1net.export.parity import ParityError

    cases = parity_cases(images, tuple(args.parity_qualities))
    expected = [(result.quality, result.method) for result in (predictor.predict(pixels) for pixels in cases)]
    within = f"within {PARITY_LEVELS}"
    print(f"{'program':<26} {'size KB':>8} {'images':>7} {within:>10} {'method':>7} {'max|dq|':>8} {'ms/image':>9}  run by")
    failures = 0
    for target in targets:
        try:
            row = export_hybrid(predictor, target, Path(args.out), cases, expected)
        except ParityError as error:
            fail(f"parity failed: {error}")
            failures += 1
            continue
        ms = "n/a" if row["ms_per_image"] is None else f"{row['ms_per_image']:.1f}"
        print(
            f"{row['format']:<26} {row['size_kb']:>8.1f} {row['images']:>7} {row['quality_within']:>10.1%} {row['method_agrees']:>7.1%} "
            f"{row['max_quality_diff']:>8.2f} {ms:>9}  {row['runtime']}"
        )
        for note in row["notes"]:
            print(f"{'':<26} note: {note}")
    return failures


def run_study(args: argparse.Namespace) -> int:
    from q1net.tools.study import CANDIDATES, Setup, report
    from q1net.tools.study import run_study as train_candidates

    names = tuple(name.strip() for name in args.runs.split(",") if name.strip()) or CANDIDATES
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        fail(f"unknown study candidates: {', '.join(sorted(unknown))}; known: {', '.join(CANDIDATES)}")
        return EXIT_USAGE
    setup = Setup(Path(args.out), args.patches, args.evals, args.threads, names)
    try:
        if not args.report_only:
            train_candidates(setup)
    except RuntimeError as error:
        fail(str(error))
        return EXIT_SOME_FAILED
    print(
        (Path(args.report) / "results.md").read_text() if report(setup, Path(args.report))["runs"] else "no study run has logs yet", end=""
    )
    if args.confidence:
        from q1net.data.sources import FolderSource
        from q1net.predictor.weights import pretrained_path
        from q1net.tools.confidence import distributions

        finished = {name: setup.out / "runs" / name / "final.ckpt" for name in names}
        weights = {"shipped": str(pretrained_path())} | {name: str(path) for name, path in finished.items() if path.exists()}
        for name, row in distributions(weights, FolderSource(args.confidence), Path(args.report)).items():
            shares = ", ".join(f"{key.removesuffix('_above_tau')} {value:.1%}" for key, value in row.items() if key.endswith("_above_tau"))
            print(f"{name}: above tau {row['tau']:g}: {shares}")
    return EXIT_OK


def run_pack(args: argparse.Namespace) -> int:
    from q1net.predictor.calibration import Calibration
    from q1net.predictor.weights import WeightsError, pack_checkpoint

    try:
        tuned = json.loads(Path(args.tuned).read_text()) if args.tuned else {"tau": args.tau}
        tau, calibration = float(tuned["tau"]), Calibration.from_dict(tuned.get("calibration"))
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"{args.tuned}: not a q1net tune-tau --out file ({type(error).__name__}: {error})")
        return EXIT_USAGE
    try:
        write_atomically(Path(args.out), lambda tmp: pack_checkpoint(args.checkpoint, tmp, tau, args.recipe, calibration))
    except (WeightsError, OSError) as error:
        fail(str(error))
        return EXIT_USAGE
    calibrated = "identity" if calibration.is_identity else f"{len(calibration.knots)} knots"
    print(f"{args.out}: {Path(args.out).stat().st_size} bytes, tau {tau}, calibration {calibrated}")
    return EXIT_OK


def run_data(args: argparse.Namespace) -> int:
    if args.dataset == "pack":
        return run_pack_photos(args)
    from q1net.data.div2k import DownloadError, download_div2k

    pins = dict(pin.split("=", 1) for pin in args.sha256 if "=" in pin)
    try:
        download_div2k(args.root, base_url=args.base_url, sha256=pins)
    except DownloadError as error:
        fail(str(error))
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_pack_photos(args: argparse.Namespace) -> int:
    from q1net.data.packed import pack_photos
    from q1net.data.sources import FolderSource

    try:
        source = FolderSource(args.root)
        written = pack_photos(source, Path(args.out), args.crop, int(args.max_mb * (1 << 20)))
    except (FileNotFoundError, ValueError, OSError) as error:
        fail(str(error))
        return EXIT_USAGE
    print(f"{args.out}: {written['images']} images of {len(source)} photos, {written['bytes'] / (1 << 20):.1f} MiB")
    return EXIT_OK


def run_bench(args: argparse.Namespace) -> int:
    from q1net.tools.bench import markdown
    from q1net.tools.bench import run_bench as bench

    print(markdown(bench(Path(args.out), args.workers)), end="")
    return EXIT_OK


def run_reproduce(args: argparse.Namespace) -> int:
    from q1net.tools.reproduce import ROWS, Setup, reproduce

    rows = tuple(name.strip() for name in args.rows.split(",") if name.strip())
    unknown = set(rows) - {row.name for row in ROWS} - {row.config for row in ROWS}
    if unknown:
        fail(f"unknown rows: {', '.join(sorted(unknown))}; known: {', '.join(row.name for row in ROWS)}")
        return EXIT_USAGE
    for folder in (args.train, args.val, args.test):
        if not Path(folder).is_dir():
            fail(f"{folder}: image folder not found")
            return EXIT_USAGE
    setup = Setup(args.train, args.val, args.test, args.budget, Path(args.out), args.quality_step, args.group, rows, tuple(args.train_arg))
    try:
        report = reproduce(setup)
    except RuntimeError as error:
        fail(str(error))
        return EXIT_SOME_FAILED
    print((Path(args.out) / "table.md").read_text(), end="")
    return EXIT_OK if report["rows"] else EXIT_SOME_FAILED


def show_notices(stream: TextIO) -> logging.Handler:
    """q1net's INFO log (the engines' one-off exports and builds) as `q1net: ...` lines on `stream`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("q1net: %(message)s"))
    logger = logging.getLogger("q1net")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as \xNN escapes instead of crashing
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv[:1] == ["train"]:  # LightningCLI parses its own arguments
        from q1net.train import train

        return train(argv[1:])
    args = build_parser().parse_args(argv)
    if sys.stderr.isatty():  # people at a terminal hear of one-off builds (a progress bar's rule: none in pipes and logs)
        show_notices(sys.stderr)
    commands = {
        "predict": run_predict,
        "evaluate": run_evaluate,
        "tune-tau": run_tune_tau,
        "export": run_export,
        "pack": run_pack,
        "bench": run_bench,
        "reproduce": run_reproduce,
        "study": run_study,
        "data": run_data,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C: one line and the code shells give, not a traceback
        fail("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
