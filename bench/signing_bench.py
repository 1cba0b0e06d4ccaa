#!/usr/bin/env python3
"""What signing costs the camera: CPU per second of footage and the daemon's peak RSS.

    python -m bench.signing_bench [--quick] [--json]     (from the repository root)

Sections:
  daemons   two camera daemons side by side for the same seconds, 720p30 at 4 Mbit/s,
            synthetic camera, stills on (a still a second into the bench's redis-server,
            as device_bench's memory section runs them): one with HATCAM_DEVICE_KEY, one
            without. Peak RSS (the 80 MB budget) and CPU from /proc.
  writepath the segment writer alone, replaying the same 720p30 4 Mbit/s frames into
            10 s segments with a checkpoint every second of footage, with a key and
            without, in turns (who goes first alternating), CPU time of this process:
            the daemon's CPU figure carries the synthetic camera's software encoder,
            whose noise is larger than what signing adds.

Starts its own redis-server; work files go to bench/work/signing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench.device_bench import proc_figures, start_daemon, stop_daemon
from hatcam import proof
from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import SegmentFile
from hatcam.device.signing import Signer
from hatcam.device.spool import Spool
from hatcam.segment import Contents, SegmentName

from tests.support import ROOT
from tests.support.services import RedisServer

WORK = ROOT / "bench" / "work" / "signing"
WIDTH, HEIGHT, FPS, BITRATE = 1280, 720, 30, 4_000_000
SEGMENT_FRAMES = 10 * FPS


def url(redis_server: RedisServer, db: int) -> str:
    """One database each: a still's key is its capture second."""
    return f"redis://127.0.0.1:{redis_server.port}/{db}"


def daemons(seconds: float, redis_server: RedisServer) -> dict:
    """The camera daemon with a key and without, side by side, stills on."""
    key_path = WORK / "device.key"
    key = proof.DeviceKey.generate(key_path)
    redis.Redis.from_url(redis_server.url).flushall()
    common = dict(
        HATCAM_CAMERA="synthetic",
        HATCAM_MIN_FREE_MB=1,
        HATCAM_RESOLUTION=f"{WIDTH}x{HEIGHT}",
        HATCAM_FPS=FPS,
        HATCAM_BITRATE=BITRATE,
        HATCAM_STILLS="on",
        IMAGE_CAPTURE_FREQUENCY=1,
    )
    runs = {}
    for db, (side, extra) in enumerate(
        (("on", {"HATCAM_DEVICE_KEY": key_path}), ("off", {})), start=1
    ):
        runs[side] = start_daemon(
            "camera",
            WORK / f"camera-{side}.log",
            HATCAM_SPOOL_DIR=WORK / f"spool-{side}",
            HATCAM_DEVICE=f"sign{side}",
            REDIS_URL=url(redis_server, db),
            **common,
            **extra,
        )
    time.sleep(seconds)
    figures = {side: proc_figures(proc.pid) for side, proc in runs.items()}
    for proc in runs.values():
        stop_daemon(proc)
    # The spools say whether each side really signed (or not) what it recorded.
    ring = proof.KeyRing()
    ring.add_line(key.public_line("signon"))
    found = {}
    for side in runs:
        spool = Spool(WORK / f"spool-{side}")
        records = [spool.read_metadata(p).get("proof") for p in spool.ready_segments()]
        found[side] = (len(records), sum(r is not None and not ring.problem(r) for r in records))
    if not found["on"][0] or found["on"][1] != found["on"][0] or found["off"][1]:
        raise SystemExit(f"signing: the daemons' segments (count, signed): {found}")
    stills = {
        side: len(list(redis.Redis.from_url(url(redis_server, db)).scan_iter("image:*")))
        for db, side in enumerate(runs, start=1)
    }
    per_min = 60 / seconds
    return {
        "seconds": seconds,
        "segments_signed": found["on"][0],
        "stills_stored": stills,
        "on_peak_rss_mb": figures["on"][0],
        "off_peak_rss_mb": figures["off"][0],
        "on_cpu_s_per_min": figures["on"][1] * per_min,
        "off_cpu_s_per_min": figures["off"][1] * per_min,
    }


class Frames:
    def __init__(self):
        self.frames: list[tuple[bytes, bool]] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.frames.append((bytes(frame), bool(keyframe)))


def write_path(frames: list[tuple[bytes, bool]], signed: bool, where: Path) -> tuple[float, int]:
    """(CPU seconds, checkpoints) to write ``frames`` as 10 s segments, syncing (and with
    a key, checkpointing) once a second of footage, and closing (signing) each segment."""
    shutil.rmtree(where, ignore_errors=True)
    spool = Spool(where).ensure()
    signer = None
    if signed:
        signer = Signer(proof.DeviceKey.generate(where / "device.key"), "bench", spool.state)
    checkpoints = 0
    started = time.process_time()
    for first in range(0, len(frames), SEGMENT_FRAMES):
        name = SegmentName(datetime(2026, 1, 1, tzinfo=UTC), "00000000", first + 1)
        segment = SegmentFile(where / name.filename, name, WIDTH, HEIGHT, FPS, signer)
        for index, (data, keyframe) in enumerate(frames[first : first + SEGMENT_FRAMES]):
            segment.write(data, keyframe, (first + index) * (90_000 // FPS))
            if index % FPS == FPS - 1:
                segment.sync()
        segment.close()
        if signer is not None:
            contents = Contents(segment.frames, segment.first_pts, segment.last_pts)
            signer.segment(segment.segment_fields(contents))
        checkpoints += segment.checkpoints
    return time.process_time() - started, checkpoints


def writepath(seconds: int, rounds: int) -> dict:
    source = Frames()
    camera = SyntheticCamera(WIDTH, HEIGHT, FPS, BITRATE, realtime=False, frames=seconds * FPS)
    camera.start(source)
    if not camera.wait(600):
        raise SystemExit("signing: the synthetic camera did not finish")
    results = {"on": [], "off": []}
    checkpoints = 0
    for index in range(rounds):
        order = ("on", "off") if index % 2 == 0 else ("off", "on")
        for side in order:
            cpu, made = write_path(source.frames, side == "on", WORK / f"write-{side}")
            results[side].append(cpu)
            checkpoints = made if side == "on" else checkpoints
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    megabytes = sum(len(data) for data, _ in source.frames) / 1e6
    return {
        "seconds": seconds,
        "rounds": rounds,
        "megabytes": round(megabytes, 1),
        "checkpoints": checkpoints,
        "on_cpu_ms_per_s": 1000 * on / seconds,
        "off_cpu_ms_per_s": 1000 * off / seconds,
        "signing_cpu_ms_per_s": 1000 * (on - off) / seconds,
        "on_cpu_s": results["on"],
        "off_cpu_s": results["off"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    counts = (
        dict(daemons=15, seconds=10, rounds=1)
        if args.quick
        else dict(daemons=60, seconds=60, rounds=5)
    )
    redis_server = RedisServer(WORK / "redis").start()
    figures = {}
    try:
        t0 = time.perf_counter()
        figures["daemons"] = daemons(counts["daemons"], redis_server)
        print(f"daemons: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        t0 = time.perf_counter()
        figures["writepath"] = writepath(counts["seconds"], counts["rounds"])
        print(f"writepath: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        redis_server.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(WORK, ignore_errors=True)
    print(json.dumps(figures, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
