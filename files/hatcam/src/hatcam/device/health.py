"""The camera daemon publishes its health to Redis every few seconds (contract: health.py).

What it says is what ``hatcam status`` shows (status.report reads the daemons' state
files), so the web view and the command line never disagree. It runs in the camera
daemon, stills or not, on a connection of its own (a RedisLink is not shared between
threads); a Redis that is down costs one log line per outage and nothing else.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from .. import __version__
from ..health import PUBLISH_EVERY, TTL_SECONDS, Health, key_of
from ..segment import iso
from .redislink import RedisLink, RedisReplyError, redis_location
from .status import report

log = logging.getLogger("hatcam.health")


def health_of(device: str, spool) -> Health:
    """This camera's health, from what ``hatcam status`` reads."""
    info = report(spool)
    camera = info.get("camera") or {}
    uploader = info.get("uploader") or {}
    return Health(
        device=device,
        recording=camera.get("state") == "recording",
        at_risk_s=float(info["footage_at_risk_s"]),
        queue=int(info["queue_segments"]),
        last_upload=uploader.get("last_upload"),
        free_mb=float(info["free_disk_mb"]),
        last_error=uploader.get("last_error") or camera.get("reason"),
        version=__version__,
        published=iso(datetime.now(UTC)),
    )


class HealthPublisher:
    """A thread that SETs the health key with its TTL until ``stop`` is set."""

    def __init__(self, url, device, spool, stop, every=PUBLISH_EVERY, ttl=TTL_SECONDS):
        self.link = RedisLink(url, timeout=2)
        self.where = redis_location(url)
        self.device, self.spool, self.stop = device, spool, stop
        self.every, self.ttl = every, ttl
        self.failing = False
        self.thread = threading.Thread(target=self._loop, name="health", daemon=True)

    @classmethod
    def start_for(cls, settings, spool, stop) -> HealthPublisher | None:
        """Started when REDIS_URL is set; None otherwise."""
        if not settings.redis_url:
            return None
        publisher = cls(settings.redis_url, settings.device, spool, stop)
        publisher.thread.start()
        return publisher

    def publish(self) -> None:
        record = health_of(self.device, self.spool)
        self.link.call(("SET", key_of(self.device), record.to_json(), "EX", self.ttl))

    def _loop(self) -> None:
        while True:
            try:
                self.publish()
                if self.failing:
                    log.info("health published to Redis at %s again", self.where)
                self.failing = False
            except (OSError, RedisReplyError) as exc:
                if not self.failing:
                    log.warning("health not published to Redis at %s: %s", self.where, exc)
                self.failing = True
            except Exception as exc:  # a state file it cannot read: try again, never die
                if not self.failing:
                    log.warning("health not published: %s: %s", type(exc).__name__, exc)
                self.failing = True
            if self.stop.wait(self.every):
                return
