#!/usr/bin/env python3
"""Device-side figures, each beside a baseline measured in the same run.

    python -m bench.device_bench [--quick] [--json]     (from the repository root)

Sections (issue "make bench"):
  continuity  360 segments through the real segmenter vs a seed-style cut on time
  latency     segment ready -> blob visible, camera + uploader daemons vs one bare PUT
  drain       200 realistic segments: the uploader vs a plain upload_blob loop
  memory      camera daemon RSS / CPU with stills on (a still a second into the bench's
              redis-server) and off, beside the backend alone and seed-style in-memory
              segments; uploader RSS / CPU while draining
  stills      schedule drift and Redis round trips vs a seed-style sleep loop

Baselines are the scripts in bench/baselines/ or functions here, run in the same run.
Where two sides take turns, the order alternates between rounds. Starts its own Azurite
and redis-server; work files go to bench/work/device.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import redis

from hatcam.device.camera.synthetic import SyntheticCamera  # noqa: E402
from hatcam.device.segmenter import Segmenter  # noqa: E402
from hatcam.device.spool import Spool  # noqa: E402
from hatcam.device.stills import StillsPublisher  # noqa: E402

from tests.support import ROOT
from tests.support.services import Azurite, RedisServer

WORK = ROOT / "bench" / "work" / "device"
BASELINES = ROOT / "bench" / "baselines"
PYTHON = sys.executable


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def proc_figures(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds used) of a running process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kb = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def daemon_env(**settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCAM_")}
    env.update({k: str(v) for k, v in settings.items()})
    return env


def start_daemon(command, log: Path, **settings) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [PYTHON, "-m", "hatcam.cli", "--env-file", os.devnull, command],
            env=daemon_env(**settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


# --- 1. continuity ----------------------------------------------------------------------
class Collector:
    """Keeps every encoded frame, to replay the same stream through the baseline."""

    def __init__(self, downstream):
        self.downstream = downstream
        self.frames = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.frames.append((bytes(frame), keyframe, timestamp))
        self.downstream.outputframe(frame, keyframe, timestamp)


def counters(data: bytes, fmt: str) -> list[int]:
    """The frame counter the synthetic camera draws (a column of 16 bits), read from each
    frame that decodes when ``data`` is decoded on its own."""
    found = []
    try:
        with av.open(io.BytesIO(data), format=fmt) as container:
            for frame in container.decode(video=0):
                plane = frame.planes[0]
                luma, stride = bytes(plane), plane.line_size
                found.append(
                    sum((luma[(11 + bit * 8) * stride + 11] > 128) << bit for bit in range(16))
                )
    except av.error.FFmpegError:
        pass
    return found


def largest_step(files: list[list[int]]) -> int:
    """Largest jump of the frame counter from one file's last decoded frame to the next
    file's first: 1 when nothing is lost at the cut."""
    seen = [f for f in files if f]
    return max(b[0] - a[-1] for a, b in zip(seen, seen[1:], strict=False))


