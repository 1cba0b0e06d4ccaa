"""A real ``hatcam view`` for the browser tests and the bench: its own process (uvicorn),
on a free loopback port, with only the settings given (no ambient HATCAM_*), stopped by PID."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .footage import env
from .procs import free_port, serve, terminate


class ViewApp:
    def __init__(self, workdir: Path, settings: dict, host: str = "127.0.0.1"):
        self.workdir = Path(workdir)
        self.settings = settings
        self.host = host
        self.port = free_port()
        self.pid: int | None = None

    def start(self, *args: str) -> ViewApp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hatcam.cli", "--env-file", os.devnull, "view"]
        cmd += ["--bind", self.host, "--port", str(self.port), *args]
        self.pid = serve(
            cmd, self.log, env(**self.settings), False, self.host, self.port, "hatcam view"
        )
        return self

    def stop(self) -> None:
        terminate(self.pid)

    @property
    def log(self) -> Path:
        return self.workdir / "view.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def __enter__(self) -> ViewApp:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
