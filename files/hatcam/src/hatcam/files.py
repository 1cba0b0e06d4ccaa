"""Write-temp-then-rename: a file holds either its old or its new content, never half."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """A new or renamed name is on the card only once its directory is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content.

    ``durable`` also syncs the bytes and the rename to disk (a power cut keeps the
    new content); without it a crash may keep the old content, which is all a
    status or cache file needs.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
