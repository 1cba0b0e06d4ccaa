#!/usr/bin/env python3
"""Recovery point after destruction: whole segments (sp=c), live (sp=ca), and live signed.

    python -m bench.recovery_bench [--quick] [--json] [--kills N]   (from the repository root)

Each kill, as a new user would try it: `hatcam camera` (synthetic, shipped defaults:
720p30, 10 s segments, 4 Mbit/s) and `hatcam upload` against a real Azurite (through
tests.support.http_proxy.HttpProxy, which counts request bodies), both SIGKILLed at a
random moment 10-20 s after the first segment opened (a uniform phase of the second
segment), the spool wiped (the device is destroyed), then `hatcam fetch` with the
account key. Recovery point = kill time - capture time of the newest frame in the
fetched MP4s. Capture time comes from the synthetic camera's frame counter (drawn into
every picture, read back from the decoded MP4): frame n is paced at n/30 s after frame 0,
and frame 0 is the first frame of the first segment, whose name carries its wall-clock
start (ms). A camera that fell behind its pace makes the figure larger, never smaller.

"signed" is live mode with a device key (a signed checkpoint inside each segment at
every sync) fetched with `--keys`: only what verifies is stitched, so it shows whether
verification takes any of the recovered seconds back. The modes take turns, who goes
first alternating. Also per mode: request body bytes
sent / footage bytes the camera wrote, requests per minute (and what they cost per day
at the write price below), the uploader's CPU and peak RSS (from /proc, just before the
kill). Starts its own Azurite; work files go to bench/work/recovery.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av

from bench.device_bench import daemon_env, pct, proc_figures, start_daemon
from hatcam.segment import SegmentName

from tests.support import ROOT
from tests.support.http_proxy import HttpProxy
from tests.support.services import Azurite

WORK = ROOT / "bench" / "work" / "recovery"
PYTHON = sys.executable
FPS = 30
SEGMENT_S = 10.0
# Azure Blob, Standard general purpose v2, Hot tier, LRS: write operations (Put Blob,
# Append Block are both "Write", learn.microsoft.com map-rest-apis-transaction-categories).
# The price is an assumption (the list price as last known, not confirmed from a
# stored copy of azure.microsoft.com/pricing/details/storage/blobs): check it there.
WRITE_USD_PER_10K = 0.065
WRITE_PRICE_NOTE = "USD 0.065 per 10,000 write operations, Hot LRS (assumed list price)"
MODES = {"whole": "c", "live": "ca", "signed": "ca"}
# "signed": live upload by a camera holding a device key (checkpoints in each segment),
# fetched with the device's public key: the recovery point through verified fetch.
SIGNED = {"signed"}


def frame_counters(path: Path) -> list[int]:
    """The synthetic camera's frame counter of every frame decoded from ``path``."""
    found = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            plane = frame.planes[0]
            luma, stride = bytes(plane), plane.line_size
            found.append(
                sum((luma[(11 + bit * 8) * stride + 11] > 128) << bit for bit in range(16))
            )
    return found


def poll_sizes(spool: Path, sizes: dict[str, int]) -> str | None:
    """Largest size seen of each segment file; returns the first segment's name once seen."""
    for sub in ("recording", "ready"):
        try:
            names = os.listdir(spool / sub)
        except FileNotFoundError:
            continue
        for name in names:
            if name.endswith(".ts"):
                try:
                    size = (spool / sub / name).stat().st_size
                except FileNotFoundError:
                    continue
                sizes[name] = max(sizes.get(name, 0), size)
    return min(sizes) if sizes else None


