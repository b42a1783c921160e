"""Whole collections: inputs (folders, list files, tar shards), rows that survive SIGKILL, resume, and Lightning's predict."""

from __future__ import annotations

import io
import json
import multiprocessing
import multiprocessing.synchronize
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from q1net.collection.inputs import MEMBER_BITS, count_items, expand_braces, iter_items
from q1net.collection.journal import Journal, JournalError, read_rows
from q1net.collection.pipeline import exit_on_terminate
from q1net.data.sources import SyntheticSource

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("seconds",)  # the only column that differs between two runs over the same inputs


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiles() -> list[np.ndarray]:
    return [SyntheticSource(count=4, size=48, seed=5).load(i) for i in range(4)]


def write_files(folder: Path, tiles: list[np.ndarray], count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(jpeg_bytes(tiles[i % len(tiles)], 5 + (7 * i) % 95))
    return paths


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz" if path.name.endswith(".tar.gz") else "w") as shard:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            shard.addfile(info, io.BytesIO(data))


ENV = os.environ | {"PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}


def q1net_command(*args) -> list[str]:
    return [sys.executable, "-m", "q1net.cli", *map(str, args)]


def q1net(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(q1net_command(*args), capture_output=True, text=True, env=ENV, timeout=timeout)


def wait_for_rows(out: Path, process: subprocess.Popen, count: int) -> None:
    """Until `count` rows of a running `predict --out` are on disk: counted, not timed, so that a fast host cannot
    finish the run before the test acts on it."""
    deadline = time.monotonic() + 120
    while Journal(out).rows_written() < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def rows_of(path: Path) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in VOLATILE} for row in read_rows(path)]


def test_brace_patterns_expand_as_webdataset_writes_them():
    assert expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_items_come_in_one_order_from_files_lists_and_streamed_shards(tmp_path, tiles):
    files = write_files(tmp_path / "folder", tiles, 3)
    (tmp_path / "list.txt").write_text(f"# a comment\n{files[2]}\n\n{tmp_path / 'gone.jpg'}\n")
    write_shard(tmp_path / "s-0.tar", [("a.jpg", jpeg_bytes(tiles[0], 50)), ("a.cls", b"3"), ("dir/b.c.png", b"x")])
    write_shard(tmp_path / "s-1.tar", [("c.jpg", jpeg_bytes(tiles[1], 50))])
    write_shard(tmp_path / "z.tar.gz", [("d.jpg", jpeg_bytes(tiles[2], 50))])
    names = [str(tmp_path / "folder"), str(tmp_path / "list.txt"), str(tmp_path / "s-{0..1}.tar"), str(tmp_path / "z.tar.gz")]

    items = list(iter_items(names))

    assert [item.name.replace(str(tmp_path) + "/", "") for item in items] == [
        "folder/00000.jpg", "folder/00001.jpg", "folder/00002.jpg", "folder/00002.jpg", "gone.jpg",
        "s-0.tar/a.jpg", "s-0.tar/dir/b.c.png", "s-1.tar/c.jpg", "z.tar.gz/d.jpg",
    ]  # fmt: skip
    assert items[4].problem == "no such file or folder"
    assert [item.key for item in items[5:]] == ["a", "dir/b", "c", "d"]  # WebDataset's __key__: up to the first dot
    assert [item.index for item in items[5:]] == [5 << MEMBER_BITS, (5 << MEMBER_BITS) + 1, 6 << MEMBER_BITS, 7 << MEMBER_BITS]
    assert items == sorted(items, key=lambda item: item.index)
    # a process that keeps other entries never opens the shards it skips
    assert [item.name for item in iter_items([str(tmp_path / "s-{0..1}.tar"), "nowhere.tar"], keep=lambda entry: entry == 1)] == [
        str(tmp_path / "s-1.tar/c.jpg")
    ]
    assert count_items(names[:2]) == 5 and count_items(names) is None


def test_every_format_holds_the_same_rows_and_failures_are_rows(tmp_path, weights, tiles):
    write_files(tmp_path / "in", tiles, 3)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    outputs = {}
    for suffix in (".parquet", ".jsonl", ".csv"):
        out = tmp_path / f"rows{suffix}"
        result = q1net("predict", tmp_path / "in", "--checkpoint", weights, "--blocks", "4", "--out", out)
        assert result.returncode == 1, result.stderr  # one input failed, the others answered
        assert result.stderr.count("broken.jpg") == 1 and "Traceback" not in result.stderr
        assert "4 rows: 3 ok, 1 failed" in result.stdout
        summary = json.loads(out.with_name("rows.summary.json").read_text())
        assert (summary["rows"], summary["ok"], summary["failed"]) == (4, 3, 1)
        assert not Path(f"{out}.parts").exists()
        outputs[suffix] = rows_of(out)
    parquet = outputs[".parquet"]
    assert [Path(row["path"]).name for row in parquet] == ["00000.jpg", "00001.jpg", "00002.jpg", "broken.jpg"]
    assert parquet[3]["error"].startswith(f"{tmp_path / 'in' / 'broken.jpg'}: ")
    assert parquet[3]["quality"] is None and all(row["error"] is None for row in parquet[:3])
    assert outputs[".jsonl"] == parquet
    csv_rows = outputs[".csv"]
    assert [row["quality"] for row in csv_rows] == [str(row["quality"]) if row["quality"] is not None else "" for row in parquet]


def test_tar_shards_give_answers_and_error_rows_keyed_by_shard_and_key(tmp_path, weights, tiles):
    for s in range(2):
        members = [(f"{s}-{m}.jpg", jpeg_bytes(tiles[m], 20 + 30 * m)) for m in range(3)]
        members.insert(1, (f"{s}-bad.jpg", b"\xff\xd8 not a jpeg"))
        write_shard(tmp_path / f"shard-{s:03d}.tar", members)
    out = tmp_path / "shards.parquet"

    result = q1net("predict", tmp_path / "shard-{000..001}.tar", "--checkpoint", weights, "--blocks", "4", "--out", out)

    assert result.returncode == 1 and result.stderr.count("bad.jpg") == 2
    rows = rows_of(out)
    assert [(Path(row["path"]).name, row["key"]) for row in rows] == [
        (f"shard-{s:03d}.tar", key) for s in range(2) for key in (f"{s}-0", f"{s}-bad", f"{s}-1", f"{s}-2")
    ]
    assert [row["error"] is not None for row in rows] == [False, True, False, False] * 2
    assert [row["header_quality"] for row in rows if row["error"] is None] == [20, 50, 80] * 2  # a JPEG member's own header


def test_resume_after_sigkill_loses_and_repeats_nothing(tmp_path, weights, tiles):
    write_files(tmp_path / "in", tiles, 48)
    common = ["--checkpoint", weights, "--blocks", "4", "--method", "lattice", "--chunk-rows", "3"]
    reference = tmp_path / "reference.parquet"
    assert q1net("predict", tmp_path / "in", *common, "--out", reference).returncode == 0

    out = tmp_path / "resumed.parquet"
    command = q1net_command("predict", tmp_path / "in", *common, "--out", out)
    for target in sorted(random.Random(0).sample(range(3, 28), 3)):  # killed at three moments, each after some rows
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_rows(out, process, target)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not out.exists()  # the output appears only whole
    written = Journal(out).rows_written()
    assert 0 < written < 48
    result = q1net("predict", tmp_path / "in", *common, "--out", out)

    assert result.returncode == 0, result.stderr
    assert f"{48 - written} predicted this run" in result.stdout
    assert rows_of(out) == rows_of(reference)


def test_ctrl_c_ends_a_pool_run_with_one_line_and_a_resumable_output(tmp_path, weights, tiles):
    """Ctrl-C (SIGINT to the command) mid-run: the exit code shells give, one line on stderr and no traceback, no
    output file (it appears only whole), and the next run finishes the rest."""
    write_files(tmp_path / "in", tiles, 24)
    out = tmp_path / "rows.parquet"
    common = ["--checkpoint", weights, "--blocks", "4", "--method", "lattice", "--chunk-rows", "2", "--workers", "2"]
    command = q1net_command("predict", tmp_path / "in", *common, "--out", out)
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_rows(out, process, 4)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]

    assert process.returncode == 130 and stderr.splitlines()[-1] == "q1net: interrupted" and "Traceback" not in stderr
    assert not out.exists() and 0 < Journal(out).rows_written() < 24
    result = q1net("predict", tmp_path / "in", *common, "--out", out)
    assert result.returncode == 0 and len(rows_of(out)) == 24, result.stderr


