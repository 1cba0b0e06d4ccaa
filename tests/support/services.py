"""Real services for the tests, demo and benchmarks: Azurite and redis-server.

The one way each is started: in its own directory, on a free port of the given address
(loopback for the tests, a virtual Pi's bridge for hostsvc), stopped by PID. Azurite's
``azurite-blob`` binary is started directly so there is one process to stop. This is
also the one place a connection string is written (``connection_string``).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.storage.blob import (
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from . import ROOT
from .procs import free_port, serve, terminate

AZURITE_BIN = Path(
    os.environ.get("AZURITE_BLOB", ROOT / ".cache/azurite/node_modules/.bin/azurite-blob")
)
# Azurite's published development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def connection_string(endpoint: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY) -> str:
    """An Azure Storage connection string for the blob ``endpoint`` (http://host:port/account)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={account};"
        f"AccountKey={key};BlobEndpoint={endpoint};"
    )


class Azurite:
    """azurite-blob. ``account``/``key`` other than the development account's give it that
    account only (AZURITE_ACCOUNTS), so the key is a real secret a test can search for.
    ``detach`` lets it outlive this process (stopped later by PID, e.g. by hostsvc)."""

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        account: str = ACCOUNT,
        key: str = ACCOUNT_KEY,
        detach: bool = False,
        pid: int | None = None,
    ):
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port()
        self.account, self.key = account, key
        self.detach = detach
        self.pid = pid

    def start(self) -> Azurite:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `make setup` first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = None
        if self.account != ACCOUNT:
            env = {**os.environ, "AZURITE_ACCOUNTS": f"{self.account}:{self.key}"}
        cmd = [
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
        ]
        log = self.workdir / "azurite.log"
        self.pid = serve(cmd, log, env, self.detach, self.host, self.port, "azurite-blob")
        return self

    def stop(self) -> None:
        terminate(self.pid)

    def endpoint_for(self, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/{self.account}"

    @property
    def endpoint(self) -> str:
        return self.endpoint_for()

    def connection_string(self, endpoint_host: str | None = None) -> str:
        return connection_string(self.endpoint_for(endpoint_host), self.account, self.key)

    def container(self, name: str, create: bool = True) -> ContainerClient:
        client = ContainerClient.from_connection_string(self.connection_string(), name)
        if create and not client.exists():
            client.create_container()
        return client

    def sas_url(
        self, container: str, permission: str, hours: float = 1.0, endpoint_host: str | None = None
    ) -> str:
        token = generate_container_sas(
            self.account,
            container,
            account_key=self.key,
            permission=ContainerSasPermissions.from_string(permission),
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )
        return f"{self.endpoint_for(endpoint_host)}/{container}?{token}"


class RedisServer:
    """redis-server with no persistence; its settings (and password) in a 0600 file, never
    on its command line."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        detach: bool = False,
        pid: int | None = None,
        extra: str = "",
    ):
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port()
        self.password = password
        self.extra = extra  # more redis.conf lines, after ours (a later line wins)
        self.detach = detach
        self.pid = pid

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text(
            f'bind {self.host}\nport {self.port}\nsave ""\nappendonly no\n'
            f"dir {self.workdir}\n"
            + (f"requirepass {self.password}\n" if self.password else "")
            + self.extra
        )
        log = self.workdir / "redis.log"
        self.pid = serve(
            [binary, str(conf)], log, None, self.detach, self.host, self.port, "redis-server"
        )
        return self

    def stop(self) -> None:
        terminate(self.pid)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"
