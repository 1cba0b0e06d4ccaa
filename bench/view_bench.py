#!/usr/bin/env python3
"""``hatcam view``: playing a moment from the cloud, following live, a day's timeline.

    python -m bench.view_bench [--minutes 60] [--size 320x240] [--fps 10] [--rounds 3]

Starts its own Azurite and a real ``hatcam view`` (uvicorn on loopback) and drives the page
in Debian's chromium (tests/support/browser.py). Work files go to bench/work/view.

  play     a 1-hour recording (the synthetic camera in fast mode, at a small size and frame
           rate, through the real segmenter and uploader: real H.264 in 10 s segments, not
           copies of one) is in the cloud. Each round picks a random second of it and times,
           in turns (who goes first alternating):
             view          from the Play click to the first frame on screen (the video
                           element's requestVideoFrameCallback), a fresh browser context
                           each round (nothing cached); the frame counter drawn into that
                           picture is checked against the second asked for
             fetch, hour   ``hatcam fetch`` of the hour into an empty directory: what an
                           operator runs today before that moment can be watched
             fetch, moment ``hatcam fetch --since t --until t+10s``: the least fetch can do
           medians are reported, and the ratios to view.
  live     the camera (synthetic, real time) and the uploader (live appends) run; the page
           follows live; every 0.5 s the frame counter on screen is read and set against
           when the camera captured that frame (the first segment's start + counter / fps):
           the delay from capture to screen, median and max, against the goal of live
           upload's recovery point (2 s) + 3 s.
  timeline GET /api/timeline for a day of 8,640 10 s segments sent live, as the uploader
           sends them (tests/support/manyblobs.py, live form: an append blob and its
           closing record per segment, 17,280 blobs, signed records, and the day index
           index.jsonl of closing records), the device's key given (the app checks the
           signatures). A fresh app's first answer comes from the day index (one download,
           the tail after its newest segment listed: "checked": false); the app then lists
           the whole day in the background to check it, and the page asks again until the
           answer is checked: reported are the first answer, the time until the checked
           one (asked every 0.1 s from the first request on), and the kept answer asked
           again, beside the SDK's own listing of the same blobs with their metadata;
           goal 1 s for the first answer.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.fetch_bench import DEVICE, START, make_segments, upload_all
from hatcam import config, proof
from hatcam.segment import LIVE_KEY

from tests.support import ROOT
from tests.support.browser import ARM_FIRST_FRAME, chromium, first_frame, frame_counter_at
from tests.support.footage import env, start_hatcam, wait_until
from tests.support.manyblobs import day_of_segments
from tests.support.services import Azurite
from tests.support.viewapp import ViewApp

SEGMENT_S = 10.0
LIVE_GOAL_S = 2.0 + 3.0  # live upload's recovery point + 3 s
PLAY_GOAL_S = 2.0
TIMELINE_GOAL_S = 1.0
LIVE_FPS = 30


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def page_at(browser, app: ViewApp, device: str, day: str):
    """A fresh context (no cache, no cookies) on the page with ``device``'s day drawn."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{app.url}?device={device}&day={day}")
    page.wait_for_selector("#timeline[data-start]", timeout=30_000)
    return context, page


def view_round(browser, app: ViewApp, moment: datetime, fps: int) -> dict:
    context, page = page_at(browser, app, DEVICE, f"{moment:%Y-%m-%d}")
    try:
        page.fill("#at-time", f"{moment:%H:%M:%S}")
        page.evaluate(ARM_FIRST_FRAME, False)
        started = time.perf_counter()
        page.click("#play-at")
        frame = first_frame(page, timeout=60)
        seconds = time.perf_counter() - started
    finally:
        context.close()
    asked = round((moment - START).total_seconds() * fps)
    return {"seconds": seconds, "frame_off_by": frame["counter"] - asked}


def fetch_round(env_file: Path, out: Path, since: datetime, until: datetime) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "hatcam.cli", "--env-file", str(env_file), "fetch"]
        + ["--device", DEVICE, "--out", str(out), "--since", iso(since), "--until", iso(until)],
        capture_output=True,
        text=True,
        env=env(),
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0 or not list(out.glob("*.mp4")):
        raise SystemExit(f"hatcam fetch failed:\n{result.stdout}\n{result.stderr}")
    return seconds


def median(values) -> float:
    return statistics.median(values)


