"""The host side of every virtual Pi: where its files live, running tools, what it lacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .. import ROOT

CACHE = Path(os.environ.get("VPI_CACHE", ROOT / ".cache" / "vpi"))


def log(msg: str) -> None:
    print(f"vpi: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    # stdout is kept for the JSON `up` prints; tools talk on stderr.
    kw.setdefault("stdout", sys.stderr)
    return subprocess.run(cmd, check=check, text=True, **kw)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("vpi: must run as root (mounts, network namespaces, nftables)")


def ensure_host_tools() -> None:
    """Install what a fresh Debian host lacks (mmdebstrap, systemd-nspawn, nft, ip, ssh)."""
    tools = {
        "mmdebstrap": "mmdebstrap",
        "systemd-nspawn": "systemd-container",
        "nft": "nftables",
        "ip": "iproute2",
        "ssh": "openssh-client",
    }
    missing = sorted({pkg for tool, pkg in tools.items() if not shutil.which(tool)})
    if missing:
        log(f"installing host packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, text=True, stdout=subprocess.PIPE
    ).stdout.strip()


def foreign(arch: str) -> bool:
    return arch != host_arch()
