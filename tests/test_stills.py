"""Stills into a real redis-server: seed-compatible hashes, TTL, surviving an outage."""

from __future__ import annotations

import io
import signal
import time

import av
import redis

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.stills import StillsPublisher

from tests.support.footage import start_hatcam


def wait_for_keys(client, count, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = sorted(client.keys("image:*"))
        if len(keys) >= count:
            return keys
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} stills in Redis after {timeout} s")


def assert_one_transaction_per_still(client, stills):
    """Redis' own count of what it ran: one MULTI, HSET, EXPIRE, EXEC per still (one
    round trip, never a hash without an expiry), and no health-check PING."""
    stats = client.info("commandstats")
    calls = {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("multi", "hset", "expire", "exec", "ping")
    }
    assert calls == {
        "multi": stills,
        "hset": stills,
        "expire": stills,
        "exec": stills,
        "ping": 0,
    }, calls


def watch_stills(client, seconds, seen=None) -> dict:
    """Every still that shows up in Redis over ``seconds``: its fields and TTL when
    first seen (polled often, so even a still with one second left is caught)."""
    seen = {} if seen is None else seen
    deadline = time.monotonic() + seconds
    while True:
        for key in client.keys("image:*"):
            if key not in seen:
                fields, pttl = client.hgetall(key), client.pttl(key)
                if fields:
                    seen[key] = (fields, pttl, time.time())
        if time.monotonic() >= deadline:
            return seen
        time.sleep(0.05)


def captured(seen: dict) -> list[float]:
    """Capture times of the stills seen, from their own ``timestamp`` fields, oldest first."""
    return sorted(float(fields[b"timestamp"]) for fields, _, _ in seen.values())


