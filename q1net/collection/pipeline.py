"""`q1net predict` over any number of inputs on one machine: read ahead, predict, write rows in order.

Items come from q1net.collection.inputs one at a time and are answered in input order, by
this process (reading the next images on a thread meanwhile) or by `workers` processes that
each load the weights once. At most WINDOW_PER_WORKER items per worker are in flight, so
memory stays flat however many inputs there are. Rows go to the terminal (`RowText`), or to
a journal (q1net.collection.journal) that a killed run resumes from; a failed input is a row
with its one-line `error` there, and a line on stderr either way.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from q1net.atomic import write_atomically
from q1net.collection.inputs import Item, count_items, iter_items
from q1net.collection.journal import Journal
from q1net.collection.rows import RowText, quality_text
from q1net.data.images import ImageReadError
from q1net.predictor.inference import Decoded, read_input

WINDOW_PER_WORKER = 4  # items in flight per worker: enough to keep it busy, few enough to keep memory flat
HISTOGRAM_BINS = 10  # the summary's quality histogram: 1-10, 11-20, ..., 91-100


@dataclass(frozen=True)
class Options:
    """How each input is answered beyond the predictor's own settings."""

    heatmaps: Path | None = None  # a .png for a single input, else a folder
    show_table: bool = False


def decode(item: Item, max_pixels: int) -> Decoded | str:
    """The item's pixels, or the one-line error naming it."""
    try:
        if item.problem:
            raise ImageReadError(item.name, item.problem)
        return read_input(item.path if item.data is None else io.BytesIO(item.data), max_pixels)
    except ImageReadError as error:
        return str(error) if item.member is None else f"{item.name}: {error.problem}"
    except (ValueError, OSError) as error:
        return f"{item.name}: {error}"


def identity(item: Item) -> dict[str, object]:
    return {"path": item.path, "member": item.member, "key": item.key}


def answer(predictor, item: Item, decoded: Decoded | str, options: Options, heatmap: Path | None) -> dict[str, object]:
    """One item's row: the answer, or `error`; never raises for a bad input."""
    if isinstance(decoded, str):
        return identity(item) | {"error": decoded}
    try:
        start = time.perf_counter()
        [found] = predictor.gather([decoded])
        result = predictor.resolve(found, source=item.name, return_blocks=heatmap is not None, show_table=options.show_table)
        row = result.as_dict() | identity(item) | {"seconds": round(time.perf_counter() - start, 4)}
    except (ValueError, OSError) as error:
        return identity(item) | {"error": f"{item.name}: {error}"}
    if heatmap is not None:
        from q1net.plots import heatmap_image  # matplotlib: a third of a second, only when a heatmap is asked for

        shown = quality_text(result.quality, result.quality_low, result.quality_high, result.determined)
        name = Path(item.name).name.encode("utf-8", "backslashreplace").decode()  # a title font cannot draw undecodable bytes
        title = f"{name}: quality {shown}, range {result.quality_low}..{result.quality_high}, decided by the {result.method}"
        picture = heatmap_image(decoded.pixels, result, title)
        write_atomically(heatmap, lambda tmp: picture.save(tmp, format="PNG"))
        row["heatmap"] = str(heatmap)
    return row


class HeatmapNames:
    """Where each item's heat map goes: the .png given for a single input, else `stem`_heatmap.png in the folder, numbered
    -2, -3, ... when inputs share a stem (a.gif and a.png, x/p.png and y/p.png)."""

    def __init__(self, target: Path | None, single: bool) -> None:
        self.target, self.single = target, single
        self.taken: set[Path] = set()

    def __call__(self, item: Item) -> Path | None:
        if self.target is None:
            return None
        if self.single and self.target.suffix.lower() == ".png":
            return self.target
        stem = Path(item.member or item.path).stem
        path, number = self.target / f"{stem}_heatmap.png", 1
        while path in self.taken:
            number += 1
            path = self.target / f"{stem}_heatmap-{number}.png"
        self.taken.add(path)
        return path


WORKER: dict[str, object] = {}  # the predictor of a worker process, loaded once