def test_a_finished_output_is_kept_and_other_settings_do_not_mix_into_an_unfinished_one(tmp_path, weights, tiles):
    write_files(tmp_path / "in", tiles, 2)
    out = tmp_path / "x.jsonl"
    common = ["--checkpoint", weights, "--blocks", "4"]
    assert q1net("predict", tmp_path / "in", *common, "--out", out).returncode == 0
    before = out.read_text()
    again = q1net("predict", tmp_path / "in", *common, "--out", out)
    assert again.returncode == 0 and "is complete" in again.stderr and out.read_text() == before
    assert q1net("predict", tmp_path / "in", *common, "--out", out, "--restart").returncode == 0

    journal = Journal(tmp_path / "y.parquet")
    journal.prepare({"paths": ["a"], "tau": 50.0}, restart=False)
    with pytest.raises(JournalError, match=r"other paths, tau.*--restart"):
        journal.prepare({"paths": ["b"], "tau": 60.0}, restart=False)
    journal.prepare({"paths": ["b"], "tau": 60.0}, restart=True)
    assert json.loads(journal.manifest.read_text())["paths"] == ["b"]


def test_merge_interleaves_the_writers_of_many_processes_in_input_order(tmp_path):
    journal = Journal(tmp_path / "m.csv", rows_per_chunk=2)
    journal.prepare({}, restart=False)
    writers = [journal.writer(f"rank{r}") for r in range(3)]
    for index in range(10):
        writers[index % 3].add(index, {"path": f"p{index}", "error": "x"})
    for writer in writers:
        writer.flush()
    assert len(journal.done()) == 10 and 7 in journal.done() and 10 not in journal.done()
    assert journal.merge() == 10
    assert [row["path"] for row in read_rows(tmp_path / "m.csv")] == [f"p{i}" for i in range(10)]


