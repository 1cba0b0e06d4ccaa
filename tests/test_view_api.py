"""``hatcam view``'s server, against a real Azurite and redis-server, served by a real
uvicorn on a loopback port and asked over HTTP as the page asks it.

Footage comes from the synthetic camera through the real segmenter, signed as the
device signs; what the server sends is decoded with PyAV and read back from the blob
store to check it.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import av
import pytest
import uvicorn

from hatcam import proof
from hatcam.segment import iso, parse_iso
from hatcam.view import server

from tests.support.footage import record
from tests.support.procs import free_port
from tests.test_fetch_live import upload_live, upload_whole
from tests.test_verified_fetch import clock, sign_spool

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
SEG = 1.0
FPS = 30


# --- the server ----------------------------------------------------------------------


class Served:
    """The view's app on a real uvicorn in a thread, on a free loopback port."""

    def __init__(self, values: dict, *options: str, now=None):
        parser = argparse.ArgumentParser()
        server.add_arguments(parser)
        self.port = free_port()
        args = parser.parse_args(["--port", str(self.port), *options])
        self.app = server.build(values, args)
        if now is not None:
            self.app.state.view.now = now
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the view did not start"
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def view(self):
        return self.app.state.view

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str, headers: dict | None = None, data: bytes | None = None):
        """(status, headers, body) of one request."""
        request = urllib.request.Request(self.base + path, headers=headers or {}, data=data)
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str, **kw):
        status, _, body = self.get(path, **kw)
        return status, json.loads(body)


def values_for(azurite, container: str, **more) -> dict:
    return {
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": container,
        **more,
    }


@pytest.fixture
def serve():
    started = []

    def start(values, *options, now=None) -> Served:
        started.append(Served(values, *options, now=now))
        return started[-1]

    yield start
    for one in started:
        one.stop()


# --- the footage ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(azurite, tmp_path_factory):
    """dev1: a signed run of 5 s at T0, and at T0+30 s a second run (another boot) of
    3 s whose middle segment never reached the cloud; dev2: 3 s unsigned at T0+10 s."""
    root = tmp_path_factory.mktemp("view")
    keys = root / "keys"
    keys.mkdir()
    key = proof.DeviceKey.generate(root / "dev1.key")
    (keys / f"dev1-{key.id}.pub").write_text(key.public_line("dev1") + "\n")
    name = f"view-{uuid.uuid4().hex[:12]}"
    client = azurite.container(name)

    first = record(root / "a", 5 * FPS, SEG, device="dev1", wall_clock=clock(T0))
    prev = sign_spool(first, key)
    upload_whole(client, first)
    second = record(
        root / "b", 3 * FPS, SEG, device="dev1", wall_clock=clock(T0 + timedelta(seconds=30))
    )
    sign_spool(second, key, prev, boot="bbbbbbbb")
    lost = second.ready_segments()[1]
    lost.unlink()
    lost.with_suffix(".json").unlink()
    upload_live(client, second)
    other = record(
        root / "c", 3 * FPS, SEG, device="dev2", wall_clock=clock(T0 + timedelta(seconds=10))
    )
    sign_spool(other, None)
    upload_whole(client, other)
    yield {"container": name, "client": client, "keys": keys, "root": root}
    client.delete_container()


def counter(frame: av.VideoFrame) -> int:
    """The synthetic camera's frame counter, drawn as a column of bits."""
    luma = frame.to_ndarray(format="gray").ravel()
    stride = frame.width
    return sum(int(luma[(11 + bit * 8) * stride + 11] > 128) << bit for bit in range(16))


def entries(playlist: str) -> list[dict]:
    """Each media entry of a playlist: its uri, seconds, byte range, program date-time."""
    found, pending = [], {}
    for line in playlist.splitlines():
        if line.startswith("#EXTINF:"):
            pending["seconds"] = float(line[8:].rstrip(","))
        elif line.startswith("#EXT-X-BYTERANGE:"):
            length, _, offset = line[17:].partition("@")
            pending["range"] = (int(offset), int(length))
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pending["pdt"] = parse_iso(line[25:])
        elif line and not line.startswith("#"):
            found.append({**pending, "uri": line})
            pending = {}
    return found


def tag(playlist: str, name: str) -> str | None:
    for line in playlist.splitlines():
        if line.startswith(f"#{name}:"):
            return line[len(name) + 2 :]
    return None


# --- devices and the timeline --------------------------------------------------------


def test_devices_without_redis_show_the_newest_blob_and_old_footage_as_silent(
    azurite, world, serve
):
    app = serve(values_for(azurite, world["container"]))
    status, answer = app.json("/api/devices")
    assert status == 200, answer
    by = {d["device"]: d for d in answer["devices"]}
    assert sorted(by) == ["dev1", "dev2"]
    assert parse_iso(by["dev1"]["newest"]) == T0 + timedelta(seconds=33)
    assert parse_iso(by["dev2"]["newest"]) == T0 + timedelta(seconds=13)
    assert by["dev1"]["health"] is None and by["dev1"]["silent"] is True
    assert answer["problems"] == []


