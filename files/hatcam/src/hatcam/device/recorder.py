"""The camera daemon: one process owns the camera, records video, takes stills."""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import threading
import time

import av

from .camera import open_camera
from .health import HealthPublisher
from .segmenter import DATA_STREAMS, Segmenter, recover
from .signing import Signer
from .spool import DiskGuard, Spool
from .status import StateFile
from .watchdog import FrameWatch, Notifier, Restarts, bounded, stall

log = logging.getLogger("hatcam.camera")

STATE_EVERY = 2.0  # seconds between state file updates
CHECK_EVERY = 0.5  # seconds between looks at the frames (the stall check)
# Shutdown, each step bounded (the unit's TimeoutStopSec= is 30 s): a hung camera must
# not keep the process from exiting, and the writer gets the longest to close the last
# segment properly.
STILLS_STOP_SECONDS = 5.0
CAMERA_STOP_SECONDS = 11.0  # PiCamera.stop() gives up by itself after 10 s
CLOSE_SECONDS = 12.0  # the writer gets 10 s to drain (segmenter.DRAIN_SECONDS)
# After a stall the camera is known to hang: waiting on it only delays the restart.
STALLED_STOP_SECONDS = 2.0
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_buffers_when_freed() -> None:
    """Buffers of 128 KiB and more are mmapped and go back to the system when freed.

    glibc otherwise raises that threshold to the largest buffer freed so far (a JPEG
    encoder's 11 MB packet buffer at 720p), and from then on such buffers come from
    per-thread heaps, which keep up to twice that size of freed memory each: the
    daemon's RSS grew by 10-20 MB over a minute of stills. Not glibc: nothing to do.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 128 * 1024)


class Recorder:
    def __init__(self, settings):
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        # Read before anything else: a key that is missing or unreadable is a config error.
        key = settings.load_device_key()
        self.signer = Signer(key, settings.device, self.spool.state) if key else None
        self.stop_event = threading.Event()
        self.state_file = StateFile(self.spool.state / "camera.json")
        self.restarts = Restarts(self.spool.state)
        self.notifier = Notifier()
        self.frames = FrameWatch(self.notifier)
        segment_mb = settings.bitrate * settings.segment_seconds / 8 / 1e6
        self.guard = DiskGuard(
            self.spool, settings.min_free_mb, settings.disk_policy, margin_mb=2 * segment_mb
        )
        self.segmenter = Segmenter(
            self.spool,
            settings.device,
            settings.width,
            settings.height,
            settings.fps,
            settings.segment_seconds,
            room=self.guard.room,
            on_frame=self.frames,
            signer=self.signer,
        )
        self.camera = None
        self.stills = None

    def run(self) -> int:
        s = self.settings
        return_large_buffers_when_freed()  # before any thread starts
        # systemd's watchdog kills a hung process with SIGABRT: say where each thread was.
        faulthandler.enable()
        # Before the camera opens (on a spool that exists): a camera that does not open,
        # or hangs opening, is a failed run too.
        event = self.restarts.note_start(self.state_file.read())
        if event:
            log.warning("started again after: %s", event["after"])
        self._write_state("starting")
        try:
            self.camera = open_camera(s)
        except BaseException as exc:
            self._write_state("failed", f"the camera did not open: {exc}")
            raise
        self.spool.ensure()
        if self.signer is None:
            log.warning(
                "HATCAM_DEVICE_KEY is not set: segments are not signed (footage unverified)"
            )
        elif not DATA_STREAMS:
            log.warning(
                "signing segments with device key %s, but this PyAV (%s) cannot carry "
                "checkpoints in the open segment (av>=14 can): a cut segment verifies only "
                "from its recovered record",
                self.signer.key.id,
                av.__version__,
            )
        else:
            log.info("signing segments and checkpoints with device key %s", self.signer.key.id)
        # What a crash or power cut left behind (signed and chained, with a key).
        recover(self.spool, s.device, s.fps, self.signer)
        if s.stills:
            from .stills import StillsPublisher

            self.stills = StillsPublisher(
                self.camera,
                s.redis_url,
                s.device,
                s.image_capture_frequency,
                s.image_expiry,
                s.stills_buffer,
                s.retry_max_seconds,
            )
        log.info(
            "recording %dx%d@%d to %s in %.0f s segments (%s camera, stills %s)",
            s.width,
            s.height,
            s.fps,
            self.spool.root,
            s.segment_seconds,
            s.camera,
            f"every {s.image_capture_frequency:g} s" if s.stills else "off",
        )
        started = time.monotonic()
        self.camera.start(self.segmenter)
        self._write_state("starting")  # with what the camera says of itself
        if self.stills:
            self.stills.start()
        HealthPublisher.start_for(s, self.spool, self.stop_event)  # REDIS_URL set: stills or not
        why = None
        try:
            why = self._watch(started)
        finally:
            if why:
                log.error("%s; exiting so systemd restarts it", why)
            # The watchdog stands down while the last segment is closed (TimeoutStopSec=).
            self.notifier.send("STOPPING=1", f"STATUS={why or 'stopping'}")
            finished = self._shut_down(STALLED_STOP_SECONDS if why else None)
            self._write_state("stopped" if why is None else "failed", why)
        if why is None:
            log.info("stopped after %d segment(s)", self.segmenter.segments_closed)
        if why or not finished:
            # A camera thread left behind (picamera2's among them) must not keep the
            # process from exiting: what matters is written, the last segment closed.
            logging.shutdown()
            os._exit(1 if why else 0)
        return 0

    def _watch(self, started: float) -> str | None:
        """Until stopped: the state file every few seconds, and the frames checked twice a
        second. Returns why recording stopped by itself, or None when asked to stop."""
        next_state, ready = 0.0, False
        while not self.stop_event.wait(CHECK_EVERY):
            now = time.monotonic()
            if ready != self.frames.ready.is_set():  # "recording" as soon as it is
                ready, next_state = True, 0.0
            why = stall(
                started,
                self.segmenter.last_frame_at,
                self.segmenter.failed,
                self.camera.failed,
                now,
            )
            if why:
                return why
            if now >= next_state:
                next_state = now + STATE_EVERY
                self._write_state("recording" if ready else "starting")
        return None

    def _shut_down(self, camera_seconds: float | None = None) -> bool:
        """Stills, camera, then the last segment, each bounded. False if one hung."""
        finished = True
        if self.stills:
            seconds = camera_seconds or STILLS_STOP_SECONDS
            finished &= bounded(self.stills.stop, seconds, "stopping stills")
        seconds = camera_seconds or CAMERA_STOP_SECONDS
        finished &= bounded(self.camera.stop, seconds, "stopping the camera")
        # The last segment is closed properly, never lost (the frames already queued to
        # the writer included).
        finished &= bounded(self.segmenter.close, CLOSE_SECONDS, "closing the last segment")
        self.notifier.close()
        return finished

    def _write_state(self, running: str, reason: str | None = None) -> None:
        paused = running == "recording" and self.segmenter.paused
        state = {
            "state": "paused (disk floor reached)" if paused else running,
            "current_segment": self.segmenter.current_name,
            "segments_closed": self.segmenter.segments_closed,
            "frames_dropped": self.segmenter.frames_dropped,
            "camera_frames_dropped": self.segmenter.camera_skipped,
            "stills": self.stills.state() if self.stills else None,
            "camera": dict(self.camera.info) if self.camera else {},
        }
        if reason:
            state["reason"] = reason
        self.state_file.write(state)

    def stop(self, *_args) -> None:
        self.stop_event.set()