def play(args, azurite: Azurite, browser, work: Path) -> dict:
    """A 1-hour recording in the cloud; view against fetch at random moments, in turns."""
    width, height = (int(v) for v in args.size.split("x"))
    segments = int(args.minutes * 60 / SEGMENT_S)
    container = "hour"
    azurite.container(container)
    settings = config.parse(
        {
            "BLOB_CONNECTION_STRING": azurite.connection_string(),
            "HATCAM_BLOB_CONTAINER": container,
            "HATCAM_DEVICE": DEVICE,
            "HATCAM_SPOOL_DIR": str(work / "spool"),
        }
    )
    started = time.perf_counter()
    spool = make_segments(work / "spool", segments, SEGMENT_S, width, height, args.fps)
    count = upload_all(settings, spool, 8)
    made = time.perf_counter() - started
    megabytes = sum(
        b.size for b in azurite.container(container, create=False).list_blobs(f"{DEVICE}/")
    )
    store = {"BLOB_CONNECTION_STRING": azurite.connection_string()}
    store["HATCAM_BLOB_CONTAINER"] = container
    env_file = work / "fetch.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in store.items()))
    end = START + timedelta(seconds=segments * SEGMENT_S)

    rng = random.Random(17)
    rounds = []
    with ViewApp(work / "view", store) as app:
        for index in range(args.rounds):
            moment = START + timedelta(seconds=rng.randrange(5, int(segments * SEGMENT_S) - 15))
            out = work / f"round{index}"

            def hour(out=out):
                return fetch_round(env_file, out / "hour", START, end)

            def least(out=out, moment=moment):
                return fetch_round(
                    env_file, out / "moment", moment, moment + timedelta(seconds=SEGMENT_S)
                )

            def view(moment=moment):
                return view_round(browser, app, moment, args.fps)

            if index % 2 == 0:
                shown, hour_s, least_s = view(), hour(), least()
            else:
                least_s, hour_s, shown = least(), hour(), view()
            rounds.append(
                {
                    "moment": iso(moment),
                    "view_s": round(shown["seconds"], 3),
                    "frame_off_by": shown["frame_off_by"],
                    "fetch_hour_s": round(hour_s, 2),
                    "fetch_moment_s": round(least_s, 2),
                    "order": "view, hour, moment" if index % 2 == 0 else "moment, hour, view",
                }
            )
            shutil.rmtree(out, ignore_errors=True)
    view_s = median(r["view_s"] for r in rounds)
    hour_s = median(r["fetch_hour_s"] for r in rounds)
    least_s = median(r["fetch_moment_s"] for r in rounds)
    return {
        "recording": (
            f"{segments} segments of {SEGMENT_S:g} s ({args.minutes:g} min) at {args.size} "
            f"{args.fps} fps, the synthetic camera in fast mode through the real segmenter "
            "and uploader (real H.264, not copies)"
        ),
        "segments": count,
        "megabytes": round(megabytes / 1e6, 1),
        "make_and_upload_s": round(made, 1),
        "rounds": rounds,
        "view_first_frame_s": view_s,
        "view_first_frame_max_s": max(r["view_s"] for r in rounds),
        "fetch_hour_s": hour_s,
        "fetch_moment_s": least_s,
        "hour_ratio": round(hour_s / view_s, 1),
        "moment_ratio": round(least_s / view_s, 1),
        "right_picture": all(abs(r["frame_off_by"]) <= 1 for r in rounds),
    }


