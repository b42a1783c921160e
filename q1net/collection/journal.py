"""A run's output that survives a kill: rows committed in whole chunks, resumed without loss or repeats.

While a run goes, its rows live in `OUT.parts/`: `run.json` (the inputs and settings the rows
were made with) and one folder per process (a rank of a distributed run, or the single
process), holding chunk files `chunk-NNNNNN.parquet` written to a temporary name and renamed
into place, so a chunk is there whole or not at all. Each row carries `_index`, the item's
position in the run's order (q1net.collection.inputs). Running the same command again reads
the indices already written and skips those items: no row lost, none repeated, whatever
moment the last run was killed at. When every item has its row, the chunks are merged in
input order into OUT (`.parquet` in row groups, `.jsonl` or `.csv`; written to a temporary
name and moved into place) and the parts are removed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from q1net.atomic import write_atomically
from q1net.collection.rows import COLUMNS, SCHEMA, RowText

INDEX = "_index"
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".csv": "csv"}
ROWS_PER_CHUNK = 256  # rows committed at once: a kill loses at most this many answers (or FLUSH_SECONDS of work)
FLUSH_SECONDS = 30.0
CHUNK_SCHEMA = SCHEMA.append(pa.field(INDEX, pa.int64()))


class JournalError(Exception):
    """The output cannot be written or resumed as asked; the message says why and what to do."""


def output_format(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise JournalError(f"{path}: the output's suffix must be one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Journal:
    """The parts of the run writing `out` (see the module docstring)."""

    def __init__(self, out: str | os.PathLike[str], rows_per_chunk: int = ROWS_PER_CHUNK) -> None:
        self.out, self.rows_per_chunk = Path(out), rows_per_chunk
        self.format = output_format(self.out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.manifest = self.parts / "run.json"

    @property
    def complete(self) -> bool:
        """The output is whole and nothing is pending."""
        return self.out.exists() and not self.parts.exists()

    def check(self, run: dict[str, object], restart: bool) -> None:
        """Raise if an unfinished run with other inputs or settings than `run` is there (and `restart` is not given).
        Reads only: every process of a distributed run can ask."""
        if restart or self.complete or not self.manifest.exists():
            return
        before = json.loads(self.manifest.read_text())
        if before != run:
            changed = sorted(key for key in run.keys() | before.keys() if run.get(key) != before.get(key))
            raise JournalError(
                f"{self.out}: an unfinished run with other {', '.join(changed)} is in {self.parts}; "
                "run it with its own inputs and settings to finish it, or add --restart to start over"
            )

    def prepare(self, run: dict[str, object], restart: bool) -> None:
        """Start (or, with `restart`, start over) a run described by `run` (inputs and settings), or go on with the same
        unfinished run. A complete output is left alone unless `restart`."""
        self.check(run, restart)
        if restart:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.out.unlink(missing_ok=True)
        if self.complete or self.manifest.exists():
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        temporary = self.manifest.with_suffix(".tmp")
        temporary.write_text(json.dumps(run, indent=2))
        os.replace(temporary, self.manifest)

    def chunk_files(self) -> list[Path]:
        return sorted(self.parts.glob("*/chunk-*.parquet"))

    def rows_written(self) -> int:
        """Rows on disk so far, from the chunks' footers (cheap: a watcher can poll it while the run writes)."""
        return sum(pq.read_metadata(chunk).num_rows for chunk in self.chunk_files())

    def done(self) -> Done:
        """The item indices that have their row (any process, any earlier session)."""
        return Done(
            np.concatenate(
                [np.zeros(0, dtype=np.int64)] + [pq.read_table(c, columns=[INDEX]).column(0).to_numpy() for c in self.chunk_files()]
            )
        )

    def writer(self, name: str = "main") -> ChunkWriter:
        """A chunk writer of this session (one per process, or per data-loading worker of a Lightning rank): its own
        folder, so no two writers share a file, and each writes its items in increasing index order."""
        folder = Path(tempfile.mkdtemp(dir=self.parts, prefix=f"{name}-"))
        return ChunkWriter(folder, self.rows_per_chunk)

    def merge(self, on_row: Callable[[dict[str, object]], None] = lambda row: None) -> int:
        """Write OUT from every chunk, in input order (`on_row` sees each row on its way), and remove the parts.
        Returns the number of rows."""
        streams = [chunk_rows(folder) for folder in sorted({chunk.parent for chunk in self.chunk_files()})]
        rows = heapq.merge(*streams, key=lambda row: row[INDEX])  # each process wrote its items in increasing order

        def watched() -> Iterator[dict[str, object]]:
            for row in rows:
                on_row(row)
                yield row

        count = write_rows(self.out, self.format, watched())
        shutil.rmtree(self.parts)
        return count


