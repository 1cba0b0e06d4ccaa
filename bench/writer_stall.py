#!/usr/bin/env python3
"""Frames lost when the SD card stalls a write: the writer thread beside the inline writer.

    python -m bench.writer_stall [--quick] [--json] [--rounds N]   (repository root, as root)

Each run: the synthetic camera in real time at the shipped defaults (1280x720, 30 fps,
4 Mbit/s, picamera2's 6 camera buffers) into the real segmenter, its spool on the test SD
card (tests/support/sdcard.py, a FUSE mount: needs root); 3 s in, the card holds up the
next write by 0.2, 0.5 or 2 s; 3 s after that, stop. Frames lost are the holes in the
recorded files' timestamps (demuxed: a frame is 3000 ticks of 90 kHz), checked against
what the camera (no free buffer) and the segmenter (queue full) counted. The baseline is
the same segmenter with ``queue_seconds=0``: the write on the camera's encoder thread, as
hatcam did before the queue. The two take turns, who goes first alternating by round.

The queue's memory at 720p30: the most bytes any QUEUE_SECONDS of the recorded stream
weigh (what a full queue holds), and the RSS peak during a stall longer than the queue
minus the median just before it, in a fresh process (a used heap hides growth), the
inline writer beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import av

from hatcam.device.camera.synthetic import BUFFERS, SyntheticCamera
from hatcam.device.segmenter import QUEUE_SECONDS, Segmenter
from hatcam.device.spool import Spool

from tests.support import ROOT
from tests.support.sdcard import SdCard

WORK = ROOT / "bench" / "work" / "writer_stall"
W, H, FPS, BITRATE = 1280, 720, 30, 4_000_000
FRAME_TICKS = 90_000 // FPS
STALLS = (0.2, 0.5, 2.0)
MODES = {"inline": 0.0, "queued": QUEUE_SECONDS}
BEFORE_S, AFTER_S = 3.0, 3.0


class RssSampler:
    """This process's RSS every 20 ms, with when each sample was taken."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * self.page
            self.samples.append((time.monotonic(), rss))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def packet_list(spool: Spool) -> list[tuple[int, int]]:
    """(pts, size) of every frame recorded, in order across the segments."""
    found = []
    for segment in spool.ready_segments():
        with av.open(str(segment)) as container:
            found += [(p.pts, p.size) for p in container.demux(video=0) if p.pts is not None]
    return found


def holes(pts: list[int]) -> int:
    """Frames missing between the first and the last recorded frame."""
    return sum(round((b - a) / FRAME_TICKS) - 1 for a, b in zip(pts, pts[1:], strict=False))


def one_run(card: SdCard, name: str, queue_seconds: float, stall_s: float, rss=None) -> dict:
    spool = Spool(card.path / name).ensure()
    segmenter = Segmenter(spool, "bench", W, H, FPS, 10.0, queue_seconds=queue_seconds)
    camera = SyntheticCamera(W, H, FPS, BITRATE, realtime=True)
    stalled_before = card.stats()["stalled_writes"]
    camera.start(segmenter)
    time.sleep(BEFORE_S)
    stalled_at = time.monotonic()
    card.stall("write", stall_s, count=1)
    time.sleep(stall_s + AFTER_S)
    camera.stop()
    segmenter.close()
    if camera.failed or segmenter.failed:
        raise SystemExit(f"{name}: camera {camera.failed!r}, segmenter {segmenter.failed!r}")
    if card.stats()["stalled_writes"] != stalled_before + 1:
        raise SystemExit(f"{name}: the card's stall never held up a write")
    packets = packet_list(spool)
    lost = holes([pts for pts, _ in packets])
    counted = camera.frames_dropped + segmenter.frames_dropped
    if lost != counted:
        raise SystemExit(f"{name}: {lost} frames missing in the files, {counted} counted")
    figures = {
        "lost": lost,
        "camera_dropped": camera.frames_dropped,
        "queue_dropped": segmenter.dropped_queue_full,
        "frames": len(packets),
    }
    if rss is not None:
        before = [r for t, r in rss.samples if stalled_at - 2.0 <= t < stalled_at]
        during = [r for t, r in rss.samples if t >= stalled_at]
        figures["rss_delta_mb"] = (max(during) - statistics.median(before)) / 2**20
        frames = segmenter.queue_frames
        sizes = [size for _, size in packets]
        figures["bound_bytes"] = max(
            sum(sizes[i : i + frames]) for i in range(max(1, len(sizes) - frames + 1))
        )
    shutil.rmtree(card.path / name)  # the card lives in the memory of its process
    return figures


def memory_run(mode: str) -> dict:
    """One run in a fresh process, on the card the parent mounted."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.writer_stall", "--memory-run", mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the memory run ({mode}) failed: status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-run", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:  # the child of memory_run(): the card is mounted already
        card = SdCard(WORK / "card", WORK / "card-process")
        rss = RssSampler()
        try:
            stall_s = QUEUE_SECONDS + 3.0
            found = one_run(card, f"memory-{args.memory_run}", MODES[args.memory_run], stall_s, rss)
        finally:
            rss.close()
        print(json.dumps(found))
        return 0
    rounds = 1 if args.quick else args.rounds
    if os.geteuid() != 0:
        sys.exit("bench.writer_stall: mounting the test SD card (FUSE) needs root")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    runs: dict[str, dict[str, list[dict]]] = {f"{s:g}": {m: [] for m in MODES} for s in STALLS}
    orders = []
    card = SdCard(WORK / "card", WORK / "card-process").start()
    try:
        for r in range(rounds):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            orders.append(", ".join(order))
            for stall_s in STALLS:
                for mode in order:
                    figures = one_run(card, f"{mode}-{stall_s:g}-{r}", MODES[mode], stall_s)
                    runs[f"{stall_s:g}"][mode].append(figures)
                    print(f"round {r + 1}, {stall_s:g} s stall, {mode}: {figures}", file=sys.stderr)
        memory = {mode: memory_run(mode) for mode in MODES}
    finally:
        card.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(WORK, ignore_errors=True)
    stalls = {
        stall: {
            mode: {
                "lost_median": statistics.median(f["lost"] for f in found),
                "lost": [f["lost"] for f in found],
                "camera_dropped": [f["camera_dropped"] for f in found],
                "queue_dropped": [f["queue_dropped"] for f in found],
            }
            for mode, found in by_mode.items()
        }
        for stall, by_mode in runs.items()
    }
    figures = {
        "size": f"{W}x{H}@{FPS}, {BITRATE // 1_000_000} Mbit/s",
        "camera_buffers": BUFFERS,
        "queue_seconds": QUEUE_SECONDS,
        "rounds": rounds,
        "orders": orders,
        "stalls": stalls,
        "memory": {
            "stall_s": QUEUE_SECONDS + 3.0,
            "queue_dropped": memory["queued"]["queue_dropped"],
            "bound_mb": memory["queued"]["bound_bytes"] / 2**20,
            "rss_delta_mb": memory["queued"]["rss_delta_mb"],
            "inline_rss_delta_mb": memory["inline"]["rss_delta_mb"],
            "inline_camera_dropped": memory["inline"]["camera_dropped"],
        },
    }
    print(json.dumps(figures, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