def test_a_recent_blob_without_redis_is_not_silent(azurite, world, serve):
    # Silent: no blob for 2 segment lengths + 30 s (here 1 s segments: 32 s).
    soon = T0 + timedelta(seconds=55)
    values = values_for(azurite, world["container"], HATCAM_SEGMENT_SECONDS="1")
    app = serve(values, now=lambda: soon)
    by = {d["device"]: d for d in app.json("/api/devices")[1]["devices"]}
    assert by["dev1"]["silent"] is False  # 22 s after its newest blob
    assert by["dev2"]["silent"] is True  # 42 s


def test_the_timeline_shows_runs_gaps_and_proof(azurite, world, serve):
    values = values_for(azurite, world["container"], HATCAM_KEYS_DIR=str(world["keys"]))
    app = serve(values)
    status, day = app.json("/api/timeline?device=dev1&day=2026-11-21")
    assert status == 200, day
    assert len(day["segments"]) == 5 + 2
    runs = [(parse_iso(r["start"]), parse_iso(r["end"]), r["segments"]) for r in day["runs"]]
    assert runs == [
        (T0, T0 + timedelta(seconds=5), 5),
        (T0 + timedelta(seconds=30), T0 + timedelta(seconds=33), 2),
    ]
    assert [(g["seconds"]) for g in day["gaps"]] == [25.0]
    proof = [(p["state"], parse_iso(p["start"]), parse_iso(p["end"])) for p in day["proof"]]
    assert ("verified", T0, T0 + timedelta(seconds=5)) in proof
    missing = [p for p in proof if p[0] == "missing"]
    assert missing, proof
    assert missing[0][1] >= T0 + timedelta(seconds=31) - timedelta(milliseconds=50)
    status, other = app.json("/api/timeline?device=dev2&day=2026-11-21")
    assert {p["state"] for p in other["proof"]} == {"unverified"}


def test_a_day_without_footage_is_empty_and_a_bad_day_is_refused(azurite, world, serve):
    app = serve(values_for(azurite, world["container"]))
    status, day = app.json("/api/timeline?device=dev1&day=2026-11-22")
    assert status == 200 and day["segments"] == [] and day["runs"] == []
    status, answer = app.json("/api/timeline?device=dev1&day=yesterday")
    assert status == 400 and "day" in answer["error"] and "yesterday" in answer["error"]
    status, answer = app.json("/api/timeline?device=../x&day=2026-11-21")
    assert status == 400 and "device" in answer["error"]


# --- playing a moment, and the bytes -------------------------------------------------


def test_the_play_playlist_starts_at_the_frame_captured_at_that_moment(azurite, world, serve):
    app = serve(values_for(azurite, world["container"]))
    at = T0 + timedelta(seconds=2.5)
    status, headers, body = app.get(f"/hls/play.m3u8?device=dev1&at={iso(at)}")
    assert status == 200, body
    assert headers["content-type"].startswith("application/vnd.apple.mpegurl")
    playlist = body.decode()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and "#EXT-X-ENDLIST" in playlist
    offset = float(tag(playlist, "EXT-X-START").split(",")[0].split("=")[1])
    assert offset == pytest.approx(2.5, abs=0.001)
    parts = entries(playlist)
    assert len(parts) == 5 and parts[0]["pdt"] == T0  # the run, not the other one
    # The entry that holds the offset, decoded: its frame at the offset is the one
    # the camera captured at ``at`` (its counter at 30 fps), within one frame.
    before = 0.0
    for part in parts:
        if before + part["seconds"] > offset:
            break
        before += part["seconds"]
    status, _, data = app.get(part["uri"])
    assert status == 200
    with av.open(io.BytesIO(data), format="mpegts") as ts:
        frames = [(f.pts, counter(f)) for f in ts.decode(video=0)]
    first_pts = frames[0][0]
    into = offset - before
    pts, count = min(frames, key=lambda f: abs((f[0] - first_pts) / 90_000 - into))
    captured = part["pdt"] + timedelta(seconds=(pts - first_pts) / 90_000)
    assert abs((captured - at).total_seconds()) <= 1 / FPS
    assert abs(count / FPS - 2.5) <= 1 / FPS


def test_nothing_recorded_at_a_moment_is_a_404_in_words(azurite, world, serve):
    app = serve(values_for(azurite, world["container"]))
    at = iso(T0 + timedelta(seconds=20))
    status, answer = app.json(f"/hls/play.m3u8?device=dev1&at={at}")
    assert status == 404 and "recorded nothing" in answer["error"]
    status, answer = app.json("/hls/play.m3u8?device=dev1&at=noon")
    assert status == 400 and "noon" in answer["error"]


def test_media_range_requests_return_exactly_the_blobs_bytes(azurite, world, serve):
    app = serve(values_for(azurite, world["container"]))
    client = world["client"]
    blob = sorted(
        b.name for b in client.list_blobs(name_starts_with="dev1/") if b.name.endswith(".ts")
    )[0]
    whole = client.get_blob_client(blob).download_blob().readall()
    status, headers, body = app.get(f"/media/{blob}")
    assert status == 200 and body == whole and headers["content-type"] == "video/mp2t"
    status, headers, body = app.get(f"/media/{blob}", {"Range": "bytes=188-1127"})
    assert status == 206 and body == whole[188:1128]
    assert headers["content-range"] == f"bytes 188-1127/{len(whole)}"
    status, _, body = app.get(f"/media/{blob}", {"Range": "bytes=1000-"})
    assert status == 206 and body == whole[1000:]
    status, _, body = app.get(f"/media/{blob}", {"Range": "bytes=-500"})
    assert status == 206 and body == whole[-500:]
    status, _, _ = app.get(f"/media/{blob}", {"Range": f"bytes={len(whole) + 10}-"})
    assert status == 416
    status, answer = app.json("/media/dev1/2026-11-21/nothing.ts")
    assert status == 404 and "error" in answer
    status, answer = app.json("/media/dev1/2026-11-21/x.json")
    assert status == 404


