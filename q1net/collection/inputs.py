"""What a collection run reads, one `Item` at a time, in one fixed order, without holding the list.

An input is a file, a folder (walked recursively, sorted, each folder once), a list file
(`.txt`, `.lst`, `.list`: one path a line, `#` comments) or a WebDataset tar shard (`.tar`,
`.tar.gz`, `.tgz`),
read as a stream without extracting: every member whose suffix is an image type is an item
keyed by the shard and its `__key__` (the member's name up to its first dot, as WebDataset
groups a sample's files). Shard names may hold brace ranges, `shards/{00000..00099}.tar`, as
WebDataset writes them (quoted, so that the shell leaves them to q1net).

The order is what resume counts on: the same inputs give the same items with the same
`index`, so a run that stopped can skip what it already wrote (q1net.collection.journal).
An index is made of the entry's ordinal (a file or a whole shard) and the member's number in
its shard, so the processes of a distributed run can split the entries between them without
opening the shards that are not theirs.
"""

from __future__ import annotations

import itertools
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from q1net.data.images import IMAGE_SUFFIXES, iter_images

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
SHARD_ENDINGS = (".tar", ".tar.gz", ".tgz")  # shards as WebDataset writes them, compressed or not
BRACE = re.compile(r"\{([^{}]*)\}")
MEMBER_BITS = 32  # an item's index: its entry's ordinal (a file or a shard) << MEMBER_BITS, plus its number in the shard


@dataclass(frozen=True)
class Item:
    """One input of a run: a file, or a member of a tar shard (its bytes read from the stream)."""

    index: int  # the resume key, increasing in the run's order: entry ordinal << MEMBER_BITS + member number
    path: str  # the file, or the shard
    member: str | None = None  # the member's name inside the shard
    data: bytes | None = None  # a member's bytes (files are read by whoever predicts them)
    problem: str | None = None  # why it cannot be read, found while listing (missing file, empty folder, broken shard)

    @property
    def key(self) -> str | None:
        """WebDataset's `__key__` of a shard member: its name up to the first dot of its base name."""
        if self.member is None:
            return None
        folder, _, name = self.member.rpartition("/")
        return f"{folder}/{name.split('.', 1)[0]}" if folder else name.split(".", 1)[0]

    @property
    def name(self) -> str:
        """How messages name it: the path, or shard/member."""
        return self.path if self.member is None else f"{self.path}/{self.member}"


def expand_braces(pattern: str) -> list[str]:
    """`a{1..3}b` -> a1b a2b a3b (zero padding kept: {00..10}); `{x,y}` -> x y; nested and several groups too."""
    match = BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.lstrip("-").startswith("0") and len(first) > 1 else 0
        step = 1 if int(last) >= int(first) else -1
        options = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + rest for rest in expand_braces(tail)]  # a literal brace pair
    return [head + option + rest for option in options for rest in expand_braces(tail)]


def list_file_paths(path: str) -> Iterator[str]:
    """The paths of a list file, one a line (blank lines and `#` comments skipped), as written."""
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            name = line.rstrip("\n").rstrip("\r")
            if name.strip() and not name.lstrip().startswith("#"):
                yield name


def shard_members(path: str) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(member name, bytes, problem) of the image members of a tar shard, streamed; a broken shard ends in one problem row."""
    try:
        with tarfile.open(path, mode="r|*") as stream:
            for member in stream:
                if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                handle = stream.extractfile(member)
                yield member.name, handle.read() if handle else b"", None
    except FileNotFoundError:
        yield "", None, "no such file"
    except (tarfile.TarError, OSError, EOFError) as error:
        yield "", None, f"cannot read the shard ({error})"


def entries(name: str) -> Iterator[tuple[str, bool, str | None]]:
    """(path, is_shard, problem) for one input name, in order: its files, or the shard itself (read later, if kept)."""
    if name.lower().endswith(SHARD_ENDINGS):
        yield name, True, None
    elif Path(name).suffix.lower() in LIST_SUFFIXES and os.path.isfile(name):
        for listed in list_file_paths(name):
            yield from entries(listed)
    elif os.path.isdir(name):
        found = False
        for path in iter_images(name):
            found = True
            yield os.fspath(path), False, None
        if not found:
            yield name, False, "folder holds no images"
    elif os.path.lexists(name):
        yield name, False, None
    else:
        yield name, False, "no such file or folder"


def all_entries(names: Iterable[str]) -> Iterator[tuple[str, bool, str | None]]:
    return itertools.chain.from_iterable(entries(pattern) for name in names for pattern in expand_braces(name))


def iter_items(names: Iterable[str], keep: Callable[[int], bool] = lambda entry: True) -> Iterator[Item]:
    """Every item of `names` (brace patterns expanded) in order, from the entries (files, shards) that `keep` takes by
    their ordinal; a shard not kept is never opened."""
    for entry, (path, is_shard, problem) in enumerate(all_entries(names)):
        if not keep(entry):
            continue
        if not is_shard:
            yield Item(entry << MEMBER_BITS, path, problem=problem)
            continue
        for number, (member, data, problem) in enumerate(shard_members(path)):
            yield Item((entry << MEMBER_BITS) + number, path, member or None, data, problem)


def count_items(names: Iterable[str]) -> int | None:
    """How many items `names` give, counted without reading any image; None when a shard is among them (counting a
    stream means reading it all)."""
    count = 0
    for _, is_shard, _ in all_entries(names):
        if is_shard:
            return None
        count += 1
    return count