def continuity(segments: int) -> dict:
    fps, seconds = 30, 1.0
    spool = Spool(WORK / "continuity").ensure()
    segmenter = Segmenter(spool, "bench", 640, 360, fps, seconds)
    collector = Collector(segmenter)
    camera = SyntheticCamera(
        640, 360, fps, 1_000_000, realtime=False, frames=int(segments * seconds * fps)
    )
    camera.start(collector)
    camera.wait()
    segmenter.close()
    files = spool.ready_segments()
    pts, boundary_steps, ours = [], [], []
    for path in files:
        with av.open(str(path)) as container:
            seg_pts = [p.pts for p in container.demux(video=0) if p.pts is not None]
        if pts:
            boundary_steps.append(seg_pts[0] - pts[-1])
        pts += seg_pts
        ours.append(counters(path.read_bytes(), "mpegts"))
    captured = len(collector.frames)
    # Baseline: the seed's way, raw .h264 cut on the clock every segment length,
    # whatever frame falls there (here half a second into a keyframe interval, as the
    # clock does not know where keyframes are); each file decoded on its own.
    per_file = int(seconds * fps)
    base = []
    for start in [0, *range(fps // 2, captured, per_file)]:
        end = fps // 2 if start == 0 else start + per_file
        chunk = b"".join(f for f, _, _ in collector.frames[start:end])
        base.append(counters(chunk, "h264"))
    frame = 90_000 / fps
    return {
        "segments": len(files),
        "frames_captured": captured,
        "frames_in_segments": len(pts),
        "frames_lost": captured - len(set(pts)),
        "frames_doubled": len(pts) - len(set(pts)),
        "max_boundary_step_frames": max(boundary_steps) / frame,
        "playable_alone": sum(map(len, ours)),
        "baseline_playable_alone": sum(map(len, base)),
        "counter_step": largest_step(ours),
        "baseline_counter_step": largest_step(base),
    }


# --- 2. latency -------------------------------------------------------------------------
def latency(azurite: Azurite, segments: int) -> dict:
    container = "latency"
    client = azurite.container(container)
    spool_dir = WORK / "latency"
    shutil.rmtree(spool_dir, ignore_errors=True)
    settings = dict(
        HATCAM_CAMERA="synthetic",
        HATCAM_SPOOL_DIR=spool_dir,
        HATCAM_SEGMENT_SECONDS=1,
        HATCAM_MIN_FREE_MB=1,
        HATCAM_DEVICE="lat",
        BLOB_CONNECTION_STRING=azurite.connection_string(),
        HATCAM_BLOB_CONTAINER=container,
    )
    camera = start_daemon("camera", WORK / "latency-camera.log", **settings)
    uploader = start_daemon("upload", WORK / "latency-upload.log", **settings)
    ready_seen, blob_seen = {}, {}
    ready = spool_dir / "ready"
    deadline = time.monotonic() + segments * 1.0 + 60
    last_list = 0.0
    try:
        while len(blob_seen) < segments and time.monotonic() < deadline:
            now = time.time()
            if ready.is_dir():
                for name in os.listdir(ready):
                    if name.endswith(".ts"):
                        ready_seen.setdefault(name, now)
            if now - last_list >= 0.05:
                last_list = now
                for blob in client.list_blobs(name_starts_with="lat/"):
                    blob_seen.setdefault(blob.name.rsplit("/", 1)[1], now)
            time.sleep(0.005)
    finally:
        stop_daemon(camera)
        stop_daemon(uploader)
    delays = [blob_seen[n] - ready_seen[n] for n in blob_seen if n in ready_seen]
    # Baseline: one bare PUT of a segment of the same size, timed alone.
    sample = next(iter(client.list_blobs(name_starts_with="lat/")))
    data = client.download_blob(sample.name).readall()
    bare = []
    for i in range(30):
        t0 = time.perf_counter()
        client.upload_blob(f"bare/{i}.ts", data)
        bare.append(time.perf_counter() - t0)
    return {
        "segments": len(delays),
        "p50_s": pct(delays, 50),
        "p95_s": pct(delays, 95),
        "max_s": max(delays),
        "baseline_put_p50_s": pct(bare, 50),
        "baseline_put_p95_s": pct(bare, 95),
        "segment_kb": len(data) / 1000,
    }


# --- 3. backlog drain -------------------------------------------------------------------
def realistic_segment(path_dir: Path) -> Path:
    """One real 10 s 720p30 segment at the default bit rate."""
    spool = Spool(path_dir).ensure()
    segmenter = Segmenter(spool, "drain", 1280, 720, 30, 10.0)
    camera = SyntheticCamera(1280, 720, 30, 4_000_000, realtime=False, frames=300)
    camera.start(segmenter)
    camera.wait()
    segmenter.close()
    return spool.ready_segments()[0]


def fill_spool(spool: Spool, template: Path, count: int) -> list[Path]:
    meta = json.loads(template.with_suffix(".json").read_text())
    stem = template.stem.rsplit("-", 1)[0]
    made = []
    for seq in range(1, count + 1):
        target = spool.ready / f"{stem}-{seq:06d}.ts"
        shutil.copyfile(template, target)
        target.with_suffix(".json").write_text(json.dumps(meta))
        made.append(target)
    return made


def drain(azurite: Azurite, count: int, rounds: int) -> dict:
    """The uploader and the plain loop take turns, ``rounds`` times each; the round with
    the median ratio is reported (one round alone is at the mercy of a noisy machine)."""
    template = realistic_segment(WORK / "template")
    size_mb = template.stat().st_size / 1e6
    results, peak_rss, orders = [], 0.0, []
    for index in range(rounds):
        # Alternate who goes first: a machine that slows down during a round must not
        # always fall on the same side.
        if index % 2 == 0:
            ours, rss, cpu = drain_by_uploader(azurite, template, count, f"drain{index}")
            base = drain_by_loop(azurite, template, count, f"drain-base{index}")
            orders.append("hatcam, baseline")
        else:
            base = drain_by_loop(azurite, template, count, f"drain-base{index}")
            ours, rss, cpu = drain_by_uploader(azurite, template, count, f"drain{index}")
            orders.append("baseline, hatcam")
        results.append((base / ours, ours, base, cpu))
        peak_rss = max(peak_rss, rss)
        for name in (f"drain{index}", f"drain-base{index}"):
            azurite.container(name).delete_container()  # 1 GB each: free Azurite's disk
    ratio, ours, base, cpu = sorted(results)[len(results) // 2]
    return {
        "segments": count,
        "segment_mb": size_mb,
        "rounds": rounds,
        "orders": orders,
        "ratios": [round(r[0], 3) for r in results],
        "ours_mb_s": count * size_mb / ours,
        "baseline_mb_s": count * size_mb / base,
        "ratio": ratio,
        "uploader_peak_rss_mb": peak_rss,
        "uploader_cpu_s_per_min": cpu / ours * 60,
    }


def drain_by_uploader(azurite: Azurite, template: Path, count: int, container: str):
    """(seconds, peak RSS MB, CPU s) of the uploader daemon draining ``count`` segments."""
    # In a child process so its memory is its own. It starts on an empty spool; the
    # backlog then appears at once (renames), and the clock starts.
    spool = Spool(WORK / container).ensure()
    staged = fill_spool(Spool(WORK / f"{container}-staged").ensure(), template, count)
    azurite.container(container)
    proc = start_daemon(
        "upload",
        WORK / f"{container}-upload.log",
        HATCAM_SPOOL_DIR=spool.root,
        BLOB_CONNECTION_STRING=azurite.connection_string(),
        HATCAM_BLOB_CONTAINER=container,
    )
    while not (spool.state / "uploader.json").exists():
        time.sleep(0.05)
    for path in staged:
        os.replace(path.with_suffix(".json"), spool.ready / path.with_suffix(".json").name)
    t0 = time.perf_counter()
    for path in staged:
        os.replace(path, spool.ready / path.name)
    while any(name.endswith(".ts") for name in os.listdir(spool.ready)):
        time.sleep(0.05)  # a cheap check: the poller must not steal the uploader's CPU
    seconds = time.perf_counter() - t0
    rss, cpu = proc_figures(proc.pid)
    stop_daemon(proc)
    return seconds, rss, cpu


def drain_by_loop(azurite: Azurite, template: Path, count: int, container: str) -> float:
    """Seconds for a plain loop of upload_blob over the same files, also in a child."""
    files = fill_spool(Spool(WORK / container).ensure(), template, count)
    azurite.container(container)
    out = subprocess.run(
        [PYTHON, str(BASELINES / "upload_loop.py"), azurite.connection_string(), container]
        + [str(f) for f in files],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out)


# --- 4. memory and CPU of the camera ----------------------------------------------------
def memory(seconds: float, redis_server: RedisServer) -> dict:
    """Five processes side by side for ``seconds``: the camera daemon with stills on, with
    stills on but each still a fixed JPEG (hatcam's part of the cost of stills), with
    stills off, the synthetic backend alone, and the seed-style recorder."""
    # One database each: a still's key is its capture second (the seed's keys), so two
    # cameras on one database overwrite each other's stills.
    url = {
        name: f"redis://127.0.0.1:{redis_server.port}/{db}"
        for db, name in enumerate(("on", "fixed", "off"), start=1)
    }
    redis.Redis.from_url(redis_server.url).flushall()
    camera = dict(HATCAM_CAMERA="synthetic", HATCAM_MIN_FREE_MB=1)
    on = start_daemon(
        "camera",
        WORK / "memory-stills-on.log",
        HATCAM_SPOOL_DIR=WORK / "memory-on",
        HATCAM_DEVICE="memon",
        HATCAM_STILLS="on",  # as a provisioned hat cam with Redis runs
        IMAGE_CAPTURE_FREQUENCY=1,
        REDIS_URL=url["on"],
        **camera,
    )
    off = start_daemon(
        "camera",
        WORK / "memory-stills-off.log",
        HATCAM_SPOOL_DIR=WORK / "memory-off",
        HATCAM_DEVICE="memoff",
        REDIS_URL=url["off"],  # set, as provisioned, but HATCAM_STILLS is not
        **camera,
    )
    still = WORK / "still.jpg"
    still.write_bytes(SyntheticCamera(1280, 720, 30, 4_000_000).capture_still().jpeg)
    with open(WORK / "memory-fixed-still.log", "ab") as log:
        fixed = subprocess.Popen(
            [PYTHON, str(BASELINES / "camera_fixed_still.py"), str(still)],
            env=daemon_env(
                HATCAM_SPOOL_DIR=WORK / "memory-fixed",
                HATCAM_DEVICE="memfixed",
                HATCAM_STILLS="on",
                IMAGE_CAPTURE_FREQUENCY=1,
                REDIS_URL=url["fixed"],
                **camera,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    backend = subprocess.Popen([PYTHON, str(BASELINES / "backend_only.py"), str(seconds + 5)])
    seed = subprocess.Popen([PYTHON, str(BASELINES / "seed_camera.py"), str(seconds + 5)])
    time.sleep(seconds)
    figures = {
        name: proc_figures(proc.pid)
        for name, proc in [
            ("on", on),
            ("off", off),
            ("fixed", fixed),
            ("backend", backend),
            ("seed", seed),
        ]
    }
    for proc in (on, off, fixed):
        stop_daemon(proc)
    for proc in (backend, seed):
        proc.kill()
        proc.wait()
    # Redis' own data says whether stills were really on: a still a second from each.
    stored = {}
    for name, device in (("on", b"memon"), ("fixed", b"memfixed"), ("off", b"memoff")):
        client = redis.Redis.from_url(url[name])
        keys = list(client.scan_iter("image:*"))
        stored[name] = sum(client.hget(key, "device") == device for key in keys)
    # Most seconds, not all: a loaded machine delays the daemons' start by a few seconds.
    if min(stored["on"], stored["fixed"]) < 0.8 * seconds or stored["off"]:
        raise SystemExit(
            f"memory: in {seconds:.0f} s Redis got {stored['on']} stills from the camera with "
            f"stills on, {stored['fixed']} with a fixed still, {stored['off']} with stills off:"
            " the figures would not be what their rows say"
        )
    per_min = 60 / seconds
    return {
        "seconds": seconds,
        "stills_stored": stored["on"],
        "camera_peak_rss_mb": figures["on"][0],
        "camera_cpu_s_per_min": figures["on"][1] * per_min,
        "fixed_still_stored": stored["fixed"],
        "fixed_still_peak_rss_mb": figures["fixed"][0],
        "stills_off_peak_rss_mb": figures["off"][0],
        "stills_off_cpu_s_per_min": figures["off"][1] * per_min,
        "backend_only_peak_rss_mb": figures["backend"][0],
        "backend_only_cpu_s_per_min": figures["backend"][1] * per_min,
        "baseline_peak_rss_mb": figures["seed"][0],
        "baseline_cpu_s_per_min": figures["seed"][1] * per_min,
    }


# --- 5. stills ---------------------------------------------------------------------------
class RoundTripCounter:
    """A TCP relay in front of redis-server that counts round trips as Redis sees them:
    each time a client speaks after Redis has answered it (or for the first time) is one
    more. Observes the wire, not the client's account of itself."""

    def __init__(self, redis_port: int):
        self.redis_port = redis_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.trips = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.redis_port))
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        answered = True
        with client, upstream:
            while True:
                ready, _, _ = select.select([client, upstream], [], [])
                for sock in ready:
                    data = sock.recv(1 << 20)
                    if not data:
                        return
                    if sock is client:
                        if answered:
                            with self.lock:
                                self.trips += 1
                        answered = False
                        upstream.sendall(data)
                    else:
                        answered = True
                        client.sendall(data)

    def close(self) -> None:
        self.listener.close()


def stills(redis_server: RedisServer, captures: int) -> dict:
    """The publisher and the seed's loop run side by side for ``captures`` seconds, each
    through its own round-trip counter."""
    redis.Redis.from_url(redis_server.url).flushdb()  # count this run's stills only
    camera = SyntheticCamera(1280, 720, 30, 4_000_000)
    ours_relay, seed_relay = (
        RoundTripCounter(redis_server.port),
        RoundTripCounter(redis_server.port),
    )
    publisher = StillsPublisher(
        camera, ours_relay.url(), "bench", interval=1, expiry=600, buffer_size=20
    )
    publisher.client.call(("PING",))  # connect first: the handshake is not a per-still cost
    ours_relay.trips = 0
    seed_late = []

    def seed_loop():
        # The seed's way: capture, HSET, EXPIRE, then sleep the interval.
        client = redis.Redis.from_url(seed_relay.url())
        client.ping()
        seed_relay.trips = 0
        start = time.monotonic()
        for k in range(captures):
            seed_late.append(time.monotonic() - (start + k))
            still = camera.capture_still()
            key = f"seed:{k}"
            client.hset(key, mapping={"image_data": still.jpeg, "lux": still.lux})
            client.expire(key, 600)
            time.sleep(1)

    seed = threading.Thread(target=seed_loop)
    seed.start()
    publisher.start()
    time.sleep(captures - 0.5)
    publisher.stop()
    seed.join()
    ours_relay.close()
    seed_relay.close()
    client = redis.Redis.from_url(redis_server.url)
    # Counted in Redis itself: the stills each side really stored.
    stored = sum(1 for key in client.scan_iter("image:*") if client.hget(key, "device") == b"bench")
    seed_stored = sum(1 for _ in client.scan_iter("seed:*"))
    late = publisher.schedule_errors[:captures]
    return {
        "captures": len(late),
        "max_late_ms": max(late) * 1000,
        "last_late_ms": late[-1] * 1000,
        "baseline_max_late_ms": max(seed_late) * 1000,
        "baseline_last_late_ms": seed_late[-1] * 1000,
        "stored": stored,
        "baseline_stored": seed_stored,
        "round_trips_per_still": ours_relay.trips / max(1, stored),
        "baseline_round_trips_per_still": seed_relay.trips / max(1, seed_stored),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--only", help="comma-separated parts: continuity,latency,drain,memory,stills"
    )
    parser.add_argument("--drain", type=int, help="segments per drain round")
    parser.add_argument("--rounds", type=int, help="drain rounds")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    counts = (
        dict(segments=36, latency=20, drain=20, rounds=1, memory=15, stills=10)
        if args.quick
        else dict(segments=360, latency=110, drain=200, rounds=5, memory=60, stills=100)
    )
    counts.update({k: getattr(args, k) for k in ("drain", "rounds") if getattr(args, k)})
    only = set(args.only.split(",")) if args.only else None
    azurite = Azurite(WORK / "azurite").start()
    redis_server = RedisServer(WORK / "redis").start()
    figures = {}
    try:
        for name, run in (
            ("continuity", lambda: continuity(counts["segments"])),
            ("latency", lambda: latency(azurite, counts["latency"])),
            ("drain", lambda: drain(azurite, counts["drain"], counts["rounds"])),
            ("memory", lambda: memory(counts["memory"], redis_server)),
            ("stills", lambda: stills(redis_server, counts["stills"])),
        ):
            if only is not None and name not in only:
                continue
            t0 = time.perf_counter()
            figures[name] = run()
            print(f"{name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        azurite.stop()
        redis_server.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(WORK, ignore_errors=True)
    print(json.dumps(figures, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