def test_lightning_predict_on_two_gloo_processes_gives_the_single_process_rows(tmp_path, weights, tiles):
    write_files(tmp_path / "in", tiles, 9)
    write_shard(tmp_path / "s.tar", [(f"m{m}.jpg", jpeg_bytes(tiles[m % 4], 30 + m)) for m in range(5)])
    inputs = [tmp_path / "in", tmp_path / "s.tar"]
    common = ["--checkpoint", weights, "--blocks", "4"]
    single = tmp_path / "single.parquet"
    assert q1net("predict", *inputs, *common, "--out", single).returncode == 0

    both = tmp_path / "two.parquet"
    result = q1net("predict", *inputs, *common, "--out", both, "--devices", "2", "--accelerator", "cpu", "--loader-workers", "1")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr and "Starting with 2 processes" in result.stderr
    assert rows_of(both) == rows_of(single)


def hold_a_folder(scratch: str, ready: multiprocessing.synchronize.Event) -> None:
    """A pool worker's part: a temporary folder held (as `load_package` holds one while loading) when SIGTERM comes."""
    exit_on_terminate()
    with tempfile.TemporaryDirectory(dir=scratch):
        ready.set()
        time.sleep(60)


def test_a_worker_ended_by_sigterm_removes_its_temporary_folders(tmp_path):
    """A run that fails or is interrupted ends its pool with SIGTERM; a worker killed outright while loading the
    compiled stage left the folder its library was extracted into."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=hold_a_folder, args=(str(tmp_path), ready))
    worker.start()
    assert ready.wait(30) and len(list(tmp_path.iterdir())) == 1
    worker.terminate()
    worker.join(30)
    assert worker.exitcode == 128 + signal.SIGTERM and not list(tmp_path.iterdir())
