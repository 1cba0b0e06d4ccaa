#!/usr/bin/env python3
"""Pack the hatcam package source into a reproducible .tar.gz (runs on the control machine).

Same source, same bytes: sorted names, fixed mtime/owner, no gzip timestamp, caches
and build leftovers skipped. So Ansible copies it (and the device reinstalls and
restarts) only when the code really changed. Usage: pack_source.py SRC_DIR DEST
"""

import gzip
import io
import sys
import tarfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", ".git"}


def members(src: Path):
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix not in (".pyc", ".pyo"):
            yield path, rel


def main() -> int:
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    if not (src / "pyproject.toml").is_file():
        print(f"hatcam_package_src: {src} has no pyproject.toml", file=sys.stderr)
        return 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, rel in members(src):
            info = tarfile.TarInfo(f"hatcam/{rel.as_posix()}")
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    with open(dest, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9
    ) as gz:
        gz.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
