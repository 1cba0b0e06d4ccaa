#!/usr/bin/env python3
"""Recovery point on the provisioned virtual Pi, stills on, over a hard link.

    python -m bench.vpi_recovery [--kills 5] [--json]     (root; from the repository root)

The virtual Pi (tests/support/session.py: systemd-nspawn, provisioned by the real
playbook, which mints the SAS) records with the shipped video defaults (720p30, 10 s
segments, 4 Mbit/s) and a still every second into the host's redis-server, over a link
limited to 8 Mbit/s upstream (tc tbf on the guest's side of its veth, so it is the
guest's egress that is shaped) with 50 ms each way in front of Azurite (this kernel has
no netem: an HttpProxy on the host holds each answer 100 ms, one round trip per request;
connection set-up is not delayed). Each kill is a power cut at a random moment (every
guest process SIGKILLed at once); the recovery point is the kill time minus the capture
time of the newest frame the store holds then (tests/faults/lab.py: its segment's start
from the name, plus its PTS), read before the guest boots again. The guest's name and
subnet: HATCAM_FAULTS_NAME / HATCAM_FAULTS_SUBNET (default faultsl, 10.213.16).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.device_bench import pct

from tests.faults.lab import Lab
from tests.support.http_proxy import HttpProxy
from tests.support.session import ProvisionedPi

NAME = os.environ.get("HATCAM_FAULTS_NAME", "faultsl")
SUBNET = os.environ.get("HATCAM_FAULTS_SUBNET", "10.213.16")
FPS, SEGMENT_S = 30, 10
SETTINGS = {
    "hatcam_resolution": "1280x720",
    "hatcam_fps": FPS,
    "hatcam_bitrate": 4_000_000,
    "hatcam_segment_seconds": SEGMENT_S,
    "hatcam_stills": True,
    "hatcam_image_capture_frequency": 1,
}
RATE = "8mbit"
ROUND_TRIP_S = 0.1


def shape(pi: ProvisionedPi) -> str:
    """tbf on the guest's egress (its side of the veth): 8 Mbit/s upstream."""
    ns = ["nsenter", "-t", str(pi.guest_init()), "-n"]
    links = subprocess.run([*ns, "ip", "-o", "link"], capture_output=True, text=True).stdout
    dev = next(
        line.split(":")[1].strip().split("@")[0]
        for line in links.splitlines()
        if "link/ether" in line
    )
    subprocess.run(
        [*ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf"]
        + ["rate", RATE, "burst", "32kbit", "latency", "400ms"],
        check=True,
    )
    return dev


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vpi-recovery-"))
    pi = ProvisionedPi(NAME, SUBNET, work, SETTINGS, log=lambda t: print(t, file=sys.stderr))
    kills = []
    pi.boot()
    proxy = None
    try:
        host = pi.vm["host_ip"]
        port = int(pi.svc["blob_endpoint"].rsplit(":", 1)[1].split("/")[0])
        proxy = HttpProxy(port, host=host).start()
        proxy.hold = ROUND_TRIP_S
        pi.svc = {
            **pi.svc,
            "blob_endpoint": pi.svc["blob_endpoint"].replace(f":{port}/", f":{proxy.port}/"),
        }
        pi.provision()
        lab = Lab(pi, FPS, SEGMENT_S, work / "figures")
        dev = shape(pi)
        print(f"shaped {dev}; recording", file=sys.stderr)
        for index in range(args.kills):
            time.sleep(SEGMENT_S * 2 + random.uniform(0, SEGMENT_S))
            killed = pi.power_cut()
            point = lab.recovery_point(at=killed)
            with proxy.lock:
                sent = sum(e.received for e in proxy.exchanges)
                requests = len(proxy.exchanges)
            kills.append(
                {"recovery_s": point, "requests_so_far": requests, "bytes_sent_so_far": sent}
            )
            print(f"kill {index}: recovery point {point} s", file=sys.stderr)
            pi.boot_again()
            shape(pi)
    finally:
        if proxy is not None:
            proxy.stop()
        pi.close()
    points = [k["recovery_s"] for k in kills if k["recovery_s"] is not None]
    figures = {
        "kills": len(kills),
        "p50_s": statistics.median(points) if points else None,
        "p95_s": pct(points, 95) if points else None,
        "max_s": max(points, default=None),
        "link": f"{RATE} upstream (tbf), {ROUND_TRIP_S * 1000:.0f} ms round trip (proxy)",
        "settings": SETTINGS,
        "each": kills,
    }
    print(json.dumps(figures, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
