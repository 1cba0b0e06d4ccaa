#!/usr/bin/env python3
"""``make demo``: the whole product on a laptop with no Pi.

Boots a throwaway virtual Pi, provisions it with the real ansible/provision.yml and
the synthetic camera, lets it record (DEMO_SECONDS, default 60) while its network is
cut for the middle third, then fetches and stitches the footage with the real
``hatcam fetch`` and exports a few stills from Redis. The summary's figures come from
what happened: the blob listing, the decoded MP4, the Redis keys.

    python -m tests.support.demo [--seconds 60] [--out demo] [--summary-json FILE] [--keep]
    python -m tests.support.demo --clean    stop a kept or left-over demo, remove ./demo

(from the repository root)

Cleans up everything it started on success, failure and Ctrl-C (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import av

from . import ROOT, hostsvc
from .footage import landed_segments
from .session import VPI, ProvisionedPi, run

NAME, SUBNET = "demo", "10.213.9"
WORK = ROOT / ".cache" / "demo"
HATCAM = Path(sys.executable).parent / "hatcam"
STAGES = 6


class Stages:
    def __init__(self):
        self.number = 0
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        self.number += 1
        elapsed = time.monotonic() - self.started
        print(f"[{self.number}/{STAGES} {elapsed:5.0f} s] {text}", flush=True)


def countdown(pi: ProvisionedPi, seconds: int) -> tuple[float, float]:
    """Record for ``seconds``; cut the guest's link for the middle third. Returns the
    wall-clock times the network went down and came back."""
    cut_at, restore_at = seconds // 3, 2 * seconds // 3
    cut = restored = 0.0
    start = time.monotonic()
    tty = sys.stdout.isatty()
    for elapsed in range(seconds + 1):
        time.sleep(max(0.0, start + elapsed - time.monotonic()))
        if elapsed == cut_at:
            pi.cut_network()
            cut = time.time()
            print(f"      network cut at {elapsed} s: the Pi keeps recording onto its card")
        elif elapsed == restore_at:
            pi.restore_network()
            restored = time.time()
            print(f"      network back at {elapsed} s: the queue drains")
        state = "DOWN" if cut and not restored else "up"
        line = f"      recording: {seconds - elapsed:3d} s left, network {state}"
        if tty:
            print("\r" + line, end="", flush=True)
        elif elapsed % 10 == 0:
            print(line, flush=True)
    if tty:
        print()
    return cut, restored


def wait_drained(pi: ProvisionedPi, timeout: float) -> dict:
    def drained():
        status = pi.status()
        return status if status["queue_segments"] == 0 else None

    return pi.wait_for(drained, timeout, "the Pi's upload queue to empty", poll=2)


def fetch(pi: ProvisionedPi, out: Path) -> str:
    env_file = WORK / "fetch.env"
    env_file.touch(mode=0o600)
    env_file.write_text(
        f"BLOB_CONNECTION_STRING={pi.connection_string()}\n"
        f"HATCAM_BLOB_CONTAINER={pi.svc['container']}\n"
    )
    result = run(
        [
            str(HATCAM),
            "--env-file",
            str(env_file),
            "fetch",
            "--device",
            pi.device,
            "--out",
            str(out),
        ],
        capture_output=True,
        check=False,
    )
    (WORK / "fetch.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"hatcam fetch failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def export_stills(pi: ProvisionedPi, out: Path, count=3) -> tuple[int, list[Path]]:
    client = pi.redis()
    keys = sorted(client.keys("image:*"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in keys[-count:]:
        path = out / f"{key.decode().replace(':', '-')}.jpg"
        path.write_bytes(client.hget(key, "image_data"))
        written.append(path)
    return len(keys), written


def mp4_facts(path: Path) -> dict:
    """Frames (decoded), duration and the holes (steps over 1.5 frames) of a stitched MP4."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        seconds = float(stream.time_base)
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    steps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    interval = statistics.median(steps) if steps else 1
    holes = [
        {"at_s": round((a - pts[0]) * seconds, 2), "missing_s": round((b - a) * seconds, 2)}
        for a, b in zip(pts, pts[1:], strict=False)
        if b - a > 1.5 * interval
    ]
    return {
        "file": str(path),
        "frames": frames,
        "duration_s": round((pts[-1] - pts[0] + interval) * seconds, 2),
        "holes": holes,
    }


