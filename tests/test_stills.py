"""Stills into a real redis-server: seed-compatible hashes, TTL, surviving an outage."""

from __future__ import annotations

import io
import signal
import time

import av
import redis

from hatcam.camera.synthetic import SyntheticCamera
from hatcam.stills import StillsPublisher

from footage import start_hatcam


def wait_for_keys(client, count, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = sorted(client.keys("image:*"))
        if len(keys) >= count:
            return keys
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} stills in Redis after {timeout} s")


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
    assert 0 < client.ttl(key) <= expiry, "every still expires"


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
    stats = client.info("commandstats")
    # HSET and EXPIRE always travel together inside MULTI/EXEC.
    assert (
        stats["cmdstat_exec"]["calls"]
        == stats["cmdstat_hset"]["calls"]
        == len(client.keys("image:*"))
    )
    assert stats["cmdstat_expire"]["calls"] == stats["cmdstat_hset"]["calls"]


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
        assert publisher.buffered_count() >= 3, "stills wait in the buffer"
        redis_server.start()  # same port, empty (no persistence): like a restarted cache
        client = redis.Redis.from_url(redis_server.url)
        keys = wait_for_keys(client, 5, 20)
    finally:
        publisher.stop()
    during = [k for k in keys if outage_started <= int(k.split(b":")[1]) < outage_started + 4]
    assert len(during) >= 3, f"stills taken during the outage were written: {keys}"
    for key in keys:
        assert_still(client, key, "cam8", 600)
    assert publisher.stored == publisher.round_trips, "one round trip per still"


def test_a_still_whose_ttl_ran_out_during_the_outage_is_not_written(redis_server):
    camera = SyntheticCamera(320, 240, 30, 300_000)
    publisher = StillsPublisher(
        camera, redis_server.url, "cam9", interval=1, expiry=2, buffer_size=20, retry_max=0.5
    )
    redis_server.stop()
    publisher.start()
    time.sleep(4.2)
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_for_keys(client, 1, 15)
        time.sleep(0.5)
    finally:
        publisher.stop()
    stamps = [int(k.split(b":")[1]) for k in client.keys("image:*")]
    assert stamps and min(stamps) >= time.time() - 6, "expired stills were dropped"
    assert publisher.expired >= 1


def test_the_schedule_does_not_drift(redis_server):
    camera = SyntheticCamera(320, 240, 30, 300_000)
    publisher = StillsPublisher(
        camera, redis_server.url, "cam9", interval=1, expiry=60, buffer_size=5
    )
    publisher.start()
    time.sleep(6.5)
    publisher.stop()
    late = publisher.schedule_errors
    assert len(late) == 7, "one capture per second, slot 0 included"
    # Each capture starts at its slot on the monotonic clock; lateness does not add up.
    assert late[-1] < 0.2 and max(late) < 0.2, late
