"""One row per input: its columns and types (one schema for parquet, JSON lines, CSV and the printed table)."""

from __future__ import annotations

import csv
import json
import sys
from typing import TextIO

import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # the file, or the tar shard
        ("quality", pa.float64()),
        ("quality_low", pa.int32()),
        ("quality_high", pa.int32()),
        ("determined", pa.bool_()),
        ("confidence", pa.float64()),
        ("blocks_used", pa.int32()),
        ("blocks_sampled", pa.int32()),
        ("fallback", pa.bool_()),
        ("method", pa.string()),
        ("cnn_quality", pa.float64()),
        ("lattice_quality", pa.int32()),
        ("lattice_strength", pa.float64()),
        ("grid", pa.list_(pa.int32())),
        ("grid_sure", pa.bool_()),
        ("header_quality", pa.int32()),
        ("recompressed", pa.bool_()),
        ("notes", pa.list_(pa.string())),
        ("table", pa.list_(pa.int32())),  # with --show-table
        ("heatmap", pa.string()),  # with --heatmap
        ("seconds", pa.float64()),
        ("member", pa.string()),  # a shard member's name; null for files
        ("key", pa.string()),  # the member's WebDataset __key__
        ("error", pa.string()),  # the one-line message of a failed input; the answer fields are then null
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
OPTIONAL = ("table", "heatmap", "member", "key", "error")  # in printed JSON lines only where they apply


def quality_text(quality: float, low: int, high: int, determined: bool) -> str:
    """How the table shows an answer: `75` (and its range when it is wider than a level), `31..100`, or `undetermined`."""
    if determined:
        value = f"{quality:.0f}" if abs(quality - round(quality)) < 0.005 else f"{quality:.1f}"
        return value if low == high else f"{value} ({low}..{high})"
    return "undetermined" if (low, high) == (1, 100) else f"{low}..{high}"


class RowText:
    """Rows written as they come: an aligned table for people, JSON lines, or CSV (every column, in order). `every_column`:
    JSON lines hold every column (a file's rows); otherwise the OPTIONAL ones only where they apply (the terminal's)."""

    def __init__(self, style: str, stream: TextIO = sys.stdout, every_column: bool = False) -> None:
        self.style, self.stream, self.every_column = style, stream, every_column
        self.csv = csv.DictWriter(stream, fieldnames=COLUMNS) if style == "csv" else None
        if self.csv:
            self.csv.writeheader()
        elif style == "table":
            print(f"{'quality':>14} {'method':>8} {'conf':>6} {'blocks':>9}  path", file=stream)

    def add(self, row: dict[str, object]) -> None:
        if self.style == "table":
            self.add_line(row)
            return
        row = {column: row.get(column) for column in COLUMNS}
        if self.csv:
            self.csv.writerow({key: json.dumps(value) if isinstance(value, list) else value for key, value in row.items()})
            return
        if not self.every_column:
            row = {key: value for key, value in row.items() if value is not None or key not in OPTIONAL}
        self.stream.write(json.dumps(row) + "\n")

    def add_line(self, row: dict[str, object]) -> None:
        confidence = "-" if row["confidence"] is None else f"{row['confidence']:.1f}"
        used = f"{row['blocks_used']}/{row['blocks_sampled']}"
        notes = [
            *(["low confidence: no block above tau"] if row["fallback"] else []),
            *([f"grid at {tuple(row['grid'])}"] if row["grid_sure"] and any(row["grid"]) else []),
            *([f"header says {row['header_quality']}"] if row["header_quality"] is not None else []),
            *row["notes"],
        ]
        note = f"  ({'; '.join(notes)})" if notes else ""
        shown = quality_text(row["quality"], row["quality_low"], row["quality_high"], row["determined"])
        name = row["path"] if row.get("member") is None else f"{row['path']}/{row['member']}"
        print(f"{shown:>14} {row['method']:>8} {confidence:>6} {used:>9}  {name}{note}", file=self.stream)
        if row.get("table") is not None:
            steps = ["?" if step is None else str(step) for step in row["table"]]
            for r in range(8):
                print(" " * 10 + " ".join(f"{step:>3}" for step in steps[8 * r : 8 * r + 8]), file=self.stream)

    def flush(self) -> None:
        self.stream.flush()
