"""The guest's network: a bridge holding SUBNET.1/24, an nftables table that masquerades
its traffic, and the host's IPv4 forwarding (restored when the last guest goes)."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from pathlib import Path

from . import state as vstate
from .host import run


def host_nameservers() -> list[str]:
    servers = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                ip = ipaddress.ip_address(parts[1].split("%")[0])
                if ip.version == 4 and not ip.is_loopback:
                    servers.append(str(ip))
    return servers or ["1.1.1.1", "9.9.9.9"]


def setup_network(state: dict) -> None:
    """Make the bridge and the nftables table; records each in ``state['created']``."""
    bridge, subnet, table = state["bridge"], state["subnet"], state["nft_table"]
    run(["ip", "link", "add", bridge, "type", "bridge"])
    state["created"].append("bridge")
    run(["ip", "addr", "add", f"{subnet}.1/24", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    ruleset = f"""
table ip {table} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet}.0/24 oifname != "{bridge}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{bridge}" accept
    oifname "{bridge}" ct state established,related accept
  }}
}}
"""
    run(["nft", "-f", "-"], input=ruleset)
    state["created"].append("nft")
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    state["ip_forward_before"] = forward.read_text().strip()
    if state["ip_forward_before"] != "1":
        forward.write_text("1\n")


def teardown_network(state: dict) -> None:
    created = state.get("created", [])
    if "nft" in created:
        run(
            ["nft", "delete", "table", "ip", state["nft_table"]],
            check=False,
            stderr=subprocess.DEVNULL,
        )
    if "bridge" in created:
        run(["ip", "link", "del", state["bridge"]], check=False, stderr=subprocess.DEVNULL)
    before = state.get("ip_forward_before")
    others = vstate.others_running(state["name"])
    if before and before != "1" and not others:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(before + "\n")