# --- health and stills from Redis ----------------------------------------------------


def test_a_publishing_camera_shows_its_health_and_turns_silent_when_it_stops(
    azurite, world, serve, redis_server, tmp_path
):
    from hatcam.device.health import HealthPublisher
    from hatcam.device.spool import Spool

    spool = Spool(tmp_path / "spool").ensure()
    (spool.state / "camera.json").write_text(json.dumps({"state": "recording"}))
    stop = threading.Event()
    publisher = HealthPublisher(redis_server.url, "dev1", spool, stop, every=0.2, ttl=1)
    publisher.thread.start()
    fresh = HealthPublisher(redis_server.url, "dev3", spool, threading.Event(), ttl=30)
    fresh.publish()  # a camera that has uploaded nothing yet
    values = values_for(azurite, world["container"], REDIS_URL=redis_server.url)
    app = serve(values)
    status, answer = app.json("/api/devices")
    assert status == 200 and answer["problems"] == []
    by = {d["device"]: d for d in answer["devices"]}
    assert sorted(by) == ["dev1", "dev2", "dev3"]
    health = by["dev1"]["health"]
    assert by["dev1"]["silent"] is False and health["recording"] is True
    assert health["queue"] == 0 and health["free_mb"] > 0 and 0 <= health["ttl_s"] <= 1
    assert health["version"] and parse_iso(health["published"])
    assert by["dev3"]["newest"] is None and by["dev3"]["silent"] is False
    assert by["dev2"]["health"] is None and by["dev2"]["silent"] is True  # never published
    stop.set()
    publisher.thread.join(5)
    time.sleep(1.5)  # the key's TTL: the camera is gone
    by = {d["device"]: d for d in app.json("/api/devices")[1]["devices"]}
    assert by["dev1"]["silent"] is True and by["dev1"]["health"] is None


def test_redis_unreachable_is_said_in_words_and_the_cloud_still_answers(azurite, world, serve):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    app = serve(values_for(azurite, world["container"], REDIS_URL=nowhere))
    status, answer = app.json("/api/devices")
    assert status == 200
    assert [d["device"] for d in answer["devices"]] == ["dev1", "dev2"]
    assert answer["problems"] and "unreachable" in answer["problems"][0]
    assert "127.0.0.1" in answer["problems"][0]
    status, answer = app.json("/api/stills")
    assert status == 200 and answer["stills"] == [] and "unreachable" in answer["problems"][0]
    status, answer = app.json("/api/stills/image:1.jpg")
    assert status == 503 and "unreachable" in answer["error"]


def test_stills_come_newest_first_with_their_remaining_ttl(azurite, world, serve, redis_server):
    import redis

    r = redis.Redis.from_url(redis_server.url)
    jpeg = {k: bytes([0xFF, 0xD8, k, 0xFF, 0xD9]) for k in range(3)}
    now = int(time.time())
    for k, (device, ttl) in enumerate([("dev1", 60), ("dev2", 60), ("dev1", 30)]):
        key = f"image:{now + k}"
        fields = {"image_data": jpeg[k], "timestamp": now + k + 0.25, "mime_type": "image/jpeg"}
        r.hset(key, mapping={**fields, "lux": 12.5 * k, "device": device})
        r.expire(key, ttl)
    r.hset("image:123", mapping={"image_data": b"x", "timestamp": 123, "device": "dev1"})
    r.expire("image:123", 1)
    time.sleep(1.1)  # expired: gone from the gallery
    app = serve(values_for(azurite, world["container"], REDIS_URL=redis_server.url))
    status, answer = app.json("/api/stills")
    assert status == 200, answer
    keys = [s["key"] for s in answer["stills"]]
    assert keys == [f"image:{now + 2}", f"image:{now + 1}", f"image:{now}"]
    newest = answer["stills"][0]
    assert newest["device"] == "dev1" and newest["lux"] == 25.0
    assert 25 <= newest["ttl_s"] <= 30
    assert parse_iso(newest["timestamp"]).timestamp() == pytest.approx(now + 2.25)
    status, answer = app.json("/api/stills?device=dev1")
    assert [s["key"] for s in answer["stills"]] == [f"image:{now + 2}", f"image:{now}"]
    status, headers, body = app.get(answer["stills"][0]["url"])
    assert status == 200 and body == jpeg[2] and headers["content-type"] == "image/jpeg"
    status, answer = app.json("/api/stills/image:42.jpg")
    assert status == 404 and "no such still" in answer["error"]
    status, answer = app.json("/api/stills/hatcam:health:dev1.jpg")
    assert status == 404 and "not a still" in answer["error"]


# --- the access token, and settings refused -----------------------------------------


