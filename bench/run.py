#!/usr/bin/env python3
"""``make bench``: every figure beside its baseline, printed and written to bench/results.md.

    python -m bench.run [--quick]          (from the repository root)

Runs bench/device_bench.py, bench/fetch_bench.py, bench/recovery_bench.py,
bench/signing_bench.py, bench/audio_bench.py, bench/view_bench.py (each starts its own
Azurite / redis-server; the view bench drives Debian's chromium) and
bench/writer_stall.py (mounts the test SD card: root), then tabulates; --quick only prints. Ratios
are the point: these machines are noisy, absolute times are not comparable between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent


class BenchFailed(SystemExit):
    """A sub-bench failed: no figure of this run is trusted, and results.md is kept."""


def run_json(script: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{Path(script).stem}", "--json", *args],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
    )
    sys.stderr.write(proc.stderr)
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    try:
        figures = json.loads(last[0])
    except json.JSONDecodeError:
        figures = None
    if proc.returncode != 0 or not isinstance(figures, dict):
        raise BenchFailed(
            f"\nbench FAILED: bench/{script} exited with status {proc.returncode}"
            f"{'' if figures is not None else ' and printed no figures'} (its output is above); "
            "bench/results.md was not changed"
        )
    return figures


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def audio_rows(a: dict) -> list[tuple[str, str, str, str, str]]:
    """The camera daemon with sound beside the same daemon without, side by side."""
    added_mb = a["on_peak_rss_mb"] - a["off_peak_rss_mb"]
    return [
        (
            f"camera daemon peak RSS with sound (synthetic microphone), 720p30, stills and "
            f"signing on, {a['seconds']:.0f} s (median of {a['rounds']} rounds, who starts "
            "first alternating)",
            f"{a['on_peak_rss_mb']:.1f} MB (sound adds {added_mb:+.1f} MB)",
            f"{a['off_peak_rss_mb']:.1f} MB (sound off)",
            f"{a['on_peak_rss_mb'] / a['off_peak_rss_mb']:.2f}x",
            f"< {a['budget_mb']:.0f} MB with stills on: "
            f"{verdict(a['on_peak_rss_mb'] < a['budget_mb'])}",
        ),
        (
            "camera daemon CPU with sound (frames the synthetic camera lost for want of a "
            "free buffer, all rounds: a loaded machine shows here)",
            f"{a['on_cpu_s_per_min']:.1f} s/min ({a['on_camera_frames_lost']} frames lost)",
            f"{a['off_cpu_s_per_min']:.1f} s/min ({a['off_camera_frames_lost']} frames lost,"
            " sound off)",
            f"{a['on_cpu_s_per_min'] / a['off_cpu_s_per_min']:.2f}x",
            "-",
        ),
        (
            f"audio/video offset from the files (each click against its marked frame, "
            f"{a['clicks_paired']} of {a['marked_frames']} paired), median / worst",
            f"{a['offset_ms_median']:+.1f} / {a['offset_ms_worst']:.1f} ms",
            "-",
            "-",
            f"worst <= 1 frame (33.3 ms): {verdict(a['offset_ms_worst'] <= 1000 / 30)}",
        ),
        (
            "bytes per 10 s segment (AAC 64 kbit/s mono beside 4 Mbit/s H.264)",
            f"{a['on_segment_kb']:.0f} kB",
            f"{a['off_segment_kb']:.0f} kB (sound off)",
            f"{a['on_segment_kb'] / a['off_segment_kb']:.3f}x",
            "-",
        ),
    ]


def recovery_rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """Live mode (sp=ca) beside today's whole-segment mode (sp=c), killed in turns."""
    live, whole = r["live"], r["whole"]

    def points(m: dict) -> str:
        return f"{m['p50_s']:.2f} / {m['p95_s']:.2f} / {m['max_s']:.2f} s"

    return [
        (
            "recovery point after destruction (camera + uploader SIGKILLed at a random phase, "
            f"spool wiped, `hatcam fetch`), p50 / p95 / max over {live['kills']} / "
            f"{whole['kills']} kills, shipped defaults (720p30, 10 s segments, 4 Mbit/s)",
            f"{points(live)} (live, sp=ca)",
            f"{points(whole)} (whole segments, sp=c)",
            f"{live['max_s'] / whole['max_s']:.2f}x" if whole["max_s"] > 0 else "-",
            f"max <= 2 s: {verdict(live['max_s'] <= 2.0)}",
        ),
        (
            "bytes sent (request bodies, counted by a proxy) / footage bytes the camera wrote "
            "(and / footage bytes in the cloud)",
            f"{live['bytes_ratio']:.3f}x ({live['sent_per_cloud_byte']:.3f}x)",
            f"{whole['bytes_ratio']:.3f}x ({whole['sent_per_cloud_byte']:.3f}x)",
            "-",
            f"<= 1.05x: {verdict(live['bytes_ratio'] <= 1.05)}",
        ),
        (
            f"requests per minute, and what they cost per day of recording ({r['price']})",
            f"{live['requests_per_min']:.1f} /min, USD {live['usd_per_day']:.2f}/day",
            f"{whole['requests_per_min']:.1f} /min, USD {whole['usd_per_day']:.2f}/day",
            f"{live['requests_per_min'] / whole['requests_per_min']:.1f}x"
            if whole["requests_per_min"]
            else "-",
            "-",
        ),
        (
            "uploader peak RSS / CPU while recording",
            f"{live['uploader_peak_rss_mb']:.1f} MB / {live['uploader_cpu_s_per_min']:.1f} s/min",
            f"{whole['uploader_peak_rss_mb']:.1f} MB / {whole['uploader_cpu_s_per_min']:.1f} s/min",
            "-",
            f"< 80 MB: {verdict(live['uploader_peak_rss_mb'] < 80)}",
        ),
    ]