def live(args, azurite: Azurite, browser, work: Path) -> dict:
    """The camera recording in real time, uploading live; the page following it."""
    container = "live"
    client = azurite.container(container)
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_RESOLUTION": args.live_size,
        "HATCAM_FPS": str(LIVE_FPS),
        "HATCAM_SEGMENT_SECONDS": "10",
        "HATCAM_SPOOL_DIR": work / "live-spool",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_DEVICE": "livecam",
        "HATCAM_RETRY_MAX_SECONDS": "1",
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": container,
    }
    work.mkdir(parents=True, exist_ok=True)
    procs = [
        start_hatcam("camera", settings=settings, log=work / "camera.log"),
        start_hatcam("upload", settings=settings, log=work / "upload.log"),
    ]
    delays, shown = [], []
    try:
        wait_until(
            lambda: any(
                (b.metadata or {}).get(LIVE_KEY) == "true"
                for b in client.list_blobs("livecam/", include=["metadata"])
            ),
            60,
            "the open segment in the cloud",
        )
        first = min(
            (b for b in client.list_blobs("livecam/", include=["metadata"])),
            key=lambda b: b.name,  # "x.ts" sorts before its closing record "x.ts.end"
        )
        # The camera captured frame 0 when its first segment opened (the segment's name).
        zero = datetime.fromisoformat(first.metadata["start"].replace("Z", "+00:00"))
        fps = LIVE_FPS
        store = {
            "BLOB_CONNECTION_STRING": azurite.connection_string(),
            "HATCAM_BLOB_CONTAINER": container,
        }
        with ViewApp(work / "view", store) as app:
            context, page = page_at(browser, app, "livecam", f"{datetime.now(UTC):%Y-%m-%d}")
            page.click("#follow-live")
            page.wait_for_function(
                "(v => v.currentTime > 0 && !v.paused)(document.getElementById('video'))",
                timeout=30_000,
            )
            time.sleep(5)  # settle at the live edge
            deadline = time.monotonic() + args.live_seconds
            while time.monotonic() < deadline:
                now_ms, counter = frame_counter_at(page)
                captured = zero + timedelta(seconds=counter / fps)
                delays.append(
                    (datetime.fromtimestamp(now_ms / 1000, UTC) - captured).total_seconds()
                )
                printed = page.get_attribute("#video", "data-delay-s")
                if printed:
                    shown.append(float(printed))
                time.sleep(0.5)
            stalls = page.evaluate("document.getElementById('video').paused")
            context.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {
        "size": args.live_size,
        "seconds": args.live_seconds,
        "samples": len(delays),
        "delay_p50_s": round(median(delays), 2),
        "delay_max_s": round(max(delays), 2),
        "delay_min_s": round(min(delays), 2),
        "page_delay_p50_s": round(median(shown), 2) if shown else None,
        "paused_at_end": stalls,
    }


