"""Fetch baseline, first half: list a prefix and download it with N parallel SDK calls.

    python bench/baselines/download.py CONNECTION_STRING CONTAINER DIR PREFIX JOBS

Writes the files and an ffmpeg concat list (DIR/list.txt). Run as its own process, as
``hatcam fetch`` is: each side pays for starting its interpreter and importing the SDK.
"""

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from azure.storage.blob import ContainerClient


def main() -> None:
    client = ContainerClient.from_connection_string(sys.argv[1], sys.argv[2])
    files, prefix, jobs = Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])

    def get(name: str) -> Path:
        path = files / name.rpartition("/")[2]
        with open(path, "wb") as fh:
            client.download_blob(name).readinto(fh)
        return path

    names = [b.name for b in client.list_blobs(name_starts_with=prefix)]
    with ThreadPoolExecutor(jobs) as pool:
        paths = list(pool.map(get, names))
    (files / "list.txt").write_text("".join(f"file '{p}'\n" for p in sorted(paths)))


if __name__ == "__main__":
    main()