def writer_stall_rows(w: dict) -> list[tuple[str, str, str, str, str]]:
    """The writer thread beside the write on the encoder thread, one row per stall."""
    found = []
    for stall, modes in w["stalls"].items():
        queued, inline = modes["queued"], modes["inline"]
        goal = f"0: {verdict(queued['lost_median'] == 0)}" if float(stall) <= 0.5 else "-"
        found.append(
            (
                f"frames lost under an injected {stall} s write stall on the card ({w['size']}, "
                f"{w['camera_buffers']} camera buffers; median of {w['rounds']} rounds, who "
                f"goes first alternating; per round {queued['lost']} / {inline['lost']})",
                f"{queued['lost_median']:g} (writer thread, queue of {w['queue_seconds']:g} s)",
                f"{inline['lost_median']:g} (written on the encoder thread)",
                "-",
                goal,
            )
        )
    m = w["memory"]
    found.append(
        (
            f"write queue memory at its bound ({w['size']}, {w['queue_seconds']:g} s of "
            f"frames; RSS during a {m['stall_s']:g} s stall, {m['queue_dropped']} frames dropped)",
            f"{m['bound_mb']:.2f} MB of frames (RSS +{m['rss_delta_mb']:.1f} MB)",
            f"RSS +{m['inline_rss_delta_mb']:.1f} MB (written on the encoder thread, "
            f"{m['inline_camera_dropped']} frames lost)",
            "-",
            "-",
        )
    )
    return found


