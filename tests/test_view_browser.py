"""``hatcam view`` used as a person uses it: a real Chromium on the page of a real
``hatcam view``, against a real Azurite and redis-server, with footage from the synthetic
camera through the real segmenter and uploader.

What is on screen is read from the screen: the video element's own clock and decoded-frame
count, and the synthetic camera's frame counter read from the picture's pixels, compared
with what the blob store holds. A screenshot of each state goes to tests/artifacts/view/.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import pytest
import redis

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.segment import LIVE_KEY

from tests.support import ROOT
from tests.support.browser import (
    ARM_FIRST_FRAME,
    RELEASE_PLAY,
    chromium,
    first_frame,
    frame_counter,
    frame_counter_at,
    new_page,
    playback,
)
from tests.support.footage import hatcam, start_hatcam, wait_until
from tests.support.procs import free_port
from tests.support.viewapp import ViewApp
from tests.test_fetch import FPS, T0, record, upload
from tests.test_writer_stall import counter

ARTIFACTS = ROOT / "tests" / "artifacts" / "view"
README_SHOT = ROOT / "files" / "hatcam" / "docs" / "view.png"
RECOVERY_POINT_S = 2.0  # live upload's promise (README, bench/recovery_bench.py)


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def view(tmp_path):
    """Start ``hatcam view`` with the given settings; stopped after the test."""
    apps = []

    def start(**settings):
        apps.append(ViewApp(tmp_path / f"view{len(apps)}", settings).start())
        return apps[-1]

    yield start
    for app in apps:
        app.stop()


def blob_settings(azurite, container: str, **extra) -> dict:
    return {
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": container,
        **extra,
    }


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def banner(page) -> str:
    return "" if page.locator("#banner").is_hidden() else page.inner_text("#banner")


def device_row(page, device: str):
    return page.locator(f'#devices tr[data-device="{device}"]')


def iso_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def put_still(client: redis.Redis, device: str, captured: float, ttl: int) -> str:
    """An ``image:<ts>`` hash as device/stills.py writes it (a real JPEG of the camera)."""
    still = SyntheticCamera(320, 240, FPS, 300_000).capture_still()
    key = f"image:{int(captured)}"
    fields = {
        "image_data": still.jpeg,
        "timestamp": round(captured, 3),
        "mime_type": "image/jpeg",
        "lux": still.lux,
        "device": device,
        **still.metadata,
    }
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields).expire(key, ttl).execute()
    return key


# --- playing from the cloud ---------------------------------------------------------


def test_a_click_on_the_timeline_plays_that_moment_from_the_cloud(
    azurite, container, tmp_path, view, browser
):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 20 * FPS * 2))  # 40 s, 2 s segments
    app = view(**blob_settings(azurite, name))
    page = new_page(browser)
    page.goto(app.url)
    page.wait_for_selector("#timeline[data-start]")
    assert page.inner_text('#devices tr[data-device="dev1"]').startswith("dev1")
    start = iso_time(page.get_attribute("#timeline", "data-start"))
    end = iso_time(page.get_attribute("#timeline", "data-end"))
    assert start <= T0 < T0 + timedelta(seconds=40) <= end  # the whole run is drawn
    shot(page, "timeline")

    box = page.locator("#timeline").bounding_box()
    fraction = 0.37
    page.evaluate(ARM_FIRST_FRAME, True)
    clicked = time.monotonic()
    page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + 20)
    frame = first_frame(page)
    to_first_frame = time.monotonic() - clicked

    # The moment under the pointer, from the timeline's own scale (a pixel's worth of time).
    asked = iso_time(page.get_attribute("#video", "data-asked-at"))
    pixel = (end - start) / box["width"]
    assert abs(asked - (start + (end - start) * fraction)) <= pixel
    # The picture on screen is the one captured at that moment: the counter the camera drew
    # into it is the frame due then (frame k is captured at T0 + k / FPS), within one frame.
    captured = T0 + timedelta(seconds=frame["counter"] / FPS)
    assert abs((captured - asked).total_seconds()) <= 1 / FPS, (frame, asked)
    assert to_first_frame < 2.0, f"first frame {to_first_frame:.2f} s after the click"
    shot(page, "playing-clicked-moment")

    page.evaluate(RELEASE_PLAY)
    before = playback(page)
    time.sleep(2)
    after = playback(page)
    assert after["currentTime"] - before["currentTime"] > 1.0, (before, after)
    assert after["frames"] > before["frames"] + 20, (before, after)
    assert frame_counter(page) > frame["counter"] + 30  # the picture itself moved on
    assert banner(page) == "REDIS_URL is not set: no stills"  # said, and nothing else


# --- following live -----------------------------------------------------------------


def camera_settings(tmp_path, azurite, container, redis_url: str | None) -> dict:
    return {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_SEGMENT_SECONDS": "4",
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_DEVICE": "hat1",
        "HATCAM_RETRY_MAX_SECONDS": "1",
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": container,
        **({"REDIS_URL": redis_url} if redis_url else {}),
    }


@pytest.fixture
def live_camera(tmp_path, azurite, container, redis_server):
    """hat1 recording in real time, its uploader sending the open segment live, health to
    Redis: (camera process, settings). Both stopped after the test."""
    name, client = container
    settings = camera_settings(tmp_path, azurite, name, redis_server.url)
    camera = start_hatcam("camera", settings=settings, log=tmp_path / "camera.log")
    uploader = start_hatcam("upload", settings=settings, log=tmp_path / "upload.log")
    wait_until(
        lambda: any(
            (b.metadata or {}).get(LIVE_KEY) == "true"
            for b in client.list_blobs("hat1/", include=["metadata"])
        ),
        30,
        "hat1's open segment in the cloud",
    )
    yield camera, settings
    for proc in (camera, uploader):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def first_frame_wall_time(client) -> datetime:
    """When hat1 captured frame 0: the start its first segment's record names."""
    blobs = [b for b in client.list_blobs("hat1/", include=["metadata"]) if b.name.endswith(".ts")]
    first = min(blobs, key=lambda b: b.name)
    return iso_time(first.metadata["start"])


