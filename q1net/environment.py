"""Environment variables set for a block of code and put back after, for settings that native code reads only there."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """`values` in os.environ inside the block, each variable restored (or removed) after, errors included.
    Process-wide: another thread reading these variables meanwhile sees them too."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
