"""The camera daemon's health in Redis (hatcam/health.py): published with or without
stills, with a TTL so a dead camera's record disappears by itself."""

from __future__ import annotations

import signal
import time

import redis

from hatcam.health import TTL_SECONDS, Health, key_of

from tests.support.footage import start_hatcam, wait_until


def settings_for(tmp_path, redis_url: str) -> dict:
    return {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_DEVICE": "cam7",
        "HATCAM_STILLS": "off",
        "REDIS_URL": redis_url,
    }


def test_the_camera_daemon_publishes_its_health_without_stills_and_stops_when_it_stops(
    tmp_path, redis_server
):
    client = redis.Redis.from_url(redis_server.url)
    proc = start_hatcam(
        "camera", settings=settings_for(tmp_path, redis_server.url), log=tmp_path / "cam.log"
    )
    try:

        def recording():
            text = client.get(key_of("cam7"))
            return text is not None and Health.from_json(text).recording

        wait_until(recording, 60, "a health record saying the camera records")
        health = Health.from_json(client.get(key_of("cam7")))
        assert 0 < client.ttl(key_of("cam7")) <= TTL_SECONDS
        assert health.device == "cam7" and health.free_mb > 0 and health.version
        assert client.keys("image:*") == []  # stills are off
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    last = client.get(key_of("cam7"))
    time.sleep(6)  # longer than one publishing interval: nothing new once it stopped
    assert client.get(key_of("cam7")) in (last, None)
    assert client.ttl(key_of("cam7")) <= TTL_SECONDS - 5


def test_a_health_record_survives_its_json_and_junk_is_refused():
    record = Health("cam1", True, 1.5, 2, None, 512.0, None, "1.0", "2026-11-30T12:00:00.000Z")
    assert Health.from_json(record.to_json()) == record
    for junk in ("", "[]", '{"device": "cam1"}', "not json"):
        try:
            Health.from_json(junk)
        except ValueError:
            continue
        raise AssertionError(f"{junk!r} was taken for a health record")