def test_following_live_shows_a_picture_captured_at_most_5_s_ago(
    live_camera, azurite, container, redis_server, view, browser
):
    name, client = container
    camera, settings = live_camera
    stills = redis.Redis.from_url(redis_server.url)
    for age in (30, 20, 10):  # for the picture: a camera with its stills, as in the README
        put_still(stills, "hat1", time.time() - age, ttl=3600 - age)
    app = view(**blob_settings(azurite, name, REDIS_URL=redis_server.url))
    page = new_page(browser)
    page.goto(f"{app.url}?device=hat1")
    page.wait_for_selector("#timeline[data-start]")
    page.click("#follow-live")
    page.wait_for_function(
        "(v => v.currentTime > 0 && !v.paused)(document.getElementById('video'))",
        timeout=20_000,
    )
    # hls.js starts 1 s behind the playlist's edge and plays faster (up to 1.5x) to get back
    # there after the first loads: a person watching for a few seconds sees this.
    time.sleep(8)
    zero = first_frame_wall_time(client)
    delays, shown = [], []
    for _ in range(8):
        now_ms, counter = frame_counter_at(page)
        captured = zero + timedelta(seconds=counter / FPS)
        delays.append((datetime.fromtimestamp(now_ms / 1000, UTC) - captured).total_seconds())
        shown.append(playback(page)["delay"])
        time.sleep(0.5)
    print(f"capture to screen: {[round(d, 2) for d in delays]}, the page said {shown}")
    # The goal is live upload's recovery point + 3 s. A reload that finds the playlist
    # unchanged waits half its target duration (HLS rules) before asking again, so one
    # sample in a while may be a second over it: the median holds the goal, none is 2 s over.
    typical = sorted(delays)[len(delays) // 2]
    assert typical <= RECOVERY_POINT_S + 3.0, f"capture to screen {delays}"
    assert max(delays) <= RECOVERY_POINT_S + 3.0 + 2.0, f"capture to screen {delays}"
    assert min(delays) > 0  # no picture from the future: the counter was read right
    # The delay the page prints agrees with the one read from the picture.
    page_delays = [float(d) for d in shown if d]
    assert page_delays and abs(sorted(page_delays)[len(page_delays) // 2] - typical) < 1.0
    assert "delay capture" in page.inner_text("#delay")
    path = shot(page, "following-live")
    if os.environ.get("HATCAM_README_SCREENSHOT"):  # set to redraw the README's picture
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SHOT)


def test_a_camera_that_dies_turns_silent_on_the_page(
    live_camera, azurite, container, redis_server, view, browser
):
    name, _ = container
    camera, _settings = live_camera
    app = view(**blob_settings(azurite, name, REDIS_URL=redis_server.url))
    page = new_page(browser)
    page.goto(app.url)
    row = device_row(page, "hat1")
    wait_until(lambda: "recording" in row.inner_text(), 20, "hat1 shown recording", poll=0.5)
    assert "SILENT" not in row.inner_text()
    shot(page, "device-recording")

    camera.kill()  # power gone: nothing says goodbye
    camera.wait()
    killed = time.monotonic()
    wait_until(lambda: "SILENT" in row.inner_text(), 40, "hat1 shown silent", poll=0.5)
    # Its health key lives 15 s; the page asks every 5 s.
    assert time.monotonic() - killed <= 15 + 5 + 3
    shot(page, "device-silent")


# --- stills -------------------------------------------------------------------------


def test_stills_appear_newest_first_and_new_ones_arrive_with_their_time_to_live(
    azurite, container, tmp_path, redis_server, view, browser
):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 2 * FPS * 2))
    client = redis.Redis.from_url(redis_server.url)
    now = time.time()
    older = put_still(client, "dev1", now - 20, ttl=600)
    newer = put_still(client, "dev1", now - 10, ttl=300)
    app = view(**blob_settings(azurite, name, REDIS_URL=redis_server.url))
    page = new_page(browser)
    page.goto(app.url)
    page.wait_for_selector("#stills figure")
    keys = page.eval_on_selector_all("#stills figure", "els => els.map(e => e.dataset.key)")
    assert keys == [newer, older]
    page.wait_for_function(
        "[...document.querySelectorAll('#stills img')]"
        ".every(i => i.complete && i.naturalWidth === 320)"
    )
    ttl = page.inner_text(f'#stills figure[data-key="{newer}"] .ttl')
    assert ttl.startswith("expires in 4 min") or ttl.startswith("expires in 5 min"), ttl

    newest = put_still(client, "dev1", time.time(), ttl=600)
    page.wait_for_function(
        f"document.querySelector('#stills figure').dataset.key === '{newest}'", timeout=12_000
    )
    assert page.eval_on_selector_all("#stills figure", "els => els.length") == 3
    shot(page, "stills")