def view_rows(v: dict) -> list[tuple[str, str, str, str, str]]:
    """``hatcam view`` beside ``hatcam fetch`` and the SDK's listing, same run."""
    p, lv, t = v["play"], v["live"], v["timeline"]
    play_ok = v["goals"]["play_first_frame_2s"] and p["right_picture"]
    return [
        (
            f"view: a random moment of a 1-hour recording in the cloud on screen (click to "
            f"first frame, Chromium), beside `hatcam fetch` of the hour before it can be "
            f"watched; {p['recording']}, {p['megabytes']} MB; median of {len(p['rounds'])} "
            "rounds, who goes first alternating",
            f"{p['view_first_frame_s']:.2f} s (max {p['view_first_frame_max_s']:.2f} s)",
            f"{p['fetch_hour_s']:.2f} s (fetch of only that 10 s: {p['fetch_moment_s']:.2f} s)",
            f"{1 / p['hour_ratio']:.3f}x",
            f"<= 2 s, right picture: {verdict(play_ok)}",
        ),
        (
            f"view: follow live, capture to screen (frame counter read off the picture), "
            f"{lv['size']} 30 fps synthetic camera uploading live, {lv['samples']} samples",
            f"{lv['delay_p50_s']:.2f} s median, {lv['delay_max_s']:.2f} s max",
            "-",
            "-",
            f"max <= 2 + 3 s: {verdict(v['goals']['live_delay_5s'])}",
        ),
        (
            f"view: /api/timeline for a day of {t['segments_shown']} signed live segments "
            f"({t['blobs_listed']} blobs with their closing records and the day index), a "
            "fresh app's first answer (from the day index), beside the SDK's listing of the "
            f"same blobs with metadata; median of {len(t['rounds'])} rounds",
            f"{t['api_s']:.3f} s (max {t['api_max_s']:.3f} s; checked by the full listing "
            f"{t['checked_s']:.3f} s after the request; asked again {t['kept_s']:.3f} s)",
            f"{t['listing_s']:.3f} s",
            f"{t['ratio']:.2f}x",
            f"<= 1 s: {verdict(v['goals']['timeline_1s'])}",
        ),
    ]


def signing_rows(s: dict) -> list[tuple[str, str, str, str, str]]:
    """The camera with a device key beside the camera without one, same run."""
    d, w = s["daemons"], s["writepath"]
    return [
        (
            f"signing: camera daemon peak RSS, 720p30 4 Mbit/s synthetic, stills on, "
            f"{d['seconds']:.0f} s side by side ({d['segments_signed']} segments signed)",
            f"{d['on_peak_rss_mb']:.1f} MB (HATCAM_DEVICE_KEY set)",
            f"{d['off_peak_rss_mb']:.1f} MB (no key)",
            f"{d['on_peak_rss_mb'] / d['off_peak_rss_mb']:.2f}x",
            f"< 80 MB: {verdict(d['on_peak_rss_mb'] < 80)}",
        ),
        (
            "signing: camera daemon CPU (its synthetic encoder included)",
            f"{d['on_cpu_s_per_min']:.1f} s/min",
            f"{d['off_cpu_s_per_min']:.1f} s/min",
            f"{d['on_cpu_s_per_min'] / d['off_cpu_s_per_min']:.2f}x",
            "-",
        ),
        (
            f"signing: segment writer CPU per second of footage ({w['seconds']} s of 720p30 "
            f"4 Mbit/s, {w['megabytes']} MB, in 10 s segments, {w['checkpoints']} checkpoints; "
            f"median of {w['rounds']} rounds, who goes first alternating)",
            f"{w['on_cpu_ms_per_s']:.2f} ms/s (signing: +{w['signing_cpu_ms_per_s']:.2f} ms/s)",
            f"{w['off_cpu_ms_per_s']:.2f} ms/s (no key)",
            f"{w['on_cpu_ms_per_s'] / w['off_cpu_ms_per_s']:.2f}x",
            "-",
        ),
    ]