class SlowStillCamera:
    """The synthetic camera with stills that take ``seconds``, like a still on a Pi
    Zero: a loop that sleeps its interval after each capture would drift that much
    per still."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.camera = SyntheticCamera(320, 240, 30, 300_000)

    def capture_still(self):
        time.sleep(self.seconds)
        return self.camera.capture_still()


def assert_still(client, key, device, expiry):
    fields = client.hgetall(key)
    assert fields[b"mime_type"] == b"image/jpeg"
    # The key is the capture second (moved on by one if two stills share a second).
    assert abs(int(key.split(b":")[1]) - float(fields[b"timestamp"])) < 1
    assert fields[b"device"] == device.encode()
    float(fields[b"lux"])
    with av.open(io.BytesIO(fields[b"image_data"]), format="mjpeg") as jpeg:
        picture = next(jpeg.decode(video=0))
        assert (picture.width, picture.height) == (320, 240)
    assert_expires_with_its_capture(client.pttl(key), time.time(), fields, expiry)


def assert_expires_with_its_capture(pttl_ms, now, fields, expiry):
    """A still expires ``expiry`` seconds after it was captured, however late it was
    written: Redis' own TTL against the still's own capture time (whole seconds)."""
    left = expiry - (now - float(fields[b"timestamp"]))
    assert abs(pttl_ms / 1000 - left) <= 0.6, (
        f"expires in {pttl_ms / 1000:.2f} s, should in {left:.2f} s ({expiry} s after capture)"
    )


def test_camera_daemon_stores_stills_with_their_ttl(tmp_path, redis_server):
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_DEVICE": "cam7",
        "HATCAM_STILLS": "on",
        "REDIS_URL": redis_server.url,
        "IMAGE_CAPTURE_FREQUENCY": "1",
        "IMAGE_EXPIRY": "120",
    }
    proc = start_hatcam("camera", settings=settings, log=tmp_path / "camera.log")
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = wait_for_keys(client, 3, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    for key in keys:
        assert_still(client, key, "cam7", 120)
    assert_one_transaction_per_still(client, len(client.keys("image:*")))


def test_redis_down_and_back_stills_resume_and_the_waiting_ones_are_written(redis_server):
    camera = SyntheticCamera(320, 240, 30, 300_000)
    publisher = StillsPublisher(
        camera, redis_server.url, "cam8", interval=1, expiry=600, buffer_size=20, retry_max=0.5
    )
    client = redis.Redis.from_url(redis_server.url)
    publisher.start()
    try:
        wait_for_keys(client, 2, 15)
        redis_server.stop()
        outage_started = time.time()
        time.sleep(4.5)  # about four captures while Redis is gone
        redis_server.start()  # same port, empty (no persistence): like a restarted cache
        client = redis.Redis.from_url(redis_server.url)
        keys = wait_for_keys(client, 5, 20)
    finally:
        publisher.stop()
    during = [k for k in keys if outage_started <= int(k.split(b":")[1]) < outage_started + 4]
    assert len(during) >= 3, f"stills taken during the outage were written: {keys}"
    for key in keys:
        assert_still(client, key, "cam8", 600)
    # The restarted server counted every command since: the stills written after it.
    assert_one_transaction_per_still(client, len(client.keys("image:*")))


def test_a_still_whose_ttl_ran_out_during_the_outage_is_not_written(redis_server):
    expiry = 4
    camera = SyntheticCamera(320, 240, 30, 300_000)
    publisher = StillsPublisher(
        camera,
        redis_server.url,
        "cam9",
        interval=1,
        expiry=expiry,
        buffer_size=20,
        retry_max=0.5,
    )
    redis_server.stop()
    publisher.start()
    try:
        time.sleep(7.5)  # eight stills wait; the older half outlive their expiry
        back = time.time()
        redis_server.start()
        client = redis.Redis.from_url(redis_server.url)
        seen = watch_stills(client, 3)
    finally:
        publisher.stop()
    watch_stills(client, 0, seen)  # one written while it was stopping
    assert_one_transaction_per_still(client, len(seen))  # every still written was seen
    for fields, pttl, when in seen.values():
        assert_expires_with_its_capture(pttl, when, fields, expiry)
    waited = [stamp for stamp in captured(seen) if stamp < back]
    # Written no earlier than `back`, with a TTL rounded to whole seconds: a still
    # written with any time left was captured less than expiry - 0.5 s before.
    assert waited and min(waited) > back - expiry + 0.5, "an expired still was written"
    assert back - min(waited) >= 1.5, "stills with time left were written, late"


def test_a_full_buffer_keeps_the_newest_stills_for_redis(redis_server):
    camera = SyntheticCamera(320, 240, 30, 300_000)
    publisher = StillsPublisher(
        camera, redis_server.url, "cam9", interval=1, expiry=600, buffer_size=3, retry_max=0.5
    )
    client = redis.Redis.from_url(redis_server.url)
    publisher.start()
    try:
        wait_for_keys(client, 1, 15)
        redis_server.stop()
        down = time.time()
        time.sleep(7.5)  # seven or eight stills for a buffer of three
        back = time.time()
        redis_server.start()  # empty: what it holds was written after it came back
        client = redis.Redis.from_url(redis_server.url)
        seen = watch_stills(client, 3)
    finally:
        publisher.stop()
    waited = [stamp for stamp in captured(seen) if stamp < back]
    assert all(stamp >= down for stamp in waited)
    # The three newest waited (a capture between `back` and the first write may push
    # out one more); the four or five older ones were dropped.
    assert 2 <= len(waited) <= 3, waited
    assert min(waited) > back - 3.5, f"older stills won: captured {back - min(waited):.1f} s before"
    assert [stamp for stamp in captured(seen) if stamp >= back], "stills go on after the outage"


def test_the_schedule_does_not_drift(redis_server):
    """Stills start on the monotonic clock's slots, so their capture times (Redis'
    ``timestamp`` fields) stay one interval apart however long a capture takes."""
    publisher = StillsPublisher(
        SlowStillCamera(0.3), redis_server.url, "cam9", interval=1, expiry=60, buffer_size=5
    )
    client = redis.Redis.from_url(redis_server.url)
    publisher.start()
    try:
        seen = watch_stills(client, 10.5)
    finally:
        publisher.stop()
    stamps = captured(seen)
    # Each still's slot: whole intervals since the first (a slot skipped under load
    # stays a slot); a loop that sleeps after each capture is 0.3 s off at the second
    # still, and off by more than 0.25 s at most of the others.
    slots = [round(stamp - stamps[0]) for stamp in stamps]
    assert len(set(slots)) == len(slots) >= 10, stamps
    off = [stamp - stamps[0] - slot for stamp, slot in zip(stamps, slots, strict=True)]
    assert max(abs(o) for o in off) < 0.25, [round(o, 2) for o in off]
