"""`make collection-bench`: the whole-collection figures of the README, measured on real photos.

From a folder of lossless photos it writes `files` small JPEG files (256x256 crops at random
qualities), then runs `q1net predict` as a user would and checks what issue #21 asks:
- the whole folder with `--workers 2 --out all.parquet`: images/s, and the peak memory of
  the process tree when `early` rows were written against at the end (sampled from /proc);
- the first `killed` files killed with SIGKILL at three random moments and resumed: the rows
  must equal the uninterrupted run's, the whole folder's first rows (0 lost, 0 repeated);
- 10 WebDataset shards of the first `killed` files' bytes with 5 members corrupted: the
  answers must equal the files' rows, and the 5 be error rows;
- the first `distributed` files on two CPU processes (Lightning, gloo): the same rows.
Results go to OUT/collection.json and OUT/collection.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from q1net.atomic import write_atomically
from q1net.collection.journal import Journal, read_rows
from q1net.data.images import find_images, load_rgb

CROP = 256
SHARDS, CORRUPT = 10, 5
VOLATILE = ("seconds", "path", "member", "key")  # compared apart: they name the input, not the answer


def make_files(photos: Path, folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` CROPxCROP crops of the photos, each coded at a random quality 1..100 (kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(count)]
    if all(path.exists() for path in paths):
        return paths
    chance = np.random.default_rng(seed)
    sources = [load_rgb(path) for path in find_images(photos)]
    for path in paths:
        pixels = sources[chance.integers(len(sources))]
        top, left = (int(chance.integers(0, side - CROP + 1)) for side in pixels.shape[:2])
        Image.fromarray(pixels[top : top + CROP, left : left + CROP]).save(path, quality=int(chance.integers(1, 101)))
    return paths


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the forkserver and its worker pool), from /proc."""
    total = 0
    for task in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{task}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def descendants(pid: int) -> list[int]:
    try:
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [grandchild for child in children for grandchild in descendants(child)]


def predict(*args: object) -> list[str]:
    return [sys.executable, "-m", "q1net.cli", "predict", *map(str, args), "--quiet"]


def whole_folder(folder: Path, out: Path, early: int) -> dict:
    """The folder with 2 workers: seconds, images/s, and the tree's peak memory after `early` rows and at the end."""
    process = subprocess.Popen(predict(folder, "--workers", 2, "--out", out, "--restart"), stdout=subprocess.DEVNULL)
    start, peak, peak_early = time.perf_counter(), 0.0, None
    while process.poll() is None:
        peak = max(peak, tree_rss_mb(process.pid))
        if peak_early is None and Path(f"{out}.parts").exists() and Journal(out).rows_written() >= early:
            peak_early = peak
        time.sleep(0.5)
    process.wait()
    seconds = time.perf_counter() - start
    summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    return {
        "images": summary["rows"],
        "exit_code": process.returncode,
        "seconds": round(seconds, 1),
        "images_per_second": summary["images_per_second"],
        f"peak_mb_after_{early}": round(peak_early or 0.0, 1),
        "peak_mb_at_end": round(peak, 1),
        "peak_growth": round(peak / peak_early - 1, 4) if peak_early else None,
    }


def answers(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in VOLATILE} for row in rows]