class Done:
    """A set of item indices held as one sorted array: 8 bytes a row, however many rows a run has."""

    def __init__(self, indices: np.ndarray) -> None:
        self.indices = np.unique(indices)

    def __contains__(self, index: int) -> bool:
        at = int(np.searchsorted(self.indices, index))
        return at < len(self.indices) and int(self.indices[at]) == index

    def __len__(self) -> int:
        return len(self.indices)


def chunk_rows(folder: Path) -> Iterator[dict[str, object]]:
    """The rows of one process's chunks, in the order written (increasing `_index`)."""
    for chunk in sorted(folder.glob("chunk-*.parquet")):
        yield from pq.read_table(chunk, schema=CHUNK_SCHEMA).to_pylist()


class ChunkWriter:
    """Rows of one process in, whole chunk files out (`flush` commits what is buffered)."""

    def __init__(self, folder: Path, rows_per_chunk: int) -> None:
        self.folder, self.rows_per_chunk = folder, rows_per_chunk
        self.buffer: list[dict[str, object]] = []
        self.chunks, self.flushed = 0, time.monotonic()

    def add(self, index: int, row: dict[str, object]) -> None:
        self.buffer.append({column: row.get(column) for column in COLUMNS} | {INDEX: index})
        if len(self.buffer) >= self.rows_per_chunk or time.monotonic() - self.flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        target = self.folder / f"chunk-{self.chunks:06d}.parquet"
        temporary = self.folder / f".{target.name}.tmp"
        pq.write_table(pa.Table.from_pylist(self.buffer, schema=CHUNK_SCHEMA), temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
        fsync_folder(self.folder)
        self.buffer.clear()
        self.chunks, self.flushed = self.chunks + 1, time.monotonic()


def write_rows(out: Path, style: str, rows: Iterator[dict[str, object]], rows_per_group: int = 4096) -> int:
    """Stream `rows` into `out` as parquet (row groups of `rows_per_group`), JSON lines or CSV, atomically."""
    count = 0

    def save(temporary: str) -> None:
        nonlocal count
        if style == "parquet":
            with pq.ParquetWriter(temporary, SCHEMA) as parquet:
                for group in batched(rows, rows_per_group):
                    parquet.write_table(pa.Table.from_pylist(group, schema=SCHEMA))
                    count += len(group)
            return
        with open(temporary, "w", encoding="utf-8", newline="") as text:
            table = RowText(style, text, every_column=True)
            for row in rows:
                table.add(row)
                count += 1

    write_atomically(out, save)
    return count


def batched(rows: Iterator[dict[str, object]], size: int) -> Iterator[list[dict[str, object]]]:
    while group := list(itertools.islice(rows, size)):
        yield group


def read_rows(path: str | os.PathLike[str]) -> Iterator[dict[str, object]]:
    """The rows of a finished output, streamed (parquet by row group), with the types they were written with."""
    path = Path(path)
    style = output_format(path)
    if style == "parquet":
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield from parquet.read_row_group(group).to_pylist()
    elif style == "jsonl":
        with open(path, encoding="utf-8") as lines:
            yield from (json.loads(line) for line in lines)
    else:
        import csv

        with open(path, encoding="utf-8", newline="") as text:
            yield from csv.DictReader(text)