def exit_on_terminate() -> None:
    """End this process on SIGTERM by raising SystemExit, so that its `with` blocks unwind first. A pool ends its
    workers with SIGTERM when a run fails or is interrupted; killed outright, a worker loading the compiled stage
    left the folder its library was extracted into (`load_package`)."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def start_worker(load: Callable[[], object], options: Options) -> None:
    import torch

    exit_on_terminate()
    torch.set_num_threads(1)  # N processes x 1 thread: no oversubscription
    WORKER["predictor"], WORKER["options"] = load(), options


def work(item: Item, heatmap: Path | None) -> dict[str, object]:
    predictor, options = WORKER["predictor"], WORKER["options"]
    return answer(predictor, item, decode(item, predictor.max_pixels), options, heatmap)


def in_order(submit: Callable[[Item], Callable[[], dict]], items: Iterable[Item], window: int) -> Iterator[tuple[Item, dict]]:
    """(item, row) in input order, with at most `window` items submitted and not yet taken."""
    pending: deque[tuple[Item, Callable[[], dict]]] = deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) >= window:
            first, result = pending.popleft()
            yield first, result()
    while pending:
        first, result = pending.popleft()
        yield first, result()


def answered(
    predictor, load: Callable[[], object], items: Iterable[Item], workers: int, options: Options, heatmaps: HeatmapNames
) -> Iterator[tuple[Item, dict]]:
    """(item, row) for every item, in input order: read ahead on a thread, or answered by `workers` processes."""
    if workers == 1:
        with ThreadPoolExecutor(1) as reader:

            def submit(item: Item) -> Callable[[], dict]:
                decoding = reader.submit(decode, item, predictor.max_pixels)
                return lambda: answer(predictor, item, decoding.result(), options, heatmaps(item))

            yield from in_order(submit, items, WINDOW_PER_WORKER)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with context.Pool(workers, start_worker, (load, options)) as pool:
        yield from in_order(lambda item: pool.apply_async(work, (item, heatmaps(item))).get, items, WINDOW_PER_WORKER * workers)
        pool.close()  # let every worker finish its start and exit: one killed while loading the compiled stage leaves its files
        pool.join()


@dataclass
class Summary:
    """What a run found, counted row by row: ok, failed, undetermined, recompressed, and the qualities' histogram."""

    ok: int = 0
    failed: int = 0
    undetermined: int = 0
    recompressed: int = 0
    histogram: Counter = field(default_factory=Counter)

    def add(self, row: dict[str, object]) -> None:
        if row.get("error"):
            self.failed += 1
            return
        self.ok += 1
        self.undetermined += not row["determined"]
        self.recompressed += bool(row["recompressed"])
        if row["determined"]:
            self.histogram[min(int((round(row["quality"]) - 1) // HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1

    def report(self, seconds: float, predicted: int) -> dict[str, object]:
        width = 100 // HISTOGRAM_BINS
        bins = {f"{width * b + 1}-{width * (b + 1)}": self.histogram[b] for b in range(HISTOGRAM_BINS)}
        rate = predicted / seconds if seconds > 0 else None
        return {
            "rows": self.ok + self.failed,
            "ok": self.ok,
            "failed": self.failed,
            "undetermined": self.undetermined,
            "recompressed": self.recompressed,
            "determined_quality_histogram": bins,
            "predicted_this_run": predicted,
            "seconds_this_run": round(seconds, 2),
            "images_per_second": None if rate is None else round(rate, 2),
        }


def summary_text(report: dict[str, object]) -> str:
    counts = ", ".join(f"{report[key]} {key}" for key in ("ok", "failed", "undetermined", "recompressed"))
    rate = "" if report["images_per_second"] is None else f" at {report['images_per_second']} images/s"
    lines = [f"{report['rows']} rows: {counts}; {report['predicted_this_run']} predicted this run{rate}"]
    peak = max(report["determined_quality_histogram"].values(), default=0) or 1
    for label, count in report["determined_quality_histogram"].items():
        lines.append(f"  quality {label:>6}: {count:>8} {'#' * round(40 * count / peak)}")
    return "\n".join(lines)


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def progress(total: int | None, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=quiet or not sys.stderr.isatty(), unit="image", file=sys.stderr, smoothing=0.05)


def run_to_terminal(predictor, load, names: list[str], style: str, workers: int, options: Options, quiet: bool) -> int:
    """Rows printed in input order as they come; failed inputs named on stderr. Returns how many failed."""
    text, failed, total = RowText(style), 0, count_items(names)
    heatmaps = HeatmapNames(options.heatmaps, single=total == 1)
    with progress(total, quiet) as bar:
        for _, row in answered(predictor, load, iter_items(names), workers, options, heatmaps):
            bar.update()
            if row.get("error"):
                print(f"q1net: {row['error']}", file=sys.stderr)
                failed += 1
            else:
                text.add(row)
                text.flush()
    return failed


def run_to_journal(
    predictor, load, names: list[str], journal: Journal, workers: int, options: Options, quiet: bool, run: dict, restart: bool
) -> dict[str, object]:
    """Rows committed to `journal` (resuming what an earlier run wrote), merged into its output at the end; the summary of
    the whole output is printed, written beside it and returned."""
    journal.prepare(run, restart)
    if journal.complete:
        print(f"q1net: {journal.out} is complete; add --restart to predict again", file=sys.stderr)
        return json.loads(summary_path(journal.out).read_text()) if summary_path(journal.out).exists() else {}
    done = journal.done()
    items = (item for item in iter_items(names) if item.index not in done)
    total = count_items(names)
    heatmaps = HeatmapNames(options.heatmaps, single=total == 1)
    writer, predicted, start = journal.writer(), 0, time.perf_counter()
    with progress(None if total is None else max(total - len(done), 0), quiet) as bar:
        for item, row in answered(predictor, load, items, workers, options, heatmaps):
            writer.add(item.index, row)
            predicted += 1
            bar.update()
            if row.get("error"):
                print(f"q1net: {row['error']}", file=sys.stderr)
    writer.flush()
    return finish(journal, time.perf_counter() - start, predicted)


def finish(journal: Journal, seconds: float, predicted: int) -> dict[str, object]:
    """Merge the parts into the output, counting the summary on the way; print it and write it beside the output."""
    summary = Summary()
    journal.merge(on_row=summary.add)
    report = summary.report(seconds, predicted) | {"output": str(journal.out)}
    write_atomically(summary_path(journal.out), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    print(summary_text(report))
    return report
