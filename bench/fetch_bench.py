#!/usr/bin/env python3
"""Fetch + stitch N segments: ``hatcam fetch`` against a plain baseline, same run.

    python -m bench.fetch_bench [--segments 360] [--seconds 2] [--size 320x240]

Starts its own Azurite, records N segments with the synthetic camera through
the real segmenter, uploads them like the device (Content-MD5, metadata), then
times, on the same data, in ``--rounds`` alternating rounds (the round with the
median ratio is reported):

  baseline  a listing by prefix and a parallel SDK download (same --jobs), then
            ``ffmpeg -f concat -safe 0 -i list -c copy -movflags +faststart out.mp4``
  hatcam    ``hatcam fetch --device benchcam`` into an empty directory (list, download,
            verify MD5, stitch with PyAV, check the MP4, report)
  again     the same ``hatcam fetch`` a second time (nothing to download or stitch)
  verified  ``hatcam fetch --keys DIR``: the same, each segment also checked against its
            signed record and the chain (the segments are signed as the device signs
            them); its ratio to ``hatcam`` (verification off) is the cost of verifying

and checks that both MP4s hold every frame. Work files go to bench/work/fetch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hatcam import config, proof  # noqa: E402
from hatcam.device.camera.synthetic import SyntheticCamera  # noqa: E402
from hatcam.device.segmenter import Segmenter  # noqa: E402
from hatcam.device.spool import Spool  # noqa: E402
from hatcam.device.uploader import Uploader  # noqa: E402

from tests.support import ROOT
from tests.support.services import Azurite
from tests.test_verified_fetch import sign_spool

BASELINES = ROOT / "bench" / "baselines"
DEVICE = "benchcam"
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
START = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def make_segments(spool_dir: Path, count: int, seconds: float, width: int, height: int, fps: int):
    counter = itertools.count()
    spool = Spool(spool_dir).ensure()
    segmenter = Segmenter(
        spool,
        DEVICE,
        width,
        height,
        fps,
        seconds,
        wall_clock=lambda: START + timedelta(seconds=seconds * next(counter)),
    )
    bitrate = max(300_000, width * height * fps // 10)
    camera = SyntheticCamera(
        width, height, fps, bitrate, realtime=False, frames=int(count * seconds * fps)
    )
    camera.start(segmenter)
    camera.wait()
    segmenter.close()
    return spool


def upload_all(settings, spool: Spool, jobs: int) -> int:
    uploader = Uploader(settings, spool)
    segments = spool.ready_segments()
    with ThreadPoolExecutor(jobs) as pool:
        assert all(pool.map(uploader.upload, segments))
    return len(segments)


def frames_in(path: Path) -> int:
    out = subprocess.run(
        [
            FFMPEG.replace("ffmpeg", "ffprobe"),
            "-v",
            "error",
            "-count_packets",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def baseline(env: dict, work: Path, jobs: int) -> tuple[float, Path]:
    files = work / "baseline"
    files.mkdir(parents=True)
    started = time.perf_counter()
    # A plain script run as its own process, as `hatcam fetch` is: each side pays for
    # starting its interpreter and importing the SDK.
    subprocess.run(
        [sys.executable, str(BASELINES / "download.py"), env["BLOB_CONNECTION_STRING"]]
        + [env["HATCAM_BLOB_CONTAINER"], str(files), f"{DEVICE}/", str(jobs)],
        check=True,
    )
    out = work / "baseline.mp4"
    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "concat", "-safe", "0", "-i", str(files / "list.txt")]
        + ["-c", "copy", "-movflags", "+faststart", "-y", str(out)],
        check=True,
    )
    return time.perf_counter() - started, out


def hatcam_fetch(env_file: Path, out: Path, jobs: int, keys: Path | None = None):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "hatcam.cli", "--env-file", str(env_file), "fetch"]
        + ["--device", DEVICE, "--out", str(out), "--jobs", str(jobs)]
        + (["--keys", str(keys)] if keys else []),
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HATCAM_")},
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"hatcam fetch failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=360)
    parser.add_argument("--seconds", type=float, default=2.0, help="segment length")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "fetch")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    azurite = Azurite(args.work / "azurite").start()
    try:
        container = "bench"
        client = azurite.container(container)
        settings = config.parse(
            {
                "BLOB_CONNECTION_STRING": azurite.connection_string(),
                "HATCAM_BLOB_CONTAINER": container,
                "HATCAM_DEVICE": DEVICE,
                "HATCAM_SPOOL_DIR": str(args.work / "spool"),
            }
        )
        started = time.perf_counter()
        spool = make_segments(
            args.work / "spool", args.segments, args.seconds, width, height, args.fps
        )
        made = time.perf_counter() - started
        keys = args.work / "keys"
        keys.mkdir()
        key = proof.DeviceKey.generate(args.work / "device.key")
        (keys / f"{DEVICE}.pub").write_text(key.public_line(DEVICE) + "\n")
        sign_spool(spool, key)
        count = upload_all(settings, spool, args.jobs)
        total_bytes = sum(b.size for b in client.list_blobs(name_starts_with=f"{DEVICE}/"))
        store = {
            "BLOB_CONNECTION_STRING": azurite.connection_string(),
            "HATCAM_BLOB_CONTAINER": container,
        }
        env_file = args.work / "fetch.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in store.items()))

        # The two take turns, who goes first alternating between rounds (a machine that
        # slows down must not always fall on the same side); the median ratio is reported.
        rounds, orders, verified = [], [], []
        for index in range(args.rounds):
            work = args.work / f"round{index}"
            out = work / "footage"
            checked = work / "verified"
            if index % 2 == 0:
                base_seconds, base_mp4 = baseline(store, work, args.jobs)
                cold_seconds, report = hatcam_fetch(env_file, out, args.jobs)
                on_seconds, on_report = hatcam_fetch(env_file, checked, args.jobs, keys)
                orders.append("baseline, hatcam, verified")
            else:
                on_seconds, on_report = hatcam_fetch(env_file, checked, args.jobs, keys)
                cold_seconds, report = hatcam_fetch(env_file, out, args.jobs)
                base_seconds, base_mp4 = baseline(store, work, args.jobs)
                orders.append("verified, hatcam, baseline")
            if f"{count} segment(s), signed by {DEVICE}'s key" not in on_report:
                raise SystemExit(f"hatcam fetch --keys did not verify every segment:\n{on_report}")
            rounds.append((cold_seconds / base_seconds, base_seconds, cold_seconds, work))
            verified.append((on_seconds / cold_seconds, on_seconds, cold_seconds))
        ratio, base_seconds, cold_seconds, work = sorted(rounds)[len(rounds) // 2]
        verify_ratio, on_seconds, off_seconds = sorted(verified)[len(verified) // 2]
        base_mp4, out = work / "baseline.mp4", work / "footage"
        warm_seconds, _ = hatcam_fetch(env_file, out, args.jobs)
        [ours] = sorted(out.glob("*.mp4"))
        expected = int(args.segments * args.seconds * args.fps)
        figures = {
            "segments": count,
            "segment_seconds": args.seconds,
            "size": args.size,
            "megabytes": round(total_bytes / 1e6, 1),
            "jobs": args.jobs,
            "make_segments_s": round(made, 1),
            "rounds": args.rounds,
            "orders": orders,
            "ratios": [round(r[0], 3) for r in rounds],
            "ratio": ratio,
            "baseline_s": round(base_seconds, 2),
            "hatcam_fetch_s": round(cold_seconds, 2),
            "hatcam_fetch_again_s": round(warm_seconds, 2),
            "verify_ratios": [round(v[0], 3) for v in verified],
            "verify_ratio": verify_ratio,
            "verified_fetch_s": round(on_seconds, 2),
            "unverified_fetch_s": round(off_seconds, 2),
            "frames_verified": frames_in(next((work / "verified").glob("*.mp4"))),
            "frames_expected": expected,
            "frames_baseline": frames_in(base_mp4),
            "frames_hatcam": frames_in(ours),
        }
    finally:
        azurite.stop()
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"{count} segments of {args.seconds:g} s at {args.size} ({figures['megabytes']} MB), "
            f"{args.jobs} parallel downloads, Azurite on loopback\n"
            f"  baseline (SDK download + ffmpeg concat -c copy): {base_seconds:7.2f} s, "
            f"{figures['frames_baseline']} frames\n"
            f"  hatcam fetch (first run):                        {cold_seconds:7.2f} s, "
            f"{figures['frames_hatcam']} frames\n"
            f"  hatcam fetch (second run, nothing new):          {warm_seconds:7.2f} s\n"
            f"  hatcam fetch --keys (verified) / without:        {on_seconds:7.2f} s / "
            f"{off_seconds:.2f} s = {verify_ratio:.3f}x (goal <= 1.1x: "
            f"{'met' if verify_ratio <= 1.1 else 'MISSED'}), {figures['frames_verified']} frames\n"
            f"  expected frames: {expected}"
        )
    wrong = {
        k: figures[k]
        for k in ("frames_hatcam", "frames_baseline", "frames_verified")
        if figures[k] != expected
    }
    if wrong:
        print(f"fetch_bench: expected {expected} frames in each MP4, got {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