def killed_and_resumed(listing: Path, out: Path, reference: list[dict], kills: int = 3, seed: int = 0) -> dict:
    """The files of `listing` killed at `kills` random moments, then run to the end: compared with `reference`."""
    chance = random.Random(seed)
    command = predict(listing, "--workers", 2, "--out", out)
    shutil.rmtree(f"{out}.parts", ignore_errors=True)
    out.unlink(missing_ok=True)
    moments = []
    for _ in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(chance.uniform(10.0, 120.0))
        family = descendants(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        for pid in family:  # the pool's workers would follow their parent; a kill -9 of the whole job is the worst case
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        moments.append(Journal(out).rows_written())
    finished = subprocess.run(command, capture_output=True, text=True)
    rows = list(read_rows(out))
    paths = [row["path"] for row in rows]
    return {
        "files": len(reference),
        "rows_written_at_each_kill": moments,
        "exit_code": finished.returncode,
        "rows": len(rows),
        "repeated": len(paths) - len(set(paths)),
        "lost": len(reference) - len(set(paths)),
        "same_rows_as_uninterrupted": answers(rows) == answers(reference),
    }


def uninterrupted(whole: Path, listing: Path, count: int) -> list[dict]:
    """The uninterrupted rows of the first `count` files: the whole-folder run's (the folder is read in name order, so
    they are its first rows), else a run of the listing."""
    if whole.exists():
        return list(read_rows(whole))[:count]
    reference = whole.with_name(f"uninterrupted-{count}.parquet")
    subprocess.run(predict(listing, "--workers", 2, "--out", reference, "--restart"), capture_output=True)
    return list(read_rows(reference))


def shards_of(files: list[Path], folder: Path, seed: int = 0) -> tuple[str, list[int]]:
    """SHARDS tar shards of the files' bytes, CORRUPT members cut short; returns the brace pattern and the corrupt indices."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = sorted(random.Random(seed).sample(range(len(files)), CORRUPT))
    per_shard = -(-len(files) // SHARDS)
    for s in range(SHARDS):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as shard:
            for i in range(s * per_shard, min((s + 1) * per_shard, len(files))):
                data = files[i].read_bytes()
                data = data[: len(data) // 3] if i in corrupt else data
                info = tarfile.TarInfo(f"{files[i].stem}.jpg")
                info.size = len(data)
                shard.addfile(info, io.BytesIO(data))
    return str(folder / f"{{00000..{SHARDS - 1:05d}}}.tar"), corrupt


def shard_run(pattern: str, out: Path, reference: list[dict], corrupt: list[int]) -> dict:
    start = time.perf_counter()
    done = subprocess.run(predict(pattern, "--workers", 2, "--out", out, "--restart"), capture_output=True, text=True)
    rows = list(read_rows(out))
    errors = [i for i, row in enumerate(rows) if row["error"]]
    kept = [row for i, row in enumerate(rows) if i not in corrupt]
    expected = [row for i, row in enumerate(reference) if i not in corrupt]
    return {
        "members": len(rows),
        "answers": len(rows) - len(errors),
        "error_rows": len(errors),
        "errors_where_corrupted": errors == corrupt,
        "answers_equal_the_files_rows": answers(kept) == answers(expected),
        "exit_code": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
    }


def distributed_run(listing: Path, out: Path, single: Path) -> dict:
    """The listing on two CPU processes (Lightning, gloo) against one process."""
    subprocess.run(predict(listing, "--out", single, "--restart"), capture_output=True)
    start = time.perf_counter()
    lightning = ["--devices", 2, "--accelerator", "cpu", "--loader-workers", 1]
    done = subprocess.run(predict(listing, "--out", out, "--restart", *lightning), capture_output=True, text=True)
    rows, reference = list(read_rows(out)), list(read_rows(single))
    return {
        "images": len(rows),
        "exit_code": done.returncode,
        "same_rows_as_one_process": [row["path"] for row in rows] == [row["path"] for row in reference]
        and answers(rows) == answers(reference),
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(results: dict) -> str:
    lines = [f"# Whole collections, {results['date']} ({results['machine']})", ""]
    for section, figures in results["sections"].items():
        lines += [f"## {section}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in figures.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, help="folder of lossless photos to crop")
    parser.add_argument("--out", default="runs/collection", help="work and results folder")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--early", type=int, default=2_000, help="rows after which the first memory peak is read")
    parser.add_argument("--killed", type=int, default=5_000, help="files of the kill-and-resume and shard runs")
    parser.add_argument("--distributed", type=int, default=500, help="files of the two-process run")
    parser.add_argument("--sections", default="distributed,folder,resume,shards")
    args = parser.parse_args(argv)
    out = Path(args.out)
    files = make_files(Path(args.photos), out / "files", args.files)
    sections = args.sections.split(",")
    results_path = out / "collection.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"sections": {}}
    results |= {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores"}

    def record(name: str, figures: dict) -> None:
        results["sections"][name] = figures
        write_atomically(results_path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        write_atomically(out / "collection.md", lambda tmp: Path(tmp).write_text(markdown(results)))
        print(markdown({**results, "sections": {name: figures}}), flush=True)

    listings = {}
    for count in {args.killed, args.distributed}:
        listings[count] = out / f"first-{count}.txt"
        listings[count].write_text("".join(f"{path}\n" for path in files[:count]))
    if "distributed" in sections:
        record("distributed", distributed_run(listings[args.distributed], out / "two.parquet", out / "one.parquet"))
    whole = out / "all.parquet"
    if "folder" in sections:
        record("folder", whole_folder(out / "files", whole, args.early))
    if {"resume", "shards"} & set(sections):
        reference = uninterrupted(whole, listings[args.killed], args.killed)
    if "resume" in sections:
        record("resume", killed_and_resumed(listings[args.killed], out / "resumed.parquet", reference))
    if "shards" in sections:
        pattern, corrupt = shards_of(files[: args.killed], out / "shards")
        record("shards", shard_run(pattern, out / "shards.parquet", reference, corrupt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