def one_kill(azurite: Azurite, proxy: HttpProxy, mode: str, index: int, quick: bool) -> dict:
    container = f"rec-{mode}"
    device = f"kill{index}"
    spool = WORK / f"{mode}{index}"
    out = WORK / f"{mode}{index}-footage"
    sas = azurite.sas_url(container, MODES[mode]).replace(f":{azurite.port}/", f":{proxy.port}/", 1)
    settings = dict(
        HATCAM_CAMERA="synthetic",
        HATCAM_SPOOL_DIR=spool,
        HATCAM_DEVICE=device,
        HATCAM_BLOB_SAS_URL=sas,
    )
    keys = WORK / f"{mode}{index}-keys"
    if mode in SIGNED:
        from hatcam.proof import DeviceKey

        keys.mkdir()
        key = DeviceKey.generate(WORK / f"{mode}{index}.key")
        (keys / f"{device}.pub").write_text(key.public_line(device) + "\n")
        settings["HATCAM_DEVICE_KEY"] = WORK / f"{mode}{index}.key"
    with proxy.lock:
        proxy.exchanges.clear()
    log = WORK / f"{mode}{index}.log"
    camera = start_daemon("camera", log, **settings)
    uploader = start_daemon("upload", log, **settings)
    started = time.time()
    sizes: dict[str, int] = {}
    first = None
    try:
        while first is None:
            if time.time() - started > 60 or camera.poll() is not None:
                raise SystemExit(f"{mode}{index}: no segment opened in 60 s; see {log}")
            first = poll_sizes(spool, sizes)
            time.sleep(0.05)
        stamp0 = SegmentName.parse(first).start.timestamp()
        # Quick: a kill inside the first segment; else a uniform phase of the second.
        kill_at = stamp0 + (
            2 + random.uniform(0, 3) if quick else SEGMENT_S + random.uniform(0, SEGMENT_S)
        )
        while time.time() < kill_at - 0.1:
            poll_sizes(spool, sizes)
            time.sleep(0.1)
        poll_sizes(spool, sizes)
        while time.time() < kill_at:
            pass
        rss, cpu = proc_figures(uploader.pid)
        killed = time.time()
        for proc in (camera, uploader):
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        for proc in (camera, uploader):
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    with proxy.lock:
        exchanges = list(proxy.exchanges)
    shutil.rmtree(spool)  # the device is destroyed: its card is gone
    client = azurite.container(container, create=False)
    blobs = {
        b.name.rsplit("/", 1)[1]: b.size for b in client.list_blobs(name_starts_with=f"{device}/")
    }
    footage = sum(max(size, blobs.get(name, 0)) for name, size in sizes.items())
    in_cloud = sum(size for name, size in blobs.items() if name.endswith(".ts"))
    env_file = WORK / f"{mode}{index}.env"
    env_file.write_text(
        f"BLOB_CONNECTION_STRING={azurite.connection_string()}\nHATCAM_BLOB_CONTAINER={container}\n"
    )
    fetch = subprocess.run(
        [PYTHON, "-m", "hatcam.cli", "--env-file", str(env_file), "fetch"]
        + ["--device", device, "--out", str(out)]
        + (["--keys", str(keys)] if mode in SIGNED else []),
        env=daemon_env(),
        capture_output=True,
        text=True,
    )
    with open(log, "a") as f:
        f.write(f"--- fetch (status {fetch.returncode})\n{fetch.stdout}{fetch.stderr}")
    counters = [n for mp4 in sorted(out.rglob("*.mp4")) for n in frame_counters(mp4)]
    newest = max(counters) if counters else None
    captured = stamp0 + newest / FPS if newest is not None else stamp0
    uploader_log = log.read_text()
    return {
        "mode": mode,
        "phase_s": round((killed - stamp0) % SEGMENT_S, 3),
        "recovery_s": round(killed - captured, 3),
        "frames_fetched": len(counters),
        "frames_doubled": len(counters) - len(set(counters)),
        "first_counter": min(counters) if counters else None,
        "fetch_status": fetch.returncode,
        "live_off_logged": "live upload off" in uploader_log,
        "requests": len(exchanges),
        "bytes_sent": sum(e.received for e in exchanges),
        "footage_bytes": footage,
        "cloud_bytes": in_cloud,
        "seconds": killed - started,
        "uploader_peak_rss_mb": round(rss, 1),
        "uploader_cpu_s": round(cpu, 2),
        "blobs": sorted(blobs),
    }


def summary(kills: list[dict]) -> dict:
    points = [k["recovery_s"] for k in kills]
    seconds = sum(k["seconds"] for k in kills)
    rpm = sum(k["requests"] for k in kills) / seconds * 60
    return {
        "kills": len(kills),
        "p50_s": round(statistics.median(points), 3),
        "p95_s": round(pct(points, 95), 3),
        "max_s": round(max(points), 3),
        "min_s": round(min(points), 3),
        "bytes_ratio": round(
            sum(k["bytes_sent"] for k in kills) / max(1, sum(k["footage_bytes"] for k in kills)), 4
        ),
        # Overhead alone: what was sent beside what of the footage is in the cloud.
        "sent_per_cloud_byte": round(
            sum(k["bytes_sent"] for k in kills) / max(1, sum(k["cloud_bytes"] for k in kills)), 4
        ),
        "requests_per_min": round(rpm, 1),
        "usd_per_day": round(rpm * 60 * 24 / 10_000 * WRITE_USD_PER_10K, 3),
        "uploader_peak_rss_mb": max(k["uploader_peak_rss_mb"] for k in kills),
        "uploader_cpu_s_per_min": round(sum(k["uploader_cpu_s"] for k in kills) / seconds * 60, 2),
        "fetch_failed": sum(k["fetch_status"] != 0 for k in kills),
        "frames_doubled": sum(k["frames_doubled"] for k in kills),
        "live_off_logged": sum(k["live_off_logged"] for k in kills),
        "phases_s": sorted(k["phase_s"] for k in kills),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one kill per mode, a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--kills", type=int, help="kills per mode (default 10, quick 1)")
    args = parser.parse_args()
    kills = args.kills or (1 if args.quick else 10)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    azurite = Azurite(WORK / "azurite").start()
    proxy = HttpProxy(azurite.port).start()
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        for mode in MODES:
            azurite.container(f"rec-{mode}")
        for index in range(kills):
            order = list(MODES) if index % 2 == 0 else list(reversed(MODES))
            for mode in order:
                kill = one_kill(azurite, proxy, mode, index, args.quick)
                results[mode].append(kill)
                print(
                    f"{mode} kill {index}: phase {kill['phase_s']:.1f} s, recovery point "
                    f"{kill['recovery_s']:.2f} s, {kill['frames_fetched']} frames fetched, "
                    f"sent/footage {kill['bytes_sent']}/{kill['footage_bytes']}",
                    file=sys.stderr,
                )
    finally:
        proxy.stop()
        azurite.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(WORK, ignore_errors=True)
    figures = {mode: summary(runs) for mode, runs in results.items()}
    figures["price"] = WRITE_PRICE_NOTE
    figures["kills"] = {mode: runs for mode, runs in results.items()}
    print(json.dumps(figures, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
