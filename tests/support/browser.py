"""A real browser for the tests and the bench: Debian's chromium, driven by Playwright.

The one place it is launched. Playwright's own browser download is never used (it cannot be
reached from here, and the distribution's browser is the one an operator has): the binary is
``/usr/bin/chromium`` from the ``chromium`` package, which tests/host-deps.sh installs, or
HATCAM_TEST_CHROMIUM. Debian builds it with H.264 and AAC, so it plays the footage through
Media Source Extensions as a desktop browser does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path(os.environ.get("HATCAM_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--autoplay-policy=no-user-gesture-required",  # the page starts playback on a click
    "--disable-background-timer-throttling",  # a hidden headless tab still plays in time
    "--disable-renderer-backgrounding",
    "--disable-gpu",
    "--mute-audio",
]
VIEWPORT = {"width": 1400, "height": 1000}


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless chromium, closed (with its processes) on the way out."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run tests/host-deps.sh (apt: chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser) -> Page:
    """A fresh page (own cookies) at the size the screenshots are taken at."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-GB", timezone_id="UTC")
    return context.new_page()


# The synthetic camera's frame counter, read from the picture on screen: 16 bits, bit k a
# 6x6 block at x=8..13, y=8+8k (white 1, black 0; device/camera/synthetic.py ``_picture``).
# The video is drawn to a canvas at its own size and the middle of each block is read.
_READ_COUNTER = """
(video) => {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0);
  let n = 0;
  for (let bit = 0; bit < 16; bit++) {
    const y = 8 + bit * 8 + 3;
    if (y + 3 > canvas.height) break;
    if (ctx.getImageData(11, y, 1, 1).data[0] > 128) n |= 1 << bit;
  }
  return n;
}
"""

# Hooks the next frame the video element presents: pauses there and keeps its counter, its
# capture time (the page's playingDate, from PROGRAM-DATE-TIME) and when it was presented.
# With ``hold`` the page's play() is held back until RELEASE_PLAY, so the frame caught is
# the one the player put on screen at the start position, before any playing moves it on.
ARM_FIRST_FRAME = (
    """
(hold) => {
  const video = document.getElementById("video");
  if (hold) video.play = () => Promise.resolve();
  const readCounter = """
    + _READ_COUNTER
    + """;
  window.__firstFrame = null;
  const grab = (now, meta) => {
    video.pause();
    const date = window.hatcamView.playingDate();
    window.__firstFrame = {
      counter: readCounter(video),
      mediaTime: meta.mediaTime,
      picture: date ? date.toISOString() : null,
      presentedMs: performance.timeOrigin + now,
    };
  };
  video.requestVideoFrameCallback(grab);
}
"""
)


RELEASE_PLAY = """() => {
  const video = document.getElementById("video");
  delete video.play;
  return video.play();
}"""


def first_frame(page: Page, timeout: float = 30) -> dict:
    """The frame ARM_FIRST_FRAME caught: counter, mediaTime, picture (ISO), presentedMs."""
    page.wait_for_function("window.__firstFrame !== null", timeout=timeout * 1000)
    return page.evaluate("window.__firstFrame")


def frame_counter(page: Page) -> int:
    """The counter of the picture on screen now."""
    return page.evaluate(f"({_READ_COUNTER})(document.getElementById('video'))")


def frame_counter_at(page: Page) -> tuple[float, int]:
    """(the page's wall clock in ms, the counter of the picture on screen then)."""
    now, counter = page.evaluate(
        f"() => [Date.now(), ({_READ_COUNTER})(document.getElementById('video'))]"
    )
    return now, counter


def playback(page: Page) -> dict:
    """What the video element says: time, decoded frames, paused, and the page's figures."""
    return page.evaluate(
        """() => {
          const v = document.getElementById("video");
          const q = v.getVideoPlaybackQuality();
          const date = window.hatcamView.playingDate();
          return {currentTime: v.currentTime, frames: q.totalVideoFrames, paused: v.paused,
                  picture: date ? date.toISOString() : null, delay: v.dataset.delayS || null};
        }"""
    )