def timeline(args, azurite: Azurite, work: Path) -> dict:
    """/api/timeline on a live day of 8,640 segments (17,280 blobs and the day index):
    the first answer, the checked one, beside the SDK's own listing of the blobs."""
    container = "day"
    client = azurite.container(container)
    day = START.replace(hour=0)
    keys = work / "keys"
    keys.mkdir(parents=True)
    key = proof.DeviceKey.generate(work / "daycam.key")
    (keys / f"daycam-{key.id}.pub").write_text(key.public_line("daycam") + "\n")
    started = time.perf_counter()
    made = len(day_of_segments(client, "daycam", day, args.blobs, key=key, live=True, jobs=32))
    made_s = time.perf_counter() - started
    store = {
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": container,
        "HATCAM_KEYS_DIR": str(keys),  # every record's signature checked, as an operator would
    }
    prefix = f"daycam/{day:%Y-%m-%d}/"
    url_path = f"api/timeline?device=daycam&day={day:%Y-%m-%d}"

    def fetch_json(app: ViewApp) -> dict:
        with urllib.request.urlopen(app.url + url_path, timeout=120) as answer:
            return json.load(answer)

    def cold() -> dict:
        """A fresh app (nothing kept): the first answer, what a person opening the page
        waits for; the checked answer, asked for every 0.1 s as the page does every
        1.5 s; then the same question again, answered from what the app keeps."""
        with ViewApp(work / "view", store) as app:
            started = time.perf_counter()
            first = fetch_json(app)
            first_s = time.perf_counter() - started
            answer = first
            while not answer["checked"]:
                time.sleep(0.1)
                answer = fetch_json(app)
            checked_s = time.perf_counter() - started
            again = time.perf_counter()
            fetch_json(app)
            kept_s = time.perf_counter() - again
        same = all(first[k] == answer[k] for k in ("segments", "runs", "gaps", "proof"))
        return {
            "first_s": first_s,
            "first_checked": first["checked"],
            "checked_s": checked_s,
            "kept_s": kept_s,
            "segments": len(answer["segments"]),
            "same": same,
            "problems": answer["problems"],
        }

    def floor() -> tuple[float, int]:
        started = time.perf_counter()
        listed = sum(1 for _ in client.list_blobs(prefix, include=["metadata"]))
        return time.perf_counter() - started, listed

    rounds = []
    for index in range(args.rounds):
        if index % 2 == 0:
            api, (floor_s, listed) = cold(), floor()
        else:
            (floor_s, listed), api = floor(), cold()
        rounds.append({**api, "listing_s": floor_s, "listed": listed})
    return {
        "blobs_made": made,
        "make_s": round(made_s, 1),
        "segments_shown": rounds[0]["segments"],
        "blobs_listed": rounds[0]["listed"],
        "first_from_index": all(r["first_checked"] is False for r in rounds),
        "first_same_as_checked": all(r["same"] for r in rounds),
        "problems": rounds[0]["problems"],
        "rounds": [
            {
                "api_s": round(r["first_s"], 3),
                "checked_s": round(r["checked_s"], 3),
                "listing_s": round(r["listing_s"], 3),
                "kept_s": round(r["kept_s"], 3),
            }
            for r in rounds
        ],
        "api_s": round(median(r["first_s"] for r in rounds), 3),
        "api_max_s": round(max(r["first_s"] for r in rounds), 3),
        "checked_s": round(median(r["checked_s"] for r in rounds), 3),
        "checked_max_s": round(max(r["checked_s"] for r in rounds), 3),
        "kept_s": round(median(r["kept_s"] for r in rounds), 3),
        "listing_s": round(median(r["listing_s"] for r in rounds), 3),
        "ratio": round(median(r["first_s"] / r["listing_s"] for r in rounds), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="length of the recording")
    parser.add_argument("--size", default="320x240", help="picture size of the recording")
    parser.add_argument("--fps", type=int, default=10, help="frame rate of the recording")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--live-size", default="640x360")
    parser.add_argument("--live-seconds", type=float, default=30)
    parser.add_argument("--blobs", type=int, default=8640)
    parser.add_argument("--parts", default="play,live,timeline", help="which to measure")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "view")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.rounds, args.live_seconds, args.blobs = 5, 1, 10, 864
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    parts = set(args.parts.split(","))
    azurite = Azurite(args.work / "azurite").start()
    figures = {}
    try:
        if parts & {"play", "live"}:
            with chromium() as browser:
                if "play" in parts:
                    figures["play"] = play(args, azurite, browser, args.work / "play")
                if "live" in parts:
                    figures["live"] = live(args, azurite, browser, args.work / "live")
        if "timeline" in parts:
            figures["timeline"] = timeline(args, azurite, args.work / "timeline")
    finally:
        azurite.stop()
    if parts != {"play", "live", "timeline"}:  # a part alone: its raw figures only
        print(json.dumps(figures))
        return 0
    p, lv, t = figures["play"], figures["live"], figures["timeline"]
    figures["goals"] = {
        "play_first_frame_2s": p["view_first_frame_max_s"] <= PLAY_GOAL_S,
        "live_delay_5s": lv["delay_max_s"] <= LIVE_GOAL_S,
        "timeline_1s": t["api_max_s"] <= TIMELINE_GOAL_S,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        met = {k: "met" if v else "MISSED" for k, v in figures["goals"].items()}
        print(
            f"{p['recording']}, {p['megabytes']} MB in Azurite on loopback\n"
            f"  play a random moment, view (click to first frame): {p['view_first_frame_s']:.2f} s"
            f" median, {p['view_first_frame_max_s']:.2f} s max (goal <= 2 s: "
            f"{met['play_first_frame_2s']}); right picture: {p['right_picture']}\n"
            f"  hatcam fetch of all of it before it can be watched:{p['fetch_hour_s']:.2f} s "
            f"({p['hour_ratio']}x view)\n"
            f"  hatcam fetch of just that moment's 10 s:             {p['fetch_moment_s']:.2f} s "
            f"({p['moment_ratio']}x view)\n"
            f"follow live at {lv['size']}: capture to screen {lv['delay_p50_s']:.2f} s median, "
            f"{lv['delay_max_s']:.2f} s max over {lv['samples']} samples (goal <= 5 s: "
            f"{met['live_delay_5s']}); the page printed {lv['page_delay_p50_s']} s\n"
            f"/api/timeline, {t['segments_shown']} live segments ({t['blobs_listed']} blobs): "
            f"{t['api_s']:.3f} s median, {t['api_max_s']:.3f} s max, a fresh app's first "
            f"answer from the day index (goal <= 1 s: {met['timeline_1s']}); checked by the "
            f"full listing {t['checked_s']:.3f} s after it was asked; {t['kept_s']:.3f} s asked "
            f"again; the SDK's listing alone {t['listing_s']:.3f} s ({t['ratio']}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
