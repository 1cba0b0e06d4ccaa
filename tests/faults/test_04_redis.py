"""5. Redis down and back: the video is unaffected (the camera rides it out: same
process, one run of PTS, no frame missing); stills resume; the ones taken during the
outage are written once Redis is back, with what is left of their TTL.

Redis here keeps no data on disk (save ""), so the test saves a snapshot before
stopping it: the stills from before the outage come back with it, as they would from a
persistent server, and the ones written late can be told from the ones never lost."""

from __future__ import annotations

import os
import time

OUTAGE = float(os.environ.get("HATCAM_FAULTS_REDIS_OUTAGE", 16))
INTERVAL = 2  # hatcam_image_capture_frequency in conftest.SETTINGS
EXPIRY = 3600


def stills(pi) -> dict[int, dict]:
    client = pi.redis()
    found = {}
    for key in client.scan_iter(match="image:*"):
        device = client.hget(key, "device")
        if device and device.decode() == pi.device:
            found[int(key.decode().split(":")[1])] = {
                "ttl": client.ttl(key),
                "timestamp": float(client.hget(key, "timestamp")),
                "jpeg": (client.hget(key, "image_data") or b"")[:2] == b"\xff\xd8",
            }
    return found


def test_redis_down_and_back(pi, lab):
    window = lab.window("redis down").open()
    lab.wait_new_blob(window.known)
    lab.wait(lambda: len(stills(pi)) >= 2, 30, "stills in Redis")
    pi.redis().save()
    pi.stop_service("redis")
    down = time.time()
    try:
        time.sleep(OUTAGE)
        camera = lab.state("camera")
    finally:
        pi.start_service("redis")
    up = time.time()

    def caught_up():
        stored = stills(pi)
        return stored if [s for s in stored if s > up + INTERVAL] else None

    stored = lab.wait(caught_up, 60, "stills taken after Redis came back")
    checked = time.time()
    window.close()
    figures = window.account(outage_s=round(up - down, 1))
    # First: a camera that exits when Redis goes away is back within seconds (systemd),
    # and everything below could pass for its successor.
    window.assert_one_run(figures)
    window.assert_complete(figures)
    waiting = (camera.get("stills") or {}).get("buffered", 0)
    assert waiting >= OUTAGE // INTERVAL - 2, f"stills waiting during the outage: {camera}"
    camera_after = lab.state("camera")  # the same process's, as checked above

    during = {k: v for k, v in stored.items() if down <= v["timestamp"] < up}
    expected = int((up - down) // INTERVAL)
    assert len(during) >= expected - 1, f"{len(during)} stills from the outage, {expected} taken"
    for key, still in during.items():
        age = checked - still["timestamp"]
        assert still["jpeg"], f"image:{key} holds no JPEG"
        # Written late with what was left of its TTL, not a fresh one.
        assert 0 < still["ttl"] <= EXPIRY - age + 3, (key, still, age)
    stats = camera_after.get("stills") or {}
    assert stats.get("dropped", 0) == 0
    lab.note(
        "redis down",
        stills_taken_during_outage=expected,
        stills_from_outage_in_redis=len(during),
        stills_dropped=stats.get("dropped"),
        video_frames_missing=figures.frames_missing,
    )
