"""Crash-safe file writes: temp file, fsync, rename, directory fsync.

After these return, the file is either absent or complete under its final name, even across power loss.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(target: Path, mode: int = 0o600, *, stable_temp: bool = False) -> Iterator[BinaryIO]:
    """Yield a file in ``target``'s directory; on success it becomes ``target``, on error it vanishes.

    ``stable_temp`` names the temp file after the target, so that after a crash the next attempt
    overwrites the leftover instead of leaving it behind (for folders we do not clean ourselves).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if stable_temp:
        temp = target.with_name(f".{target.name}.partial")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    else:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        temp = Path(temp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
        fsync_dir(target.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_copy(source: Path, target: Path, mode: int = 0o600, *, stable_temp: bool = False) -> None:
    with source.open("rb") as src, atomic_writer(target, mode, stable_temp=stable_temp) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def atomic_write(target: Path, fill: Callable[[BinaryIO], None], mode: int = 0o600) -> None:
    with atomic_writer(target, mode) as handle:
        fill(handle)


def remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
