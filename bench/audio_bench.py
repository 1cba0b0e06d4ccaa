#!/usr/bin/env python3
"""What sound costs the camera daemon, and how well it keeps sync (issue 16).

    python -m bench.audio_bench [--quick] [--json]     (from the repository root)

The camera daemon at 720p30 (synthetic camera, real time), stills on (a still a second into
the bench's redis-server) and signing on, as a provisioned hat cam runs: with sound
(HATCAM_AUDIO=on, the synthetic microphone, 0.1 % off its nominal rate) beside the same
daemon without, side by side, who starts first alternating between rounds. Per side: peak
RSS and CPU; from the files alone: the bytes a segment gains, and the audio/video offset
(each synthetic click against its marked frame, decoded with PyAV). Medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time

import redis

from bench.device_bench import proc_figures, start_daemon, stop_daemon
from hatcam import proof
from hatcam.device.spool import Spool

from tests.support import ROOT
from tests.support.services import RedisServer
from tests.support.sync import clicks, marked_frames, offsets

WORK = ROOT / "bench" / "work" / "audio"
FPS = 30
SEGMENT_SECONDS = 10
BUDGET_MB = 80.0
SUMMED = ("clicks_paired", "marked_frames", "on_camera_frames_lost", "off_camera_frames_lost")


def camera_state(side: str, number: int) -> dict:
    return json.loads((WORK / f"spool-{side}-{number}" / "state" / "camera.json").read_text())


def one_round(number: int, seconds: float, redis_server: RedisServer, key_path) -> dict:
    redis.Redis.from_url(redis_server.url).flushall()
    common = dict(
        HATCAM_CAMERA="synthetic",
        HATCAM_MIN_FREE_MB=1,
        HATCAM_RESOLUTION="1280x720",
        HATCAM_FPS=FPS,
        HATCAM_SEGMENT_SECONDS=SEGMENT_SECONDS,
        HATCAM_STILLS="on",
        IMAGE_CAPTURE_FREQUENCY=1,
        HATCAM_DEVICE_KEY=key_path,
    )
    sides = {"on": {"HATCAM_AUDIO": "on", "HATCAM_AUDIO_DEVICE": "synthetic"}, "off": {}}
    order = ["on", "off"] if number % 2 == 0 else ["off", "on"]
    procs = {}
    for db, side in enumerate(order, start=1):
        procs[side] = start_daemon(
            "camera",
            WORK / f"camera-{side}-{number}.log",
            HATCAM_SPOOL_DIR=WORK / f"spool-{side}-{number}",
            HATCAM_DEVICE=f"audio{side}",
            REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/{db}",
            **common,
            **sides[side],
        )
    time.sleep(seconds)
    figures = {side: proc_figures(proc.pid) for side, proc in procs.items()}
    for proc in procs.values():
        stop_daemon(proc)
    segments = {side: Spool(WORK / f"spool-{side}-{number}").ready_segments() for side in procs}
    # Whole segments only: the first (starting) and the last (cut at stop) are shorter.
    whole = {side: paths[1:-1] for side, paths in segments.items()}
    if len(whole["on"]) < 1 or len(whole["off"]) < 1:
        raise SystemExit(f"audio: too few segments in {seconds:.0f} s: {segments}")
    played = WORK / f"played-{number}.ts"
    played.write_bytes(b"".join(p.read_bytes() for p in segments["on"]))
    marks = [t for p in segments["on"] for t in marked_frames(p)]
    heard = clicks(played)
    measured = offsets(marks, heard)
    # A marked frame the loaded camera lost (no free buffer) leaves its click unpaired.
    lost = {side: camera_state(side, number).get("camera_frames_dropped", 0) for side in procs}
    if len(measured) < 0.8 * len(marks) or len(heard) - len(measured) > lost["on"]:
        raise SystemExit(
            f"audio: {len(marks)} marked frames, {len(heard)} clicks, {len(measured)} paired"
            f" ({lost['on']} frames lost by the camera): the sound is not what the figures "
            "would say"
        )
    if any(clicks(p) for p in segments["off"]):
        raise SystemExit("audio: the daemon without sound recorded sound")
    size = {side: statistics.mean(p.stat().st_size for p in whole[side]) for side in whole}
    per_min = 60 / seconds
    return {
        "on_peak_rss_mb": figures["on"][0],
        "off_peak_rss_mb": figures["off"][0],
        "on_cpu_s_per_min": figures["on"][1] * per_min,
        "off_cpu_s_per_min": figures["off"][1] * per_min,
        "on_segment_kb": size["on"] / 1000,
        "off_segment_kb": size["off"] / 1000,
        "offset_ms_worst": max(map(abs, measured)) * 1000,
        "offset_ms_median": statistics.median(measured) * 1000,
        "clicks_paired": len(measured),
        "marked_frames": len(marks),
        "on_camera_frames_lost": lost["on"],
        "off_camera_frames_lost": lost["off"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rounds, seconds = (1, 35) if args.quick else (3, 60)
    key_path = WORK / "device.key"
    proof.DeviceKey.generate(key_path)
    redis_server = RedisServer(WORK / "redis").start()
    try:
        results = []
        for number in range(rounds):
            t0 = time.perf_counter()
            results.append(one_round(number, seconds, redis_server, key_path))
            print(f"round {number + 1}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        redis_server.stop()
    figures = {
        name: statistics.median(r[name] for r in results)
        for name in results[0]
        if name not in SUMMED
    }
    figures["offset_ms_worst"] = max(r["offset_ms_worst"] for r in results)
    figures.update({name: sum(r[name] for r in results) for name in SUMMED})
    figures.update(rounds=rounds, seconds=seconds, budget_mb=BUDGET_MB)
    print(json.dumps(figures, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