def test_with_a_token_every_request_needs_it_once_then_the_cookie_carries_it(azurite, world, serve):
    token = "s3cret-token-for-the-test"
    app = serve(values_for(azurite, world["container"]), "--token", token)
    status, answer = app.json("/api/devices")
    assert status == 401 and "token" in answer["error"]
    status, _ = app.json("/api/devices?token=wrong-token-given")
    assert status == 401
    status, headers, _ = app.get(f"/api/devices?token={token}")
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    assert app.get("/api/devices", {"Cookie": cookie})[0] == 200
    assert app.get("/hls/live.m3u8?device=dev1", {"Cookie": cookie})[0] != 401
    assert app.get("/api/devices", {"Authorization": f"Bearer {token}"})[0] == 200


def test_without_a_token_it_answers_only_to_its_loopback_names(azurite, world, serve):
    """Another site's page that points its own name at 127.0.0.1 (DNS rebinding) gets
    nothing; the page as the user opens it does. With a token, the token decides."""
    app = serve(values_for(azurite, world["container"]))
    status, _, body = app.get("/api/devices", {"Host": "evil.example:8765"})
    assert status == 403 and b"127.0.0.1 or localhost" in body
    assert app.get("/api/devices", {"Host": "localhost"})[0] == 200
    assert app.get("/api/devices")[0] == 200


