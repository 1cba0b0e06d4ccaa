"""The camera daemon: one process owns the camera, records video, takes stills."""

from __future__ import annotations

import ctypes
import logging
import threading

from .camera import open_camera
from .segmenter import Segmenter, recover
from .spool import DiskGuard, Spool
from .status import StateFile

log = logging.getLogger("hatcam.camera")

STATE_EVERY = 2.0  # seconds between state file updates
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
        self.stop_event = threading.Event()
        self.state_file = StateFile(self.spool.state / "camera.json")
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
        )
        self.camera = None
        self.stills = None

    def run(self) -> int:
        s = self.settings
        return_large_buffers_when_freed()  # before any thread starts
        self.camera = open_camera(s)
        self.spool.ensure()
        recover(self.spool, s.device, s.fps)  # what a crash or power cut left behind
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
        self.camera.start(self.segmenter)
        if self.stills:
            self.stills.start()
        failed = None
        try:
            while not self.stop_event.wait(STATE_EVERY):
                self._write_state("recording")
                failed = self.camera.failed
                if failed is not None:
                    break
        finally:
            if self.stills:
                self.stills.stop()
            self.camera.stop()
            self.segmenter.close()  # the last segment is closed properly, never lost
            self._write_state("stopped" if failed is None else "failed")
        if failed is not None:
            log.error("camera failed: %s", failed)
            return 1
        log.info("stopped after %d segment(s)", self.segmenter.segments_closed)
        return 0

    def _write_state(self, running: str) -> None:
        state = "paused (disk floor reached)" if self.segmenter.paused else running
        self.state_file.write(
            {
                "state": state,
                "current_segment": self.segmenter.current_name,
                "segments_closed": self.segmenter.segments_closed,
                "frames_dropped": self.segmenter.frames_dropped,
                "stills": self.stills.state() if self.stills else None,
            }
        )

    def stop(self, *_args) -> None:
        self.stop_event.set()
