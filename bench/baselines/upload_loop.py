"""Backlog drain baseline: a plain loop of ``upload_blob`` over the given files.

    python bench/baselines/upload_loop.py CONNECTION_STRING CONTAINER FILE...

Prints the seconds the loop took. Run as its own process, like the uploader daemon.
"""

import sys
import time
from pathlib import Path

from azure.storage.blob import ContainerClient


def main() -> None:
    client = ContainerClient.from_connection_string(sys.argv[1], sys.argv[2])
    started = time.perf_counter()
    for name in sys.argv[3:]:
        client.upload_blob(Path(name).name, Path(name).read_bytes())
    print(time.perf_counter() - started)


if __name__ == "__main__":
    main()