def hatcam_view(tmp_path, *args, **values) -> tuple[int, str]:
    """``hatcam --env-file E view ...`` when it refuses to start: (status, stderr)."""
    from hatcam import cli

    env = tmp_path / "view.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = subprocess.run(
        [sys.executable, "-m", "hatcam.cli", "--env-file", str(env), "view", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli  # the same command
    return result.returncode, result.stderr


def test_bound_beyond_loopback_without_a_token_it_refuses_to_start(azurite, world, tmp_path):
    status, err = hatcam_view(
        tmp_path, "--bind", "0.0.0.0", **values_for(azurite, world["container"])
    )
    assert status != 0 and "--bind 0.0.0.0" in err and "--token" in err


def test_a_create_only_sas_is_refused_at_start_in_words(azurite, world, tmp_path):
    sas = azurite.sas_url(world["container"], "c")
    status, err = hatcam_view(tmp_path, HATCAM_BLOB_SAS_URL=sas)
    assert status != 0 and "HATCAM_BLOB_SAS_URL" in err and "rl" in err


def test_a_read_list_sas_serves_the_same_bytes(azurite, world, serve):
    sas = azurite.sas_url(world["container"], "rl")
    app = serve({"HATCAM_BLOB_SAS_URL": sas})
    status, day = app.json("/api/timeline?device=dev1&day=2026-11-21")
    assert status == 200 and len(day["segments"]) == 7
    blob = day["segments"][0]["blob"]
    whole = world["client"].get_blob_client(blob).download_blob().readall()
    assert app.get(f"/media/{blob}", {"Range": "bytes=0-187"})[2] == whole[:188]


def test_a_sas_the_account_refuses_is_a_403_in_words_and_the_app_keeps_serving(
    azurite, world, serve
):
    sas = azurite.sas_url(world["container"], "rl")
    forged = sas.replace("sig=", "sig=AAAA")
    app = serve({"HATCAM_BLOB_SAS_URL": forged})
    status, answer = app.json("/api/devices")
    assert status == 403 and answer["error"], answer
    status, answer = app.json("/api/timeline?device=dev1&day=2026-11-21")
    assert status == 403 and answer["error"]


def test_a_container_that_does_not_exist_and_an_unknown_device_are_said_in_words(
    azurite, world, serve
):
    app = serve(values_for(azurite, "no-such-container"))
    status, answer = app.json("/api/devices")
    assert status == 404 and "no-such-container" in answer["error"], answer
    app = serve(values_for(azurite, world["container"]))
    status, answer = app.json("/api/timeline?device=nobody&day=2026-11-21")
    assert status == 404 and "nobody" in answer["error"]
    status, answer = app.json("/hls/live.m3u8?device=nobody")
    assert status == 404 and "nobody" in answer["error"]


# --- following live ------------------------------------------------------------------


def test_the_live_playlist_ends_at_the_growing_blobs_appended_bytes(azurite, serve, tmp_path):
    """Three finished segments, then an open append blob growing as the uploader grows
    it (whole TS packets at frame boundaries): each reload lists its new bytes as a
    new part, numbered on from the last, and the parts decode to the newest frame."""
    from hatcam.segment import SegmentName, SegmentRecord

    from tests.test_fetch_live import append, open_live, send_finished

    name = f"viewlive-{uuid.uuid4().hex[:12]}"
    client = azurite.container(name)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    spool = record(tmp_path / "live", 4 * FPS, SEG, device="live1", wall_clock=clock(start))
    found = []
    for path in spool.ready_segments():
        rec = SegmentRecord.from_sidecar(spool.read_metadata(path))
        found.append((path, rec, SegmentName.parse(path.name).blob_name("live1")))
    send_finished(client, found[:3])
    path, rec, blob = found[3]
    data = path.read_bytes()
    pieces = packet_cuts(data, 3)  # three appends, each ending at a frame boundary
    handle = open_live(client, blob, rec)
    append(handle, data[: pieces[0]])
    app = serve(values_for(azurite, name))
    try:
        status, headers, body = app.get("/hls/live.m3u8?device=live1")
        assert status == 200, body
        first = body.decode()
        assert "#EXT-X-ENDLIST" not in first and "#EXT-X-PLAYLIST-TYPE" not in first
        listed = entries(first)
        assert listed[-1]["uri"].endswith(blob) and listed[-1]["range"] == (0, pieces[0])
        assert {e["uri"] for e in listed[:-1]} == {f"/media/{b}" for _, _, b in found[:3]}
        seq = int(tag(first, "EXT-X-MEDIA-SEQUENCE"))
        append(handle, data[pieces[0] : pieces[1]], pieces[0])
        again = app.get("/hls/live.m3u8?device=live1")[2].decode()
        relisted = entries(again)
        seq2 = int(tag(again, "EXT-X-MEDIA-SEQUENCE"))
        # A part keeps its number and its bytes; the new bytes are the next part.
        numbered = {seq + i: (e["uri"], e["range"]) for i, e in enumerate(listed)}
        for i, e in enumerate(relisted):
            if seq2 + i in numbered:
                assert numbered[seq2 + i] == (e["uri"], e["range"])
        assert relisted[-1]["range"] == (pieces[0], pieces[1] - pieces[0])
        target = int(tag(again, "EXT-X-TARGETDURATION"))
        assert all(e["seconds"] <= target for e in relisted) and target <= 2
        # The parts of the open blob, as the player fetches them, decode to its frames.
        got = b"".join(
            app.get(e["uri"], {"Range": f"bytes={e['range'][0]}-{sum(e['range']) - 1}"})[2]
            for e in relisted
            if e["uri"].endswith(blob)
        )
        assert got == data[: pieces[1]]
        with av.open(io.BytesIO(got), format="mpegts") as ts:
            counters = [counter(f) for f in ts.decode(video=0)]
        with av.open(io.BytesIO(data[: pieces[1]]), format="mpegts") as ts:
            assert counters == [counter(f) for f in ts.decode(video=0)]
        status, day = app.json(f"/api/timeline?device=live1&day={start.date().isoformat()}")
        assert [s["live"] for s in day["segments"]] == [False, False, False, True]
    finally:
        client.delete_container()


def packet_cuts(data: bytes, n: int) -> list[int]:
    """``n`` byte offsets in a TS file where a video frame's packets begin (the first
    packet of a PES, payload_unit_start), spread across it, the last the file's end."""
    starts = [
        at
        for at in range(0, len(data), 188)
        if data[at + 1] & 0x40 and (data[at + 1] & 0x1F) << 8 | data[at + 2] == 0x100
    ]
    chosen = [starts[len(starts) * k // n] for k in range(1, n)]
    return [*chosen, len(data)]


# --- export ------------------------------------------------------------------------


def test_an_export_is_the_mp4_hatcam_fetch_makes_with_its_progress(azurite, world, serve, tmp_path):
    from hatcam import cli

    values = values_for(azurite, world["container"], HATCAM_KEYS_DIR=str(world["keys"]))
    app = serve(values, "--out", str(tmp_path / "exports"))
    since, until = iso(T0), iso(T0 + timedelta(seconds=5))
    body = json.dumps({"device": "dev1", "start": since, "end": until}).encode()
    status, _, reply = app.get("/api/export", {"Content-Type": "application/json"}, body)
    assert status == 202, reply
    job = json.loads(reply)["job"]
    deadline = time.monotonic() + 60
    while True:
        status, state = app.json(f"/api/export/{job}")
        assert status == 200
        if state["state"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert state["state"] == "done", state
    assert state["done"] == state["total"] == 5 and len(state["files"]) == 1
    status, headers, mp4 = app.get(f"/api/export/{job}/file/{state['files'][0]}")
    assert status == 200 and headers["content-type"] == "video/mp4"
    env = tmp_path / "fetch.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    out = tmp_path / "fetched"
    argv = ["--env-file", str(env), "fetch", "--out", str(out), "--device", "dev1"]
    assert cli.main([*argv, "--since", since, "--until", until]) == 0
    [fetched] = sorted(out.glob("*.mp4"))
    assert fetched.name == state["files"][0]
    with av.open(io.BytesIO(mp4)) as a, av.open(str(fetched)) as b:
        mine = [(f.pts, counter(f)) for f in a.decode(video=0)]
        theirs = [(f.pts, counter(f)) for f in b.decode(video=0)]
    assert mine == theirs and len(mine) == 5 * FPS
    assert mp4 == fetched.read_bytes()


def test_two_exports_at_once_run_one_after_the_other_and_both_finish(
    azurite, world, serve, tmp_path
):
    """They share the output folder and fetch's cache in it: the second waits, says so,
    then runs; both end with their files."""
    values = values_for(azurite, world["container"], HATCAM_KEYS_DIR=str(world["keys"]))
    app = serve(values, "--out", str(tmp_path / "exports"))

    def start(device: str, since: datetime, until: datetime) -> str:
        body = json.dumps({"device": device, "start": iso(since), "end": iso(until)})
        status, _, reply = app.get(
            "/api/export", {"Content-Type": "application/json"}, body.encode()
        )
        assert status == 202, reply
        return json.loads(reply)["job"]

    first = start("dev1", T0, T0 + timedelta(seconds=5))
    second = start("dev2", T0, T0 + timedelta(seconds=20))
    seen, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        a, b = (app.json(f"/api/export/{job}")[1] for job in (first, second))
        seen.append((a["state"], b["state"], b["message"]))
        if "running" not in (a["state"], b["state"]):
            break
        time.sleep(0.02)
    assert a["state"] == b["state"] == "done", (a, b)
    assert a["files"] and b["files"] and set(a["files"]).isdisjoint(b["files"])
    together = [s for s in seen if s[0] == "running" and s[1] == "running"]
    assert together, seen
    assert all(message == "waiting for the export before it" for *_, message in together), seen


def test_bad_export_requests_are_refused_in_words(azurite, world, serve, tmp_path):
    app = serve(values_for(azurite, world["container"]), "--out", str(tmp_path / "x"))
    for body, words in [
        (b"not json", "not JSON"),
        (
            b'{"device": "dev1", "start": "2026-11-21T08:00:05Z", "end": "2026-11-21T08:00:00Z"}',
            "not before",
        ),
        (
            b'{"device": "a b", "start": "2026-11-21T08:00:00Z", "end": "2026-11-21T09:00:00Z"}',
            "device",
        ),
    ]:
        status, _, reply = app.get("/api/export", {"Content-Type": "application/json"}, body)
        assert status == 400 and words in json.loads(reply)["error"]
    status, answer = app.json("/api/export/nope")
    assert status == 404 and "nope" in answer["error"]


# --- a day of 10 s segments ------------------------------------------------------------


def test_a_moment_and_the_live_edge_list_only_the_hours_they_need(azurite, serve, tmp_path):
    """Six hours of 60 s segments (signed blobs, small bodies, real metadata): a moment's
    playlist holds its run an hour either side, the live playlist the last minutes, the
    day's timeline every segment in one verified run. How fast a whole day of 8,640
    blobs shows is the bench's figure (bench/view_bench.py), not a test's."""
    from tests.support.manyblobs import day_of_segments

    name = f"viewday-{uuid.uuid4().hex[:12]}"
    client = azurite.container(name)
    keys = tmp_path / "keys"
    keys.mkdir()
    key = proof.DeviceKey.generate(tmp_path / "day1.key")
    (keys / f"day1-{key.id}.pub").write_text(key.public_line("day1") + "\n")
    try:
        day_of_segments(client, "day1", T0.replace(hour=0), count=360, seconds=60.0, key=key)
        noon = T0.replace(hour=3)
        app = serve(values_for(azurite, name, HATCAM_KEYS_DIR=str(keys)), now=lambda: noon)
        status, _, body = app.get(f"/hls/play.m3u8?device=day1&at={iso(noon)}")
        assert status == 200
        listed = entries(body.decode())
        assert listed[0]["pdt"] >= noon - timedelta(hours=1, minutes=10)
        assert listed[-1]["pdt"] <= noon + timedelta(hours=1, minutes=10)
        assert len(listed) < 360
        offset = float(tag(body.decode(), "EXT-X-START").split(",")[0].split("=")[1])
        assert listed[0]["pdt"] + timedelta(seconds=offset) == noon
        status, _, body = app.get("/hls/live.m3u8?device=day1")
        assert status == 200 and 1 <= len(entries(body.decode())) <= 10
        status, day = app.json(f"/api/timeline?device=day1&day={T0.date().isoformat()}")
        assert status == 200
        assert len(day["segments"]) == 360 and len(day["runs"]) == 1
        assert [p["state"] for p in day["proof"]] == ["verified"]
    finally:
        client.delete_container()


def test_the_quick_listing_reads_what_the_sdks_listing_reads(azurite, world):
    """The view's own List Blobs reader gives fetch's listing the same blobs, with the
    same sizes, etags, metadata, types, MD5s and times, with the key and with a SAS."""
    from azure.storage.blob import ContainerClient

    from hatcam.view.quicklist import QuickListing

    sas = ContainerClient.from_container_url(azurite.sas_url(world["container"], "rl"))
    for client in (world["client"], sas):

        def seen(props):
            kind = getattr(props.blob_type, "value", props.blob_type)
            md5 = props.content_settings.content_md5
            return (
                props.name,
                props.size,
                props.etag,
                dict(props.metadata),
                str(kind),
                bytes(md5) if md5 else None,
                props.last_modified,
                props.creation_time,
            )

        sdk = [seen(p) for p in client.list_blobs(name_starts_with="dev", include=["metadata"])]
        quick = QuickListing(client).list_blobs(name_starts_with="dev", include=["metadata"])
        assert [seen(p) for p in quick] == sdk and len(sdk) > 10


def test_following_a_recording_camera_the_live_edge_is_seconds_behind_capture(
    azurite, serve, tmp_path
):
    """The real camera and uploader daemons (live appends); the live playlist reloaded
    as a player reloads it: the newest frame it serves was captured a couple of seconds
    ago (camera sync, upload, listing), measured by the frame's own capture clock."""
    import signal

    from tests.support.footage import start_hatcam

    name = f"viewfollow-{uuid.uuid4().hex[:12]}"
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_DEVICE": "hat1",
        "HATCAM_SEGMENT_SECONDS": "4",
        "HATCAM_RETRY_MAX_SECONDS": "1",
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": name,
    }
    client = azurite.container(name)
    procs = [
        start_hatcam(which, settings=settings, log=tmp_path / f"{which}.log")
        for which in ("camera", "upload")
    ]
    try:
        app = serve(values_for(azurite, name, HATCAM_SEGMENT_SECONDS="4"))
        lags, deadline = [], time.monotonic() + 60
        while len(lags) < 12 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, _, body = app.get("/hls/live.m3u8?device=hat1")
            if status != 200:
                continue
            listed = entries(body.decode())
            newest = listed[-1]
            first = next(e for e in listed if e["uri"] == newest["uri"] and e["range"][0] == 0)
            end = sum(newest["range"])
            data = app.get(newest["uri"], {"Range": f"bytes=0-{end - 1}"})[2]
            with av.open(io.BytesIO(data), format="mpegts") as ts:
                pts = [p.pts for p in ts.demux(video=0) if p.pts is not None]
            if len(pts) < 2:
                continue
            captured = first["pdt"] + timedelta(seconds=(pts[-1] - pts[0]) / 90_000)
            lags.append((datetime.now(UTC) - captured).total_seconds())
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        client.delete_container()
    assert len(lags) >= 8, lags
    ordered = sorted(lags)
    median = ordered[len(ordered) // 2]
    print(f"\nlive edge behind capture: median {median:.2f} s, worst {ordered[-1]:.2f} s")
    assert median <= 3.0, lags


def test_a_segment_across_midnight_shows_on_both_days(azurite, serve):
    """Listing only the buckets a day needs still finds the segment the previous day's
    folder holds that runs into this day."""
    from tests.support.manyblobs import day_of_segments

    name = f"viewmid-{uuid.uuid4().hex[:12]}"
    client = azurite.container(name)
    try:
        before = T0.replace(hour=0) - timedelta(seconds=25)  # 23:59:35 the day before
        day_of_segments(client, "mid1", before, count=6, seconds=10.0)
        app = serve(values_for(azurite, name))
        starts = {}
        for day in ("2026-11-20", "2026-11-21"):
            status, answer = app.json(f"/api/timeline?device=mid1&day={day}")
            assert status == 200, answer
            starts[day] = [parse_iso(s["start"]).strftime("%H:%M:%S") for s in answer["segments"]]
        assert starts["2026-11-20"] == ["23:59:35", "23:59:45", "23:59:55"]
        assert starts["2026-11-21"] == ["23:59:55", "00:00:05", "00:00:15", "00:00:25"]
    finally:
        client.delete_container()


# --- the day index: a quick first answer, checked by the full listing -----------------


def live_day(client, tmp_path, device: str, start: datetime, count: int = 30, **kw):
    """``count`` signed live segments of 30 s from ``start`` (append blobs, closing
    records, the day index) and the keys directory that verifies them."""
    from tests.support.manyblobs import day_of_segments

    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    key = proof.DeviceKey.generate(tmp_path / f"{device}.key")
    (keys / f"{device}-{key.id}.pub").write_text(key.public_line(device) + "\n")
    names = day_of_segments(client, device, start, count, 30.0, key=key, live=True, **kw)
    return keys, names


def quick_then_checked(app, path: str) -> tuple[dict, dict]:
    """The first answer, and the checked one the page gets by asking again."""
    status, quick = app.json(path)
    assert status == 200, quick
    answer, deadline = quick, time.monotonic() + 30
    while not answer["checked"]:
        assert time.monotonic() < deadline, f"never checked: {answer}"
        time.sleep(0.1)
        status, answer = app.json(path)
        assert status == 200, answer
    return quick, answer


def blobs_of(answer: dict) -> list[str]:
    return [s["blob"] for s in answer["segments"]]


def asked_again_later(app, device: str, path: str) -> dict:
    """The next quick answer of the day, once the kept answer has expired."""
    key = (device, T0.date())
    app.view.days[key] = (time.monotonic() - 3600, app.view.days[key][1])
    status, answer = app.json(path)
    assert status == 200 and answer["checked"] is False, answer
    return answer


def test_a_day_index_gives_the_first_answer_and_the_full_listing_checks_it(
    azurite, container, serve, tmp_path
):
    """From 23:59:15 the day before, signed live segments of 30 s, the newest still
    open: the quick answer (the index, the tail listed after it, the segment running into
    the day from the day before) is the checked answer, with nothing to say."""
    name, client = container
    keys, names = live_day(
        client, tmp_path, "idx1", T0.replace(hour=0) - timedelta(seconds=45), count=40, unfinished=1
    )
    app = serve(values_for(azurite, name, HATCAM_KEYS_DIR=str(keys)))
    quick, checked = quick_then_checked(app, "/api/timeline?device=idx1&day=2026-11-21")
    assert quick["checked"] is False and checked["checked"] is True
    for part in ("segments", "runs", "gaps", "proof"):
        assert quick[part] == checked[part], part
    assert blobs_of(checked) == names[1:]  # 23:59:45 runs into the day
    assert checked["segments"][-1]["live"] is True  # the open one, from the tail
    assert len(checked["runs"]) == 1 and checked["problems"] == [] == quick["problems"]
    assert [p["state"] for p in checked["proof"]] == ["verified", "unverified"]
    status, again = app.json("/api/timeline?device=idx1&day=2026-11-21")
    assert status == 200 and again == checked  # kept


def test_an_index_line_of_a_blob_that_is_not_there_is_left_out_when_checked(
    azurite, container, serve, tmp_path
):
    from hatcam.segment import (
        ClosingRecord,
        Contents,
        SegmentName,
        SegmentRecord,
        day_index_name,
        index_line,
    )

    from tests.support.manyblobs import append_index

    name, client = container
    keys, names = live_day(client, tmp_path, "idx2", T0.replace(hour=0))
    at = T0.replace(hour=0) + timedelta(minutes=5, seconds=5)
    ghost = SegmentName(at, "deadbeef", 0).blob_name("idx2")
    record = SegmentRecord(
        "idx2", at, at + timedelta(seconds=10), Contents(300, 0, 899_700, 320, 240), True
    )
    line = index_line(ghost, ClosingRecord(record, 188, "0" * 32))
    append_index(client, day_index_name("idx2", T0.date()), [line])
    app = serve(values_for(azurite, name, HATCAM_KEYS_DIR=str(keys)))
    quick, checked = quick_then_checked(app, "/api/timeline?device=idx2&day=2026-11-21")
    assert ghost in blobs_of(quick) and ghost not in blobs_of(checked)
    assert blobs_of(checked) == names
    said = [
        line
        for line in checked["problems"]
        if "index.jsonl of idx2 for 2026-11-21 names 1 segment(s) that are not in the container"
        in line
    ]
    assert said, checked["problems"]
    # The day's next quick answer knows it, and says it while it is checked again.
    path = "/api/timeline?device=idx2&day=2026-11-21"
    again = asked_again_later(app, "idx2", path)
    assert blobs_of(again) == names and again["problems"] == said
    assert quick_then_checked(app, path)[1]["problems"] == said


def test_a_segment_the_index_lacks_shows_when_checked_and_is_said(
    azurite, container, serve, tmp_path
):
    """The third of 30 segments has no index line (a crash between its closing record and
    its line): far from the tail, the quick answer lacks it, the checked one has it."""
    name, client = container
    keys, names = live_day(client, tmp_path, "idx3", T0.replace(hour=0), unindexed={2})
    app = serve(values_for(azurite, name, HATCAM_KEYS_DIR=str(keys)))
    quick, checked = quick_then_checked(app, "/api/timeline?device=idx3&day=2026-11-21")
    assert names[2] not in blobs_of(quick) and blobs_of(checked) == names
    assert len(checked["runs"]) == 1
    assert any(
        "lacks 1 finished segment(s) that are in the container" in line
        for line in checked["problems"]
    ), checked["problems"]
    path = "/api/timeline?device=idx3&day=2026-11-21"
    again = asked_again_later(app, "idx3", path)
    assert blobs_of(again) == names and again["problems"] == checked["problems"]
    assert quick_then_checked(app, path)[1]["problems"] == checked["problems"]


def test_garbage_lines_in_the_day_index_are_skipped_and_counted(
    azurite, container, serve, tmp_path
):
    from hatcam.segment import day_index_name

    from tests.support.manyblobs import append_index

    name, client = container
    keys, names = live_day(client, tmp_path, "idx4", T0.replace(hour=0))
    other = client.get_blob_client(day_index_name("idx4", T0.date())).download_blob().readall()
    stray = other.splitlines(keepends=True)[0].replace(b"idx4/", b"idx5/")  # another folder's
    garbage = [b"not json at all\n", b'{"blob": 7}\n', stray]
    append_index(client, day_index_name("idx4", T0.date()), garbage)
    app = serve(values_for(azurite, name, HATCAM_KEYS_DIR=str(keys)))
    quick, checked = quick_then_checked(app, "/api/timeline?device=idx4&day=2026-11-21")
    assert blobs_of(quick) == blobs_of(checked) == names
    assert quick["proof"] == checked["proof"]
    for answer in (quick, checked):
        assert [line for line in answer["problems"] if "3 garbage line(s) skipped" in line]


def test_one_signature_checks_an_unbroken_chain_of_records(tmp_path):
    """fetch.verify.signed_records: a valid record vouches for the one its prev names,
    so a chain costs one Ed25519 check; an altered record in it, or one whose successor
    does not name it, is checked by its own signature."""
    from hatcam.fetch import verify

    key = proof.DeviceKey.generate(tmp_path / "c1.key")
    ring = proof.KeyRing()
    ring.add_line(key.public_line("c1"))
    records, prev = [], ""
    for k in range(6):
        name = f"20261121T0800{k:02d}.000Z-0badcafe-{k:06d}.ts"
        signed = key.sign(
            {
                "kind": "segment",
                "device": "c1",
                "name": name,
                "seq": k,
                "prev": prev,
                "start": iso(T0 + timedelta(seconds=k)),
            }
        )
        prev = proof.record_hash(signed)
        records.append((f"c1/2026-11-21/{name}", name, signed))
    checks = []
    problem = ring.problem
    ring.problem = lambda record: checks.append(record["seq"]) or problem(record)
    assert verify.signed_records(ring, "c1", records) == {r[0]: True for r in records}
    assert checks == [5]
    checks.clear()
    altered = [*records]
    altered[2] = (*records[2][:2], {**records[2][2], "frames": 9})  # its hash changes
    found = verify.signed_records(ring, "c1", altered)
    assert found[records[2][0]] is False and checks == [5, 2, 1]
    assert [found[r[0]] for r in records] == [True, True, False, True, True, True]
    checks.clear()
    assert verify.signed_records(ring, "c1", records, vouched={prev}) == {
        r[0]: True for r in records
    }
    assert checks == []  # the newest vouched for by a record checked before