# --- export -------------------------------------------------------------------------


def test_an_exported_range_downloads_as_an_mp4_holding_exactly_that_range(
    azurite, container, tmp_path, view, browser
):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 10 * FPS * 2))  # 20 s
    app = view(**blob_settings(azurite, name))
    page = new_page(browser)
    page.goto(app.url)
    page.wait_for_selector("#timeline[data-start]")
    page.fill("#export-from", f"{T0 + timedelta(seconds=4):%H:%M:%S}")
    page.fill("#export-to", f"{T0 + timedelta(seconds=10):%H:%M:%S}")
    page.click("#export-start")
    page.wait_for_selector('#export-status[data-state="done"]', timeout=60_000)
    assert page.get_attribute("#export-progress", "value") == page.get_attribute(
        "#export-progress", "max"
    )
    shot(page, "export-done")
    with page.expect_download() as download:
        page.click("#export-files a")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with av.open(str(saved)) as mp4:
        assert mp4.format.name.startswith("mov,mp4")
        counters = [counter(frame) for frame in mp4.decode(video=0)]
    # Whole segments, as hatcam fetch stitches them: every frame of the range, in order, none
    # lost or doubled (fetch also takes a segment that only touches an end of the range).
    assert counters[0] <= 4 * FPS and counters[0] % (2 * FPS) == 0
    assert counters[-1] >= 10 * FPS - 1
    assert counters == list(range(counters[0], counters[-1] + 1))
    assert len(counters) % (2 * FPS) == 0
    assert "failed" not in banner(page).lower()


# --- bad input ----------------------------------------------------------------------


def test_a_container_that_does_not_exist_is_said_in_words(azurite, view, browser):
    app = view(**blob_settings(azurite, "no-such-container"))
    page = new_page(browser)
    page.goto(app.url)
    page.wait_for_selector("#banner:not([hidden])")
    assert "container not found" in banner(page)
    assert "HATCAM_BLOB_CONTAINER" in banner(page)
    assert page.locator("#devices").is_visible()  # the page is there, not a blank one
    shot(page, "bad-container")


def test_a_credential_without_read_rights_is_refused_in_one_line_before_serving(
    azurite, container, tmp_path
):
    name, _ = container
    sas = azurite.sas_url(name, "l")  # may list, may not read
    result = hatcam("view", "--port", str(free_port()), settings={"HATCAM_BLOB_SAS_URL": sas})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("hatcam: HATCAM_BLOB_SAS_URL: the SAS grants sp=l"), line
    assert "missing r" in line
    assert "sig=" not in line  # the secret is never shown


def test_a_credential_the_cloud_refuses_is_said_in_words_on_the_page(
    azurite, container, tmp_path, view, browser
):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 2 * FPS * 2))
    sas = azurite.sas_url(name, "rl", hours=-1)  # read and list, but expired an hour ago
    app = view(HATCAM_BLOB_SAS_URL=sas)
    page = new_page(browser)
    page.goto(f"{app.url}?device=dev1&day={T0:%Y-%m-%d}")
    page.wait_for_selector("#banner:not([hidden])")
    words = banner(page)
    assert "sig=" not in words  # the secret is never shown
    assert page.locator("#devices").is_visible()
    shot(page, "credential-refused")
    assert "403" in words or "refused" in words.lower() or "expired" in words.lower(), words


def test_redis_unreachable_is_said_in_words_and_the_cloud_still_shows(
    azurite, container, tmp_path, view, browser
):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 2 * FPS * 2))
    app = view(**blob_settings(azurite, name, REDIS_URL=f"redis://127.0.0.1:{free_port()}"))
    page = new_page(browser)
    page.goto(app.url)
    page.wait_for_selector("#banner:not([hidden])")
    page.wait_for_selector("#timeline[data-start]")
    assert "redis" in banner(page).lower()
    assert "unreachable" in banner(page).lower()
    assert device_row(page, "dev1").is_visible()  # the devices from the cloud, still
    shot(page, "redis-unreachable")


def test_a_device_that_does_not_exist_is_said_in_words(azurite, container, tmp_path, view, browser):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 2 * FPS * 2))
    app = view(**blob_settings(azurite, name))
    page = new_page(browser)
    page.goto(f"{app.url}?device=ghost")
    page.wait_for_selector("#banner:not([hidden])")
    assert 'No camera called "ghost"' in banner(page)
    assert "dev1" in banner(page)
    shot(page, "no-such-device")