def rows(d: dict, f: dict) -> list[tuple[str, str, str, str, str]]:
    """(figure, hatcam, baseline, ratio, goal + verdict) for each measurement."""
    c, lat, dr, mem, st = d["continuity"], d["latency"], d["drain"], d["memory"], d["stills"]
    fetch_ratio = f["hatcam_fetch_s"] / f["baseline_s"]
    fixed_still_mb = mem["fixed_still_peak_rss_mb"] - mem["stills_off_peak_rss_mb"]
    return [
        (
            "continuity: frames lost / doubled at boundaries "
            f"({c['segments']} segments, {c['frames_captured']} frames)",
            f"{c['frames_lost']} / {c['frames_doubled']}",
            "-",
            "-",
            f"0 / 0: {verdict(c['frames_lost'] == c['frames_doubled'] == 0)}",
        ),
        (
            "continuity: largest jump of the frame counter across a file boundary, each file "
            f"decoded alone (timestamp step: {c['max_boundary_step_frames']:.2f} frames)",
            f"{c['counter_step']} frame(s)",
            f"{c['baseline_counter_step']} frames (seed: cut on the clock)",
            "-",
            f"1 frame: {verdict(c['counter_step'] == 1 and c['max_boundary_step_frames'] < 1.001)}",
        ),
        (
            "continuity: frames playable when each file is decoded alone",
            f"{c['playable_alone']}",
            f"{c['baseline_playable_alone']} (seed: cut on the clock)",
            f"{c['playable_alone'] / max(1, c['baseline_playable_alone']):.2f}x",
            f"all {c['frames_captured']}: {verdict(c['playable_alone'] == c['frames_captured'])}",
        ),
        (
            f"latency: segment ready -> blob visible, p50 / p95 / max ({lat['segments']} "
            f"segments of {lat['segment_kb']:.0f} kB)",
            f"{lat['p50_s']:.3f} / {lat['p95_s']:.3f} / {lat['max_s']:.3f} s",
            f"{lat['baseline_put_p50_s']:.3f} / {lat['baseline_put_p95_s']:.3f} s (one bare PUT)",
            "-",
            f"p95 < 1 s: {verdict(lat['p95_s'] < 1.0)}",
        ),
        (
            f"backlog drain: {dr['segments']} segments of {dr['segment_mb']:.1f} MB "
            f"(median of {dr['rounds']} rounds, who goes first alternating: {dr['ratios']})",
            f"{dr['ours_mb_s']:.1f} MB/s",
            f"{dr['baseline_mb_s']:.1f} MB/s (upload_blob loop)",
            f"{dr['ratio']:.2f}x",
            f">= 0.95x: {verdict(dr['ratio'] >= 0.95)}",
        ),
        (
            f"fetch + stitch: {f['segments']} segments of {f['segment_seconds']:g} s at "
            f"{f['size']} ({f['megabytes']} MB) to one MP4 "
            f"(median of {f['rounds']} rounds, who goes first alternating: {f['ratios']})",
            f"{f['hatcam_fetch_s']:.2f} s ({f['frames_hatcam']} frames)",
            f"{f['baseline_s']:.2f} s ({f['frames_baseline']} frames, SDK + ffmpeg concat)",
            f"{fetch_ratio:.2f}x",
            f"<= 1.2x, equal frames: "
            f"{verdict(fetch_ratio <= 1.2 and f['frames_hatcam'] == f['frames_baseline'])}",
        ),
        (
            f"fetch with verification (--keys: every segment checked against its signed "
            f"record and the chain) beside the same fetch without, {f['segments']} segments "
            f"(median of {f['rounds']} rounds: {f['verify_ratios']})",
            f"{f['verified_fetch_s']:.2f} s ({f['frames_verified']} frames)",
            f"{f['unverified_fetch_s']:.2f} s (unverified)",
            f"{f['verify_ratio']:.2f}x",
            f"<= 1.1x: {verdict(f['verify_ratio'] <= 1.1)}",
        ),
        ("fetch again (nothing new)", f"{f['hatcam_fetch_again_s']:.2f} s", "-", "-", "-"),
        (
            f"camera daemon peak RSS, 720p30 synthetic, {mem['seconds']:.0f} s, stills ON "
            f"(HATCAM_STILLS=on, a still every second into a live redis-server: "
            f"{mem['stills_stored']} stored)",
            f"{mem['camera_peak_rss_mb']:.1f} MB (stills off {mem['stills_off_peak_rss_mb']:.1f}"
            f" MB: stills add {mem['camera_peak_rss_mb'] - mem['stills_off_peak_rss_mb']:.1f}"
            f" MB, of which hatcam's part {fixed_still_mb:.1f} MB (stills on, backend's JPEG "
            f"encoder out: {mem['fixed_still_peak_rss_mb']:.1f} MB); "
            f"backend alone {mem['backend_only_peak_rss_mb']:.1f} MB)",
            f"{mem['baseline_peak_rss_mb']:.1f} MB (seed: segments in memory, network down)",
            f"{mem['camera_peak_rss_mb'] / mem['baseline_peak_rss_mb']:.2f}x",
            f"< 80 MB with stills on: {verdict(mem['camera_peak_rss_mb'] < 80)}",
        ),
        (
            "camera daemon CPU, stills on",
            f"{mem['camera_cpu_s_per_min']:.1f} s/min "
            f"(stills off {mem['stills_off_cpu_s_per_min']:.1f}, "
            f"backend alone {mem['backend_only_cpu_s_per_min']:.1f})",
            f"{mem['baseline_cpu_s_per_min']:.1f} s/min",
            "-",
            "-",
        ),
        (
            "uploader peak RSS / CPU while draining",
            f"{dr['uploader_peak_rss_mb']:.1f} MB / {dr['uploader_cpu_s_per_min']:.1f} s/min",
            "-",
            "-",
            f"< 80 MB: {verdict(dr['uploader_peak_rss_mb'] < 80)}",
        ),
        (
            f"stills: schedule error over {st['captures']} captures at 1 s, max / last",
            f"{st['max_late_ms']:.1f} / {st['last_late_ms']:.1f} ms",
            f"{st['baseline_max_late_ms']:.1f} / {st['baseline_last_late_ms']:.1f} ms "
            "(seed: sleep after capture)",
            "-",
            f"within 50 ms, no accumulation: {verdict(st['max_late_ms'] < 50)}",
        ),
        (
            f"stills: Redis round trips per still, counted on the wire ({st['stored']} / "
            f"{st['baseline_stored']} stills stored)",
            f"{st['round_trips_per_still']:.2f}",
            f"{st['baseline_round_trips_per_still']:.2f} (seed: HSET, then EXPIRE)",
            "-",
            f"1: {verdict(st['round_trips_per_still'] <= 1.0)}",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    device = run_json("device_bench.py", *quick)
    fetch_args = ["--segments", "36", "--rounds", "1"] if args.quick else []
    fetch = run_json("fetch_bench.py", *fetch_args, "--seconds", "10", "--size", "640x360")
    recovery = run_json("recovery_bench.py", *quick)
    writer = run_json("writer_stall.py", *quick)
    signing = run_json("signing_bench.py", *quick)
    audio = run_json("audio_bench.py", *quick)
    view = run_json("view_bench.py", *quick)
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    header = (
        f"# hatcam benchmarks\n\n"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, PyAV {version('av')}, "
        f"azure-storage-blob {version('azure-storage-blob')}, redis-py {version('redis')}, "
        f"Node {node}, Azurite and redis-server on loopback"
        f"{' (quick run: small counts)' if args.quick else ''}.\n\n"
        "Each figure is measured beside its baseline in the same run (the baselines are "
        "bench/baselines/ and the seed-style functions in bench/device_bench.py); where two "
        "sides take turns, who goes first alternates between rounds. Ratios hold on a noisy "
        "machine, absolute times do not.\n\n"
    )
    table = ["| figure | hatcam | baseline | ratio | goal |", "|---|---|---|---|---|"]
    table += [
        "| " + " | ".join(row) + " |"
        for row in rows(device, fetch)
        + recovery_rows(recovery)
        + writer_stall_rows(writer)
        + signing_rows(signing)
        + audio_rows(audio)
        + view_rows(view)
    ]
    text = (
        header
        + "\n".join(table)
        + "\n\n<details><summary>raw figures</summary>\n\n```json\n"
        + json.dumps(
            {
                "device": device,
                "fetch": fetch,
                "recovery": recovery,
                "writer_stall": writer,
                "signing": signing,
                "audio": audio,
                "view": view,
            },
            indent=1,
        )
        + "\n```\n</details>\n"
    )
    if not args.quick:  # a smoke run's small counts are not figures to keep
        (HERE / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
