"""Real services for the tests, demo and benchmarks: Azurite and redis-server.

Each is started on a free loopback port, in its own empty directory, and
stopped by PID. Azurite's ``azurite-blob`` binary is started directly so there
is one process to stop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.storage.blob import (
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = Path(
    os.environ.get("AZURITE_BLOB", ROOT / ".cache/azurite/node_modules/.bin/azurite-blob")
)
# Azurite's published development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Azurite:
    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None):
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Azurite:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `make setup` first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "azurite.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(AZURITE_BIN),
                    "--blobHost",
                    self.host,
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.workdir),
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for_port(self.port, self.proc, "azurite-blob")
        return self

    def stop(self) -> None:
        stop(self.proc)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    def connection_string(self, endpoint_host: str | None = None) -> str:
        endpoint = (
            self.endpoint
            if endpoint_host is None
            else (f"http://{endpoint_host}:{self.port}/{ACCOUNT}")
        )
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint};"
        )

    def container(self, name: str, create: bool = True) -> ContainerClient:
        client = ContainerClient.from_connection_string(self.connection_string(), name)
        if create and not client.exists():
            client.create_container()
        return client

    def sas_url(
        self, container: str, permission: str, hours: float = 1.0, endpoint_host: str | None = None
    ) -> str:
        token = generate_container_sas(
            ACCOUNT,
            container,
            account_key=ACCOUNT_KEY,
            permission=ContainerSasPermissions.from_string(permission),
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )
        host = endpoint_host or self.host
        return f"http://{host}:{self.port}/{ACCOUNT}/{container}?{token}"


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        stop(self.proc)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"