def summarize(
    pi: ProvisionedPi,
    out: Path,
    cut: float,
    restored: float,
    status: dict,
    stills_total: int,
    stills: list[Path],
) -> dict:
    blobs = landed_segments(pi.container(), f"{pi.device}/")

    def start(blob):
        return datetime.fromisoformat(blob.metadata["start"].replace("Z", "+00:00")).timestamp()

    during = [b for b in blobs if cut <= start(b) < restored]
    # The store's creation times are whole seconds, rounded down.
    after = [b for b in during if b.creation_time.timestamp() + 1 > restored]
    mp4s = sorted(out.glob("*.mp4"))
    facts = [mp4_facts(path) for path in mp4s]
    first = min(start(b) for b in blobs)
    # The outage as seconds into the (first) stitched file, a segment's slack either side.
    slack = float(pi.settings["hatcam_segment_seconds"])
    window = (cut - first - slack, restored - first + slack)
    across = [h for f in facts[:1] for h in f["holes"] if window[0] <= h["at_s"] <= window[1]]
    return {
        "device": pi.device,
        # The card's sequence counter: every segment the Pi ever started, across restarts.
        "segments_recorded": int(pi.ssh("sudo cat /var/lib/hatcam/spool/state/seq").stdout),
        "segments_uploaded": len(blobs),
        "frames_in_segments": sum(int(b.metadata["frames"]) for b in blobs),
        "outage_seconds": round(restored - cut, 1),
        "segments_recorded_during_outage": len(during),
        "of_which_uploaded_after_it": len(after),
        "mp4": facts,
        "outage_in_file_s": [round(cut - first, 1), round(restored - first, 1)],
        "holes_across_outage": across,
        "stills_stored": stills_total,
        "stills_exported": [str(p) for p in stills],
        "queue_left_on_pi": status["queue_segments"],
    }


def print_summary(s: dict, out: Path) -> None:
    print("\nWhat happened")
    print(f"  segments recorded on the Pi:   {s['segments_recorded']}")
    print(
        f"  segments in the blob store:    {s['segments_uploaded']} "
        f"({s['queue_left_on_pi']} left on the Pi)"
    )
    print(
        f"  network outage:                {s['outage_seconds']} s; "
        f"{s['segments_recorded_during_outage']} segments recorded during it, "
        f"{s['of_which_uploaded_after_it']} of them uploaded once it was back"
    )
    for mp4 in s["mp4"]:
        holes = ", ".join(f"{h['missing_s']} s at {h['at_s']} s" for h in mp4["holes"])
        print(
            f"  stitched video:                {mp4['file']}: {mp4['duration_s']} s, "
            f"{mp4['frames']} frames ({s['frames_in_segments']} recorded), "
            f"{'holes: ' + holes if holes else 'no hole'}"
        )
    start, end = s["outage_in_file_s"]
    verdict = "continuous" if not s["holes_across_outage"] else "HAS A HOLE"
    print(f"  across the outage:             {verdict} (from {start} s to {end} s into the video)")
    print(
        f"  stills in Redis:               {s['stills_stored']}, "
        f"{len(s['stills_exported'])} exported to {out / 'stills'}"
    )
    print(
        "\nOpen them: xdg-open (or open, on a Mac) "
        f"{s['mp4'][0]['file'] if s['mp4'] else out}; the stills are JPEG files."
    )


def clean(out: Path | None) -> None:
    hostsvc.stop(WORK / "hostsvc.json")
    run([*VPI, "down", NAME], check=False, capture_output=True)
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(WORK, ignore_errors=True)
    print("demo: cleaned up (virtual Pi, its network, Azurite, redis-server, files)")


def interrupted(*_args) -> None:
    """SIGTERM unwinds like Ctrl-C, through the clean-up."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=int,
        default=int(os.environ.get("DEMO_SECONDS", 60)),
        help="how long to record (default 60, or DEMO_SECONDS)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "demo")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the virtual Pi and services running (make demo-clean)",
    )
    parser.add_argument("--clean", action="store_true", help="remove a demo's leftovers")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "demo: systemd-nspawn, mounts and nftables need root: run with sudo (sudo make demo)",
            file=sys.stderr,
        )
        return 2
    if args.clean:
        clean(args.out)
        return 0
    if args.seconds < 15:
        print("demo: --seconds / DEMO_SECONDS must be at least 15", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupted)
    clean(None)  # a previous run killed with SIGKILL leaves its guest behind
    shutil.rmtree(args.out, ignore_errors=True)
    stage = Stages()
    pi = ProvisionedPi(NAME, SUBNET, WORK, log=lambda text: None)
    try:
        stage("booting a virtual Pi and starting Azurite + redis-server beside it")
        pi.boot()
        stage("provisioning it with ansible/provision.yml (about 2-3 minutes the first time)")
        pi.provision()
        pi.wait_for(
            lambda: (pi.status()["uploader"] or {}).get("uploaded"),
            90,
            "the first segment in the blob store",
            poll=2,
        )
        stage(f"recording for {args.seconds} s; the network is cut for the middle third")
        cut, restored = countdown(pi, args.seconds)
        pi.systemctl("stop", "hatcam-camera")  # closes the open segment properly
        status = wait_drained(pi, 180)
        stage("fetching and stitching with hatcam fetch")
        fetch(pi, args.out)
        stage("exporting stills from Redis")
        stills_total, stills = export_stills(pi, args.out / "stills")
        summary = summarize(pi, args.out, cut, restored, status, stills_total, stills)
        stage("done")
        print_summary(summary, args.out)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=1))
    except KeyboardInterrupt:
        print("\ndemo: interrupted; cleaning up", file=sys.stderr)
        pi.close()
        return 130
    except Exception as exc:
        print(f"\ndemo: failed: {exc}", file=sys.stderr)
        print(f"demo: logs are in {WORK} (kept); cleaning up the rest", file=sys.stderr)
        pi.close()
        return 1
    if args.keep:
        print(f"\ndemo: left running as asked; `make demo-clean` stops it ({WORK})")
    else:
        pi.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
